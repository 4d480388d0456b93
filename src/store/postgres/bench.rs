//! `duet bench-store`'s measurements on a PostgreSQL server: how fast stored vectors load at start-up as `bytea`
//! (the store's format) versus `real[]` (two throw-away tables, fetched through sqlx into `Vec<f32>`), and the
//! bulk import rate of documents with one embedding each through [`PgStore::upsert`]. Everything happens in a
//! fresh database created for the run and dropped at its end. Uses only the store and its random generator.

use std::str::FromStr;
use std::time::Instant;

use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};

use super::PgStore;
use crate::store::location::{redact, PostgresSettings};
use crate::store::records::{NewDocument, NewEmbedding};
use crate::store::{bytes_to_vector, vector_to_bytes};
use crate::store::{content_hash, Store, StoreError};
use crate::util::rng::Rng;

/// What to measure.
#[derive(Debug, Clone, Serialize)]
pub struct StoreBenchSettings {
    /// Documents imported (each with one embedding).
    pub documents: usize,
    /// Vectors in each of the two load tables.
    pub vectors: usize,
    pub dimension: usize,
    /// Documents per `upsert` call.
    pub batch: usize,
    /// Times each table is loaded (the median is reported).
    pub repeats: usize,
}

/// Loading one table of vectors.
#[derive(Debug, Clone, Serialize)]
pub struct LoadTiming {
    pub format: &'static str,
    /// Seconds of each full load (query, transfer and decoding into `Vec<f32>`).
    pub seconds: Vec<f64>,
    pub median_seconds: f64,
    pub vectors_per_second: f64,
    /// The table's size on disk, with its TOAST and indexes (MiB).
    pub table_mib: f64,
}

/// The bulk import.
#[derive(Debug, Clone, Serialize)]
pub struct ImportTiming {
    pub documents: usize,
    pub batch: usize,
    pub seconds: f64,
    pub documents_per_second: f64,
    /// Reading the imported embeddings back through [`Store::embeddings`] (what a replica does at start-up).
    pub embeddings_load_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreBench {
    pub settings: StoreBenchSettings,
    pub server_version: String,
    pub loads: Vec<LoadTiming>,
    pub import: ImportTiming,
}

fn random_unit_vector(rng: &mut Rng, dimension: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..dimension).map(|_| rng.normal() as f32).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
    v.into_iter().map(|x| x / norm).collect()
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// Runs the benchmark against the server of `url` (the database named in it is used only to create and drop the
/// benchmark's own database).
pub async fn run(
    url: &str,
    postgres: &PostgresSettings,
    settings: &StoreBenchSettings,
    progress: impl Fn(&str),
) -> Result<StoreBench, StoreError> {
    let location = redact(url);
    let open = |source| StoreError::Open { location: location.clone(), source };
    let admin_options = PgConnectOptions::from_str(url).map_err(open)?;
    let admin = PgPoolOptions::new().max_connections(1).connect_with(admin_options.clone()).await.map_err(open)?;
    let database = format!("duet_bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {database}")).execute(&admin).await?;
    progress(&format!("created database {database}"));
    let options = admin_options.database(&database);
    let outcome = measure(options, &location, postgres, settings, &progress).await;
    let dropped = sqlx::query(&format!("DROP DATABASE {database} WITH (FORCE)")).execute(&admin).await;
    admin.close().await;
    let outcome = outcome?;
    dropped?;
    progress(&format!("dropped database {database}"));
    Ok(outcome)
}

async fn measure(
    options: PgConnectOptions,
    location: &str,
    postgres: &PostgresSettings,
    settings: &StoreBenchSettings,
    progress: &impl Fn(&str),
) -> Result<StoreBench, StoreError> {
    let store = PgStore::connect_with(options, location, postgres).await?;
    let server_version: String = sqlx::query_scalar("SELECT version()").fetch_one(&store.pool).await?;
    let loads = measure_loads(&store.pool, settings, progress).await?;
    let import = measure_import(&store, settings, progress).await?;
    store.close().await;
    Ok(StoreBench { settings: settings.clone(), server_version, loads, import })
}

