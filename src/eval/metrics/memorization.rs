//! Memorisation of the answer under teacher forcing (open-unlearning): exact memorisation is
//! the fraction of answer tokens that are the argmax prediction; extraction strength is
//! 1 − k*/n with k* the shortest prefix after which every remaining token is the argmax. In
//! compat mode both leave out the last labelled token, and extraction strength is 1/n rather
//! than 0 when no suffix is predicted (their loop's index).
use serde_json::{Map, Value};

use super::{Info, Metric, Need};
use crate::eval::formula::memorization;
use crate::eval::names;
use crate::eval::passes::Passes;
use crate::eval::value::{per_item_scores, Outcome};
use crate::eval::{Compat, SetName};

pub struct ExactMem(pub SetName);

static EM: Info = Info {
    name: "exact_memorization, {set}_exact_memorization",
    needs: &[Need::Answers],
    formula: "mean_t 1[argmax p(·|a_<t) = a_t], mean over items",
    reference: "open-unlearning src/evals/metrics/memorization.py: exact_memorization",
};

impl Metric for ExactMem {
    fn name(&self) -> String {
        names::exact_memorization(self.0)
    }
    fn info(&self) -> &'static Info {
        &EM
    }
    fn set(&self) -> Option<SetName> {
        Some(self.0)
    }
    fn compute(&self, p: &mut Passes, _: &Map<String, Value>) -> Outcome {
        let st = p.answer(self.0)?.to_vec();
        let v: Vec<f64> = p
            .metric_stats(&st)
            .iter()
            .map(|t| memorization::exact_memorization(&t.hit))
            .collect();
        Ok(per_item_scores(&v))
    }
}

pub struct Extraction(pub SetName);

static ES: Info = Info {
    name: "extraction_strength, {set}_extraction_strength",
    needs: &[Need::Answers],
    formula:
        "1 − k*/n, k* = the shortest prefix after which every token is the argmax, mean over items",
    reference: "open-unlearning src/evals/metrics/memorization.py: extraction_strength",
};

impl Metric for Extraction {
    fn name(&self) -> String {
        names::extraction_strength(self.0)
    }
    fn info(&self) -> &'static Info {
        &ES
    }
    fn set(&self) -> Option<SetName> {
        Some(self.0)
    }
    fn compute(&self, p: &mut Passes, _: &Map<String, Value>) -> Outcome {
        let st = p.answer(self.0)?.to_vec();
        let es = match p.cfg().compat {
            Compat::None => memorization::extraction_strength,
            Compat::OpenUnlearning => memorization::extraction_strength_open_unlearning,
        };
        let v: Vec<f64> = p.metric_stats(&st).iter().map(|t| es(&t.hit)).collect();
        Ok(per_item_scores(&v))
    }
}
