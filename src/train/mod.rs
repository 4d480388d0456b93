//! Training the two-tower model from (query, result) pairs, in Rust, on the CPU: `duet train`.
//!
//! Owns the whole path from pairs to a served model folder, as stages [`train`] runs in order: [`data::read`]
//! the corpus and the pairs; [`data::split`] off a seeded validation slice held out by source — whole files or
//! commands, as the test splits are made ([`data::source_group`]); train the BPE tokenizer on the corpus and the
//! training queries ([`tokenizer`]); [`data::encode`] the texts into token ids and [`data::mine`] hard negatives;
//! [`fit::init`] the two towers ([`tower`], on the feature tables of [`tables`] and the custom ops of [`ops`]) and
//! [`fit::fit`] them with the InfoNCE loss (AdamW, warm-up then linear decay, in-batch negatives, seeded
//! shuffling), validating each epoch ([`fit::validate`]) for early stopping and selection of the best epoch;
//! [`export::write_folder`] both towers to ONNX with `tokenizer.json` and `model.toml`, and `report.json`
//! ([`report`]). The settings are [`TrainConfig`] ([`config`]). The test split is never read here.
//!
//! With a `teacher` (distillation), a stage between mining and fitting runs the teacher ([`teacher`], through
//! the encoder, its vectors cached in a store) over a subset of the training pairs and a pool of training
//! documents and mines its hard negatives; [`fit::fit`] then adds the KL term of [`distill`] on the batches of
//! those pairs.
//!
//! Training is deterministic for a given seed and thread count: every random draw comes from [`Rng`].
//!
//! It may use [`crate::util`], [`crate::lexical`] (BM25 for hard negatives), [`crate::encoder`] (its types, and
//! the teacher's encoder) and [`crate::store`] (the teacher's cache); never the evaluation module, which uses it
//! (its learning curves train models).

pub mod config;
pub mod data;
pub mod distill;
pub mod export;
pub mod fit;
pub mod ops;
pub mod report;
pub mod tables;
pub mod teacher;
pub mod tokenizer;
pub mod tower;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;

use crate::util::jsonl::{CorpusLine, JsonlError};
use crate::util::rng::Rng;
pub use config::{NegativeSource, TrainConfig, TrainFlags};
use fit::TrainingSet;
use ops::Batch;
use report::{EpochReport, TrainReport};
use tokenizer::TokenizerOptions;
use tower::TwoTower;

