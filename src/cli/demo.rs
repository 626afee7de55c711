use std::path::PathBuf;

use anyhow::Result;
use unlearn::app::demo::{run as run_demo, table, DemoConfig};

#[derive(clap::Args)]
pub struct Args {
    /// Unlearning methods, comma-separated (default: ga+gd,npo+gd,simnpo+gd,me+gd,idk+ap,simu,unierase).
    #[arg(long, value_delimiter = ',')]
    methods: Option<Vec<String>>,
    /// Fictitious people in the synthetic benchmark (default 40).
    #[arg(long)]
    people: Option<usize>,
    /// Benchmark seed (default 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Output directory (benchmark, evaluations, unlearned models, report.html).
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Demo settings (TOML, keys of DemoConfig); flags above override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a setting, e.g. --set pretrain.epochs=20 --set unlearn.lr=5e-4 (repeatable).
    #[arg(long = "set")]
    set: Vec<String>,
    /// Also tune every method over a small grid (sweep.lr x sweep.epochs) and show each
    /// method's best point beside the default table (a few minutes on 2 cores).
    #[arg(long)]
    sweep: bool,
    /// Also audit every unlearned model (`unlearn audit`: paraphrase, jailbreak wrappers,
    /// few-shot, q4_0, relearning) and add the robustness table to the report (about 12 s per
    /// method on 2 cores).
    #[arg(long)]
    audit: bool,
}

pub fn run(a: Args) -> Result<()> {
    let mut cfg: DemoConfig =
        unlearn::config::load_over(&DemoConfig::default(), a.config.as_deref(), &a.set)?;
    if let Some(m) = a.methods {
        cfg.methods = m.into_iter().filter(|s| !s.trim().is_empty()).collect();
    }
    if let Some(p) = a.people {
        cfg.benchmark.people = p;
    }
    if let Some(s) = a.seed {
        cfg.benchmark.seed = s;
    }
    let start = std::time::Instant::now();
    let rep = run_demo(&cfg, &a.out, true, a.sweep, a.audit)?;
    println!();
    print!("{}", table(&rep.rows));
    if a.sweep {
        println!(
            "\ntuned (each method at its best point of {}/sweep; `!`: no point kept 0.95 x the \
             target's utility, the best-utility one is shown):",
            a.out.display()
        );
        print!("{}", table(&rep.tuned));
    }
    println!(
        "\nforget quality: KS p-value of forget-set truth ratios against the retain model (1.0 = \
         indistinguishable from retraining without the forget set)."
    );
    println!(
        "{} in {:.0}s; report: {}",
        if rep.cached_models {
            "done (target and retain models from the cache)"
        } else {
            "done (target and retain models trained and cached)"
        },
        start.elapsed().as_secs_f64(),
        rep.report.display()
    );
    Ok(())
}
