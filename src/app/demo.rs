//! The embedded default (`unlearn demo`): a synthetic fictitious-knowledge benchmark, a tiny
//! Llama trained from scratch by this crate on all of it (the target model) and on the retain
//! part only (the retain model, the exact-retraining oracle that forget quality compares with),
//! a set of unlearning methods run on the target, every model evaluated, a table and a report.
//!
//! Layout of the output directory:
//! ```text
//! OUT/demo.json, config.toml     resolved config, seed, versions (written first)
//! OUT/benchmark/*.jsonl          the generated benchmark (TOFU schema and split names)
//! OUT/target/eval/               TOFU_EVAL.json, TOFU_SUMMARY.json of the target model
//! OUT/retain/eval/               … of the retain model (the reference log)
//! OUT/<method>/{model,run,eval}  each unlearned model, its run directory and evaluation
//! OUT/summary.json, report.html  the table and the self-contained HTML report
//! ```
//! The trained target and retain models live in `cache_dir/<key>/` where the key hashes every
//! setting that changes them (benchmark, model shape, training, forget split, crate version), so
//! a second demo run loads them instead of training.
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::data::synthetic::{self, SynthConfig};
use crate::data::{read_qa, Encoded, Formatter};
use crate::error::{Error, Result};
use crate::eval::{fingerprint, names, EvalConfig, Evaluator};
use crate::model::hf::{atomic_write, save_model, ModelDir};
use crate::model::{Llama, LlamaConfig};
use crate::train::{finetune, TrainConfig};
use crate::util::guard::Input;

/// Shape of the demo's tiny Llama.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TinyModelConfig {
    /// BPE vocabulary trained on the benchmark text (specials included).
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// Initialisation seed (target and retain start from the same weights).
    pub seed: u64,
}

impl Default for TinyModelConfig {
    fn default() -> Self {
        TinyModelConfig {
            vocab: 1024,
            hidden: 128,
            layers: 4,
            heads: 4,
            kv_heads: 2,
            seed: 0,
        }
    }
}

/// Everything `unlearn demo` does; `--set key=value` overrides any key (e.g.
/// `--set pretrain.epochs=10`, `--set unlearn.lr=1e-3`, `--set eval.max_new_tokens=32`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// The synthetic benchmark (people, seed, retain_eval_people).
    pub benchmark: SynthConfig,
    /// The forget split (forget01 / forget05 / forget10).
    pub forget_split: String,
    /// Unlearning methods, by name (`unlearn run`'s `method`).
    pub methods: Vec<String>,
    /// Extra `unlearn run` overrides per method name, applied after the demo's own
    /// (e.g. `method_set.unierase = ["method.forget.v_steps=25"]`).
    pub method_set: std::collections::BTreeMap<String, Vec<String>>,
    pub model: TinyModelConfig,
    /// Training of the target and retain models from scratch.
    pub pretrain: TrainConfig,
    /// Optimisation of every unlearning run.
    pub unlearn: TrainConfig,
    /// Evaluation settings (`data` and `forget_split` are set by the demo).
    pub eval: EvalConfig,
    /// Where trained target/retain models are cached.
    pub cache_dir: PathBuf,
    /// `unlearn demo --sweep`: the grid every method is tuned over, and the rule.
    pub sweep: DemoSweep,
}

/// The demo's sweep: every method over `lr` x `epochs` (the other `unlearn` settings as in
/// the default run), each method's best point picked by `select`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoSweep {
    pub lr: Vec<f64>,
    pub epochs: Vec<usize>,
    pub select: crate::app::sweep::leaderboard::Select,
}

