use anyhow::Result;
use unlearn::unlearn::{run as unlearn_run, RunConfig, RunOptions};

use super::common::{Restart, Settings};

#[derive(clap::Args)]
pub struct Args {
    /// Experiment settings: model, forget, retain, out, method, [train], trainable, ref, [eval], …
    #[command(flatten)]
    settings: Settings,
    #[command(flatten)]
    restart: Restart,
}

pub fn run(a: Args) -> Result<()> {
    let mut cfg: RunConfig = a.settings.load()?;
    cfg.resolve_names()?;
    let opts = RunOptions {
        progress: true,
        overwrite: a.restart.overwrite,
        resume: a.restart.resume,
    };
    let rep = unlearn_run(&cfg, &opts)?;
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
