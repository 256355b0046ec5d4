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

/// `forward` run over `encodings` in [`length_groups`], its outputs put back in input order.
/// `cancelled` is asked before each forward pass; once it says yes, no more passes run and the
/// result is [`InferenceError::Cancelled`].
pub(crate) fn forward_in_groups<T: Default + Clone>(
    encodings: &[Encoding],
    batch_size: usize,
    max_tokens: usize,
    packed: bool,
    cancelled: &(dyn Fn() -> bool + Sync),
    mut forward: impl FnMut(&[&Encoding]) -> Result<Vec<T>, InferenceError>,
) -> Result<Vec<T>, InferenceError> {
    let lengths: Vec<usize> = encodings.iter().map(|e| e.get_ids().len()).collect();
    let mut out = vec![T::default(); encodings.len()];
    for group in length_groups(&lengths, batch_size, max_tokens, packed) {
        if cancelled() {
            return Err(InferenceError::Cancelled);
        }
        let members: Vec<&Encoding> = group.iter().map(|&i| &encodings[i]).collect();
        for (&i, v) in group.iter().zip(forward(&members)?) {
            out[i] = v;
        }
    }
    Ok(out)
}

/// Indices of `lengths` grouped for batching: sorted by length, so each group pads only to its
/// own longest member; a group holds at most `batch_size` texts and at most `max_tokens` padded
/// tokens (count × longest), so long texts go in small groups and short ones in large groups.
/// On CPU, candle slows down on large padded batches (attention buffers), so this beats a fixed
/// batch size both ways.
/// With `packed` (the native engine, which never pads), the budget counts real tokens.
pub(crate) fn length_groups(
    lengths: &[usize],
    batch_size: usize,
    max_tokens: usize,
    packed: bool,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut real = 0;
    for i in order {
        // sorted ascending: the newcomer is the group's longest
        let tokens = if packed {
            real + lengths[i]
        } else {
            (cur.len() + 1) * lengths[i]
        };
        if !cur.is_empty() && (cur.len() >= batch_size.max(1) || tokens > max_tokens) {
            groups.push(std::mem::take(&mut cur));
            real = 0;
        }
        cur.push(i);
        real += lengths[i];
    }
    if !cur.is_empty() {
        groups.push(cur);
    }
    groups
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokenizers::Encoding;

    use crate::InferenceError;

    fn encoding(len: usize) -> Encoding {
        let n = |v: u32| vec![v; len];
        Encoding::new(
            n(7),
            n(0),
            vec![String::new(); len],
            vec![None; len],
            vec![(0, 0); len],
            n(0),
            n(1),
            Vec::new(),
            Default::default(),
        )
    }

    #[test]
    fn a_cancelled_run_stops_before_the_next_forward_pass() {
        let encodings: Vec<Encoding> = [3, 5, 4, 6, 2].into_iter().map(encoding).collect();
        let passes = AtomicUsize::new(0);
        let forward = |group: &[&Encoding]| {
            passes.fetch_add(1, Ordering::SeqCst);
            Ok(group.iter().map(|e| e.len()).collect::<Vec<_>>())
        };
        // never cancelled: one pass per group of 2, outputs in input order
        let out = super::forward_in_groups(&encodings, 2, 100, true, &|| false, forward).unwrap();
        assert_eq!(out, vec![3, 5, 4, 6, 2]);
        assert_eq!(passes.load(Ordering::SeqCst), 3);
        // cancelled before anything ran
        passes.store(0, Ordering::SeqCst);
        let r = super::forward_in_groups(&encodings, 2, 100, true, &|| true, forward);
        assert!(matches!(r, Err(InferenceError::Cancelled)));
        assert_eq!(passes.load(Ordering::SeqCst), 0);
        // cancelled once the first pass has run: no second one
        let cancelled = || passes.load(Ordering::SeqCst) >= 1;
        let r = super::forward_in_groups(&encodings, 2, 100, true, &cancelled, forward);
        assert!(matches!(r, Err(InferenceError::Cancelled)));
        assert_eq!(passes.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn groups_sort_by_length() {
        let g = super::length_groups(&[5, 1, 9, 3, 7], 2, 1000, false);
        assert_eq!(g, vec![vec![1, 3], vec![0, 4], vec![2]]);
        // token budget: 3 texts of 10 fit in 30, a 40-token text goes alone
        let g = super::length_groups(&[10, 10, 10, 40, 10], 8, 30, false);
        assert_eq!(g, vec![vec![0, 1, 2], vec![4], vec![3]]);
        // padded, 2 + 20 cost 40 tokens; packed, 22
        let g = super::length_groups(&[2, 20], 8, 30, false);
        assert_eq!(g, vec![vec![0], vec![1]]);
        let g = super::length_groups(&[2, 20], 8, 30, true);
        assert_eq!(g, vec![vec![0, 1]]);
    }
}
