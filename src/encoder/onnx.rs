//! ONNX encoders: a tokenizer plus an ONNX Runtime session per tower, with pooling and normalisation.
//!
//! Inputs are read from the session itself: `token_type_ids` is sent only when the graph declares it. Any padding
//! or truncation baked into a shipped `tokenizer.json` is replaced: batches pad to their longest member and inputs
//! are cut at the manifest's `max_tokens`. Before tokenising, a text is cut to `max_tokens` × [`CHARS_PER_TOKEN`]
//! characters, so that a huge text costs no more than a long one (the tokenizer would otherwise read all of it
//! only for most tokens to be thrown away); a text cut that way is reported truncated.

use std::path::Path;
use std::sync::Arc;

use ort::session::Session;
use ort::value::{DynValue, Tensor};
use parking_lot::Mutex;
use tokenizers::{Tokenizer, TruncationParams};

use super::device::Device;
use super::manifest::ResolvedManifest;
use super::pooling::pool;
use super::{truncate, Encoder, EncoderError, ModelInfo, ModelKind, PaddingSide, Pooling, Side, Tokens};
use crate::util::normalize;

/// Characters kept per token of `max_tokens` before tokenising. A token of the shipped vocabularies rarely spans
/// more than 16 characters (English text averages about 4 per token, code about 3), so a text longer than this has
/// more than `max_tokens` tokens — it would be cut anyway — unless it is mostly whitespace or runs of unknown
/// characters; then it is cut here instead, and equally reported truncated.
pub const CHARS_PER_TOKEN: usize = 32;

/// The first `max_chars` characters of `text`, when it has more.
fn char_prefix(text: &str, max_chars: usize) -> Option<&str> {
    text.char_indices().nth(max_chars).map(|(end, _)| &text[..end])
}

/// Options for building sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// ONNX Runtime intra-op threads per session.
    pub intra_threads: usize,
    /// ONNX Runtime's CPU memory arena (it keeps the largest batch's buffers for the session's life). Off for
    /// bulk sessions, whose batches vary most; memory patterns go with it.
    pub cpu_arena: bool,
    /// Where the session runs (see [`Device`]).
    pub device: Device,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self { intra_threads: 1, cpu_arena: true, device: Device::Cpu }
    }
}

impl SessionOptions {
    /// A bulk session: `threads` intra-op threads (0: every available core), no arena.
    pub fn bulk(threads: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self { intra_threads: if threads == 0 { cores } else { threads }, cpu_arena: false, device: Device::Cpu }
    }
}

/// One network with its tokenizer: a whole single-network model, or one tower of a two-tower model.
pub struct OnnxTower {
    model: String,
    session: Mutex<Session>,
    /// The device the session runs on (never `auto`).
    device: Device,
    /// The shipped tokenizer with its baked-in padding and truncation removed: tells the full length of a text.
    tokenizer: Tokenizer,
    /// The same, truncating at `max_tokens` (special tokens included), for the texts that are too long.
    truncating: Tokenizer,
    pad_id: u32,
    padding_side: PaddingSide,
    max_tokens: usize,
    has_token_type_ids: bool,
    output: String,
    pooling: Pooling,
    normalize: bool,
    /// The width the network emits, and the served width its vectors are cut to (Matryoshka).
    network_dimension: usize,
    dimension: usize,
}

/// `what` is not usable, for a reason Duet states itself.
fn load_err(model: &str, what: &Path, message: String) -> EncoderError {
    EncoderError::Load { model: model.to_string(), what: what.display().to_string(), message, source: None }
}

/// Loading `what` failed in a library (`message` says at which step; `source` why).
fn load_failed(
    model: &str,
    what: &Path,
    message: &str,
    source: impl std::error::Error + Send + Sync + 'static,
) -> EncoderError {
    EncoderError::Load {
        model: model.to_string(),
        what: what.display().to_string(),
        message: message.to_string(),
        source: Some(Arc::new(source)),
    }
}

