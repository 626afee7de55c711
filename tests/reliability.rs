//! Issue #17: the binary never loses a user's data and never reports success on garbage. Each
//! test drives the real binary on inputs a hostile but fair tester would try; the test names say
//! the defect class they guard against.
mod common;
use common::*;

use std::path::Path;
use std::time::{Duration, Instant};

/// A tiny model `tiny` (hidden 32, 1 layer) and the four QA pairs in `qa.jsonl`.
fn tiny_and_data(p: &Path) {
    std::fs::write(p.join("qa.jsonl"), SHORT_QA).unwrap();
    ok(
        &["init", "--out", "tiny", "--hidden", "32", "--layers", "1"],
        p,
    );
}

fn ft_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "finetune", "--model", "tiny", "--data", "qa.jsonl", "--out", out, "--set", "epochs=2",
    ];
    v.extend_from_slice(extra);
    v
}

/// `unlearn run` with each setting given as `--set KEY=VALUE`.
fn run_args<'a>(sets: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["run"];
    for s in sets {
        a.extend(["--set", s]);
    }
    a
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

// ---- data loss -------------------------------------------------------------------------------

#[test]
fn existing_out_is_refused_without_overwrite_and_an_unrelated_folder_survives_it() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    tiny_and_data(p);
    std::fs::create_dir(p.join("mine")).unwrap();
    std::fs::write(p.join("mine/thesis.tex"), b"years of work").unwrap();
    let gguf = p.join("m.gguf");
    let md =
        unlearn::model::hf::ModelDir::load(&p.join("tiny"), &candle_core::Device::Cpu).unwrap();
    write_gguf(&md, candle_core::quantized::GgmlDType::F32, &gguf, |_, t| t);
    let run_cfg = "model = \"tiny\"\nforget = \"qa.jsonl\"\nout = \"mine\"\nmethod = \"ga\"\n[train]\nmax_steps = 1\n";
    std::fs::write(p.join("run.toml"), run_cfg).unwrap();
    let commands: Vec<Vec<&str>> = vec![
        ft_args("mine", &[]),
        vec!["run", "--config", "run.toml"],
        vec!["import", "m.gguf", "--out", "mine"],
        vec!["init", "--out", "mine", "--hidden", "32", "--layers", "1"],
        vec![
            "attack", "relearn", "--model", "tiny", "--data", "qa.jsonl", "--out", "mine",
        ],
    ];
    for c in &commands {
        let e = fails(c, p);
        assert!(e.contains("--overwrite"), "{c:?}: {e}");
        assert_eq!(read(&p.join("mine/thesis.tex")), b"years of work", "{c:?}");
        // --overwrite replaces only a model directory, never an unrelated folder
        let mut with = c.clone();
        with.push("--overwrite");
        let e = fails(&with, p);
        assert!(e.contains("not a model directory"), "{c:?}: {e}");
        assert_eq!(read(&p.join("mine/thesis.tex")), b"years of work", "{c:?}");
    }
    // with --overwrite an earlier model directory is replaced, atomically
    ok(&ft_args("ft", &[]), p);
    let e = fails(&ft_args("ft", &[]), p);
    assert!(e.contains("--overwrite"), "{e}");
    ok(&ft_args("ft", &["--overwrite"]), p);
    assert!(p.join("ft/config.json").exists());
}

