//! The `duet` command: `serve` the models over HTTP, `import` a corpus.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use duet::config::{Config, ModelEntry};
use indicatif::{ProgressBar, ProgressStyle};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "duet",
    version,
    about = "Serve a two-tower model and an LLM-embedding model side by side, and compare them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configured models over HTTP.
    Serve(ServeArgs),
    /// Import a JSONL corpus ({"id","text","metadata"?} per line) into the store, encoded by every model.
    Import(ImportArgs),
    /// Check a model folder against its reference vectors (reference.json): Duet's tokenizer, ONNX Runtime and
    /// pooling must reproduce them (cosine >= min_cosine), batched and one by one.
    Verify(VerifyArgs),
    /// Measure a model's encoding throughput on a corpus (documents per second, by batch size and threads).
    BenchEncode(BenchEncodeArgs),
    /// Score models on held-out pairs (recall@k, MRR@10, nDCG@10; exact and HNSW search) through the same
    /// engine the server uses; embeddings are cached in a store per data set and sample.
    Eval(Box<EvalCommand>),
    /// Mine (query, result) pairs from source code into corpus.jsonl, train.jsonl, test.jsonl and stats.json.
    #[command(subcommand)]
    Mine(MineCommand),
    /// Train a two-tower model on (query, result) pairs and write a model folder `duet serve` loads: query.onnx,
    /// document.onnx, tokenizer.json, model.toml, and report.json (validation recall@10 and MRR@10, speed).
    /// Hyper-parameters come from --config, then the flags below; the test split is never read.
    Train(TrainArgs),
    /// Simulated users against a running server: replay held-out pairs under an experiment (clicks from a
    /// position-biased model sent as feedback), or measure how many impressions A/B and interleaving need.
    #[command(subcommand)]
    Simulate(SimulateCommand),
}

#[derive(Subcommand)]
enum SimulateCommand {
    /// Replay test pairs as searches by simulated units under an experiment, send their clicks as feedback,
    /// and print the experiment's report with the latency of experiment searches next to explicit-model ones.
    Replay(ReplayArgs),
    /// Fetch two models' rankings for the test queries, then simulate many A/B tests and interleaving
    /// experiments offline and print the impressions each needs to pick the better model at p < alpha.
    Power(PowerArgs),
}

#[derive(Args)]
struct SimulationArgs {
    /// Base URL of the running server.
    #[arg(long, env = "DUET_SIMULATE_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Data folder with test.jsonl ({"query","doc_id"} per line); the relevant documents must be served.
    #[arg(long, env = "DUET_SIMULATE_DATA")]
    data: PathBuf,
    /// Use the first N distinct test queries.
    #[arg(long, env = "DUET_SIMULATE_QUERIES", default_value_t = 500)]
    queries: usize,
    /// Results shown per search.
    #[arg(long, env = "DUET_SIMULATE_K", default_value_t = 10)]
    k: usize,
    /// Position bias: a result at rank r is examined with probability 1 / r^eta.
    #[arg(long, env = "DUET_SIMULATE_ETA", default_value_t = 1.0)]
    eta: f64,
    /// Probability of clicking an examined relevant result.
    #[arg(long, env = "DUET_SIMULATE_CLICK_RELEVANT", default_value_t = 0.9)]
    click_relevant: f64,
    /// Probability of clicking an examined non-relevant result.
    #[arg(long, env = "DUET_SIMULATE_CLICK_NOISE", default_value_t = 0.05)]
    click_noise: f64,
    #[arg(long, env = "DUET_SIMULATE_SEED", default_value_t = 42)]
    seed: u64,
    /// Also write the outcome as JSON here.
    #[arg(long, env = "DUET_SIMULATE_OUT")]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct ReplayArgs {
    #[command(flatten)]
    common: SimulationArgs,
    /// Experiment (id or name) to search under; it should be running.
    #[arg(long, env = "DUET_SIMULATE_EXPERIMENT")]
    experiment: String,
    /// Model searched explicitly (no experiment) after each interleaved search, to compare latency side by side
    /// (after an A/B or shadow search, the serving arm's model is searched explicitly).
    #[arg(long, env = "DUET_SIMULATE_BASELINE_MODEL")]
    baseline_model: String,
    /// Number of simulated units (queries are assigned to them round-robin).
    #[arg(long, env = "DUET_SIMULATE_USERS", default_value_t = 200)]
    users: usize,
}

#[derive(Args)]
struct PowerArgs {
    #[command(flatten)]
    common: SimulationArgs,
    /// The two models to compare, comma-separated.
    #[arg(long, env = "DUET_SIMULATE_MODELS", value_delimiter = ',', required = true)]
    models: Vec<String>,
    /// Simulated experiments per design.
    #[arg(long, env = "DUET_SIMULATE_RUNS", default_value_t = 200)]
    runs: usize,
    /// Give up on a run after this many impressions.
    #[arg(long, env = "DUET_SIMULATE_MAX_IMPRESSIONS", default_value_t = 100_000)]
    max_impressions: usize,
    /// Test after every N impressions.
    #[arg(long, env = "DUET_SIMULATE_CHECK_EVERY", default_value_t = 50)]
    check_every: usize,
    /// Significance level.
    #[arg(long, env = "DUET_SIMULATE_ALPHA", default_value_t = 0.05)]
    alpha: f64,
}

