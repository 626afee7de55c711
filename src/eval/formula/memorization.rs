//! Memorisation metrics from a teacher-forced pass over the answer tokens (EOS included).
//! `hits[t]` = (argmax_v p(v | q, a_<t) == a_t).

/// Exact memorisation: fraction of answer tokens whose teacher-forced argmax is the true token.
pub fn exact_memorization(hits: &[bool]) -> f64 {
    if hits.is_empty() {
        return 0.0;
    }
    hits.iter().filter(|&&h| h).count() as f64 / hits.len() as f64
}

/// Extraction strength: 1 − k/|a| for the smallest k such that every token of the suffix a_k..
/// is predicted (teacher-forced argmax); k = |a| when not even the last token is (ES = 0).
pub fn extraction_strength(hits: &[bool]) -> f64 {
    let n = hits.len();
    if n == 0 {
        return 0.0;
    }
    // the longest all-hit suffix starts right after the last miss
    let k = hits.iter().rposition(|&h| !h).map(|i| i + 1).unwrap_or(0);
    1.0 - k as f64 / n as f64
}

/// Extraction strength as open-unlearning computes it: its loop over k leaves k at n − 1 when no
/// suffix is predicted, so such an item scores 1/n instead of 0 (`eval.compat =
/// "open_unlearning"`); otherwise as [`extraction_strength`].
pub fn extraction_strength_open_unlearning(hits: &[bool]) -> f64 {
    let n = hits.len();
    if n == 0 {
        return 0.0;
    }
    let k = (0..n)
        .find(|&k| hits[k..].iter().all(|&h| h))
        .unwrap_or(n - 1);
    1.0 - k as f64 / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn hand_computed() {
        let (t, f) = (true, false);
        assert_eq!(exact_memorization(&[t, f, t, t]), 0.75);
        assert_eq!(extraction_strength(&[t, t, t, t]), 1.0);
        // last miss at index 1 → suffix from k = 2 → 1 − 2/4
        assert_eq!(extraction_strength(&[t, f, t, t]), 0.5);
        assert_eq!(extraction_strength(&[t, t, t, f]), 0.0);
        assert_eq!(extraction_strength(&[]), 0.0);
        // open-unlearning's: the same where a suffix is predicted, 1/n where none is
        let ou = extraction_strength_open_unlearning;
        assert_eq!(ou(&[t, f, t, t]), 0.5);
        assert_eq!(ou(&[t, t, t, t]), 1.0);
        assert_eq!(ou(&[t, t, t, f]), 0.25);
        assert_eq!(ou(&[]), 0.0);
    }
}