#[test]
fn output_equal_to_inside_or_containing_an_input_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    tiny_and_data(p);
    let before = read(&p.join("tiny/model.safetensors"));
    for (out, why) in [
        ("tiny", "is the input model"),
        ("tiny/sub", "is inside the input model"),
        (".", "contains the current directory"),
        ("qa.jsonl", "is the data"),
    ] {
        let e = fails(&ft_args(out, &["--overwrite"]), p);
        assert!(e.contains(why), "--out {out}: {e}");
    }
    // the run directory may not be the output either
    let e = fails(&ft_args("o", &["--run-dir", "o"]), p);
    assert!(e.contains("run directory"), "{e}");
    let e = fails(&ft_args("o", &["--run-dir", "o/run"]), p);
    assert!(e.contains("run directory"), "{e}");
    assert_eq!(read(&p.join("tiny/model.safetensors")), before);
    assert!(!p.join("o").exists());
    // eval into the model, report over its own input
    ok(
        &[
            "eval",
            "--model",
            "tiny",
            "--benchmark",
            ".",
            "--forget-split",
            "qa",
            "--out",
            "ev",
            "--set",
            "max_new_tokens=4",
            "--set",
            "sets=[\"forget\"]",
        ],
        p,
    );
    let e = fails(
        &[
            "eval",
            "--model",
            "tiny",
            "--benchmark",
            ".",
            "--forget-split",
            "qa",
            "--out",
            "tiny",
        ],
        p,
    );
    assert!(e.contains("is the model"), "{e}");
    let eval_before = read(&p.join("ev/TOFU_EVAL.json"));
    let e = fails(
        &["report", "ev", "--out", "ev/TOFU_EVAL.json", "--overwrite"],
        p,
    );
    assert!(e.contains(".html"), "{e}");
    ok(&["report", "ev", "--out", "ev/r.html"], p);
    let e = fails(&["report", "ev", "--out", "ev/r.html"], p);
    assert!(e.contains("--overwrite"), "{e}");
    assert_eq!(read(&p.join("ev/TOFU_EVAL.json")), eval_before);
    assert_eq!(read(&p.join("tiny/model.safetensors")), before);
}

#[test]
fn failed_rerun_leaves_the_previous_run_untouched() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    tiny_and_data(p);
    ok(&ft_args("o", &[]), p);
    let snapshot = |f: &str| read(&p.join(f));
    let (run, cfg, log, model) = (
        snapshot("o.run/run.json"),
        snapshot("o.run/config.toml"),
        snapshot("o.run/train_log.jsonl"),
        snapshot("o/model.safetensors"),
    );
    // a typo in the data path, with --overwrite: validation fails before anything is replaced
    let e = fails(
        &[
            "finetune",
            "--model",
            "tiny",
            "--data",
            "qa.jsonnl",
            "--out",
            "o",
            "--overwrite",
        ],
        p,
    );
    assert!(e.contains("qa.jsonnl"), "{e}");
    // a bad item in the data
    std::fs::write(p.join("bad.jsonl"), "{\"question\": \"q\"}\n").unwrap();
    let e = fails(
        &[
            "finetune",
            "--model",
            "tiny",
            "--data",
            "bad.jsonl",
            "--out",
            "o",
            "--overwrite",
        ],
        p,
    );
    assert!(e.contains("bad.jsonl:1:"), "{e}");
    assert_eq!(snapshot("o.run/run.json"), run);
    assert_eq!(snapshot("o.run/config.toml"), cfg);
    assert_eq!(snapshot("o.run/train_log.jsonl"), log);
    assert_eq!(snapshot("o/model.safetensors"), model);
    // and nothing is left behind: no temporaries, no lock files
    assert_eq!(
        entries(p),
        ["bad.jsonl", "o", "o.run", "qa.jsonl", "tiny"],
        "stray files"
    );
}

/// Regression (the sweep's kill/resume test failing once in CI): a run killed while it wrote
/// run.json left only `.run.json.tmp-PID` in its run directory; every later run on that output
/// was refused ("holds an earlier run", then with --overwrite "not a run directory").
#[test]
fn run_killed_while_writing_run_json_can_be_run_again() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    tiny_and_data(p);
    std::fs::create_dir(p.join("o.run")).unwrap();
    // a PID above Linux's pid_max: a process that is gone
    std::fs::write(p.join("o.run/.run.json.tmp-2147483632"), b"{\"comm").unwrap();
    ok(&ft_args("o", &[]), p);
    assert_eq!(
        entries(&p.join("o.run")),
        ["config.toml", "run.json", "train_log.jsonl"]
    );
}

