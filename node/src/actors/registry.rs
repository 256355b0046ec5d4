//! Where the node finds its actors' current incarnations: each actor announces itself here when
//! it starts, so callers always reach the live one after a restart.

use std::collections::HashMap;
use std::sync::OnceLock;

use parking_lot::RwLock;
use ractor::ActorRef;

use crate::actors::embedder::{EmbedQueue, EmbedderMsg};
use crate::actors::reranker::RerankerMsg;
use crate::actors::supervisor::SupervisorMsg;
use crate::error::NodeError;
use crate::ingest_queue::IngestQueue;
use crate::shards::ShardRegistry;

pub struct Actors {
    /// Each collection's shard actor and published shard.
    pub shards: ShardRegistry,
    pub embedders: RwLock<HashMap<EmbedQueue, ActorRef<EmbedderMsg>>>,
    pub reranker_actor: RwLock<Option<ActorRef<RerankerMsg>>>,
    /// The documents waiting for the ingest workers (which attach to it).
    pub ingest: IngestQueue,
    pub supervisor: OnceLock<ActorRef<SupervisorMsg>>,
}

impl Actors {
    pub fn new(ingest: IngestQueue) -> Actors {
        Actors {
            shards: ShardRegistry::default(),
            embedders: RwLock::new(HashMap::new()),
            reranker_actor: RwLock::new(None),
            ingest,
            supervisor: OnceLock::new(),
        }
    }

    pub fn supervisor(&self) -> Result<&ActorRef<SupervisorMsg>, NodeError> {
        self.supervisor
            .get()
            .ok_or_else(|| NodeError::NotReady("the node is starting".into()))
    }
}
