use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use unlearn::app::bench::{median, run as bench, BenchConfig, BenchResult};
use unlearn::model::hf::ModelDir;

#[derive(clap::Args)]
pub struct Args {
    /// Model to measure: a HF model directory or a Hub id (org/name[@revision]).
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Timed training steps (the median is reported; one more runs first, untimed).
    #[arg(long, default_value_t = 5)]
    train_steps: usize,
    /// Timed scoring batches of batch × seq tokens.
    #[arg(long, default_value_t = 4)]
    score_batches: usize,
    #[arg(long, default_value_t = 4)]
    gen_batch: usize,
    #[arg(long, default_value_t = 32)]
    gen_prompt: usize,
    #[arg(long, default_value_t = 32)]
    gen_tokens: usize,
    /// Timed generation runs.
    #[arg(long, default_value_t = 3)]
    gen_runs: usize,
    /// The training step's loss: nll (one batch) or npo+gd (NPO on a forget batch against
    /// reference scores computed once, plus NLL on a retain batch).
    #[arg(long, default_value = "nll")]
    objective: String,
    /// Train LoRA adapters of this rank on every linear layer (alpha = 2 × rank) instead of
    /// every weight; PyTorch uses peft with the same settings.
    #[arg(long, default_value_t = 0)]
    lora_r: usize,
    /// Compute the loss through the chunked LM-head op (`train.chunked_loss`).
    #[arg(long)]
    chunked_loss: bool,
    /// Activation checkpointing per decoder layer (`train.checkpoint_activations`).
    #[arg(long)]
    checkpoint_activations: bool,
    /// Run the composite candle ops instead of the fused CPU kernels (the pre-#9 path).
    #[arg(long)]
    composite: bool,
    /// Compute dtype: f32 or bf16 (bf16 activations and matmuls, f32 reductions and losses,
    /// trained weights in f32; PyTorch loads the model in bf16, as users of it do).
    #[arg(long, default_value = "f32")]
    dtype: unlearn::model::Precision,
    /// Also time the same workloads in PyTorch (scripts/bench_torch.py, run with --python),
    /// alternating with ours for --rounds rounds, and print medians and the ratio.
    #[arg(long)]
    compare_torch: bool,
    /// Rounds of the alternating comparison.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Python interpreter with torch and transformers installed.
    #[arg(long, default_value = "python3")]
    python: String,
    /// The PyTorch side's script.
    #[arg(long, default_value = "scripts/bench_torch.py")]
    torch_script: PathBuf,
    /// Also write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    overwrite: super::common::Overwrite,
    #[command(flatten)]
    device: super::common::Device,
}

/// One PyTorch measurement: the script's JSON.
fn torch_round(a: &Args, cfg: &BenchConfig, out: &std::path::Path) -> Result<serde_json::Value> {
    let status = Command::new(&a.python)
        .arg(&a.torch_script)
        .arg(&a.model)
        .args([
            "--batch",
            &cfg.batch.to_string(),
            "--seq",
            &cfg.seq.to_string(),
        ])
        .args(["--threads", &rayon::current_num_threads().to_string()])
        .args(["--train-steps", &cfg.train_steps.to_string()])
        .args(["--score-batches", &cfg.score_batches.to_string()])
        .args(["--gen-batch", &cfg.gen_batch.to_string()])
        .args(["--gen-prompt", &cfg.gen_prompt.to_string()])
        .args(["--gen-tokens", &cfg.gen_tokens.to_string()])
        .args(["--gen-runs", &cfg.gen_runs.to_string()])
        .args(["--objective", &cfg.objective])
        .args(["--lora-r", &cfg.lora_r.to_string()])
        .args(if cfg.checkpoint_activations {
            &["--checkpoint-activations"][..]
        } else {
            &[][..]
        })
        .args(["--device", &a.device.device])
        .args(["--dtype", a.dtype.name()])
        .arg("--json")
        .arg(out)
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {} {}", a.python, a.torch_script.display()))?;
    if !status.success() {
        bail!(
            "{} {} failed ({status}); it needs torch and transformers (pip install torch transformers)",
            a.python,
            a.torch_script.display()
        );
    }
    let text = std::fs::read_to_string(out).with_context(|| out.display().to_string())?;
    Ok(serde_json::from_str(&text)?)
}

