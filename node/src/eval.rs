//! `shoal eval`: search quality on a labelled set in BEIR layout, against a running node.
//!
//! The set is a folder with `corpus.jsonl` (`{"_id", "title"?, "text"}`), `queries.jsonl`
//! (`{"_id", "text"}`) and `qrels.tsv` (`query-id corpus-id score`, a header line, tab
//! separated; a score above 0 is relevant, its value the gain). For each query, the node is asked
//! for its vector candidates and for the same candidates reranked; from them come nDCG@k and
//! recall@k of both, and the reranker's pairwise accuracy: the share of (relevant, non-relevant)
//! candidate pairs it scores in the right order (the vector scores' share beside it). Other
//! search modes (`--modes keyword,hybrid,weighted:0.7`) are measured beside the vector baseline
//! on the same queries.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::admin_cli::{call, CliError};

/// A labelled set: queries with their relevant documents and gains.
pub struct EvalSet {
    pub corpus: Vec<(String, String)>,
    pub queries: Vec<(String, String)>,
    /// query id → document id → gain (> 0)
    pub qrels: HashMap<String, HashMap<String, f64>>,
}

fn bad(message: String) -> CliError {
    CliError { message, code: 2 }
}

fn read_jsonl(
    path: &Path,
    mut each: impl FnMut(Value) -> Result<(), String>,
) -> Result<(), CliError> {
    let file = std::fs::File::open(path)
        .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| bad(format!("{}: {e}", path.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| bad(format!("{} line {}: {e}", path.display(), n + 1)))?;
        each(v).map_err(|e| bad(format!("{} line {}: {e}", path.display(), n + 1)))?;
    }
    Ok(())
}

fn id_of(v: &Value) -> Result<String, String> {
    match &v["_id"] {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err("no `_id`".into()),
    }
}

impl EvalSet {
    pub fn load(dir: &Path) -> Result<EvalSet, CliError> {
        let mut corpus = Vec::new();
        read_jsonl(&dir.join("corpus.jsonl"), |v| {
            let text = v["text"].as_str().ok_or("no `text`")?;
            let title = v["title"].as_str().unwrap_or_default();
            let text = if title.is_empty() {
                text.to_owned()
            } else {
                format!("{title}. {text}")
            };
            corpus.push((id_of(&v)?, text));
            Ok(())
        })?;
        let mut queries = Vec::new();
        read_jsonl(&dir.join("queries.jsonl"), |v| {
            let text = v["text"].as_str().ok_or("no `text`")?;
            queries.push((id_of(&v)?, text.to_owned()));
            Ok(())
        })?;
        let path = dir.join("qrels.tsv");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        let mut qrels: HashMap<String, HashMap<String, f64>> = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let cells: Vec<&str> = line.split('\t').collect();
            if cells.len() < 3 || line.trim().is_empty() {
                continue;
            }
            let Ok(gain) = cells[2].trim().parse::<f64>() else {
                if n == 0 {
                    continue; // the header
                }
                return Err(bad(format!(
                    "{} line {}: `{}` is not a score",
                    path.display(),
                    n + 1,
                    cells[2]
                )));
            };
            if gain > 0.0 {
                qrels
                    .entry(cells[0].to_owned())
                    .or_default()
                    .insert(cells[1].to_owned(), gain);
            }
        }
        // queries without a relevant document measure nothing
        queries.retain(|(id, _)| qrels.contains_key(id));
        if queries.is_empty() {
            return Err(bad(format!(
                "{}: no query has a relevant document in qrels.tsv",
                dir.display()
            )));
        }
        Ok(EvalSet {
            corpus,
            queries,
            qrels,
        })
    }
}

/// nDCG@k of `ranking` (document ids, best first) with graded `relevant` gains.
pub fn ndcg_at(ranking: &[String], relevant: &HashMap<String, f64>, k: usize) -> f64 {
    let dcg: f64 = ranking
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, d)| relevant.get(d).copied().unwrap_or(0.0) / ((i + 2) as f64).log2())
        .sum();
    let mut gains: Vec<f64> = relevant.values().copied().collect();
    gains.sort_by(|a, b| b.total_cmp(a));
    let ideal: f64 = gains
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, g)| g / ((i + 2) as f64).log2())
        .sum();
    if ideal > 0.0 {
        dcg / ideal
    } else {
        0.0
    }
}

