//! Resting orders and the price levels that queue them.
//!
//! Orders live in one slab (a `Vec` with a free list), so placing and
//! removing an order never allocates once the slab has grown to the working
//! set. Each price level is a doubly linked FIFO of slab slots, which gives
//! time priority and O(1) removal of any order. Each side keeps its levels in
//! a `Vec` sorted so that the best price is the last element:
//!
//! * best price: O(1) (the last element);
//! * finding a price: O(log levels) (binary search);
//! * adding or removing an order at an existing level: O(1) after the search;
//! * creating or removing a level: a `memmove` of the levels between it and
//!   the best price. Activity concentrates at the top of the book, where that
//!   distance is a handful of levels, and a sorted array beats a tree there
//!   because the search stays in one or two cache lines.

use crate::command::SelfTradePrevention;
use crate::units::{ClientOrderId, Lots, MarketId, OrderId, Side, Ticks, UserId};

/// The end of a linked list of slots.
pub(crate) const NIL: u32 = u32::MAX;

/// A resting order.
///
/// Laid out by hand, 64-byte aligned: everything matching and queue
/// maintenance touch sits in the first cache line; the time stamp and the
/// client order id, read only when an order opens or closes, in the second.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub(crate) struct Order {
    pub id: OrderId,
    pub price: Ticks,
    /// Open quantity; never 0 while the order rests.
    pub remaining: Lots,
    pub filled: Lots,
    /// Neighbours in the price level's queue (older, newer).
    prev: u32,
    next: u32,
    /// Neighbours in the owner's list of open orders, kept in order id order.
    pub user_prev: u32,
    pub user_next: u32,
    pub user: UserId,
    pub market: MarketId,
    pub side: Side,
    pub post_only: bool,
    pub stp: SelfTradePrevention,
    pub timestamp_ns: u64,
    pub client_order_id: Option<ClientOrderId>,
    /// An iceberg's lots behind the shown part (`remaining`); 0 otherwise.
    pub hidden: Lots,
    /// The order's extras (a slot of `Engine::extras`), or `NIL` for a
    /// plain order.
    pub ext: u32,
}

impl Order {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: OrderId,
        user: UserId,
        market: MarketId,
        side: Side,
        price: Ticks,
        remaining: Lots,
        filled: Lots,
        post_only: bool,
        stp: SelfTradePrevention,
        client_order_id: Option<ClientOrderId>,
        timestamp_ns: u64,
    ) -> Order {
        Order {
            id,
            user,
            market,
            side,
            price,
            remaining,
            filled,
            post_only,
            stp,
            client_order_id,
            timestamp_ns,
            hidden: Lots(0),
            ext: NIL,
            prev: NIL,
            next: NIL,
            user_prev: NIL,
            user_next: NIL,
        }
    }
}

/// Storage for all resting orders of all markets.
#[derive(Clone, Debug, Default)]
pub(crate) struct OrderSlab {
    slots: Vec<Order>,
    /// Free slots are chained through `next`; `id` 0 marks a free slot.
    free_head: u32,
    len: u32,
}

impl OrderSlab {
    pub fn with_capacity(capacity: usize) -> OrderSlab {
        OrderSlab { slots: Vec::with_capacity(capacity), free_head: NIL, len: 0 }
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    /// Stores `order` and returns its slot. The caller keeps the count of
    /// orders below `u32::MAX` (the engine's order capacity does).
    pub fn insert(&mut self, order: Order) -> u32 {
        debug_assert!(order.id.0 != 0, "order id 0 marks free slots");
        self.len += 1;
        if self.free_head != NIL {
            let slot = self.free_head;
            self.free_head = self.slots[slot as usize].next;
            self.slots[slot as usize] = order;
            slot
        } else {
            self.slots.push(order);
            (self.slots.len() - 1) as u32
        }
    }

    /// Frees `slot` and returns the order it held.
    pub fn remove(&mut self, slot: u32) -> Order {
        let entry = &mut self.slots[slot as usize];
        let order = *entry;
        debug_assert!(order.id.0 != 0, "slot {slot} freed twice");
        entry.id = OrderId(0);
        entry.next = self.free_head;
        self.free_head = slot;
        self.len -= 1;
        order
    }

    pub fn get(&self, slot: u32) -> &Order {
        &self.slots[slot as usize]
    }

    pub fn get_mut(&mut self, slot: u32) -> &mut Order {
        &mut self.slots[slot as usize]
    }

    /// The order in `slot`, or `None` for a slot out of range or free: for
    /// the invariant checks, which must not trust the links they follow.
    pub fn get_checked(&self, slot: u32) -> Option<&Order> {
        self.slots.get(slot as usize).filter(|order| order.id.0 != 0)
    }
}

impl Order {
    /// Open quantity, shown and hidden.
    pub fn open(&self) -> Lots {
        Lots(self.remaining.0 + self.hidden.0)
    }
}

const _: () = assert!(core::mem::size_of::<Order>() == 128, "an order is two cache lines");

/// All resting orders at one price, oldest first.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Level {
    /// The sort key: the price for bids, its complement for asks, so that
    /// both sides sort ascending with the best price last.
    key: u64,
    pub price: Ticks,
    /// Sum of the open quantity of the orders queued here.
    pub qty: Lots,
    pub head: u32,
    tail: u32,
}

