//! Reranking, the OpenAI-style embeddings endpoint and the query cache, on the real binary.

use base64::Engine as _;
use serde_json::{json, Value};
use shoal_tests::{corpus, make_test_reranker, metric_value, Node};

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn search_with_reranking_and_the_rerank_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("test-cross-encoder");
    make_test_reranker(&model);
    let node = Node::start(
        &[],
        &[
            "--reranker-model",
            model.to_str().unwrap(),
            "--fault-injection",
        ],
    );
    let health = node.get("/api/health");
    assert_eq!(health.body["reranker"]["state"], "ready", "{}", health.text);
    node.create_collection("rr");
    node.ingest("rr", corpus());

    let q = "how do plants make food from sunlight";
    let r = node.search(
        "rr",
        json!({"query": q, "top_k": 4, "rerank": true, "rerank_candidates": 8}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let hits = r.body["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 4);
    let rr: Vec<f64> = hits
        .iter()
        .map(|h| h["rerank_score"].as_f64().unwrap())
        .collect();
    assert!(
        rr.windows(2).all(|w| w[0] >= w[1]),
        "hits not ordered by rerank score: {rr:?}"
    );
    assert!(hits.iter().all(|h| h["score"].as_f64().is_some()));

    // the same passages through /v1/rerank (TEI shape, raw scores) give the same logits
    let texts: Vec<Value> = hits.iter().map(|h| h["text"].clone()).collect();
    let tei = node.post(
        "/v1/rerank",
        json!({"query": q, "texts": texts, "raw_scores": true, "return_text": true}),
    );
    assert_eq!(tei.status, 200, "{}", tei.text);
    let tei = tei.body.as_array().unwrap().clone();
    assert_eq!(tei.len(), 4);
    for (i, item) in tei.iter().enumerate() {
        let idx = item["index"].as_u64().unwrap() as usize;
        assert_eq!(idx, i, "already sorted input keeps its order");
        assert!((item["score"].as_f64().unwrap() - rr[idx]).abs() < 1e-4);
        assert_eq!(item["text"], texts[idx]);
    }

    // Cohere shape: documents as strings or {text}, top_n, relevance in 0..1
    let cohere = node.post(
        "/v1/rerank",
        json!({"query": q, "documents": ["The stock market fell.", {"text": "Plants turn light into sugar."}, "Chess."], "top_n": 2, "return_documents": true}),
    );
    assert_eq!(cohere.status, 200, "{}", cohere.text);
    let results = cohere.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    let rel: Vec<f64> = results
        .iter()
        .map(|r| r["relevance_score"].as_f64().unwrap())
        .collect();
    assert!(
        rel[0] >= rel[1] && rel.iter().all(|x| (0.0..=1.0).contains(x)),
        "{rel:?}"
    );
    assert!(results[0]["document"]["text"].is_string());

    // bad input
    for (body, needle) in [
        (json!({"query": q, "documents": []}), "no documents"),
        (json!({"query": "", "documents": ["a"]}), "empty"),
        (json!({"query": q}), "documents"),
        (json!({"query": q, "documents": [3]}), "documents[0]"),
        (json!({"query": q, "documents": ["a"], "top_n": 0}), "top_n"),
    ] {
        let r = node.post("/v1/rerank", body);
        assert_eq!(r.status, 400, "{}", r.text);
        assert!(r.text.contains(needle), "{needle}: {}", r.text);
    }
    let r = node.search("rr", json!({"vector": vec![0.1; 384], "rerank": true}));
    assert_eq!(r.status, 400);
    assert!(r.text.contains("text `query`"), "{}", r.text);
    let r = node.search(
        "rr",
        json!({"query": q, "rerank": true, "rerank_candidates": 0}),
    );
    assert_eq!(r.status, 400);

    // the reranker actor is supervised like the others
    let r = node.request("POST", "/api/v1/admin/actors/reranker/panic", None);
    assert_eq!(r.status, 202, "{}", r.text);
    let start = std::time::Instant::now();
    loop {
        let r = node.post("/v1/rerank", json!({"query": q, "documents": ["a", "b"]}));
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text);
        assert!(
            start.elapsed().as_secs() < 10,
            "reranker not back: {}",
            r.text
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let m = node.metrics();
    assert_eq!(
        metric_value(&m, "shoal_actor_restarts_total", "reranker"),
        1.0
    );
}

#[test]
fn a_node_without_reranker_refuses_reranking_clearly() {
    let node = Node::start(&[], &[]);
    assert_eq!(
        node.get("/api/health").body["reranker"]["state"],
        "disabled"
    );
    node.create_collection("c");
    let r = node.search("c", json!({"query": "x", "rerank": true}));
    assert_eq!(r.status, 400);
    assert!(r.text.contains("no reranker"), "{}", r.text);
    let r = node.post("/v1/rerank", json!({"query": "x", "documents": ["a"]}));
    assert_eq!(r.status, 400);
    assert!(r.text.contains("no reranker"), "{}", r.text);
    // plain search still works
    assert_eq!(node.search("c", json!({"query": "x"})).status, 200);
}

#[test]
fn openai_embeddings_endpoint_and_query_cache() {
    let node = Node::start(&[("SHOAL_MODEL__MAX_INPUTS_PER_REQUEST", "4")], &[]);
    let r = node.post("/v1/embeddings", json!({"input": ["The cat sat on the mat.", "A dog barked."], "model": "text-embedding-3-small"}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["object"], "list");
    assert_eq!(r.body["model"], "text-embedding-3-small");
    let data = r.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["index"], 1);
    let v0 = floats(&data[0]["embedding"]);
    assert_eq!(v0.len(), 384);
    let norm: f64 = v0.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);
    assert!(r.body["usage"]["prompt_tokens"].as_u64().unwrap() >= 10);

    // a single string, base64 as the OpenAI clients ask for: the same floats
    let b = node.post(
        "/v1/embeddings",
        json!({"input": "The cat sat on the mat.", "encoding_format": "base64"}),
    );
    assert_eq!(b.status, 200, "{}", b.text);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b.body["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f64> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
        .collect();
    assert_eq!(decoded.len(), 384);
    for (a, b) in decoded.iter().zip(&v0) {
        assert!((a - b).abs() < 1e-6);
    }

    for (body, needle) in [
        (json!({"input": []}), "empty"),
        (json!({"input": ["a", 3]}), "input[1]"),
        (json!({"input": [[1, 2, 3]]}), "token arrays"),
        (json!({"input": ["a", "b", "c", "d", "e"]}), "limit is 4"),
        (json!({"input": ["  "]}), "empty"),
        (
            json!({"input": "a", "encoding_format": "int8"}),
            "encoding_format",
        ),
        (json!({"input": 7}), "input"),
    ] {
        let r = node.post("/v1/embeddings", body);
        assert_eq!(r.status, 400, "{}", r.text);
        assert!(r.text.contains(needle), "{needle}: {}", r.text);
    }

    // the query cache: the second identical search is a hit
    node.create_collection("qc");
    let before = node.metrics();
    for _ in 0..2 {
        assert_eq!(
            node.search("qc", json!({"query": "a repeated question"}))
                .status,
            200
        );
    }
    let after = node.metrics();
    let hits = metric_value(&after, "shoal_query_cache_hits_total", "")
        - metric_value(&before, "shoal_query_cache_hits_total", "");
    let misses = metric_value(&after, "shoal_query_cache_misses_total", "")
        - metric_value(&before, "shoal_query_cache_misses_total", "");
    assert_eq!((hits, misses), (1.0, 1.0));
}

#[test]
fn reranking_whose_request_timed_out_stops_and_frees_the_reranker() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("test-cross-encoder");
    make_test_reranker(&model);
    let node = Node::start(
        &[
            ("SHOAL_SERVER__REQUEST_TIMEOUT_MS", "1500"),
            ("SHOAL_MODEL__TIMEOUT_MS", "1500"),
        ],
        &["--reranker-model", model.to_str().unwrap()],
    );
    // 1,000 passages of ~300 tokens: a minute or more of both cores
    let passage = "The committee reviewed the annual report on river water quality, noting that \
                   nitrate levels fell in most districts while phosphate stayed flat. "
        .repeat(12);
    let docs: Vec<String> = (0..1000).map(|i| format!("{i}. {passage}")).collect();
    let t = std::time::Instant::now();
    let r = node.post(
        "/v1/rerank",
        json!({"query": "did nitrate levels fall", "documents": docs}),
    );
    assert!(
        r.status == 504 || r.status == 503,
        "expected a timeout: {} {}",
        r.status,
        r.text
    );
    assert!(
        t.elapsed().as_secs() < 10,
        "answered after {:?}",
        t.elapsed()
    );
    // the work stops instead of running on for the abandoned request ...
    shoal_tests::wait_until(
        std::time::Duration::from_secs(10),
        "the abandoned reranking to stop",
        || {
            metric_value(
                &node.metrics(),
                "shoal_cancelled_work_total",
                "kind=\"reranking\"",
            ) >= 1.0
        },
    );
    // ... so the next request is answered at once
    let t = std::time::Instant::now();
    let r = node.post(
        "/v1/rerank",
        json!({"query": "did nitrate levels fall", "documents": ["Nitrate fell.", "Chess."]}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(3),
        "the reranker was still busy: {:?}",
        t.elapsed()
    );
}

/// A folder with query and document prompts ("query: ", "passage: "), made from the MiniLM weights
/// as `scripts/sentence_models_reference.py` made it (its small files are in the fixture; it has
/// no Dense layer, so linking the weights is all it needs).
fn prompts_model(out: &std::path::Path) -> Value {
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(
            shoal_tests::workspace_root()
                .join("inference/tests/fixtures/sentence_models_reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let variant = fixture["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "prompts")
        .unwrap()
        .clone();
    std::fs::create_dir_all(out).unwrap();
    for f in fixture["base_files"].as_array().unwrap() {
        let f = f.as_str().unwrap();
        std::os::unix::fs::symlink(shoal_tests::model_dir().join(f), out.join(f)).unwrap();
    }
    for (path, text) in variant["files"].as_object().unwrap() {
        let target = out.join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(target, text.as_str().unwrap()).unwrap();
    }
    json!({"texts": fixture["texts"], "vectors": variant["vectors"]})
}

#[test]
fn a_model_with_prompts_gets_its_query_prompt_at_search_and_its_document_prompt_at_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("e5-like");
    let reference = prompts_model(&model);
    let texts: Vec<String> = reference["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .take(5) // the last one is longer than a chunk
        .collect();
    let vectors = |kind: &str| -> Vec<Vec<f64>> {
        reference["vectors"][kind]
            .as_array()
            .unwrap()
            .iter()
            .map(floats)
            .collect()
    };
    let (queries, documents, plain) = (vectors("query"), vectors("document"), vectors("plain"));
    let node = Node::start(&[], &["--model", model.to_str().unwrap()]);
    node.create_collection("p");
    let docs: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": format!("d{i}"), "text": t}))
        .collect();
    node.ingest("p", Value::Array(docs));
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    for (qi, q) in texts.iter().enumerate().take(3) {
        let r = node.search("p", json!({"query": q, "top_k": 5}));
        assert_eq!(r.status, 200, "{}", r.text);
        let hits = r.body["hits"].as_array().unwrap();
        assert_eq!(hits.len(), 5);
        for h in hits {
            let d: usize = h["document_id"].as_str().unwrap()[1..].parse().unwrap();
            // sentence-transformers' query vector (with "query: ") against its document vector
            // (with "passage: "); without the prompts the scores differ by far more
            let expected = dot(&queries[qi], &documents[d]);
            let got = h["score"].as_f64().unwrap();
            assert!(
                (got - expected).abs() < 2e-3,
                "query {qi} document {d}: score {got}, sentence-transformers {expected}"
            );
        }
    }
    // /v1/embeddings: plain by default, the prompts by input_type; TEI's prompt_name too
    let cos = |a: &[f64], b: &[f64]| dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt());
    for (input_type, expected) in [
        (None, &plain),
        (Some("query"), &queries),
        (Some("document"), &documents),
    ] {
        let mut body = json!({"input": texts[2]});
        if let Some(t) = input_type {
            body["input_type"] = json!(t);
        }
        let r = node.post("/v1/embeddings", body);
        assert_eq!(r.status, 200, "{}", r.text);
        let c = cos(&floats(&r.body["data"][0]["embedding"]), &expected[2]);
        assert!(c >= 0.9999, "{input_type:?}: cosine {c}");
    }
    let tei = node.post(
        "/embed",
        json!({"inputs": texts[2], "prompt_name": "query"}),
    );
    assert_eq!(tei.status, 200, "{}", tei.text);
    assert!(cos(&floats(&tei.body[0]), &queries[2]) >= 0.9999);
    // TEI looks prompt_name up by name in the folder's prompts ("passage" is this one's)
    let tei = node.post(
        "/embed",
        json!({"inputs": texts[2], "prompt_name": "passage"}),
    );
    assert_eq!(tei.status, 200, "{}", tei.text);
    assert!(cos(&floats(&tei.body[0]), &documents[2]) >= 0.9999);
    let missing = node.post("/embed", json!({"inputs": "x", "prompt_name": "document"}));
    assert_eq!(missing.status, 400, "{}", missing.text);
    assert!(missing.text.contains("passage, query"), "{}", missing.text);
    let bad = node.post(
        "/v1/embeddings",
        json!({"input": "x", "input_type": "poem"}),
    );
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert!(bad.text.contains("poem"), "{}", bad.text);
}
