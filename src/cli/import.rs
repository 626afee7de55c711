use std::path::PathBuf;

use anyhow::Result;
use unlearn::hf::save_model;

#[derive(clap::Args)]
pub struct Args {
    /// The .gguf file.
    gguf: PathBuf,
    /// Output HF directory (written atomically).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let imp = unlearn::gguf::import(&a.gguf, &candle_core::Device::Cpu)?;
    for n in &imp.notes {
        eprintln!("{n}");
    }
    save_model(&imp.model, &imp.tok, None, &[], &a.out)?;
    println!(
        "imported {} ({} parameters, {} layers) into {}",
        a.gguf.display(),
        imp.model.num_params(),
        imp.model.cfg.num_hidden_layers,
        a.out.display()
    );
    Ok(())
}
