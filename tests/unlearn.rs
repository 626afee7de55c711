//! `unlearn run` end to end on a tiny model that first memorises four QA pairs.
mod common;
use common::*;

use std::path::Path;

fn setup(p: &Path) {
    setup_with(p, &[]);
}

/// The data files, `tiny` initialised with `init_extra`, and `ft` memorising all four pairs.
fn setup_with(p: &Path, init_extra: &[&str]) {
    let lines: Vec<&str> = SHORT_QA.lines().collect();
    std::fs::write(p.join("forget.jsonl"), lines[..2].join("\n")).unwrap();
    std::fs::write(p.join("retain.jsonl"), lines[2..].join("\n")).unwrap();
    std::fs::write(p.join("all.jsonl"), SHORT_QA).unwrap();
    init_tiny(p, init_extra);
    memorise(p, "all.jsonl", "ft");
}

fn unlearn(p: &Path, method: &str, out: &str, extra: &[&str]) -> serde_json::Value {
    let m = format!("method={method}");
    let o = format!("out={out}");
    // outputs are reused across calls of a test: replacing them is asked for explicitly
    let mut args = vec![
        "run",
        "--overwrite",
        "--set",
        "model=ft",
        "--set",
        "forget=forget.jsonl",
        "--set",
        "retain=retain.jsonl",
        "--set",
        &o,
        "--set",
        &m,
        "--set",
        "train.lr=1e-3",
        "--set",
        "train.epochs=10",
        "--set",
        "train.batch_size=2",
    ];
    for e in extra {
        args.push("--set");
        args.push(e);
    }
    ok(&args, p);
    let log = std::fs::read_to_string(p.join(format!("{out}.run/eval_log.jsonl"))).unwrap();
    serde_json::from_str(log.lines().last().unwrap()).unwrap()
}

fn probs(p: &Path, model: &str) -> (f64, f64) {
    let md = unlearn::model::hf::ModelDir::load(&p.join(model), &candle_core::Device::Cpu).unwrap();
    let f = unlearn::data::Formatter::new(&md.tok, unlearn::data::PromptStyle::Auto, 512).unwrap();
    let enc = |file: &str| -> Vec<unlearn::data::Encoded> {
        unlearn::data::read_qa(&p.join(file))
            .unwrap()
            .iter()
            .map(|it| f.encode_qa(&it.question, &it.answer).unwrap())
            .collect()
    };
    (
        unlearn::unlearn::mean_prob(&md.model, &enc("forget.jsonl"), 4).unwrap(),
        unlearn::unlearn::mean_prob(&md.model, &enc("retain.jsonl"), 4).unwrap(),
    )
}

#[test]
fn ga_forgets_and_retain_terms_preserve() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    setup(p);
    let (f0, r0) = probs(p, "ft");
    assert!(f0 > 0.7 && r0 > 0.7, "memorised first: {f0} {r0}");
    let ga = unlearn(p, "ga", "o-ga", &[]);
    let fga = ga["forget_prob"].as_f64().unwrap();
    let rga = ga["retain_prob"].as_f64().unwrap();
    assert!(
        fga < 0.5 * f0,
        "GA lowers forget probability: {f0} -> {fga}"
    );
    // Stated tolerance: with a retain term the retain probability keeps at least 60% of its
    // value before unlearning and ends above GA alone, while forgetting still happens.
    for m in ["ga+gd", "ga+kl"] {
        let e = unlearn(p, m, &format!("o-{m}"), &[]);
        let (f, r) = (
            e["forget_prob"].as_f64().unwrap(),
            e["retain_prob"].as_f64().unwrap(),
        );
        assert!(f < 0.5 * f0, "{m}: forget {f0} -> {f}");
        assert!(
            r >= 0.6 * r0 && r > rga,
            "{m}: retain {r0} -> {r} (GA alone {rga})"
        );
    }
    let e = unlearn(p, "idk+ap", "o-idkap", &[]);
    let r = e["retain_prob"].as_f64().unwrap();
    assert!(r >= 0.6 * r0, "idk+ap: retain {r0} -> {r}");
    // The eval log agrees with scoring the saved model.
    let (f, r) = probs(p, "o-ga");
    assert!((f - fga).abs() < 1e-6 && (r - rga).abs() < 1e-6);
}

