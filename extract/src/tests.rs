//! Extraction of every format from files made here (a PDF with lopdf, a DOCX with zip), the
//! refusals (empty, encrypted, damaged, unsupported, too large, a zip bomb), and a property test
//! that no input, random or a damaged real file, makes an extractor panic.

use proptest::prelude::*;

use super::*;

/// A PDF with one page per text, titled `title`; encrypted with a user password when given.
fn pdf_file(pages: &[&str], title: &str, user_password: Option<&str>) -> Vec<u8> {
    let pages: Vec<String> = pages.iter().map(|p| p.to_string()).collect();
    let mut doc = samples::pdf_document(&pages, title);
    if let Some(user) = user_password {
        let state = lopdf::EncryptionState::try_from(lopdf::EncryptionVersion::V2 {
            document: &doc,
            owner_password: "owner-secret",
            user_password: user,
            key_length: 128,
            permissions: lopdf::Permissions::all(),
        })
        .unwrap();
        doc.encrypt(&state).unwrap();
    }
    let mut out = Vec::new();
    doc.save_to(&mut out).unwrap();
    out
}

use crate::samples::{docx_file, zip_file};

fn para(style: Option<&str>, text: &str) -> String {
    let style = style
        .map(|s| format!(r#"<w:pPr><w:pStyle w:val="{s}"/></w:pPr>"#))
        .unwrap_or_default();
    format!("<w:p>{style}<w:r><w:t>{text}</w:t></w:r></w:p>")
}

fn document(e: Extracted) -> Document {
    match e {
        Extracted::Document(d) => d,
        other => panic!("not a document: {other:?}"),
    }
}

#[test]
fn pdf_pages_title_and_refusals() {
    let limits = Limits::default();
    let file = pdf_file(
        &["First page about tides.", "Second page about moons."],
        "Tides",
        None,
    );
    let (format, out) = extract_any(&file, Some("x.bin"), None, &limits).unwrap();
    assert_eq!(format, Format::Pdf);
    let doc = document(out);
    assert_eq!(doc.title.as_deref(), Some("Tides"));
    assert_eq!(doc.pages.len(), 2);
    assert!(
        doc.text[doc.pages[0].start..doc.pages[0].end].contains("tides"),
        "{doc:?}"
    );
    assert!(
        doc.text[doc.pages[1].start..doc.pages[1].end].contains("moons"),
        "{doc:?}"
    );
    assert_eq!(doc.pages[1].page, 2);
    // pages are told apart by form feeds, empty pages too: a place's page is one more than the
    // form feeds before it
    let gap = pdf_file(&["Opening words.", "", "Closing words."], "Gap", None);
    let doc = document(extract(&gap, Format::Pdf, &limits).unwrap());
    assert_eq!(doc.pages.len(), 2, "{doc:?}");
    assert_eq!(doc.pages[1].page, 3);
    let at = doc.text.find("Closing").unwrap();
    assert_eq!(
        doc.text[..at].matches(PAGE_BREAK).count(),
        2,
        "{:?}",
        doc.text
    );
    // a PDF whose pages hold no text at all
    let blank = pdf_file(&["", ""], "Blank", None);
    assert_eq!(
        extract(&blank, Format::Pdf, &limits).unwrap_err(),
        ExtractError::NoText
    );
    // a user password: refused as encrypted
    let locked = pdf_file(&["Secret plans."], "Locked", Some("hunter22"));
    assert_eq!(
        extract(&locked, Format::Pdf, &limits).unwrap_err(),
        ExtractError::Encrypted
    );
    // too many pages
    let small = Limits {
        max_pages: 1,
        ..limits
    };
    assert!(matches!(
        extract(&file, Format::Pdf, &small),
        Err(ExtractError::TooLarge(m)) if m.contains("2 pages")
    ));
    // cut short, or garbage after the header
    let cut = &file[..file.len() / 2];
    assert!(matches!(
        extract(cut, Format::Pdf, &limits),
        Err(ExtractError::Corrupt(_) | ExtractError::NoText)
    ));
    assert!(extract(b"%PDF-1.7\n garbage", Format::Pdf, &limits).is_err());
}

#[test]
fn docx_text_title_and_headings_by_style_name() {
    let body = [
        para(Some("Titel"), "Annual report"),
        para(Some("berschrift1"), "Revenue"),
        para(None, "Revenue grew by a tenth &amp; costs fell."),
        "<w:p><w:r><w:t>Col A</w:t></w:r><w:r><w:tab/><w:t>Col B</w:t></w:r></w:p>".into(),
    ]
    .concat();
    let file = docx_file(&body);
    let (format, out) = extract_any(&file, None, None, &Limits::default()).unwrap();
    assert_eq!(format, Format::Docx);
    let doc = document(out);
    assert_eq!(doc.title.as_deref(), Some("Annual report"));
    assert_eq!(doc.headings, ["Annual report", "Revenue"]);
    assert!(
        doc.text.contains("grew by a tenth & costs fell."),
        "{doc:?}"
    );
    assert!(doc.text.contains("Col A\tCol B"), "{doc:?}");
    // the heading begins its section (the title is the document's, not a section's)
    assert_sections(&doc, &["Revenue"]);
}

/// The sections' headings are `headings`, each beginning the text at its section's start.
fn assert_sections(doc: &Document, headings: &[&str]) {
    let got: Vec<&str> = doc.sections.iter().map(|s| s.heading.as_str()).collect();
    assert_eq!(got, headings, "{doc:?}");
    for s in &doc.sections {
        assert!(
            doc.text[s.start..].trim_start().starts_with(&s.heading),
            "{s:?} in {:?}",
            doc.text
        );
    }
}

#[test]
fn a_zip_bomb_and_other_zips_are_refused() {
    // 8 MiB of spaces inflate from a few KiB
    let big = vec![b' '; 8 << 20];
    let bomb = zip_file(&[("word/document.xml", &big)]);
    assert!(bomb.len() < 100_000, "{}", bomb.len());
    let limits = Limits {
        max_inflated_bytes: 1 << 20,
        ..Limits::default()
    };
    assert!(matches!(
        extract_any(&bomb, None, None, &limits),
        Err(ExtractError::TooLarge(m)) if m.contains("zip bomb")
    ));
    let xlsx = zip_file(&[("xl/workbook.xml", b"<w/>")]);
    assert!(matches!(
        detect(&xlsx, None, None),
        Err(ExtractError::Unsupported(m)) if m.contains("XLSX")
    ));
    let plain = zip_file(&[("notes.txt", b"hello")]);
    assert!(matches!(
        detect(&plain, None, None),
        Err(ExtractError::Unsupported(_))
    ));
    let encrypted = zip_file(&[("word/document.xml", b"<x/>"), ("EncryptedPackage", b"..")]);
    assert_eq!(
        extract(&encrypted, Format::Docx, &Limits::default()).unwrap_err(),
        ExtractError::Encrypted
    );
}

#[test]
fn text_formats_are_told_apart_by_their_content() {
    let l = Limits::default();
    // braces that are not JSON: damaged when the file says it is JSON, text otherwise
    let cut = br#"{"text": "never closed"#;
    assert!(matches!(
        detect(cut, Some("records.json"), None),
        Err(ExtractError::Corrupt(m)) if m.contains("JSON")
    ));
    assert!(matches!(
        detect(cut, None, Some("application/json")),
        Err(ExtractError::Corrupt(_))
    ));
    assert_eq!(detect(cut, Some("notes.txt"), None).unwrap(), Format::Text);
    let html = "<!DOCTYPE html><html><head><title>Moon  landing</title><style>p{}</style></head>\
                <body><h1>Apollo 11</h1><p>Armstrong stepped out.</p><script>var x=1;</script></body></html>";
    let (f, out) = extract_any(html.as_bytes(), Some("page.txt"), None, &l).unwrap();
    assert_eq!(f, Format::Html);
    let doc = document(out);
    assert_eq!(doc.title.as_deref(), Some("Moon landing"));
    assert_eq!(doc.headings, ["Apollo 11"]);
    assert_sections(&doc, &["Apollo 11"]);
    assert!(doc.text.contains("Armstrong stepped out."), "{doc:?}");
    assert!(
        !doc.text.contains("var x") && !doc.text.contains("p{}"),
        "{doc:?}"
    );

    let md = "# Guide\n\nIntro text.\n\n## Setup\n\n| a | b |\n|---|---|\n| 1 | 2 |\n";
    let (f, out) = extract_any(md.as_bytes(), None, None, &l).unwrap();
    assert_eq!(f, Format::Markdown);
    let doc = document(out);
    assert_eq!(doc.title.as_deref(), Some("Guide"));
    assert_eq!(doc.headings, ["Guide", "Setup"]);
    assert_sections(&doc, &["Guide", "Setup"]);
    assert!(
        doc.text.contains("Intro text.") && !doc.text.contains('#'),
        "{doc:?}"
    );
    // a name or a declared type says Markdown where the content does not
    assert_eq!(
        detect(b"plain words", Some("notes.MD"), None).unwrap(),
        Format::Markdown
    );
    assert_eq!(
        detect(b"plain words", None, Some("text/markdown")).unwrap(),
        Format::Markdown
    );
    assert_eq!(
        detect(b"plain words", Some("notes.txt"), None).unwrap(),
        Format::Text
    );

    let json = r#"[{"id": 7, "text": "Seven.", "metadata": {"k": 1}}, {"text": "No id."}]"#;
    let (f, out) = extract_any(json.as_bytes(), None, None, &l).unwrap();
    assert_eq!(f, Format::Json);
    let Extracted::Records(r) = out else { panic!() };
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].id.as_deref(), Some("7"));
    assert_eq!(r[0].metadata["k"], 1);
    assert_eq!(r[1].id, None);
    let jsonl = "{\"id\": \"a\", \"text\": \"A.\"}\n\n{\"id\": \"b\", \"text\": \"B.\"}\n";
    let (f, out) = extract_any(jsonl.as_bytes(), None, None, &l).unwrap();
    assert_eq!(f, Format::Jsonl);
    assert!(matches!(out, Extracted::Records(r) if r.len() == 2));
    // records must be records
    for bad in [
        r#"[{"id": "x"}]"#,
        r#"[{"text": 5}]"#,
        r#"{"text": "a", "colour": "red"}"#,
        r#"[1, 2]"#,
        r#"[{"text": "a", "id": [1]}]"#,
    ] {
        assert!(
            matches!(
                extract_any(bad.as_bytes(), None, None, &l),
                Err(ExtractError::Corrupt(_))
            ),
            "{bad}"
        );
    }
    let many: String = (0..11)
        .map(|i| format!("{{\"text\": \"r{i}\"}}\n"))
        .collect();
    let few = Limits {
        max_records: 10,
        ..l
    };
    assert!(matches!(
        extract_any(many.as_bytes(), None, None, &few),
        Err(ExtractError::TooLarge(_))
    ));
}

