//! The two towers and their loss in candle: per tower, token rows ([`super::tables`]) → pooling (the fused mean
//! of [`super::ops`], or learned attention; optionally with term-frequency saturation) → linear layers (tanh
//! between them) → L2 normalisation, with an optional fixed lexical channel appended; [`TwoTower`] pairs a query
//! and a document tower (or shares one), and [`info_nce`] with its masks is the loss over in-batch negatives.
//!
//! It may use [`super::tables`], [`super::ops`] and [`crate::util::rng`]; the training loop and the ONNX export
//! read it.

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::ops::{l2_normalise, AdamSettings, Batch, MeanBag};
use super::tables::{normal, EmbeddingTable, LeafGradients, LeafRows, LexicalChannel, NgramFeatures};
use super::TrainError;
use crate::util::rng::Rng;

/// How a tower turns token vectors into one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TowerPooling {
    /// Mean of the token embeddings.
    Mean,
    /// Softmax-weighted mean, one learned score per token (`x · w`).
    Attention,
}

/// Shape of one tower.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TowerShape {
    pub vocab: usize,
    pub embedding: usize,
    /// Width of the hidden layer; 0 for a single linear layer.
    pub hidden: usize,
    pub output: usize,
    pub pooling: TowerPooling,
    /// Buckets of hashed character n-gram features per token ([`NgramFeatures`]); 0 for none.
    pub ngram_buckets: usize,
    /// Term-frequency saturation of pooling ([`Batch::tf_weights`]): 1 for a plain mean.
    pub tf_power: f64,
}

/// One tower's weights.
pub struct Tower {
    pub embedding: EmbeddingTable,
    /// Hashed character n-gram features added to each token's row (DSSM-style word hashing), if any.
    pub ngrams: Option<NgramFeatures>,
    pub attention: Option<Var>,
    /// `(weight [out, in], bias [out])` per layer.
    pub layers: Vec<(Var, Var)>,
    pub shape: TowerShape,
    /// The fixed lexical channel appended to the output, if any (shared with the other tower).
    pub lexical: Option<LexicalChannel>,
}

impl Tower {
    /// A tower with seeded random weights. `row_scale` (one factor per token, e.g. from [`idf_scales`]) multiplies
    /// each token's random row: near-orthogonal random rows scaled by IDF make the untrained tower close to an
    /// IDF-weighted bag of words (see [`idf_scales`]). `token_ngrams` gives the n-gram buckets of each token when
    /// `shape.ngram_buckets` is positive.
    pub fn new(
        shape: TowerShape,
        row_scale: Option<&[f32]>,
        token_ngrams: Option<&std::sync::Arc<Vec<Vec<u32>>>>,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let TowerShape { vocab, embedding, hidden, output, pooling, ngram_buckets, .. } = shape;
        let mut weights = normal(rng, vocab * embedding, 0.1);
        if let Some(scale) = row_scale {
            if scale.len() != vocab {
                return Err(TrainError::Config(format!("{} row scales for {vocab} tokens", scale.len())));
            }
            for (row, s) in weights.chunks_mut(embedding).zip(scale) {
                row.iter_mut().for_each(|w| *w *= s);
            }
        }
        let emb = EmbeddingTable::new(weights, vocab, embedding);
        let ngrams = match (ngram_buckets, token_ngrams) {
            (0, _) => None,
            (buckets, Some(of_token)) if of_token.len() == vocab => Some(NgramFeatures {
                // Zero rows: the untrained tower is the token embeddings alone; the n-grams learn what tokens share.
                table: EmbeddingTable::new(vec![0.0; buckets * embedding], buckets, embedding),
                of_token: of_token.clone(),
            }),
            _ => return Err(TrainError::Config("n-gram buckets without the n-grams of every token".into())),
        };
        let attention = match pooling {
            TowerPooling::Mean => None,
            TowerPooling::Attention => Some(Var::from_tensor(&Tensor::zeros((embedding, 1), DType::F32, device)?)?),
        };
        let dims: Vec<usize> = if hidden == 0 { vec![embedding, output] } else { vec![embedding, hidden, output] };
        let mut layers = Vec::new();
        for w in dims.windows(2) {
            let (inp, out) = (w[0], w[1]);
            // Xavier-normal.
            let std = (2.0 / (inp + out) as f64).sqrt();
            let weight = Tensor::from_vec(normal(rng, out * inp, std), (out, inp), device)?;
            let bias = Tensor::zeros(out, DType::F32, device)?;
            layers.push((Var::from_tensor(&weight)?, Var::from_tensor(&bias)?));
        }
        Ok(Self { embedding: emb, ngrams, attention, layers, shape, lexical: None })
    }