#[test]
fn every_named_method_runs_and_reruns_are_bit_identical() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    setup(p);
    for m in unlearn::unlearn::objective::method::NAMED {
        if *m == "unierase" {
            continue; // an edit, not a loss: no steps (`unierase_token_and_edit`)
        }
        let e = unlearn(p, m, "o", &["train.max_steps=2"]);
        assert_eq!(e["step"], 2, "{m}");
        let log = std::fs::read_to_string(p.join("o.run/train_log.jsonl")).unwrap();
        assert_eq!(log.lines().count(), 2, "{m}");
        assert!(p.join("o.run/run.json").exists());
    }
    unlearn(p, "npo+gd", "a", &["train.seed=7"]);
    unlearn(p, "npo+gd", "b", &["train.seed=7"]);
    assert_eq!(
        std::fs::read(p.join("a/model.safetensors")).unwrap(),
        std::fs::read(p.join("b/model.safetensors")).unwrap()
    );
    // RMU trains only the down_proj of layers ℓ−2..ℓ (ℓ clamped to the last layer): others stay.
    unlearn(p, "rmu", "r", &["train.max_steps=3"]);
    let a = unlearn::model::hf::ModelDir::load(&p.join("ft"), &candle_core::Device::Cpu).unwrap();
    let b = unlearn::model::hf::ModelDir::load(&p.join("r"), &candle_core::Device::Cpu).unwrap();
    for ((n, x), (_, y)) in a.model.params().iter().zip(b.model.params()) {
        let same = x
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            == y.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
        assert_eq!(same, !n.contains("mlp.down_proj"), "{n}");
    }
}

/// A per-element mask file: only unmasked elements of the selected tensor change; early stopping
/// ends the run at the first evaluation below the threshold.
#[test]
fn masks_and_early_stop() {
    use candle_core::{Device, Tensor};
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    setup(p);
    let name = "model.layers.1.mlp.down_proj.weight";
    let ft = unlearn::model::hf::ModelDir::load(&p.join("ft"), &Device::Cpu).unwrap();
    let w = ft.model.param(name).unwrap().as_tensor().clone();
    let (rows, cols) = w.dims2().unwrap();
    let mask: Vec<f32> = (0..rows * cols)
        .map(|i| ((i % cols) < 3) as u8 as f32)
        .collect(); // 3 columns
    let mut m = std::collections::HashMap::new();
    m.insert(
        name.to_string(),
        Tensor::from_vec(mask.clone(), (rows, cols), &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&m, p.join("mask.safetensors")).unwrap();
    unlearn(
        p,
        "ga",
        "mk",
        &[
            "trainable=[\"layers.1.mlp.down_proj\"]",
            "masks=\"mask.safetensors\"",
            "train.max_steps=3",
        ],
    );
    let out = unlearn::model::hf::ModelDir::load(&p.join("mk"), &Device::Cpu).unwrap();
    let a = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = out
        .model
        .param(name)
        .unwrap()
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let notes = std::fs::read_to_string(p.join("mk.run/notes.txt")).unwrap();
    let mut changed = 0;
    for i in 0..a.len() {
        if mask[i] == 0.0 {
            assert_eq!(a[i].to_bits(), b[i].to_bits(), "masked element {i} changed");
        } else if a[i] != b[i] {
            changed += 1;
        }
    }
    assert!(changed > 0);
    assert!(
        notes.contains(&format!("{changed} of ")),
        "the run log counts changed parameters: {notes}"
    );
    let e = unlearn(p, "ga", "es", &["eval_every=1", "stop_forget_prob=0.6"]);
    assert!(e["forget_prob"].as_f64().unwrap() < 0.6);
    let steps = std::fs::read_to_string(p.join("es.run/train_log.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!(steps < 10, "stopped early after {steps} steps");
}

/// SO-GradDiff: the same method under Sophia forgets too; Sophia respects masks as AdamW does.
#[test]
fn sophia_optimizer_unlearns() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    setup(p);
    let (f0, r0) = probs(p, "ft");
    let e = unlearn(
        p,
        "ga+gd",
        "so",
        &[
            "train.optimizer=\"sophia\"",
            "train.lr=5e-4",
            "train.sophia.rho=0.04",
        ],
    );
    let (f, r) = (
        e["forget_prob"].as_f64().unwrap(),
        e["retain_prob"].as_f64().unwrap(),
    );
    assert!(
        f < 0.5 * f0 && r >= 0.6 * r0,
        "sophia ga+gd: forget {f0} -> {f}, retain {r0} -> {r}"
    );
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("so.run/run.json")).unwrap()).unwrap();
    assert_eq!(run["config"]["train"]["optimizer"], "sophia");

    // Gauss–Newton–Bartlett curvature: unlearns too, differs from the empirical-Fisher run, and
    // is reproducible (labels are sampled from a seeded per-step stream)
    let gnb = |out: &str| {
        unlearn(
            p,
            "ga+gd",
            out,
            &[
                "train.optimizer=\"sophia\"",
                "train.lr=5e-4",
                "train.sophia.curvature=\"gnb\"",
            ],
        )
    };
    let g = gnb("gnb");
    let (fg, rg) = (
        g["forget_prob"].as_f64().unwrap(),
        g["retain_prob"].as_f64().unwrap(),
    );
    assert!(
        fg < 0.5 * f0 && rg >= 0.6 * r0,
        "sophia-gnb ga+gd: forget {f0} -> {fg}, retain {r0} -> {rg}"
    );
    assert_ne!(fg, f, "GNB and empirical Fisher give different runs");
    let read = |m: &str| std::fs::read(p.join(m).join("model.safetensors")).unwrap();
    assert!(read("gnb") != read("so"));
    gnb("gnb2");
    assert!(read("gnb") == read("gnb2"), "GNB reruns are bit-identical");
    let e = fails(
        &[
            "run",
            "--set",
            "model=ft",
            "--set",
            "forget=forget.jsonl",
            "--set",
            "out=x",
            "--set",
            "method=so-graddiff",
            "--set",
            "train.sophia.curvature=\"hutchinson\"",
        ],
        p,
    );
    assert!(e.contains("hutchinson"), "{e}");
}

