//! The replication loop: every `[replication] poll_ms`, read the store's change feed after the last change
//! applied, skip this server's own changes, and apply the others' — documents to the engine (from their stored
//! embeddings), experiments to the experiment cache, the default model to the engine. Each read doubles as the
//! store's health check: a failure marks the store degraded (writes are refused at once, searches go on from
//! memory) and the next success marks it up again, after which the changes missed meanwhile are applied — the
//! feed is read from the same position, so nothing is skipped. Old changes are pruned from the feed hourly.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::ReplicationSettings;
use crate::engine::Engine;
use crate::experiment::Experiments;
use crate::store::{Change, ChangeKind};
use crate::util::error_chain;

/// Changes read per poll at most; a full page is followed by the next at once.
const PAGE: u32 = 1_000;
/// How often changes older than `change_retention_secs` are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Follows the feed from the position the engine loaded its indexes at, until the task is aborted.
pub async fn follow(engine: Arc<Engine>, experiments: Arc<Experiments>, settings: ReplicationSettings) {
    let poll = Duration::from_millis(settings.poll_ms.max(10));
    let mut applied = engine.feed_start();
    let mut last_prune: Option<Instant> = None;
    let mut reported_failure = false;
    // Every kind's counter from 0, so that the first change applied is an increase `rate()` sees.
    for kind in ChangeKind::ALL {
        engine.metrics.replication_applied.with_label_values(&[kind.as_str()]);
    }
    loop {
        match step(&engine, &experiments, applied).await {
            Ok((position, full)) => {
                engine.health.mark_up();
                reported_failure = false;
                applied = position;
                engine.note_applied(position);
                if full {
                    continue;
                }
            }
            Err(err) if err.unavailable => engine.health.mark_down(err.message),
            Err(err) => {
                // Not the store being away: a query or a change that cannot be applied. Retried every poll, but
                // logged once until it clears.
                if !reported_failure {
                    tracing::error!(error = %err.message, position = applied, "applying the change feed failed; retrying");
                    reported_failure = true;
                }
            }
        }
        if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) && engine.health.is_up() {
            last_prune = Some(Instant::now());
            prune(&engine, settings.change_retention_secs).await;
        }
        tokio::time::sleep(poll).await;
    }
}

struct StepError {
    unavailable: bool,
    message: String,
}

impl From<crate::store::StoreError> for StepError {
    fn from(err: crate::store::StoreError) -> Self {
        Self { unavailable: err.is_unavailable(), message: error_chain(&err) }
    }
}

impl From<crate::engine::EngineError> for StepError {
    fn from(err: crate::engine::EngineError) -> Self {
        let unavailable = matches!(&err, crate::engine::EngineError::Store(e) if e.is_unavailable());
        Self { unavailable, message: error_chain(&err) }
    }
}

/// Reads and applies one page; returns the new position and whether the page was full.
async fn step(engine: &Arc<Engine>, experiments: &Experiments, after: i64) -> Result<(i64, bool), StepError> {
    let store = engine.store();
    let changes = store.changes_since(after, PAGE).await?;
    let Some(last) = changes.last() else { return Ok((after, false)) };
    let position = last.seq;
    let full = changes.len() == PAGE as usize;
    let foreign: Vec<&Change> = changes.iter().filter(|c| c.origin != store.origin()).collect();
    let documents: BTreeSet<String> =
        foreign.iter().filter(|c| c.kind == ChangeKind::Document).map(|c| c.key.clone()).collect();
    if !documents.is_empty() {
        engine.apply_document_changes(documents.into_iter().collect()).await?;
    }
    if foreign.iter().any(|c| c.kind == ChangeKind::Experiment) {
        experiments.reload().await?;
    }
    if foreign.iter().any(|c| c.kind == ChangeKind::Setting) {
        engine.reload_default_model().await?;
    }
    for change in foreign.iter().filter(|c| c.kind == ChangeKind::Model) {
        tracing::warn!(model = %change.key,
            "another server changed this model's versions; this server keeps serving its own until it restarts");
    }
    let metrics = &engine.metrics;
    let now = chrono::Utc::now();
    for change in &foreign {
        metrics.replication_applied.with_label_values(&[change.kind.as_str()]).inc();
        if let Ok(at) = chrono::DateTime::parse_from_rfc3339(&change.at) {
            let lag = (now - at.with_timezone(&chrono::Utc)).num_microseconds().unwrap_or(0).max(0);
            metrics.replication_lag.observe(lag as f64 / 1e6);
        }
    }
    Ok((position, full))
}

async fn prune(engine: &Engine, retention_secs: u64) {
    let cutoff = chrono::Utc::now() - chrono::Duration::seconds(retention_secs.min(i64::MAX as u64) as i64);
    let before = cutoff.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    match engine.store().prune_changes(&before).await {
        Ok(0) => {}
        Ok(removed) => tracing::info!(removed, "pruned old changes from the change feed"),
        Err(err) => tracing::warn!(error = %error_chain(&err), "pruning the change feed failed"),
    }
}
