//! `duet verify`: Duet's own pipeline (Rust tokenizer + ONNX Runtime + pooling) against reference vectors
//! computed by the model's original framework (`models/<name>/reference.json`, written by `models/prepare`).
//!
//! Every text must reach `min_cosine` against its reference, encoded in one padded batch and one by one, and the
//! batched and single vectors must agree with each other.
//!
//! A quantised variant (a manifest with `quantized_from`, e.g. `models/minilm-int8`) is checked against its
//! full-precision model instead: both encode the reference texts through Duet's pipeline, and every cosine must
//! reach [`QUANTIZED_MIN_COSINE`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::onnx::{self, SessionOptions};
use super::{Encoder, EncoderError, Manifest, Side};

fn default_min_cosine() -> f64 {
    0.9999
}

/// The floor of a quantised variant's cosine with its full-precision model, on every reference text, batched and
/// one by one (and between its own batched and single vectors).
pub const QUANTIZED_MIN_COSINE: f64 = 0.99;

/// `reference.json`. A quantised variant's may hold only `texts` (its fp32 model gives the vectors).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    pub side: Side,
    #[serde(default = "default_min_cosine")]
    pub min_cosine: f64,
    pub texts: Vec<String>,
    #[serde(default)]
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
    /// What the vectors were compared with: the reference vectors, or the fp32 model a variant came from.
    pub against: String,
    /// The floor every cosine must reach.
    pub min_cosine: f64,
    pub checks: Vec<TextCheck>,
    /// The lowest cosine of all checks (batched, single, batched-vs-single).
    pub lowest: f64,
    /// The mean cosine with `against` (batched and single).
    pub mean: f64,
    pub passed: bool,
}

impl VerifyReport {
    fn new(model: String, against: String, min_cosine: f64, checks: Vec<TextCheck>) -> Self {
        let all = checks.iter().flat_map(|c| [c.cosine_batched, c.cosine_single, c.batched_vs_single]);
        let lowest = all.fold(f64::INFINITY, f64::min);
        let with_against: Vec<f64> = checks.iter().flat_map(|c| [c.cosine_batched, c.cosine_single]).collect();
        let mean = with_against.iter().sum::<f64>() / with_against.len().max(1) as f64;
        let passed = !checks.is_empty() && lowest >= min_cosine;
        VerifyReport { model, against, min_cosine, checks, lowest, mean, passed }
    }

    /// Why the check failed (the text with the lowest cosine), or `None` when it passed.
    pub fn failure(&self) -> Option<String> {
        if self.passed {
            return None;
        }
        let worst = self.checks.iter().min_by(|a, b| a.lowest().total_cmp(&b.lowest()));
        let text = worst.map(|c| format!(" on {:?}", c.text)).unwrap_or_default();
        Some(format!(
            "{}: Duet's vectors do not match {}: lowest cosine {:.6}{text} is below the floor {}",
            self.model, self.against, self.lowest, self.min_cosine
        ))
    }
}

impl TextCheck {
    fn lowest(&self) -> f64 {
        self.cosine_batched.min(self.cosine_single).min(self.batched_vs_single)
    }
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

impl std::fmt::Display for VerifyReport {
    /// One line per checked text (cosine batched / single / batched-vs-single), then the verdict.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: cosine with {} (floor {}), batched / single / batched-vs-single",
            self.model, self.against, self.min_cosine
        )?;
        for c in &self.checks {
            let truncated = if c.truncated { " (truncated)" } else { "" };
            writeln!(
                f,
                "  {:.6} {:.6} {:.6}{truncated} {:?}",
                c.cosine_batched, c.cosine_single, c.batched_vs_single, c.text
            )?;
        }
        writeln!(f, "{}: lowest cosine {:.6}, mean {:.6}", self.model, self.lowest, self.mean)?;
        match self.failure() {
            None => writeln!(f, "{}: verified", self.model),
            Some(failure) => writeln!(f, "FAILED: {failure}"),
        }
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
    #[error("the reference {} holds no texts", .0.display())]
    NoTexts(PathBuf),
    #[error(transparent)]
    Encoder(#[from] EncoderError),
}

/// Reads a reference file; `with_vectors`: it must hold one vector per text.
fn read_reference(path: &Path, with_vectors: bool) -> Result<Reference, VerifyError> {
    let text = crate::util::fs::read_to_string(path)?;
    let reference: Reference =
        serde_json::from_str(&text).map_err(|source| VerifyError::Parse { path: path.to_path_buf(), source })?;
    if reference.texts.is_empty() {
        return Err(VerifyError::NoTexts(path.to_path_buf()));
    }
    if with_vectors && reference.texts.len() != reference.vectors.len() {
        return Err(VerifyError::Shape(path.to_path_buf()));
    }
    Ok(reference)
}

/// Encodes the reference texts with Duet's pipeline, batched and one by one, and compares them with the
/// reference vectors (`dir/reference.json` unless `reference` names another file). A quantised variant is
/// compared with its full-precision model instead, on the same texts (its own `reference.json`, else that of the
/// model it came from), with the floor [`QUANTIZED_MIN_COSINE`].
pub fn verify(dir: &Path, reference: Option<&Path>, onnxruntime: Option<&Path>) -> Result<VerifyReport, VerifyError> {
    let resolved = Manifest::load(dir)?;
    let env = super::runtime::environment(onnxruntime)?;
    let encoder = onnx::load(&resolved, env, SessionOptions::default())?;
    if let Some(source_dir) = resolved.quantized_from() {
        let path = match reference {
            Some(path) => path.to_path_buf(),
            None if dir.join("reference.json").is_file() => dir.join("reference.json"),
            None => source_dir.join("reference.json"),
        };
        let reference = read_reference(&path, false)?;
        let source = onnx::load(&Manifest::load(&source_dir)?, env, SessionOptions::default())?;
        let expected = source.encode(&reference.texts, reference.side)?.vectors;
        let against = format!("its fp32 model {} ({})", source.info().name, source_dir.display());
        let checks = compare(encoder.as_ref(), &reference.texts, &expected, reference.side)?;
        return Ok(VerifyReport::new(encoder.info().name.clone(), against, QUANTIZED_MIN_COSINE, checks));
    }
    let path = reference.map(Path::to_path_buf).unwrap_or_else(|| dir.join("reference.json"));
    let reference = read_reference(&path, true)?;
    let checks = compare(encoder.as_ref(), &reference.texts, &reference.vectors, reference.side)?;
    let against = format!("the reference vectors ({})", path.display());
    Ok(VerifyReport::new(encoder.info().name.clone(), against, reference.min_cosine, checks))
}

/// Each text encoded in one padded batch and on its own, against its expected vector.
fn compare(
    encoder: &dyn Encoder,
    texts: &[String],
    expected: &[Vec<f32>],
    side: Side,
) -> Result<Vec<TextCheck>, EncoderError> {
    let batched = encoder.encode(texts, side)?;
    let mut checks = Vec::new();
    for (i, (text, expected)) in texts.iter().zip(expected).enumerate() {
        let single = encoder.encode(std::slice::from_ref(text), side)?;
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
    Ok(checks)
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
