//! LoRA adapters (Hu et al., 2021) on the linear layers, in the file layout of Hugging Face PEFT.
//!
//! An adapted linear layer computes
//!
//!   y = x·Wᵀ + b + s · (dropout(x)·Aᵀ)·Bᵀ,   A: [r, in], B: [out, r],  s = α / r (rsLoRA: α / √r)
//!
//! with W and b frozen. A starts as PEFT's `kaiming_uniform_(a = √5)`, i.e. U(−1/√in, 1/√in), and
//! B at zero, so a fresh adapter leaves the model's function unchanged. Only A and B train and
//! hold optimiser state; the unadapted model (the reference of NPO, DPO, KL, RMU, …) is the same
//! weights with the adapters switched off ([`crate::model::Llama::base_view`]), not a copy.
//! Dropout (PEFT's `lora_dropout`) applies to the adapter's input during training only.
//!
//! On disk an adapter is a directory with `adapter_config.json` (PEFT's `LoraConfig`: `peft_type`
//! "LORA", `r`, `lora_alpha`, `lora_dropout`, `target_modules`, `base_model_name_or_path`, …) and
//! `adapter_model.safetensors` with tensors `base_model.model.{module}.lora_A.weight` and
//! `….lora_B.weight`, which `peft.PeftModel.from_pretrained(base, dir)` loads. Merging folds the
//! adapter in: W' = W + s·B·A.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::config::LlamaConfig;
use crate::error::{read_json, Error, Result};
use crate::util::pattern::{expand_braces, glob_contains};
use crate::util::rng::Rng;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const PREFIX: &str = "base_model.model.";

/// The linear modules of a decoder layer that can carry an adapter (HF names).
pub const MODULES: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// `[lora]` of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank r of A [r, in] and B [out, r].
    #[serde(default = "default_r")]
    pub r: usize,
    /// α: the update is scaled by α / r (α / √r with `rslora`).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Dropout probability on the adapter's input while training (PEFT's `lora_dropout`).
    #[serde(default)]
    pub dropout: f64,
    /// Patterns of the adapted modules, matched like `trainable` against module names such as
    /// `model.layers.3.self_attn.q_proj`. Default: every linear layer of every decoder layer.
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
    /// Rank-stabilised scaling α / √r (PEFT's `use_rslora`).
    #[serde(default)]
    pub rslora: bool,
    /// Write the merged model (W + s·B·A, a full model directory) instead of the adapter.
    #[serde(default)]
    pub merge: bool,
}

fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    16.0
}
fn default_targets() -> Vec<String> {
    vec![
        "self_attn.{q,k,v,o}_proj".into(),
        "mlp.{gate,up,down}_proj".into(),
    ]
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: default_r(),
            alpha: default_alpha(),
            dropout: 0.0,
            targets: default_targets(),
            rslora: false,
            merge: false,
        }
    }
}

