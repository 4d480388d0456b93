//! The trainer's model stages: [`init`] the two towers from seeded random weights (IDF-scaled rows, the fixed
//! lexical channel, n-gram features), [`fit`] them with AdamW (warm-up then linear decay, [`learning_rate`]) and
//! lazy Adam on the embedding tables over in-batch negatives, and [`validate`] each epoch on the held-out pairs
//! ([`Validation`]) for early stopping and the choice of the best epoch. With a teacher, the pairs it encoded are
//! batched apart from the others ([`batches`]), and their batches add the distillation term ([`super::distill`])
//! and the teacher's hard negatives.
//!
//! It may use the towers, tables and ops of this module, the outputs of [`super::data`], and [`crate::util::rng`].

use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use super::data::{Encoded, Negatives};
use super::distill::{kl_to_teacher, TeacherTargets};
use super::ops::{AdamSettings, Batch};
use super::report::{self, EpochReport};
use super::tables::{self, LexicalChannel};
use super::teacher::Teacher;
use super::tower::{self, Tower, TowerShape, TwoTower};
use super::{Progress, TrainConfig, TrainError};
use crate::util::rng::Rng;

/// The held-out pairs and the documents they are ranked against.
pub struct Validation {
    /// `(query token ids, candidate indexes of the relevant documents)` per distinct query.
    pub queries: Vec<(Vec<u32>, Vec<usize>)>,
    /// Corpus indexes of the candidates.
    pub candidates: Vec<usize>,
    /// Pairs held out.
    pub pairs: usize,
}

/// What the training loop reads: the training pairs, the token ids, and the hard negatives.
pub struct TrainingSet<'a> {
    /// `(query, corpus index)` per training pair.
    pub pairs: &'a [(String, usize)],
    pub encoded: &'a Encoded,
    pub negatives: &'a Negatives<'a>,
    pub teacher: Option<&'a Teacher>,
}

