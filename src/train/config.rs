//! The training settings: [`TrainConfig`], the one struct behind the `--config` TOML file, the `duet train` flags
//! and environment variables, and `report.json`'s `config`; each built-in default is written once, in
//! [`defaults`]. [`TrainFlags`] layers them: a flag or environment variable given explicitly, else the file's
//! value, else the default.
//!
//! It may use the tower types it names ([`TowerPooling`]); nothing else of the crate.

use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, Command, FromArgMatches};
use serde::{Deserialize, Serialize};

use super::tower::TowerPooling;
use super::TrainError;

/// The built-in default of each setting, used by [`TrainConfig::default`] (and so by serde for every key a file
/// leaves out) and by clap for a flag left out.
pub mod defaults {
    use super::TowerPooling;

    pub const VOCAB_SIZE: usize = 4_000;
    pub const MIN_FREQUENCY: u64 = 2;
    pub const KEEP_PUNCTUATION: bool = false;
    pub const MAX_TOKENS: usize = 128;
    pub const EMBEDDING_DIM: usize = 256;
    pub const HIDDEN_DIM: usize = 0;
    pub const OUTPUT_DIM: usize = 256;
    pub const POOLING: TowerPooling = TowerPooling::Mean;
    /// `--shared-towers` is a switch: off unless given.
    pub const SHARED_TOWERS: bool = false;
    pub const SAME_START: bool = true;
    pub const IDF_INIT: bool = true;
    pub const HARD_NEGATIVES: bool = false;
    pub const NGRAM_BUCKETS: usize = 0;
    pub const LEXICAL_DIM: usize = 1_024;
    pub const LEXICAL_WEIGHT: f64 = 0.6;
    pub const LEXICAL_IDF_POWER: f64 = 0.5;
    pub const TF_POWER: f64 = 0.5;
    pub const TEMPERATURE: f64 = 0.05;
    pub const SYMMETRIC_LOSS: bool = true;
    pub const BATCH_SIZE: usize = 256;
    pub const EPOCHS: usize = 10;
    pub const LEARNING_RATE: f64 = 2e-3;
    pub const WEIGHT_DECAY: f64 = 0.0;
    pub const WARMUP_FRACTION: f64 = 0.05;
    pub const VALIDATION_FRACTION: f64 = 0.05;
    pub const VALIDATION_BY_SOURCE: bool = true;
    pub const MAX_VALIDATION_PAIRS: usize = 2_000;
    pub const VALIDATION_CANDIDATES: usize = 50_000;
    pub const PATIENCE: usize = 2;
    pub const SEED: u64 = 42;
    pub const DISTILL_WEIGHT: f64 = 1.0;
    pub const TEACHER_TEMPERATURE: f64 = 0.05;
    pub const NEGATIVES: super::NegativeSource = super::NegativeSource::Auto;
    pub const TEACHER_PAIRS: usize = 4_000;
    pub const TEACHER_DOCS: usize = 4_000;
    pub const TEACHER_NEGATIVE_CEILING: f64 = 0.95;
}

/// Where the hard negatives come from (`negatives`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum NegativeSource {
    /// With a teacher: `teacher` (`both` when hard_negatives is on); without one: `bm25` when hard_negatives is
    /// on, else `none`.
    Auto,
    /// In-batch negatives only.
    None,
    /// The best BM25 training document that is not the query's (as hard_negatives).
    Bm25,
    /// The teacher's nearest training document that is not the query's, for the pairs the teacher encodes.
    Teacher,
    /// Both of the above.
    Both,
}