impl Default for DemoSweep {
    fn default() -> Self {
        DemoSweep {
            lr: vec![2.5e-4, 5e-4, 1e-3],
            epochs: vec![4, 8],
            select: Default::default(),
        }
    }
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            benchmark: SynthConfig::default(),
            forget_split: "forget10".into(),
            methods: [
                "ga+gd",
                "npo+gd",
                "simnpo+gd",
                "me+gd",
                "idk+ap",
                "simu",
                "unierase",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            method_set: [(
                "unierase".to_string(),
                // METHODS.md's defaults are for 7B models: the 4-layer, 128-wide demo model
                // needs every layer after the first edited, a longer token training, more
                // target-vector steps, a weaker ridge, and no closing [UNL] (its tied row would
                // otherwise follow ordinary answers too): docs/unierase.md
                [
                    "method.forget.layers=[1,2,3]",
                    "method.forget.phase1_epochs=40",
                    "method.forget.phase1_lr=3e-2",
                    "method.forget.phase2_lr=1e-2",
                    "method.forget.phase3_lr=1e-2",
                    "method.forget.phase3_epochs=5",
                    "method.forget.v_steps=25",
                    "method.forget.lambda=1",
                    "method.forget.closing_token=false",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            )]
            .into_iter()
            .collect(),
            model: TinyModelConfig::default(),
            pretrain: TrainConfig {
                lr: 3e-3,
                epochs: 30,
                batch_size: 16,
                warmup_ratio: 0.05,
                ..TrainConfig::default()
            },
            unlearn: TrainConfig {
                lr: 5e-4,
                epochs: 8,
                batch_size: 8,
                warmup_ratio: 0.0,
                ..TrainConfig::default()
            },
            eval: EvalConfig {
                max_new_tokens: 48,
                batch_size: 32,
                gen_batch_size: 32,
                ..EvalConfig::default()
            },
            cache_dir: PathBuf::from(".cache/demo"),
            sweep: DemoSweep::default(),
        }
    }
}

/// One row of the demo table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub name: String,
    /// `target`, `retain` or `unlearned`.
    pub role: String,
    pub forget_quality: Option<f64>,
    pub model_utility: Option<f64>,
    pub forget_rouge: Option<f64>,
    pub forget_prob: Option<f64>,
    pub retain_rouge: Option<f64>,
    /// Parameters the unlearning run could change / did change (unlearned models only).
    pub trainable_params: Option<usize>,
    pub changed_params: Option<usize>,
    pub seconds: f64,
}

pub struct DemoReport {
    pub rows: Vec<Row>,
    /// With `--sweep`: each method at its best point of the sweep (the rule in
    /// `OUT/sweep/LEADERBOARD.md`).
    pub tuned: Vec<Row>,
    pub report: PathBuf,
    /// Whether the target and retain models came from the cache.
    pub cached_models: bool,
}

impl DemoConfig {
    /// Cache key of the trained models: every setting that changes them.
    pub fn model_key(&self) -> String {
        let v = json!([
            self.benchmark,
            self.forget_split,
            self.model,
            self.pretrain,
            crate::VERSION,
            "demo-models-v2"
        ]);
        format!(
            "{:016x}",
            crate::util::rng::hash_bytes(v.to_string().as_bytes())
        )
    }

    fn retain_split(&self) -> Result<String> {
        let pct: usize = self
            .forget_split
            .strip_prefix("forget")
            .and_then(|n| n.parse().ok())
            .filter(|p| [1, 5, 10].contains(p))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "forget_split `{}`: the demo has forget01, forget05 and forget10",
                    self.forget_split
                ))
            })?;
        Ok(format!("retain{}", 100 - pct))
    }
}

impl crate::config::Validate for TinyModelConfig {
    fn check(&self, c: &mut crate::config::Check) {
        c.at_least("vocab", self.vocab, 260);
        let mut m = LlamaConfig::tiny(
            self.vocab,
            self.hidden,
            self.layers,
            self.heads,
            self.kv_heads,
        );
        m.eos_token_ids = vec![0];
        if self.hidden == 0 || self.layers == 0 || self.heads == 0 {
            c.fail("hidden", "hidden, layers and heads must be at least 1");
        } else if let Err(e) = m.validate_heads() {
            c.fail("heads", e);
        }
    }
}

