//! HNSW index shards for shoal.
//!
//! A [`Shard`] wraps an hnsw_rs graph with our own point ids. hnsw_rs cannot delete, so deletes are
//! tombstones (the point leaves our point table and is filtered out of every search) and
//! [`Shard::compact`] rebuilds the graph once tombstones pass a threshold. Filtered search switches
//! to an exact scan over the matching points when the filter is selective, because graph search
//! with a selective filter loses recall and slows down. Similarity is cosine on L2-normalised
//! vectors (score = dot product).

mod distance;
mod error;
mod filter;
mod shard;

pub use distance::{dot, normalize, CosineDistance};
pub use error::IndexError;
pub use filter::{Condition, Filter, FilterLimits, Metadata, Range};
pub use shard::{
    FilteredPlan, Hit, OpenReport, Payload, Point, SearchMode, SearchRequest, Shard, ShardParams,
    ShardStats,
};

/// Point ids are chosen by the caller (the storage layer) and never reused within a shard.
pub type PointId = u64;
