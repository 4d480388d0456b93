//! The PostgreSQL store, shared by replicas: a connection pool (`[postgres]` pool size, acquire timeout and a
//! `statement_timeout` on every connection), migrations from `migrations/postgres` applied at connect, and the
//! same semantics as the SQLite store: documents and their embeddings, the change feed, and (in [`models`] and
//! [`experiments`]) the model registry and the experiments. An acknowledged write is committed with the
//! server's default `synchronous_commit`. Bulk writes bind one array per column and insert through `UNNEST`,
//! in batches. [`bench`] measures vector loading and bulk import. Uses nothing of Duet's above the store.

pub mod bench;
mod experiments;
mod judgements;
mod models;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, Row};

use super::location::{redact, PostgresSettings};
use super::records::{
    ArmOutcome, Document, Experiment, ExposureLatency, ExposureRecord, Fingerprint, GradedFeedback, InterleaveCounts,
    InterleaveImpression, NewDocument, NewEmbedding, ShadowRecord, ShadowRow, Shown,
};
use super::{bytes_to_vector, vector_to_bytes, Change, ChangeKind, Store, StoreError};
use crate::util::now;

/// Rows per bulk statement: each column is one bound array, so the bind limit is far away; this keeps one
/// statement's memory and lock footprint small.
const BATCH_ROWS: usize = 2_000;

/// Ids per `= ANY($1)` lookup.
const LOOKUP_IDS: usize = 5_000;

/// The advisory lock every writer takes right before it appends its change rows (see [`record_changes`]).
const FEED_LOCK: i64 = 0x6475_6574_6665_6564; // "duetfeed"

const DOCUMENT_COLUMNS: &str = "id, text, metadata, content_hash, created_at, updated_at";

pub struct PgStore {
    pool: PgPool,
    origin: String,
}

impl PgStore {
    /// Connects to the database at `url` and applies pending migrations. A server that cannot be reached (or
    /// refuses the login) is [`StoreError::Open`], naming the URL without its password.
    pub async fn connect(url: &str, settings: &PostgresSettings) -> Result<Self, StoreError> {
        let location = redact(url);
        let options = PgConnectOptions::from_str(url)
            .map_err(|source| StoreError::Open { location: location.clone(), source })?;
        Self::connect_with(options, &location, settings).await
    }

    /// [`PgStore::connect`] with parsed options.
    pub async fn connect_with(
        options: PgConnectOptions,
        location: &str,
        settings: &PostgresSettings,
    ) -> Result<Self, StoreError> {
        let options = options
            .application_name("duet")
            .options([("statement_timeout", settings.statement_timeout_ms.to_string())]);
        let pool = PgPoolOptions::new()
            .max_connections(settings.pool_size.max(1))
            .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open { location: location.to_string(), source })?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        analyze_if_never_analyzed(&pool).await;
        Ok(Self { pool, origin: uuid::Uuid::new_v4().to_string() })
    }
}

/// Tables loaded in bulk since they were last analysed (autovacuum gets to them within about a minute) have
/// statistics of a much smaller table: the planner then plans the missing-embeddings anti-join as a nested loop
/// over sequential scans — over 30 s instead of a fraction of one over 100k documents, past the statement
/// timeout. A server starting right after an import (a fifth or more of the rows changed since the last
/// analysis) analyses them first. A failure (e.g. a role that does not own the tables) only logs.
async fn analyze_if_never_analyzed(pool: &PgPool) {
    let stale: Result<Vec<String>, sqlx::Error> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_stat_user_tables
         WHERE relname IN ('documents', 'embeddings') AND schemaname = current_schema()
           AND n_mod_since_analyze > 1000 AND n_mod_since_analyze * 5 > n_live_tup",
    )
    .fetch_all(pool)
    .await;
    for table in stale.unwrap_or_default() {
        let started = std::time::Instant::now();
        match sqlx::query(&format!("ANALYZE {table}")).execute(pool).await {
            Ok(_) => tracing::info!(
                table,
                seconds = started.elapsed().as_secs_f64(),
                "analysed a table changed in bulk since its last analysis"
            ),
            Err(err) => {
                tracing::warn!(table, error = %err, "cannot analyse the table; queries may plan badly until autovacuum does")
            }
        }
    }
}

