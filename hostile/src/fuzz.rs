//! The fuzz targets' bodies. Each must hold for any input; a panic is a
//! bug found.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::PathBuf;
use std::sync::OnceLock;

use engine_core::{
    ApiKey, ApiSecret, AssetId, Balance, ClientOrderId, Command, Contingency, DoneReason, Engine,
    EngineLimits, Event, EventKind, ListId, ListLeg, ListRef, Lots, MarketId, MarketRules, MarketStatus,
    NewOrder, NewOrderList, OrderId, OrderKind, OrderRef, RejectReason, SelfTradePrevention, Side,
    StampedCommand, Symbol, Ticks, TimeInForce, TouchedScratch, Trigger, TriggerKind, Units, UserId,
};
use gateway::views::Views;

/// Small limits: a fresh engine per input must be cheap.
fn limits() -> EngineLimits {
    EngineLimits {
        open_orders_per_user_max: 64,
        orders_max: 512,
        assets_max: 8,
        markets_max: 8,
        users_max: 16,
        api_keys_per_user_max: 2,
    }
}

/// A scratch directory for targets that read files, one per process.
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("exchange-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir
    })
}

/// Arbitrary bytes as a journal segment: the opener and the reader must
/// refuse or read them, never panic; every record read is in sequence.
pub fn journal_segment(data: &[u8]) {
    let dir = scratch().join("journal");
    let _ = std::fs::remove_dir_all(&dir);
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    // Segments named for sequence 1; the first byte picks a second one.
    let split = data.first().map_or(0, |b| usize::from(*b)) * data.len() / 256;
    let (first, second) = data.split_at(split.min(data.len()));
    let _ = std::fs::write(dir.join(journal::segment_file_name(1)), first);
    if !second.is_empty() {
        let _ = std::fs::write(dir.join(journal::segment_file_name(1_000)), second);
    }
    for mode in [journal::ReadMode::Strict, journal::ReadMode::Follow] {
        let Ok(mut reader) = journal::JournalReader::open(&dir, 1, mode) else { continue };
        let mut expected = 1;
        while let Ok(Some(command)) = reader.next() {
            assert_eq!(command.seq, expected, "records come out in sequence");
            expected += 1;
        }
    }
    let mut offset = journal::SEGMENT_HEADER_BYTES;
    while let journal::Frame::Record { next_offset, .. } = journal::read_frame(data, offset) {
        assert!(next_offset > offset, "reading moves forward");
        offset = next_offset;
    }
    let _ = journal::inspect(&dir, |_| {});
}

/// Small Raft segments, so that seeds are small and a frame is a large part
/// of one.
const RAFT_FUZZ_LIMITS: journal::RaftLogLimits =
    journal::RaftLogLimits { segment_bytes: 4096, max_entry_bytes: 512 };

/// Arbitrary bytes as a Raft log segment (format 3), as `RAFT_STATE` and as
/// `RAFT_SEGMENTS`: refused with an error or read, never a panic. A log
/// that opens reads back every entry from first to last in order, takes
/// the next append, and opens again to the same last entry (what open cut,
/// it cut for good).
pub fn raft_log(data: &[u8]) {
    let _ = journal::check_raft_segment(data);
    let _ = journal::decode_raft_state(data);
    let _ = journal::decode_raft_segments_file(data);
    let dir = scratch().join("raft");
    let _ = std::fs::remove_dir_all(&dir);
    // A directory that recorded no segment yet: open then scans the one
    // written below, named as its header says (else the name is refused
    // before anything deeper is reached).
    match journal::RaftLog::open(&dir, RAFT_FUZZ_LIMITS) {
        Ok(log) => drop(log),
        Err(_) => return,
    }
    let first_index = data.get(16..24).map_or(1, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    if std::fs::write(dir.join(journal::raft_segment_file_name(first_index)), data).is_err() {
        return;
    }
    if let Ok(mut log) = journal::RaftLog::open(&dir, RAFT_FUZZ_LIMITS) {
        if let (Some(first), Some(last)) = (log.first(), log.last().filter(|last| last.index < u64::MAX)) {
            assert!(
                first.index <= last.index && first.term <= last.term,
                "first {first:?} after last {last:?}"
            );
            let entries = log
                .read_range(first.index, last.index + 1, usize::MAX)
                .expect("every indexed entry reads back");
            assert_eq!(entries.len() as u64, last.index - first.index + 1, "one entry per index");
            assert!(
                entries.windows(2).all(|w| w[1].index == w[0].index + 1 && w[1].term >= w[0].term),
                "entries in order"
            );
        }
        let next = log.last().map_or(1, |last| last.index + 1);
        let term = log.last().map_or(1, |last| last.term);
        if next < u64::MAX / 2 {
            log.append(next, term, journal::EntryKind::Blank, b"").expect("the next entry appends");
            drop(log);
            let log = journal::RaftLog::open(&dir, RAFT_FUZZ_LIMITS).expect("a log it wrote opens again");
            assert_eq!(
                log.last(),
                Some(journal::LogPosition { index: next, term }),
                "nothing lost on reopen"
            );
        }
    }
    let _ = std::fs::write(dir.join(journal::RAFT_STATE_FILE_NAME), data);
    if let Ok((mut file, Some(state))) = journal::RaftStateFile::open(&dir) {
        // What was read saves and reads back.
        file.save(&state, true).expect("a state read saves again");
        let (_, again) = journal::RaftStateFile::open(&dir).expect("a saved state opens");
        assert_eq!(again, Some(state), "the saved state reads back");
    }
}

/// Arbitrary bytes as a snapshot file, and as a snapshot payload whose
/// checksums are right: refused or loaded, and a loaded state holds the
/// engine's invariants.
pub fn snapshot(data: &[u8]) {
    let dir = scratch().join("snapshots");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(journal::snapshot_file_name(1));
    if std::fs::write(&path, data).is_ok() {
        if let Ok((engine, _)) = journal::load_snapshot(&path) {
            assert!(engine.check_invariants().is_ok(), "a loaded snapshot holds the invariants");
        }
    }
    for version in [journal::SNAPSHOT_FILE_VERSION, journal::SNAPSHOT_FILE_VERSION_BINCODE] {
        if let Ok(engine) = journal::decode_snapshot_payload_of_version(data, version) {
            assert!(engine.check_invariants().is_ok(), "a decoded snapshot holds the invariants");
        }
    }
}

/// Arbitrary bytes as a journal record's payload, in both layouts (the
/// project's codec, and bincode's of format-1 segments): refused or read,
/// never a panic. What the project's layout reads it writes back byte for
/// byte (one command, one encoding), and a command read from the old
/// layout survives the new one unchanged.
pub fn codec_command(data: &[u8]) {
    if let Ok(command) = journal::decode_command(data, journal::SEGMENT_FORMAT_VERSION) {
        let mut encoded = [0u8; journal::PAYLOAD_MAX_BYTES];
        let len = codec::encode_into_slice(&command, &mut encoded).expect("a decoded command encodes");
        assert_eq!(&encoded[..len], data, "a command has one encoding");
    }
    if let Ok(command) = journal::decode_command(data, journal::SEGMENT_FORMAT_VERSION_BINCODE) {
        let encoded = codec::encode_to_vec(&command).expect("a decoded command encodes");
        assert_eq!(
            codec::decode::<Command>(&encoded).ok(),
            Some(command),
            "an old command survives the new layout"
        );
    }
}

/// The segment of the format-1 fixture (written by the bincode-era code),
/// up to its last record.
fn bincode_era_segment() -> Vec<u8> {
    let path =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../journal/tests/fixtures/v1/journal/00000000000000000001.seg");
    let bytes = std::fs::read(path).unwrap_or_default();
    let mut offset = journal::SEGMENT_HEADER_BYTES;
    while let journal::Frame::Record { next_offset, .. } = journal::read_frame(&bytes, offset) {
        offset = next_offset;
    }
    bytes[..offset.min(bytes.len())].to_vec()
}

/// A market with two assets and three funded users, for the order targets.
fn seeded_engine() -> Engine {
    let mut engine = Engine::new(limits());
    for (symbol, decimals) in [("BTC", 8), ("USDT", 6)] {
        if let Ok(symbol) = Symbol::new(symbol) {
            admin(&mut engine, Command::CreateAsset { symbol, decimals });
        }
    }
    let rules = MarketRules {
        base: AssetId(0),
        quote: AssetId(1),
        base_units_per_lot: 10_000,
        quote_units_per_tick: 1,
        min_qty: Lots(1),
        min_notional: Units(0),
        maker_fee_ppm: 1_000,
        taker_fee_ppm: 2_000,
    };
    admin(&mut engine, Command::CreateMarket { rules, status: MarketStatus::Open });
    for user in 0..3 {
        admin(&mut engine, Command::CreateUser);
        admin(
            &mut engine,
            Command::Deposit { user: UserId(user), asset: AssetId(0), amount: Units(1_000_000_000) },
        );
        admin(
            &mut engine,
            Command::Deposit { user: UserId(user), asset: AssetId(1), amount: Units(1_000_000_000_000) },
        );
    }
    engine
}

/// Applies an administrative command with the next sequence number.
fn admin(engine: &mut Engine, command: Command) {
    let seq = engine.last_seq() + 1;
    let mut events = Vec::new();
    let _ = engine.apply(&StampedCommand { seq, timestamp_ns: seq * 1_000, command }, &mut events);
}

/// Reads little-endian numbers off the input, zero when it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((first, rest)) => {
                self.0 = rest;
                *first
            }
            None => 0,
        }
    }
    fn u64(&mut self, width: usize) -> u64 {
        (0..width).fold(0u64, |n, i| n | (u64::from(self.u8()) << (8 * i)))
    }
}

