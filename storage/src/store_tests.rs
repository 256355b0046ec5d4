use super::*;
use crate::{ChunkInput, CollectionSpec, DocumentChunks, DocumentInput, HnswParams, Quantization};

fn spec(dim: u32) -> CollectionSpec {
    CollectionSpec {
        dimension: dim,
        hnsw: HnswParams::default(),
        quantization: Default::default(),
        vectors_on_disk: false,
    }
}

fn doc(id: &str, text: &str, meta: &str) -> DocumentInput {
    DocumentInput {
        id: id.into(),
        text: text.into(),
        metadata_json: meta.into(),
        sections: Vec::new(),
    }
}

fn chunk(text: &str, v: [f32; 2]) -> ChunkInput {
    ChunkInput {
        text: text.into(),
        start: 0,
        end: text.len() as u32,
        pages: None,
        section: None,
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

fn drop_collection(name: &str) -> Command {
    Command::DropCollection {
        name: name.into(),
        at_ms: 8,
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
        staged_parts: 0,
        at_ms: 2,
    }
}

/// Collection "c" with documents `d0`.. (metadata `meta(i)`), each stored as `chunks` chunks
/// `text {i}.{k}` with vector `[i, k + 0.5]`.
fn filled(log: &mut Log, docs: usize, chunks: usize, meta: impl Fn(usize) -> String) {
    log.apply(create("c")).unwrap();
    log.apply(accept(
        "c",
        "j",
        (0..docs)
            .map(|i| doc(&format!("d{i}"), "t", &meta(i)))
            .collect(),
    ))
    .unwrap();
    for i in 0..docs {
        let stored = (0..chunks)
            .map(|k| chunk(&format!("text {i}.{k}"), [i as f32, k as f32 + 0.5]))
            .collect();
        log.apply(store_chunks("c", &format!("d{i}"), 2, stored))
            .unwrap();
    }
}

fn store_chunks(coll: &str, doc: &str, version: u64, chunks: Vec<ChunkInput>) -> Command {
    Command::StoreChunks {
        collection: coll.into(),
        node: 1,
        documents: vec![DocumentChunks {
            doc_id: doc.into(),
            version,
            chunks,
        }],
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
    log.apply(drop_collection("a")).unwrap();
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
    let Outcome::DocumentsAccepted { job } = applied.outcome else {
        panic!("wrong outcome")
    };
    assert_eq!(job.total, 2);
    assert_eq!(job.last_index, 2);
    let [Effect::DocumentsPending(pending)] = &applied.effects[..] else {
        panic!("expected DocumentsPending: {:?}", applied.effects)
    };
    assert_eq!(pending.len(), 2);
    assert_eq!((pending[0].uid, pending[0].bytes), (1, 5));
    assert_eq!(log.store.pending_documents().unwrap(), *pending);
    // the text stays in the store until a worker asks for it
    assert_eq!(
        log.store.pending_text(1, "d1", 2).unwrap().as_deref(),
        Some("hello")
    );
    assert_eq!(log.store.pending_text(1, "d1", 1).unwrap(), None);

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
    let Outcome::ChunksStored { stored, .. } = applied.outcome else {
        panic!("expected stored")
    };
    assert_eq!(stored, ["d1"]);
    let job = log.store.job("j1").unwrap().unwrap();
    assert_eq!(job.indexed, 1);
    assert_eq!(job.last_index, 3);
    assert_eq!(job.state(), JobState::Running);
    // indexed: no longer pending
    assert_eq!(log.store.pending_text(1, "d1", 2).unwrap(), None);

    log.apply(Command::FailDocument {
        collection: "c".into(),
        node: 1,
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

    // a retry of the failed version: its text again, a new version in a new job
    let retry = |version: u64, job: &str| Command::RetryDocument {
        collection: "c".into(),
        doc_id: "d2".into(),
        version,
        job_id: job.into(),
        at_ms: 5,
    };
    assert!(matches!(
        log.apply(retry(1, "j2")),
        Err(StoreError::DocumentChanged(_))
    ));
    let index = log.next;
    log.apply(retry(2, "j2")).unwrap();
    let d2 = log.store.document("c", "d2").unwrap();
    assert_eq!((d2.version, &d2.status), (index, &DocumentStatus::Pending));
    assert_eq!(d2.job_id, "j2");
    assert_eq!(log.store.job("j2").unwrap().unwrap().total, 1);
    assert_eq!(log.store.pending_documents().unwrap().len(), 1);
    // the same retry again (two clicks, or a replacement meanwhile): refused, nothing written
    assert!(matches!(
        log.apply(retry(2, "j3")),
        Err(StoreError::DocumentChanged(_))
    ));
    assert!(log.store.job("j3").unwrap().is_none());
    // an indexed document is not retried
    let indexed = Command::RetryDocument {
        collection: "c".into(),
        doc_id: "d1".into(),
        version: 2,
        job_id: "j4".into(),
        at_ms: 6,
    };
    assert!(matches!(
        log.apply(indexed),
        Err(StoreError::DocumentChanged(_))
    ));
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
        Outcome::ChunksStored { ref stored, ref stale, .. } if stored.is_empty() && stale == &["d"]
    ));
    let applied = log
        .apply(store_chunks("c", "d", 4, vec![chunk("v2", [0.0, 1.0])]))
        .unwrap();
    assert_eq!(
        applied.effects[0],
        Effect::PointsRemoved {
            collection: "c".into(),
            uid: 1,
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
    log.apply(drop_collection("c")).unwrap();
    log.apply(create("c")).unwrap();
    assert!(log.store.points("c").unwrap().is_empty());
    assert_eq!(log.store.collection("c").unwrap().unwrap().uid, 2);
    // no chunk record and no vector left behind, of either version or the dropped collection
    let left: Vec<_> = dump(&log.store)
        .into_iter()
        .filter(|(k, _)| k.starts_with(b"p/") || k.starts_with(b"v/"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_format_5_store_is_moved_to_format_6_when_opened_even_after_a_move_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let (before, texts) = {
        let mut log = Log::new(Store::open(dir.path(), StoreOptions::default()).unwrap());
        filled(&mut log, 5, 3, |_| "{}".into());
        let (before, _) = log.store.points_at("c", None, WithVectors::All).unwrap();
        assert_eq!(before.len(), 15);
        let uid = log.store.collection("c").unwrap().unwrap().uid;
        let texts: Vec<ChunkRecord> = before
            .iter()
            .map(|p| log.store.chunk(uid, p.id).unwrap().unwrap())
            .collect();
        // rewrite it as format 5 kept it (the vector inside the record, no vector keys), but for
        // the first two chunks: moved already, as a move cut short leaves them
        crate::migrate::back_to_format_5(&log.store, 2);
        // as it is, format 6 cannot read it
        assert!(log.store.points_at("c", None, WithVectors::All).is_err());
        (before, texts)
    };
    let store = Store::reopen(dir.path()).unwrap();
    assert_eq!(
        store.tree().get(keys::FORMAT).unwrap().unwrap().as_ref(),
        [FORMAT_VERSION]
    );
    let (after, _) = store.points_at("c", None, WithVectors::All).unwrap();
    assert_eq!(
        after, before,
        "every chunk keeps its text, payload and vector"
    );
    let uid = store.collection("c").unwrap().unwrap().uid;
    for (p, text) in after.iter().zip(&texts) {
        assert_eq!(&store.chunk(uid, p.id).unwrap().unwrap(), text);
        assert_eq!(store.chunk_vector(uid, p.id).unwrap().unwrap(), p.vector);
    }
    // and it stays so: opened again, nothing to move
    drop(store);
    let again = Store::reopen(dir.path()).unwrap();
    assert_eq!(
        again.points_at("c", None, WithVectors::All).unwrap().0,
        before
    );
}

#[test]
fn a_format_6_store_is_moved_to_format_7_when_opened_its_collections_unquantized() {
    let dir = tempfile::tempdir().unwrap();
    let (collections, digest) = {
        let mut log = Log::new(Store::open(dir.path(), StoreOptions::default()).unwrap());
        filled(&mut log, 4, 2, |_| "{}".into());
        log.apply(Command::CreateCollection {
            name: "wide".into(),
            spec: CollectionSpec {
                dimension: 768,
                hnsw: HnswParams {
                    m: 32,
                    ef_construction: 200,
                },
                quantization: Quantization::None,
                vectors_on_disk: false,
            },
            at_ms: 1_733_000_000_000,
        })
        .unwrap();
        let collections = log.store.collections().unwrap();
        let digest = log.store.digest().unwrap();
        crate::migrate::back_to_format_6(&log.store);
        // as it is, format 7 cannot read its collections
        assert!(log.store.collections().is_err());
        (collections, digest)
    };
    let store = Store::reopen(dir.path()).unwrap();
    assert_eq!(
        store.tree().get(keys::FORMAT).unwrap().unwrap().as_ref(),
        [FORMAT_VERSION]
    );
    assert_eq!(store.collections().unwrap(), collections);
    assert_eq!(store.digest().unwrap(), digest, "the same state as before");
    assert_eq!(
        store
            .points_at("c", None, WithVectors::All)
            .unwrap()
            .0
            .len(),
        8
    );
}

#[test]
fn a_collection_keeps_its_quantization_an_update_changes_it_and_an_old_logs_create_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::new(Store::open(dir.path(), StoreOptions::default()).unwrap());
    let int8 = Command::CreateCollection {
        name: "q".into(),
        spec: CollectionSpec {
            quantization: Quantization::Int8,
            ..spec(3)
        },
        at_ms: 1,
    };
    assert_eq!(Command::from_bytes(&int8.to_bytes()).unwrap(), int8);
    log.apply(int8).unwrap();
    // `CreateCollection` as a log written by format 6 holds it: "c", dimension 2, m 16,
    // ef_construction 100, at 7 ms (the version byte, then bincode's variable-length integers)
    let old = Command::from_bytes(&[5, 0, 1, b'c', 2, 16, 100, 7]).unwrap();
    assert_eq!(old.kind(), "create_collection");
    log.apply(old).unwrap();
    let c = log.store.collection("c").unwrap().unwrap();
    assert_eq!((c.spec.clone(), c.created_at_ms), (spec(2), 7));
    assert_eq!(c.spec.quantization, Quantization::None);
    // changed: the record, and an effect for its shard; changed to what it is: neither
    let update = |quantization, vectors_on_disk| Command::UpdateCollection {
        name: "c".into(),
        quantization,
        vectors_on_disk,
    };
    let changed = log.apply(update(Some(Quantization::Int8), None)).unwrap();
    let c = log.store.collection("c").unwrap().unwrap();
    assert_eq!(c.spec.quantization, Quantization::Int8);
    assert!(!c.spec.vectors_on_disk);
    assert_eq!((c.spec.dimension, c.created_at_ms), (2, 7));
    assert_eq!(changed.outcome, Outcome::CollectionUpdated(c.clone()));
    assert_eq!(changed.effects, vec![Effect::CollectionUpdated(c.clone())]);
    for same in [
        update(Some(Quantization::Int8), Some(false)),
        update(None, None),
    ] {
        let same = log.apply(same).unwrap();
        assert_eq!(same.outcome, Outcome::CollectionUpdated(c.clone()));
        assert!(same.effects.is_empty());
    }
    // what the command leaves out stays
    let on_disk = log.apply(update(None, Some(true))).unwrap();
    let c = log.store.collection("c").unwrap().unwrap();
    assert!(c.spec.vectors_on_disk);
    assert_eq!(c.spec.quantization, Quantization::Int8);
    assert_eq!(on_disk.effects, vec![Effect::CollectionUpdated(c)]);
    let missing = Command::UpdateCollection {
        name: "nope".into(),
        quantization: Some(Quantization::None),
        vectors_on_disk: None,
    };
    assert!(matches!(
        log.apply(missing),
        Err(StoreError::CollectionNotFound(_))
    ));
    drop(log);
    let store = Store::reopen(dir.path()).unwrap();
    let q = store.collection("q").unwrap().unwrap();
    assert_eq!(q.spec.quantization, Quantization::Int8);
    assert_eq!(q.spec.dimension, 3);
    let c = store.collection("c").unwrap().unwrap();
    assert_eq!(c.spec.quantization, Quantization::Int8);
    assert!(c.spec.vectors_on_disk);
}

#[test]
fn points_can_be_read_with_only_the_vectors_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::new(Store::open(dir.path(), StoreOptions::default()).unwrap());
    filled(&mut log, 3, 2, |i| format!("{{\"n\":{i}}}"));
    let (all, applied) = log.store.points_at("c", None, WithVectors::All).unwrap();
    assert_eq!(all.len(), 6);
    let odd = |id: PointId| id % 2 == 1;
    let (some, applied_too) = log
        .store
        .points_at("c", None, WithVectors::Only(&odd))
        .unwrap();
    assert_eq!(applied_too, applied);
    assert_eq!(some.len(), all.len());
    assert_eq!(all[0].metadata_json, r#"{"n":0}"#);
    for (s, a) in some.iter().zip(&all) {
        assert_eq!(
            (s.id, &s.doc_id, &s.text, &s.metadata_json),
            (a.id, &a.doc_id, &a.text, &a.metadata_json)
        );
        let want: &[f32] = if odd(a.id) { &a.vector } else { &[] };
        assert_eq!(s.vector, want, "point {}", a.id);
    }
    // a vector asked for and missing is corruption, as in a full read
    let uid = log.store.collection("c").unwrap().unwrap().uid;
    let gone = all.iter().find(|p| odd(p.id)).unwrap().id;
    log.store.tree().remove(keys::vector(uid, gone)).unwrap();
    let err = log
        .store
        .points_at("c", None, WithVectors::Only(&odd))
        .unwrap_err();
    assert!(err.to_string().contains("vector is missing"), "{err}");
    let none = |_: PointId| false;
    assert!(log
        .store
        .points_at("c", None, WithVectors::Only(&none))
        .is_ok());
}

/// A shard loads its points while commands go on being applied (the load is off the apply
/// thread). Chunks stored and documents deleted during the read must never look like a chunk
/// without its vector, or a vector without its chunk.
#[test]
fn points_read_while_chunks_come_and_go_are_never_taken_for_corruption() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut log = Log::new(Store::temporary().unwrap());
    log.apply(create("c")).unwrap();
    let store = log.store.clone();
    let stop = Arc::new(AtomicBool::new(false));
    // The writer stops when the test ends, an assertion's panic included.
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stopper = Stop(stop.clone());
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut written = 0u64;
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let version = log.next;
                log.apply(accept(
                    "c",
                    &format!("j{i}"),
                    vec![doc(&format!("d{i}"), "t", "{}")],
                ))
                .unwrap();
                let stored = (0..3)
                    .map(|k| chunk(&format!("text {i}.{k} of d{i}"), [i as f32, k as f32]))
                    .collect();
                log.apply(store_chunks("c", &format!("d{i}"), version, stored))
                    .unwrap();
                if i >= 40 {
                    log.apply(Command::DeleteDocument {
                        collection: "c".into(),
                        doc_id: format!("d{}", i - 40),
                        at_ms: 4,
                    })
                    .unwrap();
                }
                written += 1;
            }
            written
        })
    };
    let odd = |id: PointId| id % 2 == 1;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut reads = 0;
    let mut failed = Vec::new();
    while std::time::Instant::now() < deadline || reads < 200 {
        let vectors = if reads % 2 == 0 {
            WithVectors::All
        } else {
            WithVectors::Only(&odd)
        };
        match store.points_at("c", None, vectors) {
            Ok((points, _)) => {
                // each point once, with its own chunk's vector ("text i.k" has [i, k])
                assert!(points.windows(2).all(|w| w[0].id < w[1].id));
                for p in points {
                    let name = p.text.split(' ').nth(1).unwrap();
                    let (i, k) = name.split_once('.').unwrap();
                    let own = vec![i.parse::<f32>().unwrap(), k.parse::<f32>().unwrap()];
                    let read = reads % 2 == 0 || odd(p.id);
                    let want = if read { own } else { Vec::new() };
                    assert_eq!(p.vector, want, "point {} ({})", p.id, p.text);
                }
            }
            Err(e) => failed.push(e.to_string()),
        }
        reads += 1;
    }
    drop(stopper);
    let written = writer.join().unwrap();
    assert!(written > 20, "the writer kept up only {written} documents");
    assert!(
        failed.is_empty(),
        "{} of {reads} reads failed, first: {}",
        failed.len(),
        failed[0]
    );
    // With nothing applied meanwhile, a chunk without its vector and a vector without its chunk
    // are still corruption.
    let (points, _) = store.points_at("c", None, WithVectors::All).unwrap();
    let uid = store.collection("c").unwrap().unwrap().uid;
    let tree = store.tree();
    let vector = tree
        .remove(keys::vector(uid, points[0].id))
        .unwrap()
        .unwrap();
    let err = store.points_at("c", None, WithVectors::All).unwrap_err();
    assert!(err.to_string().contains("vector is missing"), "{err}");
    let all = |_: PointId| true;
    let err = store
        .points_at("c", None, WithVectors::Only(&all))
        .unwrap_err();
    assert!(err.to_string().contains("vector is missing"), "{err}");
    tree.insert(keys::vector(uid, points[0].id), vector)
        .unwrap();
    // in the middle of the scan, and at its end
    for orphan in [points[1].id, points.last().unwrap().id] {
        let record = tree.remove(keys::point(uid, orphan)).unwrap().unwrap();
        let err = store.points_at("c", None, WithVectors::All).unwrap_err();
        assert!(
            err.to_string().contains("a vector without its chunk"),
            "{err}"
        );
        tree.insert(keys::point(uid, orphan), record).unwrap();
    }
    assert_eq!(
        store.points_at("c", None, WithVectors::All).unwrap().0,
        points
    );
}

#[test]
fn a_store_of_an_unknown_format_is_refused() {
    // an older format than any move starts from, and a newer one
    for format in [4, FORMAT_VERSION + 1] {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = Log::new(Store::open(dir.path(), StoreOptions::default()).unwrap());
            log.apply(create("c")).unwrap();
            log.store.tree().insert(keys::FORMAT, &[format]).unwrap();
            log.store.flush().unwrap();
        }
        let e = Store::reopen(dir.path()).err();
        assert!(
            matches!(
                e,
                Some(StoreError::FormatVersion { found, expected: FORMAT_VERSION }) if found == format
            ),
            "{e:?}"
        );
        assert_eq!(
            e.unwrap().to_string(),
            format!("stored data has format version {format}, this build reads version 7")
        );
    }
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
        pages: None,
        section: None,
        vector: vec![1.0; 3],
    };
    assert!(matches!(
        log.apply(store_chunks("c", "d", 2, vec![bad])),
        Err(StoreError::InvalidCommand(_))
    ));
    assert!(log.store.points("c").unwrap().is_empty());
}

