//! Search analytics: every search the node answers becomes a [`SearchEvent`] in the node's own
//! event log (recorded off the search path, through a bounded channel), kept for
//! `analytics.retention_s`. [`summarize`] turns a time range of events into what the replaced
//! stack measured (searches per second, latency percentiles for baseline and reranked searches,
//! 4xx/5xx rates, the queries that found nothing); [`merge`] adds the summaries of several nodes
//! (latency as histograms, so percentiles stay right across nodes).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_storage::{EventLog, SearchEvent};
use tokio::sync::mpsc;

/// Events waiting to be written; past it new events are dropped (and counted).
const QUEUE: usize = 10_000;
/// How long the writer gathers events after the first before writing them as one batch: one
/// store write per search woke the store's I/O threads at every search (16 thread switches for a
/// vector search that takes a quarter of a millisecond).
const GATHER: Duration = Duration::from_millis(250);
/// Most events one batch writes.
const BATCH: usize = 4_096;
/// Most events one summary reads.
pub const MAX_SCANNED: usize = 2_000_000;
/// Most intervals a series has (`step` is refused when the range holds more).
pub const MAX_INTERVALS: u64 = 1_000;
/// Empty-result queries a summary lists.
const TOP_EMPTY: usize = 20;
/// Distinct empty queries a node's summary carries for merging.
const MAX_EMPTY_CARRIED: usize = 1_000;

/// Histogram buckets of latency: bucket `i` holds latencies up to `BASE_MS * GROWTH^i`.
const BASE_MS: f64 = 0.05;
const GROWTH: f64 = 1.1;
pub const BUCKETS: usize = 160;

fn bucket_of(ms: f64) -> usize {
    if ms <= BASE_MS {
        return 0;
    }
    (((ms / BASE_MS).ln() / GROWTH.ln()).ceil() as usize).min(BUCKETS - 1)
}

fn bucket_upper_ms(i: usize) -> f64 {
    BASE_MS * GROWTH.powi(i as i32)
}

/// Writes events to the log in batches (those of a quarter second), off the search path.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Recorded>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

/// What the writer is handed: an event, or a request to write what it holds now.
enum Recorded {
    Event(SearchEvent),
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl Recorder {
    /// Start the writer (and the expiry) of `log`.
    pub fn start(log: Arc<EventLog>, retention: Duration, max_events: usize) -> Recorder {
        let (tx, mut rx) = mpsc::channel::<Recorded>(QUEUE);
        let writer_log = log.clone();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(first) = rx.recv().await {
                let mut flushed = Vec::new();
                match first {
                    Recorded::Event(e) => batch.push(e),
                    Recorded::Flush(done) => flushed.push(done),
                }
                // the events of the next quarter second with it (all there are once the
                // channel closes, or at once when asked to flush)
                let until = tokio::time::Instant::now() + GATHER;
                while batch.len() < BATCH && flushed.is_empty() {
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(Recorded::Event(e))) => batch.push(e),
                        Ok(Some(Recorded::Flush(done))) => flushed.push(done),
                        Ok(None) | Err(_) => break,
                    }
                }
                if !batch.is_empty() {
                    let log = writer_log.clone();
                    let events = std::mem::take(&mut batch);
                    let written = tokio::task::spawn_blocking(move || log.append(&events)).await;
                    if !matches!(written, Ok(Ok(()))) {
                        tracing::warn!("could not record search events");
                    }
                }
                for done in flushed {
                    let _ = done.send(());
                }
            }
        });
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let before =
                    crate::actors::ingest::now_ms().saturating_sub(retention.as_millis() as u64);
                let log = log.clone();
                let _ = tokio::task::spawn_blocking(move || log.expire(before, max_events)).await;
            }
        });
        Recorder {
            tx,
            dropped: Default::default(),
        }
    }

    /// Write the events queued so far (a node that stops calls it before flushing its store).
    pub async fn flush(&self) {
        let (done, written) = tokio::sync::oneshot::channel();
        if self.tx.send(Recorded::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }

    /// Queue an event; never waits (a full queue drops it).
    pub fn record(&self, event: SearchEvent) {
        if self.tx.try_send(Recorded::Event(event)).is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Latency of one kind of search.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    /// Counts per bucket, for merging (see [`BUCKETS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub histogram: Vec<u64>,
}

impl Latency {
    fn from_histogram(histogram: Vec<u64>, keep: bool) -> Latency {
        let count: u64 = histogram.iter().sum();
        let quantile = |q: f64| {
            if count == 0 {
                return 0.0;
            }
            let want = (q * count as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, n) in histogram.iter().enumerate() {
                seen += n;
                if seen >= want {
                    return (bucket_upper_ms(i) * 1000.0).round() / 1000.0;
                }
            }
            bucket_upper_ms(BUCKETS - 1)
        };
        Latency {
            count,
            p50: quantile(0.50),
            p95: quantile(0.95),
            p99: quantile(0.99),
            histogram: if keep { histogram } else { Vec::new() },
        }
    }
}

/// A query that found nothing, and how often.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmptyQuery {
    pub query: String,
    pub count: u64,
}

