use std::path::PathBuf;

use anyhow::Result;
use unlearn::util::guard::{Input, OutKind, Pending};

use super::common::Overwrite;

#[derive(clap::Args)]
pub struct Args {
    /// The .gguf file: a path or a Hub file (hf://org/name[@revision]/file.gguf).
    gguf: PathBuf,
    /// Output HF directory (written atomically).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    overwrite: Overwrite,
}

pub fn run(a: Args) -> Result<()> {
    let a = Args {
        gguf: unlearn::util::hub::file(&a.gguf)?,
        ..a
    };
    let out = Pending::claim(
        "--out",
        &a.out,
        OutKind::Model,
        &[Input::new("GGUF file", &a.gguf)],
        a.overwrite.overwrite,
    )?;
    let imp = unlearn::model::gguf::import(&a.gguf, &candle_core::Device::Cpu)?;
    for n in &imp.notes {
        eprintln!("{n}");
    }
    unlearn::model::hf::write_model_files(&imp.model, &imp.tok, None, &[], out.tmp())?;
    out.commit()?;
    println!(
        "imported {} ({} parameters, {} layers) into {}",
        a.gguf.display(),
        imp.model.num_params(),
        imp.model.cfg.num_hidden_layers,
        a.out.display()
    );
    Ok(())
}
