//! Membership-inference attack scores and their ROC-AUC (forget = members, holdout = non-members).
//!
//! Every score is a *non-membership* score, higher = the attack thinks "not seen in training":
//! - LOSS: mean NLL of the answer tokens.
//! - ZLib: LOSS / zlib-compressed byte length of the answer text (Python `zlib.compress`, level 6).
//! - Min-K%: −mean of the k·|a| lowest token log-probs (k = 0.4; at least one token).
//! - Min-K%++: token scores z_t = (log p(a_t) − μ_t)/σ_t with μ_t = E_{v∼p}[log p(v)],
//!   σ_t² = E_{v∼p}[log² p(v)] − μ_t² (σ_t² clamped at 1e-6); score = −mean of the lowest k·|a|.
//! - Reference: LOSS − LOSS under a reference model (the retain model for TOFU).
//!
//! AUC = P(score(holdout) > score(forget)) + ½·P(tie), the ROC-AUC of telling holdout from forget
//! by the score (sklearn `roc_auc_score` with holdout labelled 1, as open-unlearning computes it).
//! ≈ 1: the forget set is still recognisably "seen"; ≈ 0.5: indistinguishable from unseen data.
use std::io::Write;

pub use crate::infer::score::TokenStats;

/// Byte length of `zlib.compress(text.encode("utf-8"))` (default level 6).
pub fn zlib_len(text: &str) -> usize {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(text.as_bytes()).expect("in-memory write");
    e.finish().expect("in-memory write").len()
}

pub fn loss_score(s: &TokenStats) -> f64 {
    s.avg_loss()
}

pub fn zlib_score(s: &TokenStats, answer: &str) -> f64 {
    s.avg_loss() / zlib_len(answer) as f64
}

/// −mean of the lowest max(1, ⌊k·n⌋) values.
fn neg_mean_lowest(mut v: Vec<f64>, k: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let m = ((v.len() as f64 * k) as usize).max(1);
    -v[..m].iter().sum::<f64>() / m as f64
}

pub fn min_k_score(s: &TokenStats, k: f64) -> f64 {
    neg_mean_lowest(s.logp.iter().map(|&x| x as f64).collect(), k)
}

pub fn min_k_pp_score(s: &TokenStats, k: f64) -> f64 {
    let z = s
        .logp
        .iter()
        .zip(s.mu.iter().zip(&s.var))
        .map(|(&lp, (&mu, &var))| (lp as f64 - mu as f64) / (var as f64).max(1e-6).sqrt())
        .collect();
    neg_mean_lowest(z, k)
}

pub fn reference_score(s: &TokenStats, reference: &TokenStats) -> f64 {
    s.avg_loss() - reference.avg_loss()
}

/// ROC-AUC of holdout (positive) vs forget (negative) by score, ties counted ½. O(n log n).
pub fn auc(forget: &[f64], holdout: &[f64]) -> f64 {
    if forget.is_empty() || holdout.is_empty() {
        return f64::NAN;
    }
    // Mann–Whitney U from mid-ranks of the pooled sample.
    let mut all: Vec<(f64, bool)> = forget
        .iter()
        .map(|&x| (x, false))
        .chain(holdout.iter().map(|&x| (x, true)))
        .collect();
    all.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += all[i..=j].iter().filter(|x| x.1).count() as f64 * mid;
        i = j + 1;
    }
    let (np, nn) = (holdout.len() as f64, forget.len() as f64);
    (rank_sum_pos - np * (np + 1.0) / 2.0) / (np * nn)
}