/// A retain set that holds the forget set (`retain` given the forget file) made GradDiff-style
/// runs train ascent and descent on the same items and report success; now refused before any
/// output is written, and a partial overlap is said in the notes.
#[test]
fn forget_set_inside_the_retain_set_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    tiny_and_data(p);
    let run = |retain: &str, method: &str, out: &str| {
        let (r, o, m) = (
            format!("retain={retain}"),
            format!("out={out}"),
            format!("method={method}"),
        );
        common::run(&run_args(&["model=tiny", "forget=qa.jsonl", &r, &o, &m]), p)
    };
    let o = run("qa.jsonl", "npo+gd", "u");
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("every item of the forget set qa.jsonl is also in the retain set qa.jsonl"),
        "{e}"
    );
    assert!(!p.join("u").exists() && !p.join("u.run").exists());
    // half of it: runs, and says so
    let half: String = SHORT_QA
        .lines()
        .take(2)
        .map(|l| l.to_string() + "\n")
        .collect();
    std::fs::write(p.join("half.jsonl"), half).unwrap();
    let o = run("half.jsonl", "ga+gd", "h");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let notes = std::fs::read_to_string(p.join("h.run/notes.txt")).unwrap();
    assert!(
        notes.contains("2 of the 4 forget items of task 1 are also retain items"),
        "{notes}"
    );
    // a method without a retain term only reads the retain set for its log
    let o = run("qa.jsonl", "ga", "g");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `--out` naming a FIFO (or, run as root, `/dev/null`) with `--overwrite` replaced the special
/// file with a regular one; now refused, the FIFO left as it was.
#[test]
fn special_files_are_never_replaced() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    tiny_and_data(p);
    let fifo = p.join("pipe.gguf");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipped: mkfifo is not available");
        return;
    }
    let e = fails(
        &[
            "export",
            "--model",
            "tiny",
            "--out",
            "pipe.gguf",
            "--overwrite",
        ],
        p,
    );
    assert!(e.contains("not a regular file"), "{e}");
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn concurrent_runs_on_one_output_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    tiny_and_data(p);
    let args = ft_args("o", &["--set", "epochs=100000", "--set", "batch_size=1"]);
    let (mut first, running) = spawn_until(&args, p, || {
        std::fs::metadata(p.join("o.run/train_log.jsonl")).is_ok_and(|m| m.len() > 0)
    });
    assert!(running, "the first run did not start");
    let e = fails(&args, p);
    assert!(e.contains("being written by process"), "{e}");
    let e = fails(&ft_args("o2", &["--run-dir", "o.run"]), p);
    assert!(e.contains("being written by process"), "{e}");
    first.kill().unwrap();
    first.wait().unwrap();
    // the killed run's lock does not block a later one
    ok(&ft_args("o", &["--overwrite"]), p);
}

#[test]
fn finetune_killed_with_sigkill_resumes_bit_identically() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    tiny_and_data(p);
    let common = [
        "--set",
        "epochs=600",
        "--set",
        "batch_size=2",
        "--set",
        "grad_accum=2",
        "--set",
        "save_every=7",
        "--set",
        "keep_checkpoints=2",
        "--set",
        "lr=1e-3",
    ];
    ok(&ft_args("a", &common), p);
    kill_and_resume(p, &ft_args("b", &common), "b.run", 20);
    assert_eq!(
        read(&p.join("a/model.safetensors")),
        read(&p.join("b/model.safetensors")),
        "resumed weights differ from an uninterrupted run"
    );
    assert_eq!(
        log_without_timing(&p.join("a.run/train_log.jsonl")),
        log_without_timing(&p.join("b.run/train_log.jsonl"))
    );
    // only the newest two checkpoints are kept; no temporaries of the killed run remain
    let ck: Vec<String> = entries(&p.join("b.run"))
        .into_iter()
        .filter(|e| e.contains("checkpoint"))
        .collect();
    assert_eq!(ck.len(), 2, "{ck:?}");
    assert!(
        entries(p).iter().all(|e| !e.contains(".tmp-")),
        "{:?}",
        entries(p)
    );
    // a resumed run must use the same config
    std::fs::remove_dir_all(p.join("b")).unwrap();
    let mut other = ft_args("b", &common).to_vec();
    other.extend(["--set", "lr=2e-3", "--resume"]);
    let e = fails(&other, p);
    assert!(e.contains("--resume") && e.contains("lr"), "{e}");
}

