//! The two-tower network in candle: per tower, token embeddings → pooling (masked mean, or learned attention;
//! optionally with term-frequency saturation) → linear layers (tanh between them) → L2 normalisation, with an
//! optional fixed lexical channel appended ([`LexicalChannel`]); the loss is InfoNCE over in-batch negatives.
//!
//! Batches are ragged, never padded: the tokens of every text are laid end to end (`ids`), `rows` tells which
//! text each token belongs to, and pooling sums per text with `index_add`. The exported ONNX graph computes the
//! same function on padded `[batch, seq]` input with an attention mask.
//!
//! The token embedding tables live outside candle's optimiser ([`EmbeddingTable`]): each step gathers only the
//! rows its batch uses into a small leaf tensor, and a lazy (sparse) Adam updates only those rows. A dense
//! gradient and a dense AdamW step over the whole table cost ~10× the rest of a step on two cores.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, Var};
use serde::{Deserialize, Serialize};

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

/// Lower bound of a vector norm before division (the exported graph uses the same).
pub const NORM_EPS: f64 = 1e-12;

/// A token embedding table `[vocab, dim]` with its Adam moments, updated row by row (lazy Adam: a row's moments
/// and weights change only at steps whose batch uses it).
#[derive(Clone)]
pub struct EmbeddingTable {
    pub vocab: usize,
    pub dim: usize,
    pub weights: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    step: i32,
}

/// Adam settings for [`EmbeddingTable::update`].
#[derive(Debug, Clone, Copy)]
pub struct AdamSettings {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl EmbeddingTable {
    pub fn new(weights: Vec<f32>, vocab: usize, dim: usize) -> Self {
        let n = weights.len();
        Self { vocab, dim, weights, m: vec![0.0; n], v: vec![0.0; n], step: 0 }
    }

    /// Rows `ids` as a `[ids, dim]` tensor.
    pub fn gather(&self, ids: &[u32], device: &Device) -> Result<Tensor, TrainError> {
        let mut rows = Vec::with_capacity(ids.len() * self.dim);
        for &id in ids {
            let start = id as usize * self.dim;
            rows.extend_from_slice(&self.weights[start..start + self.dim]);
        }
        Ok(Tensor::from_vec(rows, (ids.len(), self.dim), device)?)
    }

