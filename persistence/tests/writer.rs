//! The writer against a real PostgreSQL: migrations, a random session
//! written and compared row by row with the engine's events (live, and
//! regenerated from the journal), and the database killed mid-stream.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, UNIX_EPOCH};

use engine_core::{
    AssetId, Command, Contingency, Engine, EngineLimits, Event, EventKind, ListId, ListLeg, ListRef, Lots,
    MarketId, MarketRules, MarketStatus, NewOrder, NewOrderList, OrderId, OrderKind, OrderRef,
    SelfTradePrevention, Side, StampedCommand, Symbol, Ticks, TimeInForce, Trigger, TriggerKind, Units,
    UserId,
};
use journal::{DataDir, Durability, JournalConfig, JournalWriter};
use persistence::cluster::Database;
use persistence::scale::Amount;
use persistence::{Batch, Stamp, Writer, WriterConfig};
use rust_decimal::Decimal;
use tokio_postgres::{Client, NoTls};
use workload::Rng;

const USERS: u32 = 6;
/// (symbol, decimals): BTC and ETH trade against USDT.
const ASSETS: [(&str, u8); 3] = [("BTC", 8), ("ETH", 18), ("USDT", 6)];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

async fn connect(url: &str) -> Client {
    let (client, connection) =
        tokio_postgres::connect(url, NoTls).await.expect("connect to the test database");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

fn market_rules() -> [MarketRules; 2] {
    [
        // BTC-USDT: lot 0.0001 BTC, tick 0.01 USDT.
        MarketRules {
            base: AssetId(0),
            quote: AssetId(2),
            base_units_per_lot: 10_000,
            quote_units_per_tick: 1,
            min_qty: Lots(1),
            min_notional: Units(1),
            maker_fee_ppm: 1_000,
            taker_fee_ppm: 2_000,
        },
        // ETH-USDT: lot 0.001 ETH (10^15 wei), tick 0.1 USDT.
        MarketRules {
            base: AssetId(1),
            quote: AssetId(2),
            base_units_per_lot: 1_000_000_000_000_000,
            quote_units_per_tick: 100,
            min_qty: Lots(1),
            min_notional: Units(1),
            maker_fee_ppm: 0,
            taker_fee_ppm: 3_000,
        },
    ]
}

/// A seeded session: reference data, funding, then a mix of every order
/// type, cancels, cancel-alls, amends, deposits and withdrawals.
fn session(seed: u64, commands: usize) -> Vec<Command> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for (symbol, decimals) in ASSETS {
        out.push(Command::CreateAsset { symbol: Symbol::new(symbol).expect("valid"), decimals });
    }
    for rules in market_rules() {
        out.push(Command::CreateMarket { rules, status: MarketStatus::Open });
    }
    for user in 0..USERS {
        out.push(Command::CreateUser);
        for (asset, amount) in
            [(0, 10_000_000_000u64), (1, 2_000_000_000_000_000_000), (2, 100_000_000_000_000)]
        {
            out.push(Command::Deposit { user: UserId(user), asset: AssetId(asset), amount: Units(amount) });
        }
    }
    let mut next_order = 1u64;
    let mut next_list = 1u64;
    for _ in 0..commands {
        let user = UserId(rng.below(u64::from(USERS)) as u32);
        let market = MarketId(rng.below(2) as u32);
        let side = if rng.below(2) == 0 { Side::Buy } else { Side::Sell };
        let mid = if market.0 == 0 { 3_000_000 } else { 20_000 };
        let price = Ticks(mid - 20 + rng.below(41));
        let qty = Lots(1 + rng.below(30));
        let stp = [
            SelfTradePrevention::CancelTaker,
            SelfTradePrevention::CancelMaker,
            SelfTradePrevention::CancelBoth,
            SelfTradePrevention::Allow,
        ][rng.below(4) as usize];
        let existing = OrderId(1 + rng.below(next_order));
        // One command in five is a stop, an iceberg or an order list, or
        // cancels a list.
        if rng.below(5) == 0 {
            let command = waiting_kinds(&mut rng, user, market, side, price, qty, stp, next_list);
            match command {
                Command::PlaceOrder(_) => next_order += 1,
                Command::PlaceOrderList(_) => {
                    next_order += 2;
                    next_list += 1;
                }
                _ => {}
            }
            out.push(command);
            continue;
        }
        let command = match rng.below(100) {
            0..=44 => {
                let tif = [
                    TimeInForce::Gtc,
                    TimeInForce::Gtc,
                    TimeInForce::Ioc,
                    TimeInForce::Fok,
                    TimeInForce::PostOnly,
                ][rng.below(5) as usize];
                Command::PlaceOrder(NewOrder {
                    user,
                    market,
                    side,
                    kind: OrderKind::Limit { price, qty, tif },
                    client_order_id: None,
                    stp,
                })
            }
            45..=54 => Command::PlaceOrder(NewOrder {
                user,
                market,
                side,
                kind: OrderKind::Market { qty },
                client_order_id: None,
                stp,
            }),
            55..=59 => Command::PlaceOrder(NewOrder {
                user,
                market,
                side: Side::Buy,
                kind: OrderKind::MarketByQuote { amount: Units(1_000_000 + rng.below(50_000_000)) },
                client_order_id: None,
                stp,
            }),
            60..=76 => Command::CancelOrder { user, order: OrderRef::Id(existing) },
            77..=87 => Command::Amend(engine_core::Amend {
                user,
                order: OrderRef::Id(existing),
                new_qty: if rng.below(2) == 0 { Some(Lots(1 + rng.below(20))) } else { None },
                new_price: if rng.below(2) == 0 { Some(price) } else { None },
            }),
            88..=90 => {
                Command::CancelAll { user, market: if rng.below(2) == 0 { Some(market) } else { None } }
            }
            91..=95 => Command::Deposit {
                user,
                asset: AssetId(rng.below(3) as u32),
                amount: Units(1 + rng.below(1_000_000)),
            },
            _ => Command::Withdraw {
                user,
                asset: AssetId(rng.below(3) as u32),
                amount: Units(1 + rng.below(1_000_000)),
            },
        };
        if matches!(command, Command::PlaceOrder(_)) {
            next_order += 1;
        }
        out.push(command);
    }
    out
}

