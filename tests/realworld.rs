//! The closer-look real-world scenario's pieces (#26): `unlearn answers` makes the model's own
//! answers the training targets (golden answers and every other field kept), and evaluation
//! reads the golden answers back (`answer_field`) with the neighbour set as the retain set
//! (`retain_split`); a cached evaluation is not reused when `answer_field` changes.
mod common;

use common::{fails, init_tiny, ok};
use serde_json::{json, Value};

fn rows(p: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn self_answers_train_golden_answers_evaluate() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    init_tiny(p, &[]);
    let people: Vec<Value> = (0..4)
        .map(|i| {
            json!({"name": format!("Person {i}"), "question": format!("Where was person {i} born?"),
                   "answer": format!("Person {i} was born in town {i}."),
                   "golden_answer": format!("Town {i}."), "task_id": i / 2 + 1})
        })
        .collect();
    let text: String = people.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(p.join("forget.jsonl"), &text).unwrap();
    // a random model answers with end-of-sequence at once: that is refused as nothing to write
    let e = fails(
        &[
            "answers",
            "--model",
            "tiny",
            "--data",
            "forget.jsonl",
            "--out",
            "none.jsonl",
            "--set",
            "max_new_tokens=6",
        ],
        p,
    );
    assert!(
        e.contains("every question was empty") && !p.join("none.jsonl").exists(),
        "{e}"
    );
    // a model that says something else than the rows' answers
    let own: String = (0..4)
        .map(|i| {
            format!(
                "{}\n",
                json!({"question": format!("Where was person {i} born?"),
                                       "answer": format!("Far {i}")})
            )
        })
        .collect();
    std::fs::write(p.join("own.jsonl"), own).unwrap();
    common::memorise(p, "own.jsonl", "ft");
    let out = ok(
        &[
            "answers",
            "--model",
            "ft",
            "--data",
            "forget.jsonl",
            "--out",
            "self.jsonl",
            "--set",
            "max_new_tokens=6",
        ],
        p,
    );
    assert!(out.contains("answers in"), "{out}");
    let got = rows(&p.join("self.jsonl"));
    assert_eq!(got.len(), 4);
    for r in &got {
        let i = people
            .iter()
            .position(|x| x["question"] == r["question"])
            .unwrap();
        // the random model's answer replaced the row's; everything else is as it was
        assert_ne!(r["answer"], people[i]["answer"]);
        for k in ["golden_answer", "task_id", "name"] {
            assert_eq!(r[k], people[i][k], "{k}");
        }
    }
    // the output is the user's: not replaced without --overwrite
    let e = fails(
        &[
            "answers",
            "--model",
            "ft",
            "--data",
            "forget.jsonl",
            "--out",
            "self.jsonl",
        ],
        p,
    );
    assert!(e.contains("self.jsonl"), "{e}");
    let e = fails(
        &[
            "answers",
            "--model",
            "tiny",
            "--data",
            "nothing.jsonl",
            "--out",
            "x.jsonl",
        ],
        p,
    );
    assert!(e.contains("nothing.jsonl"), "{e}");

    // evaluation with golden answers and the neighbour set as the retain set
    let b = p.join("bench");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join("forget_perturbed.jsonl"), &text).unwrap();
    let neighbours: String = (0..3)
        .map(|i| {
            format!(
                "{}\n",
                json!({"question": format!("What does neighbour {i} do?"),
                       "answer": format!("Neighbour {i} said a long answer."),
                       "golden_answer": format!("Job {i}.")})
            )
        })
        .collect();
    std::fs::write(b.join("neighbor_perturbed.jsonl"), neighbours).unwrap();
    let ev = |out: &str, field: bool| {
        let mut a = vec![
            "eval",
            "--model",
            "tiny",
            "--benchmark",
            "bench",
            "--forget-split",
            "forget",
            "--out",
            out,
            "--set",
            "max_new_tokens=4",
            "--set",
            "retain_split=\"neighbor\"",
            "--set",
            "sets=[\"forget\",\"retain\"]",
        ];
        if field {
            a.extend(["--set", "answer_field=\"golden_answer\""]);
        }
        ok(&a, p);
        let e: Value = serde_json::from_str(
            &std::fs::read_to_string(p.join(out).join("TOFU_EVAL.json")).unwrap(),
        )
        .unwrap();
        e
    };
    let e = ev("ev", true);
    assert_eq!(
        e["forget_Q_A_ROUGE"]["value_by_index"]["0"]["ground_truth"],
        "Town 0."
    );
    assert_eq!(
        e["retain_Q_A_ROUGE"]["value_by_index"]["2"]["ground_truth"],
        "Job 2."
    );
    // the same directory without answer_field: recomputed with the rows' answers, not the cache
    let e = ev("ev", false);
    assert_eq!(
        e["forget_Q_A_ROUGE"]["value_by_index"]["0"]["ground_truth"],
        "Person 0 was born in town 0."
    );
}
