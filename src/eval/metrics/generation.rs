//! Metrics of the greedy generations: ROUGE against the answer (TOFU) and the token entropy
//! of the generation (closer look: (−Σ f log₂ f) / log₂ n over its unigram frequencies).
use serde_json::{json, Map, Value};

use super::{Info, Metric, Need};
use crate::eval::formula::{entropy, rouge};
use crate::eval::names;
use crate::eval::passes::Passes;
use crate::eval::value::{mean, per_item_scores, Outcome};
use crate::eval::SetName;

pub struct Rouge(pub SetName);

static ROUGE: Info = Info {
    name: "{set}_Q_A_ROUGE",
    needs: &[Need::Generations],
    formula: "ROUGE-L recall of the greedy generation against the answer, mean over items \
              (per item also ROUGE-1 recall, ROUGE-L F1 and the generation)",
    reference: "open-unlearning src/evals/metrics/memorization.py: rouge",
};

impl Metric for Rouge {
    fn name(&self) -> String {
        names::rouge(self.0)
    }
    fn info(&self) -> &'static Info {
        &ROUGE
    }
    fn set(&self) -> Option<SetName> {
        Some(self.0)
    }
    fn compute(&self, p: &mut Passes, _: &Map<String, Value>) -> Outcome {
        let items = p.items(self.0)?.to_vec();
        let gens = p.generation(self.0)?;
        let mut rl = vec![];
        let mut by = Map::new();
        for (i, (it, g)) in items.iter().zip(gens).enumerate() {
            let r = rouge::rouge_l(&it.answer, &g.text);
            rl.push(r.recall);
            by.insert(
                i.to_string(),
                json!({"rouge1_recall": rouge::rouge1_recall(&it.answer, &g.text),
                       "rougeL_f1": r.fmeasure, "rougeL_recall": r.recall,
                       "input": it.question, "ground_truth": it.answer,
                       "generation": g.text}),
            );
        }
        Ok(json!({"agg_value": mean(&rl), "value_by_index": by}))
    }
}

pub struct Entropy(pub SetName);

static ENTROPY: Info = Info {
    name: "{set}_token_entropy",
    needs: &[Need::Generations],
    formula: "(−Σ f log₂ f) / log₂ n over the unigram frequencies of the generated tokens",
    reference: "closer-look code (sail-sg/closer-look-LLM-unlearning): token entropy",
};

impl Metric for Entropy {
    fn name(&self) -> String {
        names::token_entropy(self.0)
    }
    fn info(&self) -> &'static Info {
        &ENTROPY
    }
    fn set(&self) -> Option<SetName> {
        Some(self.0)
    }
    fn compute(&self, p: &mut Passes, _: &Map<String, Value>) -> Outcome {
        let v: Vec<f64> = p
            .generation(self.0)?
            .iter()
            .map(|g| entropy::token_entropy(&g.tokens))
            .collect();
        Ok(per_item_scores(&v))
    }
}
