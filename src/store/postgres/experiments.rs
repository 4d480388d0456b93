//! The SQL of the experiments in the PostgreSQL store: experiment definitions (with their promotion), exposures
//! with the model versions that served them, shadow comparisons, feedback, and the sums a report reads, with the
//! SQLite store's semantics (insertion order is the `seq` column where SQLite uses the rowid; NULL arms sort
//! first; sums come back as BIGINT and DOUBLE PRECISION). Exposures, their items and shadow comparisons are
//! written in bulk through `UNNEST`. The [`super::PgStore`] trait methods delegate here.

use std::collections::HashSet;

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::super::records::{
    Arm, ArmOutcome, Experiment, ExposureItem, ExposureLatency, ExposureRecord, InterleaveCounts, Mode, Promotion,
    ShadowRecord, ShadowRow, Shown, Status, Versions,
};
use super::super::{ChangeKind, StoreError};
use super::BATCH_ROWS;
use crate::util::now;

/// The advisory lock `save_experiment` holds for its transaction: unsetting the previous default and setting the
/// new one is one step, as under SQLite's single writer (two concurrent saves of different defaults would
/// otherwise collide on the one-default index).
const EXPERIMENTS_LOCK: i64 = 0x6475_6574_6578_7073; // "duetexps"

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|err| StoreError::Corrupt(err.to_string()))
}

/// The `versions` column: a JSON object, arm name → model version.
fn versions_of(row: &PgRow) -> Result<Versions, StoreError> {
    let text: &str = row.try_get("versions")?;
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("exposure versions {text:?} are not JSON: {e}")))
}

fn experiment_from_row(row: &PgRow) -> Result<Experiment, StoreError> {
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
        default: row.try_get("is_default")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        started_at: row.try_get("started_at")?,
        stopped_at: row.try_get("stopped_at")?,
        promotion,
        id,
    })
}

pub(super) async fn experiments(pool: &PgPool) -> Result<Vec<Experiment>, StoreError> {
    let rows = sqlx::query("SELECT * FROM experiments ORDER BY created_at, id").fetch_all(pool).await?;
    rows.iter().map(experiment_from_row).collect()
}

