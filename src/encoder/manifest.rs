//! The model manifest, `models/<name>/model.toml`: what a model folder holds and how to run it.

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
    /// An embedding model derived from a large language model and trained to embed (EmbeddingGemma).
    LlmEmbedding,
    /// A small pretrained sentence encoder (MiniLM, mpnet), kept as a baseline.
    Encoder,
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
    /// Defaults by kind: two-tower → `two-tower`, encoder → `encoder`, llm → `raw-llm`.
    pub role: Option<ModelRole>,
    pub dimension: usize,
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
        for (side, prefix, template) in [
            ("query", &manifest.query_prefix, &manifest.query_template),
            ("document", &manifest.document_prefix, &manifest.document_template),
        ] {
            if let Some(template) = template {
                if template.matches("{text}").count() != 1 {
                    return Err(fail(format!("{side}_template must hold `{{text}}` exactly once")));
                }
                if !prefix.is_empty() {
                    return Err(fail(format!("give {side}_prefix or {side}_template, not both")));
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

impl ResolvedManifest {
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
        Ok(hex::encode(&hasher.finalize()[..6]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, manifest: &str, files: &[&str]) {
        std::fs::write(dir.join("model.toml"), manifest).unwrap();
        for f in files {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
    }

    #[test]
    fn defaults_follow_the_kind() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "name='m'\nkind='llm'\ndimension=8\nonnx='m.onnx'\ntokenizer='t.json'\n",
            &["m.onnx", "t.json"],
        );
        let m = Manifest::load(dir.path()).unwrap();
        assert_eq!(m.manifest.pooling(), Pooling::LastToken);
        assert_eq!(m.manifest.role(), ModelRole::RawLlm);
        assert_eq!(m.query_onnx, m.document_onnx);
        assert_eq!(m.files().len(), 2);
    }

    #[test]
    fn two_tower_needs_both_towers_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "name='m'\nkind='two-tower'\ndimension=8\nquery_onnx='q.onnx'\ntokenizer='t.json'\n",
            &["q.onnx", "t.json"],
        );
        let err = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("query_onnx"), "{err}");
        write(
            dir.path(),
            "name='m'\nkind='encoder'\ndimension=8\nonnx='q.onnx'\ntokenizer='t.json'\npoolng='cls'\n",
            &[],
        );
        let err = crate::util::error_chain(&Manifest::load(dir.path()).unwrap_err());
        assert!(err.contains("poolng"), "{err}");
    }

    #[test]
    fn templates_hold_the_text_once_and_exclude_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        let base = "name='m'\nkind='llm'\ndimension=8\nonnx='m.onnx'\ntokenizer='t.json'\n";
        write(dir.path(), &format!("{base}query_template='no placeholder'\n"), &["m.onnx", "t.json"]);
        assert!(Manifest::load(dir.path()).unwrap_err().to_string().contains("exactly once"));
        write(dir.path(), &format!("{base}query_template='Q: {{text}}'\nquery_prefix='x'\n"), &[]);
        assert!(Manifest::load(dir.path()).unwrap_err().to_string().contains("not both"));
        write(
            dir.path(),
            &format!("{base}document_template='This sentence: \"{{text}}\" means in one word: \"'\n"),
            &[],
        );
        assert!(Manifest::load(dir.path()).is_ok());
    }

    #[test]
    fn missing_files_and_version_changes_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "name='m'\nkind='encoder'\ndimension=8\nonnx='m.onnx'\ntokenizer='t.json'\n", &["m.onnx"]);
        assert!(Manifest::load(dir.path()).unwrap_err().to_string().contains("t.json"));
        std::fs::write(dir.path().join("t.json"), b"{}").unwrap();
        let v1 = Manifest::load(dir.path()).unwrap().version().unwrap();
        std::fs::write(dir.path().join("m.onnx"), b"other weights").unwrap();
        let v2 = Manifest::load(dir.path()).unwrap().version().unwrap();
        assert_ne!(v1, v2);
        assert_eq!(v1.len(), 12);
    }
}
