//! Issue #23: LoRA unlearning. Only adapter tensors train, the reference is the base with the
//! adapters switched off, the merged model computes what base + adapter computes, a run resumes
//! bit-identically, and the PEFT files round-trip through Python `peft` (golden file written by
//! scripts/peft_golden.py).
mod common;
use common::*;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use unlearn::model::hf::ModelDir;

fn setup(p: &Path) {
    let lines: Vec<&str> = SHORT_QA.lines().collect();
    std::fs::write(p.join("forget.jsonl"), lines[..2].join("\n")).unwrap();
    std::fs::write(p.join("retain.jsonl"), lines[2..].join("\n")).unwrap();
    std::fs::write(p.join("all.jsonl"), SHORT_QA).unwrap();
    init_tiny(p, &[]);
    memorise(p, "all.jsonl", "ft");
}

fn run_args<'a>(method: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "run",
        "--overwrite",
        "--set",
        "model=ft",
        "--set",
        "forget=forget.jsonl",
        "--set",
        "retain=retain.jsonl",
        "--set",
        &format!("out={out}"),
        "--set",
        &format!("method={method}"),
        "--set",
        "train.lr=5e-3",
        "--set",
        "train.epochs=10",
        "--set",
        "train.batch_size=2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for e in extra {
        v.push("--set".into());
        v.push(e.to_string());
    }
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.as_str()).collect()
}

/// `unlearn run` with adapters of rank 4 (`extra` may set more `lora.*` keys).
fn run(p: &Path, method: &str, out: &str, extra: &[&str]) -> String {
    let mut e = vec!["lora.r=4"];
    e.extend_from_slice(extra);
    let a = run_args(method, out, &e);
    ok(&strs(&a), p)
}

fn load(p: &Path, dir: &str) -> ModelDir {
    ModelDir::load(&p.join(dir), &Device::Cpu).unwrap()
}

