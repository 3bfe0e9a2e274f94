//! One market's waiting stop and take-profit orders, by the price that
//! fires them.
//!
//! Orders waiting for the price to rise and orders waiting for it to fall
//! are kept apart, each as the order book keeps a side: *levels* of one
//! stop price each, in a `VecDeque` sorted so that the next to fire is the
//! last level, and in each level a doubly linked list of nodes (a slab with
//! a free list) in order id order. A trade looks at the last levels only
//! and pops what it reaches. An order knows its node (`Waiting::node`), so
//! taking it off (a cancel, an OCO's other leg) unlinks it in O(1) and
//! searches the levels only when it was the first or last of its level; a
//! new order goes to the tail of its level (found by a binary search over
//! the levels, which are far fewer than the orders). Only creating or
//! removing a level moves entries, the shorter side of the deque of levels
//! (16 bytes each): stops placed near the market (the usual case) and
//! stops placed beyond every other (a ladder of stops) both cost O(1)
//! moves. These queues used to hold the entries themselves, sorted; every
//! placement and cancel then binary-searched and moved up to half of them.
//!
//! Trailing orders that are tracking have a trigger price that moves with
//! the trades, so a trade must not visit them one by one (it did, and ten
//! thousand tracking orders made every trade price cost ten thousand
//! steps). A sell tracks the highest price since it started and a buy the
//! lowest, so orders that started at different times share their best
//! price once the market has gone beyond where each started: they are kept
//! in *groups* of one best price per side. A trade price better than some
//! groups' bests merges them into one group at that price (the worst
//! groups first, so a merge pops from one end of the sorted groups). Inside
//! a group the order to fire first is the one with the smallest trailing
//! delta (a fixed best makes the firing condition monotone in the delta),
//! so a group is a pairing heap keyed by (delta, order id), which melds in
//! O(1) and pops in O(log n) amortised; and the groups sit in a binary
//! heap by how soon their smallest delta fires. A trade price therefore
//! costs O(log n) per order it fires plus O(log n) amortised per group it
//! merges (each group is created once), however many orders track. An
//! order's best price is its group's, found when asked (snapshots, hashes,
//! invariant checks) by walking the groups.
//!
//! Nodes and groups live in vectors with free lists, so tracking allocates
//! nothing once the vectors have grown to their high-water marks.

use std::collections::VecDeque;

use crate::book::NIL;
use crate::extras::trail;
use crate::units::{OrderId, Side, Ticks};

/// A waiting order: the price that fires it (or starts its tracking), its
/// id and its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub stop: Ticks,
    pub order: OrderId,
    pub slot: u32,
}

#[derive(Clone, Debug)]
pub(crate) struct TriggerBook {
    /// Fire when the price rises to their stop: the lowest stop's level
    /// last.
    rising: StopQueue,
    /// Fire when the price falls to their stop: the highest stop's level
    /// last.
    falling: StopQueue,
    /// The nodes of both queues' levels; a free node has order id 0.
    stops: Vec<StopNode>,
    /// The first free node, linked by `next` (`NIL`: none). A popped
    /// level's list joins it whole, so firing frees a level, not a node
    /// at a time.
    free_stop: u32,
    /// Trailing orders tracking from placement in a market that has not
    /// traded yet, by order id (`stop` unused): they start at the next
    /// trade.
    unstarted: Vec<Entry>,
    /// Tracking trailing orders with a best price: buys, then sells.
    tracks: [Tracks; 2],
    nodes: Vec<Node>,
    free_nodes: Vec<u32>,
    groups: Vec<Group>,
    free_groups: Vec<u32>,
    /// How many nodes are live.
    tracking_len: usize,
    /// Scratch for melding a node's children.
    pairs: Vec<u32>,
    /// The prices, inclusive, at which a trade changes nothing here (see
    /// [`Self::is_quiet_between`]); `None` after any change, until asked
    /// again. Derived from the rest, never saved or hashed.
    quiet: Option<(Ticks, Ticks)>,
}

impl Default for TriggerBook {
    fn default() -> Self {
        TriggerBook {
            rising: StopQueue::default(),
            falling: StopQueue::default(),
            stops: Vec::new(),
            free_stop: NIL,
            unstarted: Vec::new(),
            tracks: Default::default(),
            nodes: Vec::new(),
            free_nodes: Vec::new(),
            groups: Vec::new(),
            free_groups: Vec::new(),
            tracking_len: 0,
            pairs: Vec::new(),
            quiet: None,
        }
    }
}

/// A band no price is in.
const EMPTY_BAND: (Ticks, Ticks) = (Ticks(1), Ticks(0));

/// One side's groups of tracking orders.
#[derive(Clone, Debug, Default)]
struct Tracks {
    /// Groups by best price, the worst first (the lowest for sells, the
    /// highest for buys), no two with the same best: a trade price merges
    /// the groups it beats from the front.
    by_best: VecDeque<u32>,
    /// The same groups as a binary max-heap on [`Group::urgency`].
    urgent: Vec<u32>,
}

/// Tracking orders of one side that share their best price.
#[derive(Clone, Copy, Debug)]
struct Group {
    side: Side,
    best: Ticks,
    /// The root of its pairing heap of nodes.
    root: u32,
    /// How soon its root fires: at price `p` when `threshold(side, p) <=
    /// urgency`.
    urgency: u128,
    /// Its index in `Tracks::urgent`.
    heap_pos: u32,
}

/// A tracking order in its group's pairing heap.
#[derive(Clone, Copy, Debug)]
struct Node {
    order: OrderId,
    slot: u32,
    bips: u16,
    live: bool,
    /// Leftmost child.
    child: u32,
    /// Right sibling.
    next: u32,
    /// Left sibling, or the parent for a leftmost child; `NIL` for a root.
    prev: u32,
    /// Its group, while it is a root.
    group: u32,
}

/// One side's waiting orders by stop price (see the module docs).
#[derive(Clone, Debug, Default)]
struct StopQueue {
    /// Ascending by [`Level::key`]: the next to fire last.
    levels: VecDeque<Level>,
    /// How many orders wait in it.
    len: usize,
}

impl StopQueue {
    /// The index of the level with `key`, or where it would go. The last
    /// level (the next to fire) is looked at first: stops are mostly placed
    /// near the market, and one nearer than every other goes after it.
    ///
    /// Then the level one tick per place before the last: stops placed a
    /// few ticks from the market fill the ticks near it, where the levels
    /// are then one key apart and the guess finds the level without the
    /// binary search. The keys are distinct and ascending, so the level
    /// at the guess has at most `key`; a miss falls back to the search.
    #[inline]
    fn index_of(&self, key: u64) -> usize {
        let len = self.levels.len();
        match self.levels.back() {
            Some(last) if last.key == key => len - 1,
            Some(last) if last.key < key => len,
            Some(last) => {
                let gap = last.key - key;
                if gap < len as u64 {
                    let guess = len - 1 - gap as usize;
                    let level = &self.levels[guess];
                    debug_assert!(level.key <= key, "levels' keys are distinct and ascending");
                    if level.key == key {
                        return guess;
                    }
                }
                self.levels.partition_point(|level| level.key < key)
            }
            None => 0,
        }
    }
}