impl OnnxTower {
    pub fn load(
        resolved: &ResolvedManifest,
        onnx: &Path,
        tokenizer_path: &Path,
        env: &ort::environment::Environment,
        options: SessionOptions,
    ) -> Result<Self, EncoderError> {
        let m = &resolved.manifest;
        let (session, device) = super::device::session(&m.name, onnx, env, options)?;

        let input_names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for required in ["input_ids", "attention_mask"] {
            if !input_names.contains(&required) {
                return Err(load_err(
                    &m.name,
                    onnx,
                    format!("the graph has no input `{required}` (inputs: {input_names:?})"),
                ));
            }
        }
        if let Some(extra) = input_names.iter().find(|n| !["input_ids", "attention_mask", "token_type_ids"].contains(n))
        {
            return Err(load_err(&m.name, onnx, format!("the graph needs an input Duet does not provide: `{extra}`")));
        }
        let has_token_type_ids = input_names.contains(&"token_type_ids");
        let output_names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        let pooling = m.pooling();
        let output = match (&m.output, pooling) {
            (Some(name), _) => name.clone(),
            (None, Pooling::Output) => "sentence_embedding".to_string(),
            (None, _) if output_names.contains(&"last_hidden_state") => "last_hidden_state".to_string(),
            (None, _) => output_names.first().map(|s| s.to_string()).unwrap_or_default(),
        };
        if !output_names.contains(&output.as_str()) {
            return Err(load_err(
                &m.name,
                onnx,
                format!("the graph has no output `{output}` (outputs: {output_names:?})"),
            ));
        }

        let mut tokenizer = Tokenizer::from_file(tokenizer_path)
            .map_err(|e| load_failed(&m.name, tokenizer_path, "not a usable tokenizer.json", Boxed(e)))?;
        let pad_token =
            m.pad_token.clone().or_else(|| tokenizer.get_padding().map(|p| p.pad_token.clone())).or_else(|| {
                ["[PAD]", "<pad>"].iter().find(|t| tokenizer.token_to_id(t).is_some()).map(|t| t.to_string())
            });
        let pad_id = match &pad_token {
            Some(token) => tokenizer.token_to_id(token).ok_or_else(|| {
                load_err(&m.name, tokenizer_path, format!("pad token `{token}` is not in the vocabulary"))
            })?,
            None => 0,
        };
        // Padding is done here, per batch, to the longest member; truncation only where a text is too long (the
        // tokenizers crate does not report truncation reliably for tokenizers without a post-processor).
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| load_failed(&m.name, tokenizer_path, "cannot turn truncation off", Boxed(e)))?;
        let mut truncating = tokenizer.clone();
        truncating
            .with_truncation(Some(TruncationParams { max_length: m.max_tokens, ..Default::default() }))
            .map_err(|e| load_failed(&m.name, tokenizer_path, "cannot set truncation at max_tokens", Boxed(e)))?;

