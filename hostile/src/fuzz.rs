//! The fuzz targets' bodies. Each must hold for any input; a panic is a
//! bug found.

use std::path::PathBuf;
use std::sync::OnceLock;

use engine_core::{
    ApiKey, ApiSecret, AssetId, Command, Engine, EngineLimits, Event, Lots, MarketId, MarketRules,
    MarketStatus, NewOrder, OrderId, OrderKind, OrderRef, SelfTradePrevention, Side, StampedCommand, Symbol,
    Ticks, TimeInForce, Units, UserId,
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
    if let Ok(engine) = journal::decode_snapshot_payload(data) {
        assert!(engine.check_invariants().is_ok(), "a decoded snapshot holds the invariants");
    }
}

/// A market with two assets and three funded users, for the order targets.
fn seeded_engine() -> Engine {
    let mut engine = Engine::new(limits());
    let mut seq = 0;
    let mut apply = |engine: &mut Engine, command: Command| {
        seq += 1;
        let mut events = Vec::new();
        let _ = engine.apply(&StampedCommand { seq, timestamp_ns: seq * 1_000, command }, &mut events);
    };
    for (symbol, decimals) in [("BTC", 8), ("USDT", 6)] {
        if let Ok(symbol) = Symbol::new(symbol) {
            apply(&mut engine, Command::CreateAsset { symbol, decimals });
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
    apply(&mut engine, Command::CreateMarket { rules, status: MarketStatus::Open });
    for user in 0..3 {
        apply(&mut engine, Command::CreateUser);
        apply(
            &mut engine,
            Command::Deposit { user: UserId(user), asset: AssetId(0), amount: Units(1_000_000_000) },
        );
        apply(
            &mut engine,
            Command::Deposit { user: UserId(user), asset: AssetId(1), amount: Units(1_000_000_000_000) },
        );
    }
    engine
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

/// Arbitrary command sequences against a seeded engine: structured orders
/// (prices near each other so that they trade) mixed with raw commands
/// decoded from the bytes. After every command the engine's invariants
/// hold, and a second engine fed the same commands has the same state.
pub fn engine_commands(data: &[u8]) {
    let mut engine = seeded_engine();
    let mut twin = engine.clone();
    let mut input = Bytes(data);
    let mut events: Vec<Event> = Vec::new();
    let mut steps = 0;
    // Each command is followed by the full invariant check (a snapshot round
    // trip among it): fewer, shorter inputs run more often.
    while !input.0.is_empty() && steps < 96 {
        steps += 1;
        let user = UserId(u32::from(input.u8() % 4));
        let side = if input.u8() % 2 == 0 { Side::Buy } else { Side::Sell };
        let tif = [TimeInForce::Gtc, TimeInForce::Ioc, TimeInForce::Fok, TimeInForce::PostOnly]
            [usize::from(input.u8() % 4)];
        let stp = [
            SelfTradePrevention::CancelTaker,
            SelfTradePrevention::CancelMaker,
            SelfTradePrevention::CancelBoth,
            SelfTradePrevention::Allow,
        ][usize::from(input.u8() % 4)];
        let command = match input.u8() % 10 {
            0..=3 => Command::PlaceOrder(NewOrder {
                user,
                market: MarketId(0),
                side,
                kind: OrderKind::Limit {
                    price: Ticks(95 + input.u64(1) % 10),
                    qty: Lots(1 + input.u64(1) % 20),
                    tif,
                },
                client_order_id: None,
                stp,
            }),
            4 => Command::PlaceOrder(NewOrder {
                user,
                market: MarketId(0),
                side,
                kind: if input.u8() % 2 == 0 {
                    OrderKind::Market { qty: Lots(input.u64(2)) }
                } else {
                    OrderKind::MarketByQuote { amount: Units(input.u64(4)) }
                },
                client_order_id: None,
                stp,
            }),
            5 => Command::CancelOrder { user, order: OrderRef::Id(OrderId(input.u64(1) % 64)) },
            6 => Command::Amend(engine_core::Amend {
                user,
                order: OrderRef::Id(OrderId(input.u64(1) % 64)),
                new_qty: Some(Lots(input.u64(1) % 30)),
                new_price: if input.u8() % 2 == 0 { Some(Ticks(95 + input.u64(1) % 10)) } else { None },
            }),
            7 => Command::CancelAll {
                user,
                market: if input.u8() % 2 == 0 { Some(MarketId(0)) } else { None },
            },
            8 => match input.u8() % 4 {
                0 => Command::Deposit {
                    user,
                    asset: AssetId(u32::from(input.u8() % 3)),
                    amount: Units(input.u64(8)),
                },
                1 => Command::Withdraw {
                    user,
                    asset: AssetId(u32::from(input.u8() % 3)),
                    amount: Units(input.u64(8)),
                },
                2 => Command::SetMarketFees {
                    market: MarketId(0),
                    maker_fee_ppm: input.u64(4) as u32,
                    taker_fee_ppm: input.u64(4) as u32,
                },
                _ => Command::SetMarketStatus {
                    market: MarketId(u32::from(input.u8() % 2)),
                    status: [MarketStatus::Open, MarketStatus::CancelOnly, MarketStatus::Halted]
                        [usize::from(input.u8() % 3)],
                },
            },
            _ => {
                // A raw command as the journal would hold it: any field value.
                let len = usize::from(input.u8()).min(input.0.len());
                let (raw, rest) = input.0.split_at(len);
                input.0 = rest;
                match bincode::serde::decode_from_slice::<Command, _>(raw, journal::bincode_config()) {
                    Ok((command, _)) => command,
                    Err(_) => continue,
                }
            }
        };
        let stamped = StampedCommand { seq: engine.last_seq() + 1, timestamp_ns: 1_000_000 * steps, command };
        events.clear();
        assert!(engine.apply(&stamped, &mut events).is_ok(), "commands in sequence apply");
        if let Err(violation) = engine.check_invariants() {
            panic!("invariant broken after {command:?}: {violation:?}");
        }
        let mut twin_events = Vec::new();
        let _ = twin.apply(&stamped, &mut twin_events);
        assert_eq!(events, twin_events, "the engine is deterministic");
    }
    assert_eq!(engine.state_hash(), twin.state_hash());
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
    match gateway::rest::order_command(views, UserId(1), data) {
        Ok(Command::PlaceOrder(order)) => assert_eq!(order.user, UserId(1)),
        Ok(other) => panic!("a place-order body became {other:?}"),
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
    let subscribers = gateway::ws::Subscribers::default();
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
    if let Ok(user) = auth.authenticate(Some(KEY), query, body.as_bytes(), NOW_MS, true) {
        assert_eq!(user, UserId(5));
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
            vec![whole, torn]
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
        "engine_commands" => vec![
            (0u8..=255).collect(),
            [0u8, 0, 0, 0, 0, 5, 3, 1, 1, 0, 0, 1, 5, 3].repeat(20),
            [2u8, 1, 0, 0, 4, 0, 100, 0, 1, 0, 1, 1, 6, 2, 3].repeat(12),
        ],
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
