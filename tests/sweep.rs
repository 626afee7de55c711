//! Issue #21: `unlearn sweep` on a tiny model, locally (resume after kill -9, no finished point
//! rerun, identical output on rerun, failures recorded) and through a real Slurm cluster when
//! one is reachable (.ci/run starts a single-node cluster on 127.0.0.1 and sets
//! UNLEARN_TEST_SLURM=1, which makes the Slurm test mandatory).
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ok, run};

/// A tiny model, a TOFU-layout benchmark (tests/fixtures/hub/tofu-mini normalised, with the
/// retain set standing in for real authors and world facts so model utility is defined) and
/// the retain logs (the model's own evaluation).
fn setup(p: &Path) {
    common::init_tiny(p, &[]);
    common::write_tofu_mini(
        &p.join("bench"),
        &[
            ("forget01_perturbed", "forget01_perturbed"),
            ("holdout01", "holdout01"),
            ("retain_perturbed", "retain_perturbed"),
            ("retain_perturbed", "real_authors_perturbed"),
            ("retain_perturbed", "world_facts_perturbed"),
        ],
    );
    ok(
        &[
            "eval",
            "--model",
            "tiny",
            "--benchmark",
            "bench",
            "--forget-split",
            "forget01",
            "--out",
            "retain_ev",
            "--set",
            "max_new_tokens=4",
        ],
        p,
    );
}

fn sweep_toml(out: &str, grid: &str, extra: &str) -> String {
    format!(
        r#"out = "{out}"
[base]
model = "tiny"
forget = "bench/forget01_perturbed.jsonl"
retain = "bench/retain_perturbed.jsonl"
method = "ga+gd"
[base.train]
lr = 1e-3
epochs = 1
max_steps = 3
save_every = 1
batch_size = 1
[grid]
{grid}
[eval]
data = "bench"
forget_split = "forget01"
retain_logs = "retain_ev/TOFU_EVAL.json"
max_new_tokens = 4
{extra}"#
    )
}

const GRID: &str = "method = [\"ga+gd\", \"npo+gd\"]\n\"train.lr\" = [1e-3, 3e-3]";

fn results(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(rd) = std::fs::read_dir(dir.join("points")) else {
        return vec![];
    };
    let mut v: Vec<(String, Vec<u8>)> = rd
        .flatten()
        .filter_map(|e| {
            let r = std::fs::read(e.path().join("result.json")).ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), r))
        })
        .collect();
    v.sort();
    v
}

/// LEADERBOARD.json without wall times (the only thing that differs between executors).
fn board(dir: &Path) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("time_s");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("LEADERBOARD.json")).unwrap())
            .unwrap();
    strip(&mut v);
    v
}

#[test]
fn local_sweep_resumes_after_kill_and_reruns_identically() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    setup(p);
    std::fs::write(p.join("sweep.toml"), sweep_toml("sw", GRID, "")).unwrap();
    // kill -9 once the first point has finished
    let mut child = Command::new(common::bin())
        .args(["sweep", "--config", "sweep.toml"])
        .current_dir(p)
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while results(&p.join("sw")).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(120), "no point finished");
        if let Some(s) = child.try_wait().unwrap() {
            panic!("the sweep ended before it could be killed: {s}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = results(&p.join("sw"));
    assert!(!before.is_empty() && before.len() < 4, "{}", before.len());

    let o = run(&["sweep", "--config", "sweep.toml"], p);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "4 points, {} finished, {} to run",
            before.len(),
            4 - before.len()
        )),
        "{err}"
    );
    let after = results(&p.join("sw"));
    assert_eq!(after.len(), 4);
    // finished points keep their model and logs, not the checkpoints they resumed from
    for e in std::fs::read_dir(p.join("sw/points")).unwrap() {
        let dir = e.unwrap().path();
        if !dir.join("point.toml").is_file() {
            continue; // not a point (a killed write's temporary)
        }
        let run = dir.join("run");
        assert!(
            run.join("train_log.jsonl").is_file(),
            "{}: {:?} {:?}, result.json: {}",
            run.display(),
            common::entries(&dir),
            run.is_dir().then(|| common::entries(&run)),
            std::fs::read_to_string(dir.join("result.json")).unwrap_or_default()
        );
        assert!(
            unlearn::train::checkpoint::list(&run).is_empty(),
            "{}",
            run.display()
        );
    }
    for (h, r) in &before {
        let now = &after.iter().find(|(x, _)| x == h).unwrap().1;
        assert_eq!(now, r, "finished point {h} was run again");
    }
    let files = ["LEADERBOARD.md", "LEADERBOARD.json", "leaderboard.html"];
    let first: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(p.join("sw").join(f)).unwrap())
        .collect();
    // a rerun runs nothing and writes the same files
    let out = ok(&["sweep", "--config", "sweep.toml"], p);
    assert!(out.contains("## Best by `forget_quality`"), "{out}");
    for (f, b) in files.iter().zip(&first) {
        assert_eq!(
            &std::fs::read(p.join("sw").join(f)).unwrap(),
            b,
            "{f} changed on rerun"
        );
    }
    // the killed-and-resumed sweep equals one that ran straight through
    std::fs::write(p.join("clean.toml"), sweep_toml("clean", GRID, "")).unwrap();
    ok(&["sweep", "--config", "clean.toml"], p);
    assert_eq!(board(&p.join("sw")), board(&p.join("clean")));
    // the choice follows the rule: highest forget quality at >= 0.95 x the target's utility
    let b = board(&p.join("sw"));
    let floor = b["rule"]["floor"].as_f64().unwrap();
    for best in b["best"]["forget_quality"].as_array().unwrap() {
        let m = best["method"].as_str().unwrap();
        let mine: Vec<&serde_json::Value> = b["points"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| {
                x["method"] == m && x["summary"]["model_utility"].as_f64().unwrap() >= floor
            })
            .collect();
        if best["meets_floor"].as_bool().unwrap() {
            let top = mine
                .iter()
                .map(|x| x["summary"]["forget_quality"].as_f64().unwrap())
                .fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(
                best["metrics"]["forget_quality"].as_f64().unwrap(),
                top,
                "{m}"
            );
        } else {
            assert!(mine.is_empty(), "{m}");
        }
    }
}

