use std::path::PathBuf;

use anyhow::Result;
use unlearn::app::sweep::{self, leaderboard, slurm, ExecutorKind, SweepConfig};

use super::common::Settings;

#[derive(clap::Args)]
pub struct Args {
    /// Sweep settings: out, [base] (an `unlearn run` config), [grid], [[variants]], [eval],
    /// [select], [executor]. `--set` overrides keys (e.g. --set executor.kind=slurm).
    #[command(flatten)]
    settings: Settings,
    /// Where points run: `local` (here, one after another) or `slurm` (one array job).
    #[arg(long, value_parser = ["local", "slurm"])]
    executor: Option<String>,
    /// slurm: wait until the array job has finished, then write the leaderboard.
    #[arg(long)]
    wait: bool,
}

pub fn run(a: Args) -> Result<()> {
    anyhow::ensure!(
        a.settings.config.is_some(),
        "give the sweep's settings with --config sweep.toml"
    );
    let mut cfg: SweepConfig = a.settings.load()?;
    match a.executor.as_deref() {
        Some("slurm") => cfg.executor.kind = ExecutorKind::Slurm,
        Some("local") => cfg.executor.kind = ExecutorKind::Local,
        _ => {}
    }
    let (points, _lock) = sweep::prepare(&mut cfg)?;
    let finished = match cfg.executor.kind {
        ExecutorKind::Local => {
            let (_, failed) = sweep::run_local(&cfg, &points, true)?;
            if failed > 0 {
                eprintln!("sweep: {failed} point(s) failed (recorded; the next call retries them)");
            }
            true
        }
        ExecutorKind::Slurm => submit_or_wait(&cfg, &points, a.wait)?,
    };
    let doc = leaderboard::write(&cfg, &points)?;
    print!(
        "{}",
        std::fs::read_to_string(cfg.out.join("LEADERBOARD.md")).unwrap_or_default()
    );
    println!(
        "wrote {} (LEADERBOARD.md, LEADERBOARD.json, leaderboard.html)",
        cfg.out.display()
    );
    let n_done = doc["points"].as_array().map_or(0, |v| v.len());
    if finished && n_done == 0 {
        anyhow::bail!("no point of the sweep finished (see LEADERBOARD.md for each error)");
    }
    Ok(())
}

/// Submit what is pending (unless a job of this sweep is still active); with `wait`, poll until
/// it leaves the queue. Returns whether the sweep's work is over.
fn submit_or_wait(cfg: &SweepConfig, points: &[sweep::Point], wait: bool) -> Result<bool> {
    let s = &cfg.executor.slurm;
    let id = match slurm::running_job(&cfg.out)? {
        Some(id) => {
            eprintln!("sweep: Slurm job {id} of this sweep is still active");
            id
        }
        None => {
            let mut tasks: Vec<String> = vec![];
            if !cfg
                .out
                .join("target")
                .join(unlearn::eval::SUMMARY_FILE)
                .is_file()
            {
                tasks.push("target".into());
            }
            tasks.extend(
                points
                    .iter()
                    .filter(|p| {
                        !matches!(
                            sweep::status(&cfg.point_dir(&p.hash)),
                            sweep::Status::Done(_)
                        )
                    })
                    .map(|p| p.hash.clone()),
            );
            if tasks.is_empty() {
                eprintln!("sweep: every point has finished");
                return Ok(true);
            }
            let id = slurm::submit(s, &cfg.out, &tasks)?;
            eprintln!(
                "sweep: submitted Slurm array job {id} ({} tasks)",
                tasks.len()
            );
            id
        }
    };
    if !wait {
        eprintln!("sweep: run `unlearn sweep` again (or pass --wait) for the final leaderboard");
        return Ok(false);
    }
    slurm::wait(s, &id)?;
    let left = points
        .iter()
        .filter(|p| {
            !matches!(
                sweep::status(&cfg.point_dir(&p.hash)),
                sweep::Status::Done(_)
            )
        })
        .count();
    if left > 0 {
        eprintln!(
            "sweep: {left} point(s) did not finish (failed, or the task died: see {}/slurm/); \
             the next `unlearn sweep` submits them again",
            cfg.out.display()
        );
    }
    Ok(true)
}

#[derive(clap::Args)]
pub struct PointArgs {
    /// The sweep directory.
    dir: PathBuf,
    /// The point's hash, or `target`.
    point: String,
}

/// One point of a prepared sweep (what a Slurm task runs).
pub fn point(a: PointArgs) -> Result<()> {
    let ok = sweep::run_one(&a.dir, &a.point)?;
    anyhow::ensure!(ok, "point {} failed (see its result.json)", a.point);
    Ok(())
}
