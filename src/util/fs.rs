//! Writing files so that a reader never sees a partial one and a crash never loses the old one.
//!
//! Every file and directory the tool publishes is first written under a temporary sibling name
//! (`.NAME.tmp-PID`), flushed to disk (`fsync` of each file and of the directory), then renamed
//! into place; on Linux an existing directory is swapped with `renameat2(RENAME_EXCHANGE)`, so
//! there is no moment at which neither the old nor the new one exists. Temporaries of processes
//! that no longer run (killed with `kill -9`, say) are removed the next time the same output is
//! claimed ([`remove_stale_temps`]).
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The last component of `path`, or an error naming the path when it has none (`/`, `..`).
pub fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::Invalid(format!("output path {} has no file name", path.display())))
}

/// `.NAME.tmp-PID` beside `path`: where this process writes `path` before publishing it.
pub fn tmp_path(path: &Path) -> Result<PathBuf> {
    Ok(parent_of(path).join(format!(".{}.tmp-{}", file_name(path)?, std::process::id())))
}

/// `.NAME.old-PID` beside `path`: where this process moves `path` before removing it.
fn old_path(path: &Path) -> Result<PathBuf> {
    Ok(parent_of(path).join(format!(".{}.old-{}", file_name(path)?, std::process::id())))
}

/// Whether a process with this id runs (Linux: `/proc/PID` exists; elsewhere assumed alive).
pub fn pid_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// The PID in a temporary name `.NAME.tmp-PID` / `.NAME.old-PID` of `name`, if it is one.
fn temp_pid(entry: &str, name: &str) -> Option<u32> {
    let rest = entry.strip_prefix('.')?.strip_prefix(name)?;
    let pid = rest
        .strip_prefix(".tmp-")
        .or_else(|| rest.strip_prefix(".old-"))?;
    pid.parse().ok()
}

/// Remove the temporaries of `name` in `dir` (`.NAME.tmp-PID`, `.NAME.old-PID`) whose process is
/// gone: what a killed run left behind. Returns how many were removed.
pub fn remove_stale_temps(dir: &Path, name: &str) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .filter(|e| temp_pid(&e.file_name().to_string_lossy(), name).is_some_and(gone))
        .filter(|e| remove_any(&e.path()).is_ok())
        .count()
}

/// Whether the writer `pid` of a temporary is gone (another process, no longer running).
fn gone(pid: u32) -> bool {
    pid != std::process::id() && !pid_alive(pid)
}

/// Whether `entry` (a name directly inside a directory) is a temporary (`.X.tmp-PID`,
/// `.X.old-PID`, whatever X is) of a process that is gone: what a killed writer left behind.
fn stale_temp(entry: &str) -> bool {
    let pid = entry
        .rsplit_once(".tmp-")
        .or_else(|| entry.rsplit_once(".old-"))
        .filter(|(pre, _)| pre.starts_with('.'))
        .and_then(|(_, p)| p.parse::<u32>().ok());
    pid.is_some_and(gone)
}

/// Remove every temporary directly inside `dir` whose process is gone (see [`stale_temp`]): for
/// directories this process owns (a locked run directory).
pub fn remove_stale_temps_in(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .filter(|e| stale_temp(&e.file_name().to_string_lossy()))
        .filter(|e| remove_any(&e.path()).is_ok())
        .count()
}

/// Remove a file or a directory tree.
pub fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Remove a file or directory tree so that a kill midway leaves either all of it or a temporary
/// (`.NAME.old-PID`, removed as stale by a later run) and never a half-removed `path` that still
/// looks like itself (a checkpoint without its state file, a run directory without run.json).
pub fn remove_atomically(path: &Path) -> Result<()> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let old = old_path(path)?;
    remove_any(&old).map_err(|e| Error::io(&old, e))?;
    std::fs::rename(path, &old).map_err(|e| Error::io(path, e))?;
    remove_any(&old).map_err(|e| Error::io(&old, e))
}

/// Flush a file's data to disk.
pub fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Flush a directory's entries to disk (a no-op where directories cannot be opened).
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(dir, e))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Flush every file below `dir` and the directories themselves.
pub fn sync_tree(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let p = e.path();
        let t = e.file_type().map_err(|err| Error::io(&p, err))?;
        if t.is_dir() {
            sync_tree(&p)?;
        } else if t.is_file() {
            sync_file(&p)?;
        }
    }
    sync_dir(dir)
}

