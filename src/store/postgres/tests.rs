//! Round trips of the PostgreSQL store against a real server: each test creates a fresh database
//! (`duet_<uuid>`) on the server named by `DUET_TEST_POSTGRES` (e.g. `postgres://postgres@127.0.0.1:5432/postgres`)
//! and drops it at the end. Where the same calls can run on SQLite, the outcomes are compared with the SQLite
//! store's. Without `DUET_TEST_POSTGRES`, the integration tests' harness starts a throw-away cluster for this
//! process (and stops it at exit); without PostgreSQL installed they fail, saying to run scripts/setup --test.

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::postgres::PgConnectOptions;

use super::PgStore;

/// The integration tests' PostgreSQL harness, shared rather than copied.
#[path = "../../../tests/common/postgres.rs"]
#[allow(dead_code)]
mod harness;

/// The repository root (the harness finds scripts/pg-cluster from it).
fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
use crate::store::registry::{ModelRegistry, ModelVersion, VersionState};
use crate::store::{
    content_hash, Arm, ChangeKind, Experiment, ExposureItem, ExposureRecord, Mode, NewDocument, NewEmbedding,
    PostgresSettings, Promotion, ShadowRecord, SqliteStore, Status, Store, StoreError,
};

/// A fresh database on the test server, with a store connected to it.
struct TestDb {
    server: String,
    name: String,
    store: PgStore,
}

async fn fresh() -> TestDb {
    let server = harness::server_url();
    let name = format!("duet_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&server).await.expect("DUET_TEST_POSTGRES answers");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.unwrap();
    admin.close().await;
    let options = PgConnectOptions::from_str(&server).unwrap().database(&name);
    let settings = PostgresSettings { pool_size: 12, ..PostgresSettings::default() };
    let store = PgStore::connect_with(options, &name, &settings).await.unwrap();
    TestDb { server, name, store }
}

impl TestDb {
    async fn drop_database(self) {
        self.store.close().await;
        let admin = sqlx::PgPool::connect(&self.server).await.unwrap();
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name)).execute(&admin).await.unwrap();
        admin.close().await;
    }
}

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

fn ids(docs: &[crate::store::Document]) -> Vec<&str> {
    docs.iter().map(|d| d.id.as_str()).collect()
}

