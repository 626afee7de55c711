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
    let gib = |b: u128| b as f64 / (1u128 << 30) as f64;
    if let Some(avail) = available_bytes() {
        if bytes > avail {
            return Err(Error::Invalid(format!(
                "{what} needs about {:.1} GiB of memory; {:.1} GiB are available",
                gib(bytes),
                gib(avail)
            )));
        }
    }
    // beyond what any allocation can ask for
    if bytes > isize::MAX as u128 {
        return Err(Error::Invalid(format!(
            "{what} needs about {:.1} GiB of memory, more than can be addressed",
            gib(bytes)
        )));
    }
    Ok(())
}
