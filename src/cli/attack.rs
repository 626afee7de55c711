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
    let Cmd::Relearn(a) = c;
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
    let md = ModelDir::load(&a.model, &dev)?;
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
