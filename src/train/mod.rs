//! Training the two-tower model from (query, result) pairs, in Rust, on the CPU: `duet train`.
//!
//! Owns the whole path from pairs to a served model folder: a BPE tokenizer trained on the corpus and the
//! training queries ([`tokenizer`]), the two towers and the InfoNCE loss in candle ([`tower`], on [`tables`] and [`ops`]), the training loop
//! (AdamW, warm-up then linear decay, in-batch negatives, seeded shuffling), validation on a seeded slice of the
//! training pairs held out by source — whole files or commands, as the test splits are made ([`source_group`]) —
//! for early stopping and selection of the best epoch, and the export of both
//! towers to ONNX ([`export`]) with `tokenizer.json`, `model.toml` and `report.json` ([`report`]). The test split
//! is never read here.
//!
//! Training is deterministic for a given seed and thread count: every random draw comes from [`Rng`].

pub mod export;
pub mod ops;
pub mod report;
pub mod tables;
pub mod tokenizer;
pub mod tower;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

use crate::util::jsonl::{self, CorpusLine, JsonlError, PairLine};
use crate::util::rng::Rng;
use ops::{AdamSettings, Batch};
use report::{EpochReport, TrainReport};
use tokenizer::TokenizerOptions;
use tower::{Tower, TowerPooling, TowerShape, TwoTower};

/// Errors of `duet train`.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error(transparent)]
    Data(#[from] JsonlError),
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
    #[error("invalid training settings: {0}")]
    Config(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("tensor computation: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("ONNX export: {0}")]
    Export(String),
}

/// Hyper-parameters: the `--config` TOML file (every key optional), overridden by command-line flags.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Vocabulary size of the BPE tokenizer.
    pub vocab_size: usize,
    /// Minimum frequency of a merged pair of symbols.
    pub min_frequency: u64,
    /// Keep punctuation as tokens (otherwise it only separates words).
    pub keep_punctuation: bool,
    /// Tokens kept per text, in training and in the manifest (serving cuts at the same length).
    pub max_tokens: usize,
    /// Width of the token embeddings.
    pub embedding_dim: usize,
    /// Width of the hidden layer after pooling; 0 for a single linear layer.
    pub hidden_dim: usize,
    /// Width of the output vectors (the manifest's `dimension`).
    pub output_dim: usize,
    pub pooling: TowerPooling,
    /// One tower for both sides.
    pub shared_towers: bool,
    /// Separate towers start from the same random weights (see [`TwoTower::new`]).
    pub same_start: bool,
    /// Scale each token's random starting row by its IDF over the training texts, so the untrained model is close
    /// to an IDF-weighted bag of words (see [`tables::idf_scales`]).
    pub idf_init: bool,
    /// Add, per training pair, the best BM25 document (among the training documents) that is not one of its
    /// query's documents to the batch as an extra negative for every query. Mined once, before training. Off by
    /// default: on pycode_docstring it lowered validation and test MRR@10 and cost ~35 % of the throughput.
    pub hard_negatives: bool,
    /// Buckets of hashed character trigram features per token (DSSM word hashing), 0 for none: a token's row is
    /// its embedding plus the mean of its trigrams' rows, so tokens the training pairs never contain still share
    /// what similar tokens learned. Folded into the exported embedding table: serving is unchanged.
    pub ngram_buckets: usize,
    /// Width of the fixed lexical channel appended to both towers' vectors ([`tables::LexicalChannel`]: random
    /// IDF-scaled rows, never trained), 0 for none. On pycode_docstring (validation MRR@10, whole corpus) it
    /// lifted the plain towers from 0.242 to 0.276 (0.336 with `tf_power` ½; both at IDF power 1); 2,048 wide added ≤ 0.006.
    pub lexical_dim: usize,
    /// Share of the score from the lexical channel, in [0, 1). Validation MRR@10 at 0.3 / 0.5 / 0.7:
    /// debian_pkgdesc 0.618 / 0.648 / 0.657; tldr_commands (0.5 / 0.7) 0.359 / 0.347; pycode_docstring
    /// (`tf_power` 0.3) 0.344 / 0.362 at 0.5 / 0.7.
    pub lexical_weight: f64,
    /// The lexical channel's rows are scaled by IDF to this power. A match of a token then counts IDF^(2·power)
    /// (both sides carry it): ½ weighs it by IDF once, as BM25 does; 1 (IDF²) over-rewards rare tokens. The
    /// lexical channel alone (untrained) on debian_pkgdesc, validation MRR@10 at power 0.25 / 0.5 / 0.75 / 1 / 1.5:
    /// 0.608 / 0.616 / 0.608 / 0.586 / 0.536; pycode_docstring 0.314 at ½, 0.292 at 1. IDF over the whole
    /// corpus instead of the training texts: 0.578 (debian, power 1) — not kept.
    pub lexical_idf_power: f64,
    /// Term-frequency saturation of pooling, in [0, 1]: a text's `c` occurrences of a token weigh `c^tf_power`
    /// together (1: plain mean; 0: each distinct token once; ½: square root, as BM25 saturates). With the lexical
    /// channel (IDF power 1), validation MRR@10 at 1 / 0.7 / 0.5 / 0.3 / 0: pycode_docstring 0.276 / 0.318 /
    /// 0.336 / 0.342 / 0.316; debian_pkgdesc 0.609 at 1, 0.641 at ½; with IDF power ½, 0.648 at ½ and 0.632 at
    /// 0.3.
    pub tf_power: f64,
    /// Softmax temperature of the InfoNCE loss.
    pub temperature: f64,
    /// Add the documents → queries direction to the loss.
    pub symmetric_loss: bool,
    pub batch_size: usize,
    pub epochs: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Share of the optimisation steps spent warming the learning rate up linearly; then it decays linearly to 0.
    pub warmup_fraction: f64,
    /// Share of the training pairs held out for validation (chosen by source, see `validation_by_source`), at
    /// most `max_validation_pairs`.
    pub validation_fraction: f64,
    /// Hold out whole sources ([`source_group`]: a Python file, a tldr command) rather than single documents, as
    /// the test splits do: a slice split by document scored twice the test MRR@10 on pycode.
    pub validation_by_source: bool,
    pub max_validation_pairs: usize,
    /// Documents each validation query is ranked against: the validation documents plus a seeded sample of the
    /// rest, up to this many. The default covers the whole corpus of most sets, so validation MRR@10 is on the
    /// test's scale (pycode_docstring: 0.242 validation, 0.242 test; against 5,000 documents it read 0.409).
    pub validation_candidates: usize,
    /// Epochs without a better validation MRR@10 before stopping.
    pub patience: usize,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            vocab_size: 4_000,
            min_frequency: 2,
            keep_punctuation: false,
            max_tokens: 128,
            embedding_dim: 256,
            hidden_dim: 0,
            output_dim: 256,
            pooling: TowerPooling::Mean,
            shared_towers: false,
            same_start: true,
            idf_init: true,
            hard_negatives: false,
            ngram_buckets: 0,
            lexical_dim: 1_024,
            lexical_weight: 0.6,
            lexical_idf_power: 0.5,
            tf_power: 0.5,
            temperature: 0.05,
            symmetric_loss: true,
            batch_size: 256,
            epochs: 10,
            learning_rate: 2e-3,
            weight_decay: 0.0,
            warmup_fraction: 0.05,
            validation_fraction: 0.05,
            validation_by_source: true,
            max_validation_pairs: 2_000,
            validation_candidates: 50_000,
            patience: 2,
            seed: 42,
        }
    }
}

