//! Issue #22: `unlearn export` (GGUF for llama.cpp) and `unlearn attack quantize`. Re-importing an
//! export gives the same model: f32 exactly, f16 and q8_0 within stated tolerances of the logits;
//! the tokenizer gives the same ids; and on SmolLM2 (when UNLEARN_SMOLLM2_GGUF is set) the
//! llama.cpp metadata survives and greedy generation is unchanged through q8_0.
mod common;

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use common::ok;
use unlearn::model::hf::ModelDir;

fn logits(dir: &Path, ids: &[u32]) -> Vec<f32> {
    let md = ModelDir::load(dir, &Device::Cpu).unwrap();
    let x = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    md.model
        .forward(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Largest absolute difference, and the largest absolute logit.
fn diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    (d, a.iter().map(|x| x.abs()).fold(0.0, f32::max))
}

#[test]
fn export_then_import_gives_the_same_model() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    common::init_tiny(p, &[]);
    let ids: Vec<u32> = unlearn::model::tokenizer::Tok::load(&p.join("tiny"), &[0])
        .unwrap()
        .encode("Who wrote the lantern book? An answer.", false)
        .unwrap();
    let base = logits(&p.join("tiny"), &ids);
    // (type, tolerance on the logits relative to the largest logit)
    for (ty, tol) in [("f32", 0.0), ("f16", 2e-3), ("q8_0", 2e-2), ("q4_0", 0.25)] {
        let g = format!("m.{ty}.gguf");
        let back = format!("back_{ty}");
        ok(&["export", "--model", "tiny", "--out", &g, "--type", ty], p);
        ok(&["import", &g, "--out", &back], p);
        let got = logits(&p.join(&back), &ids);
        let (dmax, scale) = diff(&base, &got);
        assert!(
            dmax <= tol * scale,
            "{ty}: max |logit diff| {dmax} (largest logit {scale})"
        );
        let tok = unlearn::model::tokenizer::Tok::load(&p.join(&back), &[0]).unwrap();
        assert_eq!(
            tok.encode("Who wrote the lantern book? An answer.", false)
                .unwrap(),
            ids,
            "{ty}"
        );
    }
    // f32 is exact, tensor by tensor
    let a = ModelDir::load(&p.join("tiny"), &Device::Cpu).unwrap();
    let b = ModelDir::load(&p.join("back_f32"), &Device::Cpu).unwrap();
    assert_eq!(a.model.cfg, b.model.cfg);
    for ((n, x), (_, y)) in a
        .model
        .named_tensors()
        .iter()
        .zip(b.model.named_tensors().iter())
    {
        let dx: f32 = (x - y)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(dx, 0.0, "{n}");
    }
    // an existing output is refused without --overwrite; a bad type is an error naming the choices
    let o = common::run(&["export", "--model", "tiny", "--out", "m.f16.gguf"], p);
    assert!(!o.status.success());
    let o = common::run(
        &[
            "export", "--model", "tiny", "--out", "x.gguf", "--type", "q9",
        ],
        p,
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("q4_k"));
}

/// The quantization attack evaluates the model and its quantized copy side by side.
#[test]
fn attack_quantize_reports_before_and_after() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    common::init_tiny(p, &[]);
    let fx =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hub/tofu-mini.expected.json");
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx).unwrap()).unwrap();
    std::fs::create_dir_all(p.join("bench")).unwrap();
    for (split, file) in [
        ("forget01_perturbed", "forget01_perturbed"),
        ("retain_perturbed", "retain_perturbed"),
    ] {
        let text: String = rows["splits"][split]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.to_string() + "\n")
            .collect();
        std::fs::write(p.join(format!("bench/{file}.jsonl")), text).unwrap();
    }
    let out = ok(
        &[
            "attack",
            "quantize",
            "--model",
            "tiny",
            "--type",
            "q4_0",
            "--benchmark",
            "bench",
            "--forget-split",
            "forget01",
            "--out",
            "aq",
            "--set",
            "max_new_tokens=4",
        ],
        p,
    );
    assert!(out.contains("forget_Q_A_Prob"), "{out}");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("aq/quantize.json")).unwrap())
            .unwrap();
    let m = &j["metrics"]["forget_Q_A_Prob"];
    let (b, q) = (
        m["model"].as_f64().unwrap(),
        m["quantized"].as_f64().unwrap(),
    );
    assert!(b != q, "q4_0 changed nothing");
    assert!(((q - b) - m["change"].as_f64().unwrap()).abs() < 1e-12);
    assert!(
        p.join("aq/original/TOFU_EVAL.json").is_file()
            && p.join("aq/quantized/TOFU_EVAL.json").is_file()
    );
}

