//! The SQL of the experiments in the SQLite store: experiment definitions (with their promotion), exposures with
//! the model versions that served them, shadow comparisons, feedback, and the sums a report reads. The
//! [`super::SqliteStore`] trait methods delegate here; this uses only the store's own records.

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqlitePool};

use super::super::records::{
    Arm, ArmOutcome, Experiment, ExposureItem, ExposureLatency, ExposureRecord, InterleaveCounts, Mode, Promotion,
    ShadowRecord, ShadowRow, Shown, Status, Versions,
};
use super::super::{ChangeKind, StoreError};
use crate::util::now;

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|err| StoreError::Corrupt(err.to_string()))
}

/// The `versions` column: a JSON object, arm name → model version (`{}` for rows logged before versions were).
fn versions_of(row: &SqliteRow) -> Result<Versions, StoreError> {
    let text: String = row.try_get("versions")?;
    serde_json::from_str(&text)
        .map_err(|e| StoreError::Corrupt(format!("exposure versions {text:?} are not JSON: {e}")))
}

fn experiment_from_row(row: &SqliteRow) -> Result<Experiment, StoreError> {
    let id: String = row.try_get("id")?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("experiment {id}: {what}"));
    let mode: String = row.try_get("mode")?;
    let status: String = row.try_get("status")?;
    let arms: String = row.try_get("arms")?;
    let arms: Vec<Arm> = serde_json::from_str(&arms).map_err(|e| corrupt(&format!("arms are not JSON: {e}")))?;
    let promotion: Option<String> = row.try_get("promotion")?;
    let promotion: Option<Promotion> = promotion
        .map(|p| serde_json::from_str(&p))
        .transpose()
        .map_err(|e| corrupt(&format!("promotion is not JSON: {e}")))?;
    Ok(Experiment {
        name: row.try_get("name")?,
        mode: Mode::parse(&mode).ok_or_else(|| corrupt(&format!("unknown mode {mode}")))?,
        status: Status::parse(&status).ok_or_else(|| corrupt(&format!("unknown status {status}")))?,
        arms,
        salt: row.try_get("salt")?,
        default: row.try_get::<i64, _>("is_default")? == 1,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        started_at: row.try_get("started_at")?,
        stopped_at: row.try_get("stopped_at")?,
        promotion,
        id,
    })
}

pub(super) async fn experiments(pool: &SqlitePool) -> Result<Vec<Experiment>, StoreError> {
    let rows = sqlx::query("SELECT * FROM experiments ORDER BY created_at, id").fetch_all(pool).await?;
    rows.iter().map(experiment_from_row).collect()
}