/// Commands decoded from one input at most. Each costs an apply and the
/// cheap check of what it touched; the whole state is checked once per
/// input. Long enough to rest a couple of hundred orders.
const ENGINE_COMMANDS_PER_INPUT_MAX: usize = 256;

/// Users the command fuzzer trades for (all funded in both markets).
const TRADERS: u8 = 4;

/// The state the command fuzzer starts from, built once: [`seeded_engine`]
/// plus a second market (ETH-USDT: other lot and tick sizes, a minimum
/// notional) that shares its quote asset with the first, and a fourth
/// user; every trader funded in every asset.
fn trading_engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut engine = seeded_engine();
        if let Ok(symbol) = Symbol::new("ETH") {
            admin(&mut engine, Command::CreateAsset { symbol, decimals: 18 });
        }
        let rules = MarketRules {
            base: AssetId(2),
            quote: AssetId(1),
            base_units_per_lot: 1_000_000_000_000_000,
            quote_units_per_tick: 10,
            min_qty: Lots(2),
            min_notional: Units(500),
            maker_fee_ppm: 0,
            taker_fee_ppm: 500,
        };
        admin(&mut engine, Command::CreateMarket { rules, status: MarketStatus::Open });
        while engine.user_count() < u32::from(TRADERS) {
            admin(&mut engine, Command::CreateUser);
        }
        for user in 0..u32::from(TRADERS) {
            for (asset, amount) in
                [(0, 1_000_000_000), (1, 1_000_000_000_000), (2, 1_000_000_000_000_000_000)]
            {
                let user = UserId(user);
                let asset = AssetId(asset);
                if engine.balance(user, asset).available.0 == 0 {
                    admin(&mut engine, Command::Deposit { user, asset, amount: Units(amount) });
                }
            }
        }
        engine
    })
}

/// A client order id from a pool of eight, so that inputs reuse them.
fn client_order_id(byte: u8) -> Option<ClientOrderId> {
    static POOL: OnceLock<Vec<ClientOrderId>> = OnceLock::new();
    let pool =
        POOL.get_or_init(|| (0..8).filter_map(|i| ClientOrderId::new(&format!("c-{i}")).ok()).collect());
    pool.get(usize::from(byte % 8)).copied()
}

/// The open orders as the events told them, so that cancels and amends
/// name real orders (their owner's, or, now and then, someone else's).
#[derive(Default)]
struct OpenOrders(Vec<OpenOrder>, Vec<OpenList>);

#[derive(Clone, Copy)]
struct OpenList {
    id: ListId,
    user: UserId,
    client_list_id: Option<ClientOrderId>,
}

#[derive(Clone, Copy)]
struct OpenOrder {
    id: OrderId,
    user: UserId,
    market: MarketId,
    client_order_id: Option<ClientOrderId>,
}

impl OpenOrders {
    fn follow(&mut self, events: &[Event]) {
        for event in events {
            match event.kind {
                EventKind::OrderAccepted { order, user, market, client_order_id, .. } => {
                    self.0.push(OpenOrder { id: order, user, market, client_order_id })
                }
                EventKind::OrderDone { order, .. } => {
                    if let Some(position) = self.0.iter().position(|open| open.id == order) {
                        self.0.swap_remove(position);
                    }
                }
                EventKind::OrderListAccepted { list, user, client_list_id, .. } => {
                    self.1.push(OpenList { id: list, user, client_list_id })
                }
                EventKind::OrderListDone { list, .. } => {
                    if let Some(position) = self.1.iter().position(|open| open.id == list) {
                        self.1.swap_remove(position);
                    }
                }
                _ => {}
            }
        }
    }

    /// An open order list, by id or list client id, and who acts on it (as
    /// [`OpenOrders::pick`]).
    fn pick_list(&self, input: &mut Bytes, user: UserId) -> (UserId, ListRef) {
        let byte = input.u8();
        let flags = input.u8();
        let Some(open) = self.1.get(usize::from(byte) % (self.1.len() + 1)) else {
            let reference = match (flags & 1, client_order_id(byte)) {
                (0, Some(client_list_id)) => ListRef::Client(client_list_id),
                _ => ListRef::Id(ListId(u64::from(byte % 16))),
            };
            return (user, reference);
        };
        let acting = if flags >= 0xE0 { user } else { open.user };
        let reference = match open.client_list_id {
            Some(client_list_id) if flags & 1 == 0 => ListRef::Client(client_list_id),
            _ => ListRef::Id(open.id),
        };
        (acting, reference)
    }

