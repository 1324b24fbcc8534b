//! How far a dataset is, and when it will be done: `quire status`'s progress bar and ETA.
//!
//! The ETA divides what is left by the recent completion rate (completions within a
//! window before now), so a pipeline that sped up or slowed down is judged by how it
//! runs now, not on average since the start; no recent completion, no ETA.

use std::time::Duration;

/// A dataset's progress at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Blocks that reached an end: completed, quarantined or canceled.
    pub done: usize,
    pub total: usize,
    /// Blocks completed per second over the window.
    pub rate_per_second: f64,
    pub eta: Option<Duration>,
}

impl Progress {
    /// Progress from the completion times (epoch ms) of the dataset's blocks.
    pub fn new(done: usize, total: usize, completed_at_ms: &[i64], now_ms: i64, window: Duration) -> Self {
        let window_ms = window.as_millis() as i64;
        let recent = completed_at_ms.iter().filter(|&&t| t > now_ms - window_ms && t <= now_ms).count();
        // Over the window, or since the first completion if that is more recent.
        let first = completed_at_ms.iter().copied().min().unwrap_or(now_ms);
        let span_ms = (now_ms - first.max(now_ms - window_ms)).max(1_000);
        let rate_per_second = recent as f64 * 1_000.0 / span_ms as f64;
        let left = total.saturating_sub(done);
        let eta = match left {
            0 => Some(Duration::ZERO),
            _ if rate_per_second > 0.0 => Some(Duration::from_secs_f64(left as f64 / rate_per_second)),
            _ => None,
        };
        Progress { done, total, rate_per_second, eta }
    }

    pub fn fraction(&self) -> f64 {
        if self.total == 0 { 0.0 } else { self.done as f64 / self.total as f64 }
    }

    /// `[######--------]  42% (21/50)`, `width` characters inside the brackets.
    pub fn bar(&self, width: usize) -> String {
        let filled = ((self.fraction() * width as f64).round() as usize).min(width);
        format!("[{}{}] {:>3}% ({}/{})", "#".repeat(filled), "-".repeat(width - filled), (self.fraction() * 100.0).floor() as u32, self.done, self.total)
    }
}

/// `1h02m`, `3m05s`, `12s`.
pub fn human_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3_600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3_600, secs % 3_600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn eta_divides_what_is_left_by_the_recent_rate() {
        // 60 completions in the last minute: 1 per second, 30 left.
        let times: Vec<i64> = (0..60).map(|i| 100_000 - i * 1_000).collect();
        let progress = Progress::new(70, 100, &times, 100_000, MINUTE);
        assert!((progress.rate_per_second - 1.0).abs() < 0.02, "{progress:?}");
        let eta = progress.eta.unwrap().as_secs_f64();
        assert!((29.0..31.0).contains(&eta), "{eta}");
    }

    #[test]
    fn old_completions_do_not_count_and_without_recent_ones_there_is_no_eta() {
        let progress = Progress::new(5, 10, &[1_000, 2_000], 10 * 60_000, MINUTE);
        assert_eq!((progress.rate_per_second, progress.eta), (0.0, None));
    }

    #[test]
    fn a_start_within_the_window_is_judged_since_the_first_completion() {
        // 10 completions in the 10 s since the first: 1 per second, not 10 per minute.
        let times: Vec<i64> = (0..10).map(|i| 50_000 + i * 1_000).collect();
        let progress = Progress::new(10, 20, &times, 60_000, MINUTE);
        assert!((progress.rate_per_second - 1.0).abs() < 0.01, "{progress:?}");
    }

    #[test]
    fn done_is_done_and_the_bar_says_so() {
        let progress = Progress::new(4, 4, &[], 0, MINUTE);
        assert_eq!(progress.eta, Some(Duration::ZERO));
        assert_eq!(progress.bar(10), "[##########] 100% (4/4)");
        assert_eq!(Progress::new(1, 3, &[], 0, MINUTE).bar(6), "[##----]  33% (1/3)");
        assert_eq!(Progress::new(0, 0, &[], 0, MINUTE).bar(4), "[----]   0% (0/0)");
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(human_duration(Duration::from_secs(12)), "12s");
        assert_eq!(human_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(human_duration(Duration::from_secs(3_720)), "1h02m");
    }
}
