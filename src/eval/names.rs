//! The names metrics are written under (open-unlearning's keys), shared by the evaluation, the
//! report, the demo and the CLI.
use super::SetName;

pub const FORGET_QUALITY: &str = "forget_quality";
pub const MODEL_UTILITY: &str = "model_utility";
pub const FORGET_TRUTH_RATIO: &str = "forget_truth_ratio";
pub const EXACT_MEMORIZATION: &str = "exact_memorization";
pub const EXTRACTION_STRENGTH: &str = "extraction_strength";
pub const PRIVLEAK: &str = "privleak";
pub const FORGET_EFFICACY: &str = "forget_efficacy";
pub const CLOSER_LOOK_UTILITY: &str = "closer_look_model_utility";
pub const MIA_LOSS: &str = "mia_loss";
pub const MIA_ZLIB: &str = "mia_zlib";
pub const MIA_MIN_K: &str = "mia_min_k";
pub const MIA_MIN_K_PP: &str = "mia_min_k_plus_plus";
pub const MIA_REFERENCE: &str = "mia_reference";
pub const MIA_GRADNORM: &str = "mia_gradnorm";

/// `{set}_Q_A_Prob`.
pub fn prob(s: SetName) -> String {
    format!("{}_Q_A_Prob", s.prefix())
}
/// `{set}_Q_A_PARA_Prob`.
pub fn para_prob(s: SetName) -> String {
    format!("{}_Q_A_PARA_Prob", s.prefix())
}
/// `{set}_Q_A_PERT_Prob`.
pub fn pert_prob(s: SetName) -> String {
    format!("{}_Q_A_PERT_Prob", s.prefix())
}
/// `{set}_Q_A_Prob_normalised` (real authors, world facts).
pub fn norm_prob(s: SetName) -> String {
    format!("{}_Q_A_Prob_normalised", s.prefix())
}
/// `forget_truth_ratio`, `{set}_Truth_Ratio`.
pub fn truth_ratio(s: SetName) -> String {
    match s {
        SetName::Forget => FORGET_TRUTH_RATIO.into(),
        s => format!("{}_Truth_Ratio", s.prefix()),
    }
}
/// `{set}_Q_A_ROUGE`.
pub fn rouge(s: SetName) -> String {
    format!("{}_Q_A_ROUGE", s.prefix())
}
pub fn token_entropy(s: SetName) -> String {
    format!("{}_token_entropy", s.prefix())
}
pub fn cosine_similarity(s: SetName) -> String {
    format!("{}_cosine_similarity", s.prefix())
}
pub fn entailment_score(s: SetName) -> String {
    format!("{}_entailment_score", s.prefix())
}
pub fn refusal_rate(s: SetName) -> String {
    format!("{}_refusal_rate", s.prefix())
}
/// `exact_memorization` (forget set), `{set}_exact_memorization`.
pub fn exact_memorization(s: SetName) -> String {
    match s {
        SetName::Forget => EXACT_MEMORIZATION.into(),
        s => format!("{}_exact_memorization", s.prefix()),
    }
}
/// `extraction_strength` (forget set), `{set}_extraction_strength`.
pub fn extraction_strength(s: SetName) -> String {
    match s {
        SetName::Forget => EXTRACTION_STRENGTH.into(),
        s => format!("{}_extraction_strength", s.prefix()),
    }
}

// Per-set names the report, the demo and the CLI show, as constants (equal to the functions'
// values: see the test below).
pub const FORGET_PROB: &str = "forget_Q_A_Prob";
pub const FORGET_ROUGE: &str = "forget_Q_A_ROUGE";
pub const RETAIN_PROB: &str = "retain_Q_A_Prob";
pub const RETAIN_ROUGE: &str = "retain_Q_A_ROUGE";
pub const FORGET_TOKEN_ENTROPY: &str = "forget_token_entropy";
pub const FORGET_REFUSAL_RATE: &str = "forget_refusal_rate";

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn constants_agree_with_the_per_set_names() {
        let (f, r) = (SetName::Forget, SetName::Retain);
        assert_eq!(prob(f), FORGET_PROB);
        assert_eq!(rouge(f), FORGET_ROUGE);
        assert_eq!(prob(r), RETAIN_PROB);
        assert_eq!(rouge(r), RETAIN_ROUGE);
        assert_eq!(token_entropy(f), FORGET_TOKEN_ENTROPY);
        assert_eq!(refusal_rate(f), FORGET_REFUSAL_RATE);
        assert_eq!(truth_ratio(f), FORGET_TRUTH_RATIO);
        assert_eq!(exact_memorization(f), EXACT_MEMORIZATION);
        assert_eq!(extraction_strength(f), EXTRACTION_STRENGTH);
    }
}
