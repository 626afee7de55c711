use std::path::PathBuf;

use anyhow::Result;
use unlearn::attribution::{down_proj_masks, select, AttributionConfig};
use unlearn::data::{read_qa, Formatter, PromptStyle};
use unlearn::hf::ModelDir;

#[derive(clap::Args)]
pub struct Args {
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
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(a: Args) -> Result<()> {
    anyhow::ensure!(
        a.threshold > 0.0 && a.threshold <= 1.0,
        "--threshold must be in (0, 1]"
    );
    let dev = unlearn::device(&a.device)?;
    let md = ModelDir::load(&a.model, &dev)?;
    let f = Formatter::new(
        &md.tok,
        PromptStyle::Auto,
        md.model.cfg.max_position_embeddings.min(512),
    )?;
    let enc = |p: &PathBuf| -> unlearn::Result<Vec<_>> {
        read_qa(p)?
            .iter()
            .map(|it| f.encode_qa(&it.question, &it.answer))
            .collect()
    };
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
    let out = serde_json::json!({
        "model": a.model, "data": a.data, "retain": a.retain, "config": cfg,
        "n_critical": n, "layers": layers,
        "path": "layer-wise scaling of the MLP activation (see src/attribution.rs)",
    });
    unlearn::hf::atomic_write(&a.out, serde_json::to_string_pretty(&out)?.as_bytes())?;
    if let Some(p) = &a.mask_out {
        let masks: std::collections::HashMap<String, candle_core::Tensor> =
            down_proj_masks(&md.model, &sel.critical)?
                .into_iter()
                .collect();
        let tmp = p.with_extension("tmp");
        candle_core::safetensors::save(&masks, &tmp)?;
        std::fs::rename(&tmp, p)?;
    }
    println!(
        "{n} critical neurons of {} ({} layers × {}); wrote {}",
        sel.scores.len() * md.model.cfg.intermediate_size,
        sel.scores.len(),
        md.model.cfg.intermediate_size,
        a.out.display()
    );
    Ok(())
}
