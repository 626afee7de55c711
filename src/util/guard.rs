//! What a command may write, decided before it does any work.
//!
//! * An output that exists and is not empty is refused unless the user passed `--overwrite`
//!   (run directories also accept `--resume`); `--overwrite` replaces only what the command
//!   itself would write there: a model directory (one with `config.json`), a run directory (one
//!   with `run.json`), a file.
//! * An output equal to, inside or containing one of the command's inputs (model, data, logs,
//!   run directory, another output) is refused always, and so is one containing the working
//!   directory.
//! * Each output is locked ([`Lock`]) for the whole command, so a second command writing the
//!   same place fails at once instead of interleaving with the first.
//! * A model or file output gets its temporary sibling at claim time (a read-only or missing
//!   location fails before the first training step) and is published by rename at the end.
use std::path::{Component, Path, PathBuf};

use super::fs::{
    entry_count, parent_of, publish_dir, remove_any, remove_stale_temps, sync_dir, tmp_path,
};
use super::lock::Lock;
use crate::error::{Error, Result};

/// An input of a command, named for error messages ("model", "data", "retain log", …).
#[derive(Debug, Clone)]
pub struct Input {
    pub role: String,
    pub path: PathBuf,
}

impl Input {
    pub fn new(role: &str, path: impl AsRef<Path>) -> Input {
        Input {
            role: role.into(),
            path: path.as_ref().to_path_buf(),
        }
    }
}

/// `path` made absolute with `.`/`..` resolved and symbolic links followed as far as the path
/// exists (the rest is appended lexically), so two spellings of one place compare equal.
pub fn normalize(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    // lexical clean-up first
    let mut clean = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                clean.pop();
            }
            Component::CurDir => {}
            other => clean.push(other.as_os_str()),
        }
    }
    // canonicalise the longest existing prefix
    let mut rest = vec![];
    let mut head = clean.clone();
    loop {
        if let Ok(c) = head.canonicalize() {
            let mut out = c;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return out;
        }
        match (head.file_name().map(|n| n.to_os_string()), head.parent()) {
            (Some(n), Some(p)) => {
                rest.push(n);
                head = p.to_path_buf();
            }
            _ => return clean,
        }
    }
}

/// Refuse `out` when it equals, lies inside or contains an input, or contains the working
/// directory. `what` names the output in the message (`--out`, `--run-dir`).
pub fn check_apart(what: &str, out: &Path, inputs: &[Input]) -> Result<()> {
    let o = normalize(out);
    if let Ok(cwd) = std::env::current_dir() {
        let cwd = normalize(&cwd);
        if cwd.starts_with(&o) {
            return Err(Error::Invalid(format!(
                "{what} {} contains the current directory; refusing to write there",
                out.display()
            )));
        }
    }
    for i in inputs {
        let p = normalize(&i.path);
        let rel = if o == p {
            "is"
        } else if o.starts_with(&p) {
            "is inside"
        } else if p.starts_with(&o) {
            "contains"
        } else {
            continue;
        };
        return Err(Error::Invalid(format!(
            "{what} {} {rel} the {} {}; choose an output apart from the inputs",
            out.display(),
            i.role,
            i.path.display()
        )));
    }
    Ok(())
}

/// What an existing output must look like to be replaced with `--overwrite`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutKind {
    /// A Hugging Face model directory (`config.json`).
    Model,
    /// A single file.
    File,
}

/// An output written at the end of a command: checked, locked, and with its temporary sibling
/// already created. [`Pending::commit`] publishes it; dropping it uncommitted removes the
/// temporary and leaves any existing output as it was.
#[derive(Debug)]
pub struct Pending {
    path: PathBuf,
    tmp: PathBuf,
    kind: OutKind,
    committed: bool,
    _lock: Lock,
}

