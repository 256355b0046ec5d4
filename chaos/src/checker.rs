//! The checker: what the history and the settled cluster must satisfy.
//!
//! Timeouts and server errors are "maybe": such a write may have happened or not, and the
//! checker allows both (but not half of it). Everything acknowledged is held to account:
//!
//! - **Reads agree with the index they report.** A search answers with the log index its
//!   collection reflected (`applied_index`, A: everything up to A is in the index it searched,
//!   and entries after A may be too). Whatever the consistency, its hits must agree: no document
//!   whose delete was acknowledged at an index ≤ A, every document whose ingest job read as done
//!   at an index ≤ A (unless a delete of it was sent before the read ended),
//!   no document that was never written (or whose only writes were refused), no text that was
//!   never written, no chunk twice. This is how a `local` read on a lagging node is held to what
//!   it claims, and how a deleted document coming back or a lost write shows.
//! - **`strong` reads are linearizable** in the sense that matters here: a strong read reflects
//!   every write acknowledged before it started (A ≥ the index of each), and with the rule above
//!   its hits are the state at A, which lies between its start and its end. This is narrower than
//!   a full Knossos search over all orders of concurrent operations, and it is exact for the
//!   anomalies that matter here: a strong read that misses an acknowledged write (etcd's stale reads)
//!   breaks the first half, one that sees a write that was never acknowledged nor in flight
//!   breaks the second.
//! - **`min_index` reads never go back**: A ≥ the index asked for.
//! - **At the end**, on every node: each document is there if an ingest of it was acknowledged and
//!   no delete may have happened, gone if its delete was acknowledged, either (but whole) if only
//!   maybe; its text is the last acknowledged version or a later maybe; it is indexed, with one
//!   hit per chunk (never indexed twice) and no hit without its document; collections created
//!   are there, dropped ones are gone; and every replica's store digest is the same.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::history::{Hit, Op, OpKind, Outcome};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Anomaly {
    pub kind: String,
    pub detail: String,
}

fn anomaly(kind: &str, detail: String) -> Anomaly {
    Anomaly {
        kind: kind.into(),
        detail,
    }
}

/// A document as one node holds it at the end.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FinalDoc {
    pub state: String,
    pub text: String,
    pub chunks: u64,
}

/// What one node holds at the end, for the documents and collections of the history.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FinalNode {
    pub node: usize,
    /// Every document id of the history: its record, or None where the node has none.
    pub docs: BTreeMap<String, Option<FinalDoc>>,
    /// Search hits for each document id (a `document_id` filter).
    pub hits: BTreeMap<String, Vec<Hit>>,
    pub collections: BTreeSet<String>,
    pub applied_index: u64,
    pub digest: String,
}

/// One write of one document, in its client's order.
struct DocWrite<'a> {
    op: &'a Op,
    /// The text written, or None for a delete.
    text: Option<&'a str>,
    /// The op wrote other (new) documents too.
    batch: usize,
}

fn doc_writes(ops: &[Op]) -> BTreeMap<&str, Vec<DocWrite<'_>>> {
    let mut by_doc: BTreeMap<&str, Vec<DocWrite>> = BTreeMap::new();
    for op in ops {
        match &op.kind {
            OpKind::Ingest { docs } => {
                for (id, text) in docs {
                    by_doc.entry(id).or_default().push(DocWrite {
                        op,
                        text: Some(text),
                        batch: docs.len(),
                    });
                }
            }
            OpKind::Delete { doc } => by_doc.entry(doc).or_default().push(DocWrite {
                op,
                text: None,
                batch: 1,
            }),
            _ => {}
        }
    }
    by_doc
}

/// A time when a node may have lost or rebuilt its state (killed, wiped, its disk full): its
/// reads before and after are not compared.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Reset {
    pub node: usize,
    pub from_ms: f64,
    pub to_ms: f64,
}

