//! Engines run as fallback chains, each engine behind its own timeout and circuit
//! breaker.
//!
//! A chain's outcome is one classified result: the inference stage never sees an
//! individual engine's failure. When every engine of a chain is refused by an open
//! breaker the failure is SYSTEMIC and carries the time the first breaker half-opens,
//! so the stage can pause instead of burning retries.

use crate::config::{EngineKind, EnginesConfig, Strategy};
use crate::engine::{Engine, Inference, NoopEngine};
use crate::http::OpenAiEngine;
use quire_core::breaker::{BreakerState, BreakerStats, CircuitBreaker};
use quire_core::records::Block;
use quire_core::{Action, ErrorClass, Failure};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Metric names of the engines.
pub mod names {
    pub const CALLS: &str = "quire_engine_calls_total";
    pub const CALL_DURATION: &str = "quire_engine_call_duration_seconds";
    pub const BREAKER_STATE: &str = "quire_engine_breaker_state";
}

/// One engine with its timeout and breaker.
struct Slot {
    engine: Arc<dyn Engine>,
    timeout: Duration,
    breaker: Mutex<CircuitBreaker>,
}

/// A success of one engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Produced {
    pub engine: String,
    pub inference: Inference,
    pub latency: Duration,
}

/// What a chain produced: the preferred engine's success first, the others' after.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainOutput {
    pub primary: Produced,
    pub alternatives: Vec<Produced>,
}

/// A chain that produced nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainFailure {
    pub failure: Failure,
    /// Set when every engine was refused by an open breaker: when the first half-opens.
    pub resume_at: Option<Instant>,
}

struct Chain {
    strategy: Strategy,
    engines: Vec<Arc<Slot>>,
    deadline: Duration,
}

/// A breaker's state as `/health/engines` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EngineHealth {
    pub name: String,
    pub state: BreakerState,
    pub timeout_ms: u64,
    /// Milliseconds until an open breaker half-opens.
    pub reopens_in_ms: Option<u64>,
    pub stats: BreakerStats,
}

/// Every configured engine and chain.
pub struct Engines {
    slots: BTreeMap<String, Arc<Slot>>,
    tasks: BTreeMap<String, Chain>,
}

impl Engines {
    /// Builds the engines of `config` (the language-id model loads here: call it off
    /// the async runtime).
    pub fn build(config: &EnginesConfig) -> Result<Self, crate::ConfigError> {
        config.validate()?;
        let mut slots = BTreeMap::new();
        for spec in &config.engines {
            let engine: Arc<dyn Engine> = match spec.kind {
                EngineKind::Noop => Arc::new(NoopEngine::new(&spec.name)),
                EngineKind::Openai => {
                    let api_key = spec.api_key_env.as_deref().and_then(|var| std::env::var(var).ok());
                    let (url, model) = (spec.url.as_deref().unwrap_or_default(), spec.model.as_deref().unwrap_or_default());
                    Arc::new(OpenAiEngine::new(&spec.name, url, model, api_key))
                }
                #[cfg(feature = "language-id")]
                EngineKind::LanguageId => Arc::new(crate::engine::LanguageIdEngine::new(&spec.name)),
                #[cfg(not(feature = "language-id"))]
                EngineKind::LanguageId => {
                    return Err(crate::ConfigError::Invalid("this build has no language-id engine".into()))
                }
            };
            Self::add(&mut slots, engine, config.timeout_of(spec), CircuitBreaker::new(config.breaker_of(spec)));
        }
        let tasks = config
            .tasks
            .iter()
            .map(|(task, chain)| {
                let engines = chain.engines.iter().map(|name| slots[name].clone()).collect();
                (task.clone(), Chain { strategy: chain.strategy, engines, deadline: Duration::from_millis(chain.deadline_ms) })
            })
            .collect();
        Ok(Engines { slots, tasks })
    }

    fn add(slots: &mut BTreeMap<String, Arc<Slot>>, engine: Arc<dyn Engine>, timeout: Duration, breaker: CircuitBreaker) {
        let name = engine.name().to_owned();
        metrics::gauge!(names::BREAKER_STATE, "engine" => name.clone()).set(BreakerState::Closed.gauge());
        slots.insert(name, Arc::new(Slot { engine, timeout, breaker: Mutex::new(breaker) }));
    }

