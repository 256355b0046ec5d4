//! Indexes of metadata values, so that a filtered search finds the points a filter matches
//! without evaluating it on every point.
//!
//! A field is indexed the first time a filter names it (built from the points' payloads with the
//! same key lookup the filter uses) and kept up to date by every insert and delete after that;
//! document ids likewise. For each field: the points by scalar value (strings, numbers, booleans;
//! each element of an array), the points by numeric value in order (for ranges), and the points
//! where the field is present. An index only narrows the candidates: conditions it cannot answer
//! (`ne`, `exists: false`) are evaluated on those candidates by the filter itself.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;

use serde_json::Value;

use crate::filter::{any_scalar, lookup, Condition, Filter};
use crate::{Payload, PointId};

/// Fields indexed per shard at most; filters on further fields are evaluated point by point.
pub(crate) const MAX_INDEXED_FIELDS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Str(Box<str>),
    /// f64 bits (-0 stored as 0: the filter compares numbers as f64).
    Num(u64),
    Bool(bool),
}

fn num_bits(x: f64) -> u64 {
    Num::new(x).0.to_bits()
}

fn key(v: &Value) -> Option<Key> {
    match v {
        Value::String(s) => Some(Key::Str(s.as_str().into())),
        Value::Number(n) => n.as_f64().map(|x| Key::Num(num_bits(x))),
        Value::Bool(b) => Some(Key::Bool(*b)),
        _ => None,
    }
}

/// An f64 ordered by `total_cmp` (-0 and 0 stored as one).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Num(f64);

impl Num {
    /// -0 as 0: the filter compares numbers as f64, where they are equal.
    fn new(x: f64) -> Num {
        Num(if x == 0.0 { 0.0 } else { x })
    }
}
impl Eq for Num {}
impl PartialOrd for Num {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Num {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Sorted, without duplicates.
type Postings = Vec<PointId>;

fn add(list: &mut Postings, id: PointId) {
    match list.last() {
        Some(&last) if last < id => list.push(id),
        None => list.push(id),
        _ => {
            if let Err(at) = list.binary_search(&id) {
                list.insert(at, id);
            }
        }
    }
}

fn remove(list: &mut Postings, id: PointId) {
    if let Ok(at) = list.binary_search(&id) {
        list.remove(at);
    }
}

fn union(lists: Vec<&Postings>) -> Postings {
    match lists.len() {
        0 => Vec::new(),
        1 => lists[0].clone(),
        _ => {
            let mut all: Vec<PointId> = lists.into_iter().flatten().copied().collect();
            all.sort_unstable();
            all.dedup();
            all
        }
    }
}

fn intersect(a: &[PointId], b: &[PointId]) -> Postings {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    small
        .iter()
        .copied()
        .filter(|id| large.binary_search(id).is_ok())
        .collect()
}

#[derive(Default)]
struct FieldIndex {
    by_value: HashMap<Key, Postings>,
    by_number: BTreeMap<Num, Postings>,
    present: Postings,
}

impl FieldIndex {
    fn change(&mut self, id: PointId, value: Option<&Value>, insert: bool) {
        let Some(v) = value.filter(|v| !v.is_null()) else {
            return;
        };
        let num = Num::new;
        if insert {
            add(&mut self.present, id);
            any_scalar(v, |e| {
                if let Some(k) = key(e) {
                    add(self.by_value.entry(k).or_default(), id);
                }
                if let Some(x) = e.as_f64() {
                    add(self.by_number.entry(num(x)).or_default(), id);
                }
            });
            return;
        }
        // Removal touches only the point's own values (a list left empty goes with its key), so
        // a delete costs the same however many distinct values the field has.
        remove(&mut self.present, id);
        any_scalar(v, |e| {
            if let Some(k) = key(e) {
                if let Some(list) = self.by_value.get_mut(&k) {
                    remove(list, id);
                    if list.is_empty() {
                        self.by_value.remove(&k);
                    }
                }
            }
            if let Some(x) = e.as_f64() {
                let n = num(x);
                if let Some(list) = self.by_number.get_mut(&n) {
                    remove(list, id);
                    if list.is_empty() {
                        self.by_number.remove(&n);
                    }
                }
            }
        });
    }

