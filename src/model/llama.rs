//! Llama-family causal LM (Llama 2/3, SmolLM2, TinyLlama, Mistral, Qwen2) written for training:
//! full-sequence logits, every op differentiable, HF tensor names kept verbatim.
//!
//! Per layer: h = x + o_proj(attn(rope(q), rope(k), v)) with q, k, v = proj(rms_norm(x));
//! out = h + down_proj(silu(gate_proj(n)) ⊙ up_proj(n)) with n = rms_norm(h).
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};

use super::config::{Act, LlamaConfig, RopeScaling};
use super::lora::Lora;
use crate::error::{Error, Result};
use crate::ops;
use crate::util::rng::Rng;

/// Hook on a per-layer activation: receives (layer, activation) and may return a replacement.
pub type ActHook<'a> = &'a dyn Fn(usize, &Tensor) -> Result<Option<Tensor>>;

/// What a forward pass should expose besides the logits.
#[derive(Default, Clone, Copy)]
pub struct Hooks<'a> {
    /// Layers after which the residual stream is returned ([b, t, h] each).
    pub hidden_layers: &'a [usize],
    /// Called on the MLP intermediate activation silu(gate)⊙up, [b, t, intermediate] (the input
    /// of `down_proj`); a returned tensor replaces it.
    pub mlp_act: Option<ActHook<'a>>,
    /// Called on the residual stream after each layer, [b, t, h]; a returned tensor replaces it.
    pub residual: Option<ActHook<'a>>,
    /// Stop after the last layer in `hidden_layers` and skip the final norm and LM head.
    pub skip_logits: bool,
    /// Return the LM head's input (the final norm's output, [b, t, h]) in place of the logits.
    pub head_input_only: bool,
    /// Compute the logits of the last position only ([b, 1, vocab]): generation's prefill needs
    /// no more, and the LM head is the largest matrix product.
    pub last_logits_only: bool,
    /// Begin at layer l with this residual stream [b, t, h] as its input: the embedding and the
    /// layers before l are not computed (for repeated passes that change only layer l onward).
    pub start: Option<(usize, &'a Tensor)>,
}

pub struct ForwardOutput {
    /// [b, t, vocab] ([b, 1, vocab] with `last_logits_only`; None when `skip_logits`).
    pub logits: Option<Tensor>,
    /// (layer, residual after that layer [b, t, h]) for each requested layer.
    pub hidden: Vec<(usize, Tensor)>,
}

/// Key/value cache for generation: per layer k, v: [b, n_kv_heads, t_past, head_dim].
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        KvCache {
            layers: vec![None; n_layers],
        }
    }
    pub fn len(&self) -> usize {
        self.layers[0]
            .as_ref()
            .map(|(k, _)| k.dim(2).unwrap_or(0))
            .unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Cached (k, v) of layer `l`, each [b, n_kv_heads, t_past, head_dim].
    pub fn layer(&self, l: usize) -> Option<&(Tensor, Tensor)> {
        self.layers.get(l).and_then(|x| x.as_ref())
    }
}

/// Gemma's soft-capping c·tanh(x/c).
fn softcap(x: &Tensor, c: f64) -> Result<Tensor> {
    Ok(((x / c)?.tanh()? * c)?)
}

/// grads[t] += g.
fn accumulate(grads: &mut candle_core::backprop::GradStore, t: &Tensor, g: &Tensor) -> Result<()> {
    let sum = match grads.remove(t) {
        Some(old) => (old + g)?,
        None => g.clone(),
    };
    grads.insert(t, sum);
    Ok(())
}

/// A linear layer: y = x·Wᵀ (+ b) (+ s·(x·Aᵀ)·Bᵀ with a LoRA adapter A, B).
struct Lin {
    w: Tensor,
    b: Option<Tensor>,
    ad: Option<(Tensor, Tensor)>,
}

impl Lin {
    fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        std::iter::once(&self.w)
            .chain(self.b.as_ref())
            .chain(self.ad.iter().flat_map(|(a, b)| [a, b]))
    }
}

struct Layer {
    /// The pre-attention norm (none with post-norms, OLMo-2).
    ln1: Option<Tensor>,
    /// LayerNorm biases of ln1 and ln2 (GPT-NeoX).
    ln1_b: Option<Tensor>,
    ln2_b: Option<Tensor>,
    /// The norm of the MLP output (OLMo-2, Gemma).
    post_ffn: Option<Tensor>,
    /// Gemma's norm of the MLP input (its `post_attention_layernorm` normalises the attention
    /// output instead).
    pre_ffn: Option<Tensor>,
    /// Per-head RMSNorm weights of q and k ([head_dim], Qwen3).
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    q: Lin,
    k: Lin,
    v: Lin,
    o: Lin,
    /// The post-attention norm (pre-MLP; OLMo-2: of the attention output); none in OLMo's
    /// parameter-free LayerNorm.
    ln2: Option<Tensor>,
    /// None: GPT-NeoX's ungated MLP.
    gate: Option<Lin>,
    up: Lin,
    down: Lin,
}

impl Layer {
    /// Every tensor the layer computes with (the keys of its parameters' gradients).
    fn tensors(&self) -> Vec<&Tensor> {
        let mut v: Vec<&Tensor> = self
            .ln1
            .iter()
            .chain(self.ln2.iter())
            .chain(self.post_ffn.iter())
            .chain(self.pre_ffn.iter())
            .chain(self.ln1_b.iter())
            .chain(self.ln2_b.iter())
            .collect();
        v.extend(self.q_norm.iter().chain(self.k_norm.iter()));
        for l in [&self.q, &self.k, &self.v, &self.o, &self.up, &self.down]
            .into_iter()
            .chain(self.gate.as_ref())
        {
            v.extend(l.tensors());
        }
        v
    }
}

pub struct Llama {
    pub cfg: LlamaConfig,
    /// Every parameter, named as in Hugging Face checkpoints, in `cfg.param_shapes()` order.
    params: Vec<(String, Var)>,
    embed: Tensor,
    layers: Vec<Layer>,
    /// The final norm's weight (none in OLMo's parameter-free LayerNorm) and bias (GPT-NeoX).
    norm: Option<Tensor>,
    norm_b: Option<Tensor>,
    lm_head: Tensor,
    /// RoPE tables [max_len, head_dim/2].
    cos: Tensor,
    sin: Tensor,
    /// Gemma 3's sliding layers' tables (`rope_local_base_freq`, no scaling).
    rope_local: Option<(Tensor, Tensor)>,
    /// LongRoPE's tables with `long_factor`, used for a forward whose sequence reaches past
    /// `original_max_position_embeddings` (as transformers switches), and that length.
    rope_long: Option<(Tensor, Tensor, usize)>,
    device: Device,
    /// LoRA adapters on some linear layers (`lora.rs`); None: the plain model.
    lora: Option<std::sync::Arc<Lora>>,
    /// Some parameter enters the graph tracked (a model being trained, not a frozen view).
    tracked_any: bool,
    /// Per parameter (in `params` order): whether this view tracks it.
    tracked: Vec<bool>,
    /// The dtype activations are computed in (see [`Llama::with_compute_dtype`]); the storage
    /// dtype of the parameters otherwise.
    compute: DType,
    /// Activation checkpointing (`train.checkpoint_activations`) and its tape.
    ckpt: std::sync::Arc<Checkpointing>,
}

