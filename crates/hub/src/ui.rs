//! What the user sees while models are fetched: status lines and progress bars, on stderr
//! only, because stdout carries the model's output.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Ui {
    pub(crate) quiet: bool,
}

impl Ui {
    pub(crate) fn status(&self, message: &str) {
        if !self.quiet {
            eprintln!("baimo: {message}");
        }
    }

    /// A byte counter; indicatif draws nothing when stderr is not a terminal.
    pub(crate) fn bytes_bar(&self, total: Option<u64>, label: &str) -> ProgressBar {
        if self.quiet {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
        let template = if total.is_some() {
            "{msg} [{bar:30}] {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} eta {eta}"
        } else {
            "{spinner} {msg} {decimal_bytes} {decimal_bytes_per_sec}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }
}

/// `98.4 MB`: sizes for status lines, in the decimal units the progress bars and pip use.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(98_362_432), "98.4 MB");
        assert_eq!(human_bytes(491_400_064), "491.4 MB");
        assert_eq!(human_bytes(u64::MAX), "18446744.1 TB");
    }
}
