//! Failures, classified by the action they call for.
//!
//! [`ErrorClass`] is decided in one place per failure source (the codec, an engine, a
//! rule, a transaction call) and [`ErrorClass::action`] says, in this one place, what
//! Quire does about it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a failure calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorClass {
    /// May succeed on its own later (an HTTP 500, a dropped connection): retry with backoff.
    Transient,
    /// A dependency is overloaded (timeout, 429, 503): slow down and reschedule.
    Resource,
    /// An engine answered, but with bad or empty output: try the next engine.
    Model,
    /// The record itself is bad (undecodable, wrong schema, invalid text, oversized):
    /// quarantine it at once, never retry.
    Data,
    /// A dependency is down for long (every engine's breaker is open): pause the
    /// partitions instead of burning retries.
    Systemic,
    /// This process cannot go on (fenced, misconfigured): exit and let it restart.
    Fatal,
}

/// What Quire does about a failure: the one table ([`ErrorClass::action`]) that the
/// stages, the engine chain and the processing loop read to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Try again later: a record goes to the retry topic of its next attempt (ERROR and
    /// quarantine once the retry schedule is spent); a batch the loop could not finish
    /// is aborted and read again from its start after a backoff.
    RetryAfter,
    /// The same, and slow the stage down for a while.
    SlowDownAndRetryAfter,
    /// Ask the next engine of the fallback chain (a retry once the chain is exhausted).
    Fallback,
    /// Dead-letter the record at once.
    Quarantine,
    /// Leave the record where it is and pause the stage's partitions until the
    /// dependency is back.
    Pause,
    /// End the process: its supervisor restarts it.
    Exit,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 6] = [
        ErrorClass::Transient,
        ErrorClass::Resource,
        ErrorClass::Model,
        ErrorClass::Data,
        ErrorClass::Systemic,
        ErrorClass::Fatal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "TRANSIENT",
            ErrorClass::Resource => "RESOURCE",
            ErrorClass::Model => "MODEL",
            ErrorClass::Data => "DATA",
            ErrorClass::Systemic => "SYSTEMIC",
            ErrorClass::Fatal => "FATAL",
        }
    }

    /// Reads back [`ErrorClass::as_str`], case-insensitively.
    pub fn parse(name: &str) -> Option<ErrorClass> {
        ErrorClass::ALL.into_iter().find(|c| c.as_str().eq_ignore_ascii_case(name))
    }

    /// What a failure of this class calls for.
    pub fn action(self) -> Action {
        match self {
            ErrorClass::Transient => Action::RetryAfter,
            ErrorClass::Resource => Action::SlowDownAndRetryAfter,
            ErrorClass::Model => Action::Fallback,
            ErrorClass::Data => Action::Quarantine,
            ErrorClass::Systemic => Action::Pause,
            ErrorClass::Fatal => Action::Exit,
        }
    }

    /// Whether a failure of this class says something about the engine's health (and
    /// so counts against its circuit breaker). Bad input does not.
    pub fn counts_against_engine(self) -> bool {
        matches!(self, ErrorClass::Transient | ErrorClass::Resource | ErrorClass::Model | ErrorClass::Systemic)
    }

    /// The exception class name written to `kafka_dlt-exception-fqcn`.
    pub fn fqcn(self) -> &'static str {
        match self {
            ErrorClass::Transient => "quire.TransientError",
            ErrorClass::Resource => "quire.ResourceError",
            ErrorClass::Model => "quire.ModelError",
            ErrorClass::Data => "quire.DataError",
            ErrorClass::Systemic => "quire.SystemicError",
            ErrorClass::Fatal => "quire.FatalError",
        }
    }

    /// Reads back an [`ErrorClass::fqcn`].
    pub fn from_fqcn(fqcn: &str) -> Option<ErrorClass> {
        ErrorClass::ALL.into_iter().find(|c| c.fqcn() == fqcn)
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record-level failure: its class, a short cause name and a human-readable reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class} error ({cause}): {reason}")]
pub struct Failure {
    pub class: ErrorClass,
    /// Short machine-readable cause, e.g. `malformed-record`, `checksum-mismatch`.
    pub cause: &'static str,
    pub reason: String,
}

impl Failure {
    pub fn new(class: ErrorClass, cause: &'static str, reason: impl Into<String>) -> Self {
        Failure { class, cause, reason: reason.into() }
    }
    pub fn data(cause: &'static str, reason: impl Into<String>) -> Self {
        Failure::new(ErrorClass::Data, cause, reason)
    }
    pub fn transient(cause: &'static str, reason: impl Into<String>) -> Self {
        Failure::new(ErrorClass::Transient, cause, reason)
    }
    pub fn resource(cause: &'static str, reason: impl Into<String>) -> Self {
        Failure::new(ErrorClass::Resource, cause, reason)
    }
    pub fn model(cause: &'static str, reason: impl Into<String>) -> Self {
        Failure::new(ErrorClass::Model, cause, reason)
    }
    pub fn systemic(cause: &'static str, reason: impl Into<String>) -> Self {
        Failure::new(ErrorClass::Systemic, cause, reason)
    }
    /// What this failure calls for.
    pub fn action(&self) -> Action {
        self.class.action()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fqcn_and_name_round_trip() {
        for class in ErrorClass::ALL {
            assert_eq!(ErrorClass::from_fqcn(class.fqcn()), Some(class));
            assert_eq!(ErrorClass::parse(&class.as_str().to_lowercase()), Some(class));
        }
        assert_eq!(ErrorClass::from_fqcn("java.lang.Exception"), None);
    }

    #[test]
    fn the_readme_table_gives_each_class_its_action() {
        let readme = include_str!("../../../README.md");
        for class in ErrorClass::ALL {
            let start = format!("| `{}` |", class.as_str());
            let row = readme.lines().find(|line| line.starts_with(&start)).unwrap_or_else(|| panic!("README.md has no row for {class}"));
            assert!(row.contains(&format!("| `{:?}` |", class.action())), "README.md's row for {class} does not name {:?}: {row}", class.action());
        }
    }

    #[test]
    fn each_class_has_its_own_action() {
        let policies: std::collections::HashSet<_> =
            ErrorClass::ALL.iter().map(|c| format!("{:?}", c.action())).collect();
        assert_eq!(policies.len(), ErrorClass::ALL.len());
        assert_eq!(ErrorClass::Data.action(), Action::Quarantine);
        assert!(!ErrorClass::Data.counts_against_engine());
        assert!(ErrorClass::Resource.counts_against_engine());
    }
}