pub(super) async fn save_experiment(pool: &PgPool, e: &Experiment, origin: &str) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(EXPERIMENTS_LOCK).execute(&mut *tx).await?;
    if e.default {
        sqlx::query("UPDATE experiments SET is_default = FALSE WHERE is_default AND id <> $1")
            .bind(&e.id)
            .execute(&mut *tx)
            .await?;
    }
    let promotion = e.promotion.as_ref().map(to_json).transpose()?;
    sqlx::query(
        "INSERT INTO experiments
           (id, name, mode, status, arms, salt, is_default, created_at, updated_at, started_at, stopped_at, promotion)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
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
    .bind(e.default)
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

/// The records with distinct request ids, the first of each kept (a request id already logged is ignored, as a
/// later duplicate in the same batch is), in their order.
fn first_per_request<T>(records: &[T], request_id: impl Fn(&T) -> &str) -> Vec<&T> {
    let mut seen = HashSet::new();
    records.iter().filter(|r| seen.insert(request_id(r))).collect()
}

pub(super) async fn write_exposures(
    pool: &PgPool,
    exposures: &[ExposureRecord],
    shadows: &[ShadowRecord],
) -> Result<(), StoreError> {
    let at = now();
    let mut tx = pool.begin().await?;
    let exposures = first_per_request(exposures, |e| e.request_id.as_str());
    for chunk in exposures.chunks(BATCH_ROWS) {
        let request_ids: Vec<&str> = chunk.iter().map(|e| e.request_id.as_str()).collect();
        let experiment_ids: Vec<&str> = chunk.iter().map(|e| e.experiment_id.as_str()).collect();
        let unit_ids: Vec<&str> = chunk.iter().map(|e| e.unit_id.as_str()).collect();
        let arms: Vec<Option<&str>> = chunk.iter().map(|e| e.arm.as_deref()).collect();
        let queries: Vec<&str> = chunk.iter().map(|e| e.query.as_str()).collect();
        let latencies: Vec<f64> = chunk.iter().map(|e| e.latency_ms).collect();
        let versions: Vec<String> = chunk.iter().map(|e| to_json(&e.versions)).collect::<Result<_, _>>()?;
        // In input order (WITH ORDINALITY), so `seq` is the order they were served in.
        let inserted: Vec<String> = sqlx::query_scalar(
            "INSERT INTO exposures (request_id, experiment_id, unit_id, arm, query, latency_ms, created_at, versions)
             SELECT request_id, experiment_id, unit_id, arm, query, latency_ms, $8, versions
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::float8[], $7::text[])
               WITH ORDINALITY AS t(request_id, experiment_id, unit_id, arm, query, latency_ms, versions, n)
             ORDER BY n
             ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
        )
        .bind(&request_ids)
        .bind(&experiment_ids)
        .bind(&unit_ids)
        .bind(&arms)
        .bind(&queries)
        .bind(&latencies)
        .bind(&versions)
        .bind(&at)
        .fetch_all(&mut *tx)
        .await?;
        // The items of the exposures logged now only.
        let inserted: HashSet<String> = inserted.into_iter().collect();
        let items: Vec<(&str, &ExposureItem)> = chunk
            .iter()
            .filter(|e| inserted.contains(&e.request_id))
            .flat_map(|e| e.items.iter().map(move |item| (e.request_id.as_str(), item)))
            .collect();
        for items in items.chunks(BATCH_ROWS) {
            let request_ids: Vec<&str> = items.iter().map(|(r, _)| *r).collect();
            let positions: Vec<i32> = items.iter().map(|(_, i)| i.position as i32).collect();
            let doc_ids: Vec<&str> = items.iter().map(|(_, i)| i.doc_id.as_str()).collect();
            let teams: Vec<&str> = items.iter().map(|(_, i)| i.team.as_str()).collect();
            sqlx::query(
                "INSERT INTO exposure_items (request_id, position, doc_id, team)
                 SELECT * FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::text[])
                 ON CONFLICT DO NOTHING",
            )
            .bind(&request_ids)
            .bind(&positions)
            .bind(&doc_ids)
            .bind(&teams)
            .execute(&mut *tx)
            .await?;
        }
    }
    let shadows = first_per_request(shadows, |s| s.request_id.as_str());
    for chunk in shadows.chunks(BATCH_ROWS) {
        let request_ids: Vec<&str> = chunk.iter().map(|s| s.request_id.as_str()).collect();
        let experiment_ids: Vec<&str> = chunk.iter().map(|s| s.experiment_id.as_str()).collect();
        let arms: Vec<&str> = chunk.iter().map(|s| s.arm.as_str()).collect();
        let doc_ids: Vec<String> = chunk.iter().map(|s| to_json(&s.doc_ids)).collect::<Result<_, _>>()?;
        let jaccards: Vec<f64> = chunk.iter().map(|s| s.jaccard).collect();
        let rbos: Vec<f64> = chunk.iter().map(|s| s.rbo).collect();
        let latencies: Vec<f64> = chunk.iter().map(|s| s.latency_ms).collect();
        let versions: Vec<&str> = chunk.iter().map(|s| s.version.as_str()).collect();
        sqlx::query(
            "INSERT INTO shadow_results
               (request_id, experiment_id, arm, doc_ids, jaccard, rbo, latency_ms, created_at, version)
             SELECT request_id, experiment_id, arm, doc_ids, jaccard, rbo, latency_ms, $9, version
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::float8[], $7::float8[],
                         $8::text[])
               WITH ORDINALITY AS t(request_id, experiment_id, arm, doc_ids, jaccard, rbo, latency_ms, version, n)
             ORDER BY n
             ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(&request_ids)
        .bind(&experiment_ids)
        .bind(&arms)
        .bind(&doc_ids)
        .bind(&jaccards)
        .bind(&rbos)
        .bind(&latencies)
        .bind(&versions)
        .bind(&at)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn shown(pool: &PgPool, request_id: &str) -> Result<Option<Shown>, StoreError> {
    let Some(row) = sqlx::query("SELECT experiment_id, arm FROM exposures WHERE request_id = $1")
        .bind(request_id)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let items =
        sqlx::query("SELECT position, doc_id, team FROM exposure_items WHERE request_id = $1 ORDER BY position")
            .bind(request_id)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| {
                Ok(ExposureItem {
                    position: r.try_get::<i32, _>("position")? as u32,
                    doc_id: r.try_get("doc_id")?,
                    team: r.try_get("team")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Some(Shown { experiment_id: row.try_get("experiment_id")?, arm: row.try_get("arm")?, items }))
}

pub(super) async fn add_feedback(
    pool: &PgPool,
    request_id: &str,
    doc_id: &str,
    event: &str,
    position: u32,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO feedback (request_id, doc_id, event, position, created_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT DO NOTHING",
    )
    .bind(request_id)
    .bind(doc_id)
    .bind(event)
    .bind(position as i32)
    .bind(now())
    .execute(pool)
    .await?
    .rows_affected();
    Ok(inserted > 0)
}

pub(super) async fn clicked(pool: &PgPool, request_id: &str) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar("SELECT doc_id FROM feedback WHERE request_id = $1 AND event = 'click' ORDER BY doc_id")
        .bind(request_id)
        .fetch_all(pool)
        .await?)
}

pub(super) async fn arm_outcomes(pool: &PgPool, experiment_id: &str) -> Result<Vec<ArmOutcome>, StoreError> {
    // One row per (arm, versions); `seq` (insertion order) puts the version served first first. NULLS FIRST:
    // SQLite sorts a NULL arm (interleaved impressions) before the named ones.
    let rows = sqlx::query(
        "SELECT arm, versions, COUNT(*) AS impressions, SUM(clicked)::bigint AS clicked,
                SUM(converted)::bigint AS converted, SUM(rr)::float8 AS rr_sum, SUM(rr * rr)::float8 AS rr_squares,
                MIN(seq) AS first_seq
         FROM (
           SELECT e.arm AS arm, e.versions AS versions, e.seq AS seq,
                  MAX(CASE WHEN f.event = 'click' THEN 1 ELSE 0 END) AS clicked,
                  MAX(CASE WHEN f.event = 'conversion' THEN 1 ELSE 0 END) AS converted,
                  COALESCE(1.0::float8 / MIN(CASE WHEN f.event = 'click' THEN f.position END), 0.0::float8) AS rr
           FROM exposures e LEFT JOIN feedback f ON f.request_id = e.request_id
           WHERE e.experiment_id = $1
           GROUP BY e.request_id
         ) AS impressions
         GROUP BY arm, versions ORDER BY arm NULLS FIRST, first_seq",
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
    pool: &PgPool,
    experiment_id: &str,
    teams: [&str; 2],
) -> Result<Vec<InterleaveCounts>, StoreError> {
    let rows = sqlx::query(
        "SELECT versions, COUNT(*) AS impressions,
                COUNT(*) FILTER (WHERE a > b) AS wins_a, COUNT(*) FILTER (WHERE b > a) AS wins_b,
                COUNT(*) FILTER (WHERE a = b AND a > 0) AS ties, COUNT(*) FILTER (WHERE a = 0 AND b = 0) AS no_click,
                SUM(a)::bigint AS clicks_a, SUM(b)::bigint AS clicks_b, MIN(seq) AS first_seq
         FROM (
           SELECT e.request_id, e.versions AS versions, e.seq AS seq,
                  COUNT(*) FILTER (WHERE i.team = $1) AS a, COUNT(*) FILTER (WHERE i.team = $2) AS b
           FROM exposures e
           LEFT JOIN feedback f ON f.request_id = e.request_id AND f.event = 'click'
           LEFT JOIN exposure_items i ON i.request_id = f.request_id AND i.doc_id = f.doc_id
           WHERE e.experiment_id = $3
           GROUP BY e.request_id
         ) AS impressions
         GROUP BY versions ORDER BY first_seq",
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

pub(super) async fn latencies(pool: &PgPool, experiment_id: &str) -> Result<Vec<ExposureLatency>, StoreError> {
    // The order SQLite reads them in (its index on experiment and arm): by arm, a NULL arm first, then as logged.
    let rows = sqlx::query(
        "SELECT arm, versions, latency_ms FROM exposures WHERE experiment_id = $1 ORDER BY arm NULLS FIRST, seq",
    )
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

pub(super) async fn shadow_rows(pool: &PgPool, experiment_id: &str) -> Result<Vec<ShadowRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT version, jaccard, rbo, latency_ms FROM shadow_results WHERE experiment_id = $1 ORDER BY seq",
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