/// Hyper-parameters of `duet train`: keys of the `--config` TOML file (every key optional) and flags
/// `--<key-with-dashes>` / environment variables `DUET_TRAIN_<KEY>`, which win over the file.
#[derive(Debug, Clone, Serialize, Deserialize, Args)]
#[serde(deny_unknown_fields, default)]
#[command(next_help_heading = "Hyper-parameters (also keys of the --config file)")]
pub struct TrainConfig {
    /// Vocabulary size of the BPE tokenizer, special tokens and the alphabet included.
    #[arg(long, env = "DUET_TRAIN_VOCAB_SIZE", default_value_t = defaults::VOCAB_SIZE)]
    pub vocab_size: usize,
    /// Fewest occurrences of a pair of symbols for the BPE trainer to merge it.
    #[arg(long, env = "DUET_TRAIN_MIN_FREQUENCY", default_value_t = defaults::MIN_FREQUENCY)]
    pub min_frequency: u64,
    /// Keep punctuation as tokens (otherwise it only separates words).
    #[arg(
        long,
        env = "DUET_TRAIN_KEEP_PUNCTUATION",
        action = ArgAction::Set,
        default_value_t = defaults::KEEP_PUNCTUATION,
    )]
    pub keep_punctuation: bool,
    /// Tokens kept per text, in training and in the manifest (serving cuts at the same length).
    #[arg(long, env = "DUET_TRAIN_MAX_TOKENS", default_value_t = defaults::MAX_TOKENS)]
    pub max_tokens: usize,
    /// Width of the token embeddings.
    #[arg(long, env = "DUET_TRAIN_EMBEDDING_DIM", default_value_t = defaults::EMBEDDING_DIM)]
    pub embedding_dim: usize,
    /// Width of the hidden layer after pooling; 0 for a single linear layer.
    #[arg(long, env = "DUET_TRAIN_HIDDEN_DIM", default_value_t = defaults::HIDDEN_DIM)]
    pub hidden_dim: usize,
    /// Width of the learned output vectors (the manifest's dimension is this plus lexical_dim).
    #[arg(long, env = "DUET_TRAIN_OUTPUT_DIM", default_value_t = defaults::OUTPUT_DIM)]
    pub output_dim: usize,
    /// Pooling of the token embeddings: mean, or attention (a learned weight per token).
    #[arg(long, env = "DUET_TRAIN_POOLING", value_enum, default_value_t = defaults::POOLING)]
    pub pooling: TowerPooling,
    /// One tower (one set of weights) for queries and documents.
    #[arg(long, env = "DUET_TRAIN_SHARED_TOWERS")]
    pub shared_towers: bool,
    /// Separate towers start from the same random weights, so a token no training pair contains keeps the same
    /// vector on both sides and still matches itself.
    #[arg(long, env = "DUET_TRAIN_SAME_START", action = ArgAction::Set, default_value_t = defaults::SAME_START)]
    pub same_start: bool,
    /// Scale each token's random starting row by its IDF over the training texts, so the untrained towers are
    /// close to an IDF-weighted bag of words.
    #[arg(long, env = "DUET_TRAIN_IDF_INIT", action = ArgAction::Set, default_value_t = defaults::IDF_INIT)]
    pub idf_init: bool,
    /// Add, per training pair, the best BM25 document (among the training documents) that is not one of its
    /// query's documents to the batch as an extra negative for every query; mined once, before training.
    #[arg(long, env = "DUET_TRAIN_HARD_NEGATIVES", action = ArgAction::Set, default_value_t = defaults::HARD_NEGATIVES)]
    pub hard_negatives: bool,
    /// Buckets of hashed character-trigram features per token (DSSM word hashing), 0 for none: a token's row is
    /// its embedding plus the mean of its trigrams' rows, so tokens the training pairs never contain still share
    /// what similar tokens learned. Folded into the exported embedding table: serving is unchanged.
    #[arg(long, env = "DUET_TRAIN_NGRAM_BUCKETS", default_value_t = defaults::NGRAM_BUCKETS)]
    pub ngram_buckets: usize,
    /// Width of the fixed lexical channel appended to both towers' vectors (random IDF-scaled token rows, never
    /// trained: the dot product approximates an IDF-weighted bag-of-words cosine); 0 for none.
    #[arg(long, env = "DUET_TRAIN_LEXICAL_DIM", default_value_t = defaults::LEXICAL_DIM)]
    pub lexical_dim: usize,
    /// Share of the score from the lexical channel, in [0, 1).
    #[arg(long, env = "DUET_TRAIN_LEXICAL_WEIGHT", default_value_t = defaults::LEXICAL_WEIGHT)]
    pub lexical_weight: f64,
    /// The lexical channel's rows are scaled by IDF to this power, in [0, 2]. A match of a token then counts
    /// IDF^(2·power) (both sides carry it): ½ weighs it by IDF once, as BM25 does; 1 weighs it by IDF².
    #[arg(long, env = "DUET_TRAIN_LEXICAL_IDF_POWER", default_value_t = defaults::LEXICAL_IDF_POWER)]
    pub lexical_idf_power: f64,
    /// Term-frequency saturation of pooling, in [0, 1]: a text's c occurrences of a token weigh c^tf_power
    /// together (1: plain mean; 0: each distinct token once; ½: square root, as BM25 saturates).
    #[arg(long, env = "DUET_TRAIN_TF_POWER", default_value_t = defaults::TF_POWER)]
    pub tf_power: f64,
    /// Softmax temperature of the InfoNCE loss.
    #[arg(long, env = "DUET_TRAIN_TEMPERATURE", default_value_t = defaults::TEMPERATURE)]
    pub temperature: f64,
    /// Add the documents → queries direction to the loss.
    #[arg(long, env = "DUET_TRAIN_SYMMETRIC_LOSS", action = ArgAction::Set, default_value_t = defaults::SYMMETRIC_LOSS)]
    pub symmetric_loss: bool,
    /// Pairs per batch; the other pairs of a batch are the negatives.
    #[arg(long, env = "DUET_TRAIN_BATCH_SIZE", default_value_t = defaults::BATCH_SIZE)]
    pub batch_size: usize,
    /// Most epochs (training stops earlier when validation MRR@10 stops improving, see patience).
    #[arg(long, env = "DUET_TRAIN_EPOCHS", default_value_t = defaults::EPOCHS)]
    pub epochs: usize,
    /// Peak AdamW learning rate, after warm-up.
    #[arg(long, env = "DUET_TRAIN_LEARNING_RATE", default_value_t = defaults::LEARNING_RATE)]
    pub learning_rate: f64,
    /// AdamW weight decay (also applied by the lazy Adam of the embedding tables).
    #[arg(long, env = "DUET_TRAIN_WEIGHT_DECAY", default_value_t = defaults::WEIGHT_DECAY)]
    pub weight_decay: f64,
    /// Share of the optimisation steps spent warming the learning rate up linearly, in [0, 1); then it decays
    /// linearly to 0.
    #[arg(long, env = "DUET_TRAIN_WARMUP_FRACTION", default_value_t = defaults::WARMUP_FRACTION)]
    pub warmup_fraction: f64,
    /// Share of the training pairs held out for validation, in [0, 0.5) (chosen by source, see
    /// validation_by_source), at most max_validation_pairs.
    #[arg(long, env = "DUET_TRAIN_VALIDATION_FRACTION", default_value_t = defaults::VALIDATION_FRACTION)]
    pub validation_fraction: f64,
    /// Hold out whole sources (a Python file, a tldr command) rather than single documents, as the test splits
    /// do.
    #[arg(
        long,
        env = "DUET_TRAIN_VALIDATION_BY_SOURCE",
        action = ArgAction::Set,
        default_value_t = defaults::VALIDATION_BY_SOURCE,
    )]
    pub validation_by_source: bool,
    /// Most training pairs held out for validation.
    #[arg(long, env = "DUET_TRAIN_MAX_VALIDATION_PAIRS", default_value_t = defaults::MAX_VALIDATION_PAIRS)]
    pub max_validation_pairs: usize,
    /// Documents each validation query is ranked against: the validation documents plus a seeded sample of the
    /// rest, up to this many (the default covers the whole corpus of most sets, so validation MRR@10 is on the
    /// test's scale).
    #[arg(long, env = "DUET_TRAIN_VALIDATION_CANDIDATES", default_value_t = defaults::VALIDATION_CANDIDATES)]
    pub validation_candidates: usize,
    /// Epochs without a better validation MRR@10 before stopping.
    #[arg(long, env = "DUET_TRAIN_PATIENCE", default_value_t = defaults::PATIENCE)]
    pub patience: usize,
    /// Seed of the validation split, initialisation and shuffling.
    #[arg(long, env = "DUET_TRAIN_SEED", default_value_t = defaults::SEED)]
    pub seed: u64,
    /// Distil from this served-model folder (any Duet manifest, e.g. models/embeddinggemma): it encodes a
    /// subset of the training pairs (teacher_pairs) and a pool of training documents (teacher_docs) through
    /// Duet's encoder, and the student also learns the teacher's in-batch score distributions
    /// (distill_weight) and the teacher's hard negatives (negatives).
    #[arg(long, env = "DUET_TRAIN_TEACHER")]
    pub teacher: Option<PathBuf>,
    /// Weight of the distillation term, KL(teacher || student) over each query's in-batch candidates, added to
    /// the InfoNCE loss on the batches of teacher-encoded pairs.
    #[arg(long, env = "DUET_TRAIN_DISTILL_WEIGHT", default_value_t = defaults::DISTILL_WEIGHT)]
    pub distill_weight: f64,
    /// Softmax temperature of the teacher's scores (cosines) in the distillation term; the student's is
    /// temperature.
    #[arg(long, env = "DUET_TRAIN_TEACHER_TEMPERATURE", default_value_t = defaults::TEACHER_TEMPERATURE)]
    pub teacher_temperature: f64,
    /// Hard negatives: auto, none, bm25, teacher or both (auto: teacher with a teacher, else as hard_negatives).
    #[arg(long, env = "DUET_TRAIN_NEGATIVES", value_enum, default_value_t = defaults::NEGATIVES)]
    pub negatives: NegativeSource,
    /// Training pairs the teacher encodes (a seeded sample; 0 for all). They are batched apart from the other
    /// pairs, which train on InfoNCE alone.
    #[arg(long, env = "DUET_TRAIN_TEACHER_PAIRS", default_value_t = defaults::TEACHER_PAIRS)]
    pub teacher_pairs: usize,
    /// Other training documents (a seeded sample) the teacher also encodes, beside the documents of its pairs:
    /// the pool it mines hard negatives from.
    #[arg(long, env = "DUET_TRAIN_TEACHER_DOCS", default_value_t = defaults::TEACHER_DOCS)]
    pub teacher_docs: usize,
    /// A teacher-mined negative must score below this share of the pair's positive (in (0, 1]): candidates
    /// scoring closer are likely unlabelled positives and are skipped.
    #[arg(long, env = "DUET_TRAIN_TEACHER_NEGATIVE_CEILING", default_value_t = defaults::TEACHER_NEGATIVE_CEILING)]
    pub teacher_negative_ceiling: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        use defaults as d;
        Self {
            vocab_size: d::VOCAB_SIZE,
            min_frequency: d::MIN_FREQUENCY,
            keep_punctuation: d::KEEP_PUNCTUATION,
            max_tokens: d::MAX_TOKENS,
            embedding_dim: d::EMBEDDING_DIM,
            hidden_dim: d::HIDDEN_DIM,
            output_dim: d::OUTPUT_DIM,
            pooling: d::POOLING,
            shared_towers: d::SHARED_TOWERS,
            same_start: d::SAME_START,
            idf_init: d::IDF_INIT,
            hard_negatives: d::HARD_NEGATIVES,
            ngram_buckets: d::NGRAM_BUCKETS,
            lexical_dim: d::LEXICAL_DIM,
            lexical_weight: d::LEXICAL_WEIGHT,
            lexical_idf_power: d::LEXICAL_IDF_POWER,
            tf_power: d::TF_POWER,
            temperature: d::TEMPERATURE,
            symmetric_loss: d::SYMMETRIC_LOSS,
            batch_size: d::BATCH_SIZE,
            epochs: d::EPOCHS,
            learning_rate: d::LEARNING_RATE,
            weight_decay: d::WEIGHT_DECAY,
            warmup_fraction: d::WARMUP_FRACTION,
            validation_fraction: d::VALIDATION_FRACTION,
            validation_by_source: d::VALIDATION_BY_SOURCE,
            max_validation_pairs: d::MAX_VALIDATION_PAIRS,
            validation_candidates: d::VALIDATION_CANDIDATES,
            patience: d::PATIENCE,
            seed: d::SEED,
            teacher: None,
            distill_weight: d::DISTILL_WEIGHT,
            teacher_temperature: d::TEACHER_TEMPERATURE,
            negatives: d::NEGATIVES,
            teacher_pairs: d::TEACHER_PAIRS,
            teacher_docs: d::TEACHER_DOCS,
            teacher_negative_ceiling: d::TEACHER_NEGATIVE_CEILING,
        }
    }
}