impl Pending {
    /// Claim `path` for `kind`. `what` names it in errors (`--out`).
    pub fn claim(
        what: &str,
        path: &Path,
        kind: OutKind,
        inputs: &[Input],
        overwrite: bool,
    ) -> Result<Pending> {
        check_apart(what, path, inputs)?;
        check_replaceable(what, path, kind, overwrite)?;
        let lock = Lock::acquire(path)?;
        // checked again under the lock: another process may have published it meanwhile
        check_replaceable(what, path, kind, overwrite)?;
        let parent = parent_of(path);
        remove_stale_temps(&parent, &super::fs::file_name(path)?);
        let tmp = tmp_path(path)?;
        let _ = remove_any(&tmp);
        let made = match kind {
            OutKind::Model => std::fs::create_dir(&tmp),
            OutKind::File => std::fs::File::create(&tmp).map(|_| ()),
        };
        made.map_err(|e| Error::Io {
            path: parent.clone(),
            cause: std::io::Error::new(
                e.kind(),
                format!("cannot write the output {} here: {e}", path.display()),
            ),
        })?;
        Ok(Pending {
            path: path.to_path_buf(),
            tmp,
            kind,
            committed: false,
            _lock: lock,
        })
    }

    /// Where the output's content is written before [`Pending::commit`] (a directory for
    /// [`OutKind::Model`], a file for [`OutKind::File`]).
    pub fn tmp(&self) -> &Path {
        &self.tmp
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Publish: flush to disk, then rename over the output.
    pub fn commit(mut self) -> Result<()> {
        match self.kind {
            OutKind::Model => publish_dir(&self.tmp, &self.path)?,
            OutKind::File => {
                super::fs::sync_file(&self.tmp)?;
                std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
                sync_dir(&parent_of(&self.path))?;
            }
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.committed {
            let _ = remove_any(&self.tmp);
        }
    }
}

/// Whether an existing `path` may be replaced by an output of `kind`.
fn check_replaceable(what: &str, path: &Path, kind: OutKind, overwrite: bool) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let shown = path.display();
    match kind {
        OutKind::Model => {
            if !meta.is_dir() {
                return Err(Error::Invalid(format!(
                    "{what} {shown} exists and is not a directory; not replacing it"
                )));
            }
            if entry_count(path) == 0 {
                return Ok(());
            }
            if !overwrite {
                return Err(Error::OutputExists {
                    what: what.into(),
                    path: path.to_path_buf(),
                    detail: "exists and is not empty; pass --overwrite to replace it".into(),
                });
            }
            if !path.join("config.json").exists() {
                return Err(Error::Invalid(format!(
                    "{what} {shown} is not a model directory (no config.json); --overwrite \
                     replaces only a model directory, so remove it yourself or choose another \
                     output"
                )));
            }
        }
        OutKind::File => {
            if meta.is_dir() {
                return Err(Error::Invalid(format!(
                    "{what} {shown} is a directory; expected a file path"
                )));
            }
            // a device, FIFO or socket (`--out /dev/null --overwrite` run as root would have
            // replaced /dev/null with a regular file); a symbolic link is replaced, not followed
            if !meta.is_file() && !meta.file_type().is_symlink() {
                return Err(Error::Invalid(format!(
                    "{what} {shown} exists and is not a regular file (a device, FIFO or \
                     socket); not replacing it"
                )));
            }
            if !overwrite {
                return Err(Error::OutputExists {
                    what: what.into(),
                    path: path.to_path_buf(),
                    detail: "exists; pass --overwrite to replace it".into(),
                });
            }
        }
    }
    Ok(())
}

/// How a run directory that already exists is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunDirMode {
    /// It must not exist or be empty.
    #[default]
    Fresh,
    /// An earlier run directory is emptied first (`--overwrite`).
    Overwrite,
    /// An earlier run directory is continued (`--resume`).
    Resume,
}

/// A locked run directory (logs, checkpoints, run.json).
#[derive(Debug)]
pub struct RunDir {
    pub path: PathBuf,
    _lock: Lock,
}

