//! Work a command leaves for later within itself (fired and released
//! orders wait their turn), and the space the engine reuses from one
//! command to the next for it.

use std::collections::VecDeque;

use crate::triggers::Entry;
use crate::units::{OrderId, Ticks};

/// Work a command leaves for after the order matching now has finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FollowUp {
    /// A waiting order fired at `price`: it enters the market.
    Enter { slot: u32, order: OrderId, price: Ticks },
    /// An OTO's working order filled: its pending order is placed.
    Release { slot: u32, order: OrderId },
}

/// Space the engine reuses from one command to the next; not state (a
/// command always leaves it empty).
#[derive(Clone, Debug, Default)]
pub(crate) struct Scratch {
    /// The prices of the trades of the order matching now, in order,
    /// repeated prices once.
    pub prices: Vec<Ticks>,
    pub reached: Vec<Entry>,
    pub fired: Vec<Entry>,
    pub queue: VecDeque<FollowUp>,
    pub slots: Vec<(OrderId, u32)>,
}

impl Scratch {
    #[inline]
    pub fn note_trade(&mut self, price: Ticks) {
        if self.prices.last() != Some(&price) {
            self.prices.push(price);
        }
    }
}
