//! Run directories: every run writes its resolved config, seed, versions and the SHA-256 of
//! every input into `run.json` (and the config into `config.toml`) before its first step; a
//! resumed run checks that config and inputs are still the same.
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{read_json, Error, Result};
use crate::util::fs::atomic_write;
use crate::util::guard::Input;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The default run directory of an output: `OUT.run` beside it.
pub fn default_for(out: &Path) -> PathBuf {
    let mut p = out.to_path_buf().into_os_string();
    p.push(".run");
    p.into()
}

/// Content hashes of the inputs: `[{"role", "path", "sha256"}]` (a directory's hash covers its
/// files' names and contents).
pub fn input_hashes(inputs: &[Input]) -> Result<Value> {
    let mut v = vec![];
    for i in inputs {
        v.push(json!({
            "role": i.role,
            "path": i.path,
            "sha256": crate::util::hash::path_sha256(&i.path)?,
        }));
    }
    Ok(Value::Array(v))
}

/// Write `run.json` (command, seed, versions, resolved config, input hashes) and `config.toml`
/// into `dir` (created).
pub fn write_run_info<C: Serialize>(
    dir: &Path,
    command: &str,
    seed: u64,
    config: &C,
    inputs: &[Input],
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let info = json!({
        "command": command,
        "seed": seed,
        "versions": {
            "unlearn": VERSION,
            "candle": "0.11",
            "rustc_target": std::env::consts::ARCH,
        },
        "config": config,
        "inputs": input_hashes(inputs)?,
    });
    atomic_write(
        &dir.join("run.json"),
        serde_json::to_string_pretty(&info).unwrap().as_bytes(),
    )?;
    let toml_text =
        toml::to_string(config).map_err(|e| Error::Invalid(format!("config to TOML: {e}")))?;
    atomic_write(&dir.join("config.toml"), toml_text.as_bytes())
}

/// For `--resume`: the run in `dir` must have been started by `command` with the same config and
/// the same input contents; otherwise continuing it would mix two experiments.
pub fn check_resume<C: Serialize>(
    dir: &Path,
    command: &str,
    config: &C,
    inputs: &[Input],
) -> Result<()> {
    let p = dir.join("run.json");
    let info: Value = read_json(&p)?;
    let was = info["command"].as_str().unwrap_or("");
    if was != command {
        return Err(Error::Invalid(format!(
            "--resume: {} is a run of `{was}`, not `{command}`",
            dir.display()
        )));
    }
    let now = serde_json::to_value(config).map_err(|e| Error::Invalid(e.to_string()))?;
    let mut diff = vec![];
    differing_keys("", &info["config"], &now, &mut diff);
    if !diff.is_empty() {
        return Err(Error::Invalid(format!(
            "--resume: the config differs from the run in {} ({}); resume with the same \
             config, or start afresh with --overwrite",
            dir.display(),
            diff.join(", ")
        )));
    }
    let hashes = input_hashes(inputs)?;
    for (old, new) in info["inputs"]
        .as_array()
        .into_iter()
        .flatten()
        .zip(hashes.as_array().unwrap())
    {
        if old["sha256"] != new["sha256"] {
            return Err(Error::Invalid(format!(
                "--resume: the {} {} changed since the run started; start afresh with \
                 --overwrite",
                new["role"].as_str().unwrap_or("input"),
                new["path"].as_str().unwrap_or("?")
            )));
        }
    }
    Ok(())
}

/// For `--resume`: [`check_resume`], then the newest complete checkpoint of `dir`.
pub fn resume_checkpoint<C: Serialize>(
    dir: &Path,
    command: &str,
    config: &C,
    inputs: &[Input],
) -> Result<PathBuf> {
    check_resume(dir, command, config, inputs)?;
    crate::train::checkpoint::latest(dir).ok_or_else(|| {
        Error::Invalid(format!(
            "--resume: {} has no checkpoint yet (checkpoints are written every `save_every` \
             steps; with save_every = 0 there are none); start afresh with --overwrite",
            dir.display()
        ))
    })
}

/// Dotted keys at which two JSON values differ.
fn differing_keys(prefix: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                differing_keys(
                    &key,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if a != b => out.push(if prefix.is_empty() {
            "(root)".into()
        } else {
            prefix.to_string()
        }),
        _ => {}
    }
}

/// Append a line to `dir/notes.txt` (and print it when `progress`).
pub fn note(dir: &Path, progress: bool, s: &str) {
    use std::io::Write;
    if progress {
        eprintln!("{s}");
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("notes.txt"))
    {
        let _ = writeln!(f, "{s}");
    }
}
