//! The router: every route of the API, and the layers around them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, MatchedPath, Path, Request, State,
};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::auth::{validate_grant, validate_user_name, Credentials, Principal};
use crate::dto::*;
use crate::extract::{validate_collection_name, validate_document_id, ApiJson, JsonBody};
use crate::{ApiError, ApiErrorBody, ShoalService};

/// Limits enforced by the router itself.
#[derive(Debug, Clone, Copy)]
pub struct RouterLimits {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Longest a request may take before it is answered 504.
    pub request_timeout: Duration,
}

/// Build the HTTP API around a service.
///
/// | route | handler |
/// |---|---|
/// | `GET /api/health` | liveness |
/// | `GET /api/ready` | readiness (503 until ready) |
/// | `GET /metrics` | Prometheus text |
/// | `GET /api/openapi.json`, `GET /api/docs` | the OpenAPI description, and a page that reads it |
/// | `GET /ui` | the web console (static files; it works through this API) |
/// | `POST /api/v1/collections/{name}/documents/{id}/retry` | ingest a failed document again |
/// | `GET /api/v1/collections` | list collections |
/// | `PUT, GET, DELETE /api/v1/collections/{name}` | create, show, drop a collection |
/// | `POST /api/v1/collections/{name}/documents` | accept documents for ingest (202 + job) |
/// | `GET, DELETE /api/v1/collections/{name}/documents/{id}` | show, delete a document |
/// | `POST /api/v1/collections/{name}/search` | search by text or vector |
/// | `GET /api/v1/collections/{name}/documents` | a page of documents with their state |
/// | `GET /api/v1/jobs` | jobs, newest first, by state and collection |
/// | `GET /api/v1/jobs/{id}` | ingest job progress |
/// | `GET /api/v1/analytics/searches` | searches per second, latency, errors, empty results (admin) |
/// | `POST /api/v1/auth/token` | sign in with a password: a short-lived token |
/// | `GET /api/v1/auth/me` | who the caller is |
/// | `GET, POST /api/v1/auth/users` | list, create users (admin) |
/// | `PATCH, DELETE /api/v1/auth/users/{name}` | change, delete a user (admin; a user may change their own password) |
/// | `GET, POST /api/v1/auth/keys` | list, make API keys (admin) |
/// | `DELETE /api/v1/auth/keys/{id}` | revoke an API key (admin) |
/// | `POST /v1/embeddings` | OpenAI-style embeddings |
/// | `POST /v1/rerank`, `POST /rerank` | Cohere- (v1) or TEI-style reranking |
/// | `POST /v2/rerank` | Cohere v2 reranking (`ClientV2`) |
/// | `POST /embed`, `POST /`, `POST /similarity` | TEI-style embeddings and sentence similarity |
/// | `GET /api/v1/admin/actors` | supervised actors and their restarts |
/// | `POST /api/v1/admin/actors/{name}/panic` | fault injection (when enabled) |
/// | `GET /api/v1/admin/digest` | digest of the node's store (replicas compare equal) |
/// | `GET /api/v1/admin/snapshot` | a consistent snapshot of the node's state (a backup) |
/// | `PUT /api/v1/admin/faults/links` | fault injection: cut links to other nodes |
/// | `POST /api/v1/admin/faults/storage` | fault injection: fail the next store write (the node stops) |
/// | `GET /api/v1/cluster` | members, roles, leader, term, indexes, lag |
/// | `POST /api/v1/cluster/init` | make this node a new one-member cluster |
/// | `POST /api/v1/cluster/join` | make this node join another's cluster |
/// | `POST /api/v1/cluster/nodes/{id}/promote` | learner to voter |
/// | `DELETE /api/v1/cluster/nodes/{id}` | remove a node |
///
/// Every route but health, readiness, metrics and sign-in needs a credential
/// ([`ShoalService::authenticate`]); unknown routes answer 404 without one.
pub fn router<S: ShoalService>(service: Arc<S>, limits: RouterLimits) -> Router {
    let open = Router::new()
        .route("/api/health", get(health::<S>))
        // the path load balancers and the replaced stack's probes use
        .route("/health", get(health::<S>))
        .route("/api/ready", get(ready::<S>))
        .route("/metrics", get(metrics::<S>))
        .route("/api/v1/auth/token", post(issue_token::<S>))
        .route("/api/openapi.json", get(openapi_spec))
        .route("/api/docs", get(api_docs))
        // the web console: static files only (what it shows comes from the API, with the
        // credential its user signs in with)
        .route("/ui", get(console_page))
        .route("/ui/", get(console_page))
        .route("/ui/app.js", get(console_script))
        .route("/ui/style.css", get(console_style));
    let protected = Router::new()
        .route("/api/v1/auth/me", get(who_am_i))
        .route(
            "/api/v1/auth/users",
            get(list_users::<S>).post(create_user::<S>),
        )
        .route(
            "/api/v1/auth/users/{name}",
            axum::routing::patch(update_user::<S>).delete(delete_user::<S>),
        )
        .route(
            "/api/v1/auth/keys",
            get(list_api_keys::<S>).post(create_api_key::<S>),
        )
        .route("/api/v1/auth/keys/{id}", delete(revoke_api_key::<S>))
        .route("/api/v1/collections", get(list_collections::<S>))
        .route(
            "/api/v1/collections/{name}",
            put(create_collection::<S>)
                .get(get_collection::<S>)
                .patch(update_collection::<S>)
                .delete(delete_collection::<S>),
        )
        .route(
            "/api/v1/collections/{name}/documents",
            post(add_documents::<S>).get(list_documents::<S>),
        )
        .route(
            "/api/v1/collections/{name}/documents/{id}",
            get(get_document::<S>).delete(delete_document::<S>),
        )
        .route(
            "/api/v1/collections/{name}/documents/{id}/retry",
            post(retry_document::<S>),
        )
        .route("/api/v1/collections/{name}/search", post(search::<S>))
        .route("/api/v1/jobs", get(list_jobs::<S>))
        .route("/api/v1/analytics/searches", get(search_analytics::<S>))
        .route("/api/v1/jobs/{id}", get(get_job::<S>))
        .route("/v1/embeddings", post(embeddings::<S>))
        .route("/v1/rerank", post(rerank_v1::<S>))
        .route("/v2/rerank", post(rerank_v2::<S>))
        // Text Embeddings Inference's routes (its clients, huggingface_hub's InferenceClient
        // among them, post to the root)
        .route("/embed", post(tei_embed::<S>))
        .route("/", post(tei_embed::<S>))
        .route("/similarity", post(tei_embed::<S>))
        .route("/rerank", post(rerank_v1::<S>))
        .route("/api/v1/admin/actors", get(list_actors::<S>))
        .route("/api/v1/admin/actors/{name}/panic", post(inject_panic::<S>))
        .route("/api/v1/admin/digest", get(store_digest::<S>))
        .route("/api/v1/admin/faults/links", put(cut_links::<S>))
        .route("/api/v1/admin/faults/storage", post(fail_storage::<S>))
        .route("/api/v1/cluster", get(cluster_status::<S>))
        .route("/api/v1/cluster/init", post(cluster_init::<S>))
        .route("/api/v1/cluster/join", post(cluster_join::<S>))
        .route(
            "/api/v1/cluster/nodes/{id}/promote",
            post(cluster_promote::<S>),
        )
        .route("/api/v1/cluster/nodes/{id}", delete(cluster_remove::<S>))
        .route_layer(middleware::from_fn_with_state(
            service.clone(),
            authenticate::<S>,
        ));
    let api = open
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(Extension(limits))
        .layer(middleware::from_fn_with_state(
            limits.request_timeout,
            timeout,
        ))
        .layer(middleware::from_fn_with_state(service.clone(), record::<S>));
    // A backup takes as long as writing the state takes (cluster.backup_timeout_ms bounds it),
    // not server.request_timeout_ms.
    let api = api.merge(
        Router::new()
            .route("/api/v1/admin/snapshot", get(snapshot::<S>))
            .route_layer(middleware::from_fn_with_state(
                service.clone(),
                authenticate::<S>,
            ))
            .layer(middleware::from_fn_with_state(service.clone(), record::<S>)),
    );

    api.with_state(service)
        .layer(
            TraceLayer::new_for_http()
                // 5xx answers are logged where they are made; a 503 from /api/ready is normal.
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG))
                .make_span_with(|req: &Request| {
                let id = req
                    .extensions()
                    .get::<RequestId>()
                    .and_then(|id| id.header_value().to_str().ok())
                    .unwrap_or("-")
                    .to_owned();
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

async fn timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::Timeout(format!("request took longer than {} ms", limit.as_millis()))
            .into_response(),
    }
}