/// Alternate ours and PyTorch so both see the same machine state.
fn alternate(
    a: &Args,
    model: &unlearn::model::Llama,
    c: &BenchConfig,
) -> Result<(Vec<BenchResult>, Vec<serde_json::Value>)> {
    let tmp = std::env::temp_dir().join(format!("unlearn-bench-torch-{}.json", std::process::id()));
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..a.rounds {
        let r = bench(model, c)?;
        eprintln!(
            "round {}: unlearn step {:.3} s, scoring {:.0} tok/s, generation {:.1} tok/s",
            round + 1,
            r.train_step_s,
            r.score_tokens_per_s,
            r.gen_tokens_per_s
        );
        ours.push(r);
        let t = torch_round(a, c, &tmp)?;
        eprintln!(
            "round {}: torch   step {:.3} s, scoring {:.0} tok/s, generation {:.1} tok/s",
            round + 1,
            t["train_step_s"].as_f64().unwrap_or(f64::NAN),
            t["score_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
            t["gen_tokens_per_s"].as_f64().unwrap_or(f64::NAN)
        );
        theirs.push(t);
    }
    let _ = std::fs::remove_file(&tmp);
    Ok((ours, theirs))
}

/// The medians of the alternating rounds, as a table and (with --json) a file.
fn report_comparison(
    ours: &[BenchResult],
    theirs: &[serde_json::Value],
    c: &BenchConfig,
    ops: &str,
    json_out: Option<unlearn::util::guard::Pending>,
) -> Result<()> {
    let rss = super::peak_rss_mib();
    let om = |f: fn(&BenchResult) -> f64| median(&ours.iter().map(f).collect::<Vec<_>>());
    let tm = |k: &str| {
        median(
            &theirs
                .iter()
                .filter_map(|t| t[k].as_f64())
                .collect::<Vec<_>>(),
        )
    };
    let rows = [
        (
            "training step (s)",
            om(|r| r.train_step_s),
            tm("train_step_s"),
            true,
        ),
        (
            "training tokens/s",
            om(|r| r.train_tokens_per_s),
            tm("train_tokens_per_s"),
            false,
        ),
        (
            "scoring tokens/s",
            om(|r| r.score_tokens_per_s),
            tm("score_tokens_per_s"),
            false,
        ),
        (
            "generation tokens/s",
            om(|r| r.gen_tokens_per_s),
            tm("gen_tokens_per_s"),
            false,
        ),
    ];
    let torch_rss = theirs
        .iter()
        .filter_map(|t| t["peak_rss_mib"].as_f64())
        .fold(f64::NAN, f64::max);
    println!(
        "medians of {} alternating rounds; ratio = time ours / time PyTorch (< 1: we are faster)",
        ours.len()
    );
    println!(
        "{:<22} {:>12} {:>12} {:>8}",
        "workload", "unlearn", "PyTorch", "ratio"
    );
    let mut summary = serde_json::Map::new();
    for (name, o, t, is_time) in rows {
        let ratio = if is_time { o / t } else { t / o };
        println!("{name:<22} {o:>12.3} {t:>12.3} {ratio:>8.2}");
        summary.insert(
            name.into(),
            serde_json::json!({"unlearn": o, "torch": t, "ratio_time": ratio}),
        );
    }
    let torch_train_rss = theirs
        .iter()
        .filter_map(|t| t["train_peak_rss_mib"].as_f64())
        .fold(f64::NAN, f64::max);
    let ours_train_rss = ours
        .iter()
        .filter_map(|r| r.train_peak_rss_mib)
        .fold(f64::NAN, f64::max);
    println!(
        "{:<22} {:>12.0} {:>12.0}",
        "training peak (MiB)", ours_train_rss, torch_train_rss
    );
    println!(
        "{:<22} {:>12.0} {:>12.0}",
        "peak RSS (MiB)",
        rss.unwrap_or(f64::NAN),
        torch_rss
    );
    if let Some(p) = json_out {
        let v = serde_json::json!({
            "ops": ops,
            "rounds": ours.len(),
            "config": c,
            "medians": summary,
            "peak_rss_mib": {"unlearn": rss, "torch": torch_rss},
            "train_peak_rss_mib": {"unlearn": ours_train_rss, "torch": torch_train_rss},
            "unlearn_rounds": ours,
            "torch_rounds": theirs,
        });
        super::common::write_json(p, &v)?;
    }
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    use unlearn::util::guard::Input;
    anyhow::ensure!(a.rounds >= 1, "--rounds must be at least 1");
    let a = Args {
        model: unlearn::util::hub::model(&a.model)?,
        ..a
    };
    let json_out = super::common::claim_json(
        a.json.as_ref(),
        &[Input::new("model", &a.model)],
        a.overwrite.overwrite,
    )?;
    let dev = a.device.get()?;
    if a.composite {
        unlearn::ops::set_fused(false);
    }
    let mut md = ModelDir::load(&a.model, &dev)?;
    if a.lora_r > 0 {
        let lc = unlearn::model::LoraConfig {
            r: a.lora_r,
            alpha: 2.0 * a.lora_r as f64,
            ..Default::default()
        };
        let lora = unlearn::model::Lora::new(&lc, &md.model.cfg, "bench", 0, &dev)?;
        md.model = md.model.with_lora(lora)?;
    }
    if a.dtype != unlearn::model::Precision::F32 {
        // with adapters the base is frozen: held in bf16
        md.model = md.model.for_precision(a.dtype, a.lora_r > 0)?;
    }
    let c = BenchConfig {
        batch: a.batch,
        seq: a.seq,
        train_steps: a.train_steps,
        score_batches: a.score_batches,
        gen_batch: a.gen_batch,
        gen_prompt: a.gen_prompt,
        gen_tokens: a.gen_tokens,
        gen_runs: a.gen_runs,
        objective: a.objective.clone(),
        lora_r: a.lora_r,
        chunked_loss: a.chunked_loss,
        checkpoint_activations: a.checkpoint_activations,
    };
    c.check(&md.model)?;
    // (the fused kernels are CPU f32 only)
    let ops = if unlearn::ops::fused_enabled() && dev.is_cpu() && a.dtype.is_default() {
        "fused CPU kernels"
    } else {
        "composite candle ops"
    };
    println!(
        "model            {} ({} parameters)",
        a.model.display(),
        md.model.num_params()
    );
    println!("threads          {}", rayon::current_num_threads());
    println!("ops              {ops}, {}", a.dtype.name());
    println!(
        "training         {}{}{}",
        a.objective,
        if a.lora_r > 0 {
            format!(
                ", LoRA r = {} on every linear layer ({} adapter parameters)",
                a.lora_r,
                md.model
                    .adapters()
                    .iter()
                    .map(|(_, v)| v.elem_count())
                    .sum::<usize>()
            )
        } else {
            ", every weight".into()
        },
        match (a.chunked_loss, a.checkpoint_activations) {
            (true, true) => ", chunked loss, activation checkpointing",
            (true, false) => ", chunked loss",
            (false, true) => ", activation checkpointing",
            _ => "",
        }
    );
    if !a.compare_torch {
        let r = bench(&md.model, &c)?;
        let rss = super::peak_rss_mib();
        print_ours(&r, &a, rss);
        if let Some(p) = json_out {
            let mut v = serde_json::to_value(&r)?;
            v["peak_rss_mib"] = rss.into();
            v["ops"] = ops.into();
            super::common::write_json(p, &v)?;
        }
        return Ok(());
    }
    let (ours, theirs) = alternate(&a, &md.model, &c)?;
    report_comparison(&ours, &theirs, &c, ops, json_out)?;
    Ok(())
}

fn print_ours(r: &BenchResult, a: &Args, rss: Option<f64>) {
    println!(
        "training step    {:.3} s  ({:.0} tokens/s, batch {}x{})",
        r.train_step_s, r.train_tokens_per_s, a.batch, a.seq
    );
    println!("scoring          {:.0} tokens/s", r.score_tokens_per_s);
    println!(
        "generation       {:.1} tokens/s (batch {}, greedy, KV cache)",
        r.gen_tokens_per_s, a.gen_batch
    );
    if let Some(m) = r.train_peak_rss_mib {
        println!("training peak    {m:.0} MiB (resident, model loaded; loading not counted)");
    }
    if let Some(m) = rss {
        println!("peak RSS         {m:.0} MiB");
    }
}