/// Appends change rows inside a write's transaction; it must be the transaction's last statement before COMMIT.
///
/// Concurrent transactions draw sequence numbers in one order and may commit in another: a reader could then see
/// seq 11 committed while 10 is still in flight, move its cursor past 10 and never see it. The transaction-scoped
/// advisory lock, taken here and held until COMMIT, makes drawing the numbers and committing one critical section
/// per writer (PostgreSQL makes a commit visible before it releases the transaction's locks), so sequence order is
/// commit order. The row writes before it run concurrently; only this tail is serialised.
pub(super) async fn record_changes(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    kind: ChangeKind,
    keys: &[&str],
    origin: &str,
    at: &str,
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(FEED_LOCK).execute(&mut **tx).await?;
    for chunk in keys.chunks(BATCH_ROWS) {
        sqlx::query(
            "INSERT INTO changes (kind, key, origin, at)
             SELECT $1, k, $3, $4 FROM UNNEST($2::text[]) WITH ORDINALITY AS t(k, n) ORDER BY n",
        )
        .bind(kind.as_str())
        .bind(chunk)
        .bind(origin)
        .bind(at)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

fn metadata_of(id: &str, text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("metadata of {id} is not JSON: {e}")))
}

fn document_from_row(row: &PgRow) -> Result<Document, StoreError> {
    let id: String = row.try_get("id")?;
    let metadata = metadata_of(&id, row.try_get("metadata")?)?;
    Ok(Document {
        text: row.try_get("text")?,
        metadata,
        content_hash: row.try_get("content_hash")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        id,
    })
}

/// (document id, vector) of a row; an undecodable vector comes back empty (of the wrong length, so the engine
/// encodes the document again instead of the whole model failing to load).
fn embedding_from_row(row: &PgRow) -> Result<(String, Vec<f32>), StoreError> {
    let id: String = row.try_get("document_id")?;
    let bytes: &[u8] = row.try_get("vector")?;
    let vector = bytes_to_vector(&id, bytes).unwrap_or_default();
    Ok((id, vector))
}

/// The items with distinct keys, the last of each key kept, sorted by key (so that concurrent writers lock rows
/// in one order and cannot deadlock). `ON CONFLICT DO UPDATE` refuses to touch one row twice in a statement.
fn last_per_key<'a, T, K: Ord>(items: &'a [T], key: impl Fn(&'a T) -> K) -> Vec<&'a T> {
    let mut by_key = std::collections::BTreeMap::new();
    for item in items {
        by_key.insert(key(item), item);
    }
    by_key.into_values().collect()
}

/// The keys in first-seen order, each once.
fn distinct_in_order<'a>(keys: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = std::collections::HashSet::new();
    keys.into_iter().filter(|k| seen.insert(*k)).collect()
}