async fn record<S: ShoalService>(
    State(service): State<Arc<S>>,
    req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    // counted off however the request ends, its future dropped included
    service.requests_in_flight(&method, &route, 1);
    let in_flight = InFlight {
        service: service.clone(),
        method: method.clone(),
        route: route.clone(),
    };
    let resp = next.run(req).await;
    drop(in_flight);
    service.record_request(
        &method,
        &route,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}

/// A request's place in the gauge of requests in flight.
struct InFlight<S: ShoalService> {
    service: Arc<S>,
    method: String,
    route: String,
}

impl<S: ShoalService> Drop for InFlight<S> {
    fn drop(&mut self) {
        self.service
            .requests_in_flight(&self.method, &self.route, -1);
    }
}

async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        req.method(),
        req.uri().path()
    ))
}

async fn openapi_spec() -> Response {
    static SPEC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        SPEC.get_or_init(openapi_json).clone(),
    )
        .into_response()
}

async fn api_docs() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("docs.html"))
}

/// A file of the console, with headers that keep it from being framed or running other code.
fn console_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

async fn console_page() -> Response {
    console_file("text/html; charset=utf-8", include_str!("ui/index.html"))
}

async fn console_script() -> Response {
    console_file("text/javascript; charset=utf-8", include_str!("ui/app.js"))
}

async fn console_style() -> Response {
    console_file("text/css; charset=utf-8", include_str!("ui/style.css"))
}

#[utoipa::path(
    get,
    path = "/api/health",
    tag = "health",
    responses((status = 200, description = "the process is alive", body = HealthResponse))
)]
async fn health<S: ShoalService>(State(s): State<Arc<S>>) -> Json<HealthResponse> {
    Json(s.health().await)
}

#[utoipa::path(
    get,
    path = "/api/ready",
    tag = "health",
    responses((status = 200, description = "ready", body = ReadyResponse), (status = 503, description = "not ready; `reasons` say why", body = ReadyResponse))
)]
async fn ready<S: ShoalService>(State(s): State<Arc<S>>) -> Response {
    let r = s.ready().await;
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(r)).into_response()
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String))
)]
async fn metrics<S: ShoalService>(
    State(s): State<Arc<S>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    s.authorize_metrics(credentials(&headers)).await?;
    let body = s.metrics().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        body,
    )
        .into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/collections",
    tag = "collections",
    responses((status = 200, description = "the collections the caller may see", body = CollectionList), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody))
)]
async fn list_collections<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
) -> Result<Json<CollectionList>, ApiError> {
    let mut list = s.list_collections().await?;
    list.collections.retain(|c| p.sees(&c.name));
    Ok(Json(list))
}

#[utoipa::path(
    put,
    path = "/api/v1/collections/{name}",
    tag = "collections",
    request_body = Option<CreateCollectionRequest>,
    params(("name" = String, Path, description = "collection name")),
    responses((status = 201, body = CollectionInfo), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, body = ApiErrorBody), (status = 409, description = "the collection exists", body = ApiErrorBody))
)]
async fn create_collection<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    body: JsonBody<CreateCollectionRequest>,
) -> Result<(StatusCode, Json<CollectionInfo>), ApiError> {
    p.require_admin("creating a collection")?;
    validate_collection_name(&name)?;
    let req = body.parse_or_default()?;
    Ok((
        StatusCode::CREATED,
        Json(s.create_collection(name, req).await?),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/collections/{name}",
    tag = "collections",
    params(("name" = String, Path, description = "collection name")),
    responses((status = 200, body = CollectionInfo), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 404, body = ApiErrorBody))
)]
async fn get_collection<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<CollectionInfo>, ApiError> {
    validate_collection_name(&name)?;
    p.require_read(&name)?;
    Ok(Json(s.get_collection(name).await?))
}

#[utoipa::path(
    patch,
    path = "/api/v1/collections/{name}",
    tag = "collections",
    request_body = UpdateCollectionRequest,
    params(("name" = String, Path, description = "collection name")),
    responses((status = 200, body = CollectionInfo), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody))
)]
async fn update_collection<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    body: JsonBody<UpdateCollectionRequest>,
) -> Result<Json<CollectionInfo>, ApiError> {
    validate_collection_name(&name)?;
    p.require_read(&name)?;
    p.require_admin("changing a collection")?;
    let req = body.parse()?;
    Ok(Json(s.update_collection(name, req).await?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/collections/{name}",
    tag = "collections",
    params(("name" = String, Path, description = "collection name")),
    responses((status = 200, description = "`{deleted, index}`", body = Object), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody))
)]
async fn delete_collection<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    validate_collection_name(&name)?;
    p.require_read(&name)?;
    p.require_admin("dropping a collection")?;
    let index = s.delete_collection(name.clone()).await?;
    Ok(Json(serde_json::json!({ "deleted": name, "index": index })))
}

