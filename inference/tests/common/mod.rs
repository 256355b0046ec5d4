//! Shared by the model tests: where the real model folder is.

use std::path::PathBuf;

/// `$SHOAL_MODEL_DIR`, or `models/all-MiniLM-L6-v2` of the workspace (scripts/fetch-model.sh).
pub fn minilm_dir() -> PathBuf {
    let dir = std::env::var_os("SHOAL_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2")
        });
    assert!(
        dir.join("model.safetensors").is_file(),
        "model not found at {}: run scripts/fetch-model.sh",
        dir.display()
    );
    dir
}