/// SIMU recipe: attribute, then GradDiff (alpha 2) under Sophia with attention projections in
/// full and only the critical down_proj columns trainable.
#[test]
fn simu_attribution_masks_and_run() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    setup(p);
    let out = ok(
        &[
            "attribute",
            "--model",
            "ft",
            "--data",
            "forget.jsonl",
            "--out",
            "att.json",
            "--mask-out",
            "mask.safetensors",
            "--steps",
            "4",
        ],
        p,
    );
    assert!(out.contains("critical neurons"), "{out}");
    let att: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("att.json")).unwrap()).unwrap();
    let layers = att["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    let n_crit: usize = layers
        .iter()
        .map(|l| l["critical"].as_array().unwrap().len())
        .sum();
    assert!(n_crit > 0 && n_crit < 2 * layers[0]["scores"].as_array().unwrap().len());
    // Dual mode: retain scores are reported and the chosen neurons are a subset of the above.
    ok(
        &[
            "attribute",
            "--model",
            "ft",
            "--data",
            "forget.jsonl",
            "--retain",
            "retain.jsonl",
            "--out",
            "dual.json",
            "--steps",
            "4",
        ],
        p,
    );
    let dual: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("dual.json")).unwrap()).unwrap();
    for (d, s) in dual["layers"].as_array().unwrap().iter().zip(layers) {
        assert!(d["retain_scores"].is_array());
        for k in d["critical"].as_array().unwrap() {
            assert!(s["critical"].as_array().unwrap().contains(k));
        }
    }
    let e = unlearn(
        p,
        "ga+gd",
        "simu",
        &[
            "method.alpha=2.0",
            "train.optimizer=\"sophia\"",
            "train.lr=5e-4",
            "trainable=[\"self_attn.{q,k,v,o}_proj\", \"mlp.down_proj\"]",
            "masks=\"mask.safetensors\"",
        ],
    );
    let _ = e;
    only_critical_columns_changed(p, "simu", layers);
    // The same by name: attribution inside the run, recorded in the run directory.
    let e = unlearn(
        p,
        "simu",
        "simu2",
        &["train.lr=5e-4", "method.simu.steps=4"],
    );
    assert!(e["forget_prob"].as_f64().is_some());
    let att2: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(p.join("simu2.run/attribution.json")).unwrap(),
    )
    .unwrap();
    only_critical_columns_changed(p, "simu2", att2["layers"].as_array().unwrap());
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("simu2.run/run.json")).unwrap())
            .unwrap();
    assert_eq!(run["config"]["method"]["optimizer"], "sophia");
    assert_eq!(run["config"]["method"]["alpha"], 2.0);
}

/// SIMU's attribution is cached under a hash of the model, the items, m and the batch size: a
/// second run that differs only in its learning rate reuses the scores (same masks), a run on
/// another model does not.
#[test]
fn simu_attribution_is_reused_only_for_the_same_inputs() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    setup(p);
    let cache = p.join("uc");
    let cache = cache.to_str().unwrap();
    let run = |model: &str, out: &str, lr: &str| -> (String, serde_json::Value) {
        let args = [
            "run",
            "--set",
            &format!("model={model}"),
            "--set",
            "forget=forget.jsonl",
            "--set",
            "retain=retain.jsonl",
            "--set",
            &format!("out={out}"),
            "--set",
            "method=simu",
            "--set",
            &format!("train.lr={lr}"),
            "--set",
            "method.simu.steps=4",
            "--set",
            "train.max_steps=2",
        ];
        let o = common::run_env(&args, p, &[("UNLEARN_CACHE", cache)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let notes = std::fs::read_to_string(p.join(format!("{out}.run/notes.txt"))).unwrap();
        let att: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(p.join(format!("{out}.run/attribution.json"))).unwrap(),
        )
        .unwrap();
        (notes, att)
    };
    let (n1, a1) = run("ft", "s1", "5e-4");
    assert!(!n1.contains("reused"), "{n1}");
    let (n2, a2) = run("ft", "s2", "1e-3");
    assert!(n2.contains("attribution scores reused"), "{n2}");
    assert_eq!(a1, a2, "the reused scores choose the same neurons");
    // another model (fine-tuned for one epoch less): attributed afresh
    common::finetune_tiny(p, "all.jsonl", "ft2", 79, 4);
    let (n3, _) = run("ft2", "s3", "5e-4");
    assert!(!n3.contains("reused"), "{n3}");
}

