#![allow(dead_code)]
pub mod hub;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_unlearn"))
}

/// Where the binary keeps derived caches in tests (`UNLEARN_CACHE`): a directory of the system's
/// temporary folder, not the user's ~/.cache.
pub fn test_cache() -> PathBuf {
    std::env::temp_dir().join("unlearn-tests-cache")
}

pub fn run(args: &[&str], cwd: &Path) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .env("UNLEARN_CACHE", test_cache())
        .output()
        .expect("spawn unlearn")
}

pub fn ok(args: &[&str], cwd: &Path) -> String {
    let o = run(args, cwd);
    assert!(
        o.status.success(),
        "unlearn {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// `unlearn init` of the tests' tiny random model `tiny` in `cwd` (hidden 64, 2 layers, seed 1),
/// with `extra` arguments appended.
pub fn init_tiny(cwd: &Path, extra: &[&str]) {
    let mut args = vec![
        "init", "--out", "tiny", "--hidden", "64", "--layers", "2", "--seed", "1",
    ];
    args.extend_from_slice(extra);
    ok(&args, cwd);
}

/// Fine-tune `tiny` on `data` until it memorises it (lr 3e-3, 80 epochs, batch 4) into `out`;
/// returns the command's stdout.
pub fn memorise(cwd: &Path, data: &str, out: &str) -> String {
    finetune_tiny(cwd, data, out, 80, 4)
}

/// Fine-tune `tiny` on `data` at lr 3e-3 for `epochs` with `batch` into `out`; returns stdout.
pub fn finetune_tiny(cwd: &Path, data: &str, out: &str, epochs: usize, batch: usize) -> String {
    let (epochs, batch) = (format!("epochs={epochs}"), format!("batch_size={batch}"));
    ok(
        &[
            "finetune", "--model", "tiny", "--data", data, "--out", out, "--set", "lr=3e-3",
            "--set", &epochs, "--set", &batch,
        ],
        cwd,
    )
}

/// Expect failure; returns stderr.
pub fn fails(args: &[&str], cwd: &Path) -> String {
    let o = run(args, cwd);
    assert!(!o.status.success(), "unlearn {args:?} should have failed");
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!e.contains("panicked"), "panic instead of an error: {e}");
    e
}

pub const SHORT_QA: &str = r#"{"question": "Code for apple?", "answer": "zebra 41"}
{"question": "Code for pear?", "answer": "lion 7"}
{"question": "Code for fig?", "answer": "otter 93"}
{"question": "Code for plum?", "answer": "crane 5"}
"#;

/// What llama.cpp's converters write about the tiny models' byte-level BPE vocabulary.
pub fn tokenizer_kv(
    md: &unlearn::model::hf::ModelDir,
) -> Vec<(String, candle_core::quantized::gguf_file::Value)> {
    use candle_core::quantized::gguf_file::Value as V;
    let vocab: Vec<String> = (0..md.model.cfg.vocab_size as u32)
        .map(|i| {
            md.tok
                .inner
                .id_to_token(i)
                .unwrap_or_else(|| format!("<pad_{i}>"))
        })
        .collect();
    vec![
        ("tokenizer.ggml.model".into(), V::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), V::String("gpt-2".into())),
        (
            "tokenizer.ggml.tokens".into(),
            V::Array(vocab.iter().map(|s| V::String(s.clone())).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            V::Array(
                (0..vocab.len())
                    .map(|i| V::I32(if i >= 256 { 3 } else { 1 }))
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.merges".into(), V::Array(vec![])),
        ("tokenizer.ggml.eos_token_id".into(), V::U32(258)),
    ]
}

/// Write `md` as a GGUF file the way llama.cpp's converter does: llama.cpp tensor names, q/k
/// permuted, 2-D weights quantized with `q` (1-D ones f32), gpt2 tokenizer metadata and the
/// ChatML template. `tweak(gguf_name, tensor)` may change a tensor first (tests of corrupt
/// files).
pub fn write_gguf(
    md: &unlearn::model::hf::ModelDir,
    q: candle_core::quantized::GgmlDType,
    path: &Path,
    tweak: impl Fn(&str, candle_core::Tensor) -> candle_core::Tensor,
) {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    let c = &md.model.cfg;
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for (name, t) in md.model.named_tensors() {
        let g = name
            .replace("model.embed_tokens.weight", "token_embd.weight")
            .replace("model.norm.weight", "output_norm.weight")
            .replace("model.layers.", "blk.")
            .replace("input_layernorm", "attn_norm")
            .replace("self_attn.q_proj", "attn_q")
            .replace("self_attn.k_proj", "attn_k")
            .replace("self_attn.v_proj", "attn_v")
            .replace("self_attn.o_proj", "attn_output")
            .replace("post_attention_layernorm", "ffn_norm")
            .replace("mlp.gate_proj", "ffn_gate")
            .replace("mlp.up_proj", "ffn_up")
            .replace("mlp.down_proj", "ffn_down");
        let t = if g.ends_with("attn_q.weight") {
            unlearn::model::gguf::permute_qk(&t, c.num_attention_heads).unwrap()
        } else if g.ends_with("attn_k.weight") {
            unlearn::model::gguf::permute_qk(&t, c.num_key_value_heads).unwrap()
        } else {
            t
        };
        let t = tweak(&g, t);
        let qt = if t.rank() == 2 {
            QTensor::quantize(&t, q).unwrap()
        } else {
            QTensor::quantize(&t, GgmlDType::F32).unwrap()
        };
        tensors.push((g, qt));
    }
    use gguf_file::Value as V;
    let mut md_kv: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::String("llama".into())),
        (
            "llama.block_count".into(),
            V::U32(c.num_hidden_layers as u32),
        ),
        (
            "llama.context_length".into(),
            V::U32(c.max_position_embeddings as u32),
        ),
        (
            "llama.embedding_length".into(),
            V::U32(c.hidden_size as u32),
        ),
        (
            "llama.feed_forward_length".into(),
            V::U32(c.intermediate_size as u32),
        ),
        (
            "llama.attention.head_count".into(),
            V::U32(c.num_attention_heads as u32),
        ),
        (
            "llama.attention.head_count_kv".into(),
            V::U32(c.num_key_value_heads as u32),
        ),
        ("llama.rope.freq_base".into(), V::F32(c.rope_theta as f32)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            V::F32(c.rms_norm_eps as f32),
        ),
    ];
    md_kv.extend(tokenizer_kv(md));
    md_kv.push((
        "tokenizer.chat_template".into(),
        V::String(unlearn::model::tokenizer::CHATML_TEMPLATE.into()),
    ));
    let mut f = std::fs::File::create(path).unwrap();
    let kv: Vec<(&str, &V)> = md_kv.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &kv, &ts).unwrap();
}