impl RunDir {
    /// Check and lock `path`; nothing is written yet (see [`RunDir::prepare`]). `what` names it
    /// in errors (`--run-dir`).
    pub fn claim(what: &str, path: &Path, inputs: &[Input], mode: RunDirMode) -> Result<RunDir> {
        check_apart(what, path, inputs)?;
        let lock = Lock::acquire(path)?;
        let shown = path.display();
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.is_dir() {
                return Err(Error::Invalid(format!(
                    "{what} {shown} exists and is not a directory"
                )));
            }
            let ours = path.join("run.json").exists();
            let empty = entry_count(path) == 0;
            match mode {
                RunDirMode::Fresh if !empty => {
                    return Err(Error::OutputExists {
                        what: what.into(),
                        path: path.to_path_buf(),
                        detail: "holds an earlier run; pass --resume to continue it or --overwrite to start afresh".into(),
                    })
                }
                RunDirMode::Overwrite | RunDirMode::Resume if !empty && !ours => {
                    return Err(Error::Invalid(format!(
                        "{what} {shown} is not a run directory (no run.json); not touching it"
                    )))
                }
                _ => {}
            }
        } else if mode == RunDirMode::Resume {
            return Err(Error::Invalid(format!(
                "--resume: {what} {shown} does not exist, so there is nothing to resume"
            )));
        }
        Ok(RunDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    /// Create the directory (emptied first when claimed with [`RunDirMode::Overwrite`]) and
    /// remove temporaries of killed runs. Call once every input is validated.
    pub fn prepare(&self, mode: RunDirMode) -> Result<()> {
        if mode == RunDirMode::Overwrite && self.path.exists() {
            // checkpoints first (a kill midway must not leave one to resume beside emptied
            // logs), run.json last (until it goes, the directory is still recognisably ours)
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&self.path)
                .map_err(|e| Error::io(&self.path, e))?
                .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(&self.path, e)))
                .collect::<Result<_>>()?;
            let rank = |p: &PathBuf| match p.file_name().and_then(|n| n.to_str()) {
                Some(n) if n.starts_with("checkpoint-") => 0,
                Some("run.json") => 2,
                _ => 1,
            };
            entries.sort_by_key(rank);
            for e in entries {
                super::fs::remove_atomically(&e)?;
            }
        }
        std::fs::create_dir_all(&self.path).map_err(|e| Error::io(&self.path, e))?;
        super::fs::remove_stale_temps_in(&self.path);
        Ok(())
    }
}

/// The two outputs of a training command: the model written at the end and the run directory
/// written throughout, each apart from the inputs and from the other.
#[derive(Debug)]
pub struct TrainOutputs {
    pub model: Pending,
    pub run: RunDir,
    pub mode: RunDirMode,
}

impl TrainOutputs {
    pub fn claim(
        out: &Path,
        run_dir: &Path,
        inputs: &[Input],
        overwrite: bool,
        resume: bool,
    ) -> Result<TrainOutputs> {
        if overwrite && resume {
            return Err(Error::Invalid(
                "--overwrite and --resume exclude each other".into(),
            ));
        }
        let with = |extra: Input| {
            let mut v = inputs.to_vec();
            v.push(extra);
            v
        };
        // a resumed run's output does not exist yet; an earlier finished one needs --overwrite
        if resume && entry_count(out) > 0 {
            return Err(Error::Invalid(format!(
                "--resume: {} exists, so that run finished; there is nothing to resume (use \
                 --overwrite to run it again)",
                out.display()
            )));
        }
        let model = Pending::claim(
            "--out",
            out,
            OutKind::Model,
            &with(Input::new("run directory", run_dir)),
            overwrite,
        )?;
        let mode = if resume {
            RunDirMode::Resume
        } else if overwrite {
            RunDirMode::Overwrite
        } else {
            RunDirMode::Fresh
        };
        let run = RunDir::claim(
            "--run-dir",
            run_dir,
            &with(Input::new("output model", out)),
            mode,
        )?;
        Ok(TrainOutputs { model, run, mode })
    }
}

