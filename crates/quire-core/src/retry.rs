//! Retries with progressive backoff, decided without touching Kafka.
//!
//! A failed block is not retried in place (that would hold up its partition): it is
//! rescheduled on a retry topic whose delay matches its attempt, Spring Kafka's
//! `<topic>-retry-<delay ms>` scheme. After the last delay the block is closed into
//! ERROR and dead-lettered, deterministically: the same failures always end the same way.

use crate::failure::{Action, Failure};
use std::time::Duration;

/// The delays of successive retries; its length bounds the attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

/// The default schedule: 5 s, 30 s, 5 min.
pub const DEFAULT_RETRY_DELAYS_MS: &str = "5000,30000,300000";

impl RetrySchedule {
    pub fn new(delays: Vec<Duration>) -> Self {
        RetrySchedule { delays }
    }

    /// Parses a comma-separated list of milliseconds, e.g. `5000,30000,300000`. The
    /// delays must increase; an empty list means no retries.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut delays = Vec::new();
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let ms: u64 = part.parse().map_err(|_| format!("retry delay {part:?} is not a number of milliseconds"))?;
            if ms == 0 {
                return Err("retry delays must be above 0 ms".into());
            }
            if delays.last().is_some_and(|last: &Duration| last.as_millis() as u64 >= ms) {
                return Err(format!("retry delays must increase: {list:?}"));
            }
            delays.push(Duration::from_millis(ms));
        }
        Ok(RetrySchedule { delays })
    }

    pub fn delays(&self) -> &[Duration] {
        &self.delays
    }

    /// How many times a block is retried before it is closed into ERROR.
    pub fn max_retries(&self) -> u32 {
        self.delays.len() as u32
    }

    /// The delay before retry number `retry` (1-based), if there is one.
    pub fn delay_of(&self, retry: u32) -> Option<Duration> {
        retry.checked_sub(1).and_then(|i| self.delays.get(i as usize)).copied()
    }

    /// What to do with a block that failed with `failure` after `attempts_before`
    /// earlier failed attempts.
    pub fn decide(&self, failure: &Failure, attempts_before: u32) -> RetryDecision {
        let retryable = matches!(
            failure.action(),
            Action::RetryAfter | Action::SlowDownAndRetryAfter | Action::Fallback
        );
        if !retryable {
            return RetryDecision::Quarantine;
        }
        let retry = attempts_before + 1;
        match self.delay_of(retry) {
            Some(delay) => RetryDecision::RetryAfter { retry, delay },
            None => RetryDecision::Exhausted { attempts: retry },
        }
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        RetrySchedule::parse(DEFAULT_RETRY_DELAYS_MS).expect("default schedule parses")
    }
}

/// The outcome of [`RetrySchedule::decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Reschedule as retry number `retry`, due after `delay`.
    RetryAfter { retry: u32, delay: Duration },
    /// Every retry was spent: close the block into ERROR after `attempts` attempts.
    Exhausted { attempts: u32 },
    /// Not worth retrying (bad data): quarantine at once.
    Quarantine,
}

/// The retry topic of `topic` for `delay` (Spring's SUFFIX_WITH_DELAY_VALUE naming).
pub fn retry_topic(topic: &str, delay: Duration) -> String {
    format!("{topic}-retry-{}", delay.as_millis())
}

/// The main topic a retry topic feeds (`t-retry-5000` → `t`), or the topic itself.
pub fn base_topic(topic: &str) -> &str {
    match topic.rsplit_once("-retry-") {
        Some((base, delay)) if !delay.is_empty() && delay.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => topic,
    }
}

/// The delay of a retry topic (`t-retry-5000` → 5 s); `None` for other topics.
pub fn retry_delay(topic: &str) -> Option<Duration> {
    let (_, delay) = topic.rsplit_once("-retry-")?;
    delay.parse().ok().map(Duration::from_millis)
}

/// A regular expression (librdkafka's `^` subscription) matching every retry topic of
/// `topic`, whatever its delay: records on a topic of a retired delay are still read.
pub fn retry_topics_pattern(topic: &str) -> String {
    // Topic names hold letters, digits, `.`, `_` and `-`: only `.` means something.
    format!("^{}-retry-[0-9]+$", topic.replace('.', "\\."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::ErrorClass;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn parses_and_rejects_bad_schedules() {
        assert_eq!(RetrySchedule::default().delays(), &[ms(5000), ms(30000), ms(300000)]);
        assert_eq!(RetrySchedule::parse("").unwrap().max_retries(), 0);
        assert!(RetrySchedule::parse("100,50").unwrap_err().contains("increase"));
        assert!(RetrySchedule::parse("1s").unwrap_err().contains("\"1s\""));
        assert!(RetrySchedule::parse("0").is_err());
    }

    #[test]
    fn transient_failures_walk_the_schedule_then_close() {
        let schedule = RetrySchedule::parse("100,200").unwrap();
        let failure = Failure::transient("engine-error", "500");
        assert_eq!(schedule.decide(&failure, 0), RetryDecision::RetryAfter { retry: 1, delay: ms(100) });
        assert_eq!(schedule.decide(&failure, 1), RetryDecision::RetryAfter { retry: 2, delay: ms(200) });
        assert_eq!(schedule.decide(&failure, 2), RetryDecision::Exhausted { attempts: 3 });
        assert_eq!(schedule.decide(&failure, 7), RetryDecision::Exhausted { attempts: 8 });
    }

    #[test]
    fn data_failures_are_never_retried() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.decide(&Failure::data("bad", "x"), 0), RetryDecision::Quarantine);
        let retried = |class| schedule.decide(&Failure::new(class, "c", "r"), 0) != RetryDecision::Quarantine;
        assert!(!retried(ErrorClass::Data));
        assert!(retried(ErrorClass::Resource));
        assert!(retried(ErrorClass::Model));
    }

    #[test]
    fn retry_topic_names_round_trip() {
        let topic = retry_topic("quire.blocks.queued", ms(30000));
        assert_eq!(topic, "quire.blocks.queued-retry-30000");
        assert_eq!(base_topic(&topic), "quire.blocks.queued");
        assert_eq!(base_topic("quire.blocks.queued"), "quire.blocks.queued");
        assert_eq!(base_topic("a-retry-x"), "a-retry-x");
        assert_eq!(retry_delay(&topic), Some(ms(30000)));
        assert_eq!(retry_delay("quire.blocks.queued"), None);
        assert_eq!(retry_topics_pattern("quire.blocks.queued"), r"^quire\.blocks\.queued-retry-[0-9]+$");
    }
}