/// Write `bytes` to `path` (created, or truncated), flushed to disk; errors name the file.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// Write a file atomically: `.NAME.tmp-PID` beside it, fsync, rename over `path`, fsync of the
/// directory. A reader sees the old content or the new, never a mix; on error the temporary is
/// removed and `path` is untouched.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = parent_of(path);
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let tmp = tmp_path(path)?;
    let r = write_synced(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r?;
    sync_dir(&parent)
}

/// Move the finished directory `tmp` to `out`. An existing `out` is replaced (atomically on
/// Linux, where the two are exchanged and the old one then removed); `tmp` and `out` must be
/// siblings. Everything below `tmp` is flushed to disk first.
pub fn publish_dir(tmp: &Path, out: &Path) -> Result<()> {
    sync_tree(tmp)?;
    let parent = parent_of(out);
    if std::fs::symlink_metadata(out).is_ok() {
        if exchange(tmp, out)? {
            // `tmp` now holds the old directory
            remove_any(tmp).map_err(|e| Error::io(tmp, e))?;
        } else {
            let old = old_path(out)?;
            std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
            std::fs::rename(tmp, out).map_err(|e| Error::io(out, e))?;
            remove_any(&old).map_err(|e| Error::io(&old, e))?;
        }
    } else {
        std::fs::rename(tmp, out).map_err(|e| Error::io(out, e))?;
    }
    sync_dir(&parent)
}

/// Swap two paths atomically (Linux `renameat2(RENAME_EXCHANGE)`). Ok(false) where the call is
/// not available (other systems, old kernels, file systems without support).
fn exchange(a: &Path, b: &Path) -> Result<bool> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let ca = CString::new(a.as_os_str().as_bytes())
            .map_err(|_| Error::Invalid(format!("{}: path has a NUL byte", a.display())))?;
        let cb = CString::new(b.as_os_str().as_bytes())
            .map_err(|_| Error::Invalid(format!("{}: path has a NUL byte", b.display())))?;
        // SAFETY: two valid NUL-terminated paths relative to the working directory.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if r == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(false),
            _ => Err(Error::io(b, e)),
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = (a, b);
        Ok(false)
    }
}

/// Run `write` on a fresh temporary directory beside `out`, then publish it as `out`
/// ([`publish_dir`]). On error the temporary directory is removed and `out` is left as it was.
pub fn atomic_dir(out: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = parent_of(out);
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let tmp = tmp_path(out)?;
    if std::fs::symlink_metadata(&tmp).is_ok() {
        remove_any(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let r = write(&tmp).and_then(|_| publish_dir(&tmp, out));
    if r.is_err() {
        let _ = remove_any(&tmp);
    }
    r
}

/// The process's file-creation mask (Linux: read from /proc, without changing it; 0o022
/// elsewhere), for giving a file written through another library the permissions our own files
/// get.
pub fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// Files and directories directly inside `dir` (0 when it does not exist or is not a directory),
/// not counting the temporaries of processes that are gone: a directory whose writer was killed
/// while it wrote its first file (`.run.json.tmp-PID`) holds nothing of the user's and counts as
/// empty (it used to be refused as "not a run directory", with no way on but deleting it).
pub fn entry_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .filter(|e| !stale_temp(&e.file_name().to_string_lossy()))
                .count()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(entry_count(d.path()), 1);
    }

    #[test]
    fn atomic_dir_swaps_and_failed_write_keeps_old() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("m");
        atomic_dir(&out, |t| write_synced(&t.join("x"), b"1")).unwrap();
        atomic_dir(&out, |t| write_synced(&t.join("y"), b"2")).unwrap();
        assert!(out.join("y").exists() && !out.join("x").exists());
        let e = atomic_dir(&out, |_| Err(Error::Invalid("boom".into()))).unwrap_err();
        assert!(e.to_string().contains("boom"));
        assert!(out.join("y").exists());
        assert_eq!(entry_count(d.path()), 1, "temporary left behind");
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let d = tempfile::tempdir().unwrap();
        // PID 0x7fff_fff0 does not run; our own PID does
        let dead = d.path().join(".m.tmp-2147483632");
        let mine = d.path().join(format!(".m.tmp-{}", std::process::id()));
        std::fs::create_dir(&dead).unwrap();
        std::fs::create_dir(&mine).unwrap();
        std::fs::write(d.path().join(".other.tmp-2147483632"), b"").unwrap();
        assert_eq!(remove_stale_temps(d.path(), "m"), 1);
        assert!(!dead.exists() && mine.exists());
        assert_eq!(remove_stale_temps_in(d.path()), 1);
    }
}
