//! Quick embedding throughput probe: `cargo run --release -p shoal-inference --example embed_speed -- MODEL_DIR`
use std::time::Instant;

use shoal_inference::{Embedder, EmbedderOptions, ModelFiles};

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "models/all-MiniLM-L6-v2".into());
    let files = ModelFiles::locate(std::path::Path::new(&dir)).expect("model");
    let e = Embedder::load(
        &files,
        EmbedderOptions {
            max_tokens: 256,
            batch_size: 32,
        },
    )
    .expect("load");
    let sentence = "The history of the lighthouse is a history of coastal trade and of the keepers who trimmed wicks through the night. ";
    let passage: String = sentence.repeat(8);
    let passages: Vec<String> = (0..64).map(|i| format!("{i} {passage}")).collect();
    let refs: Vec<&str> = passages.iter().map(String::as_str).collect();
    let tokens = e
        .counting_tokenizer()
        .encode(refs[0], true)
        .unwrap()
        .get_ids()
        .len()
        .min(256);
    e.embed(&refs[..8]).unwrap();
    let t = Instant::now();
    e.embed(&refs).unwrap();
    let s = t.elapsed().as_secs_f64();
    let flop = 64.0 * tokens as f64 * 23e6;
    println!(
        "passages: {tokens} tokens each, {:.1} passages/s, {:.1} GFLOP/s",
        64.0 / s,
        flop / s / 1e9
    );
    let q = ["how do plants make food from sunlight"];
    let mut lat = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        e.embed(&q).unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    println!("query batch 1: p50 {:.2} ms p95 {:.2} ms", lat[25], lat[47]);
    let shorts: Vec<String> = (0..256)
        .map(|i| format!("short query number {i} about plants and light"))
        .collect();
    let refs: Vec<&str> = shorts.iter().map(String::as_str).collect();
    let t = Instant::now();
    e.embed(&refs).unwrap();
    println!(
        "short texts: {:.1} texts/s",
        256.0 / t.elapsed().as_secs_f64()
    );
}