/// Each node's successful reads, in order, must not go back in applied index (a read that began
/// after another ended reflects at least as much), except across a [`Reset`] of that node: a
/// read that overlaps a reset is not checked, and reads are compared only with reads made since
/// the last reset before them ended (its epoch), so that a reset does not end the checks for
/// the rest of the run.
fn check_monotonic(ops: &[Op], resets: &[Reset], found: &mut Vec<Anomaly>) {
    let mut by_node: BTreeMap<usize, Vec<(&Op, u64)>> = BTreeMap::new();
    for o in ops {
        if let (OpKind::Search { .. }, Outcome::Ok { index }) = (&o.kind, &o.outcome) {
            by_node.entry(o.node).or_default().push((o, *index));
        }
    }
    for (node, reads) in by_node {
        let mut ends: Vec<f64> = resets
            .iter()
            .filter(|x| x.node == node)
            .map(|x| x.to_ms)
            .collect();
        ends.sort_by(f64::total_cmp);
        // epoch: how many of the node's resets had ended when the read began
        let mut epochs: BTreeMap<usize, Vec<(&Op, u64)>> = BTreeMap::new();
        for r in reads {
            epochs
                .entry(ends.partition_point(|&to| to <= r.0.start_ms))
                .or_default()
                .push(r);
        }
        for (_, reads) in epochs {
            check_epoch(node, &reads, resets, found);
        }
    }
}

/// [`check_monotonic`] within one epoch of one node.
fn check_epoch(node: usize, reads: &[(&Op, u64)], resets: &[Reset], found: &mut Vec<Anomaly>) {
    let mut by_end: Vec<&(&Op, u64)> = reads.iter().collect();
    by_end.sort_by(|a, b| a.0.end_ms.total_cmp(&b.0.end_ms));
    let mut by_start: Vec<&(&Op, u64)> = reads.iter().collect();
    by_start.sort_by(|a, b| a.0.start_ms.total_cmp(&b.0.start_ms));
    // the highest index among reads that ended before the current one began
    let mut best: Option<(&Op, u64)> = None;
    let mut ended = by_end.into_iter().peekable();
    for r in by_start {
        while let Some(p) = ended.next_if(|p| p.0.end_ms < r.0.start_ms) {
            if best.is_none_or(|b| p.1 > b.1) {
                best = Some(*p);
            }
        }
        let Some((earlier, a0)) = best else { continue };
        let during_reset = resets
            .iter()
            .any(|x| x.node == node && x.from_ms < r.0.end_ms && x.to_ms > r.0.start_ms);
        if !during_reset && r.1 < a0 {
            found.push(anomaly(
                "read went back in time",
                format!(
                    "node {} answered at {} after answering at {a0} ({:?} after {:?})",
                    node + 1,
                    r.1,
                    r.0,
                    earlier
                ),
            ));
        }
    }
}

