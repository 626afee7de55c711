//! The Slurm executor: the pending points (and the target evaluation) as one array job through
//! `sbatch`, a task per point, each running `unlearn sweep-point DIR HASH` (this binary, by its
//! absolute path; the job inherits the environment). Slurm does the distribution; we only write
//! the batch script, submit it, and poll `squeue` when asked to wait. A job still queued or
//! running is not submitted twice: its id is kept in `OUT/slurm/job.json`. Points that failed or
//! whose task died (preempted, timed out) have no finished result and are submitted again by
//! the next `unlearn sweep`.
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::config::{Check, Validate};
use crate::error::{Error, Result};
use crate::util::fs::atomic_write;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmConfig {
    /// `#SBATCH --partition` (none: the cluster's default).
    pub partition: Option<String>,
    /// CPUs per task.
    pub cpus: usize,
    /// Memory per task (`--mem`, e.g. "8G").
    pub mem: String,
    /// Time limit per task (`--time`, e.g. "02:00:00").
    pub time: String,
    /// GPUs per task (`--gres=gpu:N`; 0: none).
    pub gpus: usize,
    /// More `#SBATCH` lines, written as given (e.g. "#SBATCH --account=lab").
    pub extra: Vec<String>,
    /// Most tasks running at once (`--array=…%N`; 0: no limit).
    pub max_parallel: usize,
    /// Seconds between `squeue` polls with `--wait`.
    pub poll_seconds: u64,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        SlurmConfig {
            partition: None,
            cpus: 2,
            mem: "8G".into(),
            time: "04:00:00".into(),
            gpus: 0,
            extra: vec![],
            max_parallel: 0,
            poll_seconds: 10,
        }
    }
}

impl Validate for SlurmConfig {
    fn check(&self, c: &mut Check) {
        c.at_least("cpus", self.cpus, 1);
        c.at_least("poll_seconds", self.poll_seconds as usize, 1);
        c.non_empty("mem", &self.mem);
        c.non_empty("time", &self.time);
        for (i, l) in self.extra.iter().enumerate() {
            if !l.starts_with("#SBATCH ") || l.contains('\n') {
                c.fail(&format!("extra[{i}]"), "must be one `#SBATCH …` line");
            }
        }
    }
}

/// The batch script for `tasks` (point hashes or `target`).
pub fn script(cfg: &SlurmConfig, sweep_dir: &Path, tasks: &[String], exe: &Path) -> String {
    let logs = sweep_dir.join("slurm");
    let mut s = String::from("#!/bin/bash\n#SBATCH --job-name=unlearn-sweep\n");
    let limit = if cfg.max_parallel > 0 {
        format!("%{}", cfg.max_parallel)
    } else {
        String::new()
    };
    s += &format!("#SBATCH --array=0-{}{limit}\n", tasks.len() - 1);
    s += &format!("#SBATCH --output={}/%A_%a.out\n", logs.display());
    s += &format!(
        "#SBATCH --cpus-per-task={}\n#SBATCH --mem={}\n#SBATCH --time={}\n",
        cfg.cpus, cfg.mem, cfg.time
    );
    if let Some(p) = &cfg.partition {
        s += &format!("#SBATCH --partition={p}\n");
    }
    if cfg.gpus > 0 {
        s += &format!("#SBATCH --gres=gpu:{}\n", cfg.gpus);
    }
    for l in &cfg.extra {
        s += l;
        s += "\n";
    }
    s += &format!(
        "set -euo pipefail\nTASKS=({})\nexport RAYON_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{}}}\n\
         exec {} sweep-point {} \"${{TASKS[$SLURM_ARRAY_TASK_ID]}}\"\n",
        tasks.join(" "),
        cfg.cpus,
        shell_quote(&exe.to_string_lossy()),
        shell_quote(&sweep_dir.to_string_lossy()),
    );
    s
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let o = cmd.output().map_err(|e| {
        Error::Invalid(format!(
            "{what}: {e} (is Slurm installed here? the slurm executor submits with sbatch)"
        ))
    })?;
    if !o.status.success() {
        return Err(Error::Invalid(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Is the array job `id` still queued or running?
pub fn active(id: &str) -> Result<bool> {
    let out = run(
        Command::new("squeue").args(["-h", "-j", id, "-o", "%i"]),
        "squeue",
    )
    .or_else(|e| {
        // squeue answers "Invalid job id" for a job that left the controller's memory
        if e.to_string().contains("Invalid job id") {
            Ok(String::new())
        } else {
            Err(e)
        }
    })?;
    Ok(!out.is_empty())
}

fn job_file(sweep_dir: &Path) -> PathBuf {
    sweep_dir.join("slurm").join("job.json")
}

/// The job submitted earlier that is still active, if any.
pub fn running_job(sweep_dir: &Path) -> Result<Option<String>> {
    let Ok(v) = crate::error::read_json::<serde_json::Value>(&job_file(sweep_dir)) else {
        return Ok(None);
    };
    match v.get("job_id").and_then(|j| j.as_str()) {
        Some(id) if active(id)? => Ok(Some(id.to_string())),
        _ => Ok(None),
    }
}

/// Submit `tasks` as one array job; returns its id.
pub fn submit(cfg: &SlurmConfig, sweep_dir: &Path, tasks: &[String]) -> Result<String> {
    let dir = sweep_dir.join("slurm");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let exe = std::env::current_exe().map_err(|e| Error::Invalid(format!("own path: {e}")))?;
    let sweep_abs = std::fs::canonicalize(sweep_dir).map_err(|e| Error::io(sweep_dir, e))?;
    let text = script(cfg, &sweep_abs, tasks, &exe);
    let n = std::fs::read_dir(&dir).map(|r| r.count()).unwrap_or(0);
    let path = dir.join(format!("submit-{n}.sbatch"));
    atomic_write(&path, text.as_bytes())?;
    let id = run(
        Command::new("sbatch").arg("--parsable").arg(&path),
        "sbatch",
    )?;
    let id = id.split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(Error::Invalid(format!("sbatch gave no job id ({id:?})")));
    }
    let doc = serde_json::json!({ "job_id": id, "tasks": tasks, "script": path });
    atomic_write(
        &job_file(sweep_dir),
        serde_json::to_string_pretty(&doc).unwrap().as_bytes(),
    )?;
    Ok(id)
}

/// Poll `squeue` until job `id` has left the queue.
pub fn wait(cfg: &SlurmConfig, id: &str) -> Result<()> {
    while active(id)? {
        std::thread::sleep(std::time::Duration::from_secs(cfg.poll_seconds));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_has_one_task_per_point_and_the_resources() {
        let cfg = SlurmConfig {
            partition: Some("cpu".into()),
            gpus: 1,
            max_parallel: 2,
            extra: vec!["#SBATCH --account=lab".into()],
            ..SlurmConfig::default()
        };
        let s = script(
            &cfg,
            Path::new("/sw/it's"),
            &["target".into(), "abc".into(), "def".into()],
            Path::new("/bin/unlearn"),
        );
        for want in [
            "#SBATCH --array=0-2%2",
            "#SBATCH --partition=cpu",
            "#SBATCH --gres=gpu:1",
            "#SBATCH --account=lab",
            "#SBATCH --mem=8G",
            "TASKS=(target abc def)",
            "exec '/bin/unlearn' sweep-point '/sw/it'\\''s' \"${TASKS[$SLURM_ARRAY_TASK_ID]}\"",
        ] {
            assert!(s.contains(want), "{want} not in\n{s}");
        }
    }
}
