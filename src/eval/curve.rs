//! Evaluations that train first: the learning curve (`duet eval learning-curve`: the two-tower model trained
//! with [`crate::train::train`] on growing, nested, seeded subsets of the training pairs, each evaluated on the
//! same sample beside the pretrained models, with the crossover points named) and the cross-domain run
//! (`duet eval cross-domain`: trained on one data set, tested on another, beside the pretrained models and a
//! two-tower trained in domain).

use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::plots::{self, CurveLine};
use super::report::{self, EvalReport};
use super::run::{evaluate, set_name, write_report, RunOptions};
use super::stats::Interval;
use super::{read_lines, EvalError};
use crate::train::{Progress, TrainConfig, TrainOptions};
use crate::util::fs::{self, FileError};
use crate::util::rng::Rng;

/// One two-tower model to train.
#[derive(Debug, Clone)]
pub struct TrainSpec {
    /// Model name (also its folder name).
    pub name: String,
    /// Training pairs (JSONL) and the corpus their documents come from.
    pub pairs: PathBuf,
    pub corpus: PathBuf,
    /// A seeded subset of the pairs; `None` for all. Subsets of one file with one seed are nested.
    pub max_pairs: Option<usize>,
}

/// What training a spec gave.
#[derive(Debug, Clone, Serialize)]
pub struct Trained {
    pub name: String,
    pub dir: PathBuf,
    /// Pairs given to the trainer, and those it trained on (the rest is its validation slice).
    pub pairs_given: usize,
    pub train_pairs: usize,
    pub validation_mrr_at_10: f64,
    pub epochs_run: usize,
    pub seconds: f64,
}

/// Trains every spec into `out/models/<name>` (pair subsets go to `out/pairs/<name>.jsonl`). Training runs in
/// place on the calling thread (`block_in_place`): call it outside a runtime or on a multi-threaded one.
pub fn train_all(
    specs: &[TrainSpec],
    config: &TrainConfig,
    out: &Path,
    seed: u64,
    progress: bool,
) -> Result<Vec<Trained>, EvalError> {
    let mut trained = Vec::new();
    for spec in specs {
        let lines: Vec<String> = read_lines(&spec.pairs)?.into_iter().filter(|l| !l.trim().is_empty()).collect();
        let pairs_file = match spec.max_pairs {
            Some(n) if n < lines.len() => {
                let mut order: Vec<usize> = (0..lines.len()).collect();
                Rng::new(seed).shuffle(&mut order);
                let path = out.join("pairs").join(format!("{}.jsonl", spec.name));
                write_lines(&path, order.iter().take(n).map(|&i| lines[i].as_str()))?;
                path
            }
            _ => spec.pairs.clone(),
        };
        let pairs_given = spec.max_pairs.map_or(lines.len(), |n| n.min(lines.len()));
        let dir = out.join("models").join(&spec.name);
        let options = TrainOptions {
            pairs: pairs_file,
            corpus: spec.corpus.clone(),
            out: dir.clone(),
            name: Some(spec.name.clone()),
            config: config.clone(),
            teacher_cache: None,
            onnxruntime: None,
        };
        let bar = if progress { ProgressBar::new(0) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} training {prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
            )
            .expect("valid template"),
        );
        bar.set_prefix(spec.name.clone());
        let result = tokio::task::block_in_place(|| {
            crate::train::train(&options, &mut |event| match event {
                Progress::Phase(phase) => bar.set_message(phase),
                Progress::Start { steps, .. } => bar.set_length(steps as u64),
                Progress::Step { step, epoch, loss, .. } => {
                    bar.set_position(step as u64);
                    bar.set_message(format!("epoch {epoch} loss {loss:.3}"));
                }
                Progress::Epoch(_) => {}
            })
        })?;
        bar.finish_and_clear();
        let r = &result.report;
        if progress {
            eprintln!(
                "{}: {} training pairs, validation MRR@10 {:.3}, {:.0} s",
                spec.name, r.train_pairs, r.validation_mrr_at_10, r.total_seconds
            );
        }
        trained.push(Trained {
            name: spec.name.clone(),
            dir,
            pairs_given,
            train_pairs: r.train_pairs,
            validation_mrr_at_10: r.validation_mrr_at_10,
            epochs_run: r.epochs_run,
            seconds: r.total_seconds,
        });
    }
    Ok(trained)
}