#[derive(Args)]
struct TrainArgs {
    /// Training pairs, JSONL {"query","doc_id"} per line (a seeded slice is held out for validation).
    #[arg(long, env = "DUET_TRAIN_PAIRS")]
    pairs: PathBuf,
    /// Corpus, JSONL {"id","text"} per line (documents of the pairs, and tokenizer training text).
    #[arg(long, env = "DUET_TRAIN_CORPUS")]
    corpus: PathBuf,
    /// Model folder to write, e.g. models/two-tower.
    #[arg(long, env = "DUET_TRAIN_OUT")]
    out: PathBuf,
    /// Hyper-parameters (TOML; keys as in report.json's `config`, every key optional).
    #[arg(long, env = "DUET_TRAIN_CONFIG")]
    config: Option<PathBuf>,
    /// Model name in model.toml (default: the output folder's name).
    #[arg(long, env = "DUET_TRAIN_NAME")]
    name: Option<String>,
    /// One tower (one set of weights) for queries and documents.
    #[arg(long, env = "DUET_TRAIN_SHARED_TOWERS")]
    shared_towers: bool,
    /// Pooling of token embeddings: mean, or attention (a learned weight per token).
    #[arg(long, env = "DUET_TRAIN_POOLING", value_enum)]
    pooling: Option<duet::train::model::TowerPooling>,
    /// BPE vocabulary size (config default 4000; smaller beat larger on a validation split held out by source).
    #[arg(long, env = "DUET_TRAIN_VOCAB_SIZE")]
    vocab_size: Option<usize>,
    /// Tokens kept per text, in training and serving (config default 128).
    #[arg(long, env = "DUET_TRAIN_MAX_TOKENS")]
    max_tokens: Option<usize>,
    /// Token embedding width (config default 256).
    #[arg(long, env = "DUET_TRAIN_EMBEDDING_DIM")]
    embedding_dim: Option<usize>,
    /// Hidden layer width after pooling, 0 for one linear layer (config default 0).
    #[arg(long, env = "DUET_TRAIN_HIDDEN_DIM")]
    hidden_dim: Option<usize>,
    /// Output vector width (config default 256).
    #[arg(long, env = "DUET_TRAIN_OUTPUT_DIM")]
    output_dim: Option<usize>,
    /// Softmax temperature of the InfoNCE loss (config default 0.05).
    #[arg(long, env = "DUET_TRAIN_TEMPERATURE")]
    temperature: Option<f64>,
    /// Pairs per batch; the other pairs of a batch are the negatives (config default 256).
    #[arg(long, env = "DUET_TRAIN_BATCH_SIZE")]
    batch_size: Option<usize>,
    /// Most epochs (training stops earlier when validation MRR@10 stops improving; config default 10).
    #[arg(long, env = "DUET_TRAIN_EPOCHS")]
    epochs: Option<usize>,
    /// Peak AdamW learning rate, after warm-up (config default 0.002).
    #[arg(long, env = "DUET_TRAIN_LEARNING_RATE")]
    learning_rate: Option<f64>,
    /// Seed of the validation split, initialisation and shuffling (config default 42).
    #[arg(long, env = "DUET_TRAIN_SEED")]
    seed: Option<u64>,
    /// Scale each token's random starting row by its IDF, so the untrained towers are close to an IDF-weighted bag
    /// of words: true or false (config `idf_init`, default true).
    #[arg(long, env = "DUET_TRAIN_IDF_INIT")]
    idf_init: Option<bool>,
    /// Add per training pair the best BM25 document that is not its own to the batch as an extra negative (mined
    /// once among the training documents): true or false (config `hard_negatives`, default false: it lowered
    /// MRR@10 on pycode_docstring and costs ~35 % of the throughput).
    #[arg(long, env = "DUET_TRAIN_HARD_NEGATIVES")]
    hard_negatives: Option<bool>,
    /// Buckets of hashed character-trigram features per token (DSSM word hashing), folded into the exported
    /// embedding table; 0 for none (config `ngram_buckets`, default 0).
    #[arg(long, env = "DUET_TRAIN_NGRAM_BUCKETS")]
    ngram_buckets: Option<usize>,
    /// Width of a fixed lexical channel appended to both towers' vectors (random IDF-scaled token rows, never
    /// trained: the dot product approximates an IDF-weighted bag-of-words cosine); 0 for none (config
    /// `lexical_dim`, default 1024).
    #[arg(long, env = "DUET_TRAIN_LEXICAL_DIM")]
    lexical_dim: Option<usize>,
    /// Share of the score from the lexical channel, in [0, 1) (config `lexical_weight`, default 0.6).
    #[arg(long, env = "DUET_TRAIN_LEXICAL_WEIGHT")]
    lexical_weight: Option<f64>,
    /// The lexical channel's rows are scaled by IDF to this power: a matched token counts IDF^(2·power), ½ as in
    /// BM25 (config `lexical_idf_power`, default 0.5).
    #[arg(long, env = "DUET_TRAIN_LEXICAL_IDF_POWER")]
    lexical_idf_power: Option<f64>,
    /// Term-frequency saturation of pooling in [0, 1]: a text's c occurrences of a token weigh c^tf_power together
    /// (1 plain mean, 0 each distinct token once; config `tf_power`, default 0.5).
    #[arg(long, env = "DUET_TRAIN_TF_POWER")]
    tf_power: Option<f64>,
    /// Compute threads (default: RAYON_NUM_THREADS, else every core); results are reproducible for a given seed
    /// and thread count.
    #[arg(long, env = "DUET_TRAIN_THREADS")]
    threads: Option<usize>,
}

