//! Live experiments: which model answers a search for a given user (unit), what the user was shown, what they
//! did with it, and which model wins.
//!
//! - [`Experiments`] owns the experiment definitions (stored in SQL, cached in memory so that assignment never
//!   touches the store) and their life cycle: `draft` → `running` ⇄ `paused` → `stopped` → `archived`.
//! - [`assign`] maps a unit to an arm by a salted hash (sticky across requests and restarts);
//!   [`interleave`] merges two rankings by team-draft interleaving.
//! - [`exposure`] writes what was shown (exposures) and shadow comparisons asynchronously, in batches, through a
//!   bounded queue: the search path never waits for the store, and drops (and counts) exposures when full.
//! - [`report`] turns exposures and feedback into per-arm statistics with [`stats`], split by model version when
//!   an arm's model changed mid-experiment; `promote` makes a stopped experiment's winner the default model.
//! - [`simulate`] and [`swap_bench`] are clients of a running server: simulated users, and live searches timed
//!   while a model back-fills and swaps.

pub mod assign;
pub mod compare;
pub mod exposure;
pub mod interleave;
pub mod judgements;
mod promote;
pub mod report;
mod retire;
pub mod serve;
pub mod simulate;
pub mod stats;
pub mod swap_bench;

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::config::ExperimentSettings;
use crate::metrics::Metrics;
pub use crate::store::{Arm, Experiment, ExposureItem, ExposureRecord, Mode, Promotion, ShadowRecord, Status};
use crate::store::{InterleaveCounts, Store, StoreError};
pub use exposure::ExposureLog;