#[test]
fn empty_binary_and_oversized_files_get_reasons() {
    let l = Limits::default();
    assert_eq!(detect(b"", None, None).unwrap_err(), ExtractError::Empty);
    assert_eq!(
        detect(b"  \n\t ", None, None).unwrap_err(),
        ExtractError::Empty
    );
    assert!(matches!(
        detect(b"\x89PNG\r\n\x1a\n....", None, None),
        Err(ExtractError::Unsupported(m)) if m.contains("PNG")
    ));
    assert!(matches!(
        detect(&[0xff, 0xfe, 0x00, 0x80, 0x81], None, None),
        Err(ExtractError::Unsupported(_))
    ));
    let small = Limits { max_chars: 10, ..l };
    let e = extract_any("a sentence longer than ten".as_bytes(), None, None, &small).unwrap_err();
    assert!(e.to_string().contains("at most 10"), "{e}");
    // markup with no text
    assert_eq!(
        extract_any(
            b"<html><body><script>x()</script></body></html>",
            None,
            None,
            &l
        )
        .unwrap_err(),
        ExtractError::NoText
    );
    // a BOM is not text
    let (f, out) = extract_any("\u{feff}Hello.".as_bytes(), None, None, &l).unwrap();
    assert_eq!(f, Format::Text);
    assert_eq!(document(out).text, "Hello.");
}

