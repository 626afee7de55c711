//! GradNorm membership-inference attack (Wang et al., 2024, arXiv:2402.17012; open-unlearning's
//! `mia_gradnorm`): for each forget (member) and holdout (non-member) item, the loss
//! L = −mean_t log p(a_t | q, a_<t) over its answer tokens is backpropagated alone, and its score
//! is the mean over the model's parameter tensors W of ‖∂L/∂W‖₂. A larger gradient means the
//! model is further from a minimum on the item, so the score is a non-membership score like the
//! others, and the entry is the ROC-AUC of telling holdout from forget by it (≈ 1: the forget
//! set is still recognisably seen). In compat mode the last labelled token is left out, as
//! open-unlearning's `tokenwise_logprobs` does.
//!
//! One backward pass per item makes it the costliest metric: it is opt-in, as in
//! open-unlearning, by naming it in `extra_metrics`.
use candle_core::DType;
use serde_json::{Map, Value};

use super::mia::auc_entry;
use super::{Info, Metric, Need};
use crate::eval::names;
use crate::eval::passes::{Got, Passes};
use crate::eval::value::{mean, Fail, Outcome};
use crate::eval::{Compat, SetName};
use crate::infer::score::{logits_masked, nll_mean, Batch};

pub struct GradNorm;

static INFO: Info = Info {
    name: names::MIA_GRADNORM,
    needs: &[Need::Answers, Need::Holdout, Need::Gradients],
    formula: "AUC of mean over parameter tensors W of ‖∂(−mean_t log p(a_t))/∂W‖₂",
    reference: "open-unlearning src/evals/metrics/mia/gradnorm.py",
};

impl Metric for GradNorm {
    fn name(&self) -> String {
        INFO.name.into()
    }
    fn info(&self) -> &'static Info {
        &INFO
    }
    fn opt_in(&self) -> bool {
        true
    }
    fn compute(&self, p: &mut Passes, _: &Map<String, Value>) -> Outcome {
        let fs = p.per_item(SetName::Forget, "gradnorm_l2", |p| {
            grad_norms(p, SetName::Forget)
        })?;
        let hs = p.per_item(SetName::Holdout, "gradnorm_l2", |p| {
            grad_norms(p, SetName::Holdout)
        })?;
        Ok(auc_entry(&fs, &hs))
    }
}

/// The score of every item of `s`: one forward and backward pass each.
fn grad_norms(p: &mut Passes, s: SetName) -> Got<Vec<f64>> {
    let mut enc = p.encoded_answers(s)?;
    if p.cfg().compat == Compat::OpenUnlearning {
        // leave out the last label (the input ends one token earlier; a causal model's other
        // positions do not change); an answer of one label keeps it
        for e in &mut enc {
            if e.n_labels() > 1 {
                e.ids.pop();
            }
        }
    }
    let mask = p.own_mask_token();
    let bar = p.bar(enc.len(), format!("{} gradient norms", s.prefix()));
    let merged;
    let model = match p.model() {
        // the gradient of the weights the model computes with: W + s·B·A
        m if m.lora().is_some() => {
            merged = m.merged()?;
            &merged
        }
        m => m,
    };
    if model.params().is_empty() {
        return Err(Fail::skip("the model has no trainable parameters"));
    }
    let mut out = Vec::with_capacity(enc.len());
    for e in &enc {
        let batch = Batch::new(&[e], 0, model.device())?;
        let logits = logits_masked(model, &batch.input, mask)?;
        let loss = nll_mean(&logits, &batch)?.sum_all()?;
        let grads = model.backward(&loss)?;
        let mut norms = vec![];
        for (_, v) in model.params() {
            if let Some(g) = grads.get(v.as_tensor()) {
                let n2 = g
                    .to_dtype(DType::F32)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f32>()?;
                norms.push((n2 as f64).sqrt());
            }
        }
        out.push(mean(&norms));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}