#[test]
fn dropping_a_collection_cancels_its_unfinished_jobs() {
    let mut log = Log::new(Store::temporary().unwrap());
    log.apply(create("c")).unwrap();
    log.apply(create("other")).unwrap();
    log.apply(accept("c", "done", vec![doc("a", "t", "{}")]))
        .unwrap();
    log.apply(store_chunks("c", "a", 3, vec![chunk("t", [1.0, 0.0])]))
        .unwrap();
    log.apply(accept(
        "c",
        "running",
        vec![doc("b", "t", "{}"), doc("e", "t", "{}")],
    ))
    .unwrap();
    log.apply(accept("other", "elsewhere", vec![doc("b", "t", "{}")]))
        .unwrap();
    log.apply(drop_collection("c")).unwrap();
    let running = log.store.job("running").unwrap().unwrap();
    assert_eq!(running.state(), JobState::Cancelled);
    assert_eq!((running.last_index, running.updated_at_ms), (7, 8));
    assert_eq!(
        log.store.job("done").unwrap().unwrap().state(),
        JobState::Completed
    );
    assert_eq!(
        log.store.job("elsewhere").unwrap().unwrap().state(),
        JobState::Running
    );
    // a new collection of the same name does not inherit anything
    log.apply(create("c")).unwrap();
    assert!(log
        .store
        .pending_documents()
        .unwrap()
        .iter()
        .all(|p| p.collection == "other"));
}

