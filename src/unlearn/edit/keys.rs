//! Keys of the unlearning edit: inputs of `down_proj` (the MLP activation silu(gate)⊙up,
//! [b, t, intermediate]) recorded through the forward hook.
//! - [`second_moments`]: Σ k kᵀ over every real token of a general corpus, per edit layer (the
//!   knowledge the edit must leave alone), cached on disk with its provenance by [`cached`].
//! - [`last_token_keys`]: the key at the last prompt token of each item, per edit layer.
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};

use super::nullspace::SecondMoment;
use crate::data::Encoded;
use crate::error::{Error, Result};
use crate::model::{Hooks, Llama};

/// Record the MLP activations of `layers` for one batch of ids [b, t]: layer → [b, t, I] (f32).
fn record(model: &Llama, ids: &Tensor, layers: &[usize]) -> Result<HashMap<usize, Tensor>> {
    // no autograd graph (as in `score::score`): each layer's activations are freed once read,
    // instead of all layers' staying alive until the pass ends
    let model = &model.frozen_except(&[])?;
    let acts: RefCell<HashMap<usize, Tensor>> = RefCell::new(HashMap::new());
    let hook = |l: usize, a: &Tensor| {
        if layers.contains(&l) {
            acts.borrow_mut()
                .insert(l, a.detach().to_dtype(DType::F32)?);
        }
        Ok(None)
    };
    let last = *layers
        .iter()
        .max()
        .ok_or_else(|| Error::Invalid("no edit layers".into()))?;
    if last >= model.cfg.num_hidden_layers {
        return Err(Error::Invalid(format!(
            "edit layer {last} does not exist (the model has {} layers)",
            model.cfg.num_hidden_layers
        )));
    }
    model.forward_with(
        ids,
        None,
        None,
        None,
        Hooks {
            mlp_act: Some(&hook),
            hidden_layers: &[last],
            skip_logits: true,
            ..Default::default()
        },
    )?;
    Ok(acts.into_inner())
}

/// Σ k kᵀ of the `down_proj` inputs over every token of `texts` (already tokenised, no padding
/// counted), one [`SecondMoment`] per entry of `layers`. Batches are right-padded.
pub fn second_moments(
    model: &Llama,
    texts: &[Vec<u32>],
    layers: &[usize],
    batch_size: usize,
    pad_id: u32,
) -> Result<Vec<SecondMoment>> {
    second_moments_from(
        model,
        texts,
        &vec![0; texts.len()],
        layers,
        batch_size,
        pad_id,
    )
}

/// As [`second_moments`], counting only positions `starts[i]..` of text i (e.g. what follows a
/// prompt).
pub fn second_moments_from(
    model: &Llama,
    texts: &[Vec<u32>],
    starts: &[usize],
    layers: &[usize],
    batch_size: usize,
    pad_id: u32,
) -> Result<Vec<SecondMoment>> {
    let d = model.cfg.intermediate_size;
    let mut out: Vec<SecondMoment> = layers.iter().map(|_| SecondMoment::new(d)).collect();
    let bs = batch_size.max(1);
    for (ci, chunk) in texts.chunks(bs).enumerate() {
        let starts = &starts[ci * bs..ci * bs + chunk.len()];
        let t = chunk.iter().map(|v| v.len()).max().unwrap_or(0);
        if t == 0 {
            continue;
        }
        let mut ids = vec![pad_id; chunk.len() * t];
        for (r, v) in chunk.iter().enumerate() {
            ids[r * t..r * t + v.len()].copy_from_slice(v);
        }
        let ids = Tensor::from_vec(ids, (chunk.len(), t), model.device())?;
        let acts = record(model, &ids, layers)?;
        for (slot, l) in out.iter_mut().zip(layers) {
            let a = acts[l].to_vec3::<f32>()?;
            let mut rows = Vec::new();
            for (r, v) in chunk.iter().enumerate() {
                for tok in a[r].iter().take(v.len()).skip(starts[r]) {
                    rows.extend_from_slice(tok);
                }
            }
            slot.add_rows(&rows)?;
        }
    }
    Ok(out)
}

/// The key at the last prompt token of each item (the position whose next token the edit
/// changes), per layer: layer index in `layers` → [n, I] row-major.
pub fn last_token_keys(
    model: &Llama,
    items: &[Encoded],
    layers: &[usize],
) -> Result<Vec<Vec<f32>>> {
    let mut out = vec![Vec::new(); layers.len()];
    for it in items {
        let prompt = &it.ids[..it.n_prompt];
        let ids = Tensor::new(prompt, model.device())?.unsqueeze(0)?;
        let acts = record(model, &ids, layers)?;
        for (slot, l) in out.iter_mut().zip(layers) {
            let a = acts[l]
                .squeeze(0)?
                .get(prompt.len() - 1)?
                .to_vec1::<f32>()?;
            slot.extend(a);
        }
    }
    Ok(out)
}

