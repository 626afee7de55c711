//! Aggregates of other metrics: TOFU's model utility (harmonic mean of nine), the closer-look
//! forget efficacy and model utility. A closer-look part that cannot be computed (no NLI model,
//! say) is left out and named in `without`; TOFU's model utility needs all nine.
use serde_json::{json, Map, Value};

use super::{Info, Metric, Need};
use crate::eval::formula::tofu;
use crate::eval::names;
use crate::eval::passes::Passes;
use crate::eval::value::{agg, mean, Fail, Outcome};
use crate::eval::SetName;

pub struct ModelUtility;

static MU: Info = Info {
    name: names::MODEL_UTILITY,
    needs: &[Need::Metrics(
        "{set}_Q_A_Prob (retain), {set}_Q_A_Prob_normalised (ra, wf), {set}_Q_A_ROUGE, {set}_Truth_Ratio",
    )],
    formula: "harmonic mean of Prob, ROUGE and Truth Ratio on retain, real authors and world facts",
    reference: "open-unlearning src/evals/metrics/utility.py: hm_aggregate",
};

/// The probability metric TOFU's utilities read on a set: plain on retain, normalised on the
/// multiple-choice sets.
fn utility_prob(s: SetName) -> String {
    if s.options() {
        names::norm_prob(s)
    } else {
        names::prob(s)
    }
}

const UTILITY_SETS: [SetName; 3] = [SetName::Retain, SetName::Ra, SetName::Wf];

impl Metric for ModelUtility {
    fn name(&self) -> String {
        names::MODEL_UTILITY.into()
    }
    fn info(&self) -> &'static Info {
        &MU
    }
    fn compute(&self, _: &mut Passes, done: &Map<String, Value>) -> Outcome {
        let mut vals = vec![];
        for s in UTILITY_SETS {
            for n in [utility_prob(s), names::rouge(s), names::truth_ratio(s)] {
                vals.push(agg(done, &n).ok_or_else(|| Fail::skip(format!("{n} unavailable")))?);
            }
        }
        Ok(json!({"agg_value": tofu::harmonic_mean(&vals)}))
    }
}

pub struct ForgetEfficacy;

static FE: Info = Info {
    name: names::FORGET_EFFICACY,
    needs: &[Need::Metrics(
        "forget_Q_A_ROUGE, forget_Q_A_Prob, forget_truth_ratio, forget_cosine_similarity, forget_entailment_score",
    )],
    formula: "1 − mean(ROUGE, Prob, 1 − TR, CS, ES) on the forget set",
    reference: "closer-look code (sail-sg/closer-look-LLM-unlearning): forget efficacy",
};

impl Metric for ForgetEfficacy {
    fn name(&self) -> String {
        names::FORGET_EFFICACY.into()
    }
    fn info(&self) -> &'static Info {
        &FE
    }
    fn compute(&self, _: &mut Passes, done: &Map<String, Value>) -> Outcome {
        let f = SetName::Forget;
        let mut parts = Map::new();
        let mut missing = vec![];
        for (label, name, flip) in [
            ("rouge", names::rouge(f), false),
            ("prob", names::prob(f), false),
            ("truth_ratio", names::truth_ratio(f), true),
            ("cosine_similarity", names::cosine_similarity(f), false),
            ("entailment_score", names::entailment_score(f), false),
        ] {
            match agg(done, &name) {
                Some(x) => {
                    parts.insert(label.into(), json!(if flip { 1.0 - x } else { x }));
                }
                None => missing.push(name),
            }
        }
        if parts.is_empty() {
            return Err(Fail::skip("no forget-set metrics"));
        }
        let vals: Vec<f64> = parts.values().map(|v| v.as_f64().unwrap()).collect();
        let mut v = json!({"agg_value": 1.0 - mean(&vals), "components": parts});
        if !missing.is_empty() {
            v["without"] = json!(missing);
        }
        Ok(v)
    }
}

pub struct CloserLookUtility;

static CLU: Info = Info {
    name: names::CLOSER_LOOK_UTILITY,
    needs: &[Need::Metrics(
        "Prob, ROUGE, Truth Ratio, token entropy, cosine similarity, entailment score of retain, ra, wf",
    )],
    formula: "harmonic mean of {Prob, ROUGE, TR, TE, CS, ES} on retain, real authors and world facts",
    reference: "closer-look code (sail-sg/closer-look-LLM-unlearning): model utility",
};

impl Metric for CloserLookUtility {
    fn name(&self) -> String {
        names::CLOSER_LOOK_UTILITY.into()
    }
    fn info(&self) -> &'static Info {
        &CLU
    }
    fn compute(&self, _: &mut Passes, done: &Map<String, Value>) -> Outcome {
        let mut vals = vec![];
        let mut missing = vec![];
        for s in UTILITY_SETS {
            for n in [
                utility_prob(s),
                names::rouge(s),
                names::truth_ratio(s),
                names::token_entropy(s),
                names::cosine_similarity(s),
                names::entailment_score(s),
            ] {
                match agg(done, &n) {
                    Some(x) => vals.push(x),
                    None => missing.push(n),
                }
            }
        }
        if vals.is_empty() {
            return Err(Fail::skip("no non-forget metrics"));
        }
        let mut v = json!({"agg_value": tofu::harmonic_mean(&vals), "n_values": vals.len()});
        if !missing.is_empty() {
            v["without"] = json!(missing);
        }
        Ok(v)
    }
}
