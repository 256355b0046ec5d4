//! Writes whose futures are dropped or whose tasks are aborted at random points must leave the
//! store and the index in agreement: every command applied whole or not at all, every point id
//! used once, every stored point in the shard and nothing else.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

mod common;

use rand::{Rng, SeedableRng};
use shoal_storage::{Command, DocumentChunks};

const DIM: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_writes_leave_store_and_index_in_agreement() {
    let tmp = tempfile::tempdir().unwrap();
    let node = common::node_with_collection(&tmp, DIM as u32, |_| {}).await;
    let ctx = node.ctx.clone();

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let docs = 80;
    let mut tasks = Vec::new();
    for round in 0..20u64 {
        // Accept every document again (a new version each round), then store chunks for it.
        let accept = common::accept_documents(&format!("job-{round}"), docs, |d| {
            format!("document {d} round {round}")
        });
        ctx.apply(accept).await.unwrap();
        for d in 0..docs {
            // a delete still in flight may have removed it since the accept
            let Ok(doc) = ctx.store.document("c", &format!("d{d}")) else {
                continue;
            };
            let version = doc.version;
            let chunks = common::random_chunks(&mut rng, DIM);
            let command = Command::StoreChunks {
                collection: "c".into(),
                node: ctx.node_id(),
                documents: vec![DocumentChunks {
                    doc_id: format!("d{d}"),
                    version,
                    chunks,
                }],
                at_ms: 3,
            };
            let c = ctx.clone();
            let delay = Duration::from_micros(rng.gen_range(0..1_500));
            match rng.gen_range(0..4) {
                // the request's future is dropped after a random delay
                0 => tasks.push(tokio::spawn(async move {
                    let _ = tokio::time::timeout(delay, c.apply(command)).await;
                })),
                // the task is aborted before it ever runs: the command never reaches the store
                1 => {
                    let t = tokio::spawn(async move {
                        let _ = c.apply(command).await;
                    });
                    t.abort();
                    tasks.push(t);
                }
                // the task is aborted after a random delay
                2 => {
                    let t = tokio::spawn(async move {
                        let _ = c.apply(command).await;
                    });
                    let abort = t.abort_handle();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        abort.abort();
                    });
                    tasks.push(t);
                }
                // completes
                _ => tasks.push(tokio::spawn(async move {
                    let _ = c.apply(command).await;
                })),
            }
        }
        // deletes now and then, dropped or aborted too
        for _ in 0..2 {
            let c = ctx.clone();
            let victim = format!("d{}", rng.gen_range(0..docs));
            let delay = Duration::from_micros(rng.gen_range(0..2_000));
            let delete = Command::DeleteDocument {
                collection: "c".into(),
                doc_id: victim,
                at_ms: 4,
            };
            let t = tokio::spawn(async move {
                let _ = tokio::time::timeout(delay, c.apply(delete)).await;
            });
            if rng.gen_bool(0.5) {
                let abort = t.abort_handle();
                let d = Duration::from_micros(rng.gen_range(0..1_000));
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    abort.abort();
                });
            }
            tasks.push(t);
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    // The node's own ingest workers embed the documents whose chunks were never stored (their
    // stores were aborted first): wait until none is pending and the log stands still, then let
    // the index catch up with the store (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let applied = loop {
        let before = ctx.store.applied_index().unwrap();
        let pending = ctx.store.pending_documents().unwrap().len();
        if pending == 0 {
            assert!(
                ctx.watermark
                    .wait_for(before, Duration::from_secs(30))
                    .await,
                "the index did not catch up within 30 s"
            );
            if ctx.store.applied_index().unwrap() == before {
                break before;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{pending} documents still pending after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // every command that reached the store took one log index: the applied index counts them
    // (the create, 20 accepts, and the chunk stores and deletes that were not aborted first)
    assert!(applied > 21, "{applied}");

    // Store: every point id belongs to exactly one live document version, and its chunk says so.
    let coll = ctx.store.collection("c").unwrap().unwrap();
    let mut owner: HashMap<u64, String> = HashMap::new();
    for d in 0..docs {
        let id = format!("d{d}");
        let Ok(doc) = ctx.store.document("c", &id) else {
            continue; // deleted
        };
        if let Some(live) = doc.live {
            for p in live.points {
                if let Some(other) = owner.insert(p, id.clone()) {
                    panic!("point {p} is listed by {other} and {id}");
                }
                let chunk = ctx.store.chunk(coll.uid, p).unwrap();
                let chunk = chunk.unwrap_or_else(|| panic!("point {p} of {id} has no chunk"));
                assert_eq!(
                    chunk.doc_id, id,
                    "point {p} of {id} holds another document's chunk"
                );
            }
        }
    }
    let stored: HashSet<u64> = ctx
        .store
        .points("c")
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    let listed: HashSet<u64> = owner.keys().copied().collect();
    assert_eq!(
        stored, listed,
        "stored chunks that no document lists, or the reverse"
    );
    assert_eq!(
        coll.chunks as usize,
        stored.len(),
        "the collection's chunk count is off"
    );

    // Index: exactly the stored points.
    let shard = ctx
        .actors
        .shards
        .get("c")
        .and_then(|s| s.shard)
        .expect("shard loaded");
    let stats = shard.stats();
    let missing: Vec<u64> = stored
        .iter()
        .copied()
        .filter(|p| !shard.contains(*p))
        .collect();
    assert!(
        missing.is_empty(),
        "stored points missing from the index: {missing:?}"
    );
    assert_eq!(
        stats.live_points,
        stored.len(),
        "the index holds points the store does not"
    );
    node.stop().await.unwrap();
}
