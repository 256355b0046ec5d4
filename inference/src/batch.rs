//! Padding a group of tokenised texts into the tensors a BERT forward pass takes.

use candle_core::{Device, Tensor};
use tokenizers::Encoding;

use crate::InferenceError;

/// `input_ids`, `token_type_ids` and `attention_mask`, each `(batch, longest)`, zero-padded.
pub(crate) struct Padded {
    pub input_ids: Tensor,
    pub token_type_ids: Tensor,
    pub attention_mask: Tensor,
}

pub(crate) fn pad(encodings: &[&Encoding]) -> Result<Padded, InferenceError> {
    let batch = encodings.len();
    let seq = encodings
        .iter()
        .map(|e| e.get_ids().len())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut ids = vec![0u32; batch * seq];
    let mut types = vec![0u32; batch * seq];
    let mut mask = vec![0u32; batch * seq];
    for (row, e) in encodings.iter().enumerate() {
        let n = e.get_ids().len();
        let at = row * seq;
        ids[at..at + n].copy_from_slice(e.get_ids());
        types[at..at + n].copy_from_slice(e.get_type_ids());
        mask[at..at + n].fill(1);
    }
    let device = Device::Cpu;
    Ok(Padded {
        input_ids: Tensor::from_vec(ids, (batch, seq), &device)?,
        token_type_ids: Tensor::from_vec(types, (batch, seq), &device)?,
        attention_mask: Tensor::from_vec(mask, (batch, seq), &device)?,
    })
}

/// Indices of `lengths` grouped for batching: sorted by length, `batch_size` at a time, so
/// each group pads only to its own longest member.
pub(crate) fn length_groups(lengths: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    order
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn groups_sort_by_length() {
        let g = super::length_groups(&[5, 1, 9, 3, 7], 2);
        assert_eq!(g, vec![vec![1, 3], vec![0, 4], vec![2]]);
    }
}