    /// An open order, named by its id or its client order id, and who acts
    /// on it: its owner, or now and then `user` (another user's order); or,
    /// one time in as many as there are open orders, an order that is not
    /// open, acted on by `user`.
    fn pick(&self, input: &mut Bytes, user: UserId) -> (UserId, OrderRef, MarketId) {
        let byte = input.u8();
        let flags = input.u8();
        let Some(open) = self.0.get(usize::from(byte) % (self.0.len() + 1)) else {
            // An id from the recent past, or a client id nobody may hold.
            let reference = match (flags & 1, client_order_id(byte)) {
                (0, Some(client_order_id)) => OrderRef::Client(client_order_id),
                _ => OrderRef::Id(OrderId(u64::from(byte))),
            };
            return (user, reference, MarketId(u32::from(flags >> 7)));
        };
        let acting = if flags >= 0xE0 { user } else { open.user };
        let reference = match open.client_order_id {
            Some(client_order_id) if flags & 1 == 0 => OrderRef::Client(client_order_id),
            _ => OrderRef::Id(open.id),
        };
        (acting, reference, open.market)
    }
}

/// A price near the market's (so that orders trade and rest on a few
/// levels), or, rarely, any price at all.
fn price(input: &mut Bytes, market: MarketId) -> Ticks {
    let byte = input.u8();
    match byte {
        0xF8.. => Ticks(input.u64(8)),
        _ => Ticks([92, 40][market.0 as usize % 2] + u64::from(byte % 16)),
    }
}

/// A small quantity, or, rarely, any quantity at all.
fn qty(input: &mut Bytes) -> Lots {
    let byte = input.u8();
    match byte {
        0xF8.. => Lots(input.u64(8)),
        _ => Lots(1 + u64::from(byte % 24)),
    }
}

/// How many values the first byte of a command picks from (see
/// [`next_command`]).
const COMMAND_OPS: u8 = 21;

/// A trigger from one flags byte and the input: stop-loss or take-profit,
/// a stop price near the market's (or none), a trailing delta (none, a
/// small one, or any `u16`, out of range too).
fn trigger(input: &mut Bytes, market: MarketId, flags: u8) -> Trigger {
    let kind = if flags & 1 == 0 { TriggerKind::StopLoss } else { TriggerKind::TakeProfit };
    let stop = if flags & 6 == 6 { None } else { Some(price(input, market)) };
    let trailing_bips = match flags >> 3 & 3 {
        0 | 1 => 0,
        2 => 1 + u16::from(input.u8()) * 4,
        _ => input.u64(2) as u16,
    };
    Trigger { kind, stop, trailing_bips }
}

/// Any order kind, as a list leg or a single order takes it: a limit
/// (post-only now and then), an iceberg, a stop or take-profit (market or
/// limit, iceberg when fired), a market order by quantity or quote.
fn any_kind(input: &mut Bytes, market: MarketId) -> OrderKind {
    let flags = input.u8();
    let tif = [TimeInForce::Gtc, TimeInForce::Ioc, TimeInForce::Fok, TimeInForce::PostOnly]
        [usize::from(flags >> 3 & 3)];
    match flags & 7 {
        0 | 1 => OrderKind::Limit { price: price(input, market), qty: qty(input), tif },
        2 => OrderKind::Iceberg {
            price: price(input, market),
            qty: qty(input),
            visible: Lots(u64::from(input.u8() % 12)),
            tif,
        },
        3 => OrderKind::StopMarket { trigger: trigger(input, market, flags >> 3), qty: qty(input) },
        4 | 5 => OrderKind::StopLimit {
            trigger: trigger(input, market, flags >> 3),
            price: price(input, market),
            qty: qty(input),
            tif,
            visible: Lots(if flags & 1 == 0 { u64::from(input.u8() % 12) } else { 0 }),
        },
        6 => OrderKind::Market { qty: qty(input) },
        _ => OrderKind::MarketByQuote { amount: Units(input.u64(3)) },
    }
}

