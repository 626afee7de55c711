//! General-ability tasks (`unlearn eval --benchmark mmlu|arc_challenge|…`) against
//! lm-evaluation-harness: on the fixtures of tests/fixtures/harness (parquet, JSON array and
//! JSON-lines layouts), SmolLM2's per-item prompts, choice log-likelihoods, responses, extracted
//! answers and metrics equal those lm-eval 0.4.13 computed on the same model
//! (scripts/lmeval_golden.py → golden.json). Plus the errors a user meets.
mod common;

use std::path::{Path, PathBuf};

use common::{fails, ok};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/harness")
}

fn read(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Log-likelihoods agree to f32 noise (sums of a few log-probs of a 135M model; PyTorch's and
/// our kernels accumulate in different orders).
const LL_TOL: f64 = 2e-3;

#[test]
fn smollm2_matches_lm_evaluation_harness() {
    let Some(gguf) = std::env::var_os("UNLEARN_SMOLLM2_GGUF") else {
        eprintln!("skipping: set UNLEARN_SMOLLM2_GGUF");
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    ok(&["import", &gguf.to_string_lossy(), "--out", "smol"], p);
    let golden = read(&fixtures().join("golden.json"));
    let max_gen = golden["max_gen_toks"].as_u64().unwrap().to_string();
    for (task, g) in golden["tasks"].as_object().unwrap() {
        let data = fixtures().join(task);
        let out = format!("ev_{task}");
        let shots = format!("num_fewshot={}", g["num_fewshot"]);
        let gen = format!("max_gen_toks={max_gen}");
        ok(
            &[
                "eval",
                "--model",
                "smol",
                "--benchmark",
                task,
                "--data",
                &data.to_string_lossy(),
                "--out",
                &out,
                "--set",
                &shots,
                "--set",
                &gen,
            ],
            p,
        );
        let ours = read(&p.join(&out).join(format!("{task}_EVAL.json")));
        let (gs, os) = (
            g["samples"].as_array().unwrap(),
            ours["samples"].as_array().unwrap(),
        );
        assert_eq!(gs.len(), os.len(), "{task}: number of documents");
        for (a, b) in gs.iter().zip(os) {
            assert_eq!(a["doc_id"], b["doc_id"], "{task}");
            assert_eq!(
                a["context"], b["context"],
                "{task} doc {}: prompt",
                a["doc_id"]
            );
            if let Some(ll) = a["loglikelihoods"].as_array() {
                let mine = b["loglikelihoods"].as_array().unwrap();
                assert_eq!(ll.len(), mine.len());
                for (x, y) in ll.iter().zip(mine) {
                    let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                    assert!(
                        (x - y).abs() < LL_TOL,
                        "{task} doc {}: log-likelihood {y} vs lm-eval {x}",
                        a["doc_id"]
                    );
                }
                assert_eq!(a["acc"], b["acc"], "{task} doc {}", a["doc_id"]);
                if !a["acc_norm"].is_null() {
                    assert_eq!(a["acc_norm"], b["acc_norm"], "{task} doc {}", a["doc_id"]);
                }
            } else {
                assert_eq!(a["response"], b["response"], "{task} doc {}", a["doc_id"]);
                assert_eq!(a["filtered"], b["filtered"], "{task} doc {}", a["doc_id"]);
            }
        }
        for (k, v) in g["results"].as_object().unwrap() {
            if !(k.contains(',')) {
                continue; // lm-eval's bookkeeping (name, sample_len)
            }
            let (x, y) = (v.as_f64().unwrap(), ours["results"][k].as_f64());
            let y = y.unwrap_or_else(|| panic!("{task}: no {k} in our results"));
            assert!((x - y).abs() < 1e-9, "{task}: {k} {y} vs lm-eval {x}");
        }
    }
}

/// Bad input: one line naming the problem, no output written.
#[test]
fn harness_errors_name_the_problem() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    common::init_tiny(p, &[]);
    let mmlu = fixtures().join("mmlu");
    let m = mmlu.to_string_lossy();
    let e = fails(
        &[
            "eval",
            "--model",
            "tiny",
            "--benchmark",
            "mmlu",
            "--out",
            "o1",
        ],
        p,
    );
    assert!(e.contains("needs --data"), "{e}");
    let e = fails(
        &[
            "eval",
            "--model",
            "tiny",
            "--benchmark",
            "mmlu",
            "--data",
            &m,
            "--out",
            "o2",
            "--set",
            "split=validation",
        ],
        p,
    );
    assert!(
        e.contains("no `validation` split") && e.contains("dev, test"),
        "{e}"
    );
    let e = fails(
        &[
            "eval",
            "--model",
            "tiny",
            "--benchmark",
            "mmlu",
            "--data",
            &m,
            "--out",
            "o3",
            "--set",
            "num_fewshot=5",
        ],
        p,
    );
    assert!(
        e.contains("5 few-shot examples") && e.contains("for `"),
        "{e}"
    );
    let e = fails(
        &[
            "eval",
            "--model",
            "tiny",
            "--benchmark",
            "wmdp_bio",
            "--data",
            &m,
            "--out",
            "o4",
            "--set",
            "num_fewshot=1",
        ],
        p,
    );
    assert!(e.contains("takes no few-shot"), "{e}");
    // a row in the wrong layout names the file and the row
    let bad = p.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("test.jsonl"),
        "{\"question\": \"q\", \"choices\": [\"a\"], \"answer\": 0}\n",
    )
    .unwrap();
    let e = fails(
        &[
            "eval",
            "--model",
            "tiny",
            "--benchmark",
            "wmdp_bio",
            "--data",
            "bad",
            "--out",
            "o5",
        ],
        p,
    );
    assert!(
        e.contains("test.jsonl") && e.contains("row 0") && e.contains("not 4"),
        "{e}"
    );
    let e = fails(
        &[
            "eval",
            "--model",
            "tiny",
            "--benchmark",
            "tofu",
            "--data",
            "bad",
            "--out",
            "o6",
        ],
        p,
    );
    assert!(e.contains("--data is for the general-ability tasks"), "{e}");
    // bad data is found before anything is written: no output directory at all
    for o in ["o1", "o2", "o3", "o4", "o5", "o6"] {
        assert!(!p.join(o).exists(), "{o}");
    }
}

/// A tiny model on every task: the files are written with lm-eval's keys, `limit` is seeded and
/// stated, and a rerun gives identical numbers.
#[test]
fn harness_runs_every_task_on_a_tiny_model() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    common::init_tiny(p, &[]);
    for (task, keys) in [
        ("mmlu", &["acc,none", "acc_stderr,none"][..]),
        ("arc_challenge", &["acc,none", "acc_norm,none"][..]),
        ("truthfulqa_mc1", &["acc,none"][..]),
        ("wmdp_bio", &["acc,none"][..]),
        (
            "gsm8k",
            &[
                "exact_match,strict-match",
                "exact_match,flexible-extract",
                "answer_words,none",
            ][..],
        ),
        (
            "triviaqa",
            &["exact_match,remove_whitespace", "answer_words,none"][..],
        ),
    ] {
        let data = fixtures().join(task);
        let shots = if task == "gsm8k" {
            "num_fewshot=1"
        } else {
            "num_fewshot=0"
        };
        let mut v = vec![];
        for out in ["a", "b"] {
            let out = format!("{task}_{out}");
            ok(
                &[
                    "eval",
                    "--model",
                    "tiny",
                    "--benchmark",
                    task,
                    "--data",
                    &data.to_string_lossy(),
                    "--out",
                    &out,
                    "--set",
                    shots,
                    "--set",
                    "max_gen_toks=8",
                    "--set",
                    "limit=3",
                ],
                p,
            );
            let e = read(&p.join(&out).join(format!("{task}_EVAL.json")));
            assert_eq!(e["limit"]["n_evaluated"], 3, "{task}");
            assert_eq!(e["limit"]["sample"], "seeded", "{task}");
            for k in keys {
                assert!(
                    e["results"][k].is_number(),
                    "{task}: {k} in {}",
                    e["results"]
                );
            }
            let s = read(&p.join(&out).join(format!("{task}_SUMMARY.json")));
            assert!(s.get("acc_stderr,none").is_none());
            v.push(e["results"].clone());
        }
        assert_eq!(v[0], v[1], "{task}: rerun differs");
    }
}
