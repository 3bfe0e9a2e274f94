//! The order index: resting order id -> slab slot, without hashing on the
//! hot path.
//!
//! The engine hands out order ids one after another, and most orders rest
//! briefly, so the ids that rest at any moment sit mostly in a window
//! behind the newest. The index keeps that window as a ring of slots
//! indexed by `id - base`: a lookup is a subtraction and one load, an
//! insert at the newest id a push, a removal a store. The ring's front is
//! trimmed as the oldest ids in it retire. An order that stays resting
//! while `WINDOW_IDS_MAX` newer ids are handed out would pin the window's
//! front; instead it moves to a hash map of the few long-lived orders,
//! which bounds the ring's memory (`WINDOW_IDS_MAX` x 4 bytes).
//!
//! Nothing here is iterated into output, so the map's hasher (fixed, see
//! [`OrderIdHasher`]) cannot make two runs differ.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;

use crate::book::NIL;
use crate::hash::OrderIdHasher;
use crate::units::OrderId;

/// How many consecutive ids the ring covers at most: 16 MiB of slots.
pub(crate) const WINDOW_IDS_MAX: usize = 1 << 22;

#[derive(Clone, Debug)]
pub(crate) struct OrderIndex {
    /// The slot of order `base + i` at `i`, or [`NIL`] when it is not resting.
    /// Its front entry, when there is one, is a resting order.
    window: VecDeque<u32>,
    /// The id of the window's first entry.
    base: u64,
    window_max: usize,
    /// Resting orders with ids below `base`.
    old: HashMap<OrderId, u32, BuildHasherDefault<OrderIdHasher>>,
    len: usize,
}

impl Default for OrderIndex {
    fn default() -> OrderIndex {
        OrderIndex::with_window(WINDOW_IDS_MAX)
    }
}

impl OrderIndex {
    pub fn with_window(window_max: usize) -> OrderIndex {
        OrderIndex {
            window: VecDeque::new(),
            base: 0,
            window_max: window_max.max(1),
            old: HashMap::with_hasher(BuildHasherDefault::default()),
            len: 0,
        }
    }

    /// How many orders are indexed.
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn get(&self, id: OrderId) -> Option<u32> {
        match id.0.checked_sub(self.base) {
            Some(offset) => match self.window.get(usize::try_from(offset).ok()?) {
                Some(&slot) if slot != NIL => Some(slot),
                _ => None,
            },
            None => self.old.get(&id).copied(),
        }
    }

    pub fn contains(&self, id: OrderId) -> bool {
        self.get(id).is_some()
    }

    /// Indexes `id` at `slot`; `id` must not be indexed already.
    #[inline]
    pub fn insert(&mut self, id: OrderId, slot: u32) {
        debug_assert!(slot != NIL);
        debug_assert!(!self.contains(id), "order {id} indexed twice");
        self.len += 1;
        // Every id in `old` is below `base`, so `base` only moves forward.
        if self.window.is_empty() && id.0 > self.base {
            self.base = id.0;
        }
        // An id below the window (a snapshot lists its orders in book order,
        // not id order) extends the window backwards while nothing has been
        // spilled to the map and the window stays within its maximum.
        if id.0 < self.base
            && self.old.is_empty()
            && (self.base - id.0).saturating_add(self.window.len() as u64) <= self.window_max as u64
        {
            for _ in id.0..self.base {
                self.window.push_front(NIL);
            }
            self.base = id.0;
        }
        let Some(offset) = id.0.checked_sub(self.base) else {
            self.old.insert(id, slot);
            return;
        };
        // Ids far ahead (only when a snapshot lists sparse ids) move the
        // window forward first, so that it never spans more than its maximum.
        if offset >= self.window_max as u64 {
            let keep_from = id.0 - (self.window_max as u64 - 1);
            while !self.window.is_empty() && self.base < keep_from {
                self.spill_front();
            }
            if self.window.is_empty() {
                self.base = id.0;
            }
        }
        let offset = (id.0 - self.base) as usize;
        if offset >= self.window.len() {
            self.window.resize(offset + 1, NIL);
        }
        self.window[offset] = slot;
        while self.window.len() > self.window_max {
            self.spill_front();
        }
        self.trim();
    }

