//! Text out of uploaded files, for ingest: the type is told from the content (a PDF, a DOCX, a
//! zip that is not one, JSON or JSONL records, HTML, Markdown, plain text), the text comes out
//! with what helps search (title, headings, page ranges), and every limit is enforced with a
//! reason a person understands: an empty, corrupt, encrypted or oversized file is an
//! [`ExtractError`], never a panic. Parsers that may still panic on hostile input (lopdf) run
//! under `catch_unwind`; one that loops or overflows its stack is the caller's to bound (run
//! extraction in a process of its own with a deadline).

use std::io::{Cursor, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

pub mod samples;

/// What extraction refuses, in words for the person who uploaded the file.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ExtractError {
    #[error("the file is empty")]
    Empty,
    #[error("the file is encrypted (password-protected): upload it without the password")]
    Encrypted,
    #[error("the file is damaged or not what it claims to be: {0}")]
    Corrupt(String),
    #[error("this kind of file is not supported: {0}")]
    Unsupported(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("the file holds no text (a scanned PDF has only images: it needs OCR first)")]
    NoText,
}

/// The kinds of file shoal reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Text,
    Markdown,
    Html,
    /// One JSON object (a record) or an array of them.
    Json,
    /// One JSON object per line.
    Jsonl,
    Pdf,
    Docx,
}

impl Format {
    pub fn name(&self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Markdown => "markdown",
            Format::Html => "html",
            Format::Json => "json",
            Format::Jsonl => "jsonl",
            Format::Pdf => "pdf",
            Format::Docx => "docx",
        }
    }
}

/// Bounds on one file's extraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Characters of text one document may have.
    pub max_chars: usize,
    /// Pages of a PDF.
    pub max_pages: usize,
    /// Bytes a compressed part (a PDF stream, a DOCX member) may inflate to.
    pub max_inflated_bytes: usize,
    /// Records of a JSON or JSONL file.
    pub max_records: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_chars: 1_000_000,
            max_pages: 2_000,
            max_inflated_bytes: 64 << 20,
            max_records: 10_000,
        }
    }
}

/// A section of a document: where its heading begins in [`Document::text`], and the heading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    pub start: usize,
    pub heading: String,
}

/// Sections kept per document (the first ones).
pub const MAX_SECTIONS: usize = 10_000;

/// What separates pages in the text of a PDF (U+000C, form feed, as pdftotext writes it): the
/// page of a place in the text is one more than the form feeds before it.
pub const PAGE_BREAK: char = '\u{c}';

/// A page's text: its number (from 1) and its byte range in [`Document::text`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageSpan {
    pub page: u32,
    pub start: usize,
    pub end: usize,
}

/// The text of one file, with what helps search.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Document {
    pub text: String,
    pub title: Option<String>,
    pub headings: Vec<String>,
    /// PDF only: where each page's text is (pages without text have none).
    pub pages: Vec<PageSpan>,
    /// Where each section begins in the text (at its heading): Markdown, HTML and DOCX, at most
    /// [`MAX_SECTIONS`].
    pub sections: Vec<Section>,
    /// PDF only: how many pages the file has.
    pub page_count: u32,
}

/// One record of a JSON or JSONL file: `{"id"?, "text", "metadata"?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: Option<String>,
    pub text: String,
    pub metadata: Map<String, Value>,
}

/// What a file holds: one document, or records that each become one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Extracted {
    Document(Document),
    Records(Vec<Record>),
}

fn too_many_chars(n: usize, limits: &Limits) -> ExtractError {
    ExtractError::TooLarge(format!(
        "the text has {n} characters; a document may have at most {} (split the file)",
        limits.max_chars
    ))
}

// ---------------------------------------------------------------- detection

