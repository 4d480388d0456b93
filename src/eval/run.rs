//! One evaluation, end to end: the sampled corpus is encoded once per model into the evaluation's own store (a
//! cache: a re-run encodes only what it has not seen), every query goes through [`Engine::search`] — the path the
//! server uses — by exact search and by HNSW as served, BM25 runs beside them, and the per-query scores become
//! the report's intervals, paired tests, quality and cost numbers. Also writes the report folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use super::cost::{self, ModelCost};
use super::metrics::{query_metrics, QueryMetrics};
use super::quality::{self, EmbeddingQuality};
use super::report::{self, EvalReport, RecallAt, SystemScores};
use super::stats::{self, bootstrap_ci, PairedComparison, Resampling};
use super::{load, EvalData, EvalError, EvalOptions, Query};
use crate::config::{Config, EncoderSettings, ModelEntry};
use crate::encoder::{Priority, Side};
use crate::engine::{Engine, SearchQuery};
use crate::lexical::{Bm25Index, Bm25Params};
use crate::util::fs;

/// Everything one evaluation needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub data: EvalOptions,
    /// Model folders.
    pub models: Vec<PathBuf>,
    /// SQLite file caching the sample's documents and embeddings.
    pub cache: PathBuf,
    pub onnxruntime: Option<PathBuf>,
    /// Add the BM25 baseline.
    pub bm25: bool,
    pub resampling: Resampling,
    /// Documents encoded per model to measure throughput (0: skip).
    pub cost_documents: usize,
    /// Queries used for embedding quality (0: skip).
    pub quality_queries: usize,
    /// Random document pairs for uniformity and anisotropy.
    pub document_pairs: usize,
    /// Show progress bars.
    pub progress: bool,
}

impl RunOptions {
    pub fn new(data: EvalOptions, models: Vec<PathBuf>, cache: PathBuf) -> Self {
        Self {
            data,
            models,
            cache,
            onnxruntime: None,
            bm25: true,
            resampling: Resampling::default(),
            cost_documents: 64,
            quality_queries: 500,
            document_pairs: 5000,
            progress: false,
        }
    }
}

/// The name of a data folder (its last component).
pub fn set_name(data: &Path) -> String {
    data.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "data".into())
}

fn bar(show: bool, len: u64, template: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    bar
}

/// One system's per-query results.
struct SystemRun {
    system: String,
    method: String,
    per_query: Vec<QueryMetrics>,
    latencies_ms: Vec<f64>,
}

fn summarise(run: &SystemRun, ks: &[usize], resampling: &Resampling) -> SystemScores {
    let ci = |values: Vec<f64>| {
        bootstrap_ci(&values, resampling.bootstrap_resamples, resampling.confidence, resampling.seed)
    };
    let curve_len = run.per_query.first().map_or(0, |m| m.recall_curve.len());
    let n = run.per_query.len().max(1) as f64;
    let (p50, p99) = cost::p50_p99(&run.latencies_ms);
    SystemScores {
        system: run.system.clone(),
        method: run.method.clone(),
        queries: run.per_query.len(),
        mrr_at_10: ci(run.per_query.iter().map(|m| m.reciprocal_rank_at_10).collect()),
        ndcg_at_10: ci(run.per_query.iter().map(|m| m.ndcg_at_10).collect()),
        recall: ks
            .iter()
            .enumerate()
            .map(|(i, k)| RecallAt { k: *k, recall: ci(run.per_query.iter().map(|m| m.recall[i]).collect()) })
            .collect(),
        recall_curve: (0..curve_len)
            .map(|k| run.per_query.iter().map(|m| m.recall_curve[k]).sum::<f64>() / n)
            .collect(),
        query_ms_p50: p50,
        query_ms_p99: p99,
    }
}

