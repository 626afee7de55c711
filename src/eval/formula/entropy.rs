//! Token entropy of a generation ("closer look" metric): with f_i the relative frequency of each
//! distinct token among the n generated tokens, TE = (−Σ f_i log2 f_i) / log2 n; 0 when n ≤ 1.
//! Low values flag degenerate, repetitive output (e.g. "the the the …").
use std::collections::BTreeMap;

pub fn token_entropy(tokens: &[u32]) -> f64 {
    let n = tokens.len();
    if n <= 1 {
        return 0.0;
    }
    // a sorted map: the sum runs in token order, so the value is the same on every run
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for &t in tokens {
        *counts.entry(t).or_default() += 1;
    }
    let h: f64 = counts
        .values()
        .map(|&c| {
            let f = c as f64 / n as f64;
            -f * f.log2()
        })
        .sum();
    h / (n as f64).log2()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn hand_computed() {
        assert_eq!(token_entropy(&[]), 0.0);
        assert_eq!(token_entropy(&[5]), 0.0);
        // all distinct: H = log2 n, normalised to 1
        assert!((token_entropy(&[1, 2, 3, 4]) - 1.0).abs() < 1e-12);
        // all equal: 0
        assert_eq!(token_entropy(&[7, 7, 7]), 0.0);
        // [1,1,2,3]: f = .5,.25,.25 → H = .5 + .5 + .5 = 1.5 bits; / log2 4 = 0.75
        assert!((token_entropy(&[1, 1, 2, 3]) - 0.75).abs() < 1e-12);
    }
}