/// One side of one market's book.
#[derive(Clone, Debug)]
pub(crate) struct BookSide {
    side: Side,
    levels: Vec<Level>,
}

impl BookSide {
    pub fn new(side: Side) -> BookSide {
        BookSide { side, levels: Vec::new() }
    }

    fn key(&self, price: Ticks) -> u64 {
        match self.side {
            Side::Buy => price.0,
            Side::Sell => !price.0,
        }
    }

    /// The index of the level at `price`, or where it would go. The best
    /// price (the last level) is looked at first: every fill, refill and
    /// filled maker's removal is at it, and a price better than it goes
    /// after it, so those skip the binary search.
    #[inline]
    fn find(&self, price: Ticks) -> Result<usize, usize> {
        let key = self.key(price);
        match self.levels.last() {
            Some(best) if best.key == key => Ok(self.levels.len() - 1),
            Some(best) if best.key < key => Err(self.levels.len()),
            _ => self.levels.binary_search_by_key(&key, |level| level.key),
        }
    }

    pub fn best(&self) -> Option<&Level> {
        self.levels.last()
    }

    /// Levels from the best price to the worst.
    pub fn levels(&self) -> impl Iterator<Item = &Level> {
        self.levels.iter().rev()
    }

    /// The level at `price`, if any.
    pub fn level(&self, price: Ticks) -> Option<&Level> {
        self.find(price).ok().map(|index| &self.levels[index])
    }

    #[cfg(test)]
    pub fn level_mut(&mut self, price: Ticks) -> Option<&mut Level> {
        self.find(price).ok().map(|index| &mut self.levels[index])
    }

    /// Whether the levels around where `price` is (or would be) are in
    /// strict price order, each under its own key. The binary search finds
    /// a level only while they are, so this is checked where it looks.
    pub fn ordered_around(&self, price: Ticks) -> bool {
        let index = self.find(price).unwrap_or_else(|index| index);
        let window = &self.levels[index.saturating_sub(1)..(index + 2).min(self.levels.len())];
        window.iter().all(|level| level.key == self.key(level.price))
            && window.windows(2).all(|pair| pair[0].key < pair[1].key)
    }

    #[cfg(test)]
    pub fn level_count(&self) -> usize {
        self.levels.len()
    }

    /// Total open quantity at `price` (0 when there is no level).
    #[cfg(test)]
    pub fn qty_at(&self, price: Ticks) -> Lots {
        match self.find(price) {
            Ok(index) => self.levels[index].qty,
            Err(_) => Lots(0),
        }
    }

    /// Whether an order on the other side at `price` would trade with this side.
    pub fn crosses(&self, price: Ticks) -> bool {
        match (self.best(), self.side) {
            (None, _) => false,
            (Some(best), Side::Buy) => best.price >= price,
            (Some(best), Side::Sell) => best.price <= price,
        }
    }

    /// Queues the order in `slot` at the back of its price level and returns
    /// the level's new total.
    pub fn push_back(&mut self, slab: &mut OrderSlab, slot: u32) -> Lots {
        let (price, qty) = {
            let order = slab.get(slot);
            debug_assert_eq!(order.side, self.side);
            debug_assert!(order.remaining.0 > 0);
            (order.price, order.remaining)
        };
        match self.find(price) {
            Ok(index) => {
                let level = &mut self.levels[index];
                let tail = level.tail;
                level.tail = slot;
                // Level totals are bounded by the sum of base locked for
                // sells or by quote locked for buys, both u64 amounts; the
                // qty itself fits because each order's qty fits and the
                // totals are checked against overflow when orders rest.
                level.qty = Lots(level.qty.0.saturating_add(qty.0));
                let total = level.qty;
                slab.get_mut(tail).next = slot;
                let order = slab.get_mut(slot);
                order.prev = tail;
                order.next = NIL;
                total
            }
            Err(index) => {
                let key = self.key(price);
                self.levels.insert(index, Level { key, price, qty, head: slot, tail: slot });
                let order = slab.get_mut(slot);
                order.prev = NIL;
                order.next = NIL;
                qty
            }
        }
    }

    /// Takes the order in `slot` out of its level (the slot itself stays
    /// allocated) and returns the level's new total.
    pub fn unlink(&mut self, slab: &mut OrderSlab, slot: u32) -> Lots {
        let (price, qty, prev, next) = {
            let order = slab.get(slot);
            (order.price, order.remaining, order.prev, order.next)
        };
        let Ok(index) = self.find(price) else {
            debug_assert!(false, "resting order at {price} has no level");
            return Lots(0);
        };
        if prev == NIL {
            self.levels[index].head = next;
        } else {
            slab.get_mut(prev).next = next;
        }
        if next == NIL {
            self.levels[index].tail = prev;
        } else {
            slab.get_mut(next).prev = prev;
        }
        let level = &mut self.levels[index];
        level.qty = Lots(level.qty.0 - qty.0);
        let total = level.qty;
        if level.head == NIL {
            debug_assert_eq!(total, Lots(0));
            self.levels.remove(index);
        }
        total
    }

