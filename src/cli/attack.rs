use std::path::PathBuf;

use anyhow::Result;
use unlearn::data::{read_items, Formatter};
use unlearn::model::hf::ModelDir;
use unlearn::train::TrainConfig;
use unlearn::util::guard::{Input, TrainOutputs};

use super::common::{Device, Overwrite, Settings};

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Fine-tune the unlearned model a few steps on part of the forgotten data and measure how
    /// much comes back (mean probability and loss of an evaluation set, before and after).
    Relearn(RelearnArgs),
    /// Evaluate the model as llama.cpp would run it after quantization (quantize, dequantize,
    /// evaluate) beside the model itself: does forgotten knowledge come back?
    Quantize(QuantizeArgs),
}

#[derive(clap::Args)]
pub struct QuantizeArgs {
    /// The unlearned model (directory or Hub id).
    #[arg(long)]
    model: PathBuf,
    /// Quantization type (llama.cpp's names): q4_0, q4_1, q5_0, q8_0, q4_k, q5_k, q6_k, …
    #[arg(long = "type", default_value = "q4_0")]
    ty: String,
    /// Benchmark: `tofu`, a TOFU-layout directory or a Hub dataset (as `unlearn eval`).
    #[arg(long, default_value = "tofu")]
    benchmark: String,
    /// Forget split.
    #[arg(long, default_value = "forget10")]
    forget_split: String,
    /// TOFU_EVAL.json of the retain model (forget quality).
    #[arg(long)]
    retain_logs: Option<PathBuf>,
    /// Results: original/ and quantized/ evaluations, quantize.json.
    #[arg(long)]
    out: PathBuf,
    /// Evaluation settings (keys of EvalConfig, e.g. --set max_items=40).
    #[command(flatten)]
    settings: Settings,
}

#[derive(clap::Args)]
pub struct RelearnArgs {
    /// The unlearned model (directory or Hub id).
    #[arg(long)]
    model: PathBuf,
    /// Relearning data (QA or text; e.g. a few items of the forget set).
    #[arg(long)]
    data: PathBuf,
    /// Evaluation set (QA or text; default: the relearning data). Use the rest of the forget set
    /// to see whether relearning a part brings back the whole.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// The model before unlearning: the report gives the recovered share.
    #[arg(long)]
    original: Option<PathBuf>,
    /// Where the relearned model is written; relearn.json goes to OUT.run/.
    #[arg(long)]
    out: PathBuf,
    /// Fine-tuning settings (keys of TrainConfig); defaults: 10 steps at lr 1e-5.
    #[command(flatten)]
    settings: Settings,
    #[command(flatten)]
    overwrite: Overwrite,
    #[command(flatten)]
    device: Device,
}

pub fn run(c: Cmd) -> Result<()> {
    match c {
        Cmd::Relearn(a) => relearn(a),
        Cmd::Quantize(a) => quantize(a),
    }
}

/// The forget metrics the quantization attack reports, before and after.
const QUANT_METRICS: [&str; 6] = [
    unlearn::eval::names::FORGET_ROUGE,
    unlearn::eval::names::FORGET_PROB,
    unlearn::eval::names::FORGET_TRUTH_RATIO,
    unlearn::eval::names::FORGET_QUALITY,
    unlearn::eval::names::MODEL_UTILITY,
    unlearn::eval::names::RETAIN_ROUGE,
];

fn quantize(a: QuantizeArgs) -> Result<()> {
    use unlearn::eval::{fingerprint, EvalConfig, Evaluator};
    let ty = unlearn::model::gguf_write::parse_type(&a.ty)?;
    let mut cfg: EvalConfig = a.settings.load()?;
    cfg.data = a.benchmark.clone().into();
    cfg.forget_split = a.forget_split.clone();
    if a.retain_logs.is_some() {
        cfg.retain_logs = a.retain_logs.clone();
    }
    cfg.resolve_names()?;
    let model = unlearn::util::hub::model(&a.model)?;
    let mut inputs = vec![Input::new("model", &model)];
    inputs.extend(cfg.inputs());
    let _lock = unlearn::util::guard::claim_results_dir(
        "--out",
        &a.out,
        &inputs,
        &["quantize.json", "original", "quantized", "run.json"],
    )?;
    let md = ModelDir::load(&model, &candle_core::Device::Cpu)?;
    unlearn::util::rundir::write_run_info(&a.out, "attack-quantize", 0, &cfg, &inputs)?;
    let fp = fingerprint(&model, &cfg)?;
    eprintln!("evaluating the model as it is");
    let before = Evaluator::new(&md.model, &md.tok, &cfg, true)?.run(
        Some(&a.out.join("original")),
        Some(fp.clone()),
        false,
    )?;
    let (q, notes) = unlearn::model::gguf_write::roundtrip(&md.model, ty)?;
    for n in notes.iter().take(3) {
        eprintln!("{n}");
    }
    eprintln!("evaluating it after {} quantization", a.ty);
    // the quantized weights are another model: their cache key says so
    let tag = |k: &str| {
        unlearn::util::hash::sha256(format!("{k}+{}", a.ty.to_ascii_lowercase()).as_bytes())
    };
    let fpq = unlearn::eval::EvalKeys {
        passes: tag(&fp.passes),
        metrics: tag(&fp.metrics),
    };
    let after = Evaluator::new(&q, &md.tok, &cfg, true)?.run(
        Some(&a.out.join("quantized")),
        Some(fpq),
        false,
    )?;
    let get =
        |s: &serde_json::Map<String, serde_json::Value>, k: &str| s.get(k).and_then(|v| v.as_f64());
    let mut rows = serde_json::Map::new();
    println!("{:<22} {:>10} {:>10} {:>10}", "", "model", &a.ty, "change");
    for k in QUANT_METRICS {
        let (b, q) = (get(&before.summary, k), get(&after.summary, k));
        let d = b.zip(q).map(|(b, q)| q - b);
        let f = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
        println!("{k:<22} {:>10} {:>10} {:>10}", f(b), f(q), f(d));
        rows.insert(
            k.into(),
            serde_json::json!({"model": b, "quantized": q, "change": d}),
        );
    }
    let doc =
        serde_json::json!({"type": a.ty.to_ascii_lowercase(), "metrics": rows, "fallbacks": notes});
    unlearn::model::hf::atomic_write(
        &a.out.join("quantize.json"),
        serde_json::to_string_pretty(&doc)?.as_bytes(),
    )?;
    println!("wrote {}", a.out.join("quantize.json").display());
    Ok(())
}

