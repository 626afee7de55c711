//! `unlearn check-device`: the training path on a device, held to PyTorch and to the CPU.
//!
//! Each parity fixture (`tests/fixtures/parity_*`: a tiny random checkpoint of one architecture
//! and `golden.safetensors`, transformers' logits, loss and every parameter's gradient, written by
//! `scripts/make_parity.py`) is run forward and backward on the CPU and on the device; both are
//! compared with the golden values and with each other, as relative differences
//! `max |a − b| / max |b|`:
//!
//! - logits, and the loss (HF's causal-LM mean cross-entropy over labelled positions);
//! - every gradient, in the checkpoint's own layout (GPT-NeoX's fused `query_key_value`,
//!   Phi-3's `qkv_proj` / `gate_up_proj`), the largest difference over all parameters.
//!
//! Tolerances: on the CPU in f32 1e-5 for logits and loss and 1e-4 for gradients (what
//! tests/parity.rs asserts); on any other device ten times those, since its reductions sum in a
//! different order (cuBLAS, candle's CUDA kernels) and f32 round-off grows with it.
//!
//! With [`Precision::Bf16`] (`--dtype bf16`) the model computes in bf16 and is held to
//! `golden_bf16.safetensors` (transformers with the checkpoint loaded in bf16;
//! `scripts/make_bf16_golden.py`), within the bf16 tolerances of [`tolerances`]: a bf16
//! rounding is 2⁻⁹ relative, and one rounding that goes the other way (another summation order
//! in a GEMM) moves everything after it by that much.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::model::{Arch, Llama, LlamaConfig, Precision};

/// Logits, loss and gradients of one fixture on one device (all moved to the CPU).
pub struct Measured {
    pub logits: Tensor,
    pub loss: f64,
    /// Gradients in the checkpoint's layout, by checkpoint name.
    pub grads: HashMap<String, Tensor>,
}

/// A fixture's model on `dev`.
pub fn load(dir: &Path, dev: &Device) -> Result<Llama> {
    let text = std::fs::read_to_string(dir.join("config.json"))
        .map_err(|e| Error::Invalid(format!("{}: {e}", dir.join("config.json").display())))?;
    let cfg_json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("{}: {e}", dir.join("config.json").display())))?;
    let cfg = LlamaConfig::from_json(&cfg_json, dir)?;
    let (tensors, src) = crate::model::hf::read_safetensors(dir, dev)?;
    Llama::from_tensors(cfg, tensors, &src, dev)
}

/// The golden file of a fixture for a precision.
pub fn golden_file(dir: &Path, p: Precision) -> PathBuf {
    dir.join(match p {
        Precision::F32 => "golden.safetensors",
        Precision::Bf16 => "golden_bf16.safetensors",
    })
}

/// The golden tensors of a fixture for a precision (on the CPU).
pub fn golden(dir: &Path, prec: Precision) -> Result<HashMap<String, Tensor>> {
    let p = golden_file(dir, prec);
    candle_core::safetensors::load(&p, &Device::Cpu)
        .map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))
}

/// Forward and backward of the fixture's model on `dev` with the golden inputs, computing in
/// `prec` (the parameters trained, so kept in f32).
pub fn measure(dir: &Path, dev: &Device, prec: Precision) -> Result<Measured> {
    let model = load(dir, dev)?;
    let model = match prec {
        Precision::F32 => model,
        p => model.for_precision(p, false)?,
    };
    let g = golden(dir, Precision::F32)?;
    let get = |k: &str| {
        g.get(k)
            .ok_or_else(|| Error::Invalid(format!("{}: golden has no `{k}`", dir.display())))
    };
    let ids = get("input_ids")?.to_dtype(DType::U32)?.to_device(dev)?;
    let labels = get("labels")?.to_dtype(DType::I64)?.to_device(dev)?;
    let logits = model.forward(&ids)?;
    let t = ids.dim(1)?;
    let lp = crate::ops::gather_logprobs(&logits.narrow(1, 0, t - 1)?, &ids.narrow(1, 1, t - 1)?)?;
    let mask = labels.narrow(1, 1, t - 1)?.ge(0i64)?.to_dtype(DType::F32)?;
    let n = mask.sum_all()?.to_scalar::<f32>()? as f64;
    let loss = ((lp * &mask)?.sum_all()?.neg()? / n)?;
    let grads = loss.backward()?;
    let mut ours: Vec<(String, Tensor)> = Vec::new();
    for (name, var) in model.params() {
        let g = grads
            .get(var.as_tensor())
            .ok_or_else(|| Error::Invalid(format!("no gradient for {name}")))?;
        ours.push((name.clone(), g.to_device(&Device::Cpu)?));
    }
    Ok(Measured {
        logits: logits.to_device(&Device::Cpu)?,
        loss: loss.to_scalar::<f32>()? as f64,
        grads: checkpoint_layout(&model.cfg, ours)?,
    })
}

