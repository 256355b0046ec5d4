//! The mutations of shoal. Each is applied by [`crate::Store::apply`]; the cluster layer carries
//! them through the Raft log unchanged, so they hold everything apply needs (no clocks, no
//! randomness): timestamps, job ids and the proposing node travel inside the command.

use serde::{Deserialize, Serialize};

use crate::{ApiKeyRecord, CollectionSpec, CollectionSpecV6, Quantization, UserChange, UserRecord};

/// A document as accepted from a client: metadata is canonical JSON of an object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentInput {
    pub id: String,
    pub text: String,
    pub metadata_json: String,
    /// Where the document's sections begin, for an uploaded file with headings (empty else).
    pub sections: Vec<Section>,
}

impl DocumentInput {
    /// About what the document takes of a log entry.
    pub fn payload_bytes(&self) -> usize {
        let sections: usize = self.sections.iter().map(|s| s.heading.len() + 8).sum();
        self.id.len() + self.text.len() + self.metadata_json.len() + sections + 16
    }
}

/// A section of a document: the byte offset in its text where it begins, and its heading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    pub start: u32,
    pub heading: String,
}

impl Section {
    /// The heading of the section that `at` (a byte offset) is in, if any.
    pub fn heading_at(sections: &[Section], at: u32) -> Option<&str> {
        let i = sections.partition_point(|s| s.start <= at);
        i.checked_sub(1).map(|i| sections[i].heading.as_str())
    }
}

/// One chunk of a document, with its embedding (made before the command, never inside apply).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkInput {
    pub text: String,
    pub start: u32,
    pub end: u32,
    /// The first and last page the chunk is on, for a document with pages (a PDF).
    pub pages: Option<(u32, u32)>,
    /// The heading of the section the chunk begins in.
    pub section: Option<String>,
    pub vector: Vec<f32>,
}

/// One version of one document.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DocumentVersion {
    pub doc_id: String,
    pub version: u64,
}

/// The chunks (with vectors) of one document version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentChunks {
    pub doc_id: String,
    pub version: u64,
    pub chunks: Vec<ChunkInput>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// [`Command::CreateCollection`] as logs written before store format 7 hold it: a collection
    /// without quantization. It is applied as that; new commands are never made so.
    CreateCollectionV6 {
        name: String,
        spec: CollectionSpecV6,
        at_ms: u64,
    },
    /// Drop a collection with its documents and chunks; its unfinished jobs end as cancelled.
    DropCollection {
        name: String,
        at_ms: u64,
    },
    /// Part `part` of the documents of a request too large for one log entry: kept aside under
    /// the job until [`Command::AcceptDocuments`] accepts them all at once (or expiry removes them).
    StageDocuments {
        collection: String,
        job_id: String,
        part: u32,
        documents: Vec<DocumentInput>,
        at_ms: u64,
    },
    /// Documents accepted for ingest under one job: the `staged_parts` staged parts of the job
    /// first, then `documents`, all in one step. Existing ids are replaced once the new version
    /// is indexed; until then the old version stays searchable.
    AcceptDocuments {
        collection: String,
        job_id: String,
        documents: Vec<DocumentInput>,
        staged_parts: u32,
        at_ms: u64,
    },
    /// Node `node` claims pending document versions for embedding until `until_ms`. A version
    /// already claimed by another node is granted only once that claim has expired at `at_ms`.
    ClaimDocuments {
        collection: String,
        node: u64,
        documents: Vec<DocumentVersion>,
        until_ms: u64,
        at_ms: u64,
    },
    /// The chunks (with vectors) of document versions that node `node` claimed. A version no
    /// longer current is ignored; one whose claim another node holds now is refused (lost claim).
    StoreChunks {
        collection: String,
        node: u64,
        documents: Vec<DocumentChunks>,
        at_ms: u64,
    },
    /// A document version that node `node` (its claimant) could not index.
    FailDocument {
        collection: String,
        node: u64,
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
    /// Forget finished jobs last updated before `before_ms` (job retention), and staged parts
    /// older than `staged_before_ms` (requests that never finished).
    ExpireJobs {
        before_ms: u64,
        staged_before_ms: u64,
    },
    /// The first start of a cluster with auth on: the secret its own tokens are signed with, and
    /// (when no user exists) the first admin. Only the first one applies; later ones are no-ops.
    BootstrapAccess {
        signing_secret: Vec<u8>,
        admin: Option<UserRecord>,
    },
    /// A new user (its password already hashed); refused when the name is taken.
    CreateUser {
        user: UserRecord,
    },
    /// Change some of a user's fields (a new password already hashed).
    UpdateUser {
        name: String,
        change: UserChange,
        at_ms: u64,
    },
    DeleteUser {
        name: String,
        at_ms: u64,
    },
    /// A new API key (its secret already hashed).
    PutApiKey {
        key: ApiKeyRecord,
    },
    RevokeApiKey {
        id: String,
    },
    // New variants go last: commands are stored in logs and snapshots, and bincode numbers
    // variants in order.
    /// [`Command::AcceptDocuments`] for an upload: `failed` are the files that could not be read
    /// (their text could not be extracted); they count in the job as failed documents, with
    /// their reasons, and nothing else of the store changes for them.
    AcceptUpload {
        collection: String,
        job_id: String,
        documents: Vec<DocumentInput>,
        staged_parts: u32,
        failed: Vec<crate::JobError>,
        at_ms: u64,
    },
    /// Accept a failed document's stored text, metadata and sections again, as a new version in
    /// the new job `job_id`, if the document is still the failed `version` (a newer version, or
    /// a retry made meanwhile, is left alone: the command is refused).
    RetryDocument {
        collection: String,
        doc_id: String,
        version: u64,
        job_id: String,
        at_ms: u64,
    },
    CreateCollection {
        name: String,
        spec: CollectionSpec,
        at_ms: u64,
    },
    /// Change how a collection's index keeps and walks its vectors (what is `None` stays). Its
    /// points stay as they are; each replica's shard loads again with the new spec.
    UpdateCollection {
        name: String,
        quantization: Option<Quantization>,
        vectors_on_disk: Option<bool>,
    },
}

