//! The model registry in PostgreSQL (`migrations/postgres/0001_schema.sql`): the same queries and rules as the
//! SQLite store's (one ready version per model, enforced by a partial unique index; every state change an
//! event; a change row per model touched).

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::Row;

use super::PgStore;
use crate::store::registry::{ModelEvent, ModelRegistry, ModelVersion, VersionState};
use crate::store::{ChangeKind, StoreError};

fn version_from_row(row: &PgRow) -> Result<ModelVersion, StoreError> {
    Ok(ModelVersion {
        model: row.try_get("model")?,
        version: row.try_get("version")?,
        path: row.try_get("path")?,
        state: VersionState::parse(row.try_get("state")?)?,
        reason: row.try_get("reason")?,
        since: row.try_get("since")?,
        created_at: row.try_get("created_at")?,
        retired_at: row.try_get("retired_at")?,
        purged_at: row.try_get("purged_at")?,
    })
}

#[async_trait]
impl ModelRegistry for PgStore {
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
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
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
            sqlx::query("INSERT INTO model_events (model, version, state, reason, at) VALUES ($1, $2, $3, $4, $5)")
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
            "SELECT version, state, reason, at FROM model_events WHERE model = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(model)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ModelEvent {
                    version: row.try_get("version")?,
                    state: VersionState::parse(row.try_get("state")?)?,
                    reason: row.try_get("reason")?,
                    at: row.try_get("at")?,
                })
            })
            .collect()
    }

    async fn purge_version(&self, model: &str, version: &str, at: &str) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let removed = sqlx::query("DELETE FROM embeddings WHERE model = $1 AND model_version = $2")
            .bind(model)
            .bind(version)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("UPDATE model_versions SET purged_at = $1 WHERE model = $2 AND version = $3")
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
                     WHERE e.model = $1 AND e.model_version = $2) AS stored",
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
        Ok(sqlx::query_scalar("SELECT value FROM settings WHERE key = $1").bind(key).fetch_optional(&self.pool).await?)
    }

    async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
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