async fn measure_loads(
    pool: &PgPool,
    settings: &StoreBenchSettings,
    progress: &impl Fn(&str),
) -> Result<Vec<LoadTiming>, StoreError> {
    let d = settings.dimension;
    sqlx::query("CREATE TABLE bench_bytea (id TEXT COLLATE \"C\" PRIMARY KEY, vector BYTEA NOT NULL)")
        .execute(pool)
        .await?;
    sqlx::query("CREATE TABLE bench_real (id TEXT COLLATE \"C\" PRIMARY KEY, vector REAL[] NOT NULL)")
        .execute(pool)
        .await?;
    let mut rng = Rng::new(15);
    let mut written = 0;
    while written < settings.vectors {
        let n = (settings.vectors - written).min(super::BATCH_ROWS);
        let ids: Vec<String> = (written..written + n).map(|i| format!("v{i:08}")).collect();
        let vectors: Vec<Vec<f32>> = (0..n).map(|_| random_unit_vector(&mut rng, d)).collect();
        let blobs: Vec<Vec<u8>> = vectors.iter().map(|v| vector_to_bytes(v)).collect();
        sqlx::query("INSERT INTO bench_bytea SELECT * FROM UNNEST($1::text[], $2::bytea[])")
            .bind(&ids)
            .bind(&blobs)
            .execute(pool)
            .await?;
        // One flat real[] sliced per row: UNNEST would flatten a two-dimensional array into single values.
        let flat: Vec<f32> = vectors.concat();
        sqlx::query(
            "INSERT INTO bench_real SELECT t.id, ($2::real[])[((t.n - 1) * $3 + 1):(t.n * $3)]
             FROM UNNEST($1::text[]) WITH ORDINALITY AS t(id, n)",
        )
        .bind(&ids)
        .bind(&flat)
        .bind(d as i64)
        .execute(pool)
        .await?;
        written += n;
    }
    sqlx::query("VACUUM ANALYZE bench_bytea").execute(pool).await?;
    sqlx::query("VACUUM ANALYZE bench_real").execute(pool).await?;
    progress(&format!("wrote {} vectors of {d} dimensions to bench_bytea and bench_real", settings.vectors));

    let mut seconds = [Vec::new(), Vec::new()];
    for round in 0..settings.repeats.max(1) {
        // Alternate which goes first, so neither always finds the other's pages warm.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let started = Instant::now();
            let loaded = if which == 0 { load_bytea(pool, d).await? } else { load_real(pool, d).await? };
            seconds[which].push(started.elapsed().as_secs_f64());
            if loaded != settings.vectors {
                return Err(StoreError::Corrupt(format!("loaded {loaded} of {} vectors", settings.vectors)));
            }
        }
    }
    let mut loads = Vec::new();
    for (which, (format, table)) in [("bytea", "bench_bytea"), ("real[]", "bench_real")].into_iter().enumerate() {
        let bytes: i64 =
            sqlx::query_scalar("SELECT pg_total_relation_size($1::regclass)").bind(table).fetch_one(pool).await?;
        let median_seconds = median(&seconds[which]);
        loads.push(LoadTiming {
            format,
            seconds: seconds[which].clone(),
            median_seconds,
            vectors_per_second: settings.vectors as f64 / median_seconds.max(f64::MIN_POSITIVE),
            table_mib: bytes as f64 / (1024.0 * 1024.0),
        });
    }
    sqlx::query("DROP TABLE bench_bytea, bench_real").execute(pool).await?;
    Ok(loads)
}

async fn load_bytea(pool: &PgPool, dimension: usize) -> Result<usize, StoreError> {
    let rows = sqlx::query("SELECT id, vector FROM bench_bytea").fetch_all(pool).await?;
    let mut loaded = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: String = row.try_get("id")?;
        let vector = bytes_to_vector(&id, row.try_get("vector")?)?;
        if vector.len() == dimension {
            loaded.push((id, vector));
        }
    }
    Ok(loaded.len())
}

async fn load_real(pool: &PgPool, dimension: usize) -> Result<usize, StoreError> {
    let rows = sqlx::query("SELECT id, vector FROM bench_real").fetch_all(pool).await?;
    let mut loaded = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: String = row.try_get("id")?;
        let vector: Vec<f32> = row.try_get("vector")?;
        if vector.len() == dimension {
            loaded.push((id, vector));
        }
    }
    Ok(loaded.len())
}

async fn measure_import(
    store: &PgStore,
    settings: &StoreBenchSettings,
    progress: &impl Fn(&str),
) -> Result<ImportTiming, StoreError> {
    let mut rng = Rng::new(50);
    let words = ["index", "vector", "replica", "query", "store", "model", "search", "corpus", "ranking", "shard"];
    let mut batches = Vec::new();
    for start in (0..settings.documents).step_by(settings.batch.max(1)) {
        let end = (start + settings.batch.max(1)).min(settings.documents);
        let mut documents = Vec::with_capacity(end - start);
        let mut embeddings = Vec::with_capacity(end - start);
        for i in start..end {
            let text: Vec<&str> = (0..24).map(|_| words[rng.below(words.len())]).collect();
            let text = format!("document {i}: {}", text.join(" "));
            let id = format!("doc-{i:08}");
            embeddings.push(NewEmbedding {
                model: "bench".into(),
                model_version: "v1".into(),
                document_id: id.clone(),
                content_hash: content_hash(&text),
                vector: random_unit_vector(&mut rng, settings.dimension),
            });
            documents.push(NewDocument { id, text, metadata: serde_json::json!({"n": i, "source": "bench"}) });
        }
        batches.push((documents, embeddings));
    }
    let started = Instant::now();
    for (done, (documents, embeddings)) in batches.iter().enumerate() {
        store.upsert(documents, embeddings).await?;
        if (done + 1) % 20 == 0 {
            progress(&format!("imported {} documents", (done + 1) * settings.batch));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let loaded = store.embeddings("bench", "v1").await?;
    let embeddings_load_seconds = started.elapsed().as_secs_f64();
    if loaded.len() != settings.documents {
        return Err(StoreError::Corrupt(format!("read back {} of {} embeddings", loaded.len(), settings.documents)));
    }
    Ok(ImportTiming {
        documents: settings.documents,
        batch: settings.batch,
        seconds,
        documents_per_second: settings.documents as f64 / seconds.max(f64::MIN_POSITIVE),
        embeddings_load_seconds,
    })
}