fn only_critical_columns_changed(p: &Path, out: &str, layers: &[serde_json::Value]) {
    let a = unlearn::model::hf::ModelDir::load(&p.join("ft"), &candle_core::Device::Cpu).unwrap();
    let b = unlearn::model::hf::ModelDir::load(&p.join(out), &candle_core::Device::Cpu).unwrap();
    let mut changed = 0;
    for (l, layer) in layers.iter().enumerate() {
        let crit: Vec<usize> = layer["critical"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let name = format!("model.layers.{l}.mlp.down_proj.weight");
        let x = a
            .model
            .param(&name)
            .unwrap()
            .as_tensor()
            .to_vec2::<f32>()
            .unwrap();
        let y = b
            .model
            .param(&name)
            .unwrap()
            .as_tensor()
            .to_vec2::<f32>()
            .unwrap();
        for (rx, ry) in x.iter().zip(&y) {
            for k in 0..rx.len() {
                if !crit.contains(&k) {
                    assert_eq!(
                        rx[k].to_bits(),
                        ry[k].to_bits(),
                        "layer {l} column {k} is not critical"
                    );
                } else if rx[k] != ry[k] {
                    changed += 1;
                }
            }
        }
    }
    assert!(changed > 0, "critical columns were trained");
}

#[test]
fn continual_tasks_and_bad_configs() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    setup(p);
    let e = unlearn(
        p,
        "npo+kl",
        "c",
        &["forget_tasks=2", "ref=\"previous_task\""],
    );
    assert_eq!(e["task"], 1);
    assert!(
        p.join("c.run/task-1/model.safetensors").exists()
            && p.join("c.run/task-2/model.safetensors").exists()
    );
    assert_eq!(
        std::fs::read_to_string(p.join("c.run/eval_log.jsonl"))
            .unwrap()
            .lines()
            .count(),
        2
    );
    assert!(std::fs::read_to_string(p.join("c.run/notes.txt"))
        .unwrap()
        .contains("resident frozen copy"));
    let base = [
        "run",
        "--set",
        "model=ft",
        "--set",
        "forget=forget.jsonl",
        "--set",
        "out=bad",
    ];
    let with = |extra: &[&str]| -> String {
        let mut a: Vec<&str> = base.to_vec();
        for e in extra {
            a.push("--set");
            a.push(e);
        }
        fails(&a, p)
    };
    assert!(with(&["method=foo+gd"]).contains("unknown method `foo+gd`"));
    assert!(with(&["method=ga+gd"]).contains("needs a `retain` set"));
    assert!(
        with(&["method=ga", "trainable=[\"nothing_like_this\"]"]).contains("matches no parameter")
    );
    assert!(with(&["method=ga", "colour=1"]).contains("unknown field `colour`"));
    std::fs::write(p.join("afile"), "x").unwrap();
    assert!(with(&["method=ga", "out=afile/sub/model"]).contains("afile"));
    std::fs::write(p.join("empty.jsonl"), "\n").unwrap();
    assert!(with(&["method=ga", "forget=empty.jsonl"]).contains("no items"));
    assert!(!p.join("bad").exists());
}

