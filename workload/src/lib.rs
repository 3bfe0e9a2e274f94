//! Seeded workloads: the command streams that the benchmarks, the
//! journal and recovery tests, and the load generator feed the exchange.
//!
//! This crate owns the generator and the workload file format. It must
//! never be a dependency of the exchange itself.
//!
//! Two shapes, both from a seed, so a run can be repeated exactly:
//!
//! * **single-market**: BTC-USDT, 1,000 users. The mid price moves by a
//!   random walk (one tick up or down on a quarter of the commands). The mix
//!   per command is 70% GTC limit orders within ± 50 ticks of the mid, 25%
//!   cancels of a resting order picked at random, and 5% market orders by
//!   quantity; half buys, half sells; quantities 1 to 20 lots. The book is
//!   steered towards a depth of 5,000 resting orders: below it, limit
//!   orders go on the passive side of the mid (buys below, sells above);
//!   above it, half of them go on the aggressive side and trade at once
//!   (and rest if anything is left). Without the steering this mix eats its
//!   own book down to a handful of orders, which flatters any engine.
//! * **many-markets**: the same mix over 32 markets (each its own base asset
//!   against USDT, each steered towards 1,000 resting orders) and 10,000
//!   users; each command picks a market at random.
//! * **peer**: the workload the `peer` benchmark replays through this engine
//!   and through another order book: one market, 1,000 users, the same mix
//!   (70% GTC limits within 50 ticks of the random-walk mid, 25% cancels, 5%
//!   market orders) with quantities of 1 to 100 lots and no steering: every
//!   limit order goes on its passive side (buys at or below the mid, sells at
//!   or above), and the mid moves a tick on an eighth of the commands, so
//!   orders trade as the mid walks into them and the book grows to about
//!   100,000 resting orders after 2M commands (seed 42), many of them
//!   stranded away from the mid until a cancel takes them.
//!   Self-trade prevention is off (`Allow`), so that a book that knows no
//!   users matches exactly the same trades.
//!
//! With [`Mix::special_percent`] above 0 ([`generate_mix`]), that share of
//! the commands is taken from the limit orders and spent on the order types
//! of issue 17, each drawn as follows: 40% stop and take-profit orders
//! (market or limit, 1 in 4 of them trailing, a delta of 1 to 20 basis
//! points) whose stop price is 1 to 50 ticks from the last trade price on
//! the side where it waits, so that the random walk fires them; 40%
//! icebergs on the passive side (20 to 100 lots, showing 5 to 20); 20%
//! order lists, half OCO (a post-only limit on the passive side and a
//! stop-loss on the other) and half OTO (a passive limit that places a limit
//! on the other side when it fills). Cancels pick among resting, waiting
//! and listed orders alike.
//!
//! Every user starts with far more funds than the run can spend, so the mix
//! is matching work, not rejections. The generator runs an engine alongside
//! to know which orders rest, so a cancel always names a live order. Fees
//! are on (maker 0.02%, taker 0.05%), as are balances: this is the whole
//! engine, not a bare order book.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use engine_core::{
    AssetId, Command, Contingency, Engine, EngineLimits, Event, EventKind, ListLeg, Lots, MarketId,
    MarketRules, MarketStatus, NewOrder, NewOrderList, OrderId, OrderKind, OrderRef, SelfTradePrevention,
    Side, StampedCommand, Symbol, Ticks, TimeInForce, Trigger, TriggerKind, Units, UserId,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    SingleMarket,
    ManyMarkets,
    Peer,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::SingleMarket => "single-market",
            Shape::ManyMarkets => "many-markets",
            Shape::Peer => "peer",
        }
    }

    fn markets(self) -> u32 {
        match self {
            Shape::SingleMarket | Shape::Peer => 1,
            Shape::ManyMarkets => 32,
        }
    }

    /// The depth each book is steered towards, in resting orders (`None`:
    /// not steered).
    fn resting_target(self) -> Option<usize> {
        match self {
            Shape::SingleMarket => Some(5_000),
            Shape::ManyMarkets => Some(1_000),
            Shape::Peer => None,
        }
    }

    fn users(self) -> u32 {
        match self {
            Shape::SingleMarket | Shape::Peer => 1_000,
            Shape::ManyMarkets => 10_000,
        }
    }

    /// The mid moves one tick up on one draw of `0..walk_draw()` and one
    /// tick down on another: on a quarter of the commands, or an eighth.
    fn walk_draw(self) -> u64 {
        match self {
            Shape::SingleMarket | Shape::ManyMarkets => 8,
            Shape::Peer => 16,
        }
    }

    fn qty_max_lots(self) -> u64 {
        match self {
            Shape::SingleMarket | Shape::ManyMarkets => 20,
            Shape::Peer => 100,
        }
    }

    fn stp(self) -> SelfTradePrevention {
        match self {
            Shape::SingleMarket | Shape::ManyMarkets => SelfTradePrevention::CancelTaker,
            // A peer book without users cannot prevent self-trades; with them
            // allowed here too, both match the same trades.
            Shape::Peer => SelfTradePrevention::Allow,
        }
    }
}