/// A stop or take-profit order (fixed or trailing, market or limit), an
/// iceberg, an OCO, an OTO, or a cancel of a list, around `price`.
#[allow(clippy::too_many_arguments)]
fn waiting_kinds(
    rng: &mut Rng,
    user: UserId,
    market: MarketId,
    side: Side,
    price: Ticks,
    qty: Lots,
    stp: SelfTradePrevention,
    next_list: u64,
) -> Command {
    let trigger = |rng: &mut Rng| {
        let kind = if rng.below(2) == 0 { TriggerKind::StopLoss } else { TriggerKind::TakeProfit };
        // Basis points small enough to fire on the session's moves.
        let trailing_bips = if rng.below(3) == 0 { 1 + rng.below(15) as u16 } else { 0 };
        let stop = if trailing_bips > 0 && rng.below(2) == 0 { None } else { Some(price) };
        Trigger { kind, stop, trailing_bips }
    };
    let visible = Lots((qty.0 / 3).max(1));
    let place = |kind: OrderKind| {
        Command::PlaceOrder(NewOrder { user, market, side, kind, client_order_id: None, stp })
    };
    match rng.below(6) {
        0 => place(OrderKind::StopMarket { trigger: trigger(rng), qty }),
        1 => {
            let tif = [TimeInForce::Gtc, TimeInForce::Ioc, TimeInForce::Fok][rng.below(3) as usize];
            let visible = if tif == TimeInForce::Gtc && rng.below(2) == 0 { visible } else { Lots(0) };
            place(OrderKind::StopLimit { trigger: trigger(rng), price, qty, tif, visible })
        }
        2 => {
            let tif = if rng.below(3) == 0 { TimeInForce::PostOnly } else { TimeInForce::Gtc };
            place(OrderKind::Iceberg { price, qty, visible, tif })
        }
        3 => {
            // A maker on the far side of the last prices and a stop.
            let away = if side == Side::Sell { Ticks(price.0 + 25) } else { Ticks(price.0 - 25) };
            let maker = OrderKind::Limit { price: away, qty, tif: TimeInForce::PostOnly };
            let stop = OrderKind::StopMarket { trigger: trigger(rng), qty };
            Command::PlaceOrderList(NewOrderList {
                user,
                market,
                contingency: Contingency::Oco,
                client_list_id: None,
                stp,
                legs: [
                    ListLeg { side, kind: maker, client_order_id: None },
                    ListLeg { side, kind: stop, client_order_id: None },
                ],
            })
        }
        4 => {
            let working = OrderKind::Limit { price, qty, tif: TimeInForce::Gtc };
            let pending = if rng.below(2) == 0 {
                OrderKind::Market { qty }
            } else {
                let away = if side == Side::Buy { Ticks(price.0 + 5) } else { Ticks(price.0 - 5) };
                OrderKind::Limit { price: away, qty, tif: TimeInForce::Gtc }
            };
            Command::PlaceOrderList(NewOrderList {
                user,
                market,
                contingency: Contingency::Oto,
                client_list_id: None,
                stp,
                legs: [
                    ListLeg { side, kind: working, client_order_id: None },
                    ListLeg { side: side.opposite(), kind: pending, client_order_id: None },
                ],
            })
        }
        _ => Command::CancelOrderList { user, list: ListRef::Id(ListId(1 + rng.below(next_list))) },
    }
}

/// The session applied to an engine and written to a journal in `data`.
struct Played {
    stamped: Vec<StampedCommand>,
    /// Events of each command, in order.
    events: Vec<Vec<Event>>,
    engine: Engine,
}

fn play(data: &DataDir, commands: &[Command]) -> Played {
    let mut config = JournalConfig::new(data.journal());
    config.durability = Durability::None;
    let (mut journal, _) = JournalWriter::open(config).expect("open the journal");
    let mut engine = Engine::new(EngineLimits::default());
    let mut stamped = Vec::new();
    let mut events = Vec::new();
    // Timestamps cross several minutes so that candles differ.
    let first_ns = 1_700_000_000_000_000_000u64;
    for (index, command) in commands.iter().enumerate() {
        let command = StampedCommand {
            seq: index as u64 + 1,
            timestamp_ns: first_ns + index as u64 * 97_000_000,
            command: *command,
        };
        journal.append(&command).expect("append");
        let mut out = Vec::new();
        engine.apply(&command, &mut out).expect("in order");
        assert!(!out.is_empty(), "every command has at least one event");
        stamped.push(command);
        events.push(out);
    }
    journal.commit_batch().expect("commit");
    Played { stamped, events, engine }
}