fn ids() -> Tensor {
    let v: Vec<u32> = "Code for apple? zebra 41"
        .bytes()
        .map(|b| b as u32 + 3)
        .collect();
    let n = v.len();
    Tensor::from_vec(v, (1, n), &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    unlearn::ops::max_abs_diff(a, b).unwrap()
}

fn tensors(m: &unlearn::model::Llama) -> HashMap<String, Vec<f32>> {
    m.named_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

fn mean_forget_prob(p: &Path, md: &ModelDir) -> f64 {
    let f = unlearn::data::Formatter::new(&md.tok, unlearn::data::PromptStyle::Auto, 512).unwrap();
    let enc: Vec<_> = unlearn::data::read_qa(&p.join("forget.jsonl"))
        .unwrap()
        .iter()
        .map(|it| f.encode_qa(&it.question, &it.answer).unwrap())
        .collect();
    unlearn::unlearn::mean_prob(&md.model, &enc, 4).unwrap()
}

#[test]
fn lora_unlearning_trains_only_adapters_and_merges_to_the_same_model() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    setup(p);
    let ft_hash = unlearn::util::hash::path_sha256(&p.join("ft")).unwrap();
    let ft = load(p, "ft");
    let out = run(p, "npo+gd", "a", &[]);
    assert!(out.contains("steps"), "{out}");
    // the output is a PEFT adapter directory, the input model untouched
    assert!(p.join("a/adapter_config.json").is_file());
    assert!(p.join("a/adapter_model.safetensors").is_file());
    assert!(!p.join("a/model.safetensors").exists());
    assert_eq!(
        unlearn::util::hash::path_sha256(&p.join("ft")).unwrap(),
        ft_hash
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("a/adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["target_modules"].as_array().unwrap().len(), 14); // 7 modules x 2 layers
    let notes = std::fs::read_to_string(p.join("a.run/notes.txt")).unwrap_or_default();
    assert!(
        notes.contains("0 of") || !notes.contains("model parameters changed"),
        "{notes}"
    );

    // loaded: the base weights are the input's bit for bit, only the adapter differs
    let a = load(p, "a");
    let lora = a.model.lora().expect("an adapter model");
    assert_eq!(lora.modules.len(), 14);
    assert_eq!(
        tensors(&a.model),
        tensors(&ft.model),
        "base weights changed"
    );
    let b_norm: f64 = a
        .model
        .adapters()
        .iter()
        .filter(|(n, _)| n.ends_with("lora_B.weight"))
        .map(|(_, v)| unlearn::ops::scalar(&v.as_tensor().abs().unwrap()).unwrap())
        .sum();
    assert!(b_norm > 0.0, "the adapter did not train");
    assert!(
        mean_forget_prob(p, &a) < 0.5 * mean_forget_prob(p, &ft),
        "the adapter did not unlearn"
    );

    // the reference (adapters off) is the base model exactly
    let x = ids();
    let base_logits = ft.model.forward(&x).unwrap();
    let reference = a.model.base_view().unwrap().forward(&x).unwrap();
    assert_eq!(max_diff(&reference, &base_logits), 0.0);
    let adapted = a.model.forward(&x).unwrap();
    assert!(max_diff(&adapted, &base_logits) > 1e-3);

    // merged in process and by `merge = true`: the same function as base + adapter
    let merged = a.model.merged().unwrap();
    assert!(merged.lora().is_none());
    let tol = 1e-4;
    assert!(max_diff(&merged.forward(&x).unwrap(), &adapted) < tol);
    run(p, "npo+gd", "m", &["lora.merge=true"]);
    assert!(p.join("m/model.safetensors").is_file());
    assert!(!p.join("m/adapter_config.json").exists());
    let m = load(p, "m");
    assert!(m.model.lora().is_none());
    assert!(
        max_diff(&m.model.forward(&x).unwrap(), &adapted) < tol,
        "the merged run differs from base + adapter"
    );

    // evaluation and generation take the adapter directory as a model
    let g = ok(
        &[
            "generate",
            "--model",
            "a",
            "--prompt",
            "Code for pear?",
            "--max-new-tokens",
            "4",
        ],
        p,
    );
    assert!(!g.trim().is_empty());
    // the GGUF export folds the adapter in
    ok(
        &["export", "--model", "a", "--out", "a.gguf", "--type", "f32"],
        p,
    );
    ok(&["import", "a.gguf", "--out", "a_gguf"], p);
    let back = load(p, "a_gguf");
    assert!(max_diff(&back.model.forward(&x).unwrap(), &adapted) < tol);
}

#[test]
fn lora_with_a_resident_reference_and_rmu() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    setup(p);
    let ft = load(p, "ft");
    // KL keeps the reference's full distributions: the base with adapters off
    run(p, "ga+kl", "k", &[]);
    // and the run says so (its note used to claim a "resident frozen copy")
    let notes = std::fs::read_to_string(p.join("k.run/notes.txt")).unwrap();
    assert!(
        notes.contains("adapters switched off") && !notes.contains("resident frozen copy"),
        "{notes}"
    );
    let k = load(p, "k");
    assert_eq!(tensors(&k.model), tensors(&ft.model));
    assert!(mean_forget_prob(p, &k) < mean_forget_prob(p, &ft));
    // RMU: its default trainable set (down_proj of layers ℓ−2..ℓ) selects among the adapters
    run(p, "rmu", "r", &["lora.targets=[\"mlp.down_proj\"]"]);
    let r = load(p, "r");
    assert_eq!(r.model.lora().unwrap().modules.len(), 2);
    // an adapter given as the model trains that adapter further, without [lora]
    let a: Vec<String> = run_args("ga+gd", "k2", &[])
        .into_iter()
        .map(|s| if s == "model=ft" { "model=k".into() } else { s })
        .collect();
    ok(&strs(&a), p);
    let k2 = load(p, "k2");
    assert_eq!(tensors(&k2.model), tensors(&ft.model));
    assert_eq!(
        ModelDir::load(&p.join("k2"), &Device::Cpu)
            .unwrap()
            .model
            .lora()
            .unwrap()
            .base,
        k.model.lora().unwrap().base
    );
}

#[test]
fn lora_refusals_name_the_problem() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(p.join("forget.jsonl"), SHORT_QA).unwrap();
    std::fs::write(p.join("retain.jsonl"), SHORT_QA).unwrap();
    init_tiny(p, &[]);
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "run",
            "--set",
            "model=tiny",
            "--set",
            "forget=forget.jsonl",
            "--set",
            "retain=retain.jsonl",
            "--set",
            "out=o",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for e in extra {
            v.push("--set".into());
            v.push(e.to_string());
        }
        v
    };
    let cases: [(&[&str], &str); 5] = [
        (&["method=simu", "lora.r=4"], "simu"),
        (&["method=unierase", "lora.r=4"], "unierase"),
        (&["method=ga", "lora.r=0"], "r"),
        (&["method=ga", "lora.dropout=1.0"], "dropout"),
        (&["method=ga", "lora.targets=[\"lm_head\"]"], "lm_head"),
    ];
    for (extra, want) in cases {
        let a = base(extra);
        let e = fails(&strs(&a), p);
        assert!(e.contains(want), "{extra:?}: {e}");
        assert!(!p.join("o").exists(), "{extra:?} wrote an output");
    }
    // an adapter whose base is gone: one line naming the file
    std::fs::create_dir(p.join("ad")).unwrap();
    std::fs::write(
        p.join("ad/adapter_config.json"),
        r#"{"peft_type": "LORA", "r": 2, "base_model_name_or_path": "/nonexistent/base"}"#,
    )
    .unwrap();
    let e = fails(
        &[
            "generate",
            "--model",
            "ad",
            "--prompt",
            "x",
            "--max-new-tokens",
            "1",
        ],
        p,
    );
    assert!(e.contains("/nonexistent/base"), "{e}");
    std::fs::write(
        p.join("ad/adapter_config.json"),
        format!(
            r#"{{"peft_type": "LORA", "r": 2, "use_dora": true, "base_model_name_or_path": "{}"}}"#,
            p.join("tiny").display()
        ),
    )
    .unwrap();
    let e = fails(
        &[
            "generate",
            "--model",
            "ad",
            "--prompt",
            "x",
            "--max-new-tokens",
            "1",
        ],
        p,
    );
    assert!(e.contains("DoRA"), "{e}");
}

