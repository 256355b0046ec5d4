//! What the clients did and what they were told: every operation with its node, its times and
//! its outcome. The checker reads nothing else (and the final reads of the settled cluster).

use serde::{Deserialize, Serialize};

/// The collection every client writes its documents to.
pub const COLLECTION: &str = "chaos";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OpKind {
    /// Ingest (or replace, when the id was written before) documents `(id, text)`.
    Ingest {
        docs: Vec<(String, String)>,
    },
    /// Delete one document.
    Delete {
        doc: String,
    },
    /// Search the documents `docs` (a `document_id` filter) with a consistency.
    Search {
        consistency: String,
        min_index: Option<u64>,
        docs: Vec<String>,
    },
    /// The job of an acknowledged ingest read as done at `index` on the node asked: every
    /// document of it that was not superseded was searchable as of `index`.
    JobDone {
        job: String,
        docs: Vec<String>,
    },
    CreateCollection {
        name: String,
    },
    DropCollection {
        name: String,
    },
}

impl OpKind {
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            OpKind::Ingest { .. }
                | OpKind::Delete { .. }
                | OpKind::CreateCollection { .. }
                | OpKind::DropCollection { .. }
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            OpKind::Ingest { .. } => "ingest",
            OpKind::Delete { .. } => "delete",
            OpKind::Search {
                consistency,
                min_index,
                ..
            } => match (consistency.as_str(), min_index) {
                ("strong", _) => "search strong",
                (_, Some(_)) => "search min_index",
                _ => "search local",
            },
            OpKind::JobDone { .. } => "job done",
            OpKind::CreateCollection { .. } => "create collection",
            OpKind::DropCollection { .. } => "drop collection",
        }
    }
}

/// How an operation ended, as far as its client can tell.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Done: a write at log index `index`; a read that reflected `index`.
    Ok { index: u64 },
    /// Refused (a 4xx, or the request never reached a node): it did not happen.
    Fail { status: u16, message: String },
    /// No answer, or a server error: it may or may not have happened.
    Unknown { message: String },
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok { .. } => "ok",
            Outcome::Fail { .. } => "fail",
            Outcome::Unknown { .. } => "unknown",
        }
    }

    pub fn index(&self) -> Option<u64> {
        match self {
            Outcome::Ok { index } => Some(*index),
            _ => None,
        }
    }
}

/// One search hit, as much as the checker needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hit {
    pub doc: String,
    pub chunk: u32,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Op {
    pub client: usize,
    /// The node asked (0-based).
    pub node: usize,
    /// Milliseconds since the campaign started.
    pub start_ms: f64,
    pub end_ms: f64,
    #[serde(flatten)]
    pub kind: OpKind,
    #[serde(flatten)]
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hits: Vec<Hit>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
}
