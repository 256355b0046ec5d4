//! End-to-end tests: the real `shoal` binary, the real model, real storage on disk.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal_tests::{corpus, hit_ids, hit_scores, metric_value, wait_until, Node, PARAPHRASES};

fn top1(node: &Node, coll: &str, query: &str) -> Option<String> {
    node.search_ids(coll, json!({"query": query, "top_k": 3}))
        .into_iter()
        .next()
}

#[test]
fn paraphrased_queries_find_the_right_document_first() {
    // Searches without `exact` go through the HNSW graph even on these 12 documents.
    let mut node = Node::start(&[("SHOAL_SEARCH__EXACT_BELOW", "0")], &[]);
    node.create_collection("wiki");
    let job = node.ingest("wiki", corpus());
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["indexed"], 12);

    for (q, want) in PARAPHRASES {
        assert_eq!(
            top1(&node, "wiki", q).as_deref(),
            Some(*want),
            "query {q:?}"
        );
    }

    // hits carry chunk text, score and metadata, best first
    let r = node.search(
        "wiki",
        json!({"query": "first humans on the moon", "top_k": 5}),
    );
    let hits = r.body["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 5);
    assert_eq!(hits[0]["document_id"], "moon-landing");
    assert!(hits[0]["text"].as_str().unwrap().contains("Armstrong"));
    assert_eq!(hits[0]["metadata"]["year"], 1969);
    let scores: Vec<f64> = hits.iter().map(|h| h["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");

    // filters: metadata and document id
    let ids = node.search_ids(
        "wiki",
        json!({"query": "famous iron landmark in the French capital", "filter": {"metadata": {"topic": "computing"}}}),
    );
    assert_eq!(
        ids.iter().collect::<HashSet<_>>(),
        ["rust", "bitcoin"]
            .iter()
            .map(|s| s.to_string())
            .collect::<HashSet<_>>()
            .iter()
            .collect()
    );
    let ids = node.search_ids(
        "wiki",
        json!({"query": "anything", "filter": {"metadata": {"year": {"gte": 1950, "lt": 2010}}}}),
    );
    let got: HashSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(got, HashSet::from(["bitcoin", "moon-landing"]));
    let ids = node.search_ids(
        "wiki",
        json!({"query": "anything", "filter": {"document_id": ["chess", "jazz"]}}),
    );
    assert_eq!(ids.len(), 2);

    // vector search: with the documents' own embeddings (one chunk each), every document finds
    // itself first with a score of ~1, and the order of all of them is the one brute force gives
    let docs = corpus();
    let docs = docs.as_array().unwrap();
    let texts: Vec<&str> = docs.iter().map(|d| d["text"].as_str().unwrap()).collect();
    let r = node.post("/v1/embeddings", json!({"input": texts}));
    assert_eq!(r.status, 200, "{}", r.text);
    let vectors: Vec<Vec<f64>> = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    for (i, v) in vectors.iter().enumerate() {
        let r = node.search("wiki", json!({"vector": v, "top_k": 12, "exact": true}));
        assert_eq!(r.status, 200, "{}", r.text);
        let ids = hit_ids(&r.body);
        assert_eq!(ids[0], docs[i]["id"].as_str().unwrap());
        let top = r.body["hits"][0]["score"].as_f64().unwrap();
        assert!((top - 1.0).abs() < 1e-3, "self-similarity {top}");
        // brute force over the 12 embeddings
        let mut want: Vec<(f64, &str)> = vectors
            .iter()
            .zip(docs)
            .map(|(w, d)| {
                let dot: f64 = v.iter().zip(w).map(|(a, b)| a * b).sum();
                (dot, d["id"].as_str().unwrap())
            })
            .collect();
        want.sort_by(|a, b| b.0.total_cmp(&a.0));
        let want: Vec<&str> = want.iter().map(|(_, id)| *id).collect();
        assert_eq!(ids, want, "nearest neighbours of {}", docs[i]["id"]);
        // the graph search (not exact) finds the same first neighbours
        let approx = node.search_ids("wiki", json!({"vector": v, "top_k": 3}));
        assert_eq!(approx, want[..3].to_vec());
    }

    // collection info counts documents and chunks
    let info = node.get("/api/v1/collections/wiki");
    assert_eq!(info.body["documents"], 12);
    assert_eq!(info.body["chunks"], 12);
    let list = node.get("/api/v1/collections");
    assert_eq!(list.body["collections"].as_array().unwrap().len(), 1);
    let doc = node.get("/api/v1/collections/wiki/documents/jazz");
    assert_eq!(doc.body["state"], "indexed");
    assert_eq!(doc.body["metadata"]["topic"], "music");

    // a collection of its own whose graph is walked on int8 codes (`"quantization": "int8"`):
    // the same documents first, and the same hits with the same (exact, re-scored) scores
    let r = node.request(
        "PUT",
        "/api/v1/collections/wiki8",
        Some(&json!({"quantization": "int8"})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["index"]["quantization"], "int8");
    assert_eq!(info.body["index"]["quantization"], "none");
    let job = node.ingest("wiki8", corpus());
    assert_eq!(job["state"], "completed", "{job}");
    let moon = |node: &Node, collection: &str| {
        let r = node.search(
            collection,
            json!({"query": "first humans on the moon", "top_k": 5}),
        );
        assert_eq!(r.status, 200, "{}", r.text);
        hit_scores(&r.body)
    };
    let vectors_memory = |node: &Node, collection: &str| {
        let info = node.get(&format!("/api/v1/collections/{collection}"));
        info.body["storage"]["vectors_memory_bytes"]
            .as_u64()
            .unwrap()
    };
    // collection `a`'s hits as `b`'s (equal scores, up to the float sums' order)
    let same_moon_hits_in = |node: &Node, a: &str, b: &str, when: &str| {
        let float_hits = moon(node, a);
        let int8_hits = moon(node, b);
        assert_eq!(int8_hits.len(), float_hits.len(), "{when}");
        for ((a, x), (b, y)) in float_hits.iter().zip(&int8_hits) {
            assert_eq!(a, b, "{when}: {int8_hits:?} against {float_hits:?}");
            assert!(
                (x - y).abs() < 1e-5,
                "{when}: {int8_hits:?} against {float_hits:?}"
            );
        }
    };
    let same_moon_hits = |node: &Node, when: &str| same_moon_hits_in(node, "wiki", "wiki8", when);
    let same_hits = |node: &Node, when: &str| {
        same_moon_hits(node, when);
        for (q, want) in PARAPHRASES {
            assert_eq!(
                top1(node, "wiki8", q).as_deref(),
                Some(*want),
                "{when}: int8: query {q:?}"
            );
        }
        // the codes are held beside the vectors: 416 bytes a node against 1,536
        let (float_memory, int8_memory) =
            (vectors_memory(node, "wiki"), vectors_memory(node, "wiki8"));
        assert!(
            int8_memory > float_memory + float_memory / 5,
            "{when}: int8 {int8_memory} against {float_memory} bytes"
        );
    };
    same_hits(&node, "made int8");
    // the same with the vectors kept on disk (`"vectors_on_disk": true`): on the heap only the
    // codes, the vectors in a mapped file; the same hits
    let r = node.request(
        "PUT",
        "/api/v1/collections/wiki-disk",
        Some(&json!({"quantization": "int8", "vectors_on_disk": true})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["index"]["vectors_on_disk"], true);
    let job = node.ingest("wiki-disk", corpus());
    assert_eq!(job["state"], "completed", "{job}");
    let on_disk = |node: &Node| {
        same_moon_hits_in(node, "wiki-disk", "wiki8", "on disk");
        let storage = &node.get("/api/v1/collections/wiki-disk").body["storage"];
        let (heap, mapped) = (
            storage["vectors_memory_bytes"].as_u64().unwrap(),
            storage["vectors_mapped_bytes"].as_u64().unwrap(),
        );
        let float_memory = vectors_memory(node, "wiki");
        // (a segment of 1,024 vectors: 1,536 bytes each mapped, 416 of codes on the heap)
        assert!(
            mapped + 64 >= float_memory && mapped <= float_memory,
            "{storage}"
        );
        assert!(heap * 3 < float_memory, "{storage}");
    };
    on_disk(&node);
    // a quantization the node does not know is refused, naming the ones it knows
    let r = node.request(
        "PUT",
        "/api/v1/collections/wiki4",
        Some(&json!({"quantization": "int4"})),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("int8"), "{}", r.text);
    // the node's `index.quantization` is a default for new collections only: restarted with
    // `int8`, each collection keeps what it was created with
    node.restart_with(&[("SHOAL_INDEX__QUANTIZATION", "int8")]);
    let quantization = |collection: &str| {
        node.get(&format!("/api/v1/collections/{collection}")).body["index"]["quantization"].clone()
    };
    assert_eq!(quantization("wiki"), "none");
    assert_eq!(quantization("wiki8"), "int8");
    same_hits(&node, "restarted");
    on_disk(&node);
    node.create_collection("by-default");
    assert_eq!(quantization("by-default"), "int8");

    // an existing collection changed to int8 (`PATCH`) and back: its shard loads again with
    // the codes, then without them, and answers the same throughout
    let float_memory = vectors_memory(&node, "wiki");
    let patch = |collection: &str, body: Value| {
        node.request(
            "PATCH",
            &format!("/api/v1/collections/{collection}"),
            Some(&body),
        )
    };
    let r = patch("wiki", json!({"quantization": "int8"}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["index"]["quantization"], "int8");
    assert!(r.body["log_index"].as_u64().is_some(), "{}", r.text);
    assert_eq!(quantization("wiki"), "int8");
    // (the sizes are measured at most every 10 s)
    wait_until(Duration::from_secs(30), "the codes counted", || {
        vectors_memory(&node, "wiki") > float_memory + float_memory / 5
    });
    same_moon_hits(&node, "changed to int8");
    let r = patch("wiki", json!({"quantization": "none"}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(quantization("wiki"), "none");
    wait_until(Duration::from_secs(30), "the codes gone", || {
        vectors_memory(&node, "wiki") == float_memory
    });
    for (q, want) in PARAPHRASES {
        assert_eq!(
            top1(&node, "wiki", q).as_deref(),
            Some(*want),
            "query {q:?}"
        );
    }
    // what cannot be changed so is refused clearly, and changes nothing
    for (collection, body, status, says) in [
        ("wiki", json!({}), 400, "nothing to change"),
        ("wiki", json!({"quantization": "int4"}), 400, "int8"),
        ("wiki", json!({"hnsw": {"m": 8}}), 400, "hnsw"),
        ("nope", json!({"quantization": "int8"}), 404, "nope"),
    ] {
        let r = patch(collection, body);
        assert_eq!(r.status, status, "{}", r.text);
        assert!(r.text.contains(says), "{}", r.text);
    }
    assert_eq!(quantization("wiki"), "none");
}

#[test]
fn long_documents_are_chunked_and_each_chunk_is_searchable() {
    let node = Node::start(&[], &[]);
    node.create_collection("long");
    // ~1,400 tokens: several chunks
    let paragraphs: Vec<String> = corpus()
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["text"].as_str().unwrap().to_string())
        .collect();
    let text = paragraphs.join("\n\n").repeat(2);
    let job = node.ingest("long", json!([{"id": "big", "text": text}]));
    assert_eq!(job["state"], "completed", "{job}");
    let info = node.get("/api/v1/collections/long");
    let chunks = info.body["chunks"].as_u64().unwrap();
    assert!(chunks >= 4, "{chunks} chunks");
    let r = node.search(
        "long",
        json!({"query": "improvised music born in New Orleans", "top_k": 1}),
    );
    let hit = &r.body["hits"][0];
    assert_eq!(hit["document_id"], "big");
    assert!(hit["text"].as_str().unwrap().contains("Jazz"), "{hit}");
}

#[test]
fn acknowledged_ingest_survives_kill_9() {
    let mut node = Node::start(&[], &[]);
    node.create_collection("durable");
    let job = node.ingest("durable", corpus());
    assert_eq!(job["state"], "completed");
    let before: Vec<Value> = PARAPHRASES
        .iter()
        .map(|(q, _)| node.search("durable", json!({"query": q, "top_k": 3})).body["hits"].clone())
        .collect();

    node.kill9();
    node.restart();

    for ((q, _), prev) in PARAPHRASES.iter().zip(&before) {
        let now = node.search("durable", json!({"query": q, "top_k": 3})).body["hits"].clone();
        assert_eq!(
            hit_ids(&json!({"hits": now})),
            hit_ids(&json!({"hits": prev})),
            "{q}"
        );
        for (a, b) in now.as_array().unwrap().iter().zip(prev.as_array().unwrap()) {
            let (a, b) = (a["score"].as_f64().unwrap(), b["score"].as_f64().unwrap());
            assert!((a - b).abs() < 1e-5, "score changed for {q}: {a} vs {b}");
        }
    }
    let info = node.get("/api/v1/collections/durable");
    assert_eq!(info.body["documents"], 12);
    assert_eq!(info.body["index"]["live_points"], 12);
    let job_after = node.get(&format!("/api/v1/jobs/{}", job["id"].as_str().unwrap()));
    assert_eq!(job_after.body["state"], "completed");
}

#[test]
fn sigterm_stops_cleanly_and_keeps_the_graph() {
    // a long persist interval: only the clean stop writes the graph dump
    let mut node = Node::start(&[("SHOAL_INDEX__PERSIST_INTERVAL_MS", "600000")], &[]);
    node.create_collection("graceful");
    node.ingest("graceful", corpus());
    let dump = node.data.join("index/graceful-1/manifest.json");
    assert!(!dump.exists());
    assert!(node.terminate(), "shoal did not exit cleanly on SIGTERM");
    assert!(dump.exists(), "no graph dump after a clean stop");
    // the dump of a collection dropped while the node crashed (left behind): gone at the start
    let orphan = node.data.join("index/gone-42");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("manifest.json"), b"{}").unwrap();
    node.restart();
    assert!(
        !orphan.exists(),
        "the dump of a collection that no longer exists was kept"
    );
    assert!(
        dump.exists(),
        "a live collection's dump was removed with the orphan"
    );
    // the graph was reloaded from the dump, not rebuilt from the stored vectors
    let m = node.metrics();
    let loads = |source: &str| {
        metric_value(
            &m,
            "shoal_index_shard_loads_total",
            &format!("collection=\"graceful\",source=\"{source}\""),
        )
    };
    assert_eq!((loads("dump"), loads("rebuilt")), (1.0, 0.0), "{m}");
    for (q, id) in PARAPHRASES {
        assert_eq!(top1(&node, "graceful", q).as_deref(), Some(*id), "{q}");
    }
    // dropping the collection removes its dump
    let r = node.request("DELETE", "/api/v1/collections/graceful", None);
    assert!((200..300).contains(&r.status), "{}", r.text);
    wait_until(
        Duration::from_secs(30),
        "a dropped collection's dump to be removed",
        || !dump.parent().unwrap().exists(),
    );
}

#[test]
fn accepted_documents_are_indexed_after_a_crash_mid_ingest() {
    let mut node = Node::start(&[], &[]);
    node.create_collection("resume");
    let docs: Vec<Value> = (0..40)
        .map(|i| {
            json!({"id": format!("d{i}"), "text": format!("Document number {i} talks about topic {} in some detail, with a few more words to embed.", i % 7)})
        })
        .collect();
    let job = node.ingest_async("resume", Value::Array(docs));
    // the 202 means accepted: kill right away, most documents are not indexed yet
    node.kill9();
    node.restart();
    let done = node.wait_job(&job);
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["indexed"], 40);
    assert_eq!(node.get("/api/v1/collections/resume").body["chunks"], 40);
}

#[test]
fn deleted_documents_never_come_back() {
    // graph search even on a small shard, and compaction after a few deletes
    let mut node = Node::start(
        &[
            ("SHOAL_SEARCH__EXACT_BELOW", "0"),
            ("SHOAL_INDEX__COMPACTION_MIN_TOMBSTONES", "3"),
            ("SHOAL_INDEX__COMPACTION_RATIO", "0.2"),
            ("SHOAL_INDEX__PERSIST_INTERVAL_MS", "200"),
        ],
        &[],
    );
    node.create_collection("del");
    node.ingest("del", corpus());
    let gone = ["eiffel", "jazz", "coffee"];
    let queries: Vec<&str> = PARAPHRASES
        .iter()
        .filter(|(_, id)| gone.contains(id))
        .map(|(q, _)| *q)
        .collect();

    let r = node.request("DELETE", "/api/v1/collections/del/documents/eiffel", None);
    assert_eq!(r.status, 200, "{}", r.text);
    let check = |node: &Node, deleted: &[&str]| {
        for q in &queries {
            for exact in [false, true] {
                let ids = node.search_ids("del", json!({"query": q, "top_k": 12, "exact": exact}));
                for d in deleted {
                    assert!(
                        !ids.iter().any(|i| i == d),
                        "{d} returned for {q:?} (exact {exact})"
                    );
                }
            }
        }
        for d in deleted {
            let ids = node.search_ids(
                "del",
                json!({"query": "anything", "filter": {"document_id": d}}),
            );
            assert!(ids.is_empty(), "{d} returned by id filter");
            assert_eq!(
                node.get(&format!("/api/v1/collections/del/documents/{d}"))
                    .status,
                404
            );
        }
    };
    check(&node, &["eiffel"]);
    let info = node.get("/api/v1/collections/del");
    assert_eq!(info.body["index"]["tombstones"], 1);

    // deleting twice is a 404, the rest stays
    assert_eq!(
        node.request("DELETE", "/api/v1/collections/del/documents/eiffel", None)
            .status,
        404
    );

    // two more deletes pass the compaction threshold (3 tombstones, > 20% of 12)
    for d in ["jazz", "coffee"] {
        assert_eq!(
            node.request(
                "DELETE",
                &format!("/api/v1/collections/del/documents/{d}"),
                None
            )
            .status,
            200
        );
    }
    check(&node, &gone);
    // the compaction runs on the maintenance threads, after the delete is answered
    wait_until(Duration::from_secs(30), "the compaction", || {
        metric_value(
            &node.metrics(),
            "shoal_index_compactions_total",
            "collection=\"del\"",
        ) >= 1.0
    });
    check(&node, &gone);
    let info = node.get("/api/v1/collections/del");
    assert_eq!(info.body["index"]["tombstones"], 0);
    assert_eq!(info.body["index"]["live_points"], 9);

    // after a crash they stay gone, whether the graph dump is reloaded or the graph rebuilt:
    // first once the compacted graph (9 points) has been dumped, then without any dump
    let manifest = node.data.join("index/del-1/manifest.json");
    wait_until(
        Duration::from_secs(10),
        "the compacted graph's dump",
        || {
            std::fs::read(&manifest)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|m| m["points"] == 9)
        },
    );
    for source in ["dump", "rebuilt"] {
        if source == "rebuilt" {
            node.stop();
            std::fs::remove_dir_all(node.data.join("index/del-1")).unwrap();
            node.start_again();
        } else {
            node.restart();
        }
        let m = node.metrics();
        assert_eq!(
            metric_value(
                &m,
                "shoal_index_shard_loads_total",
                &format!("collection=\"del\",source=\"{source}\"")
            ),
            1.0,
            "{m}"
        );
        check(&node, &gone);
        assert_eq!(
            node.get("/api/v1/collections/del").body["index"]["live_points"],
            9
        );
        // the others are still found
        for (q, id) in PARAPHRASES.iter().filter(|(_, id)| !gone.contains(id)) {
            assert_eq!(top1(&node, "del", q).as_deref(), Some(*id), "{q}");
        }
    }

    // replacing a document: the old text is never returned once the new one is indexed
    node.ingest(
        "del",
        json!([{"id": "chess", "text": "Go is an abstract strategy board game in which two players place black and white stones to surround territory."}]),
    );
    let r = node.search(
        "del",
        json!({"query": "strategy game where you checkmate the king", "top_k": 12}),
    );
    for h in r.body["hits"].as_array().unwrap() {
        assert!(
            !h["text"].as_str().unwrap().contains("checkmate"),
            "old version returned: {h}"
        );
    }

    // dropping the collection removes everything; a new one of the same name starts empty
    assert_eq!(
        node.request("DELETE", "/api/v1/collections/del", None)
            .status,
        200
    );
    assert_eq!(node.search("del", json!({"query": "x"})).status, 404);
    node.create_collection("del");
    assert!(node.search_ids("del", json!({"query": "chess"})).is_empty());
}

#[test]
fn panicking_actors_are_restarted_and_the_node_keeps_answering() {
    let node = Node::start(&[], &["--fault-injection"]);
    node.create_collection("sup");
    node.ingest("sup", corpus());

    for actor in [
        "embedder-query",
        "shard-sup",
        "embedder-ingest",
        "ingest-worker-0",
    ] {
        let r = node.request("POST", &format!("/api/v1/admin/actors/{actor}/panic"), None);
        assert_eq!(r.status, 202, "{actor}: {}", r.text);
        // the node keeps answering
        assert_eq!(node.get("/api/health").status, 200);
        // and the actor comes back: search (query embedder + shard) works again shortly
        let start = Instant::now();
        loop {
            let r = node.search(
                "sup",
                json!({"query": "who found the first antibiotic", "top_k": 1}),
            );
            if r.status == 200 {
                assert_eq!(hit_ids(&r.body), vec!["penicillin"]);
                break;
            }
            assert_eq!(r.status, 503, "{}", r.text);
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{actor} not back: {}",
                r.text
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // every actor has been restarted exactly once (restarts happen after a short backoff)
    let start = Instant::now();
    loop {
        let actors = node.get("/api/v1/admin/actors").body["actors"].clone();
        let list = actors.as_array().unwrap();
        if list.len() == 4 && list.iter().all(|a| a["restarts"] == 1) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "actors not all restarted once: {actors}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = node.metrics();
    assert_eq!(
        metric_value(&m, "shoal_actor_restarts_total", "embedder-query"),
        1.0
    );
    assert_eq!(metric_value(&m, "shoal_actor_restarts_total", ""), 4.0);

    // ingest still works through the restarted worker and embedder
    let job = node.ingest("sup", json!([{"id": "tea", "text": "Tea is an aromatic drink made by pouring hot water over cured leaves of the Camellia sinensis shrub."}]));
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(
        top1(&node, "sup", "hot drink brewed from leaves").as_deref(),
        Some("tea")
    );

    // unknown actor
    assert_eq!(
        node.request("POST", "/api/v1/admin/actors/nobody/panic", None)
            .status,
        404
    );
}

#[test]
fn fault_injection_is_off_by_default() {
    let node = Node::start(&[], &[]);
    let r = node.request("POST", "/api/v1/admin/actors/embedder-query/panic", None);
    assert_eq!(r.status, 404);
    assert!(r.text.contains("disabled"), "{}", r.text);
}

fn assert_error(r: &shoal_tests::Resp, status: u16, code: &str, contains: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    assert!(
        r.request_id.as_deref().is_some_and(|id| id.len() >= 32),
        "no request id on {}",
        r.text
    );
    assert_eq!(r.body["error"]["code"], code, "{}", r.text);
    let msg = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(contains),
        "message {msg:?} should contain {contains:?}"
    );
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    let node = Node::start(
        &[
            ("SHOAL_SERVER__MAX_BODY_BYTES", "65536"),
            ("SHOAL_INGEST__MAX_DOCUMENTS_PER_REQUEST", "5"),
            ("SHOAL_SEARCH__MAX_EXACT_POINTS", "3"),
            ("SHOAL_SEARCH__MAX_FILTER_VALUES", "10"),
        ],
        &[],
    );
    node.create_collection("c");
    let s = |body: &str| node.raw("POST", "/api/v1/collections/c/search", body);

    assert_error(
        &node.search("missing", json!({"query": "x"})),
        404,
        "not_found",
        "missing",
    );
    assert_error(
        &node.get("/api/v1/collections/missing"),
        404,
        "not_found",
        "missing",
    );
    assert_error(&node.get("/api/v1/jobs/nope"), 404, "not_found", "nope");
    assert_error(&node.get("/api/v2/whatever"), 404, "not_found", "no route");
    assert_error(
        &node.request("POST", "/api/v1/collections/c", None),
        405,
        "method_not_allowed",
        "POST",
    );
    assert_error(
        &s(r#"{"query": "x", "top_k": }"#),
        400,
        "invalid_json",
        "line 1 column",
    );
    assert_error(&s(r#"{"query": 3}"#), 400, "invalid_json", "query");
    assert_error(
        &s(r#"{"query": "x", "topk": 3}"#),
        400,
        "invalid_json",
        "topk",
    );
    assert_error(
        &s(r#"{"query": "x", "top_k": 100000}"#),
        400,
        "bad_request",
        "top_k",
    );
    assert_error(
        &s(r#"{"query": "x", "top_k": 0}"#),
        400,
        "bad_request",
        "top_k",
    );
    assert_error(&s(r#"{"query": "   "}"#), 400, "bad_request", "empty");
    assert_error(&s(r#"{}"#), 400, "bad_request", "query");
    assert_error(
        &s(r#"{"query": "x", "vector": [1]}"#),
        400,
        "bad_request",
        "not both",
    );
    assert_error(
        &s(r#"{"vector": [1, 2, 3]}"#),
        400,
        "bad_request",
        "dimension 3",
    );
    let zeros = format!(r#"{{"vector": [{}]}}"#, vec!["0"; 384].join(","));
    assert_error(&s(&zeros), 400, "bad_request", "zeros");
    assert_error(
        &s(r#"{"query": "x", "filter": {"metadata": {"k": null}}}"#),
        400,
        "bad_request",
        "metadata.k",
    );
    assert_error(
        &s(r#"{"query": "x", "filter": {"metadata": {"k": {"regex": "a"}}}}"#),
        400,
        "bad_request",
        "regex",
    );
    assert_error(
        &s(r#"{"query": "x", "filter": {"where": 1}}"#),
        400,
        "bad_request",
        "where",
    );
    assert_error(
        &node.request("PUT", "/api/v1/collections/c", None),
        409,
        "conflict",
        "already exists",
    );
    assert_error(
        &node.request("PUT", "/api/v1/collections/bad%20name", None),
        400,
        "bad_request",
        "collection name",
    );
    assert_error(
        &node.raw("PUT", "/api/v1/collections/d", r#"{"hnsw": {"m": 1000}}"#),
        400,
        "bad_request",
        "hnsw.m",
    );

    let add = |body: &str| node.raw("POST", "/api/v1/collections/c/documents", body);
    assert_error(&add(r#"{"documents": []}"#), 400, "bad_request", "empty");
    // one bad document refuses the whole request: nothing half-written
    assert_error(
        &add(r#"{"documents": [{"id": "ok", "text": "fine"}, {"id": "bad", "text": ""}]}"#),
        400,
        "bad_request",
        "documents[1]",
    );
    assert_error(
        &add(r#"{"documents": [{"id": "ok", "text": "fine"}, {"id": "bad", "text": 7}]}"#),
        400,
        "invalid_json",
        "documents[1].text",
    );
    assert_error(
        &add(r#"{"documents": [{"id": "", "text": "x"}]}"#),
        400,
        "bad_request",
        "document id",
    );
    assert_error(
        &add(r#"{"documents": [{"id": "m", "text": "x", "metadata": [1]}]}"#),
        400,
        "invalid_json",
        "metadata",
    );
    let six: Vec<Value> = (0..6)
        .map(|i| json!({"id": format!("{i}"), "text": "x"}))
        .collect();
    assert_error(
        &node.post("/api/v1/collections/c/documents", json!({"documents": six})),
        400,
        "bad_request",
        "limit is 5",
    );
    let big = "word ".repeat(20_000);
    assert_error(
        &node.post(
            "/api/v1/collections/c/documents",
            json!({"documents": [{"id": "big", "text": big}]}),
        ),
        413,
        "payload_too_large",
        "too large",
    );
    let info = node.get("/api/v1/collections/c");
    assert_eq!(
        info.body["documents"], 0,
        "a refused request left documents behind"
    );

    // a collection of another dimension can be searched by vector, not by text
    let r = node.raw("PUT", "/api/v1/collections/v3", r#"{"dimension": 3}"#);
    assert_eq!(r.status, 201, "{}", r.text);
    assert_error(
        &node.search("v3", json!({"query": "x"})),
        400,
        "bad_request",
        "dimension",
    );
    assert_eq!(node.search("v3", json!({"vector": [1, 0, 0]})).status, 200);
    assert_error(
        &node.post(
            "/api/v1/collections/v3/documents",
            json!({"documents": [{"id": "a", "text": "x"}]}),
        ),
        400,
        "bad_request",
        "dimension",
    );

    // filters and exact scans larger than the limits
    node.ingest(
        "c",
        json!([
            {"id": "a", "text": "alpha", "metadata": {"n": 1}},
            {"id": "b", "text": "beta", "metadata": {"n": 2}},
            {"id": "c", "text": "gamma", "metadata": {"n": 3}},
            {"id": "d", "text": "delta", "metadata": {"n": 4}}
        ]),
    );
    let many: Vec<u32> = (0..11).collect();
    assert_error(
        &node.search(
            "c",
            json!({"query": "x", "filter": {"metadata": {"n": {"in": many}}}}),
        ),
        400,
        "bad_request",
        "the limit is 10",
    );
    assert_error(
        &node.search("c", json!({"query": "x", "exact": true})),
        400,
        "bad_request",
        "search.max_exact_points",
    );
    // a filter that leaves few enough points makes an exact search affordable
    let ids = node.search_ids(
        "c",
        json!({"query": "x", "exact": true, "filter": {"metadata": {"n": {"in": [1, 2]}}}}),
    );
    assert_eq!(ids.len(), 2);
    // a rerank query over the limit (checked before anything else is done)
    let long = "q".repeat(9 * 1024);
    assert_error(
        &node.post("/v1/rerank", json!({"query": long, "documents": ["a"]})),
        400,
        "bad_request",
        "reranker.max_query_bytes",
    );

    // the node is still healthy, and every response carried its own request id
    let a = node.get("/api/health");
    let b = node.get("/api/health");
    assert_eq!(a.status, 200);
    assert!(a.request_id.is_some() && a.request_id != b.request_id);
    // `/health` (the path load balancers and the replaced stack's probes ask) answers the same
    let h = node.get("/health");
    assert_eq!(h.status, 200, "{}", h.text);
    assert_eq!(h.body["status"], "ok", "{}", h.text);
    assert_eq!(h.body["version"], a.body["version"], "{}", h.text);
}

#[test]
fn flags_complete_a_configuration_from_the_environment_before_it_is_checked() {
    // listening on every address with a secret needs an advertised address: a flag gives it
    let run = |extra: &[&str]| {
        std::process::Command::new(shoal_tests::shoal_bin())
            .arg("config")
            .args(extra)
            .env("SHOAL_SERVER__LISTEN", "0.0.0.0:7400")
            .env("SHOAL_CLUSTER__SECRET", "a-secret-of-enough-characters")
            .output()
            .expect("run shoal config")
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--advertise"),
        "{out:?}"
    );
    let out = run(&["--advertise", "http://10.0.0.7:7400"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("http://10.0.0.7:7400"),
        "{out:?}"
    );
}

#[test]
fn a_command_whose_reader_went_away_ends_without_a_panic() {
    // `shoal config | head -0`: the pipe is closed before the command writes
    let mut child = std::process::Command::new(shoal_tests::shoal_bin())
        .arg("config")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run shoal config");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{out:?}");
}