/// Seeds for the property test: one real file of each kind.
fn seeds() -> Vec<Vec<u8>> {
    vec![
        pdf_file(&["Alpha page.", "Beta page."], "Seed", None),
        docx_file(&[para(Some("Titel"), "T"), para(None, "Body text.")].concat()),
        b"<html><head><title>t</title></head><body><h2>h</h2><p>p</p></body></html>".to_vec(),
        b"# h\n\ntext with *stars* and `code`\n".to_vec(),
        br#"[{"id": 1, "text": "x"}]"#.to_vec(),
        b"{\"text\": \"a\"}\n{\"text\": \"b\"}\n".to_vec(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Any bytes: an answer, never a panic, and never more text than the limit allows.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let limits = Limits { max_chars: 5_000, ..Limits::default() };
        if let Ok((_, Extracted::Document(d))) = extract_any(&bytes, None, None, &limits) {
            prop_assert!(d.text.chars().count() <= 5_000);
        }
    }

    /// Real files damaged: bytes overwritten, cut short, or both.
    #[test]
    fn damaged_files_never_panic(
        which in 0usize..6,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..16),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut file = seeds().swap_remove(which);
        for (at, byte) in flips {
            let i = at.index(file.len());
            file[i] = byte;
        }
        if truncate {
            file.truncate(cut.index(file.len() + 1));
        }
        let limits = Limits { max_chars: 5_000, max_inflated_bytes: 1 << 20, ..Limits::default() };
        let _ = extract_any(&file, None, None, &limits);
    }
}

