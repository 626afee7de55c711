use std::path::PathBuf;

use anyhow::Result;
use unlearn::util::guard::{Input, OutKind, Pending};

use super::common::Overwrite;

#[derive(clap::Args)]
pub struct Args {
    /// Directories holding evaluations (TOFU_EVAL.json), searched 4 levels deep: a demo output,
    /// run directories, `unlearn eval --out` directories.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Output HTML file (default: report.html in the first directory).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value = "unlearn report")]
    title: String,
    #[command(flatten)]
    overwrite: Overwrite,
}

pub fn run(a: Args) -> Result<()> {
    let entries = unlearn::app::report::collect(&a.dirs)?;
    let out = a.out.unwrap_or_else(|| a.dirs[0].join("report.html"));
    anyhow::ensure!(
        out.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm")),
        "--out {}: the report is an HTML file; give it an .html name",
        out.display()
    );
    // every file the report was made from is an input it must not replace
    let inputs: Vec<Input> = entries
        .iter()
        .map(|e| Input::new("evaluation", e.eval_dir.join(unlearn::eval::EVAL_FILE)))
        .collect();
    let pending = Pending::claim("--out", &out, OutKind::File, &inputs, a.overwrite.overwrite)?;
    let html = unlearn::app::report::render(&entries, &a.title);
    unlearn::util::fs::write_synced(pending.tmp(), html.as_bytes())?;
    pending.commit()?;
    println!(
        "report of {} model(s) ({}) written to {}",
        entries.len(),
        entries
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        out.display()
    );
    Ok(())
}
