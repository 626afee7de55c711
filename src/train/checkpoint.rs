//! Checkpoints of a training loop, in the layout of a Hugging Face `Trainer` checkpoint:
//! `RUN_DIR/checkpoint-N/` is a model directory (loadable like any other) plus
//! `optimizer.safetensors` (the optimiser's moments, named `{param}.exp_avg`, …) and
//! `trainer_state.json` (the position in the loop, the optimiser's step count, the lengths of
//! the run's logs, and what the objective and hooks need). Each is written under a temporary
//! name and renamed when complete, so a kill during a save leaves the previous checkpoint intact.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{read_json, Error, Result};
use crate::optim::Optimizer;

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const PREFIX: &str = "checkpoint-";

/// Everything besides the tensors that a resumed loop needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Steps of the whole run (across unlearning tasks); names the checkpoint.
    pub global_step: usize,
    /// Steps of the current loop.
    pub step: usize,
    /// Where the next step starts: epoch and group index within the epoch's permutation.
    pub epoch: usize,
    pub next_group: usize,
    /// The optimiser's own step counter (bias correction, curvature refresh).
    pub optimizer_steps: usize,
    pub tokens: usize,
    pub elapsed_s: f64,
    /// Byte lengths of the run's log files at this step (file name → length).
    pub log_bytes: BTreeMap<String, u64>,
    pub objective: Value,
    pub hooks: Value,
    pub version: String,
}

/// Current byte lengths of `files` (absent files: 0), keyed by file name.
pub fn log_lengths(files: &[PathBuf]) -> BTreeMap<String, u64> {
    files
        .iter()
        .map(|p| {
            (
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            )
        })
        .collect()
}

/// Write `run_dir/checkpoint-{state.global_step}` atomically; returns its path.
pub fn write(
    run_dir: &Path,
    state: &TrainerState,
    opt: &Optimizer,
    write_model: &dyn Fn(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let out = run_dir.join(format!("{PREFIX}{}", state.global_step));
    crate::util::fs::atomic_dir(&out, |tmp| {
        write_model(tmp)?;
        crate::model::hf::write_safetensors(&opt.export()?, &tmp.join(OPTIMIZER_FILE))?;
        let p = tmp.join(STATE_FILE);
        crate::util::fs::write_synced(&p, serde_json::to_string_pretty(state).unwrap().as_bytes())
    })?;
    Ok(out)
}

/// The checkpoints in `run_dir`, oldest first (by step).
pub fn list(run_dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut v: Vec<(usize, PathBuf)> = std::fs::read_dir(run_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix(PREFIX)?.parse().ok()?;
            e.path().join(STATE_FILE).exists().then(|| (n, e.path()))
        })
        .collect();
    v.sort();
    v
}

/// The newest complete checkpoint of `run_dir`.
pub fn latest(run_dir: &Path) -> Option<PathBuf> {
    list(run_dir).pop().map(|(_, p)| p)
}

/// Remove all but the newest `keep` checkpoints (`keep` 0: keep all).
pub fn prune(run_dir: &Path, keep: usize) -> Result<()> {
    if keep == 0 {
        return Ok(());
    }
    let all = list(run_dir);
    for (_, p) in all.iter().take(all.len().saturating_sub(keep)) {
        crate::util::fs::remove_atomically(p)?;
    }
    Ok(())
}

/// Remove every checkpoint of a finished run: complete ones, directories named like one that a
/// kill left half-removed, and the temporaries of killed saves and removals.
pub fn remove_all(run_dir: &Path) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(run_dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name
            .strip_prefix(PREFIX)
            .is_some_and(|n| n.parse::<usize>().is_ok())
        {
            crate::util::fs::remove_atomically(&e.path())?;
        }
    }
    crate::util::fs::remove_stale_temps_in(run_dir);
    Ok(())
}

pub fn read_state(ckpt: &Path) -> Result<TrainerState> {
    read_json(&ckpt.join(STATE_FILE))
}

