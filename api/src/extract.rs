//! Request extraction with errors in the API's JSON shape.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::ApiError;

/// A JSON body. Malformed JSON and wrong field types are a 400 that says where the problem is;
/// a body over the configured limit is a 413. The content type is not checked.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(body_error)?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// A JSON body read now and parsed later, so that a handler refuses a caller without the right
/// (403) before it judges what they sent (400): a reader learns nothing of an admin route's
/// request shape. A body over the limit is still a 413 at once.
pub struct JsonBody<T> {
    bytes: Bytes,
    _of: std::marker::PhantomData<fn() -> T>,
}

impl<T, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(body_error)?;
        Ok(JsonBody {
            bytes,
            _of: std::marker::PhantomData,
        })
    }
}

impl<T: DeserializeOwned> JsonBody<T> {
    /// The body as `T` (as [`ApiJson`] reads it).
    pub fn parse(&self) -> Result<T, ApiError> {
        parse_json(&self.bytes)
    }

    /// The body as `T`, or `T::default()` when it is empty.
    pub fn parse_or_default(&self) -> Result<T, ApiError>
    where
        T: Default,
    {
        if self.bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(T::default());
        }
        parse_json(&self.bytes)
    }
}

fn body_error(rejection: BytesRejection) -> ApiError {
    let text = rejection.body_text();
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE
        || text.contains("length limit")
    {
        ApiError::PayloadTooLarge(format!("request body is too large: {text}"))
    } else {
        ApiError::BadRequest(format!("could not read the request body: {text}"))
    }
}

pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::InvalidJson(
            "request body is empty; expected JSON".into(),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." || path == "?" {
            ApiError::InvalidJson(format!("invalid JSON: {inner}"))
        } else {
            ApiError::InvalidJson(format!("invalid JSON at `{path}`: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::InvalidJson(format!("invalid JSON: {e}")))?;
    Ok(value)
}

/// Collection names: 1 to 64 ASCII letters, digits, `_` or `-`.
pub fn validate_collection_name(name: &str) -> Result<(), ApiError> {
    if is_name(name, b"") {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid collection name `{name}`: use 1 to 64 ASCII letters, digits, `_` or `-`"
        )))
    }
}

/// A name of 1 to 64 ASCII letters, digits, `_`, `-` or one of `extra`.
pub(crate) fn is_name(name: &str, extra: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || extra.contains(&b))
}

/// Document ids: 1 to 512 bytes, no control characters.
pub fn validate_document_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 512 || id.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "invalid document id {id:?}: use 1 to 512 bytes without control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Doc {
        id: String,
        n: u32,
    }

    #[test]
    fn json_errors_say_where() {
        let e = parse_json::<Doc>(br#"{"id": "a", "n": }"#).unwrap_err();
        assert!(matches!(e, ApiError::InvalidJson(_)));
        assert!(e.to_string().contains("line 1 column"), "{e}");
        let e =
            parse_json::<Vec<Doc>>(br#"[{"id": "a", "n": 1}, {"id": "b", "n": "x"}]"#).unwrap_err();
        assert!(e.to_string().contains("[1].n"), "{e}");
        let e = parse_json::<Doc>(br#"{"id": "a", "n": 1} trailing"#).unwrap_err();
        assert!(e.to_string().contains("trailing"), "{e}");
        assert!(parse_json::<Doc>(b"").is_err());
    }

    #[test]
    fn names_and_ids() {
        assert!(validate_collection_name("my_docs-2").is_ok());
        assert!(validate_collection_name("").is_err());
        assert!(validate_collection_name("a/b").is_err());
        assert!(validate_collection_name(&"x".repeat(65)).is_err());
        assert!(validate_document_id("doc 1/ü").is_ok());
        assert!(validate_document_id("a\nb").is_err());
    }
}