    /// Runs `block` through its task's chain.
    pub async fn run(&self, block: &Block) -> Result<ChainOutput, ChainFailure> {
        let chain = self.tasks.get(&block.task).ok_or_else(|| ChainFailure {
            failure: Failure::data(
                "unsupported-task",
                format!("no engine chain for task {:?} (block {}); configured: {:?}", block.task, block.block_id, self.tasks.keys().collect::<Vec<_>>()),
            ),
            resume_at: None,
        })?;
        let results = match chain.strategy {
            Strategy::FirstSuccess => {
                let mut results = Vec::new();
                for slot in &chain.engines {
                    let result = slot.clone().call(block.clone(), slot.timeout).await;
                    let stop = match &result {
                        Ok(_) => true,
                        // Bad input stays bad whichever engine reads it.
                        Err(f) => f.action() == Action::Quarantine,
                    };
                    results.push(result);
                    if stop {
                        break;
                    }
                }
                results
            }
            Strategy::All => Self::in_parallel(chain, block, None).await,
            Strategy::BestEffort => Self::in_parallel(chain, block, Some(chain.deadline)).await,
        };
        outcome(results, chain)
    }

    /// Runs every engine of `chain` at once; with a deadline, engines still running
    /// then are dropped (and reported as timed out).
    async fn in_parallel(chain: &Chain, block: &Block, deadline: Option<Duration>) -> Vec<Result<Produced, Failure>> {
        let mut set = tokio::task::JoinSet::new();
        for (index, slot) in chain.engines.iter().enumerate() {
            let (slot, block) = (slot.clone(), block.clone());
            // An engine slower than the deadline times out by it, and its breaker hears of it.
            let timeout = deadline.map_or(slot.timeout, |d| d.min(slot.timeout));
            set.spawn(async move { (index, slot.call(block, timeout).await) });
        }
        let mut results: Vec<Option<Result<Produced, Failure>>> = vec![None; chain.engines.len()];
        let end = deadline.map(|d| tokio::time::Instant::now() + d);
        loop {
            let next = match end {
                Some(end) => match tokio::time::timeout_at(end, set.join_next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
                None => set.join_next().await,
            };
            match next {
                Some(Ok((index, result))) => results[index] = Some(result),
                Some(Err(panic)) => tracing::error!(error = %panic, "engine task panicked"),
                None => break,
            }
        }
        set.abort_all();
        results
            .into_iter()
            .zip(&chain.engines)
            .map(|(result, slot)| {
                result.unwrap_or_else(|| {
                    Err(Failure::resource("deadline-exceeded", format!("engine {} did not answer within the chain's deadline", slot.engine.name())))
                })
            })
            .collect()
    }

    /// Every breaker's state, for `/health/engines`; refreshes the breaker gauges too,
    /// so an open breaker that half-opened with no call since does not read open.
    pub fn health(&self) -> Vec<EngineHealth> {
        let now = Instant::now();
        self.slots
            .iter()
            .map(|(name, slot)| {
                let breaker = slot.breaker.lock().expect("breaker lock");
                let state = breaker.state(now);
                metrics::gauge!(names::BREAKER_STATE, "engine" => name.clone()).set(state.gauge());
                EngineHealth {
                    name: name.clone(),
                    state,
                    timeout_ms: slot.timeout.as_millis() as u64,
                    reopens_in_ms: breaker.open_until().filter(|_| state == BreakerState::Open).map(|u| u.saturating_duration_since(now).as_millis() as u64),
                    stats: breaker.stats(),
                }
            })
            .collect()
    }

    /// Closes one breaker by hand; `false` if there is no such engine.
    pub fn reset(&self, name: &str) -> bool {
        let Some(slot) = self.slots.get(name) else { return false };
        slot.breaker.lock().expect("breaker lock").reset();
        metrics::gauge!(names::BREAKER_STATE, "engine" => name.to_owned()).set(BreakerState::Closed.gauge());
        tracing::info!(engine = name, "circuit breaker reset by hand");
        true
    }

    pub fn names(&self) -> Vec<String> {
        self.slots.keys().cloned().collect()
    }
}

impl Slot {
    async fn call(self: Arc<Self>, block: Block, timeout: Duration) -> Result<Produced, Failure> {
        let name = self.engine.name().to_owned();
        if let Err(until) = self.breaker.lock().expect("breaker lock").try_acquire(Instant::now()) {
            metrics::counter!(names::CALLS, "engine" => name.clone(), "outcome" => "rejected").increment(1);
            let wait = until.saturating_duration_since(Instant::now());
            return Err(Failure::systemic("breaker-open", format!("engine {name}: circuit breaker open for {} ms more", wait.as_millis())));
        }
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, self.engine.infer(&block)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::resource(
                "engine-timeout",
                format!("engine {name} took longer than {} ms on block {}", timeout.as_millis(), block.block_id),
            )),
        };
        let latency = started.elapsed();
        let state = {
            let mut breaker = self.breaker.lock().expect("breaker lock");
            let now = Instant::now();
            match &result {
                Ok(_) => breaker.on_success(now),
                Err(f) if f.class.counts_against_engine() => breaker.on_failure(now),
                Err(_) => {}
            }
            breaker.state(now)
        };
        let outcome = match &result {
            Ok(_) => "success",
            Err(f) => f.class.as_str(),
        };
        metrics::counter!(names::CALLS, "engine" => name.clone(), "outcome" => outcome).increment(1);
        metrics::histogram!(names::CALL_DURATION, "engine" => name.clone()).record(latency.as_secs_f64());
        metrics::gauge!(names::BREAKER_STATE, "engine" => name.clone()).set(state.gauge());
        result.map(|inference| Produced { engine: name, inference, latency })
    }
}

