//! A durable log of opaque entries keyed by index, beside the state in the same sled database
//! (so one `fsync` covers both), plus a few named values (the consensus layer keeps its vote and
//! purge point there). The storage layer knows nothing of what the entries mean.

use std::ops::RangeBounds;

use sled::{Batch, Tree};

use crate::{Store, StoreError};

/// One log of a consensus group: `g{group}/log` holds entries, `g{group}/log-meta` named values.
#[derive(Clone)]
pub struct LogTree {
    db: sled::Db,
    entries: Tree,
    meta: Tree,
    sync_writes: bool,
}

impl Store {
    /// The log of consensus group `group` in this store's database.
    pub fn log(&self, group: u32) -> Result<LogTree, StoreError> {
        Ok(LogTree {
            db: self.db.clone(),
            entries: self.db.open_tree(format!("g{group}/log"))?,
            meta: self.db.open_tree(format!("g{group}/log-meta"))?,
            sync_writes: self.syncs_writes(),
        })
    }
}

impl LogTree {
    /// Append (or overwrite) entries, then make them durable (when the store syncs writes).
    pub fn append(
        &self,
        entries: impl IntoIterator<Item = (u64, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        self.write(entries)?;
        self.flush()
    }

    /// Write entries without waiting for the disk; [`LogTree::flush`] makes them durable (the
    /// consensus layer flushes once for every append that arrived meanwhile).
    pub fn write(
        &self,
        entries: impl IntoIterator<Item = (u64, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        for (index, bytes) in entries {
            batch.insert(&index.to_be_bytes(), bytes);
        }
        self.entries.apply_batch(batch)?;
        Ok(())
    }

    /// Make everything written so far durable (when the store syncs writes).
    pub fn flush(&self) -> Result<(), StoreError> {
        if self.sync_writes {
            self.db.flush()?;
        }
        Ok(())
    }

    /// Set a named value without waiting for the disk.
    pub fn put_meta_lazy(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(name, value)?;
        Ok(())
    }

    /// The entries with indexes in `range`, in order.
    pub fn range(&self, range: impl RangeBounds<u64>) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for kv in self.entries.range(start.to_be_bytes()..) {
            let (k, v) = kv?;
            let index = index_of(&k)?;
            if !range.contains(&index) {
                break;
            }
            out.push((index, v.to_vec()));
        }
        Ok(out)
    }

    /// The entries from `start` (before `end`), in order, stopping once they hold `max_bytes`
    /// (at least one entry is returned when there is one).
    pub fn range_limited(
        &self,
        start: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for kv in self.entries.range(start.to_be_bytes()..) {
            let (k, v) = kv?;
            let index = index_of(&k)?;
            if index >= end || (!out.is_empty() && bytes + v.len() > max_bytes) {
                break;
            }
            bytes += v.len();
            out.push((index, v.to_vec()));
        }
        Ok(out)
    }

    /// The last entry, if any.
    pub fn last(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        match self.entries.last()? {
            Some((k, v)) => Ok(Some((index_of(&k)?, v.to_vec()))),
            None => Ok(None),
        }
    }

    /// Remove every entry at or after `index`, durably.
    pub fn truncate_from(&self, index: u64) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        for k in self.entries.range(index.to_be_bytes()..).keys() {
            batch.remove(k?);
        }
        self.entries.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// Remove every entry up to and including `index`, with `meta` written first (the purge
    /// point), durably.
    pub fn purge_through(&self, index: u64, meta: (&str, &[u8])) -> Result<(), StoreError> {
        self.meta.insert(meta.0, meta.1)?;
        self.db.flush()?;
        let mut batch = Batch::default();
        for k in self.entries.range(..=index.to_be_bytes()).keys() {
            batch.remove(k?);
        }
        self.entries.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Set a named value, durably (always synced: a vote must survive a crash).
    pub fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(name, value)?;
        self.db.flush()?;
        Ok(())
    }

    /// Remove a named value, durably.
    pub fn remove_meta(&self, name: &str) -> Result<(), StoreError> {
        self.meta.remove(name)?;
        self.db.flush()?;
        Ok(())
    }

    pub fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(name)?.map(|v| v.to_vec()))
    }
}

fn index_of(key: &[u8]) -> Result<u64, StoreError> {
    let b: [u8; 8] = key.try_into().map_err(|_| StoreError::Corrupt {
        key: format!("{key:?}"),
        reason: "bad log key".into(),
    })?;
    Ok(u64::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_range_truncate_purge() {
        let store = Store::temporary().unwrap();
        let log = store.log(0).unwrap();
        assert!(log.last().unwrap().is_none());
        log.append((1..=10).map(|i| (i, vec![i as u8]))).unwrap();
        assert_eq!(log.range(3..6).unwrap().len(), 3);
        assert_eq!(log.range(..).unwrap().len(), 10);
        assert_eq!(log.range(9..).unwrap()[0], (9, vec![9]));
        // a byte budget stops early, but always gives one entry
        assert_eq!(log.range_limited(2, 9, 3).unwrap().len(), 3);
        assert_eq!(log.range_limited(2, 9, 0).unwrap().len(), 1);
        assert_eq!(log.range_limited(2, 4, 100).unwrap().len(), 2);
        log.truncate_from(8).unwrap();
        assert_eq!(log.last().unwrap().map(|(i, _)| i), Some(7));
        log.purge_through(3, ("purged", b"3")).unwrap();
        assert_eq!(log.range(..).unwrap().first().map(|(i, _)| *i), Some(4));
        assert_eq!(log.get_meta("purged").unwrap().as_deref(), Some(&b"3"[..]));
        // another group's log is apart
        assert!(store.log(1).unwrap().is_empty());
        assert_eq!(log.len(), 4);
    }
}