/// Gradients under the checkpoint's names and shapes: GPT-NeoX's q, k, v fused per head, Phi-3's
/// [q; k; v] and [gate; up] by rows, as the golden files hold them.
fn checkpoint_layout(
    cfg: &LlamaConfig,
    ours: Vec<(String, Tensor)>,
) -> Result<HashMap<String, Tensor>> {
    if cfg.arch == Arch::GptNeox {
        return Ok(crate::model::neox::fuse(cfg, ours)?.into_iter().collect());
    }
    let mut map: HashMap<String, Tensor> = ours.into_iter().collect();
    if cfg.arch == Arch::Phi3 {
        for l in 0..cfg.num_hidden_layers {
            for (fused, parts) in [
                (
                    "self_attn.qkv_proj",
                    &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"][..],
                ),
                ("mlp.gate_up_proj", &["mlp.gate_proj", "mlp.up_proj"][..]),
            ] {
                let p = format!("model.layers.{l}");
                let ts = parts
                    .iter()
                    .map(|n| {
                        map.remove(&format!("{p}.{n}.weight"))
                            .ok_or_else(|| Error::Invalid(format!("{p}.{n}.weight: no gradient")))
                    })
                    .collect::<Result<Vec<_>>>()?;
                map.insert(format!("{p}.{fused}.weight"), Tensor::cat(&ts, 0)?);
            }
        }
    }
    Ok(map)
}

/// max |a − b| / max |b|.
pub fn rel(a: &Tensor, b: &Tensor) -> Result<f64> {
    let d = crate::ops::max_abs_diff(a, b)?;
    let s = crate::ops::max_abs_diff(b, &b.zeros_like()?)?;
    Ok(d / s.max(1e-12))
}

/// Relative differences of one measurement against a reference (PyTorch's or the CPU's).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Diffs {
    pub logits: f64,
    pub loss: f64,
    /// The largest over every parameter, and that parameter.
    pub grad: f64,
    pub grad_worst: String,
}

impl Diffs {
    pub fn within(&self, logits_loss: f64, grad: f64) -> bool {
        self.logits <= logits_loss && self.loss <= logits_loss && self.grad <= grad
    }
}

/// `m` against PyTorch's golden values; every parameter's gradient must be there.
pub fn against_golden(m: &Measured, g: &HashMap<String, Tensor>) -> Result<Diffs> {
    let want = |k: &str| {
        g.get(k)
            .ok_or_else(|| Error::Invalid(format!("golden has no `{k}`")))
    };
    let loss = want("loss")?.flatten_all()?.to_vec1::<f32>()?[0] as f64;
    let (mut grad, mut grad_worst) = (0.0f64, String::new());
    let mut compared = 0;
    for (k, w) in g.iter().filter(|(k, _)| k.starts_with("grad.")) {
        let name = &k["grad.".len()..];
        let ours = m.grads.get(name).ok_or_else(|| {
            Error::Invalid(format!("golden gradient {name} has no parameter here"))
        })?;
        let r = rel(ours, w)?;
        if r >= grad {
            (grad, grad_worst) = (r, name.to_string());
        }
        compared += 1;
    }
    if compared != m.grads.len() {
        return Err(Error::Invalid(format!(
            "{} gradients here, {compared} in the golden file",
            m.grads.len()
        )));
    }
    Ok(Diffs {
        logits: rel(&m.logits, want("logits")?)?,
        loss: (m.loss - loss).abs() / loss.abs().max(1e-12),
        grad,
        grad_worst,
    })
}