impl Status {
    /// The allowed transitions. A stopped experiment cannot restart (its data would mix two periods): create a
    /// new one. Archiving is the only way to retire an experiment; nothing is deleted.
    pub fn can_become(self, next: Status) -> bool {
        use Status::*;
        matches!(
            (self, next),
            (Draft, Running)
                | (Running, Paused)
                | (Paused, Running)
                | (Running, Stopped)
                | (Paused, Stopped)
                | (Draft, Stopped)
                | (Draft, Archived)
                | (Stopped, Archived)
        ) || self == next
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("{0}")]
    Invalid(String),
    #[error("no experiment `{0}`")]
    NotFound(String),
    #[error("experiment `{experiment}` has no arm `{arm}`")]
    UnknownArm { experiment: String, arm: String },
    #[error("two arms are named `{0}`; name them (`name`) to compare a model with itself")]
    DuplicateArm(String),
    #[error("document `{doc_id}` was shown at position {shown}, not {given}")]
    WrongPosition { doc_id: String, shown: u32, given: u32 },
    #[error("weights apply to `ab` experiments; `{name}` is `{mode}`")]
    WeightsNeedAb { name: String, mode: &'static str },
    #[error("an experiment named `{0}` exists already")]
    NameTaken(String),
    #[error("experiment `{name}` cannot go from {from} to {to}")]
    Transition { name: String, from: &'static str, to: &'static str },
    #[error("request `{0}` is unknown: it was not served under a running experiment, or its exposure was dropped")]
    UnknownRequest(String),
    #[error("document `{doc_id}` was not shown in request `{request_id}`")]
    NotShown { request_id: String, doc_id: String },
    #[error("model `{model}` serves an arm of experiment `{experiment}`, which is running or paused; stop it first")]
    ModelInUse { model: String, experiment: String },
    #[error("experiment `{name}` is {status}; only a stopped experiment's arm can be promoted (send `\"status\": \"stopped\"` with `promote`)")]
    NotStopped { name: String, status: &'static str },
    #[error("`{model}` is not the model of an arm of experiment `{experiment}` (its arms' models: {models})")]
    NotAnArmModel { experiment: String, model: String, models: String },
    #[error("experiment `{name}` was promoted already: `{model}` became the default model at {at}")]
    AlreadyPromoted { name: String, model: String, at: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
}

/// What a search does under the experiments.
#[derive(Debug, Clone)]
pub enum Route {
    /// No experiment applies: the default model serves, nothing is logged.
    Direct,
    /// An experiment applies. When it is not running, the control arm serves and nothing is logged.
    Experiment { experiment: Arc<Experiment>, unit_id: String, plan: Plan },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// One arm serves (A/B assignment, or the control of an experiment that is not running).
    Arm { index: usize, logged: bool },
    /// Both arms' rankings are merged by team-draft interleaving.
    Interleave,
    /// The first arm serves; the second runs off the request path.
    Shadow,
}

/// A feedback event on a shown result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    Click,
    Conversion,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Click => "click",
            Event::Conversion => "conversion",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    pub request_id: String,
    pub doc_id: String,
    pub event: Event,
    /// Checked against the position the document was shown at, when given.
    #[serde(default, deserialize_with = "crate::util::json::non_null")]
    pub position: Option<u32>,
    /// A human rater's relevance grade, 0 to 10; sent again for the same event, it replaces the earlier one.
    #[serde(default, deserialize_with = "crate::util::json::non_null")]
    pub grade: Option<f64>,
}

/// What was recorded.
#[derive(Debug, Clone, Serialize)]
pub struct FeedbackReceipt {
    pub request_id: String,
    pub doc_id: String,
    pub event: Event,
    pub position: u32,
    pub experiment: String,
    /// The arm credited: the arm that served it, or the team that contributed it when interleaved.
    pub arm: String,
    /// True when this (request, document, event) was recorded before: counted once; a grade replaces its grade.
    pub duplicate: bool,
    /// The grade sent, `null` when none.
    pub grade: Option<f64>,
}

/// What a client sends to create an experiment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewExperiment {
    pub name: String,
    pub mode: Mode,
    pub arms: Vec<NewArm>,
    #[serde(default, deserialize_with = "crate::util::json::non_null")]
    pub salt: Option<String>,
    #[serde(default)]
    pub default: bool,
    /// `draft` (the default) or `running`.
    #[serde(default, deserialize_with = "crate::util::json::non_null")]
    pub status: Option<Status>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewArm {
    pub model: String,
    /// Defaults to the model's name.
    #[serde(default, deserialize_with = "crate::util::json::non_null")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "crate::util::json::non_null")]
    pub weight: Option<f64>,
}

/// What a client sends to change an experiment: a status, new weights (by arm name), the default flag.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentPatch {
    #[serde(default, deserialize_with = "crate::util::json::non_null")]
    pub status: Option<Status>,
    #[serde(default, deserialize_with = "crate::util::json::non_null")]
    pub weights: Option<BTreeMap<String, f64>>,
    #[serde(default, deserialize_with = "crate::util::json::non_null")]
    pub default: Option<bool>,
    /// The model of the winning arm, made the default model; the experiment must be (or become) stopped.
    #[serde(default, deserialize_with = "crate::util::json::non_null")]
    pub promote: Option<String>,
}

pub const MAX_ARMS: usize = 8;

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn check_weight(arm: &str, w: f64) -> Result<f64, ExperimentError> {
    if !(w.is_finite() && w > 0.0 && w <= 1e6) {
        return Err(ExperimentError::Invalid(format!("arm `{arm}` has weight {w}; weights must be positive")));
    }
    Ok(w)
}

/// Checks a new experiment against the served models and builds its arms.
pub fn validate(new: &NewExperiment, models: &[String]) -> Result<Vec<Arm>, ExperimentError> {
    let invalid = |m: String| Err(ExperimentError::Invalid(m));
    if !valid_name(&new.name) {
        return invalid(format!(
            "experiment name {:?} must be 1-64 characters of letters, digits, '-', '_' or '.'",
            new.name
        ));
    }
    match (new.mode, new.arms.len()) {
        (Mode::Ab, n) if !(2..=MAX_ARMS).contains(&n) => {
            return invalid(format!("an `ab` experiment needs 2 to {MAX_ARMS} arms; got {n}"))
        }
        (Mode::Interleave | Mode::Shadow, n) if n != 2 => {
            return invalid(format!("an `{}` experiment needs exactly 2 arms; got {n}", new.mode.as_str()))
        }
        _ => {}
    }
    if let Some(status) = new.status {
        if !matches!(status, Status::Draft | Status::Running) {
            return invalid(format!("a new experiment starts as `draft` or `running`, not `{}`", status.as_str()));
        }
    }
    if let Some(salt) = &new.salt {
        if salt.is_empty() || salt.len() > 128 || salt.contains('\0') {
            return invalid("`salt` must be 1-128 characters, without NUL".into());
        }
    }
    let mut arms: Vec<Arm> = Vec::with_capacity(new.arms.len());
    for arm in &new.arms {
        if !models.contains(&arm.model) {
            let known = models.to_vec();
            return Err(crate::engine::EngineError::UnknownModel { name: arm.model.clone(), known }.into());
        }
        let name = arm.name.clone().unwrap_or_else(|| arm.model.clone());
        if !valid_name(&name) {
            return invalid(format!("arm name {name:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"));
        }
        if arms.iter().any(|a| a.name == name) {
            return Err(ExperimentError::DuplicateArm(name));
        }
        let weight = match (new.mode, arm.weight) {
            (_, Some(w)) => check_weight(&name, w)?,
            (_, None) => 1.0,
        };
        arms.push(Arm { name, model: arm.model.clone(), weight });
    }
    Ok(arms)
}

/// The experiments, cached in memory (assignment reads only the cache) and written through to the store.
pub struct Experiments {
    store: Arc<dyn Store>,
    cache: RwLock<Arc<Vec<Arc<Experiment>>>>,
    pub log: ExposureLog,
    pub metrics: Arc<Metrics>,
    /// Shadow searches in flight at most; beyond it they are skipped (and counted), never queued.
    pub shadow_slots: Arc<tokio::sync::Semaphore>,
    feedback_lock: tokio::sync::Mutex<()>,
    /// Serialises changes, so that the store and the cache change in the same order.
    writes: tokio::sync::Mutex<()>,
    /// How long feedback for a request not logged yet waits for another server over the same store to write
    /// its exposure (zero for a store no other server shares).
    other_servers_wait: std::time::Duration,
}

/// How often feedback waiting for another server's exposure looks again.
const OTHER_SERVERS_POLL: std::time::Duration = std::time::Duration::from_millis(25);
/// The most feedback waits for this server's own queued exposures to be written.
const FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

use crate::util::now;

impl Experiments {
    /// Loads every experiment from the store and starts the exposure log's writer.
    pub async fn load(
        store: Arc<dyn Store>,
        settings: ExperimentSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let all = store.experiments().await?;
        for e in all.iter().filter(|e| e.mode == Mode::Interleave) {
            let counts =
                InterleaveCounts::sum(&store.interleave_counts(&e.id, [&e.arms[0].name, &e.arms[1].name]).await?);
            let gauge = &metrics.interleave_outcomes;
            gauge.with_label_values(&[&e.name, &e.arms[0].name]).set(counts.wins[0] as i64);
            gauge.with_label_values(&[&e.name, &e.arms[1].name]).set(counts.wins[1] as i64);
            gauge.with_label_values(&[&e.name, "tie"]).set(counts.ties as i64);
        }
        let options = exposure::LogOptions { capacity: settings.exposure_queue, batch: settings.exposure_batch };
        let log = ExposureLog::spawn(store.clone(), options, metrics.clone());
        Ok(Self {
            store,
            cache: RwLock::new(Arc::new(all.into_iter().map(Arc::new).collect())),
            log,
            metrics,
            shadow_slots: Arc::new(tokio::sync::Semaphore::new(settings.shadow_concurrency.max(1))),
            feedback_lock: tokio::sync::Mutex::new(()),
            other_servers_wait: std::time::Duration::ZERO,
            writes: tokio::sync::Mutex::new(()),
        })
    }

