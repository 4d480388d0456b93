//! The custom numerics under the towers: the ragged [`Batch`] and its term-frequency weights, masked mean pooling
//! fused into one candle op ([`MeanBag`], an `EmbeddingBag` with its own backward), L2 normalisation as the
//! exported graph computes it, and the lazy (sparse) Adam that updates only the rows of a table a step used
//! ([`LazyAdam`]).
//!
//! Batches are ragged, never padded: the tokens of every text are laid end to end (`ids`), `rows` tells which
//! text each token belongs to, and pooling sums per text. The exported ONNX graph computes the same function on
//! padded `[batch, seq]` input with an attention mask.
//!
//! A leaf of the trainer: it uses candle and nothing else of the crate but [`TrainError`].

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};

use super::TrainError;

/// Lower bound of a vector norm before division (the exported graph uses the same).
pub const NORM_EPS: f64 = 1e-12;

/// Rows divided by their L2 norm (at least [`NORM_EPS`]), as the exported graph computes it.
pub fn l2_normalise(h: &Tensor) -> Result<Tensor, TrainError> {
    let norm = h.sqr()?.sum_keepdim(1)?.affine(1.0, NORM_EPS * NORM_EPS)?.sqrt()?.clamp(NORM_EPS as f32, f32::MAX)?;
    Ok(h.broadcast_div(&norm)?)
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

/// The Adam moments of a `[rows, dim]` table, updated row by row (lazy Adam: a row's moments and weights change
/// only at steps whose batch uses it).
#[derive(Clone)]
pub struct LazyAdam {
    m: Vec<f32>,
    v: Vec<f32>,
    step: i32,
}

impl LazyAdam {
    /// Zero moments for `n` weights.
    pub fn new(n: usize) -> Self {
        Self { m: vec![0.0; n], v: vec![0.0; n], step: 0 }
    }

    /// One Adam step on the rows of `weights` (row-major, `dim` wide) given by `updates`: `(row ids, gradient
    /// rows [ids, dim])`, possibly from several lookups of the same table (shared towers); gradients of a repeated
    /// row are summed first.
    pub fn update(&mut self, weights: &mut [f32], dim: usize, updates: &[(&[u32], Vec<f32>)], adam: AdamSettings) {
        self.step += 1;
        let (b1, b2) = (adam.beta1 as f32, adam.beta2 as f32);
        let scale_m = 1.0 / (1.0 - adam.beta1.powi(self.step)) as f32;
        let scale_v = 1.0 / (1.0 - adam.beta2.powi(self.step)) as f32;
        let (lr, eps, decay) = (adam.lr as f32, adam.eps as f32, (adam.lr * adam.weight_decay) as f32);
        let mut apply = |id: u32, g: &[f32]| {
            let start = id as usize * dim;
            let w = &mut weights[start..start + dim];
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
/// means, with its own backward. Built from candle's generic ops (gather, then `index_add`), a step was much slower.
pub(super) struct MeanBag {
    local: std::sync::Arc<Vec<u32>>,
    offsets: std::sync::Arc<Vec<usize>>,
    /// A weight per token (aligned with `local`); `None`: every token weighs 1.
    weights: Option<std::sync::Arc<Vec<f32>>>,
    unique: usize,
}

impl MeanBag {
    pub(super) fn new(batch: &Batch, weights: Option<std::sync::Arc<Vec<f32>>>) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::tables::{normal, EmbeddingTable};
    use crate::util::rng::Rng;
    use candle_core::{DType, Var};

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
}