/// Offers the played session to the feed in batches of random sizes.
fn offer_all(writer: &Writer, played: &Played, seed: u64, pause: Duration) {
    let mut rng = Rng::new(seed);
    let mut at = 0;
    while at < played.stamped.len() {
        let end = (at + 1 + rng.below(40) as usize).min(played.stamped.len());
        let events: Vec<Event> = played.events[at..end].iter().flatten().copied().collect();
        let stamps: Vec<Stamp> = played.stamped[at..end]
            .iter()
            .map(|c| Stamp { seq: c.seq, timestamp_ns: c.timestamp_ns })
            .collect();
        writer.feed.offer(Batch { events: events.into(), stamps: stamps.into() });
        at = end;
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
}

fn wait_for_cursor(writer: &Writer, seq: u64) {
    // A liveness bound, not a speed assertion.
    let started = Instant::now();
    while writer.status.cursor_seq.load(std::sync::atomic::Ordering::Relaxed) < seq {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the writer did not catch up: cursor {} of {seq}, last error {:?}",
            writer.status.cursor_seq.load(std::sync::atomic::Ordering::Relaxed),
            writer.status.last_error()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// open, high, low, close, quote volume, trades.
type CandleFigures = (Decimal, Decimal, Decimal, Decimal, Decimal, i64);

fn dec(units: u128, decimals: u8) -> Decimal {
    Decimal::from_i128_with_scale(units as i128, u32::from(decimals))
}

fn tick_size(rules: &MarketRules, base: u8, quote: u8) -> Decimal {
    (dec(u128::from(rules.quote_units_per_tick), quote) / dec(u128::from(rules.base_units_per_lot), base))
        .normalize()
}

/// An order's list, trigger (kind, stop ticks, trailing bips) and whether it fired.
type OrderExtras = (Option<i64>, Option<(String, Option<u64>, Option<i16>)>, bool);

/// A row of `order_lists`: id, user, contingency, list client id, status, orders.
type ListRow = (i64, i32, String, Option<String>, String, Vec<i64>);

/// Checks every table against the engine's events, row by row.
async fn check_tables(client: &Client, played: &Played) {
    let rules = market_rules();
    let decimals = |asset: AssetId| ASSETS[asset.0 as usize].1;
    let last_seq = played.stamped.len() as i64;
    let cursor: i64 =
        client.query_one("SELECT last_seq FROM writer_cursor", &[]).await.expect("cursor").get(0);
    assert_eq!(cursor, last_seq);

    // Trades: one row per Trade event, equal in every column.
    let rows = client.query("SELECT trade_id, seq, market_id, price, quantity, quote_quantity, taker_side, maker_order_id, maker_user_id, taker_order_id, taker_user_id, maker_fee, maker_fee_asset_id, taker_fee, taker_fee_asset_id, executed_at FROM trades ORDER BY trade_id", &[]).await.expect("trades");
    let db_trades: Vec<_> = rows.iter().map(|r| persistence::trade_row(r).expect("a trade row")).collect();
    let mut expected_trades = Vec::new();
    let mut orders: BTreeMap<u64, (String, u64, Option<u64>)> = BTreeMap::new();
    let mut balances_expected = Vec::new();
    let mut candles: BTreeMap<(u32, u64), CandleFigures> = BTreeMap::new();
    // Per order: its list, its trigger (kind, stop, bips), whether it fired.
    let mut order_extras: BTreeMap<u64, OrderExtras> = BTreeMap::new();
    // Per list: user, contingency, order ids, status.
    let mut lists: BTreeMap<i64, (i32, String, Vec<i64>, String)> = BTreeMap::new();
    for (command, events) in played.stamped.iter().zip(&played.events) {
        let mut pending: Option<(i64, OrderId)> = None;
        let mut in_list: Option<(i64, [OrderId; 2])> = None;
        for (index, event) in events.iter().enumerate() {
            match event.kind {
                EventKind::OrderListAccepted { list, user, contingency, orders, .. } => {
                    let name = persistence::contingency_name(contingency).to_string();
                    let ids = orders.iter().map(|o| o.0 as i64).collect();
                    lists.insert(list.0 as i64, (user.0 as i32, name, ids, "open".into()));
                    in_list = Some((list.0 as i64, orders));
                    if contingency == Contingency::Oto {
                        pending = Some((list.0 as i64, orders[1]));
                    }
                }
                EventKind::OrderListDone { list, .. } => {
                    lists.get_mut(&(list.0 as i64)).expect("a list ends after it opened").3 = "done".into();
                }
                EventKind::OrderReleased { order, .. } => {
                    orders.get_mut(&order.0).expect("a released order was accepted").0 = "new".into();
                }
                EventKind::OrderTriggered { order, .. } => {
                    order_extras.get_mut(&order.0).expect("a fired order was accepted").2 = true;
                }
                EventKind::Trade {
                    trade,
                    market,
                    price,
                    qty,
                    taker_side,
                    maker_order,
                    maker_user,
                    taker_order,
                    taker_user,
                    maker_fee,
                    taker_fee,
                    maker_remaining,
                    taker_remaining,
                    ..
                } => {
                    let r = &rules[market.0 as usize];
                    let (bd, qd) = (decimals(r.base), decimals(r.quote));
                    let price_dec = (Decimal::from(price.0) * tick_size(r, bd, qd)).normalize();
                    let quantity = dec(u128::from(qty.0) * u128::from(r.base_units_per_lot), bd);
                    let (maker_asset, taker_asset) =
                        if taker_side == Side::Buy { (r.quote, r.base) } else { (r.base, r.quote) };
                    expected_trades.push(persistence::TradeRow {
                        trade_id: trade.0 as i64,
                        seq: command.seq as i64,
                        market_id: market.0 as i32,
                        price: Amount(price_dec),
                        quantity: Amount(quantity),
                        quote_quantity: Amount(dec(
                            u128::from(price.0) * u128::from(qty.0) * u128::from(r.quote_units_per_tick),
                            qd,
                        )),
                        taker_side: if taker_side == Side::Buy { "buy" } else { "sell" },
                        maker_order_id: maker_order.0 as i64,
                        maker_user_id: maker_user.0 as i32,
                        taker_order_id: taker_order.0 as i64,
                        taker_user_id: taker_user.0 as i32,
                        maker_fee: Amount(dec(u128::from(maker_fee.0), decimals(maker_asset))),
                        maker_fee_asset_id: maker_asset.0 as i32,
                        taker_fee: Amount(dec(u128::from(taker_fee.0), decimals(taker_asset))),
                        taker_fee_asset_id: taker_asset.0 as i32,
                        executed_at: UNIX_EPOCH + Duration::from_micros(command.timestamp_ns / 1_000),
                    });
                    for (order, remaining) in [(maker_order, maker_remaining), (taker_order, taker_remaining)]
                    {
                        let entry = orders.entry(order.0).or_insert(("new".into(), 0, None));
                        entry.0 = "partially_filled".into();
                        entry.1 += qty.0;
                        entry.2 = Some(remaining.0);
                    }
                    let minute = command.timestamp_ns / 60_000_000_000;
                    let quote =
                        dec(u128::from(price.0) * u128::from(qty.0) * u128::from(r.quote_units_per_tick), qd);
                    let candle = candles.entry((market.0, minute)).or_insert((
                        price_dec,
                        price_dec,
                        price_dec,
                        price_dec,
                        Decimal::ZERO,
                        0,
                    ));
                    candle.1 = candle.1.max(price_dec);
                    candle.2 = candle.2.min(price_dec);
                    candle.3 = price_dec;
                    candle.4 += quote;
                    candle.5 += 1;
                }
                EventKind::OrderAccepted { order, kind, .. } => {
                    let remaining = match kind {
                        OrderKind::Limit { qty, .. } | OrderKind::Market { qty } => qty.0,
                        OrderKind::MarketByQuote { .. } => 0,
                        other => other.qty().map_or(0, |q| q.0),
                    };
                    let status = if pending.is_some_and(|(_, p)| p == order) { "pending_new" } else { "new" };
                    orders.insert(order.0, (status.into(), 0, Some(remaining)));
                    let list = in_list.filter(|(_, ids)| ids.contains(&order)).map(|(list, _)| list);
                    let trigger = kind.trigger().map(|t| {
                        (
                            persistence::trigger_kind_name(t.kind).to_string(),
                            t.stop.map(|p| p.0),
                            (t.trailing_bips > 0).then_some(t.trailing_bips as i16),
                        )
                    });
                    order_extras.insert(order.0, (list, trigger, false));
                }
                EventKind::OrderAmended { order, remaining, .. } => {
                    if let Some(entry) = orders.get_mut(&order.0) {
                        entry.2 = Some(remaining.0);
                    }
                }
                EventKind::OrderDone { order, reason, filled, .. } => {
                    let entry = orders.entry(order.0).or_insert(("new".into(), 0, None));
                    entry.0 = persistence::done_status(reason).to_string();
                    entry.2 = Some(0);
                    assert_eq!(entry.1, filled.0, "the events' fills add up for order {order}");
                }
                EventKind::Balance { user, asset, available, locked } => {
                    balances_expected.push((
                        command.seq as i64,
                        index as i32,
                        user.0 as i32,
                        asset.0 as i32,
                        dec(u128::from(available.0), decimals(asset)).to_string(),
                        dec(u128::from(locked.0), decimals(asset)).to_string(),
                    ));
                }
                _ => {}
            }
        }
    }
    assert!(expected_trades.len() > 100, "the session trades ({} trades)", expected_trades.len());
    assert_eq!(db_trades.len(), expected_trades.len(), "one row per trade, none twice");
    for (actual, expected) in db_trades.iter().zip(&expected_trades) {
        // Debug shows each decimal with its scale: amounts must come back
        // at their asset's scale, not merely equal in value.
        assert_eq!(format!("{actual:?}"), format!("{expected:?}"));
    }

    // Ledger: one row per Balance event, at the asset's scale.
    let rows = client
        .query("SELECT seq, event_index, user_id, asset_id, available, locked, available_change, cause FROM ledger ORDER BY seq, event_index", &[])
        .await
        .expect("ledger");
    let actual: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.get::<_, i64>(0),
                r.get::<_, i32>(1),
                r.get::<_, i32>(2),
                r.get::<_, i32>(3),
                r.get::<_, Amount>(4).to_string(),
                r.get::<_, Amount>(5).to_string(),
            )
        })
        .collect();
    assert_eq!(actual, balances_expected);
    let causes: Vec<String> = rows.iter().map(|r| r.get(7)).collect();
    assert!(
        causes.iter().any(|c| c == "trade")
            && causes.iter().any(|c| c == "cancel")
            && causes.iter().any(|c| c == "deposit")
    );
    // The changes of each account add up to its balance.
    let sums = client
        .query("SELECT l.user_id, l.asset_id, sum(l.available_change) = b.available FROM ledger l JOIN balances b USING (user_id, asset_id) GROUP BY l.user_id, l.asset_id, b.available", &[])
        .await
        .expect("sums");
    assert!(sums.iter().all(|r| r.get::<_, bool>(2)), "ledger changes add up to balances");

    // Balances: equal to the engine's, for every account.
    let rows = client
        .query("SELECT user_id, asset_id, available, locked FROM balances", &[])
        .await
        .expect("balances");
    assert_eq!(rows.len(), USERS as usize * ASSETS.len());
    for row in rows {
        let (user, asset) = (UserId(row.get::<_, i32>(0) as u32), AssetId(row.get::<_, i32>(1) as u32));
        let balance = played.engine.balance(user, asset);
        assert_eq!(row.get::<_, Decimal>(2), dec(u128::from(balance.available.0), decimals(asset)));
        assert_eq!(row.get::<_, Decimal>(3), dec(u128::from(balance.locked.0), decimals(asset)));
        assert_eq!(
            row.get::<_, Decimal>(2).scale(),
            u32::from(decimals(asset)),
            "stored at the asset's scale"
        );
    }

    // Orders: status, executed and remaining quantities.
    let rows = client
        .query("SELECT o.order_id, o.status, o.executed_quantity, o.remaining_quantity, m.base_units_per_lot, a.decimals FROM orders o JOIN markets m USING (market_id) JOIN assets a ON a.asset_id = m.base_asset_id ORDER BY order_id", &[])
        .await
        .expect("orders");
    assert_eq!(rows.len(), orders.len(), "one row per accepted order");
    for row in rows {
        let order = row.get::<_, i64>(0) as u64;
        let (status, executed, remaining) = &orders[&order];
        let per_lot: Decimal = row.get(4);
        let decimals = row.get::<_, i16>(5) as u8;
        let lots = |d: Decimal| d * Decimal::from(10u64.pow(u32::from(decimals))) / per_lot;
        assert_eq!(&row.get::<_, String>(1), status, "status of order {order}");
        assert_eq!(lots(row.get(2)), Decimal::from(*executed), "executed quantity of order {order}");
        assert_eq!(
            lots(row.get(3)),
            Decimal::from(remaining.unwrap_or(0)),
            "remaining quantity of order {order}"
        );
    }

    // The new order columns: list, trigger (the stop price at the
    // market's tick), whether it fired.
    let rows = client
        .query("SELECT order_id, market_id, list_id, trigger_kind, stop_price, trailing_bips, triggered_at IS NOT NULL FROM orders ORDER BY order_id", &[])
        .await
        .expect("order columns");
    for row in &rows {
        let order = row.get::<_, i64>(0) as u64;
        let r = &rules[row.get::<_, i32>(1) as usize];
        let tick = tick_size(r, decimals(r.base), decimals(r.quote));
        let (list, trigger, fired) = &order_extras[&order];
        assert_eq!(&row.get::<_, Option<i64>>(2), list, "list of order {order}");
        let expected = trigger.as_ref().map(|(kind, stop, bips)| {
            (kind.clone(), stop.map(|ticks| (Decimal::from(ticks) * tick).normalize()), *bips)
        });
        let stored = row.get::<_, Option<String>>(3).map(|kind| {
            (kind, row.get::<_, Option<Decimal>>(4).map(|p| p.normalize()), row.get::<_, Option<i16>>(5))
        });
        assert_eq!(stored, expected, "trigger of order {order}");
        assert_eq!(row.get::<_, bool>(6), *fired, "fired or not: order {order}");
    }
    let rows = client
        .query(
            "SELECT list_id, user_id, contingency, order_ids, status FROM order_lists ORDER BY list_id",
            &[],
        )
        .await
        .expect("order lists");
    let stored: BTreeMap<i64, (i32, String, Vec<i64>, String)> =
        rows.iter().map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4)))).collect();
    assert_eq!(stored, lists, "one row per accepted list, in its state");
    let fired = order_extras.values().filter(|(_, _, fired)| *fired).count();
    let released = orders.values().filter(|(status, ..)| status == "pending_new").count();
    assert!(
        lists.len() > 10 && fired > 10,
        "the session exercises lists ({}) and fires stops ({fired}); {released} pending at the end",
        lists.len()
    );

    // Candles: one per market and minute with trades.
    let rows = client
        .query("SELECT market_id, open_time, open, high, low, close, quote_volume, trades FROM candles_1m ORDER BY market_id, open_time", &[])
        .await
        .expect("candles");
    let actual: Vec<_> = rows
        .iter()
        .map(|r| {
            let minute = r
                .get::<_, std::time::SystemTime>(1)
                .duration_since(UNIX_EPOCH)
                .expect("after the epoch")
                .as_secs()
                / 60;
            (
                (r.get::<_, i32>(0) as u32, minute),
                (
                    r.get::<_, Decimal>(2),
                    r.get::<_, Decimal>(3),
                    r.get::<_, Decimal>(4),
                    r.get::<_, Decimal>(5),
                    r.get::<_, Decimal>(6),
                    r.get::<_, i64>(7),
                ),
            )
        })
        .collect();
    let expected: Vec<_> = candles.into_iter().collect();
    assert_eq!(actual, expected);

    // Reference data and no secrets.
    let users: i64 = client.query_one("SELECT count(*) FROM users", &[]).await.expect("users").get(0);
    assert_eq!(users, i64::from(USERS));
    let markets: Vec<String> = client
        .query("SELECT name FROM markets ORDER BY market_id", &[])
        .await
        .expect("markets")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(markets, ["BTC-USDT", "ETH-USDT"]);
}