/// Per-layer activation checkpointing. A training forward keeps only each layer's input
/// ([b, t, h]); the layers run without a graph, and the final norm and head start from a leaf
/// holding the last layer's output. [`Llama::backward_checkpointed`] then walks the layers
/// backwards: each is recomputed from its saved input with a graph, and the gradient of
/// Σ(y ⊙ ∂L/∂y) gives its parameters' gradients and ∂L/∂x for the layer below. Memory: one
/// layer's activations instead of all of them; time: one more forward of every layer.
#[derive(Default)]
struct Checkpointing {
    on: std::sync::atomic::AtomicBool,
    tape: std::sync::Mutex<Vec<Tape>>,
}

/// One checkpointed forward awaiting its backward.
struct Tape {
    /// The embedding output with its graph (its gradient reaches the embedding).
    embedded: Tensor,
    /// Input of every layer (detached).
    inputs: Vec<Tensor>,
    /// The leaf the final norm started from (the last layer's output).
    last: Var,
    pass: Pass,
}

/// The RoPE tables and attention mask of one forward pass: those of global layers and, where
/// sliding-window layers differ (Gemma), theirs.
#[derive(Clone)]
struct Pass {
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
    /// Sliding layers' (cos, sin, mask) when some layers slide and others do not.
    local: Option<(Tensor, Tensor, Tensor)>,
}

impl Pass {
    /// (cos, sin, mask) of layer `li`.
    fn of(&self, cfg: &LlamaConfig, li: usize) -> (&Tensor, &Tensor, &Tensor) {
        match &self.local {
            Some((c, s, m)) if cfg.layer_slides(li) => (c, s, m),
            _ => (&self.cos, &self.sin, &self.mask),
        }
    }
}

/// Inverse frequencies of RoPE in f32, computed as `transformers` does (incl. Llama 3 scaling).
pub fn rope_inv_freq(cfg: &LlamaConfig) -> Vec<f32> {
    let hd = cfg.rope_dims();
    let base = cfg.rope_theta as f32;
    let mut inv: Vec<f32> = (0..hd / 2)
        .map(|i| 1.0f32 / base.powf((2 * i) as f32 / hd as f32))
        .collect();
    match &cfg.rope_scaling {
        None => {}
        Some(RopeScaling::LongRope { short_factor, .. }) => {
            inv = longrope_inv_freq(cfg, short_factor);
        }
        Some(RopeScaling::Linear { factor }) => {
            for f in inv.iter_mut() {
                *f /= *factor as f32;
            }
        }
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let (factor, lo, hi) = (
                *factor as f32,
                *low_freq_factor as f32,
                *high_freq_factor as f32,
            );
            let old = *original_max_position_embeddings as f32;
            let low_wl = old / lo;
            let high_wl = old / hi;
            for f in inv.iter_mut() {
                let wl = 2.0 * std::f32::consts::PI / *f;
                let scaled = if wl > low_wl { *f / factor } else { *f };
                let smooth = (old / wl - lo) / (hi - lo);
                let smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled;
                // as transformers writes it (`~(wl < high) * ~(wl > low)`)
                #[allow(clippy::neg_cmp_op_on_partial_ord)]
                let medium = !(wl < high_wl) && !(wl > low_wl);
                *f = if medium { smoothed } else { scaled };
            }
        }
    }
    inv
}

/// Phi-3 checkpoints fuse q, k, v (`self_attn.qkv_proj`, rows [q; k; v]) and gate, up
/// (`mlp.gate_up_proj`, rows [gate; up]); split them into our per-projection parameters. A
/// checkpoint already holding the split names (a model we built in memory) is left as it is.
fn split_phi3(
    cfg: &LlamaConfig,
    tensors: &mut HashMap<String, Tensor>,
    source: &std::path::Path,
) -> Result<()> {
    let (h, hd) = (cfg.hidden_size, cfg.head_dim);
    let (q, kv) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
    let i = cfg.intermediate_size;
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for (fused, parts) in [
            (
                format!("{p}.self_attn.qkv_proj.weight"),
                vec![
                    ("self_attn.q_proj", q),
                    ("self_attn.k_proj", kv),
                    ("self_attn.v_proj", kv),
                ],
            ),
            (
                format!("{p}.mlp.gate_up_proj.weight"),
                vec![("mlp.gate_proj", i), ("mlp.up_proj", i)],
            ),
        ] {
            let Some(t) = tensors.remove(&fused) else {
                if tensors.contains_key(&format!("{p}.{}.weight", parts[0].0)) {
                    continue;
                }
                return Err(Error::MissingTensor {
                    path: source.to_path_buf(),
                    name: fused,
                    expected: vec![parts.iter().map(|x| x.1).sum(), h],
                });
            };
            let rows: usize = parts.iter().map(|x| x.1).sum();
            if t.dims() != [rows, h] {
                return Err(Error::ShapeMismatch {
                    path: source.to_path_buf(),
                    name: fused,
                    expected: vec![rows, h],
                    actual: t.dims().to_vec(),
                });
            }
            let mut at = 0;
            for (name, n) in parts {
                tensors.insert(
                    format!("{p}.{name}.weight"),
                    t.narrow(0, at, n)?.contiguous()?,
                );
                at += n;
            }
        }
    }
    Ok(())
}

/// LongRoPE's inverse frequencies with `factors`, as transformers computes them in f32:
/// 1 / (f_i · θ^(2i/d)).
fn longrope_inv_freq(cfg: &LlamaConfig, factors: &[f64]) -> Vec<f32> {
    let hd = cfg.rope_dims();
    let base = cfg.rope_theta as f32;
    factors
        .iter()
        .enumerate()
        .map(|(i, f)| 1.0f32 / (*f as f32 * base.powf((2 * i) as f32 / hd as f32)))
        .collect()
}

