//! Moving a store of an older format to this one, at open.

use serde::{Deserialize, Serialize};
use sled::{Batch, Db, Tree};

use crate::codec::{decode, encode, FORMAT_VERSION};
use crate::records::{ChunkRecord, CollectionRecord, CollectionSpecV6};
use crate::{keys, StoreError};

/// Chunks moved per batch.
const BATCH: usize = 1_000;

/// The format that kept each chunk's vector inside its record.
const VECTORS_INSIDE: u8 = 5;
/// The format whose collections had no quantization.
const NO_QUANTIZATION: u8 = 6;

/// Bring a state tree whose format key says `found` to [`FORMAT_VERSION`], one step at a time:
/// from format 5 the move of the vectors, from format 6 the collections' quantization; any other
/// format is refused, untouched.
pub(crate) fn to_current(db: &Db, tree: &Tree, found: &[u8]) -> Result<(), StoreError> {
    match found {
        [v] if *v == FORMAT_VERSION => Ok(()),
        [VECTORS_INSIDE] => {
            vectors_apart(db, tree)?;
            collections_unquantized(db, tree)
        }
        [NO_QUANTIZATION] => collections_unquantized(db, tree),
        other => Err(StoreError::FormatVersion {
            found: other.first().copied().unwrap_or(0),
            expected: FORMAT_VERSION,
        }),
    }
}

/// A collection's record as formats 5 and 6 kept it: its spec without quantization.
#[derive(Serialize, Deserialize)]
struct CollectionRecordV6 {
    name: String,
    uid: u64,
    spec: CollectionSpecV6,
    created_at_ms: u64,
    next_point_id: u64,
    documents: u64,
    chunks: u64,
}

/// Format 6 to 7: every collection's record is rewritten with its spec saying no quantization
/// (floats, as the collection was). The records and the format key go in one batch.
fn collections_unquantized(db: &Db, tree: &Tree) -> Result<(), StoreError> {
    let mut batch = Batch::default();
    let mut moved = 0u64;
    for kv in tree.scan_prefix(keys::COLLECTION_PREFIX) {
        let (k, v) = kv?;
        let old: CollectionRecordV6 = decode(&k, &v)?;
        let record = CollectionRecord {
            name: old.name,
            uid: old.uid,
            spec: old.spec.into(),
            created_at_ms: old.created_at_ms,
            next_point_id: old.next_point_id,
            documents: old.documents,
            chunks: old.chunks,
        };
        batch.insert(k.to_vec(), encode(&record));
        moved += 1;
    }
    batch.insert(keys::FORMAT, &[FORMAT_VERSION]);
    tree.apply_batch(batch)?;
    db.flush()?;
    tracing::info!(
        collections = moved,
        "the store is in format {FORMAT_VERSION}: collections say their quantization"
    );
    Ok(())
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
    tracing::info!("moving the store from format 5 to 6: chunks' vectors under keys of their own");
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
    tree.insert(keys::FORMAT, &[NO_QUANTIZATION])?;
    db.flush()?;
    tracing::info!(
        chunks = moved,
        ms = started.elapsed().as_millis() as u64,
        "the store is in format 6"
    );
    Ok(moved)
}

/// Rewrite `store` as format 6 kept it (tests of the move): every collection's record without
/// its quantization (which must be none: format 6 had no other).
#[cfg(test)]
pub(crate) fn back_to_format_6(store: &crate::Store) {
    let tree = store.tree();
    let collections: Vec<_> = tree
        .scan_prefix(keys::COLLECTION_PREFIX)
        .map(|kv| kv.unwrap())
        .collect();
    for (k, v) in collections {
        let c: CollectionRecord = decode(&k, &v).unwrap();
        assert_eq!(c.spec.quantization, crate::Quantization::None);
        let old = CollectionRecordV6 {
            name: c.name,
            uid: c.uid,
            spec: CollectionSpecV6 {
                dimension: c.spec.dimension,
                hnsw: c.spec.hnsw,
            },
            created_at_ms: c.created_at_ms,
            next_point_id: c.next_point_id,
            documents: c.documents,
            chunks: c.chunks,
        };
        tree.insert(&k, encode(&old)).unwrap();
    }
    tree.insert(keys::FORMAT, &[NO_QUANTIZATION]).unwrap();
    store.flush().unwrap();
}

/// Rewrite `store` as format 5 kept it (tests of the move): its collections as format 6 kept
/// them, and every chunk's vector back inside its record but for the first `left_moved` chunks
/// (in key order), as a move cut short leaves them.
#[cfg(test)]
pub(crate) fn back_to_format_5(store: &crate::Store, left_moved: usize) {
    back_to_format_6(store);
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
