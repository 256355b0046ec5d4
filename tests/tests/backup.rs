//! Backup and restore on the real binary: `shoal snapshot create` saves a running node's state
//! while it serves, `shoal snapshot restore` makes a new node (the first of a new cluster) from
//! it, with the same data, the same answers, and room for other nodes to join.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use shoal_tests::cluster::{cluster_env, SECRET};
use shoal_tests::{corpus, hit_ids, hit_scores, model_dir, shoal_bin, wait_until, Node, Resp};

const QUERIES: &[&str] = &[
    "how do plants make food from sunlight",
    "tallest iron tower in Paris",
    "a board game with kings and queens",
    "the biggest ocean on earth",
];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn shoal(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(shoal_bin());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run shoal")
}

fn digest(node: &Node) -> Value {
    let r = node.get("/api/v1/admin/digest");
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

/// Each query's hits (ids and scores), for comparing two nodes' answers.
fn answers(node: &Node, collection: &str) -> Vec<Vec<(String, String)>> {
    QUERIES
        .iter()
        .map(|q| {
            let r = node.search(collection, json!({"query": q, "top_k": 5}));
            assert_eq!(r.status, 200, "{}", r.text);
            hit_scores(&r.body)
                .into_iter()
                .map(|(id, score)| (id, format!("{score:.5}")))
                .collect()
        })
        .collect()
}

fn collections(node: &Node) -> Value {
    let r = node.get("/api/v1/collections");
    assert_eq!(r.status, 200, "{}", r.text);
    let mut list: Vec<Value> = r.body["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| json!([c["name"], c["documents"], c["chunks"]]))
        .collect();
    list.sort_by_key(|v| v.to_string());
    Value::Array(list)
}

#[test]
fn a_backup_taken_while_serving_restores_as_a_new_cluster_with_the_same_data_and_answers() {
    let env: Vec<(String, String)> = cluster_env(&[]);
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut a = Node::prepare(
        &[
            env_ref[0],
            ("SHOAL_CLUSTER__BOOTSTRAP", "true"),
            // a Raft snapshot of its own now and then, as in production
            ("SHOAL_CLUSTER__SNAPSHOT_AFTER_ENTRIES", "20"),
        ],
        &["--node-id", "1"],
    );
    a.start_again();
    a.create_collection("wiki");
    a.create_collection("notes");
    a.ingest("wiki", corpus());
    a.ingest(
        "notes",
        json!([
            {"id": "n1", "text": "Buy flour and eggs for the pancakes on Sunday.", "metadata": {"kind": "todo"}},
            {"id": "n2", "text": "The quarterly report is due on the first Monday of April."}
        ]),
    );
    let r = a.request("DELETE", "/api/v1/collections/wiki/documents/chess", None);
    assert_eq!(r.status, 200, "{}", r.text);

    // a backup while searches run: none of them fails or waits for it
    let stop = Arc::new(AtomicBool::new(false));
    let (searched, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let searcher = {
        let (stop, searched, failed) = (stop.clone(), searched.clone(), failed.clone());
        let base = a.base.clone();
        let http = a.client(true);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let ok = http
                    .post(format!("{base}/api/v1/collections/wiki/search"))
                    .json(&json!({"query": "photosynthesis", "top_k": 3}))
                    .send()
                    .is_ok_and(|r| r.status().is_success());
                searched.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    wait_until(Duration::from_secs(30), "searches running", || {
        searched.load(Ordering::Relaxed) >= 3
    });
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("shoal.backup");
    let backup_s = backup.to_str().unwrap();
    // without the secret, a node of a cluster refuses
    let out = shoal(
        &["snapshot", "create", "--node", &a.base, "--out", backup_s],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!backup.exists());
    let out = shoal(
        &["snapshot", "create", "--node", &a.base, "--out", backup_s],
        &[("SHOAL_CLUSTER__SECRET", SECRET)],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("log index"), "{stdout}");
    stop.store(true, Ordering::Relaxed);
    searcher.join().unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "searches failed during the backup"
    );
    let source_digest = digest(&a);
    let source_answers = (answers(&a, "wiki"), answers(&a, "notes"));
    let source_collections = collections(&a);
    let source_cluster = a.get("/api/v1/cluster").body["cluster_id"].clone();

    // damaged backups are refused, and leave nothing behind
    let mut b = Node::prepare(&env_ref, &[]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    b.set_listen(&listen);
    let mut bytes = std::fs::read(&backup).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    let damaged = dir.path().join("damaged.backup");
    std::fs::write(&damaged, &bytes).unwrap();
    let restore = |file: &std::path::Path| {
        shoal(
            &[
                "snapshot",
                "restore",
                file.to_str().unwrap(),
                "--data-dir",
                b.data.to_str().unwrap(),
                "--listen",
                &listen,
                "--model",
                model_dir().to_str().unwrap(),
            ],
            &env_ref,
        )
    };
    let out = restore(&damaged);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("damaged"),
        "{out:?}"
    );
    // the half-made folder is not started on
    let mut serve = b
        .command()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut exited = None;
    wait_until(
        Duration::from_secs(60),
        "serve to refuse the folder",
        || {
            exited = serve.try_wait().unwrap();
            exited.is_some()
        },
    );
    assert!(!exited.unwrap().success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut serve.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("did not finish"), "{err}");
    // and the restore done again makes it whole
    let out = restore(&backup);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("new cluster"),
        "{out:?}"
    );
    // a folder that holds a node already is never overwritten
    let out = restore(&backup);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("new folder"),
        "{out:?}"
    );

    // the restored node: the same data, the same answers, a cluster of its own
    b.start_again();
    assert_eq!(
        digest(&b)["data_digest"],
        source_digest["data_digest"],
        "{source_digest} vs {}",
        digest(&b)
    );
    assert_eq!(collections(&b), source_collections);
    assert_eq!((answers(&b, "wiki"), answers(&b, "notes")), source_answers);
    assert!(b
        .search_ids("wiki", json!({"query": "chess openings", "top_k": 10}))
        .iter()
        .all(|id| id != "chess"));
    let status = b.get("/api/v1/cluster").body;
    assert_ne!(status["cluster_id"], source_cluster, "{status}");
    assert_eq!(
        status["members"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    // it takes writes, and keeps them across a restart
    b.ingest(
        "notes",
        json!([{"id": "n3", "text": "Water the tomatoes every evening in July."}]),
    );
    b.kill9();
    b.start_again();
    assert_eq!(
        hit_ids(
            &b.search(
                "notes",
                json!({"query": "gardening vegetables", "top_k": 1})
            )
            .body
        ),
        ["n3"]
    );

    // another node joins the restored one, and catches up from its snapshot
    let c = Node::start(&env_ref, &["--node-id", "7", "--join", &b.base]);
    wait_until(Duration::from_secs(60), "the joined node caught up", || {
        let r: Resp = c.get("/api/v1/admin/digest");
        r.status == 200 && r.body["digest"] == digest(&b)["digest"]
    });
    assert_eq!(answers(&c, "wiki"), source_answers.0);

    // a node that belongs to no cluster yet has nothing to back up: a clear refusal, no file
    let mut lone = Node::prepare(&env_ref, &["--node-id", "8"]);
    lone.spawn_unready();
    let lonely = dir.path().join("lone.backup");
    let out = shoal(
        &[
            "snapshot",
            "create",
            "--node",
            &lone.base,
            "--out",
            lonely.to_str().unwrap(),
        ],
        &[("SHOAL_CLUSTER__SECRET", SECRET)],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a member"),
        "{out:?}"
    );
    assert!(!lonely.exists());
}
