//! Search events and `GET /api/v1/analytics/searches`: every search a node answers is recorded
//! in the node's own store, and the endpoint answers searches per second, latency percentiles,
//! error counts and the queries that found nothing, for one node or merged over the cluster.

use std::time::Duration;

use serde_json::{json, Value};
use shoal_tests::cluster::Cluster;
use shoal_tests::{wait_until, Node};

fn docs() -> Value {
    json!([
        {"id": "eiffel", "text": "The Eiffel Tower is a wrought-iron lattice tower in Paris.", "metadata": {"lang": "en"}},
        {"id": "photo", "text": "Photosynthesis lets plants turn light into chemical energy.", "metadata": {"lang": "en"}},
    ])
}

#[test]
fn searches_are_recorded_and_summarised() {
    let node = Node::start(&[], &[]);
    node.create_collection("wiki");
    node.ingest("wiki", docs());
    for q in [
        "tower in Paris",
        "how plants use light",
        "iron tower",
        "green leaves",
        "landmark",
    ] {
        assert_eq!(
            node.search("wiki", json!({"query": q, "top_k": 2})).status,
            200
        );
    }
    // two searches that find nothing (a filter no document matches), two refused
    for _ in 0..2 {
        let r = node.search(
            "wiki",
            json!({"query": "zebra stripes", "filter": {"metadata": {"lang": "xx"}}}),
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.body["hits"], json!([]));
    }
    assert_eq!(
        node.search("wiki", json!({"query": "x", "top_k": 0}))
            .status,
        400
    );
    assert_eq!(
        node.raw("POST", "/api/v1/collections/wiki/search", "{not json")
            .status,
        400
    );
    assert_eq!(node.search("nowhere", json!({"query": "x"})).status, 404);

    let mut body = Value::Null;
    wait_until(Duration::from_secs(20), "10 search events", || {
        let r = node.get("/api/v1/analytics/searches?since=1h");
        assert_eq!(r.status, 200, "{}", r.text);
        body = r.body;
        body["searches"] == 10
    });
    assert_eq!(body["client_errors"], 3, "{body}");
    assert_eq!(body["server_errors"], 0, "{body}");
    assert_eq!(body["empty_results"], 2, "{body}");
    assert_eq!(
        body["empty_queries"],
        json!([{"query": "zebra stripes", "count": 2}])
    );
    let base = &body["latency_ms"]["baseline"];
    assert_eq!(base["count"], 7, "{body}");
    assert!(
        base["p50"].as_f64().unwrap() > 0.0
            && base["p95"].as_f64().unwrap() >= base["p50"].as_f64().unwrap()
    );
    assert_eq!(body["latency_ms"]["rerank"]["count"], 0);
    assert!(body["searches_per_second"].as_f64().unwrap() > 0.0);
    assert!(
        (body["client_error_rate"].as_f64().unwrap() - 0.3).abs() < 1e-9,
        "{body}"
    );
    assert!(
        body.get("histogram").is_none() && base.get("histogram").is_none(),
        "{body}"
    );
    // by collection; a range before any search is empty
    let by = node.get("/api/v1/analytics/searches?since=1h&collection=nowhere");
    assert_eq!(by.body["searches"], 1, "{}", by.text);
    let before = node.get("/api/v1/analytics/searches?since=1000&until=2000");
    assert_eq!(before.body["searches"], 0);
    // bad ranges are 400; a non-admin is refused
    for bad in [
        "since=soon",
        "since=2h&until=3h",
        "until=yesterday",
        "colour=red",
        "step=0",
        "step=often",
        // 3,600 intervals of a second: more than a series holds
        "since=1h&step=1s",
    ] {
        let r = node.get(&format!("/api/v1/analytics/searches?{bad}"));
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
    }
    let r = node.post(
        "/api/v1/auth/keys",
        json!({"name": "reader", "role": "reader", "collections": ["*"]}),
    );
    let key = r.body["key"].as_str().unwrap().to_string();
    let r = reqwest::blocking::Client::new()
        .get(format!("{}/api/v1/analytics/searches", node.base))
        .bearer_auth(key)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // the events are the node's own, not part of the replicated state: its digest stays
    let digest = node.get("/api/v1/admin/digest").body["digest"].clone();
    node.search("wiki", json!({"query": "one more"}));
    wait_until(Duration::from_secs(20), "the 11th event", || {
        node.get("/api/v1/analytics/searches?since=1h").body["searches"] == 11
    });
    assert_eq!(node.get("/api/v1/admin/digest").body["digest"], digest);
}

#[test]
fn every_node_keeps_its_own_events_and_the_answer_merges_them() {
    let c = Cluster::start(3, 0, &[]);
    c.nodes[0].create_collection("wiki");
    c.nodes[0].ingest("wiki", docs());
    let counts = [3usize, 2, 0];
    for (i, n) in counts.iter().enumerate() {
        for _ in 0..*n {
            let r = c.search(
                i,
                "wiki",
                json!({"query": "tower", "top_k": 1, "consistency": "strong"}),
            );
            assert_eq!(r.status, 200, "{}", r.text);
        }
    }
    wait_until(Duration::from_secs(20), "node 1's and 2's events", || {
        c.nodes[0]
            .get("/api/v1/analytics/searches?since=1h&local=true")
            .body["searches"]
            == 3
            && c.nodes[1]
                .get("/api/v1/analytics/searches?since=1h&local=true")
                .body["searches"]
                == 2
    });
    // asked on the node that answered none, the cluster's answer has all five
    let r = c.nodes[2].get("/api/v1/analytics/searches?since=1h");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["searches"], 5, "{}", r.text);
    assert_eq!(r.body["nodes"], json!([1, 2, 3]));
    assert_eq!(r.body["missing_nodes"], json!([]));
    assert_eq!(r.body["latency_ms"]["baseline"]["count"], 5);
    // cut in minutes: the cluster's series and each member's add up to their searches
    let r = c.nodes[2].get("/api/v1/analytics/searches?since=1h&step=1m");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["step_ms"], 60_000);
    let total = |series: &Value| -> u64 {
        let s = series.as_array().expect("a series");
        assert_eq!(s.len(), 60);
        assert!(s.iter().all(|i| i.get("buckets").is_none()), "{series}");
        s.iter().map(|i| i["searches"].as_u64().unwrap()).sum()
    };
    assert_eq!(total(&r.body["series"]), 5, "{}", r.text);
    assert_eq!(total(&r.body["by_node"]["1"]["series"]), 3, "{}", r.text);
    assert_eq!(total(&r.body["by_node"]["2"]["series"]), 2, "{}", r.text);
    assert_eq!(total(&r.body["by_node"]["3"]["series"]), 0, "{}", r.text);
    // a node that is down is named, and the rest still answer
    let mut c = c;
    c.nodes[1].stop();
    let r = c.nodes[2].get("/api/v1/analytics/searches?since=1h");
    assert_eq!(r.body["searches"], 3, "{}", r.text);
    assert_eq!(r.body["missing_nodes"], json!([2]));
}