#[test]
fn continual_unlearning_killed_with_sigkill_resumes_bit_identically() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    tiny_and_data(p);
    let lines: Vec<&str> = SHORT_QA.lines().collect();
    std::fs::write(p.join("retain.jsonl"), lines[2..].join("\n")).unwrap();
    // two tasks, the previous task's model as reference, a resident reference (KL) and
    // reference scores (NPO): every piece of state a resume has to rebuild
    let cfg = |out: &str| {
        format!(
            "model = \"tiny\"\nforget = \"qa.jsonl\"\nforget_tasks = 2\nretain = \"retain.jsonl\"\n\
             out = \"{out}\"\nmethod = \"npo+kl\"\nref = \"previous_task\"\n\
             [train]\nlr = 1e-3\nepochs = 120\nbatch_size = 1\nsave_every = 5\nkeep_checkpoints = 1\n"
        )
    };
    std::fs::write(p.join("a.toml"), cfg("ua")).unwrap();
    std::fs::write(p.join("b.toml"), cfg("ub")).unwrap();
    ok(&["run", "--config", "a.toml"], p);
    // killed in the second task (each task has 2 items × 120 epochs = 240 steps)
    kill_and_resume(p, &["run", "--config", "b.toml"], "ub.run", 300);
    assert_eq!(
        read(&p.join("ua/model.safetensors")),
        read(&p.join("ub/model.safetensors")),
        "resumed weights differ from an uninterrupted run"
    );
    assert_eq!(
        log_without_timing(&p.join("ua.run/train_log.jsonl")),
        log_without_timing(&p.join("ub.run/train_log.jsonl"))
    );
    assert_eq!(
        read(&p.join("ua.run/eval_log.jsonl")),
        read(&p.join("ub.run/eval_log.jsonl"))
    );
    assert!(read(&p.join("ub.run/notes.txt"))
        .windows(8)
        .any(|w| w == b"resuming"));
}

#[test]
fn resume_without_a_checkpoint_or_run_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    tiny_and_data(p);
    let e = fails(&ft_args("o", &["--resume"]), p);
    assert!(e.contains("nothing to resume"), "{e}");
    ok(&ft_args("o", &[]), p);
    std::fs::remove_dir_all(p.join("o")).unwrap();
    let e = fails(&ft_args("o", &["--resume"]), p);
    assert!(e.contains("no checkpoint"), "{e}");
    let e = fails(&ft_args("o", &["--resume", "--overwrite"]), p);
    assert!(e.contains("cannot be used with"), "{e}");
}

#[test]
fn unwritable_output_fails_before_the_first_step() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    tiny_and_data(p);
    std::fs::create_dir(p.join("ro")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p.join("ro"), std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::write(p.join("ro/probe"), b"").is_ok() {
        eprintln!("running as a user who can write a read-only directory (root): skipped");
        return;
    }
    let t = Instant::now();
    let e = fails(&ft_args("ro/o", &["--set", "epochs=100000"]), p);
    assert!(e.contains("ro"), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "trained before failing"
    );
    assert!(!p.join("ro/o.run").exists());
}

// ---- wrong numbers reported as right ---------------------------------------------------------

fn eval_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
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
    ];
    v.extend_from_slice(extra);
    v
}

fn agg(p: &Path, f: &str, metric: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join(f)).unwrap()).unwrap();
    v[metric]["agg_value"].clone()
}

/// A TOFU-layout benchmark of the four QA pairs (forget = first two, holdout = last two).
fn bench_dir(p: &Path) {
    let b = p.join("bench");
    std::fs::create_dir_all(&b).unwrap();
    let lines: Vec<String> = SHORT_QA
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["paraphrased_answer"] = v["answer"].clone();
            v["perturbed_answer"] = serde_json::json!(["wolf 12", "eagle 3"]);
            v.to_string()
        })
        .collect();
    std::fs::write(b.join("forget.jsonl"), lines[..2].join("\n")).unwrap();
    std::fs::write(b.join("holdout.jsonl"), lines[2..].join("\n")).unwrap();
    std::fs::write(b.join("retain_perturbed.jsonl"), lines[2..].join("\n")).unwrap();
}