/// Regression: an adapter whose base_model_name_or_path names itself overflowed the stack
/// (the loader and the content hash followed the base without end).
#[test]
fn adapter_naming_itself_as_base_is_an_error_not_a_stack_overflow() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(p.join("f.jsonl"), SHORT_QA).unwrap();
    init_tiny(p, &[]);
    ok(
        &[
            "run",
            "--set",
            "model=tiny",
            "--set",
            "forget=f.jsonl",
            "--set",
            "out=ad",
            "--set",
            "method=ga",
            "--set",
            "lora.r=2",
            "--set",
            "train.max_steps=1",
        ],
        p,
    );
    let c = p.join("ad/adapter_config.json");
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&c).unwrap()).unwrap();
    j["base_model_name_or_path"] = p.join("ad").to_string_lossy().into();
    std::fs::write(&c, j.to_string()).unwrap();
    for args in [
        &[
            "generate",
            "--model",
            "ad",
            "--prompt",
            "x",
            "--max-new-tokens",
            "1",
        ][..],
        &["export", "--model", "ad", "--out", "ad.gguf"][..],
    ] {
        let e = fails(args, p);
        assert!(e.contains("itself an adapter"), "{args:?}: {e}");
    }
    // the content hash (cached evaluations' key) stops too
    assert!(unlearn::util::hash::path_sha256(&p.join("ad")).is_ok());
}

#[test]
fn lora_run_killed_with_sigkill_resumes_bit_identically() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    setup(p);
    let extra = [
        "train.epochs=150",
        "train.save_every=5",
        "train.keep_checkpoints=2",
        "lora.dropout=0.1",
    ];
    run(p, "npo+gd", "ua", &extra);
    let mut e = vec!["lora.r=4"];
    e.extend_from_slice(&extra);
    let b = run_args("npo+gd", "ub", &e);
    let b: Vec<&str> = b
        .iter()
        .map(|s| s.as_str())
        .filter(|s| *s != "--overwrite")
        .collect();
    kill_and_resume(p, &b, "ub.run", 40);
    // a checkpoint is an adapter directory
    let ck = unlearn::train::checkpoint::latest(&p.join("ub.run")).unwrap();
    assert!(ck.join("adapter_model.safetensors").is_file());
    assert!(
        std::fs::read(p.join("ua/adapter_model.safetensors")).unwrap()
            == std::fs::read(p.join("ub/adapter_model.safetensors")).unwrap(),
        "the resumed adapter differs"
    );
    assert_eq!(
        log_without_timing(&p.join("ua.run/train_log.jsonl")),
        log_without_timing(&p.join("ub.run/train_log.jsonl"))
    );
}

/// scripts/peft_golden.py: Python `peft` loaded the adapter this test suite's fixture holds (one
/// we wrote) on its base and wrote its logits, unmerged and merged; and wrote an adapter of its
/// own (random A and B) with its logits. Both must match ours.
#[test]
fn peft_files_round_trip_through_python_peft() {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("golden.json")).unwrap()).unwrap();
    let ids: Vec<u32> = golden["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let n = ids.len();
    let x = Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap();
    let tol = golden["tolerance"].as_f64().unwrap();
    // a copy whose adapters name the copied base by its absolute path
    let d = tempfile::tempdir().unwrap();
    for sub in ["base", "ours", "peft"] {
        let to = d.path().join(sub);
        std::fs::create_dir(&to).unwrap();
        for e in std::fs::read_dir(fx.join(sub)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
        let c = to.join("adapter_config.json");
        if c.exists() {
            let mut j: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&c).unwrap()).unwrap();
            j["base_model_name_or_path"] = d.path().join("base").to_string_lossy().into();
            std::fs::write(&c, j.to_string()).unwrap();
        }
    }
    let logits_of = |key: &str, shape: &candle_core::Shape| {
        let v: Vec<f32> = golden[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    };
    for (dir, key) in [("ours", "ours_logits"), ("peft", "peft_logits")] {
        let md = ModelDir::load(&d.path().join(dir), &Device::Cpu).unwrap();
        let logits = md.model.forward(&x).unwrap();
        let want = logits_of(key, logits.shape());
        let e = max_diff(&logits, &want);
        assert!(e < tol, "{dir}: max |ours − peft| = {e}");
        // Python's merge_and_unload of the same adapter
        let merged = md.model.merged().unwrap().forward(&x).unwrap();
        let want = logits_of(&format!("{dir}_merged_logits"), merged.shape());
        let e = max_diff(&merged, &want);
        assert!(e < tol, "{dir} merged: max |ours − peft| = {e}");
    }
}