    /// The points that satisfy `cond`, if this index can tell (exactly).
    fn matching(&self, cond: &Condition) -> Option<Postings> {
        let empty = Vec::new();
        let get = |v: &Value| key(v).and_then(|k| self.by_value.get(&k)).unwrap_or(&empty);
        match cond {
            Condition::Equals(x) => Some(get(x).clone()),
            Condition::In(xs) => Some(union(xs.iter().map(get).collect())),
            Condition::Exists(true) => Some(self.present.clone()),
            Condition::Range(r) => {
                // (-0 as 0, as the stored numbers: the filter compares them as equal)
                let zero = |b: Option<f64>| b.map(|x| Num::new(x).0);
                let r = crate::Range {
                    gt: zero(r.gt),
                    gte: zero(r.gte),
                    lt: zero(r.lt),
                    lte: zero(r.lte),
                };
                let lo = match (r.gt, r.gte) {
                    (Some(a), Some(b)) if a >= b => Bound::Excluded(Num(a)),
                    (_, Some(b)) => Bound::Included(Num(b)),
                    (Some(a), None) => Bound::Excluded(Num(a)),
                    (None, None) => Bound::Unbounded,
                };
                let hi = match (r.lt, r.lte) {
                    (Some(a), Some(b)) if a <= b => Bound::Excluded(Num(a)),
                    (_, Some(b)) => Bound::Included(Num(b)),
                    (Some(a), None) => Bound::Excluded(Num(a)),
                    (None, None) => Bound::Unbounded,
                };
                if !valid_range(&lo, &hi) {
                    return Some(Vec::new());
                }
                Some(union(
                    self.by_number.range((lo, hi)).map(|(_, l)| l).collect(),
                ))
            }
            Condition::NotEquals(_) | Condition::Exists(false) => None,
        }
    }
}

/// BTreeMap::range panics on a range whose start is after its end.
fn valid_range(lo: &Bound<Num>, hi: &Bound<Num>) -> bool {
    match (lo, hi) {
        (Bound::Included(a), Bound::Included(b)) => a <= b,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => a < b,
        _ => true,
    }
}

/// What the index makes of a filter.
pub(crate) enum Narrowed {
    /// Exactly the points the filter matches.
    Exact(Postings),
    /// A superset of them: evaluate the filter on these.
    Candidates(Postings),
}

#[derive(Default)]
pub(crate) struct PayloadIndex {
    fields: HashMap<String, FieldIndex>,
    documents: Option<HashMap<String, Postings>>,
}

/// The fields and document index a filter needs that are not built yet.
#[derive(Default)]
pub(crate) struct Missing {
    pub fields: Vec<String>,
    pub documents: bool,
}

impl Missing {
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && !self.documents
    }
}

fn indexable(cond: &Condition) -> bool {
    !matches!(cond, Condition::NotEquals(_) | Condition::Exists(false))
}

impl PayloadIndex {
    /// What `filter` would use that is not indexed yet (within [`MAX_INDEXED_FIELDS`]).
    pub fn missing(&self, filter: &Filter) -> Missing {
        let mut m = Missing {
            documents: filter.document_ids.is_some() && self.documents.is_none(),
            ..Missing::default()
        };
        for (field, cond) in &filter.conditions {
            if indexable(cond)
                && !self.fields.contains_key(field)
                && !m.fields.contains(field)
                && self.fields.len() + m.fields.len() < MAX_INDEXED_FIELDS
            {
                m.fields.push(field.clone());
            }
        }
        m
    }

    /// Indexes for `missing`, built from every live point's payload.
    pub fn build<'a>(
        missing: &Missing,
        points: impl Iterator<Item = (PointId, &'a Payload)>,
    ) -> PayloadIndex {
        let mut built = PayloadIndex {
            fields: missing
                .fields
                .iter()
                .map(|f| (f.clone(), FieldIndex::default()))
                .collect(),
            documents: missing.documents.then(HashMap::new),
        };
        let mut points: Vec<(PointId, &Payload)> = points.collect();
        points.sort_unstable_by_key(|p| p.0);
        for (id, payload) in points {
            built.change(id, payload, true);
        }
        built
    }

    /// Take in indexes built by [`PayloadIndex::build`].
    pub fn install(&mut self, built: PayloadIndex) {
        for (field, index) in built.fields {
            if self.fields.len() < MAX_INDEXED_FIELDS {
                self.fields.entry(field).or_insert(index);
            }
        }
        if self.documents.is_none() {
            self.documents = built.documents;
        }
    }

    /// Record a point's values (`insert`) or forget them.
    pub fn change(&mut self, id: PointId, payload: &Payload, insert: bool) {
        for (field, index) in self.fields.iter_mut() {
            index.change(id, lookup(&payload.metadata, field), insert);
        }
        if let Some(docs) = self.documents.as_mut() {
            if insert {
                add(docs.entry(payload.doc_id.clone()).or_default(), id);
            } else if let Some(list) = docs.get_mut(&payload.doc_id) {
                remove(list, id);
                if list.is_empty() {
                    docs.remove(&payload.doc_id);
                }
            }
        }
    }

