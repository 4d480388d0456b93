//! `duet eval`: offline evaluation on held-out pairs ([`duet::eval`]), and its learning-curve and cross-domain
//! runs, which train two-tower models on the way.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args as ClapArgs;
use duet::eval::run::RunOptions;
use duet::eval::stats::Resampling;
use duet::eval::{self, curve, report, run, EvalOptions};
use duet::train::TrainConfig;

#[derive(ClapArgs)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Subcommand>,
    #[command(flatten)]
    pub args: Option<EvalArgs>,
}

#[derive(clap::Subcommand)]
pub enum Subcommand {
    /// Train the two-tower model on growing subsets of DIR/train.jsonl (e.g. 1k, 4k, 16k, all pairs), score each
    /// beside the pretrained models on the same sample, plot MRR@10 against pairs and name the crossover points.
    LearningCurve(LearningCurveArgs),
    /// Train the two-tower model on another data set (--source) and score it on --data, beside the pretrained
    /// models and (with --in-domain) a two-tower trained on --data's own pairs.
    CrossDomain(CrossDomainArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Baseline {
    Bm25,
    None,
}

#[derive(ClapArgs)]
pub struct EvalArgs {
    /// Data folder with corpus.jsonl and test.jsonl (and, optionally, qrels.tsv with graded relevance).
    #[arg(long, env = "DUET_EVAL_DATA")]
    pub data: PathBuf,
    /// Models: names under --models-dir or model folders, comma-separated (none: the baseline alone).
    #[arg(long, env = "DUET_EVAL_MODELS", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Folder where --models names are looked up (a name that is itself a model folder is used as it is).
    #[arg(long, env = "DUET_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// Lexical baseline row, computed by Duet (BM25, k1 0.9, b 0.4, identifier splitting).
    #[arg(long, env = "DUET_EVAL_BASELINE", value_enum, default_value = "bm25")]
    pub baseline: Baseline,
    /// Corpus sample size (every relevant document is kept).
    #[arg(long, env = "DUET_EVAL_MAX_DOCS")]
    pub max_docs: Option<usize>,
    /// Test queries used (a seeded sample).
    #[arg(long, env = "DUET_EVAL_MAX_QUERIES")]
    pub max_queries: Option<usize>,
    /// Cut-offs for recall (the largest is also the search depth and the recall curve's end).
    #[arg(long, env = "DUET_EVAL_K", value_delimiter = ',', default_value = "1,10,100")]
    pub k: Vec<usize>,
    /// Seed of the samples, the bootstrap and the permutations.
    #[arg(long, env = "DUET_EVAL_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Graded judgements (query-id, doc-id, grade; tab-separated); default: DATA/qrels.tsv when it exists.
    #[arg(long, env = "DUET_EVAL_QRELS")]
    pub qrels: Option<PathBuf>,
    /// Bootstrap resamples for the 95 % intervals.
    #[arg(long, env = "DUET_EVAL_BOOTSTRAP", default_value_t = 1000)]
    pub bootstrap: usize,
    /// Random sign flips of the paired randomisation test.
    #[arg(long, env = "DUET_EVAL_PERMUTATIONS", default_value_t = 5000)]
    pub permutations: usize,
    /// Documents encoded per model to measure encoding speed (0: skip).
    #[arg(long, env = "DUET_EVAL_COST_DOCS", default_value_t = 64)]
    pub cost_docs: usize,
    /// Queries used for alignment and score gaps (0: skip the embedding-quality section).
    #[arg(long, env = "DUET_EVAL_QUALITY_QUERIES", default_value_t = 500)]
    pub quality_queries: usize,
    /// Folder for the report (report.md, report.json, plots).
    #[arg(long, env = "DUET_EVAL_OUT", default_value = "reports/eval")]
    pub out: PathBuf,
    /// Folder of the embedding caches (one SQLite file per data set, sample size and seed; default OUT/cache):
    /// runs sharing it encode each sample once per model.
    #[arg(long, env = "DUET_EVAL_CACHE")]
    pub cache: Option<PathBuf>,
    /// Path of libonnxruntime (after ORT_DYLIB_PATH; default: the project's .venv).
    // Not the shared `RuntimeArgs`: clap leaves an `Option<…>`-flattened struct (the plain `duet eval` above) `None`
    // when that struct flattens another one, so `duet eval --data` would be refused. The test below checks it.
    #[arg(long, env = "DUET_ONNXRUNTIME")]
    pub onnxruntime: Option<PathBuf>,
}

#[derive(ClapArgs)]
pub struct EvalTrainArgs {
    /// Training hyper-parameters (TOML, as `duet train --config`).
    #[arg(long, env = "DUET_EVAL_TRAIN_CONFIG")]
    pub train_config: Option<PathBuf>,
    /// Epochs at most (overrides the config; modest by default to bound the time).
    #[arg(long, env = "DUET_EVAL_EPOCHS", default_value_t = 3)]
    pub epochs: usize,
}

#[derive(ClapArgs)]
pub struct LearningCurveArgs {
    #[command(flatten)]
    pub eval: EvalArgs,
    #[command(flatten)]
    pub train: EvalTrainArgs,
    /// Training pair counts; `all` for every pair of DATA/train.jsonl.
    #[arg(long, env = "DUET_EVAL_SIZES", value_delimiter = ',', default_value = "1000,4000,16000,all")]
    pub sizes: Vec<String>,
}

#[derive(ClapArgs)]
pub struct CrossDomainArgs {
    #[command(flatten)]
    pub eval: EvalArgs,
    #[command(flatten)]
    pub train: EvalTrainArgs,
    /// Data folder to train on (train.jsonl, corpus.jsonl).
    #[arg(long, env = "DUET_EVAL_SOURCE")]
    pub source: PathBuf,
    /// Also train on --data's own train.jsonl, as the in-domain reference.
    #[arg(long, env = "DUET_EVAL_IN_DOMAIN")]
    pub in_domain: bool,
    /// Train on a seeded subset of this many pairs (default: all).
    #[arg(long, env = "DUET_EVAL_MAX_PAIRS")]
    pub max_pairs: Option<usize>,
}

fn run_options(args: &EvalArgs) -> anyhow::Result<RunOptions> {
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

fn train_config(args: &EvalTrainArgs) -> anyhow::Result<TrainConfig> {
    let mut config = match &args.train_config {
        Some(path) => TrainConfig::from_file(path)?,
        None => TrainConfig::default(),
    };
    config.epochs = args.epochs;
    Ok(config)
}

pub async fn run(command: Args) -> anyhow::Result<()> {
    match command.command {
        None => {
            let args = command.args.context("duet eval needs --data (or a subcommand)")?;
            let options = run_options(&args)?;
            anyhow::ensure!(
                !options.models.is_empty() || options.bm25,
                "nothing to evaluate: no --models, no baseline"
            );
            let report = run::evaluate(&options).await?;
            run::write_report(&report, &args.out)?;
            println!("{}", report::markdown(&report));
            eprintln!("report in {}", args.out.display());
        }
        Some(Subcommand::LearningCurve(args)) => {
            let sizes = args
                .sizes
                .iter()
                .map(|s| match s.as_str() {
                    "all" => Ok(None),
                    n => n.parse::<usize>().map(Some).with_context(|| format!("--sizes: {n:?} is not a count or all")),
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let options = curve::CurveOptions {
                run: run_options(&args.eval)?,
                sizes,
                train: train_config(&args.train)?,
                out: args.eval.out.clone(),
            };
            let result = curve::learning_curve(&options).await?;
            println!("{}", curve::curve_markdown(&result));
            eprintln!("learning curve in {}", args.eval.out.display());
        }
        Some(Subcommand::CrossDomain(args)) => {
            let options = curve::CrossDomainOptions {
                run: run_options(&args.eval)?,
                source: args.source.clone(),
                in_domain: args.in_domain,
                max_pairs: args.max_pairs,
                train: train_config(&args.train)?,
                out: args.eval.out.clone(),
            };
            let report = curve::cross_domain(&options).await?;
            println!("{}", report::scores_table(&report));
            eprintln!("cross-domain report in {}", args.eval.out.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};
    use super::*;

    fn parse(args: &[&str]) -> Args {
        let Command::Eval(eval) = Cli::try_parse_from(["duet", "eval"].iter().chain(args)).unwrap().command else {
            unreachable!("an eval command")
        };
        *eval
    }

    #[test]
    fn plain_eval_takes_its_flags_and_subcommands_take_theirs() {
        let eval = parse(&["--data", "d", "--models", "a,b", "--onnxruntime", "lib.so"]);
        let args = eval.args.expect("`duet eval --data` is the plain evaluation");
        assert_eq!((args.data.to_str(), args.models.len()), (Some("d"), 2));
        assert_eq!(args.onnxruntime.as_deref(), Some(std::path::Path::new("lib.so")));
        assert!(eval.command.is_none());
        let curve = parse(&["learning-curve", "--data", "d", "--sizes", "10,all", "--epochs", "1"]);
        let Some(Subcommand::LearningCurve(curve)) = curve.command else { panic!("a learning curve") };
        assert_eq!((curve.sizes.len(), curve.train.epochs), (2, 1));
    }
}
