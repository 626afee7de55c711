//! Model architectures (one file each), their configuration, the tokenizer with its chat
//! template, and the files models come in: Hugging Face directories and GGUF.
pub mod bert;
pub mod config;
pub mod deberta;
pub mod fixture;
pub mod gguf;
pub mod gguf_write;
pub mod hf;
pub mod llama;
pub mod lora;
pub mod neox;
pub mod nli;
pub mod tokenizer;

pub use config::{Arch, LlamaConfig, RopeScaling};
pub use llama::{ForwardOutput, Hooks, KvCache, Llama};
pub use lora::{Lora, LoraConfig};

/// The dtype a model computes in (`dtype = "f32" | "bf16"` in run configs, `--dtype` on the
/// command line). bf16: activations and matmul inputs in bf16 with f32 accumulation, norms,
/// softmaxes and losses in f32, trained weights kept in f32 (see
/// [`Llama::with_compute_dtype`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
        }
    }

    pub fn is_default(&self) -> bool {
        *self == Precision::F32
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("unknown dtype `{s}` (f32 or bf16)")),
        }
    }
}

impl Llama {
    /// This model (a new view) set up to compute in `p`, for a run that trains the parameters
    /// it tracks (or its adapters) or for evaluation. `frozen_storage`: also hold the
    /// parameters it does not train in `p` (half their memory; for a frozen LoRA base, a
    /// reference copy, an evaluated model); off, they keep their storage and each forward reads a
    /// rounded copy, so what is saved of them is unchanged.
    pub fn for_precision(&self, p: Precision, frozen_storage: bool) -> crate::Result<Llama> {
        self.with_compute_dtype(p.dtype(), frozen_storage)
    }
}