fn writer_config(database: &Database, data: &DataDir) -> WriterConfig {
    let mut config = WriterConfig::new(database.url.clone(), data.clone(), EngineLimits::default());
    config.retry_max = Duration::from_millis(500);
    config
}

#[test]
fn migrations_apply_to_an_empty_database_once() {
    let database = Database::throwaway().expect("a database");
    runtime().block_on(async {
        let mut client = connect(&database.url).await;
        let applied = persistence::migrate(&mut client).await.expect("migrate");
        assert_eq!(
            applied,
            [
                "V1__initial",
                "V2__ledger_without_account_index",
                "V3__orders_room_for_updates",
                "V4__candles_taker_buy",
                "V5__order_types_and_lists",
                "V6__seeded_from"
            ]
        );
        let again = persistence::migrate(&mut client).await.expect("migrate again");
        assert!(again.is_empty(), "a second run applies nothing: {again:?}");
        let recorded: i64 = client
            .query_one("SELECT count(*) FROM refinery_schema_history WHERE checksum IS NOT NULL", &[])
            .await
            .expect("history")
            .get(0);
        assert_eq!(recorded, 6, "one row per migration");
        // V2 and V3: no ledger index by account; orders' pages keep room for updates.
        let ledger_index: i64 = client
            .query_one("SELECT count(*) FROM pg_indexes WHERE indexname = 'ledger_by_account'", &[])
            .await
            .expect("indexes")
            .get(0);
        assert_eq!(ledger_index, 0);
        let options: Option<Vec<String>> = client
            .query_one("SELECT reloptions FROM pg_class WHERE oid = 'orders'::regclass", &[])
            .await
            .expect("reloptions")
            .get(0);
        assert_eq!(options, Some(vec!["fillfactor=80".to_string()]));
        let loaded = persistence::load(&client).await.expect("load");
        assert_eq!(loaded.cursor_seq, 0);
        // The amount domain refuses NaN and more decimals than an asset has.
        for bad in ["'NaN'", "1.0000000000000000001"] {
            let result = client
                .execute(&format!("INSERT INTO balances VALUES (0, 0, {bad}, 0, 0)") as &str, &[])
                .await;
            assert!(result.is_err(), "{bad} must be refused");
        }
    });
}

