//! Truth ratio (TOFU): R = (Π_j P(pert_j))^(1/n) / P(para) per item, with P the
//! length-normalised probability (on the multiple-choice sets the answer stands in for the
//! paraphrase). Aggregate: mean min(R, 1/R) on the forget set, mean max(0, 1 − R) elsewhere.
use serde_json::{json, Map, Value};

use super::{Info, Metric, Need};
use crate::eval::formula::tofu;
use crate::eval::names;
use crate::eval::passes::Passes;
use crate::eval::value::{per_item_scores, Outcome};
use crate::eval::SetName;

pub struct TruthRatio(pub SetName);

static INFO: Info = Info {
    name: "forget_truth_ratio, {set}_Truth_Ratio",
    needs: &[Need::Paraphrases, Need::Perturbed],
    formula:
        "R = (Π_j P(pert_j))^(1/n) / P(para); forget: mean min(R, 1/R), others: mean max(0, 1 − R)",
    reference: "open-unlearning src/evals/metrics/memorization.py: truth_ratio",
};

impl Metric for TruthRatio {
    fn name(&self) -> String {
        names::truth_ratio(self.0)
    }
    fn info(&self) -> &'static Info {
        &INFO
    }
    fn set(&self) -> Option<SetName> {
        Some(self.0)
    }
    fn compute(&self, p: &mut Passes, _: &Map<String, Value>) -> Outcome {
        let s = self.0;
        let reference: Vec<f64> = if s.options() {
            p.answer(s)?.iter().map(|t| t.prob()).collect()
        } else {
            p.para(s)?.iter().map(|t| t.prob()).collect()
        };
        let r: Vec<f64> = p
            .pert(s)?
            .iter()
            .zip(&reference)
            .map(|(o, &pr)| tofu::truth_ratio(&o.iter().map(|t| t.prob()).collect::<Vec<_>>(), pr))
            .collect();
        let a = if s == SetName::Forget {
            tofu::truth_ratio_forget(&r)
        } else {
            tofu::truth_ratio_other(&r)
        };
        let mut v = per_item_scores(&r);
        v["agg_value"] = json!(a);
        Ok(v)
    }
}
