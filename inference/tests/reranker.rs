//! The candle cross-encoder against Python transformers' BertForSequenceClassification, on the
//! seeded test model (fixture made by scripts/make-reranker-reference.sh).

mod common;

use shoal_inference::test_model::{build_test_cross_encoder, seeded_value};
use shoal_inference::{CrossEncoder, Engine, InferenceError, ModelFiles, RerankerOptions};

fn fixture() -> serde_json::Value {
    serde_json::from_str(include_str!("fixtures/reranker_reference.json")).unwrap()
}

fn test_model(batch_size: usize) -> (tempfile::TempDir, CrossEncoder) {
    test_model_on(batch_size, Engine::Native)
}

fn test_model_on(batch_size: usize, engine: Engine) -> (tempfile::TempDir, CrossEncoder) {
    let dir = tempfile::tempdir().unwrap();
    build_test_cross_encoder(&common::minilm_dir(), dir.path()).unwrap();
    let files = ModelFiles::locate(dir.path()).unwrap();
    let model = CrossEncoder::load(
        &files,
        RerankerOptions {
            max_tokens: 512,
            batch_size,
            engine,
            ..RerankerOptions::default()
        },
    )
    .unwrap();
    (dir, model)
}

#[test]
fn candle_engine_matches_transformers_too() {
    let fx = fixture();
    let (_dir, model) = test_model_on(4, Engine::Candle);
    let items = fx["items"].as_array().unwrap();
    let q = items[0]["query"].as_str().unwrap();
    for item in items.iter().filter(|i| i["query"].as_str() == Some(q)) {
        let p = item["passage"].as_str().unwrap();
        let want = item["logit"].as_f64().unwrap() as f32;
        let got = model.logits(q, &[p]).unwrap()[0][0];
        assert!((got - want).abs() < 1e-4, "candle: {got} vs {want}");
    }
}

#[test]
fn seeded_head_matches_the_python_formula() {
    let sum: f64 = (0..384).map(|i| seeded_value(3, i, 0.5) as f64).sum();
    let want = fixture()["classifier_weight_sum"].as_f64().unwrap();
    assert!((sum - want).abs() < 1e-4, "{sum} vs {want}");
}

#[test]
fn logits_match_transformers_within_1e_4() {
    let fx = fixture();
    let items = fx["items"].as_array().unwrap();
    assert!(items
        .iter()
        .any(|i| i["tokens_untruncated"].as_u64().unwrap() > 512));
    for batch_size in [1, 16] {
        let (_dir, model) = test_model(batch_size);
        assert_eq!(model.max_tokens(), 512);
        assert_eq!(model.num_labels(), 1);
        // one query at a time, all its passages in one call
        for item in items {
            let q = item["query"].as_str().unwrap();
            let p = item["passage"].as_str().unwrap();
            let want = item["logit"].as_f64().unwrap() as f32;
            let got = model.logits(q, &[p]).unwrap()[0][0];
            assert!(
                (got - want).abs() < 1e-4,
                "batch {batch_size}: {got} vs {want} for {q:?}"
            );
        }
    }
    // several passages of one query in one batch (mixed lengths, padding)
    let (_dir, model) = test_model(8);
    let q = items[0]["query"].as_str().unwrap();
    let passages: Vec<&str> = items
        .iter()
        .map(|i| i["passage"].as_str().unwrap())
        .collect();
    let scores = model.score(q, &passages).unwrap();
    let single: Vec<f32> = passages
        .iter()
        .map(|p| model.score(q, &[p]).unwrap()[0])
        .collect();
    for (a, b) in scores.iter().zip(&single) {
        assert!((a - b).abs() < 1e-4, "batched {a} vs single {b}");
    }
}

#[test]
fn broken_cross_encoder_folders_fail_with_the_file_named() {
    let (dir, _) = test_model(4);
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    config["model_type"] = "gpt2".into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let files = ModelFiles::locate(dir.path()).unwrap();
    let err = CrossEncoder::load(&files, RerankerOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("config.json"), "{err}");

    config["model_type"] = "bert".into();
    config["hidden_size"] = 256.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = CrossEncoder::load(&files, RerankerOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, InferenceError::BadFile { .. }));
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

/// A one-thread pool whose pause hook counts the units of work (weight panels, attention heads)
/// the native encoder does on it.
fn counting_pool() -> (
    rayon::ThreadPool,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let units = Arc::new(AtomicUsize::new(0));
    let u = units.clone();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .start_handler(move |_| {
            let u = u.clone();
            shoal_inference::set_pause_hook(Arc::new(move || {
                u.fetch_add(1, Ordering::SeqCst);
            }))
        })
        .build()
        .unwrap();
    (pool, units)
}

#[test]
fn cancelled_scoring_returns_cancelled_and_stops_working() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let fx = fixture();
    let items = fx["items"].as_array().unwrap();
    let q = items[0]["query"].as_str().unwrap();
    let passages: Vec<&str> = items
        .iter()
        .map(|i| i["passage"].as_str().unwrap())
        .collect();
    assert!(passages.len() >= 3);
    // one pass per passage
    let (_dir, model) = test_model(1);
    let (pool, units) = counting_pool();

    let want = pool.install(|| model.score(q, &passages)).unwrap();
    let full = units.swap(0, Ordering::SeqCst);
    let got = pool
        .install(|| model.score_cancellable(q, &passages, &|| false))
        .unwrap();
    assert_eq!(got, want, "never cancelled: the same scores");
    assert_eq!(units.swap(0, Ordering::SeqCst), full);

    // cancelled before anything: no work at all
    let r = pool.install(|| model.score_cancellable(q, &passages, &|| true));
    assert!(matches!(r, Err(InferenceError::Cancelled)), "{r:?}");
    assert_eq!(units.load(Ordering::SeqCst), 0);

    // cancelled once some work has been done: nothing more runs after the check said yes,
    // which was within the first of the passes
    // the work done when the check first said yes (0: not yet)
    let fired_at = AtomicUsize::new(0);
    let cancelled = || {
        let done = units.load(Ordering::SeqCst);
        if fired_at.load(Ordering::SeqCst) == 0 {
            fired_at.store(done, Ordering::SeqCst);
        }
        fired_at.load(Ordering::SeqCst) > 0
    };
    let r = pool.install(|| model.score_cancellable(q, &passages, &cancelled));
    assert!(matches!(r, Err(InferenceError::Cancelled)), "{r:?}");
    let fired_at = fired_at.load(Ordering::SeqCst);
    assert!(fired_at > 0, "the check never fired");
    assert_eq!(
        units.load(Ordering::SeqCst),
        fired_at,
        "work went on after cancellation"
    );
    assert!(
        fired_at * passages.len() <= full,
        "{fired_at} of {full} units ran: more than one pass of {}",
        passages.len()
    );
    assert_eq!(
        InferenceError::Cancelled.to_string(),
        "cancelled",
        "the message callers see"
    );
}