/// What the searches of a time range looked like.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub since: u64,
    pub until: u64,
    /// Nodes whose events are in it.
    pub nodes: Vec<u64>,
    /// Members that could not be asked.
    #[serde(default)]
    pub missing_nodes: Vec<u64>,
    pub searches: u64,
    pub searches_per_second: f64,
    /// Successful searches only, in ms (percentiles are bucket bounds, within 10%).
    pub latency_ms: HashMap<String, Latency>,
    pub client_errors: u64,
    pub server_errors: u64,
    /// Searches whose request was gone before the answer (timed out, or the client left).
    pub cancelled: u64,
    pub client_error_rate: f64,
    pub server_error_rate: f64,
    pub empty_results: u64,
    pub empty_queries: Vec<EmptyQuery>,
    /// The events of the range were more than one summary reads: it covers the first ones.
    #[serde(default)]
    pub truncated: bool,
    /// Each node's share, in a summary merged across the cluster's members.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_node: BTreeMap<u64, NodeLoad>,
    /// The range cut in intervals of `step_ms`, oldest first (asked for with `step`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<Interval>,
}

/// The searches of one interval of a series.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Its start, ms since the epoch (it ends where the next one starts, or at `until`).
    pub start: u64,
    pub searches: u64,
    pub searches_per_second: f64,
    /// Of its successful searches, baseline and rerank together (0 without any).
    pub p95_ms: f64,
    pub errors: u64,
    /// Its latency histogram's non-empty buckets as `[bucket, count]`, for merging.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<[u64; 2]>,
}

impl Interval {
    fn finish(&mut self, end: u64, histogram: Option<Vec<u64>>, keep: bool) {
        let secs = (end.saturating_sub(self.start) as f64 / 1000.0).max(0.001);
        self.searches_per_second = self.searches as f64 / secs;
        if let Some(h) = histogram {
            if keep {
                self.buckets = h
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(|(i, n)| [i as u64, *n])
                    .collect();
            }
            self.p95_ms = Latency::from_histogram(h, false).p95;
        }
    }
}

/// A series being added up: each interval's counts, and its latency histogram once it has a
/// successful search.
type Tally = Vec<(Interval, Option<Vec<u64>>)>;

/// The empty intervals of `since`..`until` cut every `step` ms (the last may be shorter).
fn empty_series(since: u64, until: u64, step: u64) -> Tally {
    (since..until)
        .step_by(step.max(1) as usize)
        .map(|start| {
            (
                Interval {
                    start,
                    ..Interval::default()
                },
                None,
            )
        })
        .collect()
}

/// The intervals with their rates and p95 (`keep`: and their histograms, for merging).
fn finish_series(tally: Tally, until: u64, step: u64, keep: bool) -> Vec<Interval> {
    tally
        .into_iter()
        .map(|(mut interval, h)| {
            let end = interval.start.saturating_add(step).min(until);
            interval.finish(end, h, keep);
            interval
        })
        .collect()
}

/// One node's searches in a merged summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeLoad {
    pub searches: u64,
    pub searches_per_second: f64,
    /// Of its successful searches, baseline and rerank together.
    pub p95_ms: f64,
    pub errors: u64,
    /// Its share of each interval of the series, when one was asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<Interval>,
}

/// Adds events up one at a time into a [`Summary`] (nothing of them is kept but counts).
pub struct Summarizer {
    summary: Summary,
    collection: Option<String>,
    hist: HashMap<&'static str, Vec<u64>>,
    empty: HashMap<String, u64>,
    for_merging: bool,
    /// Per interval of the series (if asked for): counts, and a histogram once it has any.
    series: Tally,
}

