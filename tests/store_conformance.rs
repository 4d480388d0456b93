//! One conformance suite for every store: each case below runs against SQLite (a temporary file) and against
//! PostgreSQL (a brand-new database on the test server, tests/common/postgres.rs), through `Arc<dyn Store>`
//! obtained from `duet::store::open` only, so that what a user relies on holds whichever store is configured.
//! `conformance!` turns each case into `sqlite::CASE` and `postgres::CASE`. The cases live in the submodules
//! by subject: documents and embeddings, experiments and their reports, the model registry, the change feed
//! and durability.

mod common;

#[path = "store_conformance/documents.rs"]
mod documents;
#[path = "store_conformance/experiments.rs"]
mod experiments;
#[path = "store_conformance/feed.rs"]
mod feed;
#[path = "store_conformance/judgements.rs"]
mod judgements;
#[path = "store_conformance/registry.rs"]
mod registry;

use std::sync::Arc;
use std::time::{Duration, Instant};

use duet::store::{
    content_hash, open, Arm, Experiment, ExposureItem, ExposureRecord, Mode, ModelVersion, NewDocument, NewEmbedding,
    PostgresSettings, Status, Store, StoreLocation, VersionState,
};
use serde_json::Value;

use documents::*;
use experiments::*;
use feed::*;
use judgements::*;
use registry::*;

/// Where a case's store lives: it can be opened again (by another handle, or after a close).
pub struct Place {
    pub location: StoreLocation,
    _dir: Option<tempfile::TempDir>,
}

impl Place {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        Self { location: StoreLocation::Sqlite(dir.path().join("duet.db")), _dir: Some(dir) }
    }

    async fn postgres() -> Self {
        Self { location: StoreLocation::Postgres(common::postgres::fresh_database().await), _dir: None }
    }

    pub async fn open(&self) -> Arc<dyn Store> {
        open(&self.location, &settings())
            .await
            .unwrap_or_else(|err| panic!("opening the store at {}: {}", self.location, duet::util::error_chain(&err)))
    }
}

fn settings() -> PostgresSettings {
    PostgresSettings { pool_size: 4, ..PostgresSettings::default() }
}

/// What a case is given: an open store, or the place (to open it as often as it likes).
macro_rules! given {
    (store, $place:ident) => {
        $place.open().await
    };
    (place, $place:ident) => {
        $place
    };
}

/// `CASE(store)` or `CASE(place)` → `sqlite::CASE` and `postgres::CASE`, each calling `CASE` with a store
/// (or place) of its kind.
macro_rules! conformance {
    ($($case:ident($given:ident)),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let place = super::Place::sqlite();
                    super::$case(given!($given, place)).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let place = super::Place::postgres().await;
                    super::$case(given!($given, place)).await;
                }
            )*
        }
    };
}

conformance! {
    documents_round_trip(store),
    embeddings_are_kept_per_model_version(store),
    missing_embeddings_page_by_id_in_byte_order(store),
    documents_after_pages_every_document_in_byte_order(store),
    many_ids_are_read_at_once(store),
    experiments_life_cycle(store),
    exposures_are_logged_once_per_request(store),
    feedback_is_recorded_once_per_request_document_and_event(store),
    reports_sum_outcomes_per_arm_and_versions(store),
    interleave_counts_credit_the_clicked_team(store),
    feedback_grades_are_kept_and_replaced(store),
    interleaved_impressions_are_listed_oldest_first(store),
    model_versions_and_their_events(store),
    a_model_has_one_ready_version(store),
    purging_a_version_removes_its_embeddings(store),
    settings_are_read_and_overwritten(store),
    every_write_appends_to_the_change_feed(store),
    pruning_the_change_feed_keeps_the_latest_change(store),
    two_handles_see_each_others_changes(place),
    data_survives_close_and_reopen(place),
    ping_answers(store),
}

// Outside the macro: cases about opening itself, and a PostgreSQL server going away.

#[tokio::test]
async fn opening_postgres_fails_fast_when_the_server_is_not_listening() {
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_port = refused.local_addr().unwrap().port();
    drop(refused);
    // A listener that never answers: the connection is made, the server's greeting never comes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let settings = PostgresSettings { acquire_timeout_ms: 1_000, ..PostgresSettings::default() };
    for port in [refused_port, silent_port] {
        let location: StoreLocation = format!("postgres://postgres@127.0.0.1:{port}/duet").parse().unwrap();
        let started = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(20), open(&location, &settings)).await;
        let elapsed = started.elapsed();
        let Ok(result) = result else { panic!("opening {location} still hangs after 20 s") };
        assert!(result.is_err(), "opening {location} succeeded");
        assert!(elapsed < Duration::from_secs(5), "opening {location} took {elapsed:?} to fail");
    }
    drop(silent);
}