#[test]
fn stale_cached_evaluation_is_never_reported_as_fresh() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    tiny_and_data(p);
    bench_dir(p);
    // a model that memorised the pairs: its forget truth ratios differ from the random one's
    memorise(p, "qa.jsonl", "other");
    // two different "retain logs": evaluations of two different models
    ok(&eval_args("ev_self", &[]), p);
    ok(
        &[
            "eval",
            "--model",
            "other",
            "--benchmark",
            "bench",
            "--forget-split",
            "forget",
            "--out",
            "ev_other",
            "--set",
            "max_new_tokens=4",
        ],
        p,
    );
    std::fs::copy(p.join("ev_self/TOFU_EVAL.json"), p.join("log_self.json")).unwrap();
    std::fs::copy(p.join("ev_other/TOFU_EVAL.json"), p.join("log_other.json")).unwrap();
    let fresh = |log: &str, out: &str| {
        ok(&eval_args(out, &["--retain-logs", log]), p);
        agg(p, &format!("{out}/TOFU_EVAL.json"), "forget_quality")
    };
    let fq_self = fresh("log_self.json", "f1");
    let fq_other = fresh("log_other.json", "f2");
    assert_eq!(fq_self.as_f64(), Some(1.0));
    assert_ne!(fq_self, fq_other);
    // the same output directory with the other retain log: recomputed, not the cached value
    ok(&eval_args("ev", &["--retain-logs", "log_self.json"]), p);
    let out = ok(&eval_args("ev", &["--retain-logs", "log_other.json"]), p);
    assert_eq!(
        agg(p, "ev/TOFU_EVAL.json", "forget_quality"),
        fq_other,
        "{out}"
    );
    assert!(out.contains("passes run: none (cached)"), "{out}");
    // an edited data file at the same path: the passes run again
    let f = p.join("bench/forget.jsonl");
    let text = std::fs::read_to_string(&f)
        .unwrap()
        .replace("zebra 41", "zebra 42");
    std::fs::write(&f, text).unwrap();
    let out = ok(&eval_args("ev", &["--retain-logs", "log_other.json"]), p);
    assert!(!out.contains("none (cached)"), "{out}");
    ok(&eval_args("fresh", &["--retain-logs", "log_other.json"]), p);
    assert_eq!(
        read(&p.join("ev/TOFU_EVAL.json")),
        read(&p.join("fresh/TOFU_EVAL.json")),
        "the resumed evaluation differs from a fresh one"
    );
    // run.json records what the results came from
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("ev/run.json")).unwrap()).unwrap();
    let roles: Vec<&str> = run["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["role"].as_str().unwrap())
        .collect();
    assert!(
        roles.contains(&"model") && roles.contains(&"retain log"),
        "{roles:?}"
    );
    assert!(run["inputs"][0]["sha256"].as_str().unwrap().len() == 64);
}

