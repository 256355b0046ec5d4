//! The store: reads, and the one deterministic [`Store::apply`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sled::{Batch, Db, Tree};

use crate::codec::{decode, encode, FORMAT_VERSION, RECORD_VERSION};
use crate::records::*;
use crate::{keys, Command, DocumentChunks, DocumentInput, DocumentVersion, PointId, StoreError};

/// A change the index layer must mirror after a command was applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    CollectionCreated(CollectionRecord),
    /// The collection's spec changed (not its points): its shard loads again with it.
    CollectionUpdated(CollectionRecord),
    CollectionDropped {
        name: String,
        uid: u64,
    },
    /// New searchable points of one document.
    PointsAdded {
        collection: String,
        uid: u64,
        points: Vec<StoredPoint>,
    },
    PointsRemoved {
        collection: String,
        uid: u64,
        ids: Vec<PointId>,
    },
    /// Document versions accepted for ingest: they still have to be chunked, embedded and stored.
    DocumentsPending(Vec<PendingDocument>),
    /// Pending versions that are done (their chunks stored, or failed): no node needs to take
    /// them any more.
    DocumentsDone(Vec<PendingDocument>),
}

/// A point as the index needs it: id, vector and the payload used by filters and hits.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPoint {
    pub id: PointId,
    pub vector: Vec<f32>,
    pub doc_id: String,
    pub metadata_json: String,
    /// The chunk's text (for keyword search).
    pub text: String,
}

/// Which points' vectors [`Store::points_at`] reads.
#[derive(Clone, Copy)]
pub enum WithVectors<'a> {
    All,
    /// Only those of the points this picks; the others' `vector` is empty. Vectors not read are
    /// not checked either: a vector without its chunk, or a missing one not picked, is found by
    /// the next read of them all.
    Only(&'a dyn Fn(PointId) -> bool),
}

/// A document version that still has to be chunked, embedded and stored. Only its key: the text
/// stays in the store ([`Store::pending_text`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PendingDocument {
    pub collection: String,
    pub uid: u64,
    pub doc_id: String,
    pub version: u64,
    /// Bytes of text.
    pub bytes: u64,
}

/// What a command did, for the caller (sent back to the node that proposed it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    CollectionCreated(CollectionRecord),
    CollectionDropped,
    /// One part of a large request was staged.
    Staged {
        part: u32,
    },
    DocumentsAccepted {
        job: JobRecord,
    },
    Claimed {
        /// Versions the node now holds.
        granted: Vec<DocumentVersion>,
        /// Versions another node holds, and until when.
        held: Vec<HeldClaim>,
        /// Of the granted, how many were taken over from another node whose claim had expired.
        taken_over: u32,
    },
    ChunksStored {
        /// Documents whose chunks were stored.
        stored: Vec<String>,
        /// Versions no longer current (replaced or deleted meanwhile): ignored.
        stale: Vec<String>,
        /// Versions whose claim another node holds now: refused.
        lost: Vec<String>,
    },
    DocumentFailed {
        recorded: bool,
        job: Option<JobRecord>,
    },
    DocumentDeleted,
    JobsExpired {
        removed: u64,
        staged: u64,
    },
    /// `applied`: this was the cluster's first bootstrap (false: it had one already).
    AccessBootstrapped {
        applied: bool,
    },
    UserPut(crate::UserRecord),
    UserDeleted,
    ApiKeyPut(crate::ApiKeyRecord),
    ApiKeyRevoked,
    /// The collection as it is now (changed or not).
    CollectionUpdated(CollectionRecord),
}

/// A pending version claimed by another node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldClaim {
    pub document: DocumentVersion,
    pub node: u64,
    pub until_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub outcome: Outcome,
    pub effects: Vec<Effect>,
}

/// How a store is opened.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoreOptions {
    /// [`Store::sync`] flushes to disk (an acknowledged write survives `kill -9`).
    pub sync_writes: bool,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sync_writes: true,
            cache_bytes: 16 << 20,
        }
    }
}

/// sled-backed store of collections, documents, chunks with vectors, and ingest jobs.
///
/// Reads may run from any thread. Writes go through [`Store::apply`] only, and callers must apply
/// one command at a time (the consensus layer's state machine does), which is what makes a read-then-batch
/// apply atomic and deterministic.
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Db,
    /// The active state tree (replaced whole when a snapshot is installed).
    pub(crate) tree: Arc<RwLock<Tree>>,
    /// Which state tree is active.
    pub(crate) meta: Tree,
    sync_writes: bool,
    /// Held while a snapshot is installed into the inactive tree, or that tree is cleared; counts
    /// the installs.
    pub(crate) inactive_tree: Arc<parking_lot::Mutex<u64>>,
}

/// The two state trees; a snapshot is installed into the inactive one. Every tree of consensus
/// group 0 (the one group today) is named `g0/...`, so that a later version can keep several
/// groups in one database without a format change.
pub(crate) const STATE_TREES: [&str; 2] = ["g0/state-a", "g0/state-b"];
/// Which state tree is active.
const META_TREE: &str = "g0/meta";

