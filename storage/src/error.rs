use thiserror::Error;

/// Everything that can go wrong in the storage layer.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("collection `{0}` not found")]
    CollectionNotFound(String),
    #[error("collection `{0}` already exists")]
    CollectionExists(String),
    #[error("document `{doc}` not found in collection `{collection}`")]
    DocumentNotFound { collection: String, doc: String },
    #[error("user `{0}` already exists")]
    UserExists(String),
    #[error("user `{0}` not found")]
    UserNotFound(String),
    #[error("API key `{0}` not found")]
    ApiKeyNotFound(String),
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    /// The document is not as the command expected (a newer version, or not failed).
    #[error("{0}")]
    DocumentChanged(String),
    #[error("stored data has format version {found}, this build reads version {expected}")]
    FormatVersion { found: u8, expected: u8 },
    #[error("corrupt record under key {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// A snapshot could not be read or written (damaged, cut short, not a snapshot).
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error("the store in {dir} is locked by another process (waited {waited_ms} ms); is another shoal running on this data folder?")]
    Locked { dir: String, waited_ms: u64 },
    /// The store failed while applying or syncing: the node stops rather than go on with a state
    /// it cannot vouch for.
    #[error("the store failed: {0}")]
    Fatal(String),
    #[error("storage i/o: {0}")]
    Sled(#[from] sled::Error),
}

impl StoreError {
    /// True when the storage itself failed (an i/o error of sled, or a failure already declared
    /// fatal): the node cannot vouch for its state and must stop. Refusals and records that do
    /// not decode are failures of one command only.
    pub fn is_storage_failure(&self) -> bool {
        matches!(
            self,
            StoreError::Sled(_) | StoreError::Fatal(_) | StoreError::Locked { .. }
        )
    }

    /// True for errors that say the command was refused (nothing was written), as opposed to
    /// failures of the storage itself.
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            StoreError::CollectionNotFound(_)
                | StoreError::CollectionExists(_)
                | StoreError::DocumentNotFound { .. }
                | StoreError::InvalidCommand(_)
                | StoreError::DocumentChanged(_)
                | StoreError::UserExists(_)
                | StoreError::UserNotFound(_)
                | StoreError::ApiKeyNotFound(_)
        )
    }
}
