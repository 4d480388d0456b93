//! Encoders: turn texts into vectors. Owns the [`Encoder`] trait, the model manifests (`models/<name>/model.toml`),
//! the ONNX Runtime set-up, tokenization, pooling, and the per-model batching queue that keeps inference off the
//! async runtime.
//!
//! Implementations: [`onnx::SingleNetworkEncoder`] (plain encoders and decoder LLMs: one network for both sides,
//! with per-side prefixes) and [`onnx::TwoTowerEncoder`] (a query tower and a document tower).

pub mod bench;
pub mod device;
pub mod manifest;
pub mod onnx;
pub mod pooling;
pub mod queue;
pub mod runtime;
pub mod verify;

use serde::{Deserialize, Serialize};

pub use device::Device;
pub use manifest::{Manifest, ModelKind, ModelRole, PaddingSide, Pooling, Prompts};
pub use queue::{EncoderHandle, EncoderHealth, Priority, QueueOptions, Rebuild};

/// Which side of the retrieval problem a text is on. Two-tower models run a different network per side;
/// single-network models apply a different prefix per side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Query,
    Document,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Query => "query",
            Side::Document => "document",
        }
    }
}

/// Vectors for a batch of texts, in input order, which inputs were cut at `max_tokens`, and how many tokens each
/// took (framing and special tokens included, after the cut).
#[derive(Debug, Clone, Default)]
pub struct Encoded {
    pub vectors: Vec<Vec<f32>>,
    pub truncated: Vec<bool>,
    pub tokens: Vec<usize>,
}

impl Encoded {
    pub fn truncated_count(&self) -> usize {
        self.truncated.iter().filter(|&&t| t).count()
    }
}

/// What a loaded model is, as reported by `GET /v1/models` and recorded beside its embeddings.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub kind: ModelKind,
    pub role: ModelRole,
    /// The served width (below `network_dimension`: the network's vectors cut to it, Matryoshka-style).
    pub dimension: usize,
    /// The width the network emits.
    pub network_dimension: usize,
    /// The widths the model was trained to be cut to, when its manifest says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matryoshka_dimensions: Option<Vec<usize>>,
    /// Content hash of the manifest, networks and tokenizers: embeddings are stored per version.
    pub version: String,
    pub pooling: Pooling,
    pub normalize: bool,
    pub max_tokens: usize,
    pub query_prefix: String,
    pub document_prefix: String,
    /// A template with `{text}` in it, applied to queries instead of the prefix (e.g. a PromptEOL prompt).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_template: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document_template: Option<String>,
    /// The task whose prompts are in use (the prefixes and templates above), for a model with prompts per task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Every task the manifest has prompts for (empty: none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<String>,
    /// The device its sessions run on (`cpu` or `cuda`; `auto` resolved at load).
    pub device: Device,
}

impl ModelInfo {
    /// The text as the network sees it on `side`: inside the side's template, or after its prefix.
    pub fn frame(&self, side: Side, text: &str) -> String {
        let (prefix, template) = match side {
            Side::Query => (&self.query_prefix, &self.query_template),
            Side::Document => (&self.document_prefix, &self.document_template),
        };
        match template {
            Some(template) => template.replacen("{text}", text, 1),
            None => format!("{prefix}{text}"),
        }
    }

    /// Whether texts on `side` are used as they are.
    pub fn frames_nothing(&self, side: Side) -> bool {
        match side {
            Side::Query => self.query_prefix.is_empty() && self.query_template.is_none(),
            Side::Document => self.document_prefix.is_empty() && self.document_template.is_none(),
        }
    }
}

/// Matryoshka truncation: keeps the first `dimension` components of `vector` and, when `normalize`, scales it
/// back to unit length (a cut unit vector is shorter than 1). A vector no wider than `dimension` is only
/// re-normalised.
pub fn truncate(vector: &mut Vec<f32>, dimension: usize, normalize: bool) {
    vector.truncate(dimension);
    if normalize {
        crate::util::normalize(vector);
    }
}

/// The error beneath an encoder error (ONNX Runtime's, the tokenizer's, the file system's), shared because one
/// failed batch answers every request in it.
pub type Cause = std::sync::Arc<dyn std::error::Error + Send + Sync>;