        Ok(Self {
            model: m.name.clone(),
            session: Mutex::new(session),
            device,
            tokenizer,
            truncating,
            pad_id,
            padding_side: m.padding_side,
            max_tokens: m.max_tokens,
            has_token_type_ids,
            output,
            pooling,
            normalize: m.normalize,
            network_dimension: m.network_dimension(),
            dimension: m.dimension,
        })
    }

    /// Cuts (characters first, then tokens at `max_tokens`) and tokenises texts already framed.
    pub fn tokenize(&self, texts: &[String]) -> Result<Vec<Tokens>, EncoderError> {
        let tokenize_err =
            |e: tokenizers::Error| EncoderError::Tokenize { model: self.model.clone(), source: Arc::new(Boxed(e)) };
        let max_chars = self.max_tokens.saturating_mul(CHARS_PER_TOKEN);
        let mut cut_by_chars = vec![false; texts.len()];
        let inputs: Vec<&str> = texts
            .iter()
            .zip(&mut cut_by_chars)
            .map(|(text, cut)| match char_prefix(text, max_chars) {
                Some(prefix) => {
                    *cut = true;
                    prefix
                }
                None => text.as_str(),
            })
            .collect();
        let encodings = self.tokenizer.encode_batch(inputs.clone(), true).map_err(tokenize_err)?;
        let mut tokens = Vec::with_capacity(encodings.len());
        for (i, mut encoding) in encodings.into_iter().enumerate() {
            let truncated = cut_by_chars[i] || encoding.len() > self.max_tokens;
            if encoding.len() > self.max_tokens {
                encoding = self.truncating.encode(inputs[i], true).map_err(tokenize_err)?;
            }
            tokens.push(Tokens {
                ids: encoding.get_ids().to_vec(),
                type_ids: encoding.get_type_ids().to_vec(),
                truncated,
            });
        }
        Ok(tokens)
    }

    /// Runs and pools one batch of tokenised texts.
    pub fn infer(&self, inputs: &[&Tokens]) -> Result<Vec<Vec<f32>>, EncoderError> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let Packed { batch, seq, ids, mask, type_ids } = pack(inputs, self.pad_id, self.padding_side);

        let infer_err = |e: ort::Error| EncoderError::Inference {
            model: self.model.clone(),
            message: "ONNX Runtime failed".into(),
            source: Some(Arc::new(e)),
        };
        let shape = vec![batch as i64, seq as i64];
        let tensor = |data: Vec<i64>| -> Result<DynValue, EncoderError> {
            Ok(Tensor::from_array((shape.clone(), data)).map_err(infer_err)?.into_dyn())
        };
        let mut inputs: Vec<(&str, DynValue)> =
            vec![("input_ids", tensor(ids)?), ("attention_mask", tensor(mask.clone())?)];
        if self.has_token_type_ids {
            inputs.push(("token_type_ids", tensor(type_ids)?));
        }

        let mut session = self.session.lock();
        let outputs = session.run(inputs).map_err(infer_err)?;
        let (out_shape, states) = outputs[self.output.as_str()].try_extract_tensor::<f32>().map_err(infer_err)?;
        let dims: Vec<i64> = out_shape.iter().copied().collect();
        let expected_rank = if self.pooling == Pooling::Output { 2 } else { 3 };
        if dims.len() != expected_rank
            || dims[0] as usize != batch
            || *dims.last().unwrap() as usize != self.network_dimension
        {
            let needs = if expected_rank == 3 { "[batch, sequence, dimension]" } else { "[batch, dimension]" };
            return Err(EncoderError::Mismatch {
                model: self.model.clone(),
                manifest: format!(
                    "pooling {} (an output of shape {needs}) and network dimension {}",
                    self.pooling.as_str(),
                    self.network_dimension
                ),
                network: format!("output `{}` of shape {dims:?} for {batch} input(s)", self.output),
            });
        }
        let out_seq = if expected_rank == 3 { dims[1] as usize } else { 0 };
        if expected_rank == 3 && out_seq != seq {
            return Err(EncoderError::inference(
                &self.model,
                format!("output sequence length {out_seq} differs from the input's {seq}"),
            ));
        }
        let mut vectors = pool(states, batch, out_seq, self.network_dimension, &mask, self.pooling);
        drop(outputs);
        drop(session);
        if self.dimension < self.network_dimension {
            // Normalised after the cut: the kept components of a unit vector are shorter than 1.
            vectors.iter_mut().for_each(|v| truncate(v, self.dimension, self.normalize));
        } else if self.normalize {
            vectors.iter_mut().for_each(|v| normalize(v));
        }
        if let Some(bad) = vectors.iter().position(|v| v.iter().any(|x| !x.is_finite())) {
            return Err(EncoderError::inference(
                &self.model,
                format!("the network produced a non-finite value for input {bad}"),
            ));
        }
        Ok(vectors)
    }
}

/// The tokenizers crate's boxed error as an error type of its own (a `Box<dyn Error>` is not one).
#[derive(Debug)]
struct Boxed(tokenizers::Error);

impl std::fmt::Display for Boxed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Boxed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// A batch as the network takes it: `[batch, seq]` row-major, padded to the longest member.
#[derive(Debug, PartialEq)]
struct Packed {
    batch: usize,
    seq: usize,
    ids: Vec<i64>,
    mask: Vec<i64>,
    type_ids: Vec<i64>,
}