/// Second moments cached in `dir`: `mom2.safetensors` (tensor `layer.{l}` [d, d] f64 and
/// `count.{l}`) and `provenance.json`; recomputed when the provenance differs.
pub fn cached(
    dir: &Path,
    provenance: &serde_json::Value,
    layers: &[usize],
    compute: impl FnOnce() -> Result<Vec<SecondMoment>>,
) -> Result<Vec<SecondMoment>> {
    let pf = dir.join("provenance.json");
    let tf = dir.join("mom2.safetensors");
    if pf.exists() && tf.exists() {
        let old: serde_json::Value = crate::error::read_json(&pf)?;
        if &old == provenance {
            let t = candle_core::safetensors::load(&tf, &candle_core::Device::Cpu)?;
            let mut out = vec![];
            for l in layers {
                let m = t
                    .get(&format!("layer.{l}"))
                    .ok_or_else(|| Error::Invalid(format!("{}: no layer.{l}", tf.display())))?;
                let n = t
                    .get(&format!("count.{l}"))
                    .ok_or_else(|| Error::Invalid(format!("{}: no count.{l}", tf.display())))?
                    .to_vec1::<f64>()?[0] as usize;
                let d = m.dim(0)?;
                out.push(SecondMoment {
                    d,
                    n,
                    sum: m.flatten_all()?.to_vec1::<f64>()?,
                });
            }
            return Ok(out);
        }
    }
    let out = compute()?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut map = HashMap::new();
    for (l, m) in layers.iter().zip(&out) {
        map.insert(
            format!("layer.{l}"),
            Tensor::from_vec(m.sum.clone(), (m.d, m.d), &candle_core::Device::Cpu)?,
        );
        map.insert(
            format!("count.{l}"),
            Tensor::new(&[m.n as f64], &candle_core::Device::Cpu)?,
        );
    }
    let tmp = dir.join("mom2.safetensors.tmp");
    candle_core::safetensors::save(&map, &tmp)?;
    std::fs::rename(&tmp, &tf).map_err(|e| Error::io(&tf, e))?;
    crate::model::hf::atomic_write(
        &pf,
        serde_json::to_string_pretty(provenance).unwrap().as_bytes(),
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixture::tiny_config;
    use candle_core::Device;

    /// Padding never enters the statistics: batch size 1 and 3 give the same moments (to f32
    /// summation order), the count is the number of real tokens; the last-token key of an item
    /// is the last row its prompt contributes; the disk cache round-trips and is keyed by
    /// provenance.
    #[test]
    fn moments_ignore_padding_and_cache_round_trips() {
        let model = Llama::random(tiny_config(32, 3), 5, &Device::Cpu).unwrap();
        let texts: Vec<Vec<u32>> = vec![vec![5, 6, 7, 8, 9], vec![10, 11], vec![12, 13, 14]];
        let layers = [0, 2];
        let a = second_moments(&model, &texts, &layers, 1, 0).unwrap();
        let b = second_moments(&model, &texts, &layers, 3, 0).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.n, 10);
            assert_eq!(y.n, 10);
            let scale = x.sum.iter().fold(0f64, |m, v| m.max(v.abs()));
            for (p, q) in x.sum.iter().zip(&y.sum) {
                assert!((p - q).abs() <= 1e-5 * scale, "{p} vs {q}");
            }
        }
        // one text of one token: the moment is k kᵀ of its key = the last-token key
        let one = second_moments(&model, &[vec![42]], &[2], 1, 0).unwrap();
        let item = Encoded {
            ids: vec![42, 7],
            n_prompt: 1,
        };
        let k = &last_token_keys(&model, &[item], &[2]).unwrap()[0];
        let d = k.len();
        for i in 0..d {
            for j in 0..d {
                let want = k[i] as f64 * k[j] as f64;
                assert!((one[0].sum[i * d + j] - want).abs() <= 1e-6 * want.abs().max(1e-6));
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let prov = serde_json::json!({"corpus": "t", "n": 3});
        let c1 = cached(dir.path(), &prov, &layers, || Ok(a.clone())).unwrap();
        let c2 = cached(dir.path(), &prov, &layers, || {
            panic!("must come from the cache")
        })
        .unwrap();
        assert_eq!(c1[1].sum, c2[1].sum);
        assert_eq!(c2[0].n, 10);
        let other = serde_json::json!({"corpus": "u"});
        let c3 = cached(dir.path(), &other, &layers, || Ok(b.clone())).unwrap();
        assert_eq!(c3[0].sum, b[0].sum);
    }
}
