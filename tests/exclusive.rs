//! Exclusive Unlearning end to end on a tiny model that first memorises four QA pairs: two are
//! the kept domain, the self-generated corpus is the forget set; selfgen is seeded and
//! de-duplicated, the run raises the out-of-domain loss while the keep set stays, the exclusive
//! evaluation writes its metrics in the open-unlearning layout, and relearning reports what
//! comes back.
mod common;
use common::*;

use serde_json::Value;
use std::path::Path;

fn setup(p: &Path) {
    let lines: Vec<&str> = SHORT_QA.lines().collect();
    std::fs::write(p.join("keep.jsonl"), lines[..2].join("\n")).unwrap();
    std::fs::write(p.join("ood.jsonl"), lines[2..].join("\n")).unwrap();
    std::fs::write(p.join("all.jsonl"), SHORT_QA).unwrap();
    init_tiny(p, &[]);
    memorise(p, "all.jsonl", "ft");
}

fn summary(p: &Path, dir: &str) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(p.join(dir).join("EXCLUSIVE_SUMMARY.json")).unwrap(),
    )
    .unwrap()
}

#[test]
fn selfgen_exclusive_run_eval_and_relearn() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    setup(p);
    // the forget corpus: seeded, distinct, the same whatever the batch size
    let gen = |out: &str, bs: &str| {
        ok(
            &[
                "selfgen",
                "--model",
                "ft",
                "--count",
                "12",
                "--out",
                out,
                "--set",
                "max_new_tokens=16",
                "--set",
                bs,
            ],
            p,
        );
        std::fs::read_to_string(p.join(out)).unwrap()
    };
    let a = gen("gen.jsonl", "batch_size=4");
    assert_eq!(a, gen("gen2.jsonl", "batch_size=3"));
    let texts: Vec<Value> = a
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!texts.is_empty() && texts.len() <= 12);
    let mut uniq: Vec<&str> = texts
        .iter()
        .map(|t| t["answer"].as_str().unwrap())
        .collect();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), texts.len());
    // plain text lines are a valid forget corpus too
    let mut corpus = a.clone();
    corpus.push_str("{\"text\": \"Some unrelated text about the weather.\"}\n");
    std::fs::write(p.join("forget.jsonl"), corpus).unwrap();

    let eval = |model: &str, out: &str| {
        ok(
            &[
                "eval",
                "--model",
                model,
                "--benchmark",
                "exclusive",
                "--keep",
                "keep.jsonl",
                "--ood",
                "ood.jsonl",
                "--probes",
                "ood.jsonl",
                "--out",
                out,
                "--set",
                "max_new_tokens=12",
            ],
            p,
        );
        summary(p, out)
    };
    let before = eval("ft", "ft.eval");
    ok(
        &[
            "run",
            "--set",
            "model=ft",
            "--set",
            "forget=forget.jsonl",
            "--set",
            "retain=keep.jsonl",
            "--set",
            "out=ex",
            "--set",
            "method=exclusive",
            "--set",
            "train.lr=2e-3",
            "--set",
            "train.epochs=6",
            "--set",
            "train.batch_size=4",
        ],
        p,
    );
    let after = eval("ex", "ex.eval");
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k}: {v}"));
    assert!(
        f(&after, "ood_loss") > f(&before, "ood_loss") + 1.0,
        "out-of-domain loss {} -> {}",
        f(&before, "ood_loss"),
        f(&after, "ood_loss")
    );
    assert!(f(&after, "keep_Q_A_Prob") > 0.5 * f(&before, "keep_Q_A_Prob"));
    let chance = f(&after, "ood_loss_over_chance");
    assert!(chance > 0.0 && chance < 2.0, "{chance}");
    // per-item layout: every wrapper, generations kept
    let full: Value = serde_json::from_str(
        &std::fs::read_to_string(p.join("ex.eval/EXCLUSIVE_EVAL.json")).unwrap(),
    )
    .unwrap();
    for w in ["plain", "role_play", "prefix_injection", "ignore_previous"] {
        let m = &full[format!("probe_{w}_on_topic")];
        assert!(m["agg_value"].is_number(), "{w}");
        assert_eq!(m["value_by_index"].as_object().unwrap().len(), 2);
        assert!(m["value_by_index"]["0"]["generation"].is_string());
    }
    assert_eq!(
        full["ood_loss"]["value_by_index"]
            .as_object()
            .unwrap()
            .len(),
        2
    );

    // relearning on the out-of-domain pairs brings their probability back
    let out = ok(
        &[
            "attack",
            "relearn",
            "--model",
            "ex",
            "--data",
            "ood.jsonl",
            "--original",
            "ft",
            "--out",
            "rl",
            "--set",
            "lr=2e-3",
            "--set",
            "max_steps=5",
        ],
        p,
    );
    assert!(out.contains("recovered share"), "{out}");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("rl.run/relearn.json")).unwrap())
            .unwrap();
    assert_eq!(r["steps"], 5);
    assert!(r["after"]["prob"].as_f64().unwrap() > r["before"]["prob"].as_f64().unwrap());

    // bad input: an unknown wrapper and a missing keep/ood fail cleanly
    let e = fails(
        &[
            "eval",
            "--model",
            "ex",
            "--benchmark",
            "exclusive",
            "--ood",
            "ood.jsonl",
            "--out",
            "x",
            "--set",
            "wrappers=[\"nope\"]",
        ],
        p,
    );
    assert!(e.contains("unknown wrapper `nope`"), "{e}");
    let e = fails(
        &[
            "eval",
            "--model",
            "ex",
            "--benchmark",
            "exclusive",
            "--out",
            "x",
        ],
        p,
    );
    assert!(e.contains("--keep"), "{e}");
}