#[derive(Args)]
struct BenchEncodeArgs {
    /// Model folder (holding model.toml).
    #[arg(long, env = "DUET_BENCH_MODEL")]
    model: PathBuf,
    /// JSONL corpus ({"id","text"} per line); the first --limit documents are encoded.
    #[arg(long, env = "DUET_BENCH_CORPUS")]
    corpus: PathBuf,
    #[arg(long, env = "DUET_BENCH_LIMIT", default_value_t = 256)]
    limit: usize,
    /// Texts per inference call.
    #[arg(long, env = "DUET_BENCH_BATCH", default_value_t = 32)]
    batch: usize,
    /// ONNX Runtime intra-op threads.
    #[arg(long, env = "DUET_BENCH_THREADS", default_value_t = 2)]
    threads: usize,
    /// Which side (tower or prefix) to encode with.
    #[arg(long, env = "DUET_BENCH_SIDE", default_value = "document")]
    side: String,
    /// Path of libonnxruntime (after ORT_DYLIB_PATH; default: the project's .venv).
    #[arg(long, env = "DUET_ONNXRUNTIME")]
    onnxruntime: Option<PathBuf>,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct EvalCommand {
    #[command(subcommand)]
    command: Option<EvalSubcommand>,
    #[command(flatten)]
    args: Option<EvalArgs>,
}

#[derive(Subcommand)]
enum EvalSubcommand {
    /// Train the two-tower model on growing subsets of DIR/train.jsonl (e.g. 1k, 4k, 16k, all pairs), score each
    /// beside the pretrained models on the same sample, plot MRR@10 against pairs and name the crossover points.
    LearningCurve(LearningCurveArgs),
    /// Train the two-tower model on another data set (--source) and score it on --data, beside the pretrained
    /// models and (with --in-domain) a two-tower trained on --data's own pairs.
    CrossDomain(CrossDomainArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Baseline {
    Bm25,
    None,
}

#[derive(Args)]
struct EvalArgs {
    /// Data folder with corpus.jsonl and test.jsonl (and, optionally, qrels.tsv with graded relevance).
    #[arg(long, env = "DUET_EVAL_DATA")]
    data: PathBuf,
    /// Models: names under --models-dir or model folders, comma-separated (none: the baseline alone).
    #[arg(long, env = "DUET_EVAL_MODELS", value_delimiter = ',')]
    models: Vec<String>,
    #[arg(long, env = "DUET_MODELS_DIR", default_value = "models")]
    models_dir: PathBuf,
    /// Lexical baseline row, computed by Duet (BM25, k1 0.9, b 0.4, identifier splitting).
    #[arg(long, env = "DUET_EVAL_BASELINE", value_enum, default_value = "bm25")]
    baseline: Baseline,
    /// Corpus sample size (every relevant document is kept).
    #[arg(long, env = "DUET_EVAL_MAX_DOCS")]
    max_docs: Option<usize>,
    /// Test queries used (a seeded sample).
    #[arg(long, env = "DUET_EVAL_MAX_QUERIES")]
    max_queries: Option<usize>,
    /// Cut-offs for recall (the largest is also the search depth and the recall curve's end).
    #[arg(long, env = "DUET_EVAL_K", value_delimiter = ',', default_value = "1,10,100")]
    k: Vec<usize>,
    /// Seed of the samples, the bootstrap and the permutations.
    #[arg(long, env = "DUET_EVAL_SEED", default_value_t = 42)]
    seed: u64,
    /// Graded judgements (query-id, doc-id, grade; tab-separated); default: DATA/qrels.tsv when it exists.
    #[arg(long, env = "DUET_EVAL_QRELS")]
    qrels: Option<PathBuf>,
    /// Bootstrap resamples for the 95 % intervals.
    #[arg(long, env = "DUET_EVAL_BOOTSTRAP", default_value_t = 1000)]
    bootstrap: usize,
    /// Random sign flips of the paired randomisation test.
    #[arg(long, env = "DUET_EVAL_PERMUTATIONS", default_value_t = 5000)]
    permutations: usize,
    /// Documents encoded per model to measure encoding speed (0: skip).
    #[arg(long, env = "DUET_EVAL_COST_DOCS", default_value_t = 64)]
    cost_docs: usize,
    /// Queries used for alignment and score gaps (0: skip the embedding-quality section).
    #[arg(long, env = "DUET_EVAL_QUALITY_QUERIES", default_value_t = 500)]
    quality_queries: usize,
    /// Folder for the report (report.md, report.json, plots).
    #[arg(long, env = "DUET_EVAL_OUT", default_value = "reports/eval")]
    out: PathBuf,
    /// Folder of the embedding caches (one SQLite file per data set, sample size and seed; default OUT/cache):
    /// runs sharing it encode each sample once per model.
    #[arg(long, env = "DUET_EVAL_CACHE")]
    cache: Option<PathBuf>,
    /// Path of libonnxruntime (after ORT_DYLIB_PATH; default: the project's .venv).
    #[arg(long, env = "DUET_ONNXRUNTIME")]
    onnxruntime: Option<PathBuf>,
    #[arg(long, env = "DUET_LOG", default_value = "warn")]
    log: String,
}

#[derive(Args)]
struct EvalTrainArgs {
    /// Training hyper-parameters (TOML, as `duet train --config`).
    #[arg(long, env = "DUET_EVAL_TRAIN_CONFIG")]
    train_config: Option<PathBuf>,
    /// Epochs at most (overrides the config; modest by default to bound the time).
    #[arg(long, env = "DUET_EVAL_EPOCHS", default_value_t = 3)]
    epochs: usize,
}

#[derive(Args)]
struct LearningCurveArgs {
    #[command(flatten)]
    eval: EvalArgs,
    #[command(flatten)]
    train: EvalTrainArgs,
    /// Training pair counts; `all` for every pair of DATA/train.jsonl.
    #[arg(long, env = "DUET_EVAL_SIZES", value_delimiter = ',', default_value = "1000,4000,16000,all")]
    sizes: Vec<String>,
}

#[derive(Args)]
struct CrossDomainArgs {
    #[command(flatten)]
    eval: EvalArgs,
    #[command(flatten)]
    train: EvalTrainArgs,
    /// Data folder to train on (train.jsonl, corpus.jsonl).
    #[arg(long, env = "DUET_EVAL_SOURCE")]
    source: PathBuf,
    /// Also train on --data's own train.jsonl, as the in-domain reference.
    #[arg(long, env = "DUET_EVAL_IN_DOMAIN")]
    in_domain: bool,
    /// Train on a seeded subset of this many pairs (default: all).
    #[arg(long, env = "DUET_EVAL_MAX_PAIRS")]
    max_pairs: Option<usize>,
}

#[derive(Subcommand)]
enum MineCommand {
    /// Documented Python functions: first docstring paragraph → the function's code without its docstring,
    /// split into train/test by source file.
    PythonDocstrings(MinePythonArgs),
}

#[derive(Args)]
struct MinePythonArgs {
    /// Folder of Python sources (default: this machine's Python standard library).
    #[arg(long, env = "DUET_MINE_SRC")]
    src: Option<PathBuf>,
    /// Output folder.
    #[arg(long, env = "DUET_MINE_OUT")]
    out: PathBuf,
    /// Seed of the train/test split.
    #[arg(long, env = "DUET_MINE_SEED", default_value_t = 42)]
    seed: u64,
    /// Share of source files in the test split.
    #[arg(long, env = "DUET_MINE_TEST_FRACTION", default_value_t = 0.1)]
    test_fraction: f64,
    /// Keep functions that look like tests (test_* names, files under test/ or tests/).
    #[arg(long, env = "DUET_MINE_KEEP_TESTS")]
    keep_tests: bool,
    /// Keep at most this many documents (a seeded sample, with their pairs).
    #[arg(long, env = "DUET_MINE_MAX_DOCUMENTS")]
    max_documents: Option<usize>,
}

#[derive(Args)]
struct VerifyArgs {
    /// Model folder (holding model.toml and reference.json).
    #[arg(long, env = "DUET_VERIFY_MODEL")]
    model: PathBuf,
    /// Reference file (default: <model>/reference.json).
    #[arg(long, env = "DUET_REFERENCE")]
    reference: Option<PathBuf>,
    /// Path of libonnxruntime (after ORT_DYLIB_PATH; default: the project's .venv).
    #[arg(long, env = "DUET_ONNXRUNTIME")]
    onnxruntime: Option<PathBuf>,
}

/// Options shared by every command; each flag is also an environment variable.
#[derive(Args)]
struct CommonArgs {
    /// Config file (TOML); see examples/tiny.toml.
    #[arg(long, env = "DUET_CONFIG")]
    config: Option<PathBuf>,
    /// SQLite database file (overrides the config's `store`).
    #[arg(long, env = "DUET_STORE")]
    store: Option<PathBuf>,
    /// Path of libonnxruntime (after ORT_DYLIB_PATH; default: the project's .venv).
    #[arg(long, env = "DUET_ONNXRUNTIME")]
    onnxruntime: Option<PathBuf>,
    /// Model folders (holding model.toml) to serve instead of the config's [[models]]; comma-separated in the
    /// environment variable.
    #[arg(long = "model", env = "DUET_MODELS", value_delimiter = ',')]
    models: Vec<PathBuf>,
    /// Model used when a request names none (default: the first one).
    #[arg(long, env = "DUET_DEFAULT_MODEL")]
    default_model: Option<String>,
    /// Log filter, e.g. `info` or `duet=debug,tower_http=debug`.
    #[arg(long, env = "DUET_LOG", default_value = "info,ort=warn")]
    log: String,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long, env = "DUET_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// JSONL corpus to import at start-up (unchanged documents are skipped).
    #[arg(long, env = "DUET_IMPORT")]
    import: Option<PathBuf>,
}

#[derive(Args)]
struct ImportArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The JSONL corpus.
    #[arg(long, env = "DUET_CORPUS")]
    corpus: PathBuf,
    /// Documents per batch.
    #[arg(long, env = "DUET_BATCH", default_value_t = 64)]
    batch: usize,
}

fn load_config(common: &CommonArgs) -> anyhow::Result<Config> {
    let mut config = match &common.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(store) = &common.store {
        config.store = store.clone();
    }
    if let Some(lib) = &common.onnxruntime {
        config.onnxruntime = Some(lib.clone());
    }
    if !common.models.is_empty() {
        config.models = common
            .models
            .iter()
            .map(|path| ModelEntry { path: path.clone(), index: Default::default(), encoder: None })
            .collect();
    }
    if let Some(name) = &common.default_model {
        config.default_model = Some(name.clone());
    }
    Ok(config)
}

fn init_logging(filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = load_config(&args.common)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(import) = args.import {
        config.import = Some(import);
    }
    let server = duet::server::start(config).await?;
    println!("duet listening on http://{}", server.addr);
    server.run_until(shutdown_signal()).await
}

async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let config = load_config(&args.common)?;
    config.validate()?;
    let engine = duet::engine::Engine::open(&config).await?;
    for prepared in engine.prepare_indexes().await? {
        eprintln!(
            "{}: {} embeddings from the store, {} documents encoded ({:.1} s)",
            prepared.model, prepared.from_store, prepared.encoded, prepared.seconds
        );
    }
    let size = std::fs::metadata(&args.corpus).with_context(|| format!("reading {}", args.corpus.display()))?.len();
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {percent}% {msg}")
            .expect("valid template"),
    );
    let report = duet::corpus::import_jsonl(&engine, &args.corpus, args.batch, |report, bytes| {
        bar.set_position(bytes);
        bar.set_message(format!(
            "{} upserted, {} unchanged, {} bad",
            report.upserted,
            report.unchanged,
            report.bad_lines.len()
        ));
    })
    .await?;
    bar.finish();
    for bad in &report.bad_lines {
        eprintln!("{}:{}: {}", args.corpus.display(), bad.line, bad.message);
    }
    println!("{}", serde_json::to_string(&report)?);
    engine.close().await;
    Ok(())
}

