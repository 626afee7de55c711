//! Metrics of sentence embeddings of the generations: cosine similarity to the answer's
//! embedding, clipped at 0 (closer look), and the refusal score, the highest cosine
//! similarity to a pool of refusals (METHODS.md).
use serde_json::{Map, Value};

use super::{Info, Metric, Need};
use crate::eval::formula::similarity;
use crate::eval::names;
use crate::eval::passes::Passes;
use crate::eval::value::{per_item_scores, Outcome};
use crate::eval::SetName;

pub struct Cosine(pub SetName);

static COSINE: Info = Info {
    name: "{set}_cosine_similarity",
    needs: &[Need::Generations, Need::SentenceEncoder],
    formula: "max(0, cos(emb(generation), emb(answer))), mean over items",
    reference: "closer-look code (sail-sg/closer-look-LLM-unlearning): cosine similarity",
};

impl Metric for Cosine {
    fn name(&self) -> String {
        names::cosine_similarity(self.0)
    }
    fn info(&self) -> &'static Info {
        &COSINE
    }
    fn set(&self) -> Option<SetName> {
        Some(self.0)
    }
    fn compute(&self, p: &mut Passes, _: &Map<String, Value>) -> Outcome {
        let (g, a) = p.embeddings(self.0)?;
        let v: Vec<f64> = g
            .iter()
            .zip(a)
            .map(|(g, a)| similarity::cosine_similarity(g, a))
            .collect();
        Ok(per_item_scores(&v))
    }
}

pub struct Refusal(pub SetName);

static REFUSAL: Info = Info {
    name: "{set}_refusal_rate",
    needs: &[Need::Generations, Need::SentenceEncoder, Need::RefusalPool],
    formula: "max over the refusal pool of cos(emb(generation), emb(refusal)), mean over items",
    reference: "METHODS.md (refusal rate); no open-unlearning counterpart",
};

impl Metric for Refusal {
    fn name(&self) -> String {
        names::refusal_rate(self.0)
    }
    fn info(&self) -> &'static Info {
        &REFUSAL
    }
    fn set(&self) -> Option<SetName> {
        Some(self.0)
    }
    fn compute(&self, p: &mut Passes, _: &Map<String, Value>) -> Outcome {
        let g = p.embeddings(self.0)?.0.to_vec();
        let pool = p.refusal_pool()?;
        let v: Vec<f64> = g
            .iter()
            .map(|g| similarity::refusal_score(g, pool))
            .collect();
        Ok(per_item_scores(&v))
    }
}
