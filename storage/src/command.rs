//! The mutations of shoal. Each is applied by [`crate::Store::apply`]; the cluster layer will carry
//! them through the Raft log unchanged, so they hold everything apply needs (no clocks, no randomness).

use serde::{Deserialize, Serialize};

use crate::CollectionSpec;

/// A document as accepted from a client: metadata is canonical JSON of an object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentInput {
    pub id: String,
    pub text: String,
    pub metadata_json: String,
}

/// One chunk of a document, with its embedding (made before the command, never inside apply).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkInput {
    pub text: String,
    pub start: u32,
    pub end: u32,
    pub vector: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    CreateCollection {
        name: String,
        spec: CollectionSpec,
        at_ms: u64,
    },
    /// Drop a collection with its documents and chunks; its unfinished jobs end as cancelled.
    DropCollection { name: String, at_ms: u64 },
    /// Documents accepted for ingest under one job. Existing ids are replaced once the new version
    /// is indexed; until then the old version stays searchable.
    AcceptDocuments {
        collection: String,
        job_id: String,
        documents: Vec<DocumentInput>,
        at_ms: u64,
    },
    /// The chunks (with vectors) of one document version. Ignored if that version is no longer current.
    StoreChunks {
        collection: String,
        doc_id: String,
        version: u64,
        chunks: Vec<ChunkInput>,
        at_ms: u64,
    },
    /// A document version that could not be indexed.
    FailDocument {
        collection: String,
        doc_id: String,
        version: u64,
        reason: String,
        at_ms: u64,
    },
    DeleteDocument {
        collection: String,
        doc_id: String,
        at_ms: u64,
    },
    /// Forget finished jobs last updated before `before_ms` (job retention).
    ExpireJobs { before_ms: u64 },
}

impl Command {
    /// Short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::CreateCollection { .. } => "create_collection",
            Command::DropCollection { .. } => "drop_collection",
            Command::AcceptDocuments { .. } => "accept_documents",
            Command::StoreChunks { .. } => "store_chunks",
            Command::FailDocument { .. } => "fail_document",
            Command::DeleteDocument { .. } => "delete_document",
            Command::ExpireJobs { .. } => "expire_jobs",
        }
    }

    /// Encode for a log (bincode, standard configuration).
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::codec::encode(self)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Command, crate::StoreError> {
        crate::codec::decode(b"command", bytes)
    }
}
