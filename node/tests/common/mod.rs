//! What the in-process node tests share: a node started on a temporary data folder with the
//! workspace's model (`shoal_tests::model_dir`), and a collection of small test vectors.

use shoal_node::config::Config;
use shoal_storage::{CollectionSpec, Command, HnswParams};

/// A node on a data folder in `tmp`, configured by `configure` on top of the defaults, with an
/// empty collection `c` of `dimension`-dimensional vectors.
pub async fn node_with_collection(
    tmp: &tempfile::TempDir,
    dimension: u32,
    configure: impl FnOnce(&mut Config),
) -> shoal_node::RunningNode {
    let mut config = Config::default();
    config.storage.data_dir = tmp.path().join("data");
    config.model.path = shoal_tests::model_dir();
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