/// Every pair of the given systems on MRR@10 and nDCG@10, Holm-adjusted together.
fn compare_all(runs: &[&SystemRun], resampling: &Resampling) -> Vec<PairedComparison> {
    let mut out = Vec::new();
    for (metric, pick) in [
        ("MRR@10", (|m: &QueryMetrics| m.reciprocal_rank_at_10) as fn(&QueryMetrics) -> f64),
        ("nDCG@10", |m| m.ndcg_at_10),
    ] {
        for i in 0..runs.len() {
            for j in i + 1..runs.len() {
                let a: Vec<f64> = runs[i].per_query.iter().map(pick).collect();
                let b: Vec<f64> = runs[j].per_query.iter().map(pick).collect();
                out.push(stats::compare((&runs[i].system, &a), (&runs[j].system, &b), metric, resampling));
            }
        }
    }
    let adjusted = stats::holm(&out.iter().map(|c| c.p_value).collect::<Vec<_>>());
    for (c, p) in out.iter_mut().zip(adjusted) {
        c.p_holm = p;
    }
    out
}

fn bm25_run(data: &EvalData, ks: &[usize], k_max: usize, progress: bool) -> (SystemRun, ModelCost) {
    let started = Instant::now();
    let index =
        Bm25Index::build(data.documents.iter().map(|d| (d.id.as_str(), d.text.as_str())), Bm25Params::default());
    let build_seconds = started.elapsed().as_secs_f64();
    let bar = bar(progress, data.queries.len() as u64, "{spinner} bm25 [{elapsed_precise}] {wide_bar} {pos}/{len}");
    let mut per_query = Vec::with_capacity(data.queries.len());
    let mut latencies_ms = Vec::with_capacity(data.queries.len());
    for q in &data.queries {
        let started = Instant::now();
        let hits = index.search(&q.text, k_max);
        latencies_ms.push(started.elapsed().as_secs_f64() * 1e3);
        per_query.push(query_metrics(&hits, &q.grades, ks, k_max));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let (p50, p99) = cost::p50_p99(&latencies_ms);
    let cost = ModelCost {
        model: "bm25".into(),
        dimension: 0,
        encode_docs_per_second: index.len() as f64 / build_seconds.max(1e-9),
        encode_sample: index.len(),
        query_ms_p50: p50,
        query_ms_p99: p99,
        index_bytes: index.memory_bytes() as u64,
        model_bytes: 0,
    };
    (SystemRun { system: "bm25".into(), method: "lexical".into(), per_query, latencies_ms }, cost)
}

/// Encodes the sample into the cache store and builds the graphs.
async fn open_engine(options: &RunOptions, data: &EvalData) -> Result<std::sync::Arc<Engine>, EvalError> {
    let config = Config {
        store: options.cache.clone().into(),
        onnxruntime: options.onnxruntime.clone(),
        models: options
            .models
            .iter()
            .map(|path| ModelEntry {
                path: path.clone(),
                // Always build the graph, whatever the sample size, so HNSW is measured against exact search.
                index: crate::index::IndexParams { exact_below: 0, ..Default::default() },
                encoder: None,
                task: None,
            })
            .collect(),
        // No query cache: the index run repeats the exact run's queries, and its latencies are the cost reported.
        encoder: EncoderSettings { query_cache: 0, ..Default::default() },
        ..Config::default()
    };
    config.validate()?;
    if let Some(parent) = options.cache.parent() {
        fs::create_dir_all(parent)?;
    }
    let engine = Engine::open(&config).await?;
    engine.prepare_indexes().await?;
    let bar = bar(
        options.progress,
        data.documents.len() as u64,
        "{spinner} encoding [{elapsed_precise}] {wide_bar} {pos}/{len} docs ({per_sec}, {eta} left)",
    );
    let mut imported = crate::corpus::ImportReport::default();
    for chunk in data.documents.chunks(32) {
        crate::corpus::write_batch(&engine, chunk.to_vec(), &mut imported).await?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    tracing::info!(encoded = imported.upserted, cached = imported.unchanged, "documents ready");
    engine.build_graphs().await?;
    Ok(engine)
}

async fn search_runs(
    engine: &Engine,
    queries: &[Query],
    ks: &[usize],
    k_max: usize,
    progress: bool,
) -> Result<Vec<SystemRun>, EvalError> {
    let models = engine.models();
    let bar = bar(
        progress,
        (queries.len() * 2 * models.len()) as u64,
        "{spinner} searching [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
    );
    let mut runs = Vec::new();
    for model in models.keys() {
        bar.set_message(model.clone());
        for exact in [true, false] {
            let mut run = SystemRun {
                system: model.clone(),
                method: if exact { "exact" } else { "hnsw" }.into(),
                per_query: Vec::with_capacity(queries.len()),
                latencies_ms: Vec::with_capacity(queries.len()),
            };
            for q in queries {
                let started = Instant::now();
                let result = engine
                    .search(SearchQuery {
                        model: model.clone(),
                        query: q.text.clone(),
                        k: k_max,
                        ef: None,
                        exact,
                        priority: Priority::Live,
                    })
                    .await?;
                run.latencies_ms.push(started.elapsed().as_secs_f64() * 1e3);
                if !exact && result.method.as_str() != "hnsw" {
                    // The graph was not there (yet) for this search: its row keeps the name of what was asked
                    // for, so each system has one run per method, and the log says it.
                    tracing::warn!(model = %model, "an index search was answered by exact search: no graph yet");
                }
                let hits: Vec<(String, f32)> = result.hits.iter().map(|(h, _)| (h.id.to_string(), h.score)).collect();
                run.per_query.push(query_metrics(&hits, &q.grades, ks, k_max));
                bar.inc(1);
            }
            runs.push(run);
        }
    }
    bar.finish_and_clear();
    Ok(runs)
}

async fn quality_of(
    engine: &Engine,
    model: &str,
    queries: &[Query],
    options: &RunOptions,
) -> Result<EmbeddingQuality, EvalError> {
    let served = engine.model(model)?;
    let stored = engine.store().embeddings(&served.info.name, &served.info.version).await?;
    let position: HashMap<&str, usize> = stored.iter().enumerate().map(|(i, (id, _))| (id.as_str(), i)).collect();
    let documents: Vec<Vec<f32>> = stored.iter().map(|(_, v)| crate::util::normalized(v)).collect();
    let sample = &queries[..queries.len().min(options.quality_queries)];
    let mut vectors = Vec::with_capacity(sample.len());
    for chunk in sample.chunks(16) {
        let texts = chunk.iter().map(|q| q.text.clone()).collect();
        vectors.extend(engine.embed(model, texts, Side::Query).await?.1.vectors);
    }
    let with_relevant: Vec<(Vec<f32>, Vec<usize>)> = sample
        .iter()
        .zip(vectors)
        .map(|(q, v)| {
            let relevant = q
                .grades
                .iter()
                .filter(|(_, g)| **g > 0.0)
                .filter_map(|(d, _)| position.get(d.as_str()).copied())
                .collect();
            (crate::util::normalized(&v), relevant)
        })
        .collect();
    Ok(quality::measure(model, &with_relevant, &documents, options.document_pairs, options.resampling.seed))
}

async fn cost_of(
    engine: &Engine,
    model: &str,
    model_dir: &Path,
    data: &EvalData,
    hnsw: &SystemRun,
    options: &RunOptions,
) -> Result<ModelCost, EvalError> {
    let served = engine.model(model)?;
    let sample: Vec<String> = data.documents.iter().take(options.cost_documents).map(|d| d.text.clone()).collect();
    let started = Instant::now();
    for chunk in sample.chunks(32) {
        engine.embed(model, chunk.to_vec(), Side::Document).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (p50, p99) = cost::p50_p99(&hnsw.latencies_ms);
    Ok(ModelCost {
        model: model.to_string(),
        dimension: served.info.dimension,
        encode_docs_per_second: if sample.is_empty() { 0.0 } else { sample.len() as f64 / seconds.max(1e-9) },
        encode_sample: sample.len(),
        query_ms_p50: p50,
        query_ms_p99: p99,
        index_bytes: cost::index_memory_estimate(served.index.len(), served.info.dimension, served.index_params().m),
        model_bytes: cost::model_size(model_dir),
    })
}

/// Runs one evaluation (see the module documentation).
pub async fn evaluate(options: &RunOptions) -> Result<EvalReport, EvalError> {
    let started = Instant::now();
    let data = load(&options.data)?;
    if data.queries.is_empty() {
        return Err(EvalError::Invalid(format!(
            "{}: no test query with a relevant document",
            options.data.data.display()
        )));
    }
    let set = set_name(&options.data.data);
    let ks = &options.data.ks;
    let k_max = ks.iter().copied().max().unwrap_or(10).max(10);
    if options.progress {
        eprintln!(
            "{set}: {} of {} documents, {} queries{}",
            data.documents.len(),
            data.corpus_total,
            data.queries.len(),
            if data.graded { " (graded)" } else { "" }
        );
    }
    let mut runs = Vec::new();
    let mut quality = Vec::new();
    let mut costs = Vec::new();
    if !options.models.is_empty() {
        let engine = open_engine(options, &data).await?;
        runs = search_runs(&engine, &data.queries, ks, k_max, options.progress).await?;
        let names: Vec<String> = engine.models().keys().cloned().collect();
        for (name, dir) in names.iter().zip(sorted_dirs(&engine, &options.models)) {
            if options.quality_queries > 0 {
                quality.push(quality_of(&engine, name, &data.queries, options).await?);
            }
            let hnsw = runs.iter().find(|r| &r.system == name && r.method == "hnsw").expect("one run per method");
            costs.push(cost_of(&engine, name, &dir, &data, hnsw, options).await?);
        }
        engine.close().await;
    }
    if options.bm25 {
        let (run, cost) = bm25_run(&data, ks, k_max, options.progress);
        runs.push(run);
        costs.push(cost);
    }
    let scores: Vec<SystemScores> = runs.iter().map(|r| summarise(r, ks, &options.resampling)).collect();
    let compared: Vec<&SystemRun> = runs.iter().filter(|r| r.method != "hnsw").collect();
    let comparisons = compare_all(&compared, &options.resampling);
    Ok(EvalReport {
        data: options.data.data.display().to_string(),
        set,
        corpus_documents: data.documents.len(),
        corpus_total: data.corpus_total,
        queries: data.queries.len(),
        seed: options.data.seed,
        graded: data.graded,
        ks: ks.clone(),
        resampling: options.resampling,
        scores,
        comparisons,
        quality,
        cost: costs,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Model folders in the engine's (name) order.
fn sorted_dirs(engine: &Engine, dirs: &[PathBuf]) -> Vec<PathBuf> {
    let by_name: HashMap<String, PathBuf> = dirs
        .iter()
        .filter_map(|d| crate::encoder::Manifest::load(d).ok().map(|m| (m.manifest.name.clone(), d.clone())))
        .collect();
    engine.models().keys().map(|name| by_name.get(name).cloned().unwrap_or_default()).collect()
}

fn write(path: &Path, contents: &str) -> Result<(), EvalError> {
    Ok(fs::write(path, contents)?)
}

/// Writes `report.json`, `report.md`, `recall_at_k.svg` and `scores.svg` into `out`.
pub fn write_report(report: &EvalReport, out: &Path) -> Result<(), EvalError> {
    fs::create_dir_all(out)?;
    let json = serde_json::to_string_pretty(report)?;
    write(&out.join("report.json"), &(json + "\n"))?;
    write(&out.join("report.md"), &report::markdown(report))?;
    super::plots::recall_curves(report, &out.join("recall_at_k.svg"))?;
    if !report.quality.is_empty() {
        super::plots::score_distributions(report, &out.join("scores.svg"))?;
    }
    Ok(())
}
