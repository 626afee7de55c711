use std::path::PathBuf;

use anyhow::Result;
use unlearn::data::{Formatter, PromptStyle};
use unlearn::infer::generate::{generate_with, GenConfig, Stops};
use unlearn::model::hf::ModelDir;

#[derive(clap::Args)]
pub struct Args {
    /// Model: a HF model directory or a Hub id (org/name[@revision]).
    #[arg(long)]
    model: PathBuf,
    /// The user's message (wrapped in the chat template unless --raw or --plain).
    #[arg(long)]
    prompt: Vec<String>,
    /// Feed the prompt text as is (no template).
    #[arg(long)]
    raw: bool,
    /// Use the plain `Question: …\nAnswer:` template instead of the chat template.
    #[arg(long)]
    plain: bool,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    device: super::common::Device,
    /// Keep special tokens (e.g. UniErase's `<unlearn_0>`) in the printed text; by default they
    /// are stripped, as a user of the model would see it.
    #[arg(long)]
    show_special: bool,
}

pub fn run(a: Args) -> Result<()> {
    anyhow::ensure!(!a.prompt.is_empty(), "give at least one --prompt");
    anyhow::ensure!(
        a.temperature.is_finite() && a.temperature >= 0.0,
        "--temperature must be a finite number >= 0 (0 = greedy)"
    );
    anyhow::ensure!(a.top_p > 0.0 && a.top_p <= 1.0, "--top-p must be in (0, 1]");
    anyhow::ensure!(a.max_new_tokens >= 1, "--max-new-tokens must be at least 1");
    for p in &a.prompt {
        anyhow::ensure!(
            !p.trim().is_empty(),
            "--prompt is empty; give the text to answer or continue"
        );
    }
    let a = Args {
        model: unlearn::util::hub::model(&a.model)?,
        ..a
    };
    let dev = a.device.get()?;
    let md = ModelDir::load(&a.model, &dev)?;
    let style = if a.plain {
        PromptStyle::Plain
    } else {
        PromptStyle::Auto
    };
    let f = Formatter::new(&md.tok, style, md.model.cfg.max_position_embeddings)?;
    let prompts: Vec<Vec<u32>> = a
        .prompt
        .iter()
        .map(|p| {
            if a.raw {
                md.tok.encode(p, true)
            } else {
                f.encode_prompt(p)
            }
        })
        .collect::<unlearn::Result<_>>()?;
    let cfg = GenConfig {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
        mask_token: None,
    };
    let stops = Stops::for_model(&md.model.cfg, &md.tok);
    let ids: Vec<u64> = (0..prompts.len() as u64).collect();
    let out = generate_with(&md.model, &prompts, &ids, &stops, md.tok.pad_id, &cfg)?;
    for (p, o) in a.prompt.iter().zip(out) {
        let text = md.tok.decode(&o, !a.show_special)?;
        if a.prompt.len() > 1 {
            println!("### {p}");
        }
        println!("{}", text.trim());
    }
    Ok(())
}
