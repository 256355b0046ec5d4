//! The records kept in sled. All are serialised with [`crate::codec`].

use serde::{Deserialize, Serialize};

use crate::PointId;

/// HNSW construction parameters of a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HnswParams {
    /// Links per node (hnsw_rs `max_nb_connection`).
    pub m: u32,
    /// Candidate list width while building.
    pub ef_construction: u32,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: 16,
            ef_construction: 100,
        }
    }
}

/// What a collection's graph walk compares the query with. (Named in lower case in
/// configuration; records number the variants in order, so new ones go last.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// The vectors themselves.
    #[default]
    None,
    /// An int8 copy of each vector, the candidates a walk ends with re-scored on the vectors.
    Int8,
}

/// What a collection is: its vector dimension and index parameters. Similarity is always cosine
/// on L2-normalised vectors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionSpec {
    pub dimension: u32,
    pub hnsw: HnswParams,
    pub quantization: Quantization,
    /// The index keeps the vectors in a file it maps (the page cache holds what searches read)
    /// instead of on its heap.
    pub vectors_on_disk: bool,
}

/// A [`CollectionSpec`] as store formats 5 and 6 (and their logs) kept it: no quantization, so
/// floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionSpecV6 {
    pub dimension: u32,
    pub hnsw: HnswParams,
}

impl From<CollectionSpecV6> for CollectionSpec {
    fn from(old: CollectionSpecV6) -> Self {
        CollectionSpec {
            dimension: old.dimension,
            hnsw: old.hnsw,
            quantization: Quantization::None,
            vectors_on_disk: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionRecord {
    pub name: String,
    /// Unique for the life of the store; prefixes the collection's documents and points.
    pub uid: u64,
    pub spec: CollectionSpec,
    pub created_at_ms: u64,
    /// Next point id to hand out.
    pub next_point_id: PointId,
    /// Documents currently stored (any status).
    pub documents: u64,
    /// Chunks currently searchable.
    pub chunks: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DocumentStatus {
    /// Accepted, waiting to be chunked, embedded and indexed.
    Pending,
    /// The current version is searchable.
    Indexed,
    /// The current version could not be indexed.
    Failed { reason: String },
}

/// The version of a document whose chunks are in the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveVersion {
    pub version: u64,
    /// Metadata as canonical JSON, as it was when these chunks were stored.
    pub metadata_json: String,
    pub points: Vec<PointId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentRecord {
    pub id: String,
    /// The log index of the command that accepted this version (unique in the store); chunks
    /// must name the version they belong to.
    pub version: u64,
    pub job_id: String,
    pub accepted_at_ms: u64,
    pub text: String,
    /// Metadata of the latest accepted version, as canonical JSON.
    pub metadata_json: String,
    /// Where its sections begin (an uploaded file with headings).
    pub sections: Vec<crate::Section>,
    pub status: DocumentStatus,
    /// What search serves for this document (the previous version stays live while a replacement is pending).
    pub live: Option<LiveVersion>,
    /// The node embedding this (pending) version, and until when its claim holds.
    pub claim: Option<Claim>,
}

/// A node's claim on a pending document version: it alone may store the version's chunks (or
/// fail it) until another node takes the claim over after `until_ms` (judged against the time
/// inside the command that takes it, so every replica judges the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub node: u64,
    pub until_ms: u64,
}

/// Documents of an ingest request too large for one log entry, staged under their job until the
/// command that accepts them all at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagedPart {
    pub collection: String,
    pub at_ms: u64,
    pub documents: Vec<crate::DocumentInput>,
}

/// One searchable chunk of a document: what a search hit shows. Its vector is stored apart,
/// under a key of its own (see `keys.rs`), so that the records searches read stay small and fit
/// the page cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkRecord {
    pub doc_id: String,
    pub chunk_index: u32,
    pub text: String,
    /// Byte range of the chunk in the document text.
    pub start: u32,
    pub end: u32,
    /// The first and last page the chunk is on, for a document with pages (a PDF).
    pub pages: Option<(u32, u32)>,
    /// The heading of the section the chunk begins in.
    pub section: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Running,
    Completed,
    /// Finished, but at least one document failed.
    CompletedWithErrors,
    /// Stopped before it finished: its collection was dropped.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub doc_id: String,
    pub reason: String,
}

impl JobError {
    /// About what the failure takes of a log entry.
    pub fn payload_bytes(&self) -> usize {
        self.doc_id.len() + self.reason.len() + 16
    }
}

/// An ingest job: the documents of one request and how far they have got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub collection: String,
    /// The uid of the collection (a dropped and re-created collection of the same name has another).
    pub collection_uid: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub total: u64,
    pub indexed: u64,
    pub failed: u64,
    /// Documents replaced by a later request or deleted before they were indexed.
    pub superseded: u64,
    /// The first errors (at most [`JobRecord::MAX_ERRORS`]).
    pub errors: Vec<JobError>,
    /// The collection was dropped before the job finished.
    pub cancelled: bool,
    /// Log index of the last command that changed this job: once the index has mirrored it, every
    /// chunk the job stored is searchable.
    pub last_index: u64,
}

impl JobRecord {
    pub const MAX_ERRORS: usize = 100;

    /// Finished one way or another (completed, with errors, or cancelled).
    pub fn is_finished(&self) -> bool {
        self.state() != JobState::Running
    }

    pub fn done(&self) -> u64 {
        self.indexed + self.failed + self.superseded
    }

    pub fn state(&self) -> JobState {
        if self.cancelled {
            JobState::Cancelled
        } else if self.done() < self.total {
            JobState::Running
        } else if self.failed > 0 {
            JobState::CompletedWithErrors
        } else {
            JobState::Completed
        }
    }
}
