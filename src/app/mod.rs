//! Applications built on the library: the offline demo, the HTML report, the benchmark, sweeps,
//! the device check.
pub mod bench;
pub mod demo;
pub mod device_check;
pub mod report;
pub mod sweep;