impl TrainConfig {
    /// Reads a TOML file of hyper-parameters.
    pub fn from_file(path: &Path) -> Result<Self, TrainError> {
        let text = crate::util::fs::read_to_string(path)?;
        toml::from_str(&text).map_err(|source| TrainError::ConfigFile { path: path.display().to_string(), source })
    }

    /// These settings with those named in `given` (by their keys) taken from `other`, through the serialized
    /// form, so no setting is copied by hand.
    pub fn with_given(&self, other: &TrainConfig, given: &[String]) -> Result<Self, TrainError> {
        let (mut merged, other) = (serde_json::to_value(self)?, serde_json::to_value(other)?);
        for key in given {
            let value = other.get(key).ok_or_else(|| TrainError::Config(format!("no setting named {key:?}")))?;
            merged[key.as_str()] = value.clone();
        }
        // JSON has no NaN or infinity: serde_json writes them as null (a setting that may be absent is null by
        // default, as in `self`).
        let was_null = |key: &str| self.default_null(key);
        if let Some((key, _)) =
            merged.as_object().and_then(|m| m.iter().find(|(k, v)| v.is_null() && !was_null(k.as_str())))
        {
            return Err(TrainError::Config(format!("{key} must be a finite number")));
        }
        Ok(serde_json::from_value(merged)?)
    }

