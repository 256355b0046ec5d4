//! The router: every route of the API, and the layers around them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::dto::*;
use crate::extract::{validate_collection_name, validate_document_id, ApiJson, OptionalJson};
use crate::{ApiError, ShoalService};

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
/// | `GET /api/v1/collections` | list collections |
/// | `PUT, GET, DELETE /api/v1/collections/{name}` | create, show, drop a collection |
/// | `POST /api/v1/collections/{name}/documents` | accept documents for ingest (202 + job) |
/// | `GET, DELETE /api/v1/collections/{name}/documents/{id}` | show, delete a document |
/// | `POST /api/v1/collections/{name}/search` | search by text or vector |
/// | `GET /api/v1/jobs/{id}` | ingest job progress |
/// | `POST /v1/embeddings` | OpenAI-style embeddings |
/// | `POST /v1/rerank` | Cohere- or TEI-style reranking |
/// | `GET /api/v1/admin/actors` | supervised actors and their restarts |
/// | `POST /api/v1/admin/actors/{name}/panic` | fault injection (when enabled) |
/// | `GET /api/v1/admin/digest` | digest of the node's store (replicas compare equal) |
/// | `GET /api/v1/admin/snapshot` | a consistent snapshot of the node's state (a backup) |
/// | `PUT /api/v1/admin/faults/links` | fault injection: cut links to other nodes |
/// | `GET /api/v1/cluster` | members, roles, leader, term, indexes, lag |
/// | `POST /api/v1/cluster/init` | make this node a new one-member cluster |
/// | `POST /api/v1/cluster/join` | make this node join another's cluster |
/// | `POST /api/v1/cluster/nodes/{id}/promote` | learner to voter |
/// | `DELETE /api/v1/cluster/nodes/{id}` | remove a node |
pub fn router<S: ShoalService>(service: Arc<S>, limits: RouterLimits) -> Router {
    let api = Router::new()
        .route("/api/health", get(health::<S>))
        // the path load balancers and the replaced stack's probes use
        .route("/health", get(health::<S>))
        .route("/api/ready", get(ready::<S>))
        .route("/metrics", get(metrics::<S>))
        .route("/api/v1/collections", get(list_collections::<S>))
        .route(
            "/api/v1/collections/{name}",
            put(create_collection::<S>)
                .get(get_collection::<S>)
                .delete(delete_collection::<S>),
        )
        .route(
            "/api/v1/collections/{name}/documents",
            post(add_documents::<S>),
        )
        .route(
            "/api/v1/collections/{name}/documents/{id}",
            get(get_document::<S>).delete(delete_document::<S>),
        )
        .route("/api/v1/collections/{name}/search", post(search::<S>))
        .route("/api/v1/jobs/{id}", get(get_job::<S>))
        .route("/v1/embeddings", post(embeddings::<S>))
        .route("/v1/rerank", post(rerank::<S>))
        .route("/api/v1/admin/actors", get(list_actors::<S>))
        .route("/api/v1/admin/actors/{name}/panic", post(inject_panic::<S>))
        .route("/api/v1/admin/digest", get(store_digest::<S>))
        .route("/api/v1/admin/faults/links", put(cut_links::<S>))
        .route("/api/v1/cluster", get(cluster_status::<S>))
        .route("/api/v1/cluster/init", post(cluster_init::<S>))
        .route("/api/v1/cluster/join", post(cluster_join::<S>))
        .route(
            "/api/v1/cluster/nodes/{id}/promote",
            post(cluster_promote::<S>),
        )
        .route("/api/v1/cluster/nodes/{id}", delete(cluster_remove::<S>))
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

async fn health<S: ShoalService>(State(s): State<Arc<S>>) -> Json<HealthResponse> {
    Json(s.health().await)
}

async fn ready<S: ShoalService>(State(s): State<Arc<S>>) -> Response {
    let r = s.ready().await;
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(r)).into_response()
}

