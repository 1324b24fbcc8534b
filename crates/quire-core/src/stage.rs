//! The pipeline's stages by name: the one list each stage's consumer group, topics,
//! metric labels and heartbeats derive from.

use std::fmt;

/// A stage of the pipeline, in pipeline order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StageName {
    Claimer,
    Inference,
    Validator,
    Quarantine,
}

impl StageName {
    pub const ALL: [StageName; 4] = [StageName::Claimer, StageName::Inference, StageName::Validator, StageName::Quarantine];

    /// The name in group ids, metric labels, audit events and heartbeats.
    pub fn as_str(self) -> &'static str {
        match self {
            StageName::Claimer => "claimer",
            StageName::Inference => "inference",
            StageName::Validator => "validator",
            StageName::Quarantine => "quarantine",
        }
    }

    /// Reads back [`StageName::as_str`].
    pub fn parse(name: &str) -> Option<StageName> {
        StageName::ALL.into_iter().find(|stage| stage.as_str() == name)
    }

    /// The binary that runs the stage.
    pub fn binary(self) -> String {
        format!("quire-{}", self.as_str())
    }
}

impl fmt::Display for StageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back() {
        for stage in StageName::ALL {
            assert_eq!(StageName::parse(stage.as_str()), Some(stage));
        }
        assert_eq!(StageName::parse("watchdog"), None);
        assert_eq!(StageName::Inference.binary(), "quire-inference");
    }
}