/// `m` against another measurement `r` of the same fixture.
pub fn against(m: &Measured, r: &Measured) -> Result<Diffs> {
    let (mut grad, mut grad_worst) = (0.0f64, String::new());
    for (k, w) in &r.grads {
        let ours = m
            .grads
            .get(k)
            .ok_or_else(|| Error::Invalid(format!("no gradient for {k}")))?;
        let d = rel(ours, w)?;
        if d >= grad {
            (grad, grad_worst) = (d, k.clone());
        }
    }
    Ok(Diffs {
        logits: rel(&m.logits, &r.logits)?,
        loss: (m.loss - r.loss).abs() / r.loss.abs().max(1e-12),
        grad,
        grad_worst,
    })
}

/// One fixture's result.
#[derive(Debug, serde::Serialize)]
pub struct FixtureResult {
    pub fixture: String,
    pub arch: String,
    pub cpu_vs_torch: Diffs,
    pub device_vs_torch: Diffs,
    pub device_vs_cpu: Diffs,
    pub pass: bool,
}

/// The tolerances (logits and loss, gradients) for a device and a precision.
pub fn tolerances(dev: &Device, p: Precision) -> (f64, f64) {
    match (p, dev.is_cpu()) {
        (Precision::F32, true) => (1e-5, 1e-4),
        (Precision::F32, false) => (1e-4, 1e-3),
        (Precision::Bf16, _) => BF16_TOLERANCES,
    }
}

/// bf16 tolerances (logits and loss, gradients), on any device.
/// Measured on the CPU on 2026-12-01 against transformers in bf16: logits at most 1.3e-2
/// (Gemma 3), loss 1.6e-4, gradients 6.4e-2 (an OLMo q_proj; a gradient is the sum of many
/// bf16 products).
pub const BF16_TOLERANCES: (f64, f64) = (2e-2, 1e-1);

/// Every `parity_*` fixture under `root`, sorted.
pub fn fixtures(root: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| Error::Invalid(format!("{}: {e}", root.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("parity_"))
                && golden_file(p, Precision::F32).is_file()
        })
        .collect();
    v.sort();
    if v.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no parity fixtures (parity_*/golden.safetensors)",
            root.display()
        )));
    }
    Ok(v)
}

/// Check one fixture on the CPU (fused kernels) and on `dev` (as the ops are set: composite on
/// any device but the CPU, and on the CPU after `ops::set_fused(false)`), computing in `prec`,
/// against that precision's golden file.
pub fn check(dir: &Path, dev: &Device, prec: Precision) -> Result<FixtureResult> {
    let g = golden(dir, prec)?;
    // the CPU reference runs the fused kernels, so that a composite run on the CPU (`set_fused
    // (false)`, the form other devices run) is held to them
    let composite = !crate::ops::fused_enabled();
    crate::ops::set_fused(true);
    let cpu = measure(dir, &Device::Cpu, prec);
    crate::ops::set_fused(!composite);
    let cpu = cpu?;
    let on_dev = measure(dir, dev, prec)?;
    let cpu_vs_torch = against_golden(&cpu, &g)?;
    let device_vs_torch = against_golden(&on_dev, &g)?;
    let device_vs_cpu = against(&on_dev, &cpu)?;
    let (tl, tg) = tolerances(dev, prec);
    let (cl, cg) = tolerances(&Device::Cpu, prec);
    let arch = load(dir, &Device::Cpu)?.cfg.arch.model_type().to_string();
    Ok(FixtureResult {
        fixture: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        arch,
        pass: cpu_vs_torch.within(cl, cg)
            && device_vs_torch.within(tl, tg)
            && device_vs_cpu.within(tl, tg),
        cpu_vs_torch,
        device_vs_torch,
        device_vs_cpu,
    })
}
