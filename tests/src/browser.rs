//! A headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`, installed
//! by `scripts/browser.sh`): enough of the protocol to load pages, fill forms, click, read text,
//! run a script and take screenshots. WebDriver is JSON over HTTP, so the blocking client the
//! other tests use is all it needs.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// The key WebDriver answers an element reference under.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where Debian puts the browser and its driver (overridable for other systems).
fn program(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

pub struct Browser {
    driver: Child,
    url: String,
    session: String,
    http: reqwest::blocking::Client,
}

impl Browser {
    /// Start the driver and a headless browser `width` × `height`; why not, when either is
    /// missing or cannot start (the caller then skips, saying so).
    pub fn start(width: u32, height: u32) -> Result<Browser, String> {
        let chromium = program("SHOAL_CHROMIUM", "/usr/bin/chromium");
        let driver_bin = program("SHOAL_CHROMEDRIVER", "/usr/bin/chromedriver");
        for p in [&chromium, &driver_bin] {
            if !Path::new(p).exists() {
                return Err(format!("{p} is missing (scripts/browser.sh installs it)"));
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{driver_bin} did not start: {e}"))?;
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| e.to_string())?;
        let mut browser = Browser {
            driver,
            url: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            http,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = browser
                .http
                .get(format!("{}/status", browser.url))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            if Instant::now() > deadline {
                return Err("chromedriver did not become ready within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--hide-scrollbars", "--force-device-scale-factor=1",
                         format!("--window-size={width},{height}")],
            },
        }}});
        let session = browser
            .http
            .post(format!("{}/session", browser.url))
            .json(&caps)
            .send()
            .map_err(|e| format!("no browser session: {e}"))?
            .json::<Value>()
            .map_err(|e| format!("no browser session: {e}"))?;
        match session["value"]["sessionId"].as_str() {
            Some(id) => browser.session = id.to_string(),
            None => return Err(format!("the browser did not start: {}", session["value"])),
        }
        Ok(browser)
    }

    /// A WebDriver command's value; a WebDriver error fails the test (but see `find`).
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let value = self.call_raw(method, path, body);
        if let Some(e) = value.get("error") {
            panic!("WebDriver {method} {path}: {e}: {}", value["message"]);
        }
        value
    }

    fn call_raw(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.url, self.session);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or_else(|| json!({}))),
        };
        let answer: Value = req
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        answer["value"].clone()
    }

    /// A DevTools protocol command, through chromedriver's `goog/cdp/execute`.
    pub fn cdp(&self, command: &str, params: Value) -> Value {
        self.call(
            "POST",
            "/goog/cdp/execute",
            Some(json!({"cmd": command, "params": params})),
        )
    }

    /// Drag `files` from outside the page onto the middle of `css`'s element and drop them there,
    /// through the browser's own drag and drop (what a file manager does; WebDriver has no way to
    /// carry files in a drag).
    pub fn drop_files(&self, css: &str, files: &[&Path]) {
        let at = self.run(
            "const e = document.querySelector(arguments[0]); e.scrollIntoView({block: 'center'}); \
             const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]",
            json!([css]),
        );
        let (x, y) = match (at[0].as_f64(), at[1].as_f64()) {
            (Some(x), Some(y)) => (x, y),
            _ => panic!("no element `{css}` to drop on: {at}"),
        };
        let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        let data = json!({"items": [], "files": files, "dragOperationsMask": 1});
        for kind in ["dragEnter", "dragOver", "drop"] {
            self.cdp(
                "Input.dispatchDragEvent",
                json!({"type": kind, "x": x, "y": y, "data": data}),
            );
        }
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// The first element that `css` selects, if any.
    pub fn find(&self, css: &str) -> Option<String> {
        let v = self.call_raw(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        match v.get("error") {
            Some(e) if e == "no such element" => None,
            Some(e) => panic!("WebDriver find `{css}`: {e}: {}", v["message"]),
            None => v[ELEMENT].as_str().map(str::to_string),
        }
    }

    /// Wait (at most `limit`) for an element that `css` selects.
    pub fn wait_for(&self, css: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(e) = self.find(css) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no `{css}` within {limit:?}; the page shows: {}",
                self.page_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait (at most `limit`) until the page's text holds `what`.
    pub fn wait_for_text(&self, what: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.page_text();
            if text.contains(what) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the page did not show `{what}` within {limit:?}: {text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Make the window `width` × `height` (a phone's, say).
    pub fn resize(&self, width: u32, height: u32) {
        self.call(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        );
    }

    pub fn click(&self, element: &str) {
        self.call("POST", &format!("/element/{element}/click"), None);
    }

    /// Type `text` into an element (for a file input: the path of the file to choose).
    pub fn type_into(&self, element: &str, text: &str) {
        self.call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        );
    }

    pub fn text(&self, element: &str) -> String {
        self.call("GET", &format!("/element/{element}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn page_text(&self) -> String {
        self.run("return document.body.innerText", json!([]))
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Run `script` (a function body; `arguments` holds `args`) in the page; its return value.
    pub fn run(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Save a PNG of the window to `path`.
    pub fn screenshot(&self, path: &Path) {
        let png = self.call("GET", "/screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("a base64 screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the screenshot folder");
        }
        std::fs::write(path, bytes).expect("the screenshot written");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self
                .http
                .delete(format!("{}/session/{}", self.url, self.session))
                .send();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