#[test]
fn finished_jobs_expire_and_running_ones_stay() {
    let mut log = Log::new(Store::temporary().unwrap());
    log.apply(create("c")).unwrap();
    log.apply(accept("c", "old", vec![doc("a", "t", "{}")]))
        .unwrap(); // at_ms 2
    log.apply(store_chunks("c", "a", 2, vec![chunk("t", [1.0, 0.0])]))
        .unwrap(); // finished at 3
    log.apply(accept("c", "running", vec![doc("b", "t", "{}")]))
        .unwrap();
    assert_eq!(log.store.expirable_jobs(3).unwrap(), 0);
    assert_eq!(log.store.expirable_jobs(100).unwrap(), 1);
    let applied = log
        .apply(Command::ExpireJobs {
            before_ms: 100,
            staged_before_ms: 0,
        })
        .unwrap();
    assert_eq!(
        applied.outcome,
        Outcome::JobsExpired {
            removed: 1,
            staged: 0
        }
    );
    assert!(log.store.job("old").unwrap().is_none());
    assert!(log.store.job("running").unwrap().is_some());
    assert_eq!(log.store.expirable_jobs(u64::MAX).unwrap(), 0);
}

#[test]
fn a_store_held_by_another_process_is_waited_for_then_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions::default();
    let first = Store::open(dir.path(), opts).unwrap();
    // still held: a clear error after the wait
    let t = std::time::Instant::now();
    let e = Store::open_waiting_for_lock(dir.path(), opts, std::time::Duration::from_millis(300))
        .err()
        .expect("the lock is held");
    assert!(t.elapsed() >= std::time::Duration::from_millis(300));
    assert!(matches!(e, StoreError::Locked { .. }), "{e}");
    assert!(e.to_string().contains("locked by another process"), "{e}");
    // released during the wait: opened
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(first);
    });
    let second = Store::open_waiting_for_lock(dir.path(), opts, std::time::Duration::from_secs(20));
    release.join().unwrap();
    assert!(second.is_ok(), "{:?}", second.err());
}

