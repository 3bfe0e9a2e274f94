//! Checks of the invariants the engine promises, over its whole state.
//!
//! Too slow for the hot path (it walks everything), and meant for tests,
//! fuzzing and an operator's verification: a violation is a bug in the
//! engine, never a consequence of input.

use std::fmt;

use crate::book::{BookSide, NIL};
use crate::engine::Engine;
use crate::snapshot::SnapshotError;
use crate::units::{MarketId, OrderId, Side, UserId};

/// The first broken invariant found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InvariantViolation {
    /// The state does not pass the checks a snapshot load makes
    /// (conservation, locked funds, crossed books, references).
    Semantic(SnapshotError),
    LevelTotal {
        market: MarketId,
        side: Side,
        why: &'static str,
    },
    OrderIndex {
        order: OrderId,
        why: &'static str,
    },
    UserOrders {
        user: UserId,
        why: &'static str,
    },
    /// A snapshot of the state loads into a state with a different hash.
    HashChangedByReload {
        before: u64,
        after: u64,
    },
}

impl fmt::Display for InvariantViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvariantViolation::Semantic(error) => write!(f, "{error}"),
            InvariantViolation::LevelTotal { market, side, why } => {
                write!(f, "market {market} {side} side: {why}")
            }
            InvariantViolation::OrderIndex { order, why } => write!(f, "order {order}: {why}"),
            InvariantViolation::UserOrders { user, why } => write!(f, "user {user}: {why}"),
            InvariantViolation::HashChangedByReload { before, after } => {
                write!(f, "state hash {before:016x} became {after:016x} through a snapshot")
            }
        }
    }
}

impl std::error::Error for InvariantViolation {}

impl Engine {
    /// Checks every invariant: for every asset, balances plus fees equal
    /// deposits minus withdrawals; locked funds equal what open orders need;
    /// no book is crossed; level totals, the order index and each user's
    /// order list agree with the orders on the books; and the state survives
    /// a snapshot round trip with its hash unchanged.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let mut resting = 0u32;
        for state in &self.markets {
            let market = state.market.id;
            for side in [Side::Buy, Side::Sell] {
                let book_side = state.book.side(side);
                let mut previous = None;
                for level in book_side.levels() {
                    let bad = |why| InvariantViolation::LevelTotal { market, side, why };
                    if let Some(previous) = previous {
                        let worse = match side {
                            Side::Buy => level.price < previous,
                            Side::Sell => level.price > previous,
                        };
                        if !worse {
                            return Err(bad("levels out of price order"));
                        }
                    }
                    previous = Some(level.price);
                    let mut total = 0u128;
                    let mut slot = level.head;
                    if slot == NIL {
                        return Err(bad("empty level kept"));
                    }
                    while slot != NIL {
                        let order = self.orders.get(slot);
                        if order.price != level.price || order.side != side || order.market != market {
                            return Err(bad("order queued at the wrong level"));
                        }
                        if order.remaining.0 == 0 {
                            return Err(bad("order with nothing left rests"));
                        }
                        if self.index.get(&order.id) != Some(&slot) {
                            return Err(InvariantViolation::OrderIndex {
                                order: order.id,
                                why: "not indexed at its slot",
                            });
                        }
                        total += u128::from(order.remaining.0);
                        resting += 1;
                        slot = BookSide::next_in_level(&self.orders, slot);
                    }
                    if total != u128::from(level.qty.0) {
                        return Err(bad("level total differs from its orders"));
                    }
                }
            }
        }
        if resting != self.orders.len() || self.index.len() != resting as usize {
            return Err(InvariantViolation::OrderIndex {
                order: OrderId(0),
                why: "slab, index and books disagree on the count",
            });
        }

        let mut listed = 0u32;
        for (user, account) in self.accounts.iter().enumerate() {
            let user = UserId(user as u32);
            let bad = |why| InvariantViolation::UserOrders { user, why };
            let mut count = 0u32;
            let mut last_id = OrderId(0);
            let mut slot = account.orders_head;
            let mut with_client_id = 0usize;
            while slot != NIL {
                let order = self.orders.get(slot);
                if order.user != user {
                    return Err(bad("lists another user's order"));
                }
                if order.id <= last_id {
                    return Err(bad("orders not in id order"));
                }
                if let Some(client_order_id) = &order.client_order_id {
                    if account.find_client_id(client_order_id) != Some(order.id) {
                        return Err(bad("client order id not registered"));
                    }
                    with_client_id += 1;
                }
                last_id = order.id;
                count += 1;
                slot = order.user_next;
            }
            if count != account.open_orders {
                return Err(bad("open order count differs from the list"));
            }
            if with_client_id != account.client_ids.len() {
                return Err(bad("client order ids of closed orders kept"));
            }
            listed += count;
        }
        if listed != resting {
            return Err(InvariantViolation::OrderIndex {
                order: OrderId(0),
                why: "user lists and books disagree on the count",
            });
        }

        let before = self.state_hash();
        let reloaded = Engine::from_snapshot(self.snapshot()).map_err(InvariantViolation::Semantic)?;
        let after = reloaded.state_hash();
        if before != after {
            return Err(InvariantViolation::HashChangedByReload { before, after });
        }
        Ok(())
    }
}