    /// Un-indexes `id` and returns its slot.
    #[inline]
    pub fn remove(&mut self, id: OrderId) -> Option<u32> {
        let slot = match id.0.checked_sub(self.base) {
            Some(0) => {
                let slot = *self.window.front()?;
                self.window[0] = NIL;
                self.trim();
                slot
            }
            Some(offset) => {
                let entry = self.window.get_mut(usize::try_from(offset).ok()?)?;
                let slot = std::mem::replace(entry, NIL);
                if slot == NIL {
                    return None;
                }
                slot
            }
            None => self.old.remove(&id)?,
        };
        self.len -= 1;
        Some(slot)
    }

    /// Moves the window's first id, if it is resting, to the map.
    fn spill_front(&mut self) {
        if let Some(slot) = self.window.pop_front() {
            if slot != NIL {
                self.old.insert(OrderId(self.base), slot);
            }
            self.base += 1;
        }
    }

    /// Drops retired ids from the window's front.
    #[inline]
    fn trim(&mut self) {
        while self.window.front() == Some(&NIL) {
            self.window.pop_front();
            self.base += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// SplitMix64, as in the workload generator.
    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    #[test]
    fn agrees_with_a_map_through_spills_and_trims() {
        for (seed, window_max) in [(1, 1), (2, 4), (3, 16), (4, 1 << 10)] {
            let mut index = OrderIndex::with_window(window_max);
            let mut model: BTreeMap<u64, u32> = BTreeMap::new();
            let mut rng = seed;
            let mut next_id = 1;
            for step in 0..20_000u32 {
                let roll = next(&mut rng) % 10;
                if roll < 5 || model.is_empty() {
                    // Mostly the next id; sometimes a jump, as a snapshot's
                    // sparse ids make.
                    next_id += if roll == 0 { 1 + next(&mut rng) % 40 } else { 1 };
                    index.insert(OrderId(next_id), step);
                    model.insert(next_id, step);
                } else {
                    // Remove a resting id, often an old one, or probe a gone one.
                    let pick = if roll == 9 {
                        *model.keys().next().unwrap()
                    } else {
                        *model.keys().nth((next(&mut rng) % model.len() as u64) as usize).unwrap()
                    };
                    assert_eq!(index.remove(OrderId(pick)), model.remove(&pick));
                    assert_eq!(index.remove(OrderId(pick)), None);
                }
                assert_eq!(index.len(), model.len());
                assert!(index.window.len() <= window_max);
                assert!(index.window.front().is_none_or(|&slot| slot != NIL));
                if step % 97 == 0 {
                    for id in 0..next_id + 2 {
                        assert_eq!(index.get(OrderId(id)), model.get(&id).copied(), "id {id}");
                    }
                }
            }
        }
    }

    #[test]
    fn ids_inserted_in_any_order_stay_in_the_window_while_they_fit() {
        let mut index = OrderIndex::with_window(16);
        for id in [9, 3, 12, 1, 5] {
            index.insert(OrderId(id), id as u32);
        }
        assert!(index.old.is_empty());
        assert_eq!((index.base, index.window.len()), (1, 12));
        for id in 0..20 {
            assert_eq!(index.get(OrderId(id)), [9, 3, 12, 1, 5].contains(&id).then_some(id as u32));
        }
    }

    #[test]
    fn ids_below_the_window_and_out_of_order_inserts() {
        let mut index = OrderIndex::with_window(8);
        index.insert(OrderId(100), 1);
        index.insert(OrderId(50), 2);
        index.insert(OrderId(103), 3);
        assert_eq!((index.get(OrderId(50)), index.get(OrderId(100))), (Some(2), Some(1)));
        assert_eq!(index.get(OrderId(101)), None);
        assert_eq!(index.get(OrderId(u64::MAX)), None);
        assert_eq!(index.remove(OrderId(100)), Some(1));
        assert_eq!(index.base, 103);
        index.insert(OrderId(1_000_000), 4);
        assert_eq!(index.get(OrderId(103)), Some(3));
        assert_eq!(index.get(OrderId(1_000_000)), Some(4));
        assert_eq!(index.len(), 3);
        // An emptied window keeps its base: a lower id goes to the map, and
        // the map's ids still answer.
        assert_eq!(index.remove(OrderId(1_000_000)), Some(4));
        index.insert(OrderId(60), 5);
        assert_eq!((index.get(OrderId(60)), index.get(OrderId(103))), (Some(5), Some(3)));
        assert_eq!(index.remove(OrderId(60)), Some(5));
        assert_eq!(index.len(), 2);
    }
}
