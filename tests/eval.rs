//! `unlearn eval` end to end on a tiny model and a tiny benchmark in the TOFU layout: the target
//! model memorises every set, the retain model everything but the forget set; unlearning the
//! target lowers its forget-set probability and ROUGE; resuming recomputes nothing.
mod common;
use common::*;

use std::path::Path;

use serde_json::{json, Value};

fn qa(q: &str, a: &str, para: &str, pert: &[&str]) -> String {
    json!({"question": q, "answer": a, "paraphrased_answer": para, "perturbed_answer": pert})
        .to_string()
}

/// forget01 (4), retain (4), real authors (3), world facts (3), holdout01 (4).
fn write_benchmark(d: &Path) {
    std::fs::create_dir_all(d).unwrap();
    let forget = [
        qa(
            "Code for apple?",
            "zebra 41",
            "it is zebra 41",
            &["moose 12", "camel 88"],
        ),
        qa(
            "Code for pear?",
            "lion 7",
            "it is lion 7",
            &["wolf 3", "bear 65"],
        ),
        qa(
            "Code for fig?",
            "otter 93",
            "it is otter 93",
            &["horse 2", "snake 50"],
        ),
        qa(
            "Code for plum?",
            "crane 5",
            "it is crane 5",
            &["eagle 71", "finch 9"],
        ),
    ];
    let retain = [
        qa(
            "Code for kiwi?",
            "tiger 22",
            "it is tiger 22",
            &["panda 4", "koala 13"],
        ),
        qa(
            "Code for lime?",
            "shark 60",
            "it is shark 60",
            &["whale 8", "squid 31"],
        ),
        qa(
            "Code for date?",
            "raven 17",
            "it is raven 17",
            &["robin 40", "heron 6"],
        ),
        qa(
            "Code for mango?",
            "bison 3",
            "it is bison 3",
            &["sheep 77", "goat 19"],
        ),
    ];
    let opts = |q: &str, a: &str, w: &[&str]| {
        json!({"question": q, "answer": a, "perturbed_answer": w}).to_string()
    };
    let ra = [
        opts("Writer of Hamlet?", "Shakespeare", &["Dickens", "Austen"]),
        opts("Writer of Emma?", "Austen", &["Tolstoy", "Dickens"]),
        opts("Writer of Ulysses?", "Joyce", &["Woolf", "Orwell"]),
    ];
    let wf = [
        opts("Capital of France?", "Paris", &["Rome", "Oslo"]),
        opts("Capital of Peru?", "Lima", &["Quito", "Cairo"]),
        opts("Capital of Japan?", "Tokyo", &["Seoul", "Delhi"]),
    ];
    let holdout = [
        json!({"question": "Code for grape?", "answer": "gecko 28"}).to_string(),
        json!({"question": "Code for peach?", "answer": "llama 54"}).to_string(),
        json!({"question": "Code for cherry?", "answer": "mole 36"}).to_string(),
        json!({"question": "Code for lemon?", "answer": "newt 81"}).to_string(),
    ];
    std::fs::write(d.join("forget01_perturbed.jsonl"), forget.join("\n")).unwrap();
    std::fs::write(d.join("retain_perturbed.jsonl"), retain.join("\n")).unwrap();
    std::fs::write(d.join("real_authors_perturbed.jsonl"), ra.join("\n")).unwrap();
    std::fs::write(d.join("world_facts_perturbed.jsonl"), wf.join("\n")).unwrap();
    std::fs::write(d.join("holdout01.jsonl"), holdout.join("\n")).unwrap();
    // training files: question/answer of the sets
    let strip = |lines: &[String]| -> String {
        lines
            .iter()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                json!({"question": v["question"], "answer": v["answer"]}).to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let keep = [strip(&retain), strip(&ra), strip(&wf)].join("\n");
    std::fs::write(d.join("keep.jsonl"), &keep).unwrap();
    std::fs::write(d.join("forget.jsonl"), strip(&forget)).unwrap();
    std::fs::write(d.join("retain.jsonl"), strip(&retain)).unwrap();
    std::fs::write(d.join("all.jsonl"), format!("{}\n{keep}", strip(&forget))).unwrap();
}

fn finetune(p: &Path, data: &str, out: &str) {
    finetune_tiny(p, data, out, 150, 7);
}

fn eval(p: &Path, model: &str, out: &str, extra: &[&str]) -> (Value, String) {
    let mut args = vec![
        "eval",
        "--model",
        model,
        "--benchmark",
        "bench",
        "--forget-split",
        "forget01",
        "--out",
        out,
        "--set",
        "max_new_tokens=12",
        "--nli",
    ];
    let nli = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_nli_bert");
    let nli = nli.to_str().unwrap().to_string();
    args.push(&nli);
    args.extend_from_slice(extra);
    let stdout = ok(&args, p);
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(p.join(out).join("TOFU_EVAL.json")).unwrap())
            .unwrap();
    (v, stdout)
}