pub(super) async fn save_experiment(pool: &SqlitePool, e: &Experiment, origin: &str) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    if e.default {
        sqlx::query("UPDATE experiments SET is_default = 0 WHERE is_default = 1 AND id <> ?")
            .bind(&e.id)
            .execute(&mut *tx)
            .await?;
    }
    let promotion = e.promotion.as_ref().map(to_json).transpose()?;
    sqlx::query(
        "INSERT INTO experiments
           (id, name, mode, status, arms, salt, is_default, created_at, updated_at, started_at, stopped_at, promotion)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET
           status = excluded.status, arms = excluded.arms, is_default = excluded.is_default,
           updated_at = excluded.updated_at, started_at = excluded.started_at, stopped_at = excluded.stopped_at,
           promotion = COALESCE(experiments.promotion, excluded.promotion)",
    )
    .bind(&e.id)
    .bind(&e.name)
    .bind(e.mode.as_str())
    .bind(e.status.as_str())
    .bind(to_json(&e.arms)?)
    .bind(&e.salt)
    .bind(i64::from(e.default))
    .bind(&e.created_at)
    .bind(&e.updated_at)
    .bind(&e.started_at)
    .bind(&e.stopped_at)
    .bind(promotion)
    .execute(&mut *tx)
    .await?;
    // One change for the experiment; unsetting another default is read back by replicas from the full list.
    super::record_changes(&mut tx, ChangeKind::Experiment, &[e.id.as_str()], origin, &now()).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn write_exposures(
    pool: &SqlitePool,
    exposures: &[ExposureRecord],
    shadows: &[ShadowRecord],
) -> Result<(), StoreError> {
    let at = now();
    let mut tx = pool.begin().await?;
    for e in exposures {
        let inserted = sqlx::query(
            "INSERT INTO exposures (request_id, experiment_id, unit_id, arm, query, latency_ms, created_at, versions)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(&e.request_id)
        .bind(&e.experiment_id)
        .bind(&e.unit_id)
        .bind(&e.arm)
        .bind(&e.query)
        .bind(e.latency_ms)
        .bind(&at)
        .bind(to_json(&e.versions)?)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            continue;
        }
        for item in &e.items {
            sqlx::query(
                "INSERT INTO exposure_items (request_id, position, doc_id, team) VALUES (?, ?, ?, ?)
                 ON CONFLICT DO NOTHING",
            )
            .bind(&e.request_id)
            .bind(i64::from(item.position))
            .bind(&item.doc_id)
            .bind(&item.team)
            .execute(&mut *tx)
            .await?;
        }
    }
    for s in shadows {
        sqlx::query(
            "INSERT INTO shadow_results
               (request_id, experiment_id, arm, doc_ids, jaccard, rbo, latency_ms, created_at, version)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(&s.request_id)
        .bind(&s.experiment_id)
        .bind(&s.arm)
        .bind(to_json(&s.doc_ids)?)
        .bind(s.jaccard)
        .bind(s.rbo)
        .bind(s.latency_ms)
        .bind(&at)
        .bind(&s.version)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn shown(pool: &SqlitePool, request_id: &str) -> Result<Option<Shown>, StoreError> {
    let Some(row) = sqlx::query("SELECT experiment_id, arm FROM exposures WHERE request_id = ?")
        .bind(request_id)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let items = sqlx::query("SELECT position, doc_id, team FROM exposure_items WHERE request_id = ? ORDER BY position")
        .bind(request_id)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            Ok(ExposureItem {
                position: r.try_get::<i64, _>("position")? as u32,
                doc_id: r.try_get("doc_id")?,
                team: r.try_get("team")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Some(Shown { experiment_id: row.try_get("experiment_id")?, arm: row.try_get("arm")?, items }))
}

pub(super) async fn add_feedback(
    pool: &SqlitePool,
    request_id: &str,
    doc_id: &str,
    event: &str,
    position: u32,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO feedback (request_id, doc_id, event, position, created_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT DO NOTHING",
    )
    .bind(request_id)
    .bind(doc_id)
    .bind(event)
    .bind(i64::from(position))
    .bind(now())
    .execute(pool)
    .await?
    .rows_affected();
    Ok(inserted > 0)
}

pub(super) async fn clicked(pool: &SqlitePool, request_id: &str) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar("SELECT doc_id FROM feedback WHERE request_id = ? AND event = 'click'")
        .bind(request_id)
        .fetch_all(pool)
        .await?)
}

pub(super) async fn arm_outcomes(pool: &SqlitePool, experiment_id: &str) -> Result<Vec<ArmOutcome>, StoreError> {
    // One row per (arm, versions); `seq` (insertion order) puts the version served first first.
    let rows = sqlx::query(
        "SELECT arm, versions, COUNT(*) AS impressions, SUM(clicked) AS clicked, SUM(converted) AS converted,
                SUM(rr) AS rr_sum, SUM(rr * rr) AS rr_squares, MIN(seq) AS first_seq
         FROM (
           SELECT e.arm AS arm, e.versions AS versions, e.rowid AS seq,
                  MAX(CASE WHEN f.event = 'click' THEN 1 ELSE 0 END) AS clicked,
                  MAX(CASE WHEN f.event = 'conversion' THEN 1 ELSE 0 END) AS converted,
                  COALESCE(1.0 / MIN(CASE WHEN f.event = 'click' THEN f.position END), 0.0) AS rr
           FROM exposures e LEFT JOIN feedback f ON f.request_id = e.request_id
           WHERE e.experiment_id = ?
           GROUP BY e.request_id
         ) GROUP BY arm, versions ORDER BY arm, first_seq",
    )
    .bind(experiment_id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ArmOutcome {
                arm: r.try_get("arm")?,
                versions: versions_of(r)?,
                impressions: r.try_get::<i64, _>("impressions")? as u64,
                clicked: r.try_get::<i64, _>("clicked")? as u64,
                converted: r.try_get::<i64, _>("converted")? as u64,
                rr_sum: r.try_get("rr_sum")?,
                rr_squares: r.try_get("rr_squares")?,
            })
        })
        .collect()
}

