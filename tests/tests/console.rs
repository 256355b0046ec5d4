//! The web console in a real browser (headless Chromium over WebDriver): sign in with an API
//! key, run a search and see the hits with their stage times, upload a file and watch its job
//! until it is searchable, list jobs, and follow a three-node cluster's leader as it is killed.
//! Where Chromium cannot start the tests say so and end without checking anything; they never
//! pretend. With `SHOAL_UI_SCREENSHOTS=1` each page's screenshot goes to `docs/ui/` (as
//! `scripts/ui-screenshots.sh` does); otherwise to a temporary folder.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use shoal_tests::browser::Browser;
use shoal_tests::cluster::Cluster;
use shoal_tests::{workspace_root, Node, ADMIN_KEY};

const WAIT: Duration = Duration::from_secs(30);

/// One browser test at a time: each starts a Chromium, and one starts a three-node cluster.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The browser, or None (the test then says it was skipped) where Chromium cannot start; with
/// `SHOAL_REQUIRE_BROWSER=1` (the test command sets it) that is a failure instead.
fn browser() -> Option<Browser> {
    match Browser::start(1280, 900) {
        Ok(b) => Some(b),
        Err(why) if std::env::var("SHOAL_REQUIRE_BROWSER").is_ok_and(|v| v == "1") => {
            panic!("no headless Chromium, and SHOAL_REQUIRE_BROWSER=1: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: no headless Chromium here: {why}");
            None
        }
    }
}

/// The text of the element `css` selects, read in one step (the page redraws itself).
fn text_of(b: &Browser, css: &str) -> String {
    b.run(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : ''",
        json!([css]),
    )
    .as_str()
    .unwrap_or_default()
    .to_string()
}

/// Where screenshots go: `docs/ui/` when asked for, else a folder of this run.
fn shots() -> (PathBuf, Option<tempfile::TempDir>) {
    if std::env::var("SHOAL_UI_SCREENSHOTS").is_ok_and(|v| v == "1") {
        (workspace_root().join("docs/ui"), None)
    } else {
        let dir = tempfile::tempdir().unwrap();
        (dir.path().to_path_buf(), Some(dir))
    }
}

fn sign_in(b: &Browser, base: &str) {
    b.goto(&format!("{base}/ui"));
    let key = b.wait_for("#key-form input[name=key]", WAIT);
    b.type_into(&key, ADMIN_KEY);
    b.click(&b.wait_for("#key-form button", WAIT));
    b.wait_for("#search-form", WAIT);
}

