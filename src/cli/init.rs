use std::path::PathBuf;

use anyhow::Result;

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
}

pub fn run(a: Args) -> Result<()> {
    anyhow::ensure!(
        a.vocab >= 259,
        "--vocab must be at least 259 (byte-level tokenizer)"
    );
    let mut cfg =
        unlearn::model::LlamaConfig::tiny(a.vocab, a.hidden, a.layers, a.heads, a.kv_heads);
    cfg.eos_token_ids = vec![258];
    cfg.tie_word_embeddings = !a.untied;
    if let Some(i) = a.intermediate {
        cfg.intermediate_size = i;
    }
    cfg.validate_heads()?;
    unlearn::fixture::write_tiny_llama(&a.out, cfg.clone(), a.seed)?;
    println!(
        "wrote a random Llama ({} parameters) to {}",
        cfg.num_params(),
        a.out.display()
    );
    Ok(())
}