/// One command from the input, or `None` for bytes that decode to none:
/// an op byte, a user byte, then what the op needs. Every kind of command
/// is one arm of the match; a new kind is one more arm, and one more op.
fn next_command(input: &mut Bytes, open: &OpenOrders) -> Option<Command> {
    let op = input.u8();
    let user = UserId(u32::from(input.u8() % TRADERS));
    let stp = |byte: u8| {
        [
            SelfTradePrevention::CancelTaker,
            SelfTradePrevention::CancelMaker,
            SelfTradePrevention::CancelBoth,
            SelfTradePrevention::Allow,
        ][usize::from(byte % 4)]
    };
    let command = match op % COMMAND_OPS {
        // Limit orders, most of them good till cancelled, so that books
        // grow deep. flags: side, time in force (3 bits), STP (2), market,
        // client order id.
        0..=6 => {
            let flags = input.u8();
            let market = MarketId(u32::from(flags >> 6 & 1));
            let tif = match flags >> 1 & 7 {
                4 => TimeInForce::Ioc,
                5 => TimeInForce::Fok,
                6 => TimeInForce::PostOnly,
                _ => TimeInForce::Gtc,
            };
            Command::PlaceOrder(NewOrder {
                user,
                market,
                side: if flags & 1 == 0 { Side::Buy } else { Side::Sell },
                kind: OrderKind::Limit { price: price(input, market), qty: qty(input), tif },
                client_order_id: if flags >> 7 == 1 { client_order_id(input.u8()) } else { None },
                stp: stp(flags >> 4),
            })
        }
        // Market orders by quantity or by quote amount, on either side.
        7 => {
            let flags = input.u8();
            let market = MarketId(u32::from(flags >> 6 & 1));
            let kind = if flags & 2 == 0 {
                OrderKind::Market { qty: qty(input) }
            } else {
                OrderKind::MarketByQuote { amount: Units(input.u64(3)) }
            };
            Command::PlaceOrder(NewOrder {
                user,
                market,
                side: if flags & 1 == 0 { Side::Buy } else { Side::Sell },
                kind,
                client_order_id: None,
                stp: stp(flags >> 4),
            })
        }
        8 | 9 => {
            let (user, order, _) = open.pick(input, user);
            Command::CancelOrder { user, order }
        }
        10 | 11 => {
            let (user, order, market) = open.pick(input, user);
            let change = input.u8();
            Command::Amend(engine_core::Amend {
                user,
                order,
                new_qty: if change & 1 == 0 { Some(Lots(u64::from(change >> 2) % 32)) } else { None },
                new_price: if change & 2 == 0 { Some(price(input, market)) } else { None },
            })
        }
        12 => Command::CancelAll {
            user,
            market: match input.u8() % 3 {
                0 => None,
                market => Some(MarketId(u32::from(market - 1))),
            },
        },
        // Funds in every asset, and one that does not exist; amounts of any width.
        13 => {
            let flags = input.u8();
            let asset = AssetId(u32::from(flags >> 1 & 3));
            let amount = Units(input.u64(1 + usize::from(flags >> 3 & 7)));
            if flags & 1 == 0 {
                Command::Deposit { user, asset, amount }
            } else {
                Command::Withdraw { user, asset, amount }
            }
        }
        // Markets halted, wound down and reopened; fees changed (some above
        // the maximum).
        14 => {
            let flags = input.u8();
            let market = MarketId(u32::from(flags >> 1 & 1) + u32::from(flags >> 7));
            if flags & 1 == 0 {
                let status =
                    [MarketStatus::Open, MarketStatus::Open, MarketStatus::CancelOnly, MarketStatus::Halted]
                        [usize::from(flags >> 2 & 3)];
                Command::SetMarketStatus { market, status }
            } else {
                Command::SetMarketFees {
                    market,
                    maker_fee_ppm: (input.u64(3) % 128_000) as u32,
                    taker_fee_ppm: (input.u64(3) % 128_000) as u32,
                }
            }
        }
        // The engine's limits, tight enough to bite: a few open orders per
        // user, sometimes few orders in all (lowered below what is held).
        15 => {
            let flags = input.u8();
            let defaults = engine_core::EngineLimits::default();
            Command::SetLimits {
                limits: engine_core::EngineLimits {
                    open_orders_per_user_max: 1 + u32::from(flags & 15),
                    orders_max: if flags & 0x80 == 0 {
                        defaults.orders_max
                    } else {
                        4 + u32::from(flags >> 4 & 7)
                    },
                    ..defaults
                },
            }
        }
        // Stops and take-profits (fixed or trailing, market or limit) and
        // icebergs. flags: side, market, STP (2), client order id.
        16 | 17 => {
            let flags = input.u8();
            let market = MarketId(u32::from(flags >> 1 & 1));
            let kind = if op % COMMAND_OPS == 16 {
                let trigger_flags = input.u8();
                let trigger = trigger(input, market, trigger_flags);
                match trigger_flags >> 5 {
                    0..=2 => OrderKind::StopMarket { trigger, qty: qty(input) },
                    tif => OrderKind::StopLimit {
                        trigger,
                        price: price(input, market),
                        qty: qty(input),
                        tif: [TimeInForce::Gtc, TimeInForce::Ioc, TimeInForce::Fok, TimeInForce::PostOnly]
                            [usize::from(tif & 3)],
                        visible: Lots(if tif >= 6 { u64::from(input.u8() % 12) } else { 0 }),
                    },
                }
            } else {
                let shape = input.u8();
                OrderKind::Iceberg {
                    price: price(input, market),
                    qty: qty(input),
                    visible: Lots(1 + u64::from(shape % 8)),
                    tif: if shape & 0x80 == 0 { TimeInForce::Gtc } else { TimeInForce::PostOnly },
                }
            };
            Command::PlaceOrder(NewOrder {
                user,
                market,
                side: if flags & 1 == 0 { Side::Buy } else { Side::Sell },
                kind,
                client_order_id: if flags >> 6 & 1 == 1 { client_order_id(input.u8()) } else { None },
                stp: stp(flags >> 4),
            })
        }
        // OCO and OTO lists: any two kinds, either side; client ids from the pool.
        18 => {
            let flags = input.u8();
            let market = MarketId(u32::from(flags >> 1 & 1));
            let leg = |input: &mut Bytes, bit: u8| ListLeg {
                side: if flags >> bit & 1 == 0 { Side::Buy } else { Side::Sell },
                kind: any_kind(input, market),
                client_order_id: if flags >> (bit + 1) & 1 == 1 { client_order_id(input.u8()) } else { None },
            };
            let legs = [leg(input, 2), leg(input, 4)];
            Command::PlaceOrderList(NewOrderList {
                user,
                market,
                contingency: if flags & 1 == 0 { Contingency::Oco } else { Contingency::Oto },
                client_list_id: if flags >> 6 & 1 == 1 { client_order_id(input.u8()) } else { None },
                stp: stp(flags >> 6),
                legs,
            })
        }
        19 => {
            let (user, list) = open.pick_list(input, user);
            Command::CancelOrderList { user, list }
        }
        // A raw command as the journal would hold it: any field value.
        _ => {
            let len = usize::from(input.u8()).min(input.0.len());
            let (raw, rest) = input.0.split_at(len);
            input.0 = rest;
            codec::decode::<Command>(raw).ok()?
        }
    };
    Some(command)
}

/// What the events said of balances and book levels, for comparing with
/// the state at the end: the read views are built from events alone, so no
/// balance or level may change without one.
struct EventMirror {
    /// Indexed by user, then asset (`assets_max` per user).
    balances: Vec<Balance>,
    assets_max: usize,
    /// Open quantity by [`level_key`].
    levels: HashMap<u128, Lots, BuildHasherDefault<LevelKeyHasher>>,
}

/// One book level as one number: market, side, price.
fn level_key(market: MarketId, side: Side, price: Ticks) -> u128 {
    u128::from(market.0) << 65 | u128::from(side == Side::Sell) << 64 | u128::from(price.0)
}

/// A multiply-rotate hash for [`level_key`]s: the mirror follows every
/// level event, and a keyed SipHash or a B-tree's comparisons would cost
/// more than the engine's own work under the fuzzer's instrumentation.
#[derive(Default)]
struct LevelKeyHasher(u64);

impl Hasher for LevelKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(26) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_u128(&mut self, n: u128) {
        self.write_u64(n as u64);
        self.write_u64((n >> 64) as u64);
    }
}

impl EventMirror {
    fn of(engine: &Engine) -> EventMirror {
        let limits = engine.limits();
        let assets_max = limits.assets_max as usize;
        let mut mirror = EventMirror {
            balances: vec![Balance::default(); limits.users_max as usize * assets_max],
            assets_max,
            levels: HashMap::default(),
        };
        for user in (0..engine.user_count()).map(UserId) {
            for asset in engine.assets() {
                *mirror.balance_mut(user, asset.id) = engine.balance(user, asset.id);
            }
        }
        for market in engine.markets() {
            for side in [Side::Buy, Side::Sell] {
                for (price, qty) in engine.depth(market.id, side, usize::MAX) {
                    mirror.levels.insert(level_key(market.id, side, price), qty);
                }
            }
        }
        mirror
    }

    fn balance_mut(&mut self, user: UserId, asset: AssetId) -> &mut Balance {
        let index = user.0 as usize * self.assets_max + asset.0 as usize;
        match self.balances.get_mut(index) {
            Some(balance) => balance,
            None => panic!("a balance event for user {user} asset {asset}, past the engine's limits"),
        }
    }

    fn follow(&mut self, events: &[Event]) {
        for event in events {
            match event.kind {
                EventKind::Balance { user, asset, available, locked } => {
                    *self.balance_mut(user, asset) = Balance { available, locked };
                }
                EventKind::BookLevel { market, side, price, qty } => {
                    let key = level_key(market, side, price);
                    if qty.0 == 0 {
                        self.levels.remove(&key);
                    } else {
                        self.levels.insert(key, qty);
                    }
                }
                _ => {}
            }
        }
    }