    /// One Adam step on the rows given by `updates`: `(row ids, gradient rows [ids, dim])`, possibly from several
    /// lookups of the same table (shared towers); gradients of a repeated row are summed first.
    pub fn update(&mut self, updates: &[(&[u32], Vec<f32>)], adam: AdamSettings) {
        self.step += 1;
        let dim = self.dim;
        let (b1, b2) = (adam.beta1 as f32, adam.beta2 as f32);
        let scale_m = 1.0 / (1.0 - adam.beta1.powi(self.step)) as f32;
        let scale_v = 1.0 / (1.0 - adam.beta2.powi(self.step)) as f32;
        let (lr, eps, decay) = (adam.lr as f32, adam.eps as f32, (adam.lr * adam.weight_decay) as f32);
        let mut apply = |id: u32, g: &[f32]| {
            let start = id as usize * dim;
            let w = &mut self.weights[start..start + dim];
            let m = &mut self.m[start..start + dim];
            let v = &mut self.v[start..start + dim];
            for k in 0..dim {
                m[k] = b1 * m[k] + (1.0 - b1) * g[k];
                v[k] = b2 * v[k] + (1.0 - b2) * g[k] * g[k];
                w[k] -= decay * w[k] + lr * (m[k] * scale_m) / ((v[k] * scale_v).sqrt() + eps);
            }
        };
        if let [(ids, grad)] = updates {
            // One lookup (separate towers): its ids are distinct already.
            for (i, &id) in ids.iter().enumerate() {
                apply(id, &grad[i * dim..(i + 1) * dim]);
            }
            return;
        }
        let mut summed: std::collections::BTreeMap<u32, Vec<f32>> = std::collections::BTreeMap::new();
        for (ids, grad) in updates {
            for (i, &id) in ids.iter().enumerate() {
                let g = &grad[i * dim..(i + 1) * dim];
                let entry = summed.entry(id).or_insert_with(|| vec![0.0; dim]);
                entry.iter_mut().zip(g).for_each(|(a, b)| *a += b);
            }
        }
        for (id, g) in summed {
            apply(id, &g);
        }
    }
}

/// Length of the hashed character n-grams.
pub const NGRAM: usize = 3;

/// The hashed character n-grams of a token string (DSSM word hashing on BPE tokens): the token marked `<token>`,
/// every run of [`NGRAM`] characters (the whole marked token if shorter) hashed with FNV-1a into `buckets`,
/// distinct and ascending. Special tokens (`[PAD]`, `[UNK]`) get none.
pub fn token_ngrams(token: &str, buckets: usize) -> Vec<u32> {
    if buckets == 0 || (token.starts_with('[') && token.ends_with(']') && token.len() > 2) {
        return Vec::new();
    }
    let chars: Vec<char> = std::iter::once('<').chain(token.chars()).chain(std::iter::once('>')).collect();
    let hash = |gram: &[char]| -> u32 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for c in gram {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        (h % buckets as u64) as u32
    };
    let mut out: Vec<u32> =
        if chars.len() <= NGRAM { vec![hash(&chars)] } else { chars.windows(NGRAM).map(hash).collect() };
    out.sort_unstable();
    out.dedup();
    out
}

/// Per-token scale factors for [`Tower::new`] from document frequencies over `texts` (token id lists): BM25's
/// idf ln(1 + (N − df + 0.5) / (df + 0.5)) divided by its root mean square over the vocabulary, so the rows keep
/// their usual size on average. A token no text contains gets the largest idf.
pub fn idf_scales(texts: &[&[u32]], vocab: usize) -> Vec<f32> {
    let mut df = vec![0usize; vocab];
    let mut seen = vec![usize::MAX; vocab];
    for (i, text) in texts.iter().enumerate() {
        for &t in *text {
            let t = t as usize;
            if t < vocab && seen[t] != i {
                seen[t] = i;
                df[t] += 1;
            }
        }
    }
    let n = texts.len() as f64;
    let idf: Vec<f64> = df.iter().map(|&d| (1.0 + (n - d as f64 + 0.5) / (d as f64 + 0.5)).ln()).collect();
    let rms = (idf.iter().map(|x| x * x).sum::<f64>() / vocab.max(1) as f64).sqrt().max(1e-12);
    idf.iter().map(|x| (x / rms) as f32).collect()
}

/// A table of hashed character n-gram rows and the buckets of each token id; a token's row is its embedding plus
/// the mean of its n-gram rows.
#[derive(Clone)]
pub struct NgramFeatures {
    pub table: EmbeddingTable,
    pub of_token: std::sync::Arc<Vec<Vec<u32>>>,
}

/// The n-gram rows a set of token rows needs.
pub struct NgramBatch {
    /// Distinct buckets, ascending: the rows of the n-gram table to gather.
    pub buckets: Vec<u32>,
    /// Per (token, n-gram): the position of the bucket in `buckets`, and the token's row.
    positions: Tensor,
    tokens: Tensor,
    /// 1 / n-grams per token (0 for a token with none): `[tokens, 1]`.
    scale: Tensor,
    rows: usize,
    grams: usize,
}

impl NgramFeatures {
    /// The bucket lists without the table (what [`LeafRows`] needs to combine rows).
    fn clone_shallow(&self) -> Self {
        Self { table: EmbeddingTable::new(Vec::new(), 0, self.table.dim), of_token: self.of_token.clone() }
    }