#[tokio::test]
async fn a_connection_failure_is_open_and_names_the_url_without_its_password() {
    let settings = PostgresSettings { acquire_timeout_ms: 500, ..PostgresSettings::default() };
    let Err(err) = PgStore::connect("postgres://duet:hunter2@127.0.0.1:1/duet", &settings).await else {
        panic!("nothing listens on port 1");
    };
    let text = crate::util::error_chain(&err);
    assert!(matches!(err, StoreError::Open { .. }), "{text}");
    assert!(text.contains("postgres://duet:***@127.0.0.1:1/duet") && !text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn documents_and_embeddings_round_trip_go_stale_and_cascade() {
    let db = fresh().await;
    let store = &db.store;
    let timeout: String = sqlx::query_scalar("SHOW statement_timeout").fetch_one(&store.pool).await.unwrap();
    assert_eq!(timeout, "30s", "every connection carries the statement timeout");
    store
        .upsert(
            &[doc("a", "alpha"), doc("b", "beta")],
            &[emb("m", "a", "alpha", vec![1.0, -2.5]), emb("m", "b", "beta", vec![0.5, f32::MIN_POSITIVE])],
        )
        .await
        .unwrap();
    assert_eq!(store.count().await.unwrap(), 2);
    let mut embs = store.embeddings("m", "v1").await.unwrap();
    embs.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(embs, vec![("a".into(), vec![1.0, -2.5]), ("b".into(), vec![0.5, f32::MIN_POSITIVE])]);
    assert!(store.embeddings("m", "v2").await.unwrap().is_empty(), "another version has nothing");

    // Metadata comes back equal, whatever it holds.
    let metadata = json!({"z": [1, 2.5, -0.1, 1e300, u64::MAX], "a": {"ü": "\u{0}x\"\\"}, "n": null, "t": true});
    store
        .upsert(&[NewDocument { id: "c".into(), text: "gamma".into(), metadata: metadata.clone() }], &[])
        .await
        .unwrap();
    assert_eq!(store.get("c").await.unwrap().unwrap().metadata, metadata);

    // New text for b without a new embedding: stale, and missing; created_at is kept.
    let b_before = store.get("b").await.unwrap().unwrap();
    store.upsert(&[doc("b", "beta two")], &[]).await.unwrap();
    let b_after = store.get("b").await.unwrap().unwrap();
    assert_eq!((b_after.text.as_str(), &b_after.created_at), ("beta two", &b_before.created_at));
    assert_eq!(store.embeddings("m", "v1").await.unwrap().len(), 1);
    assert_eq!(ids(&store.missing_embeddings("m", "v1", None, 10).await.unwrap()), ["b", "c"]);
    let of = store.embeddings_of("m", "v1", &["a".into(), "b".into(), "zz".into()]).await.unwrap();
    assert_eq!(of, HashMap::from([("a".to_string(), vec![1.0, -2.5])]), "only valid embeddings");
    let (stored, missing) = store.embedding_counts("m", "v1").await.unwrap();
    assert_eq!((stored, missing), (1, 2));

    // Duplicate ids in one call: the last wins, nothing fails.
    store
        .upsert(
            &[doc("d", "first"), doc("d", "second")],
            &[emb("m", "d", "first", vec![1.0]), emb("m", "d", "second", vec![2.0])],
        )
        .await
        .unwrap();
    assert_eq!(store.get("d").await.unwrap().unwrap().text, "second");
    assert_eq!(store.embeddings_of("m", "v1", &["d".into()]).await.unwrap()["d"], vec![2.0]);
    store.put_embeddings(&[emb("m", "b", "beta two", vec![3.0]), emb("m", "b", "beta two", vec![4.0])]).await.unwrap();
    assert_eq!(store.embeddings_of("m", "v1", &["b".into()]).await.unwrap()["b"], vec![4.0]);
    assert!(store.put_embeddings(&[emb("m", "nobody", "x", vec![1.0])]).await.is_err(), "a document must exist");

    assert!(store.delete("a").await.unwrap());
    assert!(!store.delete("a").await.unwrap());
    assert!(store.embeddings_of("m", "v1", &["a".into()]).await.unwrap().is_empty(), "embeddings cascade");
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM embeddings WHERE document_id = 'a'")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let many = store.get_many(&["a".into(), "b".into(), "c".into()]).await.unwrap();
    assert_eq!(many.keys().collect::<BTreeSet<_>>(), BTreeSet::from([&"b".to_string(), &"c".to_string()]));
    let fp = store.fingerprints(&["b".into()]).await.unwrap();
    assert_eq!(fp["b"].content_hash, content_hash("beta two"));
    db.drop_database().await;
}

#[tokio::test]
async fn paging_by_id_is_in_byte_order_like_sqlite() {
    let db = fresh().await;
    let store = &db.store;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("duet.db")).await.unwrap();
    // Case, accents, punctuation and digits: locale collations order these differently from bytes.
    let mut names: Vec<String> = ["B", "a", "ä", "Z", "_x", "a-b", "ab", "A b", "10", "9", "é", "e", "~"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // And more than one bulk statement's worth.
    names.extend((0..2_500).map(|i| format!("n{i}")));
    let docs: Vec<NewDocument> = names.iter().map(|id| doc(id, &format!("text of {id}"))).collect();
    let embs: Vec<NewEmbedding> =
        names.iter().step_by(3).map(|id| emb("m", id, &format!("text of {id}"), vec![1.0, 0.0])).collect();
    for s in [store as &dyn Store, &sqlite as &dyn Store] {
        s.upsert(&docs, &embs).await.unwrap();
    }
    let mut sorted = names.clone();
    sorted.sort();
    for s in [store as &dyn Store, &sqlite as &dyn Store] {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = s.documents_after(after.as_deref(), 7).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            all.extend(page.into_iter().map(|d| d.id));
        }
        assert_eq!(all, sorted, "documents_after pages every document once, in byte order");
        let mut missing = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = s.missing_embeddings("m", "v1", after.as_deref(), 500).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            missing.extend(page.into_iter().map(|d| d.id));
        }
        let with: BTreeSet<&String> = names.iter().step_by(3).collect();
        let expected: Vec<String> = sorted.iter().filter(|id| !with.contains(id)).cloned().collect();
        assert_eq!(missing, expected);
    }
    assert_eq!(store.embeddings("m", "v1").await.unwrap().len(), embs.len());
    let wanted: Vec<String> = names.iter().take(40).cloned().collect();
    assert_eq!(
        store.embeddings_of("m", "v1", &wanted).await.unwrap(),
        sqlite.embeddings_of("m", "v1", &wanted).await.unwrap()
    );
    sqlite.close().await;
    db.drop_database().await;
}