/// The share of `relevant` documents in the first `k` of `ranking`.
pub fn recall_at(ranking: &[String], relevant: &HashMap<String, f64>, k: usize) -> f64 {
    if relevant.is_empty() {
        return 0.0;
    }
    let found = ranking
        .iter()
        .take(k)
        .filter(|d| relevant.contains_key(*d))
        .count();
    found as f64 / relevant.len() as f64
}

/// Pairs (relevant, non-relevant) among `scored` candidates, and how many of them `scored`
/// orders right (a tie counts half).
pub fn ordered_pairs(scored: &[(String, f64)], relevant: &HashMap<String, f64>) -> (f64, u64) {
    let is_relevant = |(d, _): &&(String, f64)| relevant.contains_key(d);
    let mut right = 0.0;
    let mut pairs = 0;
    for (_, r) in scored.iter().filter(is_relevant) {
        for (_, n) in scored.iter().filter(|s| !is_relevant(s)) {
            pairs += 1;
            if r > n {
                right += 1.0;
            } else if r == n {
                right += 0.5;
            }
        }
    }
    (right, pairs)
}

/// Hits to documents in the order they first appear: each document once, with its best chunk's
/// `field` score.
fn documents(hits: &Value, field: &str) -> Vec<(String, f64)> {
    let mut at: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<(String, f64)> = Vec::new();
    for h in hits.as_array().into_iter().flatten() {
        let (Some(id), Some(score)) = (h["document_id"].as_str(), h[field].as_f64()) else {
            continue;
        };
        match at.get(id) {
            Some(&i) => out[i].1 = out[i].1.max(score),
            None => {
                at.insert(id.to_owned(), out.len());
                out.push((id.to_owned(), score));
            }
        }
    }
    out
}

/// What `shoal eval` measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub queries: usize,
    pub k: usize,
    pub candidates: usize,
    pub baseline_ndcg: f64,
    pub baseline_recall: f64,
    /// None when the node has no reranker.
    pub rerank_ndcg: Option<f64>,
    pub rerank_recall: Option<f64>,
    pub rerank_pairwise_accuracy: Option<f64>,
    pub vector_pairwise_accuracy: f64,
    pub pairs: u64,
    pub baseline_ms_p50: f64,
    pub rerank_ms_p50: Option<f64>,
    /// The other search modes asked for, in order.
    pub modes: Vec<ModeReport>,
}

/// nDCG@k, recall@k and the median latency of one search mode.
#[derive(Debug, Clone, PartialEq)]
pub struct ModeReport {
    pub mode: SearchMode,
    pub ndcg: f64,
    pub recall: f64,
    pub ms_p50: f64,
}

/// A search mode `shoal eval` can measure besides the vector baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SearchMode {
    /// BM25 alone.
    Keyword,
    /// Vector and keyword, reciprocal rank fusion.
    Hybrid,
    /// Vector and keyword, weighted fusion with this vector weight.
    Weighted(f64),
}

impl SearchMode {
    /// `keyword`, `hybrid`, `weighted` (alpha 0.5) or `weighted:ALPHA`.
    pub fn parse(s: &str) -> Result<SearchMode, String> {
        match s.trim() {
            "keyword" => Ok(SearchMode::Keyword),
            "hybrid" | "rrf" => Ok(SearchMode::Hybrid),
            "weighted" => Ok(SearchMode::Weighted(0.5)),
            other => match other.strip_prefix("weighted:").map(str::parse::<f64>) {
                Some(Ok(a)) if (0.0..=1.0).contains(&a) => Ok(SearchMode::Weighted(a)),
                _ => Err(format!(
                    "unknown search mode `{other}` (expected keyword, hybrid, weighted or weighted:ALPHA with ALPHA in 0..1)"
                )),
            },
        }
    }

    pub fn name(&self) -> String {
        match self {
            SearchMode::Keyword => "keyword".into(),
            SearchMode::Hybrid => "hybrid (rrf)".into(),
            SearchMode::Weighted(a) => format!("hybrid (weighted, alpha {a})"),
        }
    }

    /// The search request's mode fields.
    fn fields(&self) -> Value {
        match self {
            SearchMode::Keyword => json!({"mode": "keyword"}),
            SearchMode::Hybrid => json!({"mode": "hybrid", "fusion": "rrf"}),
            SearchMode::Weighted(a) => json!({"mode": "hybrid", "fusion": "weighted", "alpha": a}),
        }
    }
}

