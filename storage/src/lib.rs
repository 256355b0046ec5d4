//! sled-backed storage for shoal.
//!
//! Every change of state is a [`Command`]. [`Store::apply`] is the one deterministic function that
//! turns a command into an atomic sled batch and reports the [`Effect`]s the index layer must mirror.
//! Identical command sequences produce identical stores on every replica: timestamps and ids travel
//! inside the command, point ids are assigned from per-collection counters kept in the store itself.

mod access;
mod codec;
mod command;
mod error;
mod events;
mod keys;
mod log;
mod migrate;
mod records;
mod snapshot;
mod store;

pub use access::{ApiKeyRecord, Role, UserChange, UserRecord};
pub use codec::FORMAT_VERSION;
pub use command::{ChunkInput, Command, DocumentChunks, DocumentInput, DocumentVersion, Section};
pub use error::StoreError;
pub use events::{EventLog, SearchEvent};
pub use log::LogTree;
pub use records::{
    ChunkRecord, Claim, CollectionRecord, CollectionSpec, CollectionSpecV6, DocumentRecord,
    DocumentStatus, HnswParams, JobError, JobRecord, JobState, LiveVersion, Quantization,
    StagedPart,
};
pub use snapshot::SnapshotInfo;
pub use store::{
    Applied, Effect, HeldClaim, Outcome, PendingDocument, Store, StoreOptions, StoredPoint,
    WithVectors,
};

/// Point ids are unique within a collection and never reused.
pub type PointId = u64;
