//! The embedded SQLite store (the default): one file, write-ahead log, `synchronous = FULL` so an acknowledged
//! write survives a crash; migrations from `migrations/sqlite` run at open. The model registry's queries are in
//! [`models`], the experiments' in [`experiments`].

mod experiments;
mod judgements;
mod models;

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use super::records::{
    ArmOutcome, Document, Experiment, ExposureLatency, ExposureRecord, Fingerprint, GradedFeedback, InterleaveCounts,
    InterleaveImpression, NewDocument, NewEmbedding, ShadowRecord, ShadowRow, Shown,
};
use super::{bytes_to_vector, vector_to_bytes, Change, ChangeKind, Store, StoreError};

pub struct SqliteStore {
    pool: SqlitePool,
    origin: String,
}

/// Appends change rows inside a write's transaction (SQLite has one writer at a time, so the sequence follows
/// commit order).
pub(super) async fn record_changes(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    kind: ChangeKind,
    keys: &[&str],
    origin: &str,
    at: &str,
) -> Result<(), StoreError> {
    for key in keys {
        sqlx::query("INSERT INTO changes (kind, key, origin, at) VALUES (?, ?, ?, ?)")
            .bind(kind.as_str())
            .bind(key)
            .bind(origin)
            .bind(at)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

use crate::util::now;

fn document_from_row(row: &SqliteRow) -> Result<Document, StoreError> {
    let metadata: String = row.try_get("metadata")?;
    let id: String = row.try_get("id")?;
    let metadata = serde_json::from_str(&metadata)
        .map_err(|e| StoreError::Corrupt(format!("metadata of {id} is not JSON: {e}")))?;
    Ok(Document {
        id,
        text: row.try_get("text")?,
        metadata,
        content_hash: row.try_get("content_hash")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies pending migrations. An existing file that is
    /// not an SQLite database (an empty one included) is refused.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let location = path.display().to_string();
        super::header::check_existing(path)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|source| StoreError::CreateDir { location: location.clone(), source })?;
        }
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|source| StoreError::Open { location: location.clone(), source })?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open { location, source })?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self { pool, origin: uuid::Uuid::new_v4().to_string() })
    }
}

