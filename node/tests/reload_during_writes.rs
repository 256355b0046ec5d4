//! A shard actor that restarts while writes go on loads its points off the apply thread, as of
//! some applied index, and then replays the changes after that index (skipping those before):
//! once the writes stop and the index catches up, the shard must hold exactly the stored points,
//! each with its document's metadata and vector as the store has them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use rand::SeedableRng;
use shoal_index::{SearchMode, SearchRequest};
use shoal_node::actors::supervisor::SupervisorMsg;
use shoal_storage::{Command, DocumentChunks, DocumentInput, Outcome};

const DIM: usize = 8;
const DOCS: usize = 30;

/// Collection `c`'s shard once it has loaded (at most 60 s).
async fn loaded_shard(ctx: &shoal_node::context::NodeContext) -> Arc<shoal_index::Shard> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // (no slot yet right after the collection is made: its shard actor is being started)
        let slot = ctx
            .actors
            .shards
            .get_loaded("c", Duration::from_secs(1))
            .await;
        if let Some(shard) = slot.and_then(|s| s.shard) {
            return shard;
        }
        assert!(Instant::now() < deadline, "the shard did not load in 60 s");
        // pacing between looks (get_loaded itself returns at once while there is no slot)
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_reloaded_while_writes_go_on_ends_equal_to_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let node = common::node_with_collection(&tmp, DIM as u32, |c| {
        // restarted at once, and dumped often, so that reloads read dumps as well as the store
        c.supervisor.restart_base_ms = 5;
        c.supervisor.restart_max_ms = 20;
        c.index.persist_interval_ms = 30;
        // The test stores every chunk itself: no ingest worker embeds the documents (its vectors
        // would not fit the collection, and its refusal would turn the test's stores stale).
        c.ingest.workers = 0;
    })
    .await;
    let ctx = node.ctx.clone();
    let loads = || {
        ["dump", "rebuilt"]
            .iter()
            .map(|s| {
                ctx.runtime
                    .metrics
                    .index_loads
                    .with_label_values(&["c", s])
                    .get()
            })
            .sum::<u64>()
    };
    // (the new collection's first load is not counted)
    loaded_shard(&ctx).await;
    let loads_before = loads();

    // The shard actor panics every few milliseconds while the writer runs its first 30 rounds:
    // each restart loads the shard while commands go on.
    let writing = Arc::new(AtomicBool::new(true));
    let restarter = tokio::spawn({
        let supervisor = node.supervisor.clone();
        let writing = writing.clone();
        async move {
            let mut panics = 0u32;
            while writing.load(Ordering::Acquire) {
                let asked = supervisor
                    .call(
                        |reply| SupervisorMsg::Panic("shard-c".into(), reply),
                        Some(Duration::from_secs(5)),
                    )
                    .await;
                if matches!(asked, Ok(ractor::rpc::CallResult::Success(Ok(())))) {
                    panics += 1;
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            panics
        }
    });

    // Documents accepted again and again (their metadata names the round), their chunks stored,
    // and some deleted.
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for round in 0..40u64 {
        if round == 30 {
            // The last rounds go on after the last restart: a load heals what an earlier replay
            // got wrong, so what the last actor replays after its load must be right as well.
            writing.store(false, Ordering::Release);
        }
        let accept = Command::AcceptDocuments {
            collection: "c".into(),
            job_id: format!("job-{round}"),
            documents: (0..DOCS)
                .map(|d| DocumentInput {
                    id: format!("d{d}"),
                    text: format!("document {d} round {round}"),
                    metadata_json: format!(r#"{{"round":{round}}}"#),
                    sections: Vec::new(),
                })
                .collect(),
            staged_parts: 0,
            at_ms: 2,
        };
        ctx.apply(accept).await.unwrap();
        for d in 0..DOCS {
            let doc = ctx.store.document("c", &format!("d{d}")).unwrap();
            let chunks = common::random_chunks(&mut rng, DIM);
            let stored = ctx
                .apply(Command::StoreChunks {
                    collection: "c".into(),
                    node: ctx.node_id(),
                    documents: vec![DocumentChunks {
                        doc_id: format!("d{d}"),
                        version: doc.version,
                        chunks,
                    }],
                    at_ms: 3,
                })
                .await
                .unwrap();
            assert!(
                matches!(&stored.outcome, Outcome::ChunksStored { stored, .. } if stored == &[format!("d{d}")]),
                "round {round}: d{d}'s chunks were not stored: {:?}",
                stored.outcome
            );
        }
        for victim in rand::seq::index::sample(&mut rng, DOCS, 3) {
            ctx.apply(Command::DeleteDocument {
                collection: "c".into(),
                doc_id: format!("d{victim}"),
                at_ms: 4,
            })
            .await
            .unwrap();
        }
    }
    let panics = restarter.await.unwrap();

    // The last restart's load and the replay after it: the index catches up with the store.
    let applied = ctx.store.applied_index().unwrap();
    assert!(
        ctx.watermark
            .wait_for(applied, Duration::from_secs(60))
            .await,
        "the index did not catch up with the store within 60 s"
    );
    let shard = loaded_shard(&ctx).await;
    let reloads = loads() - loads_before;
    // (counted: the loads after each panic, the last one's perhaps after the writes stopped)
    println!("{panics} panics, {reloads} loads during the writes");
    assert!(
        panics >= 5 && reloads >= 5,
        "too few reloads during the writes to test anything ({panics} panics, {reloads} loads)"
    );

    // What a load from scratch would hold now ...
    let stored: HashMap<u64, shoal_storage::StoredPoint> = ctx
        .store
        .points("c")
        .unwrap()
        .into_iter()
        .map(|p| (p.id, p))
        .collect();
    assert!(!stored.is_empty());
    // ... and what the shard holds: every live point, by an exact search for each stored vector.
    let all = shard
        .search(&SearchRequest {
            vector: &stored.values().next().unwrap().vector,
            k: 1_000_000,
            filter: None,
            mode: SearchMode::Exact,
            ef: None,
            max_scan: None,
        })
        .unwrap();
    let held: HashMap<u64, _> = all.into_iter().map(|h| (h.id, h.payload)).collect();
    let mut missing: Vec<u64> = stored
        .keys()
        .filter(|id| !held.contains_key(id))
        .copied()
        .collect();
    let mut extra: Vec<u64> = held
        .keys()
        .filter(|id| !stored.contains_key(id))
        .copied()
        .collect();
    missing.sort_unstable();
    extra.sort_unstable();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "after {reloads} reloads: stored points the shard lacks {missing:?}, points it holds that are not stored {extra:?}"
    );
    for (id, p) in &stored {
        let payload = &held[id];
        assert_eq!(payload.doc_id, p.doc_id, "point {id}'s document");
        let metadata: serde_json::Value = serde_json::from_str(&p.metadata_json).unwrap();
        assert_eq!(
            serde_json::Value::Object(payload.metadata.clone()),
            metadata,
            "point {id} of {} carries stale metadata",
            p.doc_id
        );
        // its own vector finds it first, at distance 0
        let nearest = shard
            .search(&SearchRequest {
                vector: &p.vector,
                k: 1,
                filter: None,
                mode: SearchMode::Exact,
                ef: None,
                max_scan: None,
            })
            .unwrap();
        assert_eq!(nearest[0].id, *id, "point {id}'s vector in the shard");
        assert!(
            nearest[0].score > 0.9999,
            "point {id}'s vector in the shard"
        );
    }
    node.stop().await.unwrap();
}
