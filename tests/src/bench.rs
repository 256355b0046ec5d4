//! Helpers the benchmark programs share: percentiles, resident memory, a repeatable sample, and
//! the Wikipedia lead summaries they ingest.

use std::path::Path;

/// The `p`th percentile of sorted values (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Resident memory of process `pid` (MiB).
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// `n` items picked by a deterministic shuffle (xorshift), so every run uses the same ones.
pub fn sample<T: Clone>(items: &[T], n: usize, seed: u64) -> Vec<T> {
    let mut idx: Vec<usize> = (0..items.len()).collect();
    let mut s = seed;
    for i in (1..idx.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        idx.swap(i, (s % (i as u64 + 1)) as usize);
    }
    idx.into_iter().take(n).map(|i| items[i].clone()).collect()
}

/// One article of the summaries file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Article {
    pub title: String,
    pub extract: String,
    pub topic: String,
}

/// The non-empty articles of a summaries file (`{key: {title, extract, topic?}}`), sorted.
pub fn load_articles(path: &Path) -> Result<Vec<Article>, String> {
    let raw = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let data: serde_json::Value =
        serde_json::from_str(&raw).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut articles: Vec<Article> = data
        .as_object()
        .ok_or("the summaries file is not an object")?
        .values()
        .filter_map(|v| {
            Some(Article {
                title: v["title"].as_str()?.to_string(),
                extract: v["extract"].as_str()?.to_string(),
                topic: v["topic"].as_str().unwrap_or("").to_string(),
            })
        })
        .filter(|a| !a.extract.trim().is_empty())
        .collect();
    articles.sort();
    Ok(articles)
}