    /// Whether setting `key` is absent (null) by default, so null is no number gone bad.
    fn default_null(&self, key: &str) -> bool {
        serde_json::to_value(TrainConfig::default()).ok().and_then(|d| d.get(key).map(|v| v.is_null())) == Some(true)
    }

    /// Whether BM25 hard negatives are mined (see [`NegativeSource`]).
    pub fn bm25_negatives(&self) -> bool {
        match self.negatives {
            NegativeSource::Auto => self.hard_negatives,
            NegativeSource::Bm25 | NegativeSource::Both => true,
            NegativeSource::None | NegativeSource::Teacher => false,
        }
    }

    /// Whether the teacher mines hard negatives (see [`NegativeSource`]).
    pub fn teacher_negatives(&self) -> bool {
        self.teacher.is_some()
            && matches!(self.negatives, NegativeSource::Auto | NegativeSource::Teacher | NegativeSource::Both)
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
        if self.teacher.is_none() && matches!(self.negatives, NegativeSource::Teacher | NegativeSource::Both) {
            return bad("negatives = teacher or both needs a teacher");
        }
        if !(self.distill_weight >= 0.0 && self.distill_weight.is_finite()) {
            return bad("distill_weight must be a number, at least 0");
        }
        if !(self.teacher_temperature > 0.0 && self.teacher_temperature.is_finite()) {
            return bad("teacher_temperature must be positive");
        }
        if !(self.teacher_negative_ceiling > 0.0 && self.teacher_negative_ceiling <= 1.0) {
            return bad("teacher_negative_ceiling must be in (0, 1]");
        }
        Ok(())
    }
}

