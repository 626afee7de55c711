//! SIMU step 1–2: integrated-gradients attribution of MLP neurons (input channel k of
//! `down_proj`, activation a_lk = silu(gate)·up) on a dataset, and the critical-neuron selection.
//!
//!   Att(l,k) = (1/m) Σ_{j=1..m} Σ_i Σ_t β_itk · ∂L_i/∂a_itk |_{a_l = (j/m)·β_l}
//!
//! β_l is the layer's activation on sample i (all answer and prompt positions t), L_i the sample's
//! mean answer NLL. The path scales the whole layer's activation vector at once (as the
//! knowledge-neuron method does) rather than one neuron at a time with the others fixed: the
//! per-neuron path would need one backward pass per neuron and step. Neuron k of layer l is
//! critical iff Att(l,k) > t·max_k Att(l,k) (|Att| by default).
use std::cell::RefCell;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::data::Encoded;
use crate::error::Result;
use crate::infer::score::{nll_mean, Batch};
use crate::model::{Hooks, Llama};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttributionConfig {
    /// Integration steps m.
    pub steps: usize,
    /// Threshold t in (0, 1].
    pub threshold: f64,
    /// Use |Att| (default) instead of the signed value.
    pub absolute: bool,
    pub batch_size: usize,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        AttributionConfig {
            steps: 8,
            threshold: 0.5,
            absolute: true,
            batch_size: 4,
        }
    }
}

