//! Folders a user brings, read as sentence-transformers reads them: every pooling mode (in the
//! legacy and the current config format), modes concatenated, Dense layers (with and without
//! bias, Tanh, GELU, Identity), prompts for queries and documents (included in pooling and left
//! out of it), a default prompt and a Transformer in a subfolder. Each folder is made from the
//! MiniLM weights as `scripts/sentence_models_reference.py` made it, and its vectors are
//! compared with sentence-transformers' for the same folder (cosine ≥ 0.9999).

mod common;

use serde_json::Value;
use shoal_inference::test_model::build_sentence_model;
use shoal_inference::{Embedder, EmbedderOptions, Engine, ModelFiles, TextKind};

fn fixture() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sentence_models_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "dimensions differ");
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn vectors(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn load(dir: &std::path::Path, engine: Engine) -> Embedder {
    let files = ModelFiles::locate(dir).unwrap();
    Embedder::load(
        &files,
        EmbedderOptions {
            max_tokens: 256,
            batch_size: 4,
            engine,
            ..EmbedderOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

#[test]
fn every_kind_of_sentence_transformers_folder_embeds_as_sentence_transformers_does() {
    let fx = fixture();
    let base = common::minilm_dir();
    let base_files: Vec<&str> = fx["base_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    let texts: Vec<&str> = fx["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let variants = fx["variants"].as_array().unwrap();
    assert!(variants.len() >= 10);
    let mut checked = 0;
    for (i, variant) in variants.iter().enumerate() {
        let name = variant["name"].as_str().unwrap();
        let dir = tmp.path().join(name);
        build_sentence_model(&base, &dir, &base_files, variant).unwrap();
        // candle as well as the native engine, on a few folders (it is slower)
        let engines: &[Engine] = if i % 4 == 0 {
            &[Engine::Native, Engine::Candle]
        } else {
            &[Engine::Native]
        };
        for &engine in engines {
            let embedder = load(&dir, engine);
            for (kind, key) in [
                (TextKind::Query, "query"),
                (TextKind::Document, "document"),
                (TextKind::Plain, "plain"),
            ] {
                let Some(expected) = variant["vectors"].get(key) else {
                    continue;
                };
                let expected = vectors(expected);
                assert_eq!(embedder.dimension(), expected[0].len(), "{name}");
                let got = embedder.embed_as(&kind, &texts, &|| false).unwrap();
                for ((t, e), g) in texts.iter().zip(&expected).zip(&got) {
                    let c = cosine(e, g);
                    assert!(
                        c >= 0.9999,
                        "{name} ({engine:?}, {key}): cosine {c} for {:?}",
                        &t[..t.len().min(40)]
                    );
                    let norm = g.iter().map(|x| x * x).sum::<f32>().sqrt();
                    assert!((norm - 1.0).abs() < 1e-4, "{name}: norm {norm}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 15, "{checked}");
}

#[test]
fn prompts_change_the_vectors_and_count_against_the_token_limit() {
    let fx = fixture();
    let variant = fx["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "prompts")
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    build_sentence_model(
        &common::minilm_dir(),
        tmp.path(),
        &[
            "config.json",
            "tokenizer.json",
            "vocab.txt",
            "model.safetensors",
        ],
        variant,
    )
    .unwrap();
    let embedder = load(tmp.path(), Engine::Native);
    // "query: " and "passage: " are 2 word pieces each
    assert_eq!(embedder.prompt_tokens(&TextKind::Query), 2);
    assert_eq!(embedder.prompt_tokens(&TextKind::Document), 2);
    assert_eq!(embedder.prompt_tokens(&TextKind::Plain), 0);
    let text = ["Rust guarantees memory safety without a garbage collector."];
    let q = embedder
        .embed_as(&TextKind::Query, &text, &|| false)
        .unwrap();
    let d = embedder
        .embed_as(&TextKind::Document, &text, &|| false)
        .unwrap();
    let p = embedder.embed(&text).unwrap();
    assert!(
        cosine(&q[0], &d[0]) < 0.999,
        "the prompts made no difference"
    );
    assert!(cosine(&q[0], &p[0]) < 0.999);
    // the plain MiniLM folder has no prompts at all
    let plain = load(&common::minilm_dir(), Engine::Native);
    assert!(!plain.head().from_modules);
    assert_eq!(plain.prompt_tokens(&TextKind::Query), 0);
    let a = plain.embed_as(&TextKind::Query, &text, &|| false).unwrap();
    let b = plain.embed(&text).unwrap();
    assert_eq!(a, b);
}