/// The share of commands spent on stops, take-profits, icebergs and order
/// lists (see the crate's documentation for how they are drawn).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    /// Percent of all commands, taken out of the limit orders (at most 70).
    pub special_percent: u64,
}

impl Mix {
    /// Limit orders, cancels and market orders only.
    pub const PLAIN: Mix = Mix { special_percent: 0 };
}

/// Reference data and funding (not timed), then the measured commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub description: String,
    pub limits: EngineLimits,
    pub setup: Vec<Command>,
    pub commands: Vec<Command>,
}

impl Workload {
    /// Setup and measured commands in order, numbered from 1, stamped
    /// `timestamp_step_ns` apart from `first_timestamp_ns`.
    pub fn stamped(&self, first_timestamp_ns: u64, timestamp_step_ns: u64) -> Vec<StampedCommand> {
        self.setup
            .iter()
            .chain(&self.commands)
            .enumerate()
            .map(|(i, command)| StampedCommand {
                seq: i as u64 + 1,
                timestamp_ns: first_timestamp_ns + i as u64 * timestamp_step_ns,
                command: *command,
            })
            .collect()
    }
}

const MID_START_TICKS: u64 = 5_000_000;
const PRICE_SPREAD_TICKS: u64 = 50;

/// SplitMix64: small, fast and the same on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is far below what matters here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Orders known to rest, so that cancels can pick one in O(1).
#[derive(Default)]
struct RestingSet {
    orders: Vec<(OrderId, UserId)>,
    position: HashMap<OrderId, usize>,
}

impl RestingSet {
    fn insert(&mut self, order: OrderId, user: UserId) {
        self.position.insert(order, self.orders.len());
        self.orders.push((order, user));
    }

    fn remove(&mut self, order: OrderId) {
        if let Some(index) = self.position.remove(&order) {
            self.orders.swap_remove(index);
            if let Some(&(moved, _)) = self.orders.get(index) {
                self.position.insert(moved, index);
            }
        }
    }

    fn follow(&mut self, events: &[Event]) {
        for event in events {
            match event.kind {
                EventKind::OrderAccepted {
                    order,
                    user,
                    kind:
                        OrderKind::Limit { tif: TimeInForce::Gtc | TimeInForce::PostOnly, .. }
                        | OrderKind::Iceberg { .. }
                        | OrderKind::StopMarket { .. }
                        | OrderKind::StopLimit { .. },
                    ..
                } => self.insert(order, user),
                EventKind::OrderDone { order, .. } => self.remove(order),
                _ => {}
            }
        }
    }
}

/// Generates `count` measured commands of `shape` from `seed`.
pub fn generate(shape: Shape, count: usize, seed: u64) -> Workload {
    generate_mix(shape, count, seed, Mix::PLAIN)
}