async fn write_embeddings(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    embeddings: &[NewEmbedding],
    created_at: &str,
) -> Result<(), StoreError> {
    for e in embeddings {
        sqlx::query(
            "INSERT INTO embeddings (model, model_version, document_id, content_hash, dimension, vector, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (model, model_version, document_id) DO UPDATE SET
               content_hash = excluded.content_hash, dimension = excluded.dimension,
               vector = excluded.vector, created_at = excluded.created_at",
        )
        .bind(&e.model)
        .bind(&e.model_version)
        .bind(&e.document_id)
        .bind(&e.content_hash)
        .bind(e.vector.len() as i64)
        .bind(vector_to_bytes(&e.vector))
        .bind(created_at)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn upsert(&self, documents: &[NewDocument], embeddings: &[NewEmbedding]) -> Result<(), StoreError> {
        let at = now();
        let mut tx = self.pool.begin().await?;
        for d in documents {
            sqlx::query(
                "INSERT INTO documents (id, text, metadata, content_hash, created_at, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?)
                 ON CONFLICT (id) DO UPDATE SET
                   text = excluded.text, metadata = excluded.metadata,
                   content_hash = excluded.content_hash, updated_at = excluded.updated_at",
            )
            .bind(&d.id)
            .bind(&d.text)
            .bind(d.metadata.to_string())
            .bind(super::content_hash(&d.text))
            .bind(&at)
            .bind(&at)
            .execute(&mut *tx)
            .await?;
        }
        write_embeddings(&mut tx, embeddings, &at).await?;
        let ids: Vec<&str> = documents.iter().map(|d| d.id.as_str()).collect();
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
        let row =
            sqlx::query("SELECT id, text, metadata, content_hash, created_at, updated_at FROM documents WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(document_from_row).transpose()
    }

    async fn get_many(&self, ids: &[String]) -> Result<HashMap<String, Document>, StoreError> {
        let mut found = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "SELECT id, text, metadata, content_hash, created_at, updated_at FROM documents WHERE id IN (",
            );
            let mut list = query.separated(", ");
            for id in chunk {
                list.push_bind(id);
            }
            query.push(")");
            for row in query.build().fetch_all(&self.pool).await? {
                let doc = document_from_row(&row)?;
                found.insert(doc.id.clone(), doc);
            }
        }
        Ok(found)
    }

    async fn fingerprints(&self, ids: &[String]) -> Result<HashMap<String, Fingerprint>, StoreError> {
        let mut found = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let mut query =
                QueryBuilder::<Sqlite>::new("SELECT id, content_hash, metadata FROM documents WHERE id IN (");
            let mut list = query.separated(", ");
            for id in chunk {
                list.push_bind(id);
            }
            query.push(")");
            for row in query.build().fetch_all(&self.pool).await? {
                let id: String = row.try_get("id")?;
                let metadata: String = row.try_get("metadata")?;
                let metadata = serde_json::from_str(&metadata)
                    .map_err(|e| StoreError::Corrupt(format!("metadata of {id} is not JSON: {e}")))?;
                found.insert(id, Fingerprint { content_hash: row.try_get("content_hash")?, metadata });
            }
        }
        Ok(found)
    }

    async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let result = sqlx::query("DELETE FROM documents WHERE id = ?").bind(id).execute(&mut *tx).await?;
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
             WHERE e.model = ? AND e.model_version = ?",
        )
        .bind(model)
        .bind(model_version)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("document_id")?;
                let blob: &[u8] = row.try_get("vector")?;
                // An unreadable blob comes back empty: of the wrong length, so the engine encodes it again
                // instead of the whole model failing to load.
                let vector = bytes_to_vector(&id, blob).unwrap_or_default();
                Ok((id, vector))
            })
            .collect()
    }

    async fn missing_embeddings(
        &self,
        model: &str,
        model_version: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Document>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.id, d.text, d.metadata, d.content_hash, d.created_at, d.updated_at FROM documents d
             WHERE d.id > ? AND NOT EXISTS (
               SELECT 1 FROM embeddings e
               WHERE e.model = ? AND e.model_version = ? AND e.document_id = d.id AND e.content_hash = d.content_hash)
             ORDER BY d.id LIMIT ?",
        )
        .bind(after.unwrap_or(""))
        .bind(model)
        .bind(model_version)
        .bind(limit as i64)
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
        let rows = sqlx::query(
            "SELECT id, text, metadata, content_hash, created_at, updated_at FROM documents
             WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(after.unwrap_or(""))
        .bind(limit as i64)
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
        for chunk in ids.chunks(500) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "SELECT e.document_id, e.vector FROM embeddings e
                 JOIN documents d ON d.id = e.document_id AND d.content_hash = e.content_hash
                 WHERE e.model = ",
            );
            query.push_bind(model).push(" AND e.model_version = ").push_bind(model_version);
            query.push(" AND e.document_id IN (");
            let mut list = query.separated(", ");
            for id in chunk {
                list.push_bind(id);
            }
            query.push(")");
            for row in query.build().fetch_all(&self.pool).await? {
                let id: String = row.try_get("document_id")?;
                let blob: &[u8] = row.try_get("vector")?;
                let vector = bytes_to_vector(&id, blob).unwrap_or_default();
                found.insert(id, vector);
            }
        }
        Ok(found)
    }

    fn origin(&self) -> &str {
        &self.origin
    }

    async fn changes_since(&self, after: i64, limit: u32) -> Result<Vec<Change>, StoreError> {
        let rows = sqlx::query("SELECT seq, kind, key, origin, at FROM changes WHERE seq > ? ORDER BY seq LIMIT ?")
            .bind(after)
            .bind(limit as i64)
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
        // The latest change is kept whatever its age, so that AUTOINCREMENT never hands out a number again.
        let result = sqlx::query("DELETE FROM changes WHERE at < ? AND seq < (SELECT MAX(seq) FROM changes)")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::content_hash;
    use serde_json::json;

    fn doc(id: &str, text: &str) -> NewDocument {
        NewDocument { id: id.into(), text: text.into(), metadata: json!({"k": id}) }
    }

    fn emb(model: &str, id: &str, text: &str, v: Vec<f32>) -> NewEmbedding {
        NewEmbedding {
            model: model.into(),
            model_version: "v1".into(),
            document_id: id.into(),
            content_hash: content_hash(text),
            vector: v,
        }
    }

    #[tokio::test]
    async fn documents_and_embeddings_round_trip_and_go_stale_when_text_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("sub/duet.db")).await.unwrap();
        store
            .upsert(
                &[doc("a", "alpha"), doc("b", "beta")],
                &[emb("m", "a", "alpha", vec![1.0, -2.5]), emb("m", "b", "beta", vec![0.5, 0.25])],
            )
            .await
            .unwrap();
        assert_eq!(store.count().await.unwrap(), 2);
        let a = store.get("a").await.unwrap().unwrap();
        assert_eq!(a.metadata, json!({"k": "a"}));
        let mut embs = store.embeddings("m", "v1").await.unwrap();
        embs.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(embs, vec![("a".into(), vec![1.0, -2.5]), ("b".into(), vec![0.5, 0.25])]);
        assert!(store.embeddings("m", "v2").await.unwrap().is_empty(), "another version has nothing");

        // New text for b without a new embedding: b's embedding is stale, and b is reported missing.
        let b_before = store.get("b").await.unwrap().unwrap();
        store.upsert(&[doc("b", "beta two")], &[]).await.unwrap();
        let b_after = store.get("b").await.unwrap().unwrap();
        assert_eq!((b_after.text.as_str(), &b_after.created_at), ("beta two", &b_before.created_at));
        assert_eq!(store.embeddings("m", "v1").await.unwrap().len(), 1);
        let missing = store.missing_embeddings("m", "v1", None, 10).await.unwrap();
        assert_eq!(missing.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["b"]);
        assert_eq!(store.missing_embeddings("other", "v1", Some("a"), 10).await.unwrap().len(), 1, "paging by id");

        assert!(store.delete("a").await.unwrap());
        assert!(!store.delete("a").await.unwrap());
        assert!(store.embeddings("m", "v1").await.unwrap().is_empty(), "embeddings cascade with their document");
        let many = store.get_many(&["a".into(), "b".into()]).await.unwrap();
        assert_eq!(many.keys().collect::<Vec<_>>(), ["b"]);
        let fp = store.fingerprints(&["b".into()]).await.unwrap();
        assert_eq!(fp["b"].content_hash, content_hash("beta two"));
        store.close().await;

        let reopened = SqliteStore::open(&dir.path().join("sub/duet.db")).await.unwrap();
        assert_eq!(reopened.count().await.unwrap(), 1, "data survives a reopen; migrations are not re-applied");
    }
}