fn experiment(id: &str, mode: Mode, default: bool) -> Experiment {
    Experiment {
        id: id.into(),
        name: format!("name-{id}"),
        mode,
        status: Status::Running,
        arms: vec![
            Arm { name: "control".into(), model: "m".into(), weight: 0.5 },
            Arm { name: "treatment".into(), model: "n".into(), weight: 0.5 },
        ],
        salt: "salt".into(),
        default,
        created_at: format!("2025-01-01T00:00:00.00{}Z", id.len()),
        updated_at: "2025-01-01T00:00:00.000Z".into(),
        started_at: Some("2025-01-01T00:00:00.000Z".into()),
        stopped_at: None,
        promotion: None,
    }
}

fn exposure(
    request: &str,
    experiment: &str,
    arm: Option<&str>,
    version: &str,
    docs: &[(&str, &str)],
) -> ExposureRecord {
    ExposureRecord {
        request_id: request.into(),
        experiment_id: experiment.into(),
        experiment_name: experiment.into(),
        unit_id: format!("unit-{request}"),
        arm: arm.map(String::from),
        query: "q".into(),
        latency_ms: request.len() as f64 + 0.25,
        items: docs
            .iter()
            .enumerate()
            .map(|(i, (doc_id, team))| ExposureItem {
                position: i as u32 + 1,
                doc_id: doc_id.to_string(),
                team: team.to_string(),
            })
            .collect(),
        versions: [("control".to_string(), version.to_string()), ("treatment".to_string(), "t1".to_string())].into(),
    }
}

