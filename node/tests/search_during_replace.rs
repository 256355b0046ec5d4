//! A search that runs while a document's new version is committed but not yet in the shard must
//! still find the document: the store has dropped the old version's chunks (the shard's points
//! for them resolve to nothing) and the shard does not hold the new ones yet. Found by reviewing
//! the chaos checker's rules against the search path.

mod common;

use std::sync::Arc;
use std::time::Duration;

use shoal_api::dto::SearchRequest;
use shoal_api::ShoalService;
use shoal_node::config::Config;
use shoal_storage::{ChunkInput, Command, DocumentChunks, DocumentInput};

const DIM: usize = 8;

fn unit(i: usize) -> Vec<f32> {
    let mut v = vec![0.0; DIM];
    v[i] = 1.0;
    v
}

async fn write_version(ctx: &Arc<shoal_node::context::NodeContext>, text: &str) -> u64 {
    ctx.apply(Command::AcceptDocuments {
        collection: "c".into(),
        job_id: format!("job-{text}"),
        documents: vec![DocumentInput {
            id: "a".into(),
            text: text.into(),
            metadata_json: "{}".into(),
            sections: Vec::new(),
        }],
        staged_parts: 0,
        at_ms: 2,
    })
    .await
    .unwrap();
    let version = ctx.store.document("c", "a").unwrap().version;
    ctx.apply(Command::StoreChunks {
        collection: "c".into(),
        node: ctx.node_id(),
        documents: vec![DocumentChunks {
            doc_id: "a".into(),
            version,
            chunks: vec![ChunkInput {
                text: text.into(),
                start: 0,
                end: text.len() as u32,
                pages: None,
                section: None,
                vector: unit(0),
            }],
        }],
        at_ms: 3,
    })
    .await
    .unwrap()
    .index
}

async fn search(
    service: &shoal_node::service::Node,
) -> Result<shoal_api::dto::SearchResponse, shoal_api::ApiError> {
    search_with(service, "local").await
}

async fn search_with(
    service: &shoal_node::service::Node,
    consistency: &str,
) -> Result<shoal_api::dto::SearchResponse, shoal_api::ApiError> {
    let req: SearchRequest = serde_json::from_value(serde_json::json!({
        "vector": unit(0),
        "top_k": 5,
        "consistency": consistency,
    }))
    .unwrap();
    service.search("c".into(), req).await
}

/// A task on the node's background thread that holds it until released (or for a minute).
struct Hold {
    started: Option<tokio::sync::oneshot::Receiver<()>>,
    release: std::sync::mpsc::Sender<()>,
    done: tokio::task::JoinHandle<Result<(), shoal_node::error::NodeError>>,
}

impl Hold {
    /// Queue the task; returns once it runs when `wait_started`, else at once.
    async fn start(ctx: &Arc<shoal_node::context::NodeContext>, wait_started: bool) -> Hold {
        let mut hold = Hold::queue(ctx);
        if wait_started {
            hold.started().await;
        }
        hold
    }

    fn queue(ctx: &Arc<shoal_node::context::NodeContext>) -> Hold {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let done = {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                ctx.background(move || {
                    let _ = started_tx.send(());
                    let _ = release_rx.recv_timeout(Duration::from_secs(60));
                })
                .await
            })
        };
        Hold {
            started: Some(started_rx),
            release,
            done,
        }
    }

    /// Wait until the task runs.
    async fn started(&mut self) {
        if let Some(rx) = self.started.take() {
            tokio::time::timeout(Duration::from_secs(30), rx)
                .await
                .expect("the hold did not start")
                .unwrap();
        }
    }

    async fn release(self) {
        let _ = self.release.send(());
        self.done.await.unwrap().unwrap();
    }
}

/// Wait until `cond` holds, for at most 30 s.
async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A node's actors have process-wide names: the tests of this file run one node at a time.
static ONE_NODE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A node with collection `c` holding document `a` at "version one", indexed.
async fn node_with_first_version(
    tmp: &tempfile::TempDir,
    configure: impl FnOnce(&mut Config),
) -> shoal_node::RunningNode {
    let node = common::node_with_collection(tmp, DIM as u32, |config| {
        // one background thread (the default): the shard's inserts and deletes run on it
        config.threads.background = 1;
        configure(config);
    })
    .await;
    let first = write_version(&node.ctx, "version one").await;
    assert!(
        node.ctx
            .watermark
            .wait_for(first, Duration::from_secs(30))
            .await,
        "the first version was not indexed"
    );
    node
}

