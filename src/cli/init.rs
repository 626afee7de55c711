use std::path::PathBuf;

use anyhow::Result;
use unlearn::util::guard::{OutKind, Pending};

use super::common::Overwrite;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// MLP width (default: about 8/3 of hidden).
    #[arg(long)]
    intermediate: Option<usize>,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    #[arg(long, default_value_t = 2)]
    kv_heads: usize,
    /// Vocabulary size (>= 259, the byte-level tokenizer's size).
    #[arg(long, default_value_t = 264)]
    vocab: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A separate LM head (`lm_head.weight`) instead of tied embeddings.
    #[arg(long)]
    untied: bool,
    #[command(flatten)]
    overwrite: Overwrite,
}

pub fn run(a: Args) -> Result<()> {
    anyhow::ensure!(
        a.vocab >= 259,
        "--vocab must be at least 259 (byte-level tokenizer)"
    );
    for (flag, v) in [
        ("--hidden", a.hidden),
        ("--layers", a.layers),
        ("--heads", a.heads),
        ("--kv-heads", a.kv_heads),
    ] {
        anyhow::ensure!(v >= 1, "{flag} must be at least 1");
    }
    for (flag, v, max) in [
        ("--hidden", a.hidden, 1 << 16),
        ("--layers", a.layers, 1 << 10),
        ("--heads", a.heads, 1 << 10),
        ("--vocab", a.vocab, 1 << 24),
        ("--intermediate", a.intermediate.unwrap_or(0), 1 << 20),
    ] {
        anyhow::ensure!(
            v <= max,
            "{flag} {v} is beyond any model this tool can build (at most {max})"
        );
    }
    anyhow::ensure!(
        a.hidden.is_multiple_of(a.heads),
        "--hidden {} is not divisible by --heads {}",
        a.hidden,
        a.heads
    );
    let mut cfg =
        unlearn::model::LlamaConfig::tiny(a.vocab, a.hidden, a.layers, a.heads, a.kv_heads);
    cfg.eos_token_ids = vec![258];
    cfg.tie_word_embeddings = !a.untied;
    if let Some(i) = a.intermediate {
        cfg.intermediate_size = i;
    }
    cfg.validate_heads()?;
    // the checks every loader runs: what we write, we can load
    cfg.check()
        .map_err(|e| anyhow::anyhow!("the requested model is not valid: {e}"))?;
    // the weights in f32, written once from memory (with the serialisation buffer, twice)
    let n = cfg.num_params_wide();
    unlearn::util::mem::check_fits(&format!("a random model of {n} parameters"), n * 4 * 2)?;
    let out = Pending::claim("--out", &a.out, OutKind::Model, &[], a.overwrite.overwrite)?;
    unlearn::model::fixture::write_tiny_llama_files(out.tmp(), cfg.clone(), a.seed)?;
    out.commit()?;
    println!(
        "wrote a random Llama ({} parameters) to {}",
        cfg.num_params(),
        a.out.display()
    );
    Ok(())
}