impl Command {
    /// Short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::CreateCollection { .. } | Command::CreateCollectionV6 { .. } => {
                "create_collection"
            }
            Command::UpdateCollection { .. } => "update_collection",
            Command::DropCollection { .. } => "drop_collection",
            Command::StageDocuments { .. } => "stage_documents",
            Command::AcceptDocuments { .. } => "accept_documents",
            Command::AcceptUpload { .. } => "accept_upload",
            Command::RetryDocument { .. } => "retry_document",
            Command::ClaimDocuments { .. } => "claim_documents",
            Command::StoreChunks { .. } => "store_chunks",
            Command::FailDocument { .. } => "fail_document",
            Command::DeleteDocument { .. } => "delete_document",
            Command::ExpireJobs { .. } => "expire_jobs",
            Command::BootstrapAccess { .. } => "bootstrap_access",
            Command::CreateUser { .. } => "create_user",
            Command::UpdateUser { .. } => "update_user",
            Command::DeleteUser { .. } => "delete_user",
            Command::PutApiKey { .. } => "put_api_key",
            Command::RevokeApiKey { .. } => "revoke_api_key",
        }
    }

    /// Encode for a log (bincode, standard configuration).
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::codec::encode(self)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Command, crate::StoreError> {
        crate::codec::decode(b"command", bytes)
    }

    /// Let the leader's clock decide a claim's time (one clock judges every claim, whatever the
    /// clocks of the nodes that propose them): the claim keeps its length, from `now_ms`. Other
    /// commands are left as they are.
    pub fn stamp_time(&mut self, now_ms: u64) {
        if let Command::ClaimDocuments {
            until_ms, at_ms, ..
        } = self
        {
            *until_ms = now_ms + until_ms.saturating_sub(*at_ms);
            *at_ms = now_ms;
        }
    }

    /// Bytes of text and vectors the command carries (about its size in the log).
    pub fn payload_bytes(&self) -> usize {
        let docs = |d: &[DocumentInput]| d.iter().map(DocumentInput::payload_bytes).sum::<usize>();
        match self {
            Command::StageDocuments { documents, .. }
            | Command::AcceptDocuments { documents, .. } => docs(documents),
            Command::AcceptUpload {
                documents, failed, ..
            } => {
                docs(documents)
                    + failed
                        .iter()
                        .map(crate::JobError::payload_bytes)
                        .sum::<usize>()
            }
            Command::StoreChunks { documents, .. } => documents
                .iter()
                .flat_map(|d| &d.chunks)
                .map(|c| c.text.len() + c.vector.len() * 4 + 16)
                .sum(),
            Command::ClaimDocuments { documents, .. } => {
                documents.iter().map(|d| d.doc_id.len() + 16).sum()
            }
            Command::FailDocument { reason, .. } => reason.len() + 64,
            _ => 64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commands are kept in logs and snapshots: a variant's number never changes (new ones go
    /// at the end). This fails when a variant is inserted or moved.
    #[test]
    fn variant_numbers_are_stable() {
        let number = |c: Command| c.to_bytes()[1];
        assert_eq!(
            number(Command::DropCollection {
                name: "c".into(),
                at_ms: 0
            }),
            1
        );
        assert_eq!(
            number(Command::ClaimDocuments {
                collection: "c".into(),
                node: 1,
                documents: vec![],
                until_ms: 0,
                at_ms: 0
            }),
            4
        );
        assert_eq!(
            number(Command::ExpireJobs {
                before_ms: 0,
                staged_before_ms: 0
            }),
            8
        );
        assert_eq!(number(Command::RevokeApiKey { id: "k".into() }), 14);
        assert_eq!(
            number(Command::AcceptUpload {
                collection: "c".into(),
                job_id: "j".into(),
                documents: vec![],
                staged_parts: 0,
                failed: vec![],
                at_ms: 0
            }),
            15
        );
        assert_eq!(
            number(Command::RetryDocument {
                collection: "c".into(),
                doc_id: "d".into(),
                version: 1,
                job_id: "j".into(),
                at_ms: 0
            }),
            16
        );
    }
}
