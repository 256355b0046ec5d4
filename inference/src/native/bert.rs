//! A BERT encoder over packed sequences.
//!
//! The texts of a batch are concatenated, never padded: the linear layers see one `tokens × hidden`
//! matrix, and attention runs per (text, head) over that text's own rows. A batch of mixed
//! lengths therefore costs exactly its real tokens. Weights are read with candle's safetensors
//! loader (which checks their shapes) and packed once for the matrix kernels.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use serde::Deserialize;

use super::attention::{attention_head, attention_head_amx, Scratch};
use super::gemm::{PackedLinear, Precision, SendPtr};
use super::math::{add_layer_norm, layer_norm, Activation};
use crate::InferenceError;

/// The parts of a Hugging Face BERT `config.json` the encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertShape {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

/// One tokenised text.
#[derive(Debug, Clone, Copy)]
pub struct Sequence<'a> {
    pub ids: &'a [u32],
    pub type_ids: &'a [u32],
}

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

struct Layer {
    /// query, key and value in one product (`3 × hidden` outputs).
    qkv: PackedLinear,
    attn_out: PackedLinear,
    attn_norm: Norm,
    intermediate: PackedLinear,
    output: PackedLinear,
    out_norm: Norm,
}

pub struct BertEncoder {
    shape: BertShape,
    act: Activation,
    eps: f32,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    emb_norm: Norm,
    layers: Vec<Layer>,
    precision: Precision,
    /// Where the weights sit in the file: "" or e.g. "bert.".
    prefix: String,
}

/// The encoder's output: the last hidden states of every token, texts one after another. Its
/// buffers go back to the thread's workspace when it is dropped.
pub struct Hidden {
    ws: Option<Box<Workspace>>,
    pub width: usize,
    /// Row where each text starts, and one past the last row.
    pub offsets: Vec<usize>,
}

impl Hidden {
    /// The rows of text `i`.
    pub fn rows(&self, i: usize) -> &[f32] {
        let x = self.ws.as_ref().map_or(&[][..], |w| &w.x[..]);
        &x[self.offsets[i] * self.width..self.offsets[i + 1] * self.width]
    }
}

impl Drop for Hidden {
    fn drop(&mut self) {
        if let Some(ws) = self.ws.take() {
            if ws.bytes() <= Workspace::KEEP_BYTES {
                WORKSPACE.set(Some(ws));
            }
        }
    }
}

/// The activations of one forward pass, kept per thread between passes: allocating (and
/// page-faulting) tens of MiB per batch stalls every other thread of the process on the
/// kernel's memory-map lock, searches included.
#[derive(Default)]
struct Workspace {
    x: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    tmp: Vec<f32>,
    inter: Vec<f32>,
}

impl Workspace {
    /// Larger workspaces (from an unusually large batch) are freed rather than kept.
    const KEEP_BYTES: usize = 96 << 20;

    fn take() -> Box<Workspace> {
        WORKSPACE.take().unwrap_or_default()
    }

    fn bytes(&self) -> usize {
        4 * (self.x.capacity()
            + self.qkv.capacity()
            + self.ctx.capacity()
            + self.tmp.capacity()
            + self.inter.capacity())
    }
}

thread_local! {
    static WORKSPACE: std::cell::Cell<Option<Box<Workspace>>> = const { std::cell::Cell::new(None) };
}

/// `v` with exactly `n` elements; the contents are left as they are (every user overwrites all).
fn sized(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    } else {
        v.truncate(n);
    }
}