fn dump(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
    store
        .tree()
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
        let mut disk = Log::new(Store::open(dir.path(), StoreOptions::default()).unwrap());
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
    let reopened = Store::reopen(dir.path()).unwrap();
    assert_eq!(reopened.applied_index().unwrap(), commands.len() as u64);
    let pts = reopened.points("c").unwrap();
    assert_eq!(pts.len(), 2);
    assert!(pts.iter().all(|p| p.doc_id == "b"));
}

/// The writer half of [`acknowledged_commands_survive_sigkill`]: run in a child process (the
/// test binary itself), it applies commands to the store in `SHOAL_CRASH_DIR`, makes each durable
/// with `sync`, and only then prints `ack <index> <doc>`, until it is killed.
#[test]
#[ignore = "run by acknowledged_commands_survive_sigkill in a child process"]
fn crash_writer() {
    let Some(dir) = std::env::var_os("SHOAL_CRASH_DIR") else {
        return;
    };
    use std::io::Write as _;
    let store = Store::open(std::path::Path::new(&dir), StoreOptions::default()).unwrap();
    let mut index = store.applied_index().unwrap();
    let mut next = |c: Command| {
        index += 1;
        store.apply(index, &c).unwrap();
        store.sync().unwrap();
        index
    };
    next(create("c"));
    let mut out = std::io::stdout().lock();
    for i in 0.. {
        let id = format!("d{i}");
        let text = format!("document {i} {}", "lorem ipsum ".repeat(50));
        let version = next(accept("c", &format!("j{i}"), vec![doc(&id, &text, "{}")]));
        let v = [((i % 7) as f32 + 1.0).recip(), 1.0];
        let at = next(store_chunks(
            "c",
            &id,
            version,
            vec![chunk(&text, v), chunk("x", v)],
        ));
        writeln!(out, "ack {at} {id}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn acknowledged_commands_survive_sigkill() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::tests::crash_writer",
            "--ignored",
            "--nocapture",
        ])
        .env("SHOAL_CRASH_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked: Vec<(u64, String)> = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("ack ") {
            let (at, id) = rest.split_once(' ').unwrap();
            acked.push((at.parse().unwrap(), id.to_string()));
            // killed in the middle of writing, some hundred commands in
            if acked.len() >= 150 {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the writer is too slow"
        );
    }
    // SIGKILL: no chance to flush anything
    child.kill().unwrap();
    let _ = child.wait();
    assert!(
        acked.len() >= 150,
        "the writer stopped early: {} acks",
        acked.len()
    );

    let store = Store::open_waiting_for_lock(
        dir.path(),
        StoreOptions::default(),
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    let (last, _) = acked.last().unwrap();
    assert!(store.applied_index().unwrap() >= *last);
    for (_, id) in &acked {
        let d = store.document("c", id).unwrap();
        assert_eq!(d.status, DocumentStatus::Indexed, "{id} lost its chunks");
        assert_eq!(d.live.as_ref().map(|l| l.points.len()), Some(2));
    }
    // whatever was written after the last acknowledgement is whole or absent: the collection's
    // counters agree with the points on disk, and every point belongs to an indexed document
    let coll = store.collection("c").unwrap().unwrap();
    let points = store.points("c").unwrap();
    assert_eq!(coll.chunks as usize, points.len());
    for p in &points {
        let d = store.document("c", &p.doc_id).unwrap();
        assert!(d.live.unwrap().points.contains(&p.id));
    }
}

fn claim(coll: &str, node: u64, docs: &[(&str, u64)], until_ms: u64, at_ms: u64) -> Command {
    Command::ClaimDocuments {
        collection: coll.into(),
        node,
        documents: docs
            .iter()
            .map(|(d, v)| DocumentVersion {
                doc_id: d.to_string(),
                version: *v,
            })
            .collect(),
        until_ms,
        at_ms,
    }
}

#[test]
fn claims_are_granted_once_taken_over_after_expiry_and_a_lost_claim_stores_nothing() {
    let mut log = Log::new(Store::temporary().unwrap());
    log.apply(create("c")).unwrap();
    log.apply(accept(
        "c",
        "j",
        vec![doc("a", "t", "{}"), doc("b", "t", "{}")],
    ))
    .unwrap();
    // node 1 claims both until 100
    let out = log
        .apply(claim("c", 1, &[("a", 2), ("b", 2), ("gone", 2)], 100, 10))
        .unwrap()
        .outcome;
    let Outcome::Claimed { granted, held, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(granted.len(), 2, "an unknown document is not granted");
    assert!(held.is_empty());
    // node 2 is refused while the claim holds, and told until when
    let out = log
        .apply(claim("c", 2, &[("a", 2)], 200, 50))
        .unwrap()
        .outcome;
    let Outcome::Claimed { granted, held, .. } = out else {
        panic!("{out:?}")
    };
    assert!(granted.is_empty());
    assert_eq!((held[0].node, held[0].until_ms), (1, 100));
    // node 1 renews its own claim at any time
    let out = log
        .apply(claim("c", 1, &[("b", 2)], 300, 60))
        .unwrap()
        .outcome;
    assert!(matches!(out, Outcome::Claimed { ref granted, .. } if granted.len() == 1));
    // after 100, node 2 takes `a` over (judged by the command's own time)
    let out = log
        .apply(claim("c", 2, &[("a", 2)], 400, 150))
        .unwrap()
        .outcome;
    let Outcome::Claimed {
        granted,
        taken_over,
        ..
    } = out
    else {
        panic!()
    };
    assert_eq!((granted.len(), taken_over), (1, 1));
    // node 1 stores both in one command: `a` is refused (lost claim), `b` stored
    let both = Command::StoreChunks {
        collection: "c".into(),
        node: 1,
        documents: ["a", "b"]
            .iter()
            .map(|d| DocumentChunks {
                doc_id: d.to_string(),
                version: 2,
                chunks: vec![chunk(d, [1.0, 0.0])],
            })
            .collect(),
        at_ms: 160,
    };
    let applied = log.apply(both).unwrap();
    assert_eq!(
        applied.outcome,
        Outcome::ChunksStored {
            stored: vec!["b".into()],
            stale: vec![],
            lost: vec!["a".into()],
        }
    );
    assert_eq!(log.store.points("c").unwrap().len(), 1);
    // node 1's failure of `a` is not recorded either; node 2's chunks are
    let fail = log
        .apply(Command::FailDocument {
            collection: "c".into(),
            node: 1,
            doc_id: "a".into(),
            version: 2,
            reason: "x".into(),
            at_ms: 170,
        })
        .unwrap();
    assert!(matches!(
        fail.outcome,
        Outcome::DocumentFailed {
            recorded: false,
            ..
        }
    ));
    let applied = log
        .apply(Command::StoreChunks {
            collection: "c".into(),
            node: 2,
            documents: vec![DocumentChunks {
                doc_id: "a".into(),
                version: 2,
                chunks: vec![chunk("a", [0.0, 1.0])],
            }],
            at_ms: 180,
        })
        .unwrap();
    assert!(
        matches!(applied.outcome, Outcome::ChunksStored { ref stored, .. } if stored == &["a"])
    );
    let job = log.store.job("j").unwrap().unwrap();
    assert_eq!((job.indexed, job.state()), (2, JobState::Completed));
    // chunks sent again for a stored version are stale: nothing is indexed twice
    let again = log
        .apply(store_chunks("c", "a", 2, vec![chunk("a", [0.0, 1.0])]))
        .unwrap();
    assert!(matches!(again.outcome, Outcome::ChunksStored { ref stale, .. } if stale == &["a"]));
    assert_eq!(log.store.points("c").unwrap().len(), 2);
}

#[test]
fn a_staged_request_is_accepted_whole_or_not_at_all() {
    let mut log = Log::new(Store::temporary().unwrap());
    log.apply(create("c")).unwrap();
    let stage = |part: u32, ids: &[&str], at_ms: u64| Command::StageDocuments {
        collection: "c".into(),
        job_id: "big".into(),
        part,
        documents: ids.iter().map(|i| doc(i, "text", "{}")).collect(),
        at_ms,
    };
    log.apply(stage(0, &["a", "b"], 5)).unwrap();
    log.apply(stage(1, &["c"], 5)).unwrap();
    // staged documents are not documents yet
    assert!(log.store.document("c", "a").is_err());
    assert!(log.store.pending_documents().unwrap().is_empty());
    // a part twice is refused
    assert!(log.apply(stage(1, &["x"], 5)).is_err());
    // accepting with a part that was never staged changes nothing
    let missing = Command::AcceptDocuments {
        collection: "c".into(),
        job_id: "big".into(),
        documents: vec![],
        staged_parts: 3,
        at_ms: 6,
    };
    assert!(matches!(
        log.apply(missing),
        Err(StoreError::InvalidCommand(_))
    ));
    assert!(log.store.job("big").unwrap().is_none());
    let accept_all = Command::AcceptDocuments {
        collection: "c".into(),
        job_id: "big".into(),
        documents: vec![doc("d", "text", "{}")],
        staged_parts: 2,
        at_ms: 7,
    };
    let applied = log.apply(accept_all).unwrap();
    let Outcome::DocumentsAccepted { job } = applied.outcome else {
        panic!()
    };
    assert_eq!(job.total, 4);
    assert_eq!(log.store.pending_documents().unwrap().len(), 4);
    assert_eq!(
        log.store.expirable_staged(u64::MAX).unwrap(),
        0,
        "parts removed"
    );
    // staged parts of a request that never finished expire
    log.apply(Command::StageDocuments {
        collection: "c".into(),
        job_id: "abandoned".into(),
        part: 0,
        documents: vec![doc("z", "t", "{}")],
        at_ms: 10,
    })
    .unwrap();
    assert_eq!(log.store.expirable_staged(11).unwrap(), 1);
    let expired = log
        .apply(Command::ExpireJobs {
            before_ms: 0,
            staged_before_ms: 11,
        })
        .unwrap();
    assert_eq!(
        expired.outcome,
        Outcome::JobsExpired {
            removed: 0,
            staged: 1
        }
    );
    assert_eq!(log.store.expirable_staged(u64::MAX).unwrap(), 0);
}

#[test]
fn the_log_record_is_written_with_the_state_it_describes() {
    let store = Store::temporary().unwrap();
    store
        .apply_logged(1, &create("a"), Some(b"entry-1"))
        .unwrap();
    assert_eq!(store.log_meta().unwrap().as_deref(), Some(&b"entry-1"[..]));
    // a refused command advances both
    assert!(store
        .apply_logged(2, &create("a"), Some(b"entry-2"))
        .is_err());
    assert_eq!(store.applied_index().unwrap(), 2);
    assert_eq!(store.log_meta().unwrap().as_deref(), Some(&b"entry-2"[..]));
    // an entry without a command (blank, membership) too
    store.advance(3, Some(b"entry-3")).unwrap();
    assert_eq!(store.applied_index().unwrap(), 3);
    assert_eq!(store.log_meta().unwrap().as_deref(), Some(&b"entry-3"[..]));
}

#[test]
fn an_upload_counts_its_unreadable_files_as_failed_documents_of_its_job() {
    let mut log = Log::new(Store::temporary().unwrap());
    log.apply(create("c")).unwrap();
    let failed = vec![JobError {
        doc_id: "scan.pdf".into(),
        reason: "the file is encrypted".into(),
    }];
    let a = log
        .apply(Command::AcceptUpload {
            collection: "c".into(),
            job_id: "j1".into(),
            documents: vec![doc("notes.txt", "Some notes.", "{}")],
            staged_parts: 0,
            failed: failed.clone(),
            at_ms: 5,
        })
        .unwrap();
    let Outcome::DocumentsAccepted { job } = a.outcome else {
        panic!("{:?}", a.outcome)
    };
    assert_eq!((job.total, job.failed), (2, 1));
    assert_eq!(job.errors, failed);
    assert_eq!(job.state(), JobState::Running);
    // the unreadable file is in no collection: only the readable one is a document
    assert_eq!(log.store.collection("c").unwrap().unwrap().documents, 1);
    assert!(log.store.document("c", "scan.pdf").is_err());
    // an upload of nothing readable finishes at once, with its errors
    let b = log
        .apply(Command::AcceptUpload {
            collection: "c".into(),
            job_id: "j2".into(),
            documents: vec![],
            staged_parts: 0,
            failed,
            at_ms: 6,
        })
        .unwrap();
    let Outcome::DocumentsAccepted { job } = b.outcome else {
        panic!()
    };
    assert_eq!(job.state(), JobState::CompletedWithErrors);
}
