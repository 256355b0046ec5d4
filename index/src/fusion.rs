//! Hybrid search: one ranking from the vector hits and the keyword hits of a query.
//!
//! - Reciprocal rank fusion (Cormack et al.): each list adds `1 / (k + rank)` (rank from 1) to a
//!   point's score; only ranks count, so scores of different kinds need no calibration. `k` = 60
//!   by default, as in the paper, Elasticsearch and Qdrant.
//! - Weighted: each list's scores are scaled to 0..1 by its own minimum and maximum (over the
//!   hits it returned), then `alpha · vector + (1 - alpha) · keyword`; a point missing from a
//!   list gets 0 there (Weaviate's relative score fusion).

use crate::{Hit, PointId};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fusion {
    Rrf {
        k: f32,
    },
    /// `alpha`: the vector side's weight, 0..=1.
    Weighted {
        alpha: f32,
    },
}

/// A fused hit: its final score in `hit.score`, and what each list said of it.
#[derive(Debug, Clone)]
pub struct FusedHit {
    pub hit: Hit,
    pub vector_score: Option<f32>,
    pub keyword_score: Option<f32>,
}

/// Scores scaled to 0..1 by the list's minimum and maximum (all 1 when they are equal).
fn scaled(hits: &[Hit]) -> impl Fn(f32) -> f32 {
    let min = hits.iter().map(|h| h.score).fold(f32::INFINITY, f32::min);
    let max = hits
        .iter()
        .map(|h| h.score)
        .fold(f32::NEG_INFINITY, f32::max);
    move |s| {
        if max > min {
            (s - min) / (max - min)
        } else {
            1.0
        }
    }
}