    /// Lowers the level total at `price` by `qty` after a resting order there
    /// shrank in place (a partial fill or an amend down) and returns it.
    pub fn reduce(&mut self, price: Ticks, qty: Lots) -> Lots {
        match self.find(price) {
            Ok(index) => {
                let level = &mut self.levels[index];
                level.qty = Lots(level.qty.0 - qty.0);
                level.qty
            }
            Err(_) => {
                debug_assert!(false, "no level at {price}");
                Lots(0)
            }
        }
    }

    /// The slot after `slot` in its level's queue, or [`NIL`].
    pub fn next_in_level(slab: &OrderSlab, slot: u32) -> u32 {
        slab.get(slot).next
    }
}

/// Both sides of one market's book.
#[derive(Clone, Debug)]
pub(crate) struct OrderBook {
    pub bids: BookSide,
    pub asks: BookSide,
}

impl OrderBook {
    pub fn new() -> OrderBook {
        OrderBook { bids: BookSide::new(Side::Buy), asks: BookSide::new(Side::Sell) }
    }

    pub fn side(&self, side: Side) -> &BookSide {
        match side {
            Side::Buy => &self.bids,
            Side::Sell => &self.asks,
        }
    }

    pub fn side_mut(&mut self, side: Side) -> &mut BookSide {
        match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: u64, side: Side, price: u64, qty: u64) -> Order {
        Order::new(
            OrderId(id),
            UserId(0),
            MarketId(0),
            side,
            Ticks(price),
            Lots(qty),
            Lots(0),
            false,
            SelfTradePrevention::Allow,
            None,
            0,
        )
    }

    fn queue(side: &BookSide, slab: &OrderSlab) -> Vec<(u64, Vec<u64>)> {
        side.levels()
            .map(|level| {
                let mut ids = Vec::new();
                let mut slot = level.head;
                while slot != NIL {
                    ids.push(slab.get(slot).id.0);
                    slot = BookSide::next_in_level(slab, slot);
                }
                (level.price.0, ids)
            })
            .collect()
    }

    #[test]
    fn levels_sort_best_first_and_queue_in_time_order() {
        let mut slab = OrderSlab::with_capacity(0);
        let mut asks = BookSide::new(Side::Sell);
        for (id, price) in [(1, 105), (2, 101), (3, 103), (4, 101), (5, 110)] {
            let slot = slab.insert(order(id, Side::Sell, price, 2));
            asks.push_back(&mut slab, slot);
        }
        assert_eq!(
            queue(&asks, &slab),
            vec![(101, vec![2, 4]), (103, vec![3]), (105, vec![1]), (110, vec![5])]
        );
        assert_eq!(asks.best().map(|l| (l.price, l.qty)), Some((Ticks(101), Lots(4))));
        assert!(asks.crosses(Ticks(101)));
        assert!(!asks.crosses(Ticks(100)));

        let mut bids = BookSide::new(Side::Buy);
        for (id, price) in [(6, 90), (7, 95), (8, 92)] {
            let slot = slab.insert(order(id, Side::Buy, price, 1));
            bids.push_back(&mut slab, slot);
        }
        assert_eq!(queue(&bids, &slab), vec![(95, vec![7]), (92, vec![8]), (90, vec![6])]);
    }

    #[test]
    fn unlink_keeps_the_queue_and_drops_empty_levels() {
        let mut slab = OrderSlab::with_capacity(0);
        let mut bids = BookSide::new(Side::Buy);
        let slots: Vec<u32> = [(1, 100), (2, 100), (3, 100), (4, 99)]
            .into_iter()
            .map(|(id, price)| {
                let slot = slab.insert(order(id, Side::Buy, price, 5));
                bids.push_back(&mut slab, slot);
                slot
            })
            .collect();
        assert_eq!(bids.unlink(&mut slab, slots[1]), Lots(10));
        slab.remove(slots[1]);
        assert_eq!(queue(&bids, &slab), vec![(100, vec![1, 3]), (99, vec![4])]);
        assert_eq!(bids.unlink(&mut slab, slots[3]), Lots(0));
        slab.remove(slots[3]);
        assert_eq!(bids.level_count(), 1);
        // A freed slot is reused.
        let again = slab.insert(order(9, Side::Buy, 100, 1));
        assert!(again == slots[1] || again == slots[3]);
        bids.push_back(&mut slab, again);
        assert_eq!(queue(&bids, &slab), vec![(100, vec![1, 3, 9])]);
        assert_eq!(bids.qty_at(Ticks(100)), Lots(11));
    }
}
