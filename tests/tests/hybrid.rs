//! Keyword and hybrid search end to end: BM25 over the chunks' words beside the vectors, fused by
//! reciprocal rank or by weight, with filters, deletes and a restart (the keyword index is
//! derived state, rebuilt from the store).

use serde_json::{json, Value};
use shoal_tests::{corpus, hit_ids, Node};

/// The corpus plus two part numbers a vector model cannot tell apart by meaning.
fn docs() -> Value {
    let mut docs = corpus().as_array().unwrap().clone();
    docs.push(json!({"id": "part-a", "metadata": {"kind": "part"},
        "text": "Replacement part XJ-4402 fits the pump housing of the 2019 model."}));
    docs.push(json!({"id": "part-b", "metadata": {"kind": "part"},
        "text": "Replacement part QZ-7781 fits the valve assembly of the 2021 model."}));
    docs.push(json!({"id": "manual", "metadata": {"kind": "manual"},
        "text": "The service manual explains how to fit a replacement pump housing on every model."}));
    // written without spaces between words: found by a word inside the run
    docs.push(json!({"id": "tokyo-ja", "metadata": {"kind": "guide"},
        "text": "東京タワーは港区にある電波塔です。展望台からは富士山が見えます。"}));
    Value::Array(docs)
}

fn hits(node: &Node, body: Value) -> Vec<Value> {
    let r = node.search("kb", body);
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["hits"].as_array().unwrap().clone()
}

