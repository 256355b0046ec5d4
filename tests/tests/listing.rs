//! Listing what a node holds: a collection's documents page by page with their state, one
//! document with its chunks, and jobs by state and collection.

use serde_json::json;
use shoal_tests::Node;

#[test]
fn documents_page_by_page_and_jobs_by_state() {
    let node = Node::start(&[], &[]);
    node.create_collection("lib");
    node.create_collection("other");
    let docs: Vec<_> = (0..25)
        .map(|i| json!({"id": format!("doc-{i:02}"), "text": format!("Note {i}: a short text about item number {i}."), "metadata": {"n": i}}))
        .collect();
    let job = node.ingest("lib", json!(docs));
    assert_eq!(job["state"], "completed", "{job}");
    // a text of zero-width spaces has nothing to index: it fails, and its job says so
    let bad = node.ingest("other", json!([{"id": "blank", "text": "\u{200b}\u{200b}"}, {"id": "fine", "text": "A fine text."}]));
    let bad_job = bad["id"].as_str().unwrap().to_string();

    // what the collection takes on the node: its records and its vectors (the list leaves it out)
    let c = node.get("/api/v1/collections/lib");
    let st = &c.body["storage"];
    let chunks = c.body["chunks"].as_u64().unwrap();
    assert!(chunks >= 25, "{}", c.text);
    // each chunk's record holds its 384 floats at least; each document its text
    assert!(
        st["chunks_bytes"].as_u64().unwrap() >= chunks * 384 * 4,
        "{st}"
    );
    assert!(st["documents_bytes"].as_u64().unwrap() >= 25 * 30, "{st}");
    // what the index holds in memory: the vectors (allocated a segment at a time), the links
    // (2·m + 1 per node on the bottom layer at least) and the keyword index
    let vectors = st["vectors_memory_bytes"].as_u64().unwrap();
    assert!(vectors >= chunks * 384 * 4, "{st}");
    assert!(vectors < 64 << 20, "{st}");
    assert!(
        st["graph_memory_bytes"].as_u64().unwrap() >= chunks * 33 * 4,
        "{st}"
    );
    assert!(st["keyword_memory_bytes"].as_u64().unwrap() > 0, "{st}");
    assert!(st["index_files_bytes"].is_u64(), "{st}");
    let empty = node.get("/api/v1/collections/other").body["storage"]["chunks_bytes"].as_u64();
    assert!(empty.unwrap() < st["chunks_bytes"].as_u64().unwrap());
    let list = node.get("/api/v1/collections");
    assert!(
        list.body["collections"][0].get("storage").is_none(),
        "{}",
        list.text
    );

    // pages of 10 in id order, each `next` leading to the following page
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            Some(a) => format!("/api/v1/collections/lib/documents?limit=10&after={a}"),
            None => "/api/v1/collections/lib/documents?limit=10".to_string(),
        };
        let r = node.get(&path);
        assert_eq!(r.status, 200, "{}", r.text);
        pages += 1;
        for d in r.body["documents"].as_array().unwrap() {
            assert_eq!(d["state"], "indexed", "{d}");
            assert!(d["chunks"].as_u64().unwrap() >= 1 && d["bytes"].as_u64().unwrap() > 10);
            assert!(d.get("text").is_none(), "a listing leaves the text out");
            seen.push(d["id"].as_str().unwrap().to_string());
        }
        match r.body["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    let want: Vec<String> = (0..25).map(|i| format!("doc-{i:02}")).collect();
    assert_eq!(seen, want);
    assert_eq!(pages, 3);
    // 25 documents in pages of 5: five pages, the last without `next`
    let fifth = node.get("/api/v1/collections/lib/documents?limit=5&after=doc-19");
    assert_eq!(fifth.body["documents"].as_array().unwrap().len(), 5);
    assert!(fifth.body.get("next").is_none(), "{}", fifth.text);

    // by state
    let failed = node.get("/api/v1/collections/other/documents?state=failed");
    let ids: Vec<&str> = failed.body["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["blank"], "{}", failed.text);
    assert!(failed.body["documents"][0]["error"]
        .as_str()
        .is_some_and(|e| !e.is_empty()));

    // one document with its chunks, in order, whose ranges hold their text
    let one = node.get("/api/v1/collections/lib/documents/doc-07");
    assert_eq!(one.status, 200);
    let chunks = one.body["chunk_list"].as_array().unwrap();
    assert_eq!(chunks.len() as u64, one.body["chunks"].as_u64().unwrap());
    let text = one.body["text"].as_str().unwrap();
    for c in chunks {
        let (s, e) = (
            c["start"].as_u64().unwrap() as usize,
            c["end"].as_u64().unwrap() as usize,
        );
        assert_eq!(&text[s..e], c["text"].as_str().unwrap());
    }

    // jobs: newest first, by collection, by state; bad parameters are 400
    let all = node.get("/api/v1/jobs");
    assert_eq!(all.status, 200);
    let jobs = all.body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{}", all.text);
    assert_eq!(jobs[0]["id"], bad_job.as_str(), "newest first");
    let f = node.get("/api/v1/jobs?state=failed");
    let f_ids: Vec<&str> = f.body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(f_ids, [bad_job.as_str()]);
    let lib = node.get("/api/v1/jobs?collection=lib&state=completed");
    assert_eq!(
        lib.body["jobs"].as_array().unwrap().len(),
        1,
        "{}",
        lib.text
    );
    let paged = node.get("/api/v1/jobs?limit=1");
    assert_eq!(paged.body["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(paged.body["next"], 1);
    let rest = node.get("/api/v1/jobs?limit=1&offset=1");
    assert_eq!(rest.body["jobs"][0]["id"], job["id"]);
    assert!(rest.body.get("next").is_none(), "{}", rest.text);
    for bad in [
        "/api/v1/jobs?state=sleeping",
        "/api/v1/jobs?limit=0",
        "/api/v1/jobs?limit=abc",
        "/api/v1/jobs?colour=red",
        "/api/v1/collections/lib/documents?limit=5000",
        "/api/v1/collections/lib/documents?state=lost",
    ] {
        let r = node.get(bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        assert_eq!(r.body["error"]["code"], "bad_request");
    }
    assert_eq!(node.get("/api/v1/collections/nope/documents").status, 404);
    assert_eq!(
        node.get("/api/v1/jobs?collection=nope").body["jobs"],
        json!([])
    );
    // ids that extend one another, one per page
    node.create_collection("prefixes");
    node.ingest(
        "prefixes",
        json!([{"id": "d-1", "text": "one"}, {"id": "d-10", "text": "ten"}, {"id": "d-100", "text": "a hundred"}]),
    );
    let mut ids = Vec::new();
    let mut after = String::new();
    loop {
        let r = node.get(&format!(
            "/api/v1/collections/prefixes/documents?limit=1{after}"
        ));
        ids.push(r.body["documents"][0]["id"].as_str().unwrap().to_string());
        match r.body["next"].as_str() {
            Some(n) => after = format!("&after={n}"),
            None => break,
        }
    }
    assert_eq!(ids, ["d-1", "d-10", "d-100"]);
}