    /// The n-gram rows for the token ids `unique` (a batch's distinct tokens).
    pub fn batch(&self, unique: &[u32], device: &Device) -> Result<NgramBatch, TrainError> {
        let mut buckets: Vec<u32> = unique.iter().flat_map(|&t| self.of_token[t as usize].iter().copied()).collect();
        buckets.sort_unstable();
        buckets.dedup();
        let mut positions = Vec::new();
        let mut tokens = Vec::new();
        let mut scale = Vec::with_capacity(unique.len());
        for (row, &t) in unique.iter().enumerate() {
            let grams = &self.of_token[t as usize];
            for g in grams {
                positions.push(buckets.binary_search(g).expect("collected above") as u32);
                tokens.push(row as u32);
            }
            scale.push(if grams.is_empty() { 0.0 } else { 1.0 / grams.len() as f32 });
        }
        let grams = positions.len();
        Ok(NgramBatch {
            buckets,
            positions: Tensor::from_vec(positions, grams, device)?,
            tokens: Tensor::from_vec(tokens, grams, device)?,
            scale: Tensor::from_vec(scale, (unique.len(), 1), device)?,
            rows: unique.len(),
            grams,
        })
    }

    /// `[tokens, E]`: the mean n-gram row of each token, from the gathered bucket rows `rows` (`[buckets, E]`,
    /// a leaf to differentiate in training).
    pub fn combine(&self, rows: &Tensor, batch: &NgramBatch) -> Result<Tensor, TrainError> {
        let dim = self.table.dim;
        let zeros = Tensor::zeros((batch.rows, dim), DType::F32, rows.device())?;
        if batch.grams == 0 {
            return Ok(zeros);
        }
        let per_gram = rows.index_select(&batch.positions, 0)?;
        Ok(zeros.index_add(&batch.tokens, &per_gram, 0)?.broadcast_mul(&batch.scale)?)
    }
}

/// A batch's rows of a tower's sparse tables as leaf variables: the token rows and, with n-grams, the bucket rows.
pub struct LeafRows {
    unique: Vec<u32>,
    tokens: Var,
    ngrams: Option<(Var, NgramBatch, NgramFeatures)>,
}

/// Gradients of [`LeafRows`], flattened per table.
pub struct LeafGradients {
    tokens: Vec<f32>,
    ngrams: Vec<f32>,
}

impl LeafRows {
    /// The token rows a forward pass pools: embedding rows plus the mean of their n-gram rows.
    pub fn rows(&self) -> Result<Tensor, TrainError> {
        let rows = self.tokens.as_tensor().clone();
        match &self.ngrams {
            None => Ok(rows),
            Some((var, batch, features)) => Ok((rows + features.combine(var.as_tensor(), batch)?)?),
        }
    }

    pub fn gradients(&self, grads: &candle_core::backprop::GradStore) -> Result<LeafGradients, TrainError> {
        let flat = |v: &Var| -> Result<Vec<f32>, TrainError> {
            match grads.get(v) {
                Some(g) => Ok(g.flatten_all()?.to_vec1::<f32>()?),
                None => Ok(vec![0.0; v.elem_count()]),
            }
        };
        Ok(LeafGradients {
            tokens: flat(&self.tokens)?,
            ngrams: match &self.ngrams {
                Some((v, _, _)) => flat(v)?,
                None => Vec::new(),
            },
        })
    }
}

/// A fixed lexical channel beside the learned vector: random rows scaled by IDF, never trained and the same in
/// both towers, mean-pooled and L2-normalised. Random rows are close to orthogonal, so the dot product of two
/// pooled channels approximates the IDF-weighted bag-of-words cosine of the texts (Johnson–Lindenstrauss: the
/// error shrinks as 1/√dim). The tower's output is `[√(1−w)·learned, √w·lexical]`, still of unit length, so a
/// score is `(1−w)·learned cosine + w·lexical cosine`: one dense vector serves a hybrid of a learned and a lexical
/// match, and training fits the learned part to what exact words miss.
#[derive(Clone)]
pub struct LexicalChannel {
    /// `[vocab, dim]`, row-major.
    pub table: std::sync::Arc<Vec<f32>>,
    pub dim: usize,
    /// Share `w` of the score that comes from the lexical channel, in [0, 1).
    pub weight: f64,
}

impl LexicalChannel {
    /// Seeded standard-normal rows, each multiplied by its token's `row_scale` (IDF) when given.
    pub fn new(vocab: usize, dim: usize, weight: f64, row_scale: Option<&[f32]>, rng: &mut Rng) -> Self {
        let mut table = normal(rng, vocab * dim, 1.0);
        if let Some(scale) = row_scale {
            for (row, s) in table.chunks_mut(dim).zip(scale) {
                row.iter_mut().for_each(|w| *w *= s);
            }
        }
        Self { table: std::sync::Arc::new(table), dim, weight }
    }

