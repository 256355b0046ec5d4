//! Bounded work and the life of jobs, on the real binary: a full ingest queue answers 429 and
//! loses nothing, dropped collections cancel their jobs, old jobs expire, a restart waits for the
//! previous process to let go of the store.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal_tests::{wait_until, Node};

fn long_text(words: usize, seed: usize) -> String {
    let vocab = [
        "river", "stone", "lantern", "orchard", "signal", "harbor", "meadow", "circuit", "glacier",
        "violin", "ledger", "compass", "thunder", "pepper", "canvas", "quartz",
    ];
    let mut out = String::new();
    for i in 0..words {
        out.push_str(vocab[(i * 7 + seed * 13 + i / 5) % vocab.len()]);
        out.push(if i % 12 == 11 { '.' } else { ' ' });
    }
    out
}

#[test]
fn a_full_ingest_queue_answers_429_with_retry_after_and_loses_nothing() {
    let node = Node::start(
        &[
            ("SHOAL_INGEST__MAX_QUEUE_BYTES", "70000"),
            ("SHOAL_INGEST__MAX_DOCUMENT_BYTES", "30000"),
            // slow ingest down so that the queue stays full while we knock
            ("SHOAL_THREADS__INGEST_INFERENCE", "1"),
            ("SHOAL_MODEL__INGEST_MICRO_BATCH", "1"),
        ],
        &[],
    );
    node.create_collection("q");
    let add = |id: usize| {
        node.post(
            "/api/v1/collections/q/documents",
            json!({"documents": [{"id": format!("doc{id}"), "text": long_text(3_000, id)}]}),
        )
    };
    // ~20 KB each: three fit in 70 KB, the fourth does not
    let mut accepted = Vec::new();
    let mut refused = None;
    for id in 0..6 {
        let r = add(id);
        match r.status {
            202 => accepted.push((id, r.body["job_id"].as_str().unwrap().to_string())),
            429 => {
                refused = Some((id, r));
                break;
            }
            s => panic!("unexpected {s}: {}", r.text),
        }
    }
    let (refused_id, r) = refused.expect("the queue never filled up");
    assert!(accepted.len() >= 2, "{} accepted", accepted.len());
    assert_eq!(r.body["error"]["code"], "too_many_requests", "{}", r.text);
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("ingest.max_queue_bytes"), "{msg}");
    let wait = r.retry_after.expect("a Retry-After header");
    assert!((1..=60).contains(&wait), "retry after {wait}");
    let m = node.metrics();
    assert!(shoal_tests::metric_value(&m, "shoal_ingest_rejected_total", "") >= 1.0);

    // nothing of the refused request was written
    assert_eq!(
        node.get(&format!("/api/v1/collections/q/documents/doc{refused_id}"))
            .status,
        404
    );
    // everything accepted is indexed; then the refused one goes in on a later try
    for (_, job) in &accepted {
        let j = node.wait_job(job);
        assert_eq!(j["state"], "completed", "{j}");
    }
    let info = node.get("/api/v1/collections/q");
    assert_eq!(info.body["documents"], accepted.len() as u64);
    let job = node.ingest_async(
        "q",
        json!([{"id": format!("doc{refused_id}"), "text": long_text(3_000, refused_id)}]),
    );
    assert_eq!(node.wait_job(&job)["state"], "completed");
}

