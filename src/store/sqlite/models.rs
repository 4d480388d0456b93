//! The model registry in SQLite (`migrations/sqlite/0003_model_registry.sql`).

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::SqliteStore;
use crate::store::registry::{ModelEvent, ModelRegistry, ModelVersion, VersionState};
use crate::store::{ChangeKind, StoreError};

fn version_from_row(row: &SqliteRow) -> Result<ModelVersion, StoreError> {
    Ok(ModelVersion {
        model: row.try_get("model")?,
        version: row.try_get("version")?,
        path: row.try_get("path")?,
        state: VersionState::parse(&row.try_get::<String, _>("state")?)?,
        reason: row.try_get("reason")?,
        since: row.try_get("since")?,
        created_at: row.try_get("created_at")?,
        retired_at: row.try_get("retired_at")?,
        purged_at: row.try_get("purged_at")?,
    })
}

#[async_trait]
impl ModelRegistry for SqliteStore {
    async fn model_versions(&self) -> Result<Vec<ModelVersion>, StoreError> {
        let rows = sqlx::query("SELECT * FROM model_versions ORDER BY model, created_at, version")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(version_from_row).collect()
    }

    async fn set_version_states(&self, changes: &[ModelVersion]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for v in changes {
            sqlx::query(
                "INSERT INTO model_versions (model, version, path, state, reason, since, created_at, retired_at, purged_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (model, version) DO UPDATE SET path = excluded.path, state = excluded.state,
                   reason = excluded.reason, since = excluded.since, retired_at = excluded.retired_at,
                   purged_at = excluded.purged_at",
            )
            .bind(&v.model)
            .bind(&v.version)
            .bind(&v.path)
            .bind(v.state.as_str())
            .bind(&v.reason)
            .bind(&v.since)
            .bind(&v.created_at)
            .bind(&v.retired_at)
            .bind(&v.purged_at)
            .execute(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO model_events (model, version, state, reason, at) VALUES (?, ?, ?, ?, ?)")
                .bind(&v.model)
                .bind(&v.version)
                .bind(v.state.as_str())
                .bind(&v.reason)
                .bind(&v.since)
                .execute(&mut *tx)
                .await?;
        }
        let mut models: Vec<&str> = changes.iter().map(|v| v.model.as_str()).collect();
        models.sort_unstable();
        models.dedup();
        super::record_changes(&mut tx, ChangeKind::Model, &models, &self.origin, &crate::util::now()).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn model_events(&self, model: &str, limit: u32) -> Result<Vec<ModelEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, state, reason, at FROM model_events WHERE model = ? ORDER BY seq DESC LIMIT ?",
        )
        .bind(model)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ModelEvent {
                    version: row.try_get("version")?,
                    state: VersionState::parse(&row.try_get::<String, _>("state")?)?,
                    reason: row.try_get("reason")?,
                    at: row.try_get("at")?,
                })
            })
            .collect()
    }

    async fn purge_version(&self, model: &str, version: &str, at: &str) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let removed = sqlx::query("DELETE FROM embeddings WHERE model = ? AND model_version = ?")
            .bind(model)
            .bind(version)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("UPDATE model_versions SET purged_at = ? WHERE model = ? AND version = ?")
            .bind(at)
            .bind(model)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(removed)
    }

    async fn embedding_counts(&self, model: &str, version: &str) -> Result<(u64, u64), StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM documents) AS total,
                    (SELECT COUNT(*) FROM embeddings e JOIN documents d
                       ON d.id = e.document_id AND d.content_hash = e.content_hash
                     WHERE e.model = ? AND e.model_version = ?) AS stored",
        )
        .bind(model)
        .bind(version)
        .fetch_one(&self.pool)
        .await?;
        let total: i64 = row.try_get("total")?;
        let stored: i64 = row.try_get("stored")?;
        Ok((stored as u64, (total - stored).max(0) as u64))
    }

    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT value FROM settings WHERE key = ?").bind(key).fetch_optional(&self.pool).await?)
    }

    async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&mut *tx)
        .await?;
        super::record_changes(&mut tx, ChangeKind::Setting, &[key], &self.origin, &crate::util::now()).await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(model: &str, version: &str, state: VersionState) -> ModelVersion {
        ModelVersion {
            model: model.into(),
            version: version.into(),
            path: format!("models/{model}"),
            state,
            reason: None,
            since: crate::util::now(),
            created_at: crate::util::now(),
            retired_at: None,
            purged_at: None,
        }
    }

    #[tokio::test]
    async fn versions_and_their_events_persist_and_a_model_has_one_ready_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("r.db")).await.unwrap();
        store.set_version_states(&[version("m", "v1", VersionState::Ready)]).await.unwrap();
        // A second ready version without retiring the first breaks the one-serving rule: nothing is written.
        assert!(store.set_version_states(&[version("m", "v2", VersionState::Ready)]).await.is_err());
        let swap = [version("m", "v1", VersionState::Draining), version("m", "v2", VersionState::Ready)];
        store.set_version_states(&swap).await.unwrap();
        let states: Vec<_> = store.model_versions().await.unwrap().into_iter().map(|v| (v.version, v.state)).collect();
        assert_eq!(states, [("v1".into(), VersionState::Draining), ("v2".into(), VersionState::Ready)]);
        let events = store.model_events("m", 10).await.unwrap();
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!((events[0].version.as_str(), events[0].state), ("v2", VersionState::Ready));
        store.set_setting("default_model", "m").await.unwrap();
        store.set_setting("default_model", "n").await.unwrap();
        assert_eq!(store.setting("default_model").await.unwrap().as_deref(), Some("n"));
        assert_eq!(store.setting("absent").await.unwrap(), None);
    }
}