/// Pads token sequences to the longest one with `pad_id`, on the given side; the mask marks real tokens.
fn pack(encodings: &[&Tokens], pad_id: u32, side: PaddingSide) -> Packed {
    let batch = encodings.len();
    let seq = encodings.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
    let mut ids = vec![pad_id as i64; batch * seq];
    let mut mask = vec![0i64; batch * seq];
    let mut type_ids = vec![0i64; batch * seq];
    for (b, enc) in encodings.iter().enumerate() {
        let start = match side {
            PaddingSide::Right => 0,
            PaddingSide::Left => seq - enc.len(),
        };
        for (t, (&id, &ty)) in enc.ids.iter().zip(&enc.type_ids).enumerate() {
            let at = b * seq + start + t;
            ids[at] = id as i64;
            mask[at] = 1;
            type_ids[at] = ty as i64;
        }
    }
    Packed { batch, seq, ids, mask, type_ids }
}

/// Tokenises with `tower`, framing the texts as the model's `side` asks (prefix or template).
fn tokenize_framed(
    info: &ModelInfo,
    tower: &OnnxTower,
    texts: &[String],
    side: Side,
) -> Result<Vec<Tokens>, EncoderError> {
    if info.frames_nothing(side) {
        tower.tokenize(texts)
    } else {
        let framed: Vec<String> = texts.iter().map(|t| info.frame(side, t)).collect();
        tower.tokenize(&framed)
    }
}

/// One network for queries and documents (plain encoders and decoder LLMs), with a prefix per side
/// (e.g. an instruction before queries).
pub struct SingleNetworkEncoder {
    info: ModelInfo,
    tower: OnnxTower,
}

/// Separate query and document towers (the same file for both when weights are shared).
pub struct TwoTowerEncoder {
    info: ModelInfo,
    query: OnnxTower,
    document: OnnxTower,
}

/// Loads the model a manifest describes.
pub fn load(
    resolved: &ResolvedManifest,
    env: &ort::environment::Environment,
    options: SessionOptions,
) -> Result<Box<dyn Encoder>, EncoderError> {
    let m = &resolved.manifest;
    let prompts = resolved.prompts();
    let info = ModelInfo {
        name: m.name.clone(),
        kind: m.kind,
        role: m.role(),
        dimension: m.dimension,
        network_dimension: m.network_dimension(),
        matryoshka_dimensions: m.matryoshka_dimensions.clone(),
        version: resolved.version()?,
        pooling: m.pooling(),
        normalize: m.normalize,
        max_tokens: m.max_tokens,
        query_prefix: prompts.query_prefix,
        document_prefix: prompts.document_prefix,
        query_template: prompts.query_template,
        document_template: prompts.document_template,
        task: resolved.task.clone(),
        tasks: m.tasks.keys().cloned().collect(),
        device: options.device,
    };
    match m.kind {
        ModelKind::TwoTower => {
            let query = OnnxTower::load(resolved, &resolved.query_onnx, &resolved.query_tokenizer, env, options)?;
            let document =
                OnnxTower::load(resolved, &resolved.document_onnx, &resolved.document_tokenizer, env, options)?;
            let device = if query.device == document.device { query.device } else { Device::Cpu };
            probe(Box::new(TwoTowerEncoder { info: ModelInfo { device, ..info }, query, document }))
        }
        ModelKind::Llm | ModelKind::Encoder => {
            let tower = OnnxTower::load(resolved, &resolved.query_onnx, &resolved.query_tokenizer, env, options)?;
            probe(Box::new(SingleNetworkEncoder { info: ModelInfo { device: tower.device, ..info }, tower }))
        }
    }
}

/// Builds a model's encoder again from its manifest, with the given session options: after a crash, or for a
/// bulk session (see [`super::queue`]). A model whose files changed since it was loaded (another version, whose
/// embeddings the index does not hold) is not rebuilt.
pub fn reloader(
    resolved: ResolvedManifest,
    env: &'static ort::environment::Environment,
    version: String,
) -> super::Rebuild {
    Arc::new(move |options: SessionOptions| {
        // The same name and task as the version served.
        let mut fresh = super::Manifest::load(&resolved.dir)?;
        fresh.manifest.name = resolved.manifest.name.clone();
        fresh.select_task(resolved.task.as_deref())?;
        let encoder = load(&fresh, env, options)?;
        if encoder.info().version != version {
            return Err(load_err(
                &encoder.info().name,
                &resolved.dir,
                format!(
                    "its files changed since start-up (version {} now, {version} served); restart the server",
                    encoder.info().version
                ),
            ));
        }
        Ok(encoder)
    })
}