/// The orders waiting at one stop price, oldest (smallest id) at the head:
/// among equal stops the oldest fires first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Level {
    /// [`stop_key`] of its stop.
    key: u64,
    head: u32,
    tail: u32,
}

/// A waiting order in its level's list.
#[derive(Clone, Copy, Debug)]
struct StopNode {
    order: OrderId,
    slot: u32,
    prev: u32,
    next: u32,
}

/// The sort key of a stop price in `rising` (its complement: the lowest
/// stop sorts last) or `falling` (the stop itself); its own inverse.
fn stop_key(rises: bool, stop: u64) -> u64 {
    if rises {
        !stop
    } else {
        stop
    }
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Buy => 0,
        Side::Sell => 1,
    }
}

/// Whether best price `a` is worse than `b` for a tracking order of `side`
/// (a trade at `b` would move it).
fn worse(side: Side, a: Ticks, b: Ticks) -> bool {
    match side {
        Side::Sell => a < b,
        Side::Buy => a > b,
    }
}

/// How soon an order of `side` with best price `best` and delta `bips`
/// fires: the larger, the sooner. Exactly [`trail`]'s condition: a sell
/// fires at `p` when `p * 10_000 <= best * (10_000 - bips)`, that is when
/// `p` is at most the floor of the right side over 10,000; a buy when `p`
/// is at least the ceiling of `best * (10_000 + bips) / 10_000`, mirrored
/// so that larger is sooner.
///
/// Worked out without dividing a 128-bit number (a library call on every
/// move of a tracking group): with `best = q * 10_000 + r`,
/// `best * m / 10_000` is `q * m` plus `r * m / 10_000`, whose remainder
/// is the whole one, so floors and ceilings come out exact.
fn urgency(side: Side, best: Ticks, bips: u16) -> u128 {
    let (q, r) = (best.0 / 10_000, best.0 % 10_000);
    let d = u64::from(bips);
    match side {
        Side::Sell => {
            let m = 10_000 - d.min(10_000);
            u128::from(q) * u128::from(m) + u128::from(r * m / 10_000)
        }
        Side::Buy => {
            let m = 10_000 + d;
            u128::MAX - (u128::from(q) * u128::from(m) + u128::from((r * m).div_ceil(10_000)))
        }
    }
}

/// What a group's urgency must reach for it to fire at `price`.
fn threshold(side: Side, price: Ticks) -> u128 {
    match side {
        Side::Sell => u128::from(price.0),
        Side::Buy => u128::MAX - u128::from(price.0),
    }
}