/// PostgreSQL only: a server that goes away and comes back (a restart, a fail-over) makes the store unavailable
/// (an error that says so, quickly) and then usable again, without reopening it.
#[tokio::test]
async fn a_postgres_store_answers_again_after_the_server_restarts() {
    let cluster = common::postgres::PgCluster::start();
    let location = StoreLocation::Postgres(cluster.fresh_database().await);
    let settings = PostgresSettings { acquire_timeout_ms: 1_000, ..settings() };
    let store = open(&location, &settings)
        .await
        .unwrap_or_else(|err| panic!("opening the store at {location}: {}", duet::util::error_chain(&err)));
    store.upsert(&[doc("a", "alpha", serde_json::json!({}))], &[]).await.unwrap();

    cluster.stop();
    let started = Instant::now();
    let err = store.ping().await.expect_err("the server is down");
    assert!(err.is_unavailable(), "{err}");
    let err = store.upsert(&[doc("b", "beta", serde_json::json!({}))], &[]).await.expect_err("down");
    assert!(err.is_unavailable(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "failing took {:?}", started.elapsed());

    cluster.start_again();
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Err(err) = store.ping().await {
        assert!(Instant::now() < deadline, "the store does not answer again: {err}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.get("a").await.unwrap().map(|d| d.text), Some("alpha".into()));
    store.upsert(&[doc("b", "beta", serde_json::json!({}))], &[]).await.unwrap();
    assert_eq!(store.count().await.unwrap(), 2);
    store.close().await;
}

#[test]
fn store_urls_of_other_schemes_are_refused() {
    for url in ["mysql://x/y", "redis://localhost:6379", "mongodb://u:secret@h/db"] {
        let err = url.parse::<StoreLocation>().expect_err(url).to_string();
        assert!(err.contains("not supported") && err.contains("postgres://"), "{url}: {err}");
        assert!(!err.contains("secret"), "the password is not repeated: {err}");
    }
    assert!(matches!("postgresql://h/db".parse::<StoreLocation>(), Ok(StoreLocation::Postgres(_))));
    assert!(matches!("sqlite://data/duet.db".parse::<StoreLocation>(), Ok(StoreLocation::Sqlite(_))));
}

// The records the cases write.

fn doc(id: &str, text: &str, metadata: Value) -> NewDocument {
    NewDocument { id: id.into(), text: text.into(), metadata }
}

/// An embedding of `text` (the document's current text, or an older one for a stale embedding).
fn emb(model: &str, version: &str, id: &str, text: &str, vector: &[f32]) -> NewEmbedding {
    NewEmbedding {
        model: model.into(),
        model_version: version.into(),
        document_id: id.into(),
        content_hash: content_hash(text),
        vector: vector.to_vec(),
    }
}

/// Vectors compared bit for bit.
fn bits(vector: &[f32]) -> Vec<u32> {
    vector.iter().map(|x| x.to_bits()).collect()
}

/// `embeddings()` of a model version, by id, bit for bit.
async fn stored(store: &Arc<dyn Store>, model: &str, version: &str) -> Vec<(String, Vec<u32>)> {
    let mut all: Vec<_> =
        store.embeddings(model, version).await.unwrap().into_iter().map(|(id, v)| (id, bits(&v))).collect();
    all.sort();
    all
}

fn ids(documents: &[duet::store::Document]) -> Vec<&str> {
    documents.iter().map(|d| d.id.as_str()).collect()
}

/// A timestamp of second `n` of 2025-01-01 (distinct and ordered, for records the caller dates).
fn at(n: u32) -> String {
    format!("2025-01-01T00:{:02}:{:02}.000Z", n / 60, n % 60)
}

/// Waits until the wall clock (at Duet's millisecond resolution) is past `t`, so the next write is later.
async fn wait_until_after(t: &str) {
    while duet::util::now().as_str() <= t {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn experiment(id: &str, created: u32) -> Experiment {
    Experiment {
        id: id.into(),
        name: format!("experiment {id}"),
        mode: Mode::Ab,
        status: Status::Draft,
        arms: vec![
            Arm { name: "control".into(), model: "tiny-two-tower".into(), weight: 0.25 },
            Arm { name: "treatment".into(), model: "tiny-llm".into(), weight: 0.75 },
        ],
        salt: format!("salt of {id}"),
        default: false,
        created_at: at(created),
        updated_at: at(created),
        started_at: None,
        stopped_at: None,
        promotion: None,
    }
}

/// An exposure: `items` as (position, document, team), `versions` as (arm, version).
fn exposure(
    request: &str,
    experiment: &str,
    arm: Option<&str>,
    items: &[(u32, &str, &str)],
    versions: &[(&str, &str)],
    latency_ms: f64,
) -> ExposureRecord {
    ExposureRecord {
        request_id: request.into(),
        experiment_id: experiment.into(),
        experiment_name: format!("experiment {experiment}"),
        unit_id: format!("unit of {request}"),
        arm: arm.map(Into::into),
        query: format!("query of {request}"),
        latency_ms,
        items: items
            .iter()
            .map(|&(position, doc_id, team)| ExposureItem { position, doc_id: doc_id.into(), team: team.into() })
            .collect(),
        versions: versions.iter().map(|&(arm, version)| (arm.to_string(), version.to_string())).collect(),
    }
}

fn version(model: &str, version: &str, state: VersionState, created: u32, since: u32) -> ModelVersion {
    ModelVersion {
        model: model.into(),
        version: version.into(),
        path: format!("models/{model}"),
        state,
        reason: None,
        since: at(since),
        created_at: at(created),
        retired_at: None,
        purged_at: None,
    }
}

async fn ping_answers(store: Arc<dyn Store>) {
    store.ping().await.expect("ping");
    store.close().await;
}