/// Checks that need no work: split name, method names, people count, model shape, and every
/// nested setting's range.
impl crate::config::Validate for DemoConfig {
    fn check(&self, c: &mut crate::config::Check) {
        if let Err(e) = self.retain_split() {
            c.fail("forget_split", e);
        }
        if self.methods.is_empty() {
            c.fail("methods", "must name at least one method");
        }
        for m in &self.methods {
            if let Err(e) = crate::unlearn::objective::method::MethodConfig::named(m) {
                c.fail("methods", e);
            }
        }
        c.sub("benchmark", &self.benchmark);
        c.sub("model", &self.model);
        c.sub("pretrain", &self.pretrain);
        c.sub("unlearn", &self.unlearn);
        c.sub("eval", &self.eval);
        for (i, &lr) in self.sweep.lr.iter().enumerate() {
            c.positive(&format!("sweep.lr[{i}]"), lr);
        }
        for (i, &e) in self.sweep.epochs.iter().enumerate() {
            c.at_least(&format!("sweep.epochs[{i}]"), e, 1);
        }
        if self.sweep.lr.is_empty() || self.sweep.epochs.is_empty() {
            c.fail(
                "sweep",
                "`lr` and `epochs` must list at least one value each",
            );
        }
        c.sub("sweep.select", &self.sweep.select);
    }
}

