use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::InferenceError;

/// The files of a Hugging Face-style model folder.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub weights: PathBuf,
}

impl ModelFiles {
    /// Check that `dir` holds the files a model needs, naming the first one that is missing. In
    /// a sentence-transformers folder whose Transformer module lives in a subfolder
    /// (`modules.json`), the files are looked for there.
    pub fn locate(dir: &Path) -> Result<ModelFiles, InferenceError> {
        let base = transformer_dir(dir);
        let need = |name: &str| {
            let path = base.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(InferenceError::MissingFile { path })
            }
        };
        Ok(ModelFiles {
            dir: dir.to_path_buf(),
            config: need("config.json")?,
            tokenizer: need("tokenizer.json")?,
            weights: need("model.safetensors")?,
        })
    }

    /// The folder of the transformer's own files (config.json, tokenizer.json, weights).
    pub fn transformer_dir(&self) -> PathBuf {
        transformer_dir(&self.dir)
    }

    /// The folder's name, used as the model's name in responses and metrics.
    pub fn name(&self, fallback: &str) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| fallback.to_string())
    }

    /// The error for weights that do not fit the configuration.
    pub(crate) fn shape_error(&self, e: candle_core::Error) -> InferenceError {
        InferenceError::BadFile {
            path: self.weights.clone(),
            reason: format!("does not fit config.json: {e}"),
        }
    }

    pub(crate) fn read_config<T: serde::de::DeserializeOwned>(&self) -> Result<T, InferenceError> {
        let bad = |reason: String| InferenceError::BadFile {
            path: self.config.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&self.config).map_err(|e| bad(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| bad(e.to_string()))
    }

    /// The tokenizer, truncating (longest first) at `max_tokens` or not at all, never padding:
    /// the folder's own truncation and padding settings are replaced (MiniLM's say 128).
    pub(crate) fn read_tokenizer(
        &self,
        max_tokens: Option<usize>,
    ) -> Result<Tokenizer, InferenceError> {
        let mut tokenizer =
            Tokenizer::from_file(&self.tokenizer).map_err(|e| InferenceError::BadFile {
                path: self.tokenizer.clone(),
                reason: e.to_string(),
            })?;
        let truncation = max_tokens.map(|max_length| TruncationParams {
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        });
        tokenizer
            .with_truncation(truncation)
            .map_err(|e| InferenceError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);
        Ok(tokenizer)
    }

    /// The f32 weights on the CPU.
    pub(crate) fn var_builder(&self) -> Result<VarBuilder<'static>, InferenceError> {
        let bad = |reason: String| InferenceError::BadFile {
            path: self.weights.clone(),
            reason,
        };
        let bytes = std::fs::read(&self.weights).map_err(|e| bad(e.to_string()))?;
        VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)
            .map_err(|e| bad(e.to_string()))
    }
}

/// Where a folder's transformer files are: the path of the first module in `modules.json` when
/// it is a Transformer, else the folder itself.
fn transformer_dir(dir: &Path) -> PathBuf {
    let sub = std::fs::read_to_string(dir.join("modules.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            let first = v.get(0)?;
            let kind = first["type"].as_str()?;
            kind.ends_with(".Transformer")
                .then(|| first["path"].as_str().unwrap_or_default().to_owned())
        });
    sub.and_then(|s| module_dir(dir, &s))
        .unwrap_or_else(|| dir.to_path_buf())
}

/// The folder of a module at `sub` (relative, inside `dir`): None for a path that leaves it.
pub(crate) fn module_dir(dir: &Path, sub: &str) -> Option<PathBuf> {
    let p = Path::new(sub);
    let inside = p.components().all(|c| {
        matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    });
    inside.then(|| dir.join(p))
}