/// RoPE cos/sin tables [max_len, head_dim/2] (and LongRoPE's long-factor pair).
#[derive(Clone)]
struct RopeTables {
    cos: Tensor,
    sin: Tensor,
    long: Option<(Tensor, Tensor, usize)>,
    local: Option<(Tensor, Tensor)>,
}

impl RopeTables {
    fn new(cfg: &LlamaConfig, device: &Device, dtype: DType) -> Result<Self> {
        let max_len = cfg.max_position_embeddings.max(1);
        let half = cfg.rope_dims() / 2;
        let table = |inv: &[f32], scale: f32| -> Result<(Tensor, Tensor)> {
            let mut cos = Vec::with_capacity(max_len * half);
            let mut sin = Vec::with_capacity(max_len * half);
            for p in 0..max_len {
                for f in inv {
                    let a = p as f32 * f;
                    cos.push(a.cos() * scale);
                    sin.push(a.sin() * scale);
                }
            }
            Ok((
                Tensor::from_vec(cos, (max_len, half), device)?.to_dtype(dtype)?,
                Tensor::from_vec(sin, (max_len, half), device)?.to_dtype(dtype)?,
            ))
        };
        let inv = rope_inv_freq(cfg);
        let local = match cfg.rope_local_theta {
            None => None,
            Some(theta) => {
                let mut plain = cfg.clone();
                plain.rope_theta = theta;
                plain.rope_scaling = None;
                Some(table(&rope_inv_freq(&plain), 1.0)?)
            }
        };
        match &cfg.rope_scaling {
            Some(RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings: orig,
                attention_factor,
            }) => {
                let s = cfg.max_position_embeddings as f64 / *orig as f64;
                let scale = attention_factor.unwrap_or(if s <= 1.0 {
                    1.0
                } else {
                    (1.0 + s.ln() / (*orig as f64).ln()).sqrt()
                }) as f32;
                debug_assert_eq!(inv, longrope_inv_freq(cfg, short_factor));
                let long = longrope_inv_freq(cfg, long_factor);
                let (cos, sin) = table(&inv, scale)?;
                let (lc, ls) = table(&long, scale)?;
                Ok(RopeTables {
                    cos,
                    sin,
                    long: Some((lc, ls, *orig)),
                    local,
                })
            }
            _ => {
                let (cos, sin) = table(&inv, 1.0)?;
                Ok(RopeTables {
                    cos,
                    sin,
                    long: None,
                    local,
                })
            }
        }
    }
}

impl Llama {
    fn rope_tables(&self) -> RopeTables {
        RopeTables {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            long: self.rope_long.clone(),
            local: self.rope_local.clone(),
        }
    }

    /// Build from named tensors (any float dtype; converted to f32). Checks every name and shape.
    pub fn from_tensors(
        cfg: LlamaConfig,
        mut tensors: HashMap<String, Tensor>,
        source: &std::path::Path,
        device: &Device,
    ) -> Result<Self> {
        if cfg.arch == crate::model::config::Arch::Phi3 {
            split_phi3(&cfg, &mut tensors, source)?;
        }
        if cfg.arch == crate::model::config::Arch::GptNeox {
            crate::model::neox::split(&cfg, &mut tensors, source)?;
        }
        let mut params = Vec::new();
        for (name, shape) in cfg.param_shapes() {
            let t = tensors.remove(&name).ok_or_else(|| Error::MissingTensor {
                path: source.to_path_buf(),
                name: name.clone(),
                expected: shape.clone(),
            })?;
            if t.dims() != shape.as_slice() {
                return Err(Error::ShapeMismatch {
                    path: source.to_path_buf(),
                    name,
                    expected: shape,
                    actual: t.dims().to_vec(),
                });
            }
            let t = t.to_dtype(DType::F32)?.to_device(device)?;
            params.push((name, Var::from_tensor(&t)?));
        }
        // Tolerated extras: cached RoPE buffers, and an LM head duplicated in a tied checkpoint.
        tensors.retain(|n, _| !n.ends_with("rotary_emb.inv_freq"));
        if cfg.tie_word_embeddings {
            tensors.remove("lm_head.weight");
        }
        if let Some(name) = tensors.keys().min() {
            return Err(Error::UnexpectedTensor {
                path: source.to_path_buf(),
                name: name.clone(),
                shape: tensors[name].dims().to_vec(),
            });
        }
        Self::from_params(cfg, params, device)
    }

    /// Random initialisation as `transformers` does it (normal(0, 0.02), norms at 1; Gemma's
    /// (1 + w) norms at 0), seeded.
    pub fn random(cfg: LlamaConfig, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = Rng::new(seed);
        let mut params = Vec::new();
        for (name, shape) in cfg.param_shapes() {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if name.ends_with("norm.weight") {
                vec![if cfg.gemma() { 0.0 } else { 1.0 }; n]
            } else if name.ends_with(".bias") {
                vec![0.0; n]
            } else {
                (0..n).map(|_| (rng.normal() * 0.02) as f32).collect()
            };
            let t = Tensor::from_vec(data, shape, device)?;
            params.push((name, Var::from_tensor(&t)?));
        }
        Self::from_params(cfg, params, device)
    }

    fn from_params(cfg: LlamaConfig, params: Vec<(String, Var)>, device: &Device) -> Result<Self> {
        Self::build(cfg, params, device, &|_| true, None, None, None)
    }

    /// A view of this model that computes with the same storage but tracks gradients only for
    /// the parameters in `trainable` (HF names); the others enter the graph detached, so a
    /// backward pass computes no product for their gradients. `param`/`Var::set` on either
    /// model change both. For optimising something other than the weights (a residual δ, one
    /// embedding row).
    pub fn frozen_except(&self, trainable: &[&str]) -> Result<Self> {
        Self::build(
            self.cfg.clone(),
            self.params.clone(),
            &self.device,
            &|n| trainable.contains(&n),
            Some(self.rope_tables()),
            self.lora.clone(),
            Some(self.compute),
        )
    }