#[test]
fn a_random_session_is_written_row_by_row_as_the_engine_reported() {
    let database = Database::throwaway().expect("a database");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(dir.path());
    let played = play(&data, &session(11, 4_000));
    let writer =
        Writer::start(writer_config(&database, &data), Stamp { seq: 0, timestamp_ns: 0 }).expect("start");
    offer_all(&writer, &played, 3, Duration::ZERO);
    wait_for_cursor(&writer, played.stamped.len() as u64);
    let replayed = writer.status.commands_replayed.load(std::sync::atomic::Ordering::Relaxed);
    writer.stop(Duration::from_secs(5));
    runtime().block_on(async {
        let client = connect(&database.url).await;
        check_tables(&client, &played).await;
    });
    eprintln!("commands regenerated from the journal: {replayed}");
}

#[test]
fn batches_the_feed_drops_are_regenerated_from_the_journal() {
    let database = Database::throwaway().expect("a database");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(dir.path());
    let played = play(&data, &session(12, 3_000));
    let mut config = writer_config(&database, &data);
    // A feed of one batch and small transactions: most batches are dropped.
    config.feed_batches_max = 1;
    config.events_per_transaction_max = 500;
    let writer = Writer::start(config, Stamp { seq: 0, timestamp_ns: 0 }).expect("start");
    offer_all(&writer, &played, 4, Duration::ZERO);
    wait_for_cursor(&writer, played.stamped.len() as u64);
    let dropped = writer.status.batches_dropped.load(std::sync::atomic::Ordering::Relaxed);
    let replayed = writer.status.commands_replayed.load(std::sync::atomic::Ordering::Relaxed);
    writer.stop(Duration::from_secs(5));
    assert!(
        dropped > 0 && replayed > 0,
        "the test must exercise regeneration ({dropped} dropped, {replayed} replayed)"
    );
    runtime().block_on(async {
        let client = connect(&database.url).await;
        check_tables(&client, &played).await;
    });
}

#[test]
fn the_database_killed_mid_stream_leaves_no_gap_and_no_duplicate() {
    let database = Database::throwaway().expect("a database");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(dir.path());
    let played = play(&data, &session(13, 4_000));
    let mut config = writer_config(&database, &data);
    config.events_per_transaction_max = 300;
    let writer = Writer::start(config, Stamp { seq: 0, timestamp_ns: 0 }).expect("start");
    let half = played.stamped.len() / 2;
    let first_half = Played {
        stamped: played.stamped[..half].to_vec(),
        events: played.events[..half].to_vec(),
        engine: Engine::new(EngineLimits::default()),
    };
    offer_all(&writer, &first_half, 5, Duration::from_millis(1));
    // Cut the writer off while it writes: a server crash on our own
    // cluster, or the connections terminated on a shared server.
    let runtime = runtime();
    match database.cluster() {
        Some(cluster) => {
            cluster.kill_server().expect("kill the server");
            std::thread::sleep(Duration::from_millis(500));
            cluster.start_server().expect("restart the server");
        }
        None => runtime.block_on(async {
            let client = connect(&database.url).await;
            client
                .execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()", &[])
                .await
                .expect("terminate");
        }),
    }
    let second_half = Played {
        stamped: played.stamped[half..].to_vec(),
        events: played.events[half..].to_vec(),
        engine: Engine::new(EngineLimits::default()),
    };
    offer_all(&writer, &second_half, 6, Duration::from_millis(1));
    wait_for_cursor(&writer, played.stamped.len() as u64);
    writer.stop(Duration::from_secs(5));
    runtime.block_on(async {
        let client = connect(&database.url).await;
        check_tables(&client, &played).await;
    });
}

