//! The rows the store keeps, as plain data owned by the store layer: documents and their embeddings, experiment
//! definitions, exposures (what a search under an experiment showed), shadow comparisons, and the outcome sums a
//! report reads. It uses nothing of Duet's; `experiment` builds on these types and adds their behaviour (the life
//! cycle, assignment, reports).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A document as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Document {
    pub id: String,
    pub text: String,
    pub metadata: serde_json::Value,
    pub content_hash: String,
    pub created_at: String,
    pub updated_at: String,
}

/// A document to write.
#[derive(Debug, Clone)]
pub struct NewDocument {
    pub id: String,
    pub text: String,
    pub metadata: serde_json::Value,
}

/// One embedding to write, for the document of the same id in the same call.
#[derive(Debug, Clone)]
pub struct NewEmbedding {
    pub model: String,
    pub model_version: String,
    pub document_id: String,
    pub content_hash: String,
    pub vector: Vec<f32>,
}

/// What identifies a stored document's content: used to skip unchanged documents on re-import.
#[derive(Debug, Clone, PartialEq)]
pub struct Fingerprint {
    pub content_hash: String,
    pub metadata: serde_json::Value,
}

/// How an experiment uses its arms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each unit sees one arm, chosen by a sticky weighted hash.
    Ab,
    /// Every search merges the two arms' rankings (team-draft); clicks credit the arm that contributed the result.
    Interleave,
    /// The first arm serves; the second runs off the request path and its overlap with the served list is logged.
    Shadow,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Ab => "ab",
            Mode::Interleave => "interleave",
            Mode::Shadow => "shadow",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ab" => Some(Mode::Ab),
            "interleave" => Some(Mode::Interleave),
            "shadow" => Some(Mode::Shadow),
            _ => None,
        }
    }
}

/// Where an experiment is in its life cycle. Only a `running` experiment assigns units and logs exposures;
/// searches under any other status are served by the control arm (the first) and not logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Draft,
    Running,
    Paused,
    Stopped,
    Archived,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
            Status::Archived => "archived",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "draft" => Some(Status::Draft),
            "running" => Some(Status::Running),
            "paused" => Some(Status::Paused),
            "stopped" => Some(Status::Stopped),
            "archived" => Some(Status::Archived),
            _ => None,
        }
    }
}

/// One arm: a served model under a name, with a weight (A/B share; unused by the other modes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    pub name: String,
    pub model: String,
    pub weight: f64,
}

/// An experiment as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Experiment {
    pub id: String,
    pub name: String,
    pub mode: Mode,
    pub status: Status,
    pub arms: Vec<Arm>,
    pub salt: String,
    /// Whether searches that name no experiment (and no model) go through this one.
    pub default: bool,
    pub created_at: String,
    pub updated_at: String,
    pub started_at: Option<String>,
    pub stopped_at: Option<String>,
    /// The arm whose model was made the default model, once (`None` until then).
    pub promotion: Option<Promotion>,
}

/// An experiment's winner made the default model: which arm and model, the model's version serving then, the
/// evidence (the experiment's report at that moment, as JSON), and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Promotion {
    pub arm: String,
    pub model: String,
    pub version: String,
    pub promoted_at: String,
    pub report: serde_json::Value,
}

/// Model version (content hash) by arm name.
pub type Versions = BTreeMap<String, String>;

/// One shown result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExposureItem {
    /// 1-based position in the response.
    pub position: u32,
    pub doc_id: String,
    /// The arm that contributed it (in A/B and shadow mode, the serving arm).
    pub team: String,
}

/// One search under an experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct ExposureRecord {
    pub request_id: String,
    pub experiment_id: String,
    /// For metric labels.
    pub experiment_name: String,
    pub unit_id: String,
    /// The serving arm; `None` when interleaved.
    pub arm: Option<String>,
    pub query: String,
    pub latency_ms: f64,
    pub items: Vec<ExposureItem>,
    /// The model version of every arm whose ranking was shown: the serving arm, or both teams when interleaved.
    pub versions: Versions,
}

/// What a shadow arm returned for a served request.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowRecord {
    pub request_id: String,
    pub experiment_id: String,
    pub experiment_name: String,
    pub arm: String,
    /// The shadow arm's model version.
    pub version: String,
    pub doc_ids: Vec<String>,
    pub jaccard: f64,
    pub rbo: f64,
    pub latency_ms: f64,
}

/// What a request under an experiment showed, as logged.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    pub experiment_id: String,
    pub arm: Option<String>,
    pub items: Vec<ExposureItem>,
}

/// Per-impression outcomes summed over one arm (`arm` is `None` for interleaved impressions) and the model
/// versions that served them (empty for exposures logged before versions were recorded).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArmOutcome {
    pub arm: Option<String>,
    pub versions: Versions,
    pub impressions: u64,
    /// Impressions with at least one click.
    pub clicked: u64,
    /// Impressions with at least one conversion.
    pub converted: u64,
    /// Sum and sum of squares of 1 / (position of the first click), 0 for impressions without a click.
    pub rr_sum: f64,
    pub rr_squares: f64,
}

/// Interleaved impressions by outcome: team 0 or 1 got more credited clicks, both the same, or no click; for the
/// teams' model versions `versions` (empty for exposures logged before versions were recorded).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InterleaveCounts {
    pub versions: Versions,
    pub impressions: u64,
    pub wins: [u64; 2],
    pub ties: u64,
    pub no_click: u64,
    /// Credited clicks per team.
    pub clicks: [u64; 2],
}

impl InterleaveCounts {
    /// The counts over all versions.
    pub fn sum(all: &[Self]) -> Self {
        let mut total = Self::default();
        for c in all {
            total.impressions += c.impressions;
            total.ties += c.ties;
            total.no_click += c.no_click;
            for k in 0..2 {
                total.wins[k] += c.wins[k];
                total.clicks[k] += c.clicks[k];
            }
        }
        total
    }
}

/// One impression's served latency, by arm (`None` when interleaved) and versions, for the report.
#[derive(Debug, Clone, PartialEq)]
pub struct ExposureLatency {
    pub arm: Option<String>,
    pub versions: Versions,
    pub latency_ms: f64,
}

/// One shadow comparison, for the report.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowRow {
    /// The shadow arm's model version (`None` when logged before versions were recorded).
    pub version: Option<String>,
    pub jaccard: f64,
    pub rbo: f64,
    pub latency_ms: f64,
}

/// One interleaved impression, for the report's timeline: when it was logged (RFC 3339) and the clicks credited
/// to each team.
#[derive(Debug, Clone, PartialEq)]
pub struct InterleaveImpression {
    pub at: String,
    pub clicks: [u64; 2],
}

/// One graded feedback event of an experiment: the query of the search it is about, the document, the grade.
#[derive(Debug, Clone, PartialEq)]
pub struct GradedFeedback {
    pub query: String,
    pub doc_id: String,
    pub grade: f64,
}
