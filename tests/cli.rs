//! End-to-end tests of the `unlearn` binary on tiny fixtures the tests create themselves.
mod common;
use common::*;

use std::collections::HashMap;

use candle_core::{Device, Tensor};

#[test]
fn finetune_memorises_then_reloads_and_generates() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(p.join("qa.jsonl"), SHORT_QA).unwrap();
    init_tiny(p, &[]);
    let out = memorise(p, "qa.jsonl", "ft");
    assert!(out.contains("80 steps"), "{out}");
    for f in ["run.json", "config.toml", "train_log.jsonl"] {
        assert!(p.join("ft.run").join(f).exists(), "missing {f}");
    }
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("ft.run/run.json")).unwrap()).unwrap();
    assert_eq!(run["config"]["lr"], 3e-3);
    let log = std::fs::read_to_string(p.join("ft.run/train_log.jsonl")).unwrap();
    let losses: Vec<f64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert!(
        losses.last().unwrap() < &(losses[0] / 5.0),
        "loss did not fall: {losses:?}"
    );
    let gen = ok(
        &[
            "generate",
            "--model",
            "ft",
            "--prompt",
            "Code for apple?",
            "--prompt",
            "Code for fig?",
            "--max-new-tokens",
            "12",
        ],
        p,
    );
    assert!(
        gen.contains("zebra 41") && gen.contains("otter 93"),
        "{gen}"
    );
    // Same seed, same machine: bit-identical weights.
    memorise(p, "qa.jsonl", "ft2");
    assert_eq!(
        std::fs::read(p.join("ft/model.safetensors")).unwrap(),
        std::fs::read(p.join("ft2/model.safetensors")).unwrap()
    );
}

#[test]
fn bad_inputs_fail_cleanly_without_output() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    ok(
        &["init", "--out", "tiny", "--hidden", "32", "--layers", "1"],
        p,
    );
    std::fs::write(
        p.join("bad.jsonl"),
        "{\"question\": \"q\", \"answer\": \"a\"}\n{\"question\": \"q\"}\n",
    )
    .unwrap();
    let e = fails(
        &[
            "finetune",
            "--model",
            "tiny",
            "--data",
            "bad.jsonl",
            "--out",
            "o",
        ],
        p,
    );
    assert!(e.contains("bad.jsonl:2:") && e.contains("answer"), "{e}");
    std::fs::write(p.join("qa.jsonl"), SHORT_QA).unwrap();
    let e = fails(
        &[
            "finetune",
            "--model",
            "tiny",
            "--data",
            "qa.jsonl",
            "--out",
            "o",
            "--set",
            "learning_rate=1",
        ],
        p,
    );
    assert!(e.contains("unknown field `learning_rate`"), "{e}");
    let e = fails(
        &[
            "finetune", "--model", "nowhere", "--data", "qa.jsonl", "--out", "o",
        ],
        p,
    );
    assert!(e.contains("nowhere/config.json"), "{e}");
    assert!(!p.join("o").exists());

    // A checkpoint with a missing tensor names it; one with a wrong shape names both shapes.
    let dev = Device::Cpu;
    let mut t: HashMap<String, Tensor> =
        candle_core::safetensors::load(p.join("tiny/model.safetensors"), &dev).unwrap();
    let w = t.remove("model.layers.0.mlp.up_proj.weight").unwrap();
    candle_core::safetensors::save(&t, p.join("tiny/model.safetensors")).unwrap();
    let e = fails(&["generate", "--model", "tiny", "--prompt", "hi"], p);
    assert!(
        e.contains("model.layers.0.mlp.up_proj.weight") && e.contains("missing"),
        "{e}"
    );
    t.insert(
        "model.layers.0.mlp.up_proj.weight".into(),
        w.narrow(0, 0, 8).unwrap(),
    );
    candle_core::safetensors::save(&t, p.join("tiny/model.safetensors")).unwrap();
    let e = fails(&["generate", "--model", "tiny", "--prompt", "hi"], p);
    assert!(
        e.contains("up_proj.weight` has shape [8, 32], expected [88, 32]"),
        "{e}"
    );
}

#[test]
fn non_finite_training_stops_and_keeps_last_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(p.join("qa.jsonl"), SHORT_QA).unwrap();
    ok(
        &["init", "--out", "tiny", "--hidden", "32", "--layers", "1"],
        p,
    );
    let e = fails(
        &[
            "finetune",
            "--model",
            "tiny",
            "--data",
            "qa.jsonl",
            "--out",
            "o",
            "--set",
            "lr=1e30",
            "--set",
            "warmup_ratio=0",
            "--set",
            "max_grad_norm=0",
            "--set",
            "batch_size=2",
            "--set",
            "save_every=1",
        ],
        p,
    );
    assert!(
        e.contains("non-finite") && e.contains("checkpoint-1"),
        "{e}"
    );
    assert!(p.join("o.run/checkpoint-1/model.safetensors").exists());
    assert!(!p.join("o").exists(), "no output model after a failed run");
}

#[test]
fn gguf_import_roundtrip_matches_original_logits() {
    gguf_roundtrip(candle_core::quantized::GgmlDType::F32);
}

#[test]
fn gguf_import_dequantizes_q8_0_q4_0_q4_1() {
    use candle_core::quantized::GgmlDType;
    for q in [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4_1] {
        gguf_roundtrip(q);
    }
}

