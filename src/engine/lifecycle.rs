//! The model life cycle at run time: add a model, replace it with a new version, roll back to the previous one,
//! retire it. A new version is loaded (and probed) in the request, then prepared *beside* the serving one by a
//! task of its own ([`super::backfill`]) — writes go to both meanwhile — and takes over atomically once nothing
//! is missing; the version it replaces drains (requests holding it finish) and is retired, its embeddings kept
//! for `retention_secs` so that a rollback encodes nothing that did not change. Every transition is recorded in
//! the store's model registry, so a restart serves the same versions and resumes an unfinished back-fill.
//!
//! Uses the encoder (loading), the index, the store's registry and the metrics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use serde::Serialize;

use super::model::{ModelStatus, ServedModel};
use super::write::maintain;
use super::{blocking, Engine, EngineError, ModelState};
use crate::config::{Config, EncoderSettings};
use crate::encoder::{self, EncoderError, EncoderHandle, Manifest};
use crate::index::{IndexParams, VectorIndex};
use crate::metrics::Metrics;
use crate::store::{ModelEvent, ModelVersion, VersionState};
use crate::util::{error_chain, now};

/// What a change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    Add,
    Replace,
    Rollback,
    /// Resuming, after a restart, a change that was back-filling.
    Resume,
}

/// What loading a model version needs.
pub(super) struct Loader {
    env: &'static encoder::runtime::Environment,
    defaults: EncoderSettings,
    /// Index and encoder settings of the config's `[[models]]` entries, by model name.
    entries: RwLock<BTreeMap<String, (IndexParams, EncoderSettings)>>,
    /// The task a config entry picks among its manifest's `[tasks]`, by model name.
    tasks: RwLock<BTreeMap<String, String>>,
    /// `models_dir`, canonical (when it exists).
    root: PathBuf,
}

impl Loader {
    /// The loader, and the config's models as (name, folder) in config order.
    pub(super) fn new(
        config: &Config,
        env: &'static encoder::runtime::Environment,
    ) -> Result<(Self, Vec<(String, PathBuf)>), EngineError> {
        let mut entries = BTreeMap::new();
        let mut tasks = BTreeMap::new();
        let mut named = Vec::new();
        for entry in &config.models {
            let mut resolved = Manifest::load(&entry.path)?;
            // An unknown task is refused here, naming the known ones.
            resolved.select_task(entry.task.as_deref())?;
            let name = resolved.manifest.name;
            if entries.insert(name.clone(), (entry.index, entry.encoder.unwrap_or(config.encoder))).is_some() {
                return Err(EngineError::DuplicateModel(name));
            }
            if let Some(task) = &entry.task {
                tasks.insert(name.clone(), task.clone());
            }
            named.push((name, canonical(&entry.path)));
        }
        let root = canonical(&config.models_dir);
        let loader =
            Self { env, defaults: config.encoder, entries: RwLock::new(entries), tasks: RwLock::new(tasks), root };
        Ok((loader, named))
    }

    /// The manifest in `path`, as served under `name`: with the task its config entry picks.
    pub(super) fn manifest(&self, path: &Path, name: &str) -> Result<encoder::manifest::ResolvedManifest, EngineError> {
        let mut resolved = Manifest::load(path)?;
        resolved.manifest.name = name.to_string();
        resolved.select_task(self.tasks.read().get(name).map(String::as_str))?;
        Ok(resolved)
    }

    /// Index and encoder settings of a model: its config entry's, else the defaults.
    fn settings(&self, name: &str) -> (IndexParams, EncoderSettings) {
        self.entries.read().get(name).copied().unwrap_or((IndexParams::default(), self.defaults))
    }

