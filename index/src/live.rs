//! A shard's live points: each one's payload and graph node by point id, and beside them the
//! nodes again in a flat array indexed by id.
//!
//! A filtered search turns the point ids its filter matches (sorted, from the payload index) into
//! graph nodes. Through the hash table that was one cache miss per match, about 18 ns each on
//! 100,000 points: most of a filter's cost the first time it is seen, and every time for filters
//! that change with each query (a tenant's, among many). Point ids are handed out in sequence, so
//! a shard's ids lie close together: the flat array finds the nodes of sorted ids in one pass
//! over it, at 4 bytes per id in its range. Ids spread too far apart (more than `SPREAD` times
//! as many as are live) leave the array off, and lookups go through the hash table.

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
    /// While off: the number of live points at which to try making it again.
    retry_at: usize,
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
        self.set_flat(id, slot);
    }

    /// Record where a live point sits in the graph (nothing if it is no longer live).
    pub fn place(&mut self, id: PointId, slot: Slot) {
        if let Some(e) = self.map.get_mut(&id) {
            e.slot = Some(slot);
            self.set_flat(id, Some(slot));
        }
    }

    pub fn remove(&mut self, id: PointId) -> Option<Entry> {
        let entry = self.map.remove(&id)?;
        self.set_flat(id, None);
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

    /// Whether an array of `span` ids is small enough for the live points.
    fn span_allowed(&self, span: u64) -> bool {
        span <= SPREAD * self.map.len() as u64 + SPARE
    }

    fn set_flat(&mut self, id: PointId, slot: Option<Slot>) {
        let value = slot.unwrap_or(NO_SLOT);
        if !self.flat.on {
            if self.map.len() >= self.flat.retry_at {
                self.remake();
            }
            return;
        }
        let Some(at) = id.checked_sub(self.flat.base) else {
            // below the array: make it again from the smallest live id
            if slot.is_some() || self.map.contains_key(&id) {
                self.remake();
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
        if !self.map.contains_key(&id) {
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

    /// Make the flat array from the map: from its smallest id to its largest, or off when they
    /// span too far (tried again once the live points have doubled).
    fn remake(&mut self) {
        self.flat = Flat::default();
        let (Some(&min), Some(&max)) = (self.map.keys().min(), self.map.keys().max()) else {
            // none live: start again from the next id
            self.flat.retry_at = 1;
            return;
        };
        let span = (max - min).saturating_add(1);
        if !self.span_allowed(span) {
            self.flat.retry_at = self.map.len() * 2;
            return;
        }
        let mut slots = vec![NO_SLOT; span as usize];
        for (id, e) in &self.map {
            slots[(id - min) as usize] = e.slot.unwrap_or(NO_SLOT);
        }
        self.flat = Flat {
            on: true,
            base: min,
            slots,
            retry_at: 0,
        };
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

    /// Inserts, placements and removals in a random order, ids handed out in sequence with
    /// gaps: the flat array stays on and equal to the map, and every lookup agrees with it.
    #[test]
    fn the_flat_array_follows_every_change() {
        let mut live = Live::default();
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut id = 1_000u64;
        let mut ids = Vec::new();
        for step in 0..20_000u32 {
            match next(10) {
                0..=4 => {
                    id += 1 + next(3);
                    live.insert(id, entry(None));
                    ids.push(id);
                }
                5..=7 if !ids.is_empty() => {
                    let i = ids[next(ids.len() as u64) as usize];
                    live.place(i, step);
                }
                _ if !ids.is_empty() => {
                    let i = ids.swap_remove(next(ids.len() as u64) as usize);
                    assert!(live.remove(i).is_some());
                }
                _ => {}
            }
        }
        assert!(live.check());
        for probe in 0..id + 10 {
            assert_eq!(
                live.slot(probe),
                live.map.get(&probe).and_then(|e| e.slot),
                "id {probe}"
            );
        }
        // the old ids gone, the array starts near the live ones again
        live.replace_slots(|id| Some(id as Slot));
        assert!(live.check());
        assert!(live.flat.base >= *live.keys().min().unwrap());
    }

    /// Ids far apart leave the array off (lookups still right through the map); it comes back
    /// once the ids are close enough again.
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
        for i in 7..20 {
            live.insert(i, entry(Some(i as Slot)));
        }
        assert!(live.check(), "made again once the live points doubled");
        assert_eq!(live.slot(19), Some(19));
        // below the array
        live.insert(1, entry(Some(40)));
        assert!(live.check());
        assert_eq!(live.slot(1), Some(40));
    }
}
