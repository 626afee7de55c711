use std::path::PathBuf;

use anyhow::Result;
use unlearn::util::guard::{OutKind, Pending};

use super::common::Overwrite;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    out: PathBuf,
    /// Architecture: llama, qwen2 (q/k/v biases), qwen3 (per-head q/k RMSNorm), olmo
    /// (parameter-free LayerNorm), olmo2 (post-norms, q/k RMSNorm over the projections), phi3
    /// (fused qkv_proj and gate_up_proj in the checkpoint), gemma2 (sandwich norms, GeGLU,
    /// soft-capping, alternating sliding-window layers; window 32) or gemma3 (gemma3_text: per-head
    /// q/k norms, local and global RoPE bases; window 32, every 6th layer global) or gpt_neox (Pythia's
    /// layout: parallel residual, RoPE over a quarter of each head, LayerNorm and linear biases,
    /// GELU, untied head; one kv head per head).
    #[arg(long, default_value = "llama", value_parser = ["llama", "qwen2", "qwen3", "olmo", "olmo2", "phi3", "gemma2", "gemma3", "gpt_neox"])]
    arch: String,
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
    /// Width of each attention head (default: hidden / heads).
    #[arg(long)]
    head_dim: Option<usize>,
    /// Context length (RoPE table size).
    #[arg(long, default_value_t = 512)]
    max_position: usize,
    #[arg(long, default_value_t = 10000.0)]
    rope_theta: f64,
    /// Biases on the q, k, v and o projections (Llama's `attention_bias`).
    #[arg(long)]
    attention_bias: bool,
    /// Weights on disk: f32, or bf16 (as 1B+ checkpoints come; written one tensor at a time, so
    /// memory holds the largest tensor rather than the model; each tensor has its own seeded
    /// stream, so the values differ from an f32 model of the same seed).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    dtype: String,
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
        a.head_dim.is_some() || a.hidden.is_multiple_of(a.heads),
        "--hidden {} is not divisible by --heads {} (or give --head-dim)",
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
    if let Some(d) = a.head_dim {
        anyhow::ensure!(
            (2..=1024).contains(&d) && d % 2 == 0,
            "--head-dim must be even, 2..1024"
        );
        cfg.head_dim = d;
    }
    anyhow::ensure!(
        (2..=1 << 20).contains(&a.max_position),
        "--max-position must be in 2..{}",
        1 << 20
    );
    cfg.max_position_embeddings = a.max_position;
    anyhow::ensure!(
        a.rope_theta.is_finite() && a.rope_theta > 0.0,
        "--rope-theta must be positive"
    );
    cfg.rope_theta = a.rope_theta;
    cfg.qkv_bias = a.attention_bias;
    cfg.o_bias = a.attention_bias;
    match a.arch.as_str() {
        "qwen2" => {
            cfg.arch = unlearn::model::Arch::Qwen2;
            cfg.qkv_bias = true; // Qwen2's q, k, v always carry biases, o never
            cfg.o_bias = false;
        }
        "qwen3" => cfg.arch = unlearn::model::Arch::Qwen3,
        "olmo2" => cfg.arch = unlearn::model::Arch::Olmo2,
        "olmo" => cfg.arch = unlearn::model::Arch::Olmo,
        "phi3" => cfg.arch = unlearn::model::Arch::Phi3,
        "gpt_neox" => {
            anyhow::ensure!(
                a.kv_heads == a.heads,
                "gpt_neox has one key/value head per head: give --kv-heads {}",
                a.heads
            );
            cfg.arch = unlearn::model::Arch::GptNeox;
            cfg.qkv_bias = true;
            cfg.o_bias = true;
            cfg.partial_rotary_factor = 0.25;
            cfg.parallel_residual = true;
            cfg.act = unlearn::model::config::Act::GeluErf;
            cfg.tie_word_embeddings = false;
        }
        "gemma2" | "gemma3" => {
            // transformers' defaults for the per-layer pattern, a window shorter than the
            // context so that sliding layers differ from global ones
            let gemma2 = a.arch == "gemma2";
            cfg.arch = if gemma2 {
                unlearn::model::Arch::Gemma2
            } else {
                unlearn::model::Arch::Gemma3
            };
            cfg.sliding_window = Some(32);
            cfg.sliding_layers = Some(unlearn::model::config::sliding_pattern(
                a.layers,
                cfg.arch.gemma_global_every(),
            ));
            cfg.query_pre_attn_scalar = Some(cfg.head_dim as f64);
            if gemma2 {
                cfg.attn_logit_softcapping = Some(50.0);
                cfg.final_logit_softcapping = Some(30.0);
            } else {
                cfg.rope_local_theta = Some(a.rope_theta);
                cfg.rope_theta = a.rope_theta.max(1_000_000.0);
            }
            cfg.rms_norm_eps = 1e-6;
            cfg.act = unlearn::model::config::Act::GeluTanh;
        }
        _ => {}
    }
    if a.head_dim.is_none() {
        cfg.validate_heads()?; // hidden = heads × head_dim (an explicit --head-dim may differ)
    }
    // the checks every loader runs: what we write, we can load
    cfg.check()
        .map_err(|e| anyhow::anyhow!("the requested model is not valid: {e}"))?;
    let n = cfg.num_params_wide();
    anyhow::ensure!(
        !(a.dtype == "bf16" && cfg.arch == unlearn::model::Arch::Phi3),
        "--dtype bf16 writes one tensor at a time and cannot fuse phi3's qkv_proj and \
         gate_up_proj; use --dtype f32 for phi3"
    );
    if a.dtype == "bf16" {
        // one tensor at a time: the largest (the embedding) in f64 draws and bf16 bytes
        let largest = cfg.vocab_size.max(cfg.intermediate_size) * cfg.hidden_size;
        unlearn::util::mem::check_fits(
            "the largest tensor of the random model",
            largest as u128 * 4,
        )?;
    } else {
        // the weights in f32, written once from memory (with the serialisation buffer, twice)
        unlearn::util::mem::check_fits(&format!("a random model of {n} parameters"), n * 4 * 2)?;
    }
    let out = Pending::claim("--out", &a.out, OutKind::Model, &[], a.overwrite.overwrite)?;
    if a.dtype == "bf16" {
        unlearn::model::fixture::write_random_bf16_files(out.tmp(), &cfg, a.seed)?;
    } else {
        unlearn::model::fixture::write_tiny_llama_files(out.tmp(), cfg.clone(), a.seed)?;
    }
    out.commit()?;
    println!(
        "wrote a random {} ({} parameters) to {}",
        cfg.arch.architectures(),
        cfg.num_params(),
        a.out.display()
    );
    Ok(())
}