/// A stop or take-profit, an iceberg or an order list around `mid` and the
/// last trade price `last`, as the crate's documentation describes.
fn special_command(
    rng: &mut Rng,
    user: UserId,
    market: MarketId,
    side: Side,
    mid: u64,
    last: u64,
    stp: SelfTradePrevention,
) -> Command {
    let passive = |rng: &mut Rng, side: Side| {
        let offset = 1 + rng.below(PRICE_SPREAD_TICKS);
        match side {
            Side::Buy => Ticks(mid - offset),
            Side::Sell => Ticks(mid + offset),
        }
    };
    let single =
        |kind| Command::PlaceOrder(NewOrder { user, market, side, kind, client_order_id: None, stp });
    let roll = rng.below(10);
    if roll < 4 {
        // Waits on the side it fires from: a stop-loss buy above the last
        // price, a take-profit buy below it, and the reverse for sells.
        let take_profit = rng.below(2) == 0;
        let distance = 1 + rng.below(50);
        let above = (side == Side::Buy) != take_profit;
        let stop = if above { last + distance } else { last - distance };
        let kind = if take_profit { TriggerKind::TakeProfit } else { TriggerKind::StopLoss };
        let trailing_bips = if rng.below(4) == 0 { 1 + rng.below(20) as u16 } else { 0 };
        let trigger = Trigger { kind, stop: Some(Ticks(stop)), trailing_bips };
        let qty = Lots(1 + rng.below(20));
        if rng.below(2) == 0 {
            single(OrderKind::StopMarket { trigger, qty })
        } else {
            let price = if side == Side::Buy { Ticks(stop + 5) } else { Ticks(stop - 5) };
            single(OrderKind::StopLimit { trigger, price, qty, tif: TimeInForce::Gtc, visible: Lots(0) })
        }
    } else if roll < 8 {
        let qty = 20 + rng.below(81);
        let visible = 5 + rng.below(16);
        single(OrderKind::Iceberg {
            price: passive(rng, side),
            qty: Lots(qty),
            visible: Lots(visible),
            tif: TimeInForce::Gtc,
        })
    } else {
        let qty = Lots(1 + rng.below(20));
        let oco = rng.below(2) == 0;
        let legs = if oco {
            let distance = 1 + rng.below(50);
            let stop = if side == Side::Buy { last + distance } else { last - distance };
            let trigger = Trigger { kind: TriggerKind::StopLoss, stop: Some(Ticks(stop)), trailing_bips: 0 };
            [
                ListLeg {
                    side,
                    kind: OrderKind::Limit { price: passive(rng, side), qty, tif: TimeInForce::PostOnly },
                    client_order_id: None,
                },
                ListLeg { side, kind: OrderKind::StopMarket { trigger, qty }, client_order_id: None },
            ]
        } else {
            [
                ListLeg {
                    side,
                    kind: OrderKind::Limit { price: passive(rng, side), qty, tif: TimeInForce::Gtc },
                    client_order_id: None,
                },
                ListLeg {
                    side: side.opposite(),
                    kind: OrderKind::Limit {
                        price: passive(rng, side.opposite()),
                        qty,
                        tif: TimeInForce::Gtc,
                    },
                    client_order_id: None,
                },
            ]
        };
        Command::PlaceOrderList(NewOrderList {
            user,
            market,
            contingency: if oco { Contingency::Oco } else { Contingency::Oto },
            client_list_id: None,
            stp,
            legs,
        })
    }
}

