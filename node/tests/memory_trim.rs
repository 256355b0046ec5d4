//! An ingest that drains asks for its freed memory to be handed back: once the node has been
//! quiet for `memory::QUIET`, the trimmer trims, once.

use std::time::{Duration, Instant};

mod common;

/// A node's actors have process-wide names: the tests of this file run one node at a time.
static ONE_NODE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Wait (at most 30 s) for the node's first trim.
async fn first_trim(ctx: &shoal_node::context::NodeContext, after: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while ctx.runtime.memory.trims() == 0 {
        assert!(Instant::now() < deadline, "no trim {after}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_ingest_is_followed_by_one_trim() {
    let _one = ONE_NODE.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let node = common::node_with_collection(&tmp, 384, |_| {}).await;
    let ctx = node.ctx.clone();
    assert_eq!(ctx.runtime.memory.trims(), 0, "nothing was ingested yet");
    let accept = common::accept_documents("job-1", 8, |d| {
        format!("Document number {d} says something about rivers and hills.")
    });
    ctx.apply(accept).await.unwrap();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(120);
    while !ctx.store.pending_documents().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the documents were never embedded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first_trim(&ctx, "after the ingest drained").await;
    // not while the ingest was going on: after it had been quiet for the quiet time
    assert!(start.elapsed() >= shoal_node::memory::QUIET);
    assert_eq!(ctx.runtime.memory.trims(), 1);
    node.stop().await.unwrap();
}

/// A burst of searches asks for the memory their threads freed to be handed back: one trim,
/// once they have been quiet for `memory::QUIET`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_searches_is_followed_by_one_trim() {
    use shoal_api::ShoalService;
    let _one = ONE_NODE.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let node = common::node_with_collection(&tmp, 4, |_| {}).await;
    let ctx = node.ctx.clone();
    let service = shoal_node::service::Node { ctx: ctx.clone() };
    let search = || {
        let req =
            serde_json::from_value(serde_json::json!({"vector": [1.0, 0.0, 0.0, 0.0]})).unwrap();
        service.search("c".into(), req)
    };
    // the new collection's shard loads in a moment
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = search().await {
        assert!(
            Instant::now() < deadline,
            "the collection never answered: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = Instant::now();
    for _ in 0..shoal_node::memory::SEARCHES_PER_REQUEST {
        search().await.unwrap();
    }
    first_trim(&ctx, "after the searches").await;
    assert!(start.elapsed() >= shoal_node::memory::QUIET);
    assert_eq!(ctx.runtime.memory.trims(), 1);
    node.stop().await.unwrap();
}
