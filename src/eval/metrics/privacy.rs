//! Metrics against the retain model's evaluation (`retain_logs`): forget quality, the p-value
//! of the two-sample Kolmogorov–Smirnov test between the forget truth ratios of the model and
//! of the retain model (TOFU), and PrivLeak (MUSE), the Min-K% AUC relative to the retain
//! model's: ((1 − auc) − (1 − auc_retain)) / (1 − auc_retain) · 100.
use serde_json::{json, Map, Value};

use super::{Info, Metric, Need};
use crate::eval::formula::{ks, mia};
use crate::eval::names;
use crate::eval::passes::Passes;
use crate::eval::value::{agg, scores, Fail, Outcome};

pub struct PrivLeak;

static PRIVLEAK: Info = Info {
    name: names::PRIVLEAK,
    needs: &[Need::RetainLog, Need::Metrics(names::MIA_MIN_K)],
    formula: "((1 − auc) − (1 − auc_retain)) / (1 − auc_retain) · 100 of mia_min_k",
    reference: "open-unlearning src/evals/metrics/privacy.py: privleak",
};

impl Metric for PrivLeak {
    fn name(&self) -> String {
        names::PRIVLEAK.into()
    }
    fn info(&self) -> &'static Info {
        &PRIVLEAK
    }
    fn compute(&self, p: &mut Passes, done: &Map<String, Value>) -> Outcome {
        let model_auc =
            agg(done, names::MIA_MIN_K).ok_or_else(|| Fail::skip("mia_min_k unavailable"))?;
        let ret = agg(p.retain_logs()?, names::MIA_MIN_K)
            .ok_or_else(|| Fail::skip("the retain log has no mia_min_k agg_value"))?;
        Ok(
            json!({"agg_value": mia::privleak(model_auc, ret), "auc": model_auc, "retain_auc": ret,
               "sign": "MUSE / open-unlearning: ((1-auc) - (1-retain_auc)) / (1-retain_auc) * 100; negative: the forget set is more recognisable than under the retain model (under-unlearning); positive: less (over-unlearning); 0: like retraining"}),
        )
    }
}

pub struct ForgetQuality;

static FQ: Info = Info {
    name: names::FORGET_QUALITY,
    needs: &[Need::RetainLog, Need::Metrics(names::FORGET_TRUTH_RATIO)],
    formula:
        "p-value of the KS test between the forget truth ratios of the model and the retain model",
    reference: "open-unlearning src/evals/metrics/privacy.py: ks_test",
};

impl Metric for ForgetQuality {
    fn name(&self) -> String {
        names::FORGET_QUALITY.into()
    }
    fn info(&self) -> &'static Info {
        &FQ
    }
    fn compute(&self, p: &mut Passes, done: &Map<String, Value>) -> Outcome {
        let ours = done
            .get(names::FORGET_TRUTH_RATIO)
            .and_then(scores)
            .ok_or_else(|| Fail::skip("forget_truth_ratio unavailable"))?;
        let theirs = p
            .retain_logs()?
            .get(names::FORGET_TRUTH_RATIO)
            .and_then(scores)
            .ok_or_else(|| Fail::skip("the retain log has no forget_truth_ratio value_by_index"))?;
        let r = ks::ks_2samp(&ours, &theirs);
        Ok(json!({"agg_value": r.pvalue, "ks_statistic": r.statistic}))
    }
}
