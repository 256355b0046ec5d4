//! Sentence embeddings: BERT forward, then what the folder's sentence-transformers files ask for
//! (prompts, pooling, dense layers; see [`crate::sentence`]), L2-normalised.

use std::sync::Arc;

use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use rayon::prelude::*;
use tokenizers::{Encoding, Tokenizer};

use crate::batch::{forward_in_groups, pad, Padded};
use crate::native::{BertEncoder, BertShape, Precision, Sequence};
use crate::sentence::{SentenceHead, TextKind};
use crate::{InferenceError, ModelFiles};

#[derive(Debug, Clone, Copy)]
pub struct EmbedderOptions {
    /// Token limit per text, special tokens included (sentence-transformers' `max_seq_length`).
    /// Capped by the model's `max_position_embeddings`.
    pub max_tokens: usize,
    /// Texts per forward pass. Texts are sorted by length first, so each pass pads only to the
    /// longest text of its own group.
    pub batch_size: usize,
    /// Tokens per forward pass: real tokens with the native engine (texts are packed), padded
    /// tokens (texts × longest) with candle.
    pub max_batch_tokens: usize,
    pub engine: Engine,
    pub precision: Precision,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        EmbedderOptions {
            max_tokens: 256,
            batch_size: 32,
            max_batch_tokens: 2048,
            engine: Engine::Native,
            precision: Precision::F32,
        }
    }
}

/// Which code runs a BERT forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// shoal's kernels (`crate::native`): packed batches, AVX-512 where present. The default.
    Native,
    /// candle's `BertModel`, padded batches: the reference, and the fallback for models the
    /// native encoder does not cover.
    Candle,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Native => "native",
            Engine::Candle => "candle",
        }
    }
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(Engine::Native),
            "candle" => Ok(Engine::Candle),
            other => Err(format!("unknown engine `{other}` (native, candle)")),
        }
    }
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Engine and precision are written and read by name (`"native"`, `"bf16"`) in configuration.
macro_rules! serde_by_name {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let name = String::deserialize(d)?;
                name.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_by_name!(Engine);
serde_by_name!(Precision);

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("unknown precision `{other}` (f32, bf16)")),
        }
    }
}

pub(crate) enum Model {
    Native(BertEncoder),
    Candle(BertModel),
}

impl Model {
    /// Load a BERT encoder with the chosen engine and precision.
    pub(crate) fn load(
        files: &ModelFiles,
        vb: &VarBuilder,
        engine: Engine,
        precision: Precision,
    ) -> Result<Model, InferenceError> {
        match engine {
            Engine::Native => {
                let shape: BertShape = files.read_config()?;
                BertEncoder::supports(&shape).map_err(|reason| InferenceError::BadFile {
                    path: files.config.clone(),
                    reason: format!("{reason}; use the candle engine for this model"),
                })?;
                let encoder =
                    BertEncoder::load(vb, &shape, precision).map_err(|e| files.shape_error(e))?;
                Ok(Model::Native(encoder))
            }
            Engine::Candle => {
                if precision != Precision::F32 {
                    return Err(InferenceError::Input(
                        "reduced precision needs the native engine".into(),
                    ));
                }
                let config: BertConfig = files.read_config()?;
                let base = if vb.contains_tensor("embeddings.word_embeddings.weight") {
                    vb.clone()
                } else {
                    vb.pp(config.model_type.as_deref().unwrap_or("bert"))
                };
                let model = BertModel::load(base, &config).map_err(|e| files.shape_error(e))?;
                Ok(Model::Candle(model))
            }
        }
    }

    pub(crate) fn engine(&self) -> Engine {
        match self {
            Model::Native(_) => Engine::Native,
            Model::Candle(_) => Engine::Candle,
        }
    }

