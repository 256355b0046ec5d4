//! The OpenAPI description against the node's real answers: `/api/openapi.json` and `/api/docs`
//! are served without a credential, and the JSON each route answers (successes and errors) has
//! the shape its description gives: every required field there, no field the schema does not
//! name, each of the type it says. A DTO that changes without its description fails here.

use serde_json::{json, Value};
use shoal_tests::{Node, Resp};

/// What is wrong with `value` against `schema` (empty: nothing).
fn check(spec: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or_default();
        let target = &spec["components"]["schemas"][name];
        assert!(!target.is_null(), "{at}: unknown schema {r}");
        return check(spec, target, value, at, errors);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema.get(key).and_then(Value::as_array) {
            let fits = options.iter().any(|o| {
                let mut e = Vec::new();
                check(spec, o, value, at, &mut e);
                e.is_empty()
            });
            if !fits {
                errors.push(format!("{at}: {value} fits none of {key} {schema}"));
            }
            return;
        }
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        // one object made of all the parts (what `#[serde(flatten)]` gives)
        let mut merged = json!({"type": "object", "properties": {}, "required": []});
        for part in all {
            let part = match part.get("$ref").and_then(Value::as_str) {
                Some(r) => &spec["components"]["schemas"][r.rsplit('/').next().unwrap_or_default()],
                None => part,
            };
            if let Some(props) = part.get("properties").and_then(Value::as_object) {
                for (k, v) in props {
                    merged["properties"][k] = v.clone();
                }
            }
            if let Some(req) = part.get("required").and_then(Value::as_array) {
                merged["required"]
                    .as_array_mut()
                    .unwrap()
                    .extend(req.iter().cloned());
            }
        }
        return check(spec, &merged, value, at, errors);
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let actual = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let type_ok = types.is_empty()
        || types.contains(&actual)
        || (actual == "integer" && types.contains(&"number"));
    if !type_ok {
        errors.push(format!("{at}: {actual} where the schema says {types:?}"));
        return;
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            errors.push(format!("{at}: {value} is not one of {options:?}"));
        }
    }
    match value {
        Value::Object(fields) => {
            let props = schema.get("properties").and_then(Value::as_object);
            for r in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let r = r.as_str().unwrap_or_default();
                if !fields.contains_key(r) {
                    errors.push(format!("{at}: required `{r}` is missing"));
                }
            }
            let extra = schema.get("additionalProperties");
            for (k, v) in fields {
                match props.and_then(|p| p.get(k)) {
                    Some(s) => check(spec, s, v, &format!("{at}.{k}"), errors),
                    None => match extra {
                        Some(Value::Object(s)) => check(
                            spec,
                            &Value::Object(s.clone()),
                            v,
                            &format!("{at}.{k}"),
                            errors,
                        ),
                        Some(Value::Bool(true)) => {}
                        // a schema without properties at all is any object
                        _ if props.is_none() => {}
                        _ => errors.push(format!("{at}: `{k}` is not in the schema")),
                    },
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    check(spec, s, v, &format!("{at}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

/// Check an answer against the description of `method path` for its status.
fn conforms(spec: &Value, method: &str, path: &str, r: &Resp) {
    let op = &spec["paths"][path][method];
    assert!(!op.is_null(), "{method} {path} is not in the spec");
    let resp = &op["responses"][r.status.to_string()];
    assert!(
        !resp.is_null(),
        "{method} {path}: status {} is not described: {}",
        r.status,
        r.text
    );
    let schema = &resp["content"]["application/json"]["schema"];
    assert!(
        !schema.is_null(),
        "{method} {path} {}: no JSON schema",
        r.status
    );
    let mut errors = Vec::new();
    check(spec, schema, &r.body, "$", &mut errors);
    assert!(
        errors.is_empty(),
        "{method} {path} {}: {errors:#?}\n{}",
        r.status,
        r.text
    );
}

#[test]
fn every_answer_has_the_shape_the_spec_describes() {
    let node = Node::start(&[], &[]);
    let http = reqwest::blocking::Client::new();
    let spec: Value = http
        .get(format!("{}/api/openapi.json", node.base))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(spec["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    let docs = http.get(format!("{}/api/docs", node.base)).send().unwrap();
    assert_eq!(docs.status().as_u16(), 200);
    assert!(docs.text().unwrap().contains("/api/openapi.json"));

    let c = "/api/v1/collections/{name}";
    conforms(&spec, "get", "/api/health", &node.get("/api/health"));
    conforms(&spec, "get", "/api/ready", &node.get("/api/ready"));
    conforms(
        &spec,
        "put",
        c,
        &node.request("PUT", "/api/v1/collections/wiki", None),
    );
    conforms(
        &spec,
        "put",
        c,
        &node.request("PUT", "/api/v1/collections/wiki", None),
    ); // 409
    conforms(
        &spec,
        "put",
        c,
        &node.request("PUT", "/api/v1/collections/bad%20name", None),
    ); // 400
    let add = node.post(
        "/api/v1/collections/wiki/documents",
        json!({"documents": [
            {"id": "eiffel", "text": "The Eiffel Tower is a wrought-iron lattice tower in Paris.", "metadata": {"year": 1889}},
            {"id": "photo", "text": "Photosynthesis lets plants turn light into chemical energy."}]}),
    );
    conforms(&spec, "post", &format!("{c}/documents"), &add);
    let job = node.wait_job(add.body["job_id"].as_str().unwrap());
    assert_eq!(job["state"], "completed");
    let job_path = format!("/api/v1/jobs/{}", add.body["job_id"].as_str().unwrap());
    conforms(&spec, "get", "/api/v1/jobs/{id}", &node.get(&job_path));
    conforms(
        &spec,
        "get",
        "/api/v1/jobs/{id}",
        &node.get("/api/v1/jobs/nope"),
    );
    conforms(&spec, "get", "/api/v1/jobs", &node.get("/api/v1/jobs"));
    conforms(
        &spec,
        "get",
        "/api/v1/collections",
        &node.get("/api/v1/collections"),
    );
    conforms(&spec, "get", c, &node.get("/api/v1/collections/wiki"));
    for (body, status) in [
        (json!({"quantization": "int8"}), 200),
        (json!({"quantization": "none"}), 200),
        (json!({}), 400),
    ] {
        let r = node.request("PATCH", "/api/v1/collections/wiki", Some(&body));
        assert_eq!(r.status, status, "{}", r.text);
        conforms(&spec, "patch", c, &r);
    }
    conforms(
        &spec,
        "get",
        &format!("{c}/documents"),
        &node.get("/api/v1/collections/wiki/documents?limit=1"),
    );
    let doc = "/api/v1/collections/{name}/documents/{id}";
    conforms(
        &spec,
        "get",
        doc,
        &node.get("/api/v1/collections/wiki/documents/eiffel"),
    );
    conforms(
        &spec,
        "get",
        doc,
        &node.get("/api/v1/collections/wiki/documents/none"),
    );
    let search = format!("{c}/search");
    conforms(&spec, "post", &search, &node.search("wiki", json!({"query": "tower in Paris", "top_k": 2, "filter": {"metadata": {"year": {"gte": 1800}}}})));
    conforms(
        &spec,
        "post",
        &search,
        &node.search("wiki", json!({"query": "x", "top_k": 0})),
    );
    conforms(
        &spec,
        "post",
        &search,
        &node.search("missing", json!({"query": "x"})),
    );
    conforms(
        &spec,
        "post",
        "/v1/embeddings",
        &node.post("/v1/embeddings", json!({"input": ["a", "b"]})),
    );
    conforms(
        &spec,
        "get",
        "/api/v1/auth/me",
        &node.get("/api/v1/auth/me"),
    );
    conforms(
        &spec,
        "post",
        "/api/v1/auth/users",
        &node.post("/api/v1/auth/users", json!({"username": "ann", "password": "ann-password-1", "role": "reader", "collections": ["wiki"]})),
    );
    conforms(
        &spec,
        "get",
        "/api/v1/auth/users",
        &node.get("/api/v1/auth/users"),
    );
    conforms(
        &spec,
        "patch",
        "/api/v1/auth/users/{name}",
        &node.request(
            "PATCH",
            "/api/v1/auth/users/ann",
            Some(&json!({"collections": ["*"]})),
        ),
    );
    let token = reqwest::blocking::Client::new()
        .post(format!("{}/api/v1/auth/token", node.base))
        .json(&json!({"username": "ann", "password": "ann-password-1"}))
        .send()
        .unwrap();
    assert_eq!(token.status().as_u16(), 200);
    let token: Value = token.json().unwrap();
    let mut errors = Vec::new();
    let schema = &spec["paths"]["/api/v1/auth/token"]["post"]["responses"]["200"]["content"]
        ["application/json"]["schema"];
    check(&spec, schema, &token, "$", &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    conforms(
        &spec,
        "post",
        "/api/v1/auth/keys",
        &node.post(
            "/api/v1/auth/keys",
            json!({"name": "svc", "role": "reader"}),
        ),
    );
    conforms(
        &spec,
        "get",
        "/api/v1/auth/keys",
        &node.get("/api/v1/auth/keys"),
    );
    conforms(
        &spec,
        "get",
        "/api/v1/admin/actors",
        &node.get("/api/v1/admin/actors"),
    );
    conforms(
        &spec,
        "delete",
        doc,
        &node.request("DELETE", "/api/v1/collections/wiki/documents/photo", None),
    );
    conforms(
        &spec,
        "delete",
        c,
        &node.request("DELETE", "/api/v1/collections/wiki", None),
    );
}
