//! Harness for end-to-end tests: start the real `shoal` binary on a free port with the real
//! model and its own data folder, talk to it over HTTP, kill it with SIGKILL, start it again.
//!
//! The binary is `$SHOAL_BIN`, or `target/debug/shoal` of this workspace (build it first:
//! `cargo build --bin shoal`). The model is `$SHOAL_MODEL_DIR`, or `models/all-MiniLM-L6-v2`
//! (fetch it with `scripts/fetch-model.sh`).

pub mod bench;
pub mod browser;
pub mod cluster;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::{json, Value};

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub fn shoal_bin() -> PathBuf {
    let bin = std::env::var_os("SHOAL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug/shoal"));
    assert!(
        bin.is_file(),
        "shoal binary not found at {}: run `cargo build --bin shoal` (or set SHOAL_BIN)",
        bin.display()
    );
    bin
}

pub fn model_dir() -> PathBuf {
    let dir = std::env::var_os("SHOAL_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("models/all-MiniLM-L6-v2"));
    assert!(
        dir.join("model.safetensors").is_file(),
        "model not found at {}: run scripts/fetch-model.sh",
        dir.display()
    );
    dir
}

/// The admin credential the harness starts nodes with (`auth.admin_key`), unless a test starts
/// one with auth off or its own key. Every request of [`Node`]'s helpers carries it.
pub const ADMIN_KEY: &str = "shoal-test-admin-key-0123456789";

/// An HTTP client that sends [`ADMIN_KEY`] with every request.
pub fn admin_client(timeout: Duration) -> Client {
    client_with_key(Some(ADMIN_KEY), timeout, true)
}

/// An HTTP client that sends `key` as its bearer credential (none: no credential); `pooled`:
/// keeps connections.
fn client_with_key(key: Option<&str>, timeout: Duration, pooled: bool) -> Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = key {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {key}").parse().expect("header value"),
        );
    }
    let mut b = Client::builder().timeout(timeout).default_headers(headers);
    if !pooled {
        b = b.pool_max_idle_per_host(0);
    }
    b.build().expect("http client")
}

/// A running shoal process with its own data folder.
pub struct Node {
    child: Option<Child>,
    pub base: String,
    /// The address it listens on: port 0 at the first start, then the port it got, so that a
    /// restarted node keeps its address (other nodes of a cluster know it by it).
    listen: String,
    pub data: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
    http: Client,
    /// What the process printed on standard output (every start).
    stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _tmp: Option<tempfile::TempDir>,
}

/// Build the seeded test cross-encoder (MiniLM + a fixed head) in `out` with the shoal binary.
pub fn make_test_reranker(out: &Path) {
    let status = Command::new(shoal_bin())
        .arg("make-test-reranker")
        .arg("--from")
        .arg(model_dir())
        .arg("--out")
        .arg(out)
        .status()
        .expect("run shoal make-test-reranker");
    assert!(status.success(), "shoal make-test-reranker failed");
}

/// An HTTP answer: status and JSON body (Null when the body is not JSON).
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
    /// The `x-request-id` header, if the answer carried one.
    pub request_id: Option<String>,
    /// The `retry-after` header, in seconds.
    pub retry_after: Option<u64>,
}

impl Node {
    /// Start a node in a fresh temporary data folder.
    pub fn start(env: &[(&str, &str)], args: &[&str]) -> Node {
        let mut node = Node::prepare(env, args);
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        self.spawn_unready();
        self.wait_ready(Duration::from_secs(120));
    }

    /// Start the process without waiting for it to be ready (a cluster member that waits to
    /// be added, for example); returns once it listens. SHOAL_TEST_LOG sets the node's RUST_LOG
    /// (for example `warn,shoal_node::service=debug` logs every search's stage timings).
    pub fn spawn_unready(&mut self) {
        let mut cmd = self.command();
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start shoal");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let lines = self.stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("shoal listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
                lines.lock().expect("stdout lines").push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("shoal did not report its address within 60 s");
        self.base = format!("http://{addr}");
        self.listen = addr;
        self.child = Some(child);
    }