    /// `[batch, dim]`: the pooled (token weights `weights`, see [`Batch::tf_weights`]), normalised channel of a
    /// batch, scaled by √w.
    fn forward(&self, batch: &Batch, weights: Option<std::sync::Arc<Vec<f32>>>) -> Result<Tensor, TrainError> {
        let device = batch.ids.device();
        let mut rows = Vec::with_capacity(batch.unique.len() * self.dim);
        for &id in &batch.unique {
            rows.extend_from_slice(&self.table[id as usize * self.dim..(id as usize + 1) * self.dim]);
        }
        let rows = Tensor::from_vec(rows, (batch.unique.len(), self.dim), device)?;
        let pooled = rows.apply_op1(MeanBag::new(batch, weights))?;
        Ok((l2_normalise(&pooled)? * self.weight.sqrt())?)
    }
}

/// Rows divided by their L2 norm (at least [`NORM_EPS`]), as the exported graph computes it.
fn l2_normalise(h: &Tensor) -> Result<Tensor, TrainError> {
    let norm = h.sqr()?.sum_keepdim(1)?.affine(1.0, NORM_EPS * NORM_EPS)?.sqrt()?.clamp(NORM_EPS as f32, f32::MAX)?;
    Ok(h.broadcast_div(&norm)?)
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

/// A ragged batch of tokenized texts.
pub struct Batch {
    /// The distinct token ids of the batch, ascending: the embedding rows it needs.
    pub unique: Vec<u32>,
    /// Every token of every text, end to end, as positions in `unique`: `[tokens]` u32.
    pub ids: Tensor,
    /// The text (row) of each token: `[tokens]` u32.
    pub rows: Tensor,
    /// Tokens per text, at least 1 (empty texts pool to zero): `[batch, 1]` f32.
    pub lengths: Tensor,
    pub size: usize,
    /// Host copies for the fused mean pooling: positions in `unique`, and where each text starts in them.
    local: std::sync::Arc<Vec<u32>>,
    offsets: std::sync::Arc<Vec<usize>>,
}

/// Masked mean pooling fused into one candle op (an `EmbeddingBag`): `[unique, E]` rows → `[batch, E]` weighted
/// means, with its own backward. Built from candle's generic ops (gather, then `index_add`), a step took ~3× longer.
struct MeanBag {
    local: std::sync::Arc<Vec<u32>>,
    offsets: std::sync::Arc<Vec<usize>>,
    /// A weight per token (aligned with `local`); `None`: every token weighs 1.
    weights: Option<std::sync::Arc<Vec<f32>>>,
    unique: usize,
}

impl MeanBag {
    fn new(batch: &Batch, weights: Option<std::sync::Arc<Vec<f32>>>) -> Self {
        Self { local: batch.local.clone(), offsets: batch.offsets.clone(), weights, unique: batch.unique.len() }
    }

    /// Text `b`'s tokens, each with its weight, and 1 / max(sum of weights, 1).
    fn text(&self, b: usize) -> (impl Iterator<Item = (usize, f32)> + '_, f32) {
        let range = self.offsets[b]..self.offsets[b + 1];
        let weight = move |p: usize| self.weights.as_ref().map_or(1.0, |w| w[p]);
        let total: f32 = range.clone().map(weight).sum();
        (range.map(move |p| (self.local[p] as usize, weight(p))), 1.0 / total.max(1.0))
    }
}

impl CustomOp1 for MeanBag {
    fn name(&self) -> &'static str {
        "mean-bag"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dim = layout.dims()[1];
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("mean-bag needs contiguous rows")
        };
        let rows = &storage.as_slice::<f32>()?[start..end];
        let batch = self.offsets.len() - 1;
        let mut out = vec![0f32; batch * dim];
        for b in 0..batch {
            let (tokens, scale) = self.text(b);
            let acc = &mut out[b * dim..(b + 1) * dim];
            for (t, w) in tokens {
                let row = &rows[t * dim..(t + 1) * dim];
                acc.iter_mut().zip(row).for_each(|(a, x)| *a += w * x);
            }
            acc.iter_mut().for_each(|a| *a *= scale);
        }
        Ok((CpuStorage::F32(out), Shape::from((batch, dim))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dim = grad_res.dim(1)?;
        let grad = grad_res.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; self.unique * dim];
        for b in 0..self.offsets.len() - 1 {
            let (tokens, scale) = self.text(b);
            let g = &grad[b * dim..(b + 1) * dim];
            for (t, w) in tokens {
                let row = &mut out[t * dim..(t + 1) * dim];
                row.iter_mut().zip(g).for_each(|(a, x)| *a += x * w * scale);
            }
        }
        Ok(Some(Tensor::from_vec(out, (self.unique, dim), grad_res.device())?))
    }
}

impl Batch {
    /// Per token, the weight that gives a text's `c` occurrences of one token the total weight `c^tf_power`
    /// (each occurrence `c^(tf_power − 1)`): 1 is a plain mean, 0 counts each distinct token once (binary term
    /// frequency), ½ is a square root, saturating as BM25's k1 does. `None` for 1.
    pub fn tf_weights(&self, tf_power: f64) -> Option<std::sync::Arc<Vec<f32>>> {
        if tf_power == 1.0 {
            return None;
        }
        let mut weights = vec![1f32; self.local.len()];
        let mut counts: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
        for b in 0..self.offsets.len() - 1 {
            let range = self.offsets[b]..self.offsets[b + 1];
            counts.clear();
            for &t in &self.local[range.clone()] {
                *counts.entry(t).or_default() += 1;
            }
            for p in range {
                weights[p] = (counts[&self.local[p]] as f64).powf(tf_power - 1.0) as f32;
            }
        }
        Some(std::sync::Arc::new(weights))
    }