#[utoipa::path(
    post,
    path = "/api/v1/collections/{name}/documents",
    tag = "documents",
    request_body(content(
        (AddDocumentsRequest = "application/json"),
        (UploadForm = "multipart/form-data")
    )),
    params(("name" = String, Path, description = "collection name")),
    responses((status = 202, description = "accepted: ingest runs in the background", body = AddDocumentsResponse), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody), (status = 413, body = ApiErrorBody), (status = 429, description = "the ingest queue is full (`Retry-After`)", body = ApiErrorBody))
)]
async fn add_documents<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    Extension(limits): Extension<RouterLimits>,
    req: Request,
) -> Result<(StatusCode, Json<AddDocumentsResponse>), ApiError> {
    // what is left of the request's time bounds the upload's extraction
    let deadline = Instant::now() + limits.request_timeout;
    validate_collection_name(&name)?;
    p.require_write(&name)?;
    // Room in the ingest queue first, before the body is read: a full queue answers 429 at once.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A body declared longer than the limit gets no room (never a 429 for a request that no
    // amount of waiting lets through): reading it fails with 413 below.
    // A body declared longer than the limit is refused before any of it is read (an upload of
    // hundreds of MB is not received only to be thrown away).
    if let Some(n) = declared.filter(|n| *n > limits.max_body_bytes as u64) {
        return Err(ApiError::PayloadTooLarge(format!(
            "the body is too large: {n} bytes, the limit is {} bytes (server.max_body_bytes)",
            limits.max_body_bytes
        )));
    }
    let admission = Some(s.admit_documents(declared)?);
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    let req = if multipart {
        // a missing collection is said before the files are read and their text extracted
        s.get_collection(name.clone()).await?;
        let files = read_upload(req).await?;
        let extracted = s.extract_uploads(files, deadline).await?;
        AddDocumentsRequest {
            documents: extracted.documents,
            unreadable: extracted.unreadable,
        }
    } else {
        ApiJson::<AddDocumentsRequest>::from_request(req, &())
            .await?
            .0
    };
    let admission = match admission {
        Some(a) => a,
        None => s.admit_documents(None)?,
    };
    for (i, d) in req.documents.iter().enumerate() {
        validate_document_id(&d.id)
            .map_err(|e| ApiError::BadRequest(format!("documents[{i}]: {e}")))?;
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(s.add_documents(name, req, admission).await?),
    ))
}

/// Files of one upload, and the size of its `metadata` part.
const MAX_UPLOAD_FILES: usize = 1_000;
const MAX_UPLOAD_METADATA_BYTES: usize = 16 * 1024;

/// The files of a `multipart/form-data` upload: every part with a file name (or named `file`
/// or `files`) is a file; `id` parts name the files in order (else a file is named by its file
/// name); a `metadata` part (a JSON object) goes to every document. The body limit holds while
/// it is read (413 as soon as it is passed).
async fn read_upload(req: Request) -> Result<Vec<UploadedFile>, ApiError> {
    let bad_part = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!("the upload is too large: {}", e.body_text()))
        } else {
            ApiError::BadRequest(format!("invalid multipart body: {}", e.body_text()))
        }
    };
    let mut form = axum::extract::Multipart::from_request(req, &())
        .await
        .map_err(|e| ApiError::BadRequest(format!("invalid multipart body: {}", e.body_text())))?;
    let mut files: Vec<(Option<String>, Option<String>, axum::body::Bytes)> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let mut metadata = serde_json::Map::new();
    while let Some(field) = form.next_field().await.map_err(bad_part)? {
        let name = field.name().unwrap_or_default().to_string();
        let file_name = field.file_name().map(str::to_owned);
        let content_type = field.content_type().map(str::to_owned);
        match name.as_str() {
            "id" => ids.push(field.text().await.map_err(bad_part)?.trim().to_string()),
            "metadata" => {
                let text = field.text().await.map_err(bad_part)?;
                if text.len() > MAX_UPLOAD_METADATA_BYTES {
                    return Err(ApiError::BadRequest(format!(
                        "the `metadata` part is {} bytes; at most {MAX_UPLOAD_METADATA_BYTES}",
                        text.len()
                    )));
                }
                metadata = match crate::extract::parse_json::<serde_json::Value>(text.as_bytes())? {
                    serde_json::Value::Object(m) => m,
                    _ => {
                        return Err(ApiError::BadRequest(
                            "the `metadata` part must be a JSON object".into(),
                        ))
                    }
                };
            }
            _ if file_name.is_some() || name == "file" || name == "files" => {
                if files.len() == MAX_UPLOAD_FILES {
                    return Err(ApiError::BadRequest(format!(
                        "more than {MAX_UPLOAD_FILES} files in one upload"
                    )));
                }
                let bytes = field.bytes().await.map_err(bad_part)?;
                files.push((file_name, content_type, bytes));
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown part `{other}`: an upload has files, `id` and `metadata` parts"
                )))
            }
        }
    }
    if files.is_empty() {
        return Err(ApiError::BadRequest(
            "the upload has no file (send parts with a file name, or named `file`)".into(),
        ));
    }
    if ids.len() > files.len() {
        return Err(ApiError::BadRequest(format!(
            "{} `id` parts for {} files",
            ids.len(),
            files.len()
        )));
    }
    let mut out = Vec::with_capacity(files.len());
    for (i, (file_name, content_type, bytes)) in files.into_iter().enumerate() {
        let id = match ids.get(i) {
            Some(id) => id.clone(),
            None => file_name
                .clone()
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| format!("upload-{}", i + 1)),
        };
        validate_document_id(&id)
            .map_err(|e| ApiError::BadRequest(format!("file {}: {e}", i + 1)))?;
        out.push(UploadedFile {
            id,
            file_name,
            content_type,
            bytes,
            metadata: metadata.clone(),
        });
    }
    Ok(out)
}

/// The query string as `T`, in the API's error shape (a bad one is a 400 that says what is
/// wrong); none at all is `T::default()`.
fn parse_query<T: serde::de::DeserializeOwned + Default>(
    uri: &axum::http::Uri,
) -> Result<T, ApiError> {
    if uri.query().is_none_or(str::is_empty) {
        return Ok(T::default());
    }
    axum::extract::Query::<T>::try_from_uri(uri)
        .map(|axum::extract::Query(v)| v)
        .map_err(|e| ApiError::BadRequest(format!("invalid query string: {}", e.body_text())))
}