    fn build(
        cfg: LlamaConfig,
        params: Vec<(String, Var)>,
        device: &Device,
        tracked: &dyn Fn(&str) -> bool,
        rope: Option<RopeTables>,
        lora: Option<std::sync::Arc<Lora>>,
        compute: Option<DType>,
    ) -> Result<Self> {
        let view = |n: &str, v: &Var| {
            if tracked(n) {
                v.as_tensor().clone()
            } else {
                v.as_tensor().detach()
            }
        };
        let map: HashMap<&str, Tensor> = params
            .iter()
            .map(|(n, v)| (n.as_str(), view(n, v)))
            .collect();
        let adapters: HashMap<String, (Tensor, Tensor)> = lora
            .iter()
            .flat_map(|l| l.params())
            .collect::<Vec<_>>()
            .chunks(2)
            .map(|ab| {
                let module = ab[0]
                    .0
                    .trim_start_matches("base_model.model.")
                    .trim_end_matches(".lora_A.weight");
                (
                    module.to_string(),
                    (view(&ab[0].0, &ab[0].1), view(&ab[1].0, &ab[1].1)),
                )
            })
            .collect();
        let get = |n: &str| map.get(n).cloned();
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| {
                let p = format!("model.layers.{l}");
                let g = |s: &str| get(&format!("{p}.{s}"));
                let lin = |m: &str, bias: bool| Lin {
                    w: g(&format!("{m}.weight")).unwrap(),
                    b: if bias { g(&format!("{m}.bias")) } else { None },
                    ad: adapters.get(&format!("{p}.{m}")).cloned(),
                };
                Layer {
                    ln1: g("input_layernorm.weight"),
                    ln1_b: g("input_layernorm.bias"),
                    ln2_b: g("post_attention_layernorm.bias"),
                    post_ffn: g("post_feedforward_layernorm.weight"),
                    pre_ffn: g("pre_feedforward_layernorm.weight"),
                    q_norm: g("self_attn.q_norm.weight"),
                    k_norm: g("self_attn.k_norm.weight"),
                    q: lin("self_attn.q_proj", true),
                    k: lin("self_attn.k_proj", true),
                    v: lin("self_attn.v_proj", true),
                    o: lin("self_attn.o_proj", true),
                    ln2: g("post_attention_layernorm.weight"),
                    gate: cfg.gated_mlp().then(|| lin("mlp.gate_proj", false)),
                    up: lin("mlp.up_proj", true),
                    down: lin("mlp.down_proj", true),
                }
            })
            .collect();
        let embed = get("model.embed_tokens.weight").unwrap();
        let lm_head = if cfg.tie_word_embeddings {
            embed.clone()
        } else {
            get("lm_head.weight").unwrap()
        };
        let dtype = compute.unwrap_or(embed.dtype());
        let RopeTables {
            cos,
            sin,
            long: rope_long,
            local: rope_local,
        } = match rope {
            Some(t) => t,
            None => RopeTables::new(&cfg, device, dtype)?,
        };
        let tracked_any = params.iter().any(|(n, _)| tracked(n))
            || lora
                .iter()
                .flat_map(|l| l.params())
                .any(|(n, _)| tracked(&n));
        let tracked_each = params.iter().map(|(n, _)| tracked(n)).collect();
        Ok(Llama {
            tracked_any,
            tracked: tracked_each,
            compute: dtype,
            ckpt: Default::default(),
            norm: get("model.norm.weight"),
            norm_b: get("model.norm.bias"),
            embed,
            lm_head,
            layers,
            cos,
            sin,
            rope_long,
            rope_local,
            params,
            cfg,
            device: device.clone(),
            lora,
        })
    }

    /// A copy with every parameter in `dtype` (f64 for finite-difference tests, bf16 for
    /// inference experiments). Training uses f32.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let params = self
            .params
            .iter()
            .map(|(n, v)| {
                Ok((
                    n.clone(),
                    Var::from_tensor(&v.as_tensor().to_dtype(dtype)?)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let lora = self.lora.as_ref().map(|l| l.converted(dtype)).transpose()?;
        Self::assemble(self.cfg.clone(), params, &self.device, lora, None)
    }

    /// This model computing in `dtype` (`--dtype bf16`): activations, matmul inputs and the KV
    /// cache in `dtype` (the GEMMs accumulate in f32), the norms' and softmaxes' reductions in
    /// f32 (`ops::composite`), logits and hidden states handed out in f32. The parameters this
    /// view trains keep their f32 storage (the optimiser's master copy: AdamW updates f32
    /// weights, each forward reads a rounded copy); every other parameter gets new storage in
    /// `dtype` when `frozen_storage` (a frozen LoRA base or a reference copy takes half the
    /// memory), else keeps its storage and is read through a rounded copy. Adapters stay as
    /// they are.
    pub fn with_compute_dtype(&self, dtype: DType, frozen_storage: bool) -> Result<Self> {
        let params = self
            .params
            .iter()
            .zip(&self.tracked)
            .map(|((n, v), &tracked)| {
                Ok((
                    n.clone(),
                    if tracked || !frozen_storage || v.dtype() == dtype {
                        v.clone()
                    } else {
                        Var::from_tensor(&v.as_tensor().to_dtype(dtype)?)?
                    },
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let names: Vec<&str> = self
            .params
            .iter()
            .zip(&self.tracked)
            .filter(|(_, &t)| t)
            .map(|((n, _), _)| n.as_str())
            .collect();
        let adapters: Vec<String> = self.adapters().into_iter().map(|(n, _)| n).collect();
        Self::build(
            self.cfg.clone(),
            params,
            &self.device,
            &|n| names.contains(&n) || adapters.iter().any(|a| a == n),
            None,
            self.lora.clone(),
            Some(dtype),
        )
    }

    /// Half precision compute (bf16/f16): outputs are handed out in f32.
    fn half(&self) -> bool {
        matches!(self.compute, DType::BF16 | DType::F16)
    }

    /// A tensor handed out of the forward (logits, hidden states): f32 under half precision.
    fn out(&self, t: Tensor) -> Result<Tensor> {
        Ok(if self.half() {
            t.to_dtype(DType::F32)?
        } else {
            t
        })
    }

    /// A model of `params` (and adapters): with adapters only they are tracked (the base is
    /// frozen), without every parameter is.
    fn assemble(
        cfg: LlamaConfig,
        params: Vec<(String, Var)>,
        device: &Device,
        lora: Option<Lora>,
        compute: Option<DType>,
    ) -> Result<Self> {
        match lora {
            None => Self::build(cfg, params, device, &|_| true, None, None, compute),
            Some(l) => {
                let names: Vec<String> = l.params().into_iter().map(|(n, _)| n).collect();
                Self::build(
                    cfg,
                    params,
                    device,
                    &|n| names.iter().any(|x| x == n),
                    None,
                    Some(std::sync::Arc::new(l)),
                    compute,
                )
            }
        }
    }

    /// This model with `lora`'s adapters on its linear layers: the same base storage (frozen:
    /// it enters the graph detached), only the adapters tracked. Replaces adapters it has.
    pub fn with_lora(&self, lora: Lora) -> Result<Self> {
        let names: Vec<String> = lora.params().into_iter().map(|(n, _)| n).collect();
        Self::build(
            self.cfg.clone(),
            self.params.clone(),
            &self.device,
            &|n| names.iter().any(|x| x == n),
            Some(self.rope_tables()),
            Some(std::sync::Arc::new(lora)),
            Some(self.compute),
        )
    }

    /// The adapters, when the model has them.
    pub fn lora(&self) -> Option<&Lora> {
        self.lora.as_deref()
    }

    /// Adapter tensors under their PEFT names (empty without adapters).
    pub fn adapters(&self) -> Vec<(String, Var)> {
        self.lora.as_ref().map(|l| l.params()).unwrap_or_default()
    }

    /// The base model with the adapters switched off: the same storage, nothing tracked. With
    /// fresh adapters (B = 0) this is the model before unlearning, so it serves as the frozen
    /// reference without a second copy of the weights.
    pub fn base_view(&self) -> Result<Self> {
        Self::build(
            self.cfg.clone(),
            self.params.clone(),
            &self.device,
            &|_| false,
            Some(self.rope_tables()),
            None,
            Some(self.compute),
        )
    }

    /// A plain model (new storage) computing what this one computes: each adapted weight
    /// becomes W + s·B·A. Without adapters, a deep copy.
    pub fn merged(&self) -> Result<Self> {
        let Some(lo) = &self.lora else {
            return self.deep_clone();
        };
        let s = lo.scale();
        let params = self
            .params
            .iter()
            .map(|(n, v)| {
                let w = v.as_tensor();
                let module = n.trim_end_matches(".weight");
                let t = match lo.get(module).filter(|_| n.ends_with(".weight")) {
                    Some((a, b)) => {
                        let d = b.as_tensor().matmul(a.as_tensor())?; // [out, in]
                        (w + (d.to_dtype(w.dtype())? * s)?)?
                    }
                    None => w.copy()?,
                };
                Ok((n.clone(), Var::from_tensor(&t)?))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::build(
            self.cfg.clone(),
            params,
            &self.device,
            &|_| true,
            None,
            None,
            Some(self.compute),
        )
    }

    /// The dtype the model computes in (its parameters' storage dtype unless
    /// [`Llama::with_compute_dtype`] set another).
    pub fn dtype(&self) -> DType {
        self.compute
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// All parameters with their HF names (the same `Var`s the model computes with).
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    pub fn param(&self, name: &str) -> Option<&Var> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// A deep copy (new storage, adapters included), e.g. a frozen reference model.
    pub fn deep_clone(&self) -> Result<Self> {
        let params = self
            .params
            .iter()
            .map(|(n, v)| Ok((n.clone(), Var::from_tensor(&v.as_tensor().copy()?)?)))
            .collect::<Result<Vec<_>>>()?;
        let lora = self
            .lora
            .as_ref()
            .map(|l| l.converted(l.dtype()))
            .transpose()?;
        Self::assemble(
            self.cfg.clone(),
            params,
            &self.device,
            lora,
            Some(self.compute),
        )
    }

    /// Logits for a batch of token ids: ids [b, t] (u32) -> [b, t, vocab]. Positions 0..t, causal
    /// mask; right padding needs no mask because no real token attends to a later position.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self
            .forward_with(ids, None, None, None, Hooks::default())?
            .logits
            .unwrap())
    }

    /// General forward pass.
    /// - `positions`: [b, t] u32 absolute positions (default: past_len + 0..t for every row)
    /// - `key_mask`: [b, past_len + t] f32 with 1 for real tokens and 0 for padding (left padding)
    /// - `cache`: KV cache to read and extend (generation)
    pub fn forward_with(
        &self,
        ids: &Tensor,
        positions: Option<&Tensor>,
        key_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        hooks: Hooks,
    ) -> Result<ForwardOutput> {
        let (b, t) = ids.dims2()?;
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let total = past + t;
        if total > self.cfg.max_position_embeddings && positions.is_none() {
            return Err(Error::Invalid(format!(
                "sequence length {total} exceeds max_position_embeddings {}",
                self.cfg.max_position_embeddings
            )));
        }
        let half = self.cfg.rope_dims() / 2;
        let (tc, ts) = match &self.rope_long {
            Some((lc, ls, original)) => {
                // transformers' LongRoPE: the long factors once max(position) + 1 > original
                let reach = match positions {
                    None => total,
                    Some(p) => p.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize + 1,
                };
                if reach > *original {
                    (lc, ls)
                } else {
                    (&self.cos, &self.sin)
                }
            }
            None => (&self.cos, &self.sin),
        };
        let rows = |tc: &Tensor, ts: &Tensor| -> Result<(Tensor, Tensor)> {
            Ok(match positions {
                None => (
                    tc.narrow(0, past, t)?.reshape((1, 1, t, half))?,
                    ts.narrow(0, past, t)?.reshape((1, 1, t, half))?,
                ),
                Some(p) => {
                    let flat = p.flatten_all()?;
                    (
                        tc.index_select(&flat, 0)?.reshape((b, 1, t, half))?,
                        ts.index_select(&flat, 0)?.reshape((b, 1, t, half))?,
                    )
                }
            })
        };
        let (cos, sin) = rows(tc, ts)?;
        // [1 or b, 1, 1, t, total]; with Gemma's mix of layers, the global layers' mask is full
        // causal and the sliding layers get their own (and Gemma 3 their own RoPE base)
        let win = self.cfg.sliding_window;
        let pass = if self.cfg.sliding_layers.is_some() && win.is_some() {
            let (lc, ls) = match &self.rope_local {
                Some((lc, ls)) => rows(lc, ls)?,
                None => (cos.clone(), sin.clone()),
            };
            Pass {
                mask: self.attn_mask(b, t, past, key_mask, None)?,
                cos,
                sin,
                local: Some((lc, ls, self.attn_mask(b, t, past, key_mask, win)?)),
            }
        } else {
            Pass {
                mask: self.attn_mask(b, t, past, key_mask, win)?,
                cos,
                sin,
                local: None,
            }
        };
        let mut x = self
            .embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, self.cfg.hidden_size))?
            .to_dtype(self.compute)?;
        if self.cfg.gemma() {
            // × √hidden, rounded to the dtype as transformers' normaliser is
            x = (x * (self.cfg.hidden_size as f64).sqrt())?;
        }
        let mut hidden = Vec::new();
        let last_needed = if hooks.skip_logits {
            hooks
                .hidden_layers
                .iter()
                .copied()
                .max()
                .map(|l| l + 1)
                .unwrap_or(0)
        } else {
            self.layers.len()
        };
        let checkpoint = self.tracked_any
            && self.ckpt.on.load(std::sync::atomic::Ordering::Relaxed)
            && cache.is_none()
            && hooks.hidden_layers.is_empty()
            && hooks.mlp_act.is_none()
            && hooks.residual.is_none()
            && hooks.start.is_none()
            && !hooks.skip_logits;
        if checkpoint {
            let embedded = x.clone();
            let mut inputs = Vec::with_capacity(self.layers.len());
            x = x.detach();
            for (li, layer) in self.layers.iter().enumerate() {
                inputs.push(x.clone());
                // computed with the graph and detached at once: its activations are freed here
                x = self
                    .layer_forward(li, layer, &x, &pass, None, &hooks)?
                    .detach();
            }
            let last = Var::from_tensor(&x)?;
            x = last.as_tensor().clone();
            self.ckpt.tape.lock().unwrap().push(Tape {
                embedded,
                inputs,
                last,
                pass: pass.clone(),
            });
        }
        let first = match hooks.start {
            Some((l, input)) => {
                if cache.is_some() || l >= self.layers.len() || input.dims3()? != x.dims3()? {
                    return Err(Error::Invalid(format!(
                        "a forward pass started at layer {l} needs a residual of shape {:?} and no KV cache",
                        x.dims()
                    )));
                }
                x = input.to_dtype(self.compute)?;
                l
            }
            None => 0,
        };
        for (li, layer) in self
            .layers
            .iter()
            .enumerate()
            .take(if checkpoint { 0 } else { last_needed })
            .skip(first)
        {
            let kv = cache.as_deref_mut().map(|c| &mut c.layers[li]);
            x = self.layer_forward(li, layer, &x, &pass, kv, &hooks)?;
            if let Some(h) = hooks.residual {
                if let Some(r) = h(li, &self.out(x.clone())?)? {
                    x = r.to_dtype(self.compute)?;
                }
            }
            if hooks.hidden_layers.contains(&li) {
                hidden.push((li, self.out(x.clone())?));
            }
        }
        let logits = if hooks.skip_logits {
            None
        } else {
            if hooks.last_logits_only && t > 1 {
                x = x.narrow(1, t - 1, 1)?;
            }
            let n = self.norm(&x, self.norm.as_ref(), self.norm_b.as_ref())?;
            if hooks.head_input_only {
                Some(n)
            } else {
                // half precision: the head's product in it, the logits widened to f32 (as
                // transformers' loss does) before the soft-cap and every log-softmax
                // (Gemma 2's cap on the logits in the compute dtype, as transformers applies it)
                let logits = ops::linear(&n, &self.cast(&self.lm_head)?, None)?;
                Some(self.out(match self.cfg.final_logit_softcapping {
                    Some(c) => softcap(&logits, c)?,
                    None => logits,
                })?)
            }
        };
        Ok(ForwardOutput { logits, hidden })
    }

    /// log p(targets) per position, ids and targets [b, t] -> [b, t], with the LM head and the
    /// log-softmax computed in chunks of rows (`ops::lm_head_logprobs`): the [b, t, vocab]
    /// logits are never held in full.
    pub fn label_logprobs_chunked(&self, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
        if self.cfg.final_logit_softcapping.is_some() || self.half() {
            // the cap sits between the head and the softmax: the full logits it is; half
            // precision: likewise (the chunked kernel is f32)
            return ops::gather_logprobs(&self.forward(ids)?, targets);
        }
        let hooks = Hooks {
            head_input_only: true,
            ..Default::default()
        };
        let h = self
            .forward_with(ids, None, None, None, hooks)?
            .logits
            .unwrap();
        ops::lm_head_logprobs(&h, &self.lm_head, targets)
    }

    /// Residual stream after layer `layer` for ids [b, t] -> [b, t, h]; later layers and the LM
    /// head are not computed.
    pub fn hidden_at(&self, ids: &Tensor, layer: usize) -> Result<Tensor> {
        let hooks = Hooks {
            hidden_layers: &[layer],
            skip_logits: true,
            ..Default::default()
        };
        let mut o = self.forward_with(ids, None, None, None, hooks)?;
        Ok(o.hidden.remove(0).1)
    }

    /// Additive mask [1 or b, 1, 1, t, past + t]: 0 where query i may see key j, −1e9 elsewhere
    /// (finite so a fully masked padding row gives a uniform softmax instead of NaN).
    fn attn_mask(
        &self,
        b: usize,
        t: usize,
        past: usize,
        key_mask: Option<&Tensor>,
        win: Option<usize>,
    ) -> Result<Tensor> {
        let total = past + t;
        let mut m = vec![0f32; t * total];
        for i in 0..t {
            let qi = past + i;
            for j in 0..total {
                let visible = j <= qi && win.map(|w| qi - j < w).unwrap_or(true);
                if !visible {
                    m[i * total + j] = -1e9;
                }
            }
        }
        let causal =
            Tensor::from_vec(m, (1, 1, 1, t, total), &self.device)?.to_dtype(self.dtype())?;
        match key_mask {
            None => Ok(causal),
            Some(km) => {
                let pad =
                    ((km.to_dtype(self.dtype())? - 1.0)? * 1e9)?.reshape((b, 1, 1, 1, total))?;
                Ok(causal.broadcast_add(&pad)?)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        li: usize,
        l: &Layer,
        x: &Tensor,
        pass: &Pass,
        kv: Option<&mut Option<(Tensor, Tensor)>>,
        hooks: &Hooks,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (cos, sin, mask) = pass.of(c, li);
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let post = c.post_norms();
        let n = if post {
            x.clone()
        } else {
            self.norm(x, l.ln1.as_ref(), l.ln1_b.as_ref())?
        };
        let mut q = self.lin(&n, &l.q)?; // [b, t, nh·hd]
        let mut k = self.lin(&n, &l.k)?; // [b, t, nkv·hd]
        let mut v = self.lin(&n, &l.v)?; // [b, t, nkv·hd]
        if let Some(cl) = c.clip_qkv {
            // OLMo: clamp to [−c, c] (zero gradient outside)
            q = q.clamp(-cl, cl)?;
            k = k.clamp(-cl, cl)?;
            v = v.clamp(-cl, cl)?;
        }
        // RMSNorm of q and k before RoPE: over the whole projection (OLMo-2), or over each
        // head's hd values (Qwen3)
        if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
            if post {
                q = self.rms(&q, qn)?;
                k = self.rms(&k, kn)?;
            } else {
                let per_head = |x: &Tensor, heads: usize, w: &Tensor| -> Result<Tensor> {
                    let y = self.rms(&x.reshape((b, t, heads, hd))?, w)?;
                    Ok(y.reshape((b, t, heads * hd))?)
                };
                q = per_head(&q, nh, qn)?;
                k = per_head(&k, nkv, kn)?;
            }
        }
        let partial = c.rope_dims() < hd;
        let y = match kv {
            // whole sequences (training, scoring): one fused node, RoPE included
            None if !partial => ops::attention(
                &q,
                &k,
                &v,
                (cos, sin),
                mask,
                (nh, nkv),
                (c.attn_scale(), c.attn_logit_softcapping),
            )?,
            // a KV cache, or RoPE over part of each head (GPT-NeoX): RoPE, then the product
            slot => {
                // [b, t, heads·hd] -> [b, heads, t, hd], the first rope_dims of each head rotated
                let rotate = |x: &Tensor, heads: usize| -> Result<Tensor> {
                    let x = x.reshape((b, t, heads, hd))?.transpose(1, 2)?;
                    if !partial {
                        return ops::rope(&x, cos, sin);
                    }
                    let rd = c.rope_dims();
                    let rot = ops::rope(&x.narrow(3, 0, rd)?.contiguous()?, cos, sin)?;
                    Ok(Tensor::cat(&[&rot, &x.narrow(3, rd, hd - rd)?], 3)?)
                };
                let q = rotate(&q, nh)?;
                let mut k = rotate(&k, nkv)?.contiguous()?; // [b, nkv, t, hd]
                let mut v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
                if let Some(slot) = slot {
                    if let Some((pk, pv)) = slot.as_ref() {
                        k = Tensor::cat(&[pk, &k], 2)?;
                        v = Tensor::cat(&[pv, &v], 2)?;
                    }
                    // Detached: the cache must not hold the autograd graph of every step it has
                    // seen (each cat would keep the previous cache and that step's activations
                    // alive, O(T²) memory over a generation: the TOFU evaluation ran out of 24 GB
                    // this way).
                    *slot = Some((k.detach(), v.detach()));
                }
                ops::composite::attend(
                    &q,
                    &k,
                    &v,
                    mask,
                    ops::masked_softmax,
                    c.attn_scale(),
                    c.attn_logit_softcapping,
                )?
            }
        };
        let attn_out = self.lin(&y, &l.o)?;
        let (h, n2) = if c.parallel_residual {
            // GPT-NeoX: mlp(ln2(x)) + attn(ln1(x)) + x, summed in transformers' order below
            let n2 = self.norm(x, l.ln2.as_ref(), l.ln2_b.as_ref())?;
            (attn_out, n2)
        } else if c.gemma() {
            // Gemma: h = x + norm(attn); the MLP reads its own pre-norm of h
            let h = (x + self.norm(&attn_out, l.ln2.as_ref(), None)?)?;
            let n2 = self.norm(&h, l.pre_ffn.as_ref(), None)?;
            (h, n2)
        } else if post {
            // OLMo-2: h = x + norm(attn), the MLP reads h itself
            let h = (x + self.norm(&attn_out, l.ln2.as_ref(), None)?)?;
            (h.clone(), h)
        } else {
            let h = (x + attn_out)?;
            let n2 = self.norm(&h, l.ln2.as_ref(), l.ln2_b.as_ref())?;
            (h, n2)
        };
        let up = self.lin(&n2, &l.up)?;
        // silu(gate)·up (Gemma: gelu_tanh(gate)·up; GPT-NeoX: gelu(up)), [b, t, intermediate]
        let mut act = match (&l.gate, c.act) {
            (Some(g), Act::Silu) if !self.half() => ops::swiglu(&self.lin(&n2, g)?, &up)?,
            (Some(g), a) => (self.activate(&self.lin(&n2, g)?, a)? * up)?,
            (None, a) => self.activate(&up, a)?,
        };
        if let Some(hook) = hooks.mlp_act {
            if let Some(r) = hook(li, &self.out(act.clone())?)? {
                act = r.to_dtype(self.compute)?;
            }
        }
        let mlp_out = self.lin(&act, &l.down)?;
        match &l.post_ffn {
            Some(w) => Ok((h + self.rms(&mlp_out, w)?)?),
            None if c.parallel_residual => Ok(((mlp_out + h)? + x)?),
            None => Ok((h + mlp_out)?),
        }
    }

    /// Turn activation checkpointing on or off for training forwards of this model (see
    /// [`Checkpointing`]); a loss's gradients must then pass through
    /// [`Llama::backward_checkpointed`].
    pub fn set_activation_checkpointing(&self, on: bool) {
        self.ckpt.on.store(on, std::sync::atomic::Ordering::Relaxed);
        if !on {
            self.ckpt.tape.lock().unwrap().clear();
        }
    }

    /// `loss.backward()`, completed through the checkpointed layers of this step's forwards
    /// (without checkpointing, just `loss.backward()`).
    pub fn backward(&self, loss: &Tensor) -> Result<candle_core::backprop::GradStore> {
        let grads = loss.backward()?;
        self.backward_checkpointed(grads)
    }

    /// Complete `grads` (from a loss over checkpointed forwards) with the gradients of every
    /// layer's parameters and the embedding, recomputing one layer at a time; clears the tape.
    pub fn backward_checkpointed(
        &self,
        mut grads: candle_core::backprop::GradStore,
    ) -> Result<candle_core::backprop::GradStore> {
        let tapes = std::mem::take(&mut *self.ckpt.tape.lock().unwrap());
        for tape in tapes.into_iter().rev() {
            let Some(mut g) = grads.remove(tape.last.as_tensor()) else {
                continue; // this forward did not reach the loss
            };
            for (li, layer) in self.layers.iter().enumerate().rev() {
                let x = Var::from_tensor(&tape.inputs[li])?;
                let y = self.layer_forward(
                    li,
                    layer,
                    x.as_tensor(),
                    &tape.pass,
                    None,
                    &Hooks::default(),
                )?;
                let gs = (y * &g)?.sum_all()?.backward()?;
                for p in layer.tensors() {
                    if let Some(gp) = gs.get(p) {
                        accumulate(&mut grads, p, gp)?;
                    }
                }
                g = match gs.get(x.as_tensor()) {
                    Some(gx) => gx.clone(),
                    None => return Ok(grads),
                };
            }
            if tape.embedded.track_op() {
                let gs = (&tape.embedded * &g)?.sum_all()?.backward()?;
                if let Some(ge) = gs.get(&self.embed) {
                    accumulate(&mut grads, &self.embed, ge)?;
                }
            }
        }
        Ok(grads)
    }

    /// The model's norm with weight `w` (and bias `b`): RMSNorm (Gemma's (1 + w) form), GPT-NeoX's
    /// LayerNorm (x − mean)/√(var + eps)·w + b; without a weight, OLMo's LayerNorm without
    /// parameters (x − mean) / √(var + 1e-5) over the last dimension.
    fn norm(&self, x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>) -> Result<Tensor> {
        match w {
            Some(w) if self.cfg.layer_norm() => {
                // half precision: in f32 with the affine part and rounded once (torch's
                // layer_norm kernel)
                let dt = if self.half() {
                    DType::F32
                } else {
                    self.compute
                };
                let y =
                    ops::composite::layer_norm_nonparam(&x.to_dtype(dt)?, self.cfg.rms_norm_eps)?
                        .broadcast_mul(&w.to_dtype(dt)?)?;
                let y = match b {
                    Some(b) => y.broadcast_add(&b.to_dtype(dt)?)?,
                    None => y,
                };
                Ok(y.to_dtype(self.compute)?)
            }
            Some(w) => self.rms(x, w),
            None => ops::composite::layer_norm_nonparam(x, 1e-5),
        }
    }

    /// RMSNorm x̂·w, or Gemma's x̂·(1 + w) (in half precision computed in f32 and rounded once,
    /// as transformers' Gemma norm does; the others round x̂ first, as `LlamaRMSNorm` does).
    fn rms(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        if self.cfg.gemma() {
            if self.half() {
                let w = (w.to_dtype(DType::F32)? + 1.0)?;
                let y = ops::rms_norm(&x.to_dtype(DType::F32)?, &w, self.cfg.rms_norm_eps)?;
                return Ok(y.to_dtype(self.compute)?);
            }
            return ops::rms_norm(x, &(w + 1.0)?, self.cfg.rms_norm_eps);
        }
        ops::rms_norm(x, w, self.cfg.rms_norm_eps)
    }

    /// The MLP's activation; in half precision computed in f32 and rounded once, as torch's
    /// kernels do (candle's half-precision silu/gelu round after each of their steps).
    fn activate(&self, x: &Tensor, a: Act) -> Result<Tensor> {
        let f = |x: &Tensor| -> candle_core::Result<Tensor> {
            match a {
                Act::Silu => x.silu(),
                Act::GeluTanh => x.gelu(),
                Act::GeluErf => x.gelu_erf(),
            }
        };
        Ok(if self.half() {
            f(&x.to_dtype(DType::F32)?)?.to_dtype(self.compute)?
        } else {
            f(x)?
        })
    }

    /// x·Wᵀ + b, plus s·(dropout(x)·Aᵀ)·Bᵀ where the layer has an adapter (dropout only while
    /// the adapter trains, i.e. its tensors are tracked).
    fn lin(&self, x: &Tensor, l: &Lin) -> Result<Tensor> {
        let y = ops::linear(x, &self.cast(&l.w)?, self.cast_opt(l.b.as_ref())?.as_ref())?;
        let (Some((a, b)), Some(lo)) = (&l.ad, &self.lora) else {
            return Ok(y);
        };
        let xin = if lo.cfg.dropout > 0.0 && a.track_op() {
            lo.dropout(x)?
        } else {
            x.clone()
        };
        // the scale on the narrow [.., r] product, not on the [.., out] one
        let xa = (ops::linear(&xin, &self.cast(a)?, None)? * lo.scale())?;
        Ok((y + ops::linear(&xa, &self.cast(b)?, None)?)?)
    }

    /// A weight in the compute dtype (a differentiable rounding when its storage differs).
    fn cast(&self, w: &Tensor) -> Result<Tensor> {
        Ok(w.to_dtype(self.compute)?)
    }

    fn cast_opt(&self, w: Option<&Tensor>) -> Result<Option<Tensor>> {
        w.map(|w| self.cast(w)).transpose()
    }

    /// Named tensors, one per parameter, by our names (q/k/v and gate/up apart); f32 (or the
    /// f64 of a finite-difference copy): parameters stored in half precision are widened, so
    /// what is saved is exact.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|(n, v)| {
                let t = v.as_tensor();
                let t = match t.dtype() {
                    DType::BF16 | DType::F16 => t.to_dtype(DType::F32).expect("a float widening"),
                    _ => t.clone(),
                };
                (n.clone(), t)
            })
            .collect()
    }

    /// The tensors of a Hugging Face checkpoint of this model: [`Llama::named_tensors`], with
    /// Phi-3's `qkv_proj` = [q; k; v] and `gate_up_proj` = [gate; up] fused by rows.
    pub fn hf_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let all = self.named_tensors();
        if self.cfg.arch == crate::model::config::Arch::GptNeox {
            return crate::model::neox::fuse(&self.cfg, all);
        }
        if self.cfg.arch != crate::model::config::Arch::Phi3 {
            return Ok(all);
        }
        let mut map: HashMap<String, Tensor> = all.iter().cloned().collect();
        let mut out = vec![];
        for (n, t) in &all {
            let fused = |parts: [&str; 3], suffix: &str, map: &mut HashMap<String, Tensor>| {
                let base = n.strip_suffix(suffix)?;
                let ts: Option<Vec<Tensor>> = parts
                    .iter()
                    .filter(|p| !p.is_empty())
                    .map(|p| map.remove(&format!("{base}{p}.weight")))
                    .collect();
                ts.map(|ts| Tensor::cat(&ts, 0))
            };
            if n.ends_with("self_attn.q_proj.weight") {
                let base = n.trim_end_matches("q_proj.weight");
                let t = fused(["q_proj", "k_proj", "v_proj"], "q_proj.weight", &mut map)
                    .expect("q, k, v of a layer")?;
                out.push((format!("{base}qkv_proj.weight"), t));
            } else if n.ends_with("mlp.gate_proj.weight") {
                let base = n.trim_end_matches("gate_proj.weight");
                let t = fused(["gate_proj", "up_proj", ""], "gate_proj.weight", &mut map)
                    .expect("gate, up of a layer")?;
                out.push((format!("{base}gate_up_proj.weight"), t));
            } else if map.contains_key(n) {
                out.push((n.clone(), t.clone()));
            }
        }
        Ok(out)
    }

    /// Last-position logits helper: [b, t, V] -> [b, V].
    pub fn last_logits(logits: &Tensor) -> Result<Tensor> {
        let t = logits.dim(1)?;
        Ok(logits.narrow(1, t - 1, 1)?.squeeze(1)?)
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }
}
