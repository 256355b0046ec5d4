//! What the in-process node tests share: the model folder, a node started on a temporary data
//! folder, and a collection of small test vectors.

use std::path::PathBuf;

use shoal_node::config::Config;
use shoal_storage::{CollectionSpec, Command, HnswParams};

/// The embedding model (`scripts/fetch-model.sh`), or `SHOAL_MODEL_DIR`.
pub fn model_dir() -> PathBuf {
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

/// A node on a data folder in `tmp`, configured by `configure` on top of the defaults, with an
/// empty collection `c` of `dimension`-dimensional vectors.
pub async fn node_with_collection(
    tmp: &tempfile::TempDir,
    dimension: u32,
    configure: impl FnOnce(&mut Config),
) -> shoal_node::RunningNode {
    let mut config = Config::default();
    config.storage.data_dir = tmp.path().join("data");
    config.model.path = model_dir();
    configure(&mut config);
    let node = shoal_node::start(config).await.unwrap();
    node.ctx
        .apply(Command::CreateCollection {
            name: "c".into(),
            spec: CollectionSpec {
                dimension,
                hnsw: HnswParams::default(),
            },
            at_ms: 1,
        })
        .await
        .unwrap();
    node
}