/// SmolLM2-135M-Instruct: import, export q8_0, import again: the llama.cpp metadata is there,
/// the logits stay close and greedy answers are the same.
#[test]
fn smollm2_export_round_trip() {
    let Some(gguf) = std::env::var_os("UNLEARN_SMOLLM2_GGUF") else {
        eprintln!("skipping: set UNLEARN_SMOLLM2_GGUF");
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let g = gguf.to_string_lossy().into_owned();
    ok(&["import", &g, "--out", "smol"], p);
    ok(
        &[
            "export",
            "--model",
            "smol",
            "--out",
            "smol.q8_0.gguf",
            "--type",
            "q8_0",
        ],
        p,
    );
    let notes = common::run(&["import", "smol.q8_0.gguf", "--out", "back"], p);
    assert!(notes.status.success());
    let err = String::from_utf8_lossy(&notes.stderr);
    assert!(err.contains("pre-tokenizer `smollm`"), "{err}");
    let a = ModelDir::load(&p.join("smol"), &Device::Cpu).unwrap();
    let b = ModelDir::load(&p.join("back"), &Device::Cpu).unwrap();
    assert_eq!(a.model.cfg, b.model.cfg);
    assert_eq!(a.tok.chat_template, b.tok.chat_template);
    let ids = a.tok.encode("The capital of France is", false).unwrap();
    assert_eq!(
        b.tok.encode("The capital of France is", false).unwrap(),
        ids
    );
    let (dmax, scale) = diff(
        &logits(&p.join("smol"), &ids),
        &logits(&p.join("back"), &ids),
    );
    assert!(
        dmax <= 0.05 * scale,
        "q8_0: max |logit diff| {dmax} (largest logit {scale})"
    );
    // what llama.cpp's own reader (gguf-py) saw in the same export: every key and tensor type
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/gguf_export/smollm2_q8_0.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(golden["missing_for_llama_cpp"], serde_json::json!([]));
    let mut f = std::fs::File::open(p.join("smol.q8_0.gguf")).unwrap();
    let c = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    let mut keys: Vec<&String> = c.metadata.keys().collect();
    keys.sort();
    let want: Vec<&String> = golden["metadata"].as_object().unwrap().keys().collect();
    assert_eq!(keys, want);
    let mut tensors: Vec<(String, String)> = c
        .tensor_infos
        .iter()
        .map(|(n, t)| (n.clone(), format!("{:?}", t.ggml_dtype).to_uppercase()))
        .collect();
    tensors.sort();
    let mut want: Vec<(String, String)> = golden["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().into(),
                t["type"].as_str().unwrap().into(),
            )
        })
        .collect();
    want.sort();
    assert_eq!(tensors, want);
    let gen = |m: &str| {
        ok(
            &[
                "generate",
                "--model",
                m,
                "--prompt",
                "What is the capital of France?",
                "--max-new-tokens",
                "12",
            ],
            p,
        )
    };
    assert_eq!(gen("smol"), gen("back"));
}

fn write_bench(p: &Path) {
    let fx =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hub/tofu-mini.expected.json");
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx).unwrap()).unwrap();
    std::fs::create_dir_all(p.join("bench")).unwrap();
    for split in ["forget01_perturbed", "retain_perturbed"] {
        let text: String = rows["splits"][split]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.to_string() + "\n")
            .collect();
        std::fs::write(p.join(format!("bench/{split}.jsonl")), text).unwrap();
    }
}

