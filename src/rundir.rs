//! Run directories: every run writes its resolved config, seed and versions before it starts.
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::hf::atomic_write;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The default run directory of an output: `OUT.run` beside it.
pub fn default_for(out: &Path) -> std::path::PathBuf {
    let mut p = out.to_path_buf().into_os_string();
    p.push(".run");
    p.into()
}

/// Write `run.json` (command, seed, versions, resolved config) into `dir`.
pub fn write_run_info<C: Serialize>(
    dir: &Path,
    command: &str,
    seed: u64,
    config: &C,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let info = serde_json::json!({
        "command": command,
        "seed": seed,
        "versions": {
            "unlearn": VERSION,
            "candle": "0.11",
            "rustc_target": std::env::consts::ARCH,
        },
        "config": config,
    });
    atomic_write(
        &dir.join("run.json"),
        serde_json::to_string_pretty(&info).unwrap().as_bytes(),
    )?;
    let toml_text =
        toml::to_string(config).map_err(|e| Error::Invalid(format!("config to TOML: {e}")))?;
    atomic_write(&dir.join("config.toml"), toml_text.as_bytes())
}
