//! Files made on the spot, for tests and benchmarks (nothing to download): a PDF whose pages hold
//! given lines of text.

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
