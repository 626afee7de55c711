use std::path::PathBuf;

use anyhow::Result;
use unlearn::data::{read_items, Formatter};
use unlearn::model::hf::ModelDir;
use unlearn::train::{finetune_from, TrainConfig};
use unlearn::util::guard::{Input, RunDirMode, TrainOutputs};

use super::common::{Device, Restart, Settings};

#[derive(clap::Args)]
pub struct Args {
    /// Model: a HF model directory or a Hub id (org/name[@revision]).
    #[arg(long)]
    model: PathBuf,
    /// QA data (JSON array or JSONL with `question` and `answer`), or text (`{"text": …}` lines
    /// or a .txt file, one text per line).
    #[arg(long)]
    data: PathBuf,
    /// Where the fine-tuned HF directory is written (atomically, at the end).
    #[arg(long)]
    out: PathBuf,
    /// Keys of TrainConfig: lr, epochs, batch_size, grad_accum, save_every, …
    #[command(flatten)]
    settings: Settings,
    /// Run directory for run.json, train_log.jsonl and checkpoints (default: OUT.run).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    #[command(flatten)]
    restart: Restart,
    #[command(flatten)]
    device: Device,
}

pub fn run(a: Args) -> Result<()> {
    let cfg: TrainConfig = a.settings.load()?;
    let a = Args {
        model: unlearn::util::hub::model(&a.model)?,
        data: unlearn::util::hub::file(&a.data)?,
        ..a
    };
    let run_dir = a
        .run_dir
        .clone()
        .unwrap_or_else(|| unlearn::util::rundir::default_for(&a.out));
    let inputs = [
        Input::new("input model", &a.model),
        Input::new("data", &a.data),
    ];
    let outs = TrainOutputs::claim(
        &a.out,
        &run_dir,
        &inputs,
        a.restart.overwrite,
        a.restart.resume,
    )?;
    let mut md = ModelDir::load(&a.model, &a.device.get()?)?;
    md.merge_adapter()?; // fine-tuning trains every weight
    let items = read_items(&a.data)?;
    let f = Formatter::new(&md.tok, cfg.prompt, cfg.max_len)?;
    let data = f.encode_items(&items)?;
    let resume = match outs.mode {
        RunDirMode::Resume => Some(unlearn::util::rundir::resume_checkpoint(
            &run_dir, "finetune", &cfg, &inputs,
        )?),
        _ => None,
    };
    outs.run.prepare(outs.mode)?;
    if resume.is_none() {
        unlearn::util::rundir::write_run_info(&run_dir, "finetune", cfg.seed, &cfg, &inputs)?;
    }
    eprintln!(
        "fine-tuning {} ({} parameters) on {} items from {}; run dir {}{}",
        a.model.display(),
        md.model.num_params(),
        data.len(),
        a.data.display(),
        run_dir.display(),
        resume
            .as_ref()
            .map(|c| format!("; resuming from {}", c.display()))
            .unwrap_or_default()
    );
    let rep = finetune_from(&md, &data, &cfg, &run_dir, true, resume.as_deref())?;
    unlearn::model::hf::write_model_files(
        &md.model,
        &md.tok,
        Some(&md.config_json),
        &md.side_files,
        outs.model.tmp(),
    )?;
    outs.model.commit()?;
    println!(
        "{} steps, final loss {:.4}, {:.0} tokens/s; saved {}",
        rep.steps,
        rep.final_loss,
        rep.tokens_per_s,
        a.out.display()
    );
    Ok(())
}