/// The text encoded on each side when a model is loaded.
pub const PROBE_TEXT: &str = "A short probe text, encoded when the model is loaded.";

/// Checks a loaded model against its manifest by encoding [`PROBE_TEXT`] on each side (each tower of a two-tower
/// model): the output is present and of the shape the pooling needs, and one vector of the manifest's `dimension`
/// comes back (else [`EncoderError::Mismatch`]), with every value finite (else the encoder's own
/// [`EncoderError::Inference`], which names the model). A model that fails either is refused.
fn probe(encoder: Box<dyn Encoder>) -> Result<Box<dyn Encoder>, EncoderError> {
    let info = encoder.info().clone();
    for side in [Side::Query, Side::Document] {
        let on_side = |network: String| EncoderError::Mismatch {
            model: info.name.clone(),
            manifest: format!("dimension {}", info.dimension),
            network: format!("{network} for a {} probe text", side.as_str()),
        };
        let encoded = encoder.encode(&[PROBE_TEXT.to_string()], side).map_err(|err| match err {
            EncoderError::Mismatch { model, manifest, network } => EncoderError::Mismatch {
                model,
                manifest,
                network: format!("{network} for a {} probe text", side.as_str()),
            },
            other => other,
        })?;
        match encoded.vectors.as_slice() {
            [vector] if vector.len() == info.dimension => {}
            [vector] => return Err(on_side(format!("a vector of {} values", vector.len()))),
            vectors => return Err(on_side(format!("{} vectors for one text", vectors.len()))),
        }
    }
    Ok(encoder)
}

impl Encoder for SingleNetworkEncoder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn tokenize(&self, texts: &[String], side: Side) -> Result<Vec<Tokens>, EncoderError> {
        tokenize_framed(&self.info, &self.tower, texts, side)
    }

    fn infer(&self, inputs: &[&Tokens], _side: Side) -> Result<Vec<Vec<f32>>, EncoderError> {
        self.tower.infer(inputs)
    }
}

impl Encoder for TwoTowerEncoder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn tokenize(&self, texts: &[String], side: Side) -> Result<Vec<Tokens>, EncoderError> {
        tokenize_framed(&self.info, self.tower(side), texts, side)
    }

    fn infer(&self, inputs: &[&Tokens], side: Side) -> Result<Vec<Vec<f32>>, EncoderError> {
        self.tower(side).infer(inputs)
    }
}

impl TwoTowerEncoder {
    fn tower(&self, side: Side) -> &OnnxTower {
        match side {
            Side::Query => &self.query,
            Side::Document => &self.document,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoding(ids: &[u32], types: &[u32]) -> Tokens {
        Tokens { ids: ids.to_vec(), type_ids: types.to_vec(), truncated: false }
    }

    #[test]
    fn texts_are_cut_by_characters_on_a_character_boundary() {
        assert_eq!(char_prefix("short", 10), None);
        assert_eq!(char_prefix("exactly10!", 10), None);
        assert_eq!(char_prefix("élan vital", 4), Some("élan"), "counts characters, not bytes");
        let huge = "word ".repeat(2_000_000);
        let started = std::time::Instant::now();
        assert_eq!(char_prefix(&huge, 128 * CHARS_PER_TOKEN).map(str::len), Some(4096));
        assert!(started.elapsed().as_millis() < 100, "reads only the prefix");
    }

    #[test]
    fn batches_pad_to_the_longest_with_the_pad_id_on_either_side() {
        let encodings = [encoding(&[5, 6, 7], &[0, 0, 1]), encoding(&[8], &[0])];
        let encodings: Vec<&Tokens> = encodings.iter().collect();
        let right = pack(&encodings, 2, PaddingSide::Right);
        assert_eq!((right.batch, right.seq), (2, 3));
        assert_eq!(right.ids, [5, 6, 7, 8, 2, 2]);
        assert_eq!(right.mask, [1, 1, 1, 1, 0, 0]);
        assert_eq!(right.type_ids, [0, 0, 1, 0, 0, 0]);
        let left = pack(&encodings, 2, PaddingSide::Left);
        assert_eq!(left.ids, [5, 6, 7, 2, 2, 8]);
        assert_eq!(left.mask, [1, 1, 1, 0, 0, 1]);
    }
}
