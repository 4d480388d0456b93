//! The trainer's feature tables: the token [`EmbeddingTable`] (updated by lazy Adam), hashed character n-gram
//! features ([`NgramFeatures`], DSSM word hashing), the IDF scales of token rows ([`idf_scales`]), the fixed
//! lexical channel ([`LexicalChannel`]), and the rows a training step gathers from them as leaf variables
//! ([`LeafRows`]).
//!
//! The token tables live outside candle's optimiser: each step gathers only the rows its batch uses into a small
//! leaf tensor, and a lazy (sparse) Adam updates only those rows; a dense gradient and a dense AdamW step over the
//! whole table would cost far more than the rest of a step.
//!
//! It may use [`super::ops`] (batches, pooling, lazy Adam) and [`crate::util::rng`]; the towers are built on it.

use candle_core::{DType, Device, Tensor, Var};

use super::ops::{l2_normalise, AdamSettings, Batch, LazyAdam, MeanBag};
use super::TrainError;
use crate::util::rng::Rng;

/// A token embedding table `[vocab, dim]` with its Adam moments, updated row by row (lazy Adam: a row's moments
/// and weights change only at steps whose batch uses it).
#[derive(Clone)]
pub struct EmbeddingTable {
    pub vocab: usize,
    pub dim: usize,
    pub weights: Vec<f32>,
    adam: LazyAdam,
}

impl EmbeddingTable {
    pub fn new(weights: Vec<f32>, vocab: usize, dim: usize) -> Self {
        let n = weights.len();
        Self { vocab, dim, weights, adam: LazyAdam::new(n) }
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
        self.adam.update(&mut self.weights, self.dim, updates, adam);
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

/// The lexical channel's row scales: `idf` to the power `power`, again of unit root mean square.
pub fn powered_scales(idf: &[f32], power: f32) -> Vec<f32> {
    let powered: Vec<f32> = idf.iter().map(|x| x.powf(power)).collect();
    let rms = (powered.iter().map(|x| x * x).sum::<f32>() / powered.len().max(1) as f32).sqrt().max(1e-12);
    powered.iter().map(|x| x / rms).collect()
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
    /// Gathers the rows of `batch` from a tower's token table and n-gram features as leaves to differentiate.
    pub fn gather(
        embedding: &EmbeddingTable,
        ngrams: Option<&NgramFeatures>,
        batch: &Batch,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let tokens = Var::from_tensor(&embedding.gather(&batch.unique, device)?)?;
        let ngrams = match ngrams {
            None => None,
            Some(features) => {
                let nb = features.batch(&batch.unique, device)?;
                let var = Var::from_tensor(&features.table.gather(&nb.buckets, device)?)?;
                Some((var, nb, features.clone_shallow()))
            }
        };
        Ok(LeafRows { unique: batch.unique.clone(), tokens, ngrams })
    }

    /// One lazy-Adam step on a tower's sparse tables from the gradients of one or more of its [`LeafRows`].
    pub fn apply(
        updates: &[(&LeafRows, LeafGradients)],
        embedding: &mut EmbeddingTable,
        ngrams: Option<&mut NgramFeatures>,
        adam: AdamSettings,
    ) {
        let tokens: Vec<(&[u32], Vec<f32>)> =
            updates.iter().map(|(rows, g)| (rows.unique.as_slice(), g.tokens.clone())).collect();
        embedding.update(&tokens, adam);
        if let Some(features) = ngrams {
            let grams: Vec<(&[u32], Vec<f32>)> = updates
                .iter()
                .filter_map(|(rows, g)| {
                    rows.ngrams.as_ref().map(|(_, nb, _)| (nb.buckets.as_slice(), g.ngrams.clone()))
                })
                .collect();
            features.table.update(&grams, adam);
        }
    }

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
    pub fn forward(&self, batch: &Batch, weights: Option<std::sync::Arc<Vec<f32>>>) -> Result<Tensor, TrainError> {
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

/// `n` seeded normal draws with standard deviation `std`.
pub fn normal(rng: &mut Rng, n: usize, std: f64) -> Vec<f32> {
    (0..n).map(|_| (rng.normal() * std) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_adam_moves_only_the_rows_used() {
        let mut table = EmbeddingTable::new(vec![1.0; 4 * 2], 4, 2);
        let adam = AdamSettings { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        table.update(&[(&[2], vec![1.0, -1.0]), (&[2, 0], vec![1.0, 0.0, 0.0, 0.0])], adam);
        assert_eq!(&table.weights[2..4], &[1.0; 2]);
        assert_eq!(&table.weights[6..8], &[1.0; 2]);
        assert!((table.weights[4] - 0.9).abs() < 1e-5 && table.weights[5] > 1.0);
    }
}
