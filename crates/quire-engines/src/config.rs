//! The engines' configuration: which engines exist, their timeouts and breakers
//! (defaults with per-engine overrides), and the fallback chain of each task. Read from
//! a YAML file (`QUIRE_ENGINES_CONFIG`); see `engines.example.yaml`.

use quire_core::breaker::BreakerConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read engines config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("engines config {path}: {source}")]
    Parse { path: String, source: serde_yaml::Error },
    #[error("engines config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnginesConfig {
    /// Settings every engine gets unless it overrides them.
    #[serde(default)]
    pub defaults: EngineDefaults,
    pub engines: Vec<EngineConfig>,
    /// Task name (a block's `task`) → its fallback chain.
    pub tasks: BTreeMap<String, TaskConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineDefaults {
    /// Longest one engine call may take.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub breaker: BreakerSettings,
}

impl Default for EngineDefaults {
    fn default() -> Self {
        EngineDefaults { timeout_ms: default_timeout_ms(), breaker: BreakerSettings::default() }
    }
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// Circuit breaker settings; a missing field takes the default's (or the built-in) value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: Option<u32>,
    /// Consecutive successes in half-open that close it.
    pub success_threshold: Option<u32>,
    /// First open period; doubles each time a probe fails.
    pub open_ms: Option<u64>,
    /// Cap of the open period.
    pub max_open_ms: Option<u64>,
}

impl BreakerSettings {
    /// These settings over `base`.
    fn over(&self, base: BreakerConfig) -> BreakerConfig {
        BreakerConfig {
            failure_threshold: self.failure_threshold.unwrap_or(base.failure_threshold),
            success_threshold: self.success_threshold.unwrap_or(base.success_threshold),
            open_for: self.open_ms.map(Duration::from_millis).unwrap_or(base.open_for),
            max_open_for: self.max_open_ms.map(Duration::from_millis).unwrap_or(base.max_open_for),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    /// Offline language identification (lingua).
    LanguageId,
    /// Labels everything `noop`: for benchmarks only.
    Noop,
    /// An OpenAI-compatible chat completions server.
    Openai,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Name used in chains, results, metrics and `/health/engines`.
    pub name: String,
    pub kind: EngineKind,
    /// Base URL of an `openai` engine, e.g. `http://127.0.0.1:8000/v1`.
    pub url: Option<String>,
    /// Model name sent to an `openai` engine.
    pub model: Option<String>,
    /// Environment variable holding the API key of an `openai` engine (never the key).
    pub api_key_env: Option<String>,
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub breaker: BreakerSettings,
}

/// How a chain uses its engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Try the engines in order; the first success wins.
    #[default]
    FirstSuccess,
    /// Run every engine at once and keep every success.
    All,
    /// Run every engine at once and keep what finished within the deadline.
    BestEffort,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    #[serde(default)]
    pub strategy: Strategy,
    /// Engine names, in order of preference.
    pub engines: Vec<String>,
    /// For `best_effort`: how long to wait for answers.
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
}

fn default_deadline_ms() -> u64 {
    30_000
}

impl EnginesConfig {
    pub fn load(path: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates the text of an engines config read from `path`.
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let config: EnginesConfig = serde_yaml::from_str(text).map_err(|source| ConfigError::Parse { path: path.into(), source })?;
        config.validate()?;
        Ok(config)
    }

