//! The clients: threads that send a seeded mix of operations to random nodes and record each
//! one with its outcome.
//!
//! Each client owns its documents (ids `c{client}-{n}`) and writes them one operation at a time,
//! so the order of one document's writes is the order its client sent them: the checker can
//! tell what each document must hold. A deleted id is never written again. Reads ask about the
//! client's own documents (deleted ones included), with `local`, `strong` or `min_index`
//! consistency (the last index the client saw: read-your-writes on any node).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::blocking::Client;
use serde_json::{json, Value};

use crate::cluster::SECRET;
use crate::history::{Hit, Op, OpKind, Outcome, COLLECTION};

/// Words the documents are made of (short texts: embedding stays cheap).
const WORDS: &[&str] = &[
    "river", "harbour", "granite", "lantern", "meadow", "orbit", "pepper", "quartz", "saddle",
    "tundra", "violet", "walnut", "ember", "falcon", "glacier", "hazel", "island", "jasmine",
    "kettle", "lagoon", "marble", "nectar", "oyster", "prairie", "ripple", "summit", "thistle",
    "umber", "velvet", "willow",
];

/// Where the clients send their requests: each node's base URL (fixed for the campaign).
pub struct Targets {
    pub bases: Vec<String>,
}

pub struct Workload {
    pub history: Arc<Mutex<Vec<Op>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workload {
    /// Start `clients` clients, seeded from `seed`, timing operations from `t0`.
    pub fn start(targets: Targets, clients: usize, seed: u64, t0: Instant) -> Workload {
        let history = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let bases = Arc::new(targets.bases);
        // the clients, then one prober per node
        let nodes = bases.len();
        let threads = (0..clients + nodes)
            .map(|c| {
                let probe = c.checked_sub(clients);
                let mut client = ClientState {
                    id: c,
                    probe,
                    rng: StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(c as u64)),
                    http: Client::builder()
                        .timeout(if probe.is_some() {
                            PROBE_TIMEOUT
                        } else {
                            Duration::from_secs(3)
                        })
                        .connect_timeout(Duration::from_secs(1))
                        .no_proxy()
                        .build()
                        .expect("http client"),
                    bases: bases.clone(),
                    t0,
                    history: history.clone(),
                    next_doc: 0,
                    live: Vec::new(),
                    written: Vec::new(),
                    last_index: 0,
                    scratch: None,
                    scratch_n: 0,
                    avoid_until: vec![None; bases.len()],
                };
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        client.step();
                    }
                })
            })
            .collect();
        Workload {
            history,
            stop,
            threads,
        }
    }

    /// Stop the clients (each finishes its operation) and return the history, in order of start.
    pub fn finish(self) -> Vec<Op> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let mut h = std::mem::take(&mut *self.history.lock());
        h.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
        h
    }
}

struct ClientState {
    id: usize,
    /// A prober of this node: one small write and one strong read at a time, every
    /// [`PROBE_EVERY`], to time how long each node cannot write or read after a fault.
    probe: Option<usize>,
    rng: StdRng,
    http: Client,
    bases: Arc<Vec<String>>,
    t0: Instant,
    history: Arc<Mutex<Vec<Op>>>,
    next_doc: u64,
    /// Ids the client may still write (not deleted, not definitely failed only).
    live: Vec<String>,
    /// Every id it ever sent.
    written: Vec<String>,
    /// The highest log index this client has seen (writes and reads).
    last_index: u64,
    /// A scratch collection it created (dropped next time).
    scratch: Option<String>,
    scratch_n: u64,
    /// Nodes that just failed to answer, left alone for a moment (as a load balancer's passive
    /// health check does), while another node can be asked.
    avoid_until: Vec<Option<Instant>>,
}

/// How often a prober asks its node, and how long it waits for an answer.
pub const PROBE_EVERY: Duration = Duration::from_millis(200);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a client leaves a node alone after it failed to answer.
const AVOID: Duration = Duration::from_secs(2);

/// What one HTTP request gave.
enum Answer {
    Ok(Value),
    Fail(u16, String),
    Unknown(String),
}