fn relearn(a: RelearnArgs) -> Result<()> {
    let defaults = TrainConfig {
        lr: 1e-5,
        max_steps: 10,
        epochs: 100,
        warmup_ratio: 0.0,
        decay: false,
        ..TrainConfig::default()
    };
    let cfg: TrainConfig = a.settings.load_over(&defaults)?;
    let a = RelearnArgs {
        model: unlearn::util::hub::model(&a.model)?,
        original: a
            .original
            .map(|p| unlearn::util::hub::model(&p))
            .transpose()?,
        data: unlearn::util::hub::file(&a.data)?,
        eval: a.eval.map(|p| unlearn::util::hub::file(&p)).transpose()?,
        ..a
    };
    let run_dir = unlearn::util::rundir::default_for(&a.out);
    let mut inputs = vec![
        Input::new("unlearned model", &a.model),
        Input::new("relearning data", &a.data),
    ];
    for (role, p) in [("evaluation set", &a.eval), ("original model", &a.original)] {
        if let Some(p) = p {
            inputs.push(Input::new(role, p));
        }
    }
    let outs = TrainOutputs::claim(&a.out, &run_dir, &inputs, a.overwrite.overwrite, false)?;
    let dev = a.device.get()?;
    let mut md = ModelDir::load(&a.model, &dev)?;
    md.merge_adapter()?; // relearning fine-tunes every weight
    let original = a
        .original
        .as_ref()
        .map(|p| ModelDir::load(p, &dev))
        .transpose()?;
    let f = Formatter::new(&md.tok, cfg.prompt, cfg.max_len)?;
    let enc = |p: &PathBuf| -> unlearn::Result<Vec<unlearn::data::Encoded>> {
        f.encode_items(&read_items(p)?)
    };
    let data = enc(&a.data)?;
    let eval = enc(a.eval.as_ref().unwrap_or(&a.data))?;
    outs.run.prepare(outs.mode)?;
    unlearn::util::rundir::write_run_info(&run_dir, "attack-relearn", cfg.seed, &cfg, &inputs)?;
    let rep = unlearn::eval::attack::relearn(
        &md,
        &data,
        &eval,
        original.as_ref().map(|m| &m.model),
        &cfg,
        &run_dir,
        true,
    )?;
    unlearn::model::hf::write_model_files(
        &md.model,
        &md.tok,
        Some(&md.config_json),
        &md.side_files,
        outs.model.tmp(),
    )?;
    outs.model.commit()?;
    unlearn::model::hf::atomic_write(
        &run_dir.join("relearn.json"),
        serde_json::to_string_pretty(&rep)?.as_bytes(),
    )?;
    println!("{:<12} {:>10} {:>10}", "", "mean prob", "mean loss");
    if let Some(o) = rep.original {
        println!("{:<12} {:>10.4} {:>10.4}", "original", o.prob, o.loss);
    }
    println!(
        "{:<12} {:>10.4} {:>10.4}",
        "unlearned", rep.before.prob, rep.before.loss
    );
    println!(
        "{:<12} {:>10.4} {:>10.4}",
        format!("relearned"),
        rep.after.prob,
        rep.after.loss
    );
    if let Some(r) = rep.recovered {
        println!(
            "recovered share of the forgotten probability: {:.1}%",
            100.0 * r
        );
    }
    println!(
        "{} steps on {} items; evaluated on {} items; model in {}, report in {}",
        rep.steps,
        rep.relearn_items,
        rep.eval_items,
        a.out.display(),
        run_dir.join("relearn.json").display()
    );
    Ok(())
}
