//! A shard's live points: each one's payload and graph node by point id, and beside them the
//! nodes again in a flat array indexed by id.
//!
//! A filtered search turns the point ids its filter matches (sorted, from the payload index) into
//! graph nodes. Through the hash table that was one cache miss per match, about 18 ns each on
//! 100,000 points: most of a filter's cost the first time it is seen, and every time for filters
//! that change with each query (a tenant's, among many). Point ids are handed out in sequence, so
//! a shard's ids lie close together: the flat array finds the nodes of sorted ids in one pass
//! over it, at 4 bytes per id in its range. The range may span at most `SPREAD` times the live
//! points plus `SPARE`: past that the array is made again from the smallest live id, or, if the
//! ids still span too far, turned off (lookups go through the hash table) and tried again after
//! as many changes as there are live points.

use std::collections::HashMap;
use std::sync::Arc;

use crate::graph::Slot;
use crate::shard::Payload;
use crate::PointId;

pub(crate) struct Entry {
    /// Where the point sits in the current graph (its vector is read from there); None for the
    /// moment between its entry in the table and its insertion in the graph.
    pub slot: Option<Slot>,
    pub payload: Arc<Payload>,
}

/// Point ids are numbers handed out in sequence: a multiplicative hash spreads them well, at a
/// fraction of the default (DoS-resistant) hasher's cost.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ *b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, id: u64) {
        self.0 = (id ^ self.0)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }
}

pub(crate) type IdMap<V> = HashMap<PointId, V, std::hash::BuildHasherDefault<IdHasher>>;

/// The flat array's ids may span at most this many times the live points, plus `SPARE`.
const SPREAD: u64 = 4;
const SPARE: u64 = 4096;
/// In the flat array: no live point with this id, or one not in the graph yet.
const NO_SLOT: Slot = Slot::MAX;

/// The live points. Reads go through `Deref` to the map; every change goes through the methods
/// here, which keep the flat array equal to the map's slots.
#[derive(Default)]
pub(crate) struct Live {
    map: IdMap<Entry>,
    flat: Flat,
}

#[derive(Default)]
struct Flat {
    /// Whether `slots` holds every live id (false: ids spread too far, or none yet made).
    on: bool,
    /// The id of `slots[0]`.
    base: PointId,
    slots: Vec<Slot>,
    /// While off: changes to the live points left before it is tried again (after as many
    /// changes as there were live points, so that the tries cost O(1) a change).
    retry_after: usize,
    /// Times it was made from the map, and slots written or copied by remakes and front
    /// growth (for tests: the cost stays linear in the changes).
    #[cfg(test)]
    remakes: usize,
    #[cfg(test)]
    copied: usize,
}

impl std::ops::Deref for Live {
    type Target = IdMap<Entry>;
    fn deref(&self) -> &IdMap<Entry> {
        &self.map
    }
}

impl FromIterator<(PointId, Entry)> for Live {
    fn from_iter<I: IntoIterator<Item = (PointId, Entry)>>(iter: I) -> Live {
        let mut live = Live {
            map: iter.into_iter().collect(),
            flat: Flat::default(),
        };
        live.remake();
        live
    }
}

impl Live {
    /// Add or replace a point.
    pub fn insert(&mut self, id: PointId, entry: Entry) {
        let slot = entry.slot;
        self.map.insert(id, entry);
        self.set_flat(id, true, slot);
    }

    /// Record where a live point sits in the graph (nothing if it is no longer live).
    pub fn place(&mut self, id: PointId, slot: Slot) {
        if let Some(e) = self.map.get_mut(&id) {
            e.slot = Some(slot);
            self.set_flat(id, true, Some(slot));
        }
    }

    pub fn remove(&mut self, id: PointId) -> Option<Entry> {
        let entry = self.map.remove(&id)?;
        self.set_flat(id, false, None);
        // Many removed: an array far longer than the live points allow is made again (smaller,
        // or off), so memory follows the live points down. Once per halving of them.
        if self.flat.on && !self.span_allowed(self.flat.slots.len() as u64 / 2) {
            self.remake();
        }
        Some(entry)
    }

    /// Every live point moved to a new graph: its node there is `slot_of(id)`.
    pub fn replace_slots(&mut self, slot_of: impl Fn(PointId) -> Option<Slot>) {
        for (id, e) in self.map.iter_mut() {
            e.slot = slot_of(*id);
        }
        self.remake();
    }

