//! `unlearn` command line: a thin layer over the library; one file per subcommand in `cli/`.
mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "unlearn",
    version,
    about = "Machine unlearning for Llama-family language models"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The offline demo: synthetic benchmark, tiny target/retain models trained here, several
    /// unlearning methods, evaluation, a table and an HTML report.
    Demo(cli::demo::Args),
    /// Convert a GGUF file (F32/F16/Q8_0/Q4_0/Q4_1/Q4_K/Q6_K…) into a trainable HF directory.
    Import(cli::import::Args),
    /// Write a model as a GGUF file for llama.cpp (f16, q8_0, q4_0, q4_k, …).
    Export(cli::export::Args),
    /// Fine-tune a model on a QA dataset (JSON/JSONL with `question`/`answer`).
    Finetune(cli::finetune::Args),
    /// Unlearn a forget set with one method (GA, NPO, SimNPO, IDK, DPO, ME, RMU, WGA + GD/KL/AP;
    /// SIMU, UniErase, Exclusive Unlearning).
    Run(cli::run::Args),
    /// SIMU attribution: score MLP neurons on a forget set, choose critical ones, write masks.
    Attribute(cli::attribute::Args),
    /// Exclusive Unlearning's forget corpus: the model samples freely from its chat template.
    Selfgen(cli::selfgen::Args),
    /// Replace a QA file's answers by the model's own (training targets of the real-world
    /// scenario); the original answers are kept as `golden_answer`.
    Answers(cli::answers::Args),
    /// Robustness attacks on an unlearned model (relearning, quantization).
    #[command(subcommand)]
    Attack(cli::attack::Cmd),
    /// Audit how deep the forgetting is: paraphrases, jailbreak wrappers, few-shot prompts,
    /// quantization and relearning, each measured on the forget set (AUDIT.json).
    Audit(cli::audit::Args),
    /// Evaluate a model: TOFU metrics, closer-look metrics, memorisation, MIA/PrivLeak, refusals.
    Eval(cli::eval::Args),
    /// Write a self-contained HTML report of evaluated models (forget quality vs utility, …).
    Report(cli::report::Args),
    /// Generate a continuation/answer for a prompt.
    Generate(cli::generate::Args),
    /// Write a random Llama model (byte-level tokenizer) as an HF directory, for tests and benchmarks.
    Init(cli::init::Args),
    /// Measure training, scoring and generation throughput and peak memory.
    Bench(cli::bench::Args),
    /// Check the training path on a device: logits, loss and every gradient of the tiny parity
    /// checkpoints on the CPU and the device, against transformers' values and each other.
    CheckDevice(cli::check_device::Args),
    /// Tune methods over a grid of settings (locally or as a Slurm array job) and pick each
    /// method's best point under a stated rule: LEADERBOARD.md/.json, leaderboard.html.
    Sweep(cli::sweep::Args),
    /// Run one point of a prepared sweep (what each Slurm task runs).
    #[command(hide = true)]
    SweepPoint(cli::sweep::PointArgs),
    /// List every unlearning method and loss term: formula, parameters and defaults, needs.
    Methods(cli::catalog::Args),
    /// List every evaluation metric: formula, what it needs, its reference implementation.
    Metrics(cli::catalog::Args),
}

/// Large freed blocks are kept for reuse (`unlearn::util::alloc`); everything else is the system's.
#[global_allocator]
static ALLOC: unlearn::util::alloc::Recycling = unlearn::util::alloc::Recycling;

fn main() {
    unlearn::util::alloc::enable();
    unlearn::util::runtime::default_sigpipe();
    unlearn::util::runtime::tune_threads();
    unlearn::util::runtime::tune_allocator();
    let cli = Cli::parse();
    let r = unlearn::util::runtime::run_in_pool(move || match cli.cmd {
        Cmd::Demo(a) => cli::demo::run(a),
        Cmd::Report(a) => cli::report::run(a),
        Cmd::Import(a) => cli::import::run(a),
        Cmd::Export(a) => cli::export::run(a),
        Cmd::Finetune(a) => cli::finetune::run(a),
        Cmd::Generate(a) => cli::generate::run(a),
        Cmd::Eval(a) => cli::eval::run(a),
        Cmd::Audit(a) => cli::audit::run(a),
        Cmd::Attack(c) => cli::attack::run(c),
        Cmd::Selfgen(a) => cli::selfgen::run(a),
        Cmd::Answers(a) => cli::answers::run(a),
        Cmd::Run(a) => cli::run::run(a),
        Cmd::Attribute(a) => cli::attribute::run(a),
        Cmd::Init(a) => cli::init::run(a),
        Cmd::Bench(a) => cli::bench::run(a),
        Cmd::CheckDevice(a) => cli::check_device::run(a),
        Cmd::Sweep(a) => cli::sweep::run(a),
        Cmd::SweepPoint(a) => cli::sweep::point(a),
        Cmd::Methods(a) => cli::catalog::methods(a),
        Cmd::Metrics(a) => cli::catalog::metrics(a),
    });
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
