//! Balances: what each user holds, what the fee account collected, and the
//! totals that conservation is checked against.
//!
//! Every amount is a `u64` of the asset's smallest unit. Deposits are
//! refused when they would take an asset's outstanding supply (deposits
//! minus withdrawals) past `u64::MAX`; since every balance and the fee
//! account are parts of that supply, no credit can overflow afterwards, and
//! the arithmetic below asserts it.

use serde::{Deserialize, Serialize};

use crate::book::NIL;
use crate::units::{AssetId, ClientOrderId, OrderId, Units};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    /// Free to trade or withdraw.
    pub available: Units,
    /// Held by open orders: exactly what they can still spend.
    pub locked: Units,
}

/// Per asset: what came in, what went out, and the fees collected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetTotals {
    pub deposited: u128,
    pub withdrawn: u128,
    pub fees: Units,
}

impl AssetTotals {
    /// Deposits minus withdrawals: what users and the fee account hold together.
    pub fn outstanding(&self) -> u128 {
        self.deposited - self.withdrawn
    }
}

/// One user's balances and the heads of their open-order list.
#[derive(Clone, Debug)]
pub(crate) struct Account {
    /// Indexed by asset id; shorter than the asset table until the user
    /// first touches a later asset (missing entries are zero).
    pub balances: Vec<Balance>,
    pub open_orders: u32,
    /// The user's open orders, oldest id first, linked through the slab.
    pub orders_head: u32,
    pub orders_tail: u32,
    /// Client order ids of the user's open orders. Sorted by id and searched
    /// by bisection: a user has few open orders, and a `Vec` needs no hasher
    /// whose iteration order could leak into the output.
    pub client_ids: Vec<(ClientOrderId, OrderId)>,
    /// How many API keys the user holds.
    pub api_keys: u32,
}

impl Account {
    pub fn new() -> Account {
        Account {
            balances: Vec::new(),
            open_orders: 0,
            orders_head: NIL,
            orders_tail: NIL,
            client_ids: Vec::new(),
            api_keys: 0,
        }
    }

    pub fn balance(&self, asset: AssetId) -> Balance {
        self.balances.get(asset.index()).copied().unwrap_or_default()
    }

    pub fn balance_mut(&mut self, asset: AssetId) -> &mut Balance {
        let index = asset.index();
        if self.balances.len() <= index {
            self.balances.resize(index + 1, Balance::default());
        }
        &mut self.balances[index]
    }

    pub fn find_client_id(&self, client_order_id: &ClientOrderId) -> Option<OrderId> {
        self.client_ids
            .binary_search_by(|(id, _)| id.cmp(client_order_id))
            .ok()
            .map(|index| self.client_ids[index].1)
    }

    pub fn add_client_id(&mut self, client_order_id: ClientOrderId, order: OrderId) {
        match self.client_ids.binary_search_by(|(id, _)| id.cmp(&client_order_id)) {
            Ok(_) => debug_assert!(false, "client order id {client_order_id} added twice"),
            Err(index) => self.client_ids.insert(index, (client_order_id, order)),
        }
    }

    pub fn remove_client_id(&mut self, client_order_id: &ClientOrderId) {
        if let Ok(index) = self.client_ids.binary_search_by(|(id, _)| id.cmp(client_order_id)) {
            self.client_ids.remove(index);
        }
    }
}

impl Balance {
    pub fn credit_available(&mut self, amount: Units) {
        self.available = Units(
            self.available
                .0
                .checked_add(amount.0)
                .expect("a balance never exceeds its asset's outstanding supply, which fits u64"),
        );
    }

    /// Moves `amount` from available to locked; the caller checked funds.
    pub fn lock(&mut self, amount: Units) {
        assert!(self.available >= amount, "locking more than is available");
        self.available.0 -= amount.0;
        self.locked.0 += amount.0;
    }

    /// Moves `amount` from locked back to available.
    pub fn unlock(&mut self, amount: Units) {
        assert!(self.locked >= amount, "unlocking more than is locked");
        self.locked.0 -= amount.0;
        self.available.0 += amount.0;
    }

    pub fn debit_available(&mut self, amount: Units) {
        assert!(self.available >= amount, "spending more than is available");
        self.available.0 -= amount.0;
    }

    pub fn debit_locked(&mut self, amount: Units) {
        assert!(self.locked >= amount, "spending more than is locked");
        self.locked.0 -= amount.0;
    }
}