impl Report {
    pub fn to_json(&self) -> Value {
        json!({
            "queries": self.queries, "k": self.k, "candidates": self.candidates,
            "baseline": {"ndcg": self.baseline_ndcg, "recall": self.baseline_recall,
                         "pairwise_accuracy": self.vector_pairwise_accuracy, "p50_ms": self.baseline_ms_p50},
            "rerank": self.rerank_ndcg.map(|n| json!({"ndcg": n, "recall": self.rerank_recall,
                         "pairwise_accuracy": self.rerank_pairwise_accuracy, "p50_ms": self.rerank_ms_p50})),
            "pairs": self.pairs,
            "modes": self.modes.iter().map(|m| json!({"mode": m.mode.name(), "ndcg": m.ndcg,
                         "recall": m.recall, "p50_ms": m.ms_p50})).collect::<Vec<_>>(),
        })
    }

    pub fn table(&self) -> String {
        let k = self.k;
        let f = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
        let ms = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
        format!(
            "{} queries, {} candidates each, {} (relevant, non-relevant) candidate pairs\n\
             {:<30} {:>9} {:>10} {:>18} {:>8}\n\
             {:<30} {:>9} {:>10} {:>18} {:>8}\n\
             {:<30} {:>9} {:>10} {:>18} {:>8}\n",
            self.queries,
            self.candidates,
            self.pairs,
            "search",
            format!("nDCG@{k}"),
            format!("recall@{k}"),
            "pairwise accuracy",
            "p50 ms",
            "baseline",
            f(Some(self.baseline_ndcg)),
            f(Some(self.baseline_recall)),
            f(Some(self.vector_pairwise_accuracy)),
            ms(Some(self.baseline_ms_p50)),
            "rerank",
            f(self.rerank_ndcg),
            f(self.rerank_recall),
            f(self.rerank_pairwise_accuracy),
            ms(self.rerank_ms_p50),
        ) + &self
            .modes
            .iter()
            .map(|m| {
                format!(
                    "{:<30} {:>9} {:>10} {:>18} {:>8}\n",
                    m.mode.name(),
                    f(Some(m.ndcg)),
                    f(Some(m.recall)),
                    "-",
                    ms(Some(m.ms_p50)),
                )
            })
            .collect::<String>()
    }
}