    pub fn new(texts: &[&[u32]], device: &Device) -> Result<Self, TrainError> {
        let total: usize = texts.iter().map(|t| t.len()).sum();
        let mut unique: Vec<u32> = texts.iter().flat_map(|t| t.iter().copied()).collect();
        unique.sort_unstable();
        unique.dedup();
        let position: std::collections::HashMap<u32, u32> =
            unique.iter().enumerate().map(|(i, &id)| (id, i as u32)).collect();
        let mut ids = Vec::with_capacity(total);
        let mut rows = Vec::with_capacity(total);
        let mut offsets = Vec::with_capacity(texts.len() + 1);
        offsets.push(0);
        for (row, text) in texts.iter().enumerate() {
            ids.extend(text.iter().map(|id| position[id]));
            rows.extend(std::iter::repeat_n(row as u32, text.len()));
            offsets.push(ids.len());
        }
        let local = std::sync::Arc::new(ids.clone());
        let lengths: Vec<f32> = texts.iter().map(|t| t.len().max(1) as f32).collect();
        Ok(Self {
            unique,
            ids: Tensor::from_vec(ids, total, device)?,
            rows: Tensor::from_vec(rows, total, device)?,
            lengths: Tensor::from_vec(lengths, (texts.len(), 1), device)?,
            size: texts.len(),
            local,
            offsets: std::sync::Arc::new(offsets),
        })
    }
}

fn normal(rng: &mut Rng, n: usize, std: f64) -> Vec<f32> {
    (0..n).map(|_| (rng.normal() * std) as f32).collect()
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
        let tokens = Var::from_tensor(&self.embedding.gather(&batch.unique, device)?)?;
        let ngrams = match &self.ngrams {
            None => None,
            Some(features) => {
                let nb = features.batch(&batch.unique, device)?;
                let var = Var::from_tensor(&features.table.gather(&nb.buckets, device)?)?;
                Some((var, nb, features.clone_shallow()))
            }
        };
        Ok(LeafRows { unique: batch.unique.clone(), tokens, ngrams })
    }

