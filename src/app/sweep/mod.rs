//! Sweeps (`unlearn sweep`): a base `unlearn run` config, a grid and/or explicit variants of
//! its keys, the evaluation every point gets, and a rule that picks each method's best point.
//!
//! A point is the base config with one assignment of the grid's keys (and one variant's). Its
//! directory is `OUT/points/HASH/`, HASH being the SHA-256 of its resolved config (model, data,
//! method, training, evaluation), so a rerun skips finished points, resumes an interrupted one
//! from its newest checkpoint (when `train.save_every` writes them) or starts it afresh, and
//! retries failed ones. Each point runs exactly as `unlearn run` with an `[eval]` table does
//! (the evaluation is the final one of the run, written to `points/HASH/run/eval/`); the target
//! model (the base model, unchanged) is evaluated once in `OUT/target/` for the utility floor.
//! A point that fails is recorded with its error (`points/HASH/result.json`) and the sweep goes
//! on. Executors: `local` (one point after another in this process) and `slurm` (one array job,
//! a task per point: [`slurm`]).
pub mod leaderboard;
pub mod slurm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::config::{set_dotted, Check, Validate};
use crate::error::{read_json, Error, Result};
use crate::eval::EvalConfig;
use crate::unlearn::{RunConfig, RunOptions};
use crate::util::fs::atomic_write;

/// `sweep.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// The sweep directory (points, target evaluation, leaderboard); rerunning resumes it.
    pub out: PathBuf,
    /// An `unlearn run` config without `out` and `run_dir` (each point gets its own).
    pub base: toml::Table,
    /// Dotted keys of `base` with a list of values each; every combination is a point.
    #[serde(default)]
    pub grid: BTreeMap<String, Vec<toml::Value>>,
    /// Explicit variants (tables of dotted keys → value), each crossed with the grid.
    #[serde(default)]
    pub variants: Vec<BTreeMap<String, toml::Value>>,
    /// The evaluation of every point and of the target (keys of `unlearn eval`'s EvalConfig;
    /// `retain_logs` is the retain model's TOFU_EVAL.json, for forget quality).
    #[serde(default)]
    pub eval: EvalConfig,
    #[serde(default)]
    pub select: leaderboard::Select,
    #[serde(default)]
    pub executor: Executor,
}

/// Where points run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Executor {
    /// `local` (this process, one point at a time) or `slurm` (one array job).
    pub kind: ExecutorKind,
    pub slurm: slurm::SlurmConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    #[default]
    Local,
    Slurm,
}

impl Validate for SweepConfig {
    fn check(&self, c: &mut Check) {
        for k in ["out", "run_dir", "eval"] {
            if self.base.contains_key(k) {
                c.fail(
                    &format!("base.{k}"),
                    "is set by the sweep (each point gets its own output and the sweep's [eval])",
                );
            }
        }
        for (k, v) in &self.grid {
            if v.is_empty() {
                c.fail(&format!("grid.{k}"), "must list at least one value");
            }
        }
        c.sub("eval", &self.eval);
        c.sub("select", &self.select);
        c.sub("executor.slurm", &self.executor.slurm);
    }
}

/// One point of the sweep.
#[derive(Debug, Clone)]
pub struct Point {
    pub hash: String,
    /// The assignments that make it (dotted key → value), in key order.
    pub params: Vec<(String, toml::Value)>,
    /// Its `unlearn run` config, `out` and `run_dir` inside its directory.
    pub config: toml::Table,
}

/// The method a point runs, for grouping: the named method, else `forget+retain` of its table.
pub fn method_label(config: &toml::Table) -> String {
    match config.get("method") {
        Some(toml::Value::String(s)) => s.clone(),
        Some(toml::Value::Table(t)) => match t.get("name").and_then(|v| v.as_str()) {
            Some(n) => n.to_string(),
            None => {
                let term = |k: &str| match t.get(k) {
                    Some(toml::Value::String(s)) => s.clone(),
                    Some(toml::Value::Table(x)) => x
                        .get("kind")
                        .or_else(|| x.get("name"))
                        .and_then(|v| v.as_str())
                        .unwrap_or("custom")
                        .to_string(),
                    _ => "none".into(),
                };
                format!("{}+{}", term("forget"), term("retain"))
            }
        },
        _ => "?".into(),
    }
}

