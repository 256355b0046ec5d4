//! The metrics contract: after real traffic a node exports every family docs/metrics.md
//! documents, each has moved, it exports nothing the page leaves out, and the alert rules and the
//! Grafana dashboard name only metrics that exist.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};
use shoal_tests::{corpus, make_test_reranker, wait_until, workspace_root, Node};

/// Families that this single-node test cannot make move, and where they are exercised.
const NOT_MOVED_HERE: &[(&str, &str)] = &[
    (
        "shoal_cancelled_work_total",
        "a request that goes away mid-inference: node/tests/write_cancellation.rs, tests/tests/limits.rs",
    ),
    (
        "shoal_ingest_rejected_total",
        "a full ingest queue: tests/tests/limits.rs",
    ),
    (
        "shoal_ingest_turns_total",
        "ingest parked by a stream of queries: node/src/runtime.rs units",
    ),
    (
        "shoal_ingest_turns_lapsed_total",
        "a turn granted that no ingest thread takes in time: node/src/embed_exec.rs units",
    ),
    (
        "shoal_cluster_forwarded_writes_total",
        "a write sent to a follower: tests/tests/cluster.rs",
    ),
    (
        "shoal_cluster_forwarded_reranks_total",
        "a node without a reranker: tests/tests/cluster.rs",
    ),
];

/// The families of docs/metrics.md's tables: name and type.
fn documented() -> BTreeMap<String, String> {
    let page = std::fs::read_to_string(workspace_root().join("docs/metrics.md")).unwrap();
    page.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix("`shoal_")?.strip_suffix('`')?;
            Some((format!("shoal_{name}"), cells.get(2)?.to_string()))
        })
        .collect()
}

/// Scraped families: name to (type, sum of its sample values; for a histogram, of `_count`).
fn scrape(text: &str) -> BTreeMap<String, (String, f64)> {
    let mut out: BTreeMap<String, (String, f64)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                out.insert(name.to_owned(), (kind.to_owned(), 0.0));
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let family = match name.strip_suffix("_count") {
            Some(base) if out.get(base).is_some_and(|(k, _)| k == "histogram") => base,
            _ => name,
        };
        if let Some((kind, sum)) = out.get_mut(family) {
            if kind != "histogram" || name.ends_with("_count") {
                *sum += value.abs();
            }
        }
    }
    out
}

/// The `shoal_...` metric names a text mentions (histogram series reduced to their family).
fn named_metrics(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("shoal_") {
        let start = i + pos;
        let preceded = start > 0 && (bytes[start - 1].is_ascii_alphanumeric());
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if !preceded {
            let mut name = &text[start..end];
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    if !base.ends_with("_total") || suffix != "_count" {
                        name = base;
                    }
                }
            }
            names.insert(name.to_owned());
        }
        i = end.max(start + 1);
    }
    names
}

