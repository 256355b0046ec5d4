//! Uploaded files into documents. Each file's text is extracted (`shoal_extract`) in a worker
//! process of its own (`shoal extract-worker`, this same binary), `ingest.extract_workers` at a
//! time: the worker runs at the ingest threads' priority, with no more than
//! `ingest.extract_memory_bytes` of address space beyond the program's own, and is killed when
//! `ingest.extract_timeout_ms` (or the request's time) has passed. So a file that never ends,
//! needs all the memory there is or crashes its reader (a stack overflow cannot be caught) fails
//! its document with a reason, and the node, its threads and the rest of the upload go on. What
//! helps search comes along as metadata: the format, the file name, the title, the headings and
//! the page count (each chunk's own pages are found from the form feeds between a PDF's pages).

use std::io::{Read, Write};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use shoal_api::dto::{DocumentInput, ExtractedUpload, UnreadableFile, UploadedFile};
use shoal_extract::{Extracted, Format, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::config::Config;

/// Headings kept as metadata per document.
const MAX_HEADINGS: usize = 20;

/// The node's extraction limits.
pub fn limits(config: &Config) -> Limits {
    let c = &config.ingest;
    Limits {
        // a character is at least a byte: the byte limit of a document's text bounds it too
        max_chars: c.max_document_bytes,
        max_pages: c.max_pages_per_document,
        max_inflated_bytes: c.max_inflated_bytes,
        max_records: c.max_records_per_file,
    }
}

/// What the node tells an extraction worker, as one JSON line ahead of the file's bytes.
#[derive(Debug, Serialize, Deserialize)]
struct WorkerJob {
    file_name: Option<String>,
    content_type: Option<String>,
    limits: Limits,
    /// The worker's address-space limit (RLIMIT_AS).
    memory_bytes: u64,
    nice: i32,
}

/// The worker's answer on its standard output.
type WorkerAnswer = Result<(Format, Extracted), String>;

/// `shoal extract-worker`: read one job and one file from standard input, write the answer as
/// JSON to standard output. Run by the node, one process per file (see the module's comment).
pub fn worker_main() -> ExitCode {
    let mut input = Vec::new();
    if std::io::stdin().lock().read_to_end(&mut input).is_err() {
        return ExitCode::FAILURE;
    }
    let Some(newline) = input.iter().position(|&b| b == b'\n') else {
        eprintln!("extract-worker: the input has no job line (this command is run by a node)");
        return ExitCode::from(2);
    };
    let job: WorkerJob = match serde_json::from_slice(&input[..newline]) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("extract-worker: the job line is not valid: {e}");
            return ExitCode::from(2);
        }
    };
    limit_self(job.memory_bytes, job.nice);
    let answer: WorkerAnswer = shoal_extract::extract_any(
        &input[newline + 1..],
        job.file_name.as_deref(),
        job.content_type.as_deref(),
        &job.limits,
    )
    .map_err(|e| e.to_string());
    drop(input);
    let mut out = std::io::stdout().lock();
    let written = serde_json::to_writer(&mut out, &answer).map_err(std::io::Error::from);
    match written.and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// Cap this process's address space at what it uses now (the program, its input) plus