/// One result out of the engines' results, in chain order.
fn outcome(results: Vec<Result<Produced, Failure>>, chain: &Chain) -> Result<ChainOutput, ChainFailure> {
    let mut successes = Vec::new();
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(produced) => successes.push(produced),
            Err(failure) => failures.push(failure),
        }
    }
    if !successes.is_empty() {
        let primary = successes.remove(0);
        return Ok(ChainOutput { primary, alternatives: successes });
    }
    let reason = failures.iter().map(|f| f.reason.as_str()).collect::<Vec<_>>().join("; ");
    let has = |class| failures.iter().any(|f| f.class == class);
    if let Some(data) = failures.iter().find(|f| f.action() == Action::Quarantine) {
        return Err(ChainFailure { failure: data.clone(), resume_at: None });
    }
    // Only an open breaker fails an engine call with a class that pauses.
    if failures.len() == chain.engines.len() && failures.iter().all(|f| f.action() == Action::Pause) {
        let resume_at = chain.engines.iter().filter_map(|s| s.breaker.lock().expect("breaker lock").open_until()).min();
        return Err(ChainFailure { failure: Failure::systemic("all-breakers-open", reason), resume_at });
    }
    let failure = if has(ErrorClass::Resource) {
        Failure::resource("engines-overloaded", reason)
    } else if has(ErrorClass::Transient) || has(ErrorClass::Systemic) {
        Failure::transient("engines-failed", reason)
    } else {
        Failure::model("no-usable-output", reason)
    };
    Err(ChainFailure { failure, resume_at: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::InferFuture;
    use quire_core::breaker::BreakerConfig;
    use quire_core::BlockState;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Fails with `failure` (or sleeps `delay` first), counting calls.
    struct Scripted {
        name: String,
        failure: Option<Failure>,
        delay: Duration,
        calls: AtomicU32,
    }

    impl Engine for Scripted {
        fn name(&self) -> &str {
            &self.name
        }
        fn infer<'a>(&'a self, _block: &'a Block) -> InferFuture<'a> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(self.delay).await;
                match &self.failure {
                    Some(f) => Err(f.clone()),
                    None => Ok(Inference { label: self.name.clone(), confidence: 1.0, text: None }),
                }
            })
        }
    }

    fn scripted(name: &str, failure: Option<Failure>, delay_ms: u64) -> Arc<Scripted> {
        Arc::new(Scripted { name: name.into(), failure, delay: Duration::from_millis(delay_ms), calls: AtomicU32::new(0) })
    }

    fn engines(strategy: Strategy, list: &[Arc<Scripted>]) -> Engines {
        let mut slots = BTreeMap::new();
        let breaker = BreakerConfig { failure_threshold: 2, success_threshold: 1, open_for: Duration::from_secs(60), max_open_for: Duration::from_secs(60) };
        for engine in list {
            Engines::add(&mut slots, engine.clone(), Duration::from_millis(200), CircuitBreaker::new(breaker));
        }
        let chain = Chain { strategy, engines: list.iter().map(|e| slots[&e.name].clone()).collect(), deadline: Duration::from_millis(100) };
        Engines { slots, tasks: [("language-id".to_owned(), chain)].into() }
    }

    fn block() -> Block {
        Block::fixture("b", "text", BlockState::Processing)
    }

    #[tokio::test]
    async fn first_success_falls_back_past_bad_output() {
        let garbage = scripted("a", Some(Failure::model("engine-garbage", "a: garbage")), 0);
        let good = scripted("b", None, 0);
        let out = engines(Strategy::FirstSuccess, &[garbage, good.clone()]).run(&block()).await.unwrap();
        assert_eq!(out.primary.engine, "b");
        assert!(out.alternatives.is_empty());
    }

    #[tokio::test]
    async fn bad_data_stops_the_chain() {
        let a = scripted("a", Some(Failure::data("too-large", "a: too large")), 0);
        let b = scripted("b", None, 0);
        let err = engines(Strategy::FirstSuccess, &[a, b.clone()]).run(&block()).await.unwrap_err();
        assert_eq!(err.failure.class, ErrorClass::Data);
        assert_eq!(b.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn timeouts_are_resource_failures_and_open_the_breaker() {
        let slow = scripted("slow", None, 1_000);
        let set = engines(Strategy::FirstSuccess, std::slice::from_ref(&slow));
        for _ in 0..2 {
            assert_eq!(set.run(&block()).await.unwrap_err().failure.class, ErrorClass::Resource);
        }
        let err = set.run(&block()).await.unwrap_err();
        assert_eq!(err.failure.class, ErrorClass::Systemic);
        assert!(err.resume_at.is_some());
        assert_eq!(slow.calls.load(Ordering::SeqCst), 2, "an open breaker refuses the call");
        assert_eq!(set.health()[0].state, BreakerState::Open);
        assert!(set.reset("slow"));
        assert_eq!(set.health()[0].state, BreakerState::Closed);
        assert!(!set.reset("nope"));
    }

    #[tokio::test]
    async fn all_keeps_every_success_in_chain_order() {
        let a = scripted("a", None, 50);
        let b = scripted("b", Some(Failure::transient("engine-error", "b: 500")), 0);
        let c = scripted("c", None, 0);
        let out = engines(Strategy::All, &[a, b, c]).run(&block()).await.unwrap();
        assert_eq!(out.primary.engine, "a");
        assert_eq!(out.alternatives.iter().map(|p| p.engine.as_str()).collect::<Vec<_>>(), ["c"]);
    }

    #[tokio::test]
    async fn best_effort_keeps_what_finished_by_the_deadline() {
        let late = scripted("late", None, 150);
        let quick = scripted("quick", None, 10);
        let out = engines(Strategy::BestEffort, &[late, quick]).run(&block()).await.unwrap();
        assert_eq!(out.primary.engine, "quick");
        assert!(out.alternatives.is_empty());
        let only_late = engines(Strategy::BestEffort, &[scripted("late", None, 150)]);
        let err = only_late.run(&block()).await.unwrap_err();
        assert_eq!((err.failure.class, err.failure.cause), (ErrorClass::Resource, "engines-overloaded"));
    }

    #[tokio::test]
    async fn unknown_task_is_bad_data() {
        let mut b = block();
        b.task = "summarize".into();
        let err = engines(Strategy::FirstSuccess, &[scripted("a", None, 0)]).run(&b).await.unwrap_err();
        assert_eq!(err.failure.cause, "unsupported-task");
    }
}