    /// A node that is not started yet (see [`Node::start_again`] and [`Node::spawn_unready`]).
    pub fn prepare(env: &[(&str, &str)], args: &[&str]) -> Node {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data = tmp.path().join("data");
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let auth_set = env
            .iter()
            .any(|(k, _)| k == "SHOAL_AUTH__ADMIN_KEY" || k == "SHOAL_AUTH__ENABLED")
            || args.contains(&"--insecure-no-auth");
        if !auth_set {
            env.push(("SHOAL_AUTH__ADMIN_KEY".into(), ADMIN_KEY.into()));
        }
        let mut node = Node {
            child: None,
            base: String::new(),
            listen: "127.0.0.1:0".into(),
            data,
            env,
            args: args.iter().map(|s| s.to_string()).collect(),
            http: Client::new(),
            stdout: Default::default(),
            _tmp: Some(tmp),
        };
        node.http = node.client(true);
        node
    }

    /// The lines the node printed on standard output so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().expect("stdout lines").clone()
    }

    /// The bearer credential the harness sends: the node's admin key, if it has one.
    pub fn admin_key(&self) -> Option<String> {
        self.env
            .iter()
            .find(|(k, _)| k == "SHOAL_AUTH__ADMIN_KEY")
            .map(|(_, v)| v.clone())
    }

    /// An HTTP client that sends the node's admin key with every request (`pooled`: keeps
    /// connections).
    pub fn client(&self, pooled: bool) -> Client {
        client_with_key(
            self.admin_key().as_deref(),
            Duration::from_secs(120),
            pooled,
        )
    }

    /// Whether the process is running (not stopped or killed by the test).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Listen (and be reached) at another address from the next start on (`127.0.0.1:0`: a new
    /// free port).
    pub fn set_listen(&mut self, addr: &str) {
        self.listen = addr.to_string();
    }

    /// Add command-line arguments for the next start.
    pub fn add_args(&mut self, args: &[&str]) {
        self.args.extend(args.iter().map(|s| s.to_string()));
    }

    /// Remove every argument `name` (and the value after it, when `with_value`) for the next start.
    pub fn remove_arg(&mut self, name: &str, with_value: bool) {
        let mut out = Vec::new();
        let mut skip = false;
        for a in std::mem::take(&mut self.args) {
            if skip {
                skip = false;
                continue;
            }
            if a == name {
                skip = with_value;
                continue;
            }
            out.push(a);
        }
        self.args = out;
    }

    pub fn wait_ready(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            if let Ok(r) = self.http.get(format!("{}/api/ready", self.base)).send() {
                if r.status().as_u16() == 200 {
                    return;
                }
            }
            assert!(start.elapsed() < limit, "node not ready after {limit:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL, no chance to flush or dump anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (at most 60 s) for the process to exit; returns whether it exited with 0.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(sent, "could not send SIGTERM");
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Start again on the same data folder and port.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Start again on the same data folder with extra environment variables.
    pub fn restart_with(&mut self, env: &[(&str, &str)]) {
        self.kill9();
        for (k, v) in env {
            self.env.retain(|(key, _)| key != k);
            self.env.push((k.to_string(), v.to_string()));
        }
        self.http = self.client(true);
        self.spawn();
    }

    /// The command that starts this node (for tests that watch a start fail).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(shoal_bin());
        cmd.arg("serve")
            .arg("--listen")
            .arg(&self.listen)
            .arg("--data-dir")
            .arg(&self.data);
        if !self.args.iter().any(|a| a == "--model") {
            cmd.arg("--model").arg(model_dir());
        }
        cmd.args(&self.args).env(
            "RUST_LOG",
            std::env::var("SHOAL_TEST_LOG")
                .unwrap_or("warn,shoal_node=info,shoal_cluster=info,openraft=off".into()),
        );
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Stop the process (SIGKILL) without starting it again.
    pub fn stop(&mut self) {
        self.kill9();
    }

    /// Start the process again after [`Node::stop`].
    pub fn start_again(&mut self) {
        self.spawn();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Resp {
        let url = format!("{}{path}", self.base);
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(m, url);
        // A cluster member's admin routes want the secret; the harness knows it.
        if let Some((_, secret)) = self.env.iter().find(|(k, _)| k == "SHOAL_CLUSTER__SECRET") {
            req = req.header("x-shoal-cluster-secret", secret.as_str());
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        to_resp(req.send().expect("request"))
    }

    /// A client whose connections are used for one request each. The raw and chunked helpers
    /// send bodies that the server may refuse before reading them (a 413 or 429 from the
    /// declared length or the queue's room); it then closes the connection, and a pooled client
    /// could send the next request on that connection as it closes (the request then fails with
    /// a send error instead of getting its answer).
    fn unpooled(&self) -> Client {
        self.client(false)
    }

    pub fn raw(&self, method: &str, path: &str, body: &str) -> Resp {
        let url = format!("{}{path}", self.base);
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        to_resp(
            self.unpooled()
                .request(m, url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .expect("request"),
        )
    }

    /// POST `body` without a Content-Length (chunked transfer encoding).
    pub fn post_chunked(&self, path: &str, body: &str) -> Resp {
        self.try_post_chunked(path, body).expect("request")
    }

    /// [`Node::post_chunked`], where the server may stop reading and close the connection before
    /// the client has sent the whole body (an error then, not an answer).
    pub fn try_post_chunked(&self, path: &str, body: &str) -> Result<Resp, reqwest::Error> {
        let url = format!("{}{path}", self.base);
        let reader = std::io::Cursor::new(body.as_bytes().to_vec());
        self.unpooled()
            .post(url)
            .header("content-type", "application/json")
            .body(reqwest::blocking::Body::new(reader))
            .send()
            .map(to_resp)
    }

    pub fn get(&self, path: &str) -> Resp {
        self.request("GET", path, None)
    }

    pub fn post(&self, path: &str, body: Value) -> Resp {
        self.request("POST", path, Some(&body))
    }

    pub fn create_collection(&self, name: &str) {
        let r = self.request("PUT", &format!("/api/v1/collections/{name}"), None);
        assert_eq!(r.status, 201, "create collection: {}", r.text);
    }

    /// Add documents and wait until their job is done. Returns the final job.
    pub fn ingest(&self, collection: &str, docs: Value) -> Value {
        let job = self.ingest_async(collection, docs);
        self.wait_job(&job)
    }

    /// Add documents; returns the job id without waiting. A full ingest queue (429) is waited
    /// out as its Retry-After says, as a well-behaved client would.
    pub fn ingest_async(&self, collection: &str, docs: Value) -> String {
        let body = json!({ "documents": docs });
        let start = Instant::now();
        loop {
            let r = self.post(
                &format!("/api/v1/collections/{collection}/documents"),
                body.clone(),
            );
            if r.status == 429 && start.elapsed() < Duration::from_secs(600) {
                std::thread::sleep(Duration::from_secs(r.retry_after.unwrap_or(1)));
                continue;
            }
            assert_eq!(r.status, 202, "ingest: {}", r.text);
            return r.body["job_id"].as_str().expect("job id").to_string();
        }
    }

    pub fn wait_job(&self, job: &str) -> Value {
        let start = Instant::now();
        loop {
            let r = self.get(&format!("/api/v1/jobs/{job}"));
            assert_eq!(r.status, 200, "job: {}", r.text);
            if r.body["state"] != "running" {
                return r.body;
            }
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "job {job} still running: {}",
                r.text
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn search(&self, collection: &str, body: Value) -> Resp {
        self.post(&format!("/api/v1/collections/{collection}/search"), body)
    }

    /// Document ids of the hits of a successful search, best first.
    pub fn search_ids(&self, collection: &str, body: Value) -> Vec<String> {
        let r = self.search(collection, body);
        assert_eq!(r.status, 200, "search: {}", r.text);
        hit_ids(&r.body)
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").text
    }
}

pub fn hit_ids(body: &Value) -> Vec<String> {
    body["hits"]
        .as_array()
        .map(|hits| {
            hits.iter()
                .filter_map(|h| h["document_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Each hit's document id and score, in the order returned.
pub fn hit_scores(body: &Value) -> Vec<(String, f64)> {
    body["hits"]
        .as_array()
        .map(|hits| {
            hits.iter()
                .map(|h| {
                    let id = h["document_id"].as_str().unwrap_or_default().to_owned();
                    (id, h["score"].as_f64().unwrap_or(f64::NAN))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The value of a metric line (`name{labels} value`) in Prometheus text, summed over label sets
/// that contain `label_part`.
pub fn metric_value(text: &str, name: &str, label_part: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l.contains(label_part))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn to_resp(r: reqwest::blocking::Response) -> Resp {
    let status = r.status().as_u16();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let request_id = header("x-request-id");
    let retry_after = header("retry-after").and_then(|v| v.parse().ok());
    let text = r.text().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        body,
        text,
        request_id,
        retry_after,
    }
}

/// Wait until `cond` holds, polling every 50 ms; panics with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Short encyclopedia-style passages on distinct topics, with paraphrased questions whose answer
/// is the passage of the same id.
pub fn corpus() -> Value {
    json!([
        {"id": "eiffel", "metadata": {"topic": "architecture", "year": 1889, "lang": "en"},
         "text": "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris. It was designed by the engineering company of Gustave Eiffel and completed in 1889 for the World's Fair. At 330 metres it was the tallest man-made structure in the world for 41 years."},
        {"id": "photosynthesis", "metadata": {"topic": "biology", "lang": "en"},
         "text": "Photosynthesis is the process by which green plants, algae and some bacteria convert light energy into chemical energy. Using chlorophyll, they turn carbon dioxide and water into glucose and release oxygen as a by-product."},
        {"id": "rust", "metadata": {"topic": "computing", "year": 2015, "lang": "en"},
         "text": "Rust is a general-purpose programming language emphasizing performance, type safety and concurrency. It enforces memory safety without a garbage collector through its ownership and borrowing rules, checked at compile time."},
        {"id": "everest", "metadata": {"topic": "geography", "lang": "en"},
         "text": "Mount Everest, on the border between Nepal and China, is Earth's highest mountain above sea level, with a summit at 8,849 metres. It was first climbed by Tenzing Norgay and Edmund Hillary in 1953."},
        {"id": "penicillin", "metadata": {"topic": "medicine", "year": 1928, "lang": "en"},
         "text": "Penicillin was discovered in 1928 by Alexander Fleming, who noticed that a mould had killed the bacteria in one of his culture plates. It became the first widely used antibiotic and saved millions of lives from infections."},
        {"id": "bitcoin", "metadata": {"topic": "computing", "year": 2009, "lang": "en"},
         "text": "Bitcoin is a decentralized digital currency created in 2009 by the pseudonymous Satoshi Nakamoto. Transactions are recorded on a public ledger called the blockchain and verified by a network of nodes through proof of work."},
        {"id": "jazz", "metadata": {"topic": "music", "lang": "en"},
         "text": "Jazz is a music genre that originated in the African-American communities of New Orleans in the late 19th and early 20th centuries. It is characterised by swing and blue notes, complex chords, call and response vocals and improvisation."},
        {"id": "volcano", "metadata": {"topic": "geography", "lang": "en"},
         "text": "A volcano is a rupture in the crust of a planet through which lava, volcanic ash and gases escape from a magma chamber below the surface. Eruptions can build mountains such as Mount Fuji and bury whole cities, as happened at Pompeii."},
        {"id": "coffee", "metadata": {"topic": "food", "lang": "en"},
         "text": "Coffee is a beverage brewed from roasted coffee beans, the seeds of berries from Coffea plants. Native to Ethiopia, it is one of the most traded agricultural products, and its caffeine makes drinkers feel more alert."},
        {"id": "moon-landing", "metadata": {"topic": "space", "year": 1969, "lang": "en"},
         "text": "Apollo 11 was the spaceflight that first landed humans on the Moon. Commander Neil Armstrong and pilot Buzz Aldrin landed the lunar module Eagle on 20 July 1969, while Michael Collins orbited above in the command module."},
        {"id": "chess", "metadata": {"topic": "games", "lang": "en"},
         "text": "Chess is a board game for two players played on a checkered board of 64 squares. Each player begins with sixteen pieces, and the object is to checkmate the opponent's king so that it is under attack and cannot escape."},
        {"id": "gdpr", "metadata": {"topic": "law", "year": 2018, "lang": "en"},
         "text": "The General Data Protection Regulation is a European Union law on data protection and privacy. Since 2018 it has given individuals control over their personal data and requires companies to report breaches and obtain consent."}
    ])
}

/// (question, id of the passage that answers it). The questions paraphrase: they mostly avoid the
/// passage's own words.
pub const PARAPHRASES: &[(&str, &str)] = &[
    ("famous iron landmark in the French capital", "eiffel"),
    ("how do plants make food from sunlight", "photosynthesis"),
    (
        "a language that is memory safe without garbage collection",
        "rust",
    ),
    (
        "tallest peak in the world and who first reached the top",
        "everest",
    ),
    ("who found the first antibiotic", "penicillin"),
    (
        "peer-to-peer electronic cash with no central bank",
        "bitcoin",
    ),
    ("improvised music born in New Orleans", "jazz"),
    ("molten rock erupting from a mountain", "volcano"),
    ("caffeinated drink made from roasted beans", "coffee"),
    ("first people to walk on the lunar surface", "moon-landing"),
    ("strategy game where you checkmate the king", "chess"),
    ("European privacy rules for personal information", "gdpr"),
];
