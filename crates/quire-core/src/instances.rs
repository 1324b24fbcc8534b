//! The instance watchdog's judgement: from the latest heartbeat of every service
//! instance, which are alive, which stopped cleanly, and which went silent past the TTL
//! (dead), with the partitions each held when last heard of.

use crate::records::{InstanceHeartbeat, STOPPED};
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

/// The latest heartbeat of every instance.
#[derive(Debug, Default)]
pub struct InstanceTable {
    latest: BTreeMap<String, InstanceHeartbeat>,
}

impl InstanceTable {
    /// Keeps `heartbeat` if it is the instance's newest.
    pub fn on_heartbeat(&mut self, heartbeat: InstanceHeartbeat) {
        let key = heartbeat.key();
        if self.latest.get(&key).is_none_or(|seen| heartbeat.sent_at_ms >= seen.sent_at_ms) {
            self.latest.insert(key, heartbeat);
        }
    }

    /// Every instance at `now_ms`: dead when silent longer than `ttl`. Instances not
    /// alive for longer than `forget_after` are dropped (scaled down for good).
    pub fn judge(&mut self, now_ms: i64, ttl: Duration, forget_after: Duration) -> Vec<InstanceReport> {
        let forget_ms = forget_after.as_millis() as i64;
        let ttl_ms = ttl.as_millis() as i64;
        self.latest.retain(|_, h| now_ms - h.sent_at_ms <= forget_ms);
        self.latest
            .values()
            .map(|h| {
                let silent_ms = (now_ms - h.sent_at_ms).max(0);
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
                    last_heartbeat_ms: h.sent_at_ms,
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
        table.on_heartbeat(heartbeat("a", 1_000, RUNNING));
        assert_eq!(liveness(&mut table, 6_000), [("a".to_owned(), Liveness::Alive)]);
        let report = table.judge(6_001, Duration::from_secs(5), Duration::from_secs(60));
        assert_eq!((report[0].liveness, report[0].silent_ms), (Liveness::Dead, 5_001));
        assert_eq!(report[0].assigned_partitions, ["q.results/0"]);
    }

    #[test]
    fn a_clean_stop_is_not_a_death_and_a_restart_is_alive_again() {
        let mut table = InstanceTable::default();
        table.on_heartbeat(heartbeat("a", 1_000, STOPPED));
        assert_eq!(liveness(&mut table, 30_000), [("a".to_owned(), Liveness::Stopped)]);
        table.on_heartbeat(heartbeat("a", 31_000, RUNNING));
        assert_eq!(liveness(&mut table, 32_000), [("a".to_owned(), Liveness::Alive)]);
    }

    #[test]
    fn an_older_heartbeat_read_late_changes_nothing() {
        let mut table = InstanceTable::default();
        table.on_heartbeat(heartbeat("a", 9_000, RUNNING));
        table.on_heartbeat(heartbeat("a", 1_000, RUNNING));
        assert_eq!(liveness(&mut table, 12_000), [("a".to_owned(), Liveness::Alive)]);
    }

    #[test]
    fn gone_instances_are_forgotten_after_a_while() {
        let mut table = InstanceTable::default();
        table.on_heartbeat(heartbeat("dead", 0, RUNNING));
        table.on_heartbeat(heartbeat("stopped", 0, STOPPED));
        table.on_heartbeat(heartbeat("alive", 60_500, RUNNING));
        assert_eq!(liveness(&mut table, 61_000), [("alive".to_owned(), Liveness::Alive)]);
    }
}