fn bench_encode(args: BenchEncodeArgs) -> anyhow::Result<()> {
    use duet::encoder::{onnx, runtime, Manifest, Side};
    let side = match args.side.as_str() {
        "query" => Side::Query,
        "document" => Side::Document,
        other => anyhow::bail!("--side is query or document, not {other:?}"),
    };
    let mut texts: Vec<String> = Vec::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(std::fs::File::open(&args.corpus)?)) {
        let line = line?;
        if texts.len() == args.limit {
            break;
        }
        if !line.trim().is_empty() {
            texts.push(
                serde_json::from_str::<serde_json::Value>(&line)?["text"].as_str().unwrap_or_default().to_string(),
            );
        }
    }
    anyhow::ensure!(!texts.is_empty(), "no documents in {}", args.corpus.display());
    let resolved = Manifest::load(&args.model)?;
    let env = runtime::environment(args.onnxruntime.as_deref())?;
    let encoder = onnx::load(&resolved, env, onnx::SessionOptions { intra_threads: args.threads })?;
    // One warm-up batch, then the timed pass.
    encoder.encode(&texts[..texts.len().min(args.batch)], side)?;
    let started = std::time::Instant::now();
    let mut truncated = 0;
    for chunk in texts.chunks(args.batch.max(1)) {
        truncated += encoder.encode(chunk, side)?.truncated_count();
    }
    let seconds = started.elapsed().as_secs_f64();
    let chars: usize = texts.iter().map(|t| t.chars().count()).sum();
    println!(
        "{}: {} texts ({} chars on average, {} truncated at {} tokens), batch {}, {} threads: {:.1} texts/s, {:.0} ms per batch",
        encoder.info().name,
        texts.len(),
        chars / texts.len(),
        truncated,
        encoder.info().max_tokens,
        args.batch,
        args.threads,
        texts.len() as f64 / seconds,
        seconds * 1e3 / texts.len().div_ceil(args.batch.max(1)) as f64
    );
    Ok(())
}

