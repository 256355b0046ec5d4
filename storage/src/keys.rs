//! Key layout of the sled tree that holds the state (of consensus group 0).
//!
//! Keeping everything in one tree lets [`crate::Store::apply`] commit each command as one atomic batch.
//!
//! | key | value |
//! |---|---|
//! | `m/format` | the layout's format version (1 byte; see [`crate::FORMAT_VERSION`]) |
//! | `m/applied` | index of the last applied command (u64 big-endian) |
//! | `m/raft` | the consensus layer's record of the last applied entry (opaque bytes, written in the same batch) |
//! | `m/uid` | last collection uid handed out (u64 big-endian) |
//! | `c/{name}` | [`crate::CollectionRecord`] |
//! | `d/{uid}/{doc id}` | [`crate::DocumentRecord`] |
//! | `p/{uid}/{point id}` | [`crate::ChunkRecord`] (the chunk's text and where it is) |
//! | `v/{uid}/{point id}` | the chunk's vector (`Vec<f32>`), written and removed with its record |
//! | `j/{job id}` | [`crate::JobRecord`] |
//! | `r/{uid}/{job id}` | (empty) the job is running: found when its collection is dropped |
//! | `s/{job id}/{part}` | [`crate::StagedPart`]: documents of a request too large for one log entry |
//! | `a/secret` | the secret the cluster signs its own tokens with |
//! | `a/u/{name}` | [`crate::UserRecord`] |
//! | `a/k/{id}` | [`crate::ApiKeyRecord`] |
//!
//! The state lives in one of two trees (`g0/state-a`, `g0/state-b`); the `g0/meta` tree's
//! `active` key names the current one. The group's Raft log is in `g0/log` and `g0/log-meta`. A snapshot is installed into the other tree, made durable, and then the
//! `active` key is flipped: a crash at any point leaves one whole state.
//!
//! Collection uids (not names) prefix documents and points, so a dropped collection's leftovers can
//! never leak into a new collection of the same name.

use crate::PointId;

pub(crate) const FORMAT: &[u8] = b"m/format";
pub(crate) const APPLIED: &[u8] = b"m/applied";
pub(crate) const LAST_UID: &[u8] = b"m/uid";
pub(crate) const RAFT_META: &[u8] = b"m/raft";
/// In the `meta` tree: the name of the active state tree.
pub(crate) const ACTIVE_STATE: &[u8] = b"active";

pub(crate) fn collection(name: &str) -> Vec<u8> {
    [b"c/".as_slice(), name.as_bytes()].concat()
}

pub(crate) const COLLECTION_PREFIX: &[u8] = b"c/";

pub(crate) fn documents_prefix(uid: u64) -> Vec<u8> {
    [b"d/".as_slice(), &uid.to_be_bytes(), b"/"].concat()
}

pub(crate) fn document(uid: u64, doc_id: &str) -> Vec<u8> {
    [documents_prefix(uid).as_slice(), doc_id.as_bytes()].concat()
}

pub(crate) fn points_prefix(uid: u64) -> Vec<u8> {
    [b"p/".as_slice(), &uid.to_be_bytes(), b"/"].concat()
}

pub(crate) fn point(uid: u64, id: PointId) -> Vec<u8> {
    [points_prefix(uid).as_slice(), &id.to_be_bytes()].concat()
}

pub(crate) fn vectors_prefix(uid: u64) -> Vec<u8> {
    [b"v/".as_slice(), &uid.to_be_bytes(), b"/"].concat()
}

pub(crate) fn vector(uid: u64, id: PointId) -> Vec<u8> {
    [vectors_prefix(uid).as_slice(), &id.to_be_bytes()].concat()
}

/// The vector's key of the chunk under `point_key` (`p/...` -> `v/...`).
pub(crate) fn vector_of_point(point_key: &[u8]) -> Option<Vec<u8>> {
    let rest = point_key.strip_prefix(b"p")?;
    Some([b"v".as_slice(), rest].concat())
}

pub(crate) const POINT_PREFIX: &[u8] = b"p/";

pub(crate) fn point_id_from_key(key: &[u8]) -> Option<PointId> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

pub(crate) const JOB_PREFIX: &[u8] = b"j/";

pub(crate) fn running_jobs_prefix(uid: u64) -> Vec<u8> {
    [b"r/".as_slice(), &uid.to_be_bytes(), b"/"].concat()
}

pub(crate) fn running_job(uid: u64, id: &str) -> Vec<u8> {
    [running_jobs_prefix(uid).as_slice(), id.as_bytes()].concat()
}

pub(crate) fn job(id: &str) -> Vec<u8> {
    [b"j/".as_slice(), id.as_bytes()].concat()
}

pub(crate) fn staged_prefix(job_id: &str) -> Vec<u8> {
    [b"s/".as_slice(), job_id.as_bytes(), b"/"].concat()
}

pub(crate) fn staged(job_id: &str, part: u32) -> Vec<u8> {
    [staged_prefix(job_id).as_slice(), &part.to_be_bytes()].concat()
}

pub(crate) const STAGED_PREFIX: &[u8] = b"s/";

pub(crate) const SIGNING_SECRET: &[u8] = b"a/secret";
pub(crate) const USER_PREFIX: &[u8] = b"a/u/";
pub(crate) const API_KEY_PREFIX: &[u8] = b"a/k/";

pub(crate) fn user(name: &str) -> Vec<u8> {
    [USER_PREFIX, name.as_bytes()].concat()
}

pub(crate) fn api_key(id: &str) -> Vec<u8> {
    [API_KEY_PREFIX, id.as_bytes()].concat()
}
