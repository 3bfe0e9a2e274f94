//! One market's waiting stop and take-profit orders, by the price that
//! fires them.
//!
//! Orders waiting for the price to rise and orders waiting for it to fall
//! are kept apart, each in a `VecDeque` sorted so that the next to fire is
//! the last element: a trade looks at the ends only, and pops what it
//! fires. Inserting or removing moves the shorter side of the deque, so
//! stops placed near the market (the usual case) and stops placed beyond
//! every other (a ladder of stops) both cost O(1) moves; only a stop in
//! the middle of a long queue moves up to half of it.
//! Trailing orders that are tracking have a trigger price that moves with
//! every trade, so they are kept apart again, in order id order, and
//! looked at one by one.

use std::collections::VecDeque;

use crate::units::{OrderId, Ticks};

/// A waiting order: the price that fires it (or starts its tracking), its
/// id and its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub stop: Ticks,
    pub order: OrderId,
    pub slot: u32,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct TriggerBook {
    /// Fire when the price rises to `stop`: lowest stop last (oldest last
    /// among equal stops).
    rising: VecDeque<Entry>,
    /// Fire when the price falls to `stop`: highest stop last (oldest last
    /// among equal stops).
    falling: VecDeque<Entry>,
    /// Trailing orders that are tracking, by order id (`stop` unused).
    pub tracking: Vec<Entry>,
}

/// The sort key of an entry in `rising` or `falling`: ascending, with the
/// next to fire last.
fn key(rises: bool, entry: &Entry) -> (u64, u64) {
    let stop = if rises { !entry.stop.0 } else { entry.stop.0 };
    (stop, !entry.order.0)
}

impl TriggerBook {
    fn side_mut(&mut self, rises: bool) -> &mut VecDeque<Entry> {
        if rises {
            &mut self.rising
        } else {
            &mut self.falling
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rising.is_empty() && self.falling.is_empty() && self.tracking.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rising.len() + self.falling.len() + self.tracking.len()
    }

    pub fn insert(&mut self, rises: bool, entry: Entry) {
        let wanted = key(rises, &entry);
        let side = self.side_mut(rises);
        let index = side.partition_point(|e| key(rises, e) < wanted);
        side.insert(index, entry);
    }

    /// Removes the entry of `order` waiting at `stop`; false if absent.
    pub fn remove(&mut self, rises: bool, stop: Ticks, order: OrderId) -> bool {
        let wanted = key(rises, &Entry { stop, order, slot: 0 });
        let side = self.side_mut(rises);
        match side.binary_search_by(|e| key(rises, e).cmp(&wanted)) {
            Ok(index) => {
                side.remove(index);
                true
            }
            Err(_) => false,
        }
    }

    pub fn insert_tracking(&mut self, entry: Entry) {
        let index = self.tracking.partition_point(|e| e.order < entry.order);
        self.tracking.insert(index, entry);
    }

    pub fn remove_tracking(&mut self, order: OrderId) -> bool {
        match self.tracking.binary_search_by(|e| e.order.cmp(&order)) {
            Ok(index) => {
                self.tracking.remove(index);
                true
            }
            Err(_) => false,
        }
    }

    /// Pops into `out` every entry a trade at `price` reaches: rising stops
    /// at or below it, falling stops at or above it.
    pub fn pop_reached(&mut self, price: Ticks, out: &mut Vec<Entry>) {
        while self.rising.back().is_some_and(|e| e.stop <= price) {
            out.extend(self.rising.pop_back());
        }
        while self.falling.back().is_some_and(|e| e.stop >= price) {
            out.extend(self.falling.pop_back());
        }
    }

    /// Every entry, in a canonical order: rising, falling, tracking.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.rising.iter().chain(&self.falling).chain(&self.tracking)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(stop: u64, order: u64) -> Entry {
        Entry { stop: Ticks(stop), order: OrderId(order), slot: order as u32 }
    }

    #[test]
    fn pops_what_a_price_reaches_and_removes_by_key() {
        let mut book = TriggerBook::default();
        for (stop, order) in [(105, 1), (101, 2), (103, 3), (101, 4)] {
            book.insert(true, entry(stop, order));
        }
        for (stop, order) in [(95, 5), (99, 6), (97, 7)] {
            book.insert(false, entry(stop, order));
        }
        let mut out = Vec::new();
        book.pop_reached(Ticks(100), &mut out);
        assert!(out.is_empty());
        book.pop_reached(Ticks(103), &mut out);
        assert_eq!(out.iter().map(|e| e.order.0).collect::<Vec<_>>(), vec![2, 4, 3]);
        assert!(book.remove(true, Ticks(105), OrderId(1)));
        assert!(!book.remove(true, Ticks(105), OrderId(1)));
        out.clear();
        book.pop_reached(Ticks(96), &mut out);
        assert_eq!(out.iter().map(|e| e.order.0).collect::<Vec<_>>(), vec![6, 7]);
        assert_eq!(book.len(), 1);
    }
}
