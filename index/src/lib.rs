//! HNSW index shards for shoal.
//!
//! A [`Shard`] holds an HNSW graph of shoal's own (`graph`: lock-free searches beside inserts,
//! contiguous aligned vectors, SIMD distances) with the caller's point ids. Deletes are
//! tombstones (the point leaves our point table and its node is flagged: walked through, never
//! returned) and [`Shard::compact`] rebuilds the graph once tombstones pass a threshold. Filtered search switches
//! to an exact scan over the matching points when the filter is selective, because graph search
//! with a selective filter loses recall and slows down. Similarity is cosine on L2-normalised
//! vectors (score = dot product).

mod distance;
mod error;
mod filter;
mod fusion;
mod graph;
mod keyword;
mod live;
mod payload_index;
mod shard;

pub use distance::{dot, l2_squared, normalize};
pub use error::IndexError;
pub use filter::{Condition, Filter, FilterLimits, Metadata, Range};
pub use fusion::{fuse, FusedHit, Fusion};
pub use graph::{Metric, Quantization, ScanBy};
pub use shard::{
    FilteredPlan, Hit, OpenReport, Payload, Point, SearchMode, SearchRequest, Shard, ShardDump,
    ShardMemory, ShardParams, ShardStats,
};

/// Point ids are chosen by the caller (the storage layer) and never reused within a shard.
pub type PointId = u64;