    /// Loads a model version from its folder and serves it under `name` (blocking: reads and probes the network).
    pub(super) fn load(&self, path: &Path, name: &str, metrics: &Arc<Metrics>) -> Result<ServedModel, EngineError> {
        let resolved = self.manifest(path, name)?;
        let (params, settings) = self.settings(name);
        let started = Instant::now();
        let loaded = encoder::onnx::load(&resolved, self.env, settings.session())?;
        let info = loaded.info().clone();
        tracing::info!(model = %info.name, kind = ?info.kind, version = %info.version, device = %info.device,
            path = %path.display(),
            seconds = started.elapsed().as_secs_f64(), "model loaded");
        // Bulk sessions and rebuilds run where the first session does (`auto` is not tried again).
        let settings = EncoderSettings { device: info.device, ..settings };
        let rebuild = encoder::onnx::reloader(resolved, self.env, info.version.clone());
        metrics.encoder_restarts.with_label_values(&[&info.name]).reset();
        Ok(ServedModel::new(
            Arc::new(info.clone()),
            EncoderHandle::spawn_supervised(loaded, Some(rebuild), settings.queue(), metrics.clone()),
            Arc::new(VectorIndex::new(info.dimension, params)),
            path.to_path_buf(),
        ))
    }

    /// A folder named in an API request: relative to `models_dir`, and inside it once links are resolved.
    pub(super) fn resolve_api_path(&self, path: &str) -> Result<PathBuf, EngineError> {
        let bad = |reason: &str| EngineError::BadModelPath { path: path.to_string(), reason: reason.to_string() };
        if path.is_empty() || path.contains('\0') {
            return Err(bad("must be a non-empty folder path"));
        }
        let given = Path::new(path);
        let joined = if given.is_absolute() { given.to_path_buf() } else { self.root.join(given) };
        let resolved = std::fs::canonicalize(&joined).map_err(|_| bad("no such folder"))?;
        if !resolved.starts_with(&self.root) {
            return Err(EngineError::OutsideModelRoot {
                path: path.to_string(),
                root: self.root.display().to_string(),
            });
        }
        if !resolved.join("model.toml").is_file() {
            return Err(bad("the folder holds no model.toml"));
        }
        Ok(resolved)
    }
}

/// A path made absolute with links resolved, or left as given when it does not exist.
pub(super) fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A model that cannot be loaded from a folder a change named is the change's mistake, not the server's.
fn bad_model(folder: &Path, err: EngineError) -> EngineError {
    match err {
        EngineError::Encoder(
            source @ (EncoderError::Manifest { .. }
            | EncoderError::Load { .. }
            | EncoderError::Mismatch { .. }
            | EncoderError::Tokenize { .. }
            | EncoderError::Inference { .. }),
        ) => EngineError::BadModel { path: folder.display().to_string(), source },
        other => other,
    }
}

/// A model name chosen in a request.
fn check_name(name: &str) -> Result<(), EngineError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(EngineError::BadModelName(name.to_string()))
    }
}

/// One version of a model, as `GET /v1/models/{name}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct VersionOut {
    pub version: String,
    pub path: String,
    pub state: VersionState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it entered its state.
    pub since: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backfill: Option<super::BackfillProgress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<String>,
    /// When its embeddings were removed: it can no longer be rolled back to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purged_at: Option<String>,
}

/// A model's life cycle: the serving version, the one being prepared, the previous one, and the latest changes.
#[derive(Debug, Clone, Serialize)]
pub struct ModelDetail {
    pub name: String,
    /// The serving version's state; without one, the candidate's; else the latest version's (`retired`).
    pub state: VersionState,
    /// The serving version as it answers now (its encoder may be restarting).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ModelStatus>,
    pub is_default: bool,
    pub serving: Option<VersionOut>,
    pub candidate: Option<VersionOut>,
    /// The version a rollback returns to (null when none can be: never replaced, or its embeddings purged).
    pub previous: Option<VersionOut>,
    /// The latest state changes, newest first.
    pub history: Vec<ModelEvent>,
}

fn version_out(row: &ModelVersion, live: Option<&ServedModel>) -> VersionOut {
    VersionOut {
        version: row.version.clone(),
        path: row.path.clone(),
        state: row.state,
        reason: row.reason.clone(),
        since: row.since.clone(),
        backfill: live.and_then(|m| m.backfill()),
        retired_at: row.retired_at.clone(),
        purged_at: row.purged_at.clone(),
    }
}

