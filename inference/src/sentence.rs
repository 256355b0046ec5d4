//! What a sentence-transformers folder says about turning a text into one vector, read the way
//! sentence-transformers (and Text Embeddings Inference) read it:
//!
//! - `modules.json`: the pipeline, Transformer → Pooling → Dense (any number) → Normalize;
//! - `1_Pooling/config.json`: the pooling modes (`cls`, `mean`, `max`, `mean_sqrt_len_tokens`,
//!   `weightedmean`, `lasttoken`; several are concatenated) in the current (`pooling_mode`) or the
//!   legacy (`pooling_mode_*_tokens` flags) form, and whether prompt tokens count (`include_prompt`);
//! - `2_Dense/config.json` and its `model.safetensors`: a linear layer and its activation;
//! - `config_sentence_transformers.json`: the prompts (`query`; `document` or `passage` for what
//!   is indexed; `default_prompt_name`) and the similarity the model was trained for;
//! - `sentence_bert_config.json`: `do_lower_case`.
//!
//! A folder without `modules.json` is a plain BERT folder: mean pooling, normalised (what shoal
//! always did). A folder that asks for something shoal cannot do (another module, an activation
//! it does not know, dot-product similarity of unnormalised vectors, Dense weights only in a
//! pickle) is refused with a message that names it, never embedded wrong.

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde_json::Value;

use crate::InferenceError;

/// How token vectors become one vector (several modes are concatenated in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    /// The first counted token (the `[CLS]` token unless prompt tokens are excluded).
    Cls,
    Mean,
    Max,
    /// The sum divided by the square root of the token count.
    MeanSqrtLen,
    /// Mean weighted by position (1, 2, 3, ...).
    WeightedMean,
    /// The last token.
    LastToken,
}

impl PoolingMode {
    fn parse(name: &str) -> Option<PoolingMode> {
        Some(match name {
            "cls" => PoolingMode::Cls,
            "mean" => PoolingMode::Mean,
            "max" => PoolingMode::Max,
            "mean_sqrt_len_tokens" => PoolingMode::MeanSqrtLen,
            "weightedmean" => PoolingMode::WeightedMean,
            "lasttoken" => PoolingMode::LastToken,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            PoolingMode::Cls => "cls",
            PoolingMode::Mean => "mean",
            PoolingMode::Max => "max",
            PoolingMode::MeanSqrtLen => "mean_sqrt_len_tokens",
            PoolingMode::WeightedMean => "weightedmean",
            PoolingMode::LastToken => "lasttoken",
        }
    }
}

/// The legacy flags, in sentence-transformers' concatenation order.
const LEGACY_POOLING_FLAGS: [(&str, PoolingMode); 6] = [
    ("pooling_mode_cls_token", PoolingMode::Cls),
    ("pooling_mode_max_tokens", PoolingMode::Max),
    ("pooling_mode_mean_tokens", PoolingMode::Mean),
    (
        "pooling_mode_mean_sqrt_len_tokens",
        PoolingMode::MeanSqrtLen,
    ),
    (
        "pooling_mode_weightedmean_tokens",
        PoolingMode::WeightedMean,
    ),
    ("pooling_mode_lasttoken", PoolingMode::LastToken),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Tanh,
    Relu,
    Gelu,
    Sigmoid,
}

impl Activation {
    fn parse(name: &str) -> Option<Activation> {
        // `torch.nn.modules.activation.Tanh`, `torch.nn.Tanh`, ...
        Some(match name.rsplit('.').next().unwrap_or(name) {
            "Identity" => Activation::Identity,
            "Tanh" => Activation::Tanh,
            "ReLU" => Activation::Relu,
            "GELU" => Activation::Gelu,
            "Sigmoid" => Activation::Sigmoid,
            _ => return None,
        })
    }

    fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Identity => x,
            Activation::Tanh => x.tanh(),
            Activation::Relu => x.max(0.0),
            // torch's default GELU (the exact one, with erf)
            Activation::Gelu => {
                0.5 * x * (1.0 + crate::native::math::erf(x / std::f32::consts::SQRT_2))
            }
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        }
    }
}

/// A Dense module: `activation(W x + b)`.
#[derive(Debug, Clone)]
pub struct DenseLayer {
    pub in_features: usize,
    pub out_features: usize,
    /// Row-major, `out_features` rows of `in_features`.
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    pub activation: Activation,
}

