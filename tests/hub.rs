//! Issue #20: models and benchmarks by Hub id, through the real client (`hf-hub`) against a Hub
//! stand-in on 127.0.0.1 (tests/common/hub.rs), into the cache layout Python's
//! `huggingface_hub` uses (tests/fixtures/hub/python_cache_layout.json, from
//! scripts/hub_cache_golden.py, which runs huggingface_hub against the same stand-in).
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::hub::{Repo, Standin};

const LIMIT: Duration = Duration::from_secs(240);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hub")
}

/// `unlearn ARGS` in `cwd` with the Hub at `url`, the cache in `cwd/hf`, and `env` on top;
/// nothing of the caller's Hub settings leaks in.
fn unlearn(args: &[&str], cwd: &Path, url: &str, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(common::bin());
    c.args(args).current_dir(cwd);
    for v in [
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_OFFLINE",
        "HF_HOME",
        "HF_TOKEN_PATH",
        "UNLEARN_TOFU_DIR",
        "UNLEARN_MINILM_DIR",
    ] {
        c.env_remove(v);
    }
    c.env("HF_ENDPOINT", url)
        .env("HF_HUB_CACHE", cwd.join("hf"))
        .env("UNLEARN_CACHE", cwd.join("uc"))
        .env("XDG_CACHE_HOME", cwd.join("xdg"));
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("spawn unlearn")
}

fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(o: Output, what: &str) -> String {
    assert!(!o.status.success(), "{what} should fail");
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!e.contains("panicked"), "{what} panicked: {e}");
    e
}

const GEN: &[&str] = &[
    "generate",
    "--model",
    "org/tiny",
    "--prompt",
    "Hi",
    "--max-new-tokens",
    "4",
];

fn eval_args<'a>(model: &'a str, bench: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "eval",
        "--model",
        model,
        "--benchmark",
        bench,
        "--forget-split",
        "forget01",
        "--out",
        out,
        "--set",
        "max_new_tokens=4",
    ]
}

fn agg(dir: &Path, key: &str) -> f64 {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("TOFU_EVAL.json")).unwrap())
            .unwrap();
    v[key]["agg_value"]
        .as_f64()
        .unwrap_or_else(|| panic!("{key}: {}", v[key]))
}

