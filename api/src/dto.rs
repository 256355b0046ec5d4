//! Request and response bodies of the HTTP API (see docs/api.md).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HnswConfig {
    pub m: Option<u32>,
    pub ef_construction: Option<u32>,
}

/// What a collection's searches walk its graph with.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// The vectors themselves (4 bytes a value).
    None,
    /// An int8 copy of each vector (1 byte a value, 32 more a vector), held beside the vectors:
    /// a quarter of the memory a walk reads. The candidates a walk ends with are re-scored on
    /// the vectors, so scores are exact.
    Int8,
}

/// `PUT /api/v1/collections/{name}`. The body may be empty.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCollectionRequest {
    /// Vector dimension; defaults to the embedding model's. Only needed for collections searched
    /// with vectors of another model.
    pub dimension: Option<u32>,
    #[serde(default)]
    pub hnsw: HnswConfig,
    /// Defaults to the node's `index.quantization` (`none` unless configured).
    pub quantization: Option<Quantization>,
    /// Keep the vectors in a file the index maps (the page cache holds what searches read, and
    /// lets it go under memory pressure) instead of on its heap. Default false.
    pub vectors_on_disk: Option<bool>,
}

/// `PATCH /api/v1/collections/{name}`: what to change; at least one field.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCollectionRequest {
    /// What the collection's searches walk its graph with from now on. Its points stay; each
    /// node's shard of it loads again (from its graph dump where it has one).
    pub quantization: Option<Quantization>,
    /// Where its index keeps the vectors from now on (see [`CreateCollectionRequest`]).
    pub vectors_on_disk: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct IndexInfo {
    pub m: u32,
    pub ef_construction: u32,
    pub quantization: Quantization,
    pub vectors_on_disk: bool,
    pub live_points: u64,
    pub tombstones: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct CollectionInfo {
    pub name: String,
    pub dimension: u32,
    pub documents: u64,
    pub chunks: u64,
    /// Milliseconds since the Unix epoch.
    pub created_at: u64,
    pub index: IndexInfo,
    /// On the answer to a create: the log index the collection was created at.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub log_index: Option<u64>,
    /// What the collection takes on this node (on `GET /api/v1/collections/{name}` only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub storage: Option<CollectionStorage>,
}

/// What a collection takes on the node that answers, measured when asked (at most every 10 s).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct CollectionStorage {
    /// Its documents' records in the store: text, metadata, keys.
    pub documents_bytes: u64,
    /// Its chunks' records and vectors in the store, keys included.
    pub chunks_bytes: u64,
    /// The files of its index's last graph dump.
    pub index_files_bytes: u64,
    /// Its vectors as the index holds them in memory (allocated a segment at a time, each vector
    /// padded to a multiple of 8 floats), and their int8 copies where the collection's
    /// quantization is `int8`. Vectors kept on disk are not in it.
    pub vectors_memory_bytes: u64,
    /// Its vectors in the file its index maps, where they are kept on disk (whole segments):
    /// the page cache, not the heap, holds those searches read.
    pub vectors_mapped_bytes: u64,
    /// The rest of its graph in memory: the links of every layer, the nodes' ids and flags, and
    /// the nodes by point id.
    pub graph_memory_bytes: u64,
    /// Its keyword (BM25) index in memory: its segments.
    pub keyword_memory_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CollectionList {
    pub collections: Vec<CollectionInfo>,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentInput {
    pub id: String,
    pub text: String,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// Where the sections of an uploaded file begin in `text`, with their headings (made by the
    /// upload's extraction; not part of the JSON a client sends).
    #[serde(skip)]
    pub sections: Vec<(u32, String)>,
}

/// `POST /api/v1/collections/{name}/documents`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddDocumentsRequest {
    pub documents: Vec<DocumentInput>,
    /// Uploaded files whose text could not be extracted (a multipart upload only): they fail
    /// in the job with their reasons.
    #[serde(skip)]
    pub unreadable: Vec<UnreadableFile>,
}

/// The form of a file upload (`multipart/form-data`), as the OpenAPI description shows it.
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
pub struct UploadForm {
    /// One part per file (plain text, Markdown, HTML, PDF, DOCX, JSON or JSONL records), each
    /// with its file name; the type is told from the content.
    #[schema(value_type = Vec<String>, format = Binary)]
    pub file: Vec<String>,
    /// Document ids, one per file in order (default: the file's name).
    pub id: Option<Vec<String>>,
    /// A JSON object of metadata for every document of the upload.
    pub metadata: Option<String>,
}

/// An uploaded file whose text could not be extracted, and why.
#[derive(Debug, Clone)]
pub struct UnreadableFile {
    /// The id its document would have had.
    pub id: String,
    pub reason: String,
}

/// One file of a `multipart/form-data` upload.
#[derive(Debug, Clone)]
pub struct UploadedFile {
    /// The document id (an `id` field, else the file's name).
    pub id: String,
    pub file_name: Option<String>,
    pub content_type: Option<String>,
    pub bytes: axum::body::Bytes,
    /// The request's `metadata` field, for every document of the upload.
    pub metadata: Map<String, Value>,
}

/// What the files of an upload became.
#[derive(Debug, Clone, Default)]
pub struct ExtractedUpload {
    pub documents: Vec<DocumentInput>,
    pub unreadable: Vec<UnreadableFile>,
}

/// Answer to an accepted ingest (`202 Accepted`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AddDocumentsResponse {
    pub job_id: String,
    pub status_url: String,
    pub documents: u64,
    /// The log index the documents were accepted at (pass it as `min_index` to read your writes
    /// on another node).
    pub index: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Completed,
    CompletedWithErrors,
    /// Its collection was dropped before it finished.
    Cancelled,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobDocumentError {
    pub document_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobInfo {
    pub id: String,
    pub collection: String,
    pub state: JobState,
    pub total: u64,
    pub indexed: u64,
    pub failed: u64,
    /// Replaced by a later request or deleted before they were indexed.
    pub superseded: u64,
    pub errors: Vec<JobDocumentError>,
    pub created_at: u64,
    pub updated_at: u64,
    /// The log index of the job's last change: once it reads as done, a search with this as
    /// `min_index` on any node sees every document it indexed.
    pub index: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DocumentState {
    Pending,
    Indexed,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DocumentInfo {
    pub id: String,
    pub state: DocumentState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub version: u64,
    pub job_id: String,
    pub metadata: Map<String, Value>,
    /// Searchable chunks (of the indexed version).
    pub chunks: u64,
    pub text: String,
    /// While pending: the node embedding it, and until when its claim holds (ms since the epoch).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub claimed_by: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub claimed_until: Option<u64>,
    /// The searchable chunks, in order (of the indexed version).
    #[serde(default)]
    pub chunk_list: Vec<ChunkInfo>,
    /// Where the sections of an uploaded file begin in `text` (its outline), when it has headings.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub sections: Vec<SectionInfo>,
}

/// A section of a document: the byte offset in its text where its heading begins.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SectionInfo {
    pub start: u32,
    pub heading: String,
}

/// One chunk of a document: its place in the text and the text itself.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChunkInfo {
    pub chunk_index: u32,
    /// Byte range in the document's text.
    pub start: u32,
    pub end: u32,
    /// The first and the last page the chunk is on, for a document with pages (a PDF).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub page: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_page: Option<u32>,
    /// The heading of the section the chunk begins in (an uploaded file with headings).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub section: Option<String>,
    pub text: String,
}

/// `GET /api/v1/collections/{name}/documents`: a page of documents in id order.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DocumentsQuery {
    /// Documents per page (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Start after this document id (the `next` of the previous page).
    pub after: Option<String>,
    /// Only documents in this state.
    pub state: Option<DocumentState>,
}

/// A document in a listing (without its text).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DocumentSummary {
    pub id: String,
    pub state: DocumentState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub version: u64,
    pub job_id: String,
    pub metadata: Map<String, Value>,
    pub chunks: u64,
    /// Bytes of text.
    pub bytes: u64,
    pub accepted_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DocumentList {
    pub documents: Vec<DocumentSummary>,
    /// Give this as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `GET /api/v1/jobs`: jobs, newest first.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    /// `running`, `completed`, `completed_with_errors`, `cancelled`, or `failed` (any job with a
    /// failed document).
    pub state: Option<String>,
    pub collection: Option<String>,
    /// Jobs per page (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Skip this many (the `next` of the previous page).
    pub offset: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobInfo>,
    /// Give this as `offset` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<usize>,
}

/// `POST /api/v1/collections/{name}/search`: exactly one of `query` and `vector`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    pub query: Option<String>,
    pub vector: Option<Vec<f32>>,
    pub top_k: Option<usize>,
    /// See docs/api.md: `document_id` and `metadata` conditions.
    pub filter: Option<Value>,
    /// Scan every point instead of the graph (slow, exact).
    #[serde(default)]
    pub exact: bool,
    /// Search beam width; larger is slower and more accurate.
    pub ef: Option<usize>,
    /// Rescore the best `rerank_candidates` hits with the node's cross-encoder (needs `query`).
    #[serde(default)]
    pub rerank: bool,
    /// How many hits (of whatever the mode ranked) the reranker rescores (default 50).
    pub rerank_candidates: Option<usize>,
    /// `local` (default): answer from this node's replica at once. `strong`: first learn the
    /// leader's commit index (a linearizable read) and wait until this node has applied it.
    pub consistency: Option<Consistency>,
    /// Wait until this node has applied (and indexed) at least this log index (read your own
    /// writes on any node: the index a write answered with).
    pub min_index: Option<u64>,
    /// `vector` (default): by meaning, the query's embedding against the chunks'. `keyword`:
    /// BM25 over the chunks' words (needs `query`). `hybrid`: both, fused (needs `query`; a
    /// `vector` given with it is used for the vector side instead of the query's embedding).
    pub mode: Option<RetrievalMode>,
    /// How `hybrid` fuses its two rankings: `rrf` (default, reciprocal rank fusion) or
    /// `weighted` (each side's scores scaled to 0..1, then `alpha` · vector + (1 - alpha) ·
    /// keyword).
    pub fusion: Option<FusionKind>,
    /// The vector side's weight in `weighted` fusion, 0..=1 (default 0.5; giving it implies
    /// `weighted`).
    pub alpha: Option<f32>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RetrievalMode {
    #[default]
    Vector,
    Keyword,
    Hybrid,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FusionKind {
    Rrf,
    Weighted,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    #[default]
    Local,
    Strong,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchHit {
    pub document_id: String,
    pub chunk_index: u32,
    pub text: String,
    /// The ranking score: cosine similarity of the vectors (`vector` mode), BM25 (`keyword`), or
    /// the fused score (`hybrid`).
    pub score: f32,
    /// `hybrid`: the hit's cosine similarity, if the vector side found it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vector_score: Option<f32>,
    /// `keyword` and `hybrid`: the hit's BM25 score, if the keyword side found it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub keyword_score: Option<f32>,
    /// The cross-encoder's score, when the search asked for reranking (hits are then ordered by it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerank_score: Option<f32>,
    pub metadata: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchResponse {
    pub hits: Vec<SearchHit>,
    pub took_ms: f64,
    /// Where the time went.
    pub timings: SearchTimings,
    /// The log index the collection's index reflected when the search ran.
    pub applied_index: u64,
    /// True when this node cannot vouch that it is current (no leader, or cut off from the
    /// majority): the hits may miss recent writes.
    pub stale: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stale_reason: Option<String>,
}

/// A search's time per stage, in ms (the rest of `took_ms` is waiting for a consistent read,
/// loading the collection's shard and the answer itself).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchTimings {
    /// Embedding the query (0 for a `vector` search or a cached query).
    pub embed_ms: f64,
    /// The index walk, with reading the hits' chunks.
    pub index_ms: f64,
    /// The cross-encoder (present when the search reranked).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rerank_ms: Option<f64>,
}

/// `POST /api/v1/cluster/join`: make this node join the cluster of the node at `seed`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinClusterRequest {
    pub seed: String,
    /// Ask to become a voter once caught up.
    #[serde(default)]
    pub voter: bool,
}

/// `PUT /api/v1/admin/faults/links` (fault injection): cut this node's links to these nodes
/// (both ways); an empty list heals them.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CutLinksRequest {
    pub cut: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthResponse {
    pub status: String,
    pub version: String,
    pub uptime_s: f64,
    pub embedder: ModelState,
    pub reranker: ModelState,
}

/// A model of the node and its state: `disabled` (none configured), `warming_up`, `ready`,
/// `restarting` (its actor failed and is being restarted).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelState {
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReadyResponse {
    pub ready: bool,
    /// Why the node is not ready, one sentence each (empty when ready).
    pub reasons: Vec<String>,
    /// Component name to its state, for example `"embedder": "ready"`.
    pub components: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActorInfo {
    pub name: String,
    pub kind: String,
    /// Restarts after failures since the node started.
    pub restarts: u64,
    pub uptime_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActorList {
    pub actors: Vec<ActorInfo>,
}

/// `POST /v1/embeddings`, the OpenAI request shape.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingsRequest {
    /// A string or a list of strings.
    pub input: Value,
    #[serde(default)]
    pub model: Option<String>,
    /// `float` (default) or `base64` (little-endian f32, as the OpenAI clients ask for).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Accepted for compatibility; only the model's own dimension is served.
    #[serde(default)]
    pub dimensions: Option<usize>,
    #[serde(default)]
    pub user: Option<String>,
    /// What the inputs are, for models with prompts (e5, bge, ...): `query` (or
    /// `search_query`) gets the model's query prompt, `document` (or `passage`,
    /// `search_document`) its document prompt, as searches and ingest do. Absent: the model's
    /// default prompt, usually none.
    #[serde(default)]
    pub input_type: Option<String>,
    /// The model's prompt of this name (`prompts` of its config_sentence_transformers.json),
    /// as TEI's `prompt_name`; a name the model lacks is a 400.
    #[serde(default)]
    pub prompt_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingData {
    pub object: String,
    pub index: usize,
    /// A list of floats, or a base64 string.
    pub embedding: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingsUsage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingsResponse {
    pub object: String,
    pub data: Vec<EmbeddingData>,
    pub model: String,
    pub usage: EmbeddingsUsage,
}

/// `POST /v1/rerank`: Cohere (`documents`, `top_n`, `return_documents`) or Text Embeddings
/// Inference (`texts`, `return_text`, `raw_scores`) request shape; the answer has the shape of
/// the request.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct RerankRequest {
    pub query: String,
    /// Cohere: strings or `{"text": ...}` objects.
    #[serde(default)]
    pub documents: Option<Vec<Value>>,
    /// TEI: strings.
    #[serde(default)]
    pub texts: Option<Vec<Value>>,
    #[serde(default)]
    pub top_n: Option<usize>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub return_documents: Option<bool>,
    #[serde(default)]
    pub return_text: Option<bool>,
    /// TEI: logits instead of sigmoid scores.
    #[serde(default)]
    pub raw_scores: Option<bool>,
    #[serde(default)]
    pub truncate: Option<bool>,
    #[serde(default)]
    pub max_chunks_per_doc: Option<usize>,
    /// Cohere v2: accepted; documents are cut at the reranker's own token limit.
    #[serde(default)]
    pub max_tokens_per_doc: Option<usize>,
}

/// Text Embeddings Inference's `/embed` request.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct TeiEmbedRequest {
    /// A string, a list of strings, or (sentence similarity) `{"source_sentence", "sentences"}`.
    pub inputs: Value,
    /// Only `true` (the default) is served.
    #[serde(default)]
    pub normalize: Option<bool>,
    /// Accepted: inputs are cut at the model's token limit.
    #[serde(default)]
    pub truncate: Option<bool>,
    #[serde(default)]
    pub truncation_direction: Option<String>,
    #[serde(default)]
    pub prompt_name: Option<String>,
    /// Sentence similarity's parameters (none is used).
    #[serde(default)]
    pub parameters: Option<Value>,
}

/// One scored document, best first, with its index in the request.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RerankScore {
    pub index: usize,
    /// The model's raw score (logit for single-label models).
    pub logit: f32,
    /// 0..1 relevance (sigmoid of the logit).
    pub relevance: f32,
}

// ------------------------------------------------------------------ auth

/// `POST /api/v1/auth/token`: sign in with a password.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds the token is valid for.
    pub expires_in: u64,
    pub role: crate::auth::Role,
}

/// `POST /api/v1/auth/users`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub username: String,
    pub password: String,
    pub role: crate::auth::Role,
    /// Granted collections (names, `prefix*` or `*`); ignored for admins.
    #[serde(default)]
    pub collections: Vec<String>,
}