fn show_value(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `train.lr=1e-5, train.epochs=3`.
pub fn show_params(params: &[(String, toml::Value)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{k}={}", show_value(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

impl SweepConfig {
    /// Every point, in a stable order (variants in file order, grid keys sorted, values in the
    /// order given); points with the same resolved config are listed once.
    pub fn points(&self) -> Result<Vec<Point>> {
        let mut combos: Vec<Vec<(String, toml::Value)>> = vec![vec![]];
        for (k, vals) in &self.grid {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    vals.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push((k.clone(), v.clone()));
                        c
                    })
                })
                .collect();
        }
        let variants: Vec<Vec<(String, toml::Value)>> = if self.variants.is_empty() {
            vec![vec![]]
        } else {
            self.variants
                .iter()
                .map(|v| v.iter().map(|(k, x)| (k.clone(), x.clone())).collect())
                .collect()
        };
        let eval = toml::Value::try_from(&self.eval)
            .map_err(|e| Error::Invalid(format!("sweep [eval] does not serialise: {e}")))?;
        let mut out: Vec<Point> = vec![];
        for var in &variants {
            for combo in &combos {
                let params: Vec<(String, toml::Value)> =
                    var.iter().chain(combo.iter()).cloned().collect();
                let mut t = self.base.clone();
                for (k, v) in &params {
                    set_dotted(&mut t, k, v.clone())
                        .map_err(|e| Error::Invalid(format!("sweep: grid key {e}")))?;
                }
                t.insert("eval".into(), eval.clone());
                let hash = crate::util::hash::sha256(toml::to_string(&t).unwrap().as_bytes())[..12]
                    .to_string();
                let dir = self.out.join("points").join(&hash);
                t.insert("out".into(), path_value(&dir.join("model")));
                t.insert("run_dir".into(), path_value(&dir.join("run")));
                if !out.iter().any(|p| p.hash == hash) {
                    out.push(Point {
                        hash,
                        params,
                        config: t,
                    });
                }
            }
        }
        Ok(out)
    }

    pub fn point_dir(&self, hash: &str) -> PathBuf {
        self.out.join("points").join(hash)
    }
}

fn path_value(p: &Path) -> toml::Value {
    toml::Value::String(p.to_string_lossy().into_owned())
}

/// What a point's `result.json` says.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Done(Map<String, Value>),
    Failed(String),
    /// Not run yet, or interrupted.
    Pending,
}

pub fn status(dir: &Path) -> Status {
    let p = dir.join("result.json");
    match read_json::<Map<String, Value>>(&p) {
        Ok(m) if m.get("status").and_then(|s| s.as_str()) == Some("done") => Status::Done(m),
        Ok(m) => Status::Failed(
            m.get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("failed")
                .to_string(),
        ),
        Err(_) => Status::Pending,
    }
}