impl TrainConfig {
    /// Reads a TOML file of hyper-parameters.
    pub fn from_file(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainError::Read { path: path.display().to_string(), message: e.to_string() })?;
        toml::from_str(&text).map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))
    }

    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: &str| Err(TrainError::Config(m.to_string()));
        if self.batch_size < 2 {
            return bad("batch_size must be at least 2 (the other pairs of a batch are the negatives)");
        }
        if self.epochs == 0 {
            return bad("epochs must be positive");
        }
        if self.max_tokens < 2 {
            return bad("max_tokens must be at least 2");
        }
        if self.ngram_buckets > (1 << 24) {
            return bad("ngram_buckets must be at most 16777216");
        }
        if self.embedding_dim == 0 || self.output_dim == 0 {
            return bad("embedding_dim and output_dim must be positive");
        }
        if !(0.0..=1.0).contains(&self.tf_power) {
            return bad("tf_power must be in [0, 1]");
        }
        if !(0.0..=2.0).contains(&self.lexical_idf_power) {
            return bad("lexical_idf_power must be in [0, 2]");
        }
        if !(0.0..1.0).contains(&self.lexical_weight) {
            return bad("lexical_weight must be in [0, 1)");
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return bad("temperature must be positive");
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) || self.weight_decay < 0.0 {
            return bad("learning_rate must be positive and weight_decay not negative");
        }
        if !(0.0..1.0).contains(&self.warmup_fraction) || !(0.0..0.5).contains(&self.validation_fraction) {
            return bad("warmup_fraction must be in [0, 1) and validation_fraction in [0, 0.5)");
        }
        Ok(())
    }
}

