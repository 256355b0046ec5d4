//! Uploaded files into documents: each file's text is extracted (`shoal_extract`) on the
//! blocking threads, at most two at a time, each within `ingest.extract_timeout_ms`; a file that
//! cannot be read becomes a reason for its job, and the rest of the upload goes on. What helps
//! search comes along as metadata: the format, the file name, the title, the headings and the
//! page count.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use shoal_api::dto::{DocumentInput, ExtractedUpload, UnreadableFile, UploadedFile};
use shoal_extract::{Extracted, Format, Limits};
use tokio::sync::Semaphore;

use crate::config::IngestConfig;

/// Headings kept as metadata per document.
const MAX_HEADINGS: usize = 20;

/// The node's extraction limits.
pub fn limits(c: &IngestConfig) -> Limits {
    Limits {
        // a character is at least a byte: the byte limit of a document's text bounds it too
        max_chars: c.max_document_bytes,
        max_pages: c.max_pages_per_document,
        max_inflated_bytes: c.max_inflated_bytes,
        max_records: c.max_records_per_file,
    }
}

/// Extract every file of an upload.
pub async fn extract(
    files: Vec<UploadedFile>,
    config: &IngestConfig,
    slots: Arc<Semaphore>,
) -> ExtractedUpload {
    let limits = limits(config);
    let timeout = Duration::from_millis(config.extract_timeout_ms);
    let mut out = ExtractedUpload::default();
    let tasks: Vec<_> = files
        .into_iter()
        .map(|file| {
            let slots = slots.clone();
            async move {
                let Ok(slot) = slots.acquire_owned().await else {
                    return (file, Err("the node is stopping".to_string()));
                };
                let (bytes, name, declared) = (
                    file.bytes.clone(),
                    file.file_name.clone(),
                    file.content_type.clone(),
                );
                let work = tokio::task::spawn_blocking(move || {
                    // the slot is the thread's: a file that timed out holds it until it stops
                    let _slot = slot;
                    shoal_extract::extract_any(
                        &bytes,
                        name.as_deref(),
                        declared.as_deref(),
                        &limits,
                    )
                });
                let result = match tokio::time::timeout(timeout, work).await {
                    Ok(Ok(Ok(extracted))) => Ok(extracted),
                    Ok(Ok(Err(e))) => Err(e.to_string()),
                    Ok(Err(_)) => Err("the file could not be read (the reader failed)".to_string()),
                    Err(_) => Err(format!(
                        "reading the file took longer than {} ms (ingest.extract_timeout_ms)",
                        timeout.as_millis()
                    )),
                };
                (file, result)
            }
        })
        .collect();
    let too_long = |bytes: usize| {
        format!(
            "the extracted text is {bytes} bytes; a document may have at most {} (ingest.max_document_bytes)",
            config.max_document_bytes
        )
    };
    let mut ids = std::collections::HashSet::new();
    for (file, result) in futures_util::future::join_all(tasks).await {
        // one id, one document: a later file or record with an id already taken fails
        let result = match result {
            Err(e) => Err(e),
            Ok((format, Extracted::Document(d))) => {
                if ids.insert(file.id.clone()) {
                    Ok((format, Extracted::Document(d)))
                } else {
                    Err(format!(
                        "another file of this upload has the id `{}`",
                        file.id
                    ))
                }
            }
            Ok((format, Extracted::Records(r))) => {
                let mut taken = None;
                for (i, rec) in r.iter().enumerate() {
                    let id = record_id(&file.id, i, &rec.id);
                    if !ids.insert(id.clone()) {
                        taken = Some(id);
                        break;
                    }
                }
                match taken {
                    None => Ok((format, Extracted::Records(r))),
                    Some(id) => Err(format!("the id `{id}` is given twice in this upload")),
                }
            }
        };
        let result = match result {
            Ok((_, Extracted::Document(d))) if d.text.len() > config.max_document_bytes => {
                Err(too_long(d.text.len()))
            }
            Ok((_, Extracted::Records(r)))
                if r.iter().any(|r| r.text.len() > config.max_document_bytes) =>
            {
                let n = r.iter().map(|r| r.text.len()).max().unwrap_or(0);
                Err(too_long(n))
            }
            other => other,
        };
        match result {
            Err(reason) => out.unreadable.push(UnreadableFile {
                id: file.id,
                reason,
            }),
            Ok((format, Extracted::Document(doc))) => {
                let mut metadata = described(&file, format, Map::new());
                if let Some(t) = doc.title {
                    metadata.entry("title").or_insert_with(|| t.into());
                }
                if !doc.headings.is_empty() {
                    let h: Vec<Value> = doc
                        .headings
                        .into_iter()
                        .take(MAX_HEADINGS)
                        .map(Value::from)
                        .collect();
                    metadata.entry("headings").or_insert(Value::Array(h));
                }
                if doc.page_count > 0 {
                    metadata
                        .entry("pages")
                        .or_insert_with(|| doc.page_count.into());
                }
                out.documents.push(DocumentInput {
                    id: file.id,
                    text: doc.text,
                    metadata: Some(metadata),
                });
            }
            Ok((format, Extracted::Records(records))) => {
                for (i, r) in records.into_iter().enumerate() {
                    let metadata = described(&file, format, r.metadata);
                    out.documents.push(DocumentInput {
                        id: record_id(&file.id, i, &r.id),
                        text: r.text,
                        metadata: Some(metadata),
                    });
                }
            }
        }
    }
    out
}

/// The id of record `i` of a file: its own, else the file's with the record's place.
fn record_id(file_id: &str, i: usize, own: &Option<String>) -> String {
    own.clone()
        .unwrap_or_else(|| format!("{file_id}#{}", i + 1))
}

/// A document's metadata from its file: the upload's `metadata` part, then what the document
/// itself carries (a record's), then the format and the file name where neither gave them
/// (what the uploader said wins over what the file says).
fn described(file: &UploadedFile, format: Format, own: Map<String, Value>) -> Map<String, Value> {
    let mut metadata = file.metadata.clone();
    metadata.extend(own);
    metadata
        .entry("format")
        .or_insert_with(|| format.name().into());
    if let Some(n) = &file.file_name {
        metadata
            .entry("file_name")
            .or_insert_with(|| n.clone().into());
    }
    metadata
}
