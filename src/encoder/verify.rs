//! `duet verify`: Duet's own pipeline (Rust tokenizer + ONNX Runtime + pooling) against reference vectors
//! computed by the model's original framework (`models/<name>/reference.json`, written by `models/prepare`).
//!
//! Every text must reach `min_cosine` against its reference, encoded in one padded batch and one by one, and the
//! batched and single vectors must agree with each other.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::onnx::{self, SessionOptions};
use super::{EncoderError, Manifest, Side};

fn default_min_cosine() -> f64 {
    0.9999
}

/// `reference.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    pub side: Side,
    #[serde(default = "default_min_cosine")]
    pub min_cosine: f64,
    pub texts: Vec<String>,
    pub vectors: Vec<Vec<f32>>,
}

#[derive(Debug, Serialize)]
pub struct TextCheck {
    pub text: String,
    pub cosine_batched: f64,
    pub cosine_single: f64,
    pub batched_vs_single: f64,
    pub truncated: bool,
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub model: String,
    pub min_cosine: f64,
    pub checks: Vec<TextCheck>,
    pub passed: bool,
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        return if na == nb { 1.0 } else { 0.0 };
    }
    dot / (na * nb)
}

/// Verifies the model in `dir` against `reference` (default `dir/reference.json`).
impl std::fmt::Display for VerifyReport {
    /// One line per checked text (cosine batched / single / batched-vs-single), then the verdict.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: cosine with the reference (min {}), batched / single / batched-vs-single",
            self.model, self.min_cosine
        )?;
        for c in &self.checks {
            let truncated = if c.truncated { " (truncated)" } else { "" };
            writeln!(
                f,
                "  {:.6} {:.6} {:.6}{truncated} {:?}",
                c.cosine_batched, c.cosine_single, c.batched_vs_single, c.text
            )?;
        }
        if self.passed {
            writeln!(f, "{}: verified", self.model)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    File(#[from] crate::util::fs::FileError),
    #[error("the reference {} is not valid", .path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the reference {}: texts and vectors must be non-empty and of equal length", .0.display())]
    Shape(PathBuf),
    #[error(transparent)]
    Encoder(#[from] EncoderError),
}

/// Encodes the reference texts with Duet's pipeline, batched and one by one, and compares them with the
/// reference vectors (`dir/reference.json` unless `reference` names another file).
pub fn verify(dir: &Path, reference: Option<&Path>, onnxruntime: Option<&Path>) -> Result<VerifyReport, VerifyError> {
    let path = reference.map(Path::to_path_buf).unwrap_or_else(|| dir.join("reference.json"));
    let text = crate::util::fs::read_to_string(&path)?;
    let reference: Reference =
        serde_json::from_str(&text).map_err(|source| VerifyError::Parse { path: path.clone(), source })?;
    if reference.texts.len() != reference.vectors.len() || reference.texts.is_empty() {
        return Err(VerifyError::Shape(path));
    }
    let resolved = Manifest::load(dir)?;
    let env = super::runtime::environment(onnxruntime)?;
    let encoder = onnx::load(&resolved, env, SessionOptions::default())?;
    let batched = encoder.encode(&reference.texts, reference.side)?;
    let mut checks = Vec::new();
    for (i, (text, expected)) in reference.texts.iter().zip(&reference.vectors).enumerate() {
        let single = encoder.encode(std::slice::from_ref(text), reference.side)?;
        let single_vector = single
            .vectors
            .first()
            .ok_or_else(|| EncoderError::inference(&encoder.info().name, "no vector returned".into()))?;
        checks.push(TextCheck {
            text: text.chars().take(60).collect(),
            cosine_batched: cosine(&batched.vectors[i], expected),
            cosine_single: cosine(single_vector, expected),
            batched_vs_single: cosine(&batched.vectors[i], single_vector),
            truncated: batched.truncated[i],
        });
    }
    let min = reference.min_cosine;
    let passed = checks.iter().all(|c| c.cosine_batched >= min && c.cosine_single >= min && c.batched_vs_single >= min);
    Ok(VerifyReport { model: encoder.info().name.clone(), min_cosine: min, checks, passed })
}

#[cfg(test)]
mod tests {
    use super::cosine;

    #[test]
    fn cosine_of_parallel_orthogonal_and_zero_vectors() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-12);
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 3.0]), 0.0);
        assert_eq!(cosine(&[0.0, 0.0], &[0.0, 0.0]), 1.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }
}
