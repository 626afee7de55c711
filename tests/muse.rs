//! `unlearn eval --benchmark muse` on data the test writes in the MUSE layout (a folder per
//! config, JSON lines and a JSON array): a model that memorised the forget texts continues them
//! (VerbMem up) and tells them from holdout texts (Min-K% AUC far from ½), PrivLeak follows its
//! formula against the retain model's log, and bad input gets one-line errors.
mod common;

use std::path::Path;

use common::{fails, init_tiny, ok};
use serde_json::{json, Value};

const FORGET: [&str; 4] = [
    "The keeper counted ninety ships.",
    "Marisol wrote in a cabin.",
    "Ebbridge bells ring twice.",
    "The glass bridge took a year.",
];
const HOLDOUT: [&str; 4] = [
    "A bakery sells bird bread.",
    "The museum wing is closed.",
    "Students found an old map.",
    "Pears filled the market.",
];

fn jsonl(p: &Path, rows: &[Value]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
}

fn write_muse(d: &Path) {
    let verb: Vec<Value> = FORGET
        .iter()
        .map(|t| {
            // the first two words prompt the rest
            let cut = t.match_indices(' ').nth(1).unwrap().0;
            json!({"prompt": &t[..cut], "gt": &t[cut + 1..]})
        })
        .collect();
    jsonl(&d.join("verbmem/forget.jsonl"), &verb);
    let qa = |q: &str, a: &str| json!({"question": q, "answer": a});
    jsonl(
        &d.join("knowmem/forget_qa.jsonl"),
        &[
            qa("How many ships did the keeper count?", "ninety"),
            qa("Where did Marisol write?", "in a cabin"),
        ],
    );
    jsonl(
        &d.join("knowmem/forget_qa_icl.jsonl"),
        &[qa("What colour is snow?", "white")],
    );
    // the retain QA as a JSON array
    std::fs::write(
        d.join("knowmem/retain_qa.json"),
        json!([qa("What does the bakery sell?", "bread shaped like birds")]).to_string(),
    )
    .unwrap();
    jsonl(
        &d.join("privleak/forget.jsonl"),
        &FORGET
            .iter()
            .map(|t| json!({"text": t}))
            .collect::<Vec<_>>(),
    );
    jsonl(
        &d.join("privleak/holdout.jsonl"),
        &HOLDOUT
            .iter()
            .map(|t| json!({"text": t}))
            .collect::<Vec<_>>(),
    );
}

