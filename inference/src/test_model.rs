//! The seeded test cross-encoder: no cross-encoder weights can be downloaded here, so tests build
//! one from a BERT sentence model (all-MiniLM-L6-v2) plus a pooler and a one-label classifier
//! head filled by a fixed formula. It ranks nothing well; it exists so the reranking code can be
//! compared, logit for logit, with Python `transformers` (`scripts/reranker_reference.py` builds
//! the same folder with the same formula).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::InferenceError;

/// Weight number `i` of the tensor with `seed`: a Weyl sequence scaled to ±scale/2. The Python
/// reference uses the same expression.
pub fn seeded_value(seed: u64, i: u64, scale: f64) -> f32 {
    let v = (i * 2_654_435_761 + seed * 40_503) % (1u64 << 32);
    ((v as f64 / 4_294_967_296.0 - 0.5) * scale) as f32
}

fn seeded(seed: u64, shape: &[usize], scale: f64) -> Result<Tensor, InferenceError> {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n as u64)
        .map(|i| seeded_value(seed, i, scale))
        .collect();
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

/// Build the test cross-encoder folder `out` from the BERT model folder `base`.
pub fn build_test_cross_encoder(base: &Path, out: &Path) -> Result<(), InferenceError> {
    let io = |path: &Path, e: std::io::Error| InferenceError::BadFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let config_path = base.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| io(&config_path, e))?;
    let mut config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| InferenceError::BadFile {
            path: config_path.clone(),
            reason: e.to_string(),
        })?;
    let hidden = config["hidden_size"].as_u64().unwrap_or(384) as usize;
    config["architectures"] = serde_json::json!(["BertForSequenceClassification"]);
    config["id2label"] = serde_json::json!({"0": "LABEL_0"});
    config["label2id"] = serde_json::json!({"LABEL_0": 0});
    let target = out.join("config.json");
    std::fs::write(&target, config.to_string()).map_err(|e| io(&target, e))?;
    for f in ["tokenizer.json", "vocab.txt"] {
        if base.join(f).exists() {
            std::fs::copy(base.join(f), out.join(f)).map_err(|e| io(&base.join(f), e))?;
        }
    }
    let weights = base.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)?;
    let mut out_tensors: HashMap<String, Tensor> = tensors
        .into_iter()
        .filter(|(k, _)| !k.starts_with("pooler."))
        .map(|(k, t)| (format!("bert.{k}"), t))
        .collect();
    out_tensors.insert(
        "bert.pooler.dense.weight".into(),
        seeded(1, &[hidden, hidden], 0.1)?,
    );
    out_tensors.insert("bert.pooler.dense.bias".into(), seeded(2, &[hidden], 0.1)?);
    out_tensors.insert("classifier.weight".into(), seeded(3, &[1, hidden], 0.5)?);
    out_tensors.insert("classifier.bias".into(), seeded(4, &[1], 0.5)?);
    candle_core::safetensors::save(&out_tensors, out.join("model.safetensors"))?;
    Ok(())
}

/// Build one folder of `inference/tests/fixtures/sentence_models_reference.json` (made by
/// `scripts/sentence_models_reference.py`): the base model's files linked into the Transformer's
/// folder, the small files written verbatim, each Dense layer's weights made by the seeded
/// formula. `variant` is one entry of the fixture's `variants`.
pub fn build_sentence_model(
    base: &Path,
    out: &Path,
    base_files: &[&str],
    variant: &serde_json::Value,
) -> Result<(), InferenceError> {
    let io = |path: &Path, e: std::io::Error| InferenceError::BadFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let transformer = out.join(variant["transformer_path"].as_str().unwrap_or_default());
    std::fs::create_dir_all(&transformer).map_err(|e| io(&transformer, e))?;
    for f in base_files {
        let target = transformer.join(f);
        if !target.exists() {
            std::os::unix::fs::symlink(base.join(f), &target).map_err(|e| io(&target, e))?;
        }
    }
    let empty = serde_json::Map::new();
    for (path, text) in variant["files"].as_object().unwrap_or(&empty) {
        let target = out.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        std::fs::write(&target, text.as_str().unwrap_or_default()).map_err(|e| io(&target, e))?;
    }
    for (path, d) in variant["dense"].as_object().unwrap_or(&empty) {
        let (seed, scale) = (
            d["seed"].as_u64().unwrap_or(0),
            d["scale"].as_f64().unwrap_or(0.0),
        );
        let (inp, outp) = (
            d["in_features"].as_u64().unwrap_or(0) as usize,
            d["out_features"].as_u64().unwrap_or(0) as usize,
        );
        let mut tensors = HashMap::new();
        tensors.insert(
            "linear.weight".to_string(),
            seeded(seed, &[outp, inp], scale)?,
        );
        if d["bias"].as_bool().unwrap_or(true) {
            tensors.insert("linear.bias".to_string(), seeded(seed + 1, &[outp], scale)?);
        }
        let target = out.join(path).join("model.safetensors");
        candle_core::safetensors::save(&tensors, &target)?;
    }
    Ok(())
}
