//! The model manifest, `models/<name>/model.toml`: what a model folder holds and how to run it — its files, its
//! pooling, its served width (a Matryoshka `dimension` below the network's own), and its prompts, either one
//! query/document pair or one pair per task (`[tasks.X]`, with a default `task` that a config entry may change).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Cause, EncoderError};

/// Which implementation serves the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// A query tower and a document tower (two ONNX files, or one file when weights are shared).
    TwoTower,
    /// A decoder-style network: `input_ids` and `attention_mask`, last-token pooling by default.
    Llm,
    /// A plain pretrained transformer encoder (BERT, MPNet...): mean pooling by default.
    Encoder,
}

/// What the model stands for in a comparison, shown by `GET /v1/models`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelRole {
    /// Trained on the user's own (query, result) pairs.
    TwoTower,
    /// A small pretrained sentence encoder (MiniLM, mpnet), kept as a baseline.
    Encoder,
    /// An embedding model derived from a large language model and trained to embed (EmbeddingGemma).
    LlmEmbedding,
    /// A language model whose hidden states are used as they are.
    RawLlm,
}

/// How token states become one vector per text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// Mean over the tokens the attention mask keeps.
    Mean,
    /// The first kept token (`[CLS]`).
    Cls,
    /// The last kept token (decoders: the only state that has seen the whole text).
    LastToken,
    /// The graph already emits one vector per text (`[batch, dimension]`), named by `output`.
    Output,
}

impl Pooling {
    /// The name the manifest uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::LastToken => "last-token",
            Pooling::Output => "output",
        }
    }
}

/// Which end of a sequence padding goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PaddingSide {
    #[default]
    Right,
    Left,
}

/// `model.toml`. Paths are relative to the manifest's folder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub kind: ModelKind,
    /// Defaults by kind: two-tower → `two-tower`, encoder → `encoder`, llm → `raw-llm` (`llm-embedding` is given
    /// explicitly).
    pub role: Option<ModelRole>,
    /// The served width. Below `network_dimension`, vectors keep their first `dimension` components
    /// (Matryoshka truncation), re-normalised when `normalize` is on.
    pub dimension: usize,
    /// The width the network emits (default: `dimension`).
    pub network_dimension: Option<usize>,
    /// The widths the model was trained to be cut to (e.g. `[768, 512, 256, 128]`): informational, and when
    /// given, `dimension` must be one of them.
    pub matryoshka_dimensions: Option<Vec<usize>>,
    /// Defaults by kind: llm → `last-token`, otherwise `mean`.
    pub pooling: Option<Pooling>,
    /// Output to read: defaults to `sentence_embedding` for `output` pooling, else `last_hidden_state` (or the
    /// graph's first output when it has no output of that name).
    pub output: Option<String>,
    #[serde(default = "default_true")]
    pub normalize: bool,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    #[serde(default)]
    pub padding_side: PaddingSide,
    /// Token used for padding; by default the tokenizer's own padding token, else `[PAD]`, `<pad>`, or id 0.
    pub pad_token: Option<String>,
    #[serde(default)]
    pub query_prefix: String,
    #[serde(default)]
    pub document_prefix: String,
    /// Instead of a prefix: a template holding `{text}` once, e.g.
    /// `This sentence: "{text}" means in one word: "` (PromptEOL, Jiang et al. 2023).
    pub query_template: Option<String>,
    pub document_template: Option<String>,
    /// The default task, naming one of `tasks` (given with `tasks`, and only then).
    pub task: Option<String>,
    /// Prompts per task, instead of the top-level prefixes and templates (e.g. EmbeddingGemma's one document
    /// prompt and its query prompts for search results and code retrieval).
    #[serde(default)]
    pub tasks: BTreeMap<String, Prompts>,
    /// The network of a single-network model, or both towers of a two-tower model with shared weights.
    pub onnx: Option<PathBuf>,
    pub query_onnx: Option<PathBuf>,
    pub document_onnx: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    pub query_tokenizer: Option<PathBuf>,
    pub document_tokenizer: Option<PathBuf>,
    /// A quantised variant (e.g. int8): the folder of the full-precision model it was made from, relative to
    /// this folder (`"../minilm"`). Serving does not need it; `duet verify` compares the two.
    pub quantized_from: Option<PathBuf>,
}

/// How texts are framed on each side: a prefix, or a template holding `{text}` once (not both on one side).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prompts {
    #[serde(default)]
    pub query_prefix: String,
    #[serde(default)]
    pub document_prefix: String,
    pub query_template: Option<String>,
    pub document_template: Option<String>,
}

