//! What the in-process node tests share: a node started on a temporary data folder with the
//! workspace's model (`shoal_tests::model_dir`), and a collection of small test vectors.

use shoal_node::config::Config;
use shoal_storage::{ChunkInput, CollectionSpec, Command, DocumentInput, HnswParams};

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
                quantization: Default::default(),
                vectors_on_disk: false,
            },
            at_ms: 1,
        })
        .await
        .unwrap();
    node
}

/// Accept documents `d0`..`d{n-1}` into collection `c` under job `job`, document `d` with the
/// text `text(d)`.
// (not every test binary that shares this module accepts documents)
#[allow(dead_code)]
pub fn accept_documents(job: &str, n: usize, text: impl Fn(usize) -> String) -> Command {
    Command::AcceptDocuments {
        collection: "c".into(),
        job_id: job.into(),
        documents: (0..n)
            .map(|d| DocumentInput {
                id: format!("d{d}"),
                text: text(d),
                metadata_json: "{}".into(),
                sections: Vec::new(),
            })
            .collect(),
        staged_parts: 0,
        at_ms: 2,
    }
}

/// One to three chunks for a document, each with a random unit vector of `dimension` floats.
// (not every test binary that shares this module stores chunks)
#[allow(dead_code)]
pub fn random_chunks(rng: &mut impl rand::Rng, dimension: usize) -> Vec<ChunkInput> {
    (0..rng.gen_range(1..4))
        .map(|i| {
            let mut vector: Vec<f32> = (0..dimension).map(|_| rng.gen_range(-1.0..1.0)).collect();
            shoal_index::normalize(&mut vector);
            ChunkInput {
                text: format!("chunk {i}"),
                start: 0,
                end: 1,
                pages: None,
                section: None,
                vector,
            }
        })
        .collect()
}