/// PrivLeak as MUSE and open-unlearning define it, on their AUC convention (MUSE reports
/// 1 − AUC): ((1 − AUC_model) − (1 − AUC_retain)) / (1 − AUC_retain + 1e-10) · 100, with AUC
/// the ROC-AUC of [`auc`] (≈ 1 when the forget set is recognisably seen). 0 = like the retrained
/// model. Negative = the forget set is still easier to tell from unseen data than under the
/// retain model (under-unlearning, a privacy leak; −100 when the model separates them
/// perfectly); positive = harder, it looks *less* seen than truly unseen data
/// (over-unlearning).
pub fn privleak(auc_model: f64, auc_retain: f64) -> f64 {
    let (score, reference) = (1.0 - auc_model, 1.0 - auc_retain);
    (score - reference) / (reference + 1e-10) * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(logp: &[f32]) -> TokenStats {
        TokenStats {
            logp: logp.to_vec(),
            hit: vec![false; logp.len()],
            mu: vec![-1.0; logp.len()],
            var: vec![4.0; logp.len()],
        }
    }

    #[test]
    fn scores_hand_computed() {
        let s = stats(&[-1.0, -3.0, -0.5, -2.0, -0.1]);
        assert!((loss_score(&s) - 1.32).abs() < 1e-6);
        // k = 0.4 of 5 tokens = 2 lowest: -3, -2 → 2.5
        assert!((min_k_score(&s, 0.4) - 2.5).abs() < 1e-9);
        // z = (lp + 1)/2: lowest two (-3 → -1, -2 → -0.5) → 0.75
        assert!((min_k_pp_score(&s, 0.4) - 0.75).abs() < 1e-9);
        // a single token still counts one
        assert!((min_k_score(&stats(&[-0.7]), 0.4) - 0.7).abs() < 1e-6);
        let r = stats(&[-1.0, -1.0, -1.0, -1.0, -1.0]);
        assert!((reference_score(&s, &r) - 0.32).abs() < 1e-6);
    }

    /// Issue #18: the AUCs behind the reported +112.05 (our old formula) give −97.98 in MUSE's
    /// and open-unlearning's: AUC_retain = 0.4665, AUC = 0.98922.
    #[test]
    fn privleak_has_muse_sign_and_scale() {
        let (a, r): (f64, f64) = (0.98922, 0.4665);
        assert!(((a - r) / r * 100.0 - 112.05).abs() < 0.01, "the old value");
        // ((1 − a) − (1 − r)) / (1 − r) · 100 = (r − a)/(1 − r) · 100
        let want = (r - a) / (1.0 - r) * 100.0;
        assert!((privleak(a, r) - want).abs() < 1e-6);
        assert!((privleak(a, r) + 97.98).abs() < 0.01, "{}", privleak(a, r));
        assert_eq!(privleak(0.5, 0.5), 0.0);
        // perfectly separated forget set: −100; less recognisable than unseen data: positive
        assert!((privleak(1.0, 0.5) + 100.0).abs() < 1e-6);
        assert!(privleak(0.3, 0.5) > 0.0);
    }

    #[test]
    fn zlib_lengths_match_python() {
        // python3 -c "import zlib; print([len(zlib.compress(s.encode())) for s in
        //   ['', 'a', 'hello hello hello hello', 'The capital of France is Paris.', 'é∑😀']])"
        let want = [8, 9, 16, 39, 18];
        let got: Vec<usize> = [
            "",
            "a",
            "hello hello hello hello",
            "The capital of France is Paris.",
            "é∑😀",
        ]
        .iter()
        .map(|s| zlib_len(s))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn auc_matches_sklearn() {
        // sklearn roc_auc_score([0,0,0,1,1,1], [.1,.4,.35,.8,.4,.2]) = U/9 with scipy.stats.mannwhitneyu([.8,.4,.2], [.1,.4,.35]).statistic = 6.5
        let a = auc(&[0.1, 0.4, 0.35], &[0.8, 0.4, 0.2]);
        assert!((a - 0.722_222_222).abs() < 1e-6, "{a}");
        assert_eq!(auc(&[0.0, 0.1], &[0.5, 0.6]), 1.0);
        assert_eq!(auc(&[0.5, 0.6], &[0.0, 0.1]), 0.0);
        assert_eq!(auc(&[1.0, 1.0], &[1.0]), 0.5);
        // MUSE's sign (issue #18): ((1 − .9) − (1 − .5)) / (1 − .5) · 100 = −80
        assert!((privleak(0.9, 0.5) + 80.0).abs() < 1e-6);
    }
}
