use std::path::PathBuf;

use anyhow::Result;
use unlearn::bench::{run as bench, BenchConfig};
use unlearn::hf::ModelDir;

#[derive(clap::Args)]
pub struct Args {
    /// HF model directory to measure.
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq: usize,
    #[arg(long, default_value_t = 3)]
    train_steps: usize,
    #[arg(long, default_value_t = 2)]
    score_batches: usize,
    #[arg(long, default_value_t = 4)]
    gen_batch: usize,
    #[arg(long, default_value_t = 32)]
    gen_prompt: usize,
    #[arg(long, default_value_t = 32)]
    gen_tokens: usize,
    /// Also write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(a: Args) -> Result<()> {
    let dev = unlearn::device(&a.device)?;
    let md = ModelDir::load(&a.model, &dev)?;
    let c = BenchConfig {
        batch: a.batch,
        seq: a.seq,
        train_steps: a.train_steps,
        score_batches: a.score_batches,
        gen_batch: a.gen_batch,
        gen_prompt: a.gen_prompt,
        gen_tokens: a.gen_tokens,
    };
    let r = bench(&md.model, &c)?;
    let rss = super::peak_rss_mib();
    println!(
        "model            {} ({} parameters)",
        a.model.display(),
        r.params
    );
    println!("threads          {}", rayon::current_num_threads());
    println!(
        "training step    {:.3} s  ({:.0} tokens/s, batch {}x{})",
        r.train_step_s, r.train_tokens_per_s, a.batch, a.seq
    );
    println!("scoring          {:.0} tokens/s", r.score_tokens_per_s);
    println!(
        "generation       {:.1} tokens/s (batch {}, greedy, KV cache)",
        r.gen_tokens_per_s, a.gen_batch
    );
    if let Some(m) = rss {
        println!("peak RSS         {m:.0} MiB");
    }
    if let Some(p) = a.json {
        let mut v = serde_json::to_value(&r)?;
        v["peak_rss_mib"] = rss.into();
        unlearn::hf::atomic_write(&p, serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    Ok(())
}