    /// The graph node of live point `id`, if it is in the graph.
    #[inline]
    pub fn slot(&self, id: PointId) -> Option<Slot> {
        if self.flat.on {
            // every live id is inside the array: one outside is not live
            let at = id.checked_sub(self.flat.base)?;
            let slot = *self.flat.slots.get(usize::try_from(at).ok()?)?;
            return (slot != NO_SLOT).then_some(slot);
        }
        self.map.get(&id).and_then(|e| e.slot)
    }

    /// Bytes the flat array takes.
    pub fn flat_bytes(&self) -> usize {
        self.flat.slots.capacity() * std::mem::size_of::<Slot>()
    }

    /// The most ids the array may span for the live points.
    fn allowance(&self) -> u64 {
        SPREAD * self.map.len() as u64 + SPARE
    }

    /// Whether an array of `span` ids is small enough for the live points.
    fn span_allowed(&self, span: u64) -> bool {
        span <= self.allowance()
    }

    /// Record `id`'s slot (or that it is gone) in the flat array, after the map has changed:
    /// `live` says whether the map holds `id` now.
    fn set_flat(&mut self, id: PointId, live: bool, slot: Option<Slot>) {
        let value = slot.unwrap_or(NO_SLOT);
        if !self.flat.on {
            if self.flat.retry_after == 0 {
                self.remake();
            } else {
                self.flat.retry_after -= 1;
            }
            return;
        }
        let Some(at) = id.checked_sub(self.flat.base) else {
            // below the array (only a live id: every one is inside)
            if live {
                self.grow_front(id, value);
            }
            return;
        };
        if let Some(cell) = usize::try_from(at)
            .ok()
            .and_then(|at| self.flat.slots.get_mut(at))
        {
            *cell = value;
            return;
        }
        if !live {
            return; // not live, and outside the array: nothing to record
        }
        // past the end: grow to it while the span stays small, else make it again (the smallest
        // live id may have moved up since)
        if self.span_allowed(at.saturating_add(1)) {
            self.flat.slots.resize(at as usize + 1, NO_SLOT);
            self.flat.slots[at as usize] = value;
        } else {
            self.remake();
        }
    }

    /// A live id below the array: grow it at the front, by its length if there is room (so
    /// that ids arriving in descending order cost O(1) each, as a `Vec` grows at its end: the
    /// room ahead is spare capacity, up to twice the allowance), or make it again if even the
    /// ids it must cover would span too far.
    fn grow_front(&mut self, id: PointId, value: Slot) {
        let len = self.flat.slots.len() as u64;
        let need = self.flat.base - id; // (at most base: ids are not negative)
        if !self.span_allowed(len.saturating_add(need)) {
            self.remake();
            return;
        }
        // len + need is within the allowance A, so 2A - len is at least need
        let pad = need
            .max(len)
            .min(self.flat.base)
            .min(2 * self.allowance() - len);
        let mut slots = Vec::with_capacity((pad + len) as usize);
        slots.resize(pad as usize, NO_SLOT);
        slots.extend_from_slice(&self.flat.slots);
        #[cfg(test)]
        {
            self.flat.copied += slots.len();
        }
        self.flat.base -= pad;
        slots[(id - self.flat.base) as usize] = value;
        self.flat.slots = slots;
    }

    /// Make the flat array from the map: from its smallest id to its largest, or off when they
    /// span too far (tried again after as many changes as there are live points).
    fn remake(&mut self) {
        self.flat = Flat {
            #[cfg(test)]
            remakes: self.flat.remakes + 1,
            #[cfg(test)]
            copied: self.flat.copied + self.map.len(),
            ..Flat::default()
        };
        let Some((min, max)) = self.map.keys().fold(None, |range, &id| match range {
            None => Some((id, id)),
            Some((lo, hi)) => Some((id.min(lo), id.max(hi))),
        }) else {
            return; // none live: made again at the next change
        };
        let span = (max - min).saturating_add(1);
        if !self.span_allowed(span) {
            self.flat.retry_after = self.map.len();
            return;
        }
        let mut slots = vec![NO_SLOT; span as usize];
        #[cfg(test)]
        {
            self.flat.copied += slots.len();
        }
        for (id, e) in &self.map {
            slots[(id - min) as usize] = e.slot.unwrap_or(NO_SLOT);
        }
        self.flat.on = true;
        self.flat.base = min;
        self.flat.slots = slots;
    }