impl ClientState {
    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1000.0
    }

    fn text(&mut self, id: &str) -> String {
        let a = WORDS[self.rng.gen_range(0..WORDS.len())];
        let b = WORDS[self.rng.gen_range(0..WORDS.len())];
        let n: u32 = self.rng.gen();
        format!("{id} tells of the {a} by the {b}, mark {n}.")
    }

    fn pick_node(&mut self) -> usize {
        let now = Instant::now();
        let open: Vec<usize> = (0..self.bases.len())
            .filter(|i| self.avoid_until[*i].is_none_or(|t| t <= now))
            .collect();
        if open.is_empty() {
            self.rng.gen_range(0..self.bases.len())
        } else {
            open[self.rng.gen_range(0..open.len())]
        }
    }

    fn step(&mut self) {
        if let Some(node) = self.probe {
            let started = Instant::now();
            if self.written.is_empty() || self.rng.gen_bool(0.5) {
                self.ingest(node, 1);
            } else {
                self.search_with(node, "strong", None);
            }
            std::thread::sleep(PROBE_EVERY.saturating_sub(started.elapsed()));
            return;
        }
        let node = self.pick_node();
        let roll = self.rng.gen_range(0..100);
        match roll {
            0..=34 => self.ingest_new(node),
            35..=44 if !self.live.is_empty() => self.replace(node),
            45..=54 if !self.live.is_empty() => self.delete(node),
            55..=59 => self.scratch(node),
            _ => self.search(node),
        }
    }

    fn request(&mut self, node: usize, method: &str, path: &str, body: Option<Value>) -> Answer {
        let a = self.send_request(node, method, path, body);
        match &a {
            Answer::Unknown(_) | Answer::Fail(0, _) => {
                self.avoid_until[node] = Some(Instant::now() + AVOID)
            }
            _ => self.avoid_until[node] = None,
        }
        a
    }

    fn send_request(&self, node: usize, method: &str, path: &str, body: Option<Value>) -> Answer {
        let url = format!("{}{path}", self.bases[node]);
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .http
            .request(m, url)
            .header("x-shoal-cluster-secret", SECRET);
        if let Some(b) = body {
            req = req.json(&b);
        }
        match req.send() {
            Ok(r) => {
                let status = r.status().as_u16();
                let text = match r.text() {
                    Ok(t) => t,
                    Err(e) => return Answer::Unknown(format!("{status}, body lost: {e}")),
                };
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if status < 300 {
                    if body.is_null() {
                        return Answer::Unknown(format!(
                            "{status} with a body that is not JSON: {text}"
                        ));
                    }
                    Answer::Ok(body)
                } else if (400..500).contains(&status) || status == 503 {
                    // 4xx: refused. 503: the server says nothing was done (no leader, no
                    // quorum, not ready): taken at its word, so a write it did anyway shows
                    Answer::Fail(status, format!("{status} {text}"))
                } else {
                    Answer::Unknown(format!("{status} {text}"))
                }
            }
            // the connection was never made: the request did not reach a node
            Err(e) if e.is_connect() => Answer::Fail(0, e.to_string()),
            Err(e) => Answer::Unknown(e.to_string()),
        }
    }

    fn record(&self, op: Op) {
        self.history.lock().push(op);
    }

    fn write(
        &mut self,
        node: usize,
        kind: OpKind,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (Outcome, Value) {
        let start = self.now();
        let answer = self.request(node, method, path, body);
        let end = self.now();
        let (outcome, body) = match answer {
            Answer::Ok(b) => {
                let index = b["index"]
                    .as_u64()
                    .or_else(|| b["log_index"].as_u64())
                    .unwrap_or(0);
                self.last_index = self.last_index.max(index);
                (Outcome::Ok { index }, b)
            }
            Answer::Fail(status, message) => (Outcome::Fail { status, message }, Value::Null),
            Answer::Unknown(message) => (Outcome::Unknown { message }, Value::Null),
        };
        self.record(Op {
            client: self.id,
            node,
            start_ms: start,
            end_ms: end,
            kind,
            outcome: outcome.clone(),
            hits: Vec::new(),
            stale: false,
        });
        (outcome, body)
    }

    fn ingest_new(&mut self, node: usize) {
        let n = self.rng.gen_range(1..=3);
        self.ingest(node, n)
    }

    fn ingest(&mut self, node: usize, n: usize) {
        let mut docs = Vec::new();
        for _ in 0..n {
            let id = format!("c{}-{}", self.id, self.next_doc);
            self.next_doc += 1;
            let text = self.text(&id);
            docs.push((id, text));
        }
        self.send_docs(node, docs);
    }

    fn replace(&mut self, node: usize) {
        let id = self.live[self.rng.gen_range(0..self.live.len())].clone();
        let text = self.text(&id);
        self.send_docs(node, vec![(id, text)]);
    }

    fn send_docs(&mut self, node: usize, docs: Vec<(String, String)>) {
        let body = json!({
            "documents": docs.iter().map(|(id, text)| json!({"id": id, "text": text})).collect::<Vec<_>>()
        });
        let ids: Vec<String> = docs.iter().map(|(id, _)| id.clone()).collect();
        let (outcome, answer) = self.write(
            node,
            OpKind::Ingest { docs },
            "POST",
            &format!("/api/v1/collections/{COLLECTION}/documents"),
            Some(body),
        );
        for id in &ids {
            if !self.written.contains(id) {
                self.written.push(id.clone());
            }
            // Written again only after an acknowledged write: a refused one left nothing to
            // write to, and one that timed out may still take effect later (the server goes on
            // proposing it), after any write sent now, so the id is retired.
            match outcome {
                Outcome::Ok { .. } => {
                    if !self.live.contains(id) {
                        self.live.push(id.clone());
                    }
                }
                Outcome::Fail { .. } => {}
                Outcome::Unknown { .. } => self.live.retain(|l| l != id),
            }
        }
        if let (Outcome::Ok { .. }, Some(job), None) =
            (&outcome, answer["job_id"].as_str(), self.probe)
        {
            self.follow_job(node, job.to_string(), ids);
        }
    }

    /// Wait (a few seconds at most) for an acknowledged ingest's job to read as done, and record
    /// the index it did at.
    fn follow_job(&mut self, node: usize, job: String, docs: Vec<String>) {
        let start = self.now();
        let deadline = Instant::now() + Duration::from_secs(4);
        while Instant::now() < deadline {
            match self.request(node, "GET", &format!("/api/v1/jobs/{job}"), None) {
                Answer::Ok(b) if b["state"] != "running" => {
                    // every document of it indexed (none replaced or deleted before)
                    let whole =
                        b["superseded"].as_u64() == Some(0) && b["failed"].as_u64() == Some(0);
                    if b["state"] == "completed" && whole {
                        let index = b["index"].as_u64().unwrap_or(0);
                        self.last_index = self.last_index.max(index);
                        self.record(Op {
                            client: self.id,
                            node,
                            start_ms: start,
                            end_ms: self.now(),
                            kind: OpKind::JobDone { job, docs },
                            outcome: Outcome::Ok { index },
                            hits: Vec::new(),
                            stale: false,
                        });
                    }
                    return;
                }
                Answer::Ok(_) => std::thread::sleep(Duration::from_millis(50)),
                _ => return,
            }
        }
    }

    fn delete(&mut self, node: usize) {
        let i = self.rng.gen_range(0..self.live.len());
        let id = self.live.swap_remove(i);
        self.write(
            node,
            OpKind::Delete { doc: id.clone() },
            "DELETE",
            &format!("/api/v1/collections/{COLLECTION}/documents/{id}"),
            None,
        );
    }

    fn scratch(&mut self, node: usize) {
        match self.scratch.take() {
            Some(name) => {
                self.write(
                    node,
                    OpKind::DropCollection { name: name.clone() },
                    "DELETE",
                    &format!("/api/v1/collections/{name}"),
                    None,
                );
            }
            None => {
                let name = format!("scratch-c{}-{}", self.id, self.scratch_n);
                self.scratch_n += 1;
                let (outcome, _) = self.write(
                    node,
                    OpKind::CreateCollection { name: name.clone() },
                    "PUT",
                    &format!("/api/v1/collections/{name}"),
                    Some(json!({})),
                );
                // dropped next time only if the create was acknowledged (one that timed out
                // may still happen after the drop)
                if matches!(outcome, Outcome::Ok { .. }) {
                    self.scratch = Some(name);
                }
            }
        }
    }

    fn search(&mut self, node: usize) {
        if self.written.is_empty() {
            return self.ingest_new(node);
        }
        let (consistency, min_index) = match self.rng.gen_range(0..3) {
            0 => ("local", None),
            1 => ("strong", None),
            _ => ("local", Some(self.last_index)),
        };
        self.search_with(node, consistency, min_index)
    }

    fn search_with(&mut self, node: usize, consistency: &str, min_index: Option<u64>) {
        let k = self.rng.gen_range(1..=6).min(self.written.len());
        let mut docs: Vec<String> = Vec::new();
        while docs.len() < k {
            let d = self.written[self.rng.gen_range(0..self.written.len())].clone();
            if !docs.contains(&d) {
                docs.push(d);
            }
        }
        let mut body = json!({
            "query": format!("{} tells of the river", docs[0]),
            "top_k": docs.len() * 4,
            "filter": {"document_id": docs},
            "consistency": consistency,
        });
        if let Some(m) = min_index {
            body["min_index"] = json!(m);
        }
        let start = self.now();
        let answer = self.request(
            node,
            "POST",
            &format!("/api/v1/collections/{COLLECTION}/search"),
            Some(body),
        );
        let end = self.now();
        let mut hits = Vec::new();
        let mut stale = false;
        let outcome = match answer {
            Answer::Ok(b) => {
                let index = b["applied_index"].as_u64().unwrap_or(0);
                stale = b["stale"].as_bool().unwrap_or(false);
                for h in b["hits"].as_array().cloned().unwrap_or_default() {
                    hits.push(Hit {
                        doc: h["document_id"].as_str().unwrap_or_default().to_string(),
                        chunk: h["chunk_index"].as_u64().unwrap_or(0) as u32,
                        text: h["text"].as_str().unwrap_or_default().to_string(),
                    });
                }
                self.last_index = self.last_index.max(index);
                Outcome::Ok { index }
            }
            // a read changes nothing: refused or lost is the same to the checker
            Answer::Fail(status, message) => Outcome::Fail { status, message },
            Answer::Unknown(message) => Outcome::Unknown { message },
        };
        self.record(Op {
            client: self.id,
            node,
            start_ms: start,
            end_ms: end,
            kind: OpKind::Search {
                consistency: consistency.into(),
                min_index,
                docs,
            },
            outcome,
            hits,
            stale,
        });
    }
}