#[test]
fn every_documented_family_is_exported_and_moves_after_real_traffic() {
    let documented = documented();
    assert!(
        documented.len() > 40,
        "docs/metrics.md lists {documented:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let reranker = dir.path().join("test-cross-encoder");
    make_test_reranker(&reranker);
    let mut node = Node::start(
        &[
            // a snapshot after a few entries, and a compaction after a few deletes
            ("SHOAL_CLUSTER__SNAPSHOT_AFTER_ENTRIES", "5"),
            ("SHOAL_INDEX__COMPACTION_MIN_TOMBSTONES", "1"),
            ("SHOAL_INDEX__COMPACTION_RATIO", "0.01"),
        ],
        &[
            "--reranker-model",
            reranker.to_str().unwrap(),
            "--fault-injection",
        ],
    );
    node.create_collection("m");
    node.ingest("m", corpus());
    let search = |node: &Node, body: Value| {
        let r = node.search("m", body);
        assert_eq!(r.status, 200, "{}", r.text);
        r
    };
    // baseline twice (the second from the query cache), rerank, and an empty result
    search(
        &node,
        json!({"query": "how do plants make food", "top_k": 3}),
    );
    search(
        &node,
        json!({"query": "how do plants make food", "top_k": 3}),
    );
    search(
        &node,
        json!({"query": "tallest tower in Paris", "top_k": 3, "rerank": true}),
    );
    let empty = search(
        &node,
        json!({"query": "chess", "top_k": 3, "filter": {"metadata": {"topic": "no-such-topic"}}}),
    );
    assert_eq!(empty.body["hits"], json!([]), "{}", empty.text);
    // a 4xx
    assert_eq!(node.search("missing", json!({"query": "x"})).status, 404);
    // deletes leave tombstones, and a compaction removes them
    for id in ["eiffel", "chess"] {
        let r = node.request(
            "DELETE",
            &format!("/api/v1/collections/m/documents/{id}"),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.text);
    }
    wait_until(std::time::Duration::from_secs(60), "a compaction", || {
        metric_value(&node.metrics(), "shoal_index_compactions_total") > 0.0
    });
    // an actor restart
    let r = node.request("POST", "/api/v1/admin/actors/embedder-query/panic", None);
    assert_eq!(r.status, 202, "{}", r.text);
    wait_until(
        std::time::Duration::from_secs(60),
        "the query embedder restarted",
        || {
            metric_value(&node.metrics(), "shoal_actor_restarts_total") > 0.0
                && node
                    .search("m", json!({"query": "chess", "top_k": 1}))
                    .status
                    == 200
        },
    );
    // Counters start again at a restart: what moved before it is read now, and a graceful
    // restart then reloads the dumped graph.
    let before = node.metrics();
    assert!(node.terminate(), "a graceful stop");
    node.start_again();
    search(&node, json!({"query": "chess", "top_k": 1}));
    let after = node.metrics();
    let text = format!("{before}\n{after}");
    let (scraped_before, scraped) = (scrape(&before), scrape(&after));
    let mut problems = Vec::new();
    for (name, kind) in &documented {
        // families with labels set at run time (restarts, compactions) are in the first scrape
        match scraped.get(name).or_else(|| scraped_before.get(name)) {
            None => problems.push(format!("{name}: documented, not exported")),
            Some((k, _)) if k != kind => {
                problems.push(format!("{name}: documented as {kind}, exported as {k}"))
            }
            Some((k, sum)) => {
                let moved = *sum != 0.0 || scraped_before.get(name).is_some_and(|(_, v)| *v != 0.0);
                let exempt = NOT_MOVED_HERE.iter().any(|(n, _)| n == name);
                if k != "gauge" && !moved && !exempt {
                    problems.push(format!("{name}: has not moved"));
                }
            }
        }
    }
    for name in scraped.keys().chain(scraped_before.keys()) {
        if !documented.contains_key(name.as_str()) {
            problems.push(format!("{name}: exported, not in docs/metrics.md"));
        }
    }
    // gauges that must be non-zero on a node that holds data
    for name in [
        "shoal_ready",
        "shoal_build_info",
        "shoal_collection_documents",
        "shoal_collection_chunks",
        "shoal_index_points",
        "shoal_process_resident_memory_bytes",
        "shoal_data_dir_bytes",
        "shoal_disk_free_bytes",
        "shoal_cluster_leader_id",
        "shoal_cluster_is_leader",
    ] {
        if scraped.get(name).is_none_or(|(_, v)| *v == 0.0) {
            problems.push(format!("{name}: zero on a ready node with data"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}\n\n{text}");
    // the labels the docs promise
    for (family, labels) in [
        ("shoal_search_duration_seconds_count", "mode=\"rerank\""),
        ("shoal_search_duration_seconds_count", "mode=\"baseline\""),
        ("shoal_search_empty_results_total", "mode=\"baseline\""),
        ("shoal_index_shard_loads_total", "source=\"dump\""),
        ("shoal_http_requests_total", "status=\"404\""),
        ("shoal_actor_restarts_total", "actor=\"embedder-query\""),
        ("shoal_cluster_snapshots_total", "event=\"built\""),
        ("shoal_embed_batch_size_count", "queue=\"ingest\""),
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(family) && l.contains(labels) && !l.ends_with(" 0")),
            "no moved {family}{{{labels}}} in\n{text}"
        );
    }
}

fn metric_value(text: &str, name: &str) -> f64 {
    shoal_tests::metric_value(text, name, "")
}

#[test]
fn the_alert_rules_and_the_dashboard_name_only_exported_metrics() {
    let documented = documented();
    let root = workspace_root();
    let mut problems = Vec::new();
    for file in [
        "deploy/prometheus/shoal-rules.yml",
        "deploy/prometheus/shoal-rules.test.yml",
        "deploy/grafana/dashboards/shoal.json",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let text = if file.ends_with(".json") {
            // only what the panels query
            let v: Value = serde_json::from_str(&text).unwrap();
            let mut exprs = Vec::new();
            collect_exprs(&v, &mut exprs);
            assert!(!exprs.is_empty(), "{file}: no expr");
            exprs.join("\n")
        } else {
            text
        };
        let names = named_metrics(&text);
        assert!(!names.is_empty(), "{file} names no shoal metric");
        for name in names {
            if !documented.contains_key(&name) {
                problems.push(format!("{file}: {name} is not a metric shoal exports"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query", Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn names_are_read_out_of_expressions() {
    let names = named_metrics(
        r#"histogram_quantile(0.95, sum by (le) (rate(shoal_search_duration_seconds_bucket{mode="rerank"}[5m]))) / shoal_index_points + noshoal_x + instance:shoal_http_requests_total:rate5m"#,
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "shoal_http_requests_total",
            "shoal_index_points",
            "shoal_search_duration_seconds"
        ]
    );
}
