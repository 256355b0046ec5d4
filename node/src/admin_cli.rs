//! `shoal cluster ...`: admin commands that talk to any node's admin API over HTTP and print what
//! a person reads (or JSON with `--json`).

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

/// What went wrong, as the CLI prints it (and the exit code it uses).
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    /// 1: the node refused or failed; 2: the node could not be reached.
    pub code: u8,
}

fn client() -> Result<reqwest::blocking::Client, CliError> {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| CliError {
            message: format!("cannot make an HTTP client: {e}"),
            code: 1,
        })
}

/// Send a request to the node at `base` and return its JSON answer, or the node's error message.
pub fn call(base: &str, method: &str, path: &str, body: Option<Value>) -> Result<Value, CliError> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let m = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| CliError {
        message: e.to_string(),
        code: 1,
    })?;
    let mut req = with_secret(client()?.request(m, &url));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().map_err(|e| CliError {
        message: format!("cannot reach the node at {base}: {e}"),
        code: 2,
    })?;
    let status = resp.status();
    let text = resp.text().unwrap_or_default();
    if !status.is_success() {
        return Err(refusal(status, text));
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Requests carry the credentials the operator's environment has: the cluster secret
/// (SHOAL_CLUSTER__SECRET, an admin credential) and a token or API key (SHOAL_TOKEN).
pub fn with_secret(req: reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder {
    let req = match std::env::var("SHOAL_CLUSTER__SECRET") {
        Ok(secret) => req.header("x-shoal-cluster-secret", secret),
        Err(_) => req,
    };
    match std::env::var("SHOAL_TOKEN") {
        Ok(token) if !token.is_empty() => req.bearer_auth(token),
        _ => req,
    }
}

/// A node's refusal as the CLI tells it: its error message (or its whole answer) and the status.
fn refusal(status: reqwest::StatusCode, text: String) -> CliError {
    let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let message = json["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or(text);
    CliError {
        message: format!("{} ({status})", message.trim()),
        code: 1,
    }
}

/// Save a backup of the node at `base` (a snapshot of its whole state, taken while it serves) to
/// `out`: written to a temporary file beside it, synced, then renamed. Returns the log index the
/// backup holds and its size.
pub fn download_snapshot(base: &str, out: &std::path::Path) -> Result<(u64, u64), CliError> {
    let fail = |message: String| CliError { message, code: 1 };
    // No overall timeout: a large state takes as long as it takes to send.
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(None)
        .build()
        .map_err(|e| fail(format!("cannot make an HTTP client: {e}")))?;
    let url = format!("{}/api/v1/admin/snapshot", base.trim_end_matches('/'));
    let mut resp = with_secret(client.get(&url)).send().map_err(|e| CliError {
        message: format!("cannot reach the node at {base}: {e}"),
        code: 2,
    })?;
    let status = resp.status();
    if !status.is_success() {
        return Err(refusal(status, resp.text().unwrap_or_default()));
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let applied = header("x-shoal-applied-index").unwrap_or(0);
    // Without its length a download cut short could not be told from a whole one.
    let expected = header("content-length").ok_or_else(|| {
        fail("the answer carries no content-length (a proxy between here and the node?): ask the node directly".into())
    })?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".into());
    let tmp = out.with_file_name(format!(".{name}.part"));
    let mut file = std::fs::File::create(&tmp)
        .map_err(|e| fail(format!("cannot create {}: {e}", tmp.display())))?;
    let copied = resp.copy_to(&mut file).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(format!("the download stopped: {e}"))
    })?;
    if expected != copied {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(format!(
            "the download stopped after {copied} of {expected} bytes"
        )));
    }
    file.sync_all()
        .and_then(|_| std::fs::rename(&tmp, out))
        .map_err(|e| fail(format!("cannot write {}: {e}", out.display())))?;
    Ok((applied, copied))
}

fn opt(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The cluster status as a table.
pub fn status_table(status: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster {}  group {}  term {}  leader {}",
        opt(&status["cluster_id"]),
        opt(&status["group"]),
        opt(&status["term"]),
        opt(&status["leader"]),
    );
    let header = [
        "ID", "ADDRESS", "ROLE", "STATE", "APPLIED", "COMMIT", "LAG", "SNAPSHOT", "NOTE",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for m in status["members"].as_array().into_iter().flatten() {
        let s = &m["status"];
        let note = if !m["error"].is_null() {
            format!("unreachable: {}", opt(&m["error"]))
        } else if !s["stale"].is_null() {
            format!("stale: {}", opt(&s["stale"]))
        } else {
            String::new()
        };
        rows.push(vec![
            opt(&m["id"]),
            opt(&m["addr"]),
            opt(&m["role"]),
            if s.is_null() {
                "?".into()
            } else {
                opt(&s["state"])
            },
            opt(&s["applied_index"]),
            opt(&s["commit_index"]),
            opt(&m["lag"]),
            opt(&s["snapshot_index"]),
            note,
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_table_lists_every_member_with_its_indexes() {
        let status = serde_json::json!({
            "cluster_id": "c1", "group": 0, "term": 3, "leader": 7,
            "members": [
                {"id": 7, "addr": "http://a:1", "role": "voter", "lag": 0, "error": null,
                 "status": {"state": "leader", "applied_index": 42, "commit_index": 42, "snapshot_index": null, "stale": null}},
                {"id": 9, "addr": "http://b:2", "role": "learner", "lag": null, "error": "cannot reach", "status": null}
            ]
        });
        let t = status_table(&status);
        assert!(
            t.starts_with("cluster c1  group 0  term 3  leader 7"),
            "{t}"
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(
            lines[2].starts_with("7 ") && lines[2].contains("leader") && lines[2].contains("42")
        );
        assert!(lines[3].contains("learner") && lines[3].contains("unreachable: cannot reach"));
    }
}