/// Tell the format from the content. `name` (the file name) and `declared` (its declared media
/// type) only tell Markdown from plain text; binary formats are known by their bytes alone.
pub fn detect(
    bytes: &[u8],
    name: Option<&str>,
    declared: Option<&str>,
) -> Result<Format, ExtractError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ExtractError::Empty);
    }
    // A PDF starts with its header (a few bytes of junk before it are tolerated).
    let head = &bytes[..bytes.len().min(24)];
    if head.windows(5).any(|w| w == b"%PDF-") {
        return Ok(Format::Pdf);
    }
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return match zip::ZipArchive::new(Cursor::new(bytes)) {
            Ok(z) if z.index_for_name("word/document.xml").is_some() => Ok(Format::Docx),
            Ok(z) if z.index_for_name("xl/workbook.xml").is_some() => {
                Err(ExtractError::Unsupported("an Excel workbook (XLSX)".into()))
            }
            Ok(z) if z.index_for_name("ppt/presentation.xml").is_some() => Err(
                ExtractError::Unsupported("a PowerPoint presentation (PPTX)".into()),
            ),
            Ok(_) => Err(ExtractError::Unsupported(
                "a zip archive that is not a DOCX document".into(),
            )),
            Err(e) => Err(ExtractError::Corrupt(format!(
                "a damaged zip archive ({e})"
            ))),
        };
    }
    for (magic, what) in [
        (&b"\x89PNG"[..], "a PNG image"),
        (b"\xff\xd8\xff", "a JPEG image"),
        (b"GIF8", "a GIF image"),
        (b"\x1f\x8b", "a gzip archive"),
        (
            b"\xd0\xcf\x11\xe0",
            "a legacy Office document (DOC, XLS): save it as DOCX",
        ),
        (b"{\\rtf", "an RTF document"),
    ] {
        if bytes.starts_with(magic) {
            return Err(ExtractError::Unsupported(what.into()));
        }
    }
    let text = std::str::from_utf8(bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes)).map_err(
        |_| {
            ExtractError::Unsupported(
                "binary content that is neither PDF nor DOCX, or text that is not UTF-8".into(),
            )
        },
    )?;
    let trimmed = text.trim_start();
    let named = |exts: &[&str]| {
        name.is_some_and(|n| {
            let n = n.to_lowercase();
            exts.iter().any(|e| n.ends_with(e))
        })
    };
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let whole = serde_json::from_str::<Value>(text);
        if whole.is_ok() {
            return Ok(Format::Json);
        }
        let mut lines = text.lines().filter(|l| !l.trim().is_empty()).peekable();
        if lines.peek().is_some()
            && lines.all(|l| matches!(serde_json::from_str::<Value>(l), Ok(Value::Object(_))))
        {
            return Ok(Format::Jsonl);
        }
        // a file that says it is JSON and is not: damaged, not a text to index as it is
        let said_json = named(&[".json", ".jsonl", ".ndjson"])
            || declared.is_some_and(|d| d.to_lowercase().contains("json"));
        if let (true, Err(e)) = (said_json, whole) {
            return Err(ExtractError::Corrupt(format!(
                "the JSON is not valid ({e})"
            )));
        }
    }
    let named_md = named(&[".md", ".markdown"]);
    let declared_md = declared.is_some_and(|d| d.to_lowercase().contains("markdown"));
    let named_text =
        named(&[".txt", ".text"]) || declared.is_some_and(|d| d.starts_with("text/plain"));
    // HTML is markup from its first character; a Markdown or text file that shows some HTML is
    // still what its name says.
    let lower: String = trimmed
        .chars()
        .take(1024)
        .collect::<String>()
        .to_lowercase();
    let html_document = lower.starts_with("<!doctype html") || lower.starts_with("<html");
    let html_fragment =
        lower.starts_with('<') && (lower.contains("<body") || lower.contains("<head"));
    if html_document || (html_fragment && !named_md && !declared_md && !named_text) {
        return Ok(Format::Html);
    }
    let looks_md = text
        .lines()
        .take(200)
        .any(|l| l.starts_with("# ") || l.starts_with("## ") || l.starts_with("```"));
    if named_md || declared_md || (looks_md && !named_text) {
        return Ok(Format::Markdown);
    }
    Ok(Format::Text)
}