/// A file-system safe directory name for a method ("npo+gd" stays, "/" and spaces do not).
pub fn dir_name(method: &str) -> String {
    method
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn encode(md: &ModelDir, cfg: &TrainConfig, items: &[crate::data::QaItem]) -> Result<Vec<Encoded>> {
    let f = Formatter::new(&md.tok, cfg.prompt, cfg.max_len)?;
    f.encode_items(items)
}

/// Train (or load from the cache) the target and the retain model. Returns their directories
/// and whether they were cached.
fn models(cfg: &DemoConfig, bench_dir: &Path, progress: bool) -> Result<(PathBuf, PathBuf, bool)> {
    let dir = cfg.cache_dir.join(cfg.model_key());
    let target = dir.join("target");
    let retain = dir.join("retain");
    if target.join("config.json").exists() && retain.join("config.json").exists() {
        eprintln!(
            "using the cached target and retain models in {}",
            dir.display()
        );
        return Ok((target, retain, true));
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    atomic_write(
        &dir.join("provenance.json"),
        serde_json::to_string_pretty(&json!({
            "benchmark": cfg.benchmark, "forget_split": cfg.forget_split, "model": cfg.model,
            "pretrain": cfg.pretrain, "version": crate::VERSION,
        }))
        .unwrap()
        .as_bytes(),
    )?;
    let bench = synthetic::generate(&cfg.benchmark);
    let mut texts = bench.texts();
    texts.sort();
    texts.dedup();
    let tok = crate::model::tokenizer::train_bpe_tokenizer(&texts, cfg.model.vocab)?;
    let mut lc = LlamaConfig::tiny(
        tok.vocab_size(),
        cfg.model.hidden,
        cfg.model.layers,
        cfg.model.heads,
        cfg.model.kv_heads,
    );
    lc.eos_token_ids = vec![tok.eos_id];
    lc.validate_heads()?;
    let dev = candle_core::Device::Cpu;
    let init = dir.join("init");
    if !init.join("config.json").exists() {
        let model = Llama::random(lc, cfg.model.seed, &dev)?;
        save_model(&model, &tok, None, &[], &init)?;
    }
    let general = read_qa(&bench_dir.join("general.jsonl"))?;
    for (name, split, out) in [
        ("target", "full".to_string(), &target),
        ("retain", cfg.retain_split()?, &retain),
    ] {
        if out.join("config.json").exists() {
            continue;
        }
        let md = ModelDir::load(&init, &dev)?;
        let mut items = read_qa(&bench_dir.join(format!("{split}.jsonl")))?;
        items.extend(general.iter().cloned());
        let data = encode(&md, &cfg.pretrain, &items)?;
        eprintln!(
            "training the {name} model ({} parameters) from scratch on {} items ({split} + general)",
            md.model.num_params(),
            data.len()
        );
        let run_dir = dir.join(format!("{name}.run"));
        crate::util::rundir::write_run_info(
            &run_dir,
            "demo-pretrain",
            cfg.pretrain.seed,
            &cfg.pretrain,
            &[Input::new("initial model", &init)],
        )?;
        let rep = finetune(&md, &data, &cfg.pretrain, &run_dir, progress)?;
        eprintln!(
            "  {} steps, final loss {:.4}, {:.0} tokens/s",
            rep.steps, rep.final_loss, rep.tokens_per_s
        );
        md.save(out)?;
    }
    Ok((target, retain, false))
}

fn f(summary: &serde_json::Map<String, Value>, k: &str) -> Option<f64> {
    summary.get(k).and_then(|v| v.as_f64())
}

/// Evaluate `model` into `out` (resumable: an unchanged model is not re-evaluated).
fn evaluate(
    model: &Path,
    ecfg: &EvalConfig,
    out: &Path,
    progress: bool,
) -> Result<serde_json::Map<String, Value>> {
    let md = ModelDir::load(model, &candle_core::Device::Cpu)?;
    let fp = fingerprint(model, ecfg)?;
    let o = Evaluator::new(&md.model, &md.tok, ecfg, progress)?.run(Some(out), Some(fp), false)?;
    Ok(o.summary)
}

fn row(name: &str, role: &str, s: &serde_json::Map<String, Value>, seconds: f64) -> Row {
    Row {
        name: name.into(),
        role: role.into(),
        forget_quality: f(s, names::FORGET_QUALITY),
        model_utility: f(s, names::MODEL_UTILITY),
        forget_rouge: f(s, names::FORGET_ROUGE),
        forget_prob: f(s, names::FORGET_PROB),
        retain_rouge: f(s, names::RETAIN_ROUGE),
        trainable_params: None,
        changed_params: None,
        seconds,
    }
}

/// The table as text.
pub fn table(rows: &[Row]) -> String {
    let c = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into());
    let fq = |x: Option<f64>| x.map(|v| format!("{v:.2e}")).unwrap_or_else(|| "-".into());
    let n = |x: Option<usize>| x.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    let mut s = format!(
        "{:<12} {:>14} {:>13} {:>12} {:>11} {:>12} {:>9} {:>6}\n",
        "model",
        "forget quality",
        "model utility",
        "forget ROUGE",
        "forget prob",
        "retain ROUGE",
        "changed",
        "time"
    );
    for r in rows {
        s += &format!(
            "{:<12} {:>14} {:>13} {:>12} {:>11} {:>12} {:>9} {:>5.0}s\n",
            r.name,
            fq(r.forget_quality),
            c(r.model_utility),
            c(r.forget_rouge),
            c(r.forget_prob),
            c(r.retain_rouge),
            n(r.changed_params),
            r.seconds
        );
    }
    s
}

/// Run the demo into `out` (with `sweep`, also tune every method: [`tune`]).
pub fn run(
    cfg: &DemoConfig,
    out: &Path,
    progress: bool,
    sweep: bool,
    audit: bool,
) -> Result<DemoReport> {
    crate::config::Validate::validate(cfg)
        .map_err(|e| Error::Invalid(format!("demo config: {e}")))?;
    // the output directory is the demo's own: new, empty, or an earlier demo's (whose results
    // are replaced); never the cache or a directory holding it
    let _lock = crate::util::guard::claim_results_dir(
        "--out",
        out,
        &[Input::new("model cache", &cfg.cache_dir)],
        &["run.json"],
    )?;
    if out.join("run.json").exists() {
        let info: Value = crate::error::read_json(&out.join("run.json"))?;
        if info["command"] != "demo" {
            return Err(Error::Invalid(format!(
                "--out {} holds a run of `{}`, not a demo; choose another output",
                out.display(),
                info["command"].as_str().unwrap_or("?")
            )));
        }
    }
    crate::util::rundir::write_run_info(out, "demo", cfg.benchmark.seed, cfg, &[])?;
    let bench_dir = out.join("benchmark");
    let bench = synthetic::generate(&cfg.benchmark);
    bench.write(&bench_dir)?;
    atomic_write(
        &bench_dir.join("benchmark.json"),
        serde_json::to_string_pretty(&synthetic::describe(&cfg.benchmark, &bench))
            .unwrap()
            .as_bytes(),
    )?;
    let t0 = Instant::now();
    let (target, retain, cached) = models(cfg, &bench_dir, progress)?;
    let train_s = t0.elapsed().as_secs_f64();
    let mut ecfg = cfg.eval.clone();
    ecfg.data = bench_dir.clone();
    ecfg.forget_split = cfg.forget_split.clone();
    let mut rows = vec![];

    eprintln!("evaluating the retain model (the reference for forget quality)");
    let t = Instant::now();
    let retain_eval = out.join("retain").join("eval");
    evaluate(&retain, &ecfg, &retain_eval, progress)?;
    // Against its own log the retain model scores forget quality 1 and PrivLeak 0 by definition;
    // this second call computes only those (everything else is cached).
    ecfg.retain_logs = Some(retain_eval.join(crate::eval::EVAL_FILE));
    let s = evaluate(&retain, &ecfg, &retain_eval, progress)?;
    let retain_row = row("retain", "retain", &s, t.elapsed().as_secs_f64());

    ecfg.reference_model = Some(retain.clone());
    eprintln!("evaluating the target model");
    let t = Instant::now();
    let s = evaluate(&target, &ecfg, &out.join("target").join("eval"), progress)?;
    rows.push(row("target", "target", &s, t.elapsed().as_secs_f64()));
    rows.push(retain_row);

    for m in &cfg.methods {
        let t = Instant::now();
        let d = out.join(dir_name(m));
        let rc = run_config(cfg, m, &target, &bench_dir, &d)?;
        eprintln!("unlearning with {m}");
        // the method's model and run directory are the demo's own: an earlier demo's are replaced
        let opts = crate::unlearn::RunOptions {
            progress,
            overwrite: true,
            resume: false,
        };
        let rep = crate::unlearn::run(&rc, &opts)?;
        let s = evaluate(&d.join("model"), &ecfg, &d.join("eval"), progress)?;
        if audit {
            eprintln!("auditing {m}");
            let md = ModelDir::load(&d.join("model"), &candle_core::Device::Cpu)?;
            let ac = crate::eval::audit::AuditConfig {
                eval: ecfg.clone(),
                ..Default::default()
            };
            crate::eval::audit::audit(&md, Some(&target), &ac, &d.join("audit"))?;
        }
        let mut r = row(m, "unlearned", &s, t.elapsed().as_secs_f64());
        r.trainable_params = Some(rep.trainable_params);
        r.changed_params = Some(rep.changed_params);
        rows.push(r);
    }
    let summary = json!({
        "rows": rows,
        "cached_models": cached,
        "model_dirs": {"target": target, "retain": retain},
        "train_seconds": train_s,
        "total_seconds": t0.elapsed().as_secs_f64(),
    });
    atomic_write(
        &out.join("summary.json"),
        serde_json::to_string_pretty(&summary).unwrap().as_bytes(),
    )?;
    let tuned = if sweep {
        tune(cfg, out, &target, &bench_dir, &ecfg)?
    } else {
        vec![]
    };
    let report = out.join("report.html");
    let mut entries = crate::app::report::collect(&[out.to_path_buf()])?;
    entries.retain(|e| !e.eval_dir.starts_with(out.join("sweep")));
    // the table's order: target, retain, then the methods as given
    let order: Vec<String> = rows.iter().map(|r| dir_name(&r.name)).collect();
    entries.sort_by_key(|e| {
        order
            .iter()
            .position(|n| *n == e.name)
            .unwrap_or(usize::MAX)
    });
    let mut html = crate::app::report::render(&entries, "unlearn demo");
    if sweep {
        let section = format!(
            "<h2>Tuned: each method at its best point of the sweep</h2><p>{}</p><pre>{}</pre>\
             <p>Every point, the rule and the Pareto front: <a href=\"sweep/leaderboard.html\">\
             sweep/leaderboard.html</a>.</p><h2>Default settings (the table above)</h2><pre>{}</pre>",
            crate::app::report::esc(&cfg.sweep_rule()),
            crate::app::report::esc(&table(&tuned)),
            crate::app::report::esc(&table(&rows)),
        );
        html = html.replacen("</body>", &format!("{section}</body>"), 1);
    }
    atomic_write(&report, html.as_bytes())?;
    Ok(DemoReport {
        rows,
        tuned,
        report,
        cached_models: cached,
    })
}

/// The `unlearn run` configuration of method `m`: the demo's training settings, then the
/// method's `method_set` overrides.
fn run_config(
    cfg: &DemoConfig,
    m: &str,
    target: &Path,
    bench_dir: &Path,
    d: &Path,
) -> Result<crate::unlearn::RunConfig> {
    let method = crate::unlearn::objective::method::MethodConfig::named(m)
        .map_err(|e| Error::Invalid(format!("demo config: {e}")))?;
    let mut rc = crate::unlearn::RunConfig::new(
        target.to_path_buf(),
        bench_dir.join(format!("{}.jsonl", cfg.forget_split)),
        Some(bench_dir.join(format!("{}.jsonl", cfg.retain_split()?))),
        d.join("model"),
        method,
    );
    rc.run_dir = Some(d.join("run"));
    rc.train = cfg.unlearn.clone();
    let sets = cfg.method_set.get(m).cloned().unwrap_or_default();
    crate::config::load_over(&rc, None, &sets)
}

impl DemoConfig {
    fn sweep_rule(&self) -> String {
        let s = &self.sweep;
        format!(
            "lr in {:?} x epochs in {:?} per method; best: highest {} with {} >= {} x the target's",
            s.lr, s.epochs, s.select.metric, s.select.utility_metric, s.select.utility_floor
        )
    }
}

/// `unlearn demo --sweep`: every method over the demo's grid as one sweep in `OUT/sweep/`
/// (resumable; the leaderboard and every point are there); returns each method's best point.
fn tune(
    cfg: &DemoConfig,
    out: &Path,
    target: &Path,
    bench_dir: &Path,
    ecfg: &EvalConfig,
) -> Result<Vec<Row>> {
    use crate::app::sweep::{self, leaderboard, SweepConfig};
    let dir = out.join("sweep");
    let rc = run_config(cfg, &cfg.methods[0], target, bench_dir, &dir)?;
    let mut base = match toml::Value::try_from(&rc) {
        Ok(toml::Value::Table(t)) => t,
        _ => return Err(Error::Invalid("demo: run config does not serialise".into())),
    };
    for k in ["out", "run_dir", "eval", "method"] {
        base.remove(k);
    }
    let variants = cfg
        .methods
        .iter()
        .map(|m| {
            let mut v = std::collections::BTreeMap::new();
            v.insert("method".to_string(), toml::Value::String(m.clone()));
            for set in cfg.method_set.get(m).into_iter().flatten() {
                if let Some((k, val)) = set.split_once('=') {
                    v.insert(
                        k.trim().to_string(),
                        crate::config::parse_literal(val.trim()),
                    );
                }
            }
            v
        })
        .collect();
    let mut grid = std::collections::BTreeMap::new();
    grid.insert(
        "train.lr".to_string(),
        cfg.sweep
            .lr
            .iter()
            .map(|&x| toml::Value::Float(x))
            .collect(),
    );
    grid.insert(
        "train.epochs".to_string(),
        cfg.sweep
            .epochs
            .iter()
            .map(|&x| toml::Value::Integer(x as i64))
            .collect(),
    );
    let mut sc = SweepConfig {
        out: dir.clone(),
        base,
        grid,
        variants,
        eval: ecfg.clone(),
        select: cfg.sweep.select.clone(),
        executor: Default::default(),
    };
    let (points, _lock) = sweep::prepare(&mut sc)?;
    eprintln!("sweep: {} points in {}", points.len(), dir.display());
    sweep::run_local(&sc, &points, true)?;
    let doc = leaderboard::write(&sc, &points)?;
    let mut rows = vec![];
    for best in doc["best"][&sc.select.metric]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(p) = doc["points"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["point"] == best["point"])
        else {
            continue;
        };
        let below = !best["meets_floor"].as_bool().unwrap_or(false);
        let method = p["method"].as_str().unwrap_or("?");
        let summary = p["summary"].as_object().cloned().unwrap_or_default();
        let time = p["time_s"].as_f64().unwrap_or(f64::NAN);
        rows.push(row(
            &format!("{method}{}", if below { "!" } else { "" }),
            "tuned",
            &summary,
            time,
        ));
        eprintln!(
            "tuned {method}: {}",
            p["hyperparameters"].as_str().unwrap_or("")
        );
    }
    Ok(rows)
}
