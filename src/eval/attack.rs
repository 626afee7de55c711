//! Robustness checks. Relearning (`unlearn attack relearn`): fine-tune the unlearned model for a
//! few steps on a small part of the forgotten data, then measure how much of the forgotten
//! material comes back: mean P(a|q) and mean per-token loss of an evaluation set before and after,
//! and, given the model before unlearning, the recovered share
//! (P_after − P_unlearned) / (P_original − P_unlearned).
use std::path::Path;

use serde::Serialize;

use crate::data::Encoded;
use crate::error::Result;
use crate::infer::score::score_stats;
use crate::model::hf::ModelDir;
use crate::model::Llama;
use crate::train::{finetune, TrainConfig};

/// Mean probability and per-token loss of a set.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Measure {
    /// Mean over items of P(a|q) = exp(−mean token NLL).
    pub prob: f64,
    /// Mean over items of the mean token NLL.
    pub loss: f64,
}

pub fn measure(model: &Llama, items: &[Encoded], batch_size: usize) -> Result<Measure> {
    let s = score_stats(model, items, batch_size, |_| {})?;
    let n = s.len().max(1) as f64;
    Ok(Measure {
        prob: s.iter().map(|x| x.prob()).sum::<f64>() / n,
        loss: s.iter().map(|x| x.avg_loss()).sum::<f64>() / n,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct RelearnReport {
    pub steps: usize,
    pub relearn_items: usize,
    pub eval_items: usize,
    pub before: Measure,
    pub after: Measure,
    /// The model before unlearning, when given.
    pub original: Option<Measure>,
    /// (P_after − P_before) / (P_original − P_before), when the original is given and differs.
    pub recovered: Option<f64>,
}

/// Fine-tune `md` (in place) on `data` with `cfg` (use `max_steps` for "a few steps") and
/// measure `eval` before and after.
pub fn relearn(
    md: &ModelDir,
    data: &[Encoded],
    eval: &[Encoded],
    original: Option<&Llama>,
    cfg: &TrainConfig,
    run_dir: &Path,
    progress: bool,
) -> Result<RelearnReport> {
    let bs = cfg.batch_size.max(1);
    let before = measure(&md.model, eval, bs)?;
    let original = original.map(|m| measure(m, eval, bs)).transpose()?;
    let rep = finetune(md, data, cfg, run_dir, progress)?;
    let after = measure(&md.model, eval, bs)?;
    let recovered = original
        .filter(|o| (o.prob - before.prob).abs() > 1e-12)
        .map(|o| (after.prob - before.prob) / (o.prob - before.prob));
    Ok(RelearnReport {
        steps: rep.steps,
        relearn_items: data.len(),
        eval_items: eval.len(),
        before,
        after,
        original,
        recovered,
    })
}