    /// Test: whether the flat array is in use, and equal to the map's slots.
    #[cfg(test)]
    pub fn check(&self) -> bool {
        if !self.flat.on {
            return false;
        }
        let mut count = 0;
        for (i, &s) in self.flat.slots.iter().enumerate() {
            let id = self.flat.base + i as u64;
            match self.map.get(&id) {
                Some(e) => assert_eq!(e.slot.unwrap_or(NO_SLOT), s, "id {id}"),
                None => assert_eq!(s, NO_SLOT, "id {id} is not live"),
            }
            count += self.map.contains_key(&id) as usize;
        }
        assert_eq!(count, self.map.len(), "a live id outside the flat array");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(slot: Option<Slot>) -> Entry {
        Entry {
            slot,
            payload: Arc::new(Payload {
                doc_id: String::new(),
                metadata: Default::default(),
            }),
        }
    }

    /// Every id from 0 to past the largest looks up as the map says.
    fn lookups_agree(live: &Live) {
        let max = live.keys().max().copied().unwrap_or(0);
        for probe in 0..max + 10 {
            assert_eq!(
                live.slot(probe),
                live.map.get(&probe).and_then(|e| e.slot),
                "id {probe}"
            );
        }
    }

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Inserts, placements, removals, replacements and the odd no-op, in a random order, ids
    /// handed out in sequence with gaps: the flat array stays on and equal to the map.
    #[test]
    fn the_flat_array_follows_every_change() {
        let mut live = Live::default();
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let mut id = 1_000u64;
        let mut ids = Vec::new();
        let mut gone = Vec::new();
        for step in 0..20_000u32 {
            match rng.below(12) {
                0..=4 => {
                    id += 1 + rng.below(3);
                    live.insert(id, entry(None));
                    ids.push(id);
                }
                5..=7 if !ids.is_empty() => {
                    let i = ids[rng.below(ids.len() as u64) as usize];
                    live.place(i, step);
                }
                8 if !ids.is_empty() => {
                    // replaced: an id inserted again with a slot
                    let i = ids[rng.below(ids.len() as u64) as usize];
                    live.insert(i, entry(Some(step)));
                }
                9 if !gone.is_empty() => {
                    // a removed point: placing it or removing it again changes nothing
                    let i = gone[rng.below(gone.len() as u64) as usize];
                    live.place(i, step);
                    assert!(live.remove(i).is_none());
                }
                _ if !ids.is_empty() => {
                    let i = ids.swap_remove(rng.below(ids.len() as u64) as usize);
                    assert!(live.remove(i).is_some());
                    gone.push(i);
                }
                _ => {}
            }
            if step % 100 == 0 {
                assert!(live.check(), "step {step}");
            }
        }
        assert!(live.check());
        lookups_agree(&live);
        // a compaction: every slot new, the array made again from the smallest live id
        live.replace_slots(|id| Some(id as Slot));
        assert!(live.check());
        assert_eq!(live.flat.base, *live.keys().min().unwrap());
        // all removed, then a new point
        for i in ids {
            live.remove(i);
        }
        assert!(live.is_empty());
        live.insert(7, entry(Some(3)));
        assert!(live.check());
        assert_eq!(live.slot(7), Some(3));
    }

    /// A window of live ids sliding up (the newest inserted, the oldest removed): the array
    /// moves with it (made again from the new smallest id when it would grow too long), stays
    /// on, and its length stays within the allowance.
    #[test]
    fn a_sliding_window_of_ids_keeps_the_array_short() {
        let mut live = Live::default();
        let window = 1_000u64;
        for id in 0..200_000u64 {
            live.insert(id, entry(Some(id as Slot)));
            if id >= window {
                live.remove(id - window);
            }
            if id % 997 == 0 {
                assert!(live.check(), "id {id}");
            }
        }
        assert!(live.check());
        assert!(live.flat.slots.len() as u64 <= SPREAD * window + SPARE);
        assert!(live.flat.base >= 200_000 - window - SPREAD * window - SPARE);
        // made again now and then, not at every insert
        assert!(live.flat.remakes < 100, "{} remakes", live.flat.remakes);
        lookups_agree(&live);
    }

    /// Ids in descending order (one apart, three apart), shuffled, and a window sliding down:
    /// the array grows at its front a doubling at a time, and the slots written or copied stay
    /// within a few times the changes made.
    #[test]
    fn any_order_of_ids_costs_linear_work() {
        let linear = |live: &Live, changes: usize, what: &str| {
            assert!(live.check(), "{what}");
            assert!(
                live.flat.copied <= 16 * changes,
                "{what}: {} slots written for {changes} changes",
                live.flat.copied
            );
            lookups_agree(live);
        };
        for step in [1u64, 3] {
            let mut live = Live::default();
            let ids: Vec<u64> = (0..100_000u64).rev().map(|i| 1_000 + i * step).collect();
            for &id in &ids {
                live.insert(id, entry(Some(id as Slot)));
            }
            linear(&live, ids.len(), &format!("descending, {step} apart"));
            assert!(live.flat.remakes <= 3, "{} remakes", live.flat.remakes);
        }
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut ids: Vec<u64> = (0..100_000u64).collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut live = Live::default();
        for &id in &ids {
            live.insert(id, entry(Some(id as Slot)));
        }
        linear(&live, ids.len(), "shuffled");
        let mut live = Live::default();
        let window = 2_000u64;
        let top = 300_000u64;
        for (n, id) in (0..top).rev().enumerate() {
            live.insert(id, entry(Some(id as Slot)));
            if id + window < top {
                live.remove(id + window);
            }
            if n % 4_999 == 0 {
                assert!(live.check(), "window at {id}");
            }
        }
        linear(&live, 2 * top as usize, "a window sliding down");
    }

    /// Ids far apart turn the array off (lookups still right, through the map); it comes back
    /// within as many changes as there are live points once they are close again, including
    /// when the live count does not grow (one old id kept while others are replaced).
    #[test]
    fn ids_spread_far_apart_turn_the_array_off_and_on() {
        let mut live = Live::default();
        live.insert(5, entry(Some(0)));
        live.insert(6, entry(Some(1)));
        assert!(live.check());
        live.insert(u64::MAX / 2, entry(Some(2)));
        assert!(!live.flat.on);
        assert_eq!(live.flat_bytes(), 0);
        assert_eq!(live.slot(6), Some(1));
        assert_eq!(live.slot(u64::MAX / 2), Some(2));
        assert_eq!(live.slot(7), None);
        live.remove(u64::MAX / 2);
        for i in 7..12 {
            live.insert(i, entry(Some(i as Slot)));
        }
        assert!(live.check(), "made again within a few changes");
        // below the array: grown at its front
        live.insert(1, entry(Some(40)));
        assert!(live.check());
        assert_eq!(live.slot(1), Some(40));

        // one old point kept, 100 others replaced by new ids again and again: the span passes
        // the allowance and the array goes off; once the old point goes, it comes back
        let mut live = Live::default();
        live.insert(0, entry(Some(0)));
        let mut next = 1u64;
        let mut current: Vec<u64> = Vec::new();
        for _ in 0..100 {
            live.insert(next, entry(Some(next as Slot)));
            current.push(next);
            next += 1;
        }
        let remakes = live.flat.remakes;
        while live.flat.on {
            let old = current.remove(0);
            live.remove(old);
            live.insert(next, entry(Some(next as Slot)));
            current.push(next);
            next += 1;
            assert!(next < 100_000, "the array never went off");
        }
        lookups_agree(&live);
        // while off, 300 changes try it again at most a few times (every as many changes as
        // there are live points, not at every change)
        let off_at = live.flat.remakes;
        for _ in 0..150 {
            let old = current.remove(0);
            live.remove(old);
            live.insert(next, entry(Some(next as Slot)));
            current.push(next);
            next += 1;
        }
        assert!(!live.flat.on);
        assert!(
            live.flat.remakes - off_at <= 3,
            "{} tries",
            live.flat.remakes - off_at
        );
        assert!(live.flat.remakes > remakes);
        live.remove(0);
        for _ in 0..2 * current.len() + 2 {
            let old = current.remove(0);
            live.remove(old);
            live.insert(next, entry(Some(next as Slot)));
            current.push(next);
            next += 1;
        }
        assert!(live.check(), "on again once the ids are close");
        lookups_agree(&live);
    }

    /// Most points removed: the array shrinks with them.
    #[test]
    fn memory_follows_the_live_points_down() {
        let mut live = Live::default();
        for id in 0..100_000u64 {
            live.insert(id, entry(Some(id as Slot)));
        }
        let full = live.flat_bytes();
        assert!(full >= 400_000);
        for id in 0..99_990u64 {
            live.remove(id);
        }
        assert!(live.check());
        assert!(
            live.flat_bytes() <= 4 * (SPARE as usize + 4 * 10) * 2,
            "{}",
            live.flat_bytes()
        );
        lookups_agree(&live);
    }
}
