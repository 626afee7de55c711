//! Issue #17: the loaders of user files get a bounded number of generated inputs (seeded
//! mutations of valid files, and random values in valid structures) and must give an error or a
//! valid result: never a panic, never a hang. Each case runs on its own thread with a time limit;
//! a failure names the loader and the seed that reproduces it.
mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::time::Duration;

use unlearn::util::rng::Rng;

/// Cases per loader (each is a few milliseconds).
const CASES: u64 = 150;
const LIMIT: Duration = Duration::from_secs(20);

/// Apply 1-4 random edits to `bytes`, mostly within the first `focus` bytes (the header, where
/// a parser makes its decisions): bit flips, bytes set to interesting values, deletions,
/// duplications, insertions and truncation.
fn mutate(bytes: &[u8], focus: usize, rng: &mut Rng) -> Vec<u8> {
    let mut v = bytes.to_vec();
    const INTERESTING: &[u8] = b"\x00\xff\x7f\x80{}[]\":,-.0123456789eE \n\\";
    for _ in 0..1 + rng.below(4) {
        if v.is_empty() {
            v.push(b'{');
        }
        let span = focus.min(v.len()).max(1);
        let at = rng.below(span);
        match rng.below(7) {
            0 => v[at] ^= 1 << rng.below(8),
            1 => v[at] = INTERESTING[rng.below(INTERESTING.len())],
            2 => {
                let n = 1 + rng.below(16).min(v.len() - at);
                v.drain(at..(at + n).min(v.len()));
            }
            3 => {
                let n = 1 + rng.below(32);
                let end = (at + n).min(v.len());
                let piece: Vec<u8> = v[at..end].to_vec();
                v.splice(at..at, piece);
            }
            4 => {
                let n = 1 + rng.below(8);
                let piece: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
                v.splice(at..at, piece);
            }
            5 => v.truncate(at),
            _ => {
                // a little-endian u64 with an extreme value (lengths and counts in binary headers)
                let x: u64 = [0, 1, u32::MAX as u64, u64::MAX, 1 << 40][rng.below(5)];
                let end = (at + 8).min(v.len());
                v.splice(at..end, x.to_le_bytes());
            }
        }
    }
    v
}

/// Run `f` for each case on a thread with a time limit; collect panics and hangs.
fn fuzz(name: &str, cases: u64, f: impl Fn(u64) -> Result<(), String> + Send + Sync + 'static) {
    let f = std::sync::Arc::new(f);
    let mut failures = vec![];
    let (mut ok, mut err) = (0, 0);
    for seed in 0..cases {
        let g = f.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| g(seed)));
                let _ = tx.send(r);
            })
            .unwrap();
        match rx.recv_timeout(LIMIT) {
            Ok(Ok(Ok(()))) => ok += 1,
            Ok(Ok(Err(e))) => {
                if err < 3 {
                    eprintln!("{name} seed {seed}: {e}");
                }
                err += 1
            }
            Ok(Err(p)) => failures.push(format!(
                "seed {seed}: panic: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
            Err(_) => failures.push(format!("seed {seed}: no answer within {LIMIT:?}")),
        }
    }
    eprintln!("{name}: {cases} inputs, {ok} accepted, {err} errors");
    assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));
}