/// [`TrainConfig`] as parsed from the command line (flatten it into a clap command), with the keys of the
/// settings given explicitly: on the command line or in the environment, not left at clap's default.
#[derive(Debug, Clone)]
pub struct TrainFlags {
    /// Every setting: the given ones and, for the rest, the built-in defaults.
    pub values: TrainConfig,
    /// Keys of the settings given explicitly.
    pub given: Vec<String>,
}

impl TrainFlags {
    /// The settings of a run: each one given explicitly, else the TOML file's (when `file` is given), else the
    /// built-in default.
    pub fn resolve(&self, file: Option<&Path>) -> Result<TrainConfig, TrainError> {
        let base = match file {
            Some(path) => TrainConfig::from_file(path)?,
            None => TrainConfig::default(),
        };
        base.with_given(&self.values, &self.given)
    }

    /// The keys of [`TrainConfig`]'s arguments that `matches` got from the command line or the environment.
    fn given_in(matches: &ArgMatches) -> Vec<String> {
        let command = TrainConfig::augment_args(Command::new("train"));
        command
            .get_arguments()
            .map(|arg| arg.get_id().as_str())
            .filter(|id| matches!(matches.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)))
            .map(str::to_string)
            .collect()
    }
}

impl FromArgMatches for TrainFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self { values: TrainConfig::from_arg_matches(matches)?, given: Self::given_in(matches) })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.values.update_from_arg_matches(matches)?;
        for key in Self::given_in(matches) {
            if !self.given.contains(&key) {
                self.given.push(key);
            }
        }
        Ok(())
    }
}

