use super::*;
use crate::{ChunkInput, CollectionSpec, DocumentInput, HnswParams};

fn spec(dim: u32) -> CollectionSpec {
    CollectionSpec {
        dimension: dim,
        hnsw: HnswParams::default(),
    }
}

fn doc(id: &str, text: &str, meta: &str) -> DocumentInput {
    DocumentInput {
        id: id.into(),
        text: text.into(),
        metadata_json: meta.into(),
    }
}

fn chunk(text: &str, v: [f32; 2]) -> ChunkInput {
    ChunkInput {
        text: text.into(),
        start: 0,
        end: text.len() as u32,
        vector: v.to_vec(),
    }
}

struct Log {
    store: Store,
    next: u64,
}

impl Log {
    fn new(store: Store) -> Log {
        Log { store, next: 1 }
    }
    fn apply(&mut self, c: Command) -> Result<Applied, StoreError> {
        let i = self.next;
        self.next += 1;
        self.store.apply(i, &c)
    }
}

fn create(name: &str) -> Command {
    Command::CreateCollection {
        name: name.into(),
        spec: spec(2),
        at_ms: 1,
    }
}

fn accept(coll: &str, job: &str, docs: Vec<DocumentInput>) -> Command {
    Command::AcceptDocuments {
        collection: coll.into(),
        job_id: job.into(),
        documents: docs,
        at_ms: 2,
    }
}

fn store_chunks(coll: &str, doc: &str, version: u64, chunks: Vec<ChunkInput>) -> Command {
    Command::StoreChunks {
        collection: coll.into(),
        doc_id: doc.into(),
        version,
        chunks,
        at_ms: 3,
    }
}

#[test]
fn collection_lifecycle_and_rejections() {
    let mut log = Log::new(Store::temporary().unwrap());
    log.apply(create("a")).unwrap();
    assert!(matches!(
        log.apply(create("a")),
        Err(StoreError::CollectionExists(_))
    ));
    assert!(matches!(
        log.apply(accept("nope", "j", vec![])),
        Err(StoreError::CollectionNotFound(_))
    ));
    // refused commands still advance the applied index
    assert_eq!(log.store.applied_index().unwrap(), 3);
    assert_eq!(log.store.collections().unwrap().len(), 1);
    log.apply(Command::DropCollection { name: "a".into() })
        .unwrap();
    assert!(log.store.collection("a").unwrap().is_none());
}

