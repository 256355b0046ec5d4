//! Cross-encoder reranking: score (query, passage) pairs with a sequence-classification model.
//!
//! Loads any Hugging Face cross-encoder folder. BERT models (`BertForSequenceClassification`, as
//! in the ms-marco MiniLM cross-encoders): candle has no such class, so the pooler (dense + tanh
//! on the first token) and the classifier head are built here on top of candle's `BertModel`.
//! XLM-RoBERTa models (as in bge-reranker) use candle's `XLMRobertaForSequenceClassification`.

use std::sync::Arc;

use candle_core::{DType, Module};
use candle_nn::{linear, Linear};
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use candle_transformers::models::xlm_roberta::{
    Config as XlmRobertaConfig, XLMRobertaForSequenceClassification,
};
use serde_json::Value;
use tokenizers::{EncodeInput, Encoding, Tokenizer};

use crate::batch::{length_groups, pad};
use crate::{InferenceError, ModelFiles};

#[derive(Debug, Clone, Copy)]
pub struct RerankerOptions {
    /// Token limit per (query, passage) pair, special tokens included; capped by the model.
    pub max_tokens: usize,
    /// Pairs per forward pass.
    pub batch_size: usize,
    /// Padded tokens (pairs × longest) per forward pass.
    pub max_batch_tokens: usize,
}

impl Default for RerankerOptions {
    fn default() -> Self {
        RerankerOptions {
            max_tokens: 512,
            batch_size: 16,
            max_batch_tokens: 2048,
        }
    }
}

enum Architecture {
    Bert {
        model: BertModel,
        pooler: Linear,
        classifier: Linear,
    },
    XlmRoberta(XLMRobertaForSequenceClassification),
}

/// A loaded cross-encoder. Cheap to clone; `score` may run on several threads at once.
#[derive(Clone)]
pub struct CrossEncoder {
    inner: Arc<Inner>,
}

struct Inner {
    arch: Architecture,
    tokenizer: Tokenizer,
    num_labels: usize,
    max_tokens: usize,
    batch_size: usize,
    max_batch_tokens: usize,
    model_name: String,
}

fn bad_file(path: &std::path::Path, reason: impl std::fmt::Display) -> InferenceError {
    InferenceError::BadFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl CrossEncoder {
    pub fn load(
        files: &ModelFiles,
        options: RerankerOptions,
    ) -> Result<CrossEncoder, InferenceError> {
        let raw: Value = files.read_config()?;
        let model_type = raw["model_type"].as_str().unwrap_or("bert").to_string();
        let num_labels = raw["id2label"]
            .as_object()
            .map(|m| m.len())
            .or_else(|| raw["num_labels"].as_u64().map(|n| n as usize))
            .unwrap_or(1)
            .max(1);
        let max_positions = raw["max_position_embeddings"].as_u64().unwrap_or(512) as usize;
        // XLM-RoBERTa positions start after the padding index.
        let usable = if model_type == "xlm-roberta" {
            max_positions.saturating_sub(2)
        } else {
            max_positions
        };
        let max_tokens = options.max_tokens.min(usable).max(4);

        let tokenizer = files.read_tokenizer(Some(max_tokens))?;
        let vb = files.var_builder()?;
        let shape_error = |e: candle_core::Error| files.shape_error(e);
        let arch = match model_type.as_str() {
            "bert" => {
                let config: BertConfig = files.read_config()?;
                let base = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
                    vb.pp("bert")
                } else {
                    vb.clone()
                };
                let model = BertModel::load(base.clone(), &config).map_err(shape_error)?;
                let h = config.hidden_size;
                let pooler = linear(h, h, base.pp("pooler").pp("dense")).map_err(shape_error)?;
                let classifier = linear(h, num_labels, vb.pp("classifier")).map_err(shape_error)?;
                Architecture::Bert {
                    model,
                    pooler,
                    classifier,
                }
            }
            "xlm-roberta" => {
                let config: XlmRobertaConfig = files.read_config()?;
                Architecture::XlmRoberta(
                    XLMRobertaForSequenceClassification::new(num_labels, &config, vb)
                        .map_err(shape_error)?,
                )
            }
            other => {
                return Err(bad_file(
                    &files.config,
                    format!(
                        "model_type `{other}` is not supported for reranking (bert, xlm-roberta)"
                    ),
                ))
            }
        };
        let model_name = files.name("reranker");
        Ok(CrossEncoder {
            inner: Arc::new(Inner {
                arch,
                tokenizer,
                num_labels,
                max_tokens,
                batch_size: options.batch_size.max(1),
                max_batch_tokens: options.max_batch_tokens.max(1),
                model_name,
            }),
        })
    }

    pub fn model_name(&self) -> &str {
        &self.inner.model_name
    }

    pub fn max_tokens(&self) -> usize {
        self.inner.max_tokens
    }

    pub fn num_labels(&self) -> usize {
        self.inner.num_labels
    }

    /// Raw logits, one row of `num_labels` per passage, in input order.
    pub fn logits(&self, query: &str, passages: &[&str]) -> Result<Vec<Vec<f32>>, InferenceError> {
        if passages.is_empty() {
            return Ok(Vec::new());
        }
        let inputs: Vec<EncodeInput> = passages
            .iter()
            .map(|p| EncodeInput::Dual(query.into(), (*p).into()))
            .collect();
        let encodings = self
            .inner
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| InferenceError::Tokenizer(e.to_string()))?;
        let lengths: Vec<usize> = encodings.iter().map(|e| e.get_ids().len()).collect();
        let mut out = vec![Vec::new(); passages.len()];
        for group in length_groups(&lengths, self.inner.batch_size, self.inner.max_batch_tokens) {
            let members: Vec<&Encoding> = group.iter().map(|&i| &encodings[i]).collect();
            let rows = self.forward(&members)?;
            for (&i, row) in group.iter().zip(rows) {
                out[i] = row;
            }
        }
        Ok(out)
    }

    /// One relevance score per passage: the logit for single-label models, else the softmax
    /// probability of the last label.
    pub fn score(&self, query: &str, passages: &[&str]) -> Result<Vec<f32>, InferenceError> {
        Ok(self
            .logits(query, passages)?
            .into_iter()
            .map(|row| relevance(&row))
            .collect())
    }

    fn forward(&self, encodings: &[&Encoding]) -> Result<Vec<Vec<f32>>, InferenceError> {
        let p = pad(encodings)?;
        let logits = match &self.inner.arch {
            Architecture::Bert {
                model,
                pooler,
                classifier,
            } => {
                let hidden =
                    model.forward(&p.input_ids, &p.token_type_ids, Some(&p.attention_mask))?;
                let first = hidden.narrow(1, 0, 1)?.squeeze(1)?;
                let pooled = pooler.forward(&first)?.tanh()?;
                classifier.forward(&pooled)?
            }
            Architecture::XlmRoberta(m) => {
                m.forward(&p.input_ids, &p.attention_mask, &p.token_type_ids)?
            }
        };
        Ok(logits.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }
}

/// The relevance of one row of logits.
pub fn relevance(logits: &[f32]) -> f32 {
    match logits {
        [] => f32::NAN,
        [one] => *one,
        many => {
            let max = many.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = many.iter().map(|x| (x - max).exp()).sum();
            (many[many.len() - 1] - max).exp() / sum
        }
    }
}

/// Logistic function, for turning a single logit into a 0..1 relevance.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}