#[test]
fn deep_html_is_read_in_one_pass_and_names_win_over_sniffing() {
    // 1,000 nested headings and divisions: read, headings capped; 20,000: refused at once
    let nested = |depth: usize| {
        format!(
            "<html><body>{}deep text{}</body></html>",
            "<div><h2><span>".repeat(depth),
            "</span></h2></div>".repeat(depth)
        )
    };
    let doc =
        document(extract(nested(1_000).as_bytes(), Format::Html, &Limits::default()).unwrap());
    assert!(doc.text.contains("deep text"));
    assert!(doc.headings.len() <= MAX_HEADINGS);
    let t = std::time::Instant::now();
    let e = extract(nested(20_000).as_bytes(), Format::Html, &Limits::default()).unwrap_err();
    assert!(
        matches!(e, ExtractError::TooLarge(ref m) if m.contains("deep")),
        "{e}"
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        t.elapsed()
    );
    // a Markdown file showing HTML is Markdown; prose about PDFs is not a PDF
    let md = b"<body> is where the page goes.\n\n# Tags\n";
    assert_eq!(detect(md, Some("tags.md"), None).unwrap(), Format::Markdown);
    let prose = b"Files that begin with %PDF- are PDFs, the spec says.";
    assert_eq!(
        detect(prose, Some("notes.txt"), None).unwrap(),
        Format::Text
    );
    let long_title = format!(
        "<html><head><title>{}</title></head><body>x</body></html>",
        "t".repeat(5000)
    );
    let doc = document(extract(long_title.as_bytes(), Format::Html, &Limits::default()).unwrap());
    assert!(doc.title.unwrap().chars().count() <= MAX_HEADING_CHARS);
}