fn read(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn muse_metrics_follow_memorisation() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    init_tiny(p, &[]);
    write_muse(&p.join("muse"));
    let texts: String = FORGET
        .iter()
        .map(|t| format!("{}\n", json!({"text": t})))
        .collect();
    std::fs::write(p.join("texts.jsonl"), texts).unwrap();
    // memorised as bare text (the plain prompt: MUSE prompts carry no chat template)
    ok(
        &[
            "finetune",
            "--model",
            "tiny",
            "--data",
            "texts.jsonl",
            "--out",
            "mem",
            "--set",
            "lr=3e-3",
            "--set",
            "epochs=150",
            "--set",
            "batch_size=4",
            "--set",
            "prompt=plain",
        ],
        p,
    );
    let ev = |model: &str, out: &str, extra: &[&str]| -> Value {
        let mut a = vec![
            "eval",
            "--model",
            model,
            "--benchmark",
            "muse",
            "--data",
            "muse",
            "--out",
            out,
            "--set",
            "verbmem_max_new_tokens=24",
            "--set",
            "knowmem_max_new_tokens=8",
        ];
        a.extend_from_slice(extra);
        ok(&a, p);
        read(&p.join(out).join("MUSE_EVAL.json"))
    };
    let before = ev("tiny", "ev_tiny", &[]);
    let after = ev(
        "mem",
        "ev_mem",
        &["--retain-logs", "ev_tiny/MUSE_EVAL.json"],
    );
    let v = |e: &Value, k: &str| e[k]["agg_value"].as_f64().unwrap();
    assert!(
        v(&after, "forget_verbmem_ROUGE") > v(&before, "forget_verbmem_ROUGE") + 0.5,
        "verbmem {} -> {}",
        v(&before, "forget_verbmem_ROUGE"),
        v(&after, "forget_verbmem_ROUGE")
    );
    let auc = v(&after, "mia_min_k");
    assert!(
        (auc - 0.5).abs() >= 0.4,
        "memorised texts are told from holdout: auc {auc}"
    );
    let ret = v(&before, "mia_min_k");
    let pl = v(&after, "privleak");
    let want = ((1.0 - auc) - (1.0 - ret)) / (1.0 - ret + 1e-10) * 100.0;
    assert!((pl - want).abs() < 1e-9, "{pl} vs {want}");
    assert!(before["privleak"]["skipped"].is_string());
    for k in ["forget_knowmem_ROUGE", "retain_knowmem_ROUGE"] {
        let x = v(&after, k);
        assert!((0.0..=1.0).contains(&x), "{k} {x}");
    }
    // the in-context example precedes each question; the answer is cut at a new question
    let g = after["forget_knowmem_ROUGE"]["value_by_index"]["0"]["generation"]
        .as_str()
        .unwrap();
    assert!(!g.contains("Question:") && !g.contains("\n\n"), "{g:?}");
    // a rerun gives the same numbers
    let again = ev(
        "mem",
        "ev_mem2",
        &["--retain-logs", "ev_tiny/MUSE_EVAL.json"],
    );
    let s = |e: &Value| -> Vec<Value> {
        [
            "forget_verbmem_ROUGE",
            "forget_knowmem_ROUGE",
            "mia_min_k",
            "privleak",
        ]
        .iter()
        .map(|k| e[k]["agg_value"].clone())
        .collect()
    };
    assert_eq!(s(&after), s(&again));
}

#[test]
fn muse_bad_input_is_named() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    init_tiny(p, &[]);
    let e = fails(
        &[
            "eval",
            "--model",
            "tiny",
            "--benchmark",
            "muse",
            "--out",
            "o",
        ],
        p,
    );
    assert!(e.contains("needs --data"), "{e}");
    std::fs::create_dir_all(p.join("empty")).unwrap();
    let e = fails(
        &[
            "eval",
            "--model",
            "tiny",
            "--benchmark",
            "muse",
            "--data",
            "empty",
            "--out",
            "o",
        ],
        p,
    );
    assert!(e.contains("no MUSE data"), "{e}");
    jsonl(
        &p.join("bad/verbmem/forget.jsonl"),
        &[json!({"prompt": "a"})],
    );
    let e = fails(
        &[
            "eval",
            "--model",
            "tiny",
            "--benchmark",
            "muse",
            "--data",
            "bad",
            "--out",
            "o",
        ],
        p,
    );
    assert!(
        e.contains("forget.jsonl") && e.contains("row 0 has no string `gt`"),
        "{e}"
    );
    let e = fails(
        &[
            "eval",
            "--model",
            "tiny",
            "--benchmark",
            "muse",
            "--data",
            "bad",
            "--out",
            "o",
            "--set",
            "min_k=0",
        ],
        p,
    );
    assert!(e.contains("min_k"), "{e}");
    // bad data is found before anything is written: no output directory at all
    assert!(!p.join("o").exists());
    jsonl(&p.join("empty_split/verbmem/forget.jsonl"), &[]);
    let e = fails(
        &[
            "eval",
            "--model",
            "tiny",
            "--benchmark",
            "muse",
            "--data",
            "empty_split",
            "--out",
            "o",
        ],
        p,
    );
    assert!(e.contains("verbmem/forget split has no rows"), "{e}");
    // a whole-file problem names the file without a line number (no `file:0:`)
    assert!(e.contains("forget.jsonl: the") && !e.contains(":0:"), "{e}");
    assert!(!p.join("o").exists());
}