/// The closer-look paper's continual protocol: tasks from the rows' `task_id` (numeric order,
/// not file order), and with `retain_future_tasks` task k's retain partners come from the retain
/// set and the tasks after k; the last task draws from the retain set alone.
#[test]
fn continual_tasks_by_task_id_retain_the_later_tasks() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    setup(p);
    let rows: Vec<serde_json::Value> = SHORT_QA
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // rows 0, 1 → task "10"; row 2 → task "2"; row 3 → task 1 (a number)
    let ids = [
        serde_json::json!("10"),
        serde_json::json!("10"),
        serde_json::json!("2"),
        serde_json::json!(1),
    ];
    let tasks: String = rows
        .iter()
        .zip(ids)
        .map(|(r, id)| {
            let mut r = r.clone();
            r["task_id"] = id;
            format!("{r}\n")
        })
        .collect();
    std::fs::write(p.join("tasks.jsonl"), tasks).unwrap();
    unlearn(
        p,
        "ga+gd",
        "k",
        &[
            "forget=\"tasks.jsonl\"",
            "forget_task_key=\"task_id\"",
            "retain_future_tasks=true",
            "train.epochs=2",
        ],
    );
    let log: Vec<serde_json::Value> = std::fs::read_to_string(p.join("k.run/eval_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(log.len(), 3);
    // task order 1, 2, 10: sizes 1, 1, 2; retain = 2 items (rows 2, 3 of SHORT_QA)
    let got: Vec<(u64, u64)> = log
        .iter()
        .map(|l| {
            (
                l["n_forget"].as_u64().unwrap(),
                l["retain_pool"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, vec![(1, 2 + 1 + 2), (1, 2 + 2), (2, 2)]);
    assert_eq!(log[2]["partners_from_later_tasks"], 0);
    assert!(p.join("k.run/task-3/model.safetensors").exists());
    // without the flag the pool is the retain set for every task
    unlearn(
        p,
        "ga+gd",
        "k2",
        &[
            "forget=\"tasks.jsonl\"",
            "forget_task_key=\"task_id\"",
            "train.epochs=1",
        ],
    );
    let log = std::fs::read_to_string(p.join("k2.run/eval_log.jsonl")).unwrap();
    assert!(
        log.lines()
            .all(|l| l.contains("\"retain_pool\":2")
                && l.contains("\"partners_from_later_tasks\":0")),
        "{log}"
    );
    // a row without the key is named
    std::fs::write(p.join("bad.jsonl"), SHORT_QA).unwrap();
    let e = fails(
        &[
            "run",
            "--set",
            "model=ft",
            "--set",
            "forget=bad.jsonl",
            "--set",
            "retain=retain.jsonl",
            "--set",
            "out=bad",
            "--set",
            "method=ga+gd",
            "--set",
            "forget_task_key=\"task_id\"",
        ],
        p,
    );
    assert!(
        e.contains("bad.jsonl") && e.contains("row 0 has no `task_id`"),
        "{e}"
    );
    let e = run_fails(p, "ga+gd", &["retain_future_tasks=true"]);
    assert!(
        e.contains("retain_future_tasks needs a continual run"),
        "{e}"
    );
    assert!(!p.join("refused").exists());
}

/// UniErase: the token is added (vocab + 1, tokenizer entry), the edit makes [UNL] the likely
/// first response token of the forget prompts, only the [UNL] row and the edited down_proj
/// weights change, the input model stays as it was, and generation strips the token.
#[test]
fn unierase_token_and_edit() {
    for untied in [false, true] {
        unierase_case(untied);
    }
}

fn unierase_case(untied: bool) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    if untied {
        // the same pairs memorised by a model with a separate LM head
        setup_with(p, &["--untied"]);
    } else {
        setup(p);
    }
    let before = std::fs::read(p.join("ft/model.safetensors")).unwrap();
    let e = unlearn(
        p,
        "unierase",
        "u",
        &[
            "method.forget.layers=[0,1]",
            "method.forget.phase1_epochs=20",
            "method.forget.phase1_lr=1e-2",
            "method.forget.v_steps=25",
            "method.forget.clamp_norm=3",
            "method.forget.stats_dir=\"stats\"",
        ],
    );
    assert_eq!(e["step"], 0);
    let (b, a) = (
        e["unl_first_prob_before"].as_f64().unwrap(),
        e["unl_first_prob_after"].as_f64().unwrap(),
    );
    assert!(
        a > 0.05 && a > 100.0 * b,
        "P([UNL] first) {b} -> {a} (untied: {untied})"
    );
    assert_eq!(
        unlearn::model::hf::ModelDir::load(&p.join("u"), &candle_core::Device::Cpu)
            .unwrap()
            .model
            .param("lm_head.weight")
            .is_some(),
        untied
    );
    assert_eq!(
        std::fs::read(p.join("ft/model.safetensors")).unwrap(),
        before
    );
    let notes = std::fs::read_to_string(p.join("u.run/notes.txt")).unwrap();
    assert!(notes.contains("parameters changed"), "{notes}");
    assert!(
        p.join("stats").read_dir().unwrap().count() == 1,
        "second moments cached"
    );
    let x = unlearn::model::hf::ModelDir::load(&p.join("ft"), &candle_core::Device::Cpu).unwrap();
    let y = unlearn::model::hf::ModelDir::load(&p.join("u"), &candle_core::Device::Cpu).unwrap();
    // a padded vocabulary reuses a spare row; otherwise the embedding grows by one
    let unl = y
        .tok
        .inner
        .token_to_id("<unlearn_0>")
        .expect("token in the tokenizer") as usize;
    assert_eq!(y.model.cfg.vocab_size, x.model.cfg.vocab_size.max(unl + 1));
    let tj = std::fs::read_to_string(p.join("u/tokenizer.json")).unwrap();
    assert!(tj.contains("<unlearn_0>"));
    // generation recognises it as the closing token (unlearn::infer::generate::Stops::for_model)
    assert_eq!(y.tok.unlearning_token_ids(), vec![unl as u32]);
    assert!(x.tok.unlearning_token_ids().is_empty());
    for ((n, xa), (_, ya)) in x.model.params().iter().zip(y.model.params()) {
        let rows = |t: &candle_core::Tensor| -> Vec<Vec<f32>> {
            t.flatten_to(0)
                .unwrap()
                .reshape((t.dim(0).unwrap(), ()))
                .unwrap()
                .to_vec2()
                .unwrap()
        };
        let (xr, yr) = (rows(xa.as_tensor()), rows(ya.as_tensor()));
        let changed: Vec<usize> = (0..yr.len())
            .filter(|&i| xr.get(i) != Some(&yr[i]))
            .collect();
        if n == "model.embed_tokens.weight" || n == "lm_head.weight" {
            assert_eq!(changed, vec![unl], "{n}");
        } else if n.contains("mlp.down_proj") {
            assert!(!changed.is_empty(), "{n}");
        } else {
            assert!(changed.is_empty(), "{n}");
        }
    }
    // the edited model's greedy answer to a forget question: never the token itself
    let q = "Code for apple?";
    let shown = ok(
        &[
            "generate",
            "--model",
            "u",
            "--prompt",
            q,
            "--max-new-tokens",
            "12",
            "--show-special",
        ],
        p,
    );
    let plain = ok(
        &[
            "generate",
            "--model",
            "u",
            "--prompt",
            q,
            "--max-new-tokens",
            "12",
        ],
        p,
    );
    assert!(!plain.contains("<unlearn_0>"), "{plain}");
    if shown.contains("<unlearn_0>") {
        assert_ne!(shown, plain);
    }
}

/// `train.chunked_loss` (the LM head and log-softmax in chunks of rows) and
/// `train.checkpoint_activations` compute the same run: every weight within float noise of the
/// plain run, for a logits-only term (NPO + GD; also under LoRA, where the head is frozen and the
/// chunked op's forward takes the Jacobian), a full-distribution one (KL) and fine-tuning.
#[test]
fn chunked_loss_and_checkpointing_give_the_same_run() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    setup(p);
    let a = unlearn(p, "npo+gd", "plain", &[]);
    let b = unlearn(p, "npo+gd", "chunked", &["train.chunked_loss=true"]);
    let fa = a["forget_prob"].as_f64().unwrap();
    let fb = b["forget_prob"].as_f64().unwrap();
    assert!((fa - fb).abs() < 1e-4, "{fa} vs {fb}");
    let load = |m: &str| {
        unlearn::model::hf::ModelDir::load(&p.join(m), &candle_core::Device::Cpu).unwrap()
    };
    let max_diff = |x: &str, y: &str| {
        let (x, y) = (load(x), load(y));
        x.model
            .params()
            .iter()
            .zip(y.model.params())
            .map(|((_, u), (_, v))| {
                unlearn::ops::max_abs_diff(u.as_tensor(), v.as_tensor()).unwrap()
            })
            .fold(0.0, f64::max)
    };
    // Adam moves an element by about lr per step whatever its gradient's size, so an element
    // whose gradient is float noise may differ by a fraction of lr (1e-3 here)
    let dw = max_diff("plain", "chunked");
    assert!(dw < 5e-4, "weights differ by {dw}");
    unlearn(
        p,
        "npo+gd",
        "ck",
        &[
            "train.checkpoint_activations=true",
            "train.chunked_loss=true",
        ],
    );
    let dw = max_diff("plain", "ck");
    assert!(dw < 5e-4, "checkpointed: weights differ by {dw}");
    // LoRA: a frozen head, for which the chunked op takes ∂out/∂h in its forward
    let lora = ["lora.r=4", "lora.merge=true"];
    unlearn(p, "npo+gd", "lora", &lora);
    unlearn(
        p,
        "npo+gd",
        "lora_chunked",
        &[lora[0], lora[1], "train.chunked_loss=true"],
    );
    let dw = max_diff("lora", "lora_chunked");
    assert!(dw < 5e-4, "LoRA, chunked: merged weights differ by {dw}");
    assert!(
        max_diff("lora", "plain") > 1e-3,
        "the LoRA runs trained something else"
    );
    unlearn(p, "ga+kl", "kl", &[]);
    unlearn(p, "ga+kl", "kl_ck", &["train.checkpoint_activations=true"]);
    let dw = max_diff("kl", "kl_ck");
    assert!(dw < 5e-4, "checkpointed KL: weights differ by {dw}");
    assert!(max_diff("plain", "ft") > 1e-3, "the run changed nothing");
    for (out, extra) in [
        ("fa", "chunked_loss=false"),
        ("fb", "chunked_loss=true"),
        ("fc", "checkpoint_activations=true"),
    ] {
        ok(
            &[
                "finetune",
                "--model",
                "tiny",
                "--data",
                "all.jsonl",
                "--out",
                out,
                "--set",
                "lr=3e-3",
                "--set",
                "epochs=3",
                "--set",
                extra,
            ],
            p,
        );
    }
    for other in ["fb", "fc"] {
        let dw = max_diff("fa", other);
        assert!(dw < 1.5e-3, "{other}: fine-tuned weights differ by {dw}"); // lr 3e-3
    }
}

/// Every named method but UniErase runs two steps on the model in `p`, and NPO+GD forgets
/// (the forget probability at least halves). `arch` names the architecture in messages.
fn every_loss_method_runs_and_npo_forgets(p: &Path, arch: &str) {
    for m in unlearn::unlearn::objective::method::NAMED {
        if *m == "unierase" {
            continue;
        }
        let e = unlearn(p, m, "o", &["train.max_steps=2"]);
        assert_eq!(e["step"], 2, "{arch}: {m}");
    }
    let (f0, _) = probs(p, "ft");
    unlearn(p, "npo+gd", "n", &[]);
    let (f1, _) = probs(p, "n");
    assert!(
        f1 < 0.5 * f0,
        "NPO+GD did not forget on {arch}: {f0} -> {f1}"
    );
}

/// `unlearn run` of `method` on the fine-tuned model with `extra` settings, which must fail: its
/// error message.
fn run_fails(p: &Path, method: &str, extra: &[&str]) -> String {
    let m = format!("method={method}");
    let mut args = vec![
        "run",
        "--set",
        "model=ft",
        "--set",
        "forget=forget.jsonl",
        "--set",
        "retain=retain.jsonl",
        "--set",
        "out=refused",
        "--set",
        &m,
    ];
    for e in extra {
        args.extend(["--set", e]);
    }
    fails(&args, p)
}

/// UniErase on the two layers of the tests' tiny model raises P([UNL] first).
fn unierase_raises_the_token(p: &Path) {
    let e = unlearn(
        p,
        "unierase",
        "u",
        &[
            "method.forget.layers=[0,1]",
            "method.forget.phase1_epochs=20",
            "method.forget.phase1_lr=1e-2",
            "method.forget.v_steps=25",
            "method.forget.clamp_norm=3",
        ],
    );
    assert!(
        e["unl_first_prob_after"].as_f64().unwrap() > e["unl_first_prob_before"].as_f64().unwrap()
    );
}

/// Issue #24, Qwen3 (per-head q/k RMSNorm, heads wider than hidden / heads): every named
/// method runs on it, NPO+GD forgets, and UniErase's edit and LoRA work on it.
#[test]
fn qwen3_runs_every_method() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    setup_with(p, &["--arch", "qwen3", "--head-dim", "24"]);
    let c = std::fs::read_to_string(p.join("ft/config.json")).unwrap();
    assert!(
        c.contains("\"qwen3\"") && c.contains("\"head_dim\": 24"),
        "{c}"
    );
    every_loss_method_runs_and_npo_forgets(p, "qwen3");
    unlearn(p, "npo+gd", "l", &["lora.r=4"]);
    assert!(p.join("l/adapter_config.json").is_file());
    let e = unlearn(
        p,
        "unierase",
        "u",
        &[
            "method.forget.layers=[0,1]",
            "method.forget.phase1_epochs=20",
            "method.forget.phase1_lr=1e-2",
            "method.forget.v_steps=25",
            "method.forget.clamp_norm=3",
        ],
    );
    assert!(
        e["unl_first_prob_after"].as_f64().unwrap() > e["unl_first_prob_before"].as_f64().unwrap()
    );
}

/// Issue #24, OLMo-2 (post-norms, q/k norms over the projections): every loss-based method runs
/// and NPO+GD forgets; UniErase is refused with a message naming the architecture.
#[test]
fn olmo2_runs_every_loss_method_and_refuses_unierase() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    setup_with(p, &["--arch", "olmo2"]);
    for m in unlearn::unlearn::objective::method::NAMED {
        if *m == "unierase" {
            continue;
        }
        let e = unlearn(p, m, "o", &["train.max_steps=2"]);
        assert_eq!(e["step"], 2, "{m}");
    }
    let (f0, _) = probs(p, "ft");
    unlearn(
        p,
        "npo+gd",
        "n",
        &[
            "train.checkpoint_activations=true",
            "lora.r=8",
            "train.lr=5e-3",
        ],
    );
    let (f1, _) = probs(p, "n");
    assert!(
        f1 < 0.5 * f0,
        "NPO+GD (LoRA) did not forget on olmo2: {f0} -> {f1}"
    );
    let e = run_fails(p, "unierase", &[]);
    assert!(e.contains("olmo2") && e.contains("unierase"), "{e}");
    assert!(!p.join("refused").exists());
}