/// Detect, then extract.
pub fn extract_any(
    bytes: &[u8],
    name: Option<&str>,
    declared: Option<&str>,
    limits: &Limits,
) -> Result<(Format, Extracted), ExtractError> {
    let format = detect(bytes, name, declared)?;
    Ok((format, extract(bytes, format, limits)?))
}

/// Extract the text of a file of a known format.
pub fn extract(bytes: &[u8], format: Format, limits: &Limits) -> Result<Extracted, ExtractError> {
    let doc = match format {
        Format::Pdf => pdf(bytes, limits)?,
        Format::Docx => docx(bytes, limits)?,
        Format::Json | Format::Jsonl => return records(utf8(bytes)?, format, limits),
        Format::Html => html(utf8(bytes)?, limits)?,
        Format::Markdown => markdown(utf8(bytes)?, limits)?,
        Format::Text => Document {
            text: utf8(bytes)?.replace("\r\n", "\n"),
            ..Document::default()
        },
    };
    let chars = doc.text.chars().count();
    if chars > limits.max_chars {
        return Err(too_many_chars(chars, limits));
    }
    if doc.text.trim().is_empty() {
        return Err(ExtractError::NoText);
    }
    let mut doc = doc;
    doc.title = doc.title.map(|t| cut_chars(&t, MAX_HEADING_CHARS));
    doc.headings.truncate(MAX_HEADINGS);
    for h in &mut doc.headings {
        *h = cut_chars(h, MAX_HEADING_CHARS);
    }
    Ok(Extracted::Document(doc))
}

/// Headings kept per document, and characters kept of a title or heading (an unclosed `<h1>`
/// can hold a whole page).
pub const MAX_HEADINGS: usize = 50;
pub const MAX_HEADING_CHARS: usize = 256;
/// Deepest nesting of HTML elements read.
pub const MAX_HTML_DEPTH: usize = 4_000;

fn cut_chars(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, ExtractError> {
    std::str::from_utf8(bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes))
        .map_err(|e| ExtractError::Corrupt(format!("the text is not UTF-8 ({e})")))
}

// ---------------------------------------------------------------- JSON records

fn records(text: &str, format: Format, limits: &Limits) -> Result<Extracted, ExtractError> {
    let values: Vec<(String, Value)> = match format {
        Format::Json => match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (format!("item {i}"), v))
                .collect(),
            Ok(v @ Value::Object(_)) => vec![("the object".into(), v)],
            Ok(_) => {
                return Err(ExtractError::Corrupt(
                    "JSON must be an object or an array of objects".into(),
                ))
            }
            Err(e) => return Err(ExtractError::Corrupt(format!("invalid JSON: {e}"))),
        },
        _ => {
            let mut out = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let v = serde_json::from_str::<Value>(line).map_err(|e| {
                    ExtractError::Corrupt(format!("line {}: invalid JSON: {e}", i + 1))
                })?;
                out.push((format!("line {}", i + 1), v));
                if out.len() > limits.max_records {
                    break;
                }
            }
            out
        }
    };
    if values.is_empty() {
        return Err(ExtractError::Empty);
    }
    if values.len() > limits.max_records {
        return Err(ExtractError::TooLarge(format!(
            "more than {} records in one file (split it)",
            limits.max_records
        )));
    }
    let mut out = Vec::with_capacity(values.len());
    for (where_, v) in values {
        let Value::Object(mut o) = v else {
            return Err(ExtractError::Corrupt(format!("{where_} is not an object")));
        };
        let text = match o.remove("text") {
            Some(Value::String(t)) if !t.trim().is_empty() => t,
            _ => {
                return Err(ExtractError::Corrupt(format!(
                    "{where_} needs a non-empty string `text`"
                )))
            }
        };
        let chars = text.chars().count();
        if chars > limits.max_chars {
            return Err(too_many_chars(chars, limits));
        }
        let id = match o.remove("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(_) => {
                return Err(ExtractError::Corrupt(format!(
                    "{where_}: `id` must be a string or a number"
                )))
            }
        };
        let metadata = match o.remove("metadata") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m,
            Some(_) => {
                return Err(ExtractError::Corrupt(format!(
                    "{where_}: `metadata` must be an object"
                )))
            }
        };
        if let Some(k) = o.keys().next() {
            return Err(ExtractError::Corrupt(format!(
                "{where_}: unknown field `{k}` (a record has `id`, `text` and `metadata`)"
            )));
        }
        out.push(Record { id, text, metadata });
    }
    Ok(Extracted::Records(out))
}