impl Prompts {
    /// What is wrong with these prompts, if anything.
    fn check(&self) -> Result<(), String> {
        for (side, prefix, template) in [
            ("query", &self.query_prefix, &self.query_template),
            ("document", &self.document_prefix, &self.document_template),
        ] {
            if let Some(template) = template {
                if template.matches("{text}").count() != 1 {
                    return Err(format!("{side}_template must hold `{{text}}` exactly once"));
                }
                if !prefix.is_empty() {
                    return Err(format!("give {side}_prefix or {side}_template, not both"));
                }
            }
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        *self == Prompts::default()
    }
}

fn default_true() -> bool {
    true
}

fn default_max_tokens() -> usize {
    256
}

/// A manifest with every file path resolved and checked.
#[derive(Debug, Clone)]
pub struct ResolvedManifest {
    pub manifest: Manifest,
    pub dir: PathBuf,
    /// The task whose prompts are used (one of `manifest.tasks`): the manifest's default `task` unless
    /// [`ResolvedManifest::select_task`] chose another. `None` for a manifest without tasks.
    pub task: Option<String>,
    pub query_onnx: PathBuf,
    pub document_onnx: PathBuf,
    pub query_tokenizer: PathBuf,
    pub document_tokenizer: PathBuf,
}

impl Manifest {
    pub fn pooling(&self) -> Pooling {
        self.pooling.unwrap_or(match self.kind {
            ModelKind::Llm => Pooling::LastToken,
            ModelKind::TwoTower | ModelKind::Encoder => Pooling::Mean,
        })
    }

    pub fn role(&self) -> ModelRole {
        self.role.unwrap_or(match self.kind {
            ModelKind::TwoTower => ModelRole::TwoTower,
            ModelKind::Encoder => ModelRole::Encoder,
            ModelKind::Llm => ModelRole::RawLlm,
        })
    }

    /// The width the network emits.
    pub fn network_dimension(&self) -> usize {
        self.network_dimension.unwrap_or(self.dimension)
    }

    /// The top-level prompts (empty for a manifest with tasks).
    fn top_level_prompts(&self) -> Prompts {
        Prompts {
            query_prefix: self.query_prefix.clone(),
            document_prefix: self.document_prefix.clone(),
            query_template: self.query_template.clone(),
            document_template: self.document_template.clone(),
        }
    }

    /// Reads `dir/model.toml` and resolves its files.
    pub fn load(dir: &Path) -> Result<ResolvedManifest, EncoderError> {
        let path = dir.join("model.toml");
        let fail = |message: String| EncoderError::Manifest { path: path.display().to_string(), message, source: None };
        let failed = |message: &str, source: Cause| EncoderError::Manifest {
            path: path.display().to_string(),
            message: message.to_string(),
            source: Some(source),
        };
        let text = std::fs::read_to_string(&path).map_err(|e| failed("cannot read it", Arc::new(e)))?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| failed("not a valid manifest", Arc::new(e)))?;
        if manifest.name.is_empty() || manifest.name.len() > 64 {
            return Err(fail("name must be 1 to 64 characters".into()));
        }
        if !manifest.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(fail("name may hold only ASCII letters, digits, '-', '_' and '.'".into()));
        }
        if manifest.dimension == 0 {
            return Err(fail("dimension must be positive".into()));
        }
        let network_dimension = manifest.network_dimension();
        if manifest.dimension > network_dimension {
            return Err(fail(format!(
                "dimension {} is wider than the network's network_dimension {network_dimension}; a served width \
                 can only cut the network's vectors",
                manifest.dimension
            )));
        }
        if let Some(widths) = &manifest.matryoshka_dimensions {
            if let Some(bad) = widths.iter().find(|&&w| w == 0 || w > network_dimension) {
                return Err(fail(format!("matryoshka_dimensions holds {bad}, outside 1..={network_dimension}")));
            }
            if !widths.contains(&manifest.dimension) {
                return Err(fail(format!(
                    "dimension {} is not one of matryoshka_dimensions {widths:?}",
                    manifest.dimension
                )));
            }
        }
        let top_level = manifest.top_level_prompts();
        top_level.check().map_err(&fail)?;
        match (&manifest.task, manifest.tasks.is_empty()) {
            (None, true) => {}
            (Some(task), true) => {
                return Err(fail(format!("task = {task:?} names a default task, but there is no [tasks] table")))
            }
            (None, false) => {
                return Err(fail(format!(
                    "give the default task (`task = ...`, one of {})",
                    known_tasks(&manifest.tasks)
                )))
            }
            (Some(task), false) => {
                if !top_level.is_empty() {
                    return Err(fail(
                        "give prompts at the top level or per task in [tasks], not both (move the top-level \
                         query_/document_ prefixes and templates into each task)"
                            .into(),
                    ));
                }
                if !manifest.tasks.contains_key(task) {
                    return Err(fail(format!(
                        "the default task {task:?} is not one of its tasks: {}",
                        known_tasks(&manifest.tasks)
                    )));
                }
                for (name, prompts) in &manifest.tasks {
                    prompts.check().map_err(|message| fail(format!("[tasks.{name}]: {message}")))?;
                }
            }
        }
        if manifest.max_tokens < 2 {
            return Err(fail("max_tokens must be at least 2".into()));
        }
        let (query_onnx, document_onnx) = match manifest.kind {
            ModelKind::TwoTower => match (&manifest.query_onnx, &manifest.document_onnx, &manifest.onnx) {
                (Some(q), Some(d), None) => (q.clone(), d.clone()),
                (None, None, Some(shared)) => (shared.clone(), shared.clone()),
                _ => {
                    return Err(fail(
                        "a two-tower model names `query_onnx` and `document_onnx`, or one shared `onnx`".into(),
                    ))
                }
            },
            ModelKind::Llm | ModelKind::Encoder => {
                match (&manifest.onnx, &manifest.query_onnx, &manifest.document_onnx) {
                    (Some(one), None, None) => (one.clone(), one.clone()),
                    _ => return Err(fail("this kind of model names exactly one network, `onnx`".into())),
                }
            }
        };
        let shared_tokenizer = manifest.tokenizer.clone();
        let query_tokenizer = manifest.query_tokenizer.clone().or_else(|| shared_tokenizer.clone());
        let document_tokenizer = manifest.document_tokenizer.clone().or(shared_tokenizer);
        let (Some(query_tokenizer), Some(document_tokenizer)) = (query_tokenizer, document_tokenizer) else {
            return Err(fail("name a `tokenizer` (or `query_tokenizer` and `document_tokenizer`)".into()));
        };
        let resolved = ResolvedManifest {
            dir: dir.to_path_buf(),
            task: manifest.task.clone(),
            query_onnx: dir.join(query_onnx),
            document_onnx: dir.join(document_onnx),
            query_tokenizer: dir.join(query_tokenizer),
            document_tokenizer: dir.join(document_tokenizer),
            manifest,
        };
        for file in resolved.files() {
            if !file.is_file() {
                return Err(fail(format!("{} does not exist", file.display())));
            }
        }
        Ok(resolved)
    }
}