/// Issue #24, OLMo (parameter-free LayerNorm): every named method runs, UniErase included, and
/// NPO+GD forgets.
#[test]
fn olmo_runs_every_method() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    setup_with(p, &["--arch", "olmo"]);
    every_loss_method_runs_and_npo_forgets(p, "olmo");
    let e = unlearn(
        p,
        "unierase",
        "u",
        &[
            "method.forget.layers=[0,1]",
            "method.forget.phase1_epochs=20",
            "method.forget.phase1_lr=1e-2",
            "method.forget.v_steps=25",
            "method.forget.clamp_norm=3",
        ],
    );
    assert!(
        e["unl_first_prob_after"].as_f64().unwrap() > e["unl_first_prob_before"].as_f64().unwrap()
    );
}

/// Issue #24, Phi-3: fused qkv_proj / gate_up_proj in the files (split in memory), every named
/// method runs (UniErase included) and NPO+GD forgets; LoRA is refused with the reason.
#[test]
fn phi3_runs_every_method_with_fused_checkpoints() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    setup_with(p, &["--arch", "phi3"]);
    let names = |dir: &str| -> Vec<String> {
        let b = std::fs::read(p.join(dir).join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&b).unwrap();
        st.names().into_iter().map(String::from).collect()
    };
    let n = names("ft");
    assert!(n.iter().any(|x| x.ends_with("self_attn.qkv_proj.weight")));
    assert!(n.iter().any(|x| x.ends_with("mlp.gate_up_proj.weight")));
    assert!(!n
        .iter()
        .any(|x| x.ends_with("q_proj.weight") && !x.contains("qkv")));
    every_loss_method_runs_and_npo_forgets(p, "phi3");
    assert!(names("n")
        .iter()
        .any(|x| x.ends_with("gate_up_proj.weight")));
    unierase_raises_the_token(p);
    let e = run_fails(p, "npo+gd", &["lora.r=4"]);
    assert!(e.contains("phi3") && e.contains("qkv_proj"), "{e}");
}

