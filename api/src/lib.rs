//! The HTTP contract of shoal: routes, request and response types, errors and their HTTP status
//! codes. The node implements [`ShoalService`]; [`router`] turns any implementation into an axum
//! router with request ids, tracing, timeouts, body limits and request metrics.

pub mod auth;
pub mod dto;
mod error;
mod extract;
mod routes;
mod service;

pub use error::{ApiError, ApiErrorBody, ApiErrorDetail};
pub use extract::{validate_collection_name, validate_document_id};
pub use routes::{openapi_json, router, ApiDoc, RouterLimits};
pub use service::{ShoalService, SnapshotDownload};