fn tensor_vec(
    vb: &VarBuilder,
    shape: &[usize],
    name: &str,
) -> Result<Vec<f32>, candle_core::Error> {
    let t: Tensor = vb.get(shape, name)?;
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

impl BertEncoder {
    /// Whether `shape` describes a model this encoder runs (absolute positions, a known
    /// activation); `Err` says why not.
    pub fn supports(shape: &BertShape) -> Result<(), String> {
        if Activation::from_config(&shape.hidden_act).is_none() {
            return Err(format!(
                "hidden_act `{}` is not supported",
                shape.hidden_act
            ));
        }
        if let Some(p) = &shape.position_embedding_type {
            if p != "absolute" {
                return Err(format!("position_embedding_type `{p}` is not supported"));
            }
        }
        Ok(())
    }

    /// Load the encoder's weights (with or without a `bert.` style prefix).
    pub fn load(
        vb: &VarBuilder,
        shape: &BertShape,
        precision: Precision,
    ) -> Result<BertEncoder, candle_core::Error> {
        let act = Activation::from_config(&shape.hidden_act).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "hidden_act `{}` is not supported",
                shape.hidden_act
            ))
        })?;
        let prefix = if vb.contains_tensor("embeddings.word_embeddings.weight") {
            String::new()
        } else {
            let p = shape.model_type.clone().unwrap_or_else(|| "bert".into());
            format!("{p}.")
        };
        if shape.num_attention_heads == 0
            || !shape.hidden_size.is_multiple_of(shape.num_attention_heads)
        {
            return Err(candle_core::Error::Msg(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                shape.hidden_size, shape.num_attention_heads
            )));
        }
        let (h, i) = (shape.hidden_size, shape.intermediate_size);
        let name = |n: &str| format!("{prefix}{n}");
        let norm = |n: &str| -> Result<Norm, candle_core::Error> {
            Ok(Norm {
                gamma: tensor_vec(vb, &[h], &name(&format!("{n}.weight")))?,
                beta: tensor_vec(vb, &[h], &name(&format!("{n}.bias")))?,
            })
        };
        let linear = |ws: &[&str], n_out: usize, n_in: usize| {
            let mut w = Vec::with_capacity(ws.len() * n_out * n_in);
            let mut b = Vec::with_capacity(ws.len() * n_out);
            for n in ws {
                w.extend(tensor_vec(
                    vb,
                    &[n_out, n_in],
                    &name(&format!("{n}.weight")),
                )?);
                b.extend(tensor_vec(vb, &[n_out], &name(&format!("{n}.bias")))?);
            }
            Ok::<_, candle_core::Error>(PackedLinear::new(
                &w,
                &b,
                ws.len() * n_out,
                n_in,
                precision,
            ))
        };
        let mut layers = Vec::with_capacity(shape.num_hidden_layers);
        for l in 0..shape.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            layers.push(Layer {
                qkv: linear(
                    &[
                        &format!("{p}.attention.self.query"),
                        &format!("{p}.attention.self.key"),
                        &format!("{p}.attention.self.value"),
                    ],
                    h,
                    h,
                )?,
                attn_out: linear(&[&format!("{p}.attention.output.dense")], h, h)?,
                attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                intermediate: linear(&[&format!("{p}.intermediate.dense")], i, h)?,
                output: linear(&[&format!("{p}.output.dense")], h, i)?,
                out_norm: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        Ok(BertEncoder {
            act,
            eps: shape.layer_norm_eps as f32,
            word: tensor_vec(
                vb,
                &[shape.vocab_size, h],
                &name("embeddings.word_embeddings.weight"),
            )?,
            position: tensor_vec(
                vb,
                &[shape.max_position_embeddings, h],
                &name("embeddings.position_embeddings.weight"),
            )?,
            token_type: tensor_vec(
                vb,
                &[shape.type_vocab_size, h],
                &name("embeddings.token_type_embeddings.weight"),
            )?,
            emb_norm: norm("embeddings.LayerNorm")?,
            layers,
            precision,
            shape: shape.clone(),
            prefix,
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.shape.hidden_size
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The weight-name prefix the encoder was found under ("" or e.g. "bert.").
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Run the encoder over `seqs` on the current rayon pool.
    pub fn forward(&self, seqs: &[Sequence]) -> Result<Hidden, InferenceError> {
        self.forward_cancellable(seqs, &|| false)
    }

    /// [`forward`](Self::forward), asking `cancelled` (on the calling thread) before each layer:
    /// once it says yes, no more layers run and the result is [`InferenceError::Cancelled`].
    pub fn forward_cancellable(
        &self,
        seqs: &[Sequence],
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<Hidden, InferenceError> {
        let h = self.shape.hidden_size;
        let mut offsets = Vec::with_capacity(seqs.len() + 1);
        offsets.push(0);
        for s in seqs {
            if s.ids.is_empty() || s.ids.len() > self.shape.max_position_embeddings {
                return Err(InferenceError::Input(format!(
                    "a text has {} tokens; the model takes 1 to {}",
                    s.ids.len(),
                    self.shape.max_position_embeddings
                )));
            }
            if s.type_ids.len() != s.ids.len() {
                return Err(InferenceError::Input(
                    "token type ids do not match the tokens".into(),
                ));
            }
            offsets.push(offsets[offsets.len() - 1] + s.ids.len());
        }
        let t = offsets[offsets.len() - 1];
        let i_size = self.shape.intermediate_size;
        // A nested call on the same thread (rayon work stealing) finds the cell empty and gets
        // fresh buffers.
        let mut ws = Workspace::take();
        let Workspace {
            x,
            qkv,
            ctx,
            tmp,
            inter,
        } = &mut *ws;
        sized(x, t * h);
        sized(qkv, t * 3 * h);
        sized(ctx, t * h);
        sized(tmp, t * h);
        sized(inter, t * i_size);
        for (s, seq) in seqs.iter().enumerate() {
            for (p, (&id, &tt)) in seq.ids.iter().zip(seq.type_ids).enumerate() {
                let (id, tt) = (id as usize, tt as usize);
                if id >= self.shape.vocab_size || tt >= self.shape.type_vocab_size {
                    return Err(InferenceError::Input(format!(
                        "token id {id} (type {tt}) is outside the model's vocabulary"
                    )));
                }
                let row = &mut x[(offsets[s] + p) * h..(offsets[s] + p + 1) * h];
                let w = &self.word[id * h..(id + 1) * h];
                let pe = &self.position[p * h..(p + 1) * h];
                let te = &self.token_type[tt * h..(tt + 1) * h];
                for (((r, a), b), c) in row.iter_mut().zip(w).zip(pe).zip(te) {
                    *r = a + b + c;
                }
            }
        }
        rows_par(x, h, |chunk| {
            layer_norm(chunk, &self.emb_norm.gamma, &self.emb_norm.beta, self.eps)
        });

        for layer in &self.layers {
            if cancelled() {
                // the buffers go back to the thread's workspace as usual
                drop(Hidden {
                    ws: Some(ws),
                    width: h,
                    offsets,
                });
                return Err(InferenceError::Cancelled);
            }
            layer.qkv.forward(x, t, qkv);
            self.attention(qkv, &offsets, ctx);
            layer.attn_out.forward(ctx, t, tmp);
            rows_par2(tmp, x, h, |dst, res| {
                add_layer_norm(
                    dst,
                    res,
                    &layer.attn_norm.gamma,
                    &layer.attn_norm.beta,
                    self.eps,
                )
            });
            std::mem::swap(x, tmp);
            layer.intermediate.forward(x, t, inter);
            rows_par(inter, i_size, |chunk| self.act.apply(chunk));
            layer.output.forward(inter, t, tmp);
            rows_par2(tmp, x, h, |dst, res| {
                add_layer_norm(
                    dst,
                    res,
                    &layer.out_norm.gamma,
                    &layer.out_norm.beta,
                    self.eps,
                )
            });
            std::mem::swap(x, tmp);
        }
        Ok(Hidden {
            ws: Some(ws),
            width: h,
            offsets,
        })
    }

    /// Multi-head self-attention of every text over its own tokens; `qkv` rows hold query, key
    /// and value side by side.
    fn attention(&self, qkv: &[f32], offsets: &[usize], ctx: &mut [f32]) {
        let h = self.shape.hidden_size;
        let heads = self.shape.num_attention_heads;
        let d = h / heads;
        let scale = 1.0 / (d as f32).sqrt();
        let stride = 3 * h;
        let texts = offsets.len() - 1;
        assert_eq!(ctx.len(), offsets[texts] * h, "attention output shape");
        assert!(
            qkv.len() >= offsets[texts] * stride,
            "attention input shape"
        );
        let out = SendPtr(ctx.as_mut_ptr());
        let use_amx = self.precision == Precision::Bf16 && super::gemm::amx::available();
        let task = |(s, head): (usize, usize)| {
            super::pause::pause_point();
            let (start, end) = (offsets[s], offsets[s + 1]);
            assert!(start < end && end <= offsets[texts]);
            let len = end - start;
            let base = start * stride + head * d;
            // Task (s, head) owns the block rows start..end × columns head*d..(head+1)*d of ctx;
            // the heads of one text interleave within the same rows, so each gets a pointer to
            // its first value and the row stride, never a slice spanning the others' values.
            let first = start * h + head * d;
            let head_fn = if use_amx {
                attention_head_amx
            } else {
                attention_head
            };
            SCRATCH.with_borrow_mut(|scratch| {
                // SAFETY: row i < len of the block is ctx[(start+i)*h + head*d..][..d], inside ctx
                // (start + i < offsets[texts], asserted above, and head*d + d <= h); no two tasks
                // share a block, `ctx` is not used through its reference until every task is
                // done, and the tasks only read `qkv`.
                unsafe {
                    head_fn(
                        &qkv[base..],
                        &qkv[base + h..],
                        &qkv[base + 2 * h..],
                        stride,
                        len,
                        d,
                        scale,
                        out.get().add(first),
                        h,
                        scratch,
                    )
                }
            });
        };
        let tasks = texts * heads;
        if tasks == 1 || rayon::current_num_threads() == 1 {
            (0..texts)
                .flat_map(|s| (0..heads).map(move |hd| (s, hd)))
                .for_each(task);
        } else {
            (0..tasks)
                .into_par_iter()
                .map(|i| (i / heads, i % heads))
                .for_each(task);
        }
    }
}

thread_local! {
    /// Attention scratch buffers, kept per thread between heads and calls.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Rows per parallel task for the cheap row-wise operations.
const ROWS_PER_TASK: usize = 32;

/// Values of a row-wise operation between two pause points (tens of microseconds of work): an
/// activation or a layer norm over a large batch's every row is a long stretch of work.
const PAUSE_VALUES: usize = 64 * 1024;

/// Whether the task over rows chunk `i` (of `chunk` values) starts at a pause point.
fn pauses_at(i: usize, chunk: usize) -> bool {
    i.is_multiple_of((PAUSE_VALUES / chunk.max(1)).max(1))
}

fn rows_par(data: &mut [f32], width: usize, f: impl Fn(&mut [f32]) + Sync + Send) {
    let chunk = ROWS_PER_TASK * width;
    let task = |(i, c): (usize, &mut [f32])| {
        if pauses_at(i, chunk) {
            super::pause::pause_point();
        }
        f(c)
    };
    if rayon::current_num_threads() == 1 {
        data.chunks_mut(chunk).enumerate().for_each(task);
    } else if data.len() <= chunk {
        f(data);
    } else {
        data.par_chunks_mut(chunk).enumerate().for_each(task);
    }
}

fn rows_par2(
    data: &mut [f32],
    other: &[f32],
    width: usize,
    f: impl Fn(&mut [f32], &[f32]) + Sync + Send,
) {
    let chunk = ROWS_PER_TASK * width;
    let task = |(i, (d, o)): (usize, (&mut [f32], &[f32]))| {
        if pauses_at(i, chunk) {
            super::pause::pause_point();
        }
        f(d, o)
    };
    if rayon::current_num_threads() == 1 {
        data.chunks_mut(chunk)
            .zip(other.chunks(chunk))
            .enumerate()
            .for_each(task);
    } else if data.len() <= chunk {
        f(data, other);
    } else {
        data.par_chunks_mut(chunk)
            .zip(other.par_chunks(chunk))
            .enumerate()
            .for_each(task);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{Device, Tensor};
    use candle_nn::VarBuilder;
    use candle_transformers::models::bert::{BertModel, Config};

    use super::*;

    /// A small random BERT (`hidden` wide, `heads` heads, 2 layers), as a config and weights.
    fn tiny_bert(hidden: usize, heads: usize) -> (String, HashMap<String, Tensor>) {
        let config = format!(
            r#"{{"vocab_size": 50, "hidden_size": {hidden}, "num_hidden_layers": 2,
                "num_attention_heads": {heads}, "intermediate_size": {}, "hidden_act": "gelu",
                "hidden_dropout_prob": 0.0, "max_position_embeddings": 64, "type_vocab_size": 2,
                "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
                "classifier_dropout": null, "model_type": "bert"}}"#,
            2 * hidden
        );
        let mut seed = 1u64;
        let mut t = |shape: &[usize], scale: f32, offset: f32| {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    offset + ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
                })
                .collect();
            Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
        };
        let (h, i) = (hidden, 2 * hidden);
        let mut w = HashMap::new();
        w.insert(
            "embeddings.word_embeddings.weight".into(),
            t(&[50, h], 1.0, 0.0),
        );
        w.insert(
            "embeddings.position_embeddings.weight".into(),
            t(&[64, h], 1.0, 0.0),
        );
        w.insert(
            "embeddings.token_type_embeddings.weight".into(),
            t(&[2, h], 1.0, 0.0),
        );
        w.insert("embeddings.LayerNorm.weight".into(), t(&[h], 0.2, 1.0));
        w.insert("embeddings.LayerNorm.bias".into(), t(&[h], 0.2, 0.0));
        for l in 0..2 {
            let p = format!("encoder.layer.{l}");
            for (name, n_out, n_in) in [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", i, h),
                ("output.dense", h, i),
            ] {
                let scale = 2.0 / (n_in as f32).sqrt();
                w.insert(format!("{p}.{name}.weight"), t(&[n_out, n_in], scale, 0.0));
                w.insert(format!("{p}.{name}.bias"), t(&[n_out], 0.2, 0.0));
            }
            for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
                w.insert(format!("{p}.{name}.weight"), t(&[h], 0.2, 1.0));
                w.insert(format!("{p}.{name}.bias"), t(&[h], 0.2, 0.0));
            }
        }
        (config, w)
    }

    /// The packed forward pass, its attention heads spread over two threads, against candle's
    /// BERT run on one text at a time: small shapes, for the memory checkers as much as for the
    /// numbers (scripts/check-kernels-valgrind.sh, check-kernels-asan.sh). Head widths 16
    /// (values copied into panels) and 32 (values read in place); bf16 loosely.
    #[test]
    fn packed_forward_matches_candle_on_a_tiny_bert() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for (hidden, heads) in [(64, 4), (64, 2)] {
            let (config, weights) = tiny_bert(hidden, heads);
            let shape: BertShape = serde_json::from_str(&config).unwrap();
            let candle_config: Config = serde_json::from_str(&config).unwrap();
            let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
            let reference = BertModel::load(vb.clone(), &candle_config).unwrap();
            let texts: Vec<(Vec<u32>, Vec<u32>)> = [5usize, 17, 1, 40]
                .iter()
                .enumerate()
                .map(|(t, &len)| {
                    let ids = (0..len).map(|j| ((j * 7 + t * 3) % 50) as u32).collect();
                    let types = (0..len).map(|j| u32::from(j >= len / 2)).collect();
                    (ids, types)
                })
                .collect();
            let seqs: Vec<Sequence> = texts
                .iter()
                .map(|(ids, type_ids)| Sequence { ids, type_ids })
                .collect();
            for (precision, tol) in [(Precision::F32, 1e-4), (Precision::Bf16, 0.1)] {
                let encoder = BertEncoder::load(&vb, &shape, precision).unwrap();
                let hidden_states = pool.install(|| encoder.forward(&seqs)).unwrap();
                for (i, (ids, type_ids)) in texts.iter().enumerate() {
                    let len = ids.len();
                    let input = Tensor::from_vec(ids.clone(), (1, len), &Device::Cpu).unwrap();
                    let types = Tensor::from_vec(type_ids.clone(), (1, len), &Device::Cpu).unwrap();
                    let mask = Tensor::ones((1, len), DType::U32, &Device::Cpu).unwrap();
                    let want: Vec<f32> = reference
                        .forward(&input, &types, Some(&mask))
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    let got = hidden_states.rows(i);
                    assert_eq!(got.len(), want.len());
                    let err = got
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0, f32::max);
                    assert!(
                        err < tol,
                        "{precision:?} hidden {hidden} heads {heads} text {i}: off by {err}"
                    );
                }
            }
        }
    }
}