    /// Feedback for a request not logged yet waits up to `wait` for another server over the same store (which
    /// served the search and is writing its exposure) before it is refused as unknown.
    pub fn with_other_servers_wait(mut self, wait: std::time::Duration) -> Self {
        self.other_servers_wait = wait;
        self
    }

    /// Reads every experiment from the store again (another server over the same store changed one).
    pub async fn reload(&self) -> Result<(), StoreError> {
        let _change = self.writes.lock().await;
        let all = self.store.experiments().await?;
        *self.cache.write() = Arc::new(all.into_iter().map(Arc::new).collect());
        Ok(())
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Every experiment, archived ones included, oldest first.
    pub fn all(&self) -> Arc<Vec<Arc<Experiment>>> {
        self.cache.read().clone()
    }

    /// An experiment by id or name.
    pub fn find(&self, key: &str) -> Result<Arc<Experiment>, ExperimentError> {
        self.all()
            .iter()
            .find(|e| e.id == key || e.name == key)
            .cloned()
            .ok_or_else(|| ExperimentError::NotFound(key.to_string()))
    }

    /// The default experiment, if one is set.
    pub fn default_experiment(&self) -> Option<Arc<Experiment>> {
        self.all().iter().find(|e| e.default).cloned()
    }

    pub async fn create(&self, new: NewExperiment, models: &[String]) -> Result<Arc<Experiment>, ExperimentError> {
        let arms = validate(&new, models)?;
        let _write = self.writes.lock().await;
        if self.all().iter().any(|e| e.name == new.name) {
            return Err(ExperimentError::NameTaken(new.name));
        }
        let at = now();
        let status = new.status.unwrap_or(Status::Draft);
        let experiment = Experiment {
            id: uuid::Uuid::new_v4().to_string(),
            name: new.name,
            mode: new.mode,
            status,
            arms,
            salt: new.salt.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
            default: new.default,
            created_at: at.clone(),
            updated_at: at.clone(),
            started_at: (status == Status::Running).then(|| at.clone()),
            stopped_at: None,
            promotion: None,
        };
        self.store.save_experiment(&experiment).await?;
        self.replace_cached(experiment.clone());
        Ok(Arc::new(experiment))
    }

    /// Applies a change. Weights can change while running: a unit keeps its arm unless its hash point now falls
    /// in another arm's interval (see [`assign`]); only the units between the old and new boundaries move.
    /// `promote` makes the model of an arm the engine's default model (see `promote`); all or nothing.
    pub async fn update(
        &self,
        key: &str,
        patch: ExperimentPatch,
        engine: &crate::engine::Engine,
    ) -> Result<Arc<Experiment>, ExperimentError> {
        let _write = self.writes.lock().await;
        let mut experiment = (*self.find(key)?).clone();
        let at = now();
        if let Some(next) = patch.status {
            if !experiment.status.can_become(next) {
                return Err(ExperimentError::Transition {
                    name: experiment.name.clone(),
                    from: experiment.status.as_str(),
                    to: next.as_str(),
                });
            }
            if next == Status::Running && experiment.started_at.is_none() {
                experiment.started_at = Some(at.clone());
            }
            if next == Status::Stopped && experiment.stopped_at.is_none() {
                experiment.stopped_at = Some(at.clone());
            }
            experiment.status = next;
        }
        if let Some(weights) = patch.weights {
            if experiment.mode != Mode::Ab {
                return Err(ExperimentError::WeightsNeedAb {
                    name: experiment.name.clone(),
                    mode: experiment.mode.as_str(),
                });
            }
            for (arm, weight) in &weights {
                let weight = check_weight(arm, *weight)?;
                let Some(target) = experiment.arms.iter_mut().find(|a| &a.name == arm) else {
                    return Err(ExperimentError::UnknownArm { experiment: experiment.name.clone(), arm: arm.clone() });
                };
                target.weight = weight;
            }
        }
        if let Some(default) = patch.default {
            experiment.default = default;
        }
        if experiment.status == Status::Archived {
            experiment.default = false;
        }
        experiment.updated_at = at.clone();
        if let Some(model) = &patch.promote {
            self.promote(&mut experiment, model, engine, at).await?;
        }
        self.store.save_experiment(&experiment).await?;
        self.replace_cached(experiment.clone());
        Ok(Arc::new(experiment))
    }

    /// Where a search goes: `requested` names an experiment (id or name) or is `None` for the default one;
    /// `unit` is the unit id (user, session). Assignment reads only the in-memory cache.
    pub fn route(&self, requested: Option<&str>, unit: Option<&str>) -> Result<Route, ExperimentError> {
        let experiment = match requested {
            Some(key) => self.find(key)?,
            None => match self.default_experiment() {
                Some(e) => e,
                None => return Ok(Route::Direct),
            },
        };
        let Some(unit) = unit else {
            if requested.is_some() {
                return Err(ExperimentError::Invalid(format!(
                    "experiment `{}` needs a unit id (`unit_id` or the X-Duet-Unit header) to assign an arm",
                    experiment.name
                )));
            }
            // The default experiment only applies to requests that say who the user is.
            return Ok(Route::Direct);
        };
        let plan = if experiment.status != Status::Running {
            Plan::Arm { index: 0, logged: false }
        } else {
            match experiment.mode {
                Mode::Ab => Plan::Arm { index: assign::assign(&experiment.arms, &experiment.salt, unit), logged: true },
                Mode::Interleave => Plan::Interleave,
                Mode::Shadow => Plan::Shadow,
            }
        };
        Ok(Route::Experiment { experiment, unit_id: unit.to_string(), plan })
    }

    /// The report of an experiment (id or name), including the exposures still queued for the store.
    pub async fn report(&self, key: &str, settings: report::ReportSettings) -> Result<report::Report, ExperimentError> {
        let experiment = self.find(key)?;
        self.log.flush().await;
        report::build(self.store.as_ref(), &experiment, settings).await
    }

    /// Records a feedback event after checking that the request was logged and showed the document.
    pub async fn feedback(&self, feedback: Feedback) -> Result<FeedbackReceipt, ExperimentError> {
        if feedback.request_id.contains('\0') {
            // No request id has one (they are UUIDs or header values), and PostgreSQL cannot even be asked.
            return Err(ExperimentError::UnknownRequest(feedback.request_id));
        }
        let mut shown = self.store.shown(&feedback.request_id).await?;
        if shown.is_none() {
            // The exposure may still be queued: write the queue out and look again. (The wait is bounded: while
            // the store is down the writer holds its batch until it is back.)
            let _ = tokio::time::timeout(FLUSH_WAIT, self.log.flush()).await;
            shown = self.store.shown(&feedback.request_id).await?;
        }
        // Or another server served the search and is writing its exposure now.
        let deadline = tokio::time::Instant::now() + self.other_servers_wait;
        while shown.is_none() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(OTHER_SERVERS_POLL).await;
            shown = self.store.shown(&feedback.request_id).await?;
        }
        let shown = shown.ok_or_else(|| ExperimentError::UnknownRequest(feedback.request_id.clone()))?;
        let item = shown.items.iter().find(|i| i.doc_id == feedback.doc_id).ok_or_else(|| {
            ExperimentError::NotShown { request_id: feedback.request_id.clone(), doc_id: feedback.doc_id.clone() }
        })?;
        if let Some(position) = feedback.position {
            if position != item.position {
                return Err(ExperimentError::WrongPosition {
                    doc_id: item.doc_id.clone(),
                    shown: item.position,
                    given: position,
                });
            }
        }
        // One event at a time: an interleaved impression's outcome is read back right after its click is written.
        let _one = self.feedback_lock.lock().await;
        let inserted =
            self.store.add_feedback(&feedback.request_id, &item.doc_id, feedback.event.as_str(), item.position).await?;
        if let Some(grade) = feedback.grade {
            self.store.set_feedback_grade(&feedback.request_id, &item.doc_id, feedback.event.as_str(), grade).await?;
        }
        let found = self.all().iter().find(|e| e.id == shown.experiment_id).cloned();
        let experiment = found.as_ref().map(|e| e.name.clone()).unwrap_or_else(|| shown.experiment_id.clone());
        if inserted {
            self.metrics.feedback_events.with_label_values(&[&experiment, &item.team, feedback.event.as_str()]).inc();
            if let Some(e) = found.filter(|e| e.mode == Mode::Interleave && feedback.event == Event::Click) {
                self.update_outcome(&e, &shown, &feedback.request_id, &item.team).await?;
            }
        }
        Ok(FeedbackReceipt {
            request_id: feedback.request_id,
            doc_id: item.doc_id.clone(),
            event: feedback.event,
            position: item.position,
            experiment,
            arm: item.team.clone(),
            duplicate: !inserted,
            grade: feedback.grade,
        })
    }