impl Args for TrainFlags {
    fn augment_args(command: Command) -> Command {
        TrainConfig::augment_args(command)
    }

    fn augment_args_for_update(command: Command) -> Command {
        TrainConfig::augment_args_for_update(command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `train` with the flags of [`TrainFlags`] only, parsed from `args`.
    fn parse(args: &[&str]) -> TrainFlags {
        let command = TrainFlags::augment_args(Command::new("train").no_binary_name(true));
        TrainFlags::from_arg_matches(&command.try_get_matches_from(args).unwrap()).unwrap()
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
        assert!(crate::util::error_chain(&TrainConfig::from_file(&path).unwrap_err()).contains("epoch"));
        assert!(TrainConfig { batch_size: 1, ..Default::default() }.validate().is_err());
    }

    #[test]
    fn flags_left_out_are_the_defaults_and_every_flag_is_a_key() {
        let flags = parse(&[]);
        assert!(flags.given.is_empty(), "{:?}", flags.given);
        let (parsed, default) =
            (serde_json::to_value(&flags.values).unwrap(), serde_json::to_value(TrainConfig::default()).unwrap());
        assert_eq!(parsed, default);
        // Every key has a flag, named after it (the layering finds a flag's key by its id).
        let ids: Vec<String> =
            TrainConfig::augment_args(Command::new("train")).get_arguments().map(|a| a.get_id().to_string()).collect();
        let keys: Vec<String> = default.as_object().unwrap().keys().cloned().collect();
        assert_eq!(ids.len(), keys.len());
        assert!(ids.iter().all(|id| keys.contains(id)), "{ids:?}");
    }

    #[test]
    fn a_given_flag_beats_the_file_and_the_file_beats_a_flag_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.toml");
        std::fs::write(&path, "epochs = 3\nshared_towers = true\nidf_init = false\nlexical_weight = 0.25\n").unwrap();
        let flags = parse(&["--epochs", "10", "--pooling", "attention", "--tf-power", "0.5"]);
        assert_eq!(flags.given, ["pooling", "tf_power", "epochs"]);
        let c = flags.resolve(Some(&path)).unwrap();
        // Given (even at its default value): the flag; left out: the file, else the default.
        assert_eq!((c.epochs, c.pooling, c.tf_power), (10, TowerPooling::Attention, 0.5));
        assert_eq!((c.shared_towers, c.idf_init, c.lexical_weight, c.batch_size), (true, false, 0.25, 256));
        let c = parse(&["--idf-init", "true", "--shared-towers"]).resolve(Some(&path)).unwrap();
        assert_eq!((c.epochs, c.shared_towers, c.idf_init), (3, true, true));
        let c = parse(&["--epochs", "4"]).resolve(None).unwrap();
        assert_eq!((c.epochs, c.idf_init, c.lexical_weight), (4, true, 0.6));
        std::fs::write(&path, "epochs = 3\nlexical_wieght = 0.25\n").unwrap();
        let error = crate::util::error_chain(&parse(&["--lexical-weight", "0.5"]).resolve(Some(&path)).unwrap_err());
        assert!(error.contains("lexical_wieght"), "{error}");
        let nan = TrainConfig { temperature: f64::NAN, ..Default::default() };
        assert!(TrainConfig::default().with_given(&nan, &["temperature".into()]).is_err());
    }
}
