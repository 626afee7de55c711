use std::path::PathBuf;

use anyhow::Result;
use unlearn::data::{read_items, Formatter};
use unlearn::hf::ModelDir;
use unlearn::train::TrainConfig;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Fine-tune the unlearned model a few steps on part of the forgotten data and measure how
    /// much comes back (mean probability and loss of an evaluation set, before and after).
    Relearn(RelearnArgs),
}

#[derive(clap::Args)]
pub struct RelearnArgs {
    /// The unlearned model.
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
    /// Fine-tuning settings (TOML, keys of TrainConfig); defaults: 10 steps at lr 1e-5.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a setting, e.g. --set max_steps=5 --set lr=5e-5 (repeatable).
    #[arg(long = "set")]
    set: Vec<String>,
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(c: Cmd) -> Result<()> {
    let Cmd::Relearn(a) = c;
    let defaults = TrainConfig {
        lr: 1e-5,
        max_steps: 10,
        epochs: 100,
        warmup_ratio: 0.0,
        decay: false,
        ..TrainConfig::default()
    };
    let cfg: TrainConfig = unlearn::config::load_over(&defaults, a.config.as_deref(), &a.set)?;
    unlearn::unlearn::check_writable(&a.out)?;
    let run_dir = unlearn::rundir::default_for(&a.out);
    let dev = unlearn::device(&a.device)?;
    let md = ModelDir::load(&a.model, &dev)?;
    let original = a
        .original
        .as_ref()
        .map(|p| ModelDir::load(p, &dev))
        .transpose()?;
    let f = Formatter::new(&md.tok, cfg.prompt, cfg.max_len)?;
    let enc = |p: &PathBuf| -> unlearn::Result<Vec<unlearn::data::Encoded>> {
        read_items(p)?
            .iter()
            .map(|it| f.encode_qa(&it.question, &it.answer))
            .collect()
    };
    let data = enc(&a.data)?;
    let eval = enc(a.eval.as_ref().unwrap_or(&a.data))?;
    unlearn::rundir::write_run_info(&run_dir, "attack-relearn", cfg.seed, &cfg)?;
    let rep = unlearn::attack::relearn(
        &md,
        &data,
        &eval,
        original.as_ref().map(|m| &m.model),
        &cfg,
        &run_dir,
        true,
    )?;
    md.save(&a.out)?;
    unlearn::hf::atomic_write(
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
