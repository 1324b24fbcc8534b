//! Circuit breakers for engines, as a pure state machine over caller-supplied time.
//!
//! Closed: calls go through; `failure_threshold` consecutive failures open it. Open:
//! calls are refused until the open period ends, then it is half-open. Half-open: calls
//! go through as probes; `success_threshold` consecutive successes close it, one failure
//! opens it again for twice as long (capped at `max_open`). Closing resets the period.

use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// A breaker's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed breaker.
    pub failure_threshold: u32,
    /// Consecutive successes that close a half-open breaker.
    pub success_threshold: u32,
    /// First open period.
    pub open_for: Duration,
    /// Longest open period, however often it reopens.
    pub max_open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            success_threshold: 2,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The value of the breaker-state gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

/// Counters a breaker keeps, for `/health/engines`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BreakerStats {
    pub calls: u64,
    pub successes: u64,
    pub failures: u64,
    /// Calls refused while open.
    pub rejected: u64,
    /// Times it opened.
    pub opened: u64,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
}

#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: BreakerState,
    open_until: Option<Instant>,
    /// Opens since it last closed: the exponent of the open period.
    reopens: u32,
    stats: BreakerStats,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreaker { config, state: BreakerState::Closed, open_until: None, reopens: 0, stats: BreakerStats::default() }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The state at `now` (an open breaker whose period ended reads half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match (self.state, self.open_until) {
            (BreakerState::Open, Some(until)) if now >= until => BreakerState::HalfOpen,
            (state, _) => state,
        }
    }

    /// When an open breaker half-opens.
    pub fn open_until(&self) -> Option<Instant> {
        (self.state == BreakerState::Open).then_some(self.open_until).flatten()
    }

    pub fn stats(&self) -> BreakerStats {
        self.stats
    }

    /// Asks to make a call at `now`: `Err(until)` while open.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Instant> {
        match self.state(now) {
            BreakerState::Open => {
                self.stats.rejected += 1;
                Err(self.open_until.expect("an open breaker has an end"))
            }
            state => {
                self.state = state;
                self.stats.calls += 1;
                Ok(())
            }
        }
    }

    pub fn on_success(&mut self, now: Instant) {
        self.stats.successes += 1;
        self.stats.consecutive_failures = 0;
        self.stats.consecutive_successes += 1;
        if self.state(now) == BreakerState::HalfOpen && self.stats.consecutive_successes >= self.config.success_threshold {
            self.close();
        }
    }

    pub fn on_failure(&mut self, now: Instant) {
        self.stats.failures += 1;
        self.stats.consecutive_successes = 0;
        self.stats.consecutive_failures += 1;
        match self.state(now) {
            BreakerState::HalfOpen => self.open(now),
            BreakerState::Closed if self.stats.consecutive_failures >= self.config.failure_threshold => self.open(now),
            _ => {}
        }
    }

    /// Closes the breaker by hand (an operator's reset).
    pub fn reset(&mut self) {
        self.close();
        self.stats.consecutive_failures = 0;
    }

    fn open(&mut self, now: Instant) {
        let factor = 2u32.saturating_pow(self.reopens.min(16));
        let period = self.config.open_for.saturating_mul(factor).min(self.config.max_open_for);
        self.state = BreakerState::Open;
        self.open_until = Some(now + period);
        self.reopens += 1;
        self.stats.opened += 1;
        tracing::warn!(open_for_ms = period.as_millis() as u64, "circuit breaker opened");
    }

    fn close(&mut self) {
        self.state = BreakerState::Closed;
        self.open_until = None;
        self.reopens = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            success_threshold: 2,
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(3),
        }
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(config());
        b.on_failure(t0);
        b.on_failure(t0);
        b.on_success(t0);
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(b.state(t0), BreakerState::Closed);
        b.on_failure(t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(b.try_acquire(t0), Err(t0 + Duration::from_secs(1)));
        assert_eq!(b.stats().rejected, 1);
        assert_eq!(b.stats().opened, 1);
    }

    #[test]
    fn half_opens_then_closes_after_enough_successes() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(config());
        (0..3).for_each(|_| b.on_failure(t0));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert!(b.try_acquire(t1).is_ok());
        b.on_success(t1);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        b.on_success(t1);
        assert_eq!(b.state(t1), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_reopens_for_longer_up_to_the_cap() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(config());
        (0..3).for_each(|_| b.on_failure(t0));
        let mut now = t0;
        for expected in [2, 3, 3] {
            now = b.open_until().unwrap();
            assert!(b.try_acquire(now).is_ok());
            b.on_failure(now);
            assert_eq!(b.open_until(), Some(now + Duration::from_secs(expected)));
        }
        b.reset();
        assert_eq!(b.state(now), BreakerState::Closed);
        (0..3).for_each(|_| b.on_failure(now));
        assert_eq!(b.open_until(), Some(now + Duration::from_secs(1)), "closing resets the period");
    }
}