#[test]
fn failed_points_are_recorded_and_do_not_stop_the_sweep() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    setup(p);
    // max_len 6 cannot hold a question and its answer: that point fails when it runs
    std::fs::write(
        p.join("s.toml"),
        sweep_toml("sw", "\"train.max_len\" = [512, 6]", ""),
    )
    .unwrap();
    let out = ok(&["sweep", "--config", "s.toml"], p);
    assert!(out.contains("2 points: 1 finished, 1 failed"), "{out}");
    assert!(
        out.contains("failed: ") && out.contains("train.max_len=6"),
        "{out}"
    );
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("sw/LEADERBOARD.json")).unwrap())
            .unwrap();
    assert_eq!(j["failed"].as_array().unwrap().len(), 1);
    // an existing directory that is not a sweep is refused, and left as it was
    std::fs::create_dir_all(p.join("mine")).unwrap();
    std::fs::write(p.join("mine/notes.txt"), "keep").unwrap();
    std::fs::write(p.join("m.toml"), sweep_toml("mine", GRID, "")).unwrap();
    let o = run(&["sweep", "--config", "m.toml"], p);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a sweep"));
    assert_eq!(
        std::fs::read_to_string(p.join("mine/notes.txt")).unwrap(),
        "keep"
    );
    assert_eq!(std::fs::read_dir(p.join("mine")).unwrap().count(), 1);
}

fn slurm_up() -> bool {
    Command::new("sinfo")
        .arg("-h")
        .output()
        .map(|o| o.status.success() && !o.stdout.is_empty())
        .unwrap_or(false)
}

#[test]
fn slurm_sweep_runs_each_point_as_a_task_and_matches_the_local_one() {
    let required = std::env::var_os("UNLEARN_TEST_SLURM").is_some();
    if !slurm_up() {
        assert!(
            !required,
            "UNLEARN_TEST_SLURM is set but no Slurm cluster answers `sinfo`"
        );
        eprintln!("skipping: no Slurm cluster here (.ci/run starts one)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    setup(p);
    let slurm = "[executor]\nkind = \"slurm\"\n[executor.slurm]\ncpus = 1\nmem = \"1G\"\ntime = \"00:20:00\"\npoll_seconds = 1\n";
    std::fs::write(p.join("s.toml"), sweep_toml("sl", GRID, slurm)).unwrap();
    let out = ok(&["sweep", "--config", "s.toml", "--wait"], p);
    assert!(out.contains("4 points: 4 finished, 0 failed"), "{out}");
    // every point (and the target) ran as its own task of one array job
    let logs: Vec<String> = std::fs::read_dir(p.join("sl/slurm"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".out"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert_eq!(logs.len(), 5, "{logs:?}");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("sl/sweep.json")).unwrap()).unwrap();
    for pt in j["points"].as_array().unwrap() {
        let h = pt["hash"].as_str().unwrap();
        let n = logs
            .iter()
            .filter(|l| l.contains(&format!("sweep point {h}: done")) && l.contains("(Slurm task "))
            .count();
        assert_eq!(n, 1, "point {h}: {logs:?}");
    }
    // the same leaderboard as the local executor's
    std::fs::write(p.join("l.toml"), sweep_toml("lo", GRID, "")).unwrap();
    ok(&["sweep", "--config", "l.toml"], p);
    assert_eq!(board(&p.join("sl")), board(&p.join("lo")));
    // nothing left to submit: a second call only writes the leaderboard
    let o = run(&["sweep", "--config", "s.toml", "--wait"], p);
    assert!(String::from_utf8_lossy(&o.stderr).contains("every point has finished"));
}
