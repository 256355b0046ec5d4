//! Extraction throughput per format on files made here (no download needed): a 100-page PDF,
//! a DOCX, HTML, Markdown, plain text and JSONL of about 1 MB of prose each. Prints MB/s of input
//! per format (the median of 5 runs) and writes the table to docs/benchmarks/extraction.md.
//!
//! `cargo run --release -p shoal-extract --example extract_bench`

use std::io::{Cursor, Write};
use std::time::Instant;

use shoal_extract::{extract_any, Limits};

/// Sentences of made-up prose, deterministic.
fn prose(n: usize) -> Vec<String> {
    let words = [
        "river", "engine", "winter", "archive", "signal", "harbor", "lantern", "orbit", "meadow",
        "circuit", "ledger", "canyon", "festival", "compass", "glacier", "tunnel",
    ];
    (0..n)
        .map(|i| {
            let w = |k: usize| words[(i * 7 + k * 3) % words.len()];
            format!(
                "The {} near the {} kept its {} through the {} of {}.",
                w(0),
                w(1),
                w(2),
                w(3),
                1900 + i % 120
            )
        })
        .collect()
}

fn pdf(pages: usize, lines_per_page: usize) -> Vec<u8> {
    let text = prose(pages * lines_per_page);
    let pages: Vec<String> = text.chunks(lines_per_page).map(|c| c.join("\n")).collect();
    let mut doc = shoal_extract::samples::pdf_document(&pages, "Benchmark");
    doc.compress();
    let mut out = Vec::new();
    doc.save_to(&mut out).expect("save the PDF");
    out
}

fn docx(lines: &[String]) -> Vec<u8> {
    let body: String = lines
        .iter()
        .map(|l| format!("<w:p><w:r><w:t>{l}</w:t></w:r></w:p>"))
        .collect();
    let xml = format!(
        r#"<?xml version="1.0"?><w:document xmlns:w="x"><w:body>{body}</w:body></w:document>"#
    );
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    w.start_file("word/document.xml", opts).expect("zip");
    w.write_all(xml.as_bytes()).expect("zip");
    w.finish().expect("zip").into_inner()
}

fn main() {
    // `--write-pdf FILE`: only write the 100-page PDF (for the upload-to-searchable figure)
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--write-pdf") {
        let path = args.get(i + 1).expect("--write-pdf FILE");
        std::fs::write(path, pdf(100, 45)).expect("write the PDF");
        return;
    }
    let lines = prose(16_000); // about 1 MB of text
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("PDF, 100 pages", pdf(100, 45)),
        ("DOCX", docx(&lines)),
        (
            "HTML",
            format!(
                "<html><head><title>t</title></head><body>{}</body></html>",
                lines
                    .iter()
                    .map(|l| format!("<p>{l}</p>"))
                    .collect::<String>()
            )
            .into_bytes(),
        ),
        (
            "Markdown",
            lines
                .chunks(20)
                .enumerate()
                .map(|(i, c)| format!("## Part {i}\n\n{}\n\n", c.join(" ")))
                .collect::<String>()
                .into_bytes(),
        ),
        ("plain text", lines.join("\n").into_bytes()),
        (
            "JSONL (records)",
            lines
                .iter()
                .take(10_000)
                .enumerate()
                .map(|(i, l)| format!("{{\"id\": \"r{i}\", \"text\": \"{l}\"}}\n"))
                .collect::<String>()
                .into_bytes(),
        ),
    ];
    let limits = Limits {
        max_chars: 10_000_000,
        ..Limits::default()
    };
    let mut table = String::from(
        "| format | input | text out | time (median of 5) | MB/s of input | MB/s of text out |\n|---|---|---|---|---|---|\n",
    );
    for (name, bytes) in &files {
        let mut times = Vec::new();
        let mut out_chars = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let (_, got) = extract_any(bytes, None, None, &limits).expect("extract");
            times.push(t.elapsed().as_secs_f64());
            out_chars = match got {
                shoal_extract::Extracted::Document(d) => d.text.len(),
                shoal_extract::Extracted::Records(r) => r.iter().map(|r| r.text.len()).sum(),
            };
        }
        times.sort_by(f64::total_cmp);
        let mbps = bytes.len() as f64 / 1e6 / times[2];
        let out_mbps = out_chars as f64 / 1e6 / times[2];
        let row = format!(
            "| {name} | {:.2} MB | {:.2} MB | {:.1} ms | {mbps:.1} | {out_mbps:.1} |\n",
            bytes.len() as f64 / 1e6,
            out_chars as f64 / 1e6,
            times[2] * 1000.0
        );
        print!("{row}");
        table.push_str(&row);
    }
    let doc = format!(
        "# Extraction throughput\n\nMade by `cargo run --release -p shoal-extract --example extract_bench` (AMD EPYC, 2 cores, one thread; files generated by the program, about 1 MB of prose each; the PDF has 100 pages of 45 lines, compressed streams).\n\n{table}"
    );
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/benchmarks/extraction.md"
    );
    std::fs::write(path, doc).expect("write docs/benchmarks/extraction.md");
    println!("written to docs/benchmarks/extraction.md");
}
