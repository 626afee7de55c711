use std::path::PathBuf;

use anyhow::Result;
use unlearn::eval::{fingerprint, names, EvalConfig, Evaluator};
use unlearn::model::hf::ModelDir;
use unlearn::util::guard::{claim_results_dir, Input};

use super::common::{Device, Settings};

#[derive(clap::Args)]
pub struct Args {
    /// Model to evaluate: a HF model directory or a Hub id (org/name[@revision]).
    #[arg(long)]
    model: PathBuf,
    /// `tofu` ($UNLEARN_TOFU_DIR when set, else the Hub dataset locuslab/TOFU), a directory in
    /// its layout, a TOFU-layout Hub dataset (org/name[@revision]), or `exclusive` (Exclusive Unlearning: out-of-domain loss, in-domain QA, probes under
    /// jailbreak wrappers; give --keep, --ood and optionally --probes).
    #[arg(long, default_value = "tofu")]
    benchmark: String,
    /// General-ability tasks (mmlu, arc_challenge, arc_easy, truthfulqa_mc1, wmdp_bio,
    /// wmdp_chem, wmdp_cyber, gsm8k, triviaqa) and `muse`: the directory holding the dataset in
    /// its Hub layout (parquet or JSON).
    #[arg(long)]
    data: Option<PathBuf>,
    /// exclusive: in-domain QA set.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// exclusive: held-out out-of-domain text (.txt lines, {"text"} or QA JSONL).
    #[arg(long)]
    ood: Option<PathBuf>,
    /// exclusive: probe set (QA JSONL of requests with reference answers; default built in).
    #[arg(long)]
    probes: Option<PathBuf>,
    /// Forget split (forget01, forget05, forget10, …).
    #[arg(long, default_value = "forget10")]
    forget_split: String,
    /// TOFU_EVAL.json of the retain-only model (forget quality, PrivLeak): a path or a Hub file
    /// (hf://datasets/org/name/path/TOFU_EVAL.json).
    #[arg(long)]
    retain_logs: Option<PathBuf>,
    /// Reference model for the Reference MIA (the retain model; directory or Hub id).
    #[arg(long)]
    reference_model: Option<PathBuf>,
    /// Sentence encoder (all-MiniLM-L6-v2): directory or Hub id.
    #[arg(long)]
    embedder: Option<PathBuf>,
    /// NLI classifier (entailment score): directory or Hub id.
    #[arg(long)]
    nli: Option<PathBuf>,
    /// Output directory: TOFU_EVAL.json, TOFU_SUMMARY.json, EVAL_CACHE.json.
    #[arg(long)]
    out: PathBuf,
    /// Recompute metrics already present in TOFU_EVAL.json.
    #[arg(long)]
    overwrite: bool,
    /// Evaluation settings (keys of EvalConfig, e.g. --set max_items=50); the flags above
    /// override them.
    #[command(flatten)]
    settings: Settings,
    /// Compute dtype of the evaluated model: f32 or bf16 (TOFU-style benchmarks; the
    /// `dtype` evaluation setting).
    #[arg(long)]
    dtype: Option<unlearn::model::Precision>,
    #[command(flatten)]
    device: Device,
}