/// Generates `count` measured commands of `shape` from `seed`, with `mix`'s
/// share of stops, take-profits, icebergs and order lists.
pub fn generate_mix(shape: Shape, count: usize, seed: u64, mix: Mix) -> Workload {
    assert!(mix.special_percent <= 70, "the special orders are taken from the 70% of limit orders");
    let markets = shape.markets();
    let users = shape.users();
    let quote = AssetId(markets);
    let mut setup = Vec::new();
    for market in 0..markets {
        let symbol = if shape == Shape::SingleMarket { "BTC".to_string() } else { format!("COIN{market}") };
        let symbol = Symbol::new(&symbol).expect("generated symbols are valid");
        setup.push(Command::CreateAsset { symbol, decimals: 8 });
    }
    setup.push(Command::CreateAsset { symbol: Symbol::new("USDT").expect("valid"), decimals: 6 });
    for market in 0..markets {
        let rules = MarketRules {
            base: AssetId(market),
            quote,
            base_units_per_lot: 10_000, // 0.0001 of the base
            quote_units_per_tick: 1,    // a tick of 0.01 USDT on one lot
            min_qty: Lots(1),
            min_notional: Units(1),
            maker_fee_ppm: 200,
            taker_fee_ppm: 500,
        };
        setup.push(Command::CreateMarket { rules, status: MarketStatus::Open });
    }
    // Enough that nobody runs dry, within every asset's supply limit.
    let base_each = Units(u64::MAX / 4 / u64::from(users));
    let quote_each = Units(u64::MAX / 4 / u64::from(users));
    for user in 0..users {
        setup.push(Command::CreateUser);
        for market in 0..markets {
            setup.push(Command::Deposit { user: UserId(user), asset: AssetId(market), amount: base_each });
        }
        setup.push(Command::Deposit { user: UserId(user), asset: quote, amount: quote_each });
    }

    let limits = EngineLimits::default();
    let mut engine = Engine::new(limits);
    let mut events = Vec::new();
    let mut seq = 0u64;
    let mut apply = |engine: &mut Engine, command: Command, events: &mut Vec<Event>| {
        seq += 1;
        events.clear();
        engine
            .apply(&StampedCommand { seq, timestamp_ns: seq, command }, events)
            .expect("the generator numbers commands in order");
    };
    for command in &setup {
        apply(&mut engine, *command, &mut events);
    }

    let mut rng = Rng::new(seed);
    let mut mids = vec![MID_START_TICKS; markets as usize];
    let mut resting: Vec<RestingSet> = (0..markets).map(|_| RestingSet::default()).collect();
    let mut last_prices = vec![MID_START_TICKS; markets as usize];
    let mut commands = Vec::with_capacity(count);
    for _ in 0..count {
        let market = rng.below(u64::from(markets)) as usize;
        let mid = &mut mids[market];
        match rng.below(shape.walk_draw()) {
            0 => *mid += 1,
            1 => *mid -= 1,
            _ => {}
        }
        let user = UserId(rng.below(u64::from(users)) as u32);
        let side = if rng.below(2) == 0 { Side::Buy } else { Side::Sell };
        let qty = Lots(1 + rng.below(shape.qty_max_lots()));
        let roll = rng.below(100);
        let book = &resting[market];
        let command = if roll < mix.special_percent {
            let (mid, last) = (*mid, last_prices[market]);
            special_command(&mut rng, user, MarketId(market as u32), side, mid, last, shape.stp())
        } else if (70..95).contains(&roll) && !book.orders.is_empty() {
            let (order, owner) = book.orders[rng.below(book.orders.len() as u64) as usize];
            Command::CancelOrder { user: owner, order: OrderRef::Id(order) }
        } else {
            let kind = if roll >= 95 {
                OrderKind::Market { qty }
            } else {
                let offset = rng.below(PRICE_SPREAD_TICKS + 1);
                // Below its target depth the book is rebuilt by passive
                // orders; above it, orders land anywhere in the band and
                // about half of them trade at once.
                // Unsteered, every order goes on its passive side.
                let passive = shape
                    .resting_target()
                    .is_none_or(|target| book.orders.len() < target || rng.below(2) == 0);
                let price = match (side, passive) {
                    (Side::Buy, true) | (Side::Sell, false) => Ticks(*mid - offset),
                    (Side::Sell, true) | (Side::Buy, false) => Ticks(*mid + offset),
                };
                OrderKind::Limit { price, qty, tif: TimeInForce::Gtc }
            };
            Command::PlaceOrder(NewOrder {
                user,
                market: MarketId(market as u32),
                side,
                kind,
                client_order_id: None,
                stp: shape.stp(),
            })
        };
        apply(&mut engine, command, &mut events);
        resting[market].follow(&events);
        if let Some(price) = events.iter().rev().find_map(|e| match e.kind {
            EventKind::Trade { price, .. } => Some(price.0),
            _ => None,
        }) {
            last_prices[market] = price;
        }
        commands.push(command);
    }

    Workload {
        description: format!(
            "{} workload{}, seed {seed}, {count} commands, {} orders open at the end",
            shape.name(),
            if mix.special_percent > 0 {
                format!(" with {}% stops, icebergs and lists", mix.special_percent)
            } else {
                String::new()
            },
            engine.open_order_count()
        ),
        limits,
        setup,
        commands,
    }
}

/// The first bytes of a workload file; a `u32` format version follows.
const MAGIC: &[u8; 8] = b"EXWORKLD";
/// The format written: the [`Workload`] in the project's codec.
const FILE_FORMAT_VERSION: u32 = 2;
/// The whole header of files written before the project's codec (the
/// version was in the magic; the workload in bincode 2's standard layout).
/// Still read.
const MAGIC_BINCODE: &[u8; 8] = b"EXWLOAD1";

