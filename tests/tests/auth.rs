//! Authentication and access against real nodes: every credential the node accepts, and a
//! battery of attacks, each refused with 401 or 403 (or 404 where a tenant would otherwise learn
//! another's collection names) and nothing leaked.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use shoal_tests::cluster::Cluster;
use shoal_tests::{wait_until, workspace_root, Node, ADMIN_KEY};

struct Answer {
    status: u16,
    body: Value,
    text: String,
    www_authenticate: Option<String>,
    retry_after: Option<u64>,
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A request with `bearer` (or no credential at all).
fn call(base: &str, method: &str, path: &str, bearer: Option<&str>, body: Option<Value>) -> Answer {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = http().request(m, format!("{base}{path}"));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().expect("request");
    let status = r.status().as_u16();
    let header = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let www_authenticate = header("www-authenticate");
    let retry_after = header("retry-after").and_then(|v| v.parse().ok());
    let text = r.text().unwrap_or_default();
    Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
        www_authenticate,
        retry_after,
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn fixture(name: &str) -> std::path::PathBuf {
    workspace_root().join("tests/fixtures/idp").join(name)
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A token of the pretend identity provider, signed with `key` (a PEM private key file).
fn idp_token(alg: Algorithm, key: &str, claims: Value) -> String {
    let pem = std::fs::read(fixture(key)).unwrap();
    let key = match alg {
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap()
}

fn token_for(base: &str, user: &str, password: &str) -> String {
    let r = call(
        base,
        "POST",
        "/api/v1/auth/token",
        None,
        Some(json!({"username": user, "password": password})),
    );
    assert_eq!(r.status, 200, "sign in as {user}: {}", r.text);
    assert_eq!(r.body["token_type"], "Bearer");
    r.body["access_token"].as_str().unwrap().to_string()
}

fn ingest_and_wait(base: &str, bearer: &str, collection: &str, id: &str, text: &str) -> String {
    let r = call(
        base,
        "POST",
        &format!("/api/v1/collections/{collection}/documents"),
        Some(bearer),
        Some(json!({"documents": [{"id": id, "text": text}]})),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let job = r.body["job_id"].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(60), "the job to finish", || {
        call(
            base,
            "GET",
            &format!("/api/v1/jobs/{job}"),
            Some(bearer),
            None,
        )
        .body["state"]
            == "completed"
    });
    job
}

/// Start a node with the admin key and the pretend identity provider's public keys.
fn start_node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("auth.toml");
    std::fs::write(
        &config,
        format!(
            r#"[auth]
jwt_issuer = "https://idp.example"
jwt_audience = "shoal"
max_failed_logins = 3
max_failed_logins_per_address = 6
failed_login_window_s = 120
[[auth.jwt_public_keys]]
algorithm = "RS256"
pem_file = "{}"
[[auth.jwt_public_keys]]
algorithm = "EdDSA"
pem_file = "{}"
"#,
            fixture("rsa-public.pem").display(),
            fixture("ed25519-public.pem").display()
        ),
    )
    .unwrap();
    let node = Node::start(&[], &["--config", config.to_str().unwrap()]);
    // the config file is read at start only
    drop(dir);
    node
}

#[test]
fn credentials_roles_tenants_and_attacks() {
    let node = start_node();
    let base = node.base.clone();
    let b = base.as_str();
    let admin = Some(ADMIN_KEY);

    // ---- no credential: 401 with a challenge, except the open routes
    for (m, p) in [
        ("GET", "/api/v1/collections"),
        ("POST", "/api/v1/collections/acme-docs/search"),
        ("PUT", "/api/v1/collections/x"),
        ("PATCH", "/api/v1/collections/x"),
        ("GET", "/api/v1/jobs/some-job"),
        ("POST", "/v1/embeddings"),
        ("GET", "/api/v1/cluster"),
        ("GET", "/api/v1/admin/snapshot"),
        ("GET", "/api/v1/auth/users"),
    ] {
        let r = call(b, m, p, None, Some(json!({"query": "x", "input": "x"})));
        assert_eq!(r.status, 401, "{m} {p}: {}", r.text);
        assert_eq!(r.body["error"]["code"], "unauthorized", "{}", r.text);
        assert!(r.www_authenticate.unwrap().starts_with("Bearer"));
    }
    for p in ["/api/health", "/health", "/api/ready", "/metrics"] {
        assert_eq!(call(b, "GET", p, None, None).status, 200, "{p}");
    }
    // a malformed header, a credential that is nothing
    let r = http()
        .get(format!("{b}/api/v1/collections"))
        .header("authorization", "Basic YWRtaW46YWRtaW4=")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        call(b, "GET", "/api/v1/collections", Some("garbage"), None).status,
        401
    );

    // ---- the admin key makes two tenants' collections and users
    for c in ["acme-docs", "globex-docs"] {
        let r = call(b, "PUT", &format!("/api/v1/collections/{c}"), admin, None);
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let acme_job = ingest_and_wait(
        b,
        ADMIN_KEY,
        "acme-docs",
        "a1",
        "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
    );
    let globex_job = ingest_and_wait(
        b,
        ADMIN_KEY,
        "globex-docs",
        "g1",
        "Photosynthesis lets plants turn light into chemical energy.",
    );
    let user = |name: &str, role: &str, grants: Value| {
        call(
            b,
            "POST",
            "/api/v1/auth/users",
            admin,
            Some(
                json!({"username": name, "password": format!("{name}-password-1"), "role": role, "collections": grants}),
            ),
        )
    };
    assert_eq!(user("ann", "writer", json!(["acme-*"])).status, 201);
    assert_eq!(user("rita", "reader", json!(["acme-*"])).status, 201);
    assert_eq!(user("gus", "writer", json!(["globex-docs"])).status, 201);
    assert_eq!(user("ann", "writer", json!([])).status, 409);
    assert_eq!(user("bad name", "writer", json!([])).status, 400);
    assert_eq!(user("zed", "writer", json!(["a/b"])).status, 400);
    let short = call(
        b,
        "POST",
        "/api/v1/auth/users",
        admin,
        Some(json!({"username": "zed", "password": "short", "role": "reader"})),
    );
    assert_eq!(short.status, 400, "{}", short.text);
    let users = call(b, "GET", "/api/v1/auth/users", admin, None);
    assert_eq!(
        users.body["users"].as_array().unwrap().len(),
        3,
        "{}",
        users.text
    );
    assert!(
        !users.text.contains("argon2") && !users.text.contains("password"),
        "{}",
        users.text
    );

    // ---- sign in
    let ann = token_for(b, "ann", "ann-password-1");
    let rita = token_for(b, "rita", "rita-password-1");
    let gus = token_for(b, "gus", "gus-password-1");
    let wrong = call(
        b,
        "POST",
        "/api/v1/auth/token",
        None,
        Some(json!({"username": "ann", "password": "nope-nope-nope"})),
    );
    assert_eq!(wrong.status, 401);
    let unknown = call(
        b,
        "POST",
        "/api/v1/auth/token",
        None,
        Some(json!({"username": "nobody", "password": "nope-nope-nope"})),
    );
    assert_eq!(unknown.status, 401);
    // the same answer whether or not the user exists
    assert_eq!(wrong.body, unknown.body);
    let me = call(b, "GET", "/api/v1/auth/me", Some(&ann), None);
    assert_eq!(me.body["name"], "ann");
    assert_eq!(me.body["role"], "writer");

    // ---- tenants: ann sees acme only; globex reads exactly like a missing collection
    let list = call(b, "GET", "/api/v1/collections", Some(&ann), None);
    let names: Vec<&str> = list.body["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme-docs"], "{}", list.text);
    let search = |token: &str, c: &str| {
        call(
            b,
            "POST",
            &format!("/api/v1/collections/{c}/search"),
            Some(token),
            Some(json!({"query": "tower in Paris", "top_k": 1})),
        )
    };
    assert_eq!(search(&ann, "acme-docs").status, 200);
    let hidden = search(&ann, "globex-docs");
    let missing = search(&ann, "globex-nothing");
    assert_eq!(hidden.status, 404);
    assert_eq!(
        hidden.body["error"]["message"]
            .as_str()
            .unwrap()
            .replace("globex-docs", "X"),
        missing.body["error"]["message"]
            .as_str()
            .unwrap()
            .replace("globex-nothing", "X"),
    );
    assert_eq!(
        call(
            b,
            "GET",
            "/api/v1/collections/globex-docs",
            Some(&ann),
            None
        )
        .status,
        404
    );
    assert_eq!(
        call(
            b,
            "GET",
            "/api/v1/collections/globex-docs/documents/g1",
            Some(&ann),
            None
        )
        .status,
        404
    );
    assert_eq!(
        call(
            b,
            "DELETE",
            "/api/v1/collections/globex-docs/documents/g1",
            Some(&ann),
            None
        )
        .status,
        404
    );
    let cross = call(
        b,
        "POST",
        "/api/v1/collections/globex-docs/documents",
        Some(&ann),
        Some(json!({"documents": [{"id": "x", "text": "planted"}]})),
    );
    assert_eq!(cross.status, 404, "{}", cross.text);
    let job = call(
        b,
        "GET",
        &format!("/api/v1/jobs/{globex_job}"),
        Some(&ann),
        None,
    );
    assert_eq!(job.status, 404, "{}", job.text);
    assert!(!job.text.contains("globex"), "{}", job.text);
    assert_eq!(
        call(
            b,
            "GET",
            &format!("/api/v1/jobs/{acme_job}"),
            Some(&ann),
            None
        )
        .status,
        200
    );
    // gus sees globex and not acme
    assert_eq!(search(&gus, "globex-docs").status, 200);
    assert_eq!(search(&gus, "acme-docs").status, 404);

    // ---- roles: a writer writes but runs nothing of the admin's; a reader only reads
    ingest_and_wait(
        b,
        &ann,
        "acme-docs",
        "a2",
        "The Louvre is the world's most-visited museum.",
    );
    assert_eq!(
        call(b, "PUT", "/api/v1/collections/acme-new", Some(&ann), None).status,
        403
    );
    assert_eq!(
        call(
            b,
            "DELETE",
            "/api/v1/collections/acme-docs",
            Some(&ann),
            None
        )
        .status,
        403
    );
    for (m, p) in [
        ("GET", "/api/v1/auth/users"),
        ("GET", "/api/v1/auth/keys"),
        ("GET", "/api/v1/cluster"),
        ("GET", "/api/v1/admin/digest"),
        ("GET", "/api/v1/admin/snapshot"),
    ] {
        let r = call(b, m, p, Some(&ann), None);
        assert_eq!(r.status, 403, "{m} {p}: {}", r.text);
        assert_eq!(r.body["error"]["code"], "forbidden");
    }
    // the right is judged before the body: a body that is not what the route takes is still a
    // 403 for a caller without the right, so probing teaches them nothing of the route
    for (m, p) in [
        ("POST", "/api/v1/auth/users"),
        ("POST", "/api/v1/auth/keys"),
        ("POST", "/api/v1/cluster/join"),
        ("PUT", "/api/v1/collections/acme-probe"),
        ("PATCH", "/api/v1/collections/acme-docs"),
        ("PATCH", "/api/v1/auth/users/rita"),
    ] {
        let r = call(b, m, p, Some(&ann), Some(json!({"unexpected": [1, 2, 3]})));
        assert_eq!(r.status, 403, "{m} {p}: {}", r.text);
    }
    let r = call(
        b,
        "POST",
        "/api/v1/collections/acme-docs/documents",
        Some(&rita),
        Some(json!({"documents": [{"id": "r", "text": "a reader writing"}]})),
    );
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(
        call(
            b,
            "DELETE",
            "/api/v1/collections/acme-docs/documents/a1",
            Some(&rita),
            None
        )
        .status,
        403
    );
    // retrying a document is a write: a reader is refused, and another tenant's collection
    // reads as missing
    for (who, path, status) in [
        (
            &rita,
            "/api/v1/collections/acme-docs/documents/a1/retry",
            403,
        ),
        (
            &ann,
            "/api/v1/collections/globex-docs/documents/g1/retry",
            404,
        ),
    ] {
        let r = call(b, "POST", path, Some(who), None);
        assert_eq!(r.status, status, "{path}: {}", r.text);
    }
    assert_eq!(search(&rita, "acme-docs").status, 200);
    let emb = call(
        b,
        "POST",
        "/v1/embeddings",
        Some(&rita),
        Some(json!({"input": "hello"})),
    );
    assert_eq!(emb.status, 200, "{}", emb.text);
    // a reader cannot raise itself; a user may change only its own password
    let r = call(
        b,
        "PATCH",
        "/api/v1/auth/users/rita",
        Some(&rita),
        Some(json!({"role": "admin"})),
    );
    assert_eq!(r.status, 403, "{}", r.text);
    let r = call(
        b,
        "PATCH",
        "/api/v1/auth/users/ann",
        Some(&rita),
        Some(json!({"password": "taken-over-1"})),
    );
    assert_eq!(r.status, 403, "{}", r.text);

    // ---- forged and broken tokens
    let parts: Vec<&str> = ann.split('.').collect();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap(),
    )
    .unwrap();
    // alg none, unsigned
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        parts[1]
    );
    assert_eq!(search(&none, "acme-docs").status, 401);
    // tampered claims: ann's signature over gus's name
    let mut as_gus = claims.clone();
    as_gus["sub"] = json!("gus");
    let tampered = format!("{}.{}.{}", parts[0], b64(&as_gus), parts[2]);
    assert_eq!(search(&tampered, "globex-docs").status, 401);
    // a longer life by editing exp
    let mut longer = claims.clone();
    longer["exp"] = json!(now_s() + 10 * 365 * 86400);
    assert_eq!(
        search(
            &format!("{}.{}.{}", parts[0], b64(&longer), parts[2]),
            "acme-docs"
        )
        .status,
        401
    );
    // the right claims signed with a wrong key
    let wrong_key = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(b"a-guessed-secret-of-32-bytes-or-more"),
    )
    .unwrap();
    assert_eq!(search(&wrong_key, "acme-docs").status, 401);
    // key confusion: HS256 keyed with the provider's public key, claiming admin
    let idp_claims = |role: &str, exp: u64, nbf: u64| json!({"sub": "svc", "iss": "https://idp.example", "aud": "shoal", "role": role, "collections": ["acme-*"], "exp": exp, "nbf": nbf, "iat": nbf});
    let public = std::fs::read(fixture("rsa-public.pem")).unwrap();
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &idp_claims("admin", now_s() + 600, now_s()),
        &EncodingKey::from_secret(&public),
    )
    .unwrap();
    let r = call(b, "GET", "/api/v1/auth/users", Some(&confused), None);
    assert_eq!(r.status, 401, "{}", r.text);

    // ---- an outside identity provider: RS256 and EdDSA, its role and grants
    let now = now_s();
    let rs = idp_token(
        Algorithm::RS256,
        "rsa-private.pem",
        idp_claims("reader", now + 600, now),
    );
    assert_eq!(search(&rs, "acme-docs").status, 200);
    assert_eq!(search(&rs, "globex-docs").status, 404);
    assert_eq!(
        call(
            b,
            "POST",
            "/api/v1/collections/acme-docs/documents",
            Some(&rs),
            Some(json!({"documents": [{"id": "x", "text": "y"}]}))
        )
        .status,
        403
    );
    let ed = idp_token(
        Algorithm::EdDSA,
        "ed25519-private.pem",
        idp_claims("writer", now + 600, now),
    );
    assert_eq!(search(&ed, "acme-docs").status, 200);
    // expired, not yet valid, signed by a key the node does not trust, wrong issuer or audience
    let expired = idp_token(
        Algorithm::RS256,
        "rsa-private.pem",
        idp_claims("reader", now - 120, now - 600),
    );
    let r = search(&expired, "acme-docs");
    assert_eq!(r.status, 401);
    assert!(r.text.contains("expired"), "{}", r.text);
    let early = idp_token(
        Algorithm::RS256,
        "rsa-private.pem",
        idp_claims("reader", now + 7200, now + 3600),
    );
    let r = search(&early, "acme-docs");
    assert_eq!(r.status, 401);
    assert!(r.text.contains("not valid yet"), "{}", r.text);
    let untrusted = idp_token(
        Algorithm::RS256,
        "other-rsa-private.pem",
        idp_claims("admin", now + 600, now),
    );
    assert_eq!(
        call(b, "GET", "/api/v1/auth/users", Some(&untrusted), None).status,
        401
    );
    let mut other_iss = idp_claims("reader", now + 600, now);
    other_iss["iss"] = json!("https://evil.example");
    assert_eq!(
        search(
            &idp_token(Algorithm::RS256, "rsa-private.pem", other_iss),
            "acme-docs"
        )
        .status,
        401
    );
    let mut other_aud = idp_claims("reader", now + 600, now);
    other_aud["aud"] = json!("someone-else");
    assert_eq!(
        search(
            &idp_token(Algorithm::RS256, "rsa-private.pem", other_aud),
            "acme-docs"
        )
        .status,
        401
    );

    // ---- revocation: a deleted user's token, a changed password, a re-created name
    assert_eq!(user("temp", "writer", json!(["acme-*"])).status, 201);
    let temp = token_for(b, "temp", "temp-password-1");
    assert_eq!(search(&temp, "acme-docs").status, 200);
    assert_eq!(
        call(b, "DELETE", "/api/v1/auth/users/temp", admin, None).status,
        200
    );
    assert_eq!(search(&temp, "acme-docs").status, 401);
    assert_eq!(user("temp", "writer", json!(["acme-*"])).status, 201);
    assert_eq!(
        search(&temp, "acme-docs").status,
        401,
        "a token of the user's earlier self"
    );
    let r = call(
        b,
        "PATCH",
        "/api/v1/auth/users/ann",
        Some(&ann),
        Some(json!({"password": "ann-password-2"})),
    );
    assert_eq!(
        r.status, 400,
        "the current password is required: {}",
        r.text
    );
    let r = call(
        b,
        "PATCH",
        "/api/v1/auth/users/ann",
        Some(&ann),
        Some(json!({"password": "ann-password-2", "current_password": "not-it-at-all"})),
    );
    assert_eq!(r.status, 403, "{}", r.text);
    let r = call(
        b,
        "PATCH",
        "/api/v1/auth/users/ann",
        Some(&ann),
        Some(json!({"password": "ann-password-2", "current_password": "ann-password-1"})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        search(&ann, "acme-docs").status,
        401,
        "a token from before the password change"
    );
    let ann = token_for(b, "ann", "ann-password-2");
    assert_eq!(search(&ann, "acme-docs").status, 200);
    // the grants are read at each request: narrowing them takes effect at once
    let r = call(
        b,
        "PATCH",
        "/api/v1/auth/users/ann",
        admin,
        Some(json!({"collections": ["globex-docs"]})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(search(&ann, "acme-docs").status, 404);
    assert_eq!(search(&ann, "globex-docs").status, 200);

    // ---- API keys: shown once, scoped, revocable
    let made = call(
        b,
        "POST",
        "/api/v1/auth/keys",
        admin,
        Some(json!({"name": "search service", "role": "reader", "collections": ["acme-docs"]})),
    );
    assert_eq!(made.status, 201, "{}", made.text);
    let key = made.body["key"].as_str().unwrap().to_string();
    let id = made.body["id"].as_str().unwrap().to_string();
    assert!(key.starts_with("shoal_"), "{key}");
    let listed = call(b, "GET", "/api/v1/auth/keys", admin, None);
    assert!(
        listed.text.contains(&id) && !listed.text.contains(&key),
        "{}",
        listed.text
    );
    assert_eq!(search(&key, "acme-docs").status, 200);
    assert_eq!(search(&key, "globex-docs").status, 404);
    let mut off_by_one = key.clone();
    let last = off_by_one.pop().unwrap();
    off_by_one.push(if last == 'a' { 'b' } else { 'a' });
    assert_eq!(search(&off_by_one, "acme-docs").status, 401);
    let expiring = call(
        b,
        "POST",
        "/api/v1/auth/keys",
        admin,
        Some(json!({"name": "brief", "role": "reader", "collections": ["*"], "expires_in_s": 1})),
    );
    let brief = expiring.body["key"].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(10), "the brief key to expire", || {
        search(&brief, "acme-docs").status == 401
    });
    assert_eq!(
        call(b, "DELETE", &format!("/api/v1/auth/keys/{id}"), admin, None).status,
        200
    );
    assert_eq!(search(&key, "acme-docs").status, 401);
    assert_eq!(
        call(b, "DELETE", &format!("/api/v1/auth/keys/{id}"), admin, None).status,
        404
    );

    // ---- nothing planted anywhere by the refused writes
    let acme = call(b, "GET", "/api/v1/collections/acme-docs", admin, None);
    assert_eq!(acme.body["documents"], 2, "{}", acme.text);
    let globex = call(b, "GET", "/api/v1/collections/globex-docs", admin, None);
    assert_eq!(globex.body["documents"], 1, "{}", globex.text);

    // ---- brute force: three failures lock the user (six the address) for the window
    for _ in 0..3 {
        let r = call(
            b,
            "POST",
            "/api/v1/auth/token",
            None,
            Some(json!({"username": "gus", "password": "guess-guess-1"})),
        );
        assert_eq!(r.status, 401);
    }
    let r = call(
        b,
        "POST",
        "/api/v1/auth/token",
        None,
        Some(json!({"username": "gus", "password": "gus-password-1"})),
    );
    assert_eq!(
        r.status, 429,
        "the right password is refused while locked: {}",
        r.text
    );
    assert!(
        r.retry_after.is_some_and(|s| s > 0 && s <= 120),
        "{:?}",
        r.retry_after
    );
    // another user from the same address may still sign in...
    assert!(!token_for(b, "rita", "rita-password-1").is_empty());
    // ...until the address has failed six times (2 earlier, 3 for gus, this one)
    let r = call(
        b,
        "POST",
        "/api/v1/auth/token",
        None,
        Some(json!({"username": "mallory", "password": "guess-guess-1"})),
    );
    assert_eq!(r.status, 401);
    let r = call(
        b,
        "POST",
        "/api/v1/auth/token",
        None,
        Some(json!({"username": "rita", "password": "rita-password-1"})),
    );
    assert_eq!(r.status, 429, "the address is locked too: {}", r.text);
    // tokens already issued go on working
    assert_eq!(search(&gus, "globex-docs").status, 200);
}

#[test]
fn the_first_start_prints_an_admin_password_and_a_token_works_on_every_node() {
    // no admin key: the first leader makes the admin user and prints its password once
    let c = Cluster::start(3, 0, &[("SHOAL_AUTH__ENABLED", "true")]);
    let leader = c.leader(Duration::from_secs(30));
    let password = {
        let mut found = None;
        wait_until(
            Duration::from_secs(30),
            "the admin password on standard output",
            || {
                found = c.nodes.iter().flat_map(|n| n.stdout_lines()).find_map(|l| {
                    l.strip_prefix("shoal: made the admin user `admin` with password ")
                        .and_then(|rest| rest.split_whitespace().next())
                        .map(str::to_owned)
                });
                found.is_some()
            },
        );
        found.unwrap()
    };
    // printed by one node, once
    let printed: usize = c
        .nodes
        .iter()
        .map(|n| {
            n.stdout_lines()
                .iter()
                .filter(|l| l.contains("with password"))
                .count()
        })
        .sum();
    assert_eq!(printed, 1);
    let bases: Vec<String> = c.nodes.iter().map(|n| n.base.clone()).collect();
    let token = token_for(&bases[leader], "admin", &password);
    // a user made through one node signs in on another, and its token works on a third
    let r = call(
        &bases[1],
        "POST",
        "/api/v1/auth/users",
        Some(&token),
        Some(
            json!({"username": "ops", "password": "ops-password-1", "role": "reader", "collections": ["*"]}),
        ),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let mut ops = None;
    wait_until(Duration::from_secs(20), "the new user on node 3", || {
        let r = call(
            &bases[2],
            "POST",
            "/api/v1/auth/token",
            None,
            Some(json!({"username": "ops", "password": "ops-password-1"})),
        );
        ops = r.body["access_token"].as_str().map(str::to_owned);
        ops.is_some()
    });
    let ops = ops.unwrap();
    for base in &bases {
        let r = call(base, "GET", "/api/v1/auth/me", Some(&ops), None);
        assert_eq!(r.status, 200, "{base}: {}", r.text);
        assert_eq!(
            call(base, "GET", "/api/v1/collections", Some(&token), None).status,
            200
        );
        assert_eq!(
            call(base, "GET", "/api/v1/collections", None, None).status,
            401
        );
    }
    // the last admin cannot be removed
    let r = call(
        &bases[0],
        "DELETE",
        "/api/v1/auth/users/admin",
        Some(&token),
        None,
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("last admin"), "{}", r.text);
}

#[test]
fn with_auth_off_and_a_cluster_secret_collections_are_open_but_credentials_and_the_cluster_are_not()
{
    let node = Node::start(
        &[
            ("SHOAL_CLUSTER__SECRET", shoal_tests::cluster::SECRET),
            ("SHOAL_CLUSTER__BOOTSTRAP", "true"),
        ],
        &["--insecure-no-auth"],
    );
    let b = node.base.as_str();
    assert_eq!(
        call(b, "PUT", "/api/v1/collections/open", None, None).status,
        201
    );
    let key = json!({"name": "k", "role": "admin"});
    let user = json!({"username": "x", "role": "admin", "password": "xxxxxxxxxx"});
    for (m, p, body) in [
        ("POST", "/api/v1/auth/keys", Some(key)),
        ("GET", "/api/v1/auth/users", None),
        ("POST", "/api/v1/auth/users", Some(user)),
        ("GET", "/api/v1/cluster", None),
        ("GET", "/api/v1/admin/digest", None),
    ] {
        let r = call(b, m, p, None, body);
        assert_eq!(r.status, 401, "{m} {p}: {}", r.text);
    }
}

#[test]
fn with_auth_off_anyone_reads_and_writes() {
    let node = Node::start(&[], &["--insecure-no-auth"]);
    let r = call(&node.base, "PUT", "/api/v1/collections/open", None, None);
    assert_eq!(r.status, 201, "{}", r.text);
    let r = call(&node.base, "GET", "/api/v1/auth/me", None, None);
    assert_eq!(r.body["credential"], "none", "{}", r.text);
    let r = call(
        &node.base,
        "POST",
        "/api/v1/auth/token",
        None,
        Some(json!({"username": "a", "password": "bbbbbbbb"})),
    );
    assert_eq!(r.status, 400, "{}", r.text);
}

/// Every route of the API description (which a unit test of `shoal-api` proves equal to the
/// router's routes), called with no credential in each of its methods: 401, never an answer.
/// A route moved out of the authenticated part fails this test.
#[test]
fn no_route_answers_without_a_credential() {
    let node = Node::start(&[], &[]);
    let spec = call(&node.base, "GET", "/api/openapi.json", None, None);
    assert_eq!(spec.status, 200, "{}", spec.text);
    let open = [
        "/api/health",
        "/health",
        "/api/ready",
        "/metrics",
        "/api/v1/auth/token",
    ];
    let paths = spec.body["paths"].as_object().unwrap();
    assert!(paths.len() > 30, "{}", paths.len());
    let mut checked = 0;
    for (path, item) in paths.iter().filter(|(p, _)| !open.contains(&p.as_str())) {
        let concrete = path.replace("{name}", "acme-docs").replace("{id}", "1");
        for m in item.as_object().unwrap().keys() {
            let m = m.to_uppercase();
            let r = call(&node.base, &m, &concrete, None, Some(json!({})));
            assert_eq!(
                r.status, 401,
                "{m} {concrete} without a credential: {}",
                r.text
            );
            checked += 1;
        }
    }
    // the open routes answer without one (metrics unless auth.protect_metrics)
    for path in [
        "/api/health",
        "/health",
        "/api/ready",
        "/metrics",
        "/api/docs",
    ] {
        assert_eq!(
            call(&node.base, "GET", path, None, None).status,
            200,
            "{path}"
        );
    }
    assert!(checked > 35, "{checked}");
}

#[test]
fn own_tokens_expire_sign_ins_in_parallel_are_counted_and_metrics_can_be_protected() {
    let node = Node::start(
        &[
            ("SHOAL_AUTH__TOKEN_TTL_S", "1"),
            ("SHOAL_AUTH__LEEWAY_S", "0"),
            ("SHOAL_AUTH__PROTECT_METRICS", "true"),
        ],
        &[],
    );
    let b = node.base.as_str();
    let admin = Some(ADMIN_KEY);
    for name in ["eve", "victim"] {
        let r = call(
            b,
            "POST",
            "/api/v1/auth/users",
            admin,
            Some(
                json!({"username": name, "password": format!("{name}-password-1"), "role": "reader", "collections": ["*"]}),
            ),
        );
        assert_eq!(r.status, 201, "{}", r.text);
    }
    // a token of one second: works, then is refused as expired
    let token = token_for(b, "eve", "eve-password-1");
    assert_eq!(
        call(b, "GET", "/api/v1/auth/me", Some(&token), None).status,
        200
    );
    wait_until(Duration::from_secs(10), "the token to expire", || {
        let r = call(b, "GET", "/api/v1/auth/me", Some(&token), None);
        r.status == 401 && r.text.contains("expired")
    });
    // 16 guesses at once: only the 5 tries a user has are checked, the rest are refused
    let guesses: Vec<_> = (0..16)
        .map(|i| {
            let base = node.base.clone();
            std::thread::spawn(move || {
                call(
                    &base,
                    "POST",
                    "/api/v1/auth/token",
                    None,
                    Some(json!({"username": "victim", "password": format!("guess-{i}-guess")})),
                )
                .status
            })
        })
        .collect();
    let statuses: Vec<u16> = guesses.into_iter().map(|g| g.join().unwrap()).collect();
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert!(checked <= 5, "{checked} guesses checked: {statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    // metrics need an admin credential here
    assert_eq!(call(b, "GET", "/metrics", None, None).status, 401);
    let t = token_for(b, "eve", "eve-password-1");
    assert_eq!(call(b, "GET", "/metrics", Some(&t), None).status, 403);
    assert_eq!(call(b, "GET", "/metrics", admin, None).status, 200);
}