fn eval_run_options(args: &EvalArgs) -> anyhow::Result<duet::eval::run::RunOptions> {
    use duet::eval::{self, run::RunOptions, stats::Resampling, EvalOptions};
    let data = EvalOptions {
        data: args.data.clone(),
        max_docs: args.max_docs,
        max_queries: args.max_queries,
        ks: args.k.clone(),
        seed: args.seed,
        qrels: args.qrels.clone(),
    };
    anyhow::ensure!(!args.k.is_empty() && args.k.iter().all(|k| *k > 0), "--k needs positive cut-offs");
    let set = eval::run::set_name(&args.data);
    let cache = args.cache.clone().unwrap_or_else(|| args.out.join("cache")).join(format!(
        "{set}-{}-{}.db",
        args.max_docs.map_or("all".into(), |n| n.to_string()),
        args.seed
    ));
    let models = args.models.iter().filter(|m| !m.is_empty()).map(|m| eval::model_dir(m, &args.models_dir)).collect();
    let mut options = RunOptions::new(data, models, cache);
    options.onnxruntime = args.onnxruntime.clone();
    options.bm25 = matches!(args.baseline, Baseline::Bm25);
    options.resampling = Resampling {
        bootstrap_resamples: args.bootstrap,
        permutations: args.permutations,
        seed: args.seed,
        ..Default::default()
    };
    options.cost_documents = args.cost_docs;
    options.quality_queries = args.quality_queries;
    options.progress = true;
    Ok(options)
}

