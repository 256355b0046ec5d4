//! Moving a store of an older format to this one, at open.

use serde::{Deserialize, Serialize};
use sled::{Batch, Db, Tree};

use crate::codec::{decode, encode, FORMAT_VERSION};
use crate::records::ChunkRecord;
use crate::{keys, StoreError};

/// Chunks moved per batch.
const BATCH: usize = 1_000;

/// The format that kept each chunk's vector inside its record.
const VECTORS_INSIDE: u8 = 5;

/// Bring a state tree whose format key says `found` to [`FORMAT_VERSION`]: nothing to do for this
/// format, the move of the vectors for format 5; any other format is refused.
pub(crate) fn to_current(db: &Db, tree: &Tree, found: &[u8]) -> Result<(), StoreError> {
    match found {
        [v] if *v == FORMAT_VERSION => Ok(()),
        [VECTORS_INSIDE] => vectors_apart(db, tree).map(|_| ()),
        other => Err(StoreError::FormatVersion {
            found: other.first().copied().unwrap_or(0),
            expected: FORMAT_VERSION,
        }),
    }
}

/// A chunk as format 5 kept it: the vector inside the record.
#[derive(Serialize, Deserialize)]
struct ChunkWithVector {
    doc_id: String,
    chunk_index: u32,
    text: String,
    start: u32,
    end: u32,
    pages: Option<(u32, u32)>,
    section: Option<String>,
    vector: Vec<f32>,
}

/// Format 5 to 6: each chunk's vector moves out of its record to a key of its own. The records
/// are rewritten in batches, a chunk's record and its vector in the same batch; a chunk whose
/// vector key exists is already moved, so a move cut short (the process killed) goes on where
/// it stopped at the next open. The format key says 6 only once every chunk is moved. Answers
/// how many chunks it moved.
pub(crate) fn vectors_apart(db: &Db, tree: &Tree) -> Result<u64, StoreError> {
    tracing::info!("moving the store from format 5 to {FORMAT_VERSION}: chunks' vectors under keys of their own");
    let started = std::time::Instant::now();
    let mut moved = 0u64;
    let mut batch = Batch::default();
    let mut in_batch = 0;
    for kv in tree.scan_prefix(keys::POINT_PREFIX) {
        let (k, v) = kv?;
        let vector_key = keys::vector_of_point(&k).ok_or_else(|| StoreError::Corrupt {
            key: String::from_utf8_lossy(&k).into_owned(),
            reason: "bad point key".into(),
        })?;
        if tree.contains_key(&vector_key)? {
            continue;
        }
        let old: ChunkWithVector = decode(&k, &v)?;
        let record = ChunkRecord {
            doc_id: old.doc_id,
            chunk_index: old.chunk_index,
            text: old.text,
            start: old.start,
            end: old.end,
            pages: old.pages,
            section: old.section,
        };
        batch.insert(k.to_vec(), encode(&record));
        batch.insert(vector_key, encode(&old.vector));
        in_batch += 1;
        moved += 1;
        if in_batch == BATCH {
            tree.apply_batch(std::mem::take(&mut batch))?;
            in_batch = 0;
        }
    }
    if in_batch > 0 {
        tree.apply_batch(batch)?;
    }
    db.flush()?;
    tree.insert(keys::FORMAT, &[FORMAT_VERSION])?;
    db.flush()?;
    tracing::info!(
        chunks = moved,
        ms = started.elapsed().as_millis() as u64,
        "the store is in format {FORMAT_VERSION}"
    );
    Ok(moved)
}

/// Rewrite `store` as format 5 kept it (tests of the move): every chunk's vector back inside its
/// record but for the first `left_moved` chunks (in key order), as a move cut short leaves them.
#[cfg(test)]
pub(crate) fn back_to_format_5(store: &crate::Store, left_moved: usize) {
    let tree = store.tree();
    let points: Vec<_> = tree
        .scan_prefix(keys::POINT_PREFIX)
        .map(|kv| kv.unwrap())
        .collect();
    for (k, v) in points.into_iter().skip(left_moved) {
        let c: ChunkRecord = decode(&k, &v).unwrap();
        let vector_key = keys::vector_of_point(&k).unwrap();
        let vector: Vec<f32> =
            decode(&vector_key, &tree.get(&vector_key).unwrap().unwrap()).unwrap();
        let old = ChunkWithVector {
            doc_id: c.doc_id,
            chunk_index: c.chunk_index,
            text: c.text,
            start: c.start,
            end: c.end,
            pages: c.pages,
            section: c.section,
            vector,
        };
        tree.insert(&k, encode(&old)).unwrap();
        tree.remove(vector_key).unwrap();
    }
    tree.insert(keys::FORMAT, &[VECTORS_INSIDE]).unwrap();
    store.flush().unwrap();
}
