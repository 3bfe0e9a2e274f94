//! What one command did, for the request that sent it: the command's own
//! events, and the orders it touched as they stood right after it.
//!
//! The views apply a whole batch of commands before any request of the
//! batch is answered, so when a handler reads them a later command of the
//! same batch may already have filled, amended or cancelled the order its
//! command placed. An answer read from the views would describe those later
//! commands too, and a client that sums the fills of its answers would count
//! a fill twice (once in the answer of the order that rested, once in the
//! answer of the order that took it). So the views consumer captures each
//! order a command touches right after that command ([`Capture`]), and an
//! answer is built from the command's own events and these captures: it
//! says what its command did, as of the command's sequence number. Later
//! changes reach the client through the user streams and the queries.

use engine_core::{DoneReason, Event, EventKind, Lots, OrderId, Side, UserId};

use crate::views::{FillView, OrderStatus, OrderView, Views};

/// The outcome of one command, as its request receives it.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The command's events, in order.
    pub events: Vec<Event>,
    /// Each order the command accepted, amended or closed, as the views
    /// held it right after the command: the ones it closed, in the order
    /// it closed them, then the ones it left open.
    pub orders: Vec<OrderView>,
}

impl Outcome {
    /// `order` as the command left it.
    pub fn order(&self, order: OrderId) -> Option<&OrderView> {
        self.orders.iter().find(|o| o.order == order)
    }

    /// The fills the command made for `order` (all of them: the views keep
    /// a bounded number per order, the events have every one). `views`
    /// gives the market's assets; fees and prices come from the events.
    pub fn fills(&self, views: &Views, order: OrderId) -> Vec<FillView> {
        self.events
            .iter()
            .filter_map(|event| match event.kind {
                EventKind::Trade {
                    trade,
                    market,
                    price,
                    qty,
                    taker_side,
                    maker_order,
                    taker_order,
                    maker_fee,
                    taker_fee,
                    timestamp_ns,
                    ..
                } if maker_order == order || taker_order == order => {
                    let rules = views.markets.get(market.0 as usize)?.market.rules;
                    // A self-trade (self-trade prevention NONE) has the order
                    // on one side only: an order never trades with itself.
                    let maker = maker_order == order;
                    let side = if maker { taker_side.opposite() } else { taker_side };
                    Some(FillView {
                        trade,
                        price,
                        qty,
                        fee: if maker { maker_fee } else { taker_fee },
                        // Each side pays its fee in what it receives.
                        fee_asset: if side == Side::Buy { rules.base } else { rules.quote },
                        maker,
                        timestamp_ns,
                    })
                }
                _ => None,
            })
            .collect()
    }
}

/// Collects the orders one command touches while the views consumer
/// applies the command's events (a command's events may span two batches:
/// the capture carries over).
#[derive(Default)]
pub struct Capture {
    /// Orders accepted or amended by the command and still open.
    open: Vec<(UserId, OrderId)>,
    /// The order an `OrderDone` about to be applied closes, as it stood.
    closing: Option<OrderView>,
    orders: Vec<OrderView>,
}

impl Capture {
    /// Before `event`, of a command with a request, is applied to `views`.
    pub fn before(&mut self, views: &Views, event: &Event) {
        // Needed only when the views keep no closed order to read it from
        // afterwards (cloning an order and its fills costs the consumer
        // an allocation per closed order).
        if let EventKind::OrderDone { order, user, .. } = event.kind {
            if !views.keeps_closed_orders() {
                self.closing = views.user(user).and_then(|u| u.open.get(&order)).cloned();
            }
        }
    }

    /// Follows `event`, of a command with a request stamped at
    /// `timestamp_ns`, just applied to `views`.
    pub fn after(&mut self, views: &Views, event: &Event, timestamp_ns: u64) {
        match event.kind {
            EventKind::OrderAccepted { order, user, .. } | EventKind::OrderAmended { order, user, .. }
                if !self.open.contains(&(user, order)) =>
            {
                self.open.push((user, order));
            }
            EventKind::OrderDone { order, user, reason, filled, .. } => {
                self.open.retain(|(_, o)| *o != order);
                // A closed order never changes again: its state now is
                // final. Taken at once, because the views keep a bounded
                // number of closed orders per user (maybe none), and a
                // cancel-all of many orders pushes the first ones out
                // before the command ends; then it is the order as it
                // stood, closed as the views close one.
                let closed = views.user(user).and_then(|u| u.closed.back()).filter(|o| o.order == order);
                let closing = self.closing.take().filter(|o| o.order == order);
                match (closed, closing) {
                    (Some(closed), _) => self.orders.push(closed.clone()),
                    (None, Some(mut closing)) => {
                        closing.status = match reason {
                            DoneReason::Filled => OrderStatus::Filled,
                            DoneReason::Cancelled => OrderStatus::Cancelled,
                            DoneReason::Expired => OrderStatus::Expired,
                            DoneReason::Contingent => OrderStatus::ExpiredContingent,
                            DoneReason::Refused(_) => OrderStatus::Rejected,
                            DoneReason::SelfTrade => OrderStatus::ExpiredSelfTrade,
                            DoneReason::FundsExhausted => OrderStatus::ExpiredFunds,
                        };
                        closing.filled = filled;
                        closing.remaining = Lots(0);
                        closing.updated_seq = event.seq;
                        closing.updated_ns = timestamp_ns;
                        self.orders.push(closing);
                    }
                    (None, None) => {}
                }
            }
            _ => {}
        }
    }

    /// At the command's last event: the orders it touched, as they stand.
    pub fn finish(&mut self, views: &Views) -> Vec<OrderView> {
        for (user, order) in self.open.drain(..) {
            if let Some(open) = views.user(user).and_then(|u| u.open.get(&order)) {
                self.orders.push(open.clone());
            }
        }
        std::mem::take(&mut self.orders)
    }
}
