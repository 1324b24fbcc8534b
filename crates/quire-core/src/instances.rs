//! The instance watchdog's judgement: from the latest heartbeat of every service
//! instance, which are alive, which stopped cleanly, and which went silent past the TTL
//! (dead), with the partitions each held when last heard of.
//!
//! Silence is measured on the watchdog's clock (when a heartbeat was heard), not on the
//! sender's, so a host with a skewed clock is judged like any other; and never shorter
//! than three of the instance's own heartbeat intervals.

use crate::records::{instance_key, InstanceHeartbeat, STOPPED};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// What the watchdog makes of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Liveness {
    Alive,
    /// Said goodbye in its last heartbeat: not a death.
    Stopped,
    /// Silent past the TTL without saying goodbye.
    Dead,
}

impl Liveness {
    pub const ALL: [Liveness; 3] = [Liveness::Alive, Liveness::Stopped, Liveness::Dead];

    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Stopped => "stopped",
            Liveness::Dead => "dead",
        }
    }
}

/// One instance, as last heard of.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceReport {
    pub service: String,
    pub instance_id: String,
    pub host: String,
    pub version: String,
    pub pid: i32,
    pub liveness: Liveness,
    pub started_at_ms: i64,
    pub last_heartbeat_ms: i64,
    pub silent_ms: i64,
    pub assigned_partitions: Vec<String>,
    pub last_commit_at_ms: Option<i64>,
}

impl InstanceReport {
    /// The instance's key, as on the instances topic.
    pub fn key(&self) -> String {
        instance_key(&self.service, &self.instance_id)
    }
}

/// The latest heartbeat of every instance, and when it was heard.
#[derive(Debug, Default)]
pub struct InstanceTable {
    latest: BTreeMap<String, (InstanceHeartbeat, i64)>,
}

impl InstanceTable {
    /// Notes `heartbeat`, heard at `heard_at_ms` (watchdog clock). An instance's
    /// heartbeats share a partition, so the one read last is its newest.
    pub fn on_heartbeat(&mut self, heartbeat: InstanceHeartbeat, heard_at_ms: i64) {
        self.latest.insert(heartbeat.key(), (heartbeat, heard_at_ms));
    }

    /// Every instance at `now_ms`: dead when silent longer than `ttl`. Instances not
    /// alive for longer than `forget_after` are dropped (scaled down for good).
    pub fn judge(&mut self, now_ms: i64, ttl: Duration, forget_after: Duration) -> Vec<InstanceReport> {
        let forget_ms = forget_after.as_millis() as i64;
        self.latest.retain(|_, (_, heard)| now_ms - *heard <= forget_ms);
        self.latest
            .values()
            .map(|(h, heard)| {
                let silent_ms = (now_ms - heard).max(0);
                let ttl_ms = (ttl.as_millis() as i64).max(3 * h.interval_ms);
                let liveness = match () {
                    _ if h.status == STOPPED => Liveness::Stopped,
                    _ if silent_ms > ttl_ms => Liveness::Dead,
                    _ => Liveness::Alive,
                };
                InstanceReport {
                    service: h.service.clone(),
                    instance_id: h.instance_id.clone(),
                    host: h.host.clone(),
                    version: h.version.clone(),
                    pid: h.pid,
                    liveness,
                    started_at_ms: h.started_at_ms,
                    last_heartbeat_ms: *heard,
                    silent_ms,
                    assigned_partitions: h.assigned_partitions.clone(),
                    last_commit_at_ms: h.last_commit_at_ms,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::RUNNING;

    fn heartbeat(instance: &str, sent_at_ms: i64, status: &str) -> InstanceHeartbeat {
        InstanceHeartbeat {
            instance_id: instance.into(),
            service: "validator".into(),
            version: "0.1.0".into(),
            host: "h".into(),
            pid: 7,
            started_at_ms: 0,
            sent_at_ms,
            interval_ms: 1_000,
            assigned_partitions: vec!["q.results/0".into()],
            last_commit_at_ms: Some(sent_at_ms),
            status: status.into(),
        }
    }

    fn liveness(table: &mut InstanceTable, now_ms: i64) -> Vec<(String, Liveness)> {
        table.judge(now_ms, Duration::from_secs(5), Duration::from_secs(60)).into_iter().map(|r| (r.instance_id, r.liveness)).collect()
    }

    #[test]
    fn a_silent_instance_is_dead_past_the_ttl_with_its_partitions() {
        let mut table = InstanceTable::default();
        table.on_heartbeat(heartbeat("a", 1_000, RUNNING), 1_000);
        assert_eq!(liveness(&mut table, 6_000), [("a".to_owned(), Liveness::Alive)]);
        let report = table.judge(6_001, Duration::from_secs(5), Duration::from_secs(60));
        assert_eq!((report[0].liveness, report[0].silent_ms), (Liveness::Dead, 5_001));
        assert_eq!(report[0].assigned_partitions, ["q.results/0"]);
    }

    #[test]
    fn a_clean_stop_is_not_a_death_and_a_restart_is_alive_again() {
        let mut table = InstanceTable::default();
        table.on_heartbeat(heartbeat("a", 1_000, STOPPED), 1_000);
        assert_eq!(liveness(&mut table, 30_000), [("a".to_owned(), Liveness::Stopped)]);
        table.on_heartbeat(heartbeat("a", 31_000, RUNNING), 31_000);
        assert_eq!(liveness(&mut table, 32_000), [("a".to_owned(), Liveness::Alive)]);
    }

    #[test]
    fn silence_is_measured_on_the_watchdogs_clock_and_spans_three_intervals() {
        let mut table = InstanceTable::default();
        // Sent by a host whose clock is an hour behind, heard just now: alive.
        table.on_heartbeat(heartbeat("skewed", 1_000 - 3_600_000, RUNNING), 1_000);
        // Heartbeats every 4 s: dead only after 12 s of silence, TTL 5 s or not.
        table.on_heartbeat(InstanceHeartbeat { interval_ms: 4_000, ..heartbeat("slow", 1_000, RUNNING) }, 1_000);
        assert_eq!(liveness(&mut table, 5_000), [("skewed".to_owned(), Liveness::Alive), ("slow".to_owned(), Liveness::Alive)]);
        assert_eq!(liveness(&mut table, 12_000), [("skewed".to_owned(), Liveness::Dead), ("slow".to_owned(), Liveness::Alive)]);
        assert_eq!(liveness(&mut table, 13_001), [("skewed".to_owned(), Liveness::Dead), ("slow".to_owned(), Liveness::Dead)]);
    }

    #[test]
    fn gone_instances_are_forgotten_after_a_while() {
        let mut table = InstanceTable::default();
        table.on_heartbeat(heartbeat("dead", 0, RUNNING), 0);
        table.on_heartbeat(heartbeat("stopped", 0, STOPPED), 0);
        table.on_heartbeat(heartbeat("alive", 60_500, RUNNING), 60_500);
        assert_eq!(liveness(&mut table, 61_000), [("alive".to_owned(), Liveness::Alive)]);
    }
}
