//! ROUGE-L as Google's `rouge_score` computes it (`RougeScorer(["rougeL"], use_stemmer=True)`):
//! tokens = runs of [a-z0-9] of the lower-cased text, words longer than 3 characters Porter-stemmed
//! (NLTK); LCS length over target and prediction tokens; recall = LCS/|target|,
//! precision = LCS/|prediction|, F = 2PR/(P+R).
use super::porter;

/// `rouge_score.tokenize.tokenize(text, stemmer)`.
pub fn tokenize(text: &str, use_stemmer: bool) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut tokens = Vec::new();
    let mut cur = String::new();
    for c in lower.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            cur.push(c);
        } else if !cur.is_empty() {
            tokens.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        tokens.push(cur);
    }
    if use_stemmer {
        for t in tokens.iter_mut() {
            if t.len() > 3 {
                *t = porter::stem(t);
            }
        }
    }
    tokens
}

fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RougeL {
    pub precision: f64,
    pub recall: f64,
    pub fmeasure: f64,
}

/// ROUGE-L of `prediction` against `target` (stemming on).
pub fn rouge_l(target: &str, prediction: &str) -> RougeL {
    let t = tokenize(target, true);
    let p = tokenize(prediction, true);
    if t.is_empty() || p.is_empty() {
        return RougeL {
            precision: 0.0,
            recall: 0.0,
            fmeasure: 0.0,
        };
    }
    let l = lcs_len(&t, &p) as f64;
    let precision = l / p.len() as f64;
    let recall = l / t.len() as f64;
    let fmeasure = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    RougeL {
        precision,
        recall,
        fmeasure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(got: RougeL, x: &serde_json::Value, what: &str) {
        for (k, v) in [
            ("precision", got.precision),
            ("recall", got.recall),
            ("fmeasure", got.fmeasure),
        ] {
            let want = x[k].as_f64().unwrap();
            assert!((v - want).abs() < 1e-12, "{k}: {v} vs {want} for {what}");
        }
    }

    /// Reference values: `scripts/make_metric_refs.py` ran rouge_score 0.1.2 (NLTK 3.10 Porter
    /// stemmer): stems of ~4000 English words, ROUGE-L of edge cases, and ROUGE-L of ~400 TOFU
    /// answer pairs (stored by file/line; the text is read from $UNLEARN_TOFU_DIR, which scripts/test.sh sets).
    #[test]
    fn matches_rouge_score_and_nltk() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let r: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("tests/fixtures/rouge_ref.json")).unwrap(),
        )
        .unwrap();
        let stems = r["stems"].as_object().unwrap();
        assert!(stems.len() > 3000);
        for (w, s) in stems {
            assert_eq!(porter::stem(w), s.as_str().unwrap(), "stem({w})");
        }
        for x in r["pairs"].as_array().unwrap() {
            check(
                rouge_l(
                    x["target"].as_str().unwrap(),
                    x["prediction"].as_str().unwrap(),
                ),
                x,
                &x.to_string(),
            );
        }
        let Some(tofu) = std::env::var_os("UNLEARN_TOFU_DIR").map(std::path::PathBuf::from) else {
            eprintln!("skipping the TOFU pairs: UNLEARN_TOFU_DIR not set");
            return;
        };
        let pairs = r["tofu_pairs"].as_array().unwrap();
        assert!(pairs.len() >= 300);
        let mut files = std::collections::HashMap::new();
        for x in pairs {
            let f = x["file"].as_str().unwrap();
            let rows = files
                .entry(f.to_string())
                .or_insert_with(|| crate::data::read_qa(&tofu.join(f)).unwrap());
            let row = &rows[x["line"].as_u64().unwrap() as usize];
            let pred = match x["kind"].as_str().unwrap() {
                "paraphrased_answer" => row.paraphrased_answer.clone().unwrap(),
                _ => row.perturbed_answer[0].clone(),
            };
            check(
                rouge_l(&row.answer, &pred),
                x,
                &format!("{f}:{}", x["line"]),
            );
        }
    }

    #[test]
    fn tokenizer_edge_cases() {
        assert_eq!(
            tokenize("Hello, WORLD!! it's 2024-05", false),
            vec!["hello", "world", "it", "s", "2024", "05"]
        );
        assert_eq!(rouge_l("", "x").recall, 0.0);
        assert_eq!(rouge_l("a b c d", "a c d").recall, 0.75);
    }
}

/// ROUGE-1 recall: clipped unigram overlap Σ_w min(c_target(w), c_pred(w)) / |target| (stemming
/// on), as `rouge_score`'s "rouge1" recall.
pub fn rouge1_recall(target: &str, prediction: &str) -> f64 {
    let t = tokenize(target, true);
    let p = tokenize(prediction, true);
    if t.is_empty() || p.is_empty() {
        return 0.0;
    }
    let mut counts: std::collections::HashMap<&str, (usize, usize)> = Default::default();
    for w in &t {
        counts.entry(w).or_default().0 += 1;
    }
    for w in &p {
        counts.entry(w).or_default().1 += 1;
    }
    let overlap: usize = counts.values().map(|&(a, b)| a.min(b)).sum();
    overlap as f64 / t.len() as f64
}

#[cfg(test)]
mod rouge1_tests {
    #[test]
    fn hand_computed() {
        // target tokens: the cat sat on the mat (6); prediction: the the cat → min(2,2)+1 = 3
        assert_eq!(
            super::rouge1_recall("the cat sat on the mat", "the the cat"),
            0.5
        );
        assert_eq!(super::rouge1_recall("", "x"), 0.0);
    }
}