#[utoipa::path(
    get,
    path = "/api/v1/collections/{name}/documents",
    tag = "documents",
    params(("name" = String, Path, description = "collection name"), DocumentsQuery),
    responses((status = 200, body = DocumentList), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 404, body = ApiErrorBody))
)]
async fn list_documents<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    uri: axum::http::Uri,
) -> Result<Json<DocumentList>, ApiError> {
    validate_collection_name(&name)?;
    p.require_read(&name)?;
    let q: DocumentsQuery = parse_query(&uri)?;
    if q.limit == Some(0) || q.limit.is_some_and(|l| l > 1000) {
        return Err(ApiError::BadRequest(
            "`limit` must be between 1 and 1000".into(),
        ));
    }
    Ok(Json(s.list_documents(name, q).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    tag = "jobs",
    params(JobsQuery),
    responses((status = 200, body = JobList), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody))
)]
async fn list_jobs<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
    uri: axum::http::Uri,
) -> Result<Json<JobList>, ApiError> {
    let q: JobsQuery = parse_query(&uri)?;
    if q.limit == Some(0) || q.limit.is_some_and(|l| l > 1000) {
        return Err(ApiError::BadRequest(
            "`limit` must be between 1 and 1000".into(),
        ));
    }
    if let Some(st) = &q.state {
        if ![
            "running",
            "completed",
            "completed_with_errors",
            "cancelled",
            "failed",
        ]
        .contains(&st.as_str())
        {
            return Err(ApiError::BadRequest(format!(
                "`state` must be running, completed, completed_with_errors, cancelled or failed, got `{st}`"
            )));
        }
    }
    if let Some(c) = &q.collection {
        validate_collection_name(c)?;
        p.require_read(c)?;
    }
    Ok(Json(s.list_jobs(q, p).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/collections/{name}/documents/{id}",
    tag = "documents",
    params(("name" = String, Path, description = "collection name"), ("id" = String, Path, description = "document id")),
    responses((status = 200, body = DocumentInfo), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 404, body = ApiErrorBody))
)]
async fn get_document<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<DocumentInfo>, ApiError> {
    validate_collection_name(&name)?;
    p.require_read(&name)?;
    Ok(Json(s.get_document(name, id).await?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/collections/{name}/documents/{id}",
    tag = "documents",
    params(("name" = String, Path, description = "collection name"), ("id" = String, Path, description = "document id")),
    responses((status = 200, description = "`{deleted, index}`", body = Object), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody))
)]
async fn delete_document<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    validate_collection_name(&name)?;
    p.require_write(&name)?;
    let index = s.delete_document(name, id.clone()).await?;
    Ok(Json(serde_json::json!({ "deleted": id, "index": index })))
}

#[utoipa::path(
    post,
    path = "/api/v1/collections/{name}/documents/{id}/retry",
    tag = "documents",
    params(("name" = String, Path, description = "collection name"), ("id" = String, Path, description = "document id")),
    responses((status = 202, description = "a new job ingests the document's text again", body = AddDocumentsResponse), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody), (status = 409, description = "the document has not failed", body = ApiErrorBody), (status = 429, description = "the ingest queue is full", body = ApiErrorBody))
)]
async fn retry_document<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
    Path((name, id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<AddDocumentsResponse>), ApiError> {
    validate_collection_name(&name)?;
    p.require_write(&name)?;
    // a failed document keeps its text: it is accepted again, as a new version in a new job
    Ok((
        StatusCode::ACCEPTED,
        Json(s.retry_document(name, id).await?),
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/collections/{name}/search",
    tag = "search",
    request_body = SearchRequest,
    params(("name" = String, Path, description = "collection name")),
    responses((status = 200, body = SearchResponse), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 404, body = ApiErrorBody), (status = 503, body = ApiErrorBody))
)]
async fn search<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Json<SearchResponse>, ApiError> {
    validate_collection_name(&name)?;
    // A collection the caller may not see leaves no event under its name.
    p.require_read(&name)?;
    // Every search the node answers is an event, however it ends (its future dropped included).
    let mut event = SearchEvent {
        service: s.clone(),
        record: Some(SearchRecord {
            user: p.name.clone(),
            collection: name.clone(),
            rerank: false,
            latency: Duration::ZERO,
            hits: 0,
            status: 499,
            empty_query: None,
        }),
        start: Instant::now(),
    };
    let answer: Result<SearchResponse, ApiError> = async {
        let ApiJson(req) = ApiJson::<SearchRequest>::from_request(req, &()).await?;
        event.set(|r| r.rerank = req.rerank);
        let query = req.query.clone();
        let resp = s.search(name, req).await?;
        event.set(|r| {
            r.hits = resp.hits.len() as u32;
            if resp.hits.is_empty() {
                r.empty_query = query.map(|q| cut(&q, 256));
            }
        });
        Ok(resp)
    }
    .await;
    event.set(|r| {
        r.status = match &answer {
            Ok(_) => 200,
            Err(e) => e.status().as_u16(),
        }
    });
    answer.map(Json)
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// A search's event, recorded when it is dropped (answered, failed or abandoned).
struct SearchEvent<S: ShoalService> {
    service: Arc<S>,
    record: Option<SearchRecord>,
    start: Instant,
}

impl<S: ShoalService> SearchEvent<S> {
    fn set(&mut self, f: impl FnOnce(&mut SearchRecord)) {
        if let Some(r) = &mut self.record {
            f(r);
        }
    }
}

impl<S: ShoalService> Drop for SearchEvent<S> {
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            r.latency = self.start.elapsed();
            self.service.record_search(r);
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/analytics/searches",
    tag = "analytics",
    params(AnalyticsQuery),
    responses((status = 200, description = "searches per second, latency, errors, empty results", body = Object), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, body = ApiErrorBody))
)]
async fn search_analytics<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
    uri: axum::http::Uri,
) -> Result<Json<serde_json::Value>, ApiError> {
    // Events name every tenant's collections and queries.
    p.require_admin("search analytics")?;
    let q: AnalyticsQuery = parse_query(&uri)?;
    if let Some(c) = &q.collection {
        validate_collection_name(c)?;
    }
    Ok(Json(s.search_analytics(q).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, body = JobInfo), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 404, body = ApiErrorBody))
)]
async fn get_job<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<JobInfo>, ApiError> {
    let job = s.get_job(id.clone()).await?;
    // A job of a collection the caller may not see does not exist for them.
    if !p.sees(&job.collection) {
        return Err(ApiError::NotFound(format!("job `{id}` not found")));
    }
    Ok(Json(job))
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/actors",
    tag = "admin",
    responses((status = 200, body = ActorList), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, body = ApiErrorBody))
)]
async fn list_actors<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
) -> Result<Json<ActorList>, ApiError> {
    p.require_cluster_admin("listing the node's actors")?;
    Ok(Json(s.list_actors().await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/admin/actors/{name}/panic",
    tag = "admin",
    params(("name" = String, Path, description = "actor name")),
    responses((status = 202, body = Object), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, body = ApiErrorBody), (status = 404, description = "fault injection is off, or no such actor", body = ApiErrorBody))
)]
async fn inject_panic<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    p.require_cluster_admin("fault injection")?;
    s.inject_panic(name.clone()).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "panicked": name })),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/digest",
    tag = "admin",
    responses((status = 200, description = "`{node_id, applied_index, digest, data_digest}`", body = Object), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, body = ApiErrorBody))
)]
async fn store_digest<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require_cluster_admin("reading the store's digest")?;
    Ok(Json(s.store_digest().await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/snapshot",
    tag = "admin",
    responses((status = 200, description = "the node's state as one file", content_type = "application/octet-stream", body = Vec<u8>), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, body = ApiErrorBody), (status = 503, body = ApiErrorBody))
)]
async fn snapshot<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
) -> Result<Response, ApiError> {
    p.require_cluster_admin("a backup")?;
    let snap = s.snapshot().await?;
    let stream = futures_util::stream::unfold(snap.file, |mut file| async move {
        use tokio::io::AsyncReadExt as _;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(axum::body::Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from(snap.bytes)),
            (
                header::HeaderName::from_static("x-shoal-applied-index"),
                HeaderValue::from(snap.applied_index),
            ),
            (
                header::HeaderName::from_static("x-shoal-node-id"),
                HeaderValue::from(snap.node_id),
            ),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

#[utoipa::path(
    put,
    path = "/api/v1/admin/faults/links",
    tag = "admin",
    request_body = CutLinksRequest,
    responses((status = 200, body = Object), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, body = ApiErrorBody), (status = 404, description = "fault injection is off", body = ApiErrorBody))
)]
async fn cut_links<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
    body: JsonBody<CutLinksRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require_cluster_admin("fault injection")?;
    let req = body.parse()?;
    Ok(Json(s.cut_links(req).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/admin/faults/storage",
    tag = "admin",
    responses((status = 200, body = Object), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, body = ApiErrorBody), (status = 404, description = "fault injection is off", body = ApiErrorBody))
)]
async fn fail_storage<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require_cluster_admin("fault injection")?;
    Ok(Json(s.fail_storage().await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/cluster",
    tag = "cluster",
    responses((status = 200, description = "members, roles, leader, term, indexes, lag", body = Object), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, body = ApiErrorBody))
)]
async fn cluster_status<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require_cluster_admin("the cluster's status")?;
    Ok(Json(s.cluster_status().await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/cluster/init",
    tag = "cluster",
    responses((status = 201, body = Object), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, body = ApiErrorBody), (status = 409, body = ApiErrorBody))
)]
async fn cluster_init<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    p.require_cluster_admin("this admin request")?;
    Ok((StatusCode::CREATED, Json(s.cluster_init().await?)))
}