/// Att(l, k) for every layer l and neuron k: [layers][intermediate].
pub fn attribute(
    model: &Llama,
    items: &[Encoded],
    pad_id: u32,
    cfg: &AttributionConfig,
    progress: bool,
) -> Result<Vec<Vec<f64>>> {
    // Only ∂L/∂a is needed: a view with every weight detached makes the backward pass compute
    // no weight gradients and stop at layer l, where `a` enters the graph.
    let frozen = model.frozen_except(&[])?;
    let model = &frozen;
    let n_layers = model.cfg.num_hidden_layers;
    let inter = model.cfg.intermediate_size;
    let mut att = vec![vec![0f64; inter]; n_layers];
    let batches: Vec<&[Encoded]> = items.chunks(cfg.batch_size.max(1)).collect();
    let bar =
        crate::util::progress::bar((n_layers * batches.len()) as u64, "attribution", progress);
    let m = cfg.steps.max(1);
    for chunk in batches {
        let refs: Vec<&Encoded> = chunk.iter().collect();
        let batch = Batch::new(&refs, pad_id, model.device())?;
        // β for every layer, and every layer's input residual, in one recording pass.
        let acts: RefCell<Vec<Option<Tensor>>> = RefCell::new(vec![None; n_layers]);
        let record = |l: usize, a: &Tensor| {
            acts.borrow_mut()[l] = Some(a.detach());
            Ok(None)
        };
        let all: Vec<usize> = (0..n_layers).collect();
        let rec = model.forward_with(
            &batch.input,
            None,
            None,
            None,
            Hooks {
                mlp_act: Some(&record),
                skip_logits: true,
                hidden_layers: &all,
                ..Default::default()
            },
        )?;
        let acts = acts.into_inner();
        // The input of layer l is the residual after layer l − 1 (layer 0 recomputes from the
        // embedding): passes that replace layer l's activation start there.
        let inputs: Vec<Tensor> = rec.hidden.into_iter().map(|(_, h)| h.detach()).collect();
        for (l, beta) in acts.into_iter().enumerate() {
            let beta = beta.expect("every layer recorded");
            let mut acc: Option<Tensor> = None; // Σ_j grad, [b, t, I]
            for j in 1..=m {
                let alpha = j as f64 / m as f64;
                let a = Var::from_tensor(&(&beta * alpha)?)?;
                let replace = |layer: usize, _: &Tensor| {
                    Ok(if layer == l {
                        Some(a.as_tensor().clone())
                    } else {
                        None
                    })
                };
                let o = model.forward_with(
                    &batch.input,
                    None,
                    None,
                    None,
                    Hooks {
                        mlp_act: Some(&replace),
                        start: (l > 0).then(|| (l, &inputs[l - 1])),
                        ..Default::default()
                    },
                )?;
                // Σ_i L_i, so that the gradient of sample i is ∂L_i/∂a.
                let loss = nll_mean(&o.logits.unwrap(), &batch)?.sum_all()?;
                let g = loss
                    .backward()?
                    .get(a.as_tensor())
                    .cloned()
                    .expect("activation gradient")
                    .detach();
                acc = Some(match acc {
                    None => g,
                    Some(s) => (s + g)?,
                });
            }
            // (1/m) Σ_{i,t} β ⊙ Σ_j grad  -> [I]
            let contrib = (beta * acc.unwrap())?
                .sum((0, 1))?
                .to_dtype(candle_core::DType::F64)?
                .to_vec1::<f64>()?;
            for (k, c) in contrib.iter().enumerate() {
                att[l][k] += c / m as f64;
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(att)
}

/// Indices of critical neurons per layer: score > t·max (|Att| if `absolute`).
pub fn critical(att: &[Vec<f64>], threshold: f64, absolute: bool) -> Vec<Vec<usize>> {
    att.iter()
        .map(|row| {
            let s: Vec<f64> = row
                .iter()
                .map(|&x| if absolute { x.abs() } else { x })
                .collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            s.iter()
                .enumerate()
                .filter(|(_, &x)| x > threshold * max)
                .map(|(k, _)| k)
                .collect()
        })
        .collect()
}

/// Scores and the chosen neurons of one attribution.
pub struct Selection {
    /// Att(l, k) on the forget set.
    pub scores: Vec<Vec<f64>>,
    /// Att(l, k) on the retain set (dual mode).
    pub retain_scores: Option<Vec<Vec<f64>>>,
    /// Critical neurons per layer.
    pub critical: Vec<Vec<usize>>,
}

impl Selection {
    pub fn n_critical(&self) -> usize {
        self.critical.iter().map(|c| c.len()).sum()
    }

    /// One JSON object per layer: scores, critical neurons (and retain scores in dual mode).
    pub fn layers_json(&self) -> Vec<serde_json::Value> {
        self.scores
            .iter()
            .enumerate()
            .map(|(l, s)| {
                let mut v =
                    serde_json::json!({"layer": l, "scores": s, "critical": self.critical[l]});
                if let Some(r) = &self.retain_scores {
                    v["retain_scores"] = serde_json::json!(r[l]);
                }
                v
            })
            .collect()
    }
}

/// Attribute on `forget` and choose the critical neurons; in dual mode (`retain` given) neurons
/// critical for the retain set are left out.
pub fn select(
    model: &Llama,
    forget: &[Encoded],
    retain: Option<&[Encoded]>,
    pad_id: u32,
    cfg: &AttributionConfig,
    progress: bool,
) -> Result<Selection> {
    let scores = attribute(model, forget, pad_id, cfg, progress)?;
    let retain_scores = match retain {
        None => None,
        Some(r) => Some(attribute(model, r, pad_id, cfg, progress)?),
    };
    Ok(select_from_scores(scores, retain_scores, cfg))
}

/// The critical neurons of given scores: forget-critical ones, less the retain-critical ones in
/// dual mode.
pub fn select_from_scores(
    scores: Vec<Vec<f64>>,
    retain_scores: Option<Vec<Vec<f64>>>,
    cfg: &AttributionConfig,
) -> Selection {
    let mut crit = critical(&scores, cfg.threshold, cfg.absolute);
    if let Some(rs) = &retain_scores {
        for (c, rc) in crit
            .iter_mut()
            .zip(critical(rs, cfg.threshold, cfg.absolute))
        {
            c.retain(|k| !rc.contains(k));
        }
    }
    Selection {
        scores,
        retain_scores,
        critical: crit,
    }
}

/// Column masks for `down_proj` ([hidden, intermediate], 1 on critical columns), named as the
/// parameters, for `unlearn run --set masks=…`.
pub fn down_proj_masks(model: &Llama, crit: &[Vec<usize>]) -> Result<Vec<(String, Tensor)>> {
    let (h, i) = (model.cfg.hidden_size, model.cfg.intermediate_size);
    crit.iter()
        .enumerate()
        .map(|(l, cols)| {
            let mut m = vec![0f32; h * i];
            for r in 0..h {
                for &c in cols {
                    m[r * i + c] = 1.0;
                }
            }
            Ok((
                format!("model.layers.{l}.mlp.down_proj.weight"),
                Tensor::from_vec(m, (h, i), &candle_core::Device::Cpu)?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn critical_selection() {
        let att = vec![vec![0.1, -0.9, 0.5, 0.44], vec![0.0, 0.0, 2.0, 1.1]];
        assert_eq!(critical(&att, 0.5, true), vec![vec![1, 2], vec![2, 3]]);
        assert_eq!(critical(&att, 0.5, false), vec![vec![2, 3], vec![2, 3]]);
    }
}
