//! Entailment score (closer look): 1 when the NLI model's argmax label for (premise,
//! hypothesis) is entailment and ROUGE-L recall of the generation is at least 0.1, else 0. As
//! the closer-look code pairs them: on the forget set premise = the generation, hypothesis = the
//! answer (does what the model said still imply the fact?); on the other sets premise = the
//! answer, hypothesis = the generation (is what the model said supported by the fact?).
use serde_json::{Map, Value};

use super::{Info, Metric, Need};
use crate::eval::formula::{rouge, similarity};
use crate::eval::names;
use crate::eval::passes::Passes;
use crate::eval::value::{per_item_scores, Fail, Outcome};
use crate::eval::SetName;

pub struct Entailment(pub SetName);

static INFO: Info = Info {
    name: "{set}_entailment_score",
    needs: &[Need::Generations, Need::Nli],
    formula:
        "1[argmax NLI(premise, hypothesis) = entailment and ROUGE-L recall ≥ 0.1], mean over items",
    reference: "closer-look code (sail-sg/closer-look-LLM-unlearning): entailment score",
};

impl Metric for Entailment {
    fn name(&self) -> String {
        names::entailment_score(self.0)
    }
    fn info(&self) -> &'static Info {
        &INFO
    }
    fn set(&self) -> Option<SetName> {
        Some(self.0)
    }
    fn compute(&self, p: &mut Passes, _: &Map<String, Value>) -> Outcome {
        let s = self.0;
        let items = p.items(s)?.to_vec();
        let gens = p.generated_texts(s)?;
        let bs = p.cfg().batch_size.max(8);
        let nli = p.nli()?;
        let label = nli
            .entailment_label()
            .ok_or_else(|| Fail::skip("the NLI model's id2label has no entailment label"))?;
        let pairs: Vec<(&str, &str)> = gens
            .iter()
            .zip(&items)
            .map(|(g, i)| {
                if s == SetName::Forget {
                    (g.as_str(), i.answer.as_str())
                } else {
                    (i.answer.as_str(), g.as_str())
                }
            })
            .collect();
        let logits = nli.classify(&pairs, bs)?;
        let v: Vec<f64> = logits
            .iter()
            .zip(gens.iter().zip(&items))
            .map(|(l, (g, i))| {
                similarity::entailment(l, label, rouge::rouge_l(&i.answer, g).recall)
            })
            .collect();
        Ok(per_item_scores(&v))
    }
}
