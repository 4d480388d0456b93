//! The replica benchmark (`duet bench-replicas`), over a PostgreSQL store given by the caller:
//!
//! 1. **Replication lag**: two servers (A and B) in this process over the one store; documents are written to A
//!    one at a time, each at a random moment of B's poll interval, and the time from A acknowledging each write
//!    to B holding it in its index is measured.
//! 2. **Import and start-up**: N documents with one stored embedding each (random unit vectors of the model's
//!    dimension, under the model's name and version) are imported in batches through the store; then a fresh
//!    server is opened over the store and timed until its index is ready (documents and vectors read from
//!    PostgreSQL, nothing encoded).
//!
//! Uses the engine, the store and the server's own start-up; prints nothing (the command does).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{Config, ModelEntry, ReplicationSettings};
use crate::engine::Engine;
use crate::store::{content_hash, NewDocument, NewEmbedding, PostgresSettings, StoreLocation};
use crate::util::rng::Rng;
use crate::util::stats::{quantile, sorted};

/// What to run.
#[derive(Debug, Clone)]
pub struct ReplicaBenchSettings {
    /// A `postgres://` URL of an empty database (the benchmark writes to it).
    pub store: String,
    pub postgres: PostgresSettings,
    pub replication: ReplicationSettings,
    /// The model A and B serve in the lag phase.
    pub lag_model: PathBuf,
    /// Documents written to A, one at a time.
    pub writes: usize,
    /// The model whose stored vectors the start-up phase loads (its dimension and version are used).
    pub startup_model: PathBuf,
    /// Documents (and stored vectors) of the start-up phase; 0 skips it.
    pub startup_documents: usize,
    /// Documents per import batch.
    pub batch: usize,
    /// A `postgres://` URL of another empty database for the start-up phase (else `store`): servers of the lag
    /// phase serve another model and would encode its documents.
    pub startup_store: Option<String>,
    pub onnxruntime: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LagOutcome {
    pub writes: usize,
    pub poll_ms: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Writes acknowledged by A per second (each waited for B before the next).
    pub write_ms_p50: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StartupOutcome {
    pub model: String,
    pub dimension: usize,
    pub documents: usize,
    pub import_seconds: f64,
    pub import_per_second: f64,
    /// Opening the store and loading the model's network.
    pub open_seconds: f64,
    /// Reading the documents and vectors from the store and filling the index, until the model is ready.
    pub prepare_seconds: f64,
    pub ready_seconds: f64,
    pub from_store: usize,
    pub encoded: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaBenchOutcome {
    pub lag: Option<LagOutcome>,
    pub startup: Option<StartupOutcome>,
}

fn config(settings: &ReplicaBenchSettings, model: &PathBuf, store: &str) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        store: StoreLocation::Postgres(store.to_string()),
        postgres: settings.postgres,
        replication: settings.replication,
        onnxruntime: settings.onnxruntime.clone(),
        models: vec![ModelEntry { path: model.clone(), index: Default::default(), encoder: None, task: None }],
        ..Config::default()
    }
}

fn ms(seconds: &[f64], q: f64) -> f64 {
    quantile(seconds, q) * 1000.0
}

/// Runs both phases; `progress` hears what is happening.
pub async fn run(settings: ReplicaBenchSettings, progress: impl Fn(&str)) -> anyhow::Result<ReplicaBenchOutcome> {
    let lag = if settings.writes > 0 { Some(lag(&settings, &progress).await?) } else { None };
    let startup = if settings.startup_documents > 0 { Some(startup(&settings, &progress).await?) } else { None };
    Ok(ReplicaBenchOutcome { lag, startup })
}

async fn lag(settings: &ReplicaBenchSettings, progress: &impl Fn(&str)) -> anyhow::Result<LagOutcome> {
    let a = super::start(config(settings, &settings.lag_model, &settings.store)).await?;
    let b = super::start(config(settings, &settings.lag_model, &settings.store)).await?;
    for server in [&a, &b] {
        while !server.engine.is_ready() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let name = a.engine.default_model();
    progress(&format!("two servers over the store; writing {} documents to A one at a time", settings.writes));
    let (mut lags, mut writes) = (Vec::with_capacity(settings.writes), Vec::with_capacity(settings.writes));
    // Each write comes at a random moment of B's poll interval, as independent clients' writes do (back to back,
    // every write would land just after B's read and wait a whole interval).
    let mut rng = Rng::new(11);
    let poll = Duration::from_millis(settings.replication.poll_ms);
    for i in 0..settings.writes {
        tokio::time::sleep(poll.mul_f64(rng.uniform())).await;
        let id = format!("lag-{i}");
        let doc = NewDocument {
            id: id.clone(),
            text: format!("replication lag probe {i}: how long until the other server searches it"),
            metadata: serde_json::json!({}),
        };
        let started = Instant::now();
        a.engine.upsert(vec![doc]).await?;
        let acknowledged = Instant::now();
        writes.push((acknowledged - started).as_secs_f64());
        let model = b.engine.model(&name)?;
        let deadline = acknowledged + Duration::from_secs(30);
        while !model.index.contains(&id) {
            anyhow::ensure!(Instant::now() < deadline, "B did not apply {id} within 30 s");
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        lags.push(acknowledged.elapsed().as_secs_f64());
    }
    a.shutdown().await?;
    b.shutdown().await?;
    let (lags, writes) = (sorted(lags), sorted(writes));
    progress(&format!(
        "replication lag: p50 {:.1} ms, p99 {:.1} ms over {} writes",
        ms(&lags, 0.5),
        ms(&lags, 0.99),
        settings.writes
    ));
    Ok(LagOutcome {
        writes: settings.writes,
        poll_ms: settings.replication.poll_ms,
        p50_ms: ms(&lags, 0.5),
        p90_ms: ms(&lags, 0.9),
        p99_ms: ms(&lags, 0.99),
        max_ms: lags.last().copied().unwrap_or(0.0) * 1000.0,
        write_ms_p50: ms(&writes, 0.5),
    })
}

async fn startup(settings: &ReplicaBenchSettings, progress: &impl Fn(&str)) -> anyhow::Result<StartupOutcome> {
    let store_url = settings.startup_store.as_deref().unwrap_or(&settings.store);
    let engine = Engine::open(&config(settings, &settings.startup_model, store_url)).await?;
    let served = engine.model(&engine.default_model())?;
    let (model, version, dimension) = (served.info.name.clone(), served.info.version.clone(), served.info.dimension);
    let store = engine.store().clone();
    // From an empty corpus: the lag phase's documents have no vector of this model, and encoding them would be
    // measured as start-up.
    loop {
        let left = store.documents_after(None, 1000).await?;
        if left.is_empty() {
            break;
        }
        for d in &left {
            store.delete(&d.id).await?;
        }
    }
    let n = settings.startup_documents;
    progress(&format!("importing {n} documents with a stored {dimension}-dimension vector of {model} {version}"));
    let mut rng = Rng::new(7);
    let started = Instant::now();
    for first in (0..n).step_by(settings.batch.max(1)) {
        let last = (first + settings.batch.max(1)).min(n);
        let documents: Vec<NewDocument> = (first..last)
            .map(|i| NewDocument {
                id: format!("doc-{i:07}"),
                text: format!("stored document {i} of the start-up benchmark, with a vector read back from the store"),
                metadata: serde_json::json!({"n": i}),
            })
            .collect();
        let embeddings: Vec<NewEmbedding> = documents
            .iter()
            .map(|d| {
                let mut vector: Vec<f32> = (0..dimension).map(|_| rng.normal() as f32).collect();
                crate::util::normalize(&mut vector);
                NewEmbedding {
                    model: model.clone(),
                    model_version: version.clone(),
                    document_id: d.id.clone(),
                    content_hash: content_hash(&d.text),
                    vector,
                }
            })
            .collect();
        store.upsert(&documents, &embeddings).await?;
    }
    let import_seconds = started.elapsed().as_secs_f64();
    engine.close().await;
    drop(engine);
    progress(&format!("imported in {import_seconds:.1} s; opening a fresh server over the store"));

    let started = Instant::now();
    let engine = Engine::open(&config(settings, &settings.startup_model, store_url)).await?;
    let open_seconds = started.elapsed().as_secs_f64();
    let prepared = engine.prepare_indexes().await?;
    let ready_seconds = started.elapsed().as_secs_f64();
    let report = prepared.into_iter().next().ok_or_else(|| anyhow::anyhow!("no model was prepared"))?;
    engine.close().await;
    Ok(StartupOutcome {
        model,
        dimension,
        documents: n,
        import_seconds,
        import_per_second: n as f64 / import_seconds.max(1e-9),
        open_seconds,
        prepare_seconds: ready_seconds - open_seconds,
        ready_seconds,
        from_store: report.from_store,
        encoded: report.encoded + report.reencoded,
    })
}
