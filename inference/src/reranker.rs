//! Cross-encoder reranking: score (query, passage) pairs with a sequence-classification model.
//!
//! Loads any Hugging Face cross-encoder folder. BERT models (`BertForSequenceClassification`, as
//! in the ms-marco MiniLM cross-encoders): candle has no such class, so the pooler (dense + tanh
//! on the first token) and the classifier head are built here on top of candle's `BertModel`.
//! XLM-RoBERTa models (as in bge-reranker) use candle's `XLMRobertaForSequenceClassification`.

use std::sync::Arc;

use candle_core::DType;
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config as BertConfig;
use candle_transformers::models::xlm_roberta::{
    Config as XlmRobertaConfig, XLMRobertaForSequenceClassification,
};
use serde_json::Value;
use tokenizers::{EncodeInput, Encoding, Tokenizer};

use crate::batch::{forward_in_groups, pad};
use crate::embedder::{sequences, Engine, Model};
use crate::native::Precision;
use crate::{InferenceError, ModelFiles};

#[derive(Debug, Clone, Copy)]
pub struct RerankerOptions {
    /// Token limit per (query, passage) pair, special tokens included; capped by the model.
    pub max_tokens: usize,
    /// Pairs per forward pass.
    pub batch_size: usize,
    /// Tokens per forward pass (real tokens with the native engine, padded with candle).
    pub max_batch_tokens: usize,
    /// The engine for BERT cross-encoders (XLM-RoBERTa ones always run on candle).
    pub engine: Engine,
    pub precision: Precision,
}

impl Default for RerankerOptions {
    fn default() -> Self {
        RerankerOptions {
            max_tokens: 512,
            batch_size: 16,
            max_batch_tokens: 2048,
            engine: Engine::Native,
            precision: Precision::F32,
        }
    }
}

enum Architecture {
    Bert {
        model: Model,
        pooler: Dense,
        classifier: Dense,
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
                let model = Model::load(files, &vb, options.engine, options.precision)?;
                let h = config.hidden_size;
                let pooler =
                    Dense::load(&base.pp("pooler").pp("dense"), h, h).map_err(shape_error)?;
                let classifier =
                    Dense::load(&vb.pp("classifier"), num_labels, h).map_err(shape_error)?;
                Architecture::Bert {
                    model,
                    pooler,
                    classifier,
                }
            }
            "xlm-roberta" => {
                if options.precision != Precision::F32 {
                    return Err(InferenceError::Input(
                        "reduced precision is not available for XLM-RoBERTa rerankers".into(),
                    ));
                }
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
        let packed = matches!(
            self.inner.arch,
            Architecture::Bert {
                model: Model::Native(_),
                ..
            }
        );
        forward_in_groups(
            &encodings,
            self.inner.batch_size,
            self.inner.max_batch_tokens,
            packed,
            |group| self.forward(group),
        )
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
        let (pooler, classifier, first_tokens) = match &self.inner.arch {
            Architecture::Bert {
                model: Model::Native(encoder),
                pooler,
                classifier,
            } => {
                let seqs = sequences(encodings);
                let hidden = encoder.forward(&seqs)?;
                let first: Vec<Vec<f32>> = (0..seqs.len())
                    .map(|i| hidden.rows(i)[..hidden.width].to_vec())
                    .collect();
                (pooler, classifier, first)
            }
            Architecture::Bert {
                model: Model::Candle(model),
                pooler,
                classifier,
            } => {
                let p = pad(encodings)?;
                let hidden =
                    model.forward(&p.input_ids, &p.token_type_ids, Some(&p.attention_mask))?;
                let first = hidden.narrow(1, 0, 1)?.squeeze(1)?;
                (pooler, classifier, first.to_vec2::<f32>()?)
            }
            Architecture::XlmRoberta(m) => {
                let p = pad(encodings)?;
                let logits = m.forward(&p.input_ids, &p.attention_mask, &p.token_type_ids)?;
                return Ok(logits.to_dtype(DType::F32)?.to_vec2::<f32>()?);
            }
        };
        Ok(first_tokens
            .iter()
            .map(|cls| {
                let mut pooled = pooler.apply(cls);
                for v in pooled.iter_mut() {
                    *v = v.tanh();
                }
                classifier.apply(&pooled)
            })
            .collect())
    }
}

/// A small dense layer (the pooler and the classifier head), `out = W · x + b`.
struct Dense {
    weight: Vec<f32>,
    bias: Vec<f32>,
    n_in: usize,
}

impl Dense {
    fn load(vb: &VarBuilder, n_out: usize, n_in: usize) -> Result<Dense, candle_core::Error> {
        let weight = vb
            .get((n_out, n_in), "weight")?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bias = vb
            .get(n_out, "bias")?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        Ok(Dense { weight, bias, n_in })
    }

    fn apply(&self, x: &[f32]) -> Vec<f32> {
        self.weight
            .chunks_exact(self.n_in)
            .zip(&self.bias)
            .map(|(row, b)| {
                let dot: f64 = row.iter().zip(x).map(|(w, v)| *w as f64 * *v as f64).sum();
                dot as f32 + b
            })
            .collect()
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