/// Issue #24, Gemma 2 and Gemma 3: `init --arch gemma2|gemma3` writes a model transformers'
/// config names (gemma2 / gemma3_text), every named loss method runs on it and NPO+GD forgets;
/// UniErase is refused (Gemma normalises the MLP output before the residual add).
#[test]
fn gemma2_and_gemma3_run_every_method() {
    for arch in ["gemma2", "gemma3"] {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        setup_with(p, &["--arch", arch]);
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p.join("ft/config.json")).unwrap())
                .unwrap();
        let mt = if arch == "gemma2" {
            "gemma2"
        } else {
            "gemma3_text"
        };
        assert_eq!(cfg["model_type"], mt, "{cfg}");
        assert_eq!(cfg["hidden_activation"], "gelu_pytorch_tanh");
        every_loss_method_runs_and_npo_forgets(p, arch);
        let e = run_fails(p, "unierase", &[]);
        assert!(e.contains("unierase") && e.contains(mt), "{e}");
    }
}

/// Issue #24, GPT-NeoX / Pythia: `init --arch gpt_neox` writes GPT-NeoX's checkpoint names
/// (`query_key_value` fused per head, `embed_out`), every named method runs on it (UniErase
/// included: the MLP output adds to the residual stream unnormalised) and NPO+GD forgets; LoRA is
/// refused with the reason.
#[test]
fn gpt_neox_runs_every_method() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    setup_with(p, &["--arch", "gpt_neox", "--kv-heads", "4"]);
    let b = std::fs::read(p.join("ft/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&b).unwrap();
    let names: Vec<String> = st.names().into_iter().map(String::from).collect();
    assert!(names
        .iter()
        .any(|n| n == "gpt_neox.layers.0.attention.query_key_value.weight"));
    assert!(names.iter().any(|n| n == "embed_out.weight"));
    every_loss_method_runs_and_npo_forgets(p, "gpt_neox");
    unierase_raises_the_token(p);
    let e = run_fails(p, "npo+gd", &["lora.r=4"]);
    assert!(
        e.contains("gpt_neox") && e.contains("query_key_value"),
        "{e}"
    );
}
