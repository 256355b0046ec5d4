//! Files made on the spot, for tests and benchmarks (nothing to download): a PDF whose pages hold
//! given lines of text, zip archives and DOCX files, and hostile files (a zip bomb, a PDF that takes a
//! reader minutes).

use std::io::{Cursor, Write};

use lopdf::{dictionary, Object, Stream};

/// A PDF with one page per entry of `pages` (each page's lines separated by `\n`), titled
/// `title` in its Info dictionary, with the trailer `/ID` that encryption needs. Save it with
/// [`lopdf::Document::save_to`], after `compress` or `encrypt` if wanted.
pub fn pdf_document(pages: &[String], title: &str) -> lopdf::Document {
    let mut doc = lopdf::Document::with_version("1.5");
    doc.trailer.set(
        "ID",
        Object::Array(vec![
            Object::string_literal(b"shoal-sample-id1"),
            Object::string_literal(b"shoal-sample-id2"),
        ]),
    );
    let font = doc.add_object(dictionary! {
        "Type" => "Font", "Subtype" => "Type1", "BaseFont" => "Helvetica",
    });
    let pages_id = doc.new_object_id();
    let mut kids = Vec::new();
    for page in pages {
        let mut ops = String::from("BT /F1 10 Tf 50 780 Td 12 TL\n");
        for line in page.lines() {
            ops.push_str(&format!("({line}) Tj T*\n"));
        }
        ops.push_str("ET");
        let content = doc.add_object(Stream::new(dictionary! {}, ops.into_bytes()));
        kids.push(Object::Reference(doc.add_object(dictionary! {
            "Type" => "Page",
            "Parent" => pages_id,
            "MediaBox" => vec![0.into(), 0.into(), 612.into(), 792.into()],
            "Resources" => dictionary! { "Font" => dictionary! { "F1" => font } },
            "Contents" => content,
        })));
    }
    let count = kids.len() as i64;
    doc.objects.insert(
        pages_id,
        Object::Dictionary(dictionary! { "Type" => "Pages", "Kids" => kids, "Count" => count }),
    );
    let catalog = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
    doc.trailer.set("Root", catalog);
    let info = doc.add_object(dictionary! { "Title" => Object::string_literal(title) });
    doc.trailer.set("Info", info);
    doc
}

/// [`pdf_document`], saved.
pub fn pdf(pages: &[String], title: &str) -> Vec<u8> {
    let mut out = Vec::new();
    // Saving into a Vec cannot fail on I/O; a PDF made here always serialises.
    let _ = pdf_document(pages, title).save_to(&mut out);
    out
}

/// A zip archive of `(name, content)` members, deflated.
pub fn zip_file(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, content) in members {
        // writing into memory fails only on a bug here: a sample is then left short
        if w.start_file(*name, opts).is_err() || w.write_all(content).is_err() {
            break;
        }
    }
    w.finish().map(|c| c.into_inner()).unwrap_or_default()
}

const STYLES: &str = r#"<?xml version="1.0"?><w:styles xmlns:w="x">
<w:style w:type="paragraph" w:styleId="Titel"><w:name w:val="Title"/></w:style>
<w:style w:type="paragraph" w:styleId="berschrift1"><w:name w:val="heading 1"/></w:style>
<w:style w:type="paragraph" w:styleId="Normal"><w:name w:val="Normal"/></w:style>
</w:styles>"#;

/// A DOCX whose body is `body` (WordprocessingML paragraphs), with styles `Titel` (Title),
/// `berschrift1` (heading 1) and `Normal`.
pub fn docx_file(body: &str) -> Vec<u8> {
    let document = format!(
        r#"<?xml version="1.0"?><w:document xmlns:w="x"><w:body>{body}</w:body></w:document>"#
    );
    zip_file(&[
        ("[Content_Types].xml", b"<Types/>"),
        ("word/document.xml", document.as_bytes()),
        ("word/styles.xml", STYLES.as_bytes()),
    ])
}

/// A DOCX whose document part inflates from a few KiB to `inflated` bytes (a zip bomb).
pub fn docx_bomb(inflated: usize) -> Vec<u8> {
    let mut document =
        br#"<?xml version="1.0"?><w:document xmlns:w="x"><w:body><w:p><w:r><w:t>"#.to_vec();
    document.resize(inflated, b'a');
    zip_file(&[
        ("[Content_Types].xml", b"<Types/>"),
        ("word/document.xml", &document),
    ])
}

/// A PDF of `pages` pages that all draw one shared content stream of `ops` path operators (no
/// text): a few dozen KiB that take a reader minutes, as every page inflates and parses the
/// stream again (a file built to never end, within every size limit).
pub fn pdf_endless(pages: usize, ops: usize) -> Vec<u8> {
    let mut doc = lopdf::Document::with_version("1.5");
    let mut content = Stream::new(dictionary! {}, "0 0 m\n".repeat(ops).into_bytes());
    // compression only fails on a stream that is already filtered; this one is not
    let _ = content.compress();
    let content = doc.add_object(content);
    let pages_id = doc.new_object_id();
    let kids: Vec<Object> = (0..pages)
        .map(|_| {
            Object::Reference(doc.add_object(dictionary! {
                "Type" => "Page",
                "Parent" => pages_id,
                "MediaBox" => vec![0.into(), 0.into(), 612.into(), 792.into()],
                "Contents" => content,
            }))
        })
        .collect();
    doc.objects.insert(
        pages_id,
        Object::Dictionary(
            dictionary! { "Type" => "Pages", "Kids" => kids, "Count" => pages as i64 },
        ),
    );
    let catalog = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
    doc.trailer.set("Root", catalog);
    let mut out = Vec::new();
    let _ = doc.save_to(&mut out);
    out
}