fn eval_train_config(args: &EvalTrainArgs) -> anyhow::Result<duet::train::TrainConfig> {
    let mut config = match &args.train_config {
        Some(path) => duet::train::TrainConfig::from_file(path)?,
        None => duet::train::TrainConfig::default(),
    };
    config.epochs = args.epochs;
    Ok(config)
}

async fn eval(command: Box<EvalCommand>) -> anyhow::Result<()> {
    use duet::eval::{curve, report, run};
    let command = *command;
    match command.command {
        None => {
            let args = command.args.context("duet eval needs --data (or a subcommand)")?;
            init_logging(&args.log);
            let options = eval_run_options(&args)?;
            anyhow::ensure!(
                !options.models.is_empty() || options.bm25,
                "nothing to evaluate: no --models, no baseline"
            );
            let report = run::evaluate(&options).await?;
            run::write_report(&report, &args.out)?;
            println!("{}", report::markdown(&report));
            eprintln!("report in {}", args.out.display());
        }
        Some(EvalSubcommand::LearningCurve(args)) => {
            init_logging(&args.eval.log);
            let sizes = args
                .sizes
                .iter()
                .map(|s| match s.as_str() {
                    "all" => Ok(None),
                    n => n.parse::<usize>().map(Some).with_context(|| format!("--sizes: {n:?} is not a count or all")),
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let options = curve::CurveOptions {
                run: eval_run_options(&args.eval)?,
                sizes,
                train: eval_train_config(&args.train)?,
                out: args.eval.out.clone(),
            };
            let result = curve::learning_curve(&options).await?;
            println!("{}", curve::curve_markdown(&result));
            eprintln!("learning curve in {}", args.eval.out.display());
        }
        Some(EvalSubcommand::CrossDomain(args)) => {
            init_logging(&args.eval.log);
            let options = curve::CrossDomainOptions {
                run: eval_run_options(&args.eval)?,
                source: args.source.clone(),
                in_domain: args.in_domain,
                max_pairs: args.max_pairs,
                train: eval_train_config(&args.train)?,
                out: args.eval.out.clone(),
            };
            let report = curve::cross_domain(&options).await?;
            println!("{}", report::scores_table(&report));
            eprintln!("cross-domain report in {}", args.eval.out.display());
        }
    }
    Ok(())
}

fn mine_python(args: MinePythonArgs) -> anyhow::Result<()> {
    let src = match args.src {
        Some(src) => src,
        None => duet::mine::default_python_source()
            .context("no --src given and python3's standard library was not found")?,
    };
    let options = duet::mine::MineOptions {
        seed: args.seed,
        test_fraction: args.test_fraction,
        skip_tests: !args.keep_tests,
        max_documents: args.max_documents,
        ..Default::default()
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} files")
            .expect("valid template"),
    );
    let stats = duet::mine::mine_python_docstrings(&src, &args.out, &options, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish();
    eprintln!("mined {} from {}", args.out.display(), src.display());
    println!("{}", serde_json::to_string_pretty(&stats)?);
    Ok(())
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    use duet::train::{Progress, TrainConfig, TrainOptions};
    if let Some(threads) = args.threads {
        anyhow::ensure!(threads > 0, "--threads must be positive");
        // Read by candle and rayon when their thread pools start, which has not happened yet.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    let mut config = match &args.config {
        Some(path) => TrainConfig::from_file(path)?,
        None => TrainConfig::default(),
    };
    config.shared_towers |= args.shared_towers;
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = args.$field { config.$field = v; } )* };
    }
    set!(pooling, vocab_size, max_tokens, embedding_dim, hidden_dim, output_dim, temperature, batch_size, epochs);
    set!(
        learning_rate,
        seed,
        idf_init,
        hard_negatives,
        ngram_buckets,
        lexical_dim,
        lexical_weight,
        lexical_idf_power,
        tf_power
    );
    let options =
        TrainOptions { pairs: args.pairs, corpus: args.corpus, out: args.out.clone(), name: args.name, config };
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    let trained = duet::train::train(&options, &mut |event| match event {
        Progress::Phase(phase) => bar.set_message(phase),
        Progress::Start { steps, train_pairs, validation_pairs } => {
            bar.set_length(steps as u64);
            bar.println(format!("{train_pairs} training pairs, {validation_pairs} held out for validation"));
        }
        Progress::Step { step, epoch, loss, pairs_per_second } => {
            bar.set_position(step as u64);
            bar.set_message(format!("epoch {epoch} loss {loss:.3} {pairs_per_second:.0} pairs/s"));
        }
        Progress::Epoch(e) => bar.println(format!(
            "epoch {}: loss {:.3}, validation recall@10 {:.3} MRR@10 {:.3} ({:.1} s)",
            e.epoch, e.mean_loss, e.validation_recall_at_10, e.validation_mrr_at_10, e.seconds
        )),
    })?;
    bar.finish_and_clear();
    let r = &trained.report;
    eprintln!(
        "{}: best epoch {} of {}, validation recall@10 {:.3} MRR@10 {:.3} (chance {:.4}), {} parameters \
         (+ {} fixed), {:.0} pairs/s, {:.1} s in all",
        args.out.display(),
        r.best_epoch,
        r.epochs_run,
        r.validation_recall_at_10,
        r.validation_mrr_at_10,
        r.validation_recall_at_10_chance,
        r.parameters,
        r.fixed_parameters,
        r.pairs_per_second,
        r.total_seconds
    );
    Ok(())
}

fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let report = duet::encoder::verify::verify(&args.model, args.reference.as_deref(), args.onnxruntime.as_deref())
        .map_err(|e| anyhow::anyhow!(e))?;
    println!(
        "{}: cosine with the reference (min {}), batched / single / batched-vs-single",
        report.model, report.min_cosine
    );
    for c in &report.checks {
        println!(
            "  {:.6} {:.6} {:.6}{} {:?}",
            c.cosine_batched,
            c.cosine_single,
            c.batched_vs_single,
            if c.truncated { " (truncated)" } else { "" },
            c.text
        );
    }
    if report.passed {
        println!("{}: verified", report.model);
        Ok(())
    } else {
        anyhow::bail!("{}: Duet's vectors do not match the reference", report.model)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_logging(&args.common.log);
            serve(args).await
        }
        Command::Import(args) => {
            init_logging(&args.common.log);
            import(args).await
        }
        Command::Verify(args) => verify(args),
        Command::BenchEncode(args) => bench_encode(args),
        Command::Eval(command) => eval(command).await,
        Command::Mine(MineCommand::PythonDocstrings(args)) => mine_python(args),
        Command::Train(args) => train(args),
        Command::Simulate(SimulateCommand::Replay(args)) => simulate_replay(args).await,
        Command::Simulate(SimulateCommand::Power(args)) => simulate_power(args).await,
    }
}

fn click_model(args: &SimulationArgs) -> anyhow::Result<duet::experiment::simulate::ClickModel> {
    let probability = |x: f64| (0.0..=1.0).contains(&x);
    anyhow::ensure!(
        probability(args.click_relevant) && probability(args.click_noise) && args.eta >= 0.0,
        "click probabilities must lie in [0, 1] and --eta must not be negative"
    );
    Ok(duet::experiment::simulate::ClickModel { eta: args.eta, relevant: args.click_relevant, noise: args.click_noise })
}

fn progress_bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {what} {{per_sec}} eta {{eta}}"))
            .expect("valid template"),
    );
    bar
}

