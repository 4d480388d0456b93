//! Graph snapshots: one file per (model, version) holding an index's slots and its graph, so that a restart loads
//! the graph instead of building it again.
//!
//! Layout: the magic `DUETIDX\0`, a little-endian u32 format version, a u32 header length, the header (JSON:
//! model, version, dimension, backend, precision, the store's change-feed sequence and live document count it
//! matches, the body's length and sha256), then the body (per slot: a u8 alive flag, a u32 id length and the id;
//! then the graph's own bytes). A file is written to a temporary name in the same folder and renamed, so a crash
//! leaves the old snapshot or the new one, never a torn one. Reading checks everything before use; the caller
//! rebuilds from the store on any error. Uses only the index.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Backend, Exported, Precision};

const MAGIC: &[u8; 8] = b"DUETIDX\0";
pub const FORMAT: u32 = 1;

/// What a snapshot says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub model: String,
    pub version: String,
    pub dimension: usize,
    pub backend: Backend,
    pub precision: Precision,
    /// The store's last change-feed sequence the index reflected when written.
    pub sequence: i64,
    /// Live documents in the index.
    pub documents: usize,
    pub body_len: u64,
    /// Hex sha256 of the body.
    pub body_sha256: String,
}

/// What the snapshot must match to be used.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub model: String,
    pub version: String,
    pub dimension: usize,
    pub backend: Backend,
    pub precision: Precision,
    pub sequence: i64,
    pub documents: usize,
}

impl From<Expected> for Header {
    /// The header of a snapshot of what is expected; the body's length and checksum are filled in when written.
    fn from(e: Expected) -> Self {
        Header {
            model: e.model,
            version: e.version,
            dimension: e.dimension,
            backend: e.backend,
            precision: e.precision,
            sequence: e.sequence,
            documents: e.documents,
            body_len: 0,
            body_sha256: String::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("no snapshot")]
    Missing,
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
    #[error("stale snapshot: {0}")]
    Stale(String),
    #[error("snapshot i/o on {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl SnapshotError {
    /// The `outcome` label of `duet_index_snapshots_total` when it is not used.
    pub fn outcome(&self) -> &'static str {
        match self {
            SnapshotError::Missing | SnapshotError::Io { .. } => "rebuilt",
            SnapshotError::Corrupt(_) => "corrupt",
            SnapshotError::Stale(_) => "stale",
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io { path: path.display().to_string(), source }
}

/// The snapshot file of a (model, version) in `dir`.
pub fn path(dir: &Path, model: &str, version: &str) -> PathBuf {
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect()
    };
    let tag = hex::encode(&Sha256::digest(format!("{model}\0{version}").as_bytes())[..4]);
    dir.join(format!("{}@{}-{tag}.duetidx", clean(model), clean(version)))
}

/// Writes a snapshot atomically (temporary file, fsync, rename).
pub fn write(path: &Path, mut header: Header, exported: &Exported) -> Result<(), SnapshotError> {
    let mut body = Vec::with_capacity(exported.graph.len() + exported.ids.len() * 16 + 8);
    body.extend_from_slice(&(exported.ids.len() as u64).to_le_bytes());
    for (id, alive) in exported.ids.iter().zip(&exported.alive) {
        body.push(u8::from(*alive));
        body.extend_from_slice(&(id.len() as u32).to_le_bytes());
        body.extend_from_slice(id.as_bytes());
    }
    body.extend_from_slice(&exported.graph);
    header.body_len = body.len() as u64;
    header.body_sha256 = hex::encode(Sha256::digest(&body));
    let head = serde_json::to_vec(&header).expect("a header serialises");

    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(MAGIC)?;
        file.write_all(&FORMAT.to_le_bytes())?;
        file.write_all(&(head.len() as u32).to_le_bytes())?;
        file.write_all(&head)?;
        file.write_all(&body)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        // The rename itself made durable.
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written.map_err(io_error(path))
}

/// Reads and checks a snapshot against what it must match.
pub fn read(path: &Path, expected: &Expected) -> Result<(Header, Exported), SnapshotError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(SnapshotError::Missing),
        Err(err) => return Err(io_error(path)(err)),
    };
    let corrupt = |what: &str| SnapshotError::Corrupt(what.to_string());
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(corrupt("not a Duet index snapshot"));
    }
    let format = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if format != FORMAT {
        return Err(SnapshotError::Corrupt(format!("format {format}, this server reads {FORMAT}")));
    }
    let head_len = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
    let head = bytes.get(16..16 + head_len).ok_or_else(|| corrupt("truncated header"))?;
    let header: Header =
        serde_json::from_slice(head).map_err(|e| SnapshotError::Corrupt(format!("unreadable header: {e}")))?;
    let body = &bytes[16 + head_len..];
    if body.len() as u64 != header.body_len {
        return Err(SnapshotError::Corrupt(format!(
            "body of {} bytes, the header says {}",
            body.len(),
            header.body_len
        )));
    }
    if hex::encode(Sha256::digest(body)) != header.body_sha256 {
        return Err(corrupt("checksum mismatch"));
    }
    check(&header, expected)?;
    let exported = parse_body(body).ok_or_else(|| corrupt("malformed body"))?;
    if exported.alive.iter().filter(|&&a| a).count() != header.documents {
        return Err(corrupt("live slots differ from the header's count"));
    }
    Ok((header, exported))
}

fn check(header: &Header, expected: &Expected) -> Result<(), SnapshotError> {
    let differs =
        |what: &str, got: String, want: String| Err(SnapshotError::Stale(format!("{what} is {got}, expected {want}")));
    if header.model != expected.model || header.version != expected.version {
        return differs(
            "model",
            format!("{}@{}", header.model, header.version),
            format!("{}@{}", expected.model, expected.version),
        );
    }
    if header.dimension != expected.dimension {
        return differs("dimension", header.dimension.to_string(), expected.dimension.to_string());
    }
    if header.backend != expected.backend || header.precision != expected.precision {
        let show = |b: Backend, p: Precision| format!("{}/{}", b.as_str(), p.as_str());
        return differs("graph", show(header.backend, header.precision), show(expected.backend, expected.precision));
    }
    if header.sequence != expected.sequence {
        return differs("change-feed sequence", header.sequence.to_string(), expected.sequence.to_string());
    }
    if header.documents != expected.documents {
        return differs("document count", header.documents.to_string(), expected.documents.to_string());
    }
    Ok(())
}

fn parse_body(body: &[u8]) -> Option<Exported> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let part = body.get(at..at.checked_add(n)?)?;
        at += n;
        Some(part)
    };
    let slots = u64::from_le_bytes(take(8)?.try_into().ok()?) as usize;
    let mut ids = Vec::with_capacity(slots.min(body.len()));
    let mut alive = Vec::with_capacity(slots.min(body.len()));
    for _ in 0..slots {
        alive.push(take(1)?[0] == 1);
        let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        ids.push(Arc::<str>::from(std::str::from_utf8(take(len)?).ok()?));
    }
    let graph = body[at..].to_vec();
    Some(Exported { ids, alive, graph })
}
