//! `duet train`: train a two-tower model ([`duet::train`]) with a progress bar, and print its summary.

use std::path::PathBuf;

use clap::Args as ClapArgs;

#[derive(ClapArgs)]
pub struct Args {
    /// Training pairs, JSONL {"query","doc_id"} per line (a seeded slice is held out for validation).
    #[arg(long, env = "DUET_TRAIN_PAIRS")]
    pub pairs: PathBuf,
    /// Corpus, JSONL {"id","text"} per line (documents of the pairs, and tokenizer training text).
    #[arg(long, env = "DUET_TRAIN_CORPUS")]
    pub corpus: PathBuf,
    /// Model folder to write, e.g. models/two-tower.
    #[arg(long, env = "DUET_TRAIN_OUT")]
    pub out: PathBuf,
    /// Hyper-parameters (TOML; keys as in report.json's `config`, every key optional).
    #[arg(long, env = "DUET_TRAIN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Model name in model.toml (default: the output folder's name).
    #[arg(long, env = "DUET_TRAIN_NAME")]
    pub name: Option<String>,
    /// One tower (one set of weights) for queries and documents.
    #[arg(long, env = "DUET_TRAIN_SHARED_TOWERS")]
    pub shared_towers: bool,
    /// Pooling of token embeddings: mean, or attention (a learned weight per token).
    #[arg(long, env = "DUET_TRAIN_POOLING", value_enum)]
    pub pooling: Option<duet::train::tower::TowerPooling>,
    /// BPE vocabulary size (config default 4000; smaller beat larger on a validation split held out by source).
    #[arg(long, env = "DUET_TRAIN_VOCAB_SIZE")]
    pub vocab_size: Option<usize>,
    /// Tokens kept per text, in training and serving (config default 128).
    #[arg(long, env = "DUET_TRAIN_MAX_TOKENS")]
    pub max_tokens: Option<usize>,
    /// Token embedding width (config default 256).
    #[arg(long, env = "DUET_TRAIN_EMBEDDING_DIM")]
    pub embedding_dim: Option<usize>,
    /// Hidden layer width after pooling, 0 for one linear layer (config default 0).
    #[arg(long, env = "DUET_TRAIN_HIDDEN_DIM")]
    pub hidden_dim: Option<usize>,
    /// Output vector width (config default 256).
    #[arg(long, env = "DUET_TRAIN_OUTPUT_DIM")]
    pub output_dim: Option<usize>,
    /// Softmax temperature of the InfoNCE loss (config default 0.05).
    #[arg(long, env = "DUET_TRAIN_TEMPERATURE")]
    pub temperature: Option<f64>,
    /// Pairs per batch; the other pairs of a batch are the negatives (config default 256).
    #[arg(long, env = "DUET_TRAIN_BATCH_SIZE")]
    pub batch_size: Option<usize>,
    /// Most epochs (training stops earlier when validation MRR@10 stops improving; config default 10).
    #[arg(long, env = "DUET_TRAIN_EPOCHS")]
    pub epochs: Option<usize>,
    /// Peak AdamW learning rate, after warm-up (config default 0.002).
    #[arg(long, env = "DUET_TRAIN_LEARNING_RATE")]
    pub learning_rate: Option<f64>,
    /// Seed of the validation split, initialisation and shuffling (config default 42).
    #[arg(long, env = "DUET_TRAIN_SEED")]
    pub seed: Option<u64>,
    /// Scale each token's random starting row by its IDF, so the untrained towers are close to an IDF-weighted bag
    /// of words: true or false (config `idf_init`, default true).
    #[arg(long, env = "DUET_TRAIN_IDF_INIT")]
    pub idf_init: Option<bool>,
    /// Add per training pair the best BM25 document that is not its own to the batch as an extra negative (mined
    /// once among the training documents): true or false (config `hard_negatives`, default false: it lowered
    /// MRR@10 on pycode_docstring and costs ~35 % of the throughput).
    #[arg(long, env = "DUET_TRAIN_HARD_NEGATIVES")]
    pub hard_negatives: Option<bool>,
    /// Buckets of hashed character-trigram features per token (DSSM word hashing), folded into the exported
    /// embedding table; 0 for none (config `ngram_buckets`, default 0).
    #[arg(long, env = "DUET_TRAIN_NGRAM_BUCKETS")]
    pub ngram_buckets: Option<usize>,
    /// Width of a fixed lexical channel appended to both towers' vectors (random IDF-scaled token rows, never
    /// trained: the dot product approximates an IDF-weighted bag-of-words cosine); 0 for none (config
    /// `lexical_dim`, default 1024).
    #[arg(long, env = "DUET_TRAIN_LEXICAL_DIM")]
    pub lexical_dim: Option<usize>,
    /// Share of the score from the lexical channel, in [0, 1) (config `lexical_weight`, default 0.6).
    #[arg(long, env = "DUET_TRAIN_LEXICAL_WEIGHT")]
    pub lexical_weight: Option<f64>,
    /// The lexical channel's rows are scaled by IDF to this power: a matched token counts IDF^(2·power), ½ as in
    /// BM25 (config `lexical_idf_power`, default 0.5).
    #[arg(long, env = "DUET_TRAIN_LEXICAL_IDF_POWER")]
    pub lexical_idf_power: Option<f64>,
    /// Term-frequency saturation of pooling in [0, 1]: a text's c occurrences of a token weigh c^tf_power together
    /// (1 plain mean, 0 each distinct token once; config `tf_power`, default 0.5).
    #[arg(long, env = "DUET_TRAIN_TF_POWER")]
    pub tf_power: Option<f64>,
    /// Compute threads (default: RAYON_NUM_THREADS, else every core); results are reproducible for a given seed
    /// and thread count.
    #[arg(long, env = "DUET_TRAIN_THREADS")]
    pub threads: Option<usize>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
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
    let bar = super::bar(0, "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}");
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