#[test]
fn a_request_that_can_never_fit_gets_413_not_429_declared_or_chunked() {
    let node = Node::start(
        &[
            ("SHOAL_INGEST__MAX_QUEUE_BYTES", "50000"),
            ("SHOAL_INGEST__MAX_DOCUMENT_BYTES", "30000"),
            ("SHOAL_SERVER__MAX_BODY_BYTES", "150000"),
        ],
        &[],
    );
    node.create_collection("big");
    let path = "/api/v1/collections/big/documents";
    // `n` documents of `words` words (3,000: ~20 KB)
    let body = |n: usize, words: usize| {
        let docs: Vec<Value> = (0..n)
            .map(|i| json!({"id": format!("d{i}"), "text": long_text(words, i)}))
            .collect();
        json!({ "documents": docs }).to_string()
    };
    let expect_413 = |r: &shoal_tests::Resp, limit: &str| {
        assert_eq!(r.status, 413, "{}", r.text);
        assert_eq!(r.body["error"]["code"], "payload_too_large", "{}", r.text);
        let msg = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(limit), "{msg}");
    };
    // ~80 KB: within the body limit, more than the whole queue
    let over_queue = body(4, 3_000);
    assert!(over_queue.len() > 50_000 && over_queue.len() < 150_000);
    expect_413(
        &node.raw("POST", path, &over_queue),
        "ingest.max_queue_bytes",
    );
    // the same without a declared length: read, then refused for its text
    expect_413(
        &node.post_chunked(path, &over_queue),
        "ingest.max_queue_bytes",
    );
    // ~200 KB declared: over the body limit, refused before it is read
    let over_body = body(10, 3_000);
    assert!(over_body.len() > 150_000);
    expect_413(&node.raw("POST", path, &over_body), "too large");
    // chunked, it is read up to the limit: the answer is 413, unless the server closed the
    // connection at the limit before the client could read it (a refusal too)
    if let Ok(r) = node.try_post_chunked(path, &over_body) {
        expect_413(&r, "too large");
    }
    // nothing was written, nothing is held: a small request still goes in, chunked too
    assert_eq!(node.get("/api/v1/collections/big").body["documents"], 0);
    let r = node.post_chunked(path, &body(1, 300));
    assert_eq!(r.status, 202, "{}", r.text);
    let job = r.body["job_id"].as_str().unwrap().to_string();
    assert_eq!(node.wait_job(&job)["state"], "completed");
}

#[test]
fn dropping_a_collection_cancels_its_unfinished_jobs() {
    let node = Node::start(
        &[
            ("SHOAL_THREADS__INGEST_INFERENCE", "1"),
            ("SHOAL_MODEL__INGEST_MICRO_BATCH", "1"),
        ],
        &[],
    );
    node.create_collection("gone");
    let docs: Vec<Value> = (0..60)
        .map(|i| json!({"id": format!("d{i}"), "text": long_text(400, i)}))
        .collect();
    let job = node.ingest_async("gone", Value::Array(docs));
    let r = node.request("DELETE", "/api/v1/collections/gone", None);
    assert_eq!(r.status, 200, "{}", r.text);
    let j = node.wait_job(&job);
    assert_eq!(j["state"], "cancelled", "{j}");
    // the node goes on: a new collection of the same name ingests normally
    node.create_collection("gone");
    let job = node.ingest("gone", json!([{"id": "a", "text": "a fresh start"}]));
    assert_eq!(job["state"], "completed", "{job}");
}

#[test]
fn finished_jobs_are_forgotten_after_the_retention() {
    let node = Node::start(&[("SHOAL_INGEST__JOB_RETENTION_S", "1")], &[]);
    node.create_collection("r");
    let job = node.ingest("r", json!([{"id": "a", "text": "kept briefly"}]));
    assert_eq!(job["state"], "completed");
    let id = job["id"].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(15), "the job to expire", || {
        node.get(&format!("/api/v1/jobs/{id}")).status == 404
    });
    // the documents stay
    assert_eq!(node.get("/api/v1/collections/r/documents/a").status, 200);
}

#[test]
fn a_restart_waits_for_the_previous_process_to_let_go_of_the_store() {
    let mut node = Node::start(&[("SHOAL_STORAGE__LOCK_WAIT_MS", "20000")], &[]);
    node.create_collection("l");
    node.stop();
    // another process (this test) still holds the store's lock, as a process killed a moment
    // ago can until it is reaped
    let store_dir = node.data.join("store");
    let held = shoal_storage::Store::open(&store_dir, shoal_storage::StoreOptions::default())
        .expect("open the store");

    // with a short wait, the start fails with a message that says why
    let mut cmd = node.command();
    cmd.env("SHOAL_STORAGE__LOCK_WAIT_MS", "300");
    let out = cmd.output().expect("run shoal");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked by another process"), "{err}");

    // with the default wait, it starts as soon as the lock is released
    let t = Instant::now();
    std::thread::scope(|s| {
        s.spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            drop(held);
        });
        node.start_again();
    });
    assert!(t.elapsed() >= Duration::from_millis(1500));
    assert_eq!(node.get("/api/v1/collections/l").status, 200);
}