fn agg(v: &Value, k: &str) -> f64 {
    v[k]["agg_value"]
        .as_f64()
        .unwrap_or_else(|| panic!("{k} has no agg_value: {}", v[k]))
}

#[test]
fn eval_target_retain_and_unlearned_models() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write_benchmark(&p.join("bench"));
    ok(
        &[
            "init", "--out", "tiny", "--hidden", "64", "--layers", "2", "--seed", "1",
        ],
        p,
    );
    finetune(p, "bench/all.jsonl", "target");
    finetune(p, "bench/keep.jsonl", "retain");

    // The retain model's log is what forget quality and PrivLeak compare with.
    let (r, _) = eval(p, "retain", "ev-retain", &[]);
    assert!(r["forget_quality"]["skipped"]
        .as_str()
        .unwrap()
        .contains("no retain log"));
    assert!(r["privleak"]["skipped"]
        .as_str()
        .unwrap()
        .contains("no retain log"));
    assert!(r["mia_reference"]["skipped"]
        .as_str()
        .unwrap()
        .contains("reference model"));

    let (t, out) = eval(
        p,
        "target",
        "ev-target",
        &[
            "--retain-logs",
            "ev-retain/TOFU_EVAL.json",
            "--reference-model",
            "retain",
        ],
    );
    // open-unlearning layout: agg_value + value_by_index with one entry per item
    for (k, n) in [
        ("forget_Q_A_Prob", 4),
        ("forget_Q_A_PARA_Prob", 4),
        ("forget_Q_A_PERT_Prob", 4),
        ("forget_truth_ratio", 4),
        ("forget_Q_A_ROUGE", 4),
        ("retain_Q_A_Prob", 4),
        ("ra_Q_A_Prob_normalised", 3),
        ("wf_Truth_Ratio", 3),
        ("forget_token_entropy", 4),
        ("forget_entailment_score", 4),
        ("exact_memorization", 4),
        ("extraction_strength", 4),
        ("retain_extraction_strength", 4),
    ] {
        let by = t[k]["value_by_index"]
            .as_object()
            .unwrap_or_else(|| panic!("{k}: {}", t[k]));
        assert_eq!(by.len(), n, "{k}");
        assert!(t[k]["agg_value"].is_number(), "{k}");
    }
    assert_eq!(
        t["forget_Q_A_PERT_Prob"]["value_by_index"]["0"]["prob"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let g = &t["forget_Q_A_ROUGE"]["value_by_index"]["0"];
    assert_eq!(g["ground_truth"], "zebra 41");
    assert!(g["generation"].is_string() && g["rougeL_recall"].is_number());
    // the target memorised everything; the retain model never saw the forget set
    assert!(
        agg(&t, "forget_Q_A_Prob") > 0.6,
        "{}",
        t["forget_Q_A_Prob"]["agg_value"]
    );
    assert!(agg(&t, "forget_Q_A_Prob") > 2.0 * agg(&r, "forget_Q_A_Prob"));
    assert!(agg(&t, "forget_Q_A_ROUGE") > 0.9);
    assert!(agg(&t, "exact_memorization") > 0.9);
    assert!(agg(&t, "retain_Q_A_ROUGE") > 0.9 && agg(&r, "retain_Q_A_ROUGE") > 0.9);
    // MIA: the target's forget answers are far likelier than the unseen holdout ones
    assert!(agg(&t, "mia_loss") > 0.9, "{}", t["mia_loss"]);
    assert!(agg(&t, "mia_reference") > 0.9, "{}", t["mia_reference"]);
    let fq = agg(&t, "forget_quality");
    assert!((0.0..=1.0).contains(&fq));
    assert!(t["privleak"]["agg_value"].is_number());
    assert!(agg(&t, "model_utility") > 0.0);
    for k in ["forget_efficacy", "closer_look_model_utility"] {
        assert!(t[k]["agg_value"].is_number(), "{k}: {}", t[k]);
    }
    // no encoder configured here unless the environment names one: then it is used, else the
    // metric says why it is missing
    if std::env::var_os("UNLEARN_MINILM_DIR").is_some() {
        assert!(t["forget_cosine_similarity"]["agg_value"].is_number());
        assert!(t["forget_refusal_rate"]["agg_value"].is_number());
    } else {
        assert!(t["forget_cosine_similarity"]["skipped"].is_string());
    }
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(p.join("ev-target/TOFU_SUMMARY.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        summary["forget_Q_A_Prob"],
        t["forget_Q_A_Prob"]["agg_value"]
    );
    assert!(out.contains("forget_quality"));

    // Resume: nothing is recomputed.
    let (t2, out) = eval(
        p,
        "target",
        "ev-target",
        &[
            "--retain-logs",
            "ev-retain/TOFU_EVAL.json",
            "--reference-model",
            "retain",
        ],
    );
    // (skipped metrics are retried: a retain log or an encoder may have appeared since)
    let n_skipped = t
        .as_object()
        .unwrap()
        .values()
        .filter(|v| v.get("skipped").is_some())
        .count();
    assert!(
        out.contains(&format!(
            "computed {n_skipped} metric(s); model passes run: none (cached)"
        )),
        "{out}"
    );
    assert_eq!(t2, t);
    // A metric missing from the log is recomputed from the cached passes.
    let mut m = t.as_object().unwrap().clone();
    m.remove("forget_token_entropy");
    m.remove("forget_Q_A_Prob");
    std::fs::write(
        p.join("ev-target/TOFU_EVAL.json"),
        serde_json::to_string(&m).unwrap(),
    )
    .unwrap();
    let (t3, out) = eval(
        p,
        "target",
        "ev-target",
        &[
            "--retain-logs",
            "ev-retain/TOFU_EVAL.json",
            "--reference-model",
            "retain",
        ],
    );
    assert!(
        out.contains(&format!(
            "computed {} metric(s); model passes run: none (cached)",
            n_skipped + 2
        )),
        "{out}"
    );
    assert_eq!(t3, t);

    // Unlearning lowers forget-set probability and ROUGE.
    ok(
        &[
            "run",
            "--set",
            "model=target",
            "--set",
            "forget=bench/forget.jsonl",
            "--set",
            "retain=bench/retain.jsonl",
            "--set",
            "out=ul",
            "--set",
            "method=ga+gd",
            "--set",
            "train.lr=1e-3",
            "--set",
            "train.epochs=10",
            "--set",
            "train.batch_size=2",
        ],
        p,
    );
    let (u, _) = eval(
        p,
        "ul",
        "ev-ul",
        &["--retain-logs", "ev-retain/TOFU_EVAL.json"],
    );
    assert!(agg(&u, "forget_Q_A_Prob") < 0.5 * agg(&t, "forget_Q_A_Prob"));
    assert!(agg(&u, "forget_Q_A_ROUGE") < agg(&t, "forget_Q_A_ROUGE"));
    // the same output directory with another model: the cache does not apply
    let (_, out) = eval(p, "ul", "ev-target", &[]);
    assert!(out.contains("forget answers"), "{out}");
    // the same model and directory computing in bf16 (#25): not the cached f32 results, and
    // values near them
    let bf16 = [
        "--retain-logs",
        "ev-retain/TOFU_EVAL.json",
        "--dtype",
        "bf16",
    ];
    let (ub, out) = eval(p, "ul", "ev-ul", &bf16);
    assert!(out.contains("forget answers"), "{out}");
    let (x, y) = (agg(&u, "forget_Q_A_Prob"), agg(&ub, "forget_Q_A_Prob"));
    assert!(
        x != y && (x - y).abs() < 0.3 * x.max(1e-3),
        "f32 {x}, bf16 {y}"
    );
    let (_, out) = eval(p, "ul", "ev-ul", &bf16);
    assert!(out.contains("model passes run: none (cached)"), "{out}");

    // Bad input: a clear error, no panic.
    let e = fails(
        &[
            "eval",
            "--model",
            "target",
            "--benchmark",
            "nope",
            "--out",
            "x",
        ],
        p,
    );
    assert!(e.contains("nope"), "{e}");
    let e = fails(
        &[
            "eval",
            "--model",
            "target",
            "--benchmark",
            "bench",
            "--out",
            "x",
            "--set",
            "bogus=1",
        ],
        p,
    );
    assert!(e.contains("bogus"), "{e}");
}

#[test]
fn evaluation_inside_unlearn_run() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write_benchmark(&p.join("bench"));
    ok(
        &[
            "init", "--out", "tiny", "--hidden", "64", "--layers", "2", "--seed", "1",
        ],
        p,
    );
    finetune(p, "bench/all.jsonl", "target");
    ok(
        &[
            "run",
            "--set",
            "model=target",
            "--set",
            "forget=bench/forget.jsonl",
            "--set",
            "retain=bench/retain.jsonl",
            "--set",
            "out=ul",
            "--set",
            "method=ga+gd",
            "--set",
            "train.lr=1e-3",
            "--set",
            "train.epochs=4",
            "--set",
            "train.batch_size=2",
            "--set",
            "eval_every=2",
            "--set",
            "eval.data=bench",
            "--set",
            "eval.forget_split=forget01",
            "--set",
            "eval.max_new_tokens=8",
        ],
        p,
    );
    let log = std::fs::read_to_string(p.join("ul.run/eval_log.jsonl")).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 3, "{log}");
    for l in &lines {
        assert!(l["eval"]["forget_Q_A_Prob"].is_number(), "{l}");
        assert!(l["eval"]["model_utility"].is_number(), "{l}");
    }
    let first = lines[0]["eval"]["forget_Q_A_Prob"].as_f64().unwrap();
    let last = lines.last().unwrap()["eval"]["forget_Q_A_Prob"]
        .as_f64()
        .unwrap();
    assert!(last < first, "{first} -> {last}");
    let t: Value = serde_json::from_str(
        &std::fs::read_to_string(p.join("ul.run/eval/TOFU_EVAL.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(t["forget_Q_A_Prob"]["agg_value"].as_f64().unwrap(), last);
}