    /// Every variable candle's optimiser trains (all but the embedding table).
    pub fn vars(&self) -> Vec<Var> {
        let mut vars = Vec::new();
        vars.extend(self.attention.iter().cloned());
        for (w, b) in &self.layers {
            vars.push(w.clone());
            vars.push(b.clone());
        }
        vars
    }

    pub fn parameters(&self) -> usize {
        self.embedding.weights.len()
            + self.ngrams.as_ref().map_or(0, |n| n.table.weights.len())
            + self.vars().iter().map(|v| v.elem_count()).sum::<usize>()
    }

    /// A copy of the weights that no longer changes with training (for keeping the best epoch).
    pub fn snapshot(&self) -> Result<Self, TrainError> {
        let copy = |v: &Var| -> Result<Var, TrainError> { Ok(Var::from_tensor(&v.as_tensor().copy()?)?) };
        Ok(Self {
            embedding: self.embedding.clone(),
            ngrams: self.ngrams.clone(),
            attention: self.attention.as_ref().map(copy).transpose()?,
            layers: self.layers.iter().map(|(w, b)| Ok((copy(w)?, copy(b)?))).collect::<Result<_, TrainError>>()?,
            shape: self.shape,
            lexical: self.lexical.clone(),
        })
    }

    /// Width of the output vectors: the learned part plus the lexical channel.
    pub fn output_dim(&self) -> usize {
        self.shape.output + self.lexical.as_ref().map_or(0, |l| l.dim)
    }

    /// L2-normalised vectors `[batch, output]` for a batch.
    pub fn forward(&self, batch: &Batch) -> Result<Tensor, TrainError> {
        let device = batch.ids.device();
        let mut rows = self.embedding.gather(&batch.unique, device)?;
        if let Some(ngrams) = &self.ngrams {
            let nb = ngrams.batch(&batch.unique, device)?;
            rows = (rows + ngrams.combine(&ngrams.table.gather(&nb.buckets, device)?, &nb)?)?;
        }
        self.forward_rows(&rows, batch)
    }

    /// The rows of `batch` as leaves to differentiate (training).
    pub fn leaf_rows(&self, batch: &Batch, device: &Device) -> Result<LeafRows, TrainError> {
        LeafRows::gather(&self.embedding, self.ngrams.as_ref(), batch, device)
    }

    /// One lazy-Adam step on the sparse tables from the gradients of one or more [`LeafRows`] of this tower.
    pub fn apply_sparse(&mut self, updates: &[(&LeafRows, LeafGradients)], adam: AdamSettings) {
        LeafRows::apply(updates, &mut self.embedding, self.ngrams.as_mut(), adam);
    }