fn f(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

#[test]
fn keyword_and_hybrid_search_rank_filter_and_survive_deletes_and_restarts() {
    let mut node = Node::start(&[], &[]);
    node.create_collection("kb");
    let job = node.ingest("kb", docs());
    assert_eq!(job["state"], "completed", "{job}");

    // keyword: the exact part number, whatever its case; the score is BM25's
    let kw = hits(
        &node,
        json!({"query": "qz-7781", "mode": "keyword", "top_k": 5}),
    );
    assert_eq!(kw[0]["document_id"], "part-b", "{kw:?}");
    assert_eq!(f(&kw[0], "score"), f(&kw[0], "keyword_score"));
    assert!(f(&kw[0], "score").unwrap() > 0.0 && kw[0].get("vector_score").is_none());
    // words only: no hit for a word no chunk has
    assert!(hits(&node, json!({"query": "zeppelin", "mode": "keyword"})).is_empty());
    // Japanese: a word inside a run of text with no spaces
    let ja = hits(
        &node,
        json!({"query": "富士山", "mode": "keyword", "top_k": 3}),
    );
    assert_eq!(ja.len(), 1, "{ja:?}");
    assert_eq!(ja[0]["document_id"], "tokyo-ja", "{ja:?}");
    assert!(hits(&node, json!({"query": "大阪城", "mode": "keyword"})).is_empty());
    // query syntax is just words
    let r = node.search(
        "kb",
        json!({"query": "\"pump\" AND (housing:", "mode": "keyword"}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        hit_ids(&r.body)[..2]
            .iter()
            .filter(|d| *d == "part-a" || *d == "manual")
            .count(),
        2
    );

    // hybrid (reciprocal rank fusion by default): the part number and the meaning together
    let hy = hits(
        &node,
        json!({"query": "QZ-7781 valve replacement", "mode": "hybrid", "top_k": 5}),
    );
    assert_eq!(hy[0]["document_id"], "part-b", "{hy:?}");
    assert!(f(&hy[0], "vector_score").is_some() && f(&hy[0], "keyword_score").is_some());
    let scores: Vec<f64> = hy.iter().map(|h| f(h, "score").unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    // rrf: each side adds 1 / (60 + rank) for a hit it ranked: the ranks from each mode alone
    let q = "QZ-7781 valve replacement";
    let rank = |mode: &str, doc: &str| {
        let r = node.search("kb", json!({"query": q, "mode": mode, "top_k": 50}));
        hit_ids(&r.body)
            .iter()
            .position(|d| d == doc)
            .map(|p| p + 1)
    };
    for h in &hy {
        let doc = h["document_id"].as_str().unwrap();
        let want: f64 = [rank("vector", doc), rank("keyword", doc)]
            .iter()
            .flatten()
            .map(|r| 1.0 / (60.0 + *r as f64))
            .sum();
        assert!(
            (f(h, "score").unwrap() - want).abs() < 1e-6,
            "{doc}: {h} vs {want}"
        );
    }
    // hybrid with the caller's own vector for the vector side: the same ranking when it is the
    // query's embedding
    let r = node.post("/v1/embeddings", json!({"input": q}));
    let v = r.body["data"][0]["embedding"].clone();
    let own = node.search_ids(
        "kb",
        json!({"query": q, "vector": v, "mode": "hybrid", "top_k": 5}),
    );
    assert_eq!(own, hit_ids(&json!({"hits": hy})));

    // weighted, alpha 1: the vector ranking; alpha 0: the keyword ranking first
    let q = "iron tower in Paris built for a fair";
    let vector = node.search_ids("kb", json!({"query": q, "top_k": 5}));
    let by_meaning = node.search_ids(
        "kb",
        json!({"query": q, "mode": "hybrid", "fusion": "weighted", "alpha": 1.0, "top_k": 5}),
    );
    assert_eq!(by_meaning, vector);
    let keyword = node.search_ids("kb", json!({"query": q, "mode": "keyword", "top_k": 3}));
    let by_words = node.search_ids(
        "kb",
        json!({"query": q, "mode": "hybrid", "alpha": 0.0, "top_k": 3}),
    );
    assert_eq!(by_words, keyword);

    // filters apply to the keyword side too
    let parts = hits(
        &node,
        json!({"query": "pump housing model", "mode": "keyword", "filter": {"metadata": {"kind": "part"}}}),
    );
    assert!(!parts.is_empty());
    assert!(
        parts.iter().all(|h| h["metadata"]["kind"] == "part"),
        "{parts:?}"
    );
    let parts = hits(
        &node,
        json!({"query": "pump housing model", "mode": "hybrid", "filter": {"document_id": ["part-b"]}}),
    );
    assert_eq!(hit_ids(&json!({"hits": parts})), vec!["part-b"]);

    // reranking works on fused candidates too (no reranker on this node: a clear 400)
    let r = node.search(
        "kb",
        json!({"query": "pump", "mode": "hybrid", "rerank": true}),
    );
    assert_eq!(r.status, 400, "{}", r.text);

    // bad combinations get clear errors
    for (body, says) in [
        (
            json!({"vector": vec![0.1; 384], "mode": "keyword"}),
            "needs a text `query`",
        ),
        (
            json!({"vector": vec![0.1; 384], "mode": "hybrid"}),
            "needs a text `query`",
        ),
        (
            json!({"query": "x", "mode": "hybrid", "alpha": 1.5}),
            "between 0 and 1",
        ),
        (
            json!({"query": "x", "mode": "hybrid", "fusion": "rrf", "alpha": 0.3}),
            "rrf",
        ),
        (json!({"query": "x", "fusion": "weighted"}), "mode: hybrid"),
        (json!({"query": "x", "alpha": 0.5}), "mode: hybrid"),
        (
            json!({"query": "x", "mode": "keyword", "exact": true}),
            "exact",
        ),
        (json!({"query": "x", "mode": "keyword", "ef": 100}), "ef"),
        (json!({"query": "x", "mode": "fuzzy"}), "mode"),
        (json!({"query": "x", "vector": vec![0.1; 384]}), "not both"),
    ] {
        let r = node.search("kb", body.clone());
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert!(r.text.contains(says), "{body}: {}", r.text);
    }

    // a deleted document is gone from the keyword side at once
    let r = node.request("DELETE", "/api/v1/collections/kb/documents/part-b", None);
    assert!(r.status == 200 || r.status == 202, "{}", r.text);
    shoal_tests::wait_until(std::time::Duration::from_secs(30), "part-b deleted", || {
        hits(&node, json!({"query": "QZ-7781", "mode": "keyword"}))
            .iter()
            .all(|h| h["document_id"] != "part-b")
    });

    // after a restart (the graph reloaded from its dump, the keyword index rebuilt from the
    // store) keyword search answers as before
    node.restart();
    let kw = hits(
        &node,
        json!({"query": "XJ-4402", "mode": "keyword", "top_k": 3}),
    );
    assert_eq!(kw[0]["document_id"], "part-a", "{kw:?}");
    assert!(hits(&node, json!({"query": "QZ-7781", "mode": "keyword"}))
        .iter()
        .all(|h| h["document_id"] != "part-b"));
}