#[utoipa::path(
    post,
    path = "/api/v1/cluster/join",
    tag = "cluster",
    request_body = JoinClusterRequest,
    responses((status = 200, body = Object), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, body = ApiErrorBody))
)]
async fn cluster_join<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
    body: JsonBody<JoinClusterRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require_cluster_admin("this admin request")?;
    let req = body.parse()?;
    if !(req.seed.starts_with("http://") || req.seed.starts_with("https://")) {
        return Err(ApiError::BadRequest(format!(
            "`seed` must be a node's URL such as http://10.0.0.2:7400, got `{}`",
            req.seed
        )));
    }
    Ok(Json(s.cluster_join(req).await?))
}

/// The header an admin request proves itself with (the cluster secret).
pub const ADMIN_SECRET_HEADER: &str = "x-shoal-cluster-secret";

/// What a request presents: `Authorization: Bearer ...` and the cluster secret.
fn credentials(headers: &HeaderMap) -> Credentials {
    let mut creds = Credentials {
        cluster_secret: headers
            .get(ADMIN_SECRET_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        ..Credentials::default()
    };
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let bearer = value.to_str().ok().and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            let rest = rest.trim();
            (scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty()).then(|| rest.to_owned())
        });
        creds.malformed = bearer.is_none();
        creds.bearer = bearer;
    }
    creds
}

/// Find who a request comes from; it goes on with its [`Principal`] as an extension, or is
/// answered 401.
async fn authenticate<S: ShoalService>(
    State(s): State<Arc<S>>,
    mut req: Request,
    next: Next,
) -> Response {
    match s.authenticate(credentials(req.headers())).await {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

fn node_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::BadRequest(format!("`{raw}` is not a node id (a number)")))
}

#[utoipa::path(
    post,
    path = "/api/v1/cluster/nodes/{id}/promote",
    tag = "cluster",
    params(("id" = u64, Path, description = "node id")),
    responses((status = 200, body = Object), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody))
)]
async fn cluster_promote<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require_cluster_admin("this admin request")?;
    Ok(Json(s.cluster_promote(node_id(&id)?).await?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/cluster/nodes/{id}",
    tag = "cluster",
    params(("id" = u64, Path, description = "node id")),
    responses((status = 200, body = Object), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody))
)]
async fn cluster_remove<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require_cluster_admin("this admin request")?;
    Ok(Json(s.cluster_remove(node_id(&id)?).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/token",
    tag = "auth",
    request_body = TokenRequest,
    responses((status = 200, description = "a token", body = TokenResponse), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 429, description = "too many failed sign-ins", body = ApiErrorBody))
)]
async fn issue_token<S: ShoalService>(
    State(s): State<Arc<S>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    ApiJson(req): ApiJson<TokenRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let client = connect.map(|Extension(ConnectInfo(addr))| addr.ip());
    Ok(Json(s.issue_token(req, client).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/auth/me",
    tag = "auth",
    responses((status = 200, description = "the caller", body = Principal))
)]
async fn who_am_i(Extension(p): Extension<Principal>) -> Json<Principal> {
    Json(p)
}

fn validate_grants(grants: &[String]) -> Result<(), ApiError> {
    grants.iter().try_for_each(|g| validate_grant(g))
}

#[utoipa::path(
    get,
    path = "/api/v1/auth/users",
    tag = "auth",
    responses((status = 200, body = UserList), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, description = "not an admin", body = ApiErrorBody))
)]
async fn list_users<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
) -> Result<Json<UserList>, ApiError> {
    p.require_cluster_admin("listing users")?;
    Ok(Json(s.list_users().await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/users",
    tag = "auth",
    request_body = CreateUserRequest,
    responses((status = 201, body = UserInfo), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, body = ApiErrorBody), (status = 409, description = "the name is taken", body = ApiErrorBody))
)]
async fn create_user<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
    body: JsonBody<CreateUserRequest>,
) -> Result<(StatusCode, Json<UserInfo>), ApiError> {
    p.require_cluster_admin("creating a user")?;
    let req = body.parse()?;
    validate_user_name(&req.username)?;
    validate_grants(&req.collections)?;
    Ok((StatusCode::CREATED, Json(s.create_user(req).await?)))
}