    fn assert_matches(&mut self, engine: &Engine) {
        for user in (0..engine.user_count()).map(UserId) {
            for asset in engine.assets() {
                let said = *self.balance_mut(user, asset.id);
                assert_eq!(said, engine.balance(user, asset.id), "the events said every change of a balance");
            }
        }
        let mut levels = 0;
        for market in engine.markets() {
            for side in [Side::Buy, Side::Sell] {
                for (price, qty) in engine.depth(market.id, side, usize::MAX) {
                    let said = self.levels.get(&level_key(market.id, side, price));
                    assert_eq!(said, Some(&qty), "the events said every change of a book level");
                    levels += 1;
                }
            }
        }
        assert_eq!(levels, self.levels.len(), "the events said every level that left a book");
    }
}

/// How far one input took the engine. The seeds must reach deep states
/// (a test checks), from which the fuzzer mutates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineReach {
    pub commands: usize,
    pub resting_orders_max: u32,
    pub trades: u32,
    /// Trades that left the maker or the taker partly filled.
    pub partial_fills: u32,
    pub amends_in_place: u32,
    pub amends_requeued: u32,
    /// Orders closed by self-trade prevention.
    pub self_trade_cancels: u32,
    /// Commands refused because their market was halted or winding down.
    pub refused_market_closed: u32,
    pub cancels_by_client_id: u32,
    pub rejected: u32,
    /// Stops and take-profits fired, and commands that fired more than one.
    pub triggered: u32,
    pub cascades: u32,
    pub trailing_started: u32,
    pub iceberg_refills: u32,
    pub lists_accepted: u32,
    pub released: u32,
    /// Orders cancelled because the other order of their list traded, fired or closed.
    pub contingent_cancels: u32,
}

impl EngineReach {
    fn follow(&mut self, command: &Command, events: &[Event], engine: &Engine) {
        self.commands += 1;
        self.resting_orders_max = self.resting_orders_max.max(engine.open_order_count());
        let fired = events.iter().filter(|e| matches!(e.kind, EventKind::OrderTriggered { .. })).count();
        self.cascades += u32::from(fired > 1);
        for event in events {
            match event.kind {
                EventKind::OrderTriggered { .. } => self.triggered += 1,
                EventKind::TrailingStarted { .. } => self.trailing_started += 1,
                EventKind::OrderRefilled { .. } => self.iceberg_refills += 1,
                EventKind::OrderListAccepted { .. } => self.lists_accepted += 1,
                EventKind::OrderReleased { .. } => self.released += 1,
                EventKind::OrderDone { reason: DoneReason::Contingent, .. } => self.contingent_cancels += 1,
                EventKind::Trade { maker_remaining, taker_remaining, .. } => {
                    self.trades += 1;
                    if maker_remaining.0 > 0 || taker_remaining.0 > 0 {
                        self.partial_fills += 1;
                    }
                }
                EventKind::OrderAmended { priority_kept: true, .. } => self.amends_in_place += 1,
                EventKind::OrderAmended { priority_kept: false, .. } => self.amends_requeued += 1,
                EventKind::OrderDone { reason: DoneReason::SelfTrade, .. } => self.self_trade_cancels += 1,
                EventKind::OrderDone { reason: DoneReason::Cancelled, .. }
                    if matches!(command, Command::CancelOrder { order: OrderRef::Client(_), .. }) =>
                {
                    self.cancels_by_client_id += 1
                }
                EventKind::Rejected { reason, .. } => {
                    self.rejected += 1;
                    if matches!(
                        reason,
                        RejectReason::MarketHalted { .. } | RejectReason::MarketNotOpen { .. }
                    ) {
                        self.refused_market_closed += 1;
                    }
                }
                _ => {}
            }
        }
    }
}

/// Command sequences against a funded engine with two markets: limit
/// orders near each other's prices (so that they rest, trade in part, and
/// meet their owner's orders), market orders, cancels and amends of open
/// orders by id and by client id, cancel-alls, funds, fee and status
/// changes, and raw commands decoded as the journal would.
///
/// After every command, the cheap check of what it touched
/// ([`Engine::check_touched`]). Once per input: every invariant with a
/// snapshot round trip ([`Engine::check_invariants`]); the events describe
/// every balance and book level. And from half way through the input, an
/// engine loaded from a snapshot follows in lockstep: the same events for
/// every command, the same state hash at the end (determinism, and what
/// recovery promises).
pub fn engine_commands(data: &[u8]) {
    engine_commands_reach(data);
}

/// [`engine_commands`], telling how far the input took the engine.
pub fn engine_commands_reach(data: &[u8]) -> EngineReach {
    let mut engine = trading_engine().clone();
    let mut mirror = EventMirror::of(&engine);
    let mut open = OpenOrders::default();
    let mut reach = EngineReach::default();
    let mut scratch = TouchedScratch::default();
    let mut input = Bytes(data);
    let mut events: Vec<Event> = Vec::new();
    // From half way, an engine loaded from a snapshot follows in lockstep.
    let mut twin: Option<Engine> = None;
    let mut twin_events: Vec<Event> = Vec::new();
    while !input.0.is_empty() && reach.commands < ENGINE_COMMANDS_PER_INPUT_MAX {
        let half_way = input.0.len() <= data.len() / 2;
        if twin.is_none() && (half_way || reach.commands == ENGINE_COMMANDS_PER_INPUT_MAX / 2) {
            twin = Some(reload(&engine));
        }
        let Some(command) = next_command(&mut input, &open) else { continue };
        let seq = engine.last_seq() + 1;
        let stamped = StampedCommand { seq, timestamp_ns: seq * 1_000_000, command };
        events.clear();
        assert!(engine.apply(&stamped, &mut events).is_ok(), "commands in sequence apply");
        if let Err(violation) = engine.check_touched_with(&events, &mut scratch) {
            panic!("invariant broken after {command:?}: {violation}\nevents: {events:#?}");
        }
        if let Some(twin) = &mut twin {
            twin_events.clear();
            assert!(twin.apply(&stamped, &mut twin_events).is_ok(), "commands in sequence apply");
            assert!(
                twin_events == events,
                "the engine is deterministic: {command:?} emitted {events:#?}, then {twin_events:#?}"
            );
        }
        open.follow(&events);
        mirror.follow(&events);
        reach.follow(&command, &events, &engine);
    }

    if let Err(violation) = engine.check_invariants() {
        panic!("invariant broken after {} commands: {violation}", reach.commands);
    }
    mirror.assert_matches(&engine);
    let twin = twin.unwrap_or_else(|| reload(&engine));
    assert_eq!(
        engine.state_hash(),
        twin.state_hash(),
        "the engine is deterministic: same commands, same state"
    );
    reach
}

/// The engine as recovery would load it from a snapshot.
fn reload(engine: &Engine) -> Engine {
    match Engine::from_snapshot(engine.snapshot()) {
        Ok(loaded) => loaded,
        Err(error) => panic!("a snapshot of a live engine loads: {error}"),
    }
}

