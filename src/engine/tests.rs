//! Engine tests over the tiny models: a dropped upsert still reaches the store and every index, one model failing
//! to prepare leaves the others serving, and heavy searches beyond the limit are refused; a panicking encoder is
//! restarted (or, when it cannot be, reported unready).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;
use crate::config::ModelEntry;
use crate::encoder::{EncoderHandle, Manifest};
use crate::index::{IndexParams, VectorIndex};

fn tiny(name: &str, index: IndexParams) -> ModelEntry {
    ModelEntry {
        path: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models").join(name),
        index,
        encoder: None,
        task: None,
    }
}

fn config(store: &Path, models: Vec<ModelEntry>) -> Config {
    Config { store: store.into(), models, ..Config::default() }
}

fn three(store: &Path) -> Config {
    let p = IndexParams::default();
    config(store, vec![tiny("tiny-two-tower", p), tiny("tiny-llm", p), tiny("tiny-encoder", p)])
}

fn docs(prefix: &str, n: usize) -> Vec<NewDocument> {
    (0..n)
        .map(|i| NewDocument {
            id: format!("{prefix}{i}"),
            text: format!("document {i} about {prefix} and topic {}", i % 7),
            metadata: serde_json::json!({}),
        })
        .collect()
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upsert_dropped_after_encoding_still_reaches_the_store_and_every_index() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&three(&dir.path().join("duet.db"))).await.unwrap();
    engine.prepare_indexes().await.unwrap();

    // Hold the write lock, so the commit phase is certainly pending when the caller goes away.
    let held = engine.writes.clone().lock_owned().await;
    let caller = tokio::spawn({
        let engine = engine.clone();
        async move { engine.upsert(docs("d", 40)).await }
    });
    // The commit task holds a handle on the write lock once encoding is over and it has been spawned.
    until("the commit task is spawned", || Arc::strong_count(&engine.writes) > 2).await;
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled(), "the caller's future was dropped mid-way");
    drop(held);
    until("the commit task is done", || Arc::strong_count(&engine.writes) == 1).await;

    assert_eq!(engine.store().count().await.unwrap(), 40);
    for model in engine.models().values() {
        assert_eq!(model.index.len(), 40, "{}", model.info.name);
        assert!((0..40).all(|i| model.index.contains(&format!("d{i}"))), "{}", model.info.name);
    }
    engine.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_fails_to_prepare_is_reported_and_leaves_the_others_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("duet.db");
    let engine = Engine::open(&three(&path)).await.unwrap();
    engine.prepare_indexes().await.unwrap();
    engine.upsert(docs("d", 5)).await.unwrap();
    engine.close().await;

    // The second model gets an index that refuses its vectors: preparing it fails.
    let engine = Engine::open(&three(&path)).await.unwrap();
    let broken = "tiny-llm";
    let mut models = (*engine.models()).clone();
    let old = models[broken].clone();
    let index = Arc::new(VectorIndex::new(old.info.dimension + 1, *old.index_params()));
    models.insert(
        broken.into(),
        Arc::new(ServedModel::new(old.info.clone(), old.encoder.clone(), index, old.path.clone())),
    );
    *engine.models.write() = Arc::new(models);

    let err = engine.prepare_indexes().await.unwrap_err();
    assert!(matches!(err, EngineError::Index(IndexError::Dimension { .. })), "{err}");
    let models = engine.models();
    let status = models[broken].status();
    assert_eq!(status.state, ModelState::Failed);
    assert!(status.reason.as_deref().unwrap_or("").contains("dimension"), "{status:?}");
    for name in ["tiny-encoder", "tiny-two-tower"] {
        assert!(models[name].is_ready(), "{name} is served although {broken} failed");
        assert_eq!(models[name].index.len(), 5);
    }
    assert!(!engine.is_ready());

    let query = |model: &str| SearchQuery {
        model: model.into(),
        query: "topic".into(),
        k: 3,
        ef: None,
        exact: false,
        priority: Priority::Live,
    };
    assert_eq!(engine.search(query("tiny-encoder")).await.unwrap().hits.len(), 3);
    assert!(matches!(engine.search(query(broken)).await.unwrap_err(), EngineError::Failed { .. }));
    let report = engine.upsert(docs("late", 2)).await.unwrap();
    assert_eq!(report.models, ["tiny-encoder", "tiny-two-tower"], "writes go on to the served models");
    assert!(engine.delete("late0").await.unwrap());
    engine.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_searches_beyond_the_limit_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let params = IndexParams { exact_below: 10, ..IndexParams::default() };
    let mut config = config(&dir.path().join("duet.db"), vec![tiny("tiny-encoder", params)]);
    config.limits.max_heavy_searches = 1;
    let engine = Engine::open(&config).await.unwrap();
    engine.prepare_indexes().await.unwrap();
    engine.upsert(docs("d", 30)).await.unwrap();
    let model = engine.model("tiny-encoder").unwrap();
    until("the graph is built", || model.index.has_graph()).await;

    let query = |ef: Option<usize>, exact: bool| SearchQuery {
        model: "tiny-encoder".into(),
        query: "topic 3".into(),
        k: 5,
        ef,
        exact,
        priority: Priority::Live,
    };
    let taken = engine.heavy_searches.clone().try_acquire_owned().unwrap();
    for (ef, exact) in [(None, true), (Some(513), false)] {
        let err = engine.search(query(ef, exact)).await.unwrap_err();
        assert!(matches!(err, EngineError::Busy { limit: 1 }), "{err}");
    }
    let light = engine.search(query(Some(512), false)).await.unwrap();
    assert_eq!((light.method, light.hits.len()), (SearchMethod::Hnsw, 5), "light searches need no permit");
    drop(taken);
    assert_eq!(engine.search(query(None, true)).await.unwrap().method, SearchMethod::Exact);
    let refused = engine.metrics.heavy_searches_refused.with_label_values(&["tiny-encoder"]).get();
    assert_eq!(refused, 2);
    engine.close().await;
}

