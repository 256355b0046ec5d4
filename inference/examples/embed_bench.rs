//! Side-by-side embedding benchmark, shoal half (see scripts/bench-embed.sh).
//!
//! Usage: embed_bench MODEL_DIR INPUTS_JSON THREADS OUT_JSON
//! Embeds the passages, short queries and mixed texts of INPUTS_JSON in batches of 32 on a rayon
//! pool of THREADS threads, then times 200 queries one at a time; writes texts/s and latency.

use std::time::Instant;

use serde_json::{json, Value};
use shoal_inference::{Embedder, EmbedderOptions, Engine, Isa, ModelFiles, Precision};

fn texts(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: embed_bench MODEL_DIR INPUTS_JSON THREADS OUT_JSON");
        std::process::exit(2);
    }
    let threads: usize = args[3].parse().expect("THREADS");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    let files = ModelFiles::locate(std::path::Path::new(&args[1])).expect("model folder");
    // EMBED_BENCH_BATCH (default 32) and EMBED_BENCH_LIMIT (texts per set, default all) for probes.
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let batch_size = env("EMBED_BENCH_BATCH", 32);
    let limit = env("EMBED_BENCH_LIMIT", usize::MAX);
    // EMBED_BENCH_ENGINE (native | candle) and EMBED_BENCH_PRECISION (f32 | bf16).
    let defaults = EmbedderOptions::default();
    let engine: Engine = std::env::var("EMBED_BENCH_ENGINE")
        .map(|v| v.parse().expect("EMBED_BENCH_ENGINE"))
        .unwrap_or(defaults.engine);
    let precision: Precision = std::env::var("EMBED_BENCH_PRECISION")
        .map(|v| v.parse().expect("EMBED_BENCH_PRECISION"))
        .unwrap_or(defaults.precision);
    let max_batch_tokens = env("EMBED_BENCH_TOKENS", defaults.max_batch_tokens);
    let embedder = Embedder::load(
        &files,
        EmbedderOptions {
            max_tokens: 256,
            batch_size,
            max_batch_tokens,
            engine,
            precision,
        },
    )
    .expect("load model");
    println!(
        "shoal engine {} precision {:?} kernels {} batch {batch_size} tokens {max_batch_tokens}",
        engine.name(),
        precision,
        Isa::detect().name()
    );
    let inputs: Value =
        serde_json::from_str(&std::fs::read_to_string(&args[2]).expect("inputs")).expect("json");
    let embed = |t: &[String]| {
        let refs: Vec<&str> = t.iter().map(String::as_str).collect();
        pool.install(|| embedder.embed(&refs)).expect("embed")
    };
    let mut result = json!({
        "threads": threads,
        "batch_size": batch_size,
        "max_batch_tokens": max_batch_tokens,
        "engine": engine.name(),
        "precision": format!("{precision:?}").to_lowercase(),
        "kernels": Isa::detect().name(),
    });
    for key in ["passages", "queries", "mixed"] {
        let mut t = texts(&inputs, key);
        t.truncate(limit);
        embed(&t[..64.min(t.len())]);
        let start = Instant::now();
        let v = embed(&t);
        assert_eq!(v.len(), t.len());
        let rate = t.len() as f64 / start.elapsed().as_secs_f64();
        println!("shoal {key}: {rate:.1} texts/s");
        result[key] = json!(rate);
    }
    let q = texts(&inputs, "queries");
    let mut ms: Vec<f64> = q
        .iter()
        .take(200)
        .map(|t| {
            let start = Instant::now();
            embed(std::slice::from_ref(t));
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    result["query_latency"] =
        json!({"p50_ms": ms[ms.len() / 2], "p95_ms": ms[ms.len() * 95 / 100]});
    println!(
        "shoal query latency: p50 {:.2} ms, p95 {:.2} ms",
        ms[ms.len() / 2],
        ms[ms.len() * 95 / 100]
    );
    // EMBED_BENCH_NO_ACCURACY skips the comparison with f32 (for profiling).
    if precision != Precision::F32 && std::env::var_os("EMBED_BENCH_NO_ACCURACY").is_none() {
        result["accuracy"] = accuracy(&files, &embedder, &inputs, &pool, max_batch_tokens);
    }
    std::fs::write(
        &args[4],
        serde_json::to_string_pretty(&result).expect("json"),
    )
    .expect("write");
}

/// How close reduced-precision vectors are to f32 ones on the same inputs: cosine per text, and
/// the overlap of the top 10 of an exact search of every query over the passages and mixed texts.
fn accuracy(
    files: &ModelFiles,
    reduced: &Embedder,
    inputs: &Value,
    pool: &rayon::ThreadPool,
    max_batch_tokens: usize,
) -> Value {
    let exact = Embedder::load(
        files,
        EmbedderOptions {
            max_batch_tokens,
            ..EmbedderOptions::default()
        },
    )
    .expect("load f32 model");
    let mut corpus = texts(inputs, "passages");
    corpus.extend(texts(inputs, "mixed"));
    let queries = texts(inputs, "queries");
    let embed = |e: &Embedder, t: &[String]| {
        let refs: Vec<&str> = t.iter().map(String::as_str).collect();
        pool.install(|| e.embed(&refs)).expect("embed")
    };
    let (c32, c16) = (embed(&exact, &corpus), embed(reduced, &corpus));
    let (q32, q16) = (embed(&exact, &queries), embed(reduced, &queries));
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let mut cos: Vec<f32> = c32
        .iter()
        .zip(&c16)
        .chain(q32.iter().zip(&q16))
        .map(|(a, b)| dot(a, b))
        .collect();
    cos.sort_by(f32::total_cmp);
    let mean_cos = cos.iter().map(|&c| c as f64).sum::<f64>() / cos.len() as f64;
    let top10 = |q: &[f32], docs: &[Vec<f32>]| {
        let mut scored: Vec<(f32, usize)> = docs
            .iter()
            .enumerate()
            .map(|(i, d)| (dot(q, d), i))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored
            .into_iter()
            .take(10)
            .map(|(_, i)| i)
            .collect::<Vec<_>>()
    };
    let overlap: f64 = pool.install(|| {
        use rayon::prelude::*;
        q32.par_iter()
            .zip(&q16)
            .map(|(a, b)| {
                let (x, y) = (top10(a, &c32), top10(b, &c16));
                x.iter().filter(|i| y.contains(i)).count() as f64 / 10.0
            })
            .sum()
    });
    let overlap = overlap / q32.len() as f64;
    println!(
        "accuracy vs f32: cosine min {:.5} mean {:.6}; top-10 overlap {:.4} ({} queries over {} texts)",
        cos[0],
        mean_cos,
        overlap,
        queries.len(),
        corpus.len()
    );
    json!({
        "min_cosine": cos[0],
        "mean_cosine": mean_cos,
        "top10_overlap": overlap,
        "queries": queries.len(),
        "corpus": corpus.len(),
    })
}