    pub(crate) fn precision(&self) -> Precision {
        match self {
            Model::Native(e) => e.precision(),
            Model::Candle(_) => Precision::F32,
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
    model: Model,
    tokenizer: Tokenizer,
    /// The same tokenizer without truncation, for counting and chunking.
    counting_tokenizer: Tokenizer,
    dimension: usize,
    max_tokens: usize,
    batch_size: usize,
    max_batch_tokens: usize,
    model_name: String,
    head: SentenceHead,
    /// The prompt lengths of queries, documents and plain texts (see [`kind_index`]), counted
    /// once at load; a named prompt's are counted when it is used.
    prompt_lengths: [PromptLength; 3],
}

/// Where the prompt lengths of the fixed kinds are kept.
fn kind_index(kind: &TextKind) -> Option<usize> {
    match kind {
        TextKind::Query => Some(0),
        TextKind::Document => Some(1),
        TextKind::Plain => Some(2),
        TextKind::Named(_) => None,
    }
}

/// How long a kind of text's prompt is (zeros without one).
#[derive(Debug, Clone, Copy, Default)]
struct PromptLength {
    /// Tokens at the start of a text that pooling leaves out when the folder says
    /// `include_prompt: false`: the start token and the prompt's own, as sentence-transformers
    /// counts them (the prompt tokenized alone, less a trailing special token).
    skip: usize,
    /// Tokens the prompt adds to a text (what a chunk must leave room for).
    tokens: usize,
}

impl PromptLength {
    fn of(
        head: &SentenceHead,
        tokenizer: &Tokenizer,
        kind: &TextKind,
    ) -> Result<PromptLength, InferenceError> {
        let Some(prompt) = head.prompt(kind) else {
            return Ok(PromptLength::default());
        };
        let enc = tokenizer
            .encode(head.cased(prompt.to_owned()), true)
            .map_err(|e| InferenceError::Tokenizer(e.to_string()))?;
        let special = enc.get_special_tokens_mask();
        let trailing = usize::from(special.last() == Some(&1));
        Ok(PromptLength {
            skip: enc.get_ids().len() - trailing,
            tokens: special.iter().filter(|&&s| s == 0).count(),
        })
    }
}

impl Embedder {
    /// Load a BERT sentence-embedding model from a Hugging Face-style folder.
    pub fn load(files: &ModelFiles, options: EmbedderOptions) -> Result<Embedder, InferenceError> {
        let config: BertConfig = files.read_config()?;
        let head = SentenceHead::read(&files.dir, config.hidden_size)?;
        // cut where the model was trained to stop (sentence-transformers' max_seq_length)
        let max_tokens = options
            .max_tokens
            .min(config.max_position_embeddings)
            .min(head.max_seq_length.unwrap_or(usize::MAX))
            .max(2);
        let tokenizer = files.read_tokenizer(Some(max_tokens))?;
        let counting_tokenizer = files.read_tokenizer(None)?;
        let prompt_lengths = [
            PromptLength::of(&head, &counting_tokenizer, &TextKind::Query)?,
            PromptLength::of(&head, &counting_tokenizer, &TextKind::Document)?,
            PromptLength::of(&head, &counting_tokenizer, &TextKind::Plain)?,
        ];
        let vb = files.var_builder()?;
        let model = Model::load(files, &vb, options.engine, options.precision)?;
        let model_name = files.name("model");
        Ok(Embedder {
            inner: Arc::new(Inner {
                model,
                tokenizer,
                counting_tokenizer,
                dimension: head.output_dimension(config.hidden_size),
                max_tokens,
                batch_size: options.batch_size.max(1),
                max_batch_tokens: options.max_batch_tokens.max(1),
                model_name,
                head,
                prompt_lengths,
            }),
        })
    }

    /// What the folder asks for after the transformer (pooling, dense layers, prompts).
    pub fn head(&self) -> &SentenceHead {
        &self.inner.head
    }

    /// Tokens the prompt of `kind` adds to each text (0 without one).
    pub fn prompt_tokens(&self, kind: &TextKind) -> usize {
        self.prompt_length(kind).map_or(0, |l| l.tokens)
    }

    fn prompt_length(&self, kind: &TextKind) -> Result<PromptLength, InferenceError> {
        match kind_index(kind) {
            Some(i) => Ok(self.inner.prompt_lengths[i]),
            None => PromptLength::of(&self.inner.head, &self.inner.counting_tokenizer, kind),
        }
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

    pub fn engine(&self) -> Engine {
        self.inner.model.engine()
    }

    pub fn precision(&self) -> Precision {
        self.inner.model.precision()
    }

    /// The tokenizer without truncation (for chunking).
    pub fn counting_tokenizer(&self) -> &Tokenizer {
        &self.inner.counting_tokenizer
    }

    /// Embed texts; returns one L2-normalised vector per text, in input order. Texts get the
    /// folder's default prompt, if it names one (see [`embed_as`](Self::embed_as)).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, InferenceError> {
        self.embed_as(&TextKind::Plain, texts, &|| false)
    }

    /// [`embed_cancellable`](Self::embed_cancellable) for texts of a kind: search queries get the
    /// folder's query prompt, indexed passages its document prompt.
    pub fn embed_as(
        &self,
        kind: &TextKind,
        texts: &[&str],
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<Vec<Vec<f32>>, InferenceError> {
        let head = &self.inner.head;
        if head.prompt(kind).is_none() && !head.lowercase {
            return self.embed_prepared(texts, 0, cancelled);
        }
        let prepared: Vec<String> = texts.iter().map(|t| head.prepare(kind, t)).collect();
        let refs: Vec<&str> = prepared.iter().map(String::as_str).collect();
        let skip = self.prompt_length(kind)?.skip;
        self.embed_prepared(&refs, skip, cancelled)
    }

    /// [`embed`](Self::embed) that stops early once `cancelled` says yes: it is asked (on the
    /// calling thread) before tokenizing, before each forward pass and, with the native engine,
    /// before each layer of a pass. A cancelled call returns [`InferenceError::Cancelled`].
    pub fn embed_cancellable(
        &self,
        texts: &[&str],
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<Vec<Vec<f32>>, InferenceError> {
        self.embed_as(&TextKind::Plain, texts, cancelled)
    }

    /// Embed texts that already carry their prompt; `skip` leading tokens are left out of
    /// pooling where the folder says so.
    fn embed_prepared(
        &self,
        texts: &[&str],
        skip: usize,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<Vec<Vec<f32>>, InferenceError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        if cancelled() {
            return Err(InferenceError::Cancelled);
        }
        // What `encode_batch` does without padding (in the current rayon pool; the
        // TOKENIZERS_PARALLELISM variable is not read), with a pause point before each text: a
        // large batch's tokenizing is a long stretch of work.
        let tokenizer = &self.inner.tokenizer;
        let encodings = texts
            .par_iter()
            .map(|t| {
                crate::native::pause_point();
                tokenizer.encode(*t, true)
            })
            .collect::<Result<Vec<Encoding>, _>>()
            .map_err(|e| InferenceError::Tokenizer(e.to_string()))?;
        forward_in_groups(
            &encodings,
            self.inner.batch_size,
            self.inner.max_batch_tokens,
            self.inner.model.engine() == Engine::Native,
            cancelled,
            |group| self.forward(group, skip, cancelled),
        )
    }

    /// One forward pass over a group of texts.
    fn forward(
        &self,
        encodings: &[&Encoding],
        skip: usize,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<Vec<Vec<f32>>, InferenceError> {
        let head = &self.inner.head;
        match &self.inner.model {
            Model::Native(encoder) => {
                let seqs = sequences(encodings);
                let hidden = encoder.forward_cancellable(&seqs, cancelled)?;
                Ok((0..seqs.len())
                    .map(|i| head.embed(hidden.rows(i), hidden.width, skip))
                    .collect())
            }
            Model::Candle(model) => self.forward_candle(model, encodings, skip),
        }
    }

    /// candle's forward pass over a group of texts, padded to its longest member.
    fn forward_candle(
        &self,
        model: &BertModel,
        encodings: &[&Encoding],
        skip: usize,
    ) -> Result<Vec<Vec<f32>>, InferenceError> {
        let Padded {
            input_ids,
            token_type_ids,
            attention_mask: mask,
        } = pad(encodings)?;
        let hidden = model.forward(&input_ids, &token_type_ids, Some(&mask))?;
        // Each text's real tokens (padding is on the right), pooled as the native path does.
        let hidden = hidden.to_vec3::<f32>()?;
        Ok(hidden
            .iter()
            .zip(encodings)
            .map(|(rows, e)| {
                let n = e.get_ids().len().min(rows.len());
                let width = rows.first().map_or(0, Vec::len);
                let flat: Vec<f32> = rows[..n].iter().flatten().copied().collect();
                self.inner.head.embed(&flat, width, skip)
            })
            .collect())
    }
}

/// The native encoder's view of tokenised texts.
pub(crate) fn sequences<'a>(encodings: &[&'a Encoding]) -> Vec<Sequence<'a>> {
    encodings
        .iter()
        .map(|e| Sequence {
            ids: e.get_ids(),
            type_ids: e.get_type_ids(),
        })
        .collect()
}
