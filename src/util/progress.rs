//! Progress bars (indicatif), drawn on stderr and hidden when `show` is false.
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub fn bar(len: u64, what: &str, show: bool) -> ProgressBar {
    let b = ProgressBar::with_draw_target(
        Some(len),
        if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    b.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise} {msg}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    b.set_prefix(what.to_string());
    b
}