/// `unlearn audit` writes every attack with its three numbers, and the relearning share against
/// the original model.
#[test]
fn audit_writes_every_attack() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    common::init_tiny(p, &[]);
    write_bench(p);
    // the "original": the tiny model having memorised the forget set
    common::finetune_tiny(p, "bench/forget01_perturbed.jsonl", "orig", 30, 2);
    let out = ok(
        &[
            "audit",
            "--model",
            "tiny",
            "--original",
            "orig",
            "--benchmark",
            "bench",
            "--forget-split",
            "forget01",
            "--out",
            "au",
            "--set",
            "eval.max_new_tokens=4",
            "--set",
            "few_shot=1",
            "--set",
            "quantize=[\"q8_0\", \"q4_0\"]",
            "--set",
            "relearn.lr=1e-2",
        ],
        p,
    );
    assert!(out.contains("recovered share"), "{out}");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("au/AUDIT.json")).unwrap()).unwrap();
    let a = &j["attacks"];
    for k in [
        "plain",
        "paraphrase",
        "role_play",
        "prefix_injection",
        "ignore_previous",
        "few_shot",
        "quantize_q8_0",
        "quantize_q4_0",
    ] {
        for f in ["forget_rouge", "forget_prob"] {
            assert!(a[k][f].as_f64().is_some(), "{k}.{f}: {}", a[k]);
        }
        assert!(a[k].get("forget_refusal_rate").is_some(), "{k}");
        assert_eq!(a[k]["items"], 2, "{k}");
    }
    let r = &a["relearn_half"];
    assert_eq!(
        (r["relearn_items"].as_u64(), r["eval_items"].as_u64()),
        (Some(1), Some(1))
    );
    let (b, o) = (
        r["forget_prob_before"].as_f64().unwrap(),
        r["forget_prob_original"].as_f64().unwrap(),
    );
    let want = (r["forget_prob_after"].as_f64().unwrap() - b) / (o - b);
    assert!((r["recovered"].as_f64().unwrap() - want).abs() < 1e-9);
    // the plain probe is the forget set as `unlearn eval` scores it
    ok(
        &[
            "eval",
            "--model",
            "tiny",
            "--benchmark",
            "bench",
            "--forget-split",
            "forget01",
            "--out",
            "ev",
            "--set",
            "max_new_tokens=4",
        ],
        p,
    );
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("ev/TOFU_SUMMARY.json")).unwrap())
            .unwrap();
    assert_eq!(a["plain"]["forget_prob"], e["forget_Q_A_Prob"]);
}

/// Qwen3 (issue #24): export -> import keeps the architecture, the per-head q/k norms (llama.cpp's
/// `attn_q_norm` / `attn_k_norm`) and a head_dim wider than hidden / heads (`key_length`); f32
/// is exact tensor for tensor, q8_0 within the tolerance of the Llama test.
#[test]
fn qwen3_export_then_import() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    common::init_tiny(p, &["--arch", "qwen3", "--head-dim", "24"]);
    let ids: Vec<u32> = "Who wrote the lantern book?"
        .bytes()
        .map(|b| b as u32 + 3)
        .collect();
    let base = logits(&p.join("tiny"), &ids);
    for (ty, tol) in [("f32", 0.0), ("q8_0", 2e-2)] {
        let g = format!("q.{ty}.gguf");
        let back = format!("back_{ty}");
        ok(&["export", "--model", "tiny", "--out", &g, "--type", ty], p);
        ok(&["import", &g, "--out", &back], p);
        let (dmax, scale) = diff(&base, &logits(&p.join(&back), &ids));
        assert!(dmax <= tol * scale, "{ty}: {dmax} (largest logit {scale})");
    }
    let a = ModelDir::load(&p.join("tiny"), &Device::Cpu).unwrap();
    let b = ModelDir::load(&p.join("back_f32"), &Device::Cpu).unwrap();
    assert_eq!(a.model.cfg, b.model.cfg);
    assert!(b
        .model
        .param("model.layers.1.self_attn.k_norm.weight")
        .is_some());
}

/// `p/m.gguf` from the architecture's metadata (`arch.KEY`, with the sizes every architecture
/// writes), `md`'s tokenizer and f32 tensors under llama.cpp's names; then `unlearn import` to
/// `p/back`, which must hold `md`'s configuration and, over sequences of each length, `md`'s
/// logits (as saved to `p/m2`). Returns the imported model.
fn import_matches(
    p: &Path,
    md: &ModelDir,
    arch: &str,
    extra_kv: Vec<(&str, gguf_file::Value)>,
    tensors: Vec<(String, Tensor)>,
    lengths: &[usize],
) -> ModelDir {
    use candle_core::quantized::{GgmlDType, QTensor};
    use gguf_file::Value as V;
    let cfg = &md.model.cfg;
    let u = |x: usize| V::U32(x as u32);
    let k = |s: &str| format!("{arch}.{s}");
    let mut kv: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::String(arch.into())),
        (k("block_count"), u(cfg.num_hidden_layers)),
        (k("context_length"), u(cfg.max_position_embeddings)),
        (k("embedding_length"), u(cfg.hidden_size)),
        (k("feed_forward_length"), u(cfg.intermediate_size)),
        (k("attention.head_count"), u(cfg.num_attention_heads)),
        (k("attention.head_count_kv"), u(cfg.num_key_value_heads)),
    ];
    kv.extend(extra_kv.into_iter().map(|(n, v)| (k(n), v)));
    kv.extend(common::tokenizer_kv(md));
    let qs: Vec<(String, QTensor)> = tensors
        .into_iter()
        .map(|(n, t)| (n, QTensor::quantize(&t, GgmlDType::F32).unwrap()))
        .collect();
    let mut f = std::fs::File::create(p.join("m.gguf")).unwrap();
    let kvr: Vec<(&str, &V)> = kv.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = qs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &kvr, &ts).unwrap();
    drop(f);
    std::fs::create_dir(p.join("m2")).unwrap();
    unlearn::model::hf::write_model_files(&md.model, &md.tok, None, &[], &p.join("m2")).unwrap();
    ok(&["import", "m.gguf", "--out", "back"], p);
    let back = ModelDir::load(&p.join("back"), &Device::Cpu).unwrap();
    assert_eq!(&back.model.cfg, cfg, "{arch}");
    for &n in lengths {
        let ids: Vec<u32> = (0..n as u32).map(|i| 10 + 7 * i).collect();
        let (dmax, scale) = diff(&logits(&p.join("m2"), &ids), &logits(&p.join("back"), &ids));
        assert!(
            dmax <= 1e-5 * scale.max(1.0),
            "{arch}, {n} tokens: {dmax} (largest logit {scale})"
        );
    }
    back
}

