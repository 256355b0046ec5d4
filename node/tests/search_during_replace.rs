//! A search that runs while a document's new version is committed but not yet in the shard must
//! still find the document: the store has dropped the old version's chunks (the shard's points
//! for them resolve to nothing) and the shard does not hold the new ones yet. Found by reviewing
//! the chaos checker's rules against the search path.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shoal_api::dto::SearchRequest;
use shoal_api::ShoalService;
use shoal_node::config::Config;
use shoal_storage::{
    ChunkInput, CollectionSpec, Command, DocumentChunks, DocumentInput, HnswParams,
};

fn model_dir() -> PathBuf {
    let dir = std::env::var_os("SHOAL_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2")
        });
    assert!(
        dir.join("model.safetensors").is_file(),
        "model not found at {}: run scripts/fetch-model.sh",
        dir.display()
    );
    dir
}

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
    let req: SearchRequest = serde_json::from_value(serde_json::json!({
        "vector": unit(0),
        "top_k": 5,
    }))
    .unwrap();
    service.search("c".into(), req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_being_replaced_is_found_at_one_version_or_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.storage.data_dir = tmp.path().join("data");
    config.model.path = model_dir();
    // one background thread (the default): the shard's inserts and deletes run on it
    config.threads.background = 1;
    let node = shoal_node::start(config).await.unwrap();
    let ctx = node.ctx.clone();
    ctx.apply(Command::CreateCollection {
        name: "c".into(),
        spec: CollectionSpec {
            dimension: DIM as u32,
            hnsw: HnswParams::default(),
        },
        at_ms: 1,
    })
    .await
    .unwrap();
    let first = write_version(&ctx, "version one").await;
    assert!(
        ctx.watermark.wait_for(first, Duration::from_secs(30)).await,
        "the first version was not indexed"
    );
    let service = shoal_node::service::Node { ctx: ctx.clone() };
    let hits = search(&service).await.unwrap().hits;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].text, "version one");

    // Hold the background thread: the shard cannot mirror the next version until released.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let held = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            ctx.background(move || {
                let _ = started_tx.send(());
                let _ = release_rx.recv_timeout(Duration::from_secs(60));
            })
            .await
        })
    };
    started_rx.await.unwrap();
    let second = write_version(&ctx, "version two").await;
    assert!(
        ctx.watermark
            .current_for(ctx.store.collection("c").unwrap().unwrap().uid)
            < second,
        "the shard mirrored the new version while its thread was held"
    );

    // The search runs while the store is ahead of the shard.
    let service = Arc::new(service);
    let mut running = {
        let service = service.clone();
        tokio::spawn(async move { search(service.as_ref()).await })
    };
    let early = tokio::time::timeout(Duration::from_millis(500), &mut running).await;
    let answer = match early {
        // it answered while the shard was behind: the document must be in it all the same
        Ok(done) => done.unwrap().unwrap(),
        // it waits for the shard to catch up: let it
        Err(_) => {
            release_tx.send(()).unwrap();
            tokio::time::timeout(Duration::from_secs(30), running)
                .await
                .expect("the search did not finish once the shard could catch up")
                .unwrap()
                .unwrap()
        }
    };
    let _ = release_tx.send(());
    held.await.unwrap().unwrap();
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
    node.stop().await.unwrap();
}