fn write_json(path: &Option<PathBuf>, value: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(path) = path {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(value)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

async fn simulate_replay(args: ReplayArgs) -> anyhow::Result<()> {
    use duet::experiment::simulate;
    let c = &args.common;
    let clicks = click_model(c)?;
    let queries = simulate::load_queries(&c.data.join("test.jsonl"), c.queries)?;
    let bar = progress_bar(queries.len(), "searches");
    let server = c.server.trim_end_matches('/');
    let outcome = simulate::replay(
        server,
        &args.experiment,
        &args.baseline_model,
        &queries,
        args.users,
        c.k,
        clicks,
        c.seed,
        |n| bar.set_position(n as u64),
    )
    .await?;
    bar.finish_and_clear();
    let (e, b) = (&outcome.experiment_latency_ms, &outcome.baseline_latency_ms);
    println!("{} searches by {} units, {} clicks", outcome.searches, args.users, outcome.clicks);
    println!("| latency (ms, client side) | p50 | p90 | p99 | mean |");
    println!("|---|---|---|---|---|");
    println!("| experiment `{}` | {:.2} | {:.2} | {:.2} | {:.2} |", args.experiment, e.p50, e.p90, e.p99, e.mean);
    println!("| serving model alone (no experiment) | {:.2} | {:.2} | {:.2} | {:.2} |", b.p50, b.p90, b.p99, b.mean);
    println!("| ratio | {:.2} | {:.2} | {:.2} | {:.2} |", e.p50 / b.p50, e.p90 / b.p90, e.p99 / b.p99, e.mean / b.mean);
    let o = &outcome.overhead_ms;
    println!(
        "| paired difference (experiment − alone) | {:+.2} | {:+.2} | {:+.2} | {:+.2} |",
        o.p50, o.p90, o.p99, o.mean
    );
    print_report(&outcome.report);
    write_json(&c.out, &outcome)
}

/// The headline of an experiment report (the whole report is in --out).
fn print_report(r: &serde_json::Value) {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let ci =
        |v: &serde_json::Value| format!("{:.3} [{:.3}, {:.3}]", f(&v["value"]), f(&v["ci95"][0]), f(&v["ci95"][1]));
    for arm in r["arms"].as_array().into_iter().flatten() {
        println!(
            "arm {}: {} impressions, CTR {}, MRR of the first click {}",
            arm["name"].as_str().unwrap_or("?"),
            arm["impressions"],
            ci(&arm["ctr"]),
            ci(&arm["mrr_first_click"])
        );
    }
    for c in r["comparisons"].as_array().into_iter().flatten() {
        println!(
            "{} vs {}: CTR difference {:+.3}, z {:.2}, p {:.2e}, needed per arm for mde {}: {}",
            c["treatment"].as_str().unwrap_or("?"),
            c["control"].as_str().unwrap_or("?"),
            f(&c["ctr_difference"]),
            f(&c["z"]),
            f(&c["p_value"]),
            r["mde"],
            c["needed_per_arm"]
        );
    }
    let i = &r["interleave"];
    if i.is_object() {
        println!(
            "interleaving: {} impressions, wins {}, ties {}, no click {}, preference for the second arm {}, sign test p {:.2e}, preferred {}",
            i["impressions"], i["wins"], i["ties"], i["no_click"], ci(&i["preference_for_second"]), f(&i["sign_test_p"]), i["preferred"]
        );
    }
    let s = &r["shadow"];
    if s.is_object() {
        println!(
            "shadow: {} compared, jaccard@k {}, RBO {}, latency p50 primary {:.2} ms / shadow {:.2} ms",
            s["compared"],
            ci(&s["jaccard"]),
            ci(&s["rbo"]),
            f(&s["primary_latency_ms"]["p50"]),
            f(&s["shadow_latency_ms"]["p50"])
        );
    }
}

async fn simulate_power(args: PowerArgs) -> anyhow::Result<()> {
    use duet::experiment::simulate::{self, PowerSettings};
    let c = &args.common;
    anyhow::ensure!(args.models.len() == 2, "--models takes exactly two models");
    anyhow::ensure!(
        args.runs > 0 && args.check_every > 0 && args.max_impressions > 0,
        "runs, check-every and max-impressions must be positive"
    );
    let settings = PowerSettings {
        runs: args.runs,
        max_impressions: args.max_impressions,
        check_every: args.check_every,
        alpha: args.alpha,
        k: c.k,
        seed: c.seed,
        clicks: click_model(c)?,
    };
    let queries = simulate::load_queries(&c.data.join("test.jsonl"), c.queries)?;
    let bar = progress_bar(queries.len(), "queries");
    let models = [args.models[0].as_str(), args.models[1].as_str()];
    let server = c.server.trim_end_matches('/');
    let rankings = simulate::fetch_rankings(server, models, &queries, c.k, |n| bar.set_position(n as u64)).await?;
    bar.finish_and_clear();
    let started = std::time::Instant::now();
    let outcome = simulate::power(&rankings, &queries, &settings);
    println!(
        "{} queries; offline MRR@{}: {} {:.3}, {} {:.3} (better: {}); {} runs per design, a test every {} impressions, alpha {}",
        outcome.queries, c.k, models[0], outcome.mrr[0], models[1], outcome.mrr[1], models[outcome.better],
        settings.runs, settings.check_every, settings.alpha
    );
    let show = |x: Option<usize>| x.map_or_else(|| format!("> {}", settings.max_impressions), |n| n.to_string());
    println!("| design | impressions for 80 % power (one test at a fixed horizon) | sequential: decided | correct | median impressions | p90 impressions |");
    println!("|---|---|---|---|---|---|");
    for d in [&outcome.ab, &outcome.interleave] {
        println!(
            "| {} | {} | {}/{} | {}/{} | {} | {} |",
            d.design,
            show(d.impressions_for_80_percent_power),
            d.decided,
            d.runs,
            d.correct,
            d.runs,
            show(d.median_impressions),
            show(d.p90_impressions)
        );
    }
    println!("power by impressions (A/B, interleaving):");
    for ((n, a), (_, i)) in outcome.ab.power_curve.iter().zip(&outcome.interleave.power_curve) {
        println!("  {n:>7}: {a:.2} {i:.2}");
    }
    eprintln!("simulated in {:.1} s", started.elapsed().as_secs_f64());
    write_json(&c.out, &serde_json::json!({"settings": settings, "models": models, "outcome": outcome}))
}