// ---------------------------------------------------------------- Markdown

fn markdown(text: &str, limits: &Limits) -> Result<Document, ExtractError> {
    use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
    if text.len() > limits.max_chars.saturating_mul(4) {
        return Err(too_many_chars(text.chars().count(), limits));
    }
    let mut doc = Document::default();
    let mut heading: Option<(u8, String, usize)> = None;
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH;
    for event in Parser::new_ext(text, options) {
        match event {
            Event::Start(Tag::Heading { level, .. }) => {
                heading = Some((level as u8, String::new(), doc.text.len()))
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some((level, h, start)) = heading.take() {
                    let h = h.trim().to_string();
                    if level == 1 && doc.title.is_none() && !h.is_empty() {
                        doc.title = Some(h.clone());
                    }
                    if !h.is_empty() {
                        add_section(&mut doc, start, &h);
                        doc.headings.push(h);
                    }
                }
                doc.text.push('\n');
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some((_, h, _)) = &mut heading {
                    h.push_str(&t);
                }
                doc.text.push_str(&t);
            }
            Event::SoftBreak | Event::HardBreak => doc.text.push('\n'),
            Event::End(TagEnd::Paragraph | TagEnd::Item | TagEnd::TableRow | TagEnd::CodeBlock) => {
                doc.text.push('\n')
            }
            Event::End(TagEnd::TableCell) => doc.text.push_str(" | "),
            _ => {}
        }
    }
    Ok(doc)
}

/// Note that a section headed `heading` begins at byte `start` of the text.
fn add_section(doc: &mut Document, start: usize, heading: &str) {
    if doc.sections.len() < MAX_SECTIONS {
        doc.sections.push(Section {
            start,
            heading: cut_chars(heading, MAX_HEADING_CHARS),
        });
    }
}

// ---------------------------------------------------------------- HTML

