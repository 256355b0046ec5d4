//! shoal's own CPU inference kernels for BERT encoders: packed (unpadded) batches, weights packed
//! once for an AVX-512 matrix kernel (f32, or bf16 with AVX512-BF16), fused element-wise work,
//! and a portable fallback for other CPUs. candle still reads and checks the weights, and runs
//! the models this encoder does not cover.

pub(crate) mod attention;
pub(crate) mod bert;
pub(crate) mod cpu;
pub(crate) mod gemm;
pub(crate) mod math;
pub mod pause;

pub use bert::{BertEncoder, BertShape, Hidden, Sequence};
pub use cpu::Isa;
pub use gemm::{PackedLinear, Precision};
pub use pause::{pause_point, set_pause_hook, PauseHook};