fn write_lines<'a>(path: &Path, lines: impl Iterator<Item = &'a str>) -> Result<(), EvalError> {
    let err = FileError::writing(path);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(&err)?);
    for line in lines {
        writeln!(file, "{line}").map_err(&err)?;
    }
    Ok(file.flush().map_err(err)?)
}

fn write_text(path: &Path, text: &str) -> Result<(), EvalError> {
    Ok(fs::write(path, text)?)
}

/// One size of the learning curve.
#[derive(Debug, Clone, Serialize)]
pub struct CurvePoint {
    pub trained: Trained,
    pub mrr_at_10: Interval,
    pub ndcg_at_10: Interval,
}

/// Where the two-tower curve reaches a reference system.
#[derive(Debug, Clone, Serialize)]
pub struct Crossover {
    pub reference: String,
    pub reference_mrr_at_10: f64,
    /// The first measured size whose MRR@10 is at or above the reference's, if any.
    pub first_size_at_or_above: Option<usize>,
    /// Interpolated on log(pairs) between the measured sizes around the crossing.
    pub interpolated_pairs: Option<f64>,
    /// Paired test at that size (two-tower − reference), MRR@10.
    pub difference: Option<Interval>,
    pub p_value: Option<f64>,
    pub reading: String,
}

/// `learning_curve.json`.
#[derive(Debug, Clone, Serialize)]
pub struct LearningCurve {
    pub set: String,
    pub points: Vec<CurvePoint>,
    pub crossovers: Vec<Crossover>,
    pub train_config: TrainConfig,
    pub evaluation: EvalReport,
}

/// Names where the curve crosses each reference level.
pub fn crossover(sizes: &[(usize, f64)], reference: f64) -> (Option<usize>, Option<f64>) {
    let Some(i) = sizes.iter().position(|(_, y)| *y >= reference) else { return (None, None) };
    if i == 0 {
        return (Some(sizes[0].0), None);
    }
    let ((x0, y0), (x1, y1)) = (sizes[i - 1], sizes[i]);
    let t = if y1 > y0 { (reference - y0) / (y1 - y0) } else { 1.0 };
    let (l0, l1) = ((x0 as f64).ln(), (x1 as f64).ln());
    (Some(x1), Some((l0 + t * (l1 - l0)).exp()))
}

/// Settings of a learning curve.
#[derive(Debug, Clone)]
pub struct CurveOptions {
    /// Evaluation settings; `run.data.data` holds train.jsonl, test.jsonl and corpus.jsonl; `run.models` are the
    /// pretrained models compared.
    pub run: RunOptions,
    /// Training pair counts (`None`: all).
    pub sizes: Vec<Option<usize>>,
    pub train: TrainConfig,
    pub out: PathBuf,
}