/// `memory_bytes`, and lower its priority to the ingest threads'.
fn limit_self(memory_bytes: u64, nice: i32) {
    #[cfg(target_os = "linux")]
    {
        let now = crate::memory::process_memory().map_or(0, |m| m.virtual_bytes);
        let bytes = now.saturating_add(memory_bytes);
        let limit = libc::rlimit {
            rlim_cur: bytes as libc::rlim_t,
            rlim_max: bytes as libc::rlim_t,
        };
        // SAFETY: setrlimit reads the struct it is given; setpriority reads its arguments. A
        // failure leaves the process as it was (the node's kill at the deadline still holds).
        unsafe {
            let _ = libc::setrlimit(libc::RLIMIT_AS, &limit);
            let _ = libc::setpriority(libc::PRIO_PROCESS, 0, nice);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (memory_bytes, nice);
}

/// The program that runs extraction workers: this very binary (on Linux through
/// `/proc/self/exe`, which still works when the file was replaced by an upgrade).
fn worker_program() -> std::path::PathBuf {
    if cfg!(target_os = "linux") {
        "/proc/self/exe".into()
    } else {
        std::env::current_exe().unwrap_or_else(|_| "shoal".into())
    }
}

/// Extract one file in a worker process within `deadline`; the reason in words when it cannot
/// be read.
async fn extract_in_worker(
    file: &UploadedFile,
    config: &Config,
    deadline: Duration,
) -> WorkerAnswer {
    let c = &config.ingest;
    let job = WorkerJob {
        file_name: file.file_name.clone(),
        content_type: file.content_type.clone(),
        limits: limits(config),
        memory_bytes: c.extract_memory_bytes,
        nice: config.threads.ingest_nice,
    };
    let mut header = serde_json::to_vec(&job).map_err(|e| e.to_string())?;
    header.push(b'\n');
    let mut child = tokio::process::Command::new(worker_program())
        .arg("extract-worker")
        // a reader of hostile files gets none of the node's settings (its secrets among them)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            tracing::error!(error = %e, "an extraction worker could not start");
            format!("the file could not be read now (the node could not start its reader: {e}); upload it again")
        })?;
    let (Some(mut stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(
            "the file could not be read now (the reader had no pipes); upload it again".into(),
        );
    };
    // What a worker may answer: the text of a document (JSON may escape a byte into six) or of
    // the file's records, whichever is larger, and room for the rest.
    let cap = 6 * (4 * c.max_document_bytes).max(file.bytes.len()) + (1 << 20);
    let bytes = file.bytes.clone();
    let work = async {
        let write = async move {
            // a worker that stops early closes its end: its exit status tells why
            let _ = stdin.write_all(&header).await;
            let _ = stdin.write_all(&bytes).await;
        };
        let mut out = Vec::new();
        let mut limited = (&mut stdout).take(cap as u64 + 1);
        let read = limited.read_to_end(&mut out);
        let (_, read) = tokio::join!(write, read);
        if read.is_err() || out.len() > cap {
            // an answer past the cap: the worker would block on its full pipe until the deadline
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err("the file's text is too large to take in (split the file)".to_string());
        }
        Ok((out, child.wait().await))
    };
    // (on a timeout the future, and `child` with it, is dropped: kill_on_drop ends the worker)
    let (out, status) = match tokio::time::timeout(deadline, work).await {
        Ok(done) => done?,
        Err(_) => {
            return Err(format!(
                "reading the file took longer than {} ms (ingest.extract_timeout_ms, within server.request_timeout_ms)",
                deadline.as_millis()
            ));
        }
    };
    let status =
        status.map_err(|e| format!("the file could not be read (the reader was lost: {e})"))?;
    if !status.success() {
        return Err(crashed(status, c.extract_memory_bytes));
    }
    // a large answer is parsed off the async workers
    tokio::task::spawn_blocking(move || {
        serde_json::from_slice::<WorkerAnswer>(&out).map_err(|e| {
            format!("the file could not be read (the reader's answer was not valid: {e})")
        })?
    })
    .await
    .map_err(|_| "the file could not be read (the reader's answer was lost)".to_string())?
}

/// Why a worker that ended badly ended, in words for the uploader.
fn crashed(status: std::process::ExitStatus, memory_bytes: u64) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        // an allocation refused at the address-space limit aborts the worker
        Some(libc::SIGABRT) | Some(libc::SIGSEGV) | Some(libc::SIGBUS) | Some(libc::SIGKILL) => {
            format!(
                "the file could not be read: its reader crashed or needed more than {} MiB \
                 (ingest.extract_memory_bytes); the file is probably damaged or built to exhaust readers",
                memory_bytes >> 20
            )
        }
        // a panic in the reader: a case it did not expect, in a damaged file
        _ if status.code() == Some(101) => {
            "the file could not be read: its reader failed on it (the file is probably damaged)"
                .to_string()
        }
        _ => format!("the file could not be read (its reader ended with {status})"),
    }
}

/// Extract every file of an upload, all of it by `deadline` (the request's): a file waits for a
/// worker slot and is read only within what is left of it. More than
/// `ingest.max_documents_per_request` documents stop the upload at once (a 400), before the rest
/// is read or any document is made.
pub async fn extract(
    files: Vec<UploadedFile>,
    config: &Config,
    slots: Arc<Semaphore>,
    deadline: Instant,
) -> Result<ExtractedUpload, String> {
    use futures_util::StreamExt;
    let mut out = ExtractedUpload::default();
    let per_file = Duration::from_millis(config.ingest.extract_timeout_ms);
    let max_documents = config.ingest.max_documents_per_request;
    let too_many = move || {
        format!(
            "the upload makes more than {max_documents} documents (ingest.max_documents_per_request): send its files in several requests"
        )
    };
    if files.len() > max_documents {
        return Err(too_many());
    }
    let busy = "the node was reading other files until this request's time ran out \
                (server.request_timeout_ms): upload the file again";
    let count = files.len();
    // read in any order (a slow file does not hold back the count below), used in file order
    let mut tasks: futures_util::stream::FuturesUnordered<_> = files
        .into_iter()
        .enumerate()
        .map(|(i, file)| {
            let slots = slots.clone();
            async move {
                let left = deadline.saturating_duration_since(Instant::now());
                let slot = tokio::time::timeout(left, slots.acquire_owned()).await;
                let left = deadline.saturating_duration_since(Instant::now());
                let (Ok(Ok(_slot)), false) = (slot, left.is_zero()) else {
                    return (i, file, Err(busy.to_string()));
                };
                let result = extract_in_worker(&file, config, per_file.min(left)).await;
                (i, file, result)
            }
        })
        .collect();
    let mut read: Vec<Option<(UploadedFile, WorkerAnswer)>> = (0..count).map(|_| None).collect();
    let mut made = 0usize;
    while let Some((i, file, result)) = tasks.next().await {
        made += match &result {
            Ok((_, Extracted::Records(r))) => r.len(),
            _ => 1,
        };
        if made > max_documents {
            // the files still being read are dropped, and their workers killed with them
            return Err(too_many());
        }
        read[i] = Some((file, result));
    }
    drop(tasks);
    let config = &config.ingest;
    let too_long = |bytes: usize| {
        format!(
            "the extracted text is {bytes} bytes; a document may have at most {} (ingest.max_document_bytes)",
            config.max_document_bytes
        )
    };
    let mut ids = std::collections::HashSet::new();
    for (file, result) in read.into_iter().flatten() {
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
                    sections: doc
                        .sections
                        .into_iter()
                        .map(|s| (s.start as u32, s.heading))
                        .collect(),
                });
            }
            Ok((format, Extracted::Records(records))) => {
                for (i, r) in records.into_iter().enumerate() {
                    let metadata = described(&file, format, r.metadata);
                    out.documents.push(DocumentInput {
                        id: record_id(&file.id, i, &r.id),
                        text: r.text,
                        metadata: Some(metadata),
                        sections: Vec::new(),
                    });
                }
            }
        }
    }
    Ok(out)
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