#[test]
fn non_finite_models_never_reach_a_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    tiny_and_data(p);
    // at config load
    let e = fails(&ft_args("o", &["--set", "lr=nan"]), p);
    assert!(
        e.contains("`lr` must be a finite number > 0 (got NaN)"),
        "{e}"
    );
    assert!(!p.join("o").exists() && !p.join("o.run").exists());
    // a corrupted GGUF whose weights dequantise to NaN
    let md =
        unlearn::model::hf::ModelDir::load(&p.join("tiny"), &candle_core::Device::Cpu).unwrap();
    write_gguf(
        &md,
        candle_core::quantized::GgmlDType::F32,
        &p.join("bad.gguf"),
        |name, t| {
            if name == "blk.0.ffn_up.weight" {
                (t * f64::NAN).unwrap()
            } else {
                t
            }
        },
    );
    let e = fails(&["import", "bad.gguf", "--out", "imp"], p);
    assert!(
        e.contains("mlp.up_proj.weight") && e.contains("non-finite"),
        "{e}"
    );
    assert!(!p.join("imp").exists());
    // a model directory holding NaN: refused when loaded, by every command
    std::fs::create_dir(p.join("nan")).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(p.join("tiny").join(f), p.join("nan").join(f)).unwrap();
    }
    let mut t =
        candle_core::safetensors::load(p.join("tiny/model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let w = t.remove("model.norm.weight").unwrap();
    t.insert("model.norm.weight".into(), (w * f64::INFINITY).unwrap());
    candle_core::safetensors::save(&t, p.join("nan/model.safetensors")).unwrap();
    for args in [
        vec!["generate", "--model", "nan", "--prompt", "hi"],
        vec![
            "eval",
            "--model",
            "nan",
            "--benchmark",
            ".",
            "--forget-split",
            "qa",
            "--out",
            "ev",
        ],
        vec![
            "finetune", "--model", "nan", "--data", "qa.jsonl", "--out", "o",
        ],
    ] {
        let e = fails(&args, p);
        assert!(
            e.contains("model.norm.weight") && e.contains("non-finite"),
            "{args:?}: {e}"
        );
    }
    // training that diverges stops with the last checkpoint named and saves nothing
    let e = fails(
        &ft_args(
            "o",
            &[
                "--set",
                "lr=1e30",
                "--set",
                "warmup_ratio=0",
                "--set",
                "max_grad_norm=0",
                "--set",
                "save_every=1",
            ],
        ),
        p,
    );
    assert!(e.contains("non-finite"), "{e}");
    assert!(!p.join("o").exists());
}

#[test]
fn empty_or_wrong_inputs_are_errors_not_successes() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    tiny_and_data(p);
    bench_dir(p);
    std::fs::create_dir(p.join("empty")).unwrap();
    // eval on an empty folder, a mistyped split, an unreadable retain log
    let e = fails(
        &[
            "eval",
            "--model",
            "tiny",
            "--benchmark",
            "empty",
            "--out",
            "e1",
        ],
        p,
    );
    assert!(e.contains("no forget split"), "{e}");
    let e = fails(
        &[
            "eval",
            "--model",
            "tiny",
            "--benchmark",
            "bench",
            "--forget-split",
            "forgett",
            "--out",
            "e2",
        ],
        p,
    );
    assert!(e.contains("forgett") && e.contains("it has: forget"), "{e}");
    std::fs::write(p.join("log.json"), b"{\"not\": \"an evaluation\"}").unwrap();
    let e = fails(&eval_args("e3", &["--retain-logs", "log.json"]), p);
    assert!(
        e.contains("log.json") && e.contains("forget_truth_ratio"),
        "{e}"
    );
    let e = fails(&eval_args("e4", &["--retain-logs", "nowhere.json"]), p);
    assert!(e.contains("nowhere.json"), "{e}");
    for o in ["e1", "e2", "e3", "e4"] {
        assert!(!p.join(o).join("TOFU_EVAL.json").exists(), "{o}");
    }
    // an empty data file
    std::fs::write(p.join("none.jsonl"), b"\n\n").unwrap();
    let e = fails(
        &[
            "finetune",
            "--model",
            "tiny",
            "--data",
            "none.jsonl",
            "--out",
            "o",
        ],
        p,
    );
    assert!(e.contains("no items"), "{e}");
    // selfgen that produces nothing
    let e = fails(
        &[
            "selfgen",
            "--model",
            "tiny",
            "--count",
            "3",
            "--out",
            "gen.jsonl",
            "--set",
            "min_chars=100000",
            "--set",
            "max_new_tokens=4",
        ],
        p,
    );
    assert!(e.contains("no usable text"), "{e}");
    assert!(!p.join("gen.jsonl").exists());
    // init: shapes its own loader would reject
    let e = fails(
        &["init", "--out", "bad", "--hidden", "30", "--heads", "4"],
        p,
    );
    assert!(e.contains("not divisible"), "{e}");
    let e = fails(&["init", "--out", "bad", "--heads", "0"], p);
    assert!(e.contains("--heads"), "{e}");
    assert!(!p.join("bad").exists());
    // a prompt longer than the context
    let long = "word ".repeat(200);
    let e = fails(
        &["generate", "--model", "tiny", "--prompt", &long, "--plain"],
        p,
    );
    assert!(e.contains("context"), "{e}");
    // absurd config.json values
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("tiny/config.json")).unwrap())
            .unwrap();
    for (k, v, why) in [
        ("rope_theta", serde_json::json!(0.0), "rope_theta"),
        ("rms_norm_eps", serde_json::json!(-1e-5), "rms_norm_eps"),
        ("max_position_embeddings", serde_json::json!(1), "too short"),
    ] {
        let mut c = cfg.clone();
        c[k] = v;
        std::fs::write(p.join("tiny/config.json"), c.to_string()).unwrap();
        let e = fails(&["generate", "--model", "tiny", "--prompt", "hi"], p);
        assert!(e.contains("config.json") && e.contains(why), "{k}: {e}");
    }
}