/// The checks on the history itself (the reads).
pub fn check_history(ops: &[Op], resets: &[Reset]) -> Vec<Anomaly> {
    let mut found = Vec::new();
    check_monotonic(ops, resets, &mut found);
    let writes = doc_writes(ops);
    // acknowledged writes by end time, for the strong reads
    let mut acked: Vec<(f64, u64)> = ops
        .iter()
        .filter(|o| o.kind.is_write())
        .filter_map(|o| o.outcome.index().map(|i| (o.end_ms, i)))
        .collect();
    acked.sort_by(|a, b| a.0.total_cmp(&b.0));
    // the highest acknowledged index by each end time
    let mut running = 0;
    let acked_max: Vec<(f64, u64)> = acked
        .iter()
        .map(|(t, i)| {
            running = running.max(*i);
            (*t, running)
        })
        .collect();
    // documents whose ingest job read as done, at which index
    let mut done_at: BTreeMap<&str, u64> = BTreeMap::new();
    for op in ops {
        if let (OpKind::JobDone { docs, .. }, Outcome::Ok { index }) = (&op.kind, &op.outcome) {
            for d in docs {
                let e = done_at.entry(d.as_str()).or_insert(*index);
                *e = (*e).min(*index);
            }
        }
    }
    for read in ops {
        let (
            OpKind::Search {
                consistency,
                min_index,
                docs,
            },
            Outcome::Ok { index: a },
        ) = (&read.kind, &read.outcome)
        else {
            continue;
        };
        let a = *a;
        if let Some(m) = min_index {
            if a < *m {
                found.push(anomaly(
                    "min_index read went back",
                    format!(
                        "node {} answered at {a}, asked for {m} ({read:?})",
                        read.node + 1
                    ),
                ));
            }
        }
        if consistency == "strong" {
            let before = acked_max.partition_point(|(t, _)| *t < read.start_ms);
            if before > 0 {
                let w = acked_max[before - 1].1;
                if a < w {
                    found.push(anomaly(
                        "stale strong read",
                        format!(
                            "node {} answered at {a}, but a write was acknowledged at {w} before the read began ({read:?})",
                            read.node + 1
                        ),
                    ));
                }
            }
        }
        let mut seen = BTreeSet::new();
        for h in &read.hits {
            if !seen.insert((h.doc.as_str(), h.chunk)) {
                found.push(anomaly(
                    "duplicate chunk",
                    format!("{} chunk {} twice in one answer ({read:?})", h.doc, h.chunk),
                ));
            }
        }
        for d in docs {
            let present: Vec<&Hit> = read.hits.iter().filter(|h| &h.doc == d).collect();
            let w = writes.get(d.as_str()).map(Vec::as_slice).unwrap_or(&[]);
            // writes that may have taken effect before the read ended
            let possible: Vec<&DocWrite> = w
                .iter()
                .filter(|x| x.op.start_ms < read.end_ms)
                .filter(|x| !matches!(x.op.outcome, Outcome::Fail { .. }))
                .collect();
            let deleted_at = possible
                .iter()
                .filter(|x| x.text.is_none())
                .filter_map(|x| x.op.outcome.index())
                .min();
            // A is a floor: the shard reflects everything up to A and may hold later entries
            // too, so any delete sent before the read ended may show
            let maybe_deleted = possible.iter().any(|x| x.text.is_none());
            if !present.is_empty() {
                if let Some(di) = deleted_at.filter(|di| *di <= a) {
                    found.push(anomaly(
                        "deleted document returned",
                        format!(
                            "{d} was deleted at {di}; node {} returned it answering at {a} ({read:?})",
                            read.node + 1
                        ),
                    ));
                }
                for h in &present {
                    let written = possible
                        .iter()
                        .any(|x| x.text.is_some_and(|t| t.contains(h.text.as_str())));
                    if !written {
                        found.push(anomaly(
                            if possible.iter().any(|x| x.text.is_some()) {
                                "text never written"
                            } else {
                                "phantom document"
                            },
                            format!(
                                "node {} returned {d} with {:?}, which no possible write of it held ({read:?})",
                                read.node + 1,
                                h.text
                            ),
                        ));
                    }
                }
            } else if let Some(j) = done_at.get(d.as_str()).filter(|j| **j <= a) {
                if !maybe_deleted {
                    found.push(anomaly(
                        "lost write",
                        format!(
                            "{d} was indexed at {j}; node {} answered at {a} without it ({read:?})",
                            read.node + 1
                        ),
                    ));
                }
            }
        }
    }
    found
}

