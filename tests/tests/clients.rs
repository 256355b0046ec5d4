//! The compatible endpoints as their real clients call them: the OpenAI SDK, Cohere's v1 and v2
//! clients, huggingface_hub's InferenceClient (Text Embeddings Inference's routes) and TEI's
//! rerank shape, with a valid credential and a wrong one (scripts/clients_check.py, in a venv
//! that scripts/clients-venv.sh makes with pip).

use std::process::Command;

use serde_json::Value;
use shoal_tests::{make_test_reranker, workspace_root, Node, ADMIN_KEY};

#[test]
fn the_real_python_clients_work_with_a_credential_and_are_refused_without() {
    let venv = Command::new("bash")
        .arg(workspace_root().join("scripts/clients-venv.sh"))
        .output()
        .expect("run scripts/clients-venv.sh");
    assert!(
        venv.status.success(),
        "could not install the Python clients: {}",
        String::from_utf8_lossy(&venv.stderr)
    );
    let python = String::from_utf8_lossy(&venv.stdout).trim().to_string();
    let dir = tempfile::tempdir().unwrap();
    let reranker = dir.path().join("test-cross-encoder");
    make_test_reranker(&reranker);
    let node = Node::start(&[], &["--reranker-model", reranker.to_str().unwrap()]);
    let out = Command::new(&python)
        .arg(workspace_root().join("scripts/clients_check.py"))
        .arg(&node.base)
        .arg(ADMIN_KEY)
        .output()
        .expect("run clients_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).expect("the check's JSON report");
    // the clients decode exactly what the node computes
    assert!(
        report["openai_min_cosine"].as_f64().unwrap() > 0.9999,
        "{report}"
    );
    assert!(report["hf_cosine"].as_f64().unwrap() > 0.9999, "{report}");
    assert_eq!(
        report["cohere_v1_order"], report["cohere_v2_order"],
        "{report}"
    );
}