fn size_label(n: usize) -> String {
    if n >= 1000 && n % 1000 == 0 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// Trains at every size, evaluates them all beside the pretrained models, and writes the curve.
pub async fn learning_curve(options: &CurveOptions) -> Result<LearningCurve, EvalError> {
    let data = &options.run.data.data;
    let specs: Vec<TrainSpec> = options
        .sizes
        .iter()
        .map(|size| TrainSpec {
            name: format!("two-tower-{}", size.map_or("all".into(), size_label)),
            pairs: data.join("train.jsonl"),
            corpus: data.join("corpus.jsonl"),
            max_pairs: *size,
        })
        .collect();
    let trained = train_all(&specs, &options.train, &options.out, options.run.data.seed, options.run.progress)?;
    let mut run = options.run.clone();
    run.models.extend(trained.iter().map(|t| t.dir.clone()));
    let evaluation = evaluate(&run).await?;
    write_report(&evaluation, &options.out)?;
    let exact = |name: &str| {
        evaluation.scores.iter().find(|s| s.system == name && s.method != "hnsw").expect("every system was scored")
    };
    let points: Vec<CurvePoint> = trained
        .iter()
        .map(|t| {
            let s = exact(&t.name);
            CurvePoint { trained: t.clone(), mrr_at_10: s.mrr_at_10, ndcg_at_10: s.ndcg_at_10 }
        })
        .collect();
    let curve: Vec<(usize, f64)> = points.iter().map(|p| (p.trained.pairs_given, p.mrr_at_10.mean)).collect();
    let trained_names: Vec<&str> = trained.iter().map(|t| t.name.as_str()).collect();
    let references: Vec<(String, f64)> = evaluation
        .scores
        .iter()
        .filter(|s| s.method != "hnsw" && !trained_names.contains(&s.system.as_str()))
        .map(|s| (s.system.clone(), s.mrr_at_10.mean))
        .collect();
    let crossovers = references
        .iter()
        .map(|(name, level)| {
            let (first, interpolated) = crossover(&curve, *level);
            let at = first.and_then(|n| points.iter().find(|p| p.trained.pairs_given == n));
            let test = at.and_then(|p| {
                evaluation.comparisons.iter().find(|c| {
                    c.metric == "MRR@10"
                        && ((c.a == p.trained.name && &c.b == name) || (&c.a == name && c.b == p.trained.name))
                })
            });
            let (difference, p_value) = match (at, test) {
                (Some(p), Some(c)) => {
                    let d = if c.a == p.trained.name {
                        c.difference
                    } else {
                        Interval { mean: -c.difference.mean, low: -c.difference.high, high: -c.difference.low }
                    };
                    (Some(d), Some(c.p_holm))
                }
                _ => (None, None),
            };
            let reading = match (first, interpolated) {
                (None, _) => format!(
                    "the two-tower model stays below {name} ({level:.3}) up to {} pairs",
                    curve.last().map_or(0, |c| c.0)
                ),
                (Some(n), None) => {
                    format!("the two-tower model is at or above {name} ({level:.3}) from the smallest size, {n} pairs")
                }
                (Some(n), Some(x)) => format!(
                    "the two-tower model reaches {name} ({level:.3}) at about {:.0} pairs (first measured at {n})",
                    x
                ),
            };
            Crossover {
                reference: name.clone(),
                reference_mrr_at_10: *level,
                first_size_at_or_above: first,
                interpolated_pairs: interpolated,
                difference,
                p_value,
                reading,
            }
        })
        .collect();
    let result =
        LearningCurve { set: set_name(data), points, crossovers, train_config: options.train.clone(), evaluation };
    let line = CurveLine {
        name: "two-tower".into(),
        points: result
            .points
            .iter()
            .map(|p| (p.trained.pairs_given as f64, p.mrr_at_10.mean, p.mrr_at_10.low, p.mrr_at_10.high))
            .collect(),
    };
    plots::learning_curve(
        &format!(
            "{}: two-tower MRR@10 vs training pairs ({} docs, {} queries)",
            result.set, result.evaluation.corpus_documents, result.evaluation.queries
        ),
        "MRR@10",
        &[line],
        &references,
        &options.out.join("learning_curve.svg"),
    )?;
    let json = serde_json::to_string_pretty(&result)?;
    write_text(&options.out.join("learning_curve.json"), &(json + "\n"))?;
    write_text(&options.out.join("learning_curve.md"), &curve_markdown(&result))?;
    Ok(result)
}

/// The learning curve as Markdown.
pub fn curve_markdown(curve: &LearningCurve) -> String {
    let e = &curve.evaluation;
    let mut out = format!(
        "# Learning curve: {}\n\nTwo-tower models trained on nested seeded subsets of `train.jsonl` ({} epochs at \
         most, early stopping on a validation slice held out by source), each scored on the same sample as the \
         pretrained models: {} of {} documents, {} test queries. Exact search.\n\n\
         | pairs given | trained on | MRR@10 [95 % CI] | nDCG@10 [95 % CI] | validation MRR@10 | epochs | train s |\n\
         |---|---|---|---|---|---|---|\n",
        curve.set, curve.train_config.epochs, e.corpus_documents, e.corpus_total, e.queries
    );
    for p in &curve.points {
        out += &format!(
            "| {} | {} | {:.3} [{:.3}, {:.3}] | {:.3} [{:.3}, {:.3}] | {:.3} | {} | {:.0} |\n",
            p.trained.pairs_given,
            p.trained.train_pairs,
            p.mrr_at_10.mean,
            p.mrr_at_10.low,
            p.mrr_at_10.high,
            p.ndcg_at_10.mean,
            p.ndcg_at_10.low,
            p.ndcg_at_10.high,
            p.trained.validation_mrr_at_10,
            p.trained.epochs_run,
            p.trained.seconds
        );
    }
    out += "\n## Crossover points\n\n";
    for c in &curve.crossovers {
        out += &format!("- {}", c.reading);
        if let (Some(d), Some(p)) = (c.difference, c.p_value) {
            out += &format!(
                "; at that size two-tower − {} = {:+.3} [{:+.3}, {:+.3}], p (Holm) {:.3}",
                c.reference, d.mean, d.low, d.high, p
            );
        }
        out += ".\n";
    }
    out += "\n![learning curve](learning_curve.svg)\n\n## All systems on this sample\n\n";
    out += &report::scores_table(e);
    out
}

/// Settings of a cross-domain run.
#[derive(Debug, Clone)]
pub struct CrossDomainOptions {
    /// Evaluation on the target set (`run.data.data`) with the pretrained models `run.models`.
    pub run: RunOptions,
    /// Data folder trained on (train.jsonl, corpus.jsonl).
    pub source: PathBuf,
    /// Also train on the target's own train.jsonl, for the in-domain reference.
    pub in_domain: bool,
    pub max_pairs: Option<usize>,
    pub train: TrainConfig,
    pub out: PathBuf,
}

/// Trains on the source (and, optionally, the target), then evaluates on the target.
pub async fn cross_domain(options: &CrossDomainOptions) -> Result<EvalReport, EvalError> {
    let target = &options.run.data.data;
    let (source_name, target_name) = (set_name(&options.source), set_name(target));
    let mut specs = vec![TrainSpec {
        name: format!("two-tower-from-{source_name}"),
        pairs: options.source.join("train.jsonl"),
        corpus: options.source.join("corpus.jsonl"),
        max_pairs: options.max_pairs,
    }];
    if options.in_domain {
        specs.push(TrainSpec {
            name: format!("two-tower-from-{target_name}"),
            pairs: target.join("train.jsonl"),
            corpus: target.join("corpus.jsonl"),
            max_pairs: options.max_pairs,
        });
    }
    let trained = train_all(&specs, &options.train, &options.out, options.run.data.seed, options.run.progress)?;
    let mut run = options.run.clone();
    run.models.extend(trained.iter().map(|t| t.dir.clone()));
    let report = evaluate(&run).await?;
    write_report(&report, &options.out)?;
    let mut md = format!(
        "# Cross-domain: trained on {source_name}, tested on {target_name}\n\n`two-tower-from-{source_name}` never \
         saw {target_name}: its tokenizer and weights come from {source_name} alone. {} of {} documents, {} \
         queries, exact search unless marked.\n\n",
        report.corpus_documents, report.corpus_total, report.queries
    );
    md += &report::scores_table(&report);
    md += "\n";
    md += &report::comparisons_table(&report, "MRR@10");
    write_text(&options.out.join("cross_domain.md"), &md)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossover_is_named_and_interpolated_on_log_pairs() {
        let curve = [(1000, 0.1), (4000, 0.2), (16000, 0.4)];
        assert_eq!(crossover(&curve, 0.5), (None, None));
        assert_eq!(crossover(&curve, 0.05), (Some(1000), None));
        let (first, x) = crossover(&curve, 0.3);
        assert_eq!(first, Some(16000));
        // Half-way between ln 4000 and ln 16000: 8000.
        assert!((x.unwrap() - 8000.0).abs() < 1e-6);
        assert_eq!(size_label(16000), "16k");
        assert_eq!(size_label(1500), "1500");
    }
}