#[test]
fn hyperparameters_are_range_checked_when_the_config_loads() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    tiny_and_data(p);
    for (set, key) in [
        ("lr=-1", "`lr`"),
        ("batch_size=0", "`batch_size`"),
        ("epochs=0", "`epochs`"),
        ("grad_accum=0", "`grad_accum`"),
        ("adamw.beta1=1.5", "`adamw.beta1`"),
        ("warmup_ratio=2", "`warmup_ratio`"),
        ("sophia.rho=-0.1", "`sophia.rho`"),
    ] {
        let e = fails(&ft_args("o", &["--set", set]), p);
        assert!(e.contains(key), "{set}: {e}");
    }
    let run = |sets: &[&str]| {
        let mut all = vec!["model=tiny", "forget=qa.jsonl", "retain=qa.jsonl", "out=u"];
        all.extend_from_slice(sets);
        fails(&run_args(&all), p)
    };
    for (sets, key) in [
        (vec!["method=ga+gd", "method.gamma=-1"], "`method.gamma`"),
        (
            vec!["method=npo", "method.forget.beta=-0.1"],
            "`method.forget.beta`",
        ),
        (vec!["method=ga", "train.lr=nan"], "`train.lr`"),
        (vec!["method=ga+gd", "eval.min_k=nan"], "`eval.min_k`"),
        // a value of the wrong kind or an unknown variant names its key too (it used to say
        // only "unknown variant `f16`, expected ...")
        (
            vec!["method=ga", "dtype=f16"],
            "`dtype`: unknown variant `f16`",
        ),
        (
            vec!["method=ga", "train.lr=fast"],
            "`train.lr`: invalid type",
        ),
        (
            vec!["method=npo+gd", "method.alpha=x"],
            "`method.alpha`: invalid type",
        ),
        (
            vec!["method=ga", "train.adamw.beta1=x"],
            "`train.adamw.beta1`",
        ),
        (
            vec!["method=npo+gd", "method.forget.beta=x"],
            "`method.forget.beta`: invalid type",
        ),
    ] {
        let e = run(&sets);
        assert!(e.contains(key), "{sets:?}: {e}");
        assert_eq!(
            e.trim_end().lines().count(),
            1,
            "{sets:?}: not one line: {e}"
        );
    }
    // a layer the model does not have: refused, not clamped
    let e = run(&["method=rmu", "method.forget.layer=99"]);
    assert!(e.contains("layer = 99") && e.contains("1 layers"), "{e}");
    assert!(!p.join("u").exists() && !p.join("u.run").exists());
    let e = fails(&["bench", "--model", "tiny", "--batch", "0"], p);
    assert!(e.contains("--batch"), "{e}");
    let e = fails(&["bench", "--model", "tiny", "--gen-prompt", "0"], p);
    assert!(e.contains("--gen-prompt"), "{e}");
}

// ---- crashes and hangs -----------------------------------------------------------------------

