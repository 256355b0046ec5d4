//! `shoal bench`, the load generator, against a real node: it counts what it sent, reports
//! percentiles in order, drives an ingest stream beside the searches, and refuses bad input with
//! a message and an exit code.

use std::process::Command;

use serde_json::Value;
use shoal_tests::{corpus, shoal_bin, wait_until, Node, ADMIN_KEY};

fn bench(node: &Node, args: &[&str]) -> std::process::Output {
    Command::new(shoal_bin())
        .arg("bench")
        .args(["--node", &node.base])
        .args(args)
        .env("SHOAL_TOKEN", ADMIN_KEY)
        .output()
        .unwrap()
}

#[test]
fn the_load_generator_measures_searches_and_ingest_and_refuses_bad_input() {
    let node = Node::start(&[], &[]);
    node.create_collection("b");
    node.ingest("b", corpus());
    let dir = tempfile::tempdir().unwrap();
    let queries = dir.path().join("q.txt");
    let vector = vec!["0.05"; 384].join(", ");
    std::fs::write(
        &queries,
        format!("tall iron tower in paris\n[{vector}]\n{{\"query\": \"plants\", \"top_k\": 2}}\n"),
    )
    .unwrap();
    let stream = dir.path().join("stream.txt");
    std::fs::write(&stream, "one new sentence\nanother new sentence\n").unwrap();
    let before: u64 = node.get("/api/v1/collections/b").body["documents"]
        .as_u64()
        .unwrap_or(0);

    let out = bench(
        &node,
        &[
            "--collection",
            "b",
            "--queries",
            queries.to_str().unwrap(),
            "--clients",
            "3",
            "--requests",
            "60",
            "--warmup",
            "0s",
            "--json",
            "--quiet",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let searches = r["searches"].as_u64().unwrap();
    // three clients stop once 60 are done; at most the two others' requests in flight on top
    assert!((60..=62).contains(&searches), "{r}");
    assert_eq!(r["errors"].as_object().unwrap().len(), 0, "{r}");
    let p = |k: &str| r[k].as_f64().unwrap();
    assert!(p("qps") > 0.0);
    assert!(0.0 < p("p50_ms") && p("p50_ms") <= p("p95_ms"), "{r}");
    assert!(
        p("p95_ms") <= p("p99_ms") && p("p99_ms") <= p("max_ms"),
        "{r}"
    );
    // an ingest stream beside the searches, for a duration: its documents are sent and stored
    let out = bench(
        &node,
        &[
            "--collection",
            "b",
            "--queries",
            queries.to_str().unwrap(),
            "--duration",
            "1500ms",
            "--warmup",
            "0s",
            "--ingest-rate",
            "20",
            "--ingest-file",
            stream.to_str().unwrap(),
            "--ingest-batch",
            "2",
            "--json",
            "--quiet",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["seconds"].as_f64().unwrap() >= 1.5, "{r}");
    let sent = r["ingest"]["accepted_docs"].as_u64().unwrap();
    assert!(sent > 0, "{r}");
    {
        wait_until(
            std::time::Duration::from_secs(60),
            "the streamed documents are stored",
            || {
                node.get("/api/v1/collections/b").body["documents"]
                    .as_u64()
                    .unwrap_or(0)
                    >= before + sent
            },
        );
    }

    // a report a person reads
    let out = bench(
        &node,
        &[
            "--collection",
            "b",
            "--queries",
            queries.to_str().unwrap(),
            "-n",
            "5",
            "--quiet",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("throughput") && text.contains("p99"),
        "{text}"
    );

    // bad input: exit codes and messages
    let q = queries.to_str().unwrap();
    let refused = |args: &[&str], code: i32, says: &str| {
        let out = bench(&node, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    };
    refused(
        &["--collection", "nope", "--queries", q, "-n", "1"],
        1,
        "nope",
    );
    refused(
        &["--collection", "b", "--queries", q, "-c", "0"],
        2,
        "--clients",
    );
    let bad_line = dir.path().join("bad.txt");
    std::fs::write(&bad_line, "[1, 2,]\n").unwrap();
    let bad = bad_line.to_str().unwrap();
    refused(
        &["--collection", "b", "--queries", bad, "-n", "1"],
        2,
        "line 1",
    );
    refused(
        &["--collection", "b", "--queries", "/nonexistent", "-n", "1"],
        2,
        "/nonexistent",
    );
    refused(
        &["--collection", "b", "--queries", q, "-d", "5 parsecs"],
        2,
        "parsecs",
    );
}
