//! Whole-state snapshots: export the state to a file, install one in place of the state, and a
//! digest of the state to compare replicas.
//!
//! sled 0.34 has no point-in-time view, so an export is consistent only while nothing applies:
//! callers export with applies paused (the consensus layer builds snapshots on its apply task).
//! An install writes the snapshot into the inactive state tree, makes it durable, then flips the
//! `active` key: a crash before the flip leaves the old state whole (the half-written tree is
//! cleared at the next open), a crash after it the new one.
//!
//! File format: the magic `SHOALSNAP1`, then records `[u32 key length][key][u32 value length]
//! [value]` (big-endian lengths) in key order, then a record with an empty key whose value is the
//! record count and a 64-bit FNV-1a checksum of everything before it (both big-endian u64).

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use sled::Batch;

use crate::store::other_state_tree;
use crate::{keys, Store, StoreError};

const MAGIC: &[u8] = b"SHOALSNAP1";
/// Records written into the new tree per batch while installing.
const INSTALL_BATCH: usize = 1024;

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The applied index of the exported state.
    pub applied: u64,
    pub records: u64,
    pub bytes: u64,
}

/// FNV-1a, 64 bits: enough to tell a damaged transfer or two different states apart.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

struct HashingWriter<W: Write> {
    inner: W,
    hash: Fnv,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    fn put(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.hash.update(data);
        self.bytes += data.len() as u64;
        self.inner.write_all(data)
    }
    fn record(&mut self, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        self.put(&(key.len() as u32).to_be_bytes())?;
        self.put(key)?;
        self.put(&(value.len() as u32).to_be_bytes())?;
        self.put(value)
    }
}

fn io(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Snapshot(format!("{what}: {e}"))
}

fn read_exact_or(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), StoreError> {
    r.read_exact(buf)
        .map_err(|e| StoreError::Snapshot(format!("the snapshot is cut short ({what}): {e}")))
}