async fn metrics<S: ShoalService>(State(s): State<Arc<S>>) -> Result<Response, ApiError> {
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

async fn list_collections<S: ShoalService>(
    State(s): State<Arc<S>>,
) -> Result<Json<CollectionList>, ApiError> {
    Ok(Json(s.list_collections().await?))
}

async fn create_collection<S: ShoalService>(
    State(s): State<Arc<S>>,
    Path(name): Path<String>,
    OptionalJson(req): OptionalJson<CreateCollectionRequest>,
) -> Result<(StatusCode, Json<CollectionInfo>), ApiError> {
    validate_collection_name(&name)?;
    Ok((
        StatusCode::CREATED,
        Json(s.create_collection(name, req).await?),
    ))
}

async fn get_collection<S: ShoalService>(
    State(s): State<Arc<S>>,
    Path(name): Path<String>,
) -> Result<Json<CollectionInfo>, ApiError> {
    validate_collection_name(&name)?;
    Ok(Json(s.get_collection(name).await?))
}

async fn delete_collection<S: ShoalService>(
    State(s): State<Arc<S>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    validate_collection_name(&name)?;
    let index = s.delete_collection(name.clone()).await?;
    Ok(Json(serde_json::json!({ "deleted": name, "index": index })))
}

async fn add_documents<S: ShoalService>(
    State(s): State<Arc<S>>,
    Path(name): Path<String>,
    Extension(limits): Extension<RouterLimits>,
    req: Request,
) -> Result<(StatusCode, Json<AddDocumentsResponse>), ApiError> {
    validate_collection_name(&name)?;
    // Room in the ingest queue first, before the body is read: a full queue answers 429 at once.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A body declared longer than the limit gets no room (never a 429 for a request that no
    // amount of waiting lets through): reading it fails with 413 below.
    let over_limit = declared.is_some_and(|n| n > limits.max_body_bytes as u64);
    let admission = if over_limit {
        None
    } else {
        Some(s.admit_documents(declared)?)
    };
    let ApiJson(req) = ApiJson::<AddDocumentsRequest>::from_request(req, &()).await?;
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

async fn get_document<S: ShoalService>(
    State(s): State<Arc<S>>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<DocumentInfo>, ApiError> {
    validate_collection_name(&name)?;
    Ok(Json(s.get_document(name, id).await?))
}

async fn delete_document<S: ShoalService>(
    State(s): State<Arc<S>>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    validate_collection_name(&name)?;
    let index = s.delete_document(name, id.clone()).await?;
    Ok(Json(serde_json::json!({ "deleted": id, "index": index })))
}

async fn search<S: ShoalService>(
    State(s): State<Arc<S>>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SearchRequest>,
) -> Result<Json<SearchResponse>, ApiError> {
    validate_collection_name(&name)?;
    Ok(Json(s.search(name, req).await?))
}

async fn get_job<S: ShoalService>(
    State(s): State<Arc<S>>,
    Path(id): Path<String>,
) -> Result<Json<JobInfo>, ApiError> {
    Ok(Json(s.get_job(id).await?))
}

async fn list_actors<S: ShoalService>(
    State(s): State<Arc<S>>,
) -> Result<Json<ActorList>, ApiError> {
    Ok(Json(s.list_actors().await?))
}

async fn inject_panic<S: ShoalService>(
    State(s): State<Arc<S>>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    s.inject_panic(name.clone()).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "panicked": name })),
    ))
}

async fn store_digest<S: ShoalService>(
    State(s): State<Arc<S>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    s.authorize_admin(admin_secret(&headers))?;
    Ok(Json(s.store_digest().await?))
}

async fn snapshot<S: ShoalService>(
    State(s): State<Arc<S>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    s.authorize_admin(admin_secret(&headers))?;
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

async fn cut_links<S: ShoalService>(
    State(s): State<Arc<S>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CutLinksRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    s.authorize_admin(admin_secret(&headers))?;
    Ok(Json(s.cut_links(req).await?))
}

async fn cluster_status<S: ShoalService>(
    State(s): State<Arc<S>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(s.cluster_status().await?))
}

async fn cluster_init<S: ShoalService>(
    State(s): State<Arc<S>>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    s.authorize_admin(admin_secret(&headers))?;
    Ok((StatusCode::CREATED, Json(s.cluster_init().await?)))
}

async fn cluster_join<S: ShoalService>(
    State(s): State<Arc<S>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<JoinClusterRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    s.authorize_admin(admin_secret(&headers))?;
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

fn admin_secret(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(ADMIN_SECRET_HEADER)
        .and_then(|v| v.to_str().ok())
}

fn node_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::BadRequest(format!("`{raw}` is not a node id (a number)")))
}

async fn cluster_promote<S: ShoalService>(
    State(s): State<Arc<S>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    s.authorize_admin(admin_secret(&headers))?;
    Ok(Json(s.cluster_promote(node_id(&id)?).await?))
}

async fn cluster_remove<S: ShoalService>(
    State(s): State<Arc<S>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    s.authorize_admin(admin_secret(&headers))?;
    Ok(Json(s.cluster_remove(node_id(&id)?).await?))
}

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

async fn rerank<S: ShoalService>(
    State(s): State<Arc<S>>,
    ApiJson(req): ApiJson<RerankRequest>,
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
        "meta": {"api_version": {"version": "1"}, "model": model},
    }))
    .into_response())
}