/// The version a rollback of `name` returns to: the latest replaced one whose embeddings are kept.
fn previous_version<'a>(rows: &'a [ModelVersion], name: &str, serving: Option<&str>) -> Option<&'a ModelVersion> {
    rows.iter()
        .filter(|v| v.model == name && Some(v.version.as_str()) != serving && v.purged_at.is_none())
        .filter(|v| matches!(v.state, VersionState::Retired | VersionState::Draining))
        // Draining (no retired_at yet) is the most recent.
        .max_by(|a, b| {
            let key = |v: &ModelVersion| (v.retired_at.is_none(), v.retired_at.clone().unwrap_or_default());
            key(a).cmp(&key(b))
        })
}

impl Engine {
    /// Adds a model from a folder under `models_dir`, served as `name` (default: the manifest's). It is loaded
    /// and probed now (a bad model is refused here), then back-filled; it is served once complete.
    pub async fn add_model(self: &Arc<Self>, name: Option<&str>, path: &str) -> Result<ModelDetail, EngineError> {
        let folder = self.loader.resolve_api_path(path)?;
        let name = match name {
            Some(name) => name.to_string(),
            None => Manifest::load(&folder).map_err(|e| bad_model(&folder, e.into()))?.manifest.name,
        };
        check_name(&name)?;
        self.begin_change(&name, folder, Change::Add).await
    }

    /// Replaces a model with the version in a folder under `models_dir`: loaded now, back-filled beside the
    /// serving version (which goes on serving), then swapped in atomically.
    pub async fn replace_model(self: &Arc<Self>, name: &str, path: &str) -> Result<ModelDetail, EngineError> {
        let folder = self.loader.resolve_api_path(path)?;
        self.begin_change(name, folder, Change::Replace).await
    }

    /// Takes the index and encoder settings of a (re-read) config's entries; returns its models as (name,
    /// folder).
    pub fn configure_models(&self, config: &Config) -> Result<Vec<(String, PathBuf)>, EngineError> {
        let (fresh, named) = Loader::new(config, self.loader.env)?;
        *self.loader.entries.write() = fresh.entries.into_inner();
        *self.loader.tasks.write() = fresh.tasks.into_inner();
        Ok(named)
    }

    /// Changes from the config file (start-up or SIGHUP): like the API's, without the `models_dir` rule.
    pub async fn apply_config_change(
        self: &Arc<Self>,
        name: &str,
        folder: PathBuf,
    ) -> Result<ModelDetail, EngineError> {
        let change = if self.models().contains_key(name) { Change::Replace } else { Change::Add };
        self.begin_change(name, folder, change).await
    }

    /// Returns to the previous version. Its embeddings are still stored: only documents written since the swap
    /// are encoded.
    pub async fn rollback_model(self: &Arc<Self>, name: &str) -> Result<ModelDetail, EngineError> {
        let rows = self.store.model_versions().await?;
        let no_previous =
            |reason: &str| EngineError::NoPrevious { model: name.to_string(), reason: reason.to_string() };
        let serving = match self.model(name) {
            // A model being added has no version before the one being prepared.
            Err(EngineError::NotReady(_)) => {
                return Err(no_previous(" (it is still being added; DELETE abandons the addition)"))
            }
            found => found?,
        };
        let previous = previous_version(&rows, name, Some(&serving.info.version))
            .ok_or_else(|| no_previous(" (it was never replaced, or the retention period removed it)"))?;
        let folder = PathBuf::from(&previous.path);
        let version = self.loader.manifest(&folder, name).and_then(|m| Ok(m.version()?)).map_err(|_| {
            no_previous(&format!(
                ": version {} was loaded from {}, which no longer holds a model",
                previous.version, previous.path
            ))
        })?;
        if version != previous.version {
            return Err(no_previous(&format!(
                ": the files in {} changed since version {} was served (they are version {version} now)",
                previous.path, previous.version
            )));
        }
        self.begin_change(name, folder, Change::Rollback).await
    }