    /// The token rows the exported graph gathers from: the embedding table with each token's n-gram features
    /// folded in (the n-grams of a token are a fixed function of its id, so serving needs no n-gram input).
    pub fn folded_embedding(&self) -> Result<Vec<f32>, TrainError> {
        let Some(ngrams) = &self.ngrams else { return Ok(self.embedding.weights.clone()) };
        let all: Vec<u32> = (0..self.embedding.vocab as u32).collect();
        let mut out = Vec::with_capacity(self.embedding.weights.len());
        for chunk in all.chunks(4096) {
            let nb = ngrams.batch(chunk, &Device::Cpu)?;
            let extra = ngrams.combine(&ngrams.table.gather(&nb.buckets, &Device::Cpu)?, &nb)?;
            let rows = (self.embedding.gather(chunk, &Device::Cpu)? + extra)?;
            out.extend(rows.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// [`Tower::forward`] with the batch's embedding rows given (`[unique, E]`, a leaf to differentiate).
    pub fn forward_rows(&self, rows: &Tensor, batch: &Batch) -> Result<Tensor, TrainError> {
        let device = batch.ids.device();
        let e = self.shape.embedding;
        let tf = batch.tf_weights(self.shape.tf_power);
        let mut h = match &self.attention {
            None => rows.contiguous()?.apply_op1(MeanBag::new(batch, tf.clone()))?,
            Some(w) => {
                let x = rows.index_select(&batch.ids, 0)?; // [tokens, E]
                let mut scores = x.matmul(w.as_tensor())?; // [tokens, 1]
                if let Some(tf) = &tf {
                    // softmax(s + ln w) weighs each token's exp(s) by w.
                    let ln: Vec<f32> = tf.iter().map(|w| w.ln()).collect();
                    scores = scores.broadcast_add(&Tensor::from_vec(ln, (tf.len(), 1), device)?)?;
                }
                if scores.dim(0)? == 0 {
                    Tensor::zeros((batch.size, e), DType::F32, device)?
                } else {
                    // A softmax per text; subtracting the batch's largest score leaves each text's ratios as they are.
                    let top = scores.max_keepdim(0)?.detach();
                    let weights = scores.broadcast_sub(&top)?.exp()?; // [tokens, 1]
                    let num = Tensor::zeros((batch.size, e), DType::F32, device)?.index_add(
                        &batch.rows,
                        &x.broadcast_mul(&weights)?,
                        0,
                    )?;
                    let den = Tensor::zeros((batch.size, 1), DType::F32, device)?
                        .index_add(&batch.rows, &weights, 0)?
                        .clamp(1e-30f32, f32::MAX)?;
                    num.broadcast_div(&den)?
                }
            }
        };
        let last = self.layers.len() - 1;
        for (i, (w, b)) in self.layers.iter().enumerate() {
            h = h.matmul(&w.as_tensor().t()?)?.broadcast_add(b.as_tensor())?;
            if i < last {
                h = h.tanh()?;
            }
        }
        // sqrt's gradient at 0 is infinite, and the clamp's zero gradient times infinity is NaN: a text that pools
        // to a zero vector (no known token) poisoned training. A tiny floor inside the root keeps the gradient
        // finite; the forward pass stays within 1e-12 of the exported graph's Sqrt + Max.
        let learned = l2_normalise(&h)?;
        match &self.lexical {
            None => Ok(learned),
            Some(lexical) => {
                // Unit length already, but for an empty text (no lexical part): normalised again, as serving does.
                let both = Tensor::cat(&[(learned * (1.0 - lexical.weight).sqrt())?, lexical.forward(batch, tf)?], 1)?;
                l2_normalise(&both)
            }
        }
    }
}

/// Query and document towers; with shared weights both sides use the query tower.
pub struct TwoTower {
    pub query: Tower,
    pub document: Option<Tower>,
}

impl TwoTower {
    /// With `same_start`, separate towers start from the same weights: a token no training pair contains keeps
    /// the same vector on both sides, so it still matches itself (with independent starts it is noise).
    pub fn new(
        shape: TowerShape,
        shared: bool,
        same_start: bool,
        row_scale: Option<&[f32]>,
        token_ngrams: Option<&std::sync::Arc<Vec<Vec<u32>>>>,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let query = Tower::new(shape, row_scale, token_ngrams, rng, device)?;
        let document = match (shared, same_start) {
            (true, _) => None,
            (false, true) => Some(query.snapshot()?),
            (false, false) => Some(Tower::new(shape, row_scale, token_ngrams, rng, device)?),
        };
        Ok(Self { query, document })
    }

    /// Appends the same fixed lexical channel to both towers.
    pub fn with_lexical(mut self, lexical: Option<LexicalChannel>) -> Self {
        self.query.lexical = lexical.clone();
        if let Some(d) = &mut self.document {
            d.lexical = lexical;
        }
        self
    }

    pub fn document_tower(&self) -> &Tower {
        self.document.as_ref().unwrap_or(&self.query)
    }

    pub fn vars(&self) -> Vec<Var> {
        let mut vars = self.query.vars();
        if let Some(d) = &self.document {
            vars.extend(d.vars());
        }
        vars
    }

    pub fn parameters(&self) -> usize {
        self.query.parameters() + self.document.as_ref().map_or(0, Tower::parameters)
    }

    pub fn snapshot(&self) -> Result<Self, TrainError> {
        Ok(Self { query: self.query.snapshot()?, document: self.document.as_ref().map(Tower::snapshot).transpose()? })
    }
}

/// InfoNCE over in-batch negatives: row i of `queries` (`[n, E]`) should match row i of `documents` among all
/// rows; `documents` may have more rows than `queries` (`[n + h, E]`: the extra rows are hard negatives, scored
/// against every query). `same_document` (additive, `[n, n + h]`) masks out pairs that are not negatives (another
/// pair with the same document, a hard negative that is one of the query's documents). With `symmetric`, the
/// documents → queries direction over the `n` paired documents is added (mean of both).
pub fn info_nce(
    queries: &Tensor,
    documents: &Tensor,
    temperature: f64,
    same_document: Option<&Tensor>,
    symmetric: bool,
) -> Result<Tensor, TrainError> {
    let n = queries.dim(0)?;
    let mut logits = (queries.matmul(&documents.t()?)? / temperature)?;
    if let Some(mask) = same_document {
        logits = logits.broadcast_add(mask)?;
    }
    let targets = Tensor::arange(0u32, n as u32, queries.device())?;
    let mut loss = candle_nn::loss::cross_entropy(&logits, &targets)?;
    if symmetric {
        let paired = if documents.dim(0)? > n { logits.narrow(1, 0, n)? } else { logits };
        let back = candle_nn::loss::cross_entropy(&paired.t()?.contiguous()?, &targets)?;
        loss = ((loss + back)? * 0.5)?;
    }
    Ok(loss)
}

/// The additive mask for [`info_nce`]: -1e4 where two different pairs of the batch share a document, else 0.
pub fn same_document_mask(doc_ids: &[u32], device: &Device) -> Result<Option<Tensor>, TrainError> {
    negatives_mask(doc_ids, &[], |_, _| false, device)
}

/// [`same_document_mask`] with hard-negative columns after the paired ones (`[n, n + h]`): column `n + k` is
/// masked for query i where `is_positive(i, hard[k])` (the hard negative is one of that query's documents).
pub fn negatives_mask(
    doc_ids: &[u32],
    hard: &[u32],
    is_positive: impl Fn(usize, u32) -> bool,
    device: &Device,
) -> Result<Option<Tensor>, TrainError> {
    let n = doc_ids.len();
    let cols = n + hard.len();
    let mut mask = vec![0f32; n * cols];
    let mut any = false;
    for i in 0..n {
        for j in 0..n {
            if i != j && doc_ids[i] == doc_ids[j] {
                mask[i * cols + j] = -1e4;
                any = true;
            }
        }
        for (k, &h) in hard.iter().enumerate() {
            if h == doc_ids[i] || is_positive(i, h) {
                mask[i * cols + n + k] = -1e4;
                any = true;
            }
        }
    }
    if !any {
        return Ok(None);
    }
    Ok(Some(Tensor::from_vec(mask, (n, cols), device)?))
}

/// Row-major `[n, dim]` vectors out of a tensor.
pub fn to_rows(t: &Tensor) -> Result<Vec<Vec<f32>>, TrainError> {
    Ok(t.to_vec2::<f32>()?)
}

/// Mean of a scalar loss tensor as f32.
pub fn scalar(t: &Tensor) -> Result<f32, TrainError> {
    Ok(t.to_dtype(DType::F32)?.mean_all()?.to_scalar::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::tables::{idf_scales, token_ngrams};

    /// IDF scales over 50 texts of a 20-token vocabulary: token 2 is in every text, token 3 in one.
    fn rare_and_common_scales() -> Vec<f32> {
        let texts: Vec<Vec<u32>> = (0..50).map(|i| if i == 0 { vec![2, 3] } else { vec![2, 4 + (i % 10)] }).collect();
        let refs: Vec<&[u32]> = texts.iter().map(Vec::as_slice).collect();
        idf_scales(&refs, 20)
    }

    fn shape(pooling: TowerPooling, hidden: usize) -> TowerShape {
        TowerShape { vocab: 20, embedding: 8, hidden, output: 4, pooling, ngram_buckets: 0, tf_power: 1.0 }
    }

    #[test]
    fn ragged_pooling_ignores_other_texts_and_vectors_are_unit_length() {
        let device = Device::Cpu;
        for pooling in [TowerPooling::Mean, TowerPooling::Attention] {
            let tower = Tower::new(shape(pooling, 6), None, None, &mut Rng::new(1), &device).unwrap();
            let a: &[u32] = &[3, 4, 5];
            let b: &[u32] = &[7];
            let together = to_rows(&tower.forward(&Batch::new(&[a, b, &[]], &device).unwrap()).unwrap()).unwrap();
            let alone = to_rows(&tower.forward(&Batch::new(&[a], &device).unwrap()).unwrap()).unwrap();
            for (x, y) in together[0].iter().zip(&alone[0]) {
                assert!((x - y).abs() < 1e-6);
            }
            for row in &together[..2] {
                let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
                assert!((norm - 1.0).abs() < 1e-5, "{norm}");
            }
            // An empty text pools to zero; with the initial zero biases its vector stays zero, never NaN.
            assert!(together[2].iter().all(|x| *x == 0.0), "{:?}", together[2]);
        }
    }

    #[test]
    fn the_loss_prefers_matching_pairs_and_masks_shared_documents() {
        let device = Device::Cpu;
        let q = Tensor::from_vec(vec![1f32, 0., 0., 1.], (2, 2), &device).unwrap();
        let good = scalar(&info_nce(&q, &q, 0.1, None, true).unwrap()).unwrap();
        let swapped = Tensor::from_vec(vec![0f32, 1., 1., 0.], (2, 2), &device).unwrap();
        let bad = scalar(&info_nce(&q, &swapped, 0.1, None, true).unwrap()).unwrap();
        assert!(good < 0.01 && bad > 5.0, "{good} {bad}");
        let mask = same_document_mask(&[7, 7], &device).unwrap();
        let masked = scalar(&info_nce(&q, &swapped, 0.1, mask.as_ref(), false).unwrap()).unwrap();
        assert!(masked < 0.01, "{masked}");
        assert!(same_document_mask(&[1, 2], &device).unwrap().is_none());
    }

    #[test]
    fn hard_negative_columns_raise_the_loss_and_are_masked_when_they_are_positives() {
        let device = Device::Cpu;
        let q = Tensor::from_vec(vec![1f32, 0., 0., 1.], (2, 2), &device).unwrap();
        let easy = scalar(&info_nce(&q, &q, 0.1, None, true).unwrap()).unwrap();
        // A third document close to query 0 (a hard negative) makes the loss larger.
        let with_hard = Tensor::from_vec(vec![1f32, 0., 0., 1., 0.95, 0.31], (3, 2), &device).unwrap();
        let hard = scalar(&info_nce(&q, &with_hard, 0.1, None, true).unwrap()).unwrap();
        assert!(hard > 0.05 && hard > 100.0 * easy, "{easy} {hard}");
        // Masked as a positive of both queries, it no longer counts.
        let mask = negatives_mask(&[7, 8], &[9], |_, h| h == 9, &device).unwrap().unwrap();
        assert_eq!(mask.dims(), [2, 3]);
        let masked = scalar(&info_nce(&q, &with_hard, 0.1, Some(&mask), true).unwrap()).unwrap();
        assert!((masked - easy).abs() < 1e-4, "{masked} {easy}");
        // A hard negative equal to a query's own document is masked for that query only.
        let rows = negatives_mask(&[7, 8], &[8], |_, _| false, &device).unwrap().unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(rows, [[0.0, 0.0, 0.0], [0.0, 0.0, -1e4]]);
    }

    #[test]
    fn idf_scaled_rows_make_the_untrained_tower_an_idf_weighted_bag_of_words() {
        let device = Device::Cpu;
        // Token 2 is in every text, token 3 in one: the rare token must weigh more.
        let scales = rare_and_common_scales();
        assert!(scales[3] > 3.0 * scales[2], "{scales:?}");
        assert!(scales[19] >= scales[3], "an unseen token gets the largest idf");
        let wide = TowerShape {
            vocab: 20,
            embedding: 256,
            hidden: 0,
            output: 256,
            pooling: TowerPooling::Mean,
            ngram_buckets: 0,
            tf_power: 1.0,
        };
        // A query [2, 3] against a document sharing the rare token (3) and one sharing the common token (2):
        // with IDF rows the rare match wins clearly, for several seeds.
        for seed in 0..5 {
            let tower = Tower::new(wide, Some(&scales), None, &mut Rng::new(seed), &device).unwrap();
            let v =
                to_rows(&tower.forward(&Batch::new(&[&[2, 3], &[3, 5], &[2, 5]], &device).unwrap()).unwrap()).unwrap();
            let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
            let (rare, common) = (dot(&v[0], &v[1]), dot(&v[0], &v[2]));
            assert!(rare > common + 0.2, "seed {seed}: rare {rare} common {common}");
        }
    }

    #[test]
    fn ngram_features_are_shared_by_similar_tokens_and_fold_into_the_table() {
        let a = token_ngrams("parse", 1 << 20);
        let b = token_ngrams("parser", 1 << 20);
        assert_eq!(a.len(), 5, "<pa par ars rse se>");
        assert_eq!(a.iter().filter(|g| b.contains(g)).count(), 4);
        assert!(token_ngrams("[PAD]", 100).is_empty() && token_ngrams("x", 0).is_empty());
        assert_eq!(token_ngrams("a", 100).len(), 1);
        let device = Device::Cpu;
        let of_token: std::sync::Arc<Vec<Vec<u32>>> =
            std::sync::Arc::new((0..20).map(|t| if t == 0 { vec![] } else { vec![t % 7, (t * 3) % 7] }).collect());
        let shape = TowerShape { ngram_buckets: 7, ..shape(TowerPooling::Mean, 0) };
        let mut tower = Tower::new(shape, None, Some(&of_token), &mut Rng::new(3), &device).unwrap();
        // A training step through the leaf rows moves the n-gram rows of the batch's tokens.
        let batch = Batch::new(&[&[1, 2], &[5]], &device).unwrap();
        let leaves = tower.leaf_rows(&batch, &device).unwrap();
        let out = tower.forward_rows(&leaves.rows().unwrap(), &batch).unwrap();
        let target = Tensor::from_vec(vec![1f32, 0., 0., 0., 0., 1., 0., 0.], (2, 4), &device).unwrap();
        let grads = (out * target).unwrap().sum_all().unwrap().neg().unwrap().backward().unwrap();
        let g = leaves.gradients(&grads).unwrap();
        let adam = AdamSettings { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        tower.apply_sparse(&[(&leaves, g)], adam);
        let table = &tower.ngrams.as_ref().unwrap().table;
        let moved: Vec<usize> =
            (0..7).filter(|&b| table.weights[b * 8..(b + 1) * 8].iter().any(|w| *w != 0.0)).collect();
        assert_eq!(moved, [1, 2, 3, 5, 6], "buckets of tokens 1, 2 and 5");
        // The folded table gives the same vectors as the two tables.
        let folded = tower.folded_embedding().unwrap();
        let plain = Tower {
            embedding: EmbeddingTable::new(folded, 20, 8),
            ngrams: None,
            attention: None,
            layers: tower.layers.clone(),
            shape: TowerShape { ngram_buckets: 0, ..shape },
            lexical: None,
        };
        let texts: [&[u32]; 3] = [&[1, 2, 9], &[0, 4], &[]];
        let x = to_rows(&tower.forward(&Batch::new(&texts, &device).unwrap()).unwrap()).unwrap();
        let y = to_rows(&plain.forward(&Batch::new(&texts, &device).unwrap()).unwrap()).unwrap();
        for (a, b) in x.iter().flatten().zip(y.iter().flatten()) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn the_lexical_channel_matches_shared_rare_words_and_keeps_vectors_unit_length() {
        let device = Device::Cpu;
        let scales = rare_and_common_scales();
        let shape = shape(TowerPooling::Mean, 0);
        for seed in 0..5 {
            let lexical = LexicalChannel::new(20, 256, 0.9, Some(&scales), &mut Rng::new(seed));
            let towers = TwoTower::new(shape, false, false, None, None, &mut Rng::new(seed), &device)
                .unwrap()
                .with_lexical(Some(lexical));
            let q = to_rows(&towers.query.forward(&Batch::new(&[&[2, 3]], &device).unwrap()).unwrap()).unwrap();
            let docs: [&[u32]; 3] = [&[3, 7, 8], &[2, 7, 8], &[9, 10, 11]];
            let d = to_rows(&towers.document_tower().forward(&Batch::new(&docs, &device).unwrap()).unwrap()).unwrap();
            assert_eq!(q[0].len(), shape.output + 256);
            let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
            assert!((dot(&q[0], &q[0]) - 1.0).abs() < 1e-5);
            // Independent random towers: only the lexical channel links the sides.
            let (rare, common, none) = (dot(&q[0], &d[0]), dot(&q[0], &d[1]), dot(&q[0], &d[2]));
            // The common token has almost no IDF weight: sharing it is worth no more than sharing nothing.
            assert!(rare > common + 0.3 && rare > none + 0.3, "seed {seed}: {rare} {common} {none}");
        }
    }
}
