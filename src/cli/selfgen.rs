use std::path::PathBuf;

use anyhow::Result;
use unlearn::data::write_qa;
use unlearn::hf::ModelDir;
use unlearn::selfgen::{selfgen, SelfGenConfig};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    model: PathBuf,
    /// Number of distinct texts.
    #[arg(long)]
    count: Option<usize>,
    /// Output JSONL: {"question": user turn, "answer": generated text} per line.
    #[arg(long)]
    out: PathBuf,
    /// Settings (TOML, keys of SelfGenConfig: temperature, top_p, max_new_tokens, seed, turns,
    /// batch_size, min_chars, …).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a setting, e.g. --set temperature=0.8 (repeatable).
    #[arg(long = "set")]
    set: Vec<String>,
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(a: Args) -> Result<()> {
    let mut cfg: SelfGenConfig = unlearn::config::load(a.config.as_deref(), &a.set)?;
    if let Some(n) = a.count {
        cfg.count = n;
    }
    unlearn::unlearn::check_writable(&a.out)?;
    let dev = unlearn::device(&a.device)?;
    let md = ModelDir::load(&a.model, &dev)?;
    let t = std::time::Instant::now();
    let items = selfgen(&md.model, &md.tok, &cfg, true)?;
    write_qa(&items, &a.out)?;
    let cfg_path = a.out.with_extension("config.json");
    unlearn::hf::atomic_write(
        &cfg_path,
        serde_json::to_string_pretty(&serde_json::json!({
            "model": a.model, "config": cfg, "version": unlearn::VERSION, "texts": items.len(),
        }))?
        .as_bytes(),
    )?;
    println!(
        "{} texts in {:.0}s written to {} (settings in {})",
        items.len(),
        t.elapsed().as_secs_f64(),
        a.out.display(),
        cfg_path.display()
    );
    Ok(())
}