/// A copy of `tiny` whose tokenizer_config.json carries `template`.
fn with_template(p: &Path, name: &str, template: &str) {
    let dir = p.join(name);
    std::fs::create_dir(&dir).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(p.join("tiny").join(f), dir.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(p.join("tiny/tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    cfg["chat_template"] = template.into();
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
}

#[test]
fn hostile_chat_templates_are_bounded_and_named() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    tiny_and_data(p);
    let nested = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}{{ messages[0]['content'] }}";
    let doubling = "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}{{ messages[0]['content'] }}";
    with_template(p, "loops", nested);
    with_template(p, "bomb", doubling);
    with_template(p, "empty", "");
    with_template(p, "deaf", "<|im_start|>assistant\n");
    for (m, why) in [
        ("loops", "template instructions"),
        ("bomb", "MiB of memory"),
        ("empty", "empty"),
        ("deaf", "does not contain the user's message"),
    ] {
        for args in [
            vec!["generate", "--model", m, "--prompt", "hi"],
            vec!["finetune", "--model", m, "--data", "qa.jsonl", "--out", "o"],
            vec!["selfgen", "--model", m, "--count", "1", "--out", "g.jsonl"],
        ] {
            let t = Instant::now();
            let o = run(&args, p);
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success(), "{args:?} succeeded");
            assert!(!e.contains("panicked"), "{e}");
            assert!(
                e.contains("tokenizer_config.json") && e.contains(why),
                "{args:?}: {e}"
            );
            assert!(e.lines().count() <= 2, "{args:?}: a one-line error: {e}");
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{args:?} took {:?}",
                t.elapsed()
            );
        }
        // the plain prompt does not use the template
        ok(
            &[
                "generate",
                "--model",
                m,
                "--prompt",
                "hi",
                "--plain",
                "--max-new-tokens",
                "2",
            ],
            p,
        );
    }
}

#[test]
fn panics_on_empty_or_huge_inputs_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    tiny_and_data(p);
    let e = fails(&["generate", "--model", "tiny", "--prompt", ""], p);
    assert!(e.contains("empty"), "{e}");
    let e = fails(&["generate", "--model", "tiny", "--prompt", "", "--raw"], p);
    assert!(e.contains("empty"), "{e}");
    let e = fails(
        &[
            "init", "--out", "huge", "--hidden", "65536", "--layers", "1024", "--vocab", "16000000",
        ],
        p,
    );
    assert!(e.contains("GiB"), "{e}");
    assert!(!p.join("huge").exists());
    let e = fails(&["init", "--out", "huge", "--layers", "100000000"], p);
    assert!(e.contains("--layers"), "{e}");
}

// ---- small things users notice -----------------------------------------------------------------

#[test]
fn small_things_users_notice() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    tiny_and_data(p);
    // a UTF-8 byte order mark is accepted
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(SHORT_QA.as_bytes());
    std::fs::write(p.join("bom.jsonl"), bom).unwrap();
    ok(
        &[
            "finetune",
            "--model",
            "tiny",
            "--data",
            "bom.jsonl",
            "--out",
            "o",
            "--set",
            "epochs=1",
        ],
        p,
    );
    // the saved model: every file 0644 (umask 022 here), a safetensors header with metadata
    use std::os::unix::fs::PermissionsExt;
    let mode = |f: &str| std::fs::metadata(p.join(f)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("o/model.safetensors"), mode("o/config.json"));
    let st = read(&p.join("o/model.safetensors"));
    let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&st[8..8 + n]).unwrap();
    assert_eq!(header["__metadata__"]["format"], "pt");
    // an over-long question gets a short error
    let q = "why ".repeat(4000);
    std::fs::write(
        p.join("long.jsonl"),
        serde_json::json!({"question": q, "answer": "because"}).to_string(),
    )
    .unwrap();
    let e = fails(
        &[
            "finetune",
            "--model",
            "tiny",
            "--data",
            "long.jsonl",
            "--out",
            "o2",
        ],
        p,
    );
    assert!(
        e.len() < 600 && e.contains("characters"),
        "{} bytes: {e}",
        e.len()
    );
    // a corrupt safetensors file is named as such, with its path
    std::fs::create_dir(p.join("broken")).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(p.join("tiny").join(f), p.join("broken").join(f)).unwrap();
    }
    std::fs::write(
        p.join("broken/model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json",
    )
    .unwrap();
    let e = fails(&["generate", "--model", "broken", "--prompt", "hi"], p);
    assert!(
        e.contains("broken/model.safetensors: safetensors:") && !e.contains("GGUF"),
        "{e}"
    );
    // nothing left behind by the failures above
    let stray: Vec<String> = entries(p)
        .into_iter()
        .filter(|e| e.contains(".tmp-") || e.ends_with(".lock"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}