/// Claim an existing or new results directory that a command fills and may resume (`unlearn
/// eval --out`, the demo): it must be apart from the inputs and either new, empty or hold one of
/// `markers` (files the command writes there).
pub fn claim_results_dir(
    what: &str,
    path: &Path,
    inputs: &[Input],
    markers: &[&str],
) -> Result<Lock> {
    check_apart(what, path, inputs)?;
    let lock = Lock::acquire(path)?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.is_dir() {
            return Err(Error::Invalid(format!(
                "{what} {} exists and is not a directory",
                path.display()
            )));
        }
        if entry_count(path) > 0 && !markers.iter().any(|m| path.join(m).exists()) {
            return Err(Error::Invalid(format!(
                "{what} {} is not empty and holds no earlier results of this command ({}); \
                 choose another output",
                path.display(),
                markers.join(", ")
            )));
        }
        super::fs::remove_stale_temps_in(path);
    }
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_is_refused_both_ways() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("model");
        std::fs::create_dir(&m).unwrap();
        let ins = [Input::new("model", &m)];
        let e = check_apart("--out", &m, &ins).unwrap_err().to_string();
        assert!(e.contains("is the model"), "{e}");
        let e = check_apart("--out", &m.join("sub"), &ins)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is inside the model"), "{e}");
        let e = check_apart("--out", d.path(), &ins)
            .unwrap_err()
            .to_string();
        assert!(e.contains("contains the model"), "{e}");
        // another spelling of the same place
        let odd = d.path().join("x/../model/.");
        assert!(check_apart("--out", &odd, &ins).is_err());
        check_apart("--out", &d.path().join("model2"), &ins).unwrap();
    }

    #[test]
    fn existing_output_needs_overwrite_and_must_be_a_model() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("o");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("mine.txt"), b"keep").unwrap();
        let e = Pending::claim("--out", &out, OutKind::Model, &[], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--overwrite"), "{e}");
        let e = Pending::claim("--out", &out, OutKind::Model, &[], true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a model directory"), "{e}");
        assert!(out.join("mine.txt").exists());
        std::fs::write(out.join("config.json"), b"{}").unwrap();
        let p = Pending::claim("--out", &out, OutKind::Model, &[], true).unwrap();
        std::fs::write(p.tmp().join("config.json"), b"{\"new\": 1}").unwrap();
        p.commit().unwrap();
        assert!(!out.join("mine.txt").exists());
        assert_eq!(entry_count(d.path()), 1);
    }

    #[test]
    fn uncommitted_claim_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("o");
        let p = Pending::claim("--out", &out, OutKind::Model, &[], false).unwrap();
        assert!(p.tmp().exists());
        drop(p);
        assert_eq!(entry_count(d.path()), 0);
    }

    /// Regression (sweep kill/resume failing in CI): a run killed while it wrote its first file
    /// left only `.run.json.tmp-PID` in its run directory, which then counted as "not a run
    /// directory" and could be neither rerun, overwritten nor resumed.
    #[test]
    fn run_dir_killed_while_writing_run_json_is_empty_not_foreign() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("o.run");
        std::fs::create_dir(&run).unwrap();
        let dead = run.join(".run.json.tmp-2147483632");
        std::fs::write(&dead, b"{").unwrap();
        for mode in [RunDirMode::Fresh, RunDirMode::Overwrite] {
            let r = RunDir::claim("--run-dir", &run, &[], mode).unwrap();
            assert!(dead.exists(), "claim must not write");
            drop(r);
        }
        let r = RunDir::claim("--run-dir", &run, &[], RunDirMode::Fresh).unwrap();
        r.prepare(RunDirMode::Fresh).unwrap();
        assert!(!dead.exists());
        // a live writer's temporary is its content, not debris
        let live = run.join(format!(".run.json.tmp-{}", std::process::id()));
        std::fs::write(&live, b"{").unwrap();
        drop(r);
        let e = RunDir::claim("--run-dir", &run, &[], RunDirMode::Overwrite).unwrap_err();
        assert!(e.to_string().contains("no run.json"), "{e}");
    }
}