pub fn run(a: Args) -> Result<()> {
    let other: Option<fn(Args) -> Result<()>> = if a.benchmark == "exclusive" {
        Some(exclusive)
    } else if a.benchmark == "muse" {
        Some(muse)
    } else if unlearn::eval::harness::tasks::find(&a.benchmark).is_some() {
        Some(harness)
    } else {
        None
    };
    if let Some(evaluate) = other {
        anyhow::ensure!(
            a.dtype.is_none_or(|d| d.is_default()),
            "--dtype bf16 is implemented for the TOFU-style evaluation only, not for --benchmark {}",
            a.benchmark
        );
        return evaluate(a);
    }
    anyhow::ensure!(
        a.data.is_none(),
        "--data is for the general-ability tasks ({}); `{}` reads its data from --benchmark",
        unlearn::eval::harness::tasks::names().join(", "),
        a.benchmark
    );
    let mut cfg: EvalConfig = a.settings.load()?;
    cfg.data = a.benchmark.clone().into();
    cfg.forget_split = a.forget_split;
    if let Some(d) = a.dtype {
        cfg.dtype = d;
    }
    for (slot, v) in [
        (&mut cfg.retain_logs, a.retain_logs),
        (&mut cfg.reference_model, a.reference_model),
        (&mut cfg.embedder, a.embedder),
        (&mut cfg.nli, a.nli),
    ] {
        if v.is_some() {
            *slot = v;
        }
    }
    cfg.resolve_names()?;
    let model = unlearn::util::hub::model(&a.model)?;
    let mut inputs = vec![Input::new("model", &model)];
    inputs.extend(cfg.inputs());
    let _lock = claim_results_dir(
        "--out",
        &a.out,
        &inputs,
        &[
            unlearn::eval::EVAL_FILE,
            unlearn::eval::CACHE_FILE,
            "run.json",
        ],
    )?;
    let dev = a.device.get()?;
    let mut md = ModelDir::load(&model, &dev)?;
    if !cfg.dtype.is_default() {
        md.model = md.model.for_precision(cfg.dtype, true)?;
    }
    let fp = fingerprint(&model, &cfg)?;
    let mut evaluator = Evaluator::new(&md.model, &md.tok, &cfg, true)?;
    unlearn::util::rundir::write_run_info(&a.out, "eval", 0, &cfg, &inputs)?;
    let start = std::time::Instant::now();
    let out = evaluator.run(Some(&a.out), Some(fp), a.overwrite)?;
    let show = |k: &str| match out.summary.get(k).and_then(|v| v.as_f64()) {
        Some(x) => format!("{x:.4}"),
        None => "skipped".into(),
    };
    for k in [
        names::FORGET_QUALITY,
        names::MODEL_UTILITY,
        names::FORGET_PROB,
        names::FORGET_ROUGE,
        names::FORGET_TRUTH_RATIO,
        names::RETAIN_PROB,
        names::RETAIN_ROUGE,
        names::EXTRACTION_STRENGTH,
        names::PRIVLEAK,
    ] {
        println!("{k:<22} {}", show(k));
    }
    let skipped: Vec<String> = out
        .eval
        .iter()
        .filter_map(|(k, v)| {
            v.get("skipped")
                .map(|r| format!("{k}: {}", r.as_str().unwrap_or("")))
        })
        .collect();
    if !skipped.is_empty() {
        println!("skipped:\n  {}", skipped.join("\n  "));
    }
    println!(
        "computed {} metric(s); model passes run: {}",
        out.computed.len(),
        if out.passes.is_empty() {
            "none (cached)".to_string()
        } else {
            out.passes.join(", ")
        }
    );
    println!(
        "wrote {} ({:.1}s)",
        a.out.join(unlearn::eval::EVAL_FILE).display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn muse(a: Args) -> Result<()> {
    use unlearn::eval::muse::{evaluate, load, MuseConfig, EVAL_FILE, SUMMARY_FILE};
    let mut cfg: MuseConfig = a.settings.load()?;
    if a.data.is_some() {
        cfg.data = a.data;
    }
    // a Hub dataset id becomes its snapshot directory (fetched once)
    if let Some(d) = cfg.data.as_mut() {
        *d = unlearn::data::benchmark::dataset_dir(d)?;
    }
    if a.retain_logs.is_some() {
        cfg.retain_logs = a.retain_logs;
    }
    if let Some(r) = cfg.retain_logs.as_mut() {
        *r = unlearn::util::hub::file(r)?;
    }
    let model = unlearn::util::hub::model(&a.model)?;
    let mut inputs = vec![Input::new("model", &model)];
    for (role, p) in [("MUSE data", &cfg.data), ("retain logs", &cfg.retain_logs)] {
        if let Some(p) = p {
            inputs.push(Input::new(role, p));
        }
    }
    // the data is read and checked before the output directory is claimed or the model loads
    let data = load(&cfg)?;
    let _lock = claim_results_dir(
        "--out",
        &a.out,
        &inputs,
        &[EVAL_FILE, SUMMARY_FILE, "run.json"],
    )?;
    let dev = a.device.get()?;
    let md = ModelDir::load(&model, &dev)?;
    unlearn::util::rundir::write_run_info(&a.out, "eval-muse", 0, &cfg, &inputs)?;
    let start = std::time::Instant::now();
    let s = evaluate(&md.model, &md.tok, &cfg, &data, &a.out, true)?;
    for (k, v) in &s {
        match v.as_f64() {
            Some(x) => println!("{k:<24} {x:.4}"),
            None => println!("{k:<24} skipped"),
        }
    }
    println!(
        "wrote {} ({:.1}s)",
        a.out.join(EVAL_FILE).display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn harness(a: Args) -> Result<()> {
    use unlearn::eval::harness::{eval_file, evaluate, load, summary_file, HarnessConfig};
    let mut cfg: HarnessConfig = a.settings.load_over(&HarnessConfig {
        task: a.benchmark.clone(),
        ..Default::default()
    })?;
    cfg.task = a.benchmark.clone();
    if a.data.is_some() {
        cfg.data = a.data;
    }
    // a Hub dataset id becomes its snapshot directory (fetched once)
    if let Some(d) = cfg.data.as_mut() {
        *d = unlearn::data::benchmark::dataset_dir(d)?;
    }
    if a.embedder.is_some() {
        cfg.embedder = a.embedder;
    }
    for m in cfg.embedder.iter_mut() {
        *m = unlearn::util::hub::model(m)?;
    }
    let model = unlearn::util::hub::model(&a.model)?;
    let mut inputs = vec![Input::new("model", &model)];
    for (role, p) in [
        ("task data", &cfg.data),
        ("sentence encoder", &cfg.embedder),
        ("refusal pool", &cfg.refusals),
    ] {
        if let Some(p) = p {
            inputs.push(Input::new(role, p));
        }
    }
    // the data is read and checked before the output directory is claimed or the model loads
    let loaded = load(&cfg)?;
    let (ef, sf) = (eval_file(&cfg.task), summary_file(&cfg.task));
    let _lock = claim_results_dir("--out", &a.out, &inputs, &[&ef, &sf, "run.json"])?;
    let dev = a.device.get()?;
    let md = ModelDir::load(&model, &dev)?;
    unlearn::util::rundir::write_run_info(
        &a.out,
        &format!("eval-{}", cfg.task),
        cfg.seed,
        &cfg,
        &inputs,
    )?;
    let start = std::time::Instant::now();
    let out = evaluate(&md.model, &md.tok, &cfg, &loaded, &a.out, true)?;
    for (k, v) in &out.summary {
        match v.as_f64() {
            Some(x) => println!("{k:<32} {x:.4}"),
            None => println!("{k:<32} {}", v),
        }
    }
    println!(
        "wrote {} ({:.1}s)",
        a.out.join(ef).display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn exclusive(a: Args) -> Result<()> {
    use unlearn::eval::exclusive::{evaluate, ExclusiveEvalConfig};
    let mut cfg: ExclusiveEvalConfig = a.settings.load()?;
    for (slot, v) in [
        (&mut cfg.keep, a.keep),
        (&mut cfg.ood, a.ood),
        (&mut cfg.probes, a.probes),
        (&mut cfg.embedder, a.embedder),
    ] {
        if v.is_some() {
            *slot = v;
        }
    }
    anyhow::ensure!(
        cfg.keep.is_some() || cfg.ood.is_some(),
        "--benchmark exclusive needs --keep (in-domain QA) and/or --ood (out-of-domain text)"
    );
    for m in cfg.embedder.iter_mut() {
        *m = unlearn::util::hub::model(m)?;
    }
    for f in [
        &mut cfg.keep,
        &mut cfg.ood,
        &mut cfg.probes,
        &mut cfg.refusals,
    ]
    .into_iter()
    .flatten()
    {
        *f = unlearn::util::hub::file(f)?;
    }
    let model = unlearn::util::hub::model(&a.model)?;
    let mut inputs = vec![Input::new("model", &model)];
    for (role, p) in [
        ("keep set", &cfg.keep),
        ("out-of-domain text", &cfg.ood),
        ("probe set", &cfg.probes),
        ("sentence encoder", &cfg.embedder),
        ("refusal pool", &cfg.refusals),
    ] {
        if let Some(p) = p {
            inputs.push(Input::new(role, p));
        }
    }
    let _lock = claim_results_dir(
        "--out",
        &a.out,
        &inputs,
        &["EXCLUSIVE_EVAL.json", "EXCLUSIVE_SUMMARY.json", "run.json"],
    )?;
    let dev = a.device.get()?;
    let md = ModelDir::load(&model, &dev)?;
    unlearn::util::rundir::write_run_info(&a.out, "eval-exclusive", 0, &cfg, &inputs)?;
    let start = std::time::Instant::now();
    let s = evaluate(&md.model, &md.tok, &cfg, &a.out, true)?;
    for (k, v) in &s {
        match v.as_f64() {
            Some(x) => println!("{k:<32} {x:.4}"),
            None => println!("{k:<32} skipped"),
        }
    }
    println!(
        "ln(vocab) = {:.4}; {:.0}s; results in {}",
        (md.model.cfg.vocab_size as f64).ln(),
        start.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}
