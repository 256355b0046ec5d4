//! Inference for shoal: sentence embeddings with candle (BERT forward, attention-masked mean
//! pooling, L2 normalisation), cross-encoder reranking, and token-aware chunking of documents.
//!
//! Models are loaded from any Hugging Face-style folder holding `config.json`, `tokenizer.json`
//! and `model.safetensors`. Nothing here knows about actors, HTTP or storage.

// The native kernels work through raw pointers: every unsafe operation sits in its own `unsafe`
// block with a `SAFETY:` comment, and every `unsafe fn` states its contract.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

mod batch;
mod chunker;
mod embedder;
mod error;
mod model_files;
pub mod native;
mod reranker;
pub mod sentence;
pub mod test_model;

pub use chunker::{Chunk, Chunker, ChunkerParams};
pub use embedder::{Embedder, EmbedderOptions, Engine};
pub use error::InferenceError;
pub use model_files::ModelFiles;
pub use native::{pause_point, set_pause_hook, Isa, PauseHook, Precision};
pub use reranker::{relevance, sigmoid, CrossEncoder, RerankerOptions};
pub use sentence::{SentenceHead, TextKind};