/// The checks on the settled cluster.
pub fn check_final(ops: &[Op], nodes: &[FinalNode]) -> Vec<Anomaly> {
    let mut found = Vec::new();
    let writes = doc_writes(ops);
    for (d, w) in &writes {
        let not_failed: Vec<&DocWrite> = w
            .iter()
            .filter(|x| !matches!(x.op.outcome, Outcome::Fail { .. }))
            .collect();
        let acked_delete = not_failed
            .iter()
            .any(|x| x.text.is_none() && matches!(x.op.outcome, Outcome::Ok { .. }));
        let maybe_delete = not_failed.iter().any(|x| x.text.is_none());
        let last_acked = not_failed
            .iter()
            .rposition(|x| x.text.is_some() && matches!(x.op.outcome, Outcome::Ok { .. }));
        // texts it may end with: the last acknowledged version or a later maybe
        let allowed: BTreeSet<&str> = not_failed
            .iter()
            .enumerate()
            .filter(|(i, _)| last_acked.is_none_or(|k| *i >= k))
            .filter_map(|(_, x)| x.text)
            .collect();
        let must_exist = last_acked.is_some() && !maybe_delete;
        for n in nodes {
            let held = n.docs.get(*d).cloned().flatten();
            let hits: Vec<&Hit> = n
                .hits
                .get(*d)
                .map(|h| h.iter().collect())
                .unwrap_or_default();
            let node = n.node + 1;
            match &held {
                None if must_exist => found.push(anomaly(
                    "lost write",
                    format!("{d}: its ingest was acknowledged, node {node} does not have it"),
                )),
                Some(_) if acked_delete => found.push(anomaly(
                    "deleted document returned",
                    format!("{d}: its delete was acknowledged, node {node} still has it"),
                )),
                Some(_) if allowed.is_empty() => found.push(anomaly(
                    "phantom document",
                    format!("{d}: no write of it can have happened, node {node} has it"),
                )),
                Some(doc) => {
                    if !allowed.contains(doc.text.as_str()) {
                        found.push(anomaly(
                            "wrong version",
                            format!(
                                "{d}: node {node} holds {:?}, expected one of {allowed:?}",
                                doc.text
                            ),
                        ));
                    }
                    if doc.state != "indexed" {
                        found.push(anomaly(
                            "never indexed",
                            format!(
                                "{d}: node {node} holds it {} after the cluster settled",
                                doc.state
                            ),
                        ));
                    }
                    let chunks: BTreeSet<u32> = hits.iter().map(|h| h.chunk).collect();
                    if chunks.len() != hits.len() {
                        found.push(anomaly(
                            "indexed twice",
                            format!(
                                "{d}: node {node} has {} hits for {} chunks",
                                hits.len(),
                                chunks.len()
                            ),
                        ));
                    }
                    if doc.state == "indexed" && chunks.len() as u64 != doc.chunks {
                        found.push(anomaly(
                            "index disagrees with store",
                            format!(
                                "{d}: node {node} stores {} chunks, its index returns {}",
                                doc.chunks,
                                chunks.len()
                            ),
                        ));
                    }
                    if hits
                        .iter()
                        .any(|h| h.text != doc.text && !doc.text.contains(&h.text))
                    {
                        found.push(anomaly(
                            "index disagrees with store",
                            format!("{d}: node {node} returns a chunk of another version"),
                        ));
                    }
                }
                None => {}
            }
            if held.is_none() && !hits.is_empty() {
                found.push(anomaly(
                    "chunk without document",
                    format!(
                        "{d}: node {node} returns {} hits but holds no document",
                        hits.len()
                    ),
                ));
            }
        }
    }
    // a write that timed out is all there or not at all
    for op in ops {
        let (OpKind::Ingest { docs }, Outcome::Unknown { .. }) = (&op.kind, &op.outcome) else {
            continue;
        };
        if docs.len() < 2 {
            continue;
        }
        // only documents this op alone decides (no other possible write of them)
        let alone: Vec<&str> = docs
            .iter()
            .map(|(id, _)| id.as_str())
            .filter(|id| {
                writes.get(id).is_some_and(|w| {
                    w.iter()
                        .filter(|x| !matches!(x.op.outcome, Outcome::Fail { .. }))
                        .all(|x| std::ptr::eq(x.op, op) && x.batch == docs.len())
                })
            })
            .collect();
        for n in nodes {
            let there = alone
                .iter()
                .filter(|id| n.docs.get(**id).is_some_and(Option::is_some))
                .count();
            if there != 0 && there != alone.len() {
                found.push(anomaly(
                    "partial write",
                    format!(
                        "node {}: {there} of the {} documents of one timed-out ingest are there ({:?})",
                        n.node + 1,
                        alone.len(),
                        alone
                    ),
                ));
            }
        }
    }
    // collections
    let mut coll: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        match &op.kind {
            OpKind::CreateCollection { name } | OpKind::DropCollection { name } => {
                coll.entry(name).or_default().push(op)
            }
            _ => {}
        }
    }
    for (name, w) in coll {
        let created = w.iter().any(|o| {
            matches!(o.kind, OpKind::CreateCollection { .. })
                && matches!(o.outcome, Outcome::Ok { .. })
        });
        let dropped_ok = w.iter().any(|o| {
            matches!(o.kind, OpKind::DropCollection { .. })
                && matches!(o.outcome, Outcome::Ok { .. })
        });
        let maybe_dropped = w.iter().any(|o| {
            matches!(o.kind, OpKind::DropCollection { .. })
                && !matches!(o.outcome, Outcome::Fail { .. })
        });
        for n in nodes {
            let has = n.collections.contains(name);
            if created && !maybe_dropped && !has {
                found.push(anomaly(
                    "lost write",
                    format!(
                        "collection {name} was created, node {} does not have it",
                        n.node + 1
                    ),
                ));
            }
            if dropped_ok && has {
                found.push(anomaly(
                    "deleted document returned",
                    format!(
                        "collection {name} was dropped, node {} still has it",
                        n.node + 1
                    ),
                ));
            }
        }
    }
    // replicas
    if let Some(first) = nodes.first() {
        for n in &nodes[1..] {
            if (n.applied_index, &n.digest) != (first.applied_index, &first.digest) {
                found.push(anomaly(
                    "replicas differ",
                    format!(
                        "node {} at {} has digest {}, node {} at {} has {}",
                        first.node + 1,
                        first.applied_index,
                        first.digest,
                        n.node + 1,
                        n.applied_index,
                        n.digest
                    ),
                ));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    //! The checker must catch each anomaly it names: every test below feeds it a history with
    //! one, and the same history without it.
    use super::*;

    fn op(start: f64, end: f64, kind: OpKind, outcome: Outcome) -> Op {
        Op {
            client: 0,
            node: 0,
            start_ms: start,
            end_ms: end,
            kind,
            outcome,
            hits: Vec::new(),
            stale: false,
        }
    }

    fn ingest(start: f64, id: &str, text: &str, outcome: Outcome) -> Op {
        op(
            start,
            start + 5.0,
            OpKind::Ingest {
                docs: vec![(id.into(), text.into())],
            },
            outcome,
        )
    }

    fn ok(index: u64) -> Outcome {
        Outcome::Ok { index }
    }

    fn unknown() -> Outcome {
        Outcome::Unknown {
            message: "timed out".into(),
        }
    }

    fn done(start: f64, id: &str, index: u64) -> Op {
        op(
            start,
            start + 5.0,
            OpKind::JobDone {
                job: "j".into(),
                docs: vec![id.into()],
            },
            ok(index),
        )
    }

    fn read(
        start: f64,
        consistency: &str,
        min: Option<u64>,
        docs: &[&str],
        at: u64,
        hits: &[(&str, &str)],
    ) -> Op {
        let mut o = op(
            start,
            start + 5.0,
            OpKind::Search {
                consistency: consistency.into(),
                min_index: min,
                docs: docs.iter().map(|d| d.to_string()).collect(),
            },
            ok(at),
        );
        o.hits = hits
            .iter()
            .map(|(d, t)| Hit {
                doc: d.to_string(),
                chunk: 0,
                text: t.to_string(),
            })
            .collect();
        o
    }

    fn kinds(found: &[Anomaly]) -> Vec<&str> {
        found.iter().map(|a| a.kind.as_str()).collect()
    }

    #[test]
    fn a_read_that_misses_an_indexed_document_is_a_lost_write() {
        let base = vec![ingest(0.0, "a", "alpha", ok(5)), done(10.0, "a", 7)];
        let mut h = base.clone();
        h.push(read(20.0, "local", None, &["a"], 8, &[]));
        assert_eq!(kinds(&check_history(&h, &[])), ["lost write"]);
        // before the index it was indexed at, missing it is right
        let mut h = base.clone();
        h.push(read(20.0, "local", None, &["a"], 6, &[]));
        assert!(check_history(&h, &[]).is_empty());
        let mut h = base;
        h.push(read(20.0, "local", None, &["a"], 8, &[("a", "alpha")]));
        assert!(check_history(&h, &[]).is_empty());
    }

    #[test]
    fn a_deleted_document_that_comes_back_is_caught_in_reads_and_at_the_end() {
        let h = vec![
            ingest(0.0, "a", "alpha", ok(5)),
            done(10.0, "a", 7),
            op(20.0, 25.0, OpKind::Delete { doc: "a".into() }, ok(9)),
            read(30.0, "local", None, &["a"], 10, &[("a", "alpha")]),
        ];
        assert_eq!(
            kinds(&check_history(&h, &[])),
            ["deleted document returned"]
        );
        // a read at an index before the delete may still see it
        let mut early = h.clone();
        early[3] = read(30.0, "local", None, &["a"], 8, &[("a", "alpha")]);
        assert!(check_history(&early, &[]).is_empty());
        let node = |held: bool| FinalNode {
            node: 0,
            docs: [(
                "a".to_string(),
                held.then(|| FinalDoc {
                    state: "indexed".into(),
                    text: "alpha".into(),
                    chunks: 1,
                }),
            )]
            .into(),
            hits: if held {
                [(
                    "a".to_string(),
                    vec![Hit {
                        doc: "a".into(),
                        chunk: 0,
                        text: "alpha".into(),
                    }],
                )]
                .into()
            } else {
                BTreeMap::new()
            },
            ..FinalNode::default()
        };
        assert_eq!(
            kinds(&check_final(&early, &[node(true)])),
            ["deleted document returned"]
        );
        assert!(check_final(&early, &[node(false)]).is_empty());
    }

    #[test]
    fn a_strong_read_older_than_an_acknowledged_write_is_stale() {
        let h = vec![
            ingest(0.0, "a", "alpha", ok(12)),
            read(10.0, "strong", None, &["a"], 11, &[]),
        ];
        assert_eq!(kinds(&check_history(&h, &[])), ["stale strong read"]);
        // concurrent with the write (began before its acknowledgement): either is right
        let h = vec![
            ingest(0.0, "a", "alpha", ok(12)),
            read(3.0, "strong", None, &["a"], 11, &[]),
        ];
        assert!(check_history(&h, &[]).is_empty());
        // a local read may lag
        let h = vec![
            ingest(0.0, "a", "alpha", ok(12)),
            read(10.0, "local", None, &["a"], 11, &[]),
        ];
        assert!(check_history(&h, &[]).is_empty());
    }

    #[test]
    fn a_node_whose_reads_go_back_is_caught_unless_it_was_reset_between() {
        let h = vec![
            read(0.0, "local", None, &["a"], 20, &[]),
            read(10.0, "local", None, &["a"], 18, &[]),
        ];
        assert_eq!(kinds(&check_history(&h, &[])), ["read went back in time"]);
        let reset = Reset {
            node: 0,
            from_ms: 6.0,
            to_ms: 9.0,
        };
        assert!(check_history(&h, &[reset]).is_empty());
        // reads after the reset are still compared with each other; one during it is not checked
        let h = vec![
            read(0.0, "local", None, &["a"], 20, &[]),
            read(7.0, "local", None, &["a"], 5, &[]),
            read(10.0, "local", None, &["a"], 15, &[]),
            read(20.0, "local", None, &["a"], 12, &[]),
        ];
        let found = check_history(&h, &[reset]);
        assert_eq!(kinds(&found), ["read went back in time"]);
        assert!(found[0]
            .detail
            .contains("answered at 12 after answering at 15"));
        // overlapping reads are not ordered
        let h = vec![
            read(0.0, "local", None, &["a"], 20, &[]),
            read(2.0, "local", None, &["a"], 18, &[]),
        ];
        assert!(check_history(&h, &[]).is_empty());
        // another node may lag
        let mut other = read(10.0, "local", None, &["a"], 18, &[]);
        other.node = 1;
        let h = vec![read(0.0, "local", None, &["a"], 20, &[]), other];
        assert!(check_history(&h, &[]).is_empty());
    }

    #[test]
    fn a_min_index_read_that_goes_back_is_caught() {
        let h = vec![read(0.0, "local", Some(20), &["a"], 19, &[])];
        assert_eq!(kinds(&check_history(&h, &[])), ["min_index read went back"]);
        let h = vec![read(0.0, "local", Some(20), &["a"], 20, &[])];
        assert!(check_history(&h, &[]).is_empty());
    }

    #[test]
    fn a_hit_no_write_can_explain_is_caught() {
        // refused writes never happened
        let refused = Outcome::Fail {
            status: 429,
            message: "queue full".into(),
        };
        let h = vec![
            ingest(0.0, "a", "alpha", refused),
            read(10.0, "local", None, &["a"], 3, &[("a", "alpha")]),
        ];
        assert_eq!(kinds(&check_history(&h, &[])), ["phantom document"]);
        // a write still in flight may be seen
        let h = vec![
            ingest(0.0, "a", "alpha", unknown()),
            read(1.0, "local", None, &["a"], 3, &[("a", "alpha")]),
        ];
        assert!(check_history(&h, &[]).is_empty());
        let h = vec![
            ingest(0.0, "a", "alpha", ok(2)),
            read(10.0, "local", None, &["a"], 3, &[("a", "beta")]),
        ];
        assert_eq!(kinds(&check_history(&h, &[])), ["text never written"]);
        let mut twice = read(
            10.0,
            "local",
            None,
            &["a"],
            3,
            &[("a", "alpha"), ("a", "alpha")],
        );
        twice.kind = OpKind::Search {
            consistency: "local".into(),
            min_index: None,
            docs: vec!["a".into()],
        };
        let h = vec![ingest(0.0, "a", "alpha", ok(2)), twice];
        assert_eq!(kinds(&check_history(&h, &[])), ["duplicate chunk"]);
    }

    fn holding(docs: &[(&str, Option<&str>)]) -> FinalNode {
        FinalNode {
            node: 0,
            docs: docs
                .iter()
                .map(|(d, t)| {
                    (
                        d.to_string(),
                        t.map(|t| FinalDoc {
                            state: "indexed".into(),
                            text: t.into(),
                            chunks: 1,
                        }),
                    )
                })
                .collect(),
            hits: docs
                .iter()
                .filter_map(|(d, t)| {
                    t.map(|t| {
                        (
                            d.to_string(),
                            vec![Hit {
                                doc: d.to_string(),
                                chunk: 0,
                                text: t.into(),
                            }],
                        )
                    })
                })
                .collect(),
            ..FinalNode::default()
        }
    }

    #[test]
    fn at_the_end_acknowledged_versions_are_kept_and_maybes_are_all_or_nothing() {
        let h = vec![
            ingest(0.0, "a", "v1", ok(2)),
            ingest(10.0, "a", "v2", ok(4)),
            ingest(20.0, "a", "v3", unknown()),
        ];
        assert!(check_final(&h, &[holding(&[("a", Some("v2"))])]).is_empty());
        assert!(check_final(&h, &[holding(&[("a", Some("v3"))])]).is_empty());
        assert_eq!(
            kinds(&check_final(&h, &[holding(&[("a", Some("v1"))])])),
            ["wrong version"]
        );
        assert_eq!(
            kinds(&check_final(&h, &[holding(&[("a", None)])])),
            ["lost write"]
        );
        // two new documents in one timed-out request: both or neither
        let h = vec![op(
            0.0,
            5.0,
            OpKind::Ingest {
                docs: vec![("x".into(), "x1".into()), ("y".into(), "y1".into())],
            },
            unknown(),
        )];
        assert!(check_final(&h, &[holding(&[("x", None), ("y", None)])]).is_empty());
        assert!(check_final(&h, &[holding(&[("x", Some("x1")), ("y", Some("y1"))])]).is_empty());
        assert_eq!(
            kinds(&check_final(
                &h,
                &[holding(&[("x", Some("x1")), ("y", None)])]
            )),
            ["partial write"]
        );
    }

    #[test]
    fn a_document_indexed_twice_or_a_chunk_without_its_document_is_caught() {
        let h = vec![ingest(0.0, "a", "alpha", ok(2))];
        let mut n = holding(&[("a", Some("alpha"))]);
        n.hits.get_mut("a").unwrap().push(Hit {
            doc: "a".into(),
            chunk: 0,
            text: "alpha".into(),
        });
        assert!(kinds(&check_final(&h, &[n])).contains(&"indexed twice"));
        let h = vec![ingest(0.0, "a", "alpha", unknown())];
        let mut n = holding(&[("a", None)]);
        n.hits.insert(
            "a".into(),
            vec![Hit {
                doc: "a".into(),
                chunk: 0,
                text: "alpha".into(),
            }],
        );
        assert_eq!(kinds(&check_final(&h, &[n])), ["chunk without document"]);
    }

    #[test]
    fn replicas_with_different_digests_are_caught() {
        let h = vec![ingest(0.0, "a", "alpha", ok(2))];
        let mut a = holding(&[("a", Some("alpha"))]);
        a.applied_index = 9;
        a.digest = "d1".into();
        let mut b = a.clone();
        b.node = 1;
        assert!(check_final(&h, &[a.clone(), b.clone()]).is_empty());
        b.digest = "d2".into();
        assert_eq!(kinds(&check_final(&h, &[a, b])), ["replicas differ"]);
    }
}
