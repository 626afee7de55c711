//! Membership-inference attacks on the forget (members) and holdout (non-members) answers:
//! a non-membership score per item (higher = "not seen") and the ROC-AUC of telling holdout
//! from forget by it (open-unlearning's convention: ≈ 1 the forget set is still recognisably
//! seen, ≈ 0.5 indistinguishable from unseen data). Scores: see [`crate::eval::formula::mia`].
use serde_json::{json, Map, Value};

use super::{Info, Metric, Need};
use crate::eval::formula::mia;
use crate::eval::names;
use crate::eval::passes::Passes;
use crate::eval::value::{per_item_scores, Outcome};
use crate::eval::SetName;
use crate::infer::score::TokenStats;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Attack {
    Loss,
    Zlib,
    MinK,
    MinKpp,
    Reference,
}

impl Attack {
    pub const ALL: [Attack; 5] = [
        Attack::Loss,
        Attack::Zlib,
        Attack::MinK,
        Attack::MinKpp,
        Attack::Reference,
    ];
}

/// The AUC entry of per-item scores of the forget and holdout sets.
pub fn auc_entry(fs: &[f64], hs: &[f64]) -> Value {
    let auc = mia::auc(fs, hs);
    json!({"agg_value": auc, "auc": auc,
           "forget": per_item_scores(fs), "holdout": per_item_scores(hs)})
}

pub struct Mia(pub Attack);

const A: &[Need] = &[Need::Answers, Need::Holdout];
static LOSS: Info = Info {
    name: names::MIA_LOSS,
    needs: A,
    formula: "AUC of the mean answer NLL",
    reference: "open-unlearning src/evals/metrics/mia/loss.py",
};
static ZLIB: Info = Info {
    name: names::MIA_ZLIB,
    needs: A,
    formula: "AUC of mean NLL / zlib-compressed length of the answer",
    reference: "open-unlearning src/evals/metrics/mia/zlib.py",
};
static MIN_K: Info = Info {
    name: names::MIA_MIN_K,
    needs: A,
    formula: "AUC of −mean of the k·|a| lowest token log-probs (min_k, default 0.4)",
    reference: "open-unlearning src/evals/metrics/mia/min_k.py",
};
static MIN_K_PP: Info = Info {
    name: names::MIA_MIN_K_PP,
    needs: A,
    formula: "AUC of −mean of the k·|a| lowest (log p(a_t) − μ_t)/σ_t",
    reference: "open-unlearning src/evals/metrics/mia/min_k_plus_plus.py",
};
static REFERENCE: Info = Info {
    name: names::MIA_REFERENCE,
    needs: &[Need::Answers, Need::Holdout, Need::ReferenceModel],
    formula: "AUC of mean NLL − mean NLL under the reference model",
    reference: "open-unlearning src/evals/metrics/mia/reference.py",
};

impl Metric for Mia {
    fn name(&self) -> String {
        self.info().name.into()
    }
    fn info(&self) -> &'static Info {
        match self.0 {
            Attack::Loss => &LOSS,
            Attack::Zlib => &ZLIB,
            Attack::MinK => &MIN_K,
            Attack::MinKpp => &MIN_K_PP,
            Attack::Reference => &REFERENCE,
        }
    }
    fn compute(&self, p: &mut Passes, _: &Map<String, Value>) -> Outcome {
        let k = p.cfg().min_k;
        let f_all = p.answer(SetName::Forget)?.to_vec();
        let h_all = p.answer(SetName::Holdout)?.to_vec();
        // Min-K% and Min-K%++ leave out the last label in compat mode; LOSS, zlib and the
        // reference attack use every label (avg_loss) in both
        let (f, h) = match self.0 {
            Attack::MinK | Attack::MinKpp => (p.metric_stats(&f_all), p.metric_stats(&h_all)),
            _ => (f_all, h_all),
        };
        let each = |v: &[TokenStats], score: &dyn Fn(usize, &TokenStats) -> f64| -> Vec<f64> {
            v.iter().enumerate().map(|(i, t)| score(i, t)).collect()
        };
        let (fs, hs) = match self.0 {
            Attack::Loss => (
                each(&f, &|_, t| mia::loss_score(t)),
                each(&h, &|_, t| mia::loss_score(t)),
            ),
            Attack::MinK => (
                each(&f, &|_, t| mia::min_k_score(t, k)),
                each(&h, &|_, t| mia::min_k_score(t, k)),
            ),
            Attack::MinKpp => (
                each(&f, &|_, t| mia::min_k_pp_score(t, k)),
                each(&h, &|_, t| mia::min_k_pp_score(t, k)),
            ),
            Attack::Zlib => {
                let ft = p.zlib_texts(SetName::Forget)?;
                let ht = p.zlib_texts(SetName::Holdout)?;
                (
                    each(&f, &|i, t| mia::zlib_score(t, &ft[i])),
                    each(&h, &|i, t| mia::zlib_score(t, &ht[i])),
                )
            }
            Attack::Reference => {
                let (fr, hr) = p.reference()?;
                (
                    each(&f, &|i, t| mia::reference_score(t, &fr[i])),
                    each(&h, &|i, t| mia::reference_score(t, &hr[i])),
                )
            }
        };
        Ok(auc_entry(&fs, &hs))
    }
}