#[derive(Debug)]
pub enum WorkloadFileError {
    Io(io::Error),
    NotAWorkload,
    Decode(String),
}

impl fmt::Display for WorkloadFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkloadFileError::Io(error) => write!(f, "cannot read or write the workload file: {error}"),
            WorkloadFileError::NotAWorkload => {
                f.write_str("not a workload file of this version (write one with the `workload` binary)")
            }
            WorkloadFileError::Decode(why) => write!(f, "the workload file is damaged: {why}"),
        }
    }
}

impl std::error::Error for WorkloadFileError {}

impl From<io::Error> for WorkloadFileError {
    fn from(error: io::Error) -> WorkloadFileError {
        WorkloadFileError::Io(error)
    }
}

pub fn write(workload: &Workload, path: &Path) -> Result<(), WorkloadFileError> {
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&FILE_FORMAT_VERSION.to_le_bytes());
    codec::encode_append(workload, &mut bytes).map_err(|e| WorkloadFileError::Decode(e.to_string()))?;
    let mut out = BufWriter::new(File::create(path)?);
    out.write_all(&bytes)?;
    out.flush()?;
    Ok(())
}

pub fn read(path: &Path) -> Result<Workload, WorkloadFileError> {
    let mut bytes = Vec::new();
    BufReader::new(File::open(path)?).read_to_end(&mut bytes)?;
    let decoded = if let Some(body) = bytes.strip_prefix(MAGIC_BINCODE) {
        codec::decode_bincode_standard(body)
    } else {
        let Some(rest) = bytes.strip_prefix(MAGIC) else {
            return Err(WorkloadFileError::NotAWorkload);
        };
        let Some((version, body)) = rest.split_first_chunk::<4>() else {
            return Err(WorkloadFileError::NotAWorkload);
        };
        if u32::from_le_bytes(*version) != FILE_FORMAT_VERSION {
            return Err(WorkloadFileError::NotAWorkload);
        }
        codec::decode(body)
    };
    decoded.map_err(|e| WorkloadFileError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_workload_and_the_mix_is_as_documented() {
        let a = generate(Shape::SingleMarket, 20_000, 1);
        assert_eq!(a, generate(Shape::SingleMarket, 20_000, 1));
        assert_ne!(a.commands, generate(Shape::SingleMarket, 20_000, 2).commands);
        let (mut limits, mut markets, mut cancels) = (0, 0, 0);
        for command in &a.commands {
            match command {
                Command::PlaceOrder(NewOrder { kind: OrderKind::Limit { .. }, .. }) => limits += 1,
                Command::PlaceOrder(NewOrder { kind: OrderKind::Market { .. }, .. }) => markets += 1,
                Command::CancelOrder { .. } => cancels += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        let pct = |n: usize| n * 100 / a.commands.len();
        assert!((68..=73).contains(&pct(limits)), "limits {}%", pct(limits));
        assert!((23..=26).contains(&pct(cancels)), "cancels {}%", pct(cancels));
        assert!((4..=6).contains(&pct(markets)), "markets {}%", pct(markets));
    }

    /// A 10% share of stops, icebergs and lists: about that share of the
    /// commands, nearly none refused, and they really fire, refill and
    /// release; the engine's invariants hold at the end.
    #[test]
    fn the_special_mix_places_stops_icebergs_and_lists_that_fire() {
        let workload = generate_mix(Shape::SingleMarket, 40_000, 4, Mix { special_percent: 10 });
        assert_eq!(workload, generate_mix(Shape::SingleMarket, 40_000, 4, Mix { special_percent: 10 }));
        let special = workload
            .commands
            .iter()
            .filter(|c| match c {
                Command::PlaceOrder(NewOrder { kind, .. }) => {
                    !matches!(kind, OrderKind::Limit { .. } | OrderKind::Market { .. })
                }
                Command::PlaceOrderList(_) => true,
                _ => false,
            })
            .count();
        let pct = special * 100 / workload.commands.len();
        assert!((9..=11).contains(&pct), "{pct}% special");
        let mut engine = Engine::new(workload.limits);
        let mut events = Vec::new();
        let (mut rejected, mut fired, mut refills, mut released) = (0, 0, 0, 0);
        for (i, command) in workload.setup.iter().chain(&workload.commands).enumerate() {
            events.clear();
            let stamped = StampedCommand { seq: i as u64 + 1, timestamp_ns: 0, command: *command };
            engine.apply(&stamped, &mut events).unwrap();
            for event in &events {
                match event.kind {
                    EventKind::Rejected { .. } => rejected += 1,
                    EventKind::OrderTriggered { .. } => fired += 1,
                    EventKind::OrderRefilled { .. } => refills += 1,
                    EventKind::OrderReleased { .. } => released += 1,
                    _ => {}
                }
            }
        }
        assert!(rejected * 100 < special, "{rejected} of {special} refused");
        assert!(
            fired > 300 && refills > 300 && released > 20,
            "{fired} fired, {refills} refills, {released} released"
        );
        engine.check_invariants().unwrap();
    }

    #[test]
    fn the_peer_shape_is_unsteered_with_large_orders_and_self_trades_allowed() {
        let workload = generate(Shape::Peer, 20_000, 5);
        let mut engine = Engine::new(workload.limits);
        let mut events = Vec::new();
        let (mut qty_max, mut cancels, mut markets) = (0, 0, 0);
        for (i, command) in workload.setup.iter().chain(&workload.commands).enumerate() {
            match command {
                Command::PlaceOrder(NewOrder { kind: OrderKind::Limit { qty, .. }, stp, market, .. }) => {
                    assert_eq!((*stp, *market), (SelfTradePrevention::Allow, MarketId(0)));
                    qty_max = qty_max.max(qty.0);
                }
                Command::PlaceOrder(NewOrder { kind: OrderKind::Market { .. }, .. }) => markets += 1,
                Command::CancelOrder { .. } => cancels += 1,
                _ => {}
            }
            events.clear();
            let stamped = StampedCommand { seq: i as u64 + 1, timestamp_ns: 0, command: *command };
            engine.apply(&stamped, &mut events).unwrap();
            assert!(!events.iter().any(|e| matches!(e.kind, EventKind::Rejected { .. })), "command {i}");
        }
        assert!((90..=100).contains(&qty_max), "quantities reach 100 lots, got at most {qty_max}");
        assert!((4_600..=5_400).contains(&cancels), "{cancels} cancels");
        assert!((800..=1_200).contains(&markets), "{markets} market orders");
        // Unsteered, the book keeps far more than the single-market shape's 5,000.
        assert!(engine.open_order_count() > 5_000, "{} resting", engine.open_order_count());
        engine.check_invariants().unwrap();
    }

    #[test]
    fn cancels_name_live_orders_and_nothing_is_rejected() {
        let workload = generate(Shape::ManyMarkets, 20_000, 3);
        let mut engine = Engine::new(workload.limits);
        let mut events = Vec::new();
        for (i, command) in workload.setup.iter().chain(&workload.commands).enumerate() {
            events.clear();
            let stamped = StampedCommand { seq: i as u64 + 1, timestamp_ns: 0, command: *command };
            engine.apply(&stamped, &mut events).unwrap();
            assert!(
                !events.iter().any(|e| matches!(e.kind, EventKind::Rejected { .. })),
                "command {i} rejected: {events:?}"
            );
        }
        engine.check_invariants().unwrap();
    }

    #[test]
    fn workload_files_round_trip_and_damage_is_reported() {
        let dir = std::env::temp_dir().join(format!("exchange-workload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.workload");
        let workload = generate(Shape::SingleMarket, 5_000, 9);
        write(&workload, &path).unwrap();
        assert_eq!(read(&path).unwrap(), workload);

        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(read(&path), Err(WorkloadFileError::Decode(_))));
        let mut future = bytes.clone();
        future[8..12].copy_from_slice(&3u32.to_le_bytes());
        std::fs::write(&path, &future).unwrap();
        assert!(matches!(read(&path), Err(WorkloadFileError::NotAWorkload)));
        std::fs::write(&path, b"something else entirely").unwrap();
        assert!(matches!(read(&path), Err(WorkloadFileError::NotAWorkload)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
