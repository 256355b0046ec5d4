use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum InferenceError {
    #[error("model file {path} is missing (a model folder needs config.json, tokenizer.json and model.safetensors)")]
    MissingFile { path: PathBuf },
    #[error("model file {path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("model: {0}")]
    Model(#[from] candle_core::Error),
    #[error("invalid input: {0}")]
    Input(String),
    /// The caller's `cancelled` check fired: the work stopped between two steps (forward passes,
    /// or layers of one) and its results were dropped.
    #[error("cancelled")]
    Cancelled,
}
