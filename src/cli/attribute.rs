use std::path::PathBuf;

use anyhow::Result;
use unlearn::data::{read_qa, Formatter, PromptStyle};
use unlearn::model::hf::ModelDir;
use unlearn::unlearn::attribution::{down_proj_masks, select, AttributionConfig};
use unlearn::util::guard::{Input, OutKind, Pending};

use super::common::{Device, Overwrite};

#[derive(clap::Args)]
pub struct Args {
    /// Model: a HF model directory or a Hub id (org/name[@revision]).
    #[arg(long)]
    model: PathBuf,
    /// Forget set (QA JSON/JSONL) the neurons are attributed on.
    #[arg(long)]
    data: PathBuf,
    /// Per-layer scores and the chosen neurons (JSON).
    #[arg(long)]
    out: PathBuf,
    /// Also write down_proj column masks (safetensors) for `unlearn run --set masks=…`.
    #[arg(long)]
    mask_out: Option<PathBuf>,
    /// Dual mode: attribute on this retain set too and drop neurons critical for it.
    #[arg(long)]
    retain: Option<PathBuf>,
    /// Integration steps m.
    #[arg(long, default_value_t = 8)]
    steps: usize,
    /// Threshold t: critical iff score > t · layer max.
    #[arg(long, default_value_t = 0.5)]
    threshold: f64,
    /// Use the signed attribution instead of |Att|.
    #[arg(long)]
    signed: bool,
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    #[command(flatten)]
    overwrite: Overwrite,
    #[command(flatten)]
    device: Device,
}

pub fn run(a: Args) -> Result<()> {
    anyhow::ensure!(
        a.threshold > 0.0 && a.threshold <= 1.0,
        "--threshold must be in (0, 1]"
    );
    anyhow::ensure!(a.steps >= 1, "--steps must be at least 1");
    anyhow::ensure!(a.batch_size >= 1, "--batch-size must be at least 1");
    let a = Args {
        model: unlearn::util::hub::model(&a.model)?,
        data: unlearn::util::hub::file(&a.data)?,
        ..a
    };
    let mut inputs = vec![Input::new("model", &a.model), Input::new("data", &a.data)];
    if let Some(r) = &a.retain {
        inputs.push(Input::new("retain set", r));
    }
    let out = Pending::claim(
        "--out",
        &a.out,
        OutKind::File,
        &inputs,
        a.overwrite.overwrite,
    )?;
    let mask_out = a
        .mask_out
        .as_ref()
        .map(|p| {
            let mut ins = inputs.clone();
            ins.push(Input::new("--out", &a.out));
            Pending::claim("--mask-out", p, OutKind::File, &ins, a.overwrite.overwrite)
        })
        .transpose()?;
    let dev = a.device.get()?;
    let md = ModelDir::load(&a.model, &dev)?;
    let f = Formatter::new(
        &md.tok,
        PromptStyle::Auto,
        md.model.cfg.max_position_embeddings.min(512),
    )?;
    let enc = |p: &PathBuf| -> unlearn::Result<Vec<_>> { f.encode_items(&read_qa(p)?) };
    let cfg = AttributionConfig {
        steps: a.steps,
        threshold: a.threshold,
        absolute: !a.signed,
        batch_size: a.batch_size,
    };
    let retain = a.retain.as_ref().map(&enc).transpose()?;
    let sel = select(
        &md.model,
        &enc(&a.data)?,
        retain.as_deref(),
        md.tok.pad_id,
        &cfg,
        true,
    )?;
    let n = sel.n_critical();
    let layers = sel.layers_json();
    if let Some(p) = mask_out {
        let masks = down_proj_masks(&md.model, &sel.critical)?;
        unlearn::model::hf::write_safetensors(&masks, p.tmp())?;
        p.commit()?;
    }
    let json = serde_json::json!({
        "model": a.model, "data": a.data, "retain": a.retain, "config": cfg,
        "n_critical": n, "layers": layers,
        "path": "layer-wise scaling of the MLP activation (see src/attribution.rs)",
    });
    unlearn::util::fs::write_synced(out.tmp(), serde_json::to_string_pretty(&json)?.as_bytes())?;
    out.commit()?;
    println!(
        "{n} critical neurons of {} ({} layers × {}); wrote {}",
        sel.scores.len() * md.model.cfg.intermediate_size,
        sel.scores.len(),
        md.model.cfg.intermediate_size,
        a.out.display()
    );
    Ok(())
}