/// `unlearn init --arch ARCH --hidden 64 --max-position 64` (plus `extra`) into `p/m`, with
/// `edit` applied to its config.json, loaded.
fn init_model(
    p: &Path,
    arch: &str,
    extra: &[&str],
    edit: impl Fn(&mut serde_json::Value),
) -> ModelDir {
    let mut args = vec![
        "init",
        "--arch",
        arch,
        "--out",
        "m",
        "--hidden",
        "64",
        "--max-position",
        "64",
    ];
    args.extend_from_slice(extra);
    ok(&args, p);
    let cpath = p.join("m/config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cpath).unwrap()).unwrap();
    edit(&mut c);
    std::fs::write(&cpath, c.to_string()).unwrap();
    ModelDir::load(&p.join("m"), &Device::Cpu).unwrap()
}

/// Set every parameter whose name satisfies `which` to `base + 0.05·((i mod 5) − 2)`: norms and
/// biases away from their initial values, so that a misplaced or unshifted one shows.
fn perturb(md: &ModelDir, which: impl Fn(&str) -> bool, base: impl Fn(&str) -> f32) {
    for (n, v) in md.model.params() {
        if which(n) {
            let k = v.as_tensor().elem_count();
            let b = base(n);
            let vals: Vec<f32> = (0..k).map(|i| b + 0.05 * ((i % 5) as f32 - 2.0)).collect();
            v.set(&Tensor::new(vals, &Device::Cpu).unwrap()).unwrap();
        }
    }
}

/// Our tensor names as llama.cpp's (the names shared by its Llama-style architectures).
fn gguf_names(name: &str) -> String {
    name.replace("model.embed_tokens.weight", "token_embd.weight")
        .replace("model.norm.weight", "output_norm.weight")
        .replace("lm_head.weight", "output.weight")
        .replace("model.layers.", "blk.")
        .replace("input_layernorm", "attn_norm")
        .replace("self_attn.q_norm", "attn_q_norm")
        .replace("self_attn.k_norm", "attn_k_norm")
        .replace("self_attn.q_proj", "attn_q")
        .replace("self_attn.k_proj", "attn_k")
        .replace("self_attn.v_proj", "attn_v")
        .replace("self_attn.o_proj", "attn_output")
        .replace("mlp.gate_proj", "ffn_gate")
        .replace("mlp.up_proj", "ffn_up")
        .replace("mlp.down_proj", "ffn_down")
}

/// Phi-3 (issue #24): a GGUF written as llama.cpp's converter writes Phi-3 (`phi3` metadata,
/// fused `attn_qkv` and `ffn_up`, no q/k permutation, LongRoPE factors as the tensors
/// `rope_factors_short` / `rope_factors_long`, the original context and attention factor as
/// metadata, the sliding window) imports to the model it was written from: the same
/// configuration and, in f32, the same logits, before and past the original context (short and
/// long factors).
#[test]
fn phi3_gguf_import_matches_the_hf_model() {
    use gguf_file::Value as V;
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    // LongRoPE with an original context of 8 (head_dim 16: 8 factors each) and a window
    let (short, long): (Vec<f32>, Vec<f32>) = (
        (0..8).map(|i| 1.0 + 0.1 * i as f32).collect(),
        (0..8).map(|i| 1.5 + 0.5 * i as f32).collect(),
    );
    // the attention factor llama.cpp's converter writes (the default for max / original = 8),
    // stated in the config as well so that the two configurations are equal
    let attn_factor = ((1.0 + (64f64 / 8.0).ln() / 8f64.ln()).sqrt()) as f32;
    let md = init_model(p, "phi3", &["--layers", "2", "--seed", "3"], |c| {
        c["rope_scaling"] = serde_json::json!({"rope_type": "longrope", "short_factor": short,
            "long_factor": long, "original_max_position_embeddings": 8,
            "attention_factor": attn_factor as f64});
        c["original_max_position_embeddings"] = 8.into();
        c["sliding_window"] = 48.into();
    });
    let cfg = md.model.cfg.clone();
    let mut tensors: Vec<(String, Tensor)> = md
        .model
        .hf_tensors()
        .unwrap()
        .into_iter()
        .map(|(name, t)| {
            let g = gguf_names(&name)
                .replace("post_attention_layernorm", "ffn_norm")
                .replace("self_attn.qkv_proj", "attn_qkv")
                .replace("mlp.gate_up_proj", "ffn_up");
            (g, t)
        })
        .collect();
    for (n, f) in [
        ("rope_factors_short.weight", &short),
        ("rope_factors_long.weight", &long),
    ] {
        tensors.push((n.into(), Tensor::new(f.as_slice(), &Device::Cpu).unwrap()));
    }
    let u = |x: usize| V::U32(x as u32);
    let kv = vec![
        (
            "attention.layer_norm_rms_epsilon",
            V::F32(cfg.rms_norm_eps as f32),
        ),
        ("attention.sliding_window", u(48)),
        ("rope.freq_base", V::F32(cfg.rope_theta as f32)),
        ("rope.dimension_count", u(cfg.head_dim)),
        ("rope.scaling.original_context_length", u(8)),
        ("rope.scaling.attn_factor", V::F32(attn_factor)),
    ];
    let back = import_matches(p, &md, "phi3", kv, tensors, &[5, 12]);
    assert_eq!(back.model.cfg.sliding_window, Some(48));
    match &back.model.cfg.rope_scaling {
        Some(unlearn::model::RopeScaling::LongRope {
            original_max_position_embeddings: 8,
            ..
        }) => {}
        other => panic!("rope scaling {other:?}"),
    }
    // the files are Phi-3's again
    let b = std::fs::read(p.join("back/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&b).unwrap();
    assert!(st.names().iter().any(|n| n.ends_with("qkv_proj.weight")));
}

/// Gemma 2 and 3 and OLMo-2 (issue #24): a GGUF written as llama.cpp's converter writes them
/// imports to the model it was written from: the same configuration and, in f32, the same
/// logits over sequences longer than the window. Gemma: `gemma2` / `gemma3` metadata with the
/// soft-caps, the window and (Gemma 3) linear RoPE scaling, norms stored as 1 + w under Gemma's
/// four norm names (`attn_norm`, `post_attention_norm`, `ffn_norm` = the pre-feed-forward norm,
/// `post_ffw_norm`). OLMo-2: `post_attention_norm` / `post_ffw_norm` and full-width q/k norms, no
/// pre-norms. Neither permutes q/k.
#[test]
fn gemma_and_olmo2_gguf_import_matches_the_hf_model() {
    use gguf_file::Value as V;
    for (arch, layers) in [("gemma2", "2"), ("gemma3", "6"), ("olmo2", "2")] {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let gemma = arch != "olmo2";
        // a window shorter than the test sequences; a RoPE scaling on Gemma 3's global layers
        let md = init_model(p, arch, &["--layers", layers, "--seed", "5"], |c| {
            if gemma {
                c["sliding_window"] = 6.into();
            }
            if arch == "gemma3" {
                c["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": 4.0});
            }
        });
        // Gemma's norm weights sit around 0 (it scales by 1 + w), OLMo-2's around 1
        perturb(
            &md,
            |n| n.ends_with("norm.weight"),
            |_| if gemma { 0.0 } else { 1.0 },
        );
        let cfg = md.model.cfg.clone();
        let tensors: Vec<(String, Tensor)> = md
            .model
            .hf_tensors()
            .unwrap()
            .into_iter()
            .map(|(name, t)| {
                let g = gguf_names(&name)
                    .replace("post_attention_layernorm", "post_attention_norm")
                    .replace("pre_feedforward_layernorm", "ffn_norm")
                    .replace("post_feedforward_layernorm", "post_ffw_norm");
                let t = if gemma && name.ends_with("norm.weight") {
                    (t + 1.0).unwrap()
                } else {
                    t
                };
                (g, t)
            })
            .collect();
        let u = |x: usize| V::U32(x as u32);
        let mut kv = vec![
            ("attention.key_length", u(cfg.head_dim)),
            ("attention.value_length", u(cfg.head_dim)),
            (
                "attention.layer_norm_rms_epsilon",
                V::F32(cfg.rms_norm_eps as f32),
            ),
        ];
        match arch {
            "gemma2" => {
                kv.push(("attention.sliding_window", u(6)));
                kv.push(("attn_logit_softcapping", V::F32(50.0)));
                kv.push(("final_logit_softcapping", V::F32(30.0)));
            }
            "gemma3" => {
                kv.push(("attention.sliding_window", u(6)));
                kv.push(("rope.freq_base", V::F32(cfg.rope_theta as f32)));
                kv.push(("rope.scaling.type", V::String("linear".into())));
                kv.push(("rope.scaling.factor", V::F32(4.0)));
            }
            _ => kv.push(("rope.freq_base", V::F32(cfg.rope_theta as f32))),
        }
        import_matches(p, &md, arch, kv, tensors, &[5, 14]);
    }
}

/// GPT-NeoX / Pythia (issue #24): a GGUF written as llama.cpp's converter writes GPT-NeoX
/// (`gptneox` metadata with the rotary dims, the residual form and the LayerNorm epsilon;
/// `attn_qkv` as [q; k; v] rather than the checkpoint's per-head interleaving; biases) imports to
/// the model it was written from: the same configuration and, in f32, the same logits.
#[test]
fn gpt_neox_gguf_import_matches_the_hf_model() {
    use gguf_file::Value as V;
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let md = init_model(
        p,
        "gpt_neox",
        &["--layers", "2", "--kv-heads", "4", "--seed", "7"],
        |_| {},
    );
    // biases and LayerNorm parameters away from their initial 0 and 1
    perturb(
        &md,
        |n| n.ends_with(".bias") || n.ends_with("norm.weight"),
        |n| if n.ends_with(".bias") { 0.0 } else { 1.0 },
    );
    let cfg = md.model.cfg.clone();
    let (heads, hd, h) = (cfg.num_attention_heads, cfg.head_dim, cfg.hidden_size);
    let tensors: Vec<(String, Tensor)> = md
        .model
        .hf_tensors()
        .unwrap()
        .into_iter()
        .map(|(name, t)| {
            let g = name
                .replace("gpt_neox.embed_in.weight", "token_embd.weight")
                .replace("gpt_neox.final_layer_norm", "output_norm")
                .replace("embed_out.weight", "output.weight")
                .replace("gpt_neox.layers.", "blk.")
                .replace("input_layernorm", "attn_norm")
                .replace("attention.query_key_value", "attn_qkv")
                .replace("attention.dense", "attn_output")
                .replace("post_attention_layernorm", "ffn_norm")
                .replace("mlp.dense_h_to_4h", "ffn_up")
                .replace("mlp.dense_4h_to_h", "ffn_down");
            // llama.cpp's converter: per-head [q_h; k_h; v_h] -> [q; k; v]
            let t = if g.contains("attn_qkv.") {
                let dims = t.dims().to_vec();
                let per_head = if t.rank() == 2 {
                    t.reshape((heads, 3, hd, h))
                } else {
                    t.reshape((heads, 3, hd))
                };
                let qkv = per_head.unwrap().transpose(0, 1).unwrap();
                qkv.contiguous().unwrap().reshape(dims).unwrap()
            } else {
                t
            };
            (g, t)
        })
        .collect();
    let kv = vec![
        ("rope.dimension_count", V::U32(cfg.rope_dims() as u32)),
        ("use_parallel_residual", V::Bool(true)),
        (
            "attention.layer_norm_epsilon",
            V::F32(cfg.rms_norm_eps as f32),
        ),
    ];
    import_matches(p, &md, "gptneox", kv, tensors, &[5, 14]);
}

/// `unlearn export` for every architecture llama.cpp has (issue #22 over #24's architectures):
/// Gemma 2 / 3 (1 + w norms, soft-caps, window), OLMo-2 (post-norms), GPT-NeoX (fused
/// `attn_qkv`, biases, partial rotary, parallel residual) and Phi-3 (fused `attn_qkv` /
/// `ffn_up`, LongRoPE factor tensors) and OLMo (1) (no norm tensors, q/k permuted like Llama,
/// clip_qkv as `clamp_kqv`, here binding) export to f32 GGUF and import back to the same
/// configuration and logits; a Gemma whose layer pattern llama.cpp would not follow is refused
/// with the reason.
#[test]
fn every_architecture_exports_and_imports_back() {
    for (arch, extra) in [
        ("gemma2", vec!["--layers", "2"]),
        ("gemma3", vec!["--layers", "6"]),
        ("olmo2", vec!["--layers", "2"]),
        ("gpt_neox", vec!["--layers", "2", "--kv-heads", "4"]),
        ("phi3", vec!["--layers", "2"]),
        ("olmo", vec!["--layers", "2", "--kv-heads", "2"]),
    ] {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let md = init_model(p, arch, &extra, |c| {
            if arch.starts_with("gemma") {
                c["sliding_window"] = 6.into();
            }
            if arch == "phi3" {
                let f: Vec<f64> = (0..8).map(|i| 1.0 + 0.25 * i as f64).collect();
                c["rope_scaling"] = serde_json::json!({"rope_type": "longrope",
                    "short_factor": f, "long_factor": f.iter().map(|x| 2.0 * x).collect::<Vec<_>>(),
                    "original_max_position_embeddings": 8});
                c["original_max_position_embeddings"] = 8.into();
            }
            if arch == "olmo" {
                c["clip_qkv"] = 0.05.into();
            }
        });
        perturb(
            &md,
            |n| n.ends_with(".bias") || n.ends_with("norm.weight"),
            |n| {
                if n.ends_with(".bias") || arch.starts_with("gemma") {
                    0.0
                } else {
                    1.0
                }
            },
        );
        std::fs::create_dir(p.join("m2")).unwrap();
        let c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p.join("m/config.json")).unwrap())
                .unwrap();
        unlearn::model::hf::write_model_files(&md.model, &md.tok, Some(&c), &[], &p.join("m2"))
            .unwrap();
        ok(
            &[
                "export", "--model", "m2", "--out", "m.gguf", "--type", "f32",
            ],
            p,
        );
        ok(&["import", "m.gguf", "--out", "back"], p);
        let back = ModelDir::load(&p.join("back"), &Device::Cpu).unwrap();
        assert_eq!(back.model.cfg, md.model.cfg, "{arch}");
        for n in [5usize, 14] {
            let ids: Vec<u32> = (0..n as u32).map(|i| 10 + 7 * i).collect();
            let (dmax, scale) = diff(&logits(&p.join("m2"), &ids), &logits(&p.join("back"), &ids));
            assert!(
                dmax <= 1e-5 * scale.max(1.0),
                "{arch}, {n} tokens: {dmax} (largest logit {scale})"
            );
        }
    }
    // refused: a Gemma 2 whose layers all slide
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    init_model(p, "gemma2", &["--layers", "2"], |c| {
        c["layer_types"] = serde_json::json!(["sliding_attention", "sliding_attention"]);
    });
    let e = common::fails(&["export", "--model", "m", "--out", "o.gguf"], p);
    assert!(e.contains("layer_types"), "{e}");
    assert!(!p.join("o.gguf").exists());
}