pub(super) async fn interleave_counts(
    pool: &SqlitePool,
    experiment_id: &str,
    teams: [&str; 2],
) -> Result<Vec<InterleaveCounts>, StoreError> {
    let rows = sqlx::query(
        "SELECT versions, COUNT(*) AS impressions,
                SUM(a > b) AS wins_a, SUM(b > a) AS wins_b,
                SUM(a = b AND a > 0) AS ties, SUM(a = 0 AND b = 0) AS no_click,
                SUM(a) AS clicks_a, SUM(b) AS clicks_b, MIN(seq) AS first_seq
         FROM (
           SELECT e.request_id, e.versions AS versions, e.rowid AS seq,
                  COALESCE(SUM(i.team = ?), 0) AS a, COALESCE(SUM(i.team = ?), 0) AS b
           FROM exposures e
           LEFT JOIN feedback f ON f.request_id = e.request_id AND f.event = 'click'
           LEFT JOIN exposure_items i ON i.request_id = f.request_id AND i.doc_id = f.doc_id
           WHERE e.experiment_id = ?
           GROUP BY e.request_id
         ) GROUP BY versions ORDER BY first_seq",
    )
    .bind(teams[0])
    .bind(teams[1])
    .bind(experiment_id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let get = |name: &str| -> Result<u64, StoreError> { Ok(row.try_get::<i64, _>(name)? as u64) };
            Ok(InterleaveCounts {
                versions: versions_of(row)?,
                impressions: get("impressions")?,
                wins: [get("wins_a")?, get("wins_b")?],
                ties: get("ties")?,
                no_click: get("no_click")?,
                clicks: [get("clicks_a")?, get("clicks_b")?],
            })
        })
        .collect()
}

pub(super) async fn latencies(pool: &SqlitePool, experiment_id: &str) -> Result<Vec<ExposureLatency>, StoreError> {
    let rows = sqlx::query("SELECT arm, versions, latency_ms FROM exposures WHERE experiment_id = ?")
        .bind(experiment_id)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(ExposureLatency {
                arm: r.try_get("arm")?,
                versions: versions_of(r)?,
                latency_ms: r.try_get("latency_ms")?,
            })
        })
        .collect()
}

pub(super) async fn shadow_rows(pool: &SqlitePool, experiment_id: &str) -> Result<Vec<ShadowRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT version, jaccard, rbo, latency_ms FROM shadow_results WHERE experiment_id = ? ORDER BY rowid",
    )
    .bind(experiment_id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ShadowRow {
                version: r.try_get("version")?,
                jaccard: r.try_get("jaccard")?,
                rbo: r.try_get("rbo")?,
                latency_ms: r.try_get("latency_ms")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::SqliteStore;
    use crate::store::{Experiment, Mode, Promotion, Status, Store};

    #[tokio::test]
    async fn a_stored_promotion_is_never_replaced_or_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("duet.db")).await.unwrap();
        let promotion = |model: &str| Promotion {
            arm: model.into(),
            model: model.into(),
            version: "0123456789ab".into(),
            promoted_at: "2025-01-01T00:00:00.000Z".into(),
            report: serde_json::json!({"arms": []}),
        };
        let mut e = Experiment {
            id: "e1".into(),
            name: "e".into(),
            mode: Mode::Ab,
            status: Status::Stopped,
            arms: Vec::new(),
            salt: "s".into(),
            default: false,
            created_at: "2025-01-01T00:00:00.000Z".into(),
            updated_at: "2025-01-01T00:00:00.000Z".into(),
            started_at: None,
            stopped_at: None,
            promotion: None,
        };
        store.save_experiment(&e).await.unwrap();
        assert_eq!(store.experiments().await.unwrap()[0].promotion, None);
        e.promotion = Some(promotion("first"));
        store.save_experiment(&e).await.unwrap();
        for later in [Some(promotion("second")), None] {
            e.promotion = later;
            store.save_experiment(&e).await.unwrap();
            assert_eq!(store.experiments().await.unwrap()[0].promotion, Some(promotion("first")));
        }
    }
}