/// Errors of the encoder layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EncoderError {
    #[error("ONNX Runtime is not available: {message}")]
    Runtime {
        message: String,
        #[source]
        source: Option<Cause>,
    },
    #[error("model manifest {path}: {message}")]
    Manifest {
        path: String,
        message: String,
        #[source]
        source: Option<Cause>,
    },
    #[error("model {model}: cannot load {what}: {message}")]
    Load {
        model: String,
        what: String,
        message: String,
        #[source]
        source: Option<Cause>,
    },
    #[error("model {model}: tokenization failed")]
    Tokenize {
        model: String,
        #[source]
        source: Cause,
    },
    #[error("model {model}: inference failed: {message}")]
    Inference {
        model: String,
        message: String,
        #[source]
        source: Option<Cause>,
    },
    /// The network does not give what the manifest promises (found by the probe encode at load).
    #[error("model {model}: the manifest does not fit the network: the manifest says {manifest}, the network gave {network}")]
    Mismatch { model: String, manifest: String, network: String },
    /// The queue holds its most texts (or tokens) waiting: `capacity` of `unit` ("texts" or "tokens").
    #[error("model {model}: its encoding queue is full ({capacity} {unit} waiting); retry shortly")]
    Overloaded { model: String, capacity: usize, unit: &'static str },
    /// The encoder panicked or its session failed repeatedly: requests waiting then are answered with this while
    /// it is rebuilt, and so are requests while rebuilding it keeps failing.
    #[error("model {model}: its encoder failed and is being restarted ({reason}); retry shortly")]
    Restarting { model: String, reason: String },
    #[error("model {model}: its encoder has stopped")]
    Stopped { model: String },
}

impl EncoderError {
    /// ONNX Runtime could not be found or loaded, for a reason Duet states itself.
    pub fn runtime(message: String) -> Self {
        EncoderError::Runtime { message, source: None }
    }

    /// The network misbehaved in a way Duet detected (an output of the wrong shape, a non-finite value).
    pub fn inference(model: &str, message: String) -> Self {
        EncoderError::Inference { model: model.to_string(), message, source: None }
    }
}

/// One text as its network takes it: token ids with special tokens, cut at `max_tokens`, and whether it was cut.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub truncated: bool,
}

impl Tokens {
    /// Tokens in the text (what it costs in a batch, before padding).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A model that turns texts into vectors, in two steps: [`Encoder::tokenize`] (framing, cutting and tokenising —
/// cheap, run on the caller's blocking pool) and [`Encoder::infer`] (the network, on the model's thread).
/// Implementations are synchronous and CPU-bound: callers reach them through an [`EncoderHandle`], whose queue
/// packs tokenised texts into batches.
pub trait Encoder: Send + Sync + 'static {
    fn info(&self) -> &ModelInfo;
    /// Frames `texts` for `side` (prefix or template), cuts them at `max_tokens` (characters first) and tokenises
    /// them with the side's tokenizer. Runs no network.
    fn tokenize(&self, texts: &[String], side: Side) -> Result<Vec<Tokens>, EncoderError>;
    /// Runs the side's network on one batch of tokenised texts (padded to its longest) and pools: one vector per
    /// input, in order, L2-normalised when the manifest says `normalize = true`.
    fn infer(&self, inputs: &[&Tokens], side: Side) -> Result<Vec<Vec<f32>>, EncoderError>;
    /// Both steps on one batch the caller chose (verification, benchmarks, tests: no queue).
    fn encode(&self, texts: &[String], side: Side) -> Result<Encoded, EncoderError> {
        let tokens = self.tokenize(texts, side)?;
        let inputs: Vec<&Tokens> = tokens.iter().collect();
        let vectors = if inputs.is_empty() { Vec::new() } else { self.infer(&inputs, side)? };
        if vectors.len() != tokens.len() {
            return Err(EncoderError::inference(
                &self.info().name,
                format!("{} vectors for {} texts", vectors.len(), tokens.len()),
            ));
        }
        Ok(Encoded {
            vectors,
            truncated: tokens.iter().map(|t| t.truncated).collect(),
            tokens: tokens.iter().map(Tokens::len).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_first_components_at_unit_length() {
        let full = {
            let mut v = vec![3.0, 4.0, 12.0, 0.5, -2.0];
            crate::util::normalize(&mut v);
            v
        };
        let mut cut = full.clone();
        truncate(&mut cut, 2, true);
        assert_eq!(cut.len(), 2);
        let norm: f32 = cut.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6, "unit length after the cut: {norm}");
        let scale = cut[0] / full[0];
        assert!((cut[1] - full[1] * scale).abs() < 1e-6, "the full vector's first components, rescaled");
        assert!((cut[0] - 0.6).abs() < 1e-6 && (cut[1] - 0.8).abs() < 1e-6, "{cut:?}");
        let mut raw = full.clone();
        truncate(&mut raw, 2, false);
        assert_eq!(raw, full[..2], "without normalize, only cut");
    }
}