impl Store {
    /// Open (or create) a store in `dir`.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_bytes)
            .open()?;
        Self::from_db(db, options.sync_writes)
    }

    /// Open a store this process dropped a moment ago (tests): sled's background threads may
    /// still hold its file lock for a moment after the drop.
    #[cfg(test)]
    pub(crate) fn reopen(dir: &Path) -> Result<Store, StoreError> {
        Store::open_waiting_for_lock(
            dir,
            StoreOptions::default(),
            std::time::Duration::from_secs(10),
        )
    }

    /// [`Store::open`], retrying for up to `wait` while another process still holds the store's
    /// lock (a process killed with `kill -9` a moment ago releases it only when it is reaped).
    pub fn open_waiting_for_lock(
        dir: &Path,
        options: StoreOptions,
        wait: std::time::Duration,
    ) -> Result<Store, StoreError> {
        let deadline = std::time::Instant::now() + wait;
        let mut warned = false;
        loop {
            match Self::open(dir, options) {
                Err(e) if is_lock_error(&e) && std::time::Instant::now() < deadline => {
                    if !warned {
                        tracing::warn!(
                            dir = %dir.display(),
                            wait_ms = wait.as_millis() as u64,
                            "the store is locked by another process; waiting for it to let go"
                        );
                        warned = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) if is_lock_error(&e) => {
                    return Err(StoreError::Locked {
                        dir: dir.display().to_string(),
                        waited_ms: wait.as_millis() as u64,
                    })
                }
                other => return other,
            }
        }
    }

    /// A store that lives in memory only (tests).
    pub fn temporary() -> Result<Store, StoreError> {
        let db = sled::Config::new().temporary(true).open()?;
        Self::from_db(db, false)
    }

    fn from_db(db: Db, sync_writes: bool) -> Result<Store, StoreError> {
        let meta = db.open_tree(META_TREE)?;
        let active = match meta.get(keys::ACTIVE_STATE)? {
            Some(name) if name.as_ref() == STATE_TREES[1].as_bytes() => STATE_TREES[1],
            _ => STATE_TREES[0],
        };
        let tree = db.open_tree(active)?;
        // What a snapshot install left behind (the state it replaced, or one it never finished).
        let inactive = db.open_tree(other_state_tree(active))?;
        if !inactive.is_empty() {
            inactive.clear()?;
        }
        match tree.get(keys::FORMAT)? {
            None => {
                tree.insert(keys::FORMAT, &[FORMAT_VERSION])?;
                db.flush()?;
            }
            Some(v) => crate::migrate::to_current(&db, &tree, &v)?,
        }
        Ok(Store {
            db,
            tree: Arc::new(RwLock::new(tree)),
            meta,
            sync_writes,
            inactive_tree: Arc::default(),
        })
    }

    /// The active state tree. Every read takes it once, so a read never mixes two states.
    pub(crate) fn tree(&self) -> Tree {
        self.tree.read().clone()
    }

    pub(crate) fn active_name(&self) -> &'static str {
        match self.meta.get(keys::ACTIVE_STATE) {
            Ok(Some(name)) if name.as_ref() == STATE_TREES[1].as_bytes() => STATE_TREES[1],
            _ => STATE_TREES[0],
        }
    }

    /// Index of the last applied command (0 when none).
    pub fn applied_index(&self) -> Result<u64, StoreError> {
        applied_in(&self.tree())
    }

    /// Whether [`Store::sync`] flushes (the store was opened with `sync_writes`).
    pub fn syncs_writes(&self) -> bool {
        self.sync_writes
    }

    /// Bytes used on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Overwrite the record under `key` with bytes that do not decode (tests of failure paths).
    #[doc(hidden)]
    pub fn corrupt_for_tests(&self, key: &str) {
        let _ = self
            .tree()
            .insert(key.as_bytes(), &[RECORD_VERSION, 0xff][..]);
    }

    /// Make every command applied so far durable, if the store was opened with `sync_writes`
    /// (a store used on its own; under consensus the Raft log makes each entry durable, and the
    /// state it produced reaches the disk with the log's next flush).
    pub fn sync(&self) -> Result<(), StoreError> {
        if self.sync_writes {
            self.db.flush()?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- reads

    pub fn collection(&self, name: &str) -> Result<Option<CollectionRecord>, StoreError> {
        self.get(&keys::collection(name))
    }

    pub fn collections(&self) -> Result<Vec<CollectionRecord>, StoreError> {
        self.tree()
            .scan_prefix(keys::COLLECTION_PREFIX)
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    pub fn document(&self, collection: &str, doc_id: &str) -> Result<DocumentRecord, StoreError> {
        let coll = self.require_collection(collection)?;
        self.get(&keys::document(coll.uid, doc_id))?
            .ok_or_else(|| StoreError::DocumentNotFound {
                collection: collection.to_string(),
                doc: doc_id.to_string(),
            })
    }

    /// Up to `limit` documents of a collection in id order, starting after `after` (a page of a
    /// listing; the last id is the next page's `after`).
    pub fn documents_page(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DocumentRecord>, StoreError> {
        let coll = self.require_collection(collection)?;
        let prefix = keys::documents_prefix(coll.uid);
        let start = match after {
            // the key right after `after`'s: its id with a 0 byte appended
            Some(a) => [keys::document(coll.uid, a).as_slice(), &[0u8]].concat(),
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for kv in self.tree().range(start..) {
            let (k, v) = kv?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    /// The chunk behind a point (what a search hit shows), if it still exists.
    pub fn chunk(&self, uid: u64, id: PointId) -> Result<Option<ChunkRecord>, StoreError> {
        self.get(&keys::point(uid, id))
    }

    /// The vector of the chunk behind a point, if it still exists.
    pub fn chunk_vector(&self, uid: u64, id: PointId) -> Result<Option<Vec<f32>>, StoreError> {
        self.get(&keys::vector(uid, id))
    }

    pub fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.get(&keys::job(id))
    }

    /// Every job, in id order.
    pub fn jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.tree()
            .scan_prefix(keys::JOB_PREFIX)
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    /// How many finished jobs were last updated before `before_ms` ([`Command::ExpireJobs`]
    /// would remove them).
    pub fn expirable_jobs(&self, before_ms: u64) -> Result<usize, StoreError> {
        Ok(self
            .jobs()?
            .iter()
            .filter(|j| j.is_finished() && j.updated_at_ms < before_ms)
            .count())
    }

    /// The text of a pending document version, or None when that version is no longer pending
    /// (replaced, deleted, or its collection dropped).
    /// Bytes the collection `uid` holds in the store: its documents' records (text, metadata)
    /// and its chunks' records (text) and vectors, keys included, as (documents, chunks). Read by
    /// walking its records: a cost in proportion to its size.
    pub fn collection_bytes(&self, uid: u64) -> Result<(u64, u64), StoreError> {
        let tree = self.tree();
        let sum = |prefix: Vec<u8>| -> Result<u64, StoreError> {
            let mut n = 0u64;
            for kv in tree.scan_prefix(prefix) {
                let (k, v) = kv?;
                n += (k.len() + v.len()) as u64;
            }
            Ok(n)
        };
        Ok((
            sum(keys::documents_prefix(uid))?,
            sum(keys::points_prefix(uid))? + sum(keys::vectors_prefix(uid))?,
        ))
    }

    pub fn pending_text(
        &self,
        uid: u64,
        doc_id: &str,
        version: u64,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .pending_content(uid, doc_id, version)?
            .map(|(text, _)| text))
    }

    /// A pending version's text and where its sections begin (what chunking needs).
    pub fn pending_content(
        &self,
        uid: u64,
        doc_id: &str,
        version: u64,
    ) -> Result<Option<(String, Vec<crate::Section>)>, StoreError> {
        let doc: Option<DocumentRecord> = self.get(&keys::document(uid, doc_id))?;
        Ok(doc
            .filter(|d| d.version == version && d.status == DocumentStatus::Pending)
            .map(|d| (d.text, d.sections)))
    }

    /// Whether a version is still pending, and who claims it: None when it is no longer pending
    /// (done, replaced, deleted), `Some(claim)` when it is.
    pub fn pending_claim(
        &self,
        uid: u64,
        doc_id: &str,
        version: u64,
    ) -> Result<Option<Option<Claim>>, StoreError> {
        let doc: Option<DocumentRecord> = self.get(&keys::document(uid, doc_id))?;
        Ok(doc
            .filter(|d| d.version == version && d.status == DocumentStatus::Pending)
            .map(|d| d.claim))
    }

    /// Every searchable point of a collection, for building its index shard.
    ///
    /// Writes may run meanwhile. The chunks are read before the documents' metadata, so a chunk
    /// replaced during the read may carry the new version's metadata; the replacement's removal
    /// of that chunk, which the caller replays after this read, corrects it.
    pub fn points(&self, collection: &str) -> Result<Vec<StoredPoint>, StoreError> {
        Ok(self.points_at(collection, None, WithVectors::All)?.0)
    }

    /// [`Store::points`], and the applied index of the state they were read from (at least the
    /// index they reflect), from one state tree even while a snapshot is installed.
    /// With `uid`, a collection of that name but another uid is not found. `vectors` says which
    /// points' vectors are read (an index shard reloading its dumped graph has most of them).
    pub fn points_at(
        &self,
        collection: &str,
        uid: Option<u64>,
        vectors: WithVectors<'_>,
    ) -> Result<(Vec<StoredPoint>, u64), StoreError> {
        let tree = self.tree();
        let applied = applied_in(&tree)?;
        let coll: CollectionRecord =
            get_in::<CollectionRecord>(&tree, &keys::collection(collection))?
                .filter(|c| uid.is_none_or(|u| u == c.uid))
                .ok_or_else(|| StoreError::CollectionNotFound(collection.to_string()))?;
        let mut out = Vec::with_capacity(coll.chunks as usize);
        // All: records and vectors side by side, both in point id order, written and removed
        // together. Only: each wanted vector read by its key.
        enum Reader<'a> {
            Scan(Box<VectorScan>),
            Get(&'a dyn Fn(PointId) -> bool),
        }
        let mut reader = match vectors {
            WithVectors::All => Reader::Scan(Box::new(VectorScan {
                scan: tree.scan_prefix(keys::vectors_prefix(coll.uid)),
                ahead: None,
            })),
            WithVectors::Only(wanted) => Reader::Get(wanted),
        };
        // Commands go on being applied during the read, and sled's scans are no snapshot: each
        // reads a copy of every leaf it enters, taken as it enters it. A chunk can be removed
        // between the reads of its record and of its vector, or stored while the one scan holds a
        // newer copy of its place than the other. What the store holds now tells those from
        // corruption: point ids are never reused, and a chunk's record and vector are written in
        // one batch and removed in one. A chunk removed meanwhile is left out, a vector whose
        // chunk the point scan missed is skipped: both are changes after `applied`, which the
        // caller replays.
        let stored = |id: PointId| -> Result<bool, StoreError> {
            Ok(tree.contains_key(keys::point(coll.uid, id))?)
        };
        // A vector the point scan had no chunk for: stored after that scan passed its place (and
        // maybe removed since), or removed before that scan got there; either way, left out.
        let unmatched_vector = |id: PointId| -> Result<(), StoreError> {
            if stored(id)? || !tree.contains_key(keys::vector(coll.uid, id))? {
                Ok(())
            } else {
                Err(StoreError::Corrupt {
                    key: String::from_utf8_lossy(&keys::vector(coll.uid, id)).into_owned(),
                    reason: "a vector without its chunk".into(),
                })
            }
        };
        for kv in tree.scan_prefix(keys::points_prefix(coll.uid)) {
            let (k, v) = kv?;
            let chunk: ChunkRecord = decode(&k, &v)?;
            let id = keys::point_id_from_key(&k).ok_or_else(|| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                reason: "bad point key".into(),
            })?;
            // The chunk's vector read by its key (the vector scan did not find it, or its vector
            // is read by key anyway); None when the chunk was removed since its record was read.
            // In that order: a chunk stored when its record was read and still stored after its
            // vector was looked for was stored throughout, so its vector must have been found.
            let by_key = |found: Option<PointId>| -> Result<Option<Vec<f32>>, StoreError> {
                if let Some(vector) = get_in(&tree, &keys::vector(coll.uid, id))? {
                    return Ok(Some(vector));
                }
                if !stored(id)? {
                    return Ok(None);
                }
                let next = found.map_or(String::new(), |n| format!(" (next vector: {n})"));
                Err(StoreError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    reason: format!("the chunk's vector is missing{next}"),
                })
            };
            let vector = match &mut reader {
                Reader::Scan(scan) => loop {
                    match scan.peek()? {
                        Some(found) if found == id => break scan.next()?,
                        Some(found) if found < id => {
                            unmatched_vector(found)?;
                            scan.next()?;
                        }
                        found => break by_key(found)?,
                    }
                },
                Reader::Get(wanted) if wanted(id) => by_key(None)?,
                Reader::Get(_) => Some(Vec::new()),
            };
            let Some(vector) = vector else { continue };
            out.push(StoredPoint {
                id,
                vector,
                doc_id: chunk.doc_id,
                metadata_json: String::new(),
                text: chunk.text,
            });
        }
        if let Reader::Scan(scan) = &mut reader {
            while let Some(found) = scan.peek()? {
                unmatched_vector(found)?;
                scan.next()?;
            }
        }
        let mut metadata: HashMap<String, String> = HashMap::new();
        for kv in tree.scan_prefix(keys::documents_prefix(coll.uid)) {
            let (k, v) = kv?;
            let doc: DocumentRecord = decode(&k, &v)?;
            if let Some(live) = doc.live {
                metadata.insert(doc.id, live.metadata_json);
            }
        }
        for p in &mut out {
            p.metadata_json = metadata
                .get(&p.doc_id)
                .cloned()
                .unwrap_or_else(|| "{}".to_string());
        }
        Ok((out, applied))
    }

    /// Documents accepted but not yet indexed, in every collection (to resume ingest after a restart).
    pub fn pending_documents(&self) -> Result<Vec<PendingDocument>, StoreError> {
        let tree = self.tree();
        let mut collections: Vec<CollectionRecord> = Vec::new();
        for kv in tree.scan_prefix(keys::COLLECTION_PREFIX) {
            let (k, v) = kv?;
            collections.push(decode(&k, &v)?);
        }
        let mut out = Vec::new();
        for coll in collections {
            for kv in tree.scan_prefix(keys::documents_prefix(coll.uid)) {
                let (k, v) = kv?;
                let doc: DocumentRecord = decode(&k, &v)?;
                if doc.status == DocumentStatus::Pending {
                    out.push(PendingDocument {
                        collection: coll.name.clone(),
                        uid: coll.uid,
                        doc_id: doc.id,
                        version: doc.version,
                        bytes: doc.text.len() as u64,
                    });
                }
            }
        }
        Ok(out)
    }

    fn require_collection(&self, name: &str) -> Result<CollectionRecord, StoreError> {
        self.collection(name)?
            .ok_or_else(|| StoreError::CollectionNotFound(name.to_string()))
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        get_in(&self.tree(), key)
    }

    pub(crate) fn get_record<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        self.get(key)
    }

    /// Every record under `prefix`, in key order.
    pub(crate) fn scan_records<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &[u8],
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree().scan_prefix(prefix) {
            let (k, v) = kv?;
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    // ---------------------------------------------------------------- apply

    /// Apply one command as log entry `index`. Either the whole command is written (one atomic
    /// sled batch) or, when it is refused, nothing but the applied index is; any other error
    /// (a record that does not decode, the store failing) writes nothing at all. Callers must not run
    /// two applies at once, and call [`Store::sync`] before they tell anyone a command was applied.
    pub fn apply(&self, index: u64, command: &Command) -> Result<Applied, StoreError> {
        self.apply_logged(index, command, None)
    }

    /// [`Store::apply`], writing `log_meta` (the consensus layer's record of this entry: its log
    /// id and the membership) in the same atomic batch, so the two can never disagree after a
    /// crash. Read it back with [`Store::log_meta`].
    pub fn apply_logged(
        &self,
        index: u64,
        command: &Command,
        log_meta: Option<&[u8]>,
    ) -> Result<Applied, StoreError> {
        let mut batch = Batch::default();
        let result = match command {
            Command::CreateCollection { name, spec, at_ms } => {
                self.apply_create(&mut batch, name, spec, *at_ms)
            }
            Command::CreateCollectionV6 { name, spec, at_ms } => {
                self.apply_create(&mut batch, name, &(*spec).into(), *at_ms)
            }
            Command::UpdateCollection {
                name,
                quantization,
                vectors_on_disk,
            } => self.apply_update(&mut batch, name, *quantization, *vectors_on_disk),
            Command::DropCollection { name, at_ms } => {
                self.apply_drop(&mut batch, index, name, *at_ms)
            }
            Command::StageDocuments {
                collection,
                job_id,
                part,
                documents,
                at_ms,
            } => self.apply_stage(&mut batch, collection, job_id, *part, documents, *at_ms),
            Command::AcceptDocuments {
                collection,
                job_id,
                documents,
                staged_parts,
                at_ms,
            } => self.apply_accept(
                &mut batch,
                index,
                collection,
                job_id,
                documents,
                *staged_parts,
                &[],
                *at_ms,
            ),
            Command::AcceptUpload {
                collection,
                job_id,
                documents,
                staged_parts,
                failed,
                at_ms,
            } => self.apply_accept(
                &mut batch,
                index,
                collection,
                job_id,
                documents,
                *staged_parts,
                failed,
                *at_ms,
            ),
            Command::RetryDocument {
                collection,
                doc_id,
                version,
                job_id,
                at_ms,
            } => self.apply_retry(
                &mut batch, index, collection, doc_id, *version, job_id, *at_ms,
            ),
            Command::ClaimDocuments {
                collection,
                node,
                documents,
                until_ms,
                at_ms,
            } => self.apply_claim(&mut batch, collection, *node, documents, *until_ms, *at_ms),
            Command::StoreChunks {
                collection,
                node,
                documents,
                at_ms,
            } => self.apply_store_chunks(&mut batch, index, collection, *node, documents, *at_ms),
            Command::FailDocument {
                collection,
                node,
                doc_id,
                version,
                reason,
                at_ms,
            } => self.apply_fail(
                &mut batch, index, collection, *node, doc_id, *version, reason, *at_ms,
            ),
            Command::DeleteDocument {
                collection,
                doc_id,
                at_ms,
            } => self.apply_delete(&mut batch, index, collection, doc_id, *at_ms),
            Command::ExpireJobs {
                before_ms,
                staged_before_ms,
            } => self.apply_expire_jobs(&mut batch, *before_ms, *staged_before_ms),
            Command::BootstrapAccess {
                signing_secret,
                admin,
            } => self.apply_bootstrap_access(&mut batch, signing_secret, admin.as_ref()),
            Command::CreateUser { user } => self.apply_create_user(&mut batch, user),
            Command::UpdateUser {
                name,
                change,
                at_ms,
            } => self.apply_update_user(&mut batch, name, change, *at_ms),
            Command::DeleteUser { name, at_ms } => self.apply_delete_user(&mut batch, name, *at_ms),
            Command::PutApiKey { key } => self.apply_put_api_key(&mut batch, key),
            Command::RevokeApiKey { id } => self.apply_revoke_api_key(&mut batch, id),
        };
        let applied = match result {
            Ok(applied) => applied,
            Err(e) if e.is_rejection() => {
                // A refused command still consumes its log index; nothing else changes.
                self.advance(index, log_meta)?;
                return Err(e);
            }
            // A record it could not read, or the store failing: nothing is written, not even
            // the index (the caller stops rather than skip the entry).
            Err(e) => return Err(e),
        };
        batch.insert(keys::APPLIED, &index.to_be_bytes());
        if let Some(meta) = log_meta {
            batch.insert(keys::RAFT_META, meta);
        }
        self.tree().apply_batch(batch)?;
        Ok(applied)
    }

    /// Log entry `index` carries no command (a consensus entry: blank, membership): advance the
    /// applied index and the log record, nothing else.
    pub fn advance(&self, index: u64, log_meta: Option<&[u8]>) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        batch.insert(keys::APPLIED, &index.to_be_bytes());
        if let Some(meta) = log_meta {
            batch.insert(keys::RAFT_META, meta);
        }
        self.tree().apply_batch(batch)?;
        Ok(())
    }

    /// What [`Store::apply_logged`] or [`Store::advance`] last wrote as `log_meta`.
    pub fn log_meta(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree().get(keys::RAFT_META)?.map(|v| v.to_vec()))
    }

    fn apply_create(
        &self,
        batch: &mut Batch,
        name: &str,
        spec: &CollectionSpec,
        at_ms: u64,
    ) -> Result<Applied, StoreError> {
        if self.collection(name)?.is_some() {
            return Err(StoreError::CollectionExists(name.to_string()));
        }
        if spec.dimension == 0 {
            return Err(StoreError::InvalidCommand(
                "dimension must be positive".into(),
            ));
        }
        let uid = self
            .tree()
            .get(keys::LAST_UID)?
            .map(|v| be_u64(&v))
            .unwrap_or(0)
            + 1;
        let record = CollectionRecord {
            name: name.to_string(),
            uid,
            spec: spec.clone(),
            created_at_ms: at_ms,
            next_point_id: 0,
            documents: 0,
            chunks: 0,
        };
        batch.insert(keys::LAST_UID, &uid.to_be_bytes());
        batch.insert(keys::collection(name), encode(&record));
        Ok(Applied {
            outcome: Outcome::CollectionCreated(record.clone()),
            effects: vec![Effect::CollectionCreated(record)],
        })
    }

    fn apply_update(
        &self,
        batch: &mut Batch,
        name: &str,
        quantization: Option<Quantization>,
        vectors_on_disk: Option<bool>,
    ) -> Result<Applied, StoreError> {
        let mut record = self.require_collection(name)?;
        let old = record.spec.clone();
        if let Some(q) = quantization {
            record.spec.quantization = q;
        }
        if let Some(on_disk) = vectors_on_disk {
            record.spec.vectors_on_disk = on_disk;
        }
        if record.spec == old {
            return Ok(Applied {
                outcome: Outcome::CollectionUpdated(record),
                effects: Vec::new(),
            });
        }
        batch.insert(keys::collection(name), encode(&record));
        Ok(Applied {
            outcome: Outcome::CollectionUpdated(record.clone()),
            effects: vec![Effect::CollectionUpdated(record)],
        })
    }

    fn apply_drop(
        &self,
        batch: &mut Batch,
        index: u64,
        name: &str,
        at_ms: u64,
    ) -> Result<Applied, StoreError> {
        let coll = self.require_collection(name)?;
        batch.remove(keys::collection(name));
        let tree = self.tree();
        // Its unfinished jobs can never finish now (found through the running-jobs keys).
        for key in tree.scan_prefix(keys::running_jobs_prefix(coll.uid)).keys() {
            let key = key?;
            let id = String::from_utf8_lossy(&key[keys::running_jobs_prefix(coll.uid).len()..])
                .into_owned();
            if let Some(mut job) = self.job(&id)? {
                job.cancelled = true;
                job.updated_at_ms = at_ms;
                job.last_index = index;
                put_job(batch, &job);
            }
        }
        for prefix in [
            keys::documents_prefix(coll.uid),
            keys::points_prefix(coll.uid),
            keys::vectors_prefix(coll.uid),
        ] {
            for key in tree.scan_prefix(prefix).keys() {
                batch.remove(key?);
            }
        }
        Ok(Applied {
            outcome: Outcome::CollectionDropped,
            effects: vec![Effect::CollectionDropped {
                name: name.to_string(),
                uid: coll.uid,
            }],
        })
    }

    fn apply_stage(
        &self,
        batch: &mut Batch,
        collection: &str,
        job_id: &str,
        part: u32,
        documents: &[DocumentInput],
        at_ms: u64,
    ) -> Result<Applied, StoreError> {
        self.require_collection(collection)?;
        if self.job(job_id)?.is_some() {
            return Err(StoreError::InvalidCommand(format!(
                "job `{job_id}` already exists"
            )));
        }
        let key = keys::staged(job_id, part);
        if self.tree().contains_key(&key)? {
            return Err(StoreError::InvalidCommand(format!(
                "part {part} of job `{job_id}` is already staged"
            )));
        }
        let staged = StagedPart {
            collection: collection.to_string(),
            at_ms,
            documents: documents.to_vec(),
        };
        batch.insert(key, encode(&staged));
        Ok(Applied {
            outcome: Outcome::Staged { part },
            effects: Vec::new(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_retry(
        &self,
        batch: &mut Batch,
        index: u64,
        collection: &str,
        doc_id: &str,
        version: u64,
        job_id: &str,
        at_ms: u64,
    ) -> Result<Applied, StoreError> {
        let doc = self.document(collection, doc_id)?;
        if doc.version != version || !matches!(doc.status, DocumentStatus::Failed { .. }) {
            return Err(StoreError::DocumentChanged(format!(
                "document `{doc_id}` is no longer the failed version {version} (it was replaced or retried meanwhile)"
            )));
        }
        let input = DocumentInput {
            id: doc.id,
            text: doc.text,
            metadata_json: doc.metadata_json,
            sections: doc.sections,
        };
        self.apply_accept(batch, index, collection, job_id, &[input], 0, &[], at_ms)
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_accept(
        &self,
        batch: &mut Batch,
        index: u64,
        collection: &str,
        job_id: &str,
        documents: &[DocumentInput],
        staged_parts: u32,
        failed: &[JobError],
        at_ms: u64,
    ) -> Result<Applied, StoreError> {
        let mut coll = self.require_collection(collection)?;
        if self.job(job_id)?.is_some() {
            return Err(StoreError::InvalidCommand(format!(
                "job `{job_id}` already exists"
            )));
        }
        // The staged parts of the request first, in order; they go in the same batch.
        let mut staged: Vec<DocumentInput> = Vec::new();
        for part in 0..staged_parts {
            let key = keys::staged(job_id, part);
            let Some(p) = self.get::<StagedPart>(&key)? else {
                return Err(StoreError::InvalidCommand(format!(
                    "part {part} of job `{job_id}` was never staged (or has expired)"
                )));
            };
            if p.collection != collection {
                return Err(StoreError::InvalidCommand(format!(
                    "part {part} of job `{job_id}` was staged for collection `{}`",
                    p.collection
                )));
            }
            staged.extend(p.documents);
            batch.remove(key);
        }
        let all: Vec<&DocumentInput> = staged.iter().chain(documents.iter()).collect();
        let mut job = JobRecord {
            id: job_id.to_string(),
            collection: collection.to_string(),
            collection_uid: coll.uid,
            created_at_ms: at_ms,
            updated_at_ms: at_ms,
            total: (all.len() + failed.len()) as u64,
            indexed: 0,
            failed: failed.len() as u64,
            superseded: 0,
            errors: failed.iter().take(JobRecord::MAX_ERRORS).cloned().collect(),
            cancelled: false,
            last_index: index,
        };
        // Earlier jobs whose pending documents this request replaces.
        let mut other_jobs: HashMap<String, JobRecord> = HashMap::new();
        // Later duplicates of an id in the same request win; earlier ones count as superseded.
        let mut last_index: HashMap<&str, usize> = HashMap::new();
        for (i, d) in all.iter().enumerate() {
            last_index.insert(d.id.as_str(), i);
        }
        let mut pending = Vec::new();
        for (i, input) in all.iter().enumerate() {
            if last_index.get(input.id.as_str()) != Some(&i) {
                job.superseded += 1;
                continue;
            }
            let key = keys::document(coll.uid, &input.id);
            let previous: Option<DocumentRecord> = self.get(&key)?;
            // The log index makes versions unique across the whole store, so a version can never
            // be mistaken for one of a dropped collection of the same name.
            let version = index;
            let live = match previous {
                Some(prev) => {
                    if prev.status == DocumentStatus::Pending {
                        self.count_superseded(&mut other_jobs, &prev.job_id, index, at_ms)?;
                    }
                    prev.live
                }
                None => {
                    coll.documents += 1;
                    None
                }
            };
            let record = DocumentRecord {
                id: input.id.clone(),
                version,
                job_id: job_id.to_string(),
                accepted_at_ms: at_ms,
                text: input.text.clone(),
                metadata_json: input.metadata_json.clone(),
                sections: input.sections.clone(),
                status: DocumentStatus::Pending,
                live,
                claim: None,
            };
            batch.insert(key, encode(&record));
            pending.push(PendingDocument {
                collection: collection.to_string(),
                uid: coll.uid,
                doc_id: input.id.clone(),
                version,
                bytes: input.text.len() as u64,
            });
        }
        for other in other_jobs.values() {
            put_job(batch, other);
        }
        put_job(batch, &job);
        batch.insert(keys::collection(collection), encode(&coll));
        Ok(Applied {
            outcome: Outcome::DocumentsAccepted { job },
            effects: vec![Effect::DocumentsPending(pending)],
        })
    }

    fn count_superseded(
        &self,
        jobs: &mut HashMap<String, JobRecord>,
        job_id: &str,
        index: u64,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        let Some(j) = self.cached_job(jobs, job_id)? else {
            return Ok(());
        };
        j.superseded += 1;
        j.updated_at_ms = at_ms;
        j.last_index = index;
        Ok(())
    }

    /// A job as this command has changed it so far (read from the store on first use).
    fn cached_job<'a>(
        &self,
        jobs: &'a mut HashMap<String, JobRecord>,
        job_id: &str,
    ) -> Result<Option<&'a mut JobRecord>, StoreError> {
        if !jobs.contains_key(job_id) {
            match self.job(job_id)? {
                Some(j) => {
                    jobs.insert(job_id.to_string(), j);
                }
                None => return Ok(None),
            }
        }
        Ok(jobs.get_mut(job_id))
    }

    fn apply_claim(
        &self,
        batch: &mut Batch,
        collection: &str,
        node: u64,
        documents: &[DocumentVersion],
        until_ms: u64,
        at_ms: u64,
    ) -> Result<Applied, StoreError> {
        let coll = self.require_collection(collection)?;
        let mut granted = Vec::new();
        let mut held = Vec::new();
        let mut taken_over = 0;
        let mut seen = std::collections::HashSet::new();
        for dv in documents {
            if !seen.insert(dv) {
                continue;
            }
            let key = keys::document(coll.uid, &dv.doc_id);
            let Some(mut doc) = self
                .get::<DocumentRecord>(&key)?
                .filter(|d| d.version == dv.version && d.status == DocumentStatus::Pending)
            else {
                continue; // replaced, deleted or done meanwhile
            };
            match doc.claim {
                Some(c) if c.node != node && c.until_ms > at_ms => {
                    held.push(HeldClaim {
                        document: dv.clone(),
                        node: c.node,
                        until_ms: c.until_ms,
                    });
                    continue;
                }
                Some(c) if c.node != node => taken_over += 1,
                _ => {}
            }
            doc.claim = Some(Claim { node, until_ms });
            batch.insert(key, encode(&doc));
            granted.push(dv.clone());
        }
        Ok(Applied {
            outcome: Outcome::Claimed {
                granted,
                held,
                taken_over,
            },
            effects: Vec::new(),
        })
    }

    fn apply_store_chunks(
        &self,
        batch: &mut Batch,
        index: u64,
        collection: &str,
        node: u64,
        documents: &[DocumentChunks],
        at_ms: u64,
    ) -> Result<Applied, StoreError> {
        let mut coll = self.require_collection(collection)?;
        let dim = coll.spec.dimension as usize;
        if let Some(bad) = documents
            .iter()
            .flat_map(|d| &d.chunks)
            .find(|c| c.vector.len() != dim)
        {
            return Err(StoreError::InvalidCommand(format!(
                "chunk vector has dimension {}, collection `{collection}` has {dim}",
                bad.vector.len()
            )));
        }
        let mut effects = Vec::new();
        let mut jobs: HashMap<String, JobRecord> = HashMap::new();
        let (mut stored, mut stale, mut lost) = (Vec::new(), Vec::new(), Vec::new());
        let mut finished = Vec::new();
        // A document named twice: its first chunks count, the second are stale.
        let mut done = std::collections::HashSet::new();
        for d in documents {
            let key = keys::document(coll.uid, &d.doc_id);
            let doc: Option<DocumentRecord> = self.get(&key)?;
            let Some(mut doc) = doc.filter(|r| {
                r.version == d.version
                    && r.status == DocumentStatus::Pending
                    && !done.contains(&d.doc_id)
            }) else {
                stale.push(d.doc_id.clone());
                continue;
            };
            // Chunks of a version claimed by another node are refused (that node's are stored);
            // unclaimed ones are taken: the version and status check alone keeps a document
            // from being indexed twice, claims only keep the work from being done twice.
            if doc.claim.is_some_and(|c| c.node != node) {
                lost.push(d.doc_id.clone());
                continue;
            }
            done.insert(d.doc_id.clone());
            if let Some(old) = doc.live.take() {
                effects.push(remove_live(batch, &mut coll, old));
            }
            let mut points = Vec::with_capacity(d.chunks.len());
            let mut new_points = Vec::with_capacity(d.chunks.len());
            for (i, c) in d.chunks.iter().enumerate() {
                let id = coll.next_point_id;
                coll.next_point_id += 1;
                let record = ChunkRecord {
                    doc_id: d.doc_id.clone(),
                    chunk_index: i as u32,
                    text: c.text.clone(),
                    start: c.start,
                    end: c.end,
                    pages: c.pages,
                    section: c.section.clone(),
                };
                batch.insert(keys::point(coll.uid, id), encode(&record));
                batch.insert(keys::vector(coll.uid, id), encode(&c.vector));
                points.push(id);
                new_points.push(StoredPoint {
                    id,
                    vector: c.vector.clone(),
                    doc_id: d.doc_id.clone(),
                    metadata_json: doc.metadata_json.clone(),
                    text: c.text.clone(),
                });
            }
            coll.chunks += points.len() as u64;
            doc.live = Some(LiveVersion {
                version: d.version,
                metadata_json: doc.metadata_json.clone(),
                points,
            });
            doc.status = DocumentStatus::Indexed;
            doc.claim = None;
            finished.push(PendingDocument {
                collection: collection.to_string(),
                uid: coll.uid,
                doc_id: d.doc_id.clone(),
                version: d.version,
                bytes: doc.text.len() as u64,
            });
            if let Some(j) = self.cached_job(&mut jobs, &doc.job_id)? {
                j.indexed += 1;
                j.updated_at_ms = at_ms;
                j.last_index = index;
            }
            batch.insert(key, encode(&doc));
            if !new_points.is_empty() {
                effects.push(Effect::PointsAdded {
                    collection: collection.to_string(),
                    uid: coll.uid,
                    points: new_points,
                });
            }
            stored.push(d.doc_id.clone());
        }
        for j in jobs.values() {
            put_job(batch, j);
        }
        if !stored.is_empty() {
            batch.insert(keys::collection(collection), encode(&coll));
            effects.push(Effect::DocumentsDone(finished));
        }
        Ok(Applied {
            outcome: Outcome::ChunksStored {
                stored,
                stale,
                lost,
            },
            effects,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_fail(
        &self,
        batch: &mut Batch,
        index: u64,
        collection: &str,
        node: u64,
        doc_id: &str,
        version: u64,
        reason: &str,
        at_ms: u64,
    ) -> Result<Applied, StoreError> {
        let coll = self.require_collection(collection)?;
        let key = keys::document(coll.uid, doc_id);
        let doc: Option<DocumentRecord> = self.get(&key)?;
        let Some(mut doc) = doc.filter(|d| {
            d.version == version
                && d.status == DocumentStatus::Pending
                && d.claim.is_none_or(|c| c.node == node)
        }) else {
            return Ok(Applied {
                outcome: Outcome::DocumentFailed {
                    recorded: false,
                    job: None,
                },
                effects: Vec::new(),
            });
        };
        doc.status = DocumentStatus::Failed {
            reason: reason.to_string(),
        };
        doc.claim = None;
        let done = PendingDocument {
            collection: collection.to_string(),
            uid: coll.uid,
            doc_id: doc_id.to_string(),
            version,
            bytes: doc.text.len() as u64,
        };
        let job = self.job(&doc.job_id)?.map(|mut j| {
            j.failed += 1;
            j.updated_at_ms = at_ms;
            j.last_index = index;
            if j.errors.len() < JobRecord::MAX_ERRORS {
                j.errors.push(JobError {
                    doc_id: doc_id.to_string(),
                    reason: reason.to_string(),
                });
            }
            put_job(batch, &j);
            j
        });
        batch.insert(key, encode(&doc));
        Ok(Applied {
            outcome: Outcome::DocumentFailed {
                recorded: true,
                job,
            },
            effects: vec![Effect::DocumentsDone(vec![done])],
        })
    }

    fn apply_delete(
        &self,
        batch: &mut Batch,
        index: u64,
        collection: &str,
        doc_id: &str,
        at_ms: u64,
    ) -> Result<Applied, StoreError> {
        let mut coll = self.require_collection(collection)?;
        let key = keys::document(coll.uid, doc_id);
        let doc: DocumentRecord = self
            .get(&key)?
            .ok_or_else(|| StoreError::DocumentNotFound {
                collection: collection.to_string(),
                doc: doc_id.to_string(),
            })?;
        if doc.status == DocumentStatus::Pending {
            let mut jobs = HashMap::new();
            self.count_superseded(&mut jobs, &doc.job_id, index, at_ms)?;
            for j in jobs.values() {
                put_job(batch, j);
            }
        }
        let mut effects = Vec::new();
        if let Some(live) = doc.live {
            effects.push(remove_live(batch, &mut coll, live));
        }
        coll.documents -= 1;
        batch.remove(key);
        batch.insert(keys::collection(collection), encode(&coll));
        Ok(Applied {
            outcome: Outcome::DocumentDeleted,
            effects,
        })
    }

    fn apply_expire_jobs(
        &self,
        batch: &mut Batch,
        before_ms: u64,
        staged_before_ms: u64,
    ) -> Result<Applied, StoreError> {
        let mut removed = 0;
        for job in self.jobs()? {
            if job.is_finished() && job.updated_at_ms < before_ms {
                batch.remove(keys::job(&job.id));
                removed += 1;
                // One command removes a bounded number; the next expiry takes the rest.
                if removed >= MAX_EXPIRED_PER_COMMAND {
                    break;
                }
            }
        }
        let mut staged = 0;
        for kv in self.tree().scan_prefix(keys::STAGED_PREFIX) {
            let (k, v) = kv?;
            let part: StagedPart = decode(&k, &v)?;
            if part.at_ms < staged_before_ms {
                batch.remove(k);
                staged += 1;
            }
        }
        Ok(Applied {
            outcome: Outcome::JobsExpired { removed, staged },
            effects: Vec::new(),
        })
    }

    /// Staged parts older than `before_ms` ([`Command::ExpireJobs`] would remove them).
    pub fn expirable_staged(&self, before_ms: u64) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.tree().scan_prefix(keys::STAGED_PREFIX) {
            let (k, v) = kv?;
            let part: StagedPart = decode(&k, &v)?;
            if part.at_ms < before_ms {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Jobs one `ExpireJobs` command removes at most (it runs on the apply thread).
const MAX_EXPIRED_PER_COMMAND: u64 = 10_000;

/// Remove a document version's points from the store (and count them off the collection); the
/// effect tells the index to drop them too.
fn remove_live(batch: &mut Batch, coll: &mut CollectionRecord, live: LiveVersion) -> Effect {
    for id in &live.points {
        batch.remove(keys::point(coll.uid, *id));
        batch.remove(keys::vector(coll.uid, *id));
    }
    coll.chunks -= live.points.len() as u64;
    Effect::PointsRemoved {
        collection: coll.name.clone(),
        uid: coll.uid,
        ids: live.points,
    }
}

/// Write a job and keep the running-jobs key of its collection in step with its state.
fn put_job(batch: &mut Batch, job: &JobRecord) {
    batch.insert(keys::job(&job.id), encode(job));
    let running = keys::running_job(job.collection_uid, &job.id);
    if job.is_finished() {
        batch.remove(running);
    } else {
        batch.insert(running, &[]);
    }
}

/// sled reports a store held by another process as an i/o error naming the lock.
fn is_lock_error(e: &StoreError) -> bool {
    matches!(e, StoreError::Sled(sled::Error::Io(io)) if io.to_string().contains("could not acquire lock"))
}

fn get_in<T: serde::de::DeserializeOwned>(
    tree: &Tree,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    match tree.get(key)? {
        Some(v) => Ok(Some(decode(key, &v)?)),
        None => Ok(None),
    }
}

/// A scan of a collection's vectors in point id order, one looked ahead (see [`Store::points_at`]).
struct VectorScan {
    scan: sled::Iter,
    ahead: Option<(PointId, sled::IVec, sled::IVec)>,
}

impl VectorScan {
    /// The point id of the next vector, if any.
    fn peek(&mut self) -> Result<Option<PointId>, StoreError> {
        if self.ahead.is_none() {
            if let Some(kv) = self.scan.next() {
                let (k, v) = kv?;
                let id = keys::point_id_from_key(&k).ok_or_else(|| StoreError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    reason: "bad vector key".into(),
                })?;
                self.ahead = Some((id, k, v));
            }
        }
        Ok(self.ahead.as_ref().map(|(id, _, _)| *id))
    }

    /// Move past the next vector: it, decoded (None at the end of the scan).
    fn next(&mut self) -> Result<Option<Vec<f32>>, StoreError> {
        self.peek()?;
        match self.ahead.take() {
            Some((_, k, v)) => decode(&k, &v).map(Some),
            None => Ok(None),
        }
    }
}

/// The applied index recorded in `tree`.
pub(crate) fn applied_in(tree: &Tree) -> Result<u64, StoreError> {
    Ok(tree.get(keys::APPLIED)?.map(|v| be_u64(&v)).unwrap_or(0))
}

/// The state tree a snapshot is installed into while `active` serves.
pub(crate) fn other_state_tree(active: &str) -> &'static str {
    if active == STATE_TREES[0] {
        STATE_TREES[1]
    } else {
        STATE_TREES[0]
    }
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[8 - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    u64::from_be_bytes(buf)
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