/// The cache as huggingface_hub lays it out, hashes replaced by what they name (the same
/// normalisation as scripts/hub_cache_golden.py).
fn layout(cache: &Path, repos: &[(&str, &str)]) -> Vec<String> {
    use std::collections::HashMap;
    fn files(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                files(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut names: HashMap<String, String> = HashMap::new();
    for (kind, repo) in repos {
        let snaps = cache
            .join(format!("{kind}--{}", repo.replace('/', "--")))
            .join("snapshots");
        for c in std::fs::read_dir(&snaps).unwrap().flatten() {
            let commit = c.file_name().to_string_lossy().into_owned();
            names.insert(commit.clone(), format!("<commit {repo}>"));
            let mut fs = vec![];
            files(&c.path(), &mut fs);
            for f in fs {
                let rel = f
                    .strip_prefix(c.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let target = std::fs::read_link(&f).unwrap();
                let blob = target.file_name().unwrap().to_string_lossy().into_owned();
                names.insert(blob, format!("<blob {repo}:{rel}>"));
            }
        }
    }
    let map = |s: &str| {
        s.split('/')
            .map(|x| names.get(x).cloned().unwrap_or_else(|| x.to_string()))
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut out = vec![];
    for (kind, repo) in repos {
        let top = cache.join(format!("{kind}--{}", repo.replace('/', "--")));
        let mut fs = vec![];
        files(&top, &mut fs);
        for f in fs {
            let rel = f
                .strip_prefix(cache)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let part = rel.split('/').nth(1).unwrap();
            if !["blobs", "refs", "snapshots"].contains(&part) || rel.ends_with(".lock") {
                continue;
            }
            let mut line = map(&rel);
            if std::fs::symlink_metadata(&f)
                .unwrap()
                .file_type()
                .is_symlink()
            {
                line += &format!(
                    " -> {}",
                    map(&std::fs::read_link(&f).unwrap().to_string_lossy())
                );
            } else if part == "refs" {
                let c = std::fs::read_to_string(&f).unwrap();
                line += &format!(" = {}", names.get(c.trim()).cloned().unwrap_or("?".into()));
            }
            out.push(line);
        }
    }
    out.sort();
    out
}

fn standin(p: &Path) -> Standin {
    common::init_tiny(p, &[]);
    Standin::start(
        vec![
            Repo::from_dir("models", "org/tiny", &p.join("tiny")),
            Repo::from_dir("datasets", "org/tofu-mini", &fixtures().join("tofu-mini")),
        ],
        LIMIT,
    )
}

/// generate and eval by Hub id: the first call downloads, the second makes no request; the cache
/// is the one huggingface_hub writes; the benchmark's JSON-lines and parquet splits are read as
/// `datasets` reads them; offline mode works from the cache and fails clearly without it.
#[test]
fn hub_model_and_benchmark_end_to_end_then_offline() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let s = standin(p);
    let u = s.url.clone();

    ok(unlearn(GEN, p, &u, &[]), "generate org/tiny");
    let log = s.take_log();
    assert!(
        log.iter()
            .any(|l| l == "GET /api/models/org/tiny/revision/main"),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("/resolve/main/model.safetensors")),
        "{log:?}"
    );
    ok(unlearn(GEN, p, &u, &[]), "generate org/tiny again");
    assert_eq!(
        s.take_log(),
        Vec::<String>::new(),
        "the second call made requests"
    );

    ok(
        unlearn(&eval_args("org/tiny", "org/tofu-mini", "ev"), p, &u, &[]),
        "eval by Hub id",
    );
    assert!(s
        .take_log()
        .iter()
        .any(|l| l.starts_with("GET /api/datasets/org/tofu-mini")));
    // the same numbers as the local model on the normalised benchmark
    let bench = std::fs::read_dir(p.join("uc/benchmarks/datasets--org--tofu-mini"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bench_s = bench.to_string_lossy().into_owned();
    ok(
        unlearn(&eval_args("tiny", &bench_s, "ev_local"), p, &u, &[]),
        "eval local",
    );
    for k in [
        "forget_Q_A_Prob",
        "forget_truth_ratio",
        "retain_Q_A_Prob",
        "mia_loss",
    ] {
        assert_eq!(agg(&p.join("ev"), k), agg(&p.join("ev_local"), k), "{k}");
    }
    // every split as `datasets` reads it (JSON lines under .json names, parquet in folders)
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tofu-mini.expected.json")).unwrap(),
    )
    .unwrap();
    for (split, rows) in want["splits"].as_object().unwrap() {
        let got = unlearn::data::read_qa(&bench.join(format!("{split}.jsonl"))).unwrap();
        let rows = rows.as_array().unwrap();
        assert_eq!(got.len(), rows.len(), "{split}");
        for (g, r) in got.iter().zip(rows) {
            assert_eq!(g.question, r["question"].as_str().unwrap());
            assert_eq!(g.answer, r["answer"].as_str().unwrap());
            let pert: Vec<&str> = r["perturbed_answer"]
                .as_array()
                .map(|v| v.iter().map(|x| x.as_str().unwrap()).collect())
                .unwrap_or_default();
            assert_eq!(g.perturbed_answer, pert, "{split}");
            assert_eq!(
                g.paraphrased_question.as_deref(),
                r["paraphrased_question"].as_str()
            );
        }
    }
    ok(
        unlearn(&eval_args("org/tiny", "org/tofu-mini", "ev2"), p, &u, &[]),
        "eval again",
    );
    assert_eq!(
        s.take_log(),
        Vec::<String>::new(),
        "the second evaluation made requests"
    );
    // retain logs as a Hub file (hf://datasets/org/name/path), as open-unlearning publishes them
    let logs = std::fs::read(p.join("ev/TOFU_EVAL.json")).unwrap();
    s.add_repo(Repo::new(
        "datasets",
        "org/logs",
        vec![("tofu/retain/TOFU_EVAL.json".into(), logs)],
    ));
    let mut a = eval_args("org/tiny", "org/tofu-mini", "ev_fq");
    a.extend([
        "--retain-logs",
        "hf://datasets/org/logs/tofu/retain/TOFU_EVAL.json",
    ]);
    ok(unlearn(&a, p, &u, &[]), "eval with Hub retain logs");
    assert_eq!(agg(&p.join("ev_fq"), "forget_quality"), 1.0); // same model: identical distributions
    assert!(s
        .take_log()
        .iter()
        .any(|l| l.ends_with("/resolve/main/tofu/retain/TOFU_EVAL.json")));

    // the layout huggingface_hub writes
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("python_cache_layout.json")).unwrap(),
    )
    .unwrap();
    let want: Vec<String> = golden["python_layout"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        layout(
            &p.join("hf"),
            &[("models", "org/tiny"), ("datasets", "org/tofu-mini")]
        ),
        want
    );

    // offline: from the cache without a request; a clear error where the cache lacks it
    let off = [("HF_HUB_OFFLINE", "1")];
    ok(unlearn(GEN, p, &u, &off), "generate offline");
    ok(
        unlearn(&eval_args("org/tiny", "org/tofu-mini", "ev3"), p, &u, &off),
        "eval offline",
    );
    let e = fails(
        unlearn(
            &["generate", "--model", "org/other", "--prompt", "Hi"],
            p,
            &u,
            &off,
        ),
        "offline without cache",
    );
    assert!(
        e.contains("HF_HUB_OFFLINE") && e.contains("org/other"),
        "{e}"
    );
    // `tofu` without UNLEARN_TOFU_DIR is the Hub dataset locuslab/TOFU
    let e = fails(
        unlearn(&eval_args("org/tiny", "tofu", "ev4"), p, &u, &off),
        "tofu offline",
    );
    assert!(
        e.contains("locuslab/TOFU") && e.contains("HF_HUB_OFFLINE"),
        "{e}"
    );
    assert_eq!(
        s.take_log(),
        Vec::<String>::new(),
        "offline mode made requests"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    // … and once the Hub has it, `--benchmark tofu` reads it, then offline from the cache
    s.add_repo(Repo::from_dir(
        "datasets",
        "locuslab/TOFU",
        &fixtures().join("tofu-mini"),
    ));
    ok(
        unlearn(&eval_args("org/tiny", "tofu", "ev5"), p, &u, &[]),
        "eval --benchmark tofu",
    );
    assert!(s
        .take_log()
        .iter()
        .any(|l| l.starts_with("GET /api/datasets/locuslab/TOFU")));
    ok(
        unlearn(&eval_args("org/tiny", "tofu", "ev6"), p, &u, &off),
        "eval tofu offline",
    );
    assert_eq!(
        s.take_log(),
        Vec::<String>::new(),
        "offline mode made requests"
    );
    assert_eq!(
        agg(&p.join("ev6"), "forget_Q_A_Prob"),
        agg(&p.join("ev"), "forget_Q_A_Prob")
    );
}

/// 401/403 name the repository and HF_TOKEN; a wrong name says it is not found.
#[test]
fn gated_and_missing_repositories_say_what_to_do() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let s = standin(p);
    s.set_token("org/tiny", Some("hf_right"));
    let e = fails(unlearn(GEN, p, &s.url, &[]), "gated without a token");
    assert!(
        e.contains("org/tiny") && e.contains("HF_TOKEN") && e.contains("401"),
        "{e}"
    );
    let e = fails(
        unlearn(GEN, p, &s.url, &[("HF_TOKEN", "hf_wrong")]),
        "wrong token",
    );
    assert!(
        e.contains("org/tiny") && e.contains("403") && e.contains("no access"),
        "{e}"
    );
    ok(
        unlearn(GEN, p, &s.url, &[("HF_TOKEN", "hf_right")]),
        "with the token",
    );
    // the token file huggingface_hub's login writes is read too ($HF_HOME/token)
    std::fs::create_dir_all(p.join("home")).unwrap();
    std::fs::write(p.join("home/token"), "hf_right\n").unwrap();
    let home = p.join("home").to_string_lossy().into_owned();
    let args = [
        "generate",
        "--model",
        "org/tiny@main",
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "2",
    ];
    std::fs::remove_dir_all(p.join("hf")).unwrap();
    ok(
        unlearn(&args, p, &s.url, &[("HF_HOME", &home)]),
        "token from $HF_HOME/token",
    );

    let e = fails(
        unlearn(
            &["generate", "--model", "org/nothing-here", "--prompt", "Hi"],
            p,
            &s.url,
            &[],
        ),
        "unknown repository",
    );
    assert!(
        e.contains("org/nothing-here") && e.contains("not found"),
        "{e}"
    );
    assert!(e.contains("no local directory"), "{e}");
    let e = fails(
        unlearn(
            &[
                "eval",
                "--model",
                "org/tiny",
                "--benchmark",
                "org/tiny",
                "--out",
                "x",
            ],
            p,
            &s.url,
            &[("HF_TOKEN", "hf_right")],
        ),
        "a model repository as a benchmark",
    );
    assert!(e.contains("org/tiny") && e.contains("not found"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
}

/// A transfer cut short resumes; one that keeps failing leaves no file that loads, and the next
/// call completes it.
#[test]
fn truncated_download_resumes_and_never_leaves_a_loadable_partial_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let s = standin(p);
    let weights = std::fs::read(p.join("tiny/model.safetensors")).unwrap();
    let snap_file = |p: &Path| -> Option<PathBuf> {
        let snaps = p.join("hf/models--org--tiny/snapshots");
        let c = std::fs::read_dir(snaps).ok()?.next()?.ok()?.path();
        let f = c.join("model.safetensors");
        f.exists().then_some(f)
    };

    // cut once: the client resumes from the partial file within the same call
    s.truncate("model.safetensors", 1);
    ok(
        unlearn(GEN, p, &s.url, &[]),
        "generate after one cut transfer",
    );
    assert_eq!(std::fs::read(snap_file(p).unwrap()).unwrap(), weights);
    let gets = s
        .take_log()
        .iter()
        .filter(|l| l.contains("/lfs-cdn/"))
        .count();
    assert!(
        gets >= 3,
        "expected a metadata request, a cut transfer and a resumed one: {gets}"
    );

    // cut every time: the call fails and nothing loadable is left
    std::fs::remove_dir_all(p.join("hf")).unwrap();
    s.truncate("model.safetensors", 100);
    let e = fails(
        unlearn(GEN, p, &s.url, &[]),
        "generate with every transfer cut",
    );
    assert!(
        e.contains("org/tiny") && e.contains("model.safetensors"),
        "{e}"
    );
    assert!(
        snap_file(p).is_none(),
        "a partial model.safetensors was published"
    );
    let blobs: Vec<String> = std::fs::read_dir(p.join("hf/models--org--tiny/blobs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let sha = common::hub::sha256(&weights);
    assert!(!blobs.contains(&sha), "{blobs:?}");
    assert!(blobs.contains(&format!("{sha}.part")), "{blobs:?}");
    // offline, the partial download is not taken for the model
    let e = fails(
        unlearn(GEN, p, &s.url, &[("HF_HUB_OFFLINE", "1")]),
        "offline, partial",
    );
    assert!(e.contains("model.safetensors"), "{e}");

    // the next call completes the download
    s.truncate("model.safetensors", 0);
    ok(unlearn(GEN, p, &s.url, &[]), "generate after the failure");
    assert_eq!(std::fs::read(snap_file(p).unwrap()).unwrap(), weights);
}

/// A sharded checkpoint (model.safetensors.index.json) in bf16 loads from the Hub as it does
/// from its directory.
#[test]
fn sharded_bf16_checkpoint_from_the_hub() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    common::init_tiny(p, &[]);
    let sh = p.join("sharded");
    std::fs::create_dir(&sh).unwrap();
    let dev = candle_core::Device::Cpu;
    let t = candle_core::safetensors::load(p.join("tiny/model.safetensors"), &dev).unwrap();
    let mut names: Vec<&String> = t.keys().collect();
    names.sort();
    let mut map = serde_json::Map::new();
    for (i, chunk) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let part: std::collections::HashMap<String, candle_core::Tensor> = chunk
            .iter()
            .map(|n| {
                map.insert(n.to_string(), file.clone().into());
                (
                    n.to_string(),
                    t[*n].to_dtype(candle_core::DType::BF16).unwrap(),
                )
            })
            .collect();
        candle_core::safetensors::save(&part, sh.join(&file)).unwrap();
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(sh.join("model.safetensors.index.json"), index.to_string()).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(p.join("tiny").join(f), sh.join(f)).unwrap();
    }
    let s = Standin::start(
        vec![
            Repo::from_dir("models", "org/sharded", &sh),
            Repo::from_dir("datasets", "org/tofu-mini", &fixtures().join("tofu-mini")),
        ],
        LIMIT,
    );
    ok(
        unlearn(
            &eval_args("org/sharded", "org/tofu-mini", "ev"),
            p,
            &s.url,
            &[],
        ),
        "eval sharded",
    );
    let log = s.take_log();
    for f in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        assert!(
            log.iter()
                .any(|l| l.ends_with(&format!("/resolve/main/{f}"))),
            "{f}: {log:?}"
        );
    }
    ok(
        unlearn(
            &eval_args("sharded", "org/tofu-mini", "ev_local"),
            p,
            &s.url,
            &[],
        ),
        "eval local",
    );
    for k in ["forget_Q_A_Prob", "forget_truth_ratio", "retain_Q_A_Prob"] {
        assert_eq!(agg(&p.join("ev"), k), agg(&p.join("ev_local"), k), "{k}");
    }
}

/// Issue #26: a general-ability task's data by Hub dataset id (`--data org/name`), the config's
/// folder chosen by `subset`: the parquet files are fetched once into the Hugging Face cache,
/// the second evaluation makes no request for them and gives the same numbers.
#[test]
fn general_ability_data_by_hub_id() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    common::init_tiny(p, &[]);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/harness/mmlu");
    let repo = p.join("mmlu-repo");
    std::fs::create_dir_all(repo.join("all")).unwrap();
    for f in ["test-00000-of-00001.parquet", "dev-00000-of-00001.parquet"] {
        std::fs::copy(src.join(f), repo.join("all").join(f)).unwrap();
    }
    std::fs::write(repo.join("README.md"), "mmlu fixture").unwrap();
    let s = Standin::start(
        vec![Repo::from_dir("datasets", "org/mmlu-mini", &repo)],
        LIMIT,
    );
    let u = s.url.clone();
    let run = |out: &str| {
        ok(
            unlearn(
                &[
                    "eval",
                    "--model",
                    "tiny",
                    "--benchmark",
                    "mmlu",
                    "--data",
                    "org/mmlu-mini",
                    "--set",
                    "subset=\"all\"",
                    "--set",
                    "num_fewshot=1",
                    "--out",
                    out,
                ],
                p,
                &u,
                &[],
            ),
            "eval mmlu by hub id",
        );
        let e: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(p.join(out).join("mmlu_EVAL.json")).unwrap(),
        )
        .unwrap();
        e["results"].clone()
    };
    let a = run("e1");
    let log = s.take_log();
    assert!(
        log.iter()
            .any(|l| l.contains("all/test-00000-of-00001.parquet")),
        "{log:?}"
    );
    let b = run("e2");
    assert_eq!(a, b);
    let log = s.take_log();
    assert!(
        !log.iter().any(|l| l.contains(".parquet")),
        "no second download: {log:?}"
    );
    let e = fails(
        unlearn(
            &[
                "eval",
                "--model",
                "tiny",
                "--benchmark",
                "mmlu",
                "--data",
                "org/none",
                "--out",
                "e3",
            ],
            p,
            &u,
            &[],
        ),
        "a dataset the Hub does not have",
    );
    assert!(e.contains("org/none"), "{e}");
}
