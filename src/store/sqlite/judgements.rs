//! The SQL of human judgements in the SQLite store: the grade of a feedback event, the graded feedback of an
//! experiment (with the query of its search), and every interleaved impression with the clicks credited to each
//! team, oldest first, for the report's timeline. The [`super::SqliteStore`] trait methods delegate here.

use sqlx::{Row, SqlitePool};

use super::super::records::{GradedFeedback, InterleaveImpression};
use super::super::StoreError;

pub(super) async fn set_feedback_grade(
    pool: &SqlitePool,
    request_id: &str,
    doc_id: &str,
    event: &str,
    grade: f64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE feedback SET grade = ? WHERE request_id = ? AND doc_id = ? AND event = ?")
        .bind(grade)
        .bind(request_id)
        .bind(doc_id)
        .bind(event)
        .execute(pool)
        .await?;
    Ok(())
}

pub(super) async fn graded_feedback(pool: &SqlitePool, experiment_id: &str) -> Result<Vec<GradedFeedback>, StoreError> {
    let rows = sqlx::query(
        "SELECT e.query AS query, f.doc_id AS doc_id, f.grade AS grade
         FROM feedback f JOIN exposures e ON e.request_id = f.request_id
         WHERE e.experiment_id = ? AND f.grade IS NOT NULL
         ORDER BY e.query, f.doc_id, f.request_id, f.event",
    )
    .bind(experiment_id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(GradedFeedback { query: r.try_get("query")?, doc_id: r.try_get("doc_id")?, grade: r.try_get("grade")? })
        })
        .collect()
}

pub(super) async fn interleave_impressions(
    pool: &SqlitePool,
    experiment_id: &str,
    teams: [&str; 2],
) -> Result<Vec<InterleaveImpression>, StoreError> {
    // The same join as the report's interleaving counts, one row per impression.
    let rows = sqlx::query(
        "SELECT e.created_at AS at, COALESCE(SUM(i.team = ?), 0) AS a, COALESCE(SUM(i.team = ?), 0) AS b
         FROM exposures e
         LEFT JOIN feedback f ON f.request_id = e.request_id AND f.event = 'click'
         LEFT JOIN exposure_items i ON i.request_id = f.request_id AND i.doc_id = f.doc_id
         WHERE e.experiment_id = ?
         GROUP BY e.request_id ORDER BY e.created_at, e.rowid",
    )
    .bind(teams[0])
    .bind(teams[1])
    .bind(experiment_id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let clicks = [r.try_get::<i64, _>("a")? as u64, r.try_get::<i64, _>("b")? as u64];
            Ok(InterleaveImpression { at: r.try_get("at")?, clicks })
        })
        .collect()
}
