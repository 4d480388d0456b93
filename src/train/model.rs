//! The two-tower network in candle: per tower, token embeddings → pooling (masked mean, or learned attention) →
//! linear layers (tanh between them) → L2 normalisation; the loss is InfoNCE over in-batch negatives.
//!
//! Batches are ragged, never padded: the tokens of every text are laid end to end (`ids`), `rows` tells which
//! text each token belongs to, and pooling sums per text with `index_add`. The exported ONNX graph computes the
//! same function on padded `[batch, seq]` input with an attention mask.

use candle_core::{DType, Device, Tensor, Var};
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

/// One tower's weights.
pub struct Tower {
    pub embedding: Var,
    pub attention: Option<Var>,
    /// `(weight [out, in], bias [out])` per layer.
    pub layers: Vec<(Var, Var)>,
    pub shape: TowerShape,
}

/// A ragged batch of tokenized texts.
pub struct Batch {
    /// Every token of every text, end to end: `[tokens]` u32.
    pub ids: Tensor,
    /// The text (row) of each token: `[tokens]` u32.
    pub rows: Tensor,
    /// Tokens per text, at least 1 (empty texts pool to zero): `[batch, 1]` f32.
    pub lengths: Tensor,
    pub size: usize,
}

impl Batch {
    pub fn new(texts: &[&[u32]], device: &Device) -> Result<Self, TrainError> {
        let total: usize = texts.iter().map(|t| t.len()).sum();
        let mut ids = Vec::with_capacity(total);
        let mut rows = Vec::with_capacity(total);
        for (row, text) in texts.iter().enumerate() {
            ids.extend_from_slice(text);
            rows.extend(std::iter::repeat_n(row as u32, text.len()));
        }
        let lengths: Vec<f32> = texts.iter().map(|t| t.len().max(1) as f32).collect();
        Ok(Self {
            ids: Tensor::from_vec(ids, total, device)?,
            rows: Tensor::from_vec(rows, total, device)?,
            lengths: Tensor::from_vec(lengths, (texts.len(), 1), device)?,
            size: texts.len(),
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
        let emb = Tensor::from_vec(normal(rng, vocab * embedding, 0.1), (vocab, embedding), device)?;
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
        Ok(Self { embedding: Var::from_tensor(&emb)?, attention, layers, shape })
    }

    /// Every trainable variable.
    pub fn vars(&self) -> Vec<Var> {
        let mut vars = vec![self.embedding.clone()];
        vars.extend(self.attention.iter().cloned());
        for (w, b) in &self.layers {
            vars.push(w.clone());
            vars.push(b.clone());
        }
        vars
    }

    pub fn parameters(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }

    /// A copy of the weights that no longer changes with training (for keeping the best epoch).
    pub fn snapshot(&self) -> Result<Self, TrainError> {
        let copy = |v: &Var| -> Result<Var, TrainError> { Ok(Var::from_tensor(&v.as_tensor().copy()?)?) };
        Ok(Self {
            embedding: copy(&self.embedding)?,
            attention: self.attention.as_ref().map(copy).transpose()?,
            layers: self.layers.iter().map(|(w, b)| Ok((copy(w)?, copy(b)?))).collect::<Result<_, TrainError>>()?,
            shape: self.shape,
        })
    }

    /// L2-normalised vectors `[batch, output]` for a batch.
    pub fn forward(&self, batch: &Batch) -> Result<Tensor, TrainError> {
        let device = batch.ids.device();
        let x = self.embedding.as_tensor().index_select(&batch.ids, 0)?; // [tokens, E]
        let e = self.shape.embedding;
        let mut h = match &self.attention {
            None => {
                let sum = Tensor::zeros((batch.size, e), DType::F32, device)?.index_add(&batch.rows, &x, 0)?;
                sum.broadcast_div(&batch.lengths)?
            }
            Some(w) => {
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
        let norm = h.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(NORM_EPS as f32, f32::MAX)?;
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
