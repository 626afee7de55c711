//! Flags shared by several subcommands, declared once and flattened into each.
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use unlearn::config::Validate;

/// `--config FILE` and `--set key=value`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Settings {
    /// Settings file (TOML; the command's keys are listed in the README). `--set` overrides it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override one setting, e.g. --set lr=3e-4 or --set train.lr=1e-5 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl Settings {
    /// The settings (unknown keys and out-of-range values are errors).
    pub fn load<T: DeserializeOwned + Validate>(&self) -> unlearn::Result<T> {
        unlearn::config::load(self.config.as_deref(), &self.set)
    }

    /// The settings over `defaults` for every key not given.
    pub fn load_over<T: serde::Serialize + DeserializeOwned + Validate>(
        &self,
        defaults: &T,
    ) -> unlearn::Result<T> {
        unlearn::config::load_over(defaults, self.config.as_deref(), &self.set)
    }
}

/// `--device`.
#[derive(clap::Args, Debug, Clone)]
pub struct Device {
    /// Compute device: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl Device {
    pub fn get(&self) -> unlearn::Result<candle_core::Device> {
        unlearn::util::runtime::device(&self.device)
    }
}

/// `--overwrite` for a command whose outputs are written once.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct Overwrite {
    /// Replace an existing output (a model directory, or a file this command writes). Without
    /// it an existing non-empty output is refused; inputs are never overwritten.
    #[arg(long)]
    pub overwrite: bool,
}

/// A `--json FILE` result: claimed before any work (an existing file is refused without
/// `--overwrite`), written at the end through a temporary name.
pub fn claim_json(
    path: Option<&PathBuf>,
    inputs: &[unlearn::util::guard::Input],
    overwrite: bool,
) -> unlearn::Result<Option<unlearn::util::guard::Pending>> {
    use unlearn::util::guard::{OutKind, Pending};
    path.map(|p| Pending::claim("--json", p, OutKind::File, inputs, overwrite))
        .transpose()
}

/// Write `v` to a claimed `--json` file (fsync, rename).
pub fn write_json(p: unlearn::util::guard::Pending, v: &serde_json::Value) -> anyhow::Result<()> {
    unlearn::util::fs::write_synced(p.tmp(), serde_json::to_string_pretty(v)?.as_bytes())?;
    p.commit()?;
    Ok(())
}

/// `--overwrite` / `--resume` for a training command (model output plus run directory).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct Restart {
    /// Replace an existing output model and start the run directory afresh.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Continue the run in the run directory from its newest checkpoint (written every
    /// `save_every` steps); the result is bit-identical to an uninterrupted run.
    #[arg(long)]
    pub resume: bool,
}