fn html(text: &str, limits: &Limits) -> Result<Document, ExtractError> {
    use ego_tree::iter::Edge;
    use scraper::{Html, Node};
    let cap = limits.max_chars.saturating_mul(4).min(8 << 20);
    if text.len() > cap {
        return Err(ExtractError::TooLarge(format!(
            "the HTML is {} bytes; at most {cap} are read",
            text.len()
        )));
    }
    // The parser's work grows with the square of the nesting: refuse deep nesting up front
    // (an upper bound: every opening tag counts, void elements included, up to a closing one).
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'<' {
            match bytes.get(i + 1) {
                Some(b'/') => depth = depth.saturating_sub(1),
                Some(c) if c.is_ascii_alphabetic() => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                _ => {}
            }
        }
    }
    if deepest > MAX_HTML_DEPTH {
        return Err(ExtractError::TooLarge(format!(
            "the HTML nests elements more than {MAX_HTML_DEPTH} deep"
        )));
    }
    let page = Html::parse_document(text);
    let mut doc = Document::default();
    const SKIP: [&str; 6] = ["script", "style", "noscript", "template", "head", "svg"];
    const BLOCK: [&str; 22] = [
        "p",
        "div",
        "br",
        "li",
        "tr",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "section",
        "article",
        "header",
        "footer",
        "blockquote",
        "pre",
        "table",
        "ul",
        "ol",
        "dd",
        "dt",
    ];
    // One walk over the tree, linear in its size however deep it is: how many skipped elements
    // are open, and the text of the open title and outermost open heading.
    let mut skipped = 0usize;
    let mut depth = 0usize;
    let mut title: Option<(usize, String)> = None;
    let mut heading: Option<(usize, String, usize)> = None;
    let keep = |buf: &mut String, words: &str| {
        if buf.len() < MAX_HEADING_CHARS * 4 {
            buf.push(' ');
            buf.push_str(words);
        }
    };
    for edge in page.tree.root().traverse() {
        match edge {
            Edge::Open(node) => {
                depth += 1;
                match node.value() {
                    Node::Element(e) => {
                        let name = e.name();
                        if SKIP.contains(&name) {
                            skipped += 1;
                        }
                        if name == "title" && title.is_none() && doc.title.is_none() {
                            title = Some((depth, String::new()));
                        }
                        if matches!(name, "h1" | "h2" | "h3" | "h4" | "h5" | "h6")
                            && heading.is_none()
                        {
                            heading = Some((depth, String::new(), doc.text.len()));
                        }
                        if skipped == 0
                            && BLOCK.contains(&name)
                            && !doc.text.is_empty()
                            && !doc.text.ends_with('\n')
                        {
                            doc.text.push('\n');
                        }
                    }
                    Node::Text(t) => {
                        let words = t.split_whitespace().collect::<Vec<_>>().join(" ");
                        if words.is_empty() {
                            continue;
                        }
                        if let Some((_, t)) = &mut title {
                            keep(t, &words);
                        }
                        if skipped > 0 {
                            continue;
                        }
                        if let Some((_, h, _)) = &mut heading {
                            keep(h, &words);
                        }
                        if !doc.text.is_empty() && !doc.text.ends_with(['\n', ' ']) {
                            doc.text.push(' ');
                        }
                        doc.text.push_str(&words);
                    }
                    _ => {}
                }
            }
            Edge::Close(node) => {
                if let Node::Element(e) = node.value() {
                    if SKIP.contains(&e.name()) {
                        skipped = skipped.saturating_sub(1);
                    }
                    if title.as_ref().is_some_and(|(d, _)| *d == depth) {
                        let t = title.take().map(|(_, t)| t).unwrap_or_default();
                        let t = t.trim();
                        if !t.is_empty() {
                            doc.title = Some(t.to_string());
                        }
                    }
                    if heading.as_ref().is_some_and(|(d, _, _)| *d == depth) {
                        let (h, start) = heading
                            .take()
                            .map(|(_, h, start)| (h, start))
                            .unwrap_or_default();
                        let h = h.trim();
                        if !h.is_empty() {
                            add_section(&mut doc, start, h);
                            if doc.headings.len() < MAX_HEADINGS {
                                doc.headings.push(h.to_string());
                            }
                        }
                    }
                }
                depth = depth.saturating_sub(1);
            }
        }
    }
    Ok(doc)
}

// ---------------------------------------------------------------- PDF

fn pdf(bytes: &[u8], limits: &Limits) -> Result<Document, ExtractError> {
    // lopdf may still panic on a hostile file: a panic is a damaged file, not a dead node.
    catch_unwind(AssertUnwindSafe(|| pdf_inner(bytes, limits))).unwrap_or_else(|_| {
        Err(ExtractError::Corrupt(
            "the PDF could not be read (its structure is broken)".into(),
        ))
    })
}