#[test]
fn a_database_ahead_of_the_journal_is_refused() {
    let database = Database::throwaway().expect("a database");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(dir.path());
    let played = play(&data, &session(14, 200));
    let writer =
        Writer::start(writer_config(&database, &data), Stamp { seq: 0, timestamp_ns: 0 }).expect("start");
    offer_all(&writer, &played, 7, Duration::ZERO);
    wait_for_cursor(&writer, played.stamped.len() as u64);
    writer.stop(Duration::from_secs(5));
    // The exchange now claims fewer commands than the database holds.
    let writer =
        Writer::start(writer_config(&database, &data), Stamp { seq: 10, timestamp_ns: 0 }).expect("start");
    let started = Instant::now();
    while writer.status.last_error().is_none() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let error = writer.status.last_error().unwrap_or_default();
    assert!(error.contains("ahead of the journal"), "{error}");
    writer.stop(Duration::ZERO);
}

/// The events of stops, trailing stops, OCO and OTO lists as docs/engine.md
/// says the engine reports them, written in two transactions (so that a
/// list and an order opened in the first change in the second): every new
/// column and `order_lists` row says what the events said. Made by hand,
/// so that the writer's side stands on its own.
#[test]
fn stops_and_order_lists_fill_their_columns_and_rows() {
    use engine_core::{ClientOrderId, DoneReason, RejectReason};
    let database = Database::throwaway().expect("a database");
    let rules = market_rules()[0];
    let (alice, bob) = (UserId(0), UserId(1));
    let market = MarketId(0);
    let ts = |seq: u64| 1_700_000_000_000_000_000u64 + seq * 1_000_000_000;
    let limit = |price: u64, qty: u64| OrderKind::Limit {
        price: Ticks(price),
        qty: Lots(qty),
        tif: TimeInForce::Gtc,
    };
    let accepted = |seq: u64, order: u64, user: UserId, side: Side, kind: OrderKind| Event {
        seq,
        kind: EventKind::OrderAccepted {
            order: OrderId(order),
            user,
            market,
            side,
            kind,
            client_order_id: None,
            stp: SelfTradePrevention::CancelTaker,
            timestamp_ns: ts(seq),
        },
    };
    let trade =
        |seq: u64, id: u64, price: u64, qty: u64, maker: (u64, UserId, u64), taker: (u64, UserId, u64)| {
            Event {
                seq,
                kind: EventKind::Trade {
                    trade: engine_core::TradeId(id),
                    market,
                    price: Ticks(price),
                    qty: Lots(qty),
                    taker_side: Side::Sell,
                    maker_order: OrderId(maker.0),
                    maker_user: maker.1,
                    maker_remaining: Lots(maker.2),
                    taker_order: OrderId(taker.0),
                    taker_user: taker.1,
                    taker_remaining: Lots(taker.2),
                    maker_fee: Units(0),
                    taker_fee: Units(0),
                    timestamp_ns: ts(seq),
                },
            }
        };
    let done = |seq: u64, order: u64, user: UserId, reason: DoneReason, filled: u64, cancelled: u64| Event {
        seq,
        kind: EventKind::OrderDone {
            order: OrderId(order),
            user,
            market,
            reason,
            filled: Lots(filled),
            cancelled: Lots(cancelled),
        },
    };
    let balance = |seq: u64, user: UserId, asset: u32, available: u64, locked: u64| Event {
        seq,
        kind: EventKind::Balance {
            user,
            asset: AssetId(asset),
            available: Units(available),
            locked: Units(locked),
        },
    };
    let list_accepted = |seq: u64,
                         list: u64,
                         user: UserId,
                         contingency: Contingency,
                         orders: [u64; 2],
                         client: Option<&str>| Event {
        seq,
        kind: EventKind::OrderListAccepted {
            list: ListId(list),
            user,
            market,
            contingency,
            orders: [OrderId(orders[0]), OrderId(orders[1])],
            client_list_id: client.map(|c| ClientOrderId::new(c).expect("valid")),
            timestamp_ns: ts(seq),
        },
    };
    let list_done = |seq: u64, list: u64, user: UserId| Event {
        seq,
        kind: EventKind::OrderListDone { list: ListId(list), user, market },
    };
    let stop_loss = |stop: Option<u64>, trailing_bips: u16| Trigger {
        kind: TriggerKind::StopLoss,
        stop: stop.map(Ticks),
        trailing_bips,
    };
    let first: Vec<Event> = vec![
        Event {
            seq: 1,
            kind: EventKind::AssetCreated {
                asset: AssetId(0),
                symbol: Symbol::new("BTC").unwrap(),
                decimals: 8,
            },
        },
        Event {
            seq: 2,
            kind: EventKind::AssetCreated {
                asset: AssetId(1),
                symbol: Symbol::new("ETH").unwrap(),
                decimals: 18,
            },
        },
        Event {
            seq: 3,
            kind: EventKind::AssetCreated {
                asset: AssetId(2),
                symbol: Symbol::new("USDT").unwrap(),
                decimals: 6,
            },
        },
        Event { seq: 4, kind: EventKind::MarketCreated { market, rules, status: MarketStatus::Open } },
        Event { seq: 5, kind: EventKind::UserCreated { user: alice } },
        Event { seq: 6, kind: EventKind::UserCreated { user: bob } },
        Event {
            seq: 7,
            kind: EventKind::Deposited { user: alice, asset: AssetId(2), amount: Units(1_000_000) },
        },
        balance(7, alice, 2, 1_000_000, 0),
        Event {
            seq: 8,
            kind: EventKind::Deposited { user: bob, asset: AssetId(0), amount: Units(1_000_000) },
        },
        balance(8, bob, 0, 1_000_000, 0),
        // An OTO: buy 10 lots at 100, then sell them at 110.
        list_accepted(9, 1, alice, Contingency::Oto, [1, 2], Some("oto-1")),
        accepted(9, 1, alice, Side::Buy, limit(100, 10)),
        accepted(9, 2, alice, Side::Sell, limit(110, 10)),
        balance(9, alice, 2, 999_000, 1_000),
        // A stop-loss sell at 95 and an OCO: a maker at 120 or a trailing stop.
        accepted(
            10,
            3,
            bob,
            Side::Sell,
            OrderKind::StopMarket { trigger: stop_loss(Some(95), 0), qty: Lots(5) },
        ),
        balance(10, bob, 0, 950_000, 50_000),
        list_accepted(11, 2, bob, Contingency::Oco, [4, 5], None),
        accepted(
            11,
            4,
            bob,
            Side::Sell,
            OrderKind::Limit { price: Ticks(120), qty: Lots(5), tif: TimeInForce::PostOnly },
        ),
        accepted(
            11,
            5,
            bob,
            Side::Sell,
            OrderKind::StopMarket { trigger: stop_loss(None, 50), qty: Lots(5) },
        ),
        balance(11, bob, 0, 900_000, 100_000),
    ];
    let second: Vec<Event> = vec![
        // Bob fills the OTO's working order: its pending order is released.
        accepted(12, 6, bob, Side::Sell, limit(100, 10)),
        trade(12, 1, 100, 10, (1, alice, 0), (6, bob, 0)),
        balance(12, alice, 0, 100_000, 0),
        balance(12, alice, 2, 999_000, 0),
        balance(12, bob, 0, 800_000, 100_000),
        balance(12, bob, 2, 1_000, 0),
        done(12, 1, alice, DoneReason::Filled, 10, 0),
        done(12, 6, bob, DoneReason::Filled, 10, 0),
        Event {
            seq: 12,
            kind: EventKind::OrderReleased { order: OrderId(2), user: alice, market, timestamp_ns: ts(12) },
        },
        balance(12, alice, 0, 0, 100_000),
        list_done(12, 1, alice),
        // A trade at 95 fires the stop and the OCO's trailing stop: the
        // maker leg is cancelled by its list.
        accepted(13, 7, alice, Side::Buy, limit(95, 4)),
        balance(13, alice, 2, 998_620, 380),
        accepted(14, 8, bob, Side::Sell, OrderKind::Market { qty: Lots(1) }),
        trade(14, 2, 95, 1, (7, alice, 3), (8, bob, 0)),
        balance(14, alice, 0, 10_000, 100_000),
        balance(14, alice, 2, 998_620, 285),
        balance(14, bob, 0, 790_000, 100_000),
        balance(14, bob, 2, 1_095, 0),
        done(14, 8, bob, DoneReason::Filled, 1, 0),
        Event {
            seq: 14,
            kind: EventKind::OrderTriggered {
                order: OrderId(3),
                user: bob,
                market,
                price: Ticks(95),
                timestamp_ns: ts(14),
            },
        },
        trade(14, 3, 95, 3, (7, alice, 0), (3, bob, 2)),
        done(14, 7, alice, DoneReason::Filled, 4, 0),
        done(14, 3, bob, DoneReason::Expired, 3, 2),
        Event {
            seq: 14,
            kind: EventKind::OrderTriggered {
                order: OrderId(5),
                user: bob,
                market,
                price: Ticks(95),
                timestamp_ns: ts(14),
            },
        },
        done(14, 4, bob, DoneReason::Contingent, 0, 5),
        list_done(14, 2, bob),
        done(14, 5, bob, DoneReason::Expired, 0, 5),
        balance(14, bob, 0, 920_000, 0),
        // An OTO opened and ended in one row set: its pending order is refused.
        list_accepted(15, 3, alice, Contingency::Oto, [9, 10], None),
        accepted(15, 9, alice, Side::Buy, limit(90, 1)),
        accepted(15, 10, alice, Side::Buy, OrderKind::Market { qty: Lots(50) }),
        balance(15, alice, 2, 998_530, 375),
        accepted(16, 11, bob, Side::Sell, limit(90, 1)),
        trade(16, 4, 90, 1, (9, alice, 0), (11, bob, 0)),
        done(16, 9, alice, DoneReason::Filled, 1, 0),
        done(16, 11, bob, DoneReason::Filled, 1, 0),
        Event {
            seq: 16,
            kind: EventKind::OrderReleased { order: OrderId(10), user: alice, market, timestamp_ns: ts(16) },
        },
        done(
            16,
            10,
            alice,
            DoneReason::Refused(RejectReason::InsufficientFunds {
                asset: AssetId(2),
                needed: Units(999_999_999),
                available: Units(5),
            }),
            0,
            50,
        ),
        list_done(16, 3, alice),
    ];
    runtime().block_on(async {
        let mut client = connect(&database.url).await;
        persistence::migrate(&mut client).await.expect("migrate");
        let mut written = 0;
        for events in [first, second] {
            let mut loaded = persistence::load(&client).await.expect("load");
            let mut stamps: Vec<Stamp> = events.iter().map(|e| Stamp { seq: e.seq, timestamp_ns: ts(e.seq) }).collect();
            stamps.dedup();
            let mut rows = persistence::RowSet::new();
            rows.add(&events, &stamps, &mut loaded.catalog, &mut loaded.balances).expect("rows");
            persistence::write(&mut client, &rows, &loaded.catalog, written, persistence::WriteMode::Copy)
                .await
                .expect("write");
            written = stamps.last().expect("a stamp").seq;
        }
        let tick = tick_size(&rules, 8, 6);
        let price = |ticks: u64| Some((Decimal::from(ticks) * tick).normalize());
        type OrderColumns = (String, Option<i64>, Option<String>, Option<Decimal>, Option<i16>, bool, Option<Decimal>, Option<String>);
        let rows = client
            .query("SELECT order_id, status, list_id, trigger_kind, stop_price, trailing_bips, triggered_at IS NOT NULL, trigger_price, reject_reason FROM orders ORDER BY order_id", &[])
            .await
            .expect("orders");
        let stored: BTreeMap<i64, OrderColumns> = rows
            .iter()
            .map(|r| {
                let norm = |d: Option<Decimal>| d.map(|d| d.normalize());
                (r.get(0), (r.get(1), r.get(2), r.get(3), norm(r.get(4)), r.get(5), r.get(6), norm(r.get(7)), r.get(8)))
            })
            .collect();
        let plain = |status: &str, list: Option<i64>| (status.to_string(), list, None, None, None, false, None, None);
        assert_eq!(stored[&1], plain("filled", Some(1)));
        assert_eq!(stored[&2], plain("new", Some(1)), "released: pending_new became new in a later transaction");
        assert_eq!(
            stored[&3],
            ("expired".into(), None, Some("stop_loss".into()), price(95), None, true, price(95), None)
        );
        assert_eq!(stored[&4], plain("expired_contingent", Some(2)));
        assert_eq!(
            stored[&5],
            ("expired".into(), Some(2), Some("stop_loss".into()), None, Some(50), true, price(95), None)
        );
        let refused = &stored[&10];
        assert_eq!((refused.0.as_str(), refused.1), ("rejected", Some(3)));
        assert!(
            refused.7.as_deref().is_some_and(|why| why.contains("insufficient balance")),
            "the reason is kept: {refused:?}"
        );
        let lists: Vec<ListRow> = client
            .query("SELECT list_id, user_id, contingency, list_client_id, status, order_ids FROM order_lists ORDER BY list_id", &[])
            .await
            .expect("lists")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
            .collect();
        assert_eq!(
            lists,
            [
                (1, 0, "oto".into(), Some("oto-1".into()), "done".into(), vec![1, 2]),
                (2, 1, "oco".into(), None, "done".into(), vec![4, 5]),
                (3, 0, "oto".into(), None, "done".into(), vec![9, 10]),
            ]
        );
        // Every balance change has its row and its cause; a fired order's
        // are the order's own.
        let ledger: i64 = client.query_one("SELECT count(*) FROM ledger", &[]).await.expect("ledger").get(0);
        assert_eq!(ledger, 17, "one row per Balance event");
        let fired: Vec<(String, Option<i64>)> = client
            .query("SELECT cause, order_id FROM ledger WHERE seq = 12 ORDER BY event_index", &[])
            .await
            .expect("ledger rows")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(fired.last(), Some(&("order".to_string(), Some(2))), "the release funds the released order");
    });
}

