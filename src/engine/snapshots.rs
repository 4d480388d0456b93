//! Graph snapshots of the served models: written by a background task each time a model's graph has been
//! (re)built, and at graceful shutdown; read at start-up instead of the stored vectors when the snapshot still
//! matches the store (same change-feed sequence, same count of documents with an embedding for the version),
//! else logged, counted (`duet_index_snapshots_total{outcome}`) and rebuilt from the store.
//!
//! A snapshot records the store's last change-feed sequence read under the engine's write lock (so every local
//! write up to it is in the index); when changes from other servers are still to be applied here, none is written.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::mpsc;

use super::{blocking, Engine, EngineError, ServedModel};
use crate::index::snapshot::{self, Expected, Header, SnapshotError};
use crate::util::error_chain;

/// Changes read to tell whether other servers' changes are still to be applied here.
const PENDING_PAGE: u32 = 1000;

pub(super) struct Snapshots {
    dir: PathBuf,
    /// Names of models whose graph was just rebuilt.
    built: mpsc::UnboundedSender<String>,
    /// The change-feed position the follower has applied up to.
    applied: AtomicI64,
}

impl Snapshots {
    /// The settings and the receiving end of the rebuilt-graph channel, for [`Engine::start_snapshot_writer`].
    pub(super) fn new(dir: PathBuf) -> (Self, mpsc::UnboundedReceiver<String>) {
        let (built, receiver) = mpsc::unbounded_channel();
        (Self { dir, built, applied: AtomicI64::new(0) }, receiver)
    }

    fn path(&self, model: &ServedModel) -> PathBuf {
        snapshot::path(&self.dir, &model.info.name, &model.info.version)
    }
}

fn expected(model: &ServedModel, sequence: i64, documents: usize) -> Expected {
    let params = model.index.params();
    Expected {
        model: model.info.name.clone(),
        version: model.info.version.clone(),
        dimension: model.info.dimension,
        backend: params.backend,
        precision: params.precision,
        sequence,
        documents,
    }
}

impl Engine {
    /// Writes a snapshot of each model whose graph was rebuilt, one at a time, until the engine is dropped.
    pub(super) fn start_snapshot_writer(self: &Arc<Self>, mut built: mpsc::UnboundedReceiver<String>) {
        let engine: Weak<Engine> = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(name) = built.recv().await {
                // Several rebuilds since the last write: one snapshot.
                while built.try_recv().is_ok() {}
                let Some(engine) = engine.upgrade() else { break };
                if engine.closed.load(Ordering::Acquire) {
                    break;
                }
                let model = engine.models().get(&name).cloned();
                if let Some(model) = model {
                    let _write = engine.writes.lock().await;
                    engine.write_snapshot_locked(&model).await;
                }
            }
        });
    }

    /// Notes how far the change feed has been applied here (by the follower).
    pub fn note_applied(&self, position: i64) {
        if let Some(s) = &self.snapshots {
            s.applied.fetch_max(position, Ordering::AcqRel);
        }
    }

    /// Asks for a snapshot each time this model's graph is rebuilt.
    pub(super) fn watch_graph(&self, model: &ServedModel) {
        if let Some(s) = &self.snapshots {
            let (sender, name) = (s.built.clone(), model.info.name.clone());
            model.index.on_graph_built(move || {
                let _ = sender.send(name.clone());
            });
        }
    }

    /// Loads the model's snapshot into its (empty) index when it matches the store at `position`; returns
    /// whether it did. Every outcome is counted; a snapshot not used is logged with the reason.
    pub(super) async fn load_snapshot(&self, model: &Arc<ServedModel>, position: i64) -> Result<bool, EngineError> {
        let Some(s) = &self.snapshots else { return Ok(false) };
        let info = &model.info;
        let (documents, _) = self.store.embedding_counts(&info.name, &info.version).await?;
        let path = s.path(model);
        let want = expected(model, position, documents as usize);
        let index = model.index.clone();
        let read_path = path.clone();
        let outcome = blocking(move || -> Result<(), SnapshotError> {
            let (_, exported) = snapshot::read(&read_path, &want)?;
            index.restore(exported).map_err(|e| SnapshotError::Corrupt(error_chain(&e)))
        })
        .await?;
        let label = match &outcome {
            Ok(()) => "loaded",
            Err(err) => err.outcome(),
        };
        self.metrics.index_snapshots.with_label_values(&[info.name.as_str(), label]).inc();
        match outcome {
            Ok(()) => {
                tracing::info!(model = %info.name, documents, file = %path.display(), "graph loaded from its snapshot");
                Ok(true)
            }
            Err(SnapshotError::Missing) => Ok(false),
            Err(err) => {
                tracing::warn!(model = %info.name, file = %path.display(), reason = %error_chain(&err),
                    "graph snapshot not used; rebuilding from the stored vectors");
                Ok(false)
            }
        }
    }

    /// Writes every served model's snapshot (at shutdown; the caller holds the write lock).
    pub(super) async fn write_snapshots_locked(&self) {
        if self.snapshots.is_none() {
            return;
        }
        for model in self.models().values() {
            self.write_snapshot_locked(model).await;
        }
    }

    /// The sequence a snapshot taken now reflects, or `None` when other servers' changes are still to be
    /// applied here (or the store cannot tell).
    async fn snapshot_position(&self, s: &Snapshots) -> Option<i64> {
        let last = self.store.last_change().await.ok()?;
        let applied = s.applied.load(Ordering::Acquire).max(self.feed_start());
        let pending = self.store.changes_since(applied, PENDING_PAGE).await.ok()?;
        let foreign = pending.iter().any(|c| c.origin != self.store.origin());
        (!foreign && pending.len() < PENDING_PAGE as usize).then_some(last)
    }

    /// Writes one model's snapshot if it has a graph; failures are logged (the next start-up rebuilds).
    async fn write_snapshot_locked(&self, model: &Arc<ServedModel>) {
        let Some(s) = &self.snapshots else { return };
        if !model.index.has_graph() {
            return;
        }
        let Some(sequence) = self.snapshot_position(s).await else {
            tracing::debug!(model = %model.info.name, "changes from other servers pending; no snapshot written");
            return;
        };
        let path = s.path(model);
        let want = expected(model, sequence, 0);
        let index = model.index.clone();
        let target = path.clone();
        let written = blocking(move || -> Result<bool, String> {
            let Some(exported) = index.export().map_err(|e| error_chain(&e))? else { return Ok(false) };
            let header = Header { documents: exported.alive.iter().filter(|&&a| a).count(), ..Header::from(want) };
            snapshot::write(&target, header, &exported).map_err(|e| error_chain(&e))?;
            Ok(true)
        })
        .await;
        match written {
            Ok(Ok(true)) => {
                tracing::info!(model = %model.info.name, sequence, file = %path.display(), "graph snapshot written")
            }
            Ok(Ok(false)) => {}
            Ok(Err(reason)) => {
                tracing::warn!(model = %model.info.name, file = %path.display(), %reason, "writing the graph snapshot failed")
            }
            Err(err) => {
                tracing::warn!(model = %model.info.name, error = %error_chain(&err), "writing the graph snapshot failed")
            }
        }
    }
}
