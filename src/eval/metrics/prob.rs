//! Answer probabilities (TOFU): P(a|q) = exp(−mean_t NLL_t) over the labelled tokens, per item
//! with its `avg_loss`; the aggregate is the mean over items. Perturbed answers give one value
//! per option. On the multiple-choice sets (real authors, world facts) the normalised
//! probability is P(a|q) / (P(a|q) + Σ_j P(pert_j|q)).
use serde_json::{json, Map, Value};

use super::{Info, Metric, Need};
use crate::eval::formula::tofu;
use crate::eval::names;
use crate::eval::passes::Passes;
use crate::eval::value::{mean, Outcome};
use crate::eval::SetName;
use crate::infer::score::TokenStats;

const REF: &str = "open-unlearning src/evals/metrics/memorization.py: probability";

fn entry(st: &[TokenStats]) -> Value {
    let by: Map<String, Value> = st
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                i.to_string(),
                json!({"prob": t.prob(), "avg_loss": t.avg_loss()}),
            )
        })
        .collect();
    json!({"agg_value": mean(&st.iter().map(|t| t.prob()).collect::<Vec<_>>()), "value_by_index": by})
}

pub struct Prob(pub SetName);

static PROB: Info = Info {
    name: "{set}_Q_A_Prob",
    needs: &[Need::Answers],
    formula: "mean over items of exp(−mean_t NLL) of the answer (per item: prob, avg_loss)",
    reference: REF,
};

impl Metric for Prob {
    fn name(&self) -> String {
        names::prob(self.0)
    }
    fn info(&self) -> &'static Info {
        &PROB
    }
    fn set(&self) -> Option<SetName> {
        Some(self.0)
    }
    fn compute(&self, p: &mut Passes, _: &Map<String, Value>) -> Outcome {
        Ok(entry(p.answer(self.0)?))
    }
}

pub struct ParaProb(pub SetName);

static PARA_PROB: Info = Info {
    name: "{set}_Q_A_PARA_Prob",
    needs: &[Need::Paraphrases],
    formula: "mean over items of exp(−mean_t NLL) of the paraphrased answer",
    reference: REF,
};

impl Metric for ParaProb {
    fn name(&self) -> String {
        names::para_prob(self.0)
    }
    fn info(&self) -> &'static Info {
        &PARA_PROB
    }
    fn set(&self) -> Option<SetName> {
        Some(self.0)
    }
    fn compute(&self, p: &mut Passes, _: &Map<String, Value>) -> Outcome {
        Ok(entry(p.para(self.0)?))
    }
}

pub struct PertProb(pub SetName);

static PERT_PROB: Info = Info {
    name: "{set}_Q_A_PERT_Prob",
    needs: &[Need::Perturbed],
    formula: "exp(−mean_t NLL) of every perturbed answer; aggregate: mean over all options",
    reference: REF,
};

impl Metric for PertProb {
    fn name(&self) -> String {
        names::pert_prob(self.0)
    }
    fn info(&self) -> &'static Info {
        &PERT_PROB
    }
    fn set(&self) -> Option<SetName> {
        Some(self.0)
    }
    fn compute(&self, p: &mut Passes, _: &Map<String, Value>) -> Outcome {
        let st = p.pert(self.0)?;
        let all: Vec<f64> = st.iter().flatten().map(|t| t.prob()).collect();
        let by: Map<String, Value> = st
            .iter()
            .enumerate()
            .map(|(i, opts)| {
                let p: Vec<f64> = opts.iter().map(|t| t.prob()).collect();
                let l: Vec<f64> = opts.iter().map(|t| t.avg_loss()).collect();
                (i.to_string(), json!({"prob": p, "avg_loss": l}))
            })
            .collect();
        Ok(json!({"agg_value": mean(&all), "value_by_index": by}))
    }
}

pub struct NormProb(pub SetName);

static NORM_PROB: Info = Info {
    name: "{set}_Q_A_Prob_normalised",
    needs: &[Need::Answers, Need::Perturbed],
    formula: "P(a|q) / (P(a|q) + Σ_j P(pert_j|q)), mean over items",
    reference: "open-unlearning src/evals/metrics/memorization.py: probability_w_options",
};

impl Metric for NormProb {
    fn name(&self) -> String {
        names::norm_prob(self.0)
    }
    fn info(&self) -> &'static Info {
        &NORM_PROB
    }
    fn set(&self) -> Option<SetName> {
        Some(self.0)
    }
    fn compute(&self, p: &mut Passes, _: &Map<String, Value>) -> Outcome {
        let a: Vec<f64> = p.answer(self.0)?.iter().map(|t| t.prob()).collect();
        let v: Vec<f64> = p
            .pert(self.0)?
            .iter()
            .zip(&a)
            .map(|(o, &pa)| {
                let w: Vec<f64> = o.iter().map(|t| t.prob()).collect();
                tofu::normalised_prob(pa, &w)
            })
            .collect();
        let by: Map<String, Value> = v
            .iter()
            .enumerate()
            .map(|(i, &x)| (i.to_string(), json!({"prob": x})))
            .collect();
        Ok(json!({"agg_value": mean(&v), "value_by_index": by}))
    }
}
