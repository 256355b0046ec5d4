//! Sentence embeddings: BERT forward, attention-masked mean pooling, L2 normalisation.

use std::sync::Arc;

use candle_core::DType;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::{Encoding, Tokenizer};

use crate::batch::{length_groups, pad, Padded};
use crate::{InferenceError, ModelFiles};

#[derive(Debug, Clone, Copy)]
pub struct EmbedderOptions {
    /// Token limit per text, special tokens included (sentence-transformers' `max_seq_length`).
    /// Capped by the model's `max_position_embeddings`.
    pub max_tokens: usize,
    /// Texts per forward pass. Texts are sorted by length first, so each pass pads only to the
    /// longest text of its own group.
    pub batch_size: usize,
    /// Padded tokens (texts × longest) per forward pass.
    pub max_batch_tokens: usize,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        EmbedderOptions {
            max_tokens: 256,
            batch_size: 32,
            max_batch_tokens: 1024,
        }
    }
}

/// A loaded sentence-embedding model. Cheap to clone (weights are shared); `embed` may run on
/// several threads at once.
#[derive(Clone)]
pub struct Embedder {
    inner: Arc<Inner>,
}

struct Inner {
    model: BertModel,
    tokenizer: Tokenizer,
    /// The same tokenizer without truncation, for counting and chunking.
    counting_tokenizer: Tokenizer,
    dimension: usize,
    max_tokens: usize,
    batch_size: usize,
    max_batch_tokens: usize,
    model_name: String,
}

impl Embedder {
    /// Load a BERT sentence-embedding model from a Hugging Face-style folder.
    pub fn load(files: &ModelFiles, options: EmbedderOptions) -> Result<Embedder, InferenceError> {
        let config: BertConfig = files.read_config()?;
        let max_tokens = options
            .max_tokens
            .min(config.max_position_embeddings)
            .max(2);
        let tokenizer = files.read_tokenizer(Some(max_tokens))?;
        let counting_tokenizer = files.read_tokenizer(None)?;
        let vb = files.var_builder()?;
        let model = BertModel::load(vb, &config).map_err(|e| files.shape_error(e))?;
        let model_name = files.name("model");
        Ok(Embedder {
            inner: Arc::new(Inner {
                model,
                tokenizer,
                counting_tokenizer,
                dimension: config.hidden_size,
                max_tokens,
                batch_size: options.batch_size.max(1),
                max_batch_tokens: options.max_batch_tokens.max(1),
                model_name,
            }),
        })
    }

    pub fn dimension(&self) -> usize {
        self.inner.dimension
    }

    pub fn max_tokens(&self) -> usize {
        self.inner.max_tokens
    }

    pub fn model_name(&self) -> &str {
        &self.inner.model_name
    }

    /// The tokenizer without truncation (for chunking).
    pub fn counting_tokenizer(&self) -> &Tokenizer {
        &self.inner.counting_tokenizer
    }

    /// Embed texts; returns one L2-normalised vector per text, in input order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, InferenceError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .inner
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| InferenceError::Tokenizer(e.to_string()))?;
        let lengths: Vec<usize> = encodings.iter().map(|e| e.get_ids().len()).collect();
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        for group in length_groups(&lengths, self.inner.batch_size, self.inner.max_batch_tokens) {
            let members: Vec<&Encoding> = group.iter().map(|&i| &encodings[i]).collect();
            let vectors = self.forward(&members)?;
            for (&i, v) in group.iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// One forward pass over a group of texts, padded to its longest member.
    fn forward(&self, encodings: &[&Encoding]) -> Result<Vec<Vec<f32>>, InferenceError> {
        let Padded {
            input_ids,
            token_type_ids,
            attention_mask: mask,
        } = pad(encodings)?;
        let hidden = self
            .inner
            .model
            .forward(&input_ids, &token_type_ids, Some(&mask))?;
        // Mean over real tokens only.
        let mask_f = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask_f)?.sum(1)?;
        let counts = mask_f.sum(1)?.clamp(1e-9, f32::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f32::MAX)?;
        let normalized = mean.broadcast_div(&norms)?;
        Ok(normalized.to_vec2::<f32>()?)
    }
}