/// Check a search's answer, made while the document was replaced by its version at `second`.
fn check_found(answer: &shoal_api::dto::SearchResponse, second: u64) {
    let texts: Vec<&str> = answer.hits.iter().map(|h| h.text.as_str()).collect();
    assert_eq!(
        texts.len(),
        1,
        "the document was missing from a search at index {} (store at {second}): {texts:?}",
        answer.applied_index
    );
    assert!(
        (texts[0] == "version one" && answer.applied_index < second)
            || (texts[0] == "version two" && answer.applied_index >= second),
        "{texts:?} at index {} (the new version is at {second})",
        answer.applied_index
    );
    assert!(!answer.stale, "{:?}", answer.stale_reason);
}

/// Search while the shard is held; if the search waits, let the shard go on and take its answer.
async fn search_while_held(
    service: Arc<shoal_node::service::Node>,
    hold: Hold,
) -> shoal_api::dto::SearchResponse {
    let mut running = tokio::spawn(async move { search(service.as_ref()).await });
    let early = tokio::time::timeout(Duration::from_millis(500), &mut running).await;
    match early {
        // it answered while the shard was behind: the document must be in it all the same
        Ok(done) => {
            hold.release().await;
            done.unwrap().unwrap()
        }
        // it waits for the shard to catch up: let it
        Err(_) => {
            hold.release().await;
            tokio::time::timeout(Duration::from_secs(30), running)
                .await
                .expect("the search did not finish once the shard could catch up")
                .unwrap()
                .unwrap()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_half_mirrored_still_finds_the_document() {
    let _one = ONE_NODE.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let node = node_with_first_version(&tmp, |_| {}).await;
    let ctx = node.ctx.clone();
    let uid = ctx.store.collection("c").unwrap().unwrap().uid;

    // Hold the thread, commit the new version and let its first change queue behind the hold.
    let first_hold = Hold::start(&ctx, true).await;
    let second = write_version(&ctx, "version two").await;
    wait_until("the shard's first change queued", || {
        ctx.runtime.queued_tasks("background") == 1
    })
    .await;
    // A second hold queues behind that change: the shard makes it, then stops before its next.
    let second_hold = Hold::start(&ctx, false).await;
    wait_until("the second hold queued", || {
        ctx.runtime.queued_tasks("background") == 2
    })
    .await;
    // One thread taking tasks in order: once the second hold runs, the first change is made.
    first_hold.release().await;
    let mut second_hold = second_hold;
    second_hold.started().await;
    assert!(
        ctx.watermark.current_for(uid) < second,
        "the shard mirrored the whole replace while its thread was held"
    );

    let service = Arc::new(shoal_node::service::Node { ctx: ctx.clone() });
    let answer = search_while_held(service, second_hold).await;
    check_found(&answer, second);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_being_replaced_is_found_at_one_version_or_the_other() {
    let _one = ONE_NODE.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let node = node_with_first_version(&tmp, |_| {}).await;
    let ctx = node.ctx.clone();
    let service = Arc::new(shoal_node::service::Node { ctx: ctx.clone() });
    let hits = search(&service).await.unwrap().hits;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].text, "version one");

    // Hold the background thread: the shard cannot mirror the next version until released.
    let hold = Hold::start(&ctx, true).await;
    let second = write_version(&ctx, "version two").await;
    assert!(
        ctx.watermark
            .current_for(ctx.store.collection("c").unwrap().unwrap().uid)
            < second,
        "the shard mirrored the new version while its thread was held"
    );
    // The search runs while the store is ahead of the shard.
    let answer = search_while_held(service, hold).await;
    check_found(&answer, second);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_does_not_catch_up_in_time_gives_a_stale_answer_or_503_for_strong() {
    let _one = ONE_NODE.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let node = node_with_first_version(&tmp, |c| c.cluster.read_wait_ms = 300).await;
    let ctx = node.ctx.clone();
    let hold = Hold::start(&ctx, true).await;
    write_version(&ctx, "version two").await;
    let service = shoal_node::service::Node { ctx: ctx.clone() };
    // the shard stays behind for longer than the read wait
    let local = search(&service).await.unwrap();
    assert!(
        local.hits.is_empty(),
        "the old version's chunks are gone: {:?}",
        local.hits
    );
    assert!(
        local.stale,
        "an answer that left hits out was not marked stale"
    );
    let reason = local.stale_reason.unwrap_or_default();
    assert!(reason.contains("behind its store"), "{reason}");
    // (a strong search waits for the shard to reach the leader's commit index first)
    let strong = search_with(&service, "strong").await;
    assert!(
        matches!(strong, Err(shoal_api::ApiError::NotReady(_))),
        "a strong search answered while its shard was behind: {strong:?}"
    );
    hold.release().await;
    node.stop().await.unwrap();
}