/// Set what a run trains from the model a checkpoint holds: the adapter tensors of a model with
/// LoRA adapters (the checkpoint is an adapter directory), else every weight.
pub fn load_model_state(ckpt: &Path, model: &crate::model::Llama) -> Result<()> {
    match model.lora() {
        Some(_) => load_tensors(
            &ckpt.join(crate::model::lora::WEIGHTS_FILE),
            &model.adapters(),
        ),
        None => load_params(ckpt, model.params()),
    }
}

/// Set every parameter of `params` from the checkpoint's model weights.
pub fn load_params(ckpt: &Path, params: &[(String, candle_core::Var)]) -> Result<()> {
    load_tensors(&ckpt.join("model.safetensors"), params)
}

/// Set every parameter of `params` from the same-named tensors of a safetensors file.
fn load_tensors(p: &Path, params: &[(String, candle_core::Var)]) -> Result<()> {
    let p = p.to_path_buf();
    let dev = params
        .first()
        .map(|(_, v)| v.device().clone())
        .unwrap_or(candle_core::Device::Cpu);
    let t = crate::model::hf::load_safetensors(&p, &dev)?;
    for (name, v) in params {
        let x = t.get(name).ok_or_else(|| Error::MissingTensor {
            path: p.clone(),
            name: name.clone(),
            expected: v.dims().to_vec(),
        })?;
        if x.dims() != v.dims() {
            return Err(Error::ShapeMismatch {
                path: p.clone(),
                name: name.clone(),
                expected: v.dims().to_vec(),
                actual: x.dims().to_vec(),
            });
        }
        v.set(&x.to_dtype(v.dtype())?)?;
    }
    Ok(())
}

/// Restore the optimiser's state from the checkpoint.
pub fn load_optimizer(ckpt: &Path, opt: &mut Optimizer, state: &TrainerState) -> Result<()> {
    let p = ckpt.join(OPTIMIZER_FILE);
    let dev = opt
        .params()
        .first()
        .map(|(_, v)| v.device().clone())
        .unwrap_or(candle_core::Device::Cpu);
    let t = crate::model::hf::load_safetensors(&p, &dev)?;
    opt.import(&t, state.optimizer_steps)
        .map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))
}

/// Cut the run's logs back to their lengths at the checkpoint (lines of steps after it go).
pub fn truncate_logs(run_dir: &Path, state: &TrainerState) -> Result<()> {
    for (name, &len) in &state.log_bytes {
        let p = run_dir.join(name);
        let Ok(f) = std::fs::OpenOptions::new().write(true).open(&p) else {
            continue;
        };
        let cur = f.metadata().map_err(|e| Error::io(&p, e))?.len();
        if cur > len {
            f.set_len(len).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (sweep stress test: kill -9 at random moments, then rerun): a kill while a
    /// finished point dropped its checkpoints left `checkpoint-N` without its state file, which
    /// [`list`] no longer saw, so it stayed (a SmolLM2 checkpoint is 1.6 GB) forever.
    #[test]
    fn remove_all_takes_half_removed_checkpoints_and_dead_temporaries() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path();
        for n in [1, 2] {
            std::fs::create_dir(run.join(format!("checkpoint-{n}"))).unwrap();
            std::fs::write(run.join(format!("checkpoint-{n}/model.safetensors")), b"x").unwrap();
        }
        std::fs::write(run.join("checkpoint-2").join(STATE_FILE), b"{}").unwrap();
        std::fs::create_dir(run.join(".checkpoint-3.tmp-2147483632")).unwrap();
        std::fs::create_dir(run.join(".checkpoint-0.old-2147483632")).unwrap();
        std::fs::write(run.join("train_log.jsonl"), b"{}\n").unwrap();
        std::fs::create_dir(run.join("checkpoint-notes")).unwrap();
        assert_eq!(list(run).len(), 1);
        remove_all(run).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(run)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["checkpoint-notes", "train_log.jsonl"]);
    }

    #[test]
    fn remove_atomically_leaves_no_trace() {
        let d = tempfile::tempdir().unwrap();
        let c = d.path().join("checkpoint-4");
        std::fs::create_dir(&c).unwrap();
        std::fs::write(c.join(STATE_FILE), b"{}").unwrap();
        crate::util::fs::remove_atomically(&c).unwrap();
        crate::util::fs::remove_atomically(&c).unwrap(); // absent: nothing to do
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