/// The same experiment calls on any store, and everything they read back, as text to compare.
async fn experiment_script(store: &dyn Store) -> String {
    let mut out = Vec::new();
    store.save_experiment(&experiment("ab", Mode::Ab, true)).await.unwrap();
    store.save_experiment(&experiment("il", Mode::Interleave, true)).await.unwrap();
    store.save_experiment(&experiment("sh", Mode::Shadow, false)).await.unwrap();
    let defaults: Vec<(String, bool)> =
        store.experiments().await.unwrap().into_iter().map(|e| (e.id, e.default)).collect();
    out.push(format!("{defaults:?}"));
    let exposures = [
        exposure("r1", "ab", Some("control"), "v1", &[("d1", "control"), ("d2", "control")]),
        exposure("r2", "ab", Some("treatment"), "v1", &[("d3", "treatment")]),
        exposure("r3", "ab", Some("control"), "v2", &[("d1", "control")]),
        exposure("r4", "ab", None, "v1", &[("d1", "control")]),
        // A repeated request id is ignored, in the same batch and later.
        exposure("r1", "ab", Some("treatment"), "v9", &[("d9", "treatment")]),
        exposure("i1", "il", None, "v1", &[("d1", "control"), ("d2", "treatment"), ("d3", "control")]),
        exposure("i2", "il", None, "v1", &[("d1", "treatment"), ("d2", "control")]),
        exposure("i3", "il", None, "v2", &[("d1", "treatment")]),
    ];
    let shadow = |request: &str, version: &str, jaccard: f64| ShadowRecord {
        request_id: request.into(),
        experiment_id: "sh".into(),
        experiment_name: "sh".into(),
        arm: "treatment".into(),
        version: version.into(),
        doc_ids: vec!["d1".into(), "d2".into()],
        jaccard,
        rbo: jaccard / 2.0,
        latency_ms: 3.5,
    };
    store
        .write_exposures(&exposures, &[shadow("s1", "v1", 0.5), shadow("s2", "v2", 0.75), shadow("s1", "x", 0.0)])
        .await
        .unwrap();
    store
        .write_exposures(&[exposure("r2", "ab", Some("control"), "v7", &[])], &[shadow("s2", "x", 0.1)])
        .await
        .unwrap();
    for request in ["r1", "r2", "i1", "nope"] {
        out.push(format!("{:?}", store.shown(request).await.unwrap()));
    }
    for (request, doc, event, position) in [
        ("r1", "d2", "click", 2),
        ("r1", "d2", "click", 2),
        ("r1", "d1", "conversion", 1),
        ("r2", "d3", "click", 1),
        ("r3", "d1", "click", 1),
        ("i1", "d2", "click", 2),
        ("i1", "d3", "click", 3),
        ("i2", "d1", "click", 1),
        ("i2", "d2", "click", 2),
    ] {
        out.push(format!("{}", store.add_feedback(request, doc, event, position).await.unwrap()));
    }
    out.push(format!("{:?}", store.clicked("i1").await.unwrap()));
    out.push(format!("{:?}", store.arm_outcomes("ab").await.unwrap()));
    out.push(format!("{:?}", store.interleave_counts("il", ["control", "treatment"]).await.unwrap()));
    out.push(format!("{:?}", store.latencies("ab").await.unwrap()));
    out.push(format!("{:?}", store.shadow_rows("sh").await.unwrap()));
    out.join("\n")
}

#[tokio::test]
async fn experiments_exposures_feedback_and_reports_read_back_as_on_sqlite() {
    let db = fresh().await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("duet.db")).await.unwrap();
    let on_postgres = experiment_script(&db.store).await;
    let on_sqlite = experiment_script(&sqlite).await;
    assert_eq!(on_postgres, on_sqlite);
    assert!(on_postgres.contains("[(\"ab\", false), (\"il\", true), (\"sh\", false)]"), "one default: {on_postgres}");
    assert!(on_postgres.contains("true\nfalse\ntrue"), "a repeated feedback is refused: {on_postgres}");
    sqlite.close().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_stored_promotion_is_never_replaced_or_cleared() {
    let db = fresh().await;
    let store = &db.store;
    let promotion = |model: &str| Promotion {
        arm: model.into(),
        model: model.into(),
        version: "0123456789ab".into(),
        promoted_at: "2025-01-01T00:00:00.000Z".into(),
        report: json!({"arms": [{"ctr": 0.1}]}),
    };
    let mut e = experiment("e1", Mode::Ab, false);
    store.save_experiment(&e).await.unwrap();
    assert_eq!(store.experiments().await.unwrap()[0].promotion, None);
    e.promotion = Some(promotion("first"));
    e.status = Status::Stopped;
    store.save_experiment(&e).await.unwrap();
    for later in [Some(promotion("second")), None] {
        e.promotion = later;
        store.save_experiment(&e).await.unwrap();
        let stored = &store.experiments().await.unwrap()[0];
        assert_eq!((stored.promotion.clone(), stored.status), (Some(promotion("first")), Status::Stopped));
    }
    db.drop_database().await;
}

