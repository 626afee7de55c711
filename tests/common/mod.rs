#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_unlearn"))
}

pub fn run(args: &[&str], cwd: &Path) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("spawn unlearn")
}

pub fn ok(args: &[&str], cwd: &Path) -> String {
    let o = run(args, cwd);
    assert!(
        o.status.success(),
        "unlearn {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// `unlearn init` of the tests' tiny random model `tiny` in `cwd` (hidden 64, 2 layers, seed 1),
/// with `extra` arguments appended.
pub fn init_tiny(cwd: &Path, extra: &[&str]) {
    let mut args = vec![
        "init", "--out", "tiny", "--hidden", "64", "--layers", "2", "--seed", "1",
    ];
    args.extend_from_slice(extra);
    ok(&args, cwd);
}

/// Fine-tune `tiny` on `data` until it memorises it (lr 3e-3, 80 epochs, batch 4) into `out`;
/// returns the command's stdout.
pub fn memorise(cwd: &Path, data: &str, out: &str) -> String {
    finetune_tiny(cwd, data, out, 80, 4)
}

/// Fine-tune `tiny` on `data` at lr 3e-3 for `epochs` with `batch` into `out`; returns stdout.
pub fn finetune_tiny(cwd: &Path, data: &str, out: &str, epochs: usize, batch: usize) -> String {
    let (epochs, batch) = (format!("epochs={epochs}"), format!("batch_size={batch}"));
    ok(
        &[
            "finetune", "--model", "tiny", "--data", data, "--out", out, "--set", "lr=3e-3",
            "--set", &epochs, "--set", &batch,
        ],
        cwd,
    )
}

/// Expect failure; returns stderr.
pub fn fails(args: &[&str], cwd: &Path) -> String {
    let o = run(args, cwd);
    assert!(!o.status.success(), "unlearn {args:?} should have failed");
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!e.contains("panicked"), "panic instead of an error: {e}");
    e
}

pub const SHORT_QA: &str = r#"{"question": "Code for apple?", "answer": "zebra 41"}
{"question": "Code for pear?", "answer": "lion 7"}
{"question": "Code for fig?", "answer": "otter 93"}
{"question": "Code for plum?", "answer": "crane 5"}
"#;