/// Issue #25: `dtype = "bf16"`. With adapters the base is held in bf16 and only read, the
/// adapters train in f32; a merged output is merged onto the base as it is on disk (f32 here),
/// so the tensors no adapter touches are the input's bit for bit, not their bf16 roundings.
#[test]
fn bf16_lora_run_trains_f32_adapters_and_merges_onto_the_f32_base() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    setup(p);
    let ft = load(p, "ft");
    let ft_hash = unlearn::util::hash::path_sha256(&p.join("ft")).unwrap();
    run(p, "npo+gd", "a", &["dtype=bf16"]);
    assert_eq!(
        unlearn::util::hash::path_sha256(&p.join("ft")).unwrap(),
        ft_hash
    );
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("a.run/run.json")).unwrap()).unwrap();
    assert_eq!(info["config"]["dtype"], "bf16", "{info}");
    // the adapter file holds f32 tensors that trained
    let st = candle_core::safetensors::load(p.join("a/adapter_model.safetensors"), &Device::Cpu)
        .unwrap();
    assert!(st.values().all(|t| t.dtype() == candle_core::DType::F32));
    let a = load(p, "a");
    assert_eq!(
        tensors(&a.model),
        tensors(&ft.model),
        "base weights changed"
    );
    assert!(
        mean_forget_prob(p, &a) < 0.5 * mean_forget_prob(p, &ft),
        "the bf16 run did not unlearn"
    );
    // the f32 weights of the input are not representable in bf16: a merge onto the rounded
    // base would change every tensor
    let embed = "model.embed_tokens.weight";
    let e = ft.model.param(embed).unwrap().as_tensor();
    let rounded = e
        .to_dtype(candle_core::DType::BF16)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    assert!(max_diff(e, &rounded) > 0.0);
    run(p, "npo+gd", "m", &["dtype=bf16", "lora.merge=true"]);
    let m = load(p, "m");
    let (mt, ftt) = (tensors(&m.model), tensors(&ft.model));
    for n in [
        embed,
        "model.norm.weight",
        "model.layers.0.input_layernorm.weight",
    ] {
        assert!(mt[n] == ftt[n], "{n} is not the input's");
    }
    // the adapted weights are the f32 base plus the adapter's product
    let x = ids();
    let merged_here = load(p, "m").model.forward(&x).unwrap();
    let on_base = ft
        .model
        .with_lora(
            load(p, "a")
                .model
                .lora()
                .unwrap()
                .converted(candle_core::DType::F32)
                .unwrap(),
        )
        .unwrap();
    // (a second run with the same seed trains the same adapter)
    assert!(max_diff(&merged_here, &on_base.forward(&x).unwrap()) < 1e-4);
}

/// Issue #25: `dtype = "bf16"` without adapters trains the selected weights (f32 master
/// copies) and saves every other weight unchanged.
#[test]
fn bf16_full_run_saves_frozen_weights_unchanged() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    setup(p);
    let ft = load(p, "ft");
    let a = run_args(
        "ga+gd",
        "f",
        &["dtype=bf16", "trainable=[\"layers.1.mlp.down_proj\"]"],
    );
    ok(&strs(&a), p);
    let notes = std::fs::read_to_string(p.join("f.run/notes.txt")).unwrap();
    assert!(notes.contains("bf16\" on the CPU"), "{notes}");
    let f = load(p, "f");
    let (ft_t, f_t) = (tensors(&ft.model), tensors(&f.model));
    let trained = "model.layers.1.mlp.down_proj.weight";
    for (n, v) in &ft_t {
        if n == trained {
            assert!(&f_t[n] != v, "{n} did not train");
        } else {
            assert!(&f_t[n] == v, "{n} changed");
        }
    }
    // what bf16 cannot do is refused before any work
    let a = run_args("unierase", "u", &["dtype=bf16"]);
    let e = fails(&strs(&a), p);
    assert!(e.contains("dtype") && e.contains("unierase"), "{e}");
    assert!(!p.join("u").exists());
    let a = run_args("ga", "x", &["dtype=f16"]);
    let e = fails(&strs(&a), p);
    assert!(e.contains("`f16`") && e.contains("bf16"), "{e}");
}