impl crate::config::Validate for LoraConfig {
    fn check(&self, c: &mut crate::config::Check) {
        c.at_least("r", self.r, 1);
        c.positive("alpha", self.alpha);
        if !(0.0..1.0).contains(&self.dropout) {
            c.fail(
                "dropout",
                format!("must be in [0, 1), got {}", self.dropout),
            );
        }
        if self.targets.is_empty() {
            c.fail("targets", "must name at least one module pattern");
        }
        for t in &self.targets {
            c.non_empty("targets", t);
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// The module names (`model.layers.L.self_attn.q_proj`, …) the targets select, in layer and
    /// [`MODULES`] order; a pattern that selects nothing is an error.
    pub fn modules(&self, cfg: &LlamaConfig) -> Result<Vec<String>> {
        if cfg.arch == crate::model::config::Arch::Phi3 {
            // PEFT adapts Phi-3's fused qkv_proj / gate_up_proj; ours are per projection, so an
            // adapter we wrote would not load in PEFT
            return Err(Error::Invalid(
                "LoRA on phi3 is not supported yet (its checkpoints fuse qkv_proj and \
                 gate_up_proj); train without [lora]"
                    .into(),
            ));
        }
        if cfg.arch == crate::model::config::Arch::GptNeox {
            // PEFT's modules are GPT-NeoX's own (query_key_value, dense, dense_h_to_4h, ...)
            return Err(Error::Invalid(
                "LoRA on gpt_neox is not supported yet (its checkpoints fuse q, k, v per head in \
                 query_key_value); train without [lora]"
                    .into(),
            ));
        }
        let all = all_modules(cfg);
        let mut sel = vec![false; all.len()];
        for p in &self.targets {
            let mut hit = false;
            for e in expand_braces(p) {
                for (i, n) in all.iter().enumerate() {
                    if glob_contains(&e, n) {
                        sel[i] = true;
                        hit = true;
                    }
                }
            }
            if !hit {
                return Err(Error::Invalid(format!(
                    "lora.targets: `{p}` matches no linear module (they are named like \
                     `model.layers.0.self_attn.q_proj`, `model.layers.0.mlp.down_proj`)"
                )));
            }
        }
        Ok(all
            .into_iter()
            .zip(sel)
            .filter(|(_, s)| *s)
            .map(|(n, _)| n)
            .collect())
    }
}

fn all_modules(cfg: &LlamaConfig) -> Vec<String> {
    (0..cfg.num_hidden_layers)
        .flat_map(|l| MODULES.iter().map(move |m| format!("model.layers.{l}.{m}")))
        .collect()
}

/// [out, in] of a module's weight.
fn module_shape(cfg: &LlamaConfig, module: &str) -> (usize, usize) {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let (q, kv) = (
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
    );
    match module.rsplit('.').next().unwrap_or("") {
        "q_proj" => (q, h),
        "k_proj" | "v_proj" => (kv, h),
        "o_proj" => (h, q),
        "gate_proj" | "up_proj" => (i, h),
        _ => (h, i), // down_proj
    }
}

/// The adapters of a model: per adapted module its A and B, plus what the forward pass needs.
pub struct Lora {
    pub cfg: LoraConfig,
    /// (module name, A [r, in], B [out, r]) in layer order.
    pub modules: Vec<(String, Var, Var)>,
    /// `base_model_name_or_path` written into adapter_config.json.
    pub base: String,
    seed: u64,
    /// Dropout draws so far (each forward through an adapter with dropout takes one).
    draws: AtomicU64,
}

impl Lora {
    /// Fresh adapters on the modules `cfg.targets` selects: A ~ U(−1/√in, 1/√in) from `seed`,
    /// B = 0.
    pub fn new(
        cfg: &LoraConfig,
        model: &LlamaConfig,
        base: &str,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let mut modules = vec![];
        for m in cfg.modules(model)? {
            let (out, inp) = module_shape(model, &m);
            let mut rng = Rng::for_item(seed, "lora_A", crate::util::rng::hash_bytes(m.as_bytes()));
            let bound = 1.0 / (inp as f64).sqrt();
            let a: Vec<f32> = (0..cfg.r * inp)
                .map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32)
                .collect();
            let a = Var::from_tensor(&Tensor::from_vec(a, (cfg.r, inp), device)?)?;
            let b = Var::zeros((out, cfg.r), DType::F32, device)?;
            modules.push((m, a, b));
        }
        Ok(Lora {
            cfg: cfg.clone(),
            modules,
            base: base.to_string(),
            seed,
            draws: AtomicU64::new(0),
        })
    }

    /// The adapter of a PEFT directory for a model of configuration `model`. Refuses what we do
    /// not compute (DoRA, per-module ranks, trained biases, other PEFT types) by name.
    pub fn load(dir: &Path, model: &LlamaConfig, device: &Device) -> Result<Self> {
        let cpath = dir.join(CONFIG_FILE);
        let pc: PeftConfig = read_json(&cpath)?;
        let bad = |msg: String| Error::Config {
            path: cpath.clone(),
            msg,
        };
        if pc.peft_type != "LORA" {
            return Err(bad(format!(
                "peft_type {:?}: only LORA adapters are supported",
                pc.peft_type
            )));
        }
        if pc.use_dora {
            return Err(bad("use_dora: DoRA adapters are not supported".into()));
        }
        if pc.bias != "none" {
            return Err(bad(format!(
                "bias {:?}: only \"none\" is supported",
                pc.bias
            )));
        }
        if pc.fan_in_fan_out {
            return Err(bad(
                "fan_in_fan_out = true (Conv1D layers) is not supported".into(),
            ));
        }
        let patterned =
            |v: &serde_json::Value| v.as_object().map(|o| !o.is_empty()).unwrap_or(false);
        if patterned(&pc.rank_pattern) || patterned(&pc.alpha_pattern) {
            return Err(bad(
                "rank_pattern / alpha_pattern (per-module ranks) are not supported".into(),
            ));
        }
        if pc
            .modules_to_save
            .as_ref()
            .map(|v| !v.is_empty())
            .unwrap_or(false)
        {
            return Err(bad(
                "modules_to_save (fully trained extra modules) is not supported".into(),
            ));
        }
        if pc.r == 0 {
            return Err(bad("r must be at least 1".into()));
        }
        let wpath = dir.join(WEIGHTS_FILE);
        let mut t = crate::model::hf::load_safetensors(&wpath, device)?;
        let mut modules = vec![];
        for m in all_modules(model) {
            let (out, inp) = module_shape(model, &m);
            let ka = format!("{PREFIX}{m}.lora_A.weight");
            let kb = format!("{PREFIX}{m}.lora_B.weight");
            match (t.remove(&ka), t.remove(&kb)) {
                (None, None) => continue,
                (Some(a), Some(b)) => {
                    for (name, x, want) in [(&ka, &a, [pc.r, inp]), (&kb, &b, [out, pc.r])] {
                        if x.dims() != want {
                            return Err(Error::ShapeMismatch {
                                path: wpath.clone(),
                                name: name.clone(),
                                expected: want.to_vec(),
                                actual: x.dims().to_vec(),
                            });
                        }
                    }
                    let var = |x: &Tensor| -> Result<Var> {
                        Ok(Var::from_tensor(&x.to_dtype(DType::F32)?)?)
                    };
                    modules.push((m, var(&a)?, var(&b)?));
                }
                (a, _) => {
                    let missing = if a.is_none() { ka } else { kb };
                    return Err(Error::MissingTensor {
                        path: wpath.clone(),
                        name: missing,
                        expected: vec![],
                    });
                }
            }
        }
        if let Some(name) = t.keys().min() {
            return Err(Error::UnexpectedTensor {
                path: wpath.clone(),
                name: name.clone(),
                shape: t[name].dims().to_vec(),
            });
        }
        if modules.is_empty() {
            return Err(bad(format!("{} holds no LoRA tensor", wpath.display())));
        }
        let cfg = LoraConfig {
            r: pc.r,
            alpha: pc.lora_alpha,
            dropout: pc.lora_dropout,
            targets: modules.iter().map(|(m, _, _)| m.clone()).collect(),
            rslora: pc.use_rslora,
            merge: false,
        };
        Ok(Lora {
            cfg,
            modules,
            base: pc.base_model_name_or_path.unwrap_or_default(),
            seed: 0,
            draws: AtomicU64::new(0),
        })
    }

    /// The base model an adapter directory names, as a local directory: a path (absolute, or
    /// relative to the working directory) or a Hub id.
    pub fn base_of(dir: &Path) -> Result<PathBuf> {
        let cpath = dir.join(CONFIG_FILE);
        let pc: PeftConfig = read_json(&cpath)?;
        let base = pc.base_model_name_or_path.ok_or_else(|| Error::Config {
            path: cpath.clone(),
            msg: "no base_model_name_or_path: the adapter does not say which model it adapts"
                .into(),
        })?;
        crate::util::hub::model(Path::new(&base))
    }

    pub fn scale(&self) -> f64 {
        self.cfg.scale()
    }

    /// A and B of `module`.
    pub fn get(&self, module: &str) -> Option<(&Var, &Var)> {
        self.modules
            .iter()
            .find(|(m, _, _)| m == module)
            .map(|(_, a, b)| (a, b))
    }

    /// Every adapter tensor under its PEFT name.
    pub fn params(&self) -> Vec<(String, Var)> {
        self.modules
            .iter()
            .flat_map(|(m, a, b)| {
                [
                    (format!("{PREFIX}{m}.lora_A.weight"), a.clone()),
                    (format!("{PREFIX}{m}.lora_B.weight"), b.clone()),
                ]
            })
            .collect()
    }

    /// The adapters' storage dtype (f32 unless converted).
    pub fn dtype(&self) -> DType {
        self.modules
            .first()
            .map(|(_, a, _)| a.dtype())
            .unwrap_or(DType::F32)
    }

    /// The same adapters with new storage in `dtype` (`copy`: also when the dtype is unchanged).
    pub fn converted(&self, dtype: DType) -> Result<Self> {
        let cv = |v: &Var| -> Result<Var> {
            Ok(Var::from_tensor(&v.as_tensor().to_dtype(dtype)?.copy()?)?)
        };
        Ok(Lora {
            cfg: self.cfg.clone(),
            modules: self
                .modules
                .iter()
                .map(|(m, a, b)| Ok((m.clone(), cv(a)?, cv(b)?)))
                .collect::<Result<Vec<_>>>()?,
            base: self.base.clone(),
            seed: self.seed,
            draws: AtomicU64::new(self.draws.load(Ordering::Relaxed)),
        })
    }

    /// Dropout draws taken so far (a checkpoint keeps it, so a resumed run draws the masks an
    /// uninterrupted one would).
    pub fn draws(&self) -> u64 {
        self.draws.load(Ordering::Relaxed)
    }

    pub fn set_draws(&self, n: u64) {
        self.draws.store(n, Ordering::Relaxed)
    }

    /// x with dropout applied (each element zeroed with probability p, the rest scaled by
    /// 1/(1−p)), from a seeded stream: the same seed gives the same masks.
    pub fn dropout(&self, x: &Tensor) -> Result<Tensor> {
        let p = self.cfg.dropout;
        if p <= 0.0 {
            return Ok(x.clone());
        }
        let draw = self.draws.fetch_add(1, Ordering::Relaxed);
        let mut rng = Rng::for_item(self.seed, "lora_dropout", draw);
        let keep = (1.0 / (1.0 - p)) as f32;
        let m: Vec<f32> = (0..x.elem_count())
            .map(|_| if rng.uniform() < p { 0.0 } else { keep })
            .collect();
        let m = Tensor::from_vec(m, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok((x * m)?)
    }

    /// Write `adapter_config.json` and `adapter_model.safetensors` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let pc = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.base,
            "r": self.cfg.r,
            "lora_alpha": self.cfg.alpha,
            "lora_dropout": self.cfg.dropout,
            "use_rslora": self.cfg.rslora,
            "use_dora": false,
            // full module names: PEFT matches a list entry against the end of each module's name
            "target_modules": self.modules.iter().map(|(m, _, _)| m.clone()).collect::<Vec<_>>(),
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "revision": null,
        });
        let p = dir.join(CONFIG_FILE);
        std::fs::write(&p, serde_json::to_string_pretty(&pc).unwrap())
            .map_err(|e| Error::io(&p, e))?;
        let tensors: Vec<(String, Tensor)> = self
            .params()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        crate::model::hf::write_safetensors(&tensors, &dir.join(WEIGHTS_FILE))
    }
}

/// The fields of PEFT's adapter_config.json we read (others are ignored).
#[derive(Deserialize)]
struct PeftConfig {
    peft_type: String,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    r: usize,
    #[serde(default = "default_alpha")]
    lora_alpha: f64,
    #[serde(default)]
    lora_dropout: f64,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default = "default_bias")]
    bias: String,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    rank_pattern: serde_json::Value,
    #[serde(default)]
    alpha_pattern: serde_json::Value,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
}

fn default_bias() -> String {
    "none".into()
}

/// Whether `dir` is a PEFT adapter directory (an adapter config and no model config).
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).is_file() && !dir.join("config.json").exists()
}
