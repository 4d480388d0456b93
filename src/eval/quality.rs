//! Embedding quality beyond ranks, per model, on L2-normalised vectors: alignment and uniformity (Wang & Isola
//! 2020, "Understanding contrastive representation learning through alignment and uniformity on the
//! hypersphere"), anisotropy (mean cosine of random document pairs: near 1 means every vector points the same
//! way), and the score gap between each query's positive and its best-scoring negative, with the score
//! distributions the plots draw.

use serde::Serialize;

use crate::util::rng::Rng;

pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64) * (*y as f64)).sum()
}

fn squared_distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum()
}

/// Alignment: mean squared distance between the vectors of positive pairs (α = 2). 0 is perfect; for unit
/// vectors it is 2 − 2 × mean cosine.
pub fn alignment(pairs: &[(&[f32], &[f32])]) -> f64 {
    if pairs.is_empty() {
        return 0.0;
    }
    pairs.iter().map(|(a, b)| squared_distance(a, b)).sum::<f64>() / pairs.len() as f64
}

/// `count` random pairs of distinct indexes below `n` (none when n < 2).
pub fn random_pairs(n: usize, count: usize, seed: u64) -> Vec<(usize, usize)> {
    if n < 2 {
        return Vec::new();
    }
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|_| {
            let i = rng.below(n);
            let j = (i + 1 + rng.below(n - 1)) % n;
            (i, j)
        })
        .collect()
}

/// Uniformity: log of the mean Gaussian potential exp(−2 ‖x − y‖²) over pairs of vectors (t = 2). Lower is more
/// uniform: −4 is the floor for unit vectors spread over a high-dimensional sphere, 0 means all vectors coincide.
pub fn uniformity(vectors: &[Vec<f32>], pairs: &[(usize, usize)]) -> f64 {
    if pairs.is_empty() {
        return 0.0;
    }
    let mean = pairs.iter().map(|&(i, j)| (-2.0 * squared_distance(&vectors[i], &vectors[j])).exp()).sum::<f64>()
        / pairs.len() as f64;
    mean.ln()
}

/// Anisotropy: mean cosine of the pairs (unit vectors).
pub fn anisotropy(vectors: &[Vec<f32>], pairs: &[(usize, usize)]) -> f64 {
    if pairs.is_empty() {
        return 0.0;
    }
    pairs.iter().map(|&(i, j)| dot(&vectors[i], &vectors[j])).sum::<f64>() / pairs.len() as f64
}

/// Per query: the score of its best relevant document, of its best non-relevant document (the hardest
/// negative among all documents), and of one random non-relevant document.
#[derive(Debug, Clone, Default)]
pub struct ScoreSamples {
    pub positive: Vec<f64>,
    pub best_negative: Vec<f64>,
    pub random_negative: Vec<f64>,
}

/// Scores every query (unit vector, relevant document indexes) against every document (unit vectors).
pub fn score_samples(queries: &[(Vec<f32>, Vec<usize>)], documents: &[Vec<f32>], seed: u64) -> ScoreSamples {
    let mut rng = Rng::new(seed);
    let mut out = ScoreSamples::default();
    for (q, relevant) in queries {
        if relevant.is_empty() || relevant.len() >= documents.len() {
            continue;
        }
        let scores: Vec<f64> = documents.iter().map(|d| dot(q, d)).collect();
        let positive = relevant.iter().map(|&r| scores[r]).fold(f64::NEG_INFINITY, f64::max);
        let negatives: Vec<usize> = (0..documents.len()).filter(|i| !relevant.contains(i)).collect();
        let best = negatives.iter().map(|&i| scores[i]).fold(f64::NEG_INFINITY, f64::max);
        out.positive.push(positive);
        out.best_negative.push(best);
        out.random_negative.push(scores[negatives[rng.below(negatives.len())]]);
    }
    out
}

/// A histogram of values over fixed bins.
#[derive(Debug, Clone, Serialize)]
pub struct Histogram {
    pub low: f64,
    pub high: f64,
    pub counts: Vec<usize>,
}

impl Histogram {
    pub fn new(values: &[f64], low: f64, high: f64, bins: usize) -> Self {
        let mut counts = vec![0; bins];
        let width = (high - low) / bins as f64;
        for v in values {
            let bin = (((v - low) / width).floor().max(0.0) as usize).min(bins - 1);
            counts[bin] += 1;
        }
        Self { low, high, counts }
    }
}

