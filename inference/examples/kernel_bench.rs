//! Achieved GFLOP/s of the native matrix kernel on the shapes of a MiniLM layer.
//!
//! Usage: kernel_bench [THREADS]   (prints one line per shape and precision)

use std::time::Instant;

use shoal_inference::native::{Isa, PackedLinear, Precision};

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    println!("kernels {} threads {threads}", Isa::detect().name());
    // (tokens, outputs, inputs): fused QKV, attention output, intermediate, output
    let shapes = [
        (2048, 1152, 384),
        (2048, 384, 384),
        (2048, 1536, 384),
        (2048, 384, 1536),
        (12, 1152, 384),
        (12, 1536, 384),
    ];
    for precision in [Precision::F32, Precision::Bf16] {
        for &(m, n, k) in &shapes {
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
                .collect();
            let b = vec![0.1f32; n];
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i % 89) as f32 - 44.0) / 89.0)
                .collect();
            let lin = PackedLinear::new(&w, &b, n, k, precision);
            let mut out = vec![0f32; m * n];
            let flops = 2.0 * (m * n * k) as f64;
            let reps = ((2e10 / flops) as usize).clamp(3, 2000);
            pool.install(|| lin.forward(&a, m, &mut out));
            let start = Instant::now();
            for _ in 0..reps {
                pool.install(|| lin.forward(&a, m, &mut out));
            }
            let secs = start.elapsed().as_secs_f64() / reps as f64;
            println!(
                "{precision:?} m={m} n={n} k={k}: {:.1} GFLOP/s ({:.3} ms)",
                flops / secs / 1e9,
                secs * 1e3
            );
        }
    }
}