fn version(model: &str, version: &str, state: VersionState) -> ModelVersion {
    ModelVersion {
        model: model.into(),
        version: version.into(),
        path: format!("models/{model}"),
        state,
        reason: (state == VersionState::Failed).then(|| "broken".into()),
        since: crate::util::now(),
        created_at: crate::util::now(),
        retired_at: None,
        purged_at: None,
    }
}

#[tokio::test]
async fn the_model_registry_keeps_one_ready_version_events_purges_counts_and_settings() {
    let db = fresh().await;
    let store = &db.store;
    store.set_version_states(&[version("m", "v1", VersionState::Ready)]).await.unwrap();
    assert!(store.set_version_states(&[version("m", "v2", VersionState::Ready)]).await.is_err(), "two ready");
    assert_eq!(store.model_versions().await.unwrap().len(), 1, "the refused call wrote nothing");
    let swap = [version("m", "v1", VersionState::Draining), version("m", "v2", VersionState::Ready)];
    store.set_version_states(&swap).await.unwrap();
    store.set_version_states(&[version("other", "x", VersionState::Failed)]).await.unwrap();
    let states: Vec<_> =
        store.model_versions().await.unwrap().into_iter().map(|v| (v.model, v.version, v.state, v.reason)).collect();
    assert_eq!(
        states,
        [
            ("m".into(), "v1".into(), VersionState::Draining, None),
            ("m".into(), "v2".into(), VersionState::Ready, None),
            ("other".into(), "x".into(), VersionState::Failed, Some("broken".into())),
        ]
    );
    let events = store.model_events("m", 10).await.unwrap();
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!((events[0].version.as_str(), events[0].state), ("v2", VersionState::Ready));
    assert_eq!(store.model_events("m", 1).await.unwrap().len(), 1);

    store.upsert(&[doc("a", "alpha"), doc("b", "beta")], &[emb("m", "a", "alpha", vec![1.0])]).await.unwrap();
    assert_eq!(store.embedding_counts("m", "v1").await.unwrap(), (1, 1));
    assert_eq!(store.purge_version("m", "v1", "2025-02-01T00:00:00.000Z").await.unwrap(), 1);
    assert_eq!(store.embedding_counts("m", "v1").await.unwrap(), (0, 2));
    let v1 = store.model_versions().await.unwrap().into_iter().find(|v| v.version == "v1").unwrap();
    assert_eq!(v1.purged_at.as_deref(), Some("2025-02-01T00:00:00.000Z"));

    store.set_setting("default_model", "m").await.unwrap();
    store.set_setting("default_model", "n").await.unwrap();
    assert_eq!(store.setting("default_model").await.unwrap().as_deref(), Some("n"));
    assert_eq!(store.setting("absent").await.unwrap(), None);
    db.drop_database().await;
}