    /// One engine serving every known task: what runs without a config file.
    pub fn single(name: &str, kind: EngineKind, timeout_ms: u64) -> Self {
        let chain = TaskConfig { strategy: Strategy::FirstSuccess, engines: vec![name.into()], deadline_ms: default_deadline_ms() };
        EnginesConfig {
            defaults: EngineDefaults { timeout_ms, ..EngineDefaults::default() },
            engines: vec![EngineConfig {
                name: name.into(),
                kind,
                url: None,
                model: None,
                api_key_env: None,
                timeout_ms: None,
                breaker: BreakerSettings::default(),
            }],
            tasks: [("language-id".to_owned(), chain)].into(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let mut names = std::collections::HashSet::new();
        for engine in &self.engines {
            if !names.insert(engine.name.as_str()) {
                return invalid(format!("engine {:?} is declared twice", engine.name));
            }
            if engine.kind == EngineKind::Openai && (engine.url.is_none() || engine.model.is_none()) {
                return invalid(format!("openai engine {:?} needs url and model", engine.name));
            }
            if self.timeout_of(engine).is_zero() {
                return invalid(format!("engine {:?}: timeout_ms must be at least 1", engine.name));
            }
            let breaker = self.breaker_of(engine);
            if breaker.failure_threshold == 0 || breaker.success_threshold == 0 || breaker.open_for > breaker.max_open_for {
                return invalid(format!("engine {:?}: thresholds must be ≥ 1 and open_ms ≤ max_open_ms", engine.name));
            }
        }
        for (task, chain) in &self.tasks {
            if chain.strategy == Strategy::BestEffort && chain.deadline_ms == 0 {
                return invalid(format!("task {task:?}: a best_effort deadline_ms must be at least 1"));
            }
            if chain.engines.is_empty() {
                return invalid(format!("task {task:?} has no engines"));
            }
            if let Some(missing) = chain.engines.iter().find(|e| !names.contains(e.as_str())) {
                return invalid(format!("task {task:?} names engine {missing:?}, which is not declared"));
            }
        }
        Ok(())
    }

    pub fn timeout_of(&self, engine: &EngineConfig) -> Duration {
        Duration::from_millis(engine.timeout_ms.unwrap_or(self.defaults.timeout_ms))
    }

    pub fn breaker_of(&self, engine: &EngineConfig) -> BreakerConfig {
        engine.breaker.over(self.defaults.breaker.over(BreakerConfig::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../engines.example.yaml");

    #[test]
    fn the_example_parses_and_overrides_apply() {
        let config: EnginesConfig = serde_yaml::from_str(EXAMPLE).unwrap();
        config.validate().unwrap();
        let primary = config.engines.iter().find(|e| e.name == "llm-primary").unwrap();
        assert_eq!(config.breaker_of(primary).failure_threshold, 3, "per-engine override");
        assert_eq!(config.breaker_of(primary).success_threshold, config.defaults.breaker.success_threshold.unwrap());
        assert_eq!(config.tasks["translate"].strategy, Strategy::FirstSuccess);
    }

    proptest::proptest! {
        /// The loader takes any text: it never panics, and what it accepts is valid.
        #[test]
        fn any_text_loads_or_is_refused(text in "\\PC{0,300}") {
            if let Ok(config) = EnginesConfig::parse(&text, "fuzzed.yaml") {
                proptest::prop_assert!(config.validate().is_ok());
            }
        }

        /// The example with one line dropped or one character changed: still never a
        /// panic, and an accepted config is still a valid one.
        #[test]
        fn mangled_examples_load_or_are_refused(line in 0usize..200, at in 0usize..4000, with in proptest::char::any(), drop_line: bool) {
            let mangled: String = if drop_line {
                let lines: Vec<&str> = EXAMPLE.lines().collect();
                let skip = line % lines.len();
                lines.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, l)| format!("{l}\n")).collect()
            } else {
                let chars: Vec<char> = EXAMPLE.chars().collect();
                let at = at % chars.len();
                chars.iter().enumerate().map(|(i, c)| if i == at { with } else { *c }).collect()
            };
            match EnginesConfig::parse(&mangled, "fuzzed.yaml") {
                Ok(config) => proptest::prop_assert!(config.validate().is_ok()),
                Err(e) => proptest::prop_assert!(!e.to_string().is_empty()),
            }
        }
    }

    #[test]
    fn zero_timeouts_are_refused() {
        let mut config = EnginesConfig::single("lingua", EngineKind::LanguageId, 0);
        assert!(config.validate().unwrap_err().to_string().contains("timeout_ms"));
        config.defaults.timeout_ms = 10;
        config.validate().unwrap();
    }

    #[test]
    fn unknown_engines_and_fields_are_named() {
        let mut config = EnginesConfig::single("lingua", EngineKind::LanguageId, 1000);
        config.tasks.get_mut("language-id").unwrap().engines.push("ghost".into());
        assert!(config.validate().unwrap_err().to_string().contains("\"ghost\""));
        let err = serde_yaml::from_str::<EnginesConfig>("engines: []\ntasks: {}\ncolour: red\n").unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }
}