impl Summarizer {
    /// The searches of `since`..`until` on node `node` (of `collection` only, if given).
    /// `for_merging` keeps the histograms and more empty queries, for [`merge`].
    pub fn new(
        node: u64,
        since: u64,
        until: u64,
        collection: Option<String>,
        for_merging: bool,
    ) -> Summarizer {
        Summarizer {
            summary: Summary {
                since,
                until,
                nodes: vec![node],
                ..Summary::default()
            },
            collection,
            hist: HashMap::new(),
            empty: HashMap::new(),
            for_merging,
            series: Vec::new(),
        }
    }

    /// Also cut the range in intervals of `step_ms` (at most [`MAX_INTERVALS`] of them, which the
    /// caller checks).
    pub fn with_step(mut self, step_ms: u64) -> Summarizer {
        let (since, until) = (self.summary.since, self.summary.until);
        self.summary.step_ms = Some(step_ms);
        self.series = empty_series(since, until, step_ms);
        self
    }

    pub fn add(&mut self, e: &SearchEvent) {
        if self.collection.as_ref().is_some_and(|c| *c != e.collection) {
            return;
        }
        let s = &mut self.summary;
        s.searches += 1;
        let bucket = bucket_of(e.latency_us as f64 / 1000.0);
        if let Some(step) = s.step_ms {
            let at = e.at_ms.saturating_sub(s.since) / step.max(1);
            if let Some((interval, h)) = self.series.get_mut(at as usize) {
                interval.searches += 1;
                match e.status {
                    200..=299 => h.get_or_insert_with(|| vec![0; BUCKETS])[bucket] += 1,
                    499 => {}
                    _ => interval.errors += 1,
                }
            }
        }
        match e.status {
            200..=299 => {
                let mode = if e.rerank { "rerank" } else { "baseline" };
                self.hist.entry(mode).or_insert_with(|| vec![0; BUCKETS])[bucket] += 1;
                if e.hits == 0 {
                    s.empty_results += 1;
                    if let Some(q) = &e.empty_query {
                        // the distinct queries kept are bounded too
                        if self.empty.len() < 10 * MAX_EMPTY_CARRIED || self.empty.contains_key(q) {
                            *self.empty.entry(q.clone()).or_default() += 1;
                        }
                    }
                }
            }
            499 => s.cancelled += 1,
            400..=498 => s.client_errors += 1,
            _ => s.server_errors += 1,
        }
    }

    /// `truncated`: the range held more events than were read.
    pub fn finish(mut self, truncated: bool) -> Summary {
        let mut s = self.summary;
        s.truncated = truncated;
        for mode in ["baseline", "rerank"] {
            let h = self.hist.remove(mode).unwrap_or_else(|| vec![0; BUCKETS]);
            s.latency_ms.insert(
                mode.to_string(),
                Latency::from_histogram(h, self.for_merging),
            );
        }
        let n = if self.for_merging {
            MAX_EMPTY_CARRIED
        } else {
            TOP_EMPTY
        };
        s.empty_queries = top_empty(self.empty, n);
        s.series = finish_series(
            self.series,
            s.until,
            s.step_ms.unwrap_or(1),
            self.for_merging,
        );
        finish(&mut s);
        s
    }
}

/// Summarise `events` (of `since`..`until`) of node `node` (see [`Summarizer`]).
pub fn summarize(
    node: u64,
    events: &[SearchEvent],
    since: u64,
    until: u64,
    collection: Option<&str>,
    for_merging: bool,
) -> Summary {
    let mut s = Summarizer::new(
        node,
        since,
        until,
        collection.map(str::to_owned),
        for_merging,
    );
    for e in events {
        s.add(e);
    }
    s.finish(false)
}

fn top_empty(counts: HashMap<String, u64>, n: usize) -> Vec<EmptyQuery> {
    let mut v: Vec<EmptyQuery> = counts
        .into_iter()
        .map(|(query, count)| EmptyQuery { query, count })
        .collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.query.cmp(&b.query)));
    v.truncate(n);
    v
}

fn finish(s: &mut Summary) {
    let secs = (s.until.saturating_sub(s.since) as f64 / 1000.0).max(0.001);
    s.searches_per_second = s.searches as f64 / secs;
    let n = s.searches.max(1) as f64;
    s.client_error_rate = s.client_errors as f64 / n;
    s.server_error_rate = s.server_errors as f64 / n;
}