#[utoipa::path(
    patch,
    path = "/api/v1/auth/users/{name}",
    tag = "auth",
    request_body = UpdateUserRequest,
    params(("name" = String, Path, description = "user name")),
    responses((status = 200, body = UserInfo), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody))
)]
async fn update_user<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    body: JsonBody<UpdateUserRequest>,
) -> Result<Json<UserInfo>, ApiError> {
    // only an admin, or the user themself signed in with a token, gets as far as the body
    if !(p.credential == crate::auth::Credential::Token && p.name == name) {
        p.require_cluster_admin("changing a user")?;
    }
    validate_user_name(&name)?;
    let req = body.parse()?;
    // A user signed in with a token may change their own password, and nothing else of theirs.
    let own_password = p.credential == crate::auth::Credential::Token
        && p.name == name
        && req.role.is_none()
        && req.collections.is_none();
    if own_password && p.role != crate::auth::Role::Admin {
        if req.current_password.is_none() {
            return Err(ApiError::BadRequest(
                "changing your own password needs `current_password`".into(),
            ));
        }
    } else {
        p.require_cluster_admin("changing a user")?;
    }
    if req.password.is_none() && req.role.is_none() && req.collections.is_none() {
        return Err(ApiError::BadRequest(
            "nothing to change: give `password`, `role` or `collections`".into(),
        ));
    }
    if let Some(g) = &req.collections {
        validate_grants(g)?;
    }
    Ok(Json(s.update_user(name, req).await?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/auth/users/{name}",
    tag = "auth",
    params(("name" = String, Path, description = "user name")),
    responses((status = 200, description = "`{deleted, index}`", body = Object), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody))
)]
async fn delete_user<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require_cluster_admin("deleting a user")?;
    validate_user_name(&name)?;
    let index = s.delete_user(name.clone()).await?;
    Ok(Json(serde_json::json!({ "deleted": name, "index": index })))
}

#[utoipa::path(
    get,
    path = "/api/v1/auth/keys",
    tag = "auth",
    responses((status = 200, body = ApiKeyList), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, body = ApiErrorBody))
)]
async fn list_api_keys<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
) -> Result<Json<ApiKeyList>, ApiError> {
    p.require_cluster_admin("listing API keys")?;
    Ok(Json(s.list_api_keys().await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/keys",
    tag = "auth",
    request_body = CreateApiKeyRequest,
    responses((status = 201, description = "the key, shown this once", body = CreatedApiKey), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, body = ApiErrorBody))
)]
async fn create_api_key<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
    body: JsonBody<CreateApiKeyRequest>,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    p.require_cluster_admin("making an API key")?;
    let req = body.parse()?;
    if req.name.trim().is_empty() || req.name.len() > 200 {
        return Err(ApiError::BadRequest(
            "`name` must say what the key is for (1 to 200 bytes)".into(),
        ));
    }
    validate_grants(&req.collections)?;
    if req.expires_in_s == Some(0) {
        return Err(ApiError::BadRequest(
            "`expires_in_s` must be at least 1 (leave it out for a key that does not expire)"
                .into(),
        ));
    }
    Ok((StatusCode::CREATED, Json(s.create_api_key(p, req).await?)))
}

#[utoipa::path(
    delete,
    path = "/api/v1/auth/keys/{id}",
    tag = "auth",
    params(("id" = String, Path, description = "key id")),
    responses((status = 200, description = "`{revoked, index}`", body = Object), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody), (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody))
)]
async fn revoke_api_key<S: ShoalService>(
    State(s): State<Arc<S>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require_cluster_admin("revoking an API key")?;
    let index = s.revoke_api_key(id.clone()).await?;
    Ok(Json(serde_json::json!({ "revoked": id, "index": index })))
}

#[utoipa::path(
    post,
    path = "/v1/embeddings",
    tag = "compatible",
    request_body = EmbeddingsRequest,
    responses((status = 200, body = EmbeddingsResponse), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody))
)]
async fn embeddings<S: ShoalService>(
    State(s): State<Arc<S>>,
    ApiJson(req): ApiJson<EmbeddingsRequest>,
) -> Result<Json<EmbeddingsResponse>, ApiError> {
    Ok(Json(s.embeddings(req).await?))
}

fn document_text(v: &serde_json::Value, field: &str, i: usize) -> Result<String, ApiError> {
    match v {
        serde_json::Value::String(t) => Ok(t.clone()),
        serde_json::Value::Object(o) => match o.get("text") {
            Some(serde_json::Value::String(t)) => Ok(t.clone()),
            _ => Err(ApiError::BadRequest(format!(
                "`{field}[{i}]`: an object needs a string `text`"
            ))),
        },
        _ => Err(ApiError::BadRequest(format!(
            "`{field}[{i}]` must be a string"
        ))),
    }
}

#[utoipa::path(
    post,
    path = "/v1/rerank",
    tag = "compatible",
    request_body = RerankRequest,
    responses((status = 200, description = "Cohere shape (`{id, results, meta}`) or TEI shape (`[{index, score}]`), as the request", body = Object), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody))
)]
async fn rerank_v1<S: ShoalService>(
    State(s): State<Arc<S>>,
    ApiJson(req): ApiJson<RerankRequest>,
) -> Result<Response, ApiError> {
    rerank(s, req, "1").await
}

#[utoipa::path(
    post,
    path = "/v2/rerank",
    tag = "compatible",
    request_body = RerankRequest,
    responses((status = 200, description = "`{id, results: [{index, relevance_score}], meta}`", body = Object), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody))
)]
async fn rerank_v2<S: ShoalService>(
    State(s): State<Arc<S>>,
    ApiJson(req): ApiJson<RerankRequest>,
) -> Result<Response, ApiError> {
    if req.texts.is_some() {
        return Err(ApiError::BadRequest(
            "/v2/rerank takes `documents` (Cohere v2); `texts` is the shape of /rerank".into(),
        ));
    }
    rerank(s, req, "2").await
}

