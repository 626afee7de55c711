//! Golden test against PyTorch/transformers: logits, loss and the gradient of every parameter
//! of two tiny checkpoints (Llama with GQA + Llama-3 RoPE scaling + untied head; Qwen2 with
//! q/k/v biases + tied embeddings). Values produced once by `scripts/make_parity.py`.
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use unlearn::model::{Llama, LlamaConfig};

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let d = unlearn::ops::max_abs_diff(a, b).unwrap();
    let s = unlearn::ops::max_abs_diff(b, &b.zeros_like().unwrap()).unwrap();
    d / s.max(1e-12)
}

/// A parity fixture: its directory, config.json as written, the parsed configuration and the
/// model built from its safetensors.
struct Fixture {
    dir: std::path::PathBuf,
    cfg_json: serde_json::Value,
    model: Llama,
}

fn load_fixture(name: &str) -> Fixture {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("parity_{name}"));
    let dev = Device::Cpu;
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg = LlamaConfig::from_json(&cfg_json, &dir).unwrap();
    let (tensors, src) = unlearn::model::hf::read_safetensors(&dir, &dev).unwrap();
    let model = Llama::from_tensors(cfg, tensors, &src, &dev).unwrap();
    Fixture {
        dir,
        cfg_json,
        model,
    }
}

/// Save `f`'s model over its own config.json (as `unlearn` writes a model it loaded) into a new
/// directory; returns it with the saved config.json.
fn save_fixture(f: &Fixture) -> (tempfile::TempDir, serde_json::Value) {
    let out = tempfile::tempdir().unwrap();
    unlearn::model::hf::write_model_files(
        &f.model,
        &unlearn::model::fixture::tiny_tokenizer(),
        Some(&f.cfg_json),
        &[],
        out.path(),
    )
    .unwrap();
    let saved =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
            .unwrap();
    (out, saved)
}

fn check(name: &str) {
    let Fixture { dir, model, .. } = load_fixture(name);
    let dev = Device::Cpu;
    let golden: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("golden.safetensors"), &dev).unwrap();
    let ids = golden["input_ids"].to_dtype(DType::U32).unwrap();
    let labels = golden["labels"].to_dtype(DType::I64).unwrap();
    let logits = model.forward(&ids).unwrap();
    let r = max_rel(&logits, &golden["logits"]);
    assert!(r < 1e-5, "{name}: logits rel diff {r}");

    // HF causal-LM loss: mean over labelled positions of CE(logits[:, :-1], labels[:, 1:]).
    let t = ids.dim(1).unwrap();
    let lp = unlearn::ops::gather_logprobs(
        &logits.narrow(1, 0, t - 1).unwrap(),
        &ids.narrow(1, 1, t - 1).unwrap(),
    )
    .unwrap();
    let mask = labels
        .narrow(1, 1, t - 1)
        .unwrap()
        .ge(0i64)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let loss = ((lp * &mask).unwrap().sum_all().unwrap().neg().unwrap()
        / mask.sum_all().unwrap().to_scalar::<f32>().unwrap() as f64)
        .unwrap();
    let want = golden["loss"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0];
    let got = loss.to_scalar::<f32>().unwrap();
    assert!(
        (got - want).abs() < 1e-5 * want.abs(),
        "{name}: loss {got} vs {want}"
    );

    let grads = loss.backward().unwrap();
    let mut ours: HashMap<String, Tensor> = HashMap::new();
    for (pname, var) in model.params() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no grad for {pname}"));
        ours.insert(pname.to_string(), g.clone());
    }
    // GPT-NeoX's checkpoint names, q, k, v fused per head: so are their gradients
    if model.cfg.arch == unlearn::model::Arch::GptNeox {
        let ordered: Vec<(String, Tensor)> = model
            .params()
            .iter()
            .map(|(n, _)| (n.clone(), ours[n].clone()))
            .collect();
        ours = unlearn::model::neox::fuse(&model.cfg, ordered)
            .unwrap()
            .into_iter()
            .collect();
    }
    // Phi-3's checkpoint fuses [q; k; v] and [gate; up] by rows: so do their gradients
    let parts_of = |n: &str| -> Option<(String, &'static [&'static str])> {
        if let Some(b) = n.strip_suffix("qkv_proj.weight") {
            Some((b.to_string(), &["q_proj", "k_proj", "v_proj"]))
        } else {
            n.strip_suffix("gate_up_proj.weight")
                .map(|b| (b.to_string(), &["gate_proj", "up_proj"][..]))
        }
    };
    let mut compared = std::collections::HashSet::new();
    for (k, w) in golden.iter().filter(|(k, _)| k.starts_with("grad.")) {
        let pname = &k["grad.".len()..];
        let g = match (ours.get(pname), parts_of(pname)) {
            (Some(g), _) => {
                compared.insert(pname.to_string());
                g.clone()
            }
            (None, Some((base, parts))) => {
                let names: Vec<String> =
                    parts.iter().map(|p| format!("{base}{p}.weight")).collect();
                let ts: Vec<Tensor> = names.iter().map(|n| ours[n].clone()).collect();
                compared.extend(names);
                Tensor::cat(&ts, 0).unwrap()
            }
            _ => panic!(
                "{name}: no parameter for golden {pname} (ours: {:?})",
                ours.keys().collect::<Vec<_>>()
            ),
        };
        let r = max_rel(&g, w);
        assert!(r < 1e-4, "{name}: grad {pname} rel diff {r}");
    }
    assert_eq!(
        compared.len(),
        ours.len(),
        "{name}: every parameter's gradient compared"
    );
    let _ = D::Minus1;
}