#[test]
fn ingest_flow_assigns_points_and_tracks_job() {
    let mut log = Log::new(Store::temporary().unwrap());
    log.apply(create("c")).unwrap();
    let applied = log
        .apply(accept(
            "c",
            "j1",
            vec![doc("d1", "hello", r#"{"k":1}"#), doc("d2", "x", "{}")],
        ))
        .unwrap();
    let Outcome::DocumentsAccepted { job, pending } = applied.outcome else {
        panic!("wrong outcome")
    };
    assert_eq!(job.total, 2);
    assert_eq!(pending.len(), 2);
    assert_eq!(log.store.pending_documents().unwrap().len(), 2);

    let applied = log
        .apply(store_chunks(
            "c",
            "d1",
            2,
            vec![chunk("he", [1.0, 0.0]), chunk("llo", [0.0, 1.0])],
        ))
        .unwrap();
    let Effect::PointsAdded { points, .. } = &applied.effects[0] else {
        panic!("expected PointsAdded")
    };
    assert_eq!(points.iter().map(|p| p.id).collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(points[0].metadata_json, r#"{"k":1}"#);
    let Outcome::ChunksStored {
        stored: true,
        job: Some(job),
    } = applied.outcome
    else {
        panic!("expected stored")
    };
    assert_eq!(job.indexed, 1);
    assert_eq!(job.state(), JobState::Running);

    log.apply(Command::FailDocument {
        collection: "c".into(),
        doc_id: "d2".into(),
        version: 2,
        reason: "empty".into(),
        at_ms: 4,
    })
    .unwrap();
    let job = log.store.job("j1").unwrap().unwrap();
    assert_eq!((job.indexed, job.failed), (1, 1));
    assert_eq!(job.state(), JobState::CompletedWithErrors);
    assert_eq!(job.errors[0].doc_id, "d2");

    let pts = log.store.points("c").unwrap();
    assert_eq!(pts.len(), 2);
    assert_eq!(log.store.chunk(1, 1).unwrap().unwrap().text, "llo");
    assert!(log.store.pending_documents().unwrap().is_empty());
}

#[test]
fn replacement_keeps_old_version_live_until_new_chunks_arrive() {
    let mut log = Log::new(Store::temporary().unwrap());
    log.apply(create("c")).unwrap();
    log.apply(accept("c", "j1", vec![doc("d", "v1", r#"{"v":1}"#)]))
        .unwrap();
    log.apply(store_chunks("c", "d", 2, vec![chunk("v1", [1.0, 0.0])]))
        .unwrap();
    log.apply(accept("c", "j2", vec![doc("d", "v2", r#"{"v":2}"#)]))
        .unwrap();
    // old chunks still searchable while v2 is pending
    let pts = log.store.points("c").unwrap();
    assert_eq!(pts.len(), 1);
    assert_eq!(pts[0].metadata_json, r#"{"v":1}"#);
    // a stale version is ignored
    let stale = log
        .apply(store_chunks("c", "d", 2, vec![chunk("x", [0.0, 1.0])]))
        .unwrap();
    assert!(matches!(
        stale.outcome,
        Outcome::ChunksStored { stored: false, .. }
    ));
    let applied = log
        .apply(store_chunks("c", "d", 4, vec![chunk("v2", [0.0, 1.0])]))
        .unwrap();
    assert_eq!(
        applied.effects[0],
        Effect::PointsRemoved {
            collection: "c".into(),
            ids: vec![0]
        }
    );
    let pts = log.store.points("c").unwrap();
    assert_eq!(pts.len(), 1);
    assert_eq!(pts[0].id, 1);
    assert_eq!(pts[0].metadata_json, r#"{"v":2}"#);
    let coll = log.store.collection("c").unwrap().unwrap();
    assert_eq!((coll.documents, coll.chunks), (1, 1));
}

#[test]
fn superseded_and_deleted_pending_documents_complete_their_jobs() {
    let mut log = Log::new(Store::temporary().unwrap());
    log.apply(create("c")).unwrap();
    log.apply(accept(
        "c",
        "j1",
        vec![doc("a", "1", "{}"), doc("b", "1", "{}")],
    ))
    .unwrap();
    log.apply(accept(
        "c",
        "j2",
        vec![doc("a", "2", "{}"), doc("a", "3", "{}")],
    ))
    .unwrap();
    log.apply(Command::DeleteDocument {
        collection: "c".into(),
        doc_id: "b".into(),
        at_ms: 5,
    })
    .unwrap();
    let j1 = log.store.job("j1").unwrap().unwrap();
    assert_eq!(j1.superseded, 2);
    assert_eq!(j1.state(), JobState::Completed);
    let j2 = log.store.job("j2").unwrap().unwrap();
    assert_eq!(
        j2.superseded, 1,
        "the first `a` of the same request is superseded"
    );
    let a = log.store.document("c", "a").unwrap();
    assert_eq!((a.version, a.text.as_str()), (3, "3"));
}

#[test]
fn delete_removes_points_and_drop_removes_everything() {
    let mut log = Log::new(Store::temporary().unwrap());
    log.apply(create("c")).unwrap();
    log.apply(accept("c", "j", vec![doc("d", "t", "{}")]))
        .unwrap();
    log.apply(store_chunks("c", "d", 2, vec![chunk("t", [1.0, 0.0])]))
        .unwrap();
    let applied = log
        .apply(Command::DeleteDocument {
            collection: "c".into(),
            doc_id: "d".into(),
            at_ms: 9,
        })
        .unwrap();
    assert_eq!(applied.effects.len(), 1);
    assert!(log.store.points("c").unwrap().is_empty());
    assert!(matches!(
        log.store.document("c", "d"),
        Err(StoreError::DocumentNotFound { .. })
    ));
    log.apply(accept("c", "j2", vec![doc("e", "t", "{}")]))
        .unwrap();
    log.apply(store_chunks("c", "e", 5, vec![chunk("t", [1.0, 0.0])]))
        .unwrap();
    log.apply(Command::DropCollection { name: "c".into() })
        .unwrap();
    log.apply(create("c")).unwrap();
    assert!(log.store.points("c").unwrap().is_empty());
    assert_eq!(log.store.collection("c").unwrap().unwrap().uid, 2);
}

#[test]
fn wrong_dimension_is_refused_without_writes() {
    let mut log = Log::new(Store::temporary().unwrap());
    log.apply(create("c")).unwrap();
    log.apply(accept("c", "j", vec![doc("d", "t", "{}")]))
        .unwrap();
    let bad = ChunkInput {
        text: "t".into(),
        start: 0,
        end: 1,
        vector: vec![1.0; 3],
    };
    assert!(matches!(
        log.apply(store_chunks("c", "d", 2, vec![bad])),
        Err(StoreError::InvalidCommand(_))
    ));
    assert!(log.store.points("c").unwrap().is_empty());
}

fn dump(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
    store
        .tree
        .iter()
        .map(|kv| {
            let (k, v) = kv.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

#[test]
fn apply_is_deterministic_and_durable() {
    let commands = vec![
        create("c"),
        accept(
            "c",
            "j",
            vec![doc("a", "x", "{}"), doc("b", "y", r#"{"t":"z"}"#)],
        ),
        store_chunks("c", "a", 2, vec![chunk("x", [1.0, 0.0])]),
        store_chunks(
            "c",
            "b",
            2,
            vec![chunk("y", [0.6, 0.8]), chunk("y2", [0.0, 1.0])],
        ),
        Command::DeleteDocument {
            collection: "c".into(),
            doc_id: "a".into(),
            at_ms: 7,
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    {
        let mut disk = Log::new(Store::open(dir.path(), true).unwrap());
        let mut mem = Log::new(Store::temporary().unwrap());
        for c in &commands {
            // commands survive their log encoding unchanged
            let c2 = Command::from_bytes(&c.to_bytes()).unwrap();
            assert_eq!(&c2, c);
            disk.apply(c.clone()).unwrap();
            mem.apply(c2).unwrap();
        }
        assert_eq!(dump(&disk.store), dump(&mem.store));
    }
    let reopened = Store::open(dir.path(), true).unwrap();
    assert_eq!(reopened.applied_index().unwrap(), commands.len() as u64);
    let pts = reopened.points("c").unwrap();
    assert_eq!(pts.len(), 2);
    assert!(pts.iter().all(|p| p.doc_id == "b"));
}