fn pdf_inner(bytes: &[u8], limits: &Limits) -> Result<Document, ExtractError> {
    use lopdf::{Document as Pdf, LoadOptions};
    let pdf = Pdf::load_mem_with_options(
        bytes,
        LoadOptions::with_max_decompressed_size(limits.max_inflated_bytes),
    )
    .map_err(|e| {
        let msg = e.to_string();
        if msg.to_lowercase().contains("decrypt") || msg.to_lowercase().contains("encrypt") {
            ExtractError::Encrypted
        } else {
            ExtractError::Corrupt(format!("the PDF could not be read ({msg})"))
        }
    })?;
    if pdf.is_encrypted() {
        return Err(ExtractError::Encrypted);
    }
    let pages = pdf.get_pages();
    if pages.is_empty() {
        return Err(ExtractError::Corrupt("the PDF has no pages".into()));
    }
    if pages.len() > limits.max_pages {
        return Err(ExtractError::TooLarge(format!(
            "the PDF has {} pages; a document may have at most {} (split it)",
            pages.len(),
            limits.max_pages
        )));
    }
    let mut doc = Document {
        page_count: pages.len() as u32,
        ..Document::default()
    };
    // Pages are separated by a form feed (as pdftotext does), empty ones included, so that the
    // page of any place in the text is one more than the form feeds before it.
    let mut chars = 0usize;
    for &number in pages.keys() {
        if number > 1 {
            // a line ends with the page: the break (which tokenizers drop) never glues words
            doc.text.push('\n');
            doc.text.push(PAGE_BREAK);
        }
        let chunks = pdf.extract_text_chunks_with_limit(&[number], limits.max_inflated_bytes);
        let mut page = String::new();
        for t in chunks.into_iter().flatten() {
            page.push_str(&t);
        }
        // a page's own form feeds would shift the numbers of the pages after it
        let page = page.replace(PAGE_BREAK, " ");
        let page = page.trim();
        if page.is_empty() {
            continue;
        }
        let start = doc.text.len();
        doc.text.push_str(page);
        doc.pages.push(PageSpan {
            page: number,
            start,
            end: doc.text.len(),
        });
        chars += page.chars().count();
        if chars > limits.max_chars {
            return Err(too_many_chars(chars, limits));
        }
    }
    if doc.pages.is_empty() {
        return Err(ExtractError::NoText);
    }
    doc.title = pdf_title(&pdf);
    Ok(doc)
}

fn pdf_title(pdf: &lopdf::Document) -> Option<String> {
    let info = pdf.trailer.get(b"Info").ok()?;
    let info = match info {
        lopdf::Object::Reference(id) => pdf.get_object(*id).ok()?,
        other => other,
    };
    let title = info.as_dict().ok()?.get(b"Title").ok()?;
    let bytes = title.as_str().ok()?;
    let t = String::from_utf8_lossy(bytes).trim().to_string();
    (!t.is_empty()).then_some(t)
}

// ---------------------------------------------------------------- DOCX

/// A member of a zip archive, read whole up to `max` bytes (its declared size is not trusted:
/// a zip bomb declares little and inflates much).
fn zip_member(
    zip: &mut zip::ZipArchive<Cursor<&[u8]>>,
    name: &str,
    max: usize,
) -> Result<Option<Vec<u8>>, ExtractError> {
    let file = match zip.by_name(name) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(ExtractError::Corrupt(format!("{name}: {e}"))),
    };
    let mut out = Vec::new();
    file.take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ExtractError::Corrupt(format!("{name}: {e}")))?;
    if out.len() > max {
        return Err(ExtractError::TooLarge(format!(
            "{name} inflates to more than {max} bytes (a zip bomb, or a document too large)"
        )));
    }
    Ok(Some(out))
}

