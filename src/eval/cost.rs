//! What each system costs to run: document encoding throughput, query latency percentiles (query encoding and
//! search, through the engine as served), an estimate of the index's memory, and the model's size on disk.

use std::path::Path;

use serde::Serialize;

use crate::util::stats::quantile;

/// One system's costs.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCost {
    pub model: String,
    /// Vector width (0 for BM25).
    pub dimension: usize,
    /// Documents encoded per second (BM25: indexed per second), over `encode_sample` documents.
    pub encode_docs_per_second: f64,
    pub encode_sample: usize,
    /// Whole query (encode + search + fetch) as served, milliseconds.
    pub query_ms_p50: f64,
    pub query_ms_p99: f64,
    /// Estimated bytes of the index for the evaluated corpus (see [`index_memory_estimate`]).
    pub index_bytes: u64,
    /// Bytes of the model folder (networks, tokenizer, manifest); 0 for BM25.
    pub model_bytes: u64,
}

/// The 50th and 99th percentiles of latencies (any unit).
pub fn p50_p99(latencies: &[f64]) -> (f64, f64) {
    let mut sorted = latencies.to_vec();
    sorted.sort_by(f64::total_cmp);
    (quantile(&sorted, 0.5), quantile(&sorted, 0.99))
}

/// Estimated bytes of one model's index over `n` vectors of `dimension` floats with HNSW links `m`: the flat
/// vectors exact search scans (n × dim × 4), the copy the HNSW graph keeps (n × dim × 4), and the graph's links —
/// 2m neighbours per node on layer 0 plus about m / (m − 1) ≈ 1 per node above, at 16 bytes a link (a shared
/// pointer and a distance). An estimate: allocator overhead and id strings are left out.
pub fn index_memory_estimate(n: usize, dimension: usize, m: usize) -> u64 {
    let vectors = (n * dimension * 4) as u64;
    let links = (n * (2 * m + 1) * 16) as u64;
    2 * vectors + links
}

/// Bytes of what a model needs: the networks and tokenizers its manifest names (each file once, wherever it
/// lives: a model may share another's network) and the manifest; the whole folder when the manifest does not load.
pub fn model_size(dir: &Path) -> u64 {
    let Ok(resolved) = crate::encoder::Manifest::load(dir) else { return dir_size(dir) };
    let mut files = vec![
        resolved.query_onnx.clone(),
        resolved.document_onnx.clone(),
        resolved.query_tokenizer.clone(),
        resolved.document_tokenizer.clone(),
        dir.join("model.toml"),
    ];
    files.iter_mut().for_each(|f| *f = f.canonicalize().unwrap_or_else(|_| f.clone()));
    files.sort();
    files.dedup();
    files.iter().map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum()
}

/// Total bytes of the files under `path` (following no links).
pub fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_and_sizes_by_hand() {
        // 1000 × 384 floats twice = 3,072,000 bytes; links 1000 × 33 × 16 = 528,000.
        assert_eq!(index_memory_estimate(1000, 384, 16), 3_072_000 + 528_000);
        let (p50, p99) = p50_p99(&(1..=100).map(|i| i as f64).collect::<Vec<_>>());
        assert!((p50 - 50.5).abs() < 1e-9 && (p99 - 99.01).abs() < 1e-9, "{p50} {p99}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 10]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), [0u8; 5]).unwrap();
        assert_eq!(dir_size(dir.path()), 15);
        assert_eq!(dir_size(&dir.path().join("missing")), 0);
        // A model counts the files its manifest names, shared ones once (tiny-two-tower: two towers, a tokenizer).
        let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-two-tower");
        let expected: u64 = ["query.onnx", "document.onnx", "tokenizer.json", "model.toml"]
            .iter()
            .map(|f| std::fs::metadata(tiny.join(f)).map(|m| m.len()).unwrap_or(0))
            .sum();
        assert_eq!(model_size(&tiny), expected);
    }
}