impl DenseLayer {
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        (0..self.out_features)
            .map(|o| {
                let row = &self.weight[o * self.in_features..(o + 1) * self.in_features];
                let mut acc = 0f64;
                for (w, v) in row.iter().zip(x) {
                    acc += (*w as f64) * (*v as f64);
                }
                let b = self.bias.as_ref().map_or(0.0, |b| b[o]);
                self.activation.apply(acc as f32 + b)
            })
            .collect()
    }
}

/// The prompts put before texts: one for search queries, one for what is indexed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prompts {
    pub query: Option<String>,
    pub document: Option<String>,
    /// For texts that are neither (`default_prompt_name`).
    pub plain: Option<String>,
    /// Every prompt of the folder by its name (what TEI's `prompt_name` picks).
    pub by_name: std::collections::BTreeMap<String, String>,
}

/// What a text is embedded as: it chooses the prompt.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TextKind {
    /// A search query (the query prompt).
    Query,
    /// A passage that is indexed (the document prompt).
    Document,
    /// Neither: the folder's default prompt, if it names one.
    Plain,
    /// The folder's prompt of this name (see [`SentenceHead::has_prompt`]).
    Named(String),
}

/// Everything after the transformer: pooling, dense layers, normalisation, and the prompts and
/// casing the texts get before they are tokenized.
#[derive(Debug, Clone)]
pub struct SentenceHead {
    /// The folder of the Transformer module (config.json, tokenizer.json, model.safetensors).
    pub transformer_dir: PathBuf,
    pub modes: Vec<PoolingMode>,
    /// False: prompt tokens (and `[CLS]`) are left out of pooling.
    pub include_prompt: bool,
    pub dense: Vec<DenseLayer>,
    /// Whether the folder normalises (shoal's vectors are always unit length; see `embed`).
    pub normalize: bool,
    pub prompts: Prompts,
    pub lowercase: bool,
    /// `max_seq_length` of `sentence_bert_config.json`: texts are cut there.
    pub max_seq_length: Option<usize>,
    /// True when the folder has a `modules.json` (false: a plain BERT folder, mean pooling).
    pub from_modules: bool,
}