    /// One lazy-Adam step on the sparse tables from the gradients of one or more [`LeafRows`] of this tower.
    pub fn apply_sparse(&mut self, updates: &[(&LeafRows, LeafGradients)], adam: AdamSettings) {
        let tokens: Vec<(&[u32], Vec<f32>)> =
            updates.iter().map(|(rows, g)| (rows.unique.as_slice(), g.tokens.clone())).collect();
        self.embedding.update(&tokens, adam);
        if let Some(features) = &mut self.ngrams {
            let grams: Vec<(&[u32], Vec<f32>)> = updates
                .iter()
                .filter_map(|(rows, g)| {
                    rows.ngrams.as_ref().map(|(_, nb, _)| (nb.buckets.as_slice(), g.ngrams.clone()))
                })
                .collect();
            features.table.update(&grams, adam);
        }
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
    fn the_fused_mean_matches_candle_ops_forward_and_backward() {
        let device = Device::Cpu;
        let texts: [&[u32]; 3] = [&[4, 9, 4], &[], &[9, 2]];
        let batch = Batch::new(&texts, &device).unwrap();
        let table = EmbeddingTable::new(normal(&mut Rng::new(5), 10 * 3, 1.0), 10, 3);
        let rows = Var::from_tensor(&table.gather(&batch.unique, &device).unwrap()).unwrap();
        let weights = Tensor::from_vec(vec![1f32, -2., 3., 0.5, 1., -1., 2., 0., 1.], (3, 3), &device).unwrap();
        let fused = rows.as_tensor().apply_op1(MeanBag::new(&batch, None));
        let fused = fused.unwrap();
        let x = rows.as_tensor().index_select(&batch.ids, 0).unwrap();
        let plain = Tensor::zeros((3, 3), DType::F32, &device)
            .unwrap()
            .index_add(&batch.rows, &x, 0)
            .unwrap()
            .broadcast_div(&batch.lengths)
            .unwrap();
        let close = |a: &Tensor, b: &Tensor| {
            let (a, b) = (
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6)
        };
        assert!(close(&fused, &plain));
        let g1 = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (plain * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(close(g1.get(&rows).unwrap(), g2.get(&rows).unwrap()));
    }

    #[test]
    fn sparse_adam_moves_only_the_rows_used() {
        let mut table = EmbeddingTable::new(vec![1.0; 4 * 2], 4, 2);
        let adam = AdamSettings { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        table.update(&[(&[2], vec![1.0, -1.0]), (&[2, 0], vec![1.0, 0.0, 0.0, 0.0])], adam);
        assert_eq!(&table.weights[2..4], &[1.0; 2]);
        assert_eq!(&table.weights[6..8], &[1.0; 2]);
        assert!((table.weights[4] - 0.9).abs() < 1e-5 && table.weights[5] > 1.0);
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
    fn term_frequency_weights_saturate_repeated_tokens() {
        let device = Device::Cpu;
        let batch = Batch::new(&[&[5, 5, 5, 5, 2], &[], &[2]], &device).unwrap();
        assert!(batch.tf_weights(1.0).is_none(), "a plain mean needs no weights");
        // Four 5s weigh 4^0.5 = 2 together (½ each), the single 2 weighs 1.
        let sqrt = batch.tf_weights(0.5).unwrap();
        assert_eq!(sqrt.as_slice(), &[0.5, 0.5, 0.5, 0.5, 1.0, 1.0]);
        let binary = batch.tf_weights(0.0).unwrap();
        assert_eq!(binary.as_slice(), &[0.25, 0.25, 0.25, 0.25, 1.0, 1.0]);
        // Binary weights pool [5 5 5 5 2] to the mean of rows 5 and 2.
        let table = EmbeddingTable::new((0..10).map(|i| i as f32).collect(), 10, 1);
        let rows = table.gather(&batch.unique, &device).unwrap();
        let pooled = rows.apply_op1(MeanBag::new(&batch, Some(binary))).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(pooled, [[3.5], [0.0], [2.0]]);
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
