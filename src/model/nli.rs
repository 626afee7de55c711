//! The NLI classifier of the entailment metric: BERT, RoBERTa or DeBERTa-v2/v3, chosen by the
//! checkpoint's `model_type`.
use std::path::Path;

use candle_core::Device;

use super::bert::Bert;
use super::deberta::Deberta;
use crate::error::{read_json, Result};

/// A sequence-pair classifier for NLI metrics: BERT, RoBERTa or DeBERTa-v2/v3, chosen by
/// `model_type`.
pub enum Classifier {
    Bert(Box<Bert>),
    Deberta(Box<Deberta>),
}

impl Classifier {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let v: serde_json::Value = read_json(&dir.join("config.json"))?;
        match v.get("model_type").and_then(|m| m.as_str()) {
            Some("deberta-v2") => Ok(Classifier::Deberta(Box::new(Deberta::load(dir, device)?))),
            _ => Ok(Classifier::Bert(Box::new(Bert::load(dir, device)?))),
        }
    }

    /// Logits [n, labels] for (premise, hypothesis) pairs.
    pub fn classify(&self, pairs: &[(&str, &str)], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        match self {
            Classifier::Bert(m) => m.classify(pairs, batch_size),
            Classifier::Deberta(m) => m.classify(pairs, batch_size),
        }
    }

    pub fn entailment_label(&self) -> Option<usize> {
        match self {
            Classifier::Bert(m) => m.entailment_label(),
            Classifier::Deberta(m) => m.entailment_label(),
        }
    }
}
