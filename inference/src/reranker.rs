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
    /// Truncates (longest first) to `max_tokens`.
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
        self.logits_cancellable(query, passages, &|| false)
    }

    /// [`logits`](Self::logits) that stops early once `cancelled` says yes: it is asked (on the
    /// calling thread) before tokenizing, before each forward pass and, with the native engine,
    /// before each layer of a pass. A cancelled call returns [`InferenceError::Cancelled`].
    pub fn logits_cancellable(
        &self,
        query: &str,
        passages: &[&str],
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<Vec<Vec<f32>>, InferenceError> {
        if passages.is_empty() {
            return Ok(Vec::new());
        }
        if cancelled() {
            return Err(InferenceError::Cancelled);
        }
        let encodings = pair_encodings(&self.inner.tokenizer, query, passages, cancelled)?;
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
            cancelled,
            |group| self.forward(group, cancelled),
        )
    }

    /// One relevance score per passage: the logit for single-label models, else the softmax
    /// probability of the last label.
    pub fn score(&self, query: &str, passages: &[&str]) -> Result<Vec<f32>, InferenceError> {
        self.score_cancellable(query, passages, &|| false)
    }

    /// [`score`](Self::score) that stops early once `cancelled` says yes (asked as in
    /// [`logits_cancellable`](Self::logits_cancellable)); a cancelled call returns
    /// [`InferenceError::Cancelled`].
    pub fn score_cancellable(
        &self,
        query: &str,
        passages: &[&str],
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<Vec<f32>, InferenceError> {
        Ok(self
            .logits_cancellable(query, passages, cancelled)?
            .into_iter()
            .map(|row| relevance(&row))
            .collect())
    }

    fn forward(
        &self,
        encodings: &[&Encoding],
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<Vec<Vec<f32>>, InferenceError> {
        let (pooler, classifier, first_tokens) = match &self.inner.arch {
            Architecture::Bert {
                model: Model::Native(encoder),
                pooler,
                classifier,
            } => {
                let seqs = sequences(encodings);
                let hidden = encoder.forward_cancellable(&seqs, cancelled)?;
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

/// Passages tokenized between two checks of `cancelled` (tokenizing a long request takes a while).
const TOKENIZE_STEP: usize = 64;

/// The (query, passage) pairs as the model reads them, in the order of `passages`: the ids of
/// `tokenizer.encode((query, passage), true)`, without tokenizing the query again for every
/// passage. The query is tokenized once, each passage once (each cut at the token limit once
/// tokenized: the tokenizer reads a passage whole before it truncates, so callers bound the
/// passages' size), and each pair is put together by the tokenizer's own post-processing, which
/// truncates it (longest first: the passage side, unless the query is the longer one) and adds
/// the special tokens. `cancelled` is asked between steps of [`TOKENIZE_STEP`] passages.
///
/// A query that reaches the limit on its own (never, in practice) takes the slow way, one pair
/// input per passage: the tokenizer then splits the limit between the two sides by their
/// lengths before cutting, which one tokenization of each side, cut at the limit, no longer
/// tells apart.
fn pair_encodings(
    tokenizer: &Tokenizer,
    query: &str,
    passages: &[&str],
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<Vec<Encoding>, InferenceError> {
    let tok = |e: tokenizers::Error| InferenceError::Tokenizer(e.to_string());
    let mut q = tokenizer.encode_fast(query, false).map_err(tok)?;
    if tokenizer
        .get_truncation()
        .is_some_and(|t| q.len() >= t.max_length)
    {
        let mut out = Vec::with_capacity(passages.len());
        for step in passages.chunks(TOKENIZE_STEP) {
            if cancelled() {
                return Err(InferenceError::Cancelled);
            }
            let inputs: Vec<EncodeInput> = step
                .iter()
                .map(|p| EncodeInput::Dual(query.into(), (*p).into()))
                .collect();
            out.extend(tokenizer.encode_batch(inputs, true).map_err(tok)?);
        }
        return Ok(out);
    }
    // The first and the second sequence of a pair input (`encode` gives them types 0 and 1
    // before post-processing, and some post-processors keep those). What was cut off each text
    // alone is dropped (the model never sees a pair's overflow either).
    q.set_type_ids(vec![0; q.len()]);
    q.take_overflowing();
    let mut out = Vec::with_capacity(passages.len());
    for step in passages.chunks(TOKENIZE_STEP) {
        if cancelled() {
            return Err(InferenceError::Cancelled);
        }
        for mut p in tokenizer
            .encode_batch_fast(step.to_vec(), false)
            .map_err(tok)?
        {
            p.set_type_ids(vec![1; p.len()]);
            p.take_overflowing();
            out.push(
                tokenizer
                    .post_process(q.clone(), Some(p), true)
                    .map_err(tok)?,
            );
        }
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use tokenizers::{EncodeInput, Tokenizer, TruncationParams, TruncationStrategy};

    /// The MiniLM tokenizer (scripts/fetch-model.sh), truncating at `max_tokens` or not at all.
    fn tokenizer(max_tokens: Option<usize>) -> Tokenizer {
        let dir = std::env::var_os("SHOAL_MODEL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2")
            });
        let mut t = Tokenizer::from_file(dir.join("tokenizer.json"))
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fetch-model.sh)", dir.display()));
        t.with_truncation(max_tokens.map(|max_length| TruncationParams {
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            ..TruncationParams::default()
        }))
        .unwrap();
        t.with_padding(None);
        t
    }

    fn words(n: usize, seed: usize) -> String {
        const W: [&str; 8] = [
            "tower",
            "photosynthesis",
            "Paris",
            "unbelievably",
            "river",
            "1889",
            "lattice",
            "é",
        ];
        (0..n)
            .map(|i| W[(i * 7 + seed) % W.len()])
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Pairs built from one tokenization of the query are the pairs the tokenizer makes of each
    /// (query, passage) input: same ids, type ids and mask, through every truncation case
    /// (none, passage only, both sides, query longer than the passage, query over the limit).
    #[test]
    fn pairs_from_one_query_tokenization_match_pair_inputs() {
        let short_q = "where is the eiffel tower";
        let long_q = words(700, 1);
        let mid_q = words(300, 2);
        let passages_owned = [
            String::new(),
            "It is in Paris.".to_string(),
            words(40, 3),
            words(250, 4),
            words(600, 5),
            words(900, 6),
        ];
        let passages: Vec<&str> = passages_owned.iter().map(String::as_str).collect();
        for max_tokens in [512, 300, 17, 16] {
            let truncating = tokenizer(Some(max_tokens));
            for query in [short_q, "", mid_q.as_str(), long_q.as_str()] {
                let got = super::pair_encodings(&truncating, query, &passages, &|| false).unwrap();
                let inputs: Vec<EncodeInput> = passages
                    .iter()
                    .map(|p| EncodeInput::Dual(query.into(), (*p).into()))
                    .collect();
                let want = truncating.encode_batch(inputs, true).unwrap();
                assert_eq!(got.len(), want.len());
                for ((g, w), p) in got.iter().zip(&want).zip(&passages) {
                    let what = format!(
                        "max {max_tokens}, query {} chars, passage {} chars",
                        query.len(),
                        p.len()
                    );
                    assert!(g.len() <= max_tokens, "{what}");
                    assert_eq!(g.get_ids(), w.get_ids(), "{what}");
                    assert_eq!(g.get_type_ids(), w.get_type_ids(), "{what}");
                    assert_eq!(g.get_attention_mask(), w.get_attention_mask(), "{what}");
                }
            }
        }
    }
}