/// The best `k` of both lists (each best first), fused. Ties go to the hit more lists found,
/// then to the better rank on the side that weighs more (the vector side for RRF and for
/// `alpha` ≥ 0.5), then on the other side. (Weighted scaling gives a list's weakest hit 0, the
/// score of an absent one: without this, a keyword hit could fall behind hits with none of the
/// query's words at `alpha` 0.)
pub fn fuse(vector: Vec<Hit>, keyword: Vec<Hit>, fusion: Fusion, k: usize) -> Vec<FusedHit> {
    struct Entry {
        hit: Hit,
        vector: Option<(usize, f32)>,
        keyword: Option<(usize, f32)>,
    }
    let vector_scale = scaled(&vector);
    let keyword_scale = scaled(&keyword);
    let mut entries: Vec<Entry> = Vec::with_capacity(vector.len() + keyword.len());
    let mut at: std::collections::HashMap<PointId, usize> = Default::default();
    for (rank, h) in vector.into_iter().enumerate() {
        at.entry(h.id).or_insert_with(|| {
            entries.push(Entry {
                vector: Some((rank, h.score)),
                keyword: None,
                hit: h,
            });
            entries.len() - 1
        });
    }
    for (rank, h) in keyword.into_iter().enumerate() {
        match at.get(&h.id) {
            Some(&i) => {
                if entries[i].keyword.is_none() {
                    entries[i].keyword = Some((rank, h.score));
                }
            }
            None => {
                at.insert(h.id, entries.len());
                entries.push(Entry {
                    keyword: Some((rank, h.score)),
                    vector: None,
                    hit: h,
                });
            }
        }
    }
    let score = |e: &Entry| match fusion {
        Fusion::Rrf { k } => {
            let part =
                |r: Option<(usize, f32)>| r.map_or(0.0, |(rank, _)| 1.0 / (k + rank as f32 + 1.0));
            part(e.vector) + part(e.keyword)
        }
        Fusion::Weighted { alpha } => {
            alpha * e.vector.map_or(0.0, |(_, s)| vector_scale(s))
                + (1.0 - alpha) * e.keyword.map_or(0.0, |(_, s)| keyword_scale(s))
        }
    };
    let mut scored: Vec<(f32, Entry)> = entries.into_iter().map(|e| (score(&e), e)).collect();
    let rank_or_last = |r: Option<(usize, f32)>| r.map_or(usize::MAX, |(rank, _)| rank);
    let lists = |e: &Entry| e.vector.is_some() as u8 + e.keyword.is_some() as u8;
    let vector_first = match fusion {
        Fusion::Rrf { .. } => true,
        Fusion::Weighted { alpha } => alpha >= 0.5,
    };
    type Side = fn(&Entry) -> Option<(usize, f32)>;
    let (first, second): (Side, Side) = if vector_first {
        (|e| e.vector, |e| e.keyword)
    } else {
        (|e| e.keyword, |e| e.vector)
    };
    scored.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(lists(&b.1).cmp(&lists(&a.1)))
            .then(rank_or_last(first(&a.1)).cmp(&rank_or_last(first(&b.1))))
            .then(rank_or_last(second(&a.1)).cmp(&rank_or_last(second(&b.1))))
    });
    scored
        .into_iter()
        .take(k)
        .map(|(s, e)| FusedHit {
            hit: Hit { score: s, ..e.hit },
            vector_score: e.vector.map(|v| v.1),
            keyword_score: e.keyword.map(|v| v.1),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Payload;
    use std::sync::Arc;

    fn hits(list: &[(PointId, f32)]) -> Vec<Hit> {
        let payload = Arc::new(Payload {
            doc_id: "d".into(),
            metadata: Default::default(),
        });
        list.iter()
            .map(|&(id, score)| Hit {
                id,
                score,
                payload: payload.clone(),
            })
            .collect()
    }

    fn ids(f: &[FusedHit]) -> Vec<PointId> {
        f.iter().map(|h| h.hit.id).collect()
    }

    #[test]
    fn reciprocal_rank_fusion_adds_each_lists_rank() {
        let v = hits(&[(1, 0.9), (2, 0.8), (3, 0.7)]);
        let kw = hits(&[(3, 12.0), (4, 9.0), (1, 2.0)]);
        let f = fuse(v, kw, Fusion::Rrf { k: 60.0 }, 10);
        // 1: 1/61 + 1/63; 3: 1/63 + 1/61 (a tie: the better vector rank first); 2: 1/62; 4: 1/62
        assert_eq!(ids(&f), vec![1, 3, 2, 4]);
        assert!((f[0].hit.score - (1.0 / 61.0 + 1.0 / 63.0)).abs() < 1e-6);
        assert_eq!(
            (f[0].vector_score, f[0].keyword_score),
            (Some(0.9), Some(2.0))
        );
        assert_eq!((f[2].vector_score, f[2].keyword_score), (Some(0.8), None));
        assert_eq!((f[3].vector_score, f[3].keyword_score), (None, Some(9.0)));
        assert_eq!(
            ids(&fuse(
                hits(&[]),
                hits(&[(7, 1.0)]),
                Fusion::Rrf { k: 60.0 },
                10
            )),
            vec![7]
        );
        assert_eq!(
            fuse(
                hits(&[(1, 0.5), (2, 0.4)]),
                hits(&[]),
                Fusion::Rrf { k: 60.0 },
                1
            )
            .len(),
            1
        );
    }

    #[test]
    fn weighted_fusion_scales_each_list_and_weighs_them() {
        let v = hits(&[(1, 0.9), (2, 0.5)]);
        let kw = hits(&[(2, 20.0), (3, 10.0)]);
        // alpha 1: vectors only (3, absent there, scores 0)
        let f = fuse(v.clone(), kw.clone(), Fusion::Weighted { alpha: 1.0 }, 10);
        assert_eq!(ids(&f), vec![1, 2, 3]);
        // alpha 0: keywords first: 2 (1), then 3 (its list's weakest: 0, as 1 that is absent,
        // but found by the side that counts)
        let f = fuse(v.clone(), kw.clone(), Fusion::Weighted { alpha: 0.0 }, 10);
        assert_eq!(ids(&f), vec![2, 3, 1]);
        // a short keyword list among many vector hits: its second hit still comes second
        let many = hits(
            &(10..60)
                .map(|i| (i, 0.9 - i as f32 * 0.001))
                .collect::<Vec<_>>(),
        );
        let two = hits(&[(1, 5.0), (2, 4.0)]);
        let f = fuse(many, two, Fusion::Weighted { alpha: 0.0 }, 3);
        assert_eq!(ids(&f)[..2], [1, 2]);
        // one hit, or equal scores: scaled to 1
        let f = fuse(
            hits(&[(1, 0.3)]),
            hits(&[(2, 7.0), (3, 7.0)]),
            Fusion::Weighted { alpha: 0.5 },
            10,
        );
        assert!(f.iter().all(|h| (h.hit.score - 0.5).abs() < 1e-6), "{f:?}");
        // a point twice in one list counts once, at its better rank
        let f = fuse(
            hits(&[(1, 0.9), (1, 0.8)]),
            hits(&[]),
            Fusion::Rrf { k: 60.0 },
            10,
        );
        assert_eq!(f.len(), 1);
        assert!((f[0].hit.score - 1.0 / 61.0).abs() < 1e-7);
        // alpha 0.5: 2 = 0.5·0 + 0.5·1 = 0.5, 1 = 0.5·1 = 0.5 (tie: 2, found by both lists,
        // first), 3 = 0
        let f = fuse(v, kw, Fusion::Weighted { alpha: 0.5 }, 10);
        assert_eq!(ids(&f), vec![2, 1, 3]);
        assert!((f[1].hit.score - 0.5).abs() < 1e-6);
        assert_eq!(f[2].hit.score, 0.0);
    }
}
