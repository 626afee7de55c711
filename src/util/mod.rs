//! Infrastructure every layer uses: crash-safe writes, output claims and locks, content hashes,
//! Hub downloads, run directories, the seeded RNG, progress bars, the recycling allocator and process settings.
pub mod alloc;
pub mod fs;
pub mod guard;
pub mod hash;
pub mod hub;
pub mod lock;
pub mod mem;
pub mod pattern;
pub mod progress;
pub mod rng;
pub mod rundir;
pub mod runtime;