/// An epoch's batches of training pairs (indexes), from the shuffled `order`: consecutive runs of `batch`
/// pairs; with a teacher, the pairs it encoded and the others are batched apart (each in the shuffled order), and
/// the batches are then shuffled by `rng`. Batches of fewer than 2 pairs are dropped.
pub fn batches(order: &[usize], batch: usize, teacher: Option<&Teacher>, rng: &mut Rng) -> Vec<Vec<usize>> {
    let Some(teacher) = teacher else {
        return order.chunks(batch).filter(|c| c.len() >= 2).map(<[usize]>::to_vec).collect();
    };
    let (taught, rest): (Vec<usize>, Vec<usize>) = order.iter().partition(|&&i| teacher.has_pair(i));
    let mut out: Vec<Vec<usize>> =
        taught.chunks(batch).chain(rest.chunks(batch)).filter(|c| c.len() >= 2).map(<[usize]>::to_vec).collect();
    rng.shuffle(&mut out);
    out
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

/// The untrained towers for a vocabulary of `vocab` tokens (`tok`'s). Token rows are scaled by IDF over the
/// training documents and queries (with `idf_init`); the lexical channel draws from its own seeded stream, so
/// adding it leaves every other starting weight as it was; the towers draw from `rng`.
pub fn init(
    config: &TrainConfig,
    tok: &tokenizers::Tokenizer,
    set: &TrainingSet,
    rng: &mut Rng,
    device: &Device,
) -> Result<TwoTower, TrainError> {
    let (train, encoded) = (set.pairs, set.encoded);
    let vocab = tok.get_vocab_size(true);
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
        let mut train_docs: Vec<usize> = train.iter().map(|(_, d)| *d).collect();
        train_docs.sort_unstable();
        train_docs.dedup();
        let texts: Vec<&[u32]> = train_docs
            .iter()
            .map(|&d| encoded.docs[d].as_slice())
            .chain(encoded.queries.iter().map(Vec::as_slice))
            .collect();
        Some(tables::idf_scales(&texts, vocab))
    } else {
        None
    };
    let row_scale = if config.idf_init { idf.as_deref() } else { None };
    // The lexical channel's rows: IDF to the power `lexical_idf_power`, again of unit root mean square.
    let lexical_idf: Option<Vec<f32>> = match (&idf, config.lexical_dim) {
        (Some(idf), 1..) => Some(tables::powered_scales(idf, config.lexical_idf_power as f32)),
        _ => None,
    };
    let lexical = (config.lexical_dim > 0).then(|| {
        LexicalChannel::new(
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
    Ok(TwoTower::new(shape, config.shared_towers, config.same_start, row_scale, token_ngrams.as_ref(), rng, device)?
        .with_lexical(lexical))
}

/// The towers of the best epoch and how training went.
pub struct Fitted {
    /// A snapshot of the epoch with the best validation MRR@10 (the first of equals).
    pub model: TwoTower,
    pub best_epoch: usize,
    pub validation_recall_at_10: f64,
    pub validation_mrr_at_10: f64,
    pub epochs: Vec<EpochReport>,
    pub stopped_early: bool,
    /// Optimisation steps only (validation excluded).
    pub training_seconds: f64,
    pub pairs_per_second: f64,
}

/// Trains `model` on the pairs of `set` for at most `config.epochs` epochs, shuffled by `rng`, validating after
/// each; stops after `patience` epochs without a better validation MRR@10.
pub fn fit(
    mut model: TwoTower,
    config: &TrainConfig,
    set: &TrainingSet,
    rng: &mut Rng,
    device: &Device,
    progress: &mut dyn FnMut(Progress),
) -> Result<Fitted, TrainError> {
    let (train, encoded) = (set.pairs, set.encoded);
    let (docs, query_ids) = (&encoded.docs, &encoded.queries);
    let (hard, positives) = (&set.negatives.hard, &set.negatives.positives);
    let mut optimizer = AdamW::new(
        model.vars(),
        ParamsAdamW { lr: config.learning_rate, weight_decay: config.weight_decay, ..Default::default() },
    )?;
    let batch = config.batch_size.min(train.len());
    let steps_per_epoch = match set.teacher {
        None => train.len().div_ceil(batch),
        Some(t) => {
            let taught = (0..train.len()).filter(|&i| t.has_pair(i)).count();
            taught.div_ceil(batch) + (train.len() - taught).div_ceil(batch)
        }
    };
    let total_steps = steps_per_epoch * config.epochs;
    progress(Progress::Start {
        steps: total_steps,
        train_pairs: train.len(),
        validation_pairs: encoded.validation.pairs,
    });

    let mut order: Vec<usize> = (0..train.len()).collect();
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
        let mut batch_count = 0;
        let (mut distill_sum, mut distill_batches) = (0.0, 0);
        for chunk in batches(&order, batch, set.teacher, rng) {
            let chunk = chunk.as_slice();
            let step_started = Instant::now();
            optimizer.set_learning_rate(learning_rate(config, step, total_steps));
            let q: Vec<&[u32]> = chunk.iter().map(|&i| query_ids[i].as_slice()).collect();
            let doc_ids: Vec<u32> = chunk.iter().map(|&i| train[i].1 as u32).collect();
            let taught = set.teacher.filter(|t| t.has_pair(chunk[0]));
            let teacher_hard = |i: usize| taught.and_then(|t| t.hard[i]);
            let hard_ids: Vec<u32> =
                chunk.iter().flat_map(|&i| hard[i].into_iter().chain(teacher_hard(i))).map(|h| h as u32).collect();
            let d: Vec<&[u32]> = doc_ids.iter().chain(&hard_ids).map(|&doc| docs[doc as usize].as_slice()).collect();
            let (qb, db) = (Batch::new(&q, device)?, Batch::new(&d, device)?);
            let q_side = model.query.leaf_rows(&qb, device)?;
            let d_side = model.document_tower().leaf_rows(&db, device)?;
            let qv = model.query.forward_rows(&q_side.rows()?, &qb)?;
            let dv = model.document_tower().forward_rows(&d_side.rows()?, &db)?;
            let mask = tower::negatives_mask(
                &doc_ids,
                &hard_ids,
                |i, h| positives[train[chunk[i]].0.as_str()].contains(&(h as usize)),
                device,
            )?;
            let mut loss = tower::info_nce(&qv, &dv, config.temperature, mask.as_ref(), config.symmetric_loss)?;
            if let Some(teacher) = taught.filter(|_| config.distill_weight > 0.0) {
                let columns: Vec<u32> = doc_ids.iter().chain(&hard_ids).copied().collect();
                let host_mask = match &mask {
                    Some(m) => Some(m.flatten_all()?.to_vec1::<f32>()?),
                    None => None,
                };
                let scores = teacher.scores(chunk, &columns);
                let targets = TeacherTargets::new(
                    &scores,
                    columns.len(),
                    config.teacher_temperature,
                    host_mask.as_deref(),
                    device,
                )?;
                let mut logits = (qv.matmul(&dv.t()?)? / config.temperature)?;
                if let Some(m) = &mask {
                    logits = logits.broadcast_add(m)?;
                }
                let kl = kl_to_teacher(&logits, &targets)?;
                distill_sum += tower::scalar(&kl)? as f64;
                distill_batches += 1;
                loss = (loss + (kl * config.distill_weight)?)?;
            }
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
            batch_count += 1;
            step += 1;
            progress(Progress::Step {
                step,
                epoch,
                loss,
                pairs_per_second: pairs_seen as f64 / training_seconds.max(1e-9),
            });
        }
        let (recall, mrr) = validate(&model, &encoded.validation, docs, device)?;
        let report = EpochReport {
            epoch,
            mean_loss: loss_sum / batch_count.max(1) as f64,
            validation_recall_at_10: recall,
            validation_mrr_at_10: mrr,
            seconds: epoch_started.elapsed().as_secs_f64(),
            distill_loss: set.teacher.map(|_| distill_sum / distill_batches.max(1) as f64),
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
    Ok(Fitted {
        model: best_model,
        best_epoch,
        validation_recall_at_10: best_recall,
        validation_mrr_at_10: best_mrr,
        epochs,
        stopped_early,
        training_seconds,
        pairs_per_second: pairs_seen as f64 / training_seconds.max(1e-9),
    })
}

/// Encodes token sequences with a tower in batches, returning a `[n, dim]` tensor.
fn encode_tensor(tower: &Tower, texts: &[&[u32]], device: &Device) -> Result<Tensor, TrainError> {
    let mut parts = Vec::new();
    for chunk in texts.chunks(1024) {
        parts.push(tower.forward(&Batch::new(chunk, device)?)?.detach());
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Recall@10 and MRR@10 of `model` on the validation queries, ranking the candidates (token ids in `docs`, by
/// corpus index); zeros when nothing was held out.
pub fn validate(
    model: &TwoTower,
    v: &Validation,
    docs: &[Vec<u32>],
    device: &Device,
) -> Result<(f64, f64), TrainError> {
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
}
