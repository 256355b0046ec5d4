//! File uploads: `multipart/form-data` with files of every kind shoal reads and some it cannot;
//! the readable ones become searchable documents with their title, headings, format and page
//! count as metadata, the others fail in the job with a reason, and an upload over the body
//! limit is refused (413) before it is read.

use reqwest::blocking::multipart::{Form, Part};
use serde_json::{json, Value};
use shoal_tests::{Node, ADMIN_KEY};

/// A PDF of one page per text, titled `title`.
fn pdf(pages: &[&str], title: &str) -> Vec<u8> {
    let pages: Vec<String> = pages.iter().map(|p| p.to_string()).collect();
    shoal_extract::samples::pdf(&pages, title)
}

fn upload(node: &Node, form: Form) -> (u16, Value) {
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/api/v1/collections/docs/documents", node.base))
        .bearer_auth(ADMIN_KEY)
        .multipart(form)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn file(bytes: impl Into<Vec<u8>>, name: &str) -> Part {
    Part::bytes(bytes.into()).file_name(name.to_string())
}

#[test]
fn uploads_of_every_kind_become_documents_and_unreadable_files_fail_with_reasons() {
    let node = Node::start(&[("SHOAL_SERVER__MAX_BODY_BYTES", "2000000")], &[]);
    node.create_collection("docs");
    let form = Form::new()
        .text("metadata", r#"{"team": "ops"}"#)
        .text("id", "notes")
        .part("file", file("Rotate the on-call roster every Monday morning.", "notes.txt"))
        .part(
            "file",
            file("# Deploy guide\n\nShip with the blue-green switch.\n\n## Rollback\n\nFlip it back.", "guide.md"),
        )
        .part(
            "file",
            file("<html><head><title>Status page</title></head><body><h1>Incidents</h1><p>All quiet on the western front.</p><script>track()</script></body></html>", "status.html"),
        )
        .part(
            "file",
            file("{\"id\": \"faq-1\", \"text\": \"Passwords reset through the portal.\"}\n{\"text\": \"Badges are at the front desk.\", \"metadata\": {\"floor\": 2}}\n", "faq.jsonl"),
        )
        .part(
            "file",
            file(pdf(&["The reactor cools with heavy water.", "Turbines turn the steam into power."], "Plant manual"), "manual.pdf"),
        )
        .part("file", file(&b"%PDF-1.7\n this is not really a pdf"[..], "broken.pdf"))
        .part("file", file(&b"\x89PNG\r\n\x1a\n0000"[..], "photo.png"))
        .part("file", file("   ", "blank.txt"))
        .part("file", file(&b"PK\x03\x04 a zip cut short"[..], "broken.docx"))
        .part("file", file("{\"text\": \"never closed", "broken.json"))
        .part("file", file(&b"<html><body>\xff\xfe not UTF-8</body></html>"[..], "latin.html"));
    let (status, body) = upload(&node, form);
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["documents"], 6, "{body}");
    let job = node.wait_job(body["job_id"].as_str().unwrap());
    assert_eq!(job["state"], "completed_with_errors", "{job}");
    assert_eq!(
        (
            job["total"].as_u64(),
            job["failed"].as_u64(),
            job["indexed"].as_u64()
        ),
        (Some(12), Some(6), Some(6)),
        "{job}"
    );
    let reasons: Vec<(String, String)> = job["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["document_id"].as_str().unwrap().to_string(),
                e["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let reason = |id: &str| {
        reasons
            .iter()
            .find(|(d, _)| d == id)
            .map(|(_, r)| r.clone())
            .unwrap_or_default()
    };
    assert!(reason("broken.pdf").contains("damaged"), "{reasons:?}");
    assert!(reason("photo.png").contains("PNG"), "{reasons:?}");
    assert!(reason("blank.txt").contains("empty"), "{reasons:?}");
    for broken in ["broken.docx", "broken.json", "latin.html"] {
        assert!(!reason(broken).is_empty(), "{broken}: {reasons:?}");
    }
    assert!(reason("broken.json").contains("JSON"), "{reasons:?}");
    assert!(reason("latin.html").contains("UTF-8"), "{reasons:?}");
    assert!(reason("broken.docx").contains("damaged"), "{reasons:?}");

    // searchable, with what the file told about itself
    let hit = |q: &str| {
        let r = node.search("docs", json!({"query": q, "top_k": 1}));
        assert_eq!(r.status, 200, "{}", r.text);
        r.body["hits"][0].clone()
    };
    let h = hit("how is the reactor cooled");
    assert_eq!(h["document_id"], "manual.pdf", "{h}");
    assert_eq!(h["metadata"]["format"], "pdf");
    assert_eq!(h["metadata"]["title"], "Plant manual");
    assert_eq!(h["metadata"]["pages"], 2);
    assert_eq!(h["metadata"]["team"], "ops");
    let h = hit("undo a deployment");
    assert_eq!(h["document_id"], "guide.md", "{h}");
    assert_eq!(
        h["metadata"]["headings"],
        json!(["Deploy guide", "Rollback"])
    );
    // the document knows its outline
    let d = node.get("/api/v1/collections/docs/documents/guide.md");
    let outline: Vec<&str> = d.body["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["heading"].as_str().unwrap())
        .collect();
    assert_eq!(outline, ["Deploy guide", "Rollback"], "{}", d.text);
    let h = hit("who is on call");
    assert_eq!(h["document_id"], "notes", "{h}");
    let h = hit("where do I get my badge");
    assert_eq!(h["document_id"], "faq.jsonl#2", "{h}");
    assert_eq!(h["metadata"]["floor"], 2);
    assert_eq!(hit("forgot my password")["document_id"], "faq-1");
    let h = hit("are there any incidents");
    assert_eq!(h["document_id"], "status.html", "{h}");
    assert_eq!(h["metadata"]["title"], "Status page");
    assert!(!h["text"].as_str().unwrap().contains("track()"), "{h}");

    // an upload declared over the body limit: 413 at once, though only its first bytes came
    {
        use std::io::{Read, Write};
        let addr = node.base.trim_start_matches("http://");
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let head = format!(
            "POST /api/v1/collections/docs/documents HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {ADMIN_KEY}\r\ncontent-type: multipart/form-data; boundary=B\r\ncontent-length: 3000000\r\n\r\n--B\r\ncontent-disposition: form-data; name=\"file\"; filename=\"big.txt\"\r\n\r\naaaa"
        );
        tcp.write_all(head.as_bytes()).unwrap();
        let mut answer = [0u8; 64];
        let n = tcp.read(&mut answer).unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }
    // an upload of nothing readable: a job that fails at once
    let (status, body) = upload(
        &node,
        Form::new().part("file", file(&b"\x1f\x8b\x08"[..], "a.gz")),
    );
    assert_eq!(status, 202, "{body}");
    let job = node.wait_job(body["job_id"].as_str().unwrap());
    assert_eq!(job["state"], "completed_with_errors", "{job}");
    // two files of one name: the second fails; what the uploader says beats what the file says
    let form = Form::new()
        .text("metadata", r#"{"title": "Given title"}"#)
        .part(
            "file",
            file("First of two files with one name.", "same.txt"),
        )
        .part(
            "file",
            file("Second of two files with one name.", "same.txt"),
        )
        .part(
            "file",
            file(
                "<html><head><title>Own title</title></head><body><p>Kept.</p></body></html>",
                "t.html",
            ),
        );
    let (status, body) = upload(&node, form);
    assert_eq!(status, 202, "{body}");
    let job = node.wait_job(body["job_id"].as_str().unwrap());
    assert_eq!(job["failed"], 1, "{job}");
    assert!(
        job["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("same.txt"),
        "{job}"
    );
    let t = node.get("/api/v1/collections/docs/documents/t.html");
    assert_eq!(t.body["metadata"]["title"], "Given title", "{}", t.text);
    // an upload to a collection that does not exist: 404, before the files are read
    let r = reqwest::blocking::Client::new()
        .post(format!(
            "{}/api/v1/collections/nowhere/documents",
            node.base
        ))
        .bearer_auth(ADMIN_KEY)
        .multipart(Form::new().part("file", file("text", "a.txt")))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // bad forms are 400, and nothing is stored
    for form in [
        Form::new().text("metadata", "{}"),
        Form::new()
            .text("metadata", "[1]")
            .part("file", file("x", "x.txt")),
        Form::new()
            .text("colour", "red")
            .part("file", file("x", "x.txt")),
        Form::new()
            .text("id", "a")
            .text("id", "b")
            .part("file", file("x", "x.txt")),
    ] {
        let (status, body) = upload(&node, form);
        assert_eq!(status, 400, "{body}");
    }
    let garbage = reqwest::blocking::Client::new()
        .post(format!("{}/api/v1/collections/docs/documents", node.base))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "multipart/form-data; boundary=XYZ")
        .body("--nope\r\nnot a form")
        .send()
        .unwrap();
    assert_eq!(garbage.status().as_u16(), 400);
    let coll = node.get("/api/v1/collections/docs");
    assert_eq!(coll.body["documents"], 8, "{}", coll.text);
}

/// The worker processes (`shoal extract-worker`) the node with process id `pid` has running.
fn extract_workers(pid: u32) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // "pid (comm) state ppid ...": the parent is the fourth field, after the name
            let parent = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            // a worker not reaped yet is a zombie, whose command line is empty
            let zombie = stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'));
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            parent == Some(pid)
                && (zombie || String::from_utf8_lossy(&cmdline).contains("extract-worker"))
        })
        .count()
}

#[test]
fn hostile_files_cost_only_their_own_document_and_pages_reach_the_hits() {
    let mut node = Node::start(
        &[
            ("SHOAL_SERVER__MAX_BODY_BYTES", "4000000"),
            ("SHOAL_SERVER__REQUEST_TIMEOUT_MS", "5000"),
            ("SHOAL_MODEL__TIMEOUT_MS", "5000"),
            ("SHOAL_INGEST__EXTRACT_TIMEOUT_MS", "3000"),
            ("SHOAL_INGEST__MAX_DOCUMENTS_PER_REQUEST", "50"),
            ("SHOAL_INGEST__MAX_INFLATED_BYTES", "8000000"),
            ("SHOAL_INGEST__MAX_CHUNKS_PER_DOCUMENT", "3"),
            ("SHOAL_INGEST__CHUNK_TOKENS", "8"),
            ("SHOAL_INGEST__CHUNK_OVERLAP_TOKENS", "0"),
        ],
        &[],
    );
    let pid = node.pid().unwrap();
    node.create_collection("docs");
    // 2,000 pages that each parse one shared 6 MB stream again: minutes of work in a few KiB
    let endless = shoal_extract::samples::pdf_endless(2_000, 1_000_000);
    assert!(endless.len() < 400_000, "{}", endless.len());
    // a DOCX whose document inflates to 20 MB from a few KiB
    let bomb = shoal_extract::samples::docx_bomb(20_000_000);
    assert!(bomb.len() < 100_000, "{}", bomb.len());
    let long: String = (0..10)
        .map(|i| format!("Sentence number {i} talks about the weather in the mountains. "))
        .collect();
    let started = std::time::Instant::now();
    // three of them: one more than the node reads at once, so the third gets its turn only
    // when the first two are stopped at their deadline (3 s), and then only what is left of the
    // request's time (5 s); a reader left running would hold its slot and the next upload would
    // wait for ever
    let form = Form::new()
        .part("file", file(endless.clone(), "endless.pdf"))
        .part("file", file(endless.clone(), "endless-too.pdf"))
        .part("file", file(bomb, "bomb.docx"))
        .part("file", file(long, "long.txt"))
        .part(
            "file",
            file(
                "# Deploy guide\n\nShip it.\n\n## Rollback\n\nFlip it back.",
                "guide.md",
            ),
        )
        .part(
            "file",
            file(
                pdf(
                    &[
                        "Rivers flood in spring.",
                        "",
                        "Glaciers carve valleys slowly.",
                    ],
                    "Landforms",
                ),
                "landforms.pdf",
            ),
        )
        // last: the small files above are read in the slots the first two free at 3 s
        .part("file", file(endless, "endless-three.pdf"));
    let (status, body) = upload(&node, form);
    let took = started.elapsed();
    assert_eq!(status, 202, "{body}");
    // the endless file was stopped at its deadline, not read to its end
    assert!(took < std::time::Duration::from_secs(15), "{took:?}");
    assert_eq!(body["documents"], 3, "{body}");
    let job = node.wait_job(body["job_id"].as_str().unwrap());
    assert_eq!(job["failed"], 5, "{job}");
    let reason = |id: &str| {
        job["errors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["document_id"] == id)
            .map(|e| e["reason"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    for endless in ["endless.pdf", "endless-too.pdf"] {
        assert!(reason(endless).contains("longer than 3000 ms"), "{job}");
    }
    assert!(
        reason("endless-three.pdf").contains("took longer than"),
        "{job}"
    );
    // what failed was not stored
    for id in ["endless.pdf", "bomb.docx"] {
        let r = node.get(&format!("/api/v1/collections/docs/documents/{id}"));
        assert_eq!(r.status, 404, "{}", r.text);
    }
    assert!(reason("bomb.docx").contains("zip bomb"), "{job}");
    assert!(
        reason("long.txt").contains("ingest.max_chunks_per_document"),
        "{job}"
    );
    // no worker outlives its file
    shoal_tests::wait_until(
        std::time::Duration::from_secs(10),
        "the extraction workers to end",
        || extract_workers(pid) == 0,
    );

    // each chunk knows its pages; a page without text still counts
    let r = node.search(
        "docs",
        json!({"query": "glaciers carving valleys", "top_k": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let h = &r.body["hits"][0];
    assert_eq!(h["document_id"], "landforms.pdf", "{h}");
    assert_eq!(
        (
            h["metadata"]["page"].as_u64(),
            h["metadata"]["last_page"].as_u64()
        ),
        (Some(3), Some(3)),
        "{h}"
    );
    assert_eq!(h["metadata"]["pages"], 3, "{h}");
    let d = node.get("/api/v1/collections/docs/documents/landforms.pdf");
    let chunks = d.body["chunk_list"].as_array().unwrap();
    assert_eq!(chunks.len(), 2, "{}", d.text);
    assert_eq!(
        (chunks[0]["page"].as_u64(), chunks[0]["last_page"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        (chunks[1]["page"].as_u64(), chunks[1]["last_page"].as_u64()),
        (Some(3), Some(3))
    );

    // an upload that makes more documents than a request may hold is refused whole, at once
    let many: String = (0..60)
        .map(|i| format!("{{\"id\": \"r{i}\", \"text\": \"record {i}\"}}\n"))
        .collect();
    let (status, body) = upload(&node, Form::new().part("file", file(many, "many.jsonl")));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more than 50 documents"),
        "{body}"
    );
    assert_eq!(
        node.get("/api/v1/collections/docs/documents/r1").status,
        404
    );

    // each chunk knows the section it begins in
    let d = node.get("/api/v1/collections/docs/documents/guide.md");
    let sections: Vec<Value> = d.body["chunk_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["section"].clone())
        .collect();
    assert_eq!(
        sections,
        [json!("Deploy guide"), json!("Rollback")],
        "{}",
        d.text
    );
    let r = node.search(
        "docs",
        json!({"query": "how do I flip it back", "top_k": 1}),
    );
    let h = &r.body["hits"][0];
    assert_eq!(
        (&h["document_id"], &h["metadata"]["section"]),
        (&json!("guide.md"), &json!("Rollback")),
        "{h}"
    );

    // the node went on: healthy, and the next upload is read at once
    assert_eq!(node.get("/api/health").status, 200);
    let started = std::time::Instant::now();
    let (status, body) = upload(
        &node,
        Form::new().part("file", file("Lakes freeze in winter.", "lakes.txt")),
    );
    assert_eq!(status, 202, "{body}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let job = node.wait_job(body["job_id"].as_str().unwrap());
    assert_eq!(job["state"], "completed", "{job}");
    // a document without pages has no page numbers
    let r = node.search("docs", json!({"query": "frozen lakes", "top_k": 1}));
    let h = &r.body["hits"][0];
    assert_eq!(h["document_id"], "lakes.txt", "{h}");
    assert!(h["metadata"].get("page").is_none(), "{h}");

    // retry: only a failed document, and only one whose text was read
    let retry = |id: &str| {
        node.post(
            &format!("/api/v1/collections/docs/documents/{id}/retry"),
            json!({}),
        )
    };
    assert_eq!(retry("lakes.txt").status, 409);
    assert_eq!(retry("endless.pdf").status, 404);
    // with room for more chunks, the document that made too many is indexed when retried
    node.restart_with(&[("SHOAL_INGEST__MAX_CHUNKS_PER_DOCUMENT", "100")]);
    let r = node.post(
        "/api/v1/collections/docs/documents/long.txt/retry",
        json!({}),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let job = node.wait_job(r.body["job_id"].as_str().unwrap());
    assert_eq!(job["state"], "completed", "{job}");
    let d = node.get("/api/v1/collections/docs/documents/long.txt");
    assert_eq!(d.body["state"], "indexed", "{}", d.text);
    assert!(d.body["chunks"].as_u64().unwrap() > 3, "{}", d.text);
}
