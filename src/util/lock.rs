//! One writer per output: a lock file `.NAME.lock` beside the output holds the writer's PID and
//! an exclusive `flock` for as long as the writer runs. A second process asking for the same
//! output fails at once with the first one's PID. The kernel drops the lock when its holder dies
//! (`kill -9` included), so a stale lock file never blocks a later run; it is removed when the
//! holder finishes normally.
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A held lock; released (and its file removed) on drop.
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
    file: std::fs::File,
}

impl Lock {
    /// Lock the output `target` (the lock file is `.NAME.lock` beside it; its directory is
    /// created). Fails with a message naming the holder's PID when another process holds it.
    pub fn acquire(target: &Path) -> Result<Lock> {
        let parent = super::fs::parent_of(target);
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let path = parent.join(format!(".{}.lock", super::fs::file_name(target)?));
        // a lock file removed by its holder between our open and flock is retried
        for _ in 0..16 {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            if !try_flock(&file) {
                let mut s = String::new();
                let _ = file.read_to_string(&mut s);
                let who = s
                    .trim()
                    .parse::<u32>()
                    .map(|p| format!("process {p}"))
                    .unwrap_or_else(|_| "another process".into());
                return Err(Error::Busy {
                    target: target.to_path_buf(),
                    lock: path.clone(),
                    holder: who,
                });
            }
            if !same_file(&file, &path) {
                continue;
            }
            let _ = file.set_len(0);
            let _ = file.rewind();
            let _ = write!(file, "{}", std::process::id());
            let _ = file.flush();
            return Ok(Lock { path, file });
        }
        Err(Error::Invalid(format!(
            "{}: could not take the lock {}",
            target.display(),
            path.display()
        )))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // unlink while still holding the lock, so a waiter that opened the old file retries
        let _ = std::fs::remove_file(&self.path);
        let _ = &self.file; // the flock goes with the descriptor
    }
}

#[cfg(unix)]
fn try_flock(f: &std::fs::File) -> bool {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a descriptor we own.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

#[cfg(not(unix))]
fn try_flock(_f: &std::fs::File) -> bool {
    true
}

/// Whether the open file is still the one at `path` (it may have been unlinked by its previous
/// holder after we opened it).
#[cfg(unix)]
fn same_file(f: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_f: &std::fs::File, _path: &Path) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_fails_with_pid_and_release_frees() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("model");
        let a = Lock::acquire(&out).unwrap();
        let e = Lock::acquire(&out).unwrap_err().to_string();
        assert!(
            e.contains(&format!("process {}", std::process::id())),
            "{e}"
        );
        drop(a);
        assert!(!d.path().join(".model.lock").exists());
        let _b = Lock::acquire(&out).unwrap();
    }
}