#[test]
fn parity_llama_gqa_llama3_rope_untied() {
    check("llama");
}

#[test]
fn parity_qwen2_bias_tied() {
    check("qwen2");
}

#[test]
fn parity_qwen3_qk_norm_wide_heads_tied() {
    check("qwen3");
}

#[test]
fn parity_olmo2_post_norms_full_width_qk_norm_untied() {
    check("olmo2");
}

#[test]
fn parity_olmo_parameter_free_layernorm_clip_qkv() {
    check("olmo");
}

#[test]
fn parity_phi3_fused_qkv_gate_up_longrope() {
    check("phi3");
}

#[test]
fn parity_gpt_neox_parallel_residual_partial_rotary_layernorm_bias() {
    check("gpt_neox");
}

#[test]
fn parity_gpt_neox_sequential_residual_half_rotary_gelu_new() {
    check("gpt_neox_seq");
}

#[test]
fn parity_gemma2_sandwich_norms_softcaps_alternating_sliding_window() {
    check("gemma2");
}

#[test]
fn parity_gemma3_qk_norm_local_and_global_rope() {
    check("gemma3");
}

/// A Gemma 3 model saved from a transformers >= 5 config keeps its RoPE per layer type
/// (`rope_parameters.full_attention` / `.sliding_attention`) and reloads to the same model.
#[test]
fn gemma3_saved_config_keeps_rope_per_layer_type() {
    let f = load_fixture("gemma3");
    let cfg = f.model.cfg.clone();
    assert_eq!(cfg.rope_local_theta, Some(10000.0));
    assert_eq!(cfg.rope_theta, 1e6);
    assert_eq!(cfg.sliding_layers, Some(vec![true, true, false]));
    let (out, saved) = save_fixture(&f);
    let rp = &saved["rope_parameters"];
    assert_eq!(rp["sliding_attention"]["rope_theta"], 10000.0, "{saved}");
    assert_eq!(rp["full_attention"]["rope_type"], "linear", "{saved}");
    assert_eq!(rp["full_attention"]["factor"], 2.0, "{saved}");
    assert_eq!(rp["full_attention"]["rope_theta"], 1e6, "{saved}");
    let back = LlamaConfig::from_json(&saved, out.path()).unwrap();
    assert_eq!(back, cfg);
}

/// GPT-NeoX: loading splits `query_key_value` per head into q, k, v; saving fuses them back and
/// restores the checkpoint's names, so a saved model holds exactly the tensors it was read from.
#[test]
fn gpt_neox_checkpoint_round_trips_through_our_names() {
    let f = load_fixture("gpt_neox");
    let dev = Device::Cpu;
    let cfg = f.model.cfg.clone();
    assert_eq!(cfg.rope_dims(), 2);
    let (original, _) = unlearn::model::hf::read_safetensors(&f.dir, &dev).unwrap();
    assert!(f
        .model
        .param("model.layers.0.self_attn.k_proj.bias")
        .is_some());
    let (out, back) = save_fixture(&f);
    let saved = candle_core::safetensors::load(out.path().join("model.safetensors"), &dev).unwrap();
    let mut a: Vec<&String> = original.keys().collect();
    let mut b: Vec<&String> = saved.keys().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    for (n, t) in &original {
        assert_eq!(
            unlearn::ops::max_abs_diff(t, &saved[n]).unwrap(),
            0.0,
            "{n} changed in the round trip"
        );
    }
    assert_eq!(LlamaConfig::from_json(&back, out.path()).unwrap(), cfg);
    assert_eq!(
        back["rope_parameters"]["partial_rotary_factor"], 0.25,
        "{back}"
    );
}