/// Add node summaries (made `for_merging`) into one; with `step_ms`, their series too (each
/// node's in its `by_node` entry, all of them added in the answer's).
pub fn merge(
    parts: Vec<Summary>,
    since: u64,
    until: u64,
    step_ms: Option<u64>,
    missing: Vec<u64>,
) -> Summary {
    let mut out = Summary {
        since,
        until,
        missing_nodes: missing,
        step_ms,
        ..Summary::default()
    };
    // the cluster's series: counts and histograms added interval by interval
    let mut series = step_ms.map_or_else(Vec::new, |step| empty_series(since, until, step));
    let mut hist: HashMap<String, Vec<u64>> = HashMap::new();
    let mut empty: HashMap<String, u64> = HashMap::new();
    let secs = (until.saturating_sub(since) as f64 / 1000.0).max(0.001);
    for p in parts {
        let mut all = vec![0; BUCKETS];
        for l in p.latency_ms.values() {
            for (i, n) in l.histogram.iter().enumerate().take(BUCKETS) {
                all[i] += n;
            }
        }
        // a part's intervals are the answer's when it was asked the same range and step
        let same_cut = step_ms.is_some()
            && p.step_ms == step_ms
            && p.since == since
            && p.series.len() == series.len();
        let mut own_series = Vec::new();
        if same_cut {
            for (interval, (sum, h)) in p.series.iter().zip(series.iter_mut()) {
                sum.searches += interval.searches;
                sum.errors += interval.errors;
                if !interval.buckets.is_empty() {
                    let h = h.get_or_insert_with(|| vec![0; BUCKETS]);
                    for [i, n] in &interval.buckets {
                        if let Some(slot) = h.get_mut(*i as usize) {
                            *slot += n;
                        }
                    }
                }
                own_series.push(Interval {
                    buckets: Vec::new(),
                    ..interval.clone()
                });
            }
        }
        let load = NodeLoad {
            searches: p.searches,
            searches_per_second: p.searches as f64 / secs,
            p95_ms: Latency::from_histogram(all, false).p95,
            errors: p.client_errors + p.server_errors,
            series: own_series,
        };
        for id in &p.nodes {
            out.by_node.insert(*id, load.clone());
        }
        out.nodes.extend(p.nodes);
        out.searches += p.searches;
        out.client_errors += p.client_errors;
        out.server_errors += p.server_errors;
        out.cancelled += p.cancelled;
        out.empty_results += p.empty_results;
        out.truncated |= p.truncated;
        for (mode, l) in p.latency_ms {
            let h = hist.entry(mode).or_insert_with(|| vec![0; BUCKETS]);
            for (i, n) in l.histogram.iter().enumerate().take(BUCKETS) {
                h[i] += n;
            }
        }
        for q in p.empty_queries {
            *empty.entry(q.query).or_default() += q.count;
        }
    }
    out.nodes.sort_unstable();
    for mode in ["baseline", "rerank"] {
        let h = hist.remove(mode).unwrap_or_else(|| vec![0; BUCKETS]);
        out.latency_ms
            .insert(mode.to_string(), Latency::from_histogram(h, false));
    }
    out.empty_queries = top_empty(empty, TOP_EMPTY);
    out.series = finish_series(series, until, step_ms.unwrap_or(1), false);
    finish(&mut out);
    out
}

/// A length in a query string: `500ms`, `10s`, `5m`, `1h`, `1d`, or a number of ms.
pub fn parse_duration_ms(raw: &str) -> Option<u64> {
    let raw = raw.trim();
    if let Ok(ms) = raw.parse::<u64>() {
        return Some(ms);
    }
    match raw.strip_suffix("ms") {
        Some(n) => n.parse().ok(),
        None => length_ms(raw),
    }
}

/// `90s`, `15m`, `2h` or `7d` in ms.
fn length_ms(raw: &str) -> Option<u64> {
    let unit = raw.chars().last()?;
    let n: u64 = raw[..raw.len() - unit.len_utf8()].parse().ok()?;
    match unit {
        's' => n.checked_mul(1000),
        'm' => n.checked_mul(60_000),
        'h' => n.checked_mul(3_600_000),
        'd' => n.checked_mul(86_400_000),
        _ => None,
    }
}