/// The task names, for messages: `a, b, c`.
fn known_tasks(tasks: &BTreeMap<String, Prompts>) -> String {
    tasks.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
}

impl ResolvedManifest {
    /// Uses `task`'s prompts instead of the default task's (`None`: keep the default). A model without tasks, or
    /// a task it does not have, is an error naming the known ones.
    pub fn select_task(&mut self, task: Option<&str>) -> Result<(), EncoderError> {
        let Some(task) = task else { return Ok(()) };
        let fail = |message: String| EncoderError::Manifest {
            path: self.dir.join("model.toml").display().to_string(),
            message,
            source: None,
        };
        if self.manifest.tasks.is_empty() {
            return Err(fail(format!("task {task:?} was asked for, but this model has no [tasks]")));
        }
        if !self.manifest.tasks.contains_key(task) {
            return Err(fail(format!(
                "task {task:?} was asked for, but it is not one of its tasks: {}",
                known_tasks(&self.manifest.tasks)
            )));
        }
        self.task = Some(task.to_string());
        Ok(())
    }

    /// The prompts in use: the chosen task's, or the top-level ones.
    pub fn prompts(&self) -> Prompts {
        match self.task.as_ref().and_then(|t| self.manifest.tasks.get(t)) {
            Some(prompts) => prompts.clone(),
            None => self.manifest.top_level_prompts(),
        }
    }

    /// The full-precision model folder a quantised variant was made from (`quantized_from`, resolved).
    pub fn quantized_from(&self) -> Option<PathBuf> {
        self.manifest.quantized_from.as_ref().map(|p| self.dir.join(p))
    }

    /// Every file the model is made of, without repeats, in a stable order.
    pub fn files(&self) -> Vec<&Path> {
        let files: [&Path; 4] =
            [&self.query_onnx, &self.document_onnx, &self.query_tokenizer, &self.document_tokenizer];
        let mut unique = Vec::new();
        for f in files {
            if !unique.contains(&f) {
                unique.push(f);
            }
        }
        unique
    }

    /// A short content hash of the manifest and every file: stored embeddings are valid for one version only.
    pub fn version(&self) -> Result<String, EncoderError> {
        let mut hasher = Sha256::new();
        let manifest_path = self.dir.join("model.toml");
        let mut paths = vec![manifest_path.as_path()];
        paths.extend(self.files());
        for path in paths {
            let unreadable = |e: std::io::Error| EncoderError::Load {
                model: self.manifest.name.clone(),
                what: path.display().to_string(),
                message: "cannot read it to hash the model version".into(),
                source: Some(Arc::new(e)),
            };
            let mut file = std::fs::File::open(path).map_err(unreadable)?;
            std::io::copy(&mut file, &mut hasher).map_err(unreadable)?;
        }
        // The chosen task's prompts frame every text, so another task is another version.
        if let Some(task) = &self.task {
            hasher.update(b"\0task=");
            hasher.update(task.as_bytes());
        }
        Ok(hex::encode(&hasher.finalize()[..6]))
    }
}

#[cfg(test)]
mod tests;