impl Store {
    /// Write the whole state to `path` (a temporary file renamed into place). Nothing may apply
    /// meanwhile (see the module docs).
    pub fn export_snapshot(&self, path: &Path) -> Result<SnapshotInfo, StoreError> {
        let tmp = path.with_extension("tmp");
        let file = std::fs::File::create(&tmp).map_err(|e| io("cannot create the snapshot", e))?;
        let mut w = HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            hash: Fnv::new(),
            bytes: 0,
        };
        let tree = self.tree();
        let applied = crate::store::applied_in(&tree)?;
        w.put(MAGIC).map_err(|e| io("write", e))?;
        let mut records = 0u64;
        for kv in tree.iter() {
            let (k, v) = kv?;
            w.record(&k, &v).map_err(|e| io("write", e))?;
            records += 1;
        }
        let mut trailer = records.to_be_bytes().to_vec();
        trailer.extend_from_slice(&w.hash.0.to_be_bytes());
        let HashingWriter {
            mut inner, bytes, ..
        } = w;
        let mut end = Vec::new();
        end.extend_from_slice(&0u32.to_be_bytes());
        end.extend_from_slice(&(trailer.len() as u32).to_be_bytes());
        end.extend_from_slice(&trailer);
        inner.write_all(&end).map_err(|e| io("write", e))?;
        let file = inner
            .into_inner()
            .map_err(|e| io("write", e.into_error()))?;
        file.sync_all().map_err(|e| io("sync", e))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(|e| io("rename", e))?;
        Ok(SnapshotInfo {
            applied,
            records,
            bytes: bytes + end.len() as u64,
        })
    }

    /// Replace the whole state with the snapshot in `path` (checked whole before it replaces
    /// anything). Nothing may apply meanwhile. Returns the applied index of the new state.
    pub fn install_snapshot(&self, path: &Path) -> Result<u64, StoreError> {
        let mut installs = self.inactive_tree.lock();
        let active = self.active_name();
        let target_name = other_state_tree(active);
        let target = self.db.open_tree(target_name)?;
        target.clear()?;
        let file = std::fs::File::open(path).map_err(|e| io("cannot open the snapshot", e))?;
        let mut r = BufReader::with_capacity(1 << 20, file);
        let mut hash = Fnv::new();
        let mut magic = [0u8; MAGIC.len()];
        read_exact_or(&mut r, &mut magic, "header")?;
        if magic != MAGIC {
            return Err(StoreError::Snapshot("not a shoal snapshot".into()));
        }
        hash.update(&magic);
        let mut batch = Batch::default();
        let mut in_batch = 0;
        let mut records = 0u64;
        let mut len = [0u8; 4];
        loop {
            read_exact_or(&mut r, &mut len, "key length")?;
            let klen = u32::from_be_bytes(len) as usize;
            if klen > 1 << 16 {
                return Err(StoreError::Snapshot(format!("a key of {klen} bytes")));
            }
            let mut key = vec![0u8; klen];
            read_exact_or(&mut r, &mut key, "key")?;
            let mut vlen_b = [0u8; 4];
            read_exact_or(&mut r, &mut vlen_b, "value length")?;
            let vlen = u32::from_be_bytes(vlen_b) as usize;
            if vlen > 1 << 30 {
                return Err(StoreError::Snapshot(format!("a record of {vlen} bytes")));
            }
            let mut value = vec![0u8; vlen];
            read_exact_or(&mut r, &mut value, "value")?;
            if klen == 0 {
                // The trailer: record count and checksum of everything before it.
                if value.len() != 16 {
                    return Err(StoreError::Snapshot("a damaged trailer".into()));
                }
                let count = u64::from_be_bytes(value[..8].try_into().unwrap_or_default());
                let sum = u64::from_be_bytes(value[8..].try_into().unwrap_or_default());
                if count != records || sum != hash.0 {
                    return Err(StoreError::Snapshot(format!(
                        "the snapshot is damaged: {records} records (trailer says {count}), checksum {:016x} (trailer says {sum:016x})",
                        hash.0
                    )));
                }
                break;
            }
            hash.update(&len);
            hash.update(&key);
            hash.update(&vlen_b);
            hash.update(&value);
            batch.insert(key, value);
            in_batch += 1;
            records += 1;
            if in_batch >= INSTALL_BATCH {
                target.apply_batch(std::mem::take(&mut batch))?;
                in_batch = 0;
            }
        }
        target.apply_batch(batch)?;
        match target.get(keys::FORMAT)? {
            // (a backup made by the previous format is moved to this one before it is the state)
            Some(v) => {
                if let Err(e) = crate::migrate::to_current(&self.db, &target, &v) {
                    target.clear()?;
                    return Err(e);
                }
            }
            None => {
                target.clear()?;
                return Err(StoreError::Snapshot(
                    "the snapshot has no format record".into(),
                ));
            }
        }
        // Durable before it becomes the state; then the flip, durable too.
        self.db.flush()?;
        self.meta
            .insert(keys::ACTIVE_STATE, target_name.as_bytes())?;
        self.db.flush()?;
        // The replaced state stays on disk until [`Store::clear_replaced_state`] (reads that
        // began on it may still be running) or the next open.
        *self.tree.write() = target;
        *installs += 1;
        self.applied_index()
    }

    /// How many snapshots this store has installed since it was opened.
    pub fn installs(&self) -> u64 {
        *self.inactive_tree.lock()
    }

    /// Clear the state tree that install number `install` replaced (call it once reads that
    /// started before the install are done, for example a minute later; it may take a while, and
    /// runs beside applies). Nothing happens if another install came after it (the inactive tree
    /// is then one that reads may still be using).
    pub fn clear_replaced_state(&self, install: u64) -> Result<(), StoreError> {
        let installs = self.inactive_tree.lock();
        if *installs != install {
            return Ok(());
        }
        let inactive = other_state_tree(self.active_name());
        let tree = self.db.open_tree(inactive)?;
        if !tree.is_empty() {
            tree.clear()?;
        }
        Ok(())
    }

    /// A digest of the whole state (every key and value): two replicas that applied the same log
    /// to the same index have equal digests.
    pub fn digest(&self) -> Result<(u64, String), StoreError> {
        self.digest_where(|_| true)
    }

    /// A digest of the data (collections, documents, chunks, jobs) without the log position and
    /// membership: a node restored from a backup has the data digest its source had when the
    /// backup was taken.
    pub fn data_digest(&self) -> Result<(u64, String), StoreError> {
        self.digest_where(|k| k != keys::APPLIED && k != keys::RAFT_META)
    }

    fn digest_where(&self, keep: impl Fn(&[u8]) -> bool) -> Result<(u64, String), StoreError> {
        let tree = self.tree();
        let applied = crate::store::applied_in(&tree)?;
        let mut a = Fnv::new();
        let mut b = Fnv(0x6c62_272e_07bb_0142);
        let mut n = 0u64;
        for kv in tree.iter() {
            let (k, v) = kv?;
            if !keep(&k) {
                continue;
            }
            for h in [&mut a, &mut b] {
                h.update(&(k.len() as u32).to_be_bytes());
                h.update(&k);
                h.update(&(v.len() as u32).to_be_bytes());
                h.update(&v);
            }
            n += 1;
        }
        Ok((applied, format!("{:016x}{:016x}-{n}", a.0, b.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FORMAT_VERSION;
    use crate::{CollectionSpec, Command, HnswParams, WithVectors};

    fn create(name: &str) -> Command {
        Command::CreateCollection {
            name: name.into(),
            spec: CollectionSpec {
                dimension: 2,
                hnsw: HnswParams::default(),
                quantization: Default::default(),
                vectors_on_disk: false,
            },
            at_ms: 1,
        }
    }

    #[test]
    fn a_backup_of_format_5_is_moved_to_this_format_as_it_is_restored() {
        use crate::{ChunkInput, DocumentChunks, DocumentInput};
        let dir = tempfile::tempdir().unwrap();
        let source = Store::temporary().unwrap();
        source.apply(1, &create("c")).unwrap();
        let docs = (0..4)
            .map(|i| DocumentInput {
                id: format!("d{i}"),
                text: "t".into(),
                metadata_json: "{}".into(),
                sections: Vec::new(),
            })
            .collect();
        let accept = Command::AcceptDocuments {
            collection: "c".into(),
            job_id: "j".into(),
            documents: docs,
            staged_parts: 0,
            at_ms: 2,
        };
        source.apply(2, &accept).unwrap();
        for i in 0..4u64 {
            let chunks = Command::StoreChunks {
                collection: "c".into(),
                node: 1,
                documents: vec![DocumentChunks {
                    doc_id: format!("d{i}"),
                    version: 2,
                    chunks: vec![ChunkInput {
                        text: format!("chunk {i}"),
                        start: 0,
                        end: 7,
                        pages: None,
                        section: None,
                        vector: vec![i as f32, 1.0],
                    }],
                }],
                at_ms: 3,
            };
            source.apply(3 + i, &chunks).unwrap();
        }
        let (points, _) = source.points_at("c", None, WithVectors::All).unwrap();
        let digest = source.digest().unwrap();
        crate::migrate::back_to_format_5(&source, 0);
        let path = dir.path().join("old-backup");
        source.export_snapshot(&path).unwrap();

        let target = Store::open(&dir.path().join("t"), Default::default()).unwrap();
        assert_eq!(target.install_snapshot(&path).unwrap(), 6);
        assert_eq!(
            target.points_at("c", None, WithVectors::All).unwrap().0,
            points
        );
        assert_eq!(
            target.tree().get(keys::FORMAT).unwrap().unwrap().as_ref(),
            [FORMAT_VERSION]
        );
        assert_eq!(target.digest().unwrap(), digest, "the same state as before");
    }

    #[test]
    fn a_snapshot_installs_whole_and_a_damaged_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let source = Store::temporary().unwrap();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            source.apply(i as u64 + 1, &create(name)).unwrap();
        }
        let path = dir.path().join("snap");
        let info = source.export_snapshot(&path).unwrap();
        assert_eq!(info.applied, 3);

        let target = Store::open(&dir.path().join("t"), Default::default()).unwrap();
        target.apply(1, &create("old")).unwrap();
        // damaged: one byte flipped in the middle
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        let bad = dir.path().join("bad");
        std::fs::write(&bad, &bytes).unwrap();
        assert!(matches!(
            target.install_snapshot(&bad),
            Err(StoreError::Snapshot(_))
        ));
        // cut short
        std::fs::write(&bad, &bytes[..bytes.len() - 9]).unwrap();
        assert!(target.install_snapshot(&bad).is_err());
        assert!(
            target.collection("old").unwrap().is_some(),
            "nothing changed"
        );

        assert_eq!(target.install_snapshot(&path).unwrap(), 3);
        assert!(target.collection("old").unwrap().is_none());
        assert_eq!(target.digest().unwrap(), source.digest().unwrap());
        // the flip survives a reopen, and the replaced state is gone
        drop(target);
        let reopened = Store::reopen(&dir.path().join("t")).unwrap();
        assert_eq!(reopened.digest().unwrap(), source.digest().unwrap());
        let names: Vec<String> = reopened
            .collections()
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        // and it takes the next command as a replica would
        reopened.apply(4, &create("d")).unwrap();
        source.apply(4, &create("d")).unwrap();
        assert_eq!(reopened.digest().unwrap(), source.digest().unwrap());
    }
}