    /// Moves an interleaved impression between the outcome gauges after a new click credited to `team`.
    async fn update_outcome(
        &self,
        e: &Experiment,
        shown: &crate::store::Shown,
        request_id: &str,
        team: &str,
    ) -> Result<(), StoreError> {
        use interleave::{outcome, Outcome};
        let Some(t) = e.arms.iter().position(|a| a.name == team) else { return Ok(()) };
        let mut after = [0usize; 2];
        for doc in self.store.clicked(request_id).await? {
            let credited = shown.items.iter().find(|i| i.doc_id == doc).map(|i| i.team.as_str());
            if let Some(k) = credited.and_then(|team| e.arms.iter().position(|a| a.name == team)) {
                after[k] += 1;
            }
        }
        let mut before = after;
        before[t] = before[t].saturating_sub(1);
        let label = |o: Outcome| match o {
            Outcome::Win(k) => Some(e.arms[k].name.as_str()),
            Outcome::Tie => Some("tie"),
            Outcome::NoClick => None,
        };
        let (from, to) = (outcome(before), outcome(after));
        if from != to {
            let gauge = &self.metrics.interleave_outcomes;
            if let Some(l) = label(from) {
                gauge.with_label_values(&[e.name.as_str(), l]).dec();
            }
            if let Some(l) = label(to) {
                gauge.with_label_values(&[e.name.as_str(), l]).inc();
            }
        }
        Ok(())
    }

    fn replace_cached(&self, experiment: Experiment) {
        let mut cache = self.cache.write();
        let mut all: Vec<Arc<Experiment>> = cache.iter().cloned().collect();
        if experiment.default {
            // The store unset the previous default in the same transaction.
            for e in all.iter_mut().filter(|e| e.default && e.id != experiment.id) {
                let mut e2 = (**e).clone();
                e2.default = false;
                *e = Arc::new(e2);
            }
        }
        match all.iter().position(|e| e.id == experiment.id) {
            Some(i) => all[i] = Arc::new(experiment),
            None => all.push(Arc::new(experiment)),
        }
        *cache = Arc::new(all);
    }
}

#[cfg(test)]
mod tests;
