//! Applications built on the library: the offline demo, the HTML report, the benchmark.
pub mod bench;
pub mod demo;
pub mod report;
