//! The two-tower network in candle: per tower, token embeddings → pooling (masked mean, or learned attention) →
//! linear layers (tanh between them) → L2 normalisation; the loss is InfoNCE over in-batch negatives.
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

use super::rng::Rng;
use super::TrainError;

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
        let mut summed: std::collections::BTreeMap<u32, Vec<f32>> = std::collections::BTreeMap::new();
        for (ids, grad) in updates {
            for (i, &id) in ids.iter().enumerate() {
                let g = &grad[i * dim..(i + 1) * dim];
                let entry = summed.entry(id).or_insert_with(|| vec![0.0; dim]);
                entry.iter_mut().zip(g).for_each(|(a, b)| *a += b);
            }
        }
        let (b1, b2) = (adam.beta1 as f32, adam.beta2 as f32);
        let scale_m = 1.0 / (1.0 - adam.beta1.powi(self.step)) as f32;
        let scale_v = 1.0 / (1.0 - adam.beta2.powi(self.step)) as f32;
        let (lr, eps, decay) = (adam.lr as f32, adam.eps as f32, (adam.lr * adam.weight_decay) as f32);
        for (id, g) in summed {
            let start = id as usize * dim;
            let w = &mut self.weights[start..start + dim];
            let m = &mut self.m[start..start + dim];
            let v = &mut self.v[start..start + dim];
            for k in 0..dim {
                m[k] = b1 * m[k] + (1.0 - b1) * g[k];
                v[k] = b2 * v[k] + (1.0 - b2) * g[k] * g[k];
                w[k] -= decay * w[k] + lr * (m[k] * scale_m) / ((v[k] * scale_v).sqrt() + eps);
            }
        }
    }
}

/// One tower's weights.
pub struct Tower {
    pub embedding: EmbeddingTable,
    pub attention: Option<Var>,
    /// `(weight [out, in], bias [out])` per layer.
    pub layers: Vec<(Var, Var)>,
    pub shape: TowerShape,
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

/// Masked mean pooling fused into one candle op (an `EmbeddingBag`): `[unique, E]` rows → `[batch, E]` means,
/// with its own backward. Built from candle's generic ops (gather, then `index_add`), a step took ~3× longer.
struct MeanBag {
    local: std::sync::Arc<Vec<u32>>,
    offsets: std::sync::Arc<Vec<usize>>,
    unique: usize,
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
            let tokens = &self.local[self.offsets[b]..self.offsets[b + 1]];
            let acc = &mut out[b * dim..(b + 1) * dim];
            for &t in tokens {
                let row = &rows[t as usize * dim..(t as usize + 1) * dim];
                acc.iter_mut().zip(row).for_each(|(a, x)| *a += x);
            }
            let scale = 1.0 / tokens.len().max(1) as f32;
            acc.iter_mut().for_each(|a| *a *= scale);
        }
        Ok((CpuStorage::F32(out), Shape::from((batch, dim))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dim = grad_res.dim(1)?;
        let grad = grad_res.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; self.unique * dim];
        for b in 0..self.offsets.len() - 1 {
            let tokens = &self.local[self.offsets[b]..self.offsets[b + 1]];
            let scale = 1.0 / tokens.len().max(1) as f32;
            let g = &grad[b * dim..(b + 1) * dim];
            for &t in tokens {
                let row = &mut out[t as usize * dim..(t as usize + 1) * dim];
                row.iter_mut().zip(g).for_each(|(a, x)| *a += x * scale);
            }
        }
        Ok(Some(Tensor::from_vec(out, (self.unique, dim), grad_res.device())?))
    }
}

impl Batch {
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
    /// A tower with seeded random weights.
    pub fn new(shape: TowerShape, rng: &mut Rng, device: &Device) -> Result<Self, TrainError> {
        let TowerShape { vocab, embedding, hidden, output, pooling } = shape;
        let emb = EmbeddingTable::new(normal(rng, vocab * embedding, 0.1), vocab, embedding);
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
        Ok(Self { embedding: emb, attention, layers, shape })
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
        self.embedding.weights.len() + self.vars().iter().map(|v| v.elem_count()).sum::<usize>()
    }

