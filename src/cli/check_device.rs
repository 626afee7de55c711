use std::path::PathBuf;

use anyhow::{bail, Result};
use unlearn::app::device_check;
use unlearn::util::guard::Input;

#[derive(clap::Args)]
pub struct Args {
    /// Folder of parity fixtures (parity_*/: a tiny checkpoint and transformers' golden logits,
    /// loss and gradients).
    #[arg(long, default_value = "tests/fixtures")]
    fixtures: PathBuf,
    /// Run the composite candle ops instead of the fused CPU kernels, on the CPU as well (the
    /// form every non-CPU device runs).
    #[arg(long)]
    composite: bool,
    /// Compute dtype: f32 (against golden.safetensors) or bf16 (against
    /// golden_bf16.safetensors, transformers in bf16; bf16 tolerances).
    #[arg(long, default_value = "f32")]
    dtype: unlearn::model::Precision,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    overwrite: super::common::Overwrite,
    #[command(flatten)]
    device: super::common::Device,
}

pub fn run(a: Args) -> Result<()> {
    let fixtures = device_check::fixtures(&a.fixtures)?;
    let json_out = super::common::claim_json(
        a.json.as_ref(),
        &[Input::new("fixtures", &a.fixtures)],
        a.overwrite.overwrite,
    )?;
    let dev = a.device.get()?;
    if a.composite {
        unlearn::ops::set_fused(false);
    }
    let (tl, tg) = device_check::tolerances(&dev, a.dtype);
    println!(
        "device {} ({}, {}): relative differences max|a-b|/max|b|; tolerances on the device: logits \
         and loss {tl:e}, gradients {tg:e}",
        a.device.device,
        // (the fused kernels are f32: bf16 takes the composite ops on every device)
        if a.composite || !dev.is_cpu() || !a.dtype.is_default() {
            "composite ops"
        } else {
            "fused CPU kernels"
        },
        a.dtype.name()
    );
    println!(
        "{:<22} {:<12} {:>28} {:>28} {:>28}  ok",
        "fixture", "arch", "CPU vs torch (lg/loss/grad)", "device vs torch", "device vs CPU"
    );
    let fmt = |d: &device_check::Diffs| {
        let e = |x: f64| format!("{:>8}", format!("{x:.1e}"));
        format!("{} {} {}", e(d.logits), e(d.loss), e(d.grad))
    };
    let mut results = vec![];
    for dir in &fixtures {
        let r = device_check::check(dir, &dev, a.dtype)?;
        println!(
            "{:<22} {:<12} {:>28} {:>28} {:>28}  {}",
            r.fixture,
            r.arch,
            fmt(&r.cpu_vs_torch),
            fmt(&r.device_vs_torch),
            fmt(&r.device_vs_cpu),
            if r.pass { "yes" } else { "NO" }
        );
        results.push(r);
    }
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| !r.pass)
        .map(|r| r.fixture.as_str())
        .collect();
    if let Some(p) = json_out {
        let v = serde_json::json!({
            "device": a.device.device,
            "composite": a.composite || !dev.is_cpu() || !a.dtype.is_default(),
            "dtype": a.dtype.name(),
            "tolerances": {"logits_loss": tl, "grad": tg},
            "version": env!("CARGO_PKG_VERSION"),
            "fixtures": results,
            "pass": failed.is_empty(),
        });
        super::common::write_json(p, &v)?;
    }
    if !failed.is_empty() {
        bail!(
            "outside tolerance on {}: {}",
            a.device.device,
            failed.join(", ")
        );
    }
    println!("all {} fixtures within tolerance", results.len());
    Ok(())
}
