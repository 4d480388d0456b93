//! `duet train`: train a two-tower model ([`duet::train`]) with a progress bar, and print its summary. The
//! hyper-parameters are [`duet::train::TrainConfig`]'s flags, flattened here; a flag given (or its environment
//! variable) beats the `--config` file, which beats the built-in default.

use std::path::PathBuf;

use clap::Args as ClapArgs;
use duet::train::{Progress, TrainFlags, TrainOptions};

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
    /// Hyper-parameters (TOML; keys as in report.json's `config`, every key optional); a flag given explicitly
    /// wins over the file.
    #[arg(long, env = "DUET_TRAIN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Model name in model.toml (default: the output folder's name).
    #[arg(long, env = "DUET_TRAIN_NAME")]
    pub name: Option<String>,
    /// Compute threads (default: RAYON_NUM_THREADS, else every core); results are reproducible for a given seed
    /// and thread count.
    #[arg(long, env = "DUET_TRAIN_THREADS")]
    pub threads: Option<usize>,
    /// The teacher's embedding cache, an SQLite store shared by runs (keyed by the teacher's version and each
    /// framed text's hash): a re-run over the same data encodes nothing.
    #[arg(long, env = "DUET_TRAIN_TEACHER_CACHE", default_value = duet::train::teacher::DEFAULT_CACHE)]
    pub teacher_cache: PathBuf,
    /// Path of libonnxruntime for the teacher (after ORT_DYLIB_PATH; default: the project's .venv).
    #[arg(long, env = "DUET_ONNXRUNTIME")]
    pub onnxruntime: Option<PathBuf>,
    /// The hyper-parameters ([`duet::train::TrainConfig`]), with which of them were given.
    #[command(flatten)]
    pub settings: TrainFlags,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(threads) = args.threads {
        anyhow::ensure!(threads > 0, "--threads must be positive");
        // Read by candle and rayon when their thread pools start, which has not happened yet.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    let config = args.settings.resolve(args.config.as_deref())?;
    let options = TrainOptions {
        pairs: args.pairs,
        corpus: args.corpus,
        out: args.out.clone(),
        name: args.name,
        config,
        teacher_cache: Some(args.teacher_cache),
        onnxruntime: args.onnxruntime,
    };
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
        Progress::Epoch(epoch) => bar.println(epoch.to_string()),
    })?;
    bar.finish_and_clear();
    eprintln!("{}: {}", args.out.display(), trained.report);
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use duet::train::tower::TowerPooling;
    use duet::train::TrainConfig;

    use crate::cli::{Cli, Command};

    /// The settings `duet train` would run with, given these flags after the required ones.
    fn settings(flags: &[&str]) -> anyhow::Result<TrainConfig> {
        let required = ["duet", "train", "--pairs", "p.jsonl", "--corpus", "c.jsonl", "--out", "m"];
        let Command::Train(args) = Cli::try_parse_from(required.iter().chain(flags))?.command else {
            unreachable!("a train command")
        };
        Ok(args.settings.resolve(args.config.as_deref())?)
    }

    #[test]
    fn a_flag_given_beats_the_config_file_and_the_file_beats_a_flag_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.toml");
        std::fs::write(&path, "epochs = 3\nvocab_size = 1000\nidf_init = false\nshared_towers = true\n").unwrap();
        let file = path.to_str().unwrap();
        // The file's values, the defaults for the keys it leaves out.
        let c = settings(&["--config", file]).unwrap();
        assert_eq!((c.epochs, c.vocab_size, c.idf_init, c.shared_towers), (3, 1000, false, true));
        assert_eq!((c.batch_size, c.pooling, c.lexical_dim), (256, TowerPooling::Mean, 1024));
        // A flag given wins, even when it repeats the built-in default; the others keep the file's values.
        let c =
            settings(&["--config", file, "--epochs", "10", "--idf-init", "true", "--pooling", "attention"]).unwrap();
        assert_eq!((c.epochs, c.idf_init, c.pooling), (10, true, TowerPooling::Attention));
        assert_eq!((c.vocab_size, c.shared_towers), (1000, true));
        // Without a file: the flags, else the defaults.
        let c = settings(&["--shared-towers", "--vocab-size", "500"]).unwrap();
        assert_eq!((c.shared_towers, c.vocab_size, c.epochs, c.idf_init), (true, 500, 10, true));
        assert!(!settings(&[]).unwrap().shared_towers);
        // Unknown keys are rejected, whatever the flags say.
        std::fs::write(&path, "epochs = 3\nvocab = 1000\n").unwrap();
        let error = format!("{:#}", settings(&["--config", file, "--vocab-size", "500"]).unwrap_err());
        assert!(error.contains("unknown field") && error.contains("vocab"), "{error}");
        // A plain switch takes no value; the boolean settings take true or false.
        assert!(settings(&["--shared-towers", "true"]).is_err());
        assert!(settings(&["--idf-init"]).is_err());
    }
}