fn bad(path: &Path, reason: impl Into<String>) -> InferenceError {
    InferenceError::BadFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_json(path: &Path) -> Result<Value, InferenceError> {
    let text = std::fs::read_to_string(path).map_err(|e| bad(path, e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| bad(path, e.to_string()))
}

fn read_json_if_there(path: &Path) -> Result<Option<Value>, InferenceError> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

impl SentenceHead {
    /// The plain BERT default: mean pooling, normalised, no prompts.
    pub fn plain(dir: &Path) -> SentenceHead {
        SentenceHead {
            transformer_dir: dir.to_path_buf(),
            modes: vec![PoolingMode::Mean],
            include_prompt: true,
            dense: Vec::new(),
            normalize: true,
            prompts: Prompts::default(),
            lowercase: false,
            max_seq_length: None,
            from_modules: false,
        }
    }

    /// Read the folder's sentence-transformers files; `hidden` is the transformer's width.
    pub fn read(dir: &Path, hidden: usize) -> Result<SentenceHead, InferenceError> {
        let modules_path = dir.join("modules.json");
        let mut head = SentenceHead::plain(dir);
        if let Some(modules) = read_json_if_there(&modules_path)? {
            head.from_modules = true;
            head.normalize = false; // only a Normalize module normalises
            head.read_modules(dir, &modules_path, &modules, hidden)?;
        }
        head.read_prompts(dir)?;
        if let Some(sbert) =
            read_json_if_there(&head.transformer_dir.join("sentence_bert_config.json"))?
        {
            head.lowercase = sbert["do_lower_case"].as_bool().unwrap_or(false);
            head.max_seq_length = sbert["max_seq_length"].as_u64().map(|n| n as usize);
        }
        Ok(head)
    }

    fn read_modules(
        &mut self,
        dir: &Path,
        path: &Path,
        modules: &Value,
        hidden: usize,
    ) -> Result<(), InferenceError> {
        let list = modules
            .as_array()
            .ok_or_else(|| bad(path, "expected a list of modules"))?;
        let mut pooled: Option<usize> = None;
        let mut seen_pooling = false;
        for (i, m) in list.iter().enumerate() {
            let kind = m["type"].as_str().unwrap_or_default();
            let sub = m["path"].as_str().unwrap_or_default();
            let sub_dir = crate::model_files::module_dir(dir, sub).ok_or_else(|| {
                bad(
                    path,
                    format!("module {i}: `{sub}` is not a folder inside the model's"),
                )
            })?;
            let class = kind.rsplit('.').next().unwrap_or(kind);
            let refuse = |why: &str| {
                bad(
                    path,
                    format!("module {i} (`{kind}` at `{sub}`) {why}; shoal runs Transformer, Pooling, Dense and Normalize, in that order"),
                )
            };
            if !kind.starts_with("sentence_transformers.") {
                return Err(refuse("is not a sentence-transformers module"));
            }
            match class {
                "Transformer" if i == 0 => {
                    self.transformer_dir = sub_dir;
                }
                "Pooling" if i == 1 => {
                    let (modes, include_prompt) =
                        read_pooling(&sub_dir.join("config.json"), hidden)?;
                    pooled = Some(modes.len() * hidden);
                    self.modes = modes;
                    self.include_prompt = include_prompt;
                    seen_pooling = true;
                }
                "Dense" if seen_pooling => {
                    let width = pooled.unwrap_or(hidden);
                    let layer = read_dense(&sub_dir, width)?;
                    pooled = Some(layer.out_features);
                    self.dense.push(layer);
                }
                "Normalize" if seen_pooling && i + 1 == list.len() => {
                    self.normalize = true;
                }
                "Transformer" | "Pooling" | "Dense" | "Normalize" => {
                    return Err(refuse("comes in a place shoal does not support"));
                }
                _ => return Err(refuse("is not supported")),
            }
        }
        if !seen_pooling {
            return Err(bad(path, "has no Pooling module"));
        }
        Ok(())
    }

    fn read_prompts(&mut self, dir: &Path) -> Result<(), InferenceError> {
        let path = dir.join("config_sentence_transformers.json");
        let Some(config) = read_json_if_there(&path)? else {
            return Ok(());
        };
        let by_name: std::collections::BTreeMap<String, String> = config["prompts"]
            .as_object()
            .map(|p| {
                p.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        // A prompt that is there but empty means "no prompt" (it does not fall back to the
        // default), as in sentence-transformers.
        let named = |name: &str| by_name.get(name).cloned();
        let some = |p: String| (!p.is_empty()).then_some(p);
        let default = config["default_prompt_name"].as_str().and_then(named);
        let query = named("query").or_else(|| default.clone());
        let document = ["document", "passage", "corpus"]
            .iter()
            .find_map(|n| named(n))
            .or_else(|| default.clone());
        self.prompts = Prompts {
            query: query.and_then(some),
            document: document.and_then(some),
            plain: default.and_then(some),
            by_name,
        };
        match config["similarity_fn_name"].as_str() {
            None | Some("cosine") => {}
            // On unit vectors, dot product and distances rank as cosine does.
            Some("dot" | "dot_product" | "euclidean" | "manhattan") if self.normalize => {}
            Some(other) => {
                return Err(bad(
                    &path,
                    format!(
                        "the model is meant to be compared by `{other}` of unnormalised vectors; shoal ranks by cosine similarity"
                    ),
                ))
            }
        }
        Ok(())
    }

    /// The width of the vectors that come out: the pooled width, or the last Dense layer's.
    pub fn output_dimension(&self, hidden: usize) -> usize {
        self.dense
            .last()
            .map_or(self.modes.len() * hidden, |d| d.out_features)
    }

    /// The prompt for a kind of text, if any.
    pub fn prompt(&self, kind: &TextKind) -> Option<&str> {
        match kind {
            TextKind::Query => self.prompts.query.as_deref(),
            TextKind::Document => self.prompts.document.as_deref(),
            TextKind::Plain => self.prompts.plain.as_deref(),
            TextKind::Named(name) => self
                .prompts
                .by_name
                .get(name)
                .map(String::as_str)
                .filter(|p| !p.is_empty()),
        }
    }

    /// Whether the folder has a prompt of this name.
    pub fn has_prompt(&self, name: &str) -> bool {
        self.prompts.by_name.contains_key(name)
    }

    /// A text as it is tokenized: its prompt before it, lowercased where the folder says so.
    pub fn prepare(&self, kind: &TextKind, text: &str) -> String {
        let text = match self.prompt(kind) {
            Some(p) => format!("{p}{text}"),
            None => text.to_owned(),
        };
        self.cased(text)
    }

    /// The text lowercased where the folder says so.
    pub fn cased(&self, text: String) -> String {
        if self.lowercase {
            text.to_lowercase()
        } else {
            text
        }
    }

    /// One text's vector from its token rows (`width` each, all real tokens), leaving the first
    /// `skip` tokens out of pooling (the prompt's, when `include_prompt` is false). The result
    /// is L2-normalised: shoal compares vectors by cosine.
    pub fn embed(&self, rows: &[f32], width: usize, skip: usize) -> Vec<f32> {
        let n = rows.len() / width.max(1);
        if n == 0 || width == 0 {
            // no token at all (a tokenizer without special tokens and an empty text)
            return vec![0.0; self.output_dimension(width)];
        }
        let skip = if self.include_prompt {
            0
        } else {
            skip.min(n.saturating_sub(1))
        };
        let row = |i: usize| &rows[i * width..(i + 1) * width];
        let mut out: Vec<f32> = Vec::with_capacity(self.modes.len() * width);
        for mode in &self.modes {
            match mode {
                PoolingMode::Cls => out.extend_from_slice(row(skip)),
                PoolingMode::LastToken => out.extend_from_slice(row(n - 1)),
                PoolingMode::Max => {
                    let mut m = vec![f32::NEG_INFINITY; width];
                    for i in skip..n {
                        for (a, &v) in m.iter_mut().zip(row(i)) {
                            *a = a.max(v);
                        }
                    }
                    out.extend(m);
                }
                PoolingMode::Mean | PoolingMode::MeanSqrtLen | PoolingMode::WeightedMean => {
                    let mut sum = vec![0f64; width];
                    let mut weights = 0f64;
                    for i in skip..n {
                        let w = if *mode == PoolingMode::WeightedMean {
                            (i + 1) as f64
                        } else {
                            1.0
                        };
                        weights += w;
                        for (a, &v) in sum.iter_mut().zip(row(i)) {
                            *a += w * v as f64;
                        }
                    }
                    let div = match mode {
                        PoolingMode::MeanSqrtLen => weights.max(1e-9).sqrt(),
                        _ => weights.max(1e-9),
                    };
                    out.extend(sum.iter().map(|s| (s / div) as f32));
                }
            }
        }
        for layer in &self.dense {
            out = layer.forward(&out);
        }
        let norm = out
            .iter()
            .map(|&v| (v as f64) * (v as f64))
            .sum::<f64>()
            .sqrt()
            .max(1e-12);
        out.iter().map(|&v| (v as f64 / norm) as f32).collect()
    }

    /// What the folder asks for, in a line for the start-up log.
    pub fn describe(&self) -> String {
        let modes: Vec<&str> = self.modes.iter().map(|m| m.name()).collect();
        let mut s = format!("pooling {}", modes.join("+"));
        if !self.include_prompt {
            s.push_str(" (prompt excluded)");
        }
        for d in &self.dense {
            s.push_str(&format!(
                ", dense {}→{} {:?}",
                d.in_features, d.out_features, d.activation
            ));
        }
        if let Some(q) = &self.prompts.query {
            s.push_str(&format!(", query prompt {q:?}"));
        }
        if let Some(d) = &self.prompts.document {
            s.push_str(&format!(", document prompt {d:?}"));
        }
        if self.lowercase {
            s.push_str(", lowercased");
        }
        if !self.from_modules {
            s.push_str(" (no modules.json: the plain BERT default)");
        }
        s
    }
}

fn read_pooling(path: &Path, hidden: usize) -> Result<(Vec<PoolingMode>, bool), InferenceError> {
    let config = read_json(path)?;
    let dim = config["embedding_dimension"]
        .as_u64()
        .or_else(|| config["word_embedding_dimension"].as_u64());
    if let Some(d) = dim {
        if d as usize != hidden {
            return Err(bad(
                path,
                format!("pools vectors of width {d}, the transformer's are {hidden}"),
            ));
        }
    }
    let mut modes = Vec::new();
    match &config["pooling_mode"] {
        Value::String(s) => modes.push(
            PoolingMode::parse(s)
                .ok_or_else(|| bad(path, format!("pooling mode `{s}` is not supported")))?,
        ),
        Value::Array(list) => {
            for v in list {
                let s = v.as_str().unwrap_or_default();
                modes
                    .push(PoolingMode::parse(s).ok_or_else(|| {
                        bad(path, format!("pooling mode `{s}` is not supported"))
                    })?);
            }
        }
        Value::Null => {
            for (flag, mode) in LEGACY_POOLING_FLAGS {
                if config[flag].as_bool().unwrap_or(false) {
                    modes.push(mode);
                }
            }
            if modes.is_empty() {
                modes.push(PoolingMode::Mean);
            }
        }
        other => return Err(bad(path, format!("`pooling_mode` is {other}"))),
    }
    if modes.is_empty() {
        return Err(bad(path, "names no pooling mode"));
    }
    let include_prompt = config["include_prompt"].as_bool().unwrap_or(true);
    Ok((modes, include_prompt))
}

fn read_dense(dir: &Path, width: usize) -> Result<DenseLayer, InferenceError> {
    let config_path = dir.join("config.json");
    let config = read_json(&config_path)?;
    let in_features = config["in_features"].as_u64().unwrap_or(0) as usize;
    let out_features = config["out_features"].as_u64().unwrap_or(0) as usize;
    if in_features != width || out_features == 0 {
        return Err(bad(
            &config_path,
            format!("a Dense layer of {in_features}→{out_features} after vectors of width {width}"),
        ));
    }
    let activation = match config["activation_function"].as_str() {
        None => Activation::Tanh, // sentence-transformers' default
        Some(name) => Activation::parse(name).ok_or_else(|| {
            bad(
                &config_path,
                format!(
                    "activation `{name}` is not supported (Identity, Tanh, ReLU, GELU, Sigmoid)"
                ),
            )
        })?,
    };
    let weights_path = dir.join("model.safetensors");
    if !weights_path.is_file() {
        let pickle = dir.join("pytorch_model.bin");
        return Err(if pickle.is_file() {
            bad(&pickle, "Dense weights only as a PyTorch pickle; save them as model.safetensors (safe_serialization=True)")
        } else {
            InferenceError::MissingFile { path: weights_path }
        });
    }
    let tensors = candle_core::safetensors::load(&weights_path, &Device::Cpu)
        .map_err(|e| bad(&weights_path, e.to_string()))?;
    let tensor = |name: &str| -> Result<Option<Vec<f32>>, InferenceError> {
        match tensors.get(name) {
            None => Ok(None),
            Some(t) => Ok(Some(
                t.to_dtype(candle_core::DType::F32)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(|e| bad(&weights_path, e.to_string()))?,
            )),
        }
    };
    let weight =
        tensor("linear.weight")?.ok_or_else(|| bad(&weights_path, "has no `linear.weight`"))?;
    if weight.len() != in_features * out_features {
        return Err(bad(
            &weights_path,
            format!(
                "`linear.weight` holds {} values, not {out_features}×{in_features}",
                weight.len()
            ),
        ));
    }
    let bias = tensor("linear.bias")?;
    if config["bias"].as_bool().unwrap_or(true) && bias.is_none() {
        return Err(bad(&weights_path, "has no `linear.bias`"));
    }
    if bias.as_ref().is_some_and(|b| b.len() != out_features) {
        return Err(bad(
            &weights_path,
            "`linear.bias` does not fit out_features",
        ));
    }
    Ok(DenseLayer {
        in_features,
        out_features,
        weight,
        bias,
        activation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(modes: Vec<PoolingMode>, include_prompt: bool) -> SentenceHead {
        SentenceHead {
            modes,
            include_prompt,
            ..SentenceHead::plain(Path::new("."))
        }
    }

    // three tokens of width 2
    const ROWS: [f32; 6] = [1.0, 0.0, 0.0, 2.0, 3.0, 4.0];

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn each_pooling_mode_takes_what_sentence_transformers_takes() {
        let pool = |m, skip| head(vec![m], false).embed(&ROWS, 2, skip);
        close(&pool(PoolingMode::Cls, 0), &unit(&[1.0, 0.0]));
        close(&pool(PoolingMode::Cls, 1), &unit(&[0.0, 2.0]));
        close(&pool(PoolingMode::LastToken, 1), &unit(&[3.0, 4.0]));
        close(&pool(PoolingMode::Max, 0), &unit(&[3.0, 4.0]));
        close(&pool(PoolingMode::Mean, 0), &unit(&[4.0 / 3.0, 2.0]));
        close(&pool(PoolingMode::Mean, 1), &unit(&[1.5, 3.0]));
        // weights 1, 2, 3: (1 + 0 + 9) / 6, (0 + 4 + 12) / 6
        close(
            &pool(PoolingMode::WeightedMean, 0),
            &unit(&[10.0 / 6.0, 16.0 / 6.0]),
        );
        // with prompt tokens counted, `skip` changes nothing
        close(
            &head(vec![PoolingMode::Cls], true).embed(&ROWS, 2, 2),
            &unit(&[1.0, 0.0]),
        );
        // modes are concatenated in order, then normalised as one vector
        close(
            &head(vec![PoolingMode::Cls, PoolingMode::Max], true).embed(&ROWS, 2, 0),
            &unit(&[1.0, 0.0, 3.0, 4.0]),
        );
    }

    #[test]
    fn legacy_and_current_pooling_configs_read_alike() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"word_embedding_dimension": 4, "pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}"#,
        )
        .unwrap();
        assert_eq!(
            read_pooling(&path, 4).unwrap(),
            (vec![PoolingMode::Cls, PoolingMode::Mean], true)
        );
        std::fs::write(
            &path,
            r#"{"embedding_dimension": 4, "pooling_mode": ["mean", "cls"], "include_prompt": false}"#,
        )
        .unwrap();
        assert_eq!(
            read_pooling(&path, 4).unwrap(),
            (vec![PoolingMode::Mean, PoolingMode::Cls], false)
        );
        std::fs::write(
            &path,
            r#"{"embedding_dimension": 4, "pooling_mode": "sum"}"#,
        )
        .unwrap();
        let e = read_pooling(&path, 4).unwrap_err().to_string();
        assert!(e.contains("`sum` is not supported"), "{e}");
        std::fs::write(
            &path,
            r#"{"embedding_dimension": 8, "pooling_mode": "mean"}"#,
        )
        .unwrap();
        assert!(read_pooling(&path, 4).is_err());
    }

    #[test]
    fn folders_that_need_what_shoal_cannot_do_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("1_Pooling")).unwrap();
        std::fs::write(
            d.join("1_Pooling/config.json"),
            r#"{"pooling_mode": "mean"}"#,
        )
        .unwrap();
        let modules = |extra: &str| {
            std::fs::write(
                d.join("modules.json"),
                format!(
                    r#"[{{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"}},
                       {{"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}}{extra}]"#
                ),
            )
            .unwrap();
        };
        modules("");
        let h = SentenceHead::read(d, 4).unwrap();
        assert!(h.from_modules && !h.normalize);
        modules(
            r#",{"idx":2,"name":"2","path":"2_LayerNorm","type":"sentence_transformers.models.LayerNorm"}"#,
        );
        let e = SentenceHead::read(d, 4).unwrap_err().to_string();
        assert!(
            e.contains("sentence_transformers.models.LayerNorm") && e.contains("not supported"),
            "{e}"
        );
        modules(
            r#",{"idx":2,"name":"2","path":"2_Dense","type":"sentence_transformers.models.Dense"}"#,
        );
        std::fs::create_dir_all(d.join("2_Dense")).unwrap();
        std::fs::write(
            d.join("2_Dense/config.json"),
            r#"{"in_features":4,"out_features":2,"bias":true,"activation_function":"torch.nn.modules.activation.Softplus"}"#,
        )
        .unwrap();
        let e = SentenceHead::read(d, 4).unwrap_err().to_string();
        assert!(e.contains("Softplus"), "{e}");
        std::fs::write(
            d.join("2_Dense/config.json"),
            r#"{"in_features":4,"out_features":2,"bias":true,"activation_function":"torch.nn.modules.activation.Tanh"}"#,
        )
        .unwrap();
        std::fs::write(d.join("2_Dense/pytorch_model.bin"), b"pickle").unwrap();
        let e = SentenceHead::read(d, 4).unwrap_err().to_string();
        assert!(
            e.contains("pytorch_model.bin") && e.contains("safetensors"),
            "{e}"
        );
        // dot-product similarity of vectors the folder does not normalise
        modules("");
        std::fs::write(
            d.join("config_sentence_transformers.json"),
            r#"{"prompts": {"query": "q: "}, "similarity_fn_name": "dot"}"#,
        )
        .unwrap();
        let e = SentenceHead::read(d, 4).unwrap_err().to_string();
        assert!(e.contains("`dot`") && e.contains("cosine"), "{e}");
        modules(
            r#",{"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}"#,
        );
        let h = SentenceHead::read(d, 4).unwrap();
        assert!(h.normalize);
        assert_eq!(h.prompt(&TextKind::Query), Some("q: "));
        assert_eq!(h.prompt(&TextKind::Document), None);
        assert_eq!(h.prepare(&TextKind::Query, "Tides"), "q: Tides");
    }
}
