//! What some open orders carry beyond a plain limit order: an iceberg's
//! visible size, a waiting order's trigger and hold, an OTO's pending
//! order, membership of an order list; and the order lists themselves.
//!
//! Plain orders have none of this and never look here: an order's `ext`
//! slot is `NIL` unless it needs one, so matching plain orders costs
//! nothing extra. Both tables are slabs with free lists, so placing and
//! closing such orders allocates nothing once they have grown.

use crate::book::NIL;
use crate::command::{Contingency, OrderKind, TimeInForce, Trigger};
use crate::units::{ClientOrderId, ListId, Lots, MarketId, OrderId, Side, Ticks, Units, UserId};

/// A vector of slots with a free list.
#[derive(Clone, Debug)]
pub(crate) struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab { slots: Vec::new(), free: Vec::new() }
    }
}

impl<T> Slab<T> {
    pub fn insert(&mut self, value: T) -> u32 {
        match self.free.pop() {
            Some(slot) => {
                debug_assert!(self.slots[slot as usize].is_none());
                self.slots[slot as usize] = Some(value);
                slot
            }
            None => {
                self.slots.push(Some(value));
                (self.slots.len() - 1) as u32
            }
        }
    }

    pub fn remove(&mut self, slot: u32) -> T {
        let value = self.slots[slot as usize].take().expect("a slab slot removed twice");
        self.free.push(slot);
        value
    }

    pub fn get(&self, slot: u32) -> &T {
        self.slots[slot as usize].as_ref().expect("a free slab slot read")
    }

    pub fn get_mut(&mut self, slot: u32) -> &mut T {
        self.slots[slot as usize].as_mut().expect("a free slab slot written")
    }

    /// The value in `slot`, or `None` for a slot out of range or free: for
    /// the invariant checks, which must not trust the links they follow.
    pub fn get_checked(&self, slot: u32) -> Option<&T> {
        self.slots.get(slot as usize).and_then(|value| value.as_ref())
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten()
    }
}

/// What an order with an `ext` slot carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OrderExtra {
    pub order: OrderId,
    /// An iceberg's largest shown part; 0 for any other order.
    pub visible: Lots,
    pub phase: Phase,
    /// The order list it belongs to (a slot of `Engine::lists`), or `NIL`.
    pub list: u32,
}

/// Where an order with extras is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// On the book, or entering it now.
    Live,
    /// Off the book, waiting for its trigger.
    Waiting(Waiting),
    /// An OTO's pending order: placed as `kind` once the working order fills.
    Pending(OrderKind),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Waiting {
    pub trigger: Trigger,
    /// What it enters as when it fires (its limit price is the order's price).
    pub then: Then,
    /// What it holds locked while it waits (in quote for a buy, base for a sell).
    pub hold: Units,
    /// A trailing order's tracking: `None` while it waits for its stop
    /// price; `Some(None)` tracking but no trade seen yet; `Some(Some(p))`
    /// tracking from best price `p`. Once it tracks, one trade moves the
    /// best price of many orders at once, so the current best lives on the
    /// market's trigger book (`TriggerBook::tracking_bests`), not here:
    /// `p` is where it started.
    pub tracking: Option<Option<Ticks>>,
    /// Its node on the market's trigger book: in the queue of its stop
    /// price while it waits for it, in the tracking orders while it tracks
    /// from a best price; else `NIL` (a fired order's stale node is told
    /// apart by its order id). Derived: never saved or hashed.
    pub node: u32,
}

/// What a waiting order becomes when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Then {
    Market,
    Limit(TimeInForce),
}

/// An order list (OCO or OTO) while it is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OrderList {
    pub id: ListId,
    pub user: UserId,
    pub market: MarketId,
    pub contingency: Contingency,
    pub client_list_id: Option<ClientOrderId>,
    pub side: Side,
    /// The legs in placement order (for an OTO: working, then pending).
    pub orders: [OrderId; 2],
    /// Their order slots; `NIL` for an OTO working order that is gone
    /// (filled) while its pending order waits to be released this command.
    pub slots: [u32; 2],
    /// An OCO's hold, for both legs at once: what its larger leg needs.
    /// Always 0 for an OTO (its working order holds for itself).
    pub held: Units,
}

/// The slot value meaning "no extras" or "no list".
pub(crate) const NONE: u32 = NIL;

/// Whether a trailing order tracking from `best` fires at `price`, and the
/// best price after seeing it. A sell tracks the highest price and fires on
/// a fall of `bips` basis points from it; a buy tracks the lowest and fires
/// on a rise. Exact: compared in 128-bit integers.
pub(crate) fn trail(side: Side, bips: u16, best: Ticks, price: Ticks) -> (bool, Ticks) {
    let (p, b, d) = (u128::from(price.0), u128::from(best.0), u128::from(bips));
    match side {
        Side::Sell if price > best => (false, price),
        Side::Sell => (p * 10_000 <= b * (10_000 - d.min(10_000)), best),
        Side::Buy if price < best => (false, price),
        Side::Buy => (p * 10_000 >= b * (10_000 + d), best),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_fires_on_the_exact_retracement() {
        // Binance's scenario E: a sell with 700 bips tracking from 45,500
        // fires at 42,315 (45,500 x 0.93) and not a tick above.
        assert_eq!(trail(Side::Sell, 700, Ticks(45_500), Ticks(42_316)), (false, Ticks(45_500)));
        assert_eq!(trail(Side::Sell, 700, Ticks(45_500), Ticks(42_315)), (true, Ticks(45_500)));
        assert_eq!(trail(Side::Sell, 700, Ticks(45_500), Ticks(46_000)), (false, Ticks(46_000)));
        // Scenario A: a buy with 500 bips tracking from 42,000 fires at 44,100.
        assert_eq!(trail(Side::Buy, 500, Ticks(42_000), Ticks(44_099)), (false, Ticks(42_000)));
        assert_eq!(trail(Side::Buy, 500, Ticks(42_000), Ticks(44_100)), (true, Ticks(42_000)));
        assert_eq!(trail(Side::Buy, 500, Ticks(42_000), Ticks(41_000)), (false, Ticks(41_000)));
        // No overflow at the extremes.
        assert_eq!(trail(Side::Buy, 2_000, Ticks(u64::MAX), Ticks(u64::MAX)), (false, Ticks(u64::MAX)));
    }
}