/// The model's own encoder, except that its network panics on [`PANIC`] (tokenised as [`PANIC_ID`]).
struct Panicky(Box<dyn encoder::Encoder>);

const PANIC: &str = "<panic>";
const PANIC_ID: u32 = u32::MAX;

impl encoder::Encoder for Panicky {
    fn info(&self) -> &ModelInfo {
        self.0.info()
    }
    fn tokenize(&self, texts: &[String], side: Side) -> Result<Vec<encoder::Tokens>, EncoderError> {
        let mut tokens = self.0.tokenize(texts, side)?;
        for (text, tokens) in texts.iter().zip(&mut tokens) {
            if text == PANIC {
                tokens.ids = vec![PANIC_ID];
                tokens.type_ids = vec![0];
            }
        }
        Ok(tokens)
    }
    fn infer(&self, inputs: &[&encoder::Tokens], side: Side) -> Result<Vec<Vec<f32>>, EncoderError> {
        assert!(inputs.iter().all(|t| t.ids != [PANIC_ID]), "the test encoder was told to panic");
        self.0.infer(inputs, side)
    }
}

/// An engine serving tiny-encoder through [`Panicky`], rebuilt by reloading the model, or failing to when
/// `reload_fails`.
async fn panicky_engine(store: &Path, reload_fails: bool) -> Arc<Engine> {
    let entry = tiny("tiny-encoder", IndexParams::default());
    let engine = Engine::open(&config(store, vec![entry.clone()])).await.unwrap();
    let env = encoder::runtime::environment(None).unwrap();
    let resolved = Manifest::load(&entry.path).unwrap();
    let loaded = encoder::onnx::load(&resolved, env, Default::default()).unwrap();
    let reload = encoder::onnx::reloader(resolved, env, loaded.info().version.clone());
    let rebuild: encoder::Rebuild = Arc::new(move |options| match reload_fails {
        true => Err(EncoderError::runtime("the model cannot be reloaded".into())),
        false => reload(options),
    });
    let old = engine.model("tiny-encoder").unwrap();
    let handle = EncoderHandle::spawn_supervised(
        Box::new(Panicky(loaded)),
        Some(rebuild),
        Default::default(),
        engine.metrics.clone(),
    );
    let model = ServedModel::new(old.info.clone(), handle, old.index.clone(), old.path.clone());
    *engine.models.write() = Arc::new(BTreeMap::from([("tiny-encoder".to_string(), Arc::new(model))]));
    engine.prepare_indexes().await.unwrap();
    engine.upsert(docs("d", 5)).await.unwrap();
    engine
}

fn search(query: &str) -> SearchQuery {
    SearchQuery {
        model: "tiny-encoder".into(),
        query: query.into(),
        k: 3,
        ef: None,
        exact: false,
        priority: Priority::Live,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_encoder_is_restarted_and_one_that_cannot_be_is_reported_unready() {
    let dir = tempfile::tempdir().unwrap();
    let engine = panicky_engine(&dir.path().join("a.db"), false).await;
    let err = engine.search(search(PANIC)).await.unwrap_err();
    assert!(matches!(err, EngineError::Encoder(EncoderError::Restarting { .. })), "{err}");
    assert_eq!(engine.search(search("topic")).await.unwrap().hits.len(), 3, "served by the reloaded encoder");
    assert_eq!(engine.metrics.encoder_restarts.with_label_values(&["tiny-encoder"]).get(), 1);
    assert!(engine.is_ready());
    engine.close().await;

    let engine = panicky_engine(&dir.path().join("b.db"), true).await;
    assert!(engine.search(search(PANIC)).await.is_err());
    // Answered after the failed reload: the model says it cannot encode, and the engine is unready.
    let err = engine.search(search("topic")).await.unwrap_err();
    assert!(err.to_string().contains("cannot be reloaded"), "{err}");
    let status = engine.model("tiny-encoder").unwrap().status();
    assert_eq!(status.state, ModelState::Stopped);
    assert!(status.reason.as_deref().unwrap_or("").contains("cannot be reloaded"), "{status:?}");
    assert!(!engine.is_ready());
    engine.close().await;
}