/// What to train on and where to write.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// JSONL `{"query","doc_id"}` per line.
    pub pairs: PathBuf,
    /// JSONL `{"id","text"}` per line.
    pub corpus: PathBuf,
    /// Model folder to write.
    pub out: PathBuf,
    /// Model name in the manifest (default: the folder's name).
    pub name: Option<String>,
    pub config: TrainConfig,
}

/// Progress events for a progress bar.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A phase starts (tokenizer training, tokenization, export).
    Phase(&'static str),
    /// Optimisation starts: total steps planned.
    Start {
        steps: usize,
        train_pairs: usize,
        validation_pairs: usize,
    },
    Step {
        step: usize,
        epoch: usize,
        loss: f32,
        pairs_per_second: f64,
    },
    Epoch(EpochReport),
}

/// A model name the manifest accepts, from the output folder's name.
fn default_name(out: &Path) -> String {
    let raw = out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let name: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).take(64).collect();
    if name.is_empty() {
        "two-tower".to_string()
    } else {
        name
    }
}

/// The source of a document id, the unit the validation slice holds out: the part before `::` (`pkg/file.py::func`
/// → `pkg/file.py`); else the part before `#` without its leading folders (`linux/tar#3` → `tar`, every platform
/// page of a command); else the whole id (one Debian package).
pub fn source_group(doc_id: &str) -> &str {
    if let Some((file, _)) = doc_id.split_once("::") {
        return file;
    }
    if let Some((page, _)) = doc_id.split_once('#') {
        return page.rsplit('/').next().unwrap_or(page);
    }
    doc_id
}

/// A trained model, kept in memory after export (tests compare it with the exported graphs).
pub struct Trained {
    pub model: TwoTower,
    pub tokenizer: tokenizers::Tokenizer,
    pub max_tokens: usize,
    pub report: TrainReport,
}

impl Trained {
    /// Vectors computed by the trainer's own forward pass (the reference for the exported graphs).
    pub fn encode(&self, texts: &[&str], side: crate::encoder::Side) -> Result<Vec<Vec<f32>>, TrainError> {
        let ids = tokenizer::encode_all(&self.tokenizer, texts, self.max_tokens)?;
        let tower = match side {
            crate::encoder::Side::Query => &self.model.query,
            crate::encoder::Side::Document => self.model.document_tower(),
        };
        let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        tower::to_rows(&tower.forward(&Batch::new(&refs, &Device::Cpu)?)?)
    }
}

/// Encodes token sequences with a tower in batches, returning a `[n, dim]` tensor.
fn encode_tensor(tower: &Tower, texts: &[&[u32]], device: &Device) -> Result<Tensor, TrainError> {
    let mut parts = Vec::new();
    for chunk in texts.chunks(1024) {
        parts.push(tower.forward(&Batch::new(chunk, device)?)?.detach());
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// The held-out pairs and the documents they are ranked against.
struct Validation {
    /// `(query token ids, candidate indexes of the relevant documents)` per distinct query.
    queries: Vec<(Vec<u32>, Vec<usize>)>,
    /// Corpus indexes of the candidates.
    candidates: Vec<usize>,
}

fn validate(model: &TwoTower, v: &Validation, docs: &[Vec<u32>], device: &Device) -> Result<(f64, f64), TrainError> {
    if v.queries.is_empty() {
        return Ok((0.0, 0.0));
    }
    let q: Vec<&[u32]> = v.queries.iter().map(|(ids, _)| ids.as_slice()).collect();
    let d: Vec<&[u32]> = v.candidates.iter().map(|&c| docs[c].as_slice()).collect();
    let qv = encode_tensor(&model.query, &q, device)?;
    let dv = encode_tensor(model.document_tower(), &d, device)?;
    let scores = qv.matmul(&dv.t()?)?.to_vec2::<f32>()?;
    let relevant: Vec<Vec<usize>> = v.queries.iter().map(|(_, r)| r.clone()).collect();
    Ok(report::recall_mrr_at_10(&scores, &relevant))
}

/// Per training pair, the best BM25 document among `candidates` (corpus indexes) that is not a document of the
/// pair's query (`positives`, by query text), if any shares a word with the query. Queries are searched on
/// `threads` threads, each query on its own: the result does not depend on the thread count.
pub fn mine_hard_negatives(
    queries: &[&str],
    positives: &HashMap<&str, HashSet<usize>>,
    candidates: &[usize],
    texts: &[&str],
    threads: usize,
) -> Vec<Option<usize>> {
    use crate::lexical::{Bm25Index, Bm25Params};
    let ids: Vec<String> = candidates.iter().map(|c| c.to_string()).collect();
    let index =
        Bm25Index::build(ids.iter().zip(candidates).map(|(id, &c)| (id.as_str(), texts[c])), Bm25Params::default());
    let mine = |query: &str| -> Option<usize> {
        let own = positives.get(query);
        let wanted = own.map_or(0, HashSet::len) + 1;
        index
            .search(query, wanted)
            .into_iter()
            .map(|(id, _)| id.parse::<usize>().expect("ids are corpus indexes"))
            .find(|d| own.is_none_or(|p| !p.contains(d)))
    };
    let threads = threads.max(1);
    let chunk = queries.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = queries
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(|q| mine(q)).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("mining thread")).collect()
    })
}