/// Prepare the sweep directory: refuse a non-empty directory that is not a sweep, lock it, write
/// `sweep.json` (the resolved config and every point) and each point's `point.toml`. Inputs are
/// resolved (Hub names downloaded) and validated before anything is written.
pub fn prepare(cfg: &mut SweepConfig) -> Result<(Vec<Point>, crate::util::lock::Lock)> {
    let base_path = cfg.out.join("sweep.toml");
    // every point's config must load as an `unlearn run` config
    let points = cfg.points()?;
    if points.is_empty() {
        return Err(Error::Invalid(
            "sweep: the grid and variants give no point".into(),
        ));
    }
    for p in &points {
        let mut rc: RunConfig =
            crate::config::from_table(p.config.clone(), &base_path).map_err(|e| {
                Error::Invalid(format!(
                    "point {} ({}): {e}",
                    p.hash,
                    show_params(&p.params)
                ))
            })?;
        rc.resolve_names()?;
    }
    cfg.eval.resolve_names()?;
    cfg.eval.check_inputs()?; // the benchmark has the forget split, the retain log is one
    let is_sweep = cfg.out.join("sweep.json").is_file();
    if !is_sweep && crate::util::fs::entry_count(&cfg.out) > 0 {
        return Err(Error::OutputExists {
            what: "sweep directory".into(),
            path: cfg.out.clone(),
            detail: "exists and is not a sweep (no sweep.json); choose another `out`".into(),
        });
    }
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let lock = crate::util::lock::Lock::acquire(&cfg.out.join("sweep.json"))?;
    let listing: Vec<Value> = points
        .iter()
        .map(|p| {
            json!({
                "hash": p.hash,
                "method": method_label(&p.config),
                "params": show_params(&p.params),
            })
        })
        .collect();
    let doc = json!({
        "unlearn_version": env!("CARGO_PKG_VERSION"),
        "config": serde_json::to_value(&*cfg).unwrap_or(Value::Null),
        "points": listing,
    });
    atomic_write(
        &cfg.out.join("sweep.json"),
        serde_json::to_string_pretty(&doc).unwrap().as_bytes(),
    )?;
    let resolved = toml::to_string(&*cfg)
        .map_err(|e| Error::Invalid(format!("sweep config does not serialise: {e}")))?;
    atomic_write(&cfg.out.join("sweep.resolved.toml"), resolved.as_bytes())?;
    for p in &points {
        let dir = cfg.point_dir(&p.hash);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let text = toml::to_string(&p.config).unwrap();
        atomic_write(&dir.join("point.toml"), text.as_bytes())?;
    }
    Ok((points, lock))
}

/// Read the sweep a directory holds (`sweep.resolved.toml`, written by [`prepare`]).
pub fn load_resolved(dir: &Path) -> Result<SweepConfig> {
    let p = dir.join("sweep.resolved.toml");
    let text = crate::error::read_to_string(&p)?;
    let t: toml::Table = text.parse().map_err(|e: toml::de::Error| Error::Data {
        path: p.clone(),
        line: 0,
        msg: e.message().to_string(),
    })?;
    crate::config::from_table(t, &p)
}

/// Run one point (or `target`) of a prepared sweep and record its result; an error of the
/// point is recorded and returned as Ok(false).
pub fn run_one(sweep_dir: &Path, which: &str) -> Result<bool> {
    let cfg = load_resolved(sweep_dir)?;
    if which == "target" {
        run_target(&cfg)?;
        eprintln!("sweep point target: evaluated");
        return Ok(true);
    }
    let dir = cfg.point_dir(which);
    if !dir.join("point.toml").is_file() {
        return Err(Error::Invalid(format!(
            "{}: no point {which} in this sweep",
            sweep_dir.display()
        )));
    }
    let t0 = std::time::Instant::now();
    let r = run_point(&dir);
    let secs = t0.elapsed().as_secs_f64();
    let (doc, ok) = match r {
        Ok(summary) => (
            json!({ "status": "done", "hash": which, "time_s": secs, "summary": summary }),
            true,
        ),
        Err(e) => (
            json!({ "status": "failed", "hash": which, "time_s": secs, "error": crate::error::one_line(e) }),
            false,
        ),
    };
    atomic_write(
        &dir.join("result.json"),
        serde_json::to_string_pretty(&doc).unwrap().as_bytes(),
    )?;
    if ok {
        drop_checkpoints(&dir)?;
    }
    let task = std::env::var("SLURM_ARRAY_JOB_ID")
        .map(|j| {
            format!(
                " (Slurm task {j}_{})",
                std::env::var("SLURM_ARRAY_TASK_ID").unwrap_or_default()
            )
        })
        .unwrap_or_default();
    eprintln!(
        "sweep point {which}: {} in {secs:.1} s{task}",
        if ok { "done" } else { "failed" }
    );
    Ok(ok)
}