#[test]
fn the_console_signs_in_searches_uploads_and_lists_jobs() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(b) = browser() else { return };
    let (dir, _keep) = shots();
    let node = Node::start(&[], &[]);
    node.create_collection("handbook");
    node.ingest(
        "handbook",
        json!([
            {"id": "oncall", "text": "The on-call engineer rotates every Monday and carries the pager for a week.", "metadata": {"team": "ops"}},
            {"id": "expenses", "text": "Travel expenses are reimbursed within thirty days when receipts are attached.", "metadata": {"team": "finance"}},
            {"id": "security", "text": "Laptops must use full-disk encryption and lock after five minutes idle.", "metadata": {"team": "it"}},
            {"id": "drills", "text": "Fire drills happen on the first Friday of each quarter.", "metadata": {"page": "<b>x</b>", "section": "<img src=x>"}}
        ]),
    );
    // a wrong key is refused on the sign-in page, and nothing else shows
    b.goto(&format!("{}/ui", node.base));
    let key = b.wait_for("#key-form input[name=key]", WAIT);
    b.type_into(&key, "shoal_not_a_real_key");
    b.click(&b.wait_for("#key-form button", WAIT));
    b.wait_for_text("not valid", WAIT);
    assert!(b.find("#search-form").is_none());
    b.screenshot(&dir.join("sign-in.png"));

    // search: hits with both kinds of score, the query's words marked, the time per stage
    sign_in(&b, &node.base);
    let q = b.wait_for("#search-form input[name=query]", WAIT);
    b.type_into(&q, "who carries the pager");
    b.click(&b.wait_for("#search-form button", WAIT));
    let first = b.wait_for(".hit", WAIT);
    let text = b.text(&first);
    assert!(text.contains("oncall"), "{text}");
    assert!(text.contains("vector score"), "{text}");
    let marked = b.run(
        "return [...document.querySelectorAll('.hit mark')].map(m => m.textContent.toLowerCase())",
        json!([]),
    );
    assert!(
        marked.as_array().unwrap().iter().any(|m| m == "pager"),
        "{marked}"
    );
    let stages = b.text(&b.wait_for(".stages", WAIT));
    assert!(
        stages.contains("embed") && stages.contains("index"),
        "{stages}"
    );
    b.screenshot(&dir.join("search.png"));

    // a metadata filter narrows the hits
    let filter = b.wait_for("#search-form textarea[name=filter]", WAIT);
    b.type_into(&filter, r#"{"metadata": {"team": "finance"}}"#);
    b.click(&b.wait_for("#search-form button", WAIT));
    let hit_ids = || {
        b.run(
            "return [...document.querySelectorAll('.hit .head > strong')].map(e => e.textContent)",
            json!([]),
        )
    };
    shoal_tests::wait_until(WAIT, "only the finance document among the hits", || {
        hit_ids().as_array().is_some_and(|ids| ids.len() == 1)
    });
    assert_eq!(hit_ids(), json!(["1. expenses"]));

    // keyword and hybrid modes: the hits say which score ranked them
    for (mode, label) in [("keyword", "keyword score"), ("hybrid", "fused score")] {
        b.goto(&format!("{}/ui#/search?collection=handbook", node.base));
        let q = b.wait_for("#search-form input[name=query]", WAIT);
        b.run(
            "document.querySelector('#search-form select[name=mode]').value = arguments[0]",
            json!([mode]),
        );
        b.type_into(&q, "pager");
        b.click(&b.wait_for("#search-form button", WAIT));
        // (the new hits, not the previous page's)
        b.wait_for_text(label, WAIT);
        let first = b.wait_for(".hit", WAIT);
        let text = b.text(&first);
        assert!(
            text.contains("oncall") && text.contains(label),
            "{mode}: {text}"
        );
    }

    // weighted fusion: its controls show for hybrid search only; at alpha 0 the words alone
    // rank, so the top hit's fused score is its BM25 scaled to 0..1: 1 (RRF would give ~0.03)
    // (the page shows the search form already: the query is set, not typed after the last one)
    b.goto(&format!("{}/ui#/search?collection=handbook", node.base));
    b.wait_for("#search-form input[name=query]", WAIT);
    let weighted_hidden = || {
        b.run(
            "return document.querySelector('#search-form [data-weighted]').hidden",
            json!([]),
        )
    };
    assert_eq!(weighted_hidden(), json!(true));
    b.run(
        "const f = document.querySelector('#search-form');
         for (const [name, value] of [['mode', 'hybrid'], ['fusion', 'weighted']]) {
           f.elements[name].value = value;
           f.elements[name].dispatchEvent(new Event('change'));
         }
         f.elements.alpha.value = '0';
         f.elements.query.value = 'pager';",
        json!([]),
    );
    assert_eq!(weighted_hidden(), json!(false));
    // the hits of the searches above may still be on the page (the hash changed, not the page):
    // remove them, so the hit read below is this search's
    b.run(
        "document.querySelectorAll('.hit').forEach(h => h.remove())",
        json!([]),
    );
    b.click(&b.wait_for("#search-form button", WAIT));
    let first = b.text(&b.wait_for(".hit", WAIT));
    let fused: f64 = first
        .split("fused score")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no fused score in {first}"));
    assert!(first.contains("oncall") && fused == 1.0, "{first}");

    // what a writer put in metadata is shown as text, never as markup
    b.goto(&format!("{}/ui#/search?collection=handbook", node.base));
    let q = b.wait_for("#search-form input[name=query]", WAIT);
    b.type_into(&q, "when are the fire drills");
    b.click(&b.wait_for("#search-form button", WAIT));
    b.wait_for_text("<b>x</b>", WAIT);
    let markup = b.run(
        "return document.querySelectorAll('.hit b, .hit img').length",
        json!([]),
    );
    assert_eq!(markup, json!(0));

    // collections, then upload a file and follow its job until the document is searchable
    b.goto(&format!("{}/ui#/collections", node.base));
    b.wait_for("a[href='#/collections/handbook']", WAIT);
    b.screenshot(&dir.join("collections.png"));
    b.goto(&format!("{}/ui#/collections/handbook", node.base));
    let input = b.wait_for("#files", WAIT);
    let upload = tempfile::tempdir().unwrap();
    let file = upload.path().join("parking.md");
    std::fs::write(
        &file,
        "# Parking\n\nVisitors park on level two of the garage behind the office.\n",
    )
    .unwrap();
    b.type_into(&input, file.to_str().unwrap());
    b.wait_for_text("1 of 1 documents (1 indexed, 0 failed)", WAIT);
    // the collection's page says what it takes on this node
    b.wait_for_text("On this node", WAIT);
    b.wait_for_text("of chunks", WAIT);
    b.screenshot(&dir.join("upload.png"));
    let r = node.search(
        "handbook",
        json!({"query": "where do visitors park", "top_k": 1}),
    );
    assert_eq!(r.body["hits"][0]["document_id"], "parking.md", "{}", r.text);
    // the page shows the collection as it is now: the new document listed, its chunks one
    // click away
    b.wait_for_text("5 documents", WAIT);
    b.click(&b.wait_for(
        "a[href='#/collections/handbook/documents/parking.md']",
        WAIT,
    ));
    b.wait_for_text("level two of the garage", WAIT);
    b.screenshot(&dir.join("document.png"));

    // a file dragged from outside the page and dropped on the drop zone is uploaded the same way
    b.goto(&format!("{}/ui#/collections/handbook", node.base));
    b.wait_for("#drop", WAIT);
    let dropped = upload.path().join("badges.md");
    std::fs::write(
        &dropped,
        "# Badges\n\nLost badges are replaced at the front desk on the ground floor.\n",
    )
    .unwrap();
    b.drop_files("#drop", &[&dropped]);
    b.wait_for_text("6 documents", WAIT);
    let r = node.search(
        "handbook",
        json!({"query": "where do I get a new badge", "top_k": 1}),
    );
    assert_eq!(r.body["hits"][0]["document_id"], "badges.md", "{}", r.text);

    // jobs: the upload's job is there, completed
    b.goto(&format!("{}/ui#/jobs", node.base));
    b.wait_for_text("completed", WAIT);
    let rows = b.run(
        "return document.querySelectorAll('tbody tr').length",
        json!([]),
    );
    assert!(rows.as_u64().unwrap() >= 2, "{rows}");
    b.screenshot(&dir.join("jobs.png"));

    // a reader signs in with a password and sees only the collection granted
    node.create_collection("payroll");
    let r = node.post(
        "/api/v1/auth/users",
        json!({"username": "rita", "password": "rita-password-1", "role": "reader", "collections": ["handbook"]}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    b.click(&b.wait_for("#sign-out", WAIT));
    let user = b.wait_for("#password-form input[name=username]", WAIT);
    b.type_into(&user, "rita");
    b.type_into(
        &b.wait_for("#password-form input[name=password]", WAIT),
        "rita-password-1",
    );
    b.click(&b.wait_for("#password-form button", WAIT));
    b.wait_for_text("rita · reader", WAIT);
    b.goto(&format!("{}/ui#/collections", node.base));
    b.wait_for("a[href='#/collections/handbook']", WAIT);
    let text = b.page_text();
    assert!(!text.contains("payroll"), "{text}");
    assert!(b.find("#create-form").is_none());
    b.goto(&format!("{}/ui#/collections/handbook", node.base));
    shoal_tests::wait_until(WAIT, "the collection's page", || {
        text_of(&b, "main h1") == "handbook"
    });
    assert!(b.find("#files").is_none(), "a reader is offered no upload");
    // a page whose request is refused says so, instead of loading for ever
    b.goto(&format!("{}/ui#/collections/payroll", node.base));
    b.wait_for_text("This page could not be shown", WAIT);
    b.wait_for("#reload-page", WAIT);

    // at phone width nothing needs sideways scrolling but the tables' own boxes
    b.resize(390, 844);
    for (page, heading) in [
        ("#/collections/handbook", "handbook"),
        ("#/collections", "Collections"),
        ("#/search", "Search"),
    ] {
        b.goto(&format!("{}/ui{page}", node.base));
        shoal_tests::wait_until(WAIT, page, || text_of(&b, "main h1") == heading);
        assert_fits_phone_width(&b, page);
    }
}

fn assert_fits_phone_width(b: &Browser, page: &str) {
    let wide = b.run(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
        json!([]),
    );
    assert!(wide.as_i64().unwrap_or(0) <= 1, "{page}: {wide}");
}

#[test]
fn the_cluster_view_shows_the_members_and_follows_the_leader_when_it_is_killed() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(b) = browser() else { return };
    let (dir, _keep) = shots();
    let mut c = Cluster::start(3, 0, &[]);
    c.wait_members(3, 0, WAIT);
    let leader = c.leader(WAIT);
    let watcher = c.follower();
    let base = c.nodes[watcher].base.clone();
    // searches answered before the page is opened: its chart starts with the history the node
    // recorded, not empty
    c.nodes[leader].create_collection("charted");
    let zeros = json!({"vector": vec![0.5; 384], "top_k": 1});
    shoal_tests::wait_until(WAIT, "the collection on the watcher", || {
        c.search(watcher, "charted", zeros.clone()).status == 200
    });
    for _ in 0..20 {
        assert_eq!(c.search(watcher, "charted", zeros.clone()).status, 200);
    }
    shoal_tests::wait_until(WAIT, "the searches in the node's record", || {
        let r = c.nodes[watcher].get("/api/v1/analytics/searches?since=5m&local=true");
        r.body["searches"].as_u64().unwrap_or(0) >= 20
    });
    // and older than the last 10 s that the page's own samples cover: only the recorded history
    // can show them
    shoal_tests::wait_until(WAIT, "the searches out of the last 10 s", || {
        let r = c.nodes[watcher].get("/api/v1/analytics/searches?since=11s&local=true");
        r.body["searches"] == 0
    });
    sign_in(&b, &base);
    let opened = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64;
    b.goto(&format!("{base}/ui#/cluster"));
    b.wait_for("#leader", WAIT);
    // within its first refreshes, the watcher's searches/s chart covers minutes from before the
    // page was opened, and the searches made then are drawn above zero at a time before it
    let mut chart = Value::Null;
    shoal_tests::wait_until(WAIT, "the watcher's chart with its history", || {
        // [its first sample's time, the highest rate drawn before `opened`]
        chart = b.run(
            "const c = document.querySelector(`[data-node='${arguments[0]}'] .chart[data-from]`); \
             if (!c) return null; \
             const now = Number(c.dataset.now), span = 5 * 60 * 1000, max = Number(c.dataset.max); \
             let before = 0; \
             for (const xy of c.querySelector('polyline').getAttribute('points').split(' ')) { \
               const [x, y] = xy.split(',').map(Number); \
               const t = now - span + (x / 300) * span; \
               if (t < arguments[1]) before = Math.max(before, ((58 - y) / 54) * max); \
             } \
             return [Number(c.dataset.from), before]",
            json!([Cluster::id(watcher).to_string(), opened]),
        );
        chart[0]
            .as_f64()
            .is_some_and(|from| from < opened - 60_000.0)
    });
    assert!(
        chart[1].as_f64().unwrap() > 0.0,
        "no searches drawn before the page was opened: {chart}"
    );
    assert_eq!(text_of(&b, "#leader"), Cluster::id(leader).to_string());
    b.wait_for_text("(this node)", WAIT);
    let roles = b.run(
        "return [...document.querySelectorAll('[data-role]')].map(e => e.dataset.role)",
        json!([]),
    );
    let roles: Vec<&str> = roles
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(roles.len(), 3, "{roles:?}");
    assert_eq!(
        roles.iter().filter(|r| **r == "leader").count(),
        1,
        "{roles:?}"
    );
    // an actor that panics on another member is restarted, and the view counts it on its row
    let other = (0..3).find(|i| *i != leader && *i != watcher).unwrap();
    let r = c.nodes[other].request("POST", "/api/v1/admin/actors/embedder-query/panic", None);
    assert!(r.status < 300, "{}", r.text);
    let other_id = Cluster::id(other).to_string();
    shoal_tests::wait_until(WAIT, "the member's restart on its row", || {
        let rows = b.run(
            "return [...document.querySelectorAll('#cluster-body tbody tr')].map(r => [r.cells[0].textContent, r.querySelector('[data-restarts]')?.dataset.restarts ?? ''])",
            json!([]),
        );
        rows.as_array().is_some_and(|rows| {
            rows.iter()
                .any(|r| r[0].as_str().is_some_and(|t| t.starts_with(&other_id)) && r[1] == "1")
        })
    });
    b.screenshot(&dir.join("cluster.png"));

    // the leader dies: the page (refreshing on its own) names another one
    c.nodes[leader].kill9();
    let old = Cluster::id(leader).to_string();
    shoal_tests::wait_until(WAIT, "the console to show a new leader", || {
        let now = text_of(&b, "#leader");
        !now.is_empty() && now != old && now != "none"
    });
    b.wait_for_text("unreachable", WAIT);
    b.screenshot(&dir.join("cluster-after-failover.png"));
    // the dead member's chart is what it recorded, said to be so (and only the dead member's)
    shoal_tests::wait_until(WAIT, "the dead member's chart said to be old", || {
        let said = b.run(
            "return [...document.querySelectorAll('[data-node]')].filter(c => c.textContent.includes('No answer now')).map(c => c.dataset.node)",
            json!([]),
        );
        said == json!([old])
    });
    b.resize(390, 844);
    assert_fits_phone_width(&b, "#/cluster");
}
