//! A one-member cluster over a real store on disk: writes get one log index each, in order,
//! whether or not their callers wait; a storage failure stops consensus. (Restarts are tested
//! with real processes, in the tests crate.)

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use shoal_cluster::{ClusterError, ClusterNode, ClusterSettings, IndexSink, NoEvents};
use shoal_storage::{CollectionSpec, Command, Effect, HnswParams, Store, StoreError, StoreOptions};

#[derive(Default)]
struct Recorder(Mutex<Vec<u64>>);

impl IndexSink for Recorder {
    fn applied(&self, index: u64, _effects: Vec<Effect>) {
        self.0.lock().push(index);
    }
    fn replaced(&self, _: u64) {}
}

fn settings(dir: &std::path::Path) -> ClusterSettings {
    ClusterSettings::for_tests(dir, 1, None)
}

fn create(name: &str) -> Command {
    Command::CreateCollection {
        name: name.into(),
        spec: CollectionSpec {
            dimension: 2,
            hnsw: HnswParams::default(),
            quantization: Default::default(),
            vectors_on_disk: false,
        },
        at_ms: 1,
    }
}

async fn one_node(dir: &std::path::Path) -> (Arc<ClusterNode>, Store, Arc<Recorder>) {
    let store = Store::open(&dir.join("store"), StoreOptions::default()).unwrap();
    let sink = Arc::new(Recorder::default());
    let node = ClusterNode::start(
        settings(dir),
        store.clone(),
        sink.clone(),
        Arc::new(NoEvents),
    )
    .await
    .unwrap();
    if !node.is_initialized().await {
        node.initialize().await.unwrap();
    }
    (node, store, sink)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_and_abandoned_writes_get_one_index_each_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (node, store, sink) = one_node(dir.path()).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let n = node.clone();
        tasks.push(tokio::spawn(async move {
            n.propose(create(&format!("c{i}"))).await
        }));
    }
    // half of another 200 are abandoned at once: each applies whole or not at all
    for i in 200..400 {
        let n = node.clone();
        let t = tokio::spawn(async move { n.propose(create(&format!("c{i}"))).await });
        if i % 2 == 0 {
            t.abort();
        } else {
            tasks.push(t);
        }
    }
    let mut indexes = Vec::new();
    for t in tasks {
        let p = t.await.unwrap().unwrap();
        p.outcome.unwrap();
        indexes.push(p.index);
    }
    // a refused command is an answer, and takes an index too
    let dup = node.propose(create("c0")).await.unwrap();
    assert!(matches!(dup.outcome, Err(StoreError::CollectionExists(_))));
    indexes.sort_unstable();
    indexes.dedup();
    assert_eq!(indexes.len(), 300, "two writes got one index");
    let collections = store.collections().unwrap();
    let uids: std::collections::HashSet<u64> = collections.iter().map(|c| c.uid).collect();
    assert_eq!(uids.len(), collections.len(), "two collections got one uid");
    assert!(collections.len() >= 300);
    // the index sink heard every entry once, in log order
    let heard = sink.0.lock().clone();
    assert!(heard.windows(2).all(|w| w[1] == w[0] + 1), "{heard:?}");
    assert_eq!(heard.last().copied(), Some(store.applied_index().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_failure_stops_consensus_instead_of_answering_every_write_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _store, _) = one_node(dir.path()).await;
    node.propose(create("a")).await.unwrap().outcome.unwrap();
    node.inject_storage_failure();
    let failed = node.failed();
    // The write consensus had taken when it stopped: its entry was appended (and, in a cluster,
    // maybe replicated and applied elsewhere), so its outcome is unknown: a timeout (504), never
    // an answer that says it failed.
    let r = node.propose(create("b")).await;
    assert!(
        matches!(&r, Err(ClusterError::Timeout(m)) if m.contains("outcome is unknown")),
        "{r:?}"
    );
    let reason = tokio::time::timeout(Duration::from_secs(10), failed)
        .await
        .expect("consensus stopped");
    assert!(reason.contains("injected storage failure"), "{reason}");
    // Later writes are refused at once, saying that nothing was done (503: try another node).
    let after = node.propose(create("c")).await;
    assert!(
        matches!(&after, Err(ClusterError::Stopped(m)) if m.contains("nothing was done")),
        "{after:?}"
    );
    let read = node.read_index().await;
    assert!(matches!(read, Err(ClusterError::Stopped(_))), "{read:?}");
}
