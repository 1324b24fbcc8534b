//! Consumer lag the way operators' tools compute it, from samples the watchdog takes.
//!
//! Lag in seconds follows kafka-lag-exporter: per partition a table of (log-end offset,
//! time) points, one per poll; a committed offset is placed on that table by linear
//! interpolation and `lag = now − the time the log reached that offset`; 0 when caught
//! up, NaN with fewer than two points (an alert must not fire on a guess). A consumer's
//! health follows Burrow's evaluation over a sliding window of samples, never a single
//! one. Pure functions over caller-supplied time, so they are tested without a broker.

use serde::Serialize;
use std::collections::VecDeque;

/// (log-end offset, epoch ms) points of one partition, oldest first.
#[derive(Debug, Clone, Default)]
pub struct LagTable {
    points: VecDeque<(i64, i64)>,
    capacity: usize,
}

impl LagTable {
    pub fn new(capacity: usize) -> Self {
        LagTable { points: VecDeque::new(), capacity: capacity.max(2) }
    }

    /// Records the log-end offset seen at `at_ms`. A run of unchanged offsets keeps its
    /// first and last time: the log reached the offset at the first, and stayed there
    /// until the last, so records written after an idle stretch are not spread over it.
    pub fn record(&mut self, end_offset: i64, at_ms: i64) {
        let len = self.points.len();
        match self.points.back() {
            Some(&(last, _)) if end_offset == last && len >= 2 && self.points[len - 2].0 == last => {
                self.points[len - 1].1 = at_ms;
            }
            // The log shrank (topic recreated): start over.
            Some(&(last, _)) if end_offset < last => {
                self.points.clear();
                self.points.push_back((end_offset, at_ms));
            }
            _ => self.points.push_back((end_offset, at_ms)),
        }
        while self.points.len() > self.capacity {
            self.points.pop_front();
        }
    }

    pub fn end_offset(&self) -> Option<i64> {
        self.points.back().map(|p| p.0)
    }

    /// Seconds the consumer at `committed` is behind at `now_ms`.
    pub fn lag_seconds(&self, committed: i64, now_ms: i64) -> f64 {
        let Some(&(end, _)) = self.points.back() else { return f64::NAN };
        if committed >= end {
            return 0.0;
        }
        if self.points.len() < 2 {
            return f64::NAN;
        }
        // The two points around `committed`, or the two oldest to extrapolate backwards.
        let index = self.points.iter().position(|&(offset, _)| offset >= committed).unwrap_or(self.points.len() - 1).max(1);
        let (o0, t0) = self.points[index - 1];
        let (o1, t1) = self.points[index];
        // Before a flat start of the table all that is known is that it is older.
        let reached_at = if o1 == o0 { t0 as f64 } else { t0 as f64 + (committed - o0) as f64 * (t1 - t0) as f64 / (o1 - o0) as f64 };
        ((now_ms as f64 - reached_at) / 1000.0).max(0.0)
    }
}

/// A partition's status, as Burrow names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PartitionStatus {
    Ok,
    /// Lag grew across the whole window.
    Warn,
    /// The committed offset went backwards.
    Rewind,
    /// The committed offset did not move across the window while there was lag.
    Stall,
    /// The committed offset has not moved for much longer than the window.
    Stop,
}

impl PartitionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionStatus::Ok => "OK",
            PartitionStatus::Warn => "WARN",
            PartitionStatus::Rewind => "REWIND",
            PartitionStatus::Stall => "STALL",
            PartitionStatus::Stop => "STOP",
        }
    }
}

/// A group's status: its worst partition's, with REWIND reported as ERR.
pub fn group_status(partitions: impl IntoIterator<Item = PartitionStatus>) -> &'static str {
    match partitions.into_iter().max().unwrap_or(PartitionStatus::Ok) {
        PartitionStatus::Rewind => "ERR",
        worst => worst.as_str(),
    }
}

/// Every status a group can have, for one-hot gauges.
pub const GROUP_STATUSES: [&str; 5] = ["OK", "WARN", "ERR", "STALL", "STOP"];

/// One observation of a partition of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetSample {
    pub committed: i64,
    pub lag: i64,
    pub at_ms: i64,
}

/// The samples of one partition of one group over a sliding window.
#[derive(Debug, Clone)]
pub struct Window {
    samples: VecDeque<OffsetSample>,
    span_ms: i64,
    /// Since when the consumer has lag and has not moved.
    stuck_since_ms: Option<i64>,
}

impl Window {
    pub fn new(span_ms: i64) -> Self {
        Window { samples: VecDeque::new(), span_ms, stuck_since_ms: None }
    }

    pub fn record(&mut self, sample: OffsetSample) {
        let moved = self.samples.back().is_none_or(|last| last.committed != sample.committed);
        self.stuck_since_ms = match (sample.lag > 0, moved, self.stuck_since_ms) {
            (false, _, _) => None,
            (true, false, Some(since)) => Some(since),
            (true, _, _) => Some(sample.at_ms),
        };
        self.samples.push_back(sample);
        // Keep one sample at or before the window's start, so the window spans it all.
        while self.samples.len() > 2 && self.samples[1].at_ms <= sample.at_ms - self.span_ms {
            self.samples.pop_front();
        }
    }