    /// Retires a model: it stops being served (requests holding it finish), and its embeddings are removed
    /// after the retention period. A change in progress for it is abandoned. The default model cannot be retired.
    pub async fn retire_model(self: &Arc<Self>, name: &str) -> Result<ModelDetail, EngineError> {
        let _change = self.changes.lock().await;
        if name == self.default_model() {
            return Err(EngineError::RetireDefault(name.to_string()));
        }
        let candidate = self.candidates.read().get(name).cloned();
        let serving = self.models().get(name).cloned();
        if candidate.is_none() && serving.is_none() {
            self.model(name)?;
        }
        if let Some(candidate) = candidate {
            candidate.cancel();
            self.remove_candidate(name);
            self.record(&candidate, VersionState::Failed, Some("abandoned: the model was retired".into())).await?;
        }
        if let Some(serving) = serving {
            let mut models = (*self.models()).clone();
            models.remove(name);
            *self.models.write() = Arc::new(models);
            for gauge in [&self.metrics.documents, &self.metrics.index_deleted, &self.metrics.index_slots] {
                let _ = gauge.remove_label_values(&[name]);
            }
            self.record(&serving, VersionState::Draining, Some("retired".into())).await?;
            self.spawn_task(self.clone().drain(serving, "retired".into()));
        }
        tracing::info!(model = name, "model retired");
        self.model_detail(name).await
    }

    /// The life cycle of a model, served, being added, or retired.
    pub async fn model_detail(&self, name: &str) -> Result<ModelDetail, EngineError> {
        let rows: Vec<ModelVersion> =
            self.store.model_versions().await?.into_iter().filter(|v| v.model == name).collect();
        let serving = self.models().get(name).cloned();
        let candidate = self.candidates.read().get(name).cloned();
        if rows.is_empty() && serving.is_none() && candidate.is_none() {
            self.model(name)?;
        }
        let find = |m: &Option<Arc<ServedModel>>| {
            m.as_ref().and_then(|m| rows.iter().find(|v| v.version == m.info.version).map(|v| version_out(v, Some(m))))
        };
        let (serving_out, candidate_out) = (find(&serving), find(&candidate));
        let previous = previous_version(&rows, name, serving.as_ref().map(|m| m.info.version.as_str()))
            .filter(|v| candidate.as_ref().is_none_or(|c| c.info.version != v.version))
            .map(|v| version_out(v, None));
        let latest = rows.iter().max_by(|a, b| a.since.cmp(&b.since)).map(|v| v.state);
        let state =
            serving_out.as_ref().or(candidate_out.as_ref()).map(|v| v.state).or(latest).unwrap_or(VersionState::Ready);
        Ok(ModelDetail {
            name: name.to_string(),
            state,
            status: serving.as_ref().map(|m| m.status()),
            is_default: self.default_model() == name,
            serving: serving_out,
            candidate: candidate_out,
            previous,
            history: self.store.model_events(name, 20).await?,
        })
    }

    /// Versions being prepared beside the serving ones, by model name.
    pub fn candidates(&self) -> Arc<BTreeMap<String, Arc<ServedModel>>> {
        self.candidates.read().clone()
    }

    /// Resumes the back-fills a stop interrupted (called once the serving indexes are prepared).
    pub async fn resume_changes(self: &Arc<Self>) {
        let rows = match self.store.model_versions().await {
            Ok(rows) => rows,
            Err(err) => return tracing::error!(error = %error_chain(&err), "cannot read the model registry"),
        };
        for row in rows.iter().filter(|v| matches!(v.state, VersionState::Loading | VersionState::Backfilling)) {
            let outcome = self.begin_change(&row.model, PathBuf::from(&row.path), Change::Resume).await;
            if let Err(err) = outcome {
                tracing::error!(model = %row.model, version = %row.version, error = %error_chain(&err),
                    "cannot resume the back-fill of this version");
                let mut failed = row.clone();
                failed.state = VersionState::Failed;
                failed.reason = Some(format!("cannot resume: {}", error_chain(&err)));
                failed.since = now();
                let _ = self.store.set_version_states(&[failed]).await;
            }
        }
    }

