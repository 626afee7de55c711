use std::path::PathBuf;

use anyhow::Result;
use unlearn::model::hf::ModelDir;
use unlearn::unlearn::answers::{self_answers, AnswersConfig};
use unlearn::util::guard::{Input, OutKind, Pending};

use super::common::{Device, Overwrite, Settings};

#[derive(clap::Args)]
pub struct Args {
    /// Model whose answers become the training targets: a HF model directory or a Hub id.
    #[arg(long)]
    model: PathBuf,
    /// QA file (JSON array or JSONL) whose questions the model answers.
    #[arg(long)]
    data: PathBuf,
    /// Output JSONL: the rows with `answer` = the model's answer and `golden_answer` kept.
    #[arg(long)]
    out: PathBuf,
    /// Keys of AnswersConfig: max_new_tokens, gen_batch_size, prompt, max_len.
    #[command(flatten)]
    settings: Settings,
    #[command(flatten)]
    overwrite: Overwrite,
    #[command(flatten)]
    device: Device,
}

pub fn run(a: Args) -> Result<()> {
    let cfg: AnswersConfig = a.settings.load()?;
    let model = unlearn::util::hub::model(&a.model)?;
    let data = unlearn::util::hub::file(&a.data)?;
    let rows = unlearn::data::benchmark::read_rows(&data)?;
    anyhow::ensure!(!rows.is_empty(), "{}: no rows", data.display());
    let inputs = [Input::new("model", &model), Input::new("data", &data)];
    let out = Pending::claim(
        "--out",
        &a.out,
        OutKind::File,
        &inputs,
        a.overwrite.overwrite,
    )?;
    let md = ModelDir::load(&model, &a.device.get()?)?;
    let t = std::time::Instant::now();
    let n = rows.len();
    let res = self_answers(&md.model, &md.tok, rows, &cfg, true)
        .map_err(|e| anyhow::anyhow!("{}: {e}", data.display()))?;
    anyhow::ensure!(
        !res.rows.is_empty(),
        "{}: the model's answer to every question was empty; nothing to write",
        data.display()
    );
    let text: String = res
        .rows
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    unlearn::util::fs::write_synced(out.tmp(), text.as_bytes())?;
    out.commit()?;
    if !res.empty.is_empty() {
        eprintln!(
            "dropped {} of {n} rows whose answer was empty (rows {:?})",
            res.empty.len(),
            res.empty
        );
    }
    println!(
        "{} answers in {:.0}s written to {}",
        res.rows.len(),
        t.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}
