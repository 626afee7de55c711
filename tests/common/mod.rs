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