/// `unlearn export` of a SentencePiece-style vocabulary (issue #22: Llama 2, TinyLlama and
/// Mistral ship BPE with byte fallback): a tokenizer trained with the `sentencepiece` library and
/// converted by transformers (tests/fixtures/spm_tokenizer, scripts/make_spm_fixture.py) is
/// written as llama.cpp's `llama` vocabulary (scores, byte / unknown / control types, the ▁
/// prefix) and imports back to the same ids as transformers gives (golden.json) on every text,
/// byte-fallback characters and whitespace runs included; the model's logits are unchanged.
#[test]
fn sentencepiece_tokenizer_exports_and_imports_with_the_same_ids() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spm_tokenizer");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("golden.json")).unwrap()).unwrap();
    let vocab = golden["vocab_size"].as_u64().unwrap().to_string();
    init_model(p, "llama", &["--layers", "2", "--vocab", &vocab], |c| {
        c["bos_token_id"] = 1.into();
        c["eos_token_id"] = 2.into();
    });
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fx.join(f), p.join("m").join(f)).unwrap();
    }
    ok(
        &["export", "--model", "m", "--out", "m.gguf", "--type", "f32"],
        p,
    );
    ok(&["import", "m.gguf", "--out", "back"], p);
    let orig = unlearn::model::tokenizer::Tok::load(&p.join("m"), &[2]).unwrap();
    let back = unlearn::model::tokenizer::Tok::load(&p.join("back"), &[2]).unwrap();
    for t in golden["texts"].as_array().unwrap() {
        let text = t["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(t["transformers"].clone()).unwrap();
        assert_eq!(orig.encode(text, true).unwrap(), want, "ours on {text:?}");
        assert_eq!(
            back.encode(text, true).unwrap(),
            want,
            "re-imported on {text:?}"
        );
        let ids = &want[1..];
        assert_eq!(
            back.decode(ids, true).unwrap(),
            orig.decode(ids, true).unwrap(),
            "{text:?}"
        );
    }
    // what llama.cpp reads
    let mut f = std::fs::File::open(p.join("m.gguf")).unwrap();
    let c = gguf_file::Content::read(&mut f).unwrap();
    let s = |k: &str| c.metadata[k].to_string().unwrap().clone();
    assert_eq!(s("tokenizer.ggml.model"), "llama");
    assert!(c.metadata["tokenizer.ggml.add_space_prefix"]
        .to_bool()
        .unwrap());
    assert!(c.metadata["tokenizer.ggml.add_bos_token"]
        .to_bool()
        .unwrap());
    let arr = |k: &str| c.metadata[k].to_vec().unwrap().clone();
    let tokens: Vec<String> = arr("tokenizer.ggml.tokens")
        .iter()
        .map(|v| v.to_string().unwrap().clone())
        .collect();
    let types: Vec<i32> = arr("tokenizer.ggml.token_type")
        .iter()
        .map(|v| v.to_i32().unwrap())
        .collect();
    let scores: Vec<f32> = arr("tokenizer.ggml.scores")
        .iter()
        .map(|v| v.to_f32().unwrap())
        .collect();
    let at = |t: &str| tokens.iter().position(|x| x == t).unwrap();
    assert_eq!(types[at("<unk>")], 2);
    assert_eq!((types[at("<s>")], types[at("</s>")]), (3, 3));
    assert_eq!(types[at("<0x0A>")], 6);
    assert_eq!(
        c.metadata["tokenizer.ggml.unknown_token_id"]
            .to_u32()
            .unwrap(),
        0
    );
    // scores follow the merge order: the first merge's piece scores highest of the merged ones
    let tj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("tokenizer.json")).unwrap()).unwrap();
    let piece = |m: &serde_json::Value| -> String {
        match m {
            serde_json::Value::Array(a) => {
                format!("{}{}", a[0].as_str().unwrap(), a[1].as_str().unwrap())
            }
            m => m.as_str().unwrap().replacen(' ', "", 1),
        }
    };
    let merges = tj["model"]["merges"].as_array().unwrap();
    let (first, last) = (piece(&merges[0]), piece(merges.last().unwrap()));
    assert_eq!(scores[at(&first)], 0.0);
    assert!(scores[at(&first)] > scores[at(&last)], "{first} vs {last}");
    for ids in [vec![1u32, 40, 300, 5], (3..40).collect::<Vec<u32>>()] {
        let (dmax, _) = diff(&logits(&p.join("m"), &ids), &logits(&p.join("back"), &ids));
        assert_eq!(dmax, 0.0);
    }
}

