//! Failures, classified by the action they call for.
//!
//! [`ErrorClass`] is decided in one place per failure source and drives what the
//! processing loop does: retry the record later, quarantine it, or stop the process.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a failure calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorClass {
    /// May succeed later (an engine timed out, a dependency was down): retry with backoff.
    Transient,
    /// The record itself is bad (malformed, fails a rule): quarantine it, never retry.
    Data,
    /// This process cannot go on (fenced, misconfigured): exit and let it restart.
    Fatal,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "TRANSIENT",
            ErrorClass::Data => "DATA",
            ErrorClass::Fatal => "FATAL",
        }
    }

    /// The exception class name written to `kafka_dlt-exception-fqcn`.
    pub fn fqcn(self) -> &'static str {
        match self {
            ErrorClass::Transient => "quire.TransientError",
            ErrorClass::Data => "quire.DataError",
            ErrorClass::Fatal => "quire.FatalError",
        }
    }

    /// Reads back an [`ErrorClass::fqcn`].
    pub fn from_fqcn(fqcn: &str) -> Option<ErrorClass> {
        [ErrorClass::Transient, ErrorClass::Data, ErrorClass::Fatal].into_iter().find(|c| c.fqcn() == fqcn)
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
    pub fn data(cause: &'static str, reason: impl Into<String>) -> Self {
        Failure { class: ErrorClass::Data, cause, reason: reason.into() }
    }
    pub fn transient(cause: &'static str, reason: impl Into<String>) -> Self {
        Failure { class: ErrorClass::Transient, cause, reason: reason.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fqcn_round_trips() {
        for class in [ErrorClass::Transient, ErrorClass::Data, ErrorClass::Fatal] {
            assert_eq!(ErrorClass::from_fqcn(class.fqcn()), Some(class));
        }
        assert_eq!(ErrorClass::from_fqcn("java.lang.Exception"), None);
    }
}
