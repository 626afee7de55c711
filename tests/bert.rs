//! BERT / RoBERTa encoders and DeBERTa-v2/v3 classifiers against transformers (reference values
//! from scripts/make_bert_ref.py and scripts/make_deberta_ref.py).
use std::path::{Path, PathBuf};

use candle_core::Device;
use unlearn::model::bert::{cosine, Bert};
use unlearn::model::nli::Classifier;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn check_classifier(kind: &str) {
    let dir = fixtures().join(format!("tiny_nli_{kind}"));
    let m = Bert::load(&dir, &Device::Cpu).unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ref.json")).unwrap()).unwrap();
    let pairs: Vec<(String, String)> = serde_json::from_value(r["pairs"].clone()).unwrap();
    let refs: Vec<Vec<f32>> = serde_json::from_value(r["logits"].clone()).unwrap();
    let p: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    // batch of all pairs (padding exercised) and one at a time must both match
    for bs in [1, 3] {
        let got = m.classify(&p, bs).unwrap();
        for (g, r) in got.iter().zip(&refs) {
            for (x, y) in g.iter().zip(r) {
                assert!((x - y).abs() < 1e-5, "{kind} bs={bs}: {g:?} vs {r:?}");
            }
        }
    }
    assert_eq!(m.entailment_label(), Some(0));
}

#[test]
fn tiny_bert_classifier_matches_transformers() {
    check_classifier("bert");
}

#[test]
fn tiny_roberta_classifier_matches_transformers() {
    check_classifier("roberta");
}

#[test]
fn minilm_embeddings_match_transformers() {
    let Some(dir) = std::env::var_os("UNLEARN_MINILM_DIR") else {
        eprintln!("skipping: UNLEARN_MINILM_DIR not set (scripts/test.sh sets it)");
        return;
    };
    let m = Bert::load(Path::new(&dir), &Device::Cpu).unwrap();
    assert_eq!(m.max_len, 256);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("minilm_ref.json")).unwrap())
            .unwrap();
    let s: Vec<String> = serde_json::from_value(r["sentences"].clone()).unwrap();
    let first8: Vec<Vec<f32>> = serde_json::from_value(r["embeddings_first8"].clone()).unwrap();
    let norms: Vec<f64> = serde_json::from_value(r["norms"].clone()).unwrap();
    let cos: Vec<f64> = serde_json::from_value(r["cos_with_first"].clone()).unwrap();
    let texts: Vec<&str> = s.iter().map(|x| x.as_str()).collect();
    for bs in [1, 4] {
        let e = m.embed(&texts, bs).unwrap();
        for i in 0..texts.len() {
            for (x, y) in e[i][..8].iter().zip(&first8[i]) {
                assert!((x - y).abs() < 1e-4, "sentence {i} bs={bs}: {x} vs {y}");
            }
            let n = e[i].iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            assert!(
                (n - norms[i]).abs() < 1e-3 * norms[i],
                "norm {i}: {n} vs {}",
                norms[i]
            );
            assert!((cosine(&e[0], &e[i]) - cos[i]).abs() < 1e-4, "cos {i}");
        }
    }
}

/// Issue #18: DeBERTa-v3 (buckets, shared keys, p2c|c2p, LayerNorm-ed relative embeddings, no
/// absolute positions or token types, a Unigram/Metaspace tokenizer) and DeBERTa-v2's other
/// options (position projections, absolute positions, token types, embedding projection,
/// convolution, unbucketed relative positions): logits of a padded batch, one pair at a time,
/// and a pair long enough for the log buckets, against transformers.
fn check_deberta(kind: &str) {
    let dir = fixtures().join(format!("tiny_nli_deberta_{kind}"));
    let m = Classifier::load(&dir, &Device::Cpu).unwrap();
    assert!(matches!(m, Classifier::Deberta(_)));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ref.json")).unwrap()).unwrap();
    let pairs: Vec<(String, String)> = serde_json::from_value(r["pairs"].clone()).unwrap();
    let refs: Vec<Vec<f32>> = serde_json::from_value(r["logits"].clone()).unwrap();
    let p: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    if let Classifier::Deberta(d) = &m {
        // the tokenizer from tokenizer.json gives transformers' ids
        let want: Vec<u32> = serde_json::from_value(r["ids_first"].clone()).unwrap();
        let got = d.tokenizer.encode((p[0].0, p[0].1), true).unwrap();
        assert_eq!(got.get_ids(), &want[..]);
    }
    for bs in [1, 4] {
        let got = m.classify(&p, bs).unwrap();
        for (i, (g, r)) in got.iter().zip(&refs).enumerate() {
            for (x, y) in g.iter().zip(r) {
                // weights of std 0.5 make logits of a few units: f32 noise is ~1e-5 there
                assert!(
                    (x - y).abs() < 1e-4,
                    "{kind} bs={bs} pair {i}: {g:?} vs {r:?}"
                );
            }
        }
    }
    assert_eq!(m.entailment_label(), Some(0));
}

#[test]
fn tiny_deberta_v3_classifier_matches_transformers() {
    check_deberta("v3");
}

#[test]
fn tiny_deberta_v2_classifier_matches_transformers() {
    check_deberta("v2");
}
