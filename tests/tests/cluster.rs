//! Multi-node tests: real `shoal` processes on loopback replicating through Raft.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal_tests::cluster::{cluster_env, Cluster, SECRET};
use shoal_tests::{corpus, hit_ids, metric_value, shoal_bin, wait_until, Node, PARAPHRASES};

/// A client that signs in as the harness's nodes' admin.
fn client() -> reqwest::blocking::Client {
    shoal_tests::admin_client(Duration::from_secs(30))
}

/// A client with no credential.
fn bare_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// `n` short documents, one sentence each, about distinct numbered things.
fn numbered_docs(prefix: &str, n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| {
                json!({
                    "id": format!("{prefix}-{i}"),
                    "text": format!("Report number {i} about {prefix}: the {i}th sample of this series was recorded today."),
                    "metadata": {"n": i}
                })
            })
            .collect(),
    )
}

/// Run `shoal cluster ARGS...`; returns (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(shoal_bin())
        .arg("cluster")
        .args(args)
        .env("SHOAL_CLUSTER__SECRET", SECRET)
        .output()
        .expect("run shoal cluster");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn three_voters_and_a_learner_serve_the_same_hits() {
    let c = Cluster::start(3, 1, &[]);
    let status = c.status(3);
    let roles: BTreeMap<u64, String> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        BTreeMap::from([
            (1, "voter".into()),
            (2, "voter".into()),
            (3, "voter".into()),
            (4, "learner".into())
        ])
    );
    // writes through a follower are forwarded to the leader
    let f = c.follower();
    c.nodes[f].create_collection("wiki");
    let job = c.nodes[f].ingest("wiki", corpus());
    assert_eq!(job["state"], "completed", "{job}");
    let at = job["index"].as_u64().unwrap();
    assert!(
        metric_value(
            &c.nodes[f].metrics(),
            "shoal_cluster_forwarded_writes_total",
            ""
        ) >= 2.0
    );
    // every node, the learner too, answers the same hits (reading at the job's index)
    for (q, want) in PARAPHRASES {
        let mut answers = Vec::new();
        for n in &c.nodes {
            let r = n.search("wiki", json!({"query": q, "top_k": 5, "min_index": at}));
            assert_eq!(r.status, 200, "{}", r.text);
            assert_eq!(r.body["stale"], false, "{}", r.text);
            assert!(r.body["applied_index"].as_u64().unwrap() >= at);
            answers.push(hit_ids(&r.body));
        }
        assert_eq!(answers[0][0], *want, "query {q:?}");
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "{q:?}: {answers:?}"
        );
    }
    // a collection changed to an int8 walk through a follower: every node's shard of it loads
    // again with the codes, and every node answers the same hits
    let vectors_memory = |n: &Node| {
        n.get("/api/v1/collections/wiki").body["storage"]["vectors_memory_bytes"]
            .as_u64()
            .unwrap()
    };
    let float_memory: Vec<u64> = c.nodes.iter().map(vectors_memory).collect();
    let r = c.nodes[f].request(
        "PATCH",
        "/api/v1/collections/wiki",
        Some(&json!({"quantization": "int8"})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let at = r.body["log_index"].as_u64().unwrap();
    for (n, float_memory) in c.nodes.iter().zip(float_memory) {
        wait_until(
            Duration::from_secs(30),
            "every node's codes counted",
            || {
                let info = n.get("/api/v1/collections/wiki");
                info.body["index"]["quantization"] == "int8"
                    && vectors_memory(n) > float_memory + float_memory / 5
            },
        );
    }
    let answers: Vec<_> = c
        .nodes
        .iter()
        .map(|n| {
            let r = n.search(
                "wiki",
                json!({"query": "first humans on the moon", "top_k": 5, "min_index": at}),
            );
            assert_eq!(r.status, 200, "{}", r.text);
            hit_ids(&r.body)
        })
        .collect();
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    c.wait_converged(Duration::from_secs(30));
}

#[test]
fn killing_the_leader_during_ingest_loses_no_acknowledged_document() {
    let mut c = Cluster::start(3, 0, &[("SHOAL_CLUSTER__CLAIM_TTL_MS", "3000")]);
    let leader = c.leader(Duration::from_secs(30));
    let f = c.follower();
    c.nodes[f].create_collection("docs");
    // A client writes one document per request through the follower, and notes what was
    // acknowledged (202) and what failed while there was no leader.
    let base = c.nodes[f].base.clone();
    let acked = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let writer = {
        let (acked, failed) = (acked.clone(), failed.clone());
        std::thread::spawn(move || {
            let http = client();
            for i in 0..60 {
                let id = format!("doc-{i}");
                let body = json!({"documents": [{"id": id, "text": format!("Entry {i} of the failover log: a short sentence that is easy to embed.")}]});
                let r = http
                    .post(format!("{base}/api/v1/collections/docs/documents"))
                    .json(&body)
                    .send();
                match r {
                    Ok(r) if r.status().as_u16() == 202 => acked.lock().push(id),
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(30));
            }
        })
    };
    wait_until(Duration::from_secs(60), "10 acknowledged writes", || {
        acked.lock().len() >= 10
    });
    c.nodes[leader].kill9();
    writer.join().unwrap();
    let new_leader = c.leader(Duration::from_secs(30));
    assert_ne!(new_leader, leader);
    let acked = acked.lock().clone();
    assert!(
        acked.len() >= 30,
        "only {} writes were acknowledged",
        acked.len()
    );
    // writes resumed after the election: the last ones went through
    assert!(acked.contains(&"doc-59".to_string()), "{acked:?}");
    // every acknowledged document is indexed and found on every surviving node
    for i in c.running() {
        for id in &acked {
            wait_until(
                Duration::from_secs(60),
                "an acknowledged document indexed",
                || {
                    let r = c.nodes[i].get(&format!("/api/v1/collections/docs/documents/{id}"));
                    r.status == 200 && r.body["state"] == "indexed"
                },
            );
        }
        let r = c.search(
            i,
            "docs",
            json!({"query": "failover log entry", "top_k": 100, "consistency": "strong"}),
        );
        assert_eq!(r.status, 200, "{}", r.text);
        let found: HashSet<String> = hit_ids(&r.body).into_iter().collect();
        for id in &acked {
            assert!(found.contains(id), "node {i} does not find {id}");
        }
    }
    // the old leader comes back and catches up
    c.nodes[leader].start_again();
    c.wait_converged(Duration::from_secs(60));
}

#[test]
fn a_wiped_node_catches_up_through_a_snapshot() {
    let mut c = Cluster::start(
        3,
        0,
        &[
            ("SHOAL_CLUSTER__SNAPSHOT_AFTER_ENTRIES", "20"),
            ("SHOAL_CLUSTER__KEEP_ENTRIES_AFTER_SNAPSHOT", "2"),
        ],
    );
    let leader = c.leader(Duration::from_secs(30));
    let victim = c.follower();
    c.nodes[leader].create_collection("wiki");
    c.nodes[leader].ingest("wiki", corpus());
    c.nodes[victim].stop();
    std::fs::remove_dir_all(&c.nodes[victim].data).unwrap();
    // it comes back the way a node that lost its folder must: joining again
    let seed = c.nodes[leader].base.clone();
    c.nodes[victim].remove_arg("--join", true);
    c.nodes[victim].remove_arg("--voter", false);
    c.nodes[victim].add_args(&["--join", &seed]);
    // more than a snapshot's worth of entries while it is away: the log it would need is gone
    for i in 0..30 {
        c.nodes[leader].create_collection(&format!("extra-{i}"));
    }
    let job = c.nodes[leader].ingest("wiki", numbered_docs("late", 5));
    assert_eq!(job["state"], "completed");
    let m = c.nodes[leader].metrics();
    assert!(
        metric_value(&m, "shoal_cluster_snapshots_total", "built") >= 1.0,
        "{m}"
    );
    c.nodes[victim].start_again();
    c.wait_converged(Duration::from_secs(60));
    let m = c.nodes[victim].metrics();
    assert!(
        metric_value(&m, "shoal_cluster_snapshots_total", "installed") >= 1.0,
        "caught up without a snapshot: {m}"
    );
    // it lost its vote with its folder: the leader made it a learner, and it votes again only
    // once promoted
    c.wait_members(2, 1, Duration::from_secs(30));
    let roles = c.status(leader);
    let me = roles["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == Cluster::id(victim))
        .cloned()
        .unwrap();
    assert_eq!(me["role"], "learner", "{roles}");
    let (code, out, err) = cli(&[
        "promote",
        &Cluster::id(victim).to_string(),
        "--node",
        &c.nodes[leader].base,
    ]);
    assert_eq!(code, 0, "{out} {err}");
    c.wait_members(3, 0, Duration::from_secs(30));
    // and serves the same hits, graph rebuilt from the snapshot's store
    for (q, want) in PARAPHRASES {
        let r = c.search(victim, "wiki", json!({"query": q, "top_k": 3}));
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(hit_ids(&r.body)[0], *want);
    }
    let r = c.search(
        victim,
        "wiki",
        json!({"query": "sample report", "top_k": 20}),
    );
    assert!(hit_ids(&r.body).iter().any(|id| id.starts_with("late-")));
}

#[test]
fn a_node_catching_up_is_not_ready_and_answers_503_not_404_for_what_it_lacks() {
    let mut c = Cluster::start(1, 1, &[]);
    c.nodes[0].create_collection("wiki");
    wait_until(
        Duration::from_secs(30),
        "the learner to have `wiki`",
        || c.nodes[1].get("/api/v1/collections/wiki").status == 200,
    );
    // while the learner is down the leader makes a collection, and cannot send to it afterwards
    c.nodes[1].stop();
    c.cut(0, &[2]);
    c.nodes[0].create_collection("late");
    c.nodes[1].spawn_unready();
    // it has what it had; what it may lack is "not here yet", and it is not ready
    let r = c.nodes[1].get("/api/v1/collections/wiki");
    assert_eq!(r.status, 200, "{}", r.text);
    let r = c.nodes[1].get("/api/v1/collections/late");
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.text.contains("catching up"), "{}", r.text);
    let r = c.search(1, "late", json!({"query": "chess", "top_k": 1}));
    assert_eq!(r.status, 503, "{}", r.text);
    let ready = c.nodes[1].get("/api/ready");
    assert_eq!(ready.body["ready"], false, "{}", ready.text);
    assert!(
        ready.body["reasons"].as_array().is_some_and(|r| r
            .iter()
            .any(|r| r.as_str().unwrap_or_default().contains("catching up"))),
        "{}",
        ready.text
    );
    assert!(
        ready.body["components"]["cluster"]["catching_up"].is_string(),
        "{}",
        ready.text
    );
    // once the leader reaches it, it catches up, is ready, and what it lacks is 404 again
    c.heal();
    c.nodes[1].wait_ready(Duration::from_secs(60));
    let r = c.nodes[1].get("/api/v1/collections/late");
    assert_eq!(r.status, 200, "{}", r.text);
    let r = c.nodes[1].get("/api/v1/collections/never-made");
    assert_eq!(r.status, 404, "{}", r.text);
}

#[test]
fn a_leader_told_to_stop_lets_the_others_elect_a_new_one_while_it_drains() {
    let mut c = Cluster::start(3, 0, &[]);
    c.nodes[0].create_collection("wiki");
    let leader = c.leader(Duration::from_secs(30));
    let follower = (0..3).find(|i| *i != leader).unwrap();
    // a read at an index far ahead: a leader that drained before it left consensus waited
    // cluster.read_wait_ms (10 s) for it, leading all the while
    let base = c.nodes[leader].base.clone();
    let held = std::thread::spawn(move || {
        client()
            .post(format!("{base}/api/v1/collections/wiki/search"))
            .json(&json!({"query": "chess", "min_index": 1_000_000_000u64}))
            .send()
            .map(|r| r.status().as_u16())
    });
    wait_until(Duration::from_secs(10), "the held read in flight", || {
        metric_value(
            &c.nodes[leader].metrics(),
            "shoal_http_requests_in_flight",
            "/search",
        ) >= 1.0
    });
    let pid = c.nodes[leader].pid().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let told = Instant::now();
    // the others elect a leader while the old one drains (it no longer sends heartbeats)...
    let old = Cluster::id(leader);
    wait_until(Duration::from_secs(8), "a new leader", || {
        let s = c.nodes[follower].get("/api/v1/cluster").body;
        s["leader"].as_u64().is_some_and(|l| l != old)
    });
    // ... and take writes
    let mut n = 0;
    let mut last = String::new();
    while told.elapsed() < Duration::from_secs(8) {
        n += 1;
        let r = c.nodes[follower].request("PUT", &format!("/api/v1/collections/after-{n}"), None);
        if r.status == 201 {
            break;
        }
        last = r.text;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        told.elapsed() < Duration::from_secs(8),
        "no write went through for 8 s after the leader was told to stop (last: {last})"
    );
    let _ = held.join();
    assert!(
        c.nodes[leader].terminate(),
        "the old leader did not stop cleanly"
    );
}

#[test]
fn a_write_through_a_follower_when_the_leaders_store_fails_answers_504_then_writes_go_on() {
    let c = Cluster::start(3, 0, &[]);
    let leader = c.leader(Duration::from_secs(30));
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let r = c.nodes[leader].request("POST", "/api/v1/admin/faults/storage", None);
    assert_eq!(r.status, 200, "{}", r.text);
    // the leader takes the write, replicates it and fails to apply it: the follower that sent it
    // cannot know whether it took effect (it did: it was committed) and says so, never 500
    let r = c.nodes[follower].request("PUT", "/api/v1/collections/taken", None);
    assert_eq!(r.status, 504, "{}", r.text);
    assert!(r.text.contains("outcome is unknown"), "{}", r.text);
    // writes through the follower go on once another leader is elected; meanwhile they are
    // refused (503) or sent on, never answered 500
    let started = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let r = c.nodes[follower].request("PUT", &format!("/api/v1/collections/after-{n}"), None);
        assert!(
            [201, 503, 504].contains(&r.status),
            "{} {}",
            r.status,
            r.text
        );
        if r.status == 201 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no write went through: {}",
            r.text
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // the write answered 504 had been committed: every live node has it
    wait_until(
        Duration::from_secs(10),
        "the 504 write on the follower",
        || c.nodes[follower].get("/api/v1/collections/taken").status == 200,
    );
}

#[test]
fn join_promote_and_remove_while_searches_go_on() {
    let mut c = Cluster::start(3, 0, &[]);
    c.nodes[0].create_collection("wiki");
    c.nodes[0].ingest("wiki", corpus());
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let searcher = {
        let (stop, ok, errors) = (stop.clone(), ok.clone(), errors.clone());
        let base = c.nodes[0].base.clone();
        std::thread::spawn(move || {
            let http = client();
            while !stop.load(Ordering::Relaxed) {
                let r = http
                    .post(format!("{base}/api/v1/collections/wiki/search"))
                    .json(&json!({"query": "how do plants make food from sunlight", "top_k": 1}))
                    .send();
                match r {
                    Ok(r) if r.status().as_u16() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    // a fourth node joins as a learner
    let env = cluster_env(&[]);
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let seed = c.nodes[0].base.clone();
    c.nodes.push(Node::start(
        &env_ref,
        &["--node-id", "4", "--fault-injection", "--join", &seed],
    ));
    c.wait_members(3, 1, Duration::from_secs(60));
    // promoted with the CLI, through any node
    let (code, out, err) = cli(&["promote", "4", "--node", &c.nodes[1].base]);
    assert_eq!(code, 0, "{out} {err}");
    c.wait_members(4, 0, Duration::from_secs(30));
    // a voter that is not the searched node is removed
    let leader = c.leader(Duration::from_secs(30));
    let victim = (1..3).find(|i| *i != leader).unwrap();
    let (code, out, err) = cli(&[
        "remove",
        &Cluster::id(victim).to_string(),
        "--node",
        &c.nodes[3].base,
    ]);
    assert_eq!(code, 0, "{out} {err}");
    c.wait_members(3, 0, Duration::from_secs(30));
    c.nodes[victim].stop();
    let status = c.status(0);
    let ids: HashSet<u64> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert!(
        !ids.contains(&Cluster::id(victim)) && ids.contains(&4),
        "{status}"
    );
    // the status table names every member
    let (code, table, _) = cli(&["status", "--node", &c.nodes[3].base]);
    assert_eq!(code, 0);
    assert!(
        table.contains("leader") && table.contains(&c.nodes[3].base),
        "{table}"
    );
    // the new voter serves the same hits
    let r = c.search(3, "wiki", json!({"query": "first people to walk on the lunar surface", "top_k": 1, "consistency": "strong"}));
    assert_eq!(hit_ids(&r.body), ["moon-landing"], "{}", r.text);
    stop.store(true, Ordering::Relaxed);
    searcher.join().unwrap();
    assert!(ok.load(Ordering::Relaxed) > 10);
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "searches failed during membership changes"
    );
    // bad requests get clear errors
    let (code, _, err) = cli(&["promote", "99", "--node", &c.nodes[0].base]);
    assert_eq!(code, 1);
    assert!(err.contains("no node with id 99"), "{err}");
    let (code, _, err) = cli(&["status", "--node", "http://127.0.0.1:9"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot reach"), "{err}");
    c.wait_converged(Duration::from_secs(30));
}

#[test]
fn a_minority_cut_off_serves_stale_reads_refuses_writes_and_converges_after_healing() {
    let c = Cluster::start(
        3,
        0,
        &[
            ("SHOAL_CLUSTER__STALE_AFTER_MS", "1000"),
            ("SHOAL_CLUSTER__WRITE_TIMEOUT_MS", "2000"),
        ],
    );
    c.nodes[0].create_collection("wiki");
    c.nodes[0].ingest("wiki", corpus());
    let minority = c.follower();
    let majority: Vec<usize> = (0..3).filter(|i| *i != minority).collect();
    c.isolate(minority);
    // the minority answers local searches, marked stale
    wait_until(
        Duration::from_secs(10),
        "the minority to call itself stale",
        || {
            let r = c.search(minority, "wiki", json!({"query": "chess", "top_k": 1}));
            r.status == 200 && r.body["stale"] == true
        },
    );
    let r = c.search(
        minority,
        "wiki",
        json!({"query": "who found the first antibiotic", "top_k": 1}),
    );
    assert_eq!(hit_ids(&r.body), ["penicillin"]);
    assert!(r.body["stale_reason"].is_string(), "{}", r.text);
    // it is out of a load balancer's rotation, and says why; the majority stays in it
    let ready = c.nodes[minority].get("/api/ready");
    assert_eq!(ready.status, 503, "{}", ready.text);
    assert!(
        ready.body["reasons"][0]
            .as_str()
            .is_some_and(|r| r.contains("no leader or no quorum")),
        "{}",
        ready.text
    );
    for i in &majority {
        let ready = c.nodes[*i].get("/api/ready");
        assert_eq!(ready.status, 200, "{}", ready.text);
        assert_eq!(ready.body["reasons"], json!([]), "{}", ready.text);
    }
    // and refuses writes with a 503 that says why
    let r = c.nodes[minority].request("PUT", "/api/v1/collections/cut-off", None);
    assert_eq!(r.status, 503, "{}", r.text);
    let msg = r.body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains("no leader") || msg.contains("no quorum") || msg.contains("cannot reach"),
        "{msg}"
    );
    // a strong read cannot be served there either
    let r = c.search(
        minority,
        "wiki",
        json!({"query": "chess", "consistency": "strong"}),
    );
    assert_eq!(r.status, 503, "{}", r.text);
    // the majority goes on
    let job = c.nodes[majority[0]].ingest("wiki", numbered_docs("during-cut", 3));
    assert_eq!(job["state"], "completed");
    let at = job["index"].as_u64().unwrap();
    let r = c.search(
        majority[1],
        "wiki",
        json!({"query": "sample report", "top_k": 3, "min_index": at}),
    );
    assert_eq!(r.body["stale"], false, "{}", r.text);
    // healed: the minority catches up, and is current (and ready) again
    c.heal();
    c.wait_converged(Duration::from_secs(30));
    c.nodes[minority].wait_ready(Duration::from_secs(30));
    wait_until(
        Duration::from_secs(10),
        "the minority to be current",
        || {
            c.search(minority, "wiki", json!({"query": "chess", "top_k": 1}))
                .body["stale"]
                == false
        },
    );
    let r = c.search(
        minority,
        "wiki",
        json!({"query": "sample report", "top_k": 5, "min_index": at}),
    );
    assert!(
        hit_ids(&r.body)
            .iter()
            .any(|id| id.starts_with("during-cut-")),
        "{}",
        r.text
    );
    let r = c.nodes[minority].request("PUT", "/api/v1/collections/after-heal", None);
    assert_eq!(r.status, 201, "{}", r.text);
}

#[test]
fn reads_see_writes_made_on_other_nodes_by_index_and_after_a_leader_change() {
    let mut c = Cluster::start(3, 0, &[]);
    let leader = c.leader(Duration::from_secs(30));
    let a = c.follower();
    let b = (0..3).find(|i| *i != a && *i != leader).unwrap();
    // a collection made on A is there on B at once when B reads at its index
    let r = c.nodes[a].request("PUT", "/api/v1/collections/ryw", None);
    assert_eq!(r.status, 201, "{}", r.text);
    let at = r.body["log_index"].as_u64().unwrap();
    let r = c.search(b, "ryw", json!({"query": "anything", "min_index": at}));
    assert_eq!(r.status, 200, "{}", r.text);
    // documents indexed through A, read on B at the job's index
    let job = c.nodes[a].ingest("ryw", corpus());
    let at = job["index"].as_u64().unwrap();
    let r = c.search(
        b,
        "ryw",
        json!({"query": "who found the first antibiotic", "top_k": 1, "min_index": at}),
    );
    assert_eq!(hit_ids(&r.body), ["penicillin"], "{}", r.text);
    assert!(r.body["applied_index"].as_u64().unwrap() >= at);
    // a delete on A is gone on B at its index
    let r = c.nodes[a].request(
        "DELETE",
        "/api/v1/collections/ryw/documents/penicillin",
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let at = r.body["index"].as_u64().unwrap();
    let r = c.search(
        b,
        "ryw",
        json!({"query": "who found the first antibiotic", "top_k": 12, "min_index": at}),
    );
    assert!(
        !hit_ids(&r.body).contains(&"penicillin".to_string()),
        "{}",
        r.text
    );
    // an index far ahead is waited for, then refused with a clear error
    let r = c.search(
        b,
        "ryw",
        json!({"query": "x", "min_index": 1_000_000_000u64}),
    );
    assert_eq!(r.status, 503, "{}", r.text);
    // strong reads after a leader change see everything acknowledged before it
    c.nodes[leader].kill9();
    let new_leader = c.leader(Duration::from_secs(30));
    let r = c.nodes[new_leader].post(
        "/api/v1/collections/ryw/documents",
        json!({"documents": [{"id": "after", "text": "Written after the old leader died, to the new one."}]}),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let job = c.nodes[new_leader].wait_job(r.body["job_id"].as_str().unwrap());
    assert_eq!(job["state"], "completed");
    let other = (0..3).find(|i| *i != leader && *i != new_leader).unwrap();
    let r = c.search(
        other,
        "ryw",
        json!({"query": "written after the old leader died", "top_k": 1, "consistency": "strong"}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(hit_ids(&r.body), ["after"], "{}", r.text);
}

#[test]
fn ingest_is_claimed_by_several_nodes_and_a_node_killed_holding_claims_loses_nothing() {
    let mut c = Cluster::start(
        3,
        0,
        &[
            ("SHOAL_CLUSTER__CLAIM_TTL_MS", "2000"),
            ("SHOAL_INGEST__BATCH_CHUNKS", "4"),
        ],
    );
    let leader = c.leader(Duration::from_secs(30));
    c.nodes[leader].create_collection("spread");
    // long documents (several chunks each): each batch takes a while to embed
    let docs: Vec<Value> = (0..40)
        .map(|i| {
            let text = (0..25)
                .map(|j| {
                    format!(
                        "Paragraph {j} of report {i} describes measurement {} in some detail.",
                        i * 100 + j
                    )
                })
                .collect::<Vec<_>>()
                .join(" ");
            json!({"id": format!("r{i}"), "text": text})
        })
        .collect();
    let ids: Vec<String> = (0..40).map(|i| format!("r{i}")).collect();
    let job = c.nodes[leader].ingest_async("spread", Value::Array(docs));
    // Freeze a follower while it holds claims, then kill it: its documents are taken over once
    // its claims expire.
    let victim = (0..3).find(|i| *i != leader).unwrap();
    let victim_id = Cluster::id(victim);
    let deadline = Instant::now() + Duration::from_secs(120);
    let held: Vec<String> = loop {
        let pid = c.nodes[victim].pid().unwrap().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success());
        std::thread::sleep(Duration::from_millis(300));
        let held: Vec<String> = ids
            .iter()
            .filter(|id| {
                let d = c.nodes[leader]
                    .get(&format!("/api/v1/collections/spread/documents/{id}"))
                    .body;
                d["state"] == "pending" && d["claimed_by"].as_u64() == Some(victim_id)
            })
            .cloned()
            .collect();
        if !held.is_empty() {
            break held;
        }
        assert!(std::process::Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success());
        assert!(Instant::now() < deadline, "the victim never held a claim");
        std::thread::sleep(Duration::from_millis(100));
    };
    c.nodes[victim].kill9();
    let job = c.nodes[leader].wait_job(&job);
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["indexed"], 40, "{job}");
    // what it held was taken over by the others
    let survivors: Vec<usize> = c.running();
    let taken: f64 = survivors
        .iter()
        .map(|i| {
            metric_value(
                &c.nodes[*i].metrics(),
                "shoal_cluster_claims_total",
                "taken_over",
            )
        })
        .sum();
    assert!(
        taken >= held.len() as f64,
        "{taken} taken over, {} held: {held:?}",
        held.len()
    );
    // the work was spread: every survivor embedded and stored documents of the job
    let indexed: Vec<f64> = (0..3)
        .filter(|i| c.nodes[*i].is_running())
        .map(|i| {
            metric_value(
                &c.nodes[i].metrics(),
                "shoal_ingest_documents_total",
                "indexed",
            )
        })
        .collect();
    assert!(
        indexed.iter().all(|n| *n > 0.0),
        "documents indexed per survivor: {indexed:?}"
    );
    // nothing indexed twice: every document's chunks are stored once, and the index holds
    // exactly the stored chunks
    for i in survivors {
        let info = c.nodes[i].get("/api/v1/collections/spread").body;
        let mut chunks = 0;
        for id in &ids {
            let d = c.nodes[i]
                .get(&format!("/api/v1/collections/spread/documents/{id}"))
                .body;
            assert_eq!(d["state"], "indexed", "{d}");
            chunks += d["chunks"].as_u64().unwrap();
        }
        assert_eq!(info["chunks"].as_u64().unwrap(), chunks, "{info}");
        wait_until(
            Duration::from_secs(30),
            "the index to hold every chunk once",
            || {
                c.nodes[i].get("/api/v1/collections/spread").body["index"]["live_points"].as_u64()
                    == Some(chunks)
            },
        );
    }
    c.wait_converged(Duration::from_secs(30));
}

#[test]
fn internal_routes_refuse_outsiders_and_a_node_of_another_cluster_cannot_join() {
    let c = Cluster::start(1, 0, &[]);
    let http = bare_client();
    let url = format!("{}/internal/v1/groups/0/append", c.nodes[0].base);
    let post = |headers: &[(&str, &str)]| {
        let mut r = http.post(&url).body(vec![0u8; 4]);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send().unwrap().status().as_u16()
    };
    // no secret, a wrong one: 401, nothing appended
    assert_eq!(post(&[]), 401);
    assert_eq!(
        post(&[("x-shoal-cluster-secret", "not-the-secret-at-all")]),
        401
    );
    // the right secret from another cluster: 403
    assert_eq!(
        post(&[
            ("x-shoal-cluster-secret", SECRET),
            ("x-shoal-cluster-id", "some-other-cluster")
        ]),
        403
    );
    // votes and snapshots neither, with no secret or from another cluster
    for op in ["vote", "snapshot"] {
        let url = format!("{}/internal/v1/groups/0/{op}", c.nodes[0].base);
        assert_eq!(
            http.post(&url)
                .body(vec![1u8])
                .send()
                .unwrap()
                .status()
                .as_u16(),
            401
        );
        let r = http
            .post(&url)
            .header("x-shoal-cluster-secret", SECRET)
            .header("x-shoal-cluster-id", "some-other-cluster")
            .body(vec![1u8])
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{op}");
    }
    // and admin changes need the secret too
    let r = http
        .delete(format!("{}/api/v1/cluster/nodes/1", c.nodes[0].base))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // a node without a secret talks to nobody
    let lone = Node::start(&[], &[]);
    let r = http
        .post(format!("{}/internal/v1/groups/0/vote", lone.base))
        .header("x-shoal-cluster-secret", SECRET)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // a node that made its own cluster cannot join this one
    let env = cluster_env(&[]);
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut other_env = env_ref.clone();
    other_env.push(("SHOAL_CLUSTER__BOOTSTRAP", "true"));
    let other = Node::start(&other_env, &["--node-id", "7"]);
    let (code, _, err) = cli(&["join", &c.nodes[0].base, "--node", &other.base]);
    assert_eq!(code, 1);
    assert!(err.contains("already belongs to cluster"), "{err}");
    // nor can it reach into this cluster's internal routes with its own cluster id
    let other_id = other.get("/api/v1/cluster").body["cluster_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        post(&[
            ("x-shoal-cluster-secret", SECRET),
            ("x-shoal-cluster-id", &other_id)
        ]),
        403
    );
    // the last voter cannot be removed; an unknown id cannot be promoted
    let r = c.nodes[0].request("DELETE", "/api/v1/cluster/nodes/1", None);
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("last voter"), "{}", r.text);
    let r = c.nodes[0].request("POST", "/api/v1/cluster/nodes/42/promote", None);
    assert_eq!(r.status, 404, "{}", r.text);
    // init twice: refused
    let r = c.nodes[0].request("POST", "/api/v1/cluster/init", None);
    assert_eq!(r.status, 409, "{}", r.text);
}

#[test]
fn a_node_without_a_reranker_sends_the_rerank_step_to_one_that_has_it() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("reranker");
    shoal_tests::make_test_reranker(&model);
    let env = cluster_env(&[]);
    let mut env_ref: Vec<(&str, &str)> =
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let joiner_env = env_ref.clone();
    env_ref.push(("SHOAL_CLUSTER__BOOTSTRAP", "true"));
    let with = Node::start(
        &env_ref,
        &[
            "--node-id",
            "1",
            "--reranker-model",
            model.to_str().unwrap(),
        ],
    );
    let without = Node::start(&joiner_env, &["--node-id", "2", "--join", &with.base]);
    with.create_collection("wiki");
    let job = with.ingest("wiki", corpus());
    let at = job["index"].as_u64().unwrap();
    let body = json!({"query": "who found the first antibiotic", "top_k": 5, "rerank": true, "rerank_candidates": 12, "min_index": at});
    let here = with.search("wiki", body.clone());
    let there = without.search("wiki", body);
    assert_eq!(there.status, 200, "{}", there.text);
    let scores = |r: &shoal_tests::Resp| -> Vec<(String, f64)> {
        r.body["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["document_id"].as_str().unwrap().to_string(),
                    h["rerank_score"].as_f64().expect("a rerank score"),
                )
            })
            .collect()
    };
    let (a, b) = (scores(&here), scores(&there));
    assert_eq!(a.len(), 5);
    for ((da, sa), (db, sb)) in a.iter().zip(&b) {
        assert_eq!(da, db);
        assert!((sa - sb).abs() < 1e-4, "{a:?} vs {b:?}");
    }
    // the rerank endpoint too, with the model's name
    let r = without.post(
        "/v1/rerank",
        json!({"query": "chess", "documents": ["a board game with a king", "coffee beans"]}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["results"][0]["index"], 0, "{}", r.text);
    assert_eq!(
        r.body["meta"]["model"],
        with.get("/api/health").body["reranker"]["model"]
    );
    assert!(
        metric_value(
            &without.metrics(),
            "shoal_cluster_forwarded_reranks_total",
            ""
        ) >= 2.0
    );
}

#[test]
fn a_member_restarted_at_another_address_is_reached_there() {
    let mut c = Cluster::start(3, 0, &[]);
    c.nodes[0].create_collection("moved");
    let f = c.follower();
    let old = c.nodes[f].base.clone();
    c.nodes[f].stop();
    c.nodes[f].set_listen("127.0.0.1:0");
    c.nodes[f].start_again();
    let new = c.nodes[f].base.clone();
    assert_ne!(old, new);
    let id = Cluster::id(f);
    let leader = c.leader(Duration::from_secs(30));
    wait_until(
        Duration::from_secs(30),
        "the cluster to know the new address",
        || {
            c.status(leader)["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["id"] == id && m["addr"] == new.as_str())
        },
    );
    // it is replicated to at its new address, and its writes are forwarded from there
    let job = c.nodes[leader].ingest("moved", corpus());
    let r = c.search(
        f,
        "moved",
        json!({"query": "chess", "top_k": 1, "min_index": job["index"]}),
    );
    assert_eq!(hit_ids(&r.body), ["chess"], "{}", r.text);
    let r = c.nodes[f].request("PUT", "/api/v1/collections/from-new-address", None);
    assert_eq!(r.status, 201, "{}", r.text);
    c.wait_converged(Duration::from_secs(30));
}

#[test]
fn a_request_larger_than_an_entry_and_a_follower_caught_up_by_snapshot_serve_reads_at_their_index()
{
    let mut c = Cluster::start(
        3,
        0,
        &[
            ("SHOAL_CLUSTER__MAX_ENTRY_BYTES", "262144"),
            ("SHOAL_INGEST__MAX_DOCUMENT_BYTES", "65536"),
            ("SHOAL_CLUSTER__SNAPSHOT_AFTER_ENTRIES", "20"),
            ("SHOAL_CLUSTER__KEEP_ENTRIES_AFTER_SNAPSHOT", "2"),
        ],
    );
    let leader = c.leader(Duration::from_secs(30));
    let writer = c.follower();
    let lagging = (0..3).find(|i| *i != leader && *i != writer).unwrap();
    c.nodes[leader].create_collection("big");
    c.nodes[lagging].stop();
    // 24 documents of ~40 KB: about 1 MB in one request, staged in several entries, accepted
    // whole, replicated to the other voter
    let docs: Vec<Value> = (0..24)
        .map(|i| {
            let text = (0..400)
                .map(|j| {
                    format!(
                        "Section {j} of long record {i} lists measurement {}.",
                        i * 1000 + j
                    )
                })
                .collect::<Vec<_>>()
                .join(" ");
            json!({"id": format!("big-{i}"), "text": text})
        })
        .collect();
    let r = c.nodes[writer].post(
        "/api/v1/collections/big/documents",
        json!({"documents": docs}),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let job = c.nodes[writer].wait_job(r.body["job_id"].as_str().unwrap());
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["indexed"], 24, "{job}");
    let at = job["index"].as_u64().unwrap();
    let r = c.search(
        writer,
        "big",
        json!({"query": "long record 7 measurement", "top_k": 50, "min_index": at, "filter": {"document_id": "big-7"}}),
    );
    assert!(
        hit_ids(&r.body).iter().any(|id| id == "big-7"),
        "{}",
        r.text
    );
    // the lagging voter comes back while more is written: it installs a snapshot, and a read
    // at the job's index is answered only once its shard reflects it
    c.nodes[lagging].start_again();
    let more = c.nodes[leader].ingest_async("big", numbered_docs("late", 20));
    let r = c.search(
        lagging,
        "big",
        json!({"query": "long record 7 measurement", "top_k": 50, "min_index": at, "filter": {"document_id": "big-7"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.body["applied_index"].as_u64().unwrap() >= at,
        "{}",
        r.text
    );
    let found: HashSet<String> = hit_ids(&r.body).into_iter().collect();
    assert!(found.contains("big-7"), "{}", r.text);
    let m = c.nodes[lagging].metrics();
    assert!(
        metric_value(&m, "shoal_cluster_snapshots_total", "installed") >= 1.0,
        "{m}"
    );
    c.nodes[leader].wait_job(&more);
    c.wait_converged(Duration::from_secs(60));
}
