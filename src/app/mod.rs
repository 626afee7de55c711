//! Applications built on the library: the offline demo, the HTML report, the benchmark, sweeps.
pub mod bench;
pub mod demo;
pub mod report;
pub mod sweep;