/// What llama.cpp's loader refused in files of ours until it was run on them
/// (scripts/llama_cpp_logits_check.py, tests/fixtures/gguf_export/llama_cpp_logits.json):
/// an empty `tokenizer.ggml.merges` typed as a u32 array (candle's writer types empty arrays
/// u32; `unlearn init`'s byte-level tokenizer has no merges), a token list shorter than the
/// embedding (llama.cpp sizes the vocabulary by it; the converters pad with `[PAD{id}]`), and a
/// tied OLMo-2 without `output.weight` (its loader has no tied fallback).
#[test]
fn export_writes_what_llama_cpp_requires() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    init_model(p, "olmo2", &["--layers", "2", "--vocab", "270"], |_| {});
    ok(
        &["export", "--model", "m", "--out", "m.gguf", "--type", "f32"],
        p,
    );
    let bytes = std::fs::read(p.join("m.gguf")).unwrap();
    let key = "tokenizer.ggml.merges";
    let mut pat = (key.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(key.as_bytes());
    let at = bytes
        .windows(pat.len())
        .position(|w| w == pat.as_slice())
        .unwrap()
        + pat.len();
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
    assert_eq!(
        (u32_at(at), u32_at(at + 4)),
        (9, 8),
        "merges: an array of strings"
    );
    let mut f = std::fs::File::open(p.join("m.gguf")).unwrap();
    let c = gguf_file::Content::read(&mut f).unwrap();
    let tokens = c.metadata["tokenizer.ggml.tokens"].to_vec().unwrap();
    let types = c.metadata["tokenizer.ggml.token_type"].to_vec().unwrap();
    assert_eq!(tokens.len(), 270);
    assert_eq!(tokens[269].to_string().unwrap(), "[PAD269]");
    assert_eq!(types[269].to_i32().unwrap(), 5);
    let e = c.tensor_infos["token_embd.weight"].shape.dims().to_vec();
    assert_eq!(c.tensor_infos["output.weight"].shape.dims(), e.as_slice());
    ok(&["import", "m.gguf", "--out", "back"], p);
    let back = ModelDir::load(&p.join("back"), &Device::Cpu).unwrap();
    assert!(
        back.model.cfg.tie_word_embeddings,
        "the copied head is tied again"
    );
}