/// A time in a query string: ms since the epoch, an RFC 3339-free duration back from `now_ms`
/// (`90s`, `15m`, `2h`, `7d`), or `now`.
pub fn parse_time(raw: &str, now_ms: u64) -> Option<u64> {
    let raw = raw.trim();
    if raw == "now" {
        return Some(now_ms);
    }
    if let Ok(ms) = raw.parse::<u64>() {
        return Some(ms);
    }
    Some(now_ms.saturating_sub(length_ms(raw)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(latency_ms: u64, status: u16, rerank: bool, hits: u32, q: Option<&str>) -> SearchEvent {
        SearchEvent {
            at_ms: 1_000,
            user: "u".into(),
            collection: "c".into(),
            rerank,
            latency_us: latency_ms * 1000,
            hits,
            status,
            empty_query: q.map(str::to_owned),
        }
    }

    #[tokio::test]
    async fn events_are_written_a_quarter_second_later_or_at_once_when_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let store = shoal_storage::Store::open(dir.path(), Default::default()).unwrap();
        let log = Arc::new(EventLog::open(&store).unwrap());
        let recorder = Recorder::start(log.clone(), Duration::from_secs(3600), 1_000);
        let stored = || log.between(0, u64::MAX, 100).unwrap().len();
        let t = std::time::Instant::now();
        recorder.record(ev(3, 200, false, 5, None));
        recorder.record(ev(4, 200, false, 5, None));
        // gathered, not written one by one
        tokio::time::sleep(Duration::from_millis(20)).await;
        if t.elapsed() < GATHER {
            assert_eq!(stored(), 0);
        }
        recorder.flush().await;
        assert_eq!(stored(), 2);
        // and without a flush, within the gathering window
        recorder.record(ev(5, 200, false, 5, None));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while stored() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "the third event was never written"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn summaries_count_and_merge_like_one_node() {
        // 100 baseline searches of 1..=100 ms, 10 reranked of 50 ms, errors, empty results
        let mut a: Vec<SearchEvent> = (1..=100).map(|ms| ev(ms, 200, false, 5, None)).collect();
        a.extend((0..10).map(|_| ev(50, 200, true, 5, None)));
        a.push(ev(3, 400, false, 0, None));
        a.push(ev(3, 503, false, 0, None));
        a.push(ev(3, 499, false, 0, None));
        a.push(ev(2, 200, false, 0, Some("zebra stripes")));
        a.push(ev(2, 200, false, 0, Some("zebra stripes")));
        a.push(ev(2, 200, false, 0, Some("unicorn")));
        let one = summarize(1, &a, 0, 10_000, None, false);
        assert_eq!(one.searches, 116);
        assert_eq!(
            (one.client_errors, one.server_errors, one.cancelled),
            (1, 1, 1)
        );
        assert_eq!(one.empty_results, 3);
        assert_eq!(
            one.empty_queries[0],
            EmptyQuery {
                query: "zebra stripes".into(),
                count: 2
            }
        );
        assert!((one.searches_per_second - 11.6).abs() < 1e-9);
        let base = &one.latency_ms["baseline"];
        assert_eq!(base.count, 103);
        // p95 of 1..=100 ms (and three of 2 ms) is about 95 ms: within a bucket (10%)
        assert!(base.p95 >= 92.0 && base.p95 <= 105.0, "{base:?}");
        assert!(one.latency_ms["rerank"].p50 >= 50.0 && one.latency_ms["rerank"].p50 <= 55.0);
        // the same events split over two nodes merge into the same answer
        let (x, y) = a.split_at(57);
        let merged = merge(
            vec![
                summarize(1, x, 0, 10_000, None, true),
                summarize(2, y, 0, 10_000, None, true),
            ],
            0,
            10_000,
            None,
            vec![3],
        );
        assert_eq!(merged.nodes, [1, 2]);
        assert_eq!(merged.missing_nodes, [3]);
        assert_eq!(merged.latency_ms, one.latency_ms);
        assert_eq!(merged.empty_queries, one.empty_queries);
        assert_eq!(merged.searches, one.searches);
        // each node's share: its searches, their rate over the range and their p95
        assert_eq!(merged.by_node.len(), 2);
        assert_eq!(merged.by_node[&1].searches, 57);
        assert_eq!(
            merged.by_node[&1].searches + merged.by_node[&2].searches,
            one.searches
        );
        assert!(
            (merged.by_node[&2].searches_per_second - (one.searches - 57) as f64 / 10.0).abs()
                < 1e-9
        );
        assert!(merged.by_node[&1].p95_ms > 0.0);
        // by collection
        assert_eq!(
            summarize(1, &a, 0, 10_000, Some("other"), false).searches,
            0
        );
    }

    #[test]
    fn a_series_cuts_the_range_in_intervals_per_node_and_for_the_cluster() {
        // node 1: in 0..10 s, 10 searches of 2 ms; in 20..30 s, 5 of 40 ms and one error
        // node 2: in 0..10 s, 30 searches of 8 ms; in 30..35 s (the last, short interval), 2
        let at = |t: u64, ms: u64, status: u16| SearchEvent {
            at_ms: t,
            ..ev(ms, status, false, 5, None)
        };
        let mut one: Vec<SearchEvent> = (0..10).map(|i| at(i * 900, 2, 200)).collect();
        one.extend((0..5).map(|i| at(20_000 + i * 100, 40, 200)));
        one.push(at(29_999, 1, 503));
        let mut two: Vec<SearchEvent> = (0..30).map(|i| at(i * 300, 8, 200)).collect();
        two.extend([at(30_000, 8, 200), at(34_999, 8, 200)]);
        let part = |node, events: &[SearchEvent]| {
            let mut s = Summarizer::new(node, 0, 35_000, None, true).with_step(10_000);
            for e in events {
                s.add(e);
            }
            s.finish(false)
        };
        let (p1, p2) = (part(1, &one), part(2, &two));
        let starts: Vec<u64> = p1.series.iter().map(|i| i.start).collect();
        assert_eq!(starts, [0, 10_000, 20_000, 30_000]);
        let counts = |s: &[Interval]| s.iter().map(|i| i.searches).collect::<Vec<_>>();
        assert_eq!(counts(&p1.series), [10, 0, 6, 0]);
        assert_eq!(p1.series[2].errors, 1);
        assert!((p1.series[0].searches_per_second - 1.0).abs() < 1e-9);
        assert!(p1.series[0].p95_ms >= 2.0 && p1.series[0].p95_ms <= 2.2);
        assert!(p1.series[2].p95_ms >= 40.0 && p1.series[2].p95_ms <= 44.0);
        assert_eq!(p1.series[1].p95_ms, 0.0);
        // the last interval is 5 s long: 2 searches in it are 0.4 a second
        assert!((p2.series[3].searches_per_second - 0.4).abs() < 1e-9);

        let merged = merge(vec![p1, p2], 0, 35_000, Some(10_000), vec![]);
        assert_eq!(merged.step_ms, Some(10_000));
        assert_eq!(counts(&merged.series), [40, 0, 6, 2]);
        // 10 of 2 ms and 30 of 8 ms: the cluster's p95 in the first interval is node 2's
        assert!(merged.series[0].p95_ms >= 8.0 && merged.series[0].p95_ms <= 8.8);
        assert_eq!(counts(&merged.by_node[&1].series), [10, 0, 6, 0]);
        assert_eq!(counts(&merged.by_node[&2].series), [30, 0, 0, 2]);
        assert!(merged.by_node[&1].series[0].p95_ms <= 2.2);
        // histograms travel between nodes but are not in the merged answer
        assert!(merged.series.iter().all(|i| i.buckets.is_empty()));
        assert!(merged.by_node[&2]
            .series
            .iter()
            .all(|i| i.buckets.is_empty()));
        // a summary without a step has no series
        assert!(summarize(1, &one, 0, 35_000, None, true).series.is_empty());
    }

    #[test]
    fn lengths_in_query_strings() {
        assert_eq!(parse_duration_ms("10s"), Some(10_000));
        assert_eq!(parse_duration_ms("250ms"), Some(250));
        assert_eq!(parse_duration_ms("5m"), Some(300_000));
        assert_eq!(parse_duration_ms("1500"), Some(1_500));
        assert_eq!(parse_duration_ms("ten"), None);
        assert_eq!(parse_duration_ms("5x"), None);
    }

    #[test]
    fn times_in_query_strings() {
        assert_eq!(parse_time("now", 5_000), Some(5_000));
        assert_eq!(parse_time("1234", 5_000), Some(1_234));
        assert_eq!(parse_time("2s", 5_000), Some(3_000));
        assert_eq!(parse_time("1h", 5_000), Some(0));
        assert_eq!(parse_time("7d", 10 * 86_400_000), Some(3 * 86_400_000));
        assert_eq!(parse_time("soon", 5_000), None);
        assert_eq!(parse_time("", 5_000), None);
        assert_eq!(parse_time("5é", 5_000), None);
        assert_eq!(parse_time("é", 5_000), None);
        assert_eq!(parse_time("99999999999999999999d", 5_000), None);
    }
}