/// A finished point's checkpoints only served to resume it (a SmolLM2 point's hold the model and
/// AdamW state, 1.6 GB); its model and logs stay. Also run for every finished point when a
/// sweep starts, for a point killed between recording its result and this cleanup.
fn drop_checkpoints(dir: &Path) -> Result<()> {
    crate::train::checkpoint::remove_all(&dir.join("run"))
}

fn run_point(dir: &Path) -> Result<Map<String, Value>> {
    let path = dir.join("point.toml");
    let text = crate::error::read_to_string(&path)?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| Error::Invalid(format!("{}: {e}", path.display())))?;
    let mut cfg: RunConfig = crate::config::from_table(table, &path)?;
    cfg.resolve_names()?;
    let run_dir = dir.join("run");
    let resume =
        crate::train::checkpoint::latest(&run_dir).is_some() && !dir.join("model").exists();
    let opts = RunOptions {
        progress: false,
        overwrite: !resume,
        resume,
    };
    crate::unlearn::run(&cfg, &opts)?;
    let eval_dir = last_eval_dir(&run_dir.join("eval"));
    read_json(&eval_dir.join(crate::eval::SUMMARY_FILE))
}

/// `RUN/eval`, or its last `task-K` when the run had several tasks.
fn last_eval_dir(eval: &Path) -> PathBuf {
    let mut tasks: Vec<(usize, PathBuf)> = std::fs::read_dir(eval)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix("task-")?.parse().ok().map(|k| (k, e.path()))
        })
        .collect();
    tasks.sort();
    tasks
        .pop()
        .map(|t| t.1)
        .unwrap_or_else(|| eval.to_path_buf())
}

/// Evaluate the base model once (`OUT/target/`), for the utility floor.
pub fn run_target(cfg: &SweepConfig) -> Result<Map<String, Value>> {
    let dir = cfg.out.join("target");
    let model = cfg
        .base
        .get("model")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::Invalid("sweep: base.model is not set".into()))?;
    let model = crate::util::hub::model(Path::new(model))?;
    let mut ec = cfg.eval.clone();
    ec.resolve_names()?;
    let dev = crate::util::runtime::device(
        cfg.base
            .get("device")
            .and_then(|v| v.as_str())
            .unwrap_or("cpu"),
    )?;
    let md = crate::model::hf::ModelDir::load(&model, &dev)?;
    let fp = crate::eval::fingerprint(&model, &ec)?;
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut ev = crate::eval::Evaluator::new(&md.model, &md.tok, &ec, false)?;
    let out = ev.run(Some(&dir), Some(fp), false)?;
    Ok(out.summary)
}

/// Run every pending point here, one after another; returns (done, failed) counts of this call.
pub fn run_local(cfg: &SweepConfig, points: &[Point], show: bool) -> Result<(usize, usize)> {
    if !cfg
        .out
        .join("target")
        .join(crate::eval::SUMMARY_FILE)
        .is_file()
    {
        eprintln!("sweep: evaluating the target model");
        run_target(cfg)?;
    }
    let mut todo: Vec<&Point> = vec![];
    for p in points {
        let dir = cfg.point_dir(&p.hash);
        match status(&dir) {
            Status::Done(_) => drop_checkpoints(&dir)?,
            _ => todo.push(p),
        }
    }
    eprintln!(
        "sweep: {} points, {} finished, {} to run",
        points.len(),
        points.len() - todo.len(),
        todo.len()
    );
    let bar = crate::util::progress::bar(todo.len() as u64, "points", show);
    let (mut done, mut failed) = (0, 0);
    for p in todo {
        bar.set_message(format!(
            "{} {}",
            method_label(&p.config),
            show_params(&p.params)
        ));
        if run_one(&cfg.out, &p.hash)? {
            done += 1;
        } else {
            failed += 1;
            if let Status::Failed(e) = status(&cfg.point_dir(&p.hash)) {
                bar.println(format!("point {} failed: {e}", p.hash));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((done, failed))
}