async fn write_documents(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    documents: &[NewDocument],
    at: &str,
) -> Result<(), StoreError> {
    let documents = last_per_key(documents, |d| d.id.as_str());
    for chunk in documents.chunks(BATCH_ROWS) {
        let ids: Vec<&str> = chunk.iter().map(|d| d.id.as_str()).collect();
        let texts: Vec<&str> = chunk.iter().map(|d| d.text.as_str()).collect();
        let metadata: Vec<String> = chunk.iter().map(|d| d.metadata.to_string()).collect();
        let hashes: Vec<String> = chunk.iter().map(|d| super::content_hash(&d.text)).collect();
        sqlx::query(
            "INSERT INTO documents (id, text, metadata, content_hash, created_at, updated_at)
             SELECT id, text, metadata, content_hash, $5, $5
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) AS t(id, text, metadata, content_hash)
             ON CONFLICT (id) DO UPDATE SET
               text = excluded.text, metadata = excluded.metadata,
               content_hash = excluded.content_hash, updated_at = excluded.updated_at",
        )
        .bind(&ids)
        .bind(&texts)
        .bind(&metadata)
        .bind(&hashes)
        .bind(at)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn write_embeddings(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    embeddings: &[NewEmbedding],
    created_at: &str,
) -> Result<(), StoreError> {
    let embeddings = last_per_key(embeddings, |e| (e.model.as_str(), e.model_version.as_str(), e.document_id.as_str()));
    for chunk in embeddings.chunks(BATCH_ROWS) {
        let models: Vec<&str> = chunk.iter().map(|e| e.model.as_str()).collect();
        let versions: Vec<&str> = chunk.iter().map(|e| e.model_version.as_str()).collect();
        let ids: Vec<&str> = chunk.iter().map(|e| e.document_id.as_str()).collect();
        let hashes: Vec<&str> = chunk.iter().map(|e| e.content_hash.as_str()).collect();
        let dimensions: Vec<i32> = chunk.iter().map(|e| e.vector.len() as i32).collect();
        let vectors: Vec<Vec<u8>> = chunk.iter().map(|e| vector_to_bytes(&e.vector)).collect();
        sqlx::query(
            "INSERT INTO embeddings (model, model_version, document_id, content_hash, dimension, vector, created_at)
             SELECT model, model_version, document_id, content_hash, dimension, vector, $7
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::bytea[])
               AS t(model, model_version, document_id, content_hash, dimension, vector)
             ON CONFLICT (model, model_version, document_id) DO UPDATE SET
               content_hash = excluded.content_hash, dimension = excluded.dimension,
               vector = excluded.vector, created_at = excluded.created_at",
        )
        .bind(&models)
        .bind(&versions)
        .bind(&ids)
        .bind(&hashes)
        .bind(&dimensions)
        .bind(&vectors)
        .bind(created_at)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    async fn upsert(&self, documents: &[NewDocument], embeddings: &[NewEmbedding]) -> Result<(), StoreError> {
        let at = now();
        let mut tx = self.pool.begin().await?;
        write_documents(&mut tx, documents, &at).await?;
        write_embeddings(&mut tx, embeddings, &at).await?;
        let ids = distinct_in_order(documents.iter().map(|d| d.id.as_str()));
        record_changes(&mut tx, ChangeKind::Document, &ids, &self.origin, &at).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn put_embeddings(&self, embeddings: &[NewEmbedding]) -> Result<(), StoreError> {
        let at = now();
        let mut tx = self.pool.begin().await?;
        write_embeddings(&mut tx, embeddings, &at).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Document>, StoreError> {
        let row = sqlx::query(&format!("SELECT {DOCUMENT_COLUMNS} FROM documents WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(document_from_row).transpose()
    }

    async fn get_many(&self, ids: &[String]) -> Result<HashMap<String, Document>, StoreError> {
        let mut found = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(LOOKUP_IDS) {
            let rows = sqlx::query(&format!("SELECT {DOCUMENT_COLUMNS} FROM documents WHERE id = ANY($1::text[])"))
                .bind(chunk)
                .fetch_all(&self.pool)
                .await?;
            for row in &rows {
                let doc = document_from_row(row)?;
                found.insert(doc.id.clone(), doc);
            }
        }
        Ok(found)
    }

    async fn fingerprints(&self, ids: &[String]) -> Result<HashMap<String, Fingerprint>, StoreError> {
        let mut found = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(LOOKUP_IDS) {
            let rows = sqlx::query("SELECT id, content_hash, metadata FROM documents WHERE id = ANY($1::text[])")
                .bind(chunk)
                .fetch_all(&self.pool)
                .await?;
            for row in &rows {
                let id: String = row.try_get("id")?;
                let metadata = metadata_of(&id, row.try_get("metadata")?)?;
                found.insert(id, Fingerprint { content_hash: row.try_get("content_hash")?, metadata });
            }
        }
        Ok(found)
    }

    async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let result = sqlx::query("DELETE FROM documents WHERE id = $1").bind(id).execute(&mut *tx).await?;
        let existed = result.rows_affected() > 0;
        if existed {
            record_changes(&mut tx, ChangeKind::Document, &[id], &self.origin, &now()).await?;
        }
        tx.commit().await?;
        Ok(existed)
    }

    async fn count(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM documents").fetch_one(&self.pool).await?;
        Ok(n as u64)
    }

    async fn embeddings(&self, model: &str, model_version: &str) -> Result<Vec<(String, Vec<f32>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT e.document_id, e.vector FROM embeddings e
             JOIN documents d ON d.id = e.document_id AND d.content_hash = e.content_hash
             WHERE e.model = $1 AND e.model_version = $2",
        )
        .bind(model)
        .bind(model_version)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(embedding_from_row).collect()
    }

    async fn missing_embeddings(
        &self,
        model: &str,
        model_version: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Document>, StoreError> {
        // Byte order (COLLATE "C", the column's collation too), as SQLite compares: paging is consistent.
        let rows = sqlx::query(
            "SELECT d.id, d.text, d.metadata, d.content_hash, d.created_at, d.updated_at FROM documents d
             WHERE d.id > $1 COLLATE \"C\" AND NOT EXISTS (
               SELECT 1 FROM embeddings e
               WHERE e.model = $2 AND e.model_version = $3 AND e.document_id = d.id
                 AND e.content_hash = d.content_hash)
             ORDER BY d.id COLLATE \"C\" LIMIT $4",
        )
        .bind(after.unwrap_or(""))
        .bind(model)
        .bind(model_version)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(document_from_row).collect()
    }

    async fn experiments(&self) -> Result<Vec<Experiment>, StoreError> {
        experiments::experiments(&self.pool).await
    }

    async fn save_experiment(&self, e: &Experiment) -> Result<(), StoreError> {
        experiments::save_experiment(&self.pool, e, &self.origin).await
    }

    async fn write_exposures(&self, exposures: &[ExposureRecord], shadows: &[ShadowRecord]) -> Result<(), StoreError> {
        experiments::write_exposures(&self.pool, exposures, shadows).await
    }

    async fn shown(&self, request_id: &str) -> Result<Option<Shown>, StoreError> {
        experiments::shown(&self.pool, request_id).await
    }

    async fn add_feedback(
        &self,
        request_id: &str,
        doc_id: &str,
        event: &str,
        position: u32,
    ) -> Result<bool, StoreError> {
        experiments::add_feedback(&self.pool, request_id, doc_id, event, position).await
    }

    async fn clicked(&self, request_id: &str) -> Result<Vec<String>, StoreError> {
        experiments::clicked(&self.pool, request_id).await
    }

    async fn set_feedback_grade(
        &self,
        request_id: &str,
        doc_id: &str,
        event: &str,
        grade: f64,
    ) -> Result<(), StoreError> {
        judgements::set_feedback_grade(&self.pool, request_id, doc_id, event, grade).await
    }

    async fn graded_feedback(&self, experiment_id: &str) -> Result<Vec<GradedFeedback>, StoreError> {
        judgements::graded_feedback(&self.pool, experiment_id).await
    }

    async fn interleave_impressions(
        &self,
        experiment_id: &str,
        teams: [&str; 2],
    ) -> Result<Vec<InterleaveImpression>, StoreError> {
        judgements::interleave_impressions(&self.pool, experiment_id, teams).await
    }

    async fn arm_outcomes(&self, experiment_id: &str) -> Result<Vec<ArmOutcome>, StoreError> {
        experiments::arm_outcomes(&self.pool, experiment_id).await
    }

    async fn interleave_counts(
        &self,
        experiment_id: &str,
        teams: [&str; 2],
    ) -> Result<Vec<InterleaveCounts>, StoreError> {
        experiments::interleave_counts(&self.pool, experiment_id, teams).await
    }

    async fn latencies(&self, experiment_id: &str) -> Result<Vec<ExposureLatency>, StoreError> {
        experiments::latencies(&self.pool, experiment_id).await
    }

    async fn shadow_rows(&self, experiment_id: &str) -> Result<Vec<ShadowRow>, StoreError> {
        experiments::shadow_rows(&self.pool, experiment_id).await
    }

    async fn documents_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<Document>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DOCUMENT_COLUMNS} FROM documents WHERE id > $1 COLLATE \"C\" ORDER BY id COLLATE \"C\" LIMIT $2"
        ))
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(document_from_row).collect()
    }

    async fn embeddings_of(
        &self,
        model: &str,
        model_version: &str,
        ids: &[String],
    ) -> Result<HashMap<String, Vec<f32>>, StoreError> {
        let mut found = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(LOOKUP_IDS) {
            let rows = sqlx::query(
                "SELECT e.document_id, e.vector FROM embeddings e
                 JOIN documents d ON d.id = e.document_id AND d.content_hash = e.content_hash
                 WHERE e.model = $1 AND e.model_version = $2 AND e.document_id = ANY($3::text[])",
            )
            .bind(model)
            .bind(model_version)
            .bind(chunk)
            .fetch_all(&self.pool)
            .await?;
            for row in &rows {
                let (id, vector) = embedding_from_row(row)?;
                found.insert(id, vector);
            }
        }
        Ok(found)
    }

    fn origin(&self) -> &str {
        &self.origin
    }

    async fn changes_since(&self, after: i64, limit: u32) -> Result<Vec<Change>, StoreError> {
        let rows = sqlx::query("SELECT seq, kind, key, origin, at FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("kind")?;
                Ok(Change {
                    seq: row.try_get("seq")?,
                    kind: ChangeKind::parse(&kind)?,
                    key: row.try_get("key")?,
                    origin: row.try_get("origin")?,
                    at: row.try_get("at")?,
                })
            })
            .collect()
    }

    async fn last_change(&self) -> Result<i64, StoreError> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM changes").fetch_one(&self.pool).await?;
        Ok(seq.unwrap_or(0))
    }

    async fn prune_changes(&self, before: &str) -> Result<u64, StoreError> {
        // The latest change is kept whatever its age (as SQLite, where it stops AUTOINCREMENT reusing numbers):
        // a replica's cursor always names a row that exists.
        let result = sqlx::query("DELETE FROM changes WHERE at < $1 AND seq < (SELECT MAX(seq) FROM changes)")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
