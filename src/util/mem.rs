//! Memory estimates checked before a large allocation, so a model too big for the machine is
//! refused with a message instead of aborting the process when the allocation fails.
use crate::error::{Error, Result};

/// Memory available to new allocations (Linux `MemAvailable`; None elsewhere).
pub fn available_bytes() -> Option<u128> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuse `what` when it needs more than the memory available.
pub fn check_fits(what: &str, bytes: u128) -> Result<()> {
    let err = |available| Error::OutOfMemory {
        what: what.into(),
        need: bytes,
        available,
    };
    if let Some(avail) = available_bytes() {
        if bytes > avail {
            return Err(err(Some(avail)));
        }
    }
    // beyond what any allocation can ask for
    if bytes > isize::MAX as u128 {
        return Err(err(None));
    }
    Ok(())
}

/// Peak resident set size of this process so far (Linux `VmHWM`), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Reset the peak resident set size to the current one (Linux ≥ 4.0: `5` into
/// /proc/self/clear_refs), so a later [`peak_rss_mib`] measures one phase of the work.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller can tell "too big for this machine" from other errors and shrink the work.
    #[test]
    fn too_much_memory_is_a_typed_error_with_a_one_line_message() {
        let e = check_fits("a test", u128::MAX).unwrap_err();
        assert!(
            matches!(
                e,
                Error::OutOfMemory {
                    need: u128::MAX,
                    ..
                }
            ),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.starts_with("a test needs about") && !msg.contains('\n'),
            "{msg}"
        );
        assert!(check_fits("a little", 1).is_ok());
    }
}