/// Build a GGUF the way llama.cpp's converter does (permuted q/k, llama.cpp names, gpt2
/// tokenizer metadata, 2-D weights quantized with `q`) from a random HF model, import it, and
/// compare with the original whose 2-D weights went through the same quantize/dequantize.
fn gguf_roundtrip(q: candle_core::quantized::GgmlDType) {
    use candle_core::quantized::{GgmlDType, QTensor};
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    ok(
        &[
            "init",
            "--out",
            "tiny",
            "--hidden",
            "64",
            "--intermediate",
            "128",
            "--layers",
            "2",
            "--seed",
            "3",
        ],
        p,
    );
    let dev = Device::Cpu;
    let md = unlearn::model::hf::ModelDir::load(&p.join("tiny"), &dev).unwrap();
    let c = &md.model.cfg;
    write_gguf(&md, q, &p.join("m.gguf"), |_, t| t);
    // The original with the same quantisation error (row permutation commutes with row blocks).
    let expected: HashMap<String, Tensor> = md
        .model
        .named_tensors()
        .into_iter()
        .map(|(n, t)| {
            let t = if t.rank() == 2 {
                QTensor::quantize(&t, q).unwrap().dequantize(&dev).unwrap()
            } else {
                t
            };
            (n, t)
        })
        .collect();
    let _ = GgmlDType::F32;
    let expected =
        unlearn::model::Llama::from_tensors(c.clone(), expected, std::path::Path::new("x"), &dev)
            .unwrap();
    ok(&["import", "m.gguf", "--out", "imp"], p);
    let imp = unlearn::model::hf::ModelDir::load(&p.join("imp"), &dev).unwrap();
    let ids = Tensor::new(&[[72u32, 101, 108, 108, 111, 32, 258]], &dev).unwrap();
    let a = expected.forward(&ids).unwrap();
    let b = imp.model.forward(&ids).unwrap();
    let diff = unlearn::ops::max_abs_diff(&a, &b).unwrap();
    assert!(diff < 1e-5, "logits differ by {diff}");
    assert_eq!(
        imp.tok.encode("Hello <|im_end|>", false).unwrap(),
        md.tok.encode("Hello <|im_end|>", false).unwrap()
    );
    assert_eq!(
        imp.tok.render_chat(None, "hi").unwrap(),
        md.tok.render_chat(None, "hi").unwrap()
    );
}

/// `unlearn bench` end to end (issue #9): every repetition is recorded in the JSON and the
/// reported figures are the medians of them.
#[test]
fn bench_reports_medians_of_its_repetitions() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    init_tiny(p, &[]);
    let args = [
        "bench",
        "--model",
        "tiny",
        "--batch",
        "2",
        "--seq",
        "16",
        "--train-steps",
        "3",
        "--score-batches",
        "2",
        "--gen-batch",
        "2",
        "--gen-prompt",
        "4",
        "--gen-tokens",
        "4",
        "--gen-runs",
        "3",
        "--json",
        "bench.json",
    ];
    let out = ok(&args, p);
    assert!(
        out.contains("training step") && out.contains("peak RSS"),
        "{out}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("bench.json")).unwrap()).unwrap();
    let times = |k: &str| -> Vec<f64> {
        v[k].as_array()
            .unwrap_or_else(|| panic!("{k} missing: {v}"))
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let (steps, batches, runs) = (
        times("train_steps_s"),
        times("score_batches_s"),
        times("gen_runs_s"),
    );
    assert_eq!((steps.len(), batches.len(), runs.len()), (3, 2, 3));
    let median = unlearn::app::bench::median;
    assert_eq!(v["train_step_s"].as_f64().unwrap(), median(&steps));
    let tokens = 2.0 * 16.0;
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs();
    assert!(close(
        v["score_tokens_per_s"].as_f64().unwrap(),
        tokens / median(&batches)
    ));
    assert!(close(
        v["gen_tokens_per_s"].as_f64().unwrap(),
        2.0 * 4.0 / median(&runs)
    ));
}

/// `unlearn init` writes every configuration key it is given, and with `--dtype bf16` streams a
/// bf16 checkpoint (as 1B+ models come) that loads, trains and generates.
#[test]
fn init_writes_every_config_key_and_bf16_checkpoints() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    ok(
        &[
            "init",
            "--out",
            "m",
            "--hidden",
            "48",
            "--layers",
            "2",
            "--heads",
            "3",
            "--kv-heads",
            "1",
            "--head-dim",
            "20",
            "--intermediate",
            "72",
            "--vocab",
            "300",
            "--untied",
            "--max-position",
            "96",
            "--rope-theta",
            "500000",
            "--attention-bias",
            "--dtype",
            "bf16",
        ],
        p,
    );
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("m/config.json")).unwrap()).unwrap();
    for (k, v) in [
        ("hidden_size", 48.0),
        ("num_hidden_layers", 2.0),
        ("num_attention_heads", 3.0),
        ("num_key_value_heads", 1.0),
        ("head_dim", 20.0),
        ("intermediate_size", 72.0),
        ("vocab_size", 300.0),
        ("max_position_embeddings", 96.0),
        ("rope_theta", 500000.0),
    ] {
        assert_eq!(c[k].as_f64(), Some(v), "{k}: {c}");
    }
    assert_eq!(c["tie_word_embeddings"], false);
    assert_eq!(c["torch_dtype"], "bfloat16");
    let md = unlearn::model::hf::ModelDir::load(&p.join("m"), &candle_core::Device::Cpu).unwrap();
    assert!(md.model.param("lm_head.weight").is_some());
    assert!(md
        .model
        .param("model.layers.0.self_attn.q_proj.bias")
        .is_some());
    std::fs::write(p.join("qa.jsonl"), SHORT_QA).unwrap();
    ok(
        &[
            "finetune", "--model", "m", "--data", "qa.jsonl", "--out", "ft", "--set", "epochs=1",
        ],
        p,
    );
    let e = fails(
        &["init", "--out", "bad", "--hidden", "48", "--heads", "5"],
        p,
    );
    assert!(e.contains("--head-dim"), "{e}");
}