    /// Removes the embeddings of versions retired longer than `retention_secs`; returns how many went.
    pub async fn purge_expired(&self) -> Result<u64, EngineError> {
        let retention = chrono::Duration::seconds(self.lifecycle.retention_secs.min(i64::MAX as u64 / 2) as i64);
        let cutoff = (chrono::Utc::now() - retention).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut removed = 0;
        for v in self.store.model_versions().await? {
            let expired = v.state == VersionState::Retired && v.purged_at.is_none();
            if expired && v.retired_at.as_deref().is_some_and(|at| at <= cutoff.as_str()) {
                removed += self.store.purge_version(&v.model, &v.version, &now()).await?;
                for state in VersionState::ALL {
                    let _ = self.metrics.model_state.remove_label_values(&[&v.model, &v.version, state.as_str()]);
                }
                tracing::info!(model = %v.model, version = %v.version, "embeddings of a retired version removed");
            }
        }
        Ok(removed)
    }

    /// Validates a change, loads the new version and starts preparing it beside the serving one.
    async fn begin_change(
        self: &Arc<Self>,
        name: &str,
        folder: PathBuf,
        change: Change,
    ) -> Result<ModelDetail, EngineError> {
        let _change = self.changes.lock().await;
        if let Some(busy) = self.candidates.read().get(name) {
            return Err(EngineError::ChangeInProgress {
                model: name.to_string(),
                version: busy.info.version.clone(),
                state: busy.state().version_state().as_str(),
            });
        }
        let serving = self.models().get(name).cloned();
        match (change, &serving) {
            (Change::Add, Some(_)) => return Err(EngineError::ModelExists(name.to_string())),
            (Change::Replace | Change::Rollback, None) => {
                self.model(name)?;
            }
            _ => {}
        }
        let (engine, owned_name, path) = (self.clone(), name.to_string(), folder.clone());
        let model = blocking(move || engine.loader.load(&path, &owned_name, &engine.metrics))
            .await?
            .map_err(|e| bad_model(&folder, e))?;
        if let Some(serving) = &serving {
            if serving.info.version == model.info.version {
                return Err(EngineError::SameVersion { model: name.to_string(), version: model.info.version.clone() });
            }
        }
        let model = Arc::new(model);
        model.set_state(ModelState::Loading);
        let reason = match change {
            Change::Add => "added",
            Change::Replace => "replacing the serving version",
            Change::Rollback => "rolling back to this version",
            Change::Resume => "resuming after a restart",
        };
        self.record(&model, VersionState::Loading, Some(reason.into())).await?;
        let mut candidates = (*self.candidates()).clone();
        candidates.insert(name.to_string(), model.clone());
        *self.candidates.write() = Arc::new(candidates);
        tracing::info!(model = name, version = %model.info.version, path = %folder.display(), reason, "model change begun");
        self.spawn_task(self.clone().bring_up(model, change));
        drop(_change);
        self.model_detail(name).await
    }

    /// Prepares a candidate, then swaps it in; on failure it is recorded failed and the serving version stays.
    async fn bring_up(self: Arc<Self>, model: Arc<ServedModel>, change: Change) {
        let started = Instant::now();
        let outcome = match self.fill_candidate(&model).await {
            Ok(()) => self.switch(&model, change).await,
            Err(err) => Err(err),
        };
        if let Err(err) = outcome {
            let reason = error_chain(&err);
            tracing::error!(model = %model.info.name, version = %model.info.version, error = %reason,
                "preparing the new version failed; the serving version stays");
            model.fail(reason.clone());
            if !model.is_cancelled() {
                self.remove_candidate(&model.info.name);
                let _ = self.record(&model, VersionState::Failed, Some(reason)).await;
            }
            return;
        }
        tracing::info!(model = %model.info.name, version = %model.info.version,
            seconds = started.elapsed().as_secs_f64(), "new version serving");
    }