/// Errors of `duet train`.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] JsonlError),
    #[error(transparent)]
    File(#[from] crate::util::fs::FileError),
    #[error("invalid training settings: {0}")]
    Config(String),
    #[error("invalid training settings in {path}")]
    ConfigFile {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("cannot convert the settings or the report to JSON")]
    Json(#[from] serde_json::Error),
    #[error("cannot write model.toml")]
    Manifest(#[from] toml::ser::Error),
    #[error("tokenizer: {message}")]
    Tokenizer {
        message: String,
        #[source]
        source: Option<tokenizers::Error>,
    },
    #[error("tensor computation: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("ONNX export: {0}")]
    Export(String),
    #[error("teacher")]
    Teacher(#[from] crate::encoder::EncoderError),
    #[error("teacher cache")]
    TeacherCache(#[from] crate::store::StoreError),
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
    /// The teacher's embedding cache (an SQLite store; default [`teacher::DEFAULT_CACHE`]).
    pub teacher_cache: Option<PathBuf>,
    /// libonnxruntime for the teacher (default: as the server finds it).
    pub onnxruntime: Option<PathBuf>,
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

/// Trains the BPE tokenizer on the corpus and the training queries; returns it with the seconds it took.
fn train_tokenizer(
    corpus: &[CorpusLine],
    train: &[(String, usize)],
    config: &TrainConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<(tokenizers::Tokenizer, f64), TrainError> {
    progress(Progress::Phase("training the tokenizer"));
    let started = Instant::now();
    let options = TokenizerOptions {
        vocab_size: config.vocab_size,
        min_frequency: config.min_frequency,
        keep_punctuation: config.keep_punctuation,
        limit_alphabet: 1000,
    };
    let texts = corpus.iter().map(|d| d.text.as_str()).chain(train.iter().map(|(q, _)| q.as_str()));
    let tok = tokenizer::train(texts, &options)?;
    Ok((tok, started.elapsed().as_secs_f64()))
}

/// Trains a two-tower model on `options.pairs` and writes the model folder `options.out`.
pub fn train(options: &TrainOptions, progress: &mut dyn FnMut(Progress)) -> Result<Trained, TrainError> {
    let started = Instant::now();
    let config = &options.config;
    config.validate()?;
    let name = options.name.clone().unwrap_or_else(|| default_name(&options.out));
    let device = Device::Cpu;
    // One seeded stream, drawn in this order: the validation split, the model's starting weights, the shuffles.
    let mut rng = Rng::new(config.seed);

    let data = data::read(options)?;
    let corpus = &data.corpus;
    let split = data::split(corpus, data.pairs, config, &mut rng)?;
    let (tok, tokenizer_seconds) = train_tokenizer(corpus, &split.train, config, progress)?;
    progress(Progress::Phase("tokenizing"));
    let encoded = data::encode(&tok, corpus, &split, config.max_tokens)?;
    let negatives = data::mine(corpus, &split.train, config, progress);
    let cache = teacher::cache_path(options.teacher_cache.as_deref());
    let teacher = match &config.teacher {
        Some(folder) => {
            let inputs = teacher::TeacherInputs {
                folder,
                cache: &cache,
                onnxruntime: options.onnxruntime.as_deref(),
                corpus,
                train: &split.train,
                bm25: &negatives.hard,
                positives: &negatives.positives,
            };
            Some(teacher::prepare(&inputs, config, progress)?)
        }
        None => None,
    };
    let set = TrainingSet { pairs: &split.train, encoded: &encoded, negatives: &negatives, teacher: teacher.as_ref() };
    let model = fit::init(config, &tok, &set, &mut rng, &device)?;
    let fitted = fit::fit(model, config, &set, &mut rng, &device, progress)?;

    progress(Progress::Phase("exporting"));
    export::write_folder(&options.out, &name, config, &fitted.model, &tok)?;
    let vocabulary = tok.get_vocab_size(true);
    let validation = &encoded.validation;
    let report = TrainReport {
        name,
        pairs_file: options.pairs.display().to_string(),
        corpus_file: options.corpus.display().to_string(),
        pairs_read: data.pairs_read,
        train_pairs: split.train.len(),
        validation_pairs: split.validation.len(),
        pairs_without_document: data.pairs_without_document,
        corpus_documents: corpus.len(),
        validation_candidates: validation.candidates.len(),
        validation_recall_at_10: fitted.validation_recall_at_10,
        validation_mrr_at_10: fitted.validation_mrr_at_10,
        validation_recall_at_10_chance: (10.0 / validation.candidates.len().max(1) as f64).min(1.0),
        best_epoch: fitted.best_epoch,
        epochs_run: fitted.epochs.len(),
        stopped_early: fitted.stopped_early,
        vocabulary,
        hard_negative_pairs: negatives.pairs(),
        mining_seconds: negatives.seconds,
        parameters: fitted.model.parameters(),
        fixed_parameters: config.lexical_dim * vocabulary,
        total_seconds: started.elapsed().as_secs_f64(),
        tokenizer_seconds,
        training_seconds: fitted.training_seconds,
        pairs_per_second: fitted.pairs_per_second,
        threads: candle_core::utils::get_num_threads(),
        mean_query_tokens: encoded.mean_query_tokens,
        mean_document_tokens: encoded.mean_document_tokens,
        epochs: fitted.epochs,
        teacher: teacher.map(|t| t.report),
        config: config.clone(),
    };
    report.write(&options.out)?;
    Ok(Trained { model: fitted.model, tokenizer: tok, max_tokens: config.max_tokens, report })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_name_is_the_folder_name_as_the_manifest_accepts_it() {
        assert_eq!(default_name(Path::new("models/two tower")), "two-tower");
    }
}