fn docx(bytes: &[u8], limits: &Limits) -> Result<Document, ExtractError> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| ExtractError::Corrupt(format!("a damaged zip archive ({e})")))?;
    if zip.len() > 10_000 {
        return Err(ExtractError::TooLarge(format!(
            "the archive has {} members",
            zip.len()
        )));
    }
    if zip.index_for_name("EncryptedPackage").is_some() {
        return Err(ExtractError::Encrypted);
    }
    let body = zip_member(&mut zip, "word/document.xml", limits.max_inflated_bytes)?
        .ok_or_else(|| ExtractError::Corrupt("no word/document.xml in the DOCX".into()))?;
    let styles = zip_member(&mut zip, "word/styles.xml", limits.max_inflated_bytes)?
        .map(|s| heading_styles(&s))
        .unwrap_or_default();
    let mut doc = Document::default();
    let mut reader = quick_xml::Reader::from_reader(body.as_slice());
    let mut buf = Vec::new();
    let mut para = String::new();
    let mut para_style: Option<String> = None;
    let mut in_text = false;
    loop {
        use quick_xml::events::Event;
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| ExtractError::Corrupt(format!("word/document.xml: {e}")))?;
        match event {
            Event::Start(e) | Event::Empty(e) => match e.name().as_ref() {
                b"w:t" => in_text = true,
                b"w:tab" => para.push('\t'),
                b"w:br" | b"w:cr" => para.push('\n'),
                b"w:pStyle" => {
                    para_style = e
                        .attributes()
                        .flatten()
                        .find(|a| a.key.as_ref() == b"w:val")
                        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()));
                }
                _ => {}
            },
            Event::Text(t) if in_text => {
                let t = t
                    .unescape()
                    .map_err(|e| ExtractError::Corrupt(format!("word/document.xml: {e}")))?;
                para.push_str(&t);
            }
            Event::End(e) => match e.name().as_ref() {
                b"w:t" => in_text = false,
                b"w:p" => {
                    let text = para.trim().to_string();
                    if !text.is_empty() {
                        match para_style.as_deref().and_then(|s| styles.get(s)) {
                            Some(HeadingKind::Title) if doc.title.is_none() => {
                                doc.title = Some(text.clone());
                                doc.headings.push(text.clone());
                            }
                            Some(_) => {
                                let start = doc.text.len();
                                add_section(&mut doc, start, &text);
                                doc.headings.push(text.clone());
                            }
                            None => {}
                        }
                        doc.text.push_str(&text);
                        doc.text.push('\n');
                        if doc.text.len() > limits.max_chars.saturating_mul(4) {
                            return Err(too_many_chars(doc.text.chars().count(), limits));
                        }
                    }
                    para.clear();
                    para_style = None;
                }
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok(doc)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadingKind {
    Title,
    Heading,
}

/// Style ids whose style is a title or a heading, by the style's name or outline level (style
/// ids are translated in other languages; names such as `heading 1` are not).
fn heading_styles(xml: &[u8]) -> std::collections::HashMap<String, HeadingKind> {
    use quick_xml::events::Event;
    let mut out = std::collections::HashMap::new();
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut buf = Vec::new();
    let mut current: Option<String> = None;
    let attr = |e: &quick_xml::events::BytesStart, key: &[u8]| {
        e.attributes()
            .flatten()
            .find(|a| a.key.as_ref() == key)
            .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
    };
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) => match e.name().as_ref() {
                b"w:style" => current = attr(&e, b"w:styleId"),
                b"w:name" => {
                    if let (Some(id), Some(name)) = (&current, attr(&e, b"w:val")) {
                        let name = name.to_lowercase();
                        if name == "title" {
                            out.insert(id.clone(), HeadingKind::Title);
                        } else if name.starts_with("heading") {
                            out.insert(id.clone(), HeadingKind::Heading);
                        }
                    }
                }
                b"w:outlineLvl" => {
                    if let Some(id) = &current {
                        out.entry(id.clone()).or_insert(HeadingKind::Heading);
                    }
                }
                _ => {}
            },
            Ok(Event::End(e)) if e.name().as_ref() == b"w:style" => current = None,
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
        buf.clear();
    }
    out
}

#[cfg(test)]
mod tests;