fn views() -> &'static Views {
    static VIEWS: OnceLock<Views> = OnceLock::new();
    VIEWS.get_or_init(|| Views::from_engine(&seeded_engine(), gateway::views::Retention::default()))
}

/// Arbitrary bytes as a native `POST /order` body, and the decimals in it
/// converted to ticks and lots: refused with a precise error or turned into
/// a command whose amounts are exactly the decimals given.
pub fn rest_order(data: &[u8]) {
    let views = views();
    match gateway::rest::new_order(views, UserId(1), data) {
        Ok(order) => assert_eq!(order.user, UserId(1)),
        Err(error) => assert!(error.status.is_client_error(), "refusals are 4xx: {error:?}"),
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(value) = gateway::amounts::parse_decimal("price", text) {
            let scale = views.markets[0].scale;
            if let Ok(ticks) = scale.to_ticks("price", value) {
                assert_eq!(
                    rust_decimal_of(&scale.price(ticks)),
                    value.normalize(),
                    "ticks round-trip exactly"
                );
            }
        }
    }
}

fn rust_decimal_of(text: &str) -> rust_decimal::Decimal {
    text.parse().unwrap_or_default()
}

/// The Binance API's parameter readers: query strings, form bodies and
/// JSON params, then a new order from them.
pub fn binance_params(data: &[u8]) {
    let views = views();
    let text = String::from_utf8_lossy(data);
    let (query, body) = text.split_once('\n').unwrap_or((&text, ""));
    if let Ok(params) = gateway::binance::params::Params::from_http(query, body.as_bytes(), true) {
        let _ = gateway::binance::trading::order_from_params(views, UserId(1), &params, || "fuzz-1".into());
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(params) = gateway::binance::params::Params::from_json(&value) {
            match gateway::binance::trading::order_from_params(views, UserId(1), &params, || "fuzz-2".into())
            {
                Ok(order) => assert_eq!(order.user, UserId(1)),
                Err(error) => assert!(error.code < 0 && error.status.is_client_error(), "{error:?}"),
            }
        }
    }
}

/// Arbitrary bytes as a message on Binance's market stream sockets: an
/// answer with the request's id or an error, never a panic.
pub fn ws_message(data: &[u8]) {
    let subscribers = gateway::subscribers::Subscribers::default();
    let answer = gateway::binance::streams::handle_request(views(), &subscribers, 1, data);
    assert!(answer.get("result").is_some() || answer.get("error").is_some(), "{answer}");
}

/// Arbitrary signed requests: only a request signed with the key's secret
/// within its window is accepted, whatever the bytes.
pub fn signature(data: &[u8]) {
    const KEY: &str = "fuzzkey0123456789ABCDEF";
    const SECRET: &str = "fuzzsecret0123456789abcdefghijklmnop";
    const NOW_MS: u64 = 1_700_000_000_000;
    let keys = gateway::auth::KeyTable::default();
    if let (Ok(key), Ok(secret)) = (ApiKey::new(KEY), ApiSecret::new(SECRET)) {
        keys.insert(key, UserId(5), secret);
    }
    let auth = gateway::auth::Authenticator::new(keys, 60_000, 1_000_000, 1_000_000);
    let text = String::from_utf8_lossy(data);
    let (query, body) = text.split_once('\n').unwrap_or((&text, ""));
    // Arbitrary bytes: accepted only if they happen to carry a valid
    // signature, which the fuzzer cannot forge.
    if let Ok(signed) = auth.authenticate(Some(KEY), query, body.as_bytes(), NOW_MS, true) {
        assert_eq!(signed.user, UserId(5));
        assert!(signed.replay_mark.is_some(), "a change has a replay mark");
        let signed =
            query.rsplit_once("signature=").map(|(payload, _)| payload.trim_end_matches('&')).unwrap_or("");
        assert!(!signed.is_empty() || !body.is_empty());
    }
    // The same bytes signed properly are accepted once, then refused.
    let payload = format!("{query}&timestamp={NOW_MS}").replace("&signature=", "&sig=");
    let signed = format!("{payload}&signature={}", gateway::auth::sign(SECRET, &payload, body.as_bytes()));
    let first = auth.authenticate(Some(KEY), &signed, body.as_bytes(), NOW_MS, true);
    if let Err(error) = &first {
        // Only a malformed timestamp or window in the fuzzed part may refuse it.
        assert!(
            matches!(
                error.code,
                "invalid_timestamp"
                    | "invalid_recv_window"
                    | "timestamp_outside_recv_window"
                    | "timestamp_ahead"
            ),
            "a properly signed request was refused: {error:?}"
        );
    } else {
        let replay = auth.authenticate(Some(KEY), &signed, body.as_bytes(), NOW_MS, true);
        assert!(replay.is_err(), "a replayed signature is refused");
    }
}