/// Every row of `sql` as text, sorted: two databases compared table by table.
async fn rows_as_text(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let mut rows: Vec<Vec<Option<String>>> = client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|row| (0..row.len()).map(|column| row.get::<_, Option<String>>(column)).collect())
        .collect();
    rows.sort();
    rows
}

#[test]
fn a_database_seeded_from_the_final_engine_holds_the_state_a_fed_one_reaches() {
    use persistence::seed::{self, SeedImage, SeedRequest};
    // One database fed the whole random session (every order type, lists,
    // icebergs, stops and trailing stops), one seeded from the engine at
    // its end: their state must be the same.
    let fed = Database::throwaway().expect("a database");
    let seeded = Database::throwaway().expect("a database");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(dir.path());
    let played = play(&data, &session(23, 3_000));
    let writer = Writer::start(writer_config(&fed, &data), Stamp { seq: 0, timestamp_ns: 0 }).expect("start");
    offer_all(&writer, &played, 5, Duration::ZERO);
    wait_for_cursor(&writer, played.stamped.len() as u64);
    writer.stop(Duration::from_secs(5));

    let last = played.stamped.last().expect("commands");
    let image = SeedImage {
        engine: Engine::from_snapshot(played.engine.snapshot()).expect("a copy of the engine"),
        last_timestamp_ns: last.timestamp_ns,
        raft_index: 7,
        raft_term: 2,
    };
    runtime().block_on(async {
        let mut client = connect(&seeded.url).await;
        persistence::migrate(&mut client).await.expect("migrate");
        let (rows, catalog, _, summary) = seed::rows_from_image(&image).expect("rows");
        let request = SeedRequest { reason: "test".to_string(), node_id: 3 };
        seed::write(&mut client, &rows, &catalog, &summary, &request, persistence::WriteMode::Copy)
            .await
            .expect("seeded");
        let fed = connect(&fed.url).await;
        let open = "status IN ('new', 'partially_filled', 'pending_new')";
        let columns = "order_id::text, user_id::text, market_id::text, side, time_in_force, price::text, \
                       quantity::text, client_order_id, self_trade_prevention, status, \
                       remaining_quantity::text, executed_quantity::text";
        // A stop that fired and now rests is a plain limit order in the
        // image: its type and trigger are compared only while it waits.
        let kinds = "type, trigger_kind, stop_price::text, trailing_bips::text, visible_quantity::text";
        // An OTO's pending order released before the image keeps its ended
        // list's id in a fed database; the image no longer has that list.
        let listed = "SELECT order_id::text, list_id::text FROM orders WHERE list_id IN \
                      (SELECT list_id FROM order_lists WHERE status = 'open')";
        for sql in [
            format!("SELECT {columns} FROM orders WHERE {open}"),
            listed.to_string(),
            format!("SELECT order_id::text, {kinds} FROM orders WHERE {open} AND triggered_at IS NULL"),
            "SELECT user_id::text, asset_id::text, available::text, locked::text FROM balances \
             WHERE available <> 0 OR locked <> 0"
                .to_string(),
            "SELECT list_id::text, user_id::text, market_id::text, contingency, list_client_id, \
             order_ids::text FROM order_lists WHERE status = 'open'"
                .to_string(),
            "SELECT asset_id::text, symbol, decimals::text FROM assets".to_string(),
            "SELECT market_id::text, name, tick_size::text, lot_size::text, maker_fee_ppm::text, \
             taker_fee_ppm::text, status FROM markets"
                .to_string(),
            "SELECT user_id::text FROM users".to_string(),
            "SELECT last_seq::text FROM writer_cursor".to_string(),
        ] {
            let (from_feed, from_seed) = (rows_as_text(&fed, &sql).await, rows_as_text(&client, &sql).await);
            assert!(!from_feed.is_empty(), "nothing to compare: {sql}");
            assert_eq!(from_seed, from_feed, "{sql}");
        }
        let unexplained: i64 = client
            .query_one(
                "SELECT count(*) FROM balances b LEFT JOIN (SELECT user_id, asset_id, sum(available_change) AS a, \
                 sum(locked_change) AS l FROM ledger GROUP BY user_id, asset_id) s USING (user_id, asset_id) \
                 WHERE s.a IS DISTINCT FROM b.available OR s.l IS DISTINCT FROM b.locked",
                &[],
            )
            .await
            .expect("ledger")
            .get(0);
        assert_eq!(unexplained, 0, "balances the ledger does not add up to");
        // Seeding again is refused, and changes nothing.
        let again = seed::write(&mut client, &rows, &catalog, &summary, &request, persistence::WriteMode::Copy).await;
        assert!(matches!(again, Err(seed::SeedError::Refused(_))), "{again:?}");
    });
}
