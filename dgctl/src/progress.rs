//! Progress bars (indicatif) on standard error, hidden when it is not a terminal or the output is JSON/YAML.

use std::io::IsTerminal as _;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::Format;

/// A byte-count bar: with a length, bytes/total, rate and ETA; without one, a spinner with bytes and rate.
pub fn bytes_bar(format: Format, total: Option<u64>, message: &str) -> ProgressBar {
    let bar = match total.filter(|t| *t > 0) {
        Some(t) => ProgressBar::new(t).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {wide_msg:.dim}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_message(message.to_owned());
    if format != Format::Table || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}