    /// The points `filter` may match, from the indexes built so far; None when none applies.
    pub fn narrow(&self, filter: &Filter) -> Option<Narrowed> {
        let mut lists: Vec<Postings> = Vec::new();
        let mut exact = true;
        if let Some(ids) = &filter.document_ids {
            match &self.documents {
                Some(docs) => {
                    let empty = Vec::new();
                    let set: HashSet<&String> = ids.iter().collect();
                    lists.push(union(
                        set.into_iter()
                            .map(|d| docs.get(d).unwrap_or(&empty))
                            .collect(),
                    ));
                }
                None => exact = false,
            }
        }
        for (field, cond) in &filter.conditions {
            match self.fields.get(field).and_then(|f| f.matching(cond)) {
                Some(list) => lists.push(list),
                None => exact = false,
            }
        }
        lists.sort_by_key(Vec::len);
        let mut lists = lists.into_iter();
        let mut out = lists.next()?;
        for l in lists {
            if out.is_empty() {
                break;
            }
            out = intersect(&out, &l);
        }
        Some(if exact {
            Narrowed::Exact(out)
        } else {
            Narrowed::Candidates(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload(doc: &str, meta: Value) -> Payload {
        Payload {
            doc_id: doc.into(),
            metadata: meta.as_object().unwrap().clone(),
        }
    }

    /// Points with varied metadata; the index's answer must equal the filter's own on each.
    #[test]
    fn narrowing_agrees_with_the_filter_on_every_kind_of_condition() {
        let points: Vec<(PointId, Payload)> = (0..400u64)
            .map(|i| {
                let meta = match i % 5 {
                    0 => json!({"lang": "en", "year": 1990 + (i % 40), "tags": ["a", "b"], "n": {"x": i % 3}}),
                    1 => json!({"lang": "fr", "year": (1990 + (i % 40)) as f64 + 0.5, "tags": "a"}),
                    2 => json!({"lang": null, "year": "old", "flag": true, "a.b": 1}),
                    3 => json!({"flag": false, "tags": [], "year": -0.0}),
                    _ => json!({"lang": "en", "n": {"x": 0}, "a": {"b": 2}}),
                };
                (i, payload(&format!("doc-{}", i % 7), meta))
            })
            .collect();
        let filters = [
            json!({"metadata": {"lang": "en"}}),
            json!({"metadata": {"lang": {"in": ["fr", "de"]}}}),
            json!({"metadata": {"year": {"gte": 2000, "lt": 2010.5}}}),
            json!({"metadata": {"year": {"gt": 2000, "gte": 1995}}}),
            json!({"metadata": {"year": {"gt": 10, "lt": 5}}}),
            json!({"metadata": {"year": 0}}),
            json!({"metadata": {"year": {"gt": -0.0}}}),
            json!({"metadata": {"year": {"lte": -0.0}}}),
            json!({"metadata": {"year": {"gte": 0, "lte": -0.0}}}),
            json!({"metadata": {"tags": "b", "lang": "en"}}),
            json!({"metadata": {"flag": {"exists": true}}}),
            json!({"metadata": {"flag": {"exists": false}}}),
            json!({"metadata": {"lang": {"ne": "en"}, "flag": true}}),
            json!({"metadata": {"n.x": 0}}),
            json!({"metadata": {"a.b": {"in": [1, 2]}}}),
            json!({"document_id": ["doc-1", "doc-3"], "metadata": {"lang": "en"}}),
            json!({"document_id": "doc-2"}),
            json!({"metadata": {"lang": {"ne": "en"}}}),
        ];
        let mut index = PayloadIndex::default();
        // half the points before the index is built, half after (kept up to date), a few
        // removed again
        for f in &filters {
            let f = Filter::from_json(f).unwrap();
            let missing = index.missing(&f);
            let built = PayloadIndex::build(&missing, points[..200].iter().map(|(i, p)| (*i, p)));
            index.install(built);
        }
        for (i, p) in &points[200..] {
            index.change(*i, p, true);
        }
        for (i, p) in points.iter().step_by(9) {
            index.change(*i, p, false);
        }
        let live: Vec<&(PointId, Payload)> = points.iter().filter(|(i, _)| i % 9 != 0).collect();
        for f in &filters {
            let filter = Filter::from_json(f).unwrap();
            let want: Vec<PointId> = live
                .iter()
                .filter(|(_, p)| filter.matches(&p.doc_id, &p.metadata))
                .map(|(i, _)| *i)
                .collect();
            match index.narrow(&filter) {
                Some(Narrowed::Exact(got)) => assert_eq!(got, want, "{f}"),
                Some(Narrowed::Candidates(c)) => {
                    assert!(
                        want.iter().all(|w| c.contains(w)),
                        "{f}: a match is missing"
                    );
                    assert!(c.len() < live.len(), "{f}: narrowed nothing");
                }
                None => {
                    // only filters with nothing indexable
                    assert!(filter.conditions.iter().all(|(_, c)| !indexable(c)), "{f}")
                }
            }
        }
    }

    #[test]
    fn at_most_the_field_limit_is_indexed() {
        let mut index = PayloadIndex::default();
        let meta: serde_json::Map<String, Value> =
            (0..100).map(|i| (format!("f{i}"), json!(i))).collect();
        let p = Payload {
            doc_id: "d".into(),
            metadata: meta.clone(),
        };
        for i in 0..100 {
            let f = Filter::from_json(&json!({"metadata": {format!("f{i}"): i}})).unwrap();
            let missing = index.missing(&f);
            index.install(PayloadIndex::build(&missing, [(1, &p)].into_iter()));
        }
        assert_eq!(index.fields.len(), MAX_INDEXED_FIELDS);
    }
}
