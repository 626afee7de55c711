//! TOFU aggregates (METHODS.md, "Metrics"), from per-token log-probabilities of answers.
//! P(a|q) = exp(mean_t log p(a_t)) (length-normalised probability).

/// Length-normalised probability of one answer from its per-token log-probs.
pub fn prob(token_lps: &[f32]) -> f64 {
    if token_lps.is_empty() {
        return 0.0;
    }
    (token_lps.iter().map(|&x| x as f64).sum::<f64>() / token_lps.len() as f64).exp()
}

/// Option-normalised probability (real authors / world facts): P(a) / (P(a) + Σ_j P(wrong_j)).
pub fn normalised_prob(p_answer: f64, p_wrong: &[f64]) -> f64 {
    let z = p_answer + p_wrong.iter().sum::<f64>();
    if z > 0.0 {
        p_answer / z
    } else {
        0.0
    }
}

/// Truth ratio of one item: R = (Π_j P(perturbed_j))^{1/n} / P(reference), where the reference is
/// the paraphrased answer (forget/retain) or the answer (real authors / world facts).
pub fn truth_ratio(p_perturbed: &[f64], p_reference: f64) -> f64 {
    let n = p_perturbed.len().max(1) as f64;
    let log_geo = p_perturbed.iter().map(|p| p.ln()).sum::<f64>() / n;
    (log_geo - p_reference.ln()).exp()
}

/// Forget-set aggregate: mean min(R, 1/R).
pub fn truth_ratio_forget(ratios: &[f64]) -> f64 {
    mean(ratios.iter().map(|&r| r.min(1.0 / r)))
}

/// Non-forget aggregate: mean max(0, 1 − R).
pub fn truth_ratio_other(ratios: &[f64]) -> f64 {
    mean(ratios.iter().map(|&r| (1.0 - r).max(0.0)))
}

/// Harmonic mean (model utility); 0 if any value is 0.
pub fn harmonic_mean(v: &[f64]) -> f64 {
    if v.is_empty() || v.iter().any(|&x| x <= 0.0) {
        return 0.0;
    }
    v.len() as f64 / v.iter().map(|x| 1.0 / x).sum::<f64>()
}

fn mean(it: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = it.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn hand_computed_values() {
        // exp(mean(ln .5, ln .125)) = exp(ln(1/16)/2) = 0.25
        assert!((prob(&[0.5f32.ln(), 0.125f32.ln()]) - 0.25).abs() < 1e-7);
        assert_eq!(normalised_prob(0.2, &[0.1, 0.1]), 0.5);
        // geometric mean of (0.1, 0.4) = 0.2; / 0.4 = 0.5
        assert!((truth_ratio(&[0.1, 0.4], 0.4) - 0.5).abs() < 1e-12);
        assert!((truth_ratio_forget(&[0.5, 4.0]) - (0.5 + 0.25) / 2.0).abs() < 1e-12);
        assert!((truth_ratio_other(&[0.5, 4.0]) - 0.25).abs() < 1e-12);
        assert!((harmonic_mean(&[1.0, 0.5]) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(harmonic_mean(&[1.0, 0.0]), 0.0);
    }
}
