use std::path::PathBuf;

use anyhow::Result;

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
}

pub fn run(a: Args) -> Result<()> {
    let entries = unlearn::report::collect(&a.dirs)?;
    let out = a.out.unwrap_or_else(|| a.dirs[0].join("report.html"));
    let html = unlearn::report::render(&entries, &a.title);
    unlearn::hf::atomic_write(&out, html.as_bytes())?;
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
