use std::future::Future;

use std::net::IpAddr;

use crate::auth::{Credentials, Principal};
use crate::dto::*;
use crate::ApiError;

/// What the HTTP API needs from a node. Every method maps to one route of [`crate::router`].
pub trait ShoalService: Send + Sync + 'static {
    /// Room reserved for a request that adds documents, held until it is answered.
    type Admission: Send + 'static;

    fn health(&self) -> impl Future<Output = HealthResponse> + Send;
    /// Ready when the model is warm and every shard is loaded.
    fn ready(&self) -> impl Future<Output = ReadyResponse> + Send;
    /// Prometheus text exposition.
    fn metrics(&self) -> impl Future<Output = Result<String, ApiError>> + Send;
    /// Whether `creds` may read the metrics: anyone, unless the node protects them (their labels
    /// name collections).
    fn authorize_metrics(
        &self,
        creds: Credentials,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    fn create_collection(
        &self,
        name: String,
        req: CreateCollectionRequest,
    ) -> impl Future<Output = Result<CollectionInfo, ApiError>> + Send;
    fn get_collection(
        &self,
        name: String,
    ) -> impl Future<Output = Result<CollectionInfo, ApiError>> + Send;
    /// Change a collection's options; answers it as it is then (with the log index of the
    /// change).
    fn update_collection(
        &self,
        name: String,
        req: UpdateCollectionRequest,
    ) -> impl Future<Output = Result<CollectionInfo, ApiError>> + Send;
    fn list_collections(&self) -> impl Future<Output = Result<CollectionList, ApiError>> + Send;
    /// Drop a collection; answers the log index of the drop.
    fn delete_collection(&self, name: String)
        -> impl Future<Output = Result<u64, ApiError>> + Send;

    /// Admit a request that adds documents, whose body is `body_bytes` long (None: not declared,
    /// a chunked body), before its body is read: refused with [`ApiError::TooManyRequests`] when
    /// the ingest queue has no room.
    fn admit_documents(&self, body_bytes: Option<u64>) -> Result<Self::Admission, ApiError>;
    fn add_documents(
        &self,
        collection: String,
        req: AddDocumentsRequest,
        admission: Self::Admission,
    ) -> impl Future<Output = Result<AddDocumentsResponse, ApiError>> + Send;
    /// The text of uploaded files, off the async workers, within the node's limits and by
    /// `deadline` (the request's); a file that cannot be read is a reason, not an error of the
    /// request.
    fn extract_uploads(
        &self,
        files: Vec<UploadedFile>,
        deadline: std::time::Instant,
    ) -> impl Future<Output = Result<ExtractedUpload, ApiError>> + Send;
    fn get_document(
        &self,
        collection: String,
        id: String,
    ) -> impl Future<Output = Result<DocumentInfo, ApiError>> + Send;
    /// Delete a document; answers the log index of the delete.
    fn delete_document(
        &self,
        collection: String,
        id: String,
    ) -> impl Future<Output = Result<u64, ApiError>> + Send;
    /// Accept a failed document's stored text again, in a new job (409 if it has not failed,
    /// or was replaced or retried meanwhile).
    fn retry_document(
        &self,
        collection: String,
        id: String,
    ) -> impl Future<Output = Result<AddDocumentsResponse, ApiError>> + Send;
    fn get_job(&self, id: String) -> impl Future<Output = Result<JobInfo, ApiError>> + Send;
    /// Jobs newest first, of the collections `viewer` may see.
    fn list_jobs(
        &self,
        query: JobsQuery,
        viewer: Principal,
    ) -> impl Future<Output = Result<JobList, ApiError>> + Send;
    /// A page of a collection's documents, in id order.
    fn list_documents(
        &self,
        collection: String,
        query: DocumentsQuery,
    ) -> impl Future<Output = Result<DocumentList, ApiError>> + Send;

    fn search(
        &self,
        collection: String,
        req: SearchRequest,
    ) -> impl Future<Output = Result<SearchResponse, ApiError>> + Send;

    /// Embed texts with the node's model (OpenAI-style endpoint).
    fn embeddings(
        &self,
        req: EmbeddingsRequest,
    ) -> impl Future<Output = Result<EmbeddingsResponse, ApiError>> + Send;
    /// Score documents against a query with the node's reranker, best first.
    fn rerank(
        &self,
        query: String,
        documents: Vec<String>,
    ) -> impl Future<Output = Result<(String, Vec<RerankScore>), ApiError>> + Send;

    /// The node's actors with their restart counts.
    fn list_actors(&self) -> impl Future<Output = Result<ActorList, ApiError>> + Send;
    /// Fault injection (only when the node enables it): make the named actor panic.
    fn inject_panic(&self, actor: String) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// Who presented `creds` (checked on every route but health, readiness, metrics and
    /// sign-in): 401 when nothing valid was presented. With auth off, everyone is a writer of
    /// every collection, and an admin when they give the cluster secret (or the node has none).
    fn authenticate(
        &self,
        creds: Credentials,
    ) -> impl Future<Output = Result<Principal, ApiError>> + Send;
    /// Sign in with a password. `client` is the caller's address: failed attempts are limited
    /// per user and per address (429 with `Retry-After` past the limit).
    fn issue_token(
        &self,
        req: TokenRequest,
        client: Option<IpAddr>,
    ) -> impl Future<Output = Result<TokenResponse, ApiError>> + Send;
    fn list_users(&self) -> impl Future<Output = Result<UserList, ApiError>> + Send;
    fn create_user(
        &self,
        req: CreateUserRequest,
    ) -> impl Future<Output = Result<UserInfo, ApiError>> + Send;
    fn update_user(
        &self,
        name: String,
        req: UpdateUserRequest,
    ) -> impl Future<Output = Result<UserInfo, ApiError>> + Send;
    /// Delete a user; answers the log index of the delete.
    fn delete_user(&self, name: String) -> impl Future<Output = Result<u64, ApiError>> + Send;
    fn list_api_keys(&self) -> impl Future<Output = Result<ApiKeyList, ApiError>> + Send;
    /// Make an API key; `by` is who asked. The key is in the answer, and nowhere else ever.
    fn create_api_key(
        &self,
        by: Principal,
        req: CreateApiKeyRequest,
    ) -> impl Future<Output = Result<CreatedApiKey, ApiError>> + Send;
    /// Revoke an API key; answers the log index of the revocation.
    fn revoke_api_key(&self, id: String) -> impl Future<Output = Result<u64, ApiError>> + Send;

    /// Every member of the cluster, as this node and the leader see it.
    fn cluster_status(&self) -> impl Future<Output = Result<serde_json::Value, ApiError>> + Send;
    /// Make this node (not yet in a cluster) a new one-member cluster.
    fn cluster_init(&self) -> impl Future<Output = Result<serde_json::Value, ApiError>> + Send;
    /// Make this node join the cluster of the node at `req.seed`.
    fn cluster_join(
        &self,
        req: JoinClusterRequest,
    ) -> impl Future<Output = Result<serde_json::Value, ApiError>> + Send;
    /// Make learner `id` a voter.
    fn cluster_promote(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<serde_json::Value, ApiError>> + Send;
    /// Remove node `id` from the cluster.
    fn cluster_remove(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<serde_json::Value, ApiError>> + Send;
    /// A digest of this node's whole store and the index it is at (replicas at the same index
    /// have equal digests).
    fn store_digest(&self) -> impl Future<Output = Result<serde_json::Value, ApiError>> + Send;
    /// A consistent snapshot of this node's whole state (a backup), as a file to stream.
    fn snapshot(&self) -> impl Future<Output = Result<SnapshotDownload, ApiError>> + Send;
    /// Fault injection (only when enabled): cut this node's links to other nodes.
    fn cut_links(
        &self,
        req: CutLinksRequest,
    ) -> impl Future<Output = Result<serde_json::Value, ApiError>> + Send;
    /// Fault injection (only when enabled): the next entry this node applies fails as a broken
    /// disk would fail it, so its consensus stops and the node stops.
    fn fail_storage(&self) -> impl Future<Output = Result<serde_json::Value, ApiError>> + Send;

    /// Record a search (the node's search events); must not wait.
    fn record_search(&self, record: SearchRecord);
    /// What the searches of a time range looked like (every node's, merged, unless `local`).
    fn search_analytics(
        &self,
        query: AnalyticsQuery,
    ) -> impl Future<Output = Result<serde_json::Value, ApiError>> + Send;

    /// Called once per HTTP request, after the response is made (for metrics).
    fn record_request(&self, method: &str, route: &str, status: u16, seconds: f64);
    /// Called when a request starts (`+1`) and when it ends or is dropped (`-1`), for the gauge
    /// of requests in flight.
    fn requests_in_flight(&self, method: &str, route: &str, delta: i64);
}

/// A snapshot file for `GET /api/v1/admin/snapshot`: opened before it is streamed, so a newer
/// snapshot that replaces it on disk cannot cut the download short.
pub struct SnapshotDownload {
    pub file: tokio::fs::File,
    pub bytes: u64,
    /// The last log index the snapshot holds.
    pub applied_index: u64,
    pub node_id: u64,
}
