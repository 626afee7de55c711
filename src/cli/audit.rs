use std::path::PathBuf;

use anyhow::Result;
use unlearn::eval::audit::{audit, AuditConfig};
use unlearn::model::hf::ModelDir;
use unlearn::util::guard::{claim_results_dir, Input};

use super::common::{Device, Settings};

#[derive(clap::Args)]
pub struct Args {
    /// The unlearned model (directory or Hub id).
    #[arg(long)]
    model: PathBuf,
    /// The model before unlearning: the relearning attack reports the share that came back.
    #[arg(long)]
    original: Option<PathBuf>,
    /// Benchmark: `tofu`, a TOFU-layout directory or a Hub dataset (as `unlearn eval`).
    #[arg(long, default_value = "tofu")]
    benchmark: String,
    /// Forget split.
    #[arg(long, default_value = "forget10")]
    forget_split: String,
    /// Output directory: AUDIT.json and each probe's evaluation.
    #[arg(long)]
    out: PathBuf,
    /// Audit settings (keys of AuditConfig: quantize, few_shot, relearn.*, eval.*).
    #[command(flatten)]
    settings: Settings,
    #[command(flatten)]
    device: Device,
}

pub fn run(a: Args) -> Result<()> {
    let mut cfg: AuditConfig = a.settings.load()?;
    cfg.eval.data = a.benchmark.clone().into();
    cfg.eval.forget_split = a.forget_split.clone();
    cfg.eval.resolve_names()?;
    let model = unlearn::util::hub::model(&a.model)?;
    let original = a
        .original
        .map(|p| unlearn::util::hub::model(&p))
        .transpose()?;
    let mut inputs = vec![Input::new("model", &model)];
    if let Some(o) = &original {
        inputs.push(Input::new("original model", o));
    }
    inputs.extend(cfg.eval.inputs());
    let _lock = claim_results_dir(
        "--out",
        &a.out,
        &inputs,
        &["AUDIT.json", "probes", "relearn_half", "run.json"],
    )?;
    let md = ModelDir::load(&model, &a.device.get()?)?;
    unlearn::util::rundir::write_run_info(&a.out, "audit", cfg.relearn.seed, &cfg, &inputs)?;
    let doc = audit(&md, original.as_deref(), &cfg, &a.out)?;
    let f = |v: &serde_json::Value| {
        v.as_f64()
            .map(|x| format!("{x:.4}"))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "{:<20} {:>12} {:>12} {:>12}",
        "attack", "forget ROUGE", "forget prob", "refusal rate"
    );
    for (k, v) in doc["attacks"].as_object().into_iter().flatten() {
        if k == "relearn_half" {
            continue;
        }
        println!(
            "{k:<20} {:>12} {:>12} {:>12}",
            f(&v["forget_rouge"]),
            f(&v["forget_prob"]),
            f(&v["forget_refusal_rate"])
        );
    }
    let r = &doc["attacks"]["relearn_half"];
    println!(
        "relearn_half: forget prob of the held-out half {} -> {} (original {}); recovered share {}",
        f(&r["forget_prob_before"]),
        f(&r["forget_prob_after"]),
        f(&r["forget_prob_original"]),
        f(&r["recovered"])
    );
    println!("wrote {}", a.out.join("AUDIT.json").display());
    Ok(())
}
