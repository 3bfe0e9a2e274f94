//! A small driver for tests: stamps commands, keeps the events of the last
//! one, and checks every invariant after each command (what its events
//! touched, then the whole state).

#![allow(dead_code)]

use engine_core::*;

pub const BTC: AssetId = AssetId(0);
pub const USDT: AssetId = AssetId(1);
pub const ETH: AssetId = AssetId(2);
pub const BTC_USDT: MarketId = MarketId(0);

pub struct Harness {
    pub engine: Engine,
    pub seq: u64,
    pub events: Vec<Event>,
}

impl Harness {
    pub fn new() -> Harness {
        Harness::with_limits(EngineLimits::default())
    }

    pub fn with_limits(limits: EngineLimits) -> Harness {
        Harness { engine: Engine::new(limits), seq: 0, events: Vec::new() }
    }

    /// BTC (8 decimals) / USDT (6 decimals), lots of 10 sats, ticks worth 1
    /// unit of quote per lot, 0.1% maker and 0.2% taker fees, and `users`
    /// users with 1,000,000 lots' worth of base and 10^12 units of quote each.
    pub fn btc_usdt(users: u32) -> Harness {
        let mut h = Harness::new();
        h.ok(Command::CreateAsset { symbol: Symbol::new("BTC").unwrap(), decimals: 8 });
        h.ok(Command::CreateAsset { symbol: Symbol::new("USDT").unwrap(), decimals: 6 });
        h.ok(Command::CreateMarket { rules: h.rules(), status: MarketStatus::Open });
        for user in 0..users {
            h.ok(Command::CreateUser);
            h.ok(Command::Deposit { user: UserId(user), asset: BTC, amount: Units(10_000_000) });
            h.ok(Command::Deposit { user: UserId(user), asset: USDT, amount: Units(1_000_000_000_000) });
        }
        h
    }

    pub fn rules(&self) -> MarketRules {
        MarketRules {
            base: BTC,
            quote: USDT,
            base_units_per_lot: 10,
            quote_units_per_tick: 1,
            min_qty: Lots(1),
            min_notional: Units(1),
            maker_fee_ppm: 1_000,
            taker_fee_ppm: 2_000,
        }
    }

    /// Applies `command` and checks every invariant afterwards.
    pub fn run(&mut self, command: Command) -> &[Event] {
        self.seq += 1;
        self.events.clear();
        let stamped = StampedCommand { seq: self.seq, timestamp_ns: self.seq * 1_000, command };
        self.engine.apply(&stamped, &mut self.events).expect("harness keeps sequence numbers in order");
        assert!(!self.events.is_empty(), "every command yields an event");
        assert!(self.events.iter().all(|e| e.seq == self.seq), "every event carries its command's seq");
        if let Err(violation) = self.engine.check_touched(&self.events) {
            panic!("invariant broken after {command:?}: {violation}\nevents: {:#?}", self.events);
        }
        if let Err(violation) = self.engine.check_invariants() {
            panic!("invariant broken after {command:?}: {violation}\nevents: {:#?}", self.events);
        }
        &self.events
    }

    /// Applies `command` and asserts it was not rejected.
    pub fn ok(&mut self, command: Command) -> &[Event] {
        self.run(command);
        if let Some(reason) = self.rejection() {
            panic!("{command:?} was rejected: {reason}");
        }
        &self.events
    }

    /// Applies `command` and returns why it was rejected; panics if it was
    /// not, and checks that a rejection changed nothing.
    pub fn rejected(&mut self, command: Command) -> RejectReason {
        let before = self.engine.state_hash_without_seq();
        self.run(command);
        let Some(reason) = self.rejection() else {
            panic!("{command:?} was accepted: {:#?}", self.events);
        };
        assert_eq!(self.events.len(), 1, "a rejection is the only event");
        assert_eq!(self.engine.state_hash_without_seq(), before, "a rejection changed the state");
        reason
    }

    pub fn rejection(&self) -> Option<RejectReason> {
        self.events.iter().find_map(|e| match e.kind {
            EventKind::Rejected { reason, .. } => Some(reason),
            _ => None,
        })
    }

    pub fn place(&mut self, user: u32, side: Side, kind: OrderKind) -> &[Event] {
        self.run(Command::PlaceOrder(order(user, side, kind)))
    }

    pub fn limit(&mut self, user: u32, side: Side, price: u64, qty: u64) -> OrderId {
        self.place(
            user,
            side,
            OrderKind::Limit { price: Ticks(price), qty: Lots(qty), tif: TimeInForce::Gtc },
        );
        self.accepted().expect("limit order accepted")
    }

    pub fn accepted(&self) -> Option<OrderId> {
        self.events.iter().find_map(|e| match e.kind {
            EventKind::OrderAccepted { order, .. } => Some(order),
            _ => None,
        })
    }

    /// (maker order, taker order, price, qty) of each trade of the last command.
    pub fn trades(&self) -> Vec<(u64, u64, u64, u64)> {
        self.events
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::Trade { maker_order, taker_order, price, qty, .. } => {
                    Some((maker_order.0, taker_order.0, price.0, qty.0))
                }
                _ => None,
            })
            .collect()
    }

    /// (order, reason, filled, cancelled) of each order closed by the last command.
    pub fn done(&self) -> Vec<(u64, DoneReason, u64, u64)> {
        self.events
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::OrderDone { order, reason, filled, cancelled, .. } => {
                    Some((order.0, reason, filled.0, cancelled.0))
                }
                _ => None,
            })
            .collect()
    }

    pub fn depth(&self, side: Side) -> Vec<(u64, u64)> {
        self.engine.depth(BTC_USDT, side, usize::MAX).into_iter().map(|(p, q)| (p.0, q.0)).collect()
    }

    pub fn balance(&self, user: u32, asset: AssetId) -> (u64, u64) {
        let b = self.engine.balance(UserId(user), asset);
        (b.available.0, b.locked.0)
    }
}

pub fn order(user: u32, side: Side, kind: OrderKind) -> NewOrder {
    NewOrder {
        user: UserId(user),
        market: BTC_USDT,
        side,
        kind,
        client_order_id: None,
        stp: SelfTradePrevention::CancelTaker,
    }
}

pub fn limit_kind(price: u64, qty: u64, tif: TimeInForce) -> OrderKind {
    OrderKind::Limit { price: Ticks(price), qty: Lots(qty), tif }
}

pub trait HashWithoutSeq {
    /// The state hash with the sequence counter left out, to compare states
    /// before and after a command that must not change anything else.
    fn state_hash_without_seq(&self) -> u64;
}

impl HashWithoutSeq for Engine {
    fn state_hash_without_seq(&self) -> u64 {
        let mut snapshot = self.snapshot();
        snapshot.last_seq = 0;
        Engine::from_snapshot(snapshot).expect("a live state reloads").state_hash()
    }
}