fn model_dir() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    // every row a multiple of Q8_0's block of 32
    ok(
        &[
            "init",
            "--out",
            "tiny",
            "--hidden",
            "32",
            "--intermediate",
            "64",
            "--layers",
            "1",
        ],
        d.path(),
    );
    let p = d.path().join("tiny");
    (d, p)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn safetensors_header() {
    let (d, m) = model_dir();
    let orig = std::fs::read(m.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(orig[..8].try_into().unwrap()) as usize;
    let root = d.path().to_path_buf();
    fuzz("safetensors", CASES, move |seed| {
        let mut rng = Rng::for_item(1, "fuzz-safetensors", seed);
        let bytes = mutate(&orig, 8 + n, &mut rng);
        let p = write(&root, &format!("m{seed}.safetensors"), &bytes);
        let r = unlearn::model::hf::load_safetensors(&p, &candle_core::Device::Cpu);
        let _ = std::fs::remove_file(&p);
        r.map(drop).map_err(|e| e.to_string())
    });
}

#[test]
fn gguf_files() {
    let (d, m) = model_dir();
    let md = unlearn::model::hf::ModelDir::load(&m, &candle_core::Device::Cpu).unwrap();
    let g = d.path().join("m.gguf");
    write_gguf(&md, candle_core::quantized::GgmlDType::Q8_0, &g, |_, t| t);
    let orig = std::fs::read(&g).unwrap();
    let root = d.path().to_path_buf();
    fuzz("gguf", CASES, move |seed| {
        let mut rng = Rng::for_item(2, "fuzz-gguf", seed);
        // the metadata (tokenizer arrays included) is the first ~8 KB of this file
        let bytes = mutate(&orig, 8192, &mut rng);
        let p = write(&root, &format!("m{seed}.gguf"), &bytes);
        let r = unlearn::model::gguf::import(&p, &candle_core::Device::Cpu);
        let _ = std::fs::remove_file(&p);
        r.map(drop).map_err(|e| e.to_string())
    });
}

#[test]
fn qa_data_files() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().to_path_buf();
    let jsonl = SHORT_QA.as_bytes().to_vec();
    let array = {
        let items: Vec<serde_json::Value> = SHORT_QA
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        serde_json::to_vec_pretty(&items).unwrap()
    };
    let text = b"Once upon a time.\nThe end.\n".to_vec();
    fuzz("qa data", CASES * 2, move |seed| {
        let mut rng = Rng::for_item(3, "fuzz-qa", seed);
        let (base, ext) = match seed % 3 {
            0 => (&jsonl, "jsonl"),
            1 => (&array, "json"),
            _ => (&text, "txt"),
        };
        let bytes = mutate(base, base.len(), &mut rng);
        let p = write(&root, &format!("d{seed}.{ext}"), &bytes);
        // evaluation sets (QA only) and training corpora (QA or text)
        let a = unlearn::data::read_qa(&p).map(drop);
        let b = unlearn::data::read_items(&p).map(drop);
        let _ = std::fs::remove_file(&p);
        if ext == "txt" { b } else { a.and(b) }.map_err(|e| e.to_string())
    });
}

#[test]
fn model_config_json() {
    let (_d, m) = model_dir();
    let orig = std::fs::read(m.join("config.json")).unwrap();
    let base: serde_json::Value = serde_json::from_slice(&orig).unwrap();
    let path = m.join("config.json");
    fuzz("config.json", CASES * 2, move |seed| {
        let mut rng = Rng::for_item(4, "fuzz-config", seed);
        let v: serde_json::Value = if seed % 2 == 0 {
            // byte mutations of the file
            match serde_json::from_slice(&mutate(&orig, orig.len(), &mut rng)) {
                Ok(v) => v,
                Err(e) => return Err(e.to_string()),
            }
        } else {
            // a valid structure with random values in random keys
            let mut v = base.clone();
            let keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            for _ in 0..1 + rng.below(3) {
                let k = &keys[rng.below(keys.len())];
                v[k] = match rng.below(8) {
                    0 => serde_json::json!(0),
                    1 => serde_json::json!(-1),
                    2 => serde_json::json!(u64::MAX),
                    3 => serde_json::json!(1e300),
                    4 => serde_json::json!("x"),
                    5 => serde_json::Value::Null,
                    6 => serde_json::json!([1, 2]),
                    _ => serde_json::json!(1 + rng.below(1 << 20)),
                };
            }
            v
        };
        unlearn::model::LlamaConfig::from_json(&v, &path)
            .map(drop)
            .map_err(|e| e.to_string())
    });
}

#[test]
fn tokenizer_config_json_and_chat_templates() {
    let (d, m) = model_dir();
    let orig = std::fs::read(m.join("tokenizer_config.json")).unwrap();
    let tokenizer = std::fs::read(m.join("tokenizer.json")).unwrap();
    let root = d.path().to_path_buf();
    fuzz("tokenizer_config.json", CASES * 2, move |seed| {
        let mut rng = Rng::for_item(5, "fuzz-tokcfg", seed);
        let dir = root.join(format!("t{seed}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tokenizer.json"), &tokenizer).unwrap();
        let bytes = if seed % 2 == 0 {
            mutate(&orig, orig.len(), &mut rng)
        } else {
            // the template's text itself mutated, inside a valid file
            let mut v: serde_json::Value = serde_json::from_slice(&orig).unwrap();
            let t = v["chat_template"].as_str().unwrap().as_bytes().to_vec();
            let t = mutate(&t, t.len(), &mut rng);
            v["chat_template"] = String::from_utf8_lossy(&t).into_owned().into();
            serde_json::to_vec(&v).unwrap()
        };
        std::fs::write(dir.join("tokenizer_config.json"), bytes).unwrap();
        let r = unlearn::model::tokenizer::Tok::load(&dir, &[258]).and_then(|tok| {
            // use it as a prompt would
            let f = unlearn::data::Formatter::new(&tok, unlearn::data::PromptStyle::Auto, 64)?;
            f.encode_qa("Who?", "Bob").map(drop)
        });
        let _ = std::fs::remove_dir_all(&dir);
        r.map_err(|e| e.to_string())
    });
}