/// Each target's seed corpus: inputs that reach deep into its reader (a
/// real journal segment, a real snapshot, well-formed requests), from
/// which the fuzzer mutates.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "journal_segment" => {
            let dir = scratch().join("seed-journal");
            let _ = std::fs::remove_dir_all(&dir);
            let mut config = journal::JournalConfig::new(&dir);
            config.segment_bytes = journal::SEGMENT_BYTES_MIN;
            let Ok((mut writer, _)) = journal::JournalWriter::open(config) else { return Vec::new() };
            for seq in 1..=20 {
                let command = StampedCommand { seq, timestamp_ns: seq, command: Command::CreateUser };
                let _ = writer.append(&command);
            }
            let _ = writer.commit_batch();
            let path = writer.current_segment().to_path_buf();
            let end = writer.current_offset();
            drop(writer);
            let bytes = std::fs::read(path).unwrap_or_default();
            let whole = bytes[..end.min(bytes.len())].to_vec();
            let torn = whole[..whole.len().saturating_sub(5)].to_vec();
            vec![whole, torn, bincode_era_segment()]
        }
        "raft_log" => {
            let dir = scratch().join("seed-raft");
            let _ = std::fs::remove_dir_all(&dir);
            let Ok(mut log) = journal::RaftLog::open(&dir, RAFT_FUZZ_LIMITS) else { return Vec::new() };
            for (index, kind) in [
                journal::EntryKind::Blank,
                journal::EntryKind::Membership,
                journal::EntryKind::Commands,
                journal::EntryKind::HashMark,
                journal::EntryKind::MarkedCommands,
            ]
            .into_iter()
            .enumerate()
            {
                let payload = vec![index as u8 + 1; index * 40];
                let _ = log.append(index as u64 + 1, 1 + index as u64 / 3, kind, &payload);
            }
            drop(log);
            let mut seeds = Vec::new();
            if let Some((_, path)) = journal::list_raft_segments(&dir).ok().and_then(|mut s| s.pop()) {
                let bytes = std::fs::read(path).unwrap_or_default();
                let mut torn = bytes.clone();
                if let Some(end) = torn.iter().rposition(|&b| b != 0) {
                    torn[end.saturating_sub(10)..=end].fill(0);
                }
                seeds.push(bytes);
                seeds.push(torn);
            }
            let Ok((mut file, _)) = journal::RaftStateFile::open(&dir) else { return seeds };
            let state = journal::RaftState {
                vote: Some(journal::StoredVote { term: 3, node_id: 2, committed: true }),
                committed: Some(journal::LogPosition { index: 4, term: 2 }),
                last_purged: Some(journal::LogPosition { index: 1, term: 1 }),
            };
            if file.save(&state, true).is_ok() && file.save(&state, true).is_ok() {
                seeds.extend(std::fs::read(dir.join(journal::RAFT_STATE_FILE_NAME)));
            }
            seeds.extend(std::fs::read(dir.join(journal::RAFT_SEGMENTS_FILE_NAME)));
            seeds
        }
        "codec_command" => {
            let mut seeds: Vec<Vec<u8>> = engine_commands_for_seeds()
                .iter()
                .filter_map(|command| codec::encode_to_vec(command).ok())
                .collect();
            // Payloads in the old layout, as format-1 segments hold them.
            let old = bincode_era_segment();
            let mut offset = journal::SEGMENT_HEADER_BYTES;
            while let journal::Frame::Record { next_offset, payload_bytes, .. } = journal::read_frame(&old, offset) {
                let start = offset + journal::FRAME_HEADER_BYTES;
                seeds.push(old[start..start + payload_bytes].to_vec());
                offset = next_offset;
            }
            seeds
        }
        "snapshot" => {
            let dir = scratch().join("seed-snapshot");
            let _ = std::fs::remove_dir_all(&dir);
            let Ok(info) = journal::write_snapshot(&dir, &seeded_engine(), journal::SnapshotKeep::newest(1)) else {
                return Vec::new();
            };
            let file = std::fs::read(info.path).unwrap_or_default();
            let payload = file.get(64..).map(<[u8]>::to_vec).unwrap_or_default();
            vec![file, payload]
        }
        "engine_commands" => engine_command_seeds(),
        "rest_order" => [
            r#"{"market":"BTC-USDT","side":"buy","type":"limit","price":"100.5","quantity":"0.01"}"#,
            r#"{"market":"BTC-USDT","side":"sell","type":"market","quote_amount":"12.5","self_trade_prevention":"cancel_both"}"#,
            r#"{"market":"BTC-USDT","side":"buy","type":"limit","price":"1e3","quantity":"-1","time_in_force":"FOK"}"#,
            "100.25",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        "binance_params" => [
            "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.01&price=100.5",
            "symbol=BTCUSDT&side=SELL&type=MARKET\nquoteOrderQty=10&newOrderRespType=FULL",
            r#"{"symbol":"BTCUSDT","side":"BUY","type":"LIMIT_MAKER","quantity":"0.0100","price":"99","newClientOrderId":"a-1"}"#,
            "symbol=BTC%55SDT&side=BUY&type=MARKET&quantity=1&quantity=2",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        "ws_message" => [
            r#"{"method":"SUBSCRIBE","params":["btcusdt@depth@100ms","btcusdt@trade"],"id":1}"#,
            r#"{"method":"LIST_SUBSCRIPTIONS","id":"x"}"#,
            r#"{"method":"UNSUBSCRIBE","params":["btcusdt@depth20"],"id":2}"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        "signature" => [
            "symbol=BTCUSDT&recvWindow=5000\nquantity=1",
            "timestamp=1&signature=00",
            "a=b\n{\"market\":\"BTC-USDT\"}",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        _ => Vec::new(),
    }
}

/// Inputs for `engine_commands` in its encoding (see `next_command`): a
/// deep book in both markets, then trades, self-trades, amends, cancels by
/// id and client id, a halted and a winding-down market, market orders,
/// funds and fees; a second on self-trade prevention; and every byte.
/// One command of each kind, for the codec's seeds.
fn engine_commands_for_seeds() -> Vec<Command> {
    let user = UserId(1);
    let mut commands = vec![
        Command::CreateUser,
        Command::Deposit { user, asset: AssetId(0), amount: Units(u64::MAX) },
        Command::Withdraw { user, asset: AssetId(1), amount: Units(300) },
        Command::CancelAll { user, market: Some(MarketId(0)) },
        Command::CancelOrder { user, order: OrderRef::Id(OrderId(77)) },
        Command::SetMarketStatus { market: MarketId(0), status: MarketStatus::Halted },
        Command::SetMarketFees { market: MarketId(0), maker_fee_ppm: 1, taker_fee_ppm: 2 },
        Command::SetLimits { limits: limits() },
        Command::Amend(engine_core::Amend {
            user,
            order: OrderRef::Id(OrderId(5)),
            new_qty: Some(Lots(2)),
            new_price: None,
        }),
        Command::PlaceOrder(NewOrder {
            user,
            market: MarketId(0),
            side: Side::Sell,
            kind: OrderKind::Limit { price: Ticks(100), qty: Lots(3), tif: TimeInForce::Gtc },
            client_order_id: None,
            stp: SelfTradePrevention::CancelBoth,
        }),
    ];
    let trigger = Trigger { kind: TriggerKind::StopLoss, stop: Some(Ticks(90)), trailing_bips: 150 };
    commands.push(Command::PlaceOrder(NewOrder {
        user,
        market: MarketId(0),
        side: Side::Sell,
        kind: OrderKind::StopLimit {
            trigger,
            price: Ticks(89),
            qty: Lots(4),
            tif: TimeInForce::Gtc,
            visible: Lots(2),
        },
        client_order_id: None,
        stp: SelfTradePrevention::CancelTaker,
    }));
    commands.push(Command::PlaceOrderList(NewOrderList {
        user,
        market: MarketId(0),
        contingency: Contingency::Oco,
        client_list_id: None,
        stp: SelfTradePrevention::CancelMaker,
        legs: [
            ListLeg {
                side: Side::Sell,
                kind: OrderKind::Iceberg {
                    price: Ticks(120),
                    qty: Lots(4),
                    visible: Lots(1),
                    tif: TimeInForce::PostOnly,
                },
                client_order_id: None,
            },
            ListLeg {
                side: Side::Sell,
                kind: OrderKind::StopMarket { trigger, qty: Lots(4) },
                client_order_id: None,
            },
        ],
    }));
    commands.push(Command::CancelOrderList { user, list: ListRef::Id(ListId(1)) });
    if let (Ok(symbol), Ok(key), Ok(secret), Ok(client)) = (
        Symbol::new("BTC"),
        ApiKey::new("key0000000000000001"),
        ApiSecret::new("secret0000000000001"),
        ClientOrderId::new("c-1"),
    ) {
        commands.push(Command::CreateAsset { symbol, decimals: 8 });
        commands.push(Command::CreateApiKey { user, key, secret });
        commands.push(Command::RevokeApiKey { user, key });
        commands.push(Command::CancelOrder { user, order: OrderRef::Client(client) });
    }
    commands
}

fn engine_command_seeds() -> Vec<Vec<u8>> {
    const GTC: u8 = 0;
    const IOC: u8 = 4;
    const FOK: u8 = 5;
    const POST_ONLY: u8 = 6;
    // Price bytes: 0..=7 bid below the 8..=15 asks, so that orders rest.
    let limit = |seed: &mut Vec<u8>,
                 user: u8,
                 sell: bool,
                 tif: u8,
                 stp: u8,
                 market: u8,
                 price: u8,
                 qty: u8,
                 client: Option<u8>| {
        let flags = u8::from(sell) | tif << 1 | stp << 4 | market << 6 | u8::from(client.is_some()) << 7;
        seed.extend([0, user, flags, price, qty]);
        seed.extend(client);
    };
    let market_order = |seed: &mut Vec<u8>, user: u8, sell: bool, by_quote: bool, amount: u8| {
        seed.extend([7, user, u8::from(sell) | u8::from(by_quote) << 1, amount]);
        if by_quote {
            seed.extend([0, 1]);
        }
    };
    let cancel =
        |seed: &mut Vec<u8>, pick: u8, by_client_id: bool| seed.extend([8, 0, pick, u8::from(!by_client_id)]);
    // change: bit 0 clear sets the quantity (bits 2..), bit 1 clear the price.
    let amend = |seed: &mut Vec<u8>, pick: u8, change: u8, price: u8| {
        seed.extend([10, 0, pick, 1, change]);
        if change & 2 == 0 {
            seed.push(price);
        }
    };
    let status = |seed: &mut Vec<u8>, market: u8, status: u8| seed.extend([14, 0, market << 1 | status << 2]);

    let mut deep = Vec::new();
    for i in 0u8..110 {
        let sell = i % 2 == 1;
        let price = if sell { 8 + i % 8 } else { i % 8 };
        let client = (i % 3 == 0).then_some(i);
        limit(&mut deep, i % 4, sell, GTC, 0, u8::from(i >= 70), price, 1 + i % 20, client);
    }
    for i in 0u8..12 {
        let tif = [GTC, IOC, FOK, GTC][usize::from(i % 4)];
        limit(&mut deep, i % 4, i % 2 == 0, tif, i % 4, i % 2, if i % 2 == 0 { 5 } else { 10 }, 15, None);
    }
    limit(&mut deep, 0, false, POST_ONLY, 0, 0, 12, 3, None);
    for i in 0u8..12 {
        amend(&mut deep, i.wrapping_mul(29), i.wrapping_mul(37), i);
        cancel(&mut deep, i.wrapping_mul(53), i % 2 == 0);
    }
    status(&mut deep, 0, 3);
    limit(&mut deep, 1, false, GTC, 0, 0, 3, 2, None);
    cancel(&mut deep, 7, false);
    status(&mut deep, 0, 2);
    amend(&mut deep, 9, 1 << 2 | 2, 0);
    limit(&mut deep, 2, true, GTC, 0, 0, 9, 2, None);
    status(&mut deep, 0, 0);
    for (user, sell, by_quote) in [(0, false, false), (1, true, false), (2, false, true), (3, true, true)] {
        market_order(&mut deep, user, sell, by_quote, 30);
    }
    deep.extend([13, 1, 0b0000_1000, 0x40, 0x42]); // deposit of two bytes' worth
    deep.extend([13, 2, 0b0000_0011, 0x10]); // withdrawal
    deep.extend([14, 0, 1, 0x20, 0x03, 0x00, 0x10, 0x27, 0x00]); // fees
    deep.extend([12, 3, 0, 12, 1, 2]); // cancel-alls
    deep.extend([15, 0, 0x81]); // limits lowered below what is held
    limit(&mut deep, 1, false, GTC, 0, 0, 3, 2, None);
    deep.extend([15, 0, 0x0F]); // and raised again

    let mut self_trades = Vec::new();
    for round in 0u8..24 {
        let user = round % 2;
        limit(&mut self_trades, user, round % 3 == 0, GTC, 3, 1, 6 + round % 4, 4, Some(round % 8));
        limit(&mut self_trades, user, round % 3 != 0, GTC, round % 4, 1, 6 + round % 4, 3, None);
        amend(&mut self_trades, round, round << 2, 7);
        cancel(&mut self_trades, round.wrapping_mul(7), true);
    }

    // Stops, take-profits, trailing stops and an iceberg around a price
    // set by a trade; sweeps up and down fire them (in cascade); OCO and
    // OTO lists; a list cancelled.
    let mut triggers = Vec::new();
    for i in 0u8..8 {
        limit(&mut triggers, 0, true, GTC, 0, 0, 8 + i, 5, None);
        limit(&mut triggers, 1, false, GTC, 0, 0, i, 5, None);
    }
    market_order(&mut triggers, 2, false, false, 1); // last price 100
                                                     // op 16: user, flags (side, market, STP, client id), trigger flags
                                                     // (kind, no stop, trailing; >> 5: market or limit and its time in
                                                     // force), stop price, [delta], [price], qty, [visible].
    triggers.extend([16, 3, 0, 0, 10, 4]); // stop-loss buy at 102, market
    triggers.extend([16, 2, 1, 1, 11, 3]); // take-profit sell at 103, market
    triggers.extend([16, 1, 1, 0, 4, 4]); // stop-loss sell at 96, market
    triggers.extend([16, 3, 1, 22, 50, 2]); // trailing sell from the last price, 201 bips
    triggers.extend([16, 2, 0, 4 << 5, 12, 15, 6]); // stop-loss buy at 104, limit 107
    triggers.extend([16, 3, 0, 6 << 5, 11, 15, 9, 3]); // stop-loss buy at 103, FOK, iceberg
    triggers.extend([17, 0, 1, 2, 9, 20]); // iceberg sell at 101: 21 lots, 3 shown
                                           // op 18: OCO sell (post-only limit at 107 + stop-loss at 94), OTO
                                           // (buy at 99, then sell at 106).
    triggers.extend([18, 1, 0x14, 3 << 3, 15, 4, 3, 2, 4]);
    triggers.extend([18, 2, 0x11, 0, 7, 3, 0, 14, 3]);
    triggers.extend([18, 3, 0x14, 3 << 3, 14, 2, 3, 3, 2]);
    for _ in 0..4 {
        market_order(&mut triggers, 2, false, false, 23); // sweep up
    }
    for _ in 0..6 {
        market_order(&mut triggers, 0, true, false, 23); // and down
    }
    for i in 0u8..8 {
        limit(&mut triggers, 0, true, GTC, 0, 0, 8 + i, 5, None);
        limit(&mut triggers, 1, false, GTC, 0, 0, i, 5, None);
    }
    triggers.extend([18, 2, 0x14, 3 << 3, 15, 4, 3, 2, 4]);
    triggers.extend([19, 2, 0, 1]); // cancel a list
    for _ in 0..3 {
        market_order(&mut triggers, 3, false, false, 23);
        market_order(&mut triggers, 1, true, false, 23);
    }

    vec![deep, self_trades, triggers, (0u8..=255).collect()]
}