    /// Burrow's rules over the window, in order: caught up is OK; a committed offset
    /// going back is REWIND; one that has not moved, with lag all along, for three
    /// windows is STOP, for a window STALL; lag that never went down and grew across
    /// the window is WARN; else OK.
    pub fn status(&self) -> PartitionStatus {
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else { return PartitionStatus::Ok };
        if last.lag <= 0 {
            return PartitionStatus::Ok;
        }
        let pairs = || self.samples.iter().zip(self.samples.iter().skip(1));
        if pairs().any(|(a, b)| b.committed < a.committed) {
            return PartitionStatus::Rewind;
        }
        if let Some(since) = self.stuck_since_ms {
            let stuck_for = last.at_ms - since;
            if stuck_for >= 3 * self.span_ms {
                return PartitionStatus::Stop;
            }
            if stuck_for >= self.span_ms {
                return PartitionStatus::Stall;
            }
        }
        let covered = last.at_ms - first.at_ms >= self.span_ms;
        if covered && pairs().all(|(a, b)| b.lag >= a.lag) && last.lag > first.lag {
            return PartitionStatus::Warn;
        }
        PartitionStatus::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_seconds_interpolates_the_committed_offset_on_the_table() {
        let mut table = LagTable::new(10);
        assert!(table.lag_seconds(0, 0).is_nan());
        table.record(100, 10_000);
        assert!(table.lag_seconds(50, 20_000).is_nan(), "one point is not enough");
        table.record(100, 12_000);
        table.record(100, 15_000);
        table.record(200, 20_000);
        // The log stayed at 100 until 15 s: offset 150 was reached half way to 20 s.
        assert_eq!(table.lag_seconds(150, 30_000), 12.5);
        assert_eq!(table.lag_seconds(200, 30_000), 0.0);
        assert_eq!(table.lag_seconds(250, 30_000), 0.0);
        // Before a flat start: at least as old as the table.
        assert_eq!(table.lag_seconds(50, 30_000), 20.0);
        table.record(300, 22_000);
        // Before the table: extrapolated from its two oldest points, here 100 → 300.
        let mut moving = LagTable::new(10);
        moving.record(100, 10_000);
        moving.record(300, 20_000);
        assert_eq!(moving.lag_seconds(50, 30_000), 22.5);
    }

    #[test]
    fn a_burst_after_an_idle_hour_is_not_spread_over_the_hour() {
        let mut table = LagTable::new(10);
        for minute in 0..=60 {
            table.record(1_000, minute * 60_000);
        }
        table.record(1_100, 3_605_000);
        assert_eq!(table.lag_seconds(1_050, 3_606_000), 3.5);
    }

    #[test]
    fn the_table_is_bounded_and_restarts_when_the_log_shrinks() {
        let mut table = LagTable::new(3);
        for (i, offset) in [10, 20, 30, 40, 40, 40].into_iter().enumerate() {
            table.record(offset, i as i64 * 1000);
        }
        assert_eq!(table.points.len(), 3);
        table.record(5, 9000);
        assert_eq!((table.points.len(), table.end_offset()), (1, Some(5)));
    }

    fn window(samples: &[(i64, i64, i64)]) -> Window {
        let mut w = Window::new(10_000);
        for &(committed, lag, at_ms) in samples {
            w.record(OffsetSample { committed, lag, at_ms });
        }
        w
    }

    #[test]
    fn burrow_rules() {
        use PartitionStatus::*;
        assert_eq!(window(&[(10, 0, 0), (10, 0, 20_000)]).status(), Ok, "caught up");
        assert_eq!(window(&[(10, 5, 0), (20, 5, 5_000), (30, 5, 10_000)]).status(), Ok, "moving");
        assert_eq!(window(&[(10, 5, 0), (10, 6, 5_000), (10, 9, 10_000)]).status(), Stall);
        assert_eq!(window(&[(10, 5, 0), (10, 6, 5_000)]).status(), Ok, "the window is not covered yet");
        assert_eq!(window(&[(10, 5, 0), (10, 5, 15_000), (10, 5, 30_000)]).status(), Stop);
        assert_eq!(window(&[(10, 5, 0), (8, 7, 5_000)]).status(), Rewind);
        assert_eq!(window(&[(10, 5, 0), (12, 6, 5_000), (14, 8, 10_000)]).status(), Warn);
        assert_eq!(window(&[(10, 5, 0), (12, 4, 5_000), (14, 8, 10_000)]).status(), Ok, "lag went down once");
        // Idle, then lag behind a consumer that no longer moves: stuck from the lag on.
        let idle_then_stuck = [(10, 0, 0), (10, 0, 20_000), (10, 3, 25_000), (10, 6, 30_000)];
        assert_eq!(window(&idle_then_stuck).status(), Warn);
        assert_eq!(window(&[idle_then_stuck.as_slice(), &[(10, 9, 35_000)]].concat()).status(), Stall);
        assert_eq!(window(&[idle_then_stuck.as_slice(), &[(10, 9, 55_000)]].concat()).status(), Stop);
    }

    #[test]
    fn a_stalled_consumer_recovers_to_ok_once_it_moves_again() {
        let mut w = window(&[(10, 5, 0), (10, 8, 5_000), (10, 12, 10_000)]);
        assert_eq!(w.status(), PartitionStatus::Stall);
        w.record(OffsetSample { committed: 22, lag: 0, at_ms: 15_000 });
        assert_eq!(w.status(), PartitionStatus::Ok);
    }

    #[test]
    fn groups_take_their_worst_partition() {
        use PartitionStatus::*;
        assert_eq!(group_status([Ok, Warn]), "WARN");
        assert_eq!(group_status([Ok, Rewind, Warn]), "ERR");
        assert_eq!(group_status([Stall, Rewind]), "STALL");
        assert_eq!(group_status([]), "OK");
    }
}
