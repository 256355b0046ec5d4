//! The Raft log on sled: entries in the group's own tree of the store's database (so one `fsync`
//! covers the log and the state), the vote and the purge point beside them.
//!
//! Appends are written at once and made durable by a flusher thread, which tells openraft, in
//! order, once they are on disk. (openraft 0.9 waits for each append before the next, so on the
//! leader every client write costs one fsync; ingest keeps that cheap by putting a whole batch's
//! chunks in one entry. A replicated append carries many entries and costs one.)

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::mpsc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError};
use shoal_storage::{LogTree, Store, StoreError};

use crate::types::{decode, encode, Entry, LogId, NodeId, StorageError, TypeConfig, Vote};

pub(crate) const VOTE: &str = "vote";
pub(crate) const PURGED: &str = "purged";
const COMMITTED: &str = "committed";

fn io_error(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())).into()
}

fn read_logs(e: impl ToString) -> StorageError {
    io_error(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_logs(e: impl ToString) -> StorageError {
    io_error(ErrorSubject::Logs, ErrorVerb::Write, e)
}

/// Run `f` with the log on the blocking pool and wait for it. sled writes take a lock of the
/// whole process that waits for any flush under way (its disk write included), and every read
/// waits behind a waiting write: done on an async worker, a log write could hold that worker, and
/// every request queued on it, for as long as the disk takes.
/// Its failures (and the blocking task's) become `error`'s storage error.
async fn off_worker<T: Send + 'static>(
    log: &LogTree,
    error: impl Fn(String) -> StorageError + Send,
    f: impl FnOnce(&LogTree) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StorageError> {
    let log = log.clone();
    match tokio::task::spawn_blocking(move || f(&log)).await {
        Ok(r) => r.map_err(|e| error(e.to_string())),
        Err(e) => Err(error(e.to_string())),
    }
}

/// An append waiting for its flush.
struct Pending {
    callback: LogFlushed<TypeConfig>,
}

#[derive(Clone)]
pub struct LogStore {
    log: LogTree,
    flusher: mpsc::Sender<Pending>,
}

impl LogStore {
    /// The log of `group` in `store`'s database, with its flusher thread.
    pub fn open(store: &Store, group: u32) -> Result<LogStore, StoreError> {
        let log = store.log(group)?;
        let (tx, rx) = mpsc::channel::<Pending>();
        let flush_log = log.clone();
        std::thread::Builder::new()
            .name(format!("raft-log-{group}"))
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut group = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        group.push(more);
                    }
                    let result = flush_log
                        .flush()
                        .map_err(|e| std::io::Error::other(e.to_string()));
                    for p in group {
                        let r = match &result {
                            Ok(()) => Ok(()),
                            Err(e) => Err(std::io::Error::other(e.to_string())),
                        };
                        p.callback.log_io_completed(r);
                    }
                }
            })
            .map_err(|e| StoreError::Fatal(format!("cannot start the log flusher: {e}")))?;
        Ok(LogStore { log, flusher: tx })
    }

    /// The log's own named values (the node's identity lives there too).
    pub fn tree(&self) -> &LogTree {
        &self.log
    }

    fn read_log_id(&self, name: &str) -> Result<Option<LogId>, StorageError> {
        match self.log.get_meta(name).map_err(read_logs)? {
            Some(b) => Ok(Some(decode(&b).map_err(read_logs)?)),
            None => Ok(None),
        }
    }

    /// Entries held (for status and tests).
    pub fn len(&self) -> usize {
        self.log.len()
    }

    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }
}

/// Bytes of entries one replication request carries at most (a larger entry goes alone): openraft
/// 0.9 gives an append one heartbeat interval to arrive and be made durable.
const APPEND_BYTES: usize = 1 << 20;

impl RaftLogReader<TypeConfig> for LogStore {
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        off_worker(&self.log, read_logs, move |log| {
            log.range_limited(start, end, APPEND_BYTES)
        })
        .await?
        .into_iter()
        .map(|(_, bytes)| decode::<Entry>(&bytes).map_err(read_logs))
        .collect()
    }

    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        off_worker(&self.log, read_logs, move |log| log.range(bounds))
            .await?
            .into_iter()
            .map(|(index, bytes)| {
                let e: Entry = decode(&bytes).map_err(read_logs)?;
                if e.log_id.index != index {
                    return Err(read_logs(format!(
                        "log entry under index {index} says it is {}",
                        e.log_id.index
                    )));
                }
                Ok(e)
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged = self.read_log_id(PURGED)?;
        let last = match self.log.last().map_err(read_logs)? {
            Some((_, bytes)) => Some(decode::<Entry>(&bytes).map_err(read_logs)?.log_id),
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = encode(vote);
        off_worker(
            &self.log,
            |e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e),
            move |log| log.put_meta(VOTE, &vote),
        )
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        match self
            .log
            .get_meta(VOTE)
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Read, e))?
        {
            Some(b) => {
                Ok(Some(decode(&b).map_err(|e| {
                    io_error(ErrorSubject::Vote, ErrorVerb::Read, e)
                })?))
            }
            None => Ok(None),
        }
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not waited for: a committed index lost in a crash is learnt again from the leader.
        let committed = encode(&committed);
        off_worker(&self.log, write_logs, move |log| {
            log.put_meta_lazy(COMMITTED, &committed)
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        match self.log.get_meta(COMMITTED).map_err(read_logs)? {
            Some(b) => decode::<Option<LogId>>(&b).map_err(read_logs),
            None => Ok(None),
        }
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| (e.log_id.index, encode(&e)))
            .collect();
        off_worker(&self.log, write_logs, move |log| log.write(encoded)).await?;
        self.flusher
            .send(Pending { callback })
            .map_err(|_| write_logs("the log flusher has stopped"))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        off_worker(&self.log, write_logs, move |log| {
            log.truncate_from(log_id.index)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let point = encode(&log_id);
        off_worker(&self.log, write_logs, move |log| {
            log.purge_through(log_id.index, (PURGED, &point))
        })
        .await
    }
}