/// Options of a run.
pub struct EvalOptions {
    pub node: String,
    pub collection: String,
    pub k: usize,
    pub candidates: usize,
    /// Create the collection and add the corpus first.
    pub ingest: bool,
    /// Whether to also measure with reranking (off: the node has no reranker).
    pub rerank: bool,
    /// Search modes measured besides the vector baseline.
    pub modes: Vec<SearchMode>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Add the corpus to a new collection and wait until every document is searchable.
fn ingest(set: &EvalSet, o: &EvalOptions) -> Result<(), CliError> {
    call(
        &o.node,
        "PUT",
        &format!("/api/v1/collections/{}", o.collection),
        None,
    )?;
    let mut jobs = Vec::new();
    for batch in set.corpus.chunks(200) {
        let docs: Vec<Value> = batch
            .iter()
            .map(|(id, text)| json!({"id": id, "text": text}))
            .collect();
        let path = format!("/api/v1/collections/{}/documents", o.collection);
        let body = json!({ "documents": docs });
        // a full ingest queue answers 429: wait and send the same batch again
        let mut tries = 0;
        let job = loop {
            match call(&o.node, "POST", &path, Some(body.clone())) {
                Ok(v) => break v,
                Err(e) if e.message.contains("429") && tries < 120 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        };
        jobs.push(job["job_id"].as_str().unwrap_or_default().to_owned());
    }
    for job in jobs {
        loop {
            let v = call(&o.node, "GET", &format!("/api/v1/jobs/{job}"), None)?;
            match v["state"].as_str() {
                Some("running") => std::thread::sleep(Duration::from_millis(200)),
                Some("completed") => break,
                other => {
                    return Err(CliError {
                        message: format!(
                            "ingest job {job} ended {}: {}",
                            other.unwrap_or("?"),
                            v["errors"]
                        ),
                        code: 1,
                    })
                }
            }
        }
    }
    Ok(())
}

/// Run the set against the node and measure.
pub fn run(set: &EvalSet, o: &EvalOptions) -> Result<Report, CliError> {
    if o.ingest {
        ingest(set, o)?;
    }
    let path = format!("/api/v1/collections/{}/search", o.collection);
    let mut report = Report {
        queries: set.queries.len(),
        k: o.k,
        candidates: o.candidates,
        ..Report::default()
    };
    let (mut base_ndcg, mut base_recall) = (Vec::new(), Vec::new());
    let (mut rr_ndcg, mut rr_recall) = (Vec::new(), Vec::new());
    let (mut vec_right, mut rr_right, mut pairs) = (0.0, 0.0, 0u64);
    let (mut base_ms, mut rr_ms) = (Vec::new(), Vec::new());
    // per extra mode: nDCG, recall, latencies
    let mut per_mode: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> =
        o.modes.iter().map(|_| Default::default()).collect();
    // One search, timed into `ms`.
    let search = |body: Value, ms: &mut Vec<f64>| -> Result<Value, CliError> {
        let t = Instant::now();
        let answer = call(&o.node, "POST", &path, Some(body))?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        Ok(answer)
    };
    // nDCG@k and recall@k of documents in ranked order.
    let quality = |docs: &[(String, f64)], relevant: &HashMap<String, f64>| {
        let ranking: Vec<String> = docs.iter().map(|(d, _)| d.clone()).collect();
        (
            ndcg_at(&ranking, relevant, o.k),
            recall_at(&ranking, relevant, o.k),
        )
    };
    for (qid, text) in &set.queries {
        let relevant = &set.qrels[qid];
        let base = search(json!({"query": text, "top_k": o.candidates}), &mut base_ms)?;
        // the other modes after the baseline (which embeds the query; they find it cached)
        for (mode, (ndcg, recall, ms)) in o.modes.iter().zip(per_mode.iter_mut()) {
            let mut body = mode.fields();
            body["query"] = json!(text);
            body["top_k"] = json!(o.candidates);
            let answer = search(body, ms)?;
            let (n, r) = quality(&documents(&answer["hits"], "score"), relevant);
            ndcg.push(n);
            recall.push(r);
        }
        let by_vector = documents(&base["hits"], "score");
        let (ndcg, recall) = quality(&by_vector, relevant);
        base_ndcg.push(ndcg);
        base_recall.push(recall);
        if !o.rerank {
            let (right, n) = ordered_pairs(&by_vector, relevant);
            vec_right += right;
            pairs += n;
            continue;
        }
        let rr = search(
            json!({"query": text, "top_k": o.candidates, "rerank": true,
                   "rerank_candidates": o.candidates}),
            &mut rr_ms,
        )?;
        let by_reranker = documents(&rr["hits"], "rerank_score");
        let (ndcg, recall) = quality(&by_reranker, relevant);
        rr_ndcg.push(ndcg);
        rr_recall.push(recall);
        let (right, n) = ordered_pairs(&by_reranker, relevant);
        rr_right += right;
        pairs += n;
        // the vector scores of the same candidates: both shares count the same pairs
        let (right, _) = ordered_pairs(&documents(&rr["hits"], "score"), relevant);
        vec_right += right;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    report.baseline_ndcg = mean(&base_ndcg);
    report.baseline_recall = mean(&base_recall);
    report.baseline_ms_p50 = median(base_ms);
    report.modes = o
        .modes
        .iter()
        .zip(per_mode)
        .map(|(mode, (ndcg, recall, ms))| ModeReport {
            mode: *mode,
            ndcg: mean(&ndcg),
            recall: mean(&recall),
            ms_p50: median(ms),
        })
        .collect();
    report.pairs = pairs;
    report.vector_pairwise_accuracy = if pairs > 0 {
        vec_right / pairs as f64
    } else {
        0.0
    };
    if o.rerank {
        report.rerank_ndcg = Some(mean(&rr_ndcg));
        report.rerank_recall = Some(mean(&rr_recall));
        report.rerank_pairwise_accuracy = Some(if pairs > 0 {
            rr_right / pairs as f64
        } else {
            0.0
        });
        report.rerank_ms_p50 = Some(median(rr_ms));
    }
    Ok(report)
}

/// Whether the node at `base` has a reranker (its health says so).
pub fn node_has_reranker(base: &str) -> Result<bool, CliError> {
    let h = call(base, "GET", "/api/health", None)?;
    Ok(h["reranker"]["state"] == "ready")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(pairs: &[(&str, f64)]) -> HashMap<String, f64> {
        pairs.iter().map(|(d, g)| (d.to_string(), *g)).collect()
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ndcg_and_recall_match_hand_computed_values() {
        let r = rel(&[("a", 1.0), ("b", 1.0)]);
        assert_eq!(ndcg_at(&ids(&["a", "b", "c"]), &r, 10), 1.0);
        // relevant at ranks 2 and 3: (1/log2 3 + 1/log2 4) / (1 + 1/log2 3)
        let want = (1.0 / 3f64.log2() + 0.5) / (1.0 + 1.0 / 3f64.log2());
        assert!((ndcg_at(&ids(&["x", "a", "b"]), &r, 10) - want).abs() < 1e-12);
        assert_eq!(ndcg_at(&ids(&["x", "y"]), &r, 10), 0.0);
        // cut at k: b at rank 3 does not count with k = 2
        assert_eq!(recall_at(&ids(&["a", "x", "b"]), &r, 2), 0.5);
        assert_eq!(recall_at(&ids(&["a", "x", "b"]), &r, 3), 1.0);
        // graded gains: the better document first is the ideal order
        let g = rel(&[("a", 2.0), ("b", 1.0)]);
        assert_eq!(ndcg_at(&ids(&["a", "b"]), &g, 10), 1.0);
        assert!(ndcg_at(&ids(&["b", "a"]), &g, 10) < 1.0);
    }

    #[test]
    fn search_modes_parse_and_name_their_request_fields() {
        assert_eq!(SearchMode::parse("keyword"), Ok(SearchMode::Keyword));
        assert_eq!(SearchMode::parse(" hybrid"), Ok(SearchMode::Hybrid));
        assert_eq!(SearchMode::parse("weighted"), Ok(SearchMode::Weighted(0.5)));
        assert_eq!(
            SearchMode::parse("weighted:0.7"),
            Ok(SearchMode::Weighted(0.7))
        );
        assert!(SearchMode::parse("weighted:1.5").is_err());
        assert!(SearchMode::parse("fuzzy").unwrap_err().contains("fuzzy"));
        assert_eq!(
            SearchMode::Weighted(0.7).fields(),
            json!({"mode": "hybrid", "fusion": "weighted", "alpha": 0.7})
        );
    }

    #[test]
    fn hits_fold_into_documents_with_their_best_chunk() {
        let hits = json!([
            {"document_id": "a", "score": 0.5, "rerank_score": 3.0},
            {"document_id": "b", "score": 0.9, "rerank_score": 2.0},
            {"document_id": "a", "score": 0.7, "rerank_score": 1.0},
        ]);
        assert_eq!(
            documents(&hits, "rerank_score"),
            vec![("a".to_string(), 3.0), ("b".to_string(), 2.0)]
        );
        assert_eq!(
            documents(&hits, "score"),
            vec![("a".to_string(), 0.7), ("b".to_string(), 0.9)]
        );
    }

    #[test]
    fn pairwise_accuracy_counts_each_relevant_non_relevant_pair() {
        let r = rel(&[("a", 1.0)]);
        let scored = vec![
            ("x".to_string(), 3.0),
            ("a".to_string(), 2.0),
            ("y".to_string(), 1.0),
            ("z".to_string(), 2.0),
        ];
        // a beats y, loses to x, ties z: 1 + 0 + 0.5 of 3 pairs
        assert_eq!(ordered_pairs(&scored, &r), (1.5, 3));
        assert_eq!(ordered_pairs(&scored, &rel(&[])), (0.0, 0));
    }

    #[test]
    fn a_beir_folder_loads_and_queries_without_relevant_documents_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("corpus.jsonl"),
            "{\"_id\": \"d1\", \"title\": \"T\", \"text\": \"body\"}\n{\"_id\": 2, \"text\": \"two\"}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("queries.jsonl"),
            "{\"_id\": \"q1\", \"text\": \"first\"}\n{\"_id\": \"q2\", \"text\": \"none\"}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("qrels.tsv"),
            "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\t2\t0\n",
        )
        .unwrap();
        let set = EvalSet::load(dir.path()).unwrap();
        assert_eq!(set.corpus[0], ("d1".into(), "T. body".into()));
        assert_eq!(set.corpus[1].0, "2");
        assert_eq!(set.queries, vec![("q1".to_string(), "first".to_string())]);
        std::fs::write(
            dir.path().join("qrels.tsv"),
            "query-id\tcorpus-id\tscore\nq1\td1\tmany\n",
        )
        .unwrap();
        let e = EvalSet::load(dir.path()).err().unwrap();
        assert!(e.message.contains("not a score"), "{}", e.message);
    }
}
