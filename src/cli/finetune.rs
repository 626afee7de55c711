use std::path::PathBuf;

use anyhow::{Context, Result};
use unlearn::data::{read_items, Formatter};
use unlearn::hf::ModelDir;
use unlearn::train::{finetune, TrainConfig};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    model: PathBuf,
    /// QA data (JSON array or JSONL with `question` and `answer`), or text (`{"text": …}` lines
    /// or a .txt file, one text per line).
    #[arg(long)]
    data: PathBuf,
    /// Where the fine-tuned HF directory is written (atomically).
    #[arg(long)]
    out: PathBuf,
    /// TOML config (keys of TrainConfig: lr, epochs, batch_size, grad_accum, …).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. --set lr=3e-4 (repeatable).
    #[arg(long = "set")]
    set: Vec<String>,
    /// Run directory for run.json, train_log.jsonl and checkpoints (default: OUT.run).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(a: Args) -> Result<()> {
    let cfg: TrainConfig = unlearn::config::load(a.config.as_deref(), &a.set)?;
    let run_dir = a
        .run_dir
        .clone()
        .unwrap_or_else(|| unlearn::rundir::default_for(&a.out));
    let dev = unlearn::device(&a.device)?;
    let md =
        ModelDir::load(&a.model, &dev).with_context(|| format!("loading {}", a.model.display()))?;
    let items = read_items(&a.data)?;
    let f = Formatter::new(&md.tok, cfg.prompt, cfg.max_len)?;
    let data = items
        .iter()
        .map(|it| f.encode_qa(&it.question, &it.answer))
        .collect::<unlearn::Result<Vec<_>>>()?;
    unlearn::rundir::write_run_info(&run_dir, "finetune", cfg.seed, &cfg)?;
    eprintln!(
        "fine-tuning {} ({} parameters) on {} items from {}; run dir {}",
        a.model.display(),
        md.model.num_params(),
        data.len(),
        a.data.display(),
        run_dir.display()
    );
    let rep = finetune(&md, &data, &cfg, &run_dir, true)?;
    md.save(&a.out)?;
    println!(
        "{} steps, final loss {:.4}, {:.0} tokens/s; saved {}",
        rep.steps,
        rep.final_loss,
        rep.tokens_per_s,
        a.out.display()
    );
    Ok(())
}
