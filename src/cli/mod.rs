pub mod answers;
pub mod attack;
pub mod attribute;
pub mod audit;
pub mod bench;
pub mod catalog;
pub mod check_device;
pub mod common;
pub mod demo;
pub mod eval;
pub mod export;
pub mod finetune;
pub mod generate;
pub mod import;
pub mod init;
pub mod report;
pub mod run;
pub mod selfgen;
pub mod sweep;

/// Peak resident memory of this process in MiB (Linux `VmHWM`; None elsewhere).
pub fn peak_rss_mib() -> Option<f64> {
    unlearn::util::mem::peak_rss_mib()
}