impl TriggerBook {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.rising.len + self.falling.len + self.unstarted.len() + self.tracking_len
    }

    /// The stop of the next rising (falling) order to fire.
    fn next_stop(&self, rises: bool) -> Option<Ticks> {
        let queue = if rises { &self.rising } else { &self.falling };
        queue.levels.back().map(|level| Ticks(stop_key(rises, level.key)))
    }

    /// Puts `entry` on the queue of orders waiting for the price to rise
    /// (`rises`) or fall to its stop, after the older orders at its stop;
    /// returns its node, which [`Self::remove`] needs.
    pub fn insert(&mut self, rises: bool, entry: Entry) -> u32 {
        debug_assert!(entry.order.0 != 0, "order id 0 marks free nodes");
        // A new stop can only narrow the quiet band, and only if it fires
        // before every other of its side: narrowed in place (a bound of
        // the band is a min or max over the sides), so that placing a stop
        // does not cost a recomputation at the next trade. An empty band
        // (which may come from an early answer) is worked out again.
        self.quiet = match self.quiet {
            Some((lo, hi)) if lo <= hi => match (rises, entry.stop.0) {
                (true, stop) => stop.checked_sub(1).map(|below| (lo, hi.min(Ticks(below)))),
                (false, stop) => stop.checked_add(1).map(|above| (lo.max(Ticks(above)), hi)),
            },
            _ => None,
        };
        let node = StopNode { order: entry.order, slot: entry.slot, prev: NIL, next: NIL };
        let node = match self.free_stop {
            NIL => {
                self.stops.push(node);
                (self.stops.len() - 1) as u32
            }
            index => {
                let free = &mut self.stops[index as usize];
                debug_assert_eq!(free.order, OrderId(0));
                self.free_stop = free.next;
                *free = node;
                index
            }
        };
        let key = stop_key(rises, entry.stop.0);
        let queue = if rises { &mut self.rising } else { &mut self.falling };
        queue.len += 1;
        let index = queue.index_of(key);
        match queue.levels.get_mut(index) {
            Some(level) if level.key == key => {
                // Usually the newest order; a released OTO order or a
                // restored one may be older than some already there.
                let mut before = level.tail;
                while before != NIL && self.stops[before as usize].order > entry.order {
                    before = self.stops[before as usize].prev;
                }
                let after = if before == NIL { level.head } else { self.stops[before as usize].next };
                if before == NIL {
                    level.head = node;
                } else {
                    self.stops[before as usize].next = node;
                }
                if after == NIL {
                    level.tail = node;
                } else {
                    self.stops[after as usize].prev = node;
                }
                let n = &mut self.stops[node as usize];
                n.prev = before;
                n.next = after;
            }
            _ => queue.levels.insert(index, Level { key, head: node, tail: node }),
        }
        node
    }

    /// Removes the entry of `order` waiting at `stop` on its `node`; false
    /// if it is not there (it fired: its node is free, or reused by another
    /// order).
    pub fn remove(&mut self, rises: bool, stop: Ticks, order: OrderId, node: u32) -> bool {
        if self.stops.get(node as usize).is_none_or(|n| n.order != order) {
            return false;
        }
        let StopNode { prev, next, .. } = self.stops[node as usize];
        if prev != NIL {
            self.stops[prev as usize].next = next;
        }
        if next != NIL {
            self.stops[next as usize].prev = prev;
        }
        let queue = if rises { &mut self.rising } else { &mut self.falling };
        queue.len -= 1;
        if prev == NIL || next == NIL {
            // The first or last of its level: the level's ends change.
            let key = stop_key(rises, stop.0);
            let index = queue.index_of(key);
            let level = &mut queue.levels[index];
            debug_assert_eq!(level.key, key, "a waiting order's level is missing");
            if prev == NIL {
                level.head = next;
            }
            if next == NIL {
                level.tail = prev;
            }
            if level.head == NIL {
                // Only the last level bounds the quiet band.
                if index + 1 == queue.levels.len() {
                    self.quiet = None;
                }
                queue.levels.remove(index);
            }
        }
        self.free_stop(node);
        true
    }

    fn free_stop(&mut self, node: u32) {
        self.stops[node as usize] =
            StopNode { order: OrderId(0), slot: NIL, prev: NIL, next: self.free_stop };
        self.free_stop = node;
    }

    /// Pops into `out` every entry a trade at `price` reaches: rising stops
    /// at or below it (the lowest first), then falling stops at or above it
    /// (the highest first); the oldest first among equal stops.
    ///
    /// Inlined to look at the two last levels before calling: a price the
    /// kept band could not answer for often reaches a tracking order only.
    #[inline]
    pub fn pop_reached(&mut self, price: Ticks, out: &mut Vec<Entry>) {
        let rising = self.next_stop(true).is_some_and(|stop| stop <= price);
        let falling = self.next_stop(false).is_some_and(|stop| stop >= price);
        if rising || falling {
            self.pop_reached_levels(price, out);
        }
    }

    #[inline(never)]
    fn pop_reached_levels(&mut self, price: Ticks, out: &mut Vec<Entry>) {
        let before = out.len();
        for rises in [true, false] {
            let queue = if rises { &mut self.rising } else { &mut self.falling };
            while let Some(&level) = queue.levels.back() {
                let stop = Ticks(stop_key(rises, level.key));
                let reached = if rises { stop <= price } else { stop >= price };
                if !reached {
                    break;
                }
                queue.levels.pop_back();
                let mut node = level.head;
                let mut popped = 0;
                while node != NIL {
                    // Marked free by its order id alone: the level's `next`
                    // links stay and become the free list's.
                    let n = &mut self.stops[node as usize];
                    out.push(Entry { stop, order: n.order, slot: n.slot });
                    n.order = OrderId(0);
                    node = n.next;
                    popped += 1;
                }
                self.stops[level.tail as usize].next = self.free_stop;
                self.free_stop = level.head;
                queue.len -= popped;
            }
        }
        // The band changes only with the queues' last levels.
        if out.len() != before {
            self.quiet = None;
        }
    }

    /// The entries of one queue, with their nodes, from its first level to
    /// its last.
    fn queue_entries(&self, rises: bool) -> impl Iterator<Item = (u32, Entry)> + '_ {
        let queue = if rises { &self.rising } else { &self.falling };
        queue.levels.iter().flat_map(move |level| {
            let stop = Ticks(stop_key(rises, level.key));
            let mut node = level.head;
            std::iter::from_fn(move || {
                if node == NIL {
                    return None;
                }
                let n = self.stops[node as usize];
                let found = (node, Entry { stop, order: n.order, slot: n.slot });
                node = n.next;
                Some(found)
            })
        })
    }

    /// The orders waiting for a stop price, with their nodes.
    pub fn stopped(&self) -> impl Iterator<Item = (u32, Entry)> + '_ {
        self.queue_entries(true).chain(self.queue_entries(false))
    }

    /// Whether a trade at `price` leaves every order here as it is: it
    /// reaches no stop, moves no tracking group's best, fires no tracking
    /// order and starts no order waiting for a first trade. Most trades are
    /// such, and this answers from the ends of the queues and the tops of
    /// the heaps. The reference for [`Self::is_quiet_between`], which the
    /// engine asks and which must answer alike.
    #[cfg(test)]
    pub fn is_quiet_at(&self, price: Ticks) -> bool {
        if self.next_stop(true).is_some_and(|stop| stop <= price)
            || self.next_stop(false).is_some_and(|stop| stop >= price)
            || !self.unstarted.is_empty()
        {
            return false;
        }
        if self.tracking_len == 0 {
            return true;
        }
        [Side::Buy, Side::Sell].into_iter().all(|side| {
            let tracks = &self.tracks[side_index(side)];
            let merges =
                tracks.by_best.front().is_some_and(|&g| worse(side, self.groups[g as usize].best, price));
            let fires = tracks
                .urgent
                .first()
                .is_some_and(|&g| threshold(side, price) <= self.groups[g as usize].urgency);
            !merges && !fires
        })
    }

    /// Whether trades at every price from `low` to `high` leave every order
    /// here as it is, as [`Self::is_quiet_at`] answers for each of them:
    /// the quiet prices are one interval (below every rising stop, above
    /// every falling one, between the tracking groups' bests and short of
    /// their next firing), so a command's lowest and highest trade prices
    /// answer for all of its trades. The interval is kept from one command
    /// to the next and worked out again only after a change here, so a
    /// trade in a market whose waiting orders did not change costs two
    /// comparisons.
    #[inline]
    pub fn is_quiet_between(&mut self, low: Ticks, high: Ticks) -> bool {
        debug_assert!(low <= high);
        let (lo, hi) = match self.quiet {
            Some(band) => band,
            None => {
                let band = self.quiet_band();
                self.quiet = Some(band);
                band
            }
        };
        lo <= low && high <= hi
    }

    /// The interval of quiet prices, inclusive ([`EMPTY_BAND`] when there
    /// is none): each bound is where one condition of [`Self::is_quiet_at`]
    /// stops holding.
    #[inline(never)]
    fn quiet_band(&self) -> (Ticks, Ticks) {
        if !self.unstarted.is_empty() {
            return EMPTY_BAND;
        }
        let (mut lo, mut hi) = (0u64, u64::MAX);
        // A rising stop is reached at or above its stop, a falling one at
        // or below.
        if let Some(stop) = self.next_stop(true) {
            match stop.0.checked_sub(1) {
                Some(below) => hi = hi.min(below),
                None => return EMPTY_BAND,
            }
        }
        if let Some(stop) = self.next_stop(false) {
            match stop.0.checked_add(1) {
                Some(above) => lo = lo.max(above),
                None => return EMPTY_BAND,
            }
        }
        for side in [Side::Buy, Side::Sell] {
            let tracks = &self.tracks[side_index(side)];
            let front = tracks.by_best.front().map(|&g| self.groups[g as usize].best.0);
            let top = tracks.urgent.first().map(|&g| self.groups[g as usize].urgency);
            match side {
                // A sell's group merges above its best and fires at or
                // below its urgency.
                Side::Sell => {
                    if let Some(best) = front {
                        hi = hi.min(best);
                    }
                    if let Some(urgency) = top {
                        match u64::try_from(urgency).ok().and_then(|u| u.checked_add(1)) {
                            Some(above) => lo = lo.max(above),
                            None => return EMPTY_BAND,
                        }
                    }
                }
                // A buy's group merges below its best and fires at or
                // above `u128::MAX - urgency` (see [`threshold`]).
                Side::Buy => {
                    if let Some(best) = front {
                        lo = lo.max(best);
                    }
                    if let Some(urgency) = top {
                        match (u128::MAX - urgency).checked_sub(1) {
                            Some(below) => hi = hi.min(u64::try_from(below).unwrap_or(u64::MAX)),
                            None => return EMPTY_BAND,
                        }
                    }
                }
            }
        }
        (Ticks(lo), Ticks(hi))
    }

    /// Starts tracking the trailing order of `entry` (`stop` unused), a
    /// `side` order with delta `bips`, from best price `best` (`None`: from
    /// the next trade). Returns its node, which [`Self::remove_tracking`]
    /// needs, or `NIL` when it waits for a trade.
    pub fn insert_tracking(&mut self, side: Side, bips: u16, entry: Entry, best: Option<Ticks>) -> u32 {
        self.quiet = None;
        let Some(best) = best else {
            let index = self.unstarted.partition_point(|e| e.order < entry.order);
            self.unstarted.insert(index, entry);
            return NIL;
        };
        let node = self.new_node(entry, bips);
        self.tracking_len += 1;
        let tracks = &self.tracks[side_index(side)];
        let groups = &self.groups;
        let index = tracks.by_best.partition_point(|&g| worse(side, groups[g as usize].best, best));
        match tracks.by_best.get(index) {
            Some(&group) if groups[group as usize].best == best => {
                let root = self.meld(self.groups[group as usize].root, node);
                self.set_root(group, root);
            }
            _ => self.new_group(side, best, node, index),
        }
        node
    }

    /// Takes the tracking order `order` off, given the node that
    /// [`Self::insert_tracking`] returned; false if it is not there (it
    /// fired).
    pub fn remove_tracking(&mut self, node: u32, order: OrderId) -> bool {
        self.quiet = None;
        if node == NIL {
            return match self.unstarted.binary_search_by(|e| e.order.cmp(&order)) {
                Ok(index) => {
                    self.unstarted.remove(index);
                    true
                }
                Err(_) => false,
            };
        }
        // A fired order's node may be free, or reused by a younger order.
        if !self.nodes.get(node as usize).is_some_and(|n| n.live && n.order == order) {
            return false;
        }
        self.remove_node(node);
        true
    }

    /// The orders that track from placement and wait for a trade, oldest
    /// first; the caller starts them with [`Self::insert_tracking`].
    #[inline]
    pub fn take_unstarted(&mut self, out: &mut Vec<Entry>) {
        if !self.unstarted.is_empty() {
            self.quiet = None;
        }
        out.append(&mut self.unstarted);
    }

    /// A trade at `price`: the groups whose best it beats merge into one
    /// group with best `price`.
    ///
    /// Inlined to look at each side's worst group before calling: most
    /// prices evaluated move no group.
    #[inline]
    pub fn track(&mut self, price: Ticks) {
        let moves = |side: Side| {
            self.tracks[side_index(side)]
                .by_best
                .front()
                .is_some_and(|&group| worse(side, self.groups[group as usize].best, price))
        };
        if moves(Side::Buy) || moves(Side::Sell) {
            self.track_groups(price);
        }
    }

    #[inline(never)]
    fn track_groups(&mut self, price: Ticks) {
        for side in [Side::Buy, Side::Sell] {
            let s = side_index(side);
            let Some(&worst) = self.tracks[s].by_best.front() else { continue };
            if !worse(side, self.groups[worst as usize].best, price) {
                continue;
            }
            // The usual case, a market moving on past its tracking orders:
            // the price beats the worst group only, and no group has it as
            // its best. That group moves to the price where it is (every
            // other group is still better, so its place in `by_best` holds)
            // and only its urgency changes: what a merge of one group into
            // a new one would give, without freeing and heaping a group.
            let alone = self.tracks[s].by_best.get(1).is_none_or(|&next| {
                let best = self.groups[next as usize].best;
                !worse(side, best, price) && best != price
            });
            if alone {
                self.quiet = None;
                self.groups[worst as usize].best = price;
                let root = self.groups[worst as usize].root;
                self.set_root(worst, root);
                continue;
            }
            let mut merged = NIL;
            while let Some(&group) = self.tracks[s].by_best.front() {
                if !worse(side, self.groups[group as usize].best, price) {
                    break;
                }
                self.tracks[s].by_best.pop_front();
                self.unheap(group);
                merged = self.meld(merged, self.groups[group as usize].root);
                self.free_groups.push(group);
            }
            if merged == NIL {
                continue;
            }
            self.quiet = None;
            match self.tracks[s].by_best.front() {
                Some(&group) if self.groups[group as usize].best == price => {
                    let root = self.meld(self.groups[group as usize].root, merged);
                    self.set_root(group, root);
                }
                _ => self.new_group(side, price, merged, 0),
            }
        }
    }

    /// Pops into `out` every tracking order that a trade at `price` fires
    /// (after [`Self::track`] saw it), in no particular order.
    ///
    /// Inlined to look at each side's most urgent group before calling.
    #[inline]
    pub fn fire_tracking(&mut self, price: Ticks, out: &mut Vec<Entry>) {
        let fires = |side: Side| {
            self.tracks[side_index(side)]
                .urgent
                .first()
                .is_some_and(|&group| threshold(side, price) <= self.groups[group as usize].urgency)
        };
        if fires(Side::Buy) || fires(Side::Sell) {
            self.fire_groups(price, out);
        }
    }

    #[inline(never)]
    fn fire_groups(&mut self, price: Ticks, out: &mut Vec<Entry>) {
        for side in [Side::Buy, Side::Sell] {
            while let Some(&group) = self.tracks[side_index(side)].urgent.first() {
                let Group { best, root, urgency, .. } = self.groups[group as usize];
                let node = self.nodes[root as usize];
                let fires = threshold(side, price) <= urgency;
                debug_assert_eq!(fires, trail(side, node.bips, best, price).0);
                if !fires {
                    break;
                }
                out.push(Entry { stop: Ticks(0), order: node.order, slot: node.slot });
                self.quiet = None;
                self.remove_node(root);
            }
        }
    }

    /// Appends the best price of every tracking order that has one.
    pub fn tracking_bests(&self, out: &mut Vec<(OrderId, Ticks)>) {
        let mut stack = Vec::new();
        for tracks in &self.tracks {
            for &group in &tracks.by_best {
                let Group { best, root, .. } = self.groups[group as usize];
                stack.push(root);
                while let Some(node) = stack.pop() {
                    let n = &self.nodes[node as usize];
                    out.push((n.order, best));
                    stack.extend([n.child, n.next].into_iter().filter(|&next| next != NIL));
                }
            }
        }
    }

    /// Every entry, in a canonical order: rising, falling, tracking with no
    /// trade yet, tracking (in node order; `stop` unused).
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        let tracking = self.tracking().map(|(_, entry, _)| entry);
        self.stopped().map(|(_, entry)| entry).chain(self.unstarted.iter().copied()).chain(tracking)
    }

    /// The tracking orders with a best price: node, entry and delta.
    pub fn tracking(&self) -> impl Iterator<Item = (u32, Entry, u16)> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.live)
            .map(|(node, n)| (node as u32, Entry { stop: Ticks(0), order: n.order, slot: n.slot }, n.bips))
    }

    /// Whether `order` tracks with no trade seen yet.
    pub fn is_unstarted(&self, order: OrderId) -> bool {
        self.unstarted.binary_search_by(|e| e.order.cmp(&order)).is_ok()
    }

    /// Checks the tracking structure against itself: groups sorted by best
    /// and heaped by urgency, every heap ordered and linked both ways, the
    /// live nodes exactly those reachable from the groups.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.unstarted.windows(2).any(|pair| pair[0].order >= pair[1].order) {
            return Err("orders waiting for a trade to track are not in id order");
        }
        let mut stopped = 0usize;
        for queue in [&self.rising, &self.falling] {
            let mut reached = 0usize;
            for (position, level) in queue.levels.iter().enumerate() {
                if position > 0 && queue.levels[position - 1].key >= level.key {
                    return Err("stop levels not in strict order");
                }
                let (mut node, mut before) = (level.head, NIL);
                if node == NIL {
                    return Err("an empty stop level");
                }
                while node != NIL {
                    let n = self.stops.get(node as usize).ok_or("a stop node out of range")?;
                    if n.order.0 == 0 {
                        return Err("a free stop node in a level");
                    }
                    if n.prev != before {
                        return Err("a stop level's links disagree");
                    }
                    if before != NIL && self.stops[before as usize].order >= n.order {
                        return Err("a stop level not in order id order");
                    }
                    reached += 1;
                    if reached > self.stops.len() {
                        return Err("a stop level has a cycle");
                    }
                    before = node;
                    node = n.next;
                }
                if level.tail != before {
                    return Err("a stop level's tail is not its last node");
                }
            }
            if reached != queue.len {
                return Err("stop queues: counted and linked differ");
            }
            stopped += reached;
        }
        let free = self.stops.iter().filter(|n| n.order.0 == 0).count();
        let (mut listed, mut node) = (0usize, self.free_stop);
        while node != NIL {
            let n = self.stops.get(node as usize).ok_or("a free stop node out of range")?;
            if n.order.0 != 0 {
                return Err("a live stop node on the free list");
            }
            listed += 1;
            if listed > free {
                return Err("the free stop list has a cycle");
            }
            node = n.next;
        }
        if stopped + free != self.stops.len() || free != listed {
            return Err("stop nodes: live and free do not add up");
        }
        let mut reached = 0usize;
        let mut stack = Vec::new();
        for side in [Side::Buy, Side::Sell] {
            let tracks = &self.tracks[side_index(side)];
            if tracks.by_best.len() != tracks.urgent.len() {
                return Err("tracking groups: sorted and heaped counts differ");
            }
            for (position, &group) in tracks.urgent.iter().enumerate() {
                let g = self.groups.get(group as usize).ok_or("a tracking group out of range")?;
                if g.heap_pos as usize != position {
                    return Err("a tracking group does not know its heap position");
                }
                if position > 0 && self.groups[tracks.urgent[(position - 1) / 2] as usize].urgency < g.urgency
                {
                    return Err("tracking groups out of heap order");
                }
            }
            for (position, &group) in tracks.by_best.iter().enumerate() {
                let g = self.groups[group as usize];
                if position > 0
                    && !worse(side, self.groups[tracks.by_best[position - 1] as usize].best, g.best)
                {
                    return Err("tracking groups not sorted by best price");
                }
                if g.side != side || tracks.urgent.get(g.heap_pos as usize) != Some(&group) {
                    return Err("a tracking group on the wrong side or off its heap");
                }
                let root = self.nodes.get(g.root as usize).ok_or("a tracking group without a root")?;
                if root.prev != NIL || root.next != NIL || root.group != group {
                    return Err("a tracking group's root is linked or does not know its group");
                }
                if g.urgency != urgency(side, g.best, root.bips) {
                    return Err("a tracking group's urgency is stale");
                }
                stack.push(g.root);
                while let Some(node) = stack.pop() {
                    reached += 1;
                    let n = self.nodes.get(node as usize).ok_or("a tracking node out of range")?;
                    if !n.live {
                        return Err("a free tracking node in a group");
                    }
                    let mut child = n.child;
                    let mut before = node;
                    while child != NIL {
                        let c = self.nodes.get(child as usize).ok_or("a tracking node out of range")?;
                        if c.prev != before {
                            return Err("a tracking node's links disagree");
                        }
                        if (c.bips, c.order) < (n.bips, n.order) {
                            return Err("a tracking heap out of order");
                        }
                        stack.push(child);
                        if reached + stack.len() > self.nodes.len() {
                            return Err("a tracking heap has a cycle");
                        }
                        before = child;
                        child = c.next;
                    }
                }
            }
        }
        if self.quiet.is_some_and(|band| band != self.quiet_band()) {
            return Err("the kept band of quiet prices is stale");
        }
        let live = self.nodes.iter().filter(|n| n.live).count();
        if reached != self.tracking_len || live != self.tracking_len {
            return Err("tracking nodes: live, reachable and counted differ");
        }
        if live + self.free_nodes.len() != self.nodes.len() {
            return Err("tracking nodes: live and free do not add up");
        }
        Ok(())
    }

    fn new_node(&mut self, entry: Entry, bips: u16) -> u32 {
        let node = Node {
            order: entry.order,
            slot: entry.slot,
            bips,
            live: true,
            child: NIL,
            next: NIL,
            prev: NIL,
            group: NIL,
        };
        match self.free_nodes.pop() {
            Some(index) => {
                debug_assert!(!self.nodes[index as usize].live);
                self.nodes[index as usize] = node;
                index
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        }
    }

    /// Takes a live node out of its heap and frees it.
    fn remove_node(&mut self, node: u32) {
        let Node { child, next, prev, group, .. } = self.nodes[node as usize];
        let rest = self.meld_siblings(child);
        if prev == NIL {
            if rest == NIL {
                self.remove_group(group);
            } else {
                self.set_root(group, rest);
            }
        } else {
            // Its children's heap takes its place: they were no smaller than
            // it, so no smaller than its parent.
            let replacement = if rest == NIL { next } else { rest };
            if rest != NIL {
                self.nodes[rest as usize].prev = prev;
                self.nodes[rest as usize].next = next;
            }
            if next != NIL {
                self.nodes[next as usize].prev = if rest == NIL { prev } else { rest };
            }
            let before = &mut self.nodes[prev as usize];
            if before.child == node {
                before.child = replacement;
            } else {
                before.next = replacement;
            }
        }
        let n = &mut self.nodes[node as usize];
        *n = Node { live: false, child: NIL, next: NIL, prev: NIL, group: NIL, ..*n };
        self.free_nodes.push(node);
        self.tracking_len -= 1;
    }

    fn less(&self, a: u32, b: u32) -> bool {
        let (a, b) = (&self.nodes[a as usize], &self.nodes[b as usize]);
        (a.bips, a.order) < (b.bips, b.order)
    }

    /// Melds two heaps (roots, or `NIL`) and returns the root.
    fn meld(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        let (parent, child) = if self.less(b, a) { (b, a) } else { (a, b) };
        let first = self.nodes[parent as usize].child;
        if first != NIL {
            self.nodes[first as usize].prev = child;
        }
        let c = &mut self.nodes[child as usize];
        c.prev = parent;
        c.next = first;
        self.nodes[parent as usize].child = child;
        parent
    }

    /// Melds the sibling list from `first` into one heap, in the pairing
    /// heap's two passes, and returns its root (or `NIL`).
    fn meld_siblings(&mut self, first: u32) -> u32 {
        let mut pairs = std::mem::take(&mut self.pairs);
        let mut node = first;
        while node != NIL {
            let second = self.nodes[node as usize].next;
            let after = if second == NIL { NIL } else { self.nodes[second as usize].next };
            for alone in [node, second] {
                if alone != NIL {
                    let n = &mut self.nodes[alone as usize];
                    n.prev = NIL;
                    n.next = NIL;
                }
            }
            pairs.push(self.meld(node, second));
            node = after;
        }
        let mut root = NIL;
        while let Some(heap) = pairs.pop() {
            root = self.meld(heap, root);
        }
        self.pairs = pairs;
        root
    }

    fn new_group(&mut self, side: Side, best: Ticks, root: u32, index: usize) {
        let group = Group { side, best, root, urgency: 0, heap_pos: 0 };
        let group = match self.free_groups.pop() {
            Some(index) => {
                self.groups[index as usize] = group;
                index
            }
            None => {
                self.groups.push(group);
                (self.groups.len() - 1) as u32
            }
        };
        let tracks = &mut self.tracks[side_index(side)];
        tracks.by_best.insert(index, group);
        tracks.urgent.push(group);
        self.groups[group as usize].heap_pos = (tracks.urgent.len() - 1) as u32;
        self.set_root(group, root);
    }

    fn remove_group(&mut self, group: u32) {
        let Group { side, best, .. } = self.groups[group as usize];
        self.unheap(group);
        let groups = &self.groups;
        let by_best = &mut self.tracks[side_index(side)].by_best;
        let index = by_best.partition_point(|&g| worse(side, groups[g as usize].best, best));
        debug_assert_eq!(by_best.get(index), Some(&group));
        by_best.remove(index);
        self.free_groups.push(group);
    }

    /// Makes `root` the root of `group` and restores the heap of groups.
    fn set_root(&mut self, group: u32, root: u32) {
        let g = &mut self.groups[group as usize];
        g.root = root;
        g.urgency = urgency(g.side, g.best, self.nodes[root as usize].bips);
        let node = &mut self.nodes[root as usize];
        node.group = group;
        node.prev = NIL;
        node.next = NIL;
        let (side, position) = (g.side, g.heap_pos as usize);
        self.sift_up(side, position);
        self.sift_down(side, self.groups[group as usize].heap_pos as usize);
    }

    /// Takes `group` off its side's heap of groups.
    fn unheap(&mut self, group: u32) {
        let side = self.groups[group as usize].side;
        let position = self.groups[group as usize].heap_pos as usize;
        let urgent = &mut self.tracks[side_index(side)].urgent;
        let last = urgent.pop().expect("a group on the heap");
        if last != group {
            urgent[position] = last;
            self.groups[last as usize].heap_pos = position as u32;
            self.sift_up(side, position);
            self.sift_down(side, self.groups[last as usize].heap_pos as usize);
        }
    }

    fn sift_up(&mut self, side: Side, mut position: usize) {
        let urgent = &mut self.tracks[side_index(side)].urgent;
        while position > 0 {
            let parent = (position - 1) / 2;
            let (a, b) = (urgent[parent], urgent[position]);
            if self.groups[a as usize].urgency >= self.groups[b as usize].urgency {
                break;
            }
            urgent.swap(parent, position);
            self.groups[a as usize].heap_pos = position as u32;
            self.groups[b as usize].heap_pos = parent as u32;
            position = parent;
        }
    }

    fn sift_down(&mut self, side: Side, mut position: usize) {
        let urgent = &mut self.tracks[side_index(side)].urgent;
        loop {
            let mut top = position;
            for child in [2 * position + 1, 2 * position + 2] {
                if child < urgent.len()
                    && self.groups[urgent[child] as usize].urgency > self.groups[urgent[top] as usize].urgency
                {
                    top = child;
                }
            }
            if top == position {
                break;
            }
            let (a, b) = (urgent[position], urgent[top]);
            urgent.swap(position, top);
            self.groups[a as usize].heap_pos = top as u32;
            self.groups[b as usize].heap_pos = position as u32;
            position = top;
        }
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
        let first = book.insert(true, entry(105, 1));
        for (stop, order) in [(101, 2), (103, 3), (101, 4)] {
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
        assert!(book.remove(true, Ticks(105), OrderId(1), first));
        assert!(!book.remove(true, Ticks(105), OrderId(1), first));
        out.clear();
        book.pop_reached(Ticks(96), &mut out);
        assert_eq!(out.iter().map(|e| e.order.0).collect::<Vec<_>>(), vec![6, 7]);
        assert_eq!(book.len(), 1);
    }

    /// The urgency without a 128-bit division against the plain formula,
    /// at the extremes and at random bests and deltas (a floor or ceiling
    /// off by one would fire an order a tick early or late).
    #[test]
    fn urgency_matches_the_exact_formula() {
        let exact = |side: Side, best: u64, bips: u16| {
            let (b, d) = (u128::from(best), u128::from(bips));
            match side {
                Side::Sell => b * (10_000 - d.min(10_000)) / 10_000,
                Side::Buy => u128::MAX - (b * (10_000 + d)).div_ceil(10_000),
            }
        };
        let mut random = Lcg(41);
        let mut bests = vec![0, 1, 9_999, 10_000, 10_001, 45_500, u64::MAX, u64::MAX - 1];
        for _ in 0..20_000 {
            let high = random.below(1 << 31) << 33;
            bests.push(match random.below(3) {
                0 => random.below(1 << 20),
                1 => high | random.below(1 << 31),
                _ => random.below(1 << 31) * 10_000 + random.below(3),
            });
        }
        for (index, &best) in bests.iter().enumerate() {
            let bips = match index % 4 {
                0 => random.below(u64::from(crate::orders::TRAILING_BIPS_MAX) + 1) as u16,
                1 => random.below(1 << 16) as u16,
                2 => [0, 1, 9_999, 10_000, 10_001, u16::MAX][index / 4 % 6],
                _ => 1 + random.below(20) as u16,
            };
            for side in [Side::Buy, Side::Sell] {
                assert_eq!(
                    urgency(side, Ticks(best), bips),
                    exact(side, best, bips),
                    "{side:?} {best} {bips}"
                );
            }
        }
    }

    /// The stop queues against a sorted list of every waiting entry: the
    /// same pops in the same order, whatever the order of insertion (older
    /// ids arrive late too, as released OTO orders do), removals of any
    /// entry, and the kept quiet band always equal to a recomputed one.
    #[test]
    fn stop_queues_pop_and_remove_as_a_sorted_list_would() {
        let mut random = Lcg(29);
        let mut book = TriggerBook::default();
        // (rises, stop, order, node), in no order.
        let mut model: Vec<(bool, u64, u64, u32)> = Vec::new();
        let mut next_order = 1_000u64;
        let mut price = 1_000u64;
        for step in 0..20_000 {
            match random.below(10) {
                0..=4 => {
                    let rises = random.below(2) == 0;
                    let distance = 1 + random.below(100);
                    let stop = if rises { price + distance } else { price - distance };
                    // One in eight is older than some already waiting.
                    let order = if random.below(8) == 0 {
                        next_order - 1 - random.below(900)
                    } else {
                        next_order += 1;
                        next_order
                    };
                    if model.iter().any(|m| m.2 == order) {
                        continue;
                    }
                    let node = book.insert(rises, entry(stop, order));
                    model.push((rises, stop, order, node));
                }
                5..=6 if !model.is_empty() => {
                    let (rises, stop, order, node) =
                        model.swap_remove(random.below(model.len() as u64) as usize);
                    assert!(book.remove(rises, Ticks(stop), OrderId(order), node));
                    assert!(!book.remove(rises, Ticks(stop), OrderId(order), node), "removed twice");
                }
                _ => {
                    price = (price + random.below(7)).saturating_sub(3).max(100);
                    let mut expected: Vec<_> = model
                        .iter()
                        .filter(|m| if m.0 { m.1 <= price } else { m.1 >= price })
                        .map(|m| (!m.0, if m.0 { m.1 } else { !m.1 }, m.2))
                        .collect();
                    expected.sort_unstable();
                    model.retain(|m| if m.0 { m.1 > price } else { m.1 < price });
                    let quiet = book.is_quiet_between(Ticks(price), Ticks(price));
                    assert_eq!(quiet, expected.is_empty(), "step {step}");
                    let mut out = Vec::new();
                    book.pop_reached(Ticks(price), &mut out);
                    let popped: Vec<_> = out.iter().map(|e| e.order.0).collect();
                    assert_eq!(popped, expected.iter().map(|e| e.2).collect::<Vec<_>>(), "step {step}");
                }
            }
            // Asked after every change, so that the band kept through
            // insertions and removals is checked against a recomputed one.
            book.is_quiet_between(Ticks(price), Ticks(price));
            book.check().unwrap();
            assert_eq!(book.len(), model.len());
        }
        assert!(model.len() > 50, "the test keeps many orders waiting: {}", model.len());
    }

    fn bests(book: &TriggerBook) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        book.tracking_bests(&mut out);
        let mut out: Vec<_> = out.into_iter().map(|(order, best)| (order.0, best.0)).collect();
        out.sort_unstable();
        out
    }

    /// Sees one trade price: merges, then fires; the fired orders by id.
    fn trade(book: &mut TriggerBook, price: u64) -> Vec<u64> {
        let mut out = Vec::new();
        book.track(Ticks(price));
        book.fire_tracking(Ticks(price), &mut out);
        book.check().unwrap();
        let mut fired: Vec<_> = out.iter().map(|e| e.order.0).collect();
        fired.sort_unstable();
        fired
    }

    #[test]
    fn a_better_price_merges_the_groups_it_beats_and_leaves_the_others() {
        let mut book = TriggerBook::default();
        // Sells at bests 100, 102 and 110; buys at 100 and 95.
        for (order, best) in [(1, 100), (2, 102), (3, 110), (4, 100)] {
            book.insert_tracking(Side::Sell, 1_000, entry(0, order), Some(Ticks(best)));
        }
        for (order, best) in [(5, 100), (6, 95)] {
            book.insert_tracking(Side::Buy, 1_000, entry(0, order), Some(Ticks(best)));
        }
        book.check().unwrap();
        assert_eq!(book.tracks[1].by_best.len(), 3, "orders 1 and 4 share a group");
        assert_eq!(trade(&mut book, 103), Vec::<u64>::new());
        assert_eq!(bests(&book), vec![(1, 103), (2, 103), (3, 110), (4, 103), (5, 100), (6, 95)]);
        assert_eq!(book.tracks[1].by_best.len(), 2);
        // 110 x 0.9 = 99: order 3 fires at 98, the others (103 x 0.9 =
        // 92.7) not yet; the buys' best 100 becomes 98.
        assert_eq!(trade(&mut book, 98), vec![3]);
        assert_eq!(bests(&book), vec![(1, 103), (2, 103), (4, 103), (5, 98), (6, 95)]);
        // The buys merge into one group at 93; they fire at 93 x 1.1 = 102.3.
        assert_eq!(trade(&mut book, 93), Vec::<u64>::new());
        assert_eq!(book.tracks[0].by_best.len(), 1);
        assert_eq!(trade(&mut book, 92), vec![1, 2, 4]);
        assert_eq!(trade(&mut book, 101), Vec::<u64>::new());
        assert_eq!(trade(&mut book, 102), vec![5, 6]);
        assert!(book.is_empty());
        assert_eq!(book.tracks.iter().map(|t| t.urgent.len()).sum::<usize>(), 0);
    }

    /// A quiet price is exactly one whose evaluation changes nothing.
    #[test]
    fn a_quiet_price_is_one_that_changes_nothing() {
        let mut random = Lcg(5);
        let (mut quiet, mut busy) = (0, 0);
        for _ in 0..300 {
            let mut book = TriggerBook::default();
            let mut order = 0;
            for _ in 0..random.below(6) {
                order += 1;
                let e = entry(1_000 + random.below(21) - 10, order);
                match random.below(4) {
                    0 => {
                        book.insert(true, e);
                    }
                    1 => {
                        book.insert(false, e);
                    }
                    2 => {
                        let side = if random.below(2) == 0 { Side::Buy } else { Side::Sell };
                        let best = (random.below(8) > 0).then(|| Ticks(1_000 + random.below(21) - 10));
                        book.insert_tracking(side, 1 + random.below(100) as u16, e, best);
                    }
                    _ => {}
                }
            }
            let price = Ticks(1_000 + random.below(41) - 20);
            let mut after = book.clone();
            let mut out = Vec::new();
            after.pop_reached(price, &mut out);
            after.track(price);
            after.fire_tracking(price, &mut out);
            after.take_unstarted(&mut out);
            let unchanged = out.is_empty() && bests(&after) == bests(&book) && {
                let groups = |b: &TriggerBook| b.tracks.iter().map(|t| t.by_best.len()).collect::<Vec<_>>();
                groups(&after) == groups(&book)
            };
            assert_eq!(book.is_quiet_at(price), unchanged, "{book:?} at {price}");
            // The band answers as the price-by-price check does, for one
            // price and for a span (quiet only if every price in it is).
            let high = Ticks(price.0 + random.below(4));
            let every = (price.0..=high.0).all(|p| book.is_quiet_at(Ticks(p)));
            assert_eq!(book.is_quiet_between(price, price), unchanged, "{book:?} at {price}");
            assert_eq!(book.is_quiet_between(price, high), every, "{book:?} from {price} to {high}");
            book.check().unwrap();
            if unchanged {
                quiet += 1;
            } else {
                busy += 1;
            }
        }
        assert!(quiet > 30 && busy > 30, "{quiet} quiet, {busy} busy: the test sees both");
    }

    #[test]
    fn a_price_fires_the_smallest_deltas_of_a_group_and_equal_deltas_together() {
        let mut book = TriggerBook::default();
        for (order, bips) in [(1, 300), (2, 100), (3, 200), (4, 100), (5, 400)] {
            book.insert_tracking(Side::Sell, bips, entry(0, order), Some(Ticks(10_000)));
        }
        assert_eq!(trade(&mut book, 9_901), Vec::<u64>::new());
        assert_eq!(trade(&mut book, 9_900), vec![2, 4]);
        assert_eq!(trade(&mut book, 9_700), vec![1, 3]);
        assert_eq!(bests(&book), vec![(5, 10_000)]);
    }

    #[test]
    fn removal_takes_any_order_out_of_its_group() {
        let mut book = TriggerBook::default();
        let nodes: Vec<u32> = (1..=20)
            .map(|order| {
                let bips = 100 + (order as u16 * 37) % 200;
                book.insert_tracking(Side::Sell, bips, entry(0, order), Some(Ticks(10_000 + order)))
            })
            .collect();
        book.track(Ticks(10_010));
        // Remove roots, leaves and inner nodes alike.
        for order in [1u64, 10, 15, 20, 7, 13] {
            assert!(book.remove_tracking(nodes[order as usize - 1], OrderId(order)));
            assert!(!book.remove_tracking(nodes[order as usize - 1], OrderId(order)), "removed twice");
            book.check().unwrap();
        }
        assert_eq!(book.len(), 14);
        // A stale node (freed, then reused by a younger order) removes nothing.
        let reused = book.insert_tracking(Side::Sell, 50, entry(0, 21), Some(Ticks(10_010)));
        assert!(nodes.contains(&reused));
        let old = nodes.iter().position(|&node| node == reused).unwrap() as u64 + 1;
        assert!(!book.remove_tracking(reused, OrderId(old)));
        assert!(book.remove_tracking(reused, OrderId(21)));
        // Orders waiting for a first trade are removed by id.
        assert_eq!(book.insert_tracking(Side::Buy, 10, entry(0, 30), None), NIL);
        assert!(book.is_unstarted(OrderId(30)));
        assert!(book.remove_tracking(NIL, OrderId(30)));
        assert!(!book.remove_tracking(NIL, OrderId(30)));
        book.check().unwrap();
    }

    /// A small deterministic generator, so the test needs no seed from outside.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    #[test]
    fn many_orders_fire_exactly_where_each_tracked_alone_would() {
        struct Model {
            order: u64,
            side: Side,
            bips: u16,
            best: Ticks,
            node: u32,
        }
        let mut random = Lcg(17);
        let mut book = TriggerBook::default();
        let mut model: Vec<Model> = Vec::new();
        let mut price = 10_000u64;
        let mut next_order = 1u64;
        for step in 0..20_000 {
            match random.below(10) {
                0..=3 => {
                    let side = if random.below(2) == 0 { Side::Buy } else { Side::Sell };
                    // Few distinct deltas, so that equal deltas are common.
                    let bips = [5, 20, 50, 100, 200, 500][random.below(6) as usize];
                    let best = Ticks(price + random.below(21) - 10);
                    let order = next_order;
                    next_order += 1;
                    let node = book.insert_tracking(side, bips, entry(0, order), Some(best));
                    model.push(Model { order, side, bips, best, node });
                }
                4 if !model.is_empty() => {
                    let gone = model.remove(random.below(model.len() as u64) as usize);
                    assert!(book.remove_tracking(gone.node, OrderId(gone.order)));
                }
                _ => {
                    price = (price + random.below(21)).saturating_sub(10).max(1);
                    let mut expected = Vec::new();
                    model.retain_mut(|m| {
                        let (fires, best) = trail(m.side, m.bips, m.best, Ticks(price));
                        m.best = best;
                        if fires {
                            expected.push(m.order);
                        }
                        !fires
                    });
                    assert_eq!(trade(&mut book, price), expected, "step {step} at {price}");
                }
            }
            if step % 97 == 0 {
                book.check().unwrap();
                let mut want: Vec<_> = model.iter().map(|m| (m.order, m.best.0)).collect();
                want.sort_unstable();
                assert_eq!(bests(&book), want, "step {step}");
            }
        }
        assert!(model.len() > 100, "the test keeps many orders tracking");
    }
}