    /// A copy of the weights that no longer changes with training (for keeping the best epoch).
    pub fn snapshot(&self) -> Result<Self, TrainError> {
        let copy = |v: &Var| -> Result<Var, TrainError> { Ok(Var::from_tensor(&v.as_tensor().copy()?)?) };
        Ok(Self {
            embedding: self.embedding.clone(),
            attention: self.attention.as_ref().map(copy).transpose()?,
            layers: self.layers.iter().map(|(w, b)| Ok((copy(w)?, copy(b)?))).collect::<Result<_, TrainError>>()?,
            shape: self.shape,
        })
    }

    /// L2-normalised vectors `[batch, output]` for a batch.
    pub fn forward(&self, batch: &Batch) -> Result<Tensor, TrainError> {
        let rows = self.embedding.gather(&batch.unique, batch.ids.device())?;
        self.forward_rows(&rows, batch)
    }

    /// [`Tower::forward`] with the batch's embedding rows given (`[unique, E]`, a leaf to differentiate).
    pub fn forward_rows(&self, rows: &Tensor, batch: &Batch) -> Result<Tensor, TrainError> {
        let device = batch.ids.device();
        let e = self.shape.embedding;
        let mut h = match &self.attention {
            None => rows.contiguous()?.apply_op1(MeanBag {
                local: batch.local.clone(),
                offsets: batch.offsets.clone(),
                unique: batch.unique.len(),
            })?,
            Some(w) => {
                let x = rows.index_select(&batch.ids, 0)?; // [tokens, E]
                let scores = x.matmul(w.as_tensor())?; // [tokens, 1]
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
        let norm =
            h.sqr()?.sum_keepdim(1)?.affine(1.0, NORM_EPS * NORM_EPS)?.sqrt()?.clamp(NORM_EPS as f32, f32::MAX)?;
        Ok(h.broadcast_div(&norm)?)
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
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let query = Tower::new(shape, rng, device)?;
        let document = match (shared, same_start) {
            (true, _) => None,
            (false, true) => Some(query.snapshot()?),
            (false, false) => Some(Tower::new(shape, rng, device)?),
        };
        Ok(Self { query, document })
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

/// InfoNCE over in-batch negatives: row i of `queries` should match row i of `documents` among all rows.
/// `same_document[i * n + j]` is true where pair j has the same document as pair i (i ≠ j): those are not
/// negatives and are masked out. With `symmetric`, the documents → queries direction is added (mean of both).
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
        let back = candle_nn::loss::cross_entropy(&logits.t()?.contiguous()?, &targets)?;
        loss = ((loss + back)? * 0.5)?;
    }
    Ok(loss)
}

/// The additive mask for [`info_nce`]: -1e4 where two different pairs of the batch share a document, else 0.
pub fn same_document_mask(doc_ids: &[u32], device: &Device) -> Result<Option<Tensor>, TrainError> {
    let n = doc_ids.len();
    let mut mask = vec![0f32; n * n];
    let mut any = false;
    for i in 0..n {
        for j in 0..n {
            if i != j && doc_ids[i] == doc_ids[j] {
                mask[i * n + j] = -1e4;
                any = true;
            }
        }
    }
    if !any {
        return Ok(None);
    }
    Ok(Some(Tensor::from_vec(mask, (n, n), device)?))
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

    fn shape(pooling: TowerPooling, hidden: usize) -> TowerShape {
        TowerShape { vocab: 20, embedding: 8, hidden, output: 4, pooling }
    }

    #[test]
    fn ragged_pooling_ignores_other_texts_and_vectors_are_unit_length() {
        let device = Device::Cpu;
        for pooling in [TowerPooling::Mean, TowerPooling::Attention] {
            let tower = Tower::new(shape(pooling, 6), &mut Rng::new(1), &device).unwrap();
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
        let fused = rows.as_tensor().apply_op1(MeanBag {
            local: batch.local.clone(),
            offsets: batch.offsets.clone(),
            unique: batch.unique.len(),
        });
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
}
