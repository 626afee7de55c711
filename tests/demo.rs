//! `unlearn demo` end to end at a small size: benchmark written, target and retain models trained
//! and cached, a method run and evaluated, the retain model at forget quality 1, a report with one
//! point per model; a second run loads the cached models; bad settings fail before any work.
mod common;
use common::*;

use serde_json::Value;

const SMALL: &[&str] = &[
    "--people",
    "10",
    "--methods",
    "ga+gd",
    "--set",
    "model.hidden=64",
    "--set",
    "model.layers=2",
    "--set",
    "model.vocab=400",
    "--set",
    "pretrain.epochs=25",
    "--set",
    "unlearn.epochs=2",
    "--set",
    "eval.max_new_tokens=24",
    "--set",
    "cache_dir=cache",
];

fn demo(dir: &std::path::Path, out: &str) -> (String, String) {
    let mut args = vec!["demo", "--out", out];
    args.extend_from_slice(SMALL);
    let o = run(&args, dir);
    let (so, se) = (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    );
    assert!(o.status.success(), "demo failed:\n{so}\n{se}");
    (so, se)
}

#[test]
fn demo_runs_end_to_end_and_reuses_its_models() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (stdout, stderr) = demo(d, "out1");
    assert!(stderr.contains("training the target model"), "{stderr}");
    assert!(stdout.contains("forget quality"), "{stdout}");
    for f in [
        "out1/run.json",
        "out1/benchmark/forget10_perturbed.jsonl",
        "out1/benchmark/retain90.jsonl",
        "out1/target/eval/TOFU_EVAL.json",
        "out1/retain/eval/TOFU_EVAL.json",
        "out1/ga+gd/model/model.safetensors",
        "out1/ga+gd/run/train_log.jsonl",
        "out1/ga+gd/eval/TOFU_SUMMARY.json",
        "out1/report.html",
    ] {
        assert!(d.join(f).exists(), "missing {f}");
    }
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out1/summary.json")).unwrap())
            .unwrap();
    let rows = summary["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["target", "retain", "ga+gd"]);
    // the retain model compared with itself: identical truth-ratio samples, KS p-value 1
    assert_eq!(rows[1]["forget_quality"].as_f64(), Some(1.0));
    let fq_target = rows[0]["forget_quality"].as_f64().unwrap();
    assert!(fq_target < 1.0, "target FQ {fq_target}");
    // the target was trained on the forget set, the retain model was not
    let fr = |i: usize| rows[i]["forget_prob"].as_f64().unwrap();
    assert!(
        fr(0) > fr(1),
        "target forget prob {} vs retain {}",
        fr(0),
        fr(1)
    );
    assert_eq!(summary["cached_models"], Value::Bool(false));

    let html = std::fs::read_to_string(d.join("out1/report.html")).unwrap();
    assert_eq!(html.matches("<circle").count(), 3, "one point per model");
    assert!(html.contains("Loss curves") && html.contains("<polyline"));
    assert!(
        !html.contains("http://")
            || html.matches("http://").count()
                == html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count(),
        "the report must not fetch anything"
    );

    // second run: models come from the cache, no training
    let (stdout, stderr) = demo(d, "out2");
    assert!(
        stderr.contains("using the cached target and retain models"),
        "{stderr}"
    );
    assert!(!stderr.contains("training the target model"));
    assert!(stdout.contains("from the cache"));
    // same seed, same machine: identical numbers
    let s2: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out2/summary.json")).unwrap())
            .unwrap();
    for (a, b) in rows.iter().zip(s2["rows"].as_array().unwrap()) {
        for k in [
            "forget_quality",
            "model_utility",
            "forget_prob",
            "retain_rouge",
        ] {
            assert_eq!(a[k], b[k], "{k} of {}", a["name"]);
        }
    }

    // `unlearn report` over the demo directory finds the same three models
    let out = ok(&["report", "out1", "--out", "r.html"], d);
    assert!(out.contains("3 model(s)"), "{out}");
    check_renders(&d.join("r.html"));
}

/// Render the report in headless Chromium when one is installed (scripts/check_report.sh does
/// the same by hand); the DOM must hold the SVG plots.
fn check_renders(html: &std::path::Path) {
    let Some(chrome) = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok()
        })
    else {
        eprintln!("skipped: no headless Chromium on this machine");
        return;
    };
    let o = std::process::Command::new(chrome)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&o.stdout);
    assert!(
        dom.contains("<svg") && dom.matches("<circle").count() == 3,
        "{dom}"
    );
}

#[test]
fn demo_rejects_bad_settings_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let e = fails(
        &["demo", "--out", "o", "--methods", "ga+gd,forget-it-all"],
        d,
    );
    assert!(e.contains("unknown method `forget-it-all`"), "{e}");
    let e = fails(&["demo", "--out", "o", "--set", "pretrain.bogus=1"], d);
    assert!(e.contains("bogus"), "{e}");
    let e = fails(&["demo", "--out", "o", "--set", "forget_split=forget50"], d);
    assert!(e.contains("forget50"), "{e}");
    assert!(
        !d.join("o/benchmark").exists(),
        "nothing written on bad settings"
    );
}

/// `--sweep`: every method over the grid in OUT/sweep, the tuned table beside the default one,
/// the report shows both and links the leaderboard; the sweep's evaluations are not report rows.
#[test]
fn demo_sweep_tunes_each_method_and_reports_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut args = vec!["demo", "--out", "o", "--sweep"];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(&[
        "--methods",
        "ga+gd,npo+gd",
        "--set",
        "sweep.lr=[1e-3, 3e-3]",
        "--set",
        "sweep.epochs=[1]",
    ]);
    let out = ok(&args, d);
    let tuned = out.split("tuned (").nth(1).expect("tuned table");
    for m in ["ga+gd", "npo+gd"] {
        assert!(tuned.lines().any(|l| l.starts_with(m)), "{m}: {out}");
    }
    let lb: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("o/sweep/LEADERBOARD.json")).unwrap())
            .unwrap();
    assert_eq!(lb["points"].as_array().unwrap().len(), 4);
    let html = std::fs::read_to_string(d.join("o/report.html")).unwrap();
    assert!(
        html.contains("Tuned: each method at its best point")
            && html.contains("sweep/leaderboard.html")
    );
    // one report point per model of the default table (target, retain, two methods), not per sweep point
    assert_eq!(html.matches("<circle").count(), 4, "report rows");
}
