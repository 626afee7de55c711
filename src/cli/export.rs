use std::path::PathBuf;

use anyhow::Result;
use unlearn::model::gguf_write::{export, parse_type};
use unlearn::model::hf::ModelDir;
use unlearn::util::guard::{Input, OutKind, Pending};

use super::common::Overwrite;

#[derive(clap::Args)]
pub struct Args {
    /// Model: a HF model directory or a Hub id (org/name[@revision]).
    #[arg(long)]
    model: PathBuf,
    /// Output .gguf file (written atomically).
    #[arg(long)]
    out: PathBuf,
    /// Weight type: f32, f16, q8_0, q5_0, q5_1, q4_0, q4_1, q6_k, q5_k, q4_k, q3_k, q2_k.
    #[arg(long = "type", default_value = "f16")]
    ty: String,
    #[command(flatten)]
    overwrite: Overwrite,
}

pub fn run(a: Args) -> Result<()> {
    let ty = parse_type(&a.ty)?;
    let model = unlearn::util::hub::model(&a.model)?;
    let out = Pending::claim(
        "--out",
        &a.out,
        OutKind::File,
        &[Input::new("model", &model)],
        a.overwrite.overwrite,
    )?;
    let md = ModelDir::load(&model, &candle_core::Device::Cpu)?;
    let rep = export(&md, out.tmp(), ty)?;
    out.commit()?;
    for n in &rep.notes {
        eprintln!("{n}");
    }
    println!(
        "wrote {} ({} tensors, {:.1} MiB, {})",
        a.out.display(),
        rep.tensors,
        rep.bytes as f64 / (1 << 20) as f64,
        a.ty.to_ascii_lowercase()
    );
    Ok(())
}