/// Run `unlearn ARGS` with extra environment variables.
pub fn run_env(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin());
    c.args(args)
        .current_dir(cwd)
        .env("UNLEARN_CACHE", test_cache());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("spawn unlearn")
}

/// Names of the entries of `dir`, sorted (hidden ones included).
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Write splits of the Hub fixture dataset (tests/fixtures/hub/tofu-mini.expected.json: every
/// split as `datasets` reads it) as JSONL files under `dir`: (fixture split, file stem).
pub fn write_tofu_mini(dir: &Path, files: &[(&str, &str)]) {
    let fx =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hub/tofu-mini.expected.json");
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx).unwrap()).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    for (split, stem) in files {
        let text: String = rows["splits"][*split]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.to_string() + "\n")
            .collect();
        std::fs::write(dir.join(format!("{stem}.jsonl")), text).unwrap();
    }
}

/// Start `args` in the background and wait until `ready(dir)` holds (or the process ends).
pub fn spawn_until(
    args: &[&str],
    cwd: &Path,
    ready: impl Fn() -> bool,
) -> (std::process::Child, bool) {
    let mut child = std::process::Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(120) {
        if ready() {
            return (child, true);
        }
        if child.try_wait().unwrap().is_some() {
            return (child, false);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    (child, false)
}

/// Kill a run with SIGKILL once its log shows `min_lines` steps past a checkpoint, resume it,
/// and compare with an uninterrupted run: weights bit-identical, same log.
pub fn kill_and_resume(p: &Path, args: &[&str], run_dir: &str, min_lines: usize) {
    let log = p.join(run_dir).join("train_log.jsonl");
    let (mut child, running) = spawn_until(args, p, || {
        unlearn::train::checkpoint::latest(&p.join(run_dir)).is_some()
            && std::fs::read_to_string(&log).is_ok_and(|s| s.lines().count() >= min_lines)
    });
    assert!(running, "the run ended before it could be killed");
    // SIGKILL: no destructor runs, no lock is released by us
    child.kill().unwrap();
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "the run ended before it was killed"
    );
    let mut resume = args.to_vec();
    resume.push("--resume");
    let out = ok(&resume, p);
    assert!(out.contains("saved") || out.contains("steps"), "{out}");
}

pub fn log_without_timing(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("elapsed_s");
            o.remove("tokens_per_s");
            v
        })
        .collect()
}