#[utoipa::path(
    post,
    path = "/embed",
    tag = "compatible",
    request_body = TeiEmbedRequest,
    responses((status = 200, description = "one vector per input (`[[f32]]`), or similarities (`[f32]`)", body = Object), (status = 400, description = "invalid request", body = ApiErrorBody), (status = 401, description = "no valid credential", body = ApiErrorBody))
)]
/// Text Embeddings Inference's `/embed` (and `/`, where its clients post): `inputs` is a string
/// or a list of them, the answer one vector per input; `inputs` as
/// `{"source_sentence", "sentences"}` (sentence similarity, as `/similarity`) answers the
/// cosine similarity of each sentence to the source.
async fn tei_embed<S: ShoalService>(
    State(s): State<Arc<S>>,
    ApiJson(req): ApiJson<TeiEmbedRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if req.normalize == Some(false) {
        return Err(ApiError::BadRequest(
            "`normalize: false` is not served: shoal's embeddings are L2-normalised".into(),
        ));
    }
    let similarity = match &req.inputs {
        serde_json::Value::Object(o) => {
            let source = o.get("source_sentence").and_then(|v| v.as_str());
            let sentences = o.get("sentences").and_then(|v| v.as_array());
            match (source, sentences) {
                (Some(src), Some(list)) => {
                    let mut all = vec![serde_json::Value::from(src)];
                    all.extend(list.iter().cloned());
                    Some(serde_json::Value::Array(all))
                }
                _ => {
                    return Err(ApiError::BadRequest(
                        "`inputs` as an object needs `source_sentence` (a string) and `sentences` (a list of strings)".into(),
                    ))
                }
            }
        }
        _ => None,
    };
    let input = similarity.clone().unwrap_or(req.inputs);
    let resp = s
        .embeddings(EmbeddingsRequest {
            input,
            model: None,
            encoding_format: None,
            dimensions: None,
            user: None,
            input_type: None,
            // looked up by name in the model's prompts, as TEI does
            prompt_name: req.prompt_name,
        })
        .await?;
    let vectors: Vec<Vec<f64>> = resp
        .data
        .iter()
        .map(|d| {
            d.embedding
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
                .unwrap_or_default()
        })
        .collect();
    if similarity.is_some() {
        let (source, rest) = vectors
            .split_first()
            .ok_or_else(|| ApiError::Internal("no embedding for the source sentence".into()))?;
        let scores: Vec<f64> = rest
            .iter()
            .map(|v| v.iter().zip(source).map(|(a, b)| a * b).sum())
            .collect();
        return Ok(Json(serde_json::json!(scores)));
    }
    Ok(Json(serde_json::json!(vectors)))
}

async fn rerank<S: ShoalService>(
    s: Arc<S>,
    req: RerankRequest,
    api_version: &str,
) -> Result<Response, ApiError> {
    let (field, items, tei) = match (&req.documents, &req.texts) {
        (Some(d), None) => ("documents", d, false),
        (None, Some(t)) => ("texts", t, true),
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give `documents` or `texts`, not both".into(),
            ))
        }
        (None, None) => {
            return Err(ApiError::BadRequest(
                "give `documents` (or `texts`) to rerank".into(),
            ))
        }
    };
    let docs = items
        .iter()
        .enumerate()
        .map(|(i, v)| document_text(v, field, i))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(0) = req.top_n {
        return Err(ApiError::BadRequest("`top_n` must be at least 1".into()));
    }
    let (model, mut scores) = s.rerank(req.query, docs.clone()).await?;
    if let Some(n) = req.top_n {
        scores.truncate(n);
    }
    if tei {
        let with_text = req.return_text.unwrap_or(false);
        let raw = req.raw_scores.unwrap_or(false);
        let body: Vec<serde_json::Value> = scores
            .iter()
            .map(|r| {
                let mut o = serde_json::json!({
                    "index": r.index,
                    "score": if raw { r.logit } else { r.relevance },
                });
                if with_text {
                    o["text"] = docs[r.index].clone().into();
                }
                o
            })
            .collect();
        return Ok(Json(body).into_response());
    }
    let with_docs = req.return_documents.unwrap_or(false);
    let results: Vec<serde_json::Value> = scores
        .iter()
        .map(|r| {
            let mut o = serde_json::json!({"index": r.index, "relevance_score": r.relevance});
            if with_docs {
                o["document"] = serde_json::json!({"text": docs[r.index]});
            }
            o
        })
        .collect();
    Ok(Json(serde_json::json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "results": results,
        "meta": {"api_version": {"version": api_version}, "model": model},
    }))
    .into_response())
}

/// The OpenAPI description of the API, generated from the handlers' annotations and the DTOs.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "shoal", description = "A semantic-search cluster in one binary: collections, documents, search, the compatible embedding and reranking endpoints, auth, and the cluster's administration. Every route but health, readiness, metrics and sign-in needs `Authorization: Bearer <token or API key>`."),
    paths(
        health, ready, metrics, issue_token, who_am_i, list_users, create_user, update_user,
        delete_user, list_api_keys, create_api_key, revoke_api_key, list_collections,
        create_collection, get_collection, update_collection, delete_collection, add_documents, list_documents,
        get_document, delete_document, retry_document, search, list_jobs, get_job, search_analytics, embeddings,
        rerank_v1, rerank_v2, tei_embed, list_actors, inject_panic, store_digest, snapshot,
        cut_links, fail_storage, cluster_status, cluster_init, cluster_join, cluster_promote, cluster_remove
    ),
    components(schemas(ApiErrorBody)),
    modifiers(&Aliases, &BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

/// Routes served by a handler documented under another path: the same operation there too.
struct Aliases;

impl utoipa::Modify for Aliases {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        for (alias, of) in [
            ("/health", "/api/health"),
            ("/", "/embed"),
            ("/similarity", "/embed"),
            ("/rerank", "/v1/rerank"),
        ] {
            if let Some(item) = api.paths.paths.get(of).cloned() {
                api.paths.paths.insert(alias.to_string(), item);
            }
        }
    }
}

/// The bearer scheme every protected route takes; the open routes take none.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "a token from POST /api/v1/auth/token, an API key, an identity provider's token, or the admin key",
                    ))
                    .build(),
            ),
        );
        for path in [
            "/api/health",
            "/health",
            "/api/ready",
            "/metrics",
            "/api/v1/auth/token",
        ] {
            if let Some(item) = api.paths.paths.get_mut(path) {
                for op in [&mut item.get, &mut item.post].into_iter().flatten() {
                    op.security = Some(Vec::new());
                }
            }
        }
    }
}

