//! Infrastructure every layer uses: crash-safe writes, output claims and locks, content hashes.
pub mod fs;
pub mod guard;
pub mod hash;
pub mod lock;
pub mod mem;