/// Learning rate at `step` (0-based) of `total`: linear warm-up, then linear decay to zero.
pub fn learning_rate(config: &TrainConfig, step: usize, total: usize) -> f64 {
    let warmup = ((total as f64) * config.warmup_fraction).round() as usize;
    if step < warmup {
        config.learning_rate * (step + 1) as f64 / warmup as f64
    } else {
        let rest = (total - warmup).max(1) as f64;
        config.learning_rate * (1.0 - (step - warmup) as f64 / rest).max(0.0)
    }
}

/// Trains a two-tower model on `options.pairs` and writes the model folder `options.out`.
pub fn train(options: &TrainOptions, progress: &mut dyn FnMut(Progress)) -> Result<Trained, TrainError> {
    let started = Instant::now();
    let config = &options.config;
    config.validate()?;
    let name = options.name.clone().unwrap_or_else(|| default_name(&options.out));
    let device = Device::Cpu;

    // Data.
    let corpus: Vec<CorpusLine> = jsonl::read(&options.corpus)?;
    let mut doc_index: HashMap<&str, usize> = HashMap::with_capacity(corpus.len());
    for (i, d) in corpus.iter().enumerate() {
        if doc_index.insert(d.id.as_str(), i).is_some() {
            return Err(TrainError::Config(format!("{}: duplicate document id {:?}", options.corpus.display(), d.id)));
        }
    }
    let raw_pairs: Vec<PairLine> = jsonl::read(&options.pairs)?;
    let pairs_read = raw_pairs.len();
    let pairs: Vec<(String, usize)> =
        raw_pairs.into_iter().filter_map(|p| doc_index.get(p.doc_id.as_str()).map(|&d| (p.query, d))).collect();
    let pairs_without_document = pairs_read - pairs.len();
    if pairs.len() < config.batch_size.min(2) + 1 {
        return Err(TrainError::Config(format!(
            "{} pairs with a document in the corpus; at least a few are needed",
            pairs.len()
        )));
    }

    // Validation split by source (see [`source_group`]): no validation document, nor any document from the same
    // source file or command, is seen in training — as in the test splits, so early stopping tracks test quality.
    let mut rng = Rng::new(config.seed);
    let group_of = |d: usize| -> &str {
        if config.validation_by_source {
            source_group(&corpus[d].id)
        } else {
            &corpus[d].id
        }
    };
    let mut group_pairs: HashMap<&str, usize> = HashMap::new();
    for (_, d) in &pairs {
        *group_pairs.entry(group_of(*d)).or_default() += 1;
    }
    let mut groups: Vec<&str> = group_pairs.keys().copied().collect();
    groups.sort_unstable();
    rng.shuffle(&mut groups);
    let wanted = ((pairs.len() as f64 * config.validation_fraction) as usize).min(config.max_validation_pairs);
    let mut validation_groups = HashSet::new();
    let mut held = 0;
    for g in &groups {
        if held >= wanted {
            break;
        }
        // A source too big for what is left is skipped (one huge file must not take the whole slice).
        if held > 0 && held + group_pairs[g] > wanted + wanted / 4 {
            continue;
        }
        validation_groups.insert(*g);
        held += group_pairs[g];
    }
    let validation_docs: HashSet<usize> =
        pairs.iter().map(|(_, d)| *d).filter(|d| validation_groups.contains(group_of(*d))).collect();
    let (validation_pairs, train_pairs): (Vec<_>, Vec<_>) =
        pairs.into_iter().partition(|(_, d)| validation_docs.contains(d));
    if train_pairs.len() < 2 {
        return Err(TrainError::Config("fewer than 2 training pairs after the validation split".into()));
    }

    // Tokenizer on the corpus and the training queries.
    progress(Progress::Phase("training the tokenizer"));
    let tokenizer_started = Instant::now();
    let tokenizer_options = TokenizerOptions {
        vocab_size: config.vocab_size,
        min_frequency: config.min_frequency,
        keep_punctuation: config.keep_punctuation,
        limit_alphabet: 1000,
    };
    let texts = corpus.iter().map(|d| d.text.as_str()).chain(train_pairs.iter().map(|(q, _)| q.as_str()));
    let tok = tokenizer::train(texts, &tokenizer_options)?;
    let tokenizer_seconds = tokenizer_started.elapsed().as_secs_f64();
    let vocab = tok.get_vocab_size(true);

    progress(Progress::Phase("tokenizing"));
    // Candidates for validation: every validation document plus a seeded sample of the rest of the corpus.
    let mut candidates: Vec<usize> = validation_docs.iter().copied().collect();
    candidates.sort_unstable();
    let mut others: Vec<usize> = (0..corpus.len()).filter(|i| !validation_docs.contains(i)).collect();
    rng.shuffle(&mut others);
    others.truncate(config.validation_candidates.saturating_sub(candidates.len()));
    candidates.extend(others);
    let mut needed: Vec<usize> = train_pairs
        .iter()
        .map(|(_, d)| *d)
        .chain(candidates.iter().copied())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    needed.sort_unstable();
    let needed_texts: Vec<&str> = needed.iter().map(|&i| corpus[i].text.as_str()).collect();
    let encoded = tokenizer::encode_all(&tok, &needed_texts, config.max_tokens)?;
    let mut docs: Vec<Vec<u32>> = vec![Vec::new(); corpus.len()];
    for (i, ids) in needed.iter().zip(encoded) {
        docs[*i] = ids;
    }
    let train_queries: Vec<&str> = train_pairs.iter().map(|(q, _)| q.as_str()).collect();
    let query_ids = tokenizer::encode_all(&tok, &train_queries, config.max_tokens)?;
    let candidate_position: HashMap<usize, usize> = candidates.iter().enumerate().map(|(i, &c)| (c, i)).collect();
    let grouped = report::group_by_query(
        &validation_pairs.iter().map(|(q, d)| (q.clone(), candidate_position[d])).collect::<Vec<_>>(),
    );
    let grouped_texts: Vec<&str> = grouped.iter().map(|(q, _)| q.as_str()).collect();
    let validation = Validation {
        queries: tokenizer::encode_all(&tok, &grouped_texts, config.max_tokens)?
            .into_iter()
            .zip(grouped.into_iter().map(|(_, r)| r))
            .collect(),
        candidates,
    };
    let mean_len = |v: &mut dyn Iterator<Item = usize>, n: usize| v.sum::<usize>() as f64 / n.max(1) as f64;
    let mean_query_tokens = mean_len(&mut query_ids.iter().map(Vec::len), query_ids.len());
    let mean_document_tokens = mean_len(&mut train_pairs.iter().map(|(_, d)| docs[*d].len()), train_pairs.len());

    // Hard negatives: BM25 over the training documents (never the validation ones).
    let mining_started = Instant::now();
    let mut positives: HashMap<&str, HashSet<usize>> = HashMap::new();
    for (q, d) in &train_pairs {
        positives.entry(q.as_str()).or_default().insert(*d);
    }
    let hard: Vec<Option<usize>> = if config.hard_negatives {
        progress(Progress::Phase("mining hard negatives"));
        let mut train_docs: Vec<usize> = train_pairs.iter().map(|(_, d)| *d).collect();
        train_docs.sort_unstable();
        train_docs.dedup();
        let all_texts: Vec<&str> = corpus.iter().map(|d| d.text.as_str()).collect();
        mine_hard_negatives(&train_queries, &positives, &train_docs, &all_texts, candle_core::utils::get_num_threads())
    } else {
        vec![None; train_pairs.len()]
    };
    let mining_seconds = mining_started.elapsed().as_secs_f64();
    let hard_negative_pairs = hard.iter().filter(|h| h.is_some()).count();

    // Model and optimiser.
    let shape = TowerShape {
        vocab,
        embedding: config.embedding_dim,
        hidden: config.hidden_dim,
        output: config.output_dim,
        pooling: config.pooling,
        ngram_buckets: config.ngram_buckets,
        tf_power: config.tf_power,
    };
    let idf = if config.idf_init || config.lexical_dim > 0 {
        let mut train_docs: Vec<usize> = train_pairs.iter().map(|(_, d)| *d).collect();
        train_docs.sort_unstable();
        train_docs.dedup();
        let texts: Vec<&[u32]> =
            train_docs.iter().map(|&d| docs[d].as_slice()).chain(query_ids.iter().map(Vec::as_slice)).collect();
        Some(tables::idf_scales(&texts, vocab))
    } else {
        None
    };
    let row_scale = if config.idf_init { idf.as_deref() } else { None };
    // The lexical channel's rows: IDF to the power `lexical_idf_power`, again of unit root mean square.
    let lexical_idf: Option<Vec<f32>> = match (&idf, config.lexical_dim) {
        (Some(idf), 1..) => {
            let power = config.lexical_idf_power as f32;
            let powered: Vec<f32> = idf.iter().map(|x| x.powf(power)).collect();
            let rms = (powered.iter().map(|x| x * x).sum::<f32>() / powered.len().max(1) as f32).sqrt().max(1e-12);
            Some(powered.iter().map(|x| x / rms).collect())
        }
        _ => None,
    };
    // Its own seeded stream: adding the channel leaves every other starting weight as it was.
    let lexical = (config.lexical_dim > 0).then(|| {
        tables::LexicalChannel::new(
            vocab,
            config.lexical_dim,
            config.lexical_weight,
            lexical_idf.as_deref(),
            &mut Rng::new(config.seed ^ 0x006c_6578_6963_616c),
        )
    });
    let token_ngrams = (config.ngram_buckets > 0).then(|| {
        std::sync::Arc::new(
            (0..vocab as u32)
                .map(|t| tables::token_ngrams(&tok.id_to_token(t).unwrap_or_default(), config.ngram_buckets))
                .collect::<Vec<_>>(),
        )
    });
    let mut model = TwoTower::new(
        shape,
        config.shared_towers,
        config.same_start,
        row_scale,
        token_ngrams.as_ref(),
        &mut rng,
        &device,
    )?
    .with_lexical(lexical);
    let mut optimizer = AdamW::new(
        model.vars(),
        ParamsAdamW { lr: config.learning_rate, weight_decay: config.weight_decay, ..Default::default() },
    )?;
    let batch = config.batch_size.min(train_pairs.len());
    let steps_per_epoch = train_pairs.len().div_ceil(batch);
    let total_steps = steps_per_epoch * config.epochs;
    progress(Progress::Start {
        steps: total_steps,
        train_pairs: train_pairs.len(),
        validation_pairs: validation_pairs.len(),
    });

    let mut order: Vec<usize> = (0..train_pairs.len()).collect();
    let mut best: Option<(f64, f64, usize, TwoTower)> = None;
    let mut epochs = Vec::new();
    let mut training_seconds = 0.0;
    let mut pairs_seen = 0usize;
    let mut step = 0;
    let mut stale = 0;
    let mut stopped_early = false;
    for epoch in 1..=config.epochs {
        let epoch_started = Instant::now();
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0;
        let mut batches = 0;
        for chunk in order.chunks(batch) {
            if chunk.len() < 2 {
                continue;
            }
            let step_started = Instant::now();
            optimizer.set_learning_rate(learning_rate(config, step, total_steps));
            let q: Vec<&[u32]> = chunk.iter().map(|&i| query_ids[i].as_slice()).collect();
            let doc_ids: Vec<u32> = chunk.iter().map(|&i| train_pairs[i].1 as u32).collect();
            let hard_ids: Vec<u32> = chunk.iter().filter_map(|&i| hard[i].map(|h| h as u32)).collect();
            let d: Vec<&[u32]> = doc_ids.iter().chain(&hard_ids).map(|&doc| docs[doc as usize].as_slice()).collect();
            let (qb, db) = (Batch::new(&q, &device)?, Batch::new(&d, &device)?);
            let q_side = model.query.leaf_rows(&qb, &device)?;
            let d_side = model.document_tower().leaf_rows(&db, &device)?;
            let qv = model.query.forward_rows(&q_side.rows()?, &qb)?;
            let dv = model.document_tower().forward_rows(&d_side.rows()?, &db)?;
            let mask = tower::negatives_mask(
                &doc_ids,
                &hard_ids,
                |i, h| positives[train_pairs[chunk[i]].0.as_str()].contains(&(h as usize)),
                &device,
            )?;
            let loss = tower::info_nce(&qv, &dv, config.temperature, mask.as_ref(), config.symmetric_loss)?;
            let grads = loss.backward()?;
            optimizer.step(&grads)?;
            let adam = AdamSettings {
                lr: optimizer.learning_rate(),
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: config.weight_decay,
            };
            let (gq, gd) = (q_side.gradients(&grads)?, d_side.gradients(&grads)?);
            match &mut model.document {
                Some(document) => {
                    model.query.apply_sparse(&[(&q_side, gq)], adam);
                    document.apply_sparse(&[(&d_side, gd)], adam);
                }
                None => model.query.apply_sparse(&[(&q_side, gq), (&d_side, gd)], adam),
            }
            let loss = tower::scalar(&loss)?;
            if !loss.is_finite() {
                return Err(TrainError::Config(format!(
                    "the loss became {loss} at step {step}; lower learning_rate or raise temperature"
                )));
            }
            training_seconds += step_started.elapsed().as_secs_f64();
            pairs_seen += chunk.len();
            loss_sum += loss as f64;
            batches += 1;
            step += 1;
            progress(Progress::Step {
                step,
                epoch,
                loss,
                pairs_per_second: pairs_seen as f64 / training_seconds.max(1e-9),
            });
        }
        let (recall, mrr) = validate(&model, &validation, &docs, &device)?;
        let report = EpochReport {
            epoch,
            mean_loss: loss_sum / batches.max(1) as f64,
            validation_recall_at_10: recall,
            validation_mrr_at_10: mrr,
            seconds: epoch_started.elapsed().as_secs_f64(),
        };
        progress(Progress::Epoch(report.clone()));
        epochs.push(report);
        let improved = best.as_ref().is_none_or(|(best_mrr, _, _, _)| mrr > *best_mrr);
        if improved {
            best = Some((mrr, recall, epoch, model.snapshot()?));
            stale = 0;
        } else {
            stale += 1;
            if stale >= config.patience.max(1) && epoch < config.epochs {
                stopped_early = true;
                break;
            }
        }
    }
    let Some((best_mrr, best_recall, best_epoch, best_model)) = best else {
        return Err(TrainError::Config("no epoch was run".into()));
    };

    // Export.
    progress(Progress::Phase("exporting"));
    let out = &options.out;
    std::fs::create_dir_all(out)
        .map_err(|e| TrainError::Write { path: out.display().to_string(), message: e.to_string() })?;
    let doc =
        if config.shared_towers { "duet two-tower model: shared tower" } else { "duet two-tower model: {} tower" };
    export::write(&out.join("query.onnx"), &export::tower_to_onnx(&best_model.query, &doc.replace("{}", "query"))?)?;
    export::write(
        &out.join("document.onnx"),
        &export::tower_to_onnx(best_model.document_tower(), &doc.replace("{}", "document"))?,
    )?;
    let tokenizer_path = out.join("tokenizer.json");
    tok.save(&tokenizer_path, false)
        .map_err(|e| TrainError::Write { path: tokenizer_path.display().to_string(), message: e.to_string() })?;
    write_manifest(out, &name, config)?;

    let report = TrainReport {
        name,
        pairs_file: options.pairs.display().to_string(),
        corpus_file: options.corpus.display().to_string(),
        pairs_read,
        train_pairs: train_pairs.len(),
        validation_pairs: validation_pairs.len(),
        pairs_without_document,
        corpus_documents: corpus.len(),
        validation_candidates: validation.candidates.len(),
        validation_recall_at_10: best_recall,
        validation_mrr_at_10: best_mrr,
        validation_recall_at_10_chance: (10.0 / validation.candidates.len().max(1) as f64).min(1.0),
        best_epoch,
        epochs_run: epochs.len(),
        stopped_early,
        vocabulary: vocab,
        hard_negative_pairs,
        mining_seconds,
        parameters: best_model.parameters(),
        fixed_parameters: config.lexical_dim * vocab,
        total_seconds: started.elapsed().as_secs_f64(),
        tokenizer_seconds,
        training_seconds,
        pairs_per_second: pairs_seen as f64 / training_seconds.max(1e-9),
        threads: candle_core::utils::get_num_threads(),
        mean_query_tokens,
        mean_document_tokens,
        epochs,
        config: config.clone(),
    };
    let report_path = out.join("report.json");
    let json = serde_json::to_string_pretty(&report).map_err(|e| TrainError::Export(e.to_string()))? + "\n";
    std::fs::write(&report_path, json)
        .map_err(|e| TrainError::Write { path: report_path.display().to_string(), message: e.to_string() })?;
    Ok(Trained { model: best_model, tokenizer: tok, max_tokens: config.max_tokens, report })
}