/// The spec as JSON (served at `GET /api/openapi.json`).
pub fn openapi_json() -> String {
    use utoipa::OpenApi as _;
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

#[cfg(test)]
mod spec_tests {
    use std::collections::BTreeSet;

    /// Every (method, path) the router serves, read from this file's `.route(` calls.
    fn routes_in_source() -> BTreeSet<(String, String)> {
        let source = include_str!("routes.rs");
        let source = &source[..source
            .find("#[cfg(test)]\nmod spec_tests")
            .unwrap_or(source.len())];
        let mut out = BTreeSet::new();
        let mut rest = source;
        while let Some(i) = rest.find(".route(") {
            rest = &rest[i + ".route(".len()..];
            // the call's text, up to its closing parenthesis
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap_or(rest.len());
            let call = &rest[..end];
            let Some(start) = call.find('"') else {
                continue;
            };
            let Some(len) = call[start + 1..].find('"') else {
                continue;
            };
            let path = &call[start + 1..start + 1 + len];
            let mut found = false;
            for m in ["get", "post", "put", "patch", "delete"] {
                let mut search = call;
                while let Some(j) = search.find(&format!("{m}(")) {
                    let before = search[..j].chars().last();
                    if before.is_none_or(|c| !c.is_alphanumeric() && c != '_') {
                        out.insert((m.to_string(), path.to_string()));
                        found = true;
                    }
                    search = &search[j + m.len() + 1..];
                }
            }
            assert!(found, "no method found in route {call}");
        }
        out
    }

    #[test]
    fn the_spec_has_every_route_and_no_other() {
        let spec: serde_json::Value = serde_json::from_str(&super::openapi_json()).unwrap();
        let mut in_spec = BTreeSet::new();
        for (path, item) in spec["paths"].as_object().unwrap() {
            for (m, _) in item.as_object().unwrap() {
                in_spec.insert((m.clone(), path.clone()));
            }
        }
        let mut served = routes_in_source();
        // the description and its page describe the rest
        served.remove(&("get".into(), "/api/openapi.json".into()));
        served.remove(&("get".into(), "/api/docs".into()));
        // the console's static files
        for path in ["/ui", "/ui/", "/ui/app.js", "/ui/style.css"] {
            served.remove(&("get".into(), path.into()));
        }
        assert!(served.len() > 40, "{served:?}");
        let missing: Vec<_> = served.difference(&in_spec).collect();
        let extra: Vec<_> = in_spec.difference(&served).collect();
        assert!(
            missing.is_empty(),
            "routes missing from the spec: {missing:?}"
        );
        assert!(extra.is_empty(), "spec paths no route serves: {extra:?}");
        // open routes say so; the rest need the bearer scheme
        assert_eq!(
            spec["paths"]["/metrics"]["get"]["security"],
            serde_json::json!([])
        );
        assert!(spec["paths"]["/api/v1/collections"]["get"]
            .get("security")
            .is_none());
        assert_eq!(spec["security"], serde_json::json!([{"bearer": []}]));
        assert_eq!(
            spec["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }
}

#[cfg(test)]
mod upload_tests {
    //! The multipart reader on any body: a well-formed upload comes out byte for byte, and no
    //! body, random or a damaged form, makes it panic (a refusal is a 400 or a 413).

    use proptest::prelude::*;

    use super::*;

    fn request(boundary: &str, body: Vec<u8>) -> Request {
        axum::http::Request::builder()
            .method("POST")
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(axum::body::Body::from(body))
            .unwrap()
    }

    fn read(req: Request) -> Result<Vec<UploadedFile>, ApiError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(read_upload(req))
    }

    /// A form of `(file name, bytes)` files, with `metadata` and `id` parts when given.
    fn form(boundary: &str, files: &[(String, Vec<u8>)], metadata: Option<&str>) -> Vec<u8> {
        let mut body = Vec::new();
        if let Some(m) = metadata {
            body.extend_from_slice(
                format!("--{boundary}\r\ncontent-disposition: form-data; name=\"metadata\"\r\n\r\n{m}\r\n")
                    .as_bytes(),
            );
        }
        for (name, bytes) in files {
            body.extend_from_slice(
                format!("--{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"{name}\"\r\ncontent-type: application/octet-stream\r\n\r\n")
                    .as_bytes(),
            );
            body.extend_from_slice(bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        body
    }

    fn refused_cleanly(r: &Result<Vec<UploadedFile>, ApiError>) -> bool {
        match r {
            Ok(_) => true,
            Err(e) => matches!(
                e,
                ApiError::BadRequest(_) | ApiError::InvalidJson(_) | ApiError::PayloadTooLarge(_)
            ),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn well_formed_uploads_come_out_byte_for_byte(
            files in proptest::collection::vec(
                ("[a-z]{1,8}\\.(txt|pdf|md)", proptest::collection::vec(any::<u8>(), 0..600)),
                1..5,
            ),
            team in "[a-z]{0,10}",
        ) {
            let boundary = "shoal-boundary-7d1f0c9a";
            // contents that happen to hold the boundary cannot be sent this way
            prop_assume!(files.iter().all(|(_, b)| !b.windows(boundary.len()).any(|w| w == boundary.as_bytes())));
            let metadata = format!("{{\"team\": \"{team}\"}}");
            let out = read(request(boundary, form(boundary, &files, Some(&metadata)))).unwrap();
            prop_assert_eq!(out.len(), files.len());
            for (got, (name, bytes)) in out.iter().zip(&files) {
                prop_assert_eq!(&got.id, name);
                prop_assert_eq!(got.file_name.as_deref(), Some(name.as_str()));
                prop_assert_eq!(got.bytes.as_ref(), bytes.as_slice());
                prop_assert_eq!(got.metadata.get("team").and_then(|v| v.as_str()), Some(team.as_str()));
            }
        }

        #[test]
        fn random_bodies_are_refused_not_a_panic(
            body in proptest::collection::vec(any::<u8>(), 0..2048),
            boundary in "[A-Za-z0-9'()+_,./:=?-]{1,70}",
        ) {
            let r = read(request(&boundary, body));
            prop_assert!(refused_cleanly(&r));
        }

        #[test]
        fn damaged_forms_are_read_or_refused_not_a_panic(
            files in proptest::collection::vec(
                ("[a-z]{1,8}\\.txt", proptest::collection::vec(any::<u8>(), 0..200)),
                1..4,
            ),
            cut in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
            metadata in prop_oneof![Just(None), Just(Some("{\"a\": 1}")), Just(Some("[1, 2")), Just(Some("nul\u{0}l"))],
        ) {
            let boundary = "XyZ";
            let mut body = form(boundary, &files, metadata);
            for (at, byte) in flips {
                let i = at.index(body.len());
                body[i] = byte;
            }
            body.truncate(cut.index(body.len() + 1));
            let r = read(request(boundary, body));
            prop_assert!(refused_cleanly(&r));
        }
    }
}
