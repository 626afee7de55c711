use std::path::PathBuf;

use anyhow::Result;
use unlearn::model::hf::ModelDir;
use unlearn::unlearn::selfgen::{selfgen, SelfGenConfig};
use unlearn::util::guard::{Input, OutKind, Pending};

use super::common::{Device, Overwrite, Settings};

#[derive(clap::Args)]
pub struct Args {
    /// Model: a HF model directory or a Hub id (org/name[@revision]).
    #[arg(long)]
    model: PathBuf,
    /// Number of distinct texts.
    #[arg(long)]
    count: Option<usize>,
    /// Output JSONL: {"question": user turn, "answer": generated text} per line.
    #[arg(long)]
    out: PathBuf,
    /// Keys of SelfGenConfig: temperature, top_p, max_new_tokens, seed, turns, batch_size,
    /// min_chars, …
    #[command(flatten)]
    settings: Settings,
    #[command(flatten)]
    overwrite: Overwrite,
    #[command(flatten)]
    device: Device,
}

pub fn run(a: Args) -> Result<()> {
    let mut cfg: SelfGenConfig = a.settings.load()?;
    if let Some(n) = a.count {
        anyhow::ensure!(n > 0, "--count must be at least 1");
        cfg.count = n;
    }
    let a = Args {
        model: unlearn::util::hub::model(&a.model)?,
        ..a
    };
    let inputs = [Input::new("model", &a.model)];
    let cfg_path = a.out.with_extension("config.json");
    anyhow::ensure!(
        cfg_path != a.out,
        "--out {}: give the corpus a .jsonl name (its settings go beside it as .config.json)",
        a.out.display()
    );
    let out = Pending::claim(
        "--out",
        &a.out,
        OutKind::File,
        &inputs,
        a.overwrite.overwrite,
    )?;
    let side = Pending::claim(
        "--out",
        &cfg_path,
        OutKind::File,
        &inputs,
        a.overwrite.overwrite,
    )?;
    let md = ModelDir::load(&a.model, &a.device.get()?)?;
    let t = std::time::Instant::now();
    let items = selfgen(&md.model, &md.tok, &cfg, true)?;
    let text: String = items
        .iter()
        .map(|i| serde_json::to_string(i).unwrap() + "\n")
        .collect();
    unlearn::util::fs::write_synced(out.tmp(), text.as_bytes())?;
    unlearn::util::fs::write_synced(
        side.tmp(),
        serde_json::to_string_pretty(&serde_json::json!({
            "model": a.model, "config": cfg, "version": unlearn::VERSION, "texts": items.len(),
            "inputs": unlearn::util::rundir::input_hashes(&inputs)?,
        }))?
        .as_bytes(),
    )?;
    out.commit()?;
    side.commit()?;
    println!(
        "{} texts in {:.0}s written to {} (settings in {})",
        items.len(),
        t.elapsed().as_secs_f64(),
        a.out.display(),
        cfg_path.display()
    );
    Ok(())
}