#[tokio::test]
async fn the_change_feed_lists_every_write_in_order_with_its_origin_and_prunes_all_but_the_latest() {
    let db = fresh().await;
    let store = &db.store;
    assert_eq!(store.last_change().await.unwrap(), 0);
    store.upsert(&[doc("b", "beta"), doc("a", "alpha"), doc("b", "beta again")], &[]).await.unwrap();
    assert!(store.delete("a").await.unwrap());
    assert!(!store.delete("a").await.unwrap(), "deleting nothing records nothing");
    store.put_embeddings(&[emb("m", "b", "beta again", vec![1.0])]).await.unwrap();
    store.save_experiment(&experiment("e1", Mode::Ab, false)).await.unwrap();
    store.set_setting("default_model", "m").await.unwrap();
    store
        .set_version_states(&[version("m", "v1", VersionState::Loading), version("m", "v1", VersionState::Ready)])
        .await
        .unwrap();
    let changes = store.changes_since(0, 100).await.unwrap();
    let listed: Vec<(ChangeKind, &str)> = changes.iter().map(|c| (c.kind, c.key.as_str())).collect();
    assert_eq!(
        listed,
        [
            (ChangeKind::Document, "b"),
            (ChangeKind::Document, "a"),
            (ChangeKind::Document, "a"),
            (ChangeKind::Experiment, "e1"),
            (ChangeKind::Setting, "default_model"),
            (ChangeKind::Model, "m"),
        ]
    );
    assert!(changes.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(changes.iter().all(|c| c.origin == store.origin()));
    assert_eq!(store.last_change().await.unwrap(), changes.last().unwrap().seq);
    assert_eq!(store.changes_since(changes[3].seq, 2).await.unwrap(), changes[4..6]);

    let another = fresh_handle(&db).await;
    assert_ne!(another.origin(), store.origin(), "every connect has its own origin");
    another.set_setting("k", "v").await.unwrap();
    let last = store.changes_since(changes[5].seq, 10).await.unwrap();
    assert_eq!((last.len(), last[0].origin.as_str()), (1, another.origin()));
    another.close().await;

    assert_eq!(store.prune_changes("2000-01-01T00:00:00.000Z").await.unwrap(), 0, "nothing that old");
    assert_eq!(store.prune_changes("9999-01-01T00:00:00.000Z").await.unwrap(), 6, "all but the latest");
    assert_eq!(store.changes_since(0, 10).await.unwrap(), last);
    db.drop_database().await;
}

async fn fresh_handle(db: &TestDb) -> PgStore {
    let options = PgConnectOptions::from_str(&db.server).unwrap().database(&db.name);
    PgStore::connect_with(options, &db.name, &PostgresSettings::default()).await.unwrap()
}

#[tokio::test]
async fn a_reader_polling_the_feed_during_concurrent_writes_misses_no_change() {
    let db = fresh().await;
    let store = Arc::new(fresh_handle(&db).await);
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    let id = format!("w{w}-{i:02}");
                    store.upsert(&[doc(&id, &format!("text {id}"))], &[]).await.unwrap();
                }
            })
        })
        .collect();
    let expected: BTreeSet<String> = (0..8).flat_map(|w| (0..50).map(move |i| format!("w{w}-{i:02}"))).collect();
    let mut seen = BTreeSet::new();
    let mut cursor = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let writers_done = writers.iter().all(|w| w.is_finished());
        for change in db.store.changes_since(cursor, 37).await.unwrap() {
            assert!(change.seq > cursor);
            cursor = change.seq;
            assert!(seen.insert(change.key.clone()), "{} listed twice", change.key);
        }
        // Everything committed before this poll has been listed once the writers are done and a poll is empty.
        if writers_done && db.store.changes_since(cursor, 1).await.unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the writers did not finish");
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let skipped: Vec<&String> = expected.difference(&seen).collect();
    assert!(skipped.is_empty(), "the reader, following its cursor, never saw {} changes: {skipped:?}", skipped.len());
    assert_eq!(seen, expected);
    store.close().await;
    db.drop_database().await;
}

#[tokio::test]
async fn the_store_benchmark_measures_both_formats_and_the_import_then_drops_its_database() {
    let db = fresh().await;
    let settings =
        super::bench::StoreBenchSettings { documents: 130, vectors: 2_100, dimension: 8, batch: 50, repeats: 2 };
    let outcome = super::bench::run(&db.server, &PostgresSettings::default(), &settings, |_| {}).await.unwrap();
    let formats: Vec<_> = outcome.loads.iter().map(|l| (l.format, l.seconds.len())).collect();
    assert_eq!(formats, [("bytea", 2), ("real[]", 2)]);
    assert!(outcome.import.documents_per_second > 0.0 && outcome.import.documents == 130);
    let admin = sqlx::PgPool::connect(&db.server).await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_database WHERE datname LIKE 'duet_bench_%'")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(left, 0, "the benchmark's database is gone");
    admin.close().await;
    db.drop_database().await;
}