/// `model.toml` as `duet serve` reads it.
#[derive(Serialize)]
struct ManifestOut<'a> {
    name: &'a str,
    kind: &'static str,
    role: &'static str,
    dimension: usize,
    pooling: &'static str,
    output: &'static str,
    normalize: bool,
    max_tokens: usize,
    pad_token: &'static str,
    query_onnx: &'static str,
    document_onnx: &'static str,
    tokenizer: &'static str,
}

fn write_manifest(out: &Path, name: &str, config: &TrainConfig) -> Result<(), TrainError> {
    let manifest = ManifestOut {
        name,
        kind: "two-tower",
        role: "two-tower",
        dimension: config.output_dim + config.lexical_dim,
        pooling: "output",
        output: "sentence_embedding",
        normalize: true,
        max_tokens: config.max_tokens,
        pad_token: tokenizer::PAD_TOKEN,
        query_onnx: "query.onnx",
        document_onnx: "document.onnx",
        tokenizer: "tokenizer.json",
    };
    let text = format!(
        "# Written by `duet train`; the hyper-parameters are in report.json.\n{}",
        toml::to_string(&manifest).map_err(|e| TrainError::Export(e.to_string()))?
    );
    let path = out.join("model.toml");
    std::fs::write(&path, text)
        .map_err(|e| TrainError::Write { path: path.display().to_string(), message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_warms_up_then_decays_to_zero() {
        let config = TrainConfig { learning_rate: 1.0, warmup_fraction: 0.1, ..Default::default() };
        assert!((learning_rate(&config, 0, 100) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&config, 9, 100) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&config, 10, 100) - 1.0).abs() < 1e-12);
        assert!(learning_rate(&config, 99, 100) < 0.02);
        let none = TrainConfig { warmup_fraction: 0.0, ..config };
        assert!((learning_rate(&none, 0, 10) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn validation_holds_out_whole_sources() {
        assert_eq!(source_group("numpy-1.26/numpy/linalg.py::norm"), "numpy-1.26/numpy/linalg.py");
        assert_eq!(source_group("linux/tar#3"), "tar");
        assert_eq!(source_group("common/tar#1"), "tar");
        assert_eq!(source_group("2048-qt"), "2048-qt");
    }

    #[test]
    fn config_files_reject_unknown_keys_and_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.toml");
        std::fs::write(&path, "epochs = 3\npooling = 'attention'\n").unwrap();
        let c = TrainConfig::from_file(&path).unwrap();
        assert_eq!((c.epochs, c.pooling, c.batch_size), (3, TowerPooling::Attention, 256));
        assert_eq!((c.vocab_size, c.idf_init, c.hard_negatives, c.ngram_buckets), (4000, true, false, 0));
        assert_eq!((c.lexical_dim, c.lexical_weight, c.lexical_idf_power, c.tf_power), (1024, 0.6, 0.5, 0.5));
        assert!(TrainConfig { lexical_weight: 1.0, ..Default::default() }.validate().is_err());
        assert!(TrainConfig { tf_power: 1.5, ..Default::default() }.validate().is_err());
        std::fs::write(&path, "idf_init = false\nhard_negatives = true\nngram_buckets = 4096\n").unwrap();
        let c = TrainConfig::from_file(&path).unwrap();
        assert_eq!((c.idf_init, c.hard_negatives, c.ngram_buckets), (false, true, 4096));
        assert!(TrainConfig { ngram_buckets: 1 << 25, ..Default::default() }.validate().is_err());
        std::fs::write(&path, "epoch = 3\n").unwrap();
        assert!(TrainConfig::from_file(&path).unwrap_err().to_string().contains("epoch"));
        assert!(TrainConfig { batch_size: 1, ..Default::default() }.validate().is_err());
        assert_eq!(default_name(Path::new("models/two tower")), "two-tower");
    }

    #[test]
    fn hard_negatives_are_the_best_bm25_document_that_is_not_the_querys_own() {
        let texts = [
            "parse http header fields",      // 0: positive of q0
            "parse http header and cookies", // 1: the best other match for q0
            "write a csv file",              // 2: positive of q1
            "read a csv file quickly",       // 3
            "unrelated words only",          // 4: also a positive of q0 (the same query twice)
        ];
        let queries = ["parse the http header", "write csv file", "parse the http header", "zzz"];
        let mut positives: HashMap<&str, HashSet<usize>> = HashMap::new();
        positives.entry(queries[0]).or_default().extend([0, 4]);
        positives.entry(queries[1]).or_default().insert(2);
        positives.entry(queries[3]).or_default().insert(3);
        let candidates = [0, 1, 2, 3, 4];
        let one = mine_hard_negatives(&queries, &positives, &candidates, &texts, 1);
        assert_eq!(one, [Some(1), Some(3), Some(1), None]);
        assert_eq!(mine_hard_negatives(&queries, &positives, &candidates, &texts, 3), one, "thread count");
        // Only candidates are mined (the validation documents are never among them).
        let without = mine_hard_negatives(&queries, &positives, &[0, 2, 3], &texts, 2);
        assert_eq!(without, [None, Some(3), None, None], "no other candidate shares a word with q0");
    }
}