/// One model's embedding-quality numbers.
#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingQuality {
    pub model: String,
    /// Queries (with their positives) and random document pairs measured.
    pub queries: usize,
    pub document_pairs: usize,
    pub alignment: f64,
    /// Over documents.
    pub uniformity: f64,
    /// Mean cosine of random document pairs.
    pub anisotropy: f64,
    pub positive_mean: f64,
    pub best_negative_mean: f64,
    pub random_negative_mean: f64,
    /// Mean of (positive − best negative).
    pub score_gap_mean: f64,
    /// Share of queries whose positive outscores every negative.
    pub positive_first: f64,
    /// Distributions over [−1, 1], 40 bins, for the plots.
    pub positive_histogram: Histogram,
    pub best_negative_histogram: Histogram,
    pub random_negative_histogram: Histogram,
}

/// Measures a model from unit-length query vectors (with the indexes of their relevant documents) and
/// unit-length document vectors.
pub fn measure(
    model: &str,
    queries: &[(Vec<f32>, Vec<usize>)],
    documents: &[Vec<f32>],
    document_pairs: usize,
    seed: u64,
) -> EmbeddingQuality {
    let positives: Vec<(&[f32], &[f32])> =
        queries.iter().flat_map(|(q, rel)| rel.iter().map(move |&d| (q.as_slice(), documents[d].as_slice()))).collect();
    let pairs = random_pairs(documents.len(), document_pairs, seed);
    let samples = score_samples(queries, documents, seed);
    let mean = crate::util::stats::mean;
    let gaps: Vec<f64> = samples.positive.iter().zip(&samples.best_negative).map(|(p, n)| p - n).collect();
    let histogram = |v: &[f64]| Histogram::new(v, -1.0, 1.0, 40);
    EmbeddingQuality {
        model: model.to_string(),
        queries: samples.positive.len(),
        document_pairs: pairs.len(),
        alignment: alignment(&positives),
        uniformity: uniformity(documents, &pairs),
        anisotropy: anisotropy(documents, &pairs),
        positive_mean: mean(&samples.positive),
        best_negative_mean: mean(&samples.best_negative),
        random_negative_mean: mean(&samples.random_negative),
        score_gap_mean: mean(&gaps),
        positive_first: if gaps.is_empty() {
            0.0
        } else {
            gaps.iter().filter(|g| **g > 0.0).count() as f64 / gaps.len() as f64
        },
        positive_histogram: histogram(&samples.positive),
        best_negative_histogram: histogram(&samples.best_negative),
        random_negative_histogram: histogram(&samples.random_negative),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn alignment_uniformity_and_anisotropy_by_hand() {
        let x = vec![1.0f32, 0.0];
        let y = vec![0.0f32, 1.0];
        let minus_x = vec![-1.0f32, 0.0];
        assert!(close(alignment(&[(&x, &x)]), 0.0));
        assert!(close(alignment(&[(&x, &y)]), 2.0), "orthogonal: ‖x − y‖² = 2");
        assert!(close(alignment(&[(&x, &x), (&x, &minus_x)]), 2.0), "(0 + 4) / 2");
        let vectors = vec![x.clone(), y.clone(), minus_x.clone()];
        // Pairs (x, y): d² = 2, cos 0; (x, −x): d² = 4, cos −1.
        let pairs = [(0, 1), (0, 2)];
        assert!(close(uniformity(&vectors, &pairs), (((-4f64).exp() + (-8f64).exp()) / 2.0).ln()));
        assert!(close(anisotropy(&vectors, &pairs), -0.5));
        let same = vec![x.clone(), x.clone()];
        assert!(close(uniformity(&same, &[(0, 1)]), 0.0), "collapsed vectors: log 1");
        assert!(close(anisotropy(&same, &[(0, 1)]), 1.0));
        assert!(random_pairs(5, 100, 1).iter().all(|(i, j)| i != j && *i < 5 && *j < 5));
        assert!(random_pairs(1, 10, 1).is_empty());
    }

    #[test]
    fn score_gaps_by_hand() {
        // Documents at angles; the query is x; relevant document 1 (cos 0.6), negatives cos 1.0 and 0.0.
        let docs = vec![vec![1.0f32, 0.0], vec![0.6, 0.8], vec![0.0, 1.0]];
        let queries = vec![(vec![1.0f32, 0.0], vec![1usize])];
        let s = score_samples(&queries, &docs, 3);
        assert!(close(s.positive[0], 0.6));
        assert!(close(s.best_negative[0], 1.0));
        assert!(close(s.random_negative[0], 1.0) || close(s.random_negative[0], 0.0));
        let m = measure("m", &queries, &docs, 10, 3);
        assert!(close(m.score_gap_mean, -0.4));
        assert_eq!(m.positive_first, 0.0);
        assert!(close(m.alignment, 0.16 + 0.64), "(1 − 0.6)² + 0.8²");
        assert_eq!(m.positive_histogram.counts.iter().sum::<usize>(), 1);
        assert_eq!(Histogram::new(&[-1.0, 1.0, 0.0], -1.0, 1.0, 4).counts, vec![1, 0, 1, 1]);
    }
}