    /// Swaps a prepared candidate in, under the write lock, after encoding what writes left missing.
    async fn switch(self: &Arc<Self>, model: &Arc<ServedModel>, change: Change) -> Result<(), EngineError> {
        let _write = self.writes.clone().lock_owned().await;
        self.catch_up(model).await?;
        if model.is_cancelled() {
            return Err(EngineError::Cancelled(model.info.name.clone()));
        }
        let name = model.info.name.clone();
        let old = self.models().get(&name).cloned();
        let mut rows = Vec::new();
        if let Some(old) = &old {
            old.set_state(ModelState::Draining);
            rows.push(self.row(old, VersionState::Draining, Some(format!("replaced by {}", model.info.version))));
        }
        rows.push(self.row(model, VersionState::Ready, Some("serving".into())));
        self.store.set_version_states(&rows).await?;
        let mut models = (*self.models()).clone();
        models.insert(name.clone(), model.clone());
        model.set_state(ModelState::Ready);
        *self.models.write() = Arc::new(models);
        self.remove_candidate(&name);
        for row in &rows {
            self.set_state_gauge(&row.model, &row.version, row.state);
        }
        match change {
            Change::Rollback => self.metrics.model_rollbacks.with_label_values(&[&name]).inc(),
            Change::Replace | Change::Resume if old.is_some() => {
                self.metrics.model_swaps.with_label_values(&[&name]).inc()
            }
            _ => {}
        }
        maintain(model, &self.metrics);
        if let Some(old) = old {
            let reason = format!("replaced by {}", model.info.version);
            self.spawn_task(self.clone().drain(old, reason));
        }
        Ok(())
    }

    /// Lets a replaced or retired version finish the requests that hold it (up to `drain_secs`), then records it
    /// retired; with `retention_secs = 0` its embeddings go at once.
    async fn drain(self: Arc<Self>, old: Arc<ServedModel>, reason: String) {
        old.set_state(ModelState::Draining);
        let deadline = Instant::now() + Duration::from_secs(self.lifecycle.drain_secs);
        while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Rolled back to meanwhile: that version serves (or is being prepared) again, and is not retired.
        let name = &old.info.name;
        let again = |m: Option<&Arc<ServedModel>>| m.is_some_and(|m| m.info.version == old.info.version);
        if again(self.models().get(name)) || again(self.candidates().get(name)) {
            return;
        }
        if let Err(err) = self.record(&old, VersionState::Retired, Some(reason)).await {
            tracing::error!(model = %old.info.name, error = %error_chain(&err), "cannot record a retired version");
        }
        if self.lifecycle.retention_secs == 0 {
            if let Err(err) = self.purge_expired().await {
                tracing::error!(error = %error_chain(&err), "cannot remove the embeddings of retired versions");
            }
        }
    }

    fn remove_candidate(&self, name: &str) {
        let mut candidates = (*self.candidates()).clone();
        candidates.remove(name);
        *self.candidates.write() = Arc::new(candidates);
    }

    pub(super) fn spawn_task(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock();
        tasks.retain(|t| !t.is_finished());
        tasks.push(tokio::spawn(task));
    }

    /// The registry row of a served version in `state`.
    fn row(&self, model: &ServedModel, state: VersionState, reason: Option<String>) -> ModelVersion {
        let at = now();
        ModelVersion {
            model: model.info.name.clone(),
            version: model.info.version.clone(),
            path: model.path.display().to_string(),
            state,
            reason,
            since: at.clone(),
            created_at: at.clone(),
            retired_at: (state == VersionState::Retired).then_some(at),
            purged_at: None,
        }
    }

    /// Records a version's new state in the registry and the state gauge.
    pub(super) async fn record(
        &self,
        model: &ServedModel,
        state: VersionState,
        reason: Option<String>,
    ) -> Result<(), EngineError> {
        let row = self.row(model, state, reason);
        self.store.set_version_states(std::slice::from_ref(&row)).await?;
        self.set_state_gauge(&row.model, &row.version, state);
        Ok(())
    }

    pub(super) fn set_state_gauge(&self, model: &str, version: &str, state: VersionState) {
        for other in VersionState::ALL {
            let value = i64::from(other == state);
            self.metrics.model_state.with_label_values(&[model, version, other.as_str()]).set(value);
        }
    }

    /// Stops the life cycle's background work (back-fills resume at the next start).
    pub(super) fn stop_changes(&self) {
        for candidate in self.candidates().values() {
            candidate.cancel();
        }
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}
