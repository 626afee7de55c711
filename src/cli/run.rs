use std::path::PathBuf;

use anyhow::Result;
use unlearn::unlearn::{run as unlearn_run, RunConfig};

#[derive(clap::Args)]
pub struct Args {
    /// Experiment config (TOML): model, forget, retain, out, method, [train], trainable, ref, …
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a key, e.g. --set method=npo+gd --set train.lr=1e-4 (repeatable).
    #[arg(long = "set")]
    set: Vec<String>,
}

pub fn run(a: Args) -> Result<()> {
    let cfg: RunConfig = unlearn::config::load(a.config.as_deref(), &a.set)?;
    let rep = unlearn_run(&cfg, true)?;
    println!(
        "{} task(s), {} steps, {} trainable parameters, {} changed; final {}; saved {}",
        rep.tasks,
        rep.steps,
        rep.trainable_params,
        rep.changed_params,
        rep.final_eval,
        cfg.out.display()
    );
    Ok(())
}