/// `PATCH /api/v1/auth/users/{name}`: what to change. A new password ends every token the user
/// had.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    pub password: Option<String>,
    /// The user's present password: required when users change their own password (an admin
    /// may leave it out).
    pub current_password: Option<String>,
    pub role: Option<crate::auth::Role>,
    pub collections: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserInfo {
    pub username: String,
    pub role: crate::auth::Role,
    pub collections: Vec<String>,
    pub created_at: u64,
    pub updated_at: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserList {
    pub users: Vec<UserInfo>,
}

/// `POST /api/v1/auth/keys`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    /// What the key is for.
    pub name: String,
    pub role: crate::auth::Role,
    #[serde(default)]
    pub collections: Vec<String>,
    /// The key stops working after this many seconds (none: never).
    pub expires_in_s: Option<u64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiKeyInfo {
    pub id: String,
    pub name: String,
    pub role: crate::auth::Role,
    pub collections: Vec<String>,
    pub created_by: String,
    pub created_at: u64,
    pub expires_at: Option<u64>,
}

/// A new API key: `key` is shown this once and never again.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CreatedApiKey {
    pub key: String,
    #[serde(flatten)]
    pub info: ApiKeyInfo,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiKeyList {
    pub keys: Vec<ApiKeyInfo>,
}

// ------------------------------------------------------------------ analytics

/// `GET /api/v1/analytics/searches`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsQuery {
    /// Start of the range: ms since the epoch, or a duration back from now (`15m`, `24h`, `7d`);
    /// default `1h`.
    pub since: Option<String>,
    /// End of the range (same forms, or `now`, the default).
    pub until: Option<String>,
    /// Only the searches of this collection.
    pub collection: Option<String>,
    /// Also cut the range in intervals of this length (`10s`, `1m`, `1h`, or ms), at most 1,000
    /// of them: `series` in the answer, and each member's in `by_node`.
    pub step: Option<String>,
    /// Only this node's searches (what nodes ask each other); default: every node's.
    pub local: Option<bool>,
}

/// One search as the router saw it, for the node's search events.
#[derive(Debug, Clone)]
pub struct SearchRecord {
    pub user: String,
    pub collection: String,
    pub rerank: bool,
    pub latency: std::time::Duration,
    pub hits: u32,
    /// The HTTP status answered; 499 when the request was gone before its answer.
    pub status: u16,
    /// The query text, when it found nothing.
    pub empty_query: Option<String>,
}
