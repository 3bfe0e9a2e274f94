//! Binance's market streams and user data events, made by the WebSocket
//! hub from each batch of events.
//!
//! Depth diffs (`<symbol>@depth`, every 1,000 ms, and `@depth@100ms`)
//! carry `U` and `u` in the id space of REST `depth`'s `lastUpdateId` (the
//! sequence number of commands): each diff covers every change after the
//! previous diff of its stream (`U` is the previous `u` plus one) up to
//! `u`, the last command that changed the book. A client that buffers
//! diffs, fetches the snapshot, drops diffs with `u <= lastUpdateId` and
//! applies the rest keeps an exact book, as Binance documents.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use engine_core::{
    AssetId, DoneReason, Event, EventKind, Lots, MarketId, OrderId, OrderKind, Side, Ticks, UserId,
};
use serde_json::{json, Value};

use super::market::{agg_json, aggregate, best, book_json, Level};
use super::{price_text, qty_text, side_name, status_name, stp_name, type_and_tif, units_text, STP_DEFAULT};
use crate::clock::now_ms;
use crate::subscribers::{Channel, Framing, Speed, Subscribers};
use crate::views::{ListView, OrderStage, OrderStatus, OrderView, TradeView, Views};

/// The depth levels a partial book stream shows.
pub const PARTIAL_LEVELS: [u8; 3] = [5, 10, 20];

/// A stream a client can subscribe to, parsed from its name
/// (`btcusdt@depth@100ms`).
pub fn parse_stream(views: &Views, name: &str) -> Option<Channel> {
    let (symbol, kind) = name.split_once('@')?;
    if symbol.chars().any(|c| c.is_ascii_uppercase()) {
        return None;
    }
    let market = views.market_by_symbol(&symbol.to_ascii_uppercase())?.market.id;
    let (kind, speed) = match kind.rsplit_once('@') {
        Some((kind, "100ms")) => (kind, Speed::Ms100),
        Some((kind, "1000ms")) => (kind, Speed::Ms1000),
        Some(_) => return None,
        None => (kind, Speed::Ms1000),
    };
    match kind {
        "depth" => Some(Channel::BinanceDepth(market, speed)),
        "trade" if speed == Speed::Ms1000 && !name.ends_with("ms") => Some(Channel::BinanceTrade(market)),
        "aggTrade" if !name.ends_with("ms") => Some(Channel::BinanceAggTrade(market)),
        "bookTicker" if !name.ends_with("ms") => Some(Channel::BinanceBookTicker(market)),
        "ticker" if !name.ends_with("ms") => Some(Channel::BinanceTicker(market, false)),
        "miniTicker" if !name.ends_with("ms") => Some(Channel::BinanceTicker(market, true)),
        _ if kind.starts_with("kline_") && !name.ends_with("ms") => {
            let minutes = super::market::kline_minutes(kind.strip_prefix("kline_")?)?;
            Some(Channel::BinanceKline(market, u16::try_from(minutes).ok()?))
        }
        _ => {
            let levels: u8 = kind.strip_prefix("depth")?.parse().ok()?;
            PARTIAL_LEVELS.contains(&levels).then_some(Channel::BinancePartial(market, levels, speed))
        }
    }
}

/// The name of a Binance channel, as `LIST_SUBSCRIPTIONS` shows it.
pub fn stream_name(views: &Views, channel: &Channel) -> Option<String> {
    let symbol =
        |market: &MarketId| views.markets.get(market.0 as usize).map(|m| m.symbol.to_ascii_lowercase());
    let speed = |speed: &Speed| if *speed == Speed::Ms100 { "@100ms" } else { "" };
    Some(match channel {
        Channel::BinanceDepth(m, s) => format!("{}@depth{}", symbol(m)?, speed(s)),
        Channel::BinancePartial(m, levels, s) => format!("{}@depth{levels}{}", symbol(m)?, speed(s)),
        Channel::BinanceTrade(m) => format!("{}@trade", symbol(m)?),
        Channel::BinanceAggTrade(m) => format!("{}@aggTrade", symbol(m)?),
        Channel::BinanceBookTicker(m) => format!("{}@bookTicker", symbol(m)?),
        Channel::BinanceTicker(m, false) => format!("{}@ticker", symbol(m)?),
        Channel::BinanceTicker(m, true) => format!("{}@miniTicker", symbol(m)?),
        Channel::BinanceKline(m, minutes) => {
            format!("{}@kline_{}", symbol(m)?, super::market::kline_interval(u64::from(*minutes))?)
        }
        _ => return None,
    })
}

/// Depth changes not yet pushed on one stream: final quantity per
/// (is bid, price), and the last command that changed them.
#[derive(Default)]
struct PendingDiff {
    levels: BTreeMap<(bool, u64), u64>,
    last_seq: u64,
}

/// The hub's state for Binance streams.
pub struct Streams {
    diffs: HashMap<(MarketId, Speed), PendingDiff>,
    /// The `u` of the last diff pushed on each stream.
    last_u: HashMap<(MarketId, Speed), u64>,
    /// Each open order as of the last event followed. Reports are made
    /// from these and the events, never from the views: the views may be
    /// batches further on (an order amended or filled since), and keep a
    /// bounded number of closed orders (a cancel-all of many pushes the
    /// first out before the hub sees the batch).
    orders: HashMap<OrderId, OrderView>,
    /// The best bid and ask last pushed on each `bookTicker` stream.
    tops: HashMap<MarketId, (Level, Level)>,
    last_seq: u64,
    ticks: u64,
}

impl Streams {
    pub fn new(views: &Views) -> Streams {
        let mut streams = Streams {
            diffs: HashMap::new(),
            last_u: HashMap::new(),
            orders: HashMap::new(),
            tops: HashMap::new(),
            last_seq: 0,
            ticks: 0,
        };
        // Each stream goes on from its market's last book change, which the
        // views recover after a restart: a client's `U` = previous `u` + 1
        // check holds across it.
        for view in &views.markets {
            for speed in [Speed::Ms100, Speed::Ms1000] {
                streams.last_u.insert((view.market.id, speed), view.depth_seq);
            }
        }
        streams.reload(views);
        streams
    }

    /// Starts again from the views: after a batch was lost to overload
    /// (every subscriber was cut off then).
    fn reload(&mut self, views: &Views) {
        self.orders = views
            .users
            .iter()
            .flat_map(|user| user.open.values())
            .map(|o| (o.order, OrderView { fills: Vec::new(), ..o.clone() }))
            .collect();
        self.diffs.clear();
        self.last_seq = views.last_seq;
    }

    /// The tracked state of `user`'s open order `order`, taken from the
    /// views the first time (an order from before the last reload).
    fn tracked(&mut self, views: &Views, user: UserId, order: OrderId) -> Option<&mut OrderView> {
        match self.orders.entry(order) {
            std::collections::hash_map::Entry::Occupied(tracked) => Some(tracked.into_mut()),
            std::collections::hash_map::Entry::Vacant(slot) => {
                let known = order_of(views, user, order)?;
                Some(slot.insert(OrderView { fills: Vec::new(), ..known.clone() }))
            }
        }
    }

    /// Follows one batch: accumulates depth, pushes trades, book tickers
    /// and user data events.
    pub fn on_batch(&mut self, views: &Views, subscribers: &Subscribers, batch: &[Event]) {
        let Some(first) = batch.first() else { return };
        // Orders as the views hold them already include the changes up to
        // here: after a reload, these events are not applied again.
        let mut known_until = 0;
        if first.seq > self.last_seq + 1 {
            self.reload(views);
            known_until = views.last_seq;
        }
        if let Some(last) = batch.last() {
            self.last_seq = self.last_seq.max(last.seq);
        }
        let now = now_ms();
        let mut trades: BTreeMap<MarketId, Vec<TradeView>> = BTreeMap::new();
        let mut tickers: BTreeMap<MarketId, u64> = BTreeMap::new();
        let mut user_events: Vec<(UserId, Value)> = Vec::new();
        let mut balances: BTreeMap<(u64, UserId), BTreeMap<AssetId, (u64, u64)>> = BTreeMap::new();
        let users_listening = subscribers.any(|c| c.binance_user.is_some());
        // A market order by quote has no fixed quantity: its last trade is
        // FILLED when the order is done filled.
        let mut last_trade_of: HashMap<OrderId, u64> = HashMap::new();
        let mut done_filled: Vec<OrderId> = Vec::new();
        for event in batch {
            match event.kind {
                EventKind::Trade { trade, maker_order, taker_order, .. } => {
                    last_trade_of.insert(maker_order, trade.0);
                    last_trade_of.insert(taker_order, trade.0);
                }
                EventKind::OrderDone { order, reason: DoneReason::Filled, .. } => done_filled.push(order),
                _ => {}
            }
        }
        for event in batch {
            match event.kind {
                EventKind::BookLevel { market, side, price, qty } => {
                    for speed in [Speed::Ms100, Speed::Ms1000] {
                        let pending = self.diffs.entry((market, speed)).or_default();
                        pending.levels.insert((side == Side::Buy, price.0), qty.0);
                        pending.last_seq = event.seq;
                    }
                    tickers.insert(market, event.seq);
                }
                EventKind::Trade {
                    trade,
                    market,
                    price,
                    qty,
                    taker_side,
                    maker_order,
                    maker_user,
                    maker_remaining,
                    taker_order,
                    taker_user,
                    taker_remaining,
                    maker_fee,
                    taker_fee,
                    timestamp_ns,
                } => {
                    trades.entry(market).or_default().push(TradeView {
                        trade,
                        taker_order,
                        seq: event.seq,
                        price,
                        qty,
                        taker_side,
                        timestamp_ns,
                    });
                    let Some(view) = views.markets.get(market.0 as usize) else { continue };
                    let rules = view.market.rules;
                    let quote =
                        u128::from(price.0) * u128::from(qty.0) * u128::from(rules.quote_units_per_tick);
                    let sides = [
                        (maker_user, maker_order, maker_remaining, maker_fee, taker_side.opposite(), true),
                        (taker_user, taker_order, taker_remaining, taker_fee, taker_side, false),
                    ];
                    for (user, order, remaining, fee, side, maker) in sides {
                        if event.seq <= known_until {
                            continue;
                        }
                        let Some(order_view) = self.tracked(views, user, order) else { continue };
                        order_view.filled = Lots(order_view.filled.0.saturating_add(qty.0));
                        order_view.quote_filled += quote;
                        order_view.remaining = remaining;
                        let (filled, quote_filled) = (order_view.filled, order_view.quote_filled);
                        if !users_listening {
                            continue;
                        }
                        let order_view = &*order_view;
                        let by_quote = matches!(order_view.kind, Some(OrderKind::MarketByQuote { .. }));
                        let complete = if by_quote {
                            done_filled.contains(&order) && last_trade_of.get(&order) == Some(&trade.0)
                        } else {
                            remaining.0 == 0
                        };
                        let fee_asset = if side == Side::Buy { rules.base } else { rules.quote };
                        let asset = views.assets.get(fee_asset.0 as usize);
                        let mut report = execution_report(
                            views,
                            order_view,
                            ReportKind {
                                execution: "TRADE",
                                status: if complete { "FILLED" } else { "PARTIALLY_FILLED" },
                                filled,
                                quote_filled,
                                working: !complete,
                                time_ms: timestamp_ns / 1_000_000,
                            },
                        );
                        if let Some(object) = report.as_object_mut() {
                            object.insert("l".into(), json!(qty_text(&view.scale, qty)));
                            object.insert("L".into(), json!(price_text(&view.scale, price)));
                            object.insert("Y".into(), json!(units_text(quote, view.scale.quote_decimals)));
                            object.insert(
                                "n".into(),
                                json!(units_text(u128::from(fee.0), asset.map_or(0, |a| a.decimals))),
                            );
                            object.insert("N".into(), json!(asset.map(|a| a.symbol.to_string())));
                            object.insert("t".into(), json!(trade.0));
                            object.insert("m".into(), json!(maker));
                        }
                        user_events.push((user, report));
                    }
                }
                EventKind::OrderAccepted { order, user, .. } if event.seq > known_until => {
                    let Some(mut accepted) = OrderView::accepted(event) else { continue };
                    if let Some(list) = views.list_of_order(user, order) {
                        accepted.list = Some(list.list);
                        if list.contingency == engine_core::Contingency::Oto && list.orders[1] == order {
                            accepted.stage = OrderStage::Pending;
                            accepted.working_ns = None;
                        }
                    }
                    let order_view = self.orders.entry(order).or_insert(accepted);
                    if users_listening {
                        let report = execution_report(
                            views,
                            order_view,
                            ReportKind {
                                execution: "NEW",
                                status: super::order_status_name(order_view),
                                filled: Lots(0),
                                quote_filled: 0,
                                working: true,
                                time_ms: order_view.created_ns / 1_000_000,
                            },
                        );
                        user_events.push((user, report));
                    }
                }
                EventKind::OrderAmended { order, user, price, remaining, .. } if event.seq > known_until => {
                    let Some(order_view) = self.tracked(views, user, order) else { continue };
                    order_view.price = Some(price);
                    order_view.remaining = remaining;
                    order_view.quantity = Lots(order_view.filled.0.saturating_add(remaining.0));
                    let (filled, quote_filled) = (order_view.filled, order_view.quote_filled);
                    if users_listening {
                        let order_view = &*order_view;
                        let status = if filled.0 > 0 { "PARTIALLY_FILLED" } else { "NEW" };
                        let report = execution_report(
                            views,
                            order_view,
                            ReportKind {
                                execution: "REPLACED",
                                status,
                                filled,
                                quote_filled,
                                working: true,
                                time_ms: now,
                            },
                        );
                        user_events.push((user, report));
                    }
                }
                EventKind::OrderDone { order, user, reason, .. } if event.seq > known_until => {
                    let tracked = self.orders.remove(&order).or_else(|| {
                        order_of(views, user, order).map(|o| OrderView { fills: Vec::new(), ..o.clone() })
                    });
                    let Some(order_view) = tracked else { continue };
                    let (filled, quote_filled) = (order_view.filled, order_view.quote_filled);
                    let (execution, status) = match reason {
                        // The last TRADE report already said FILLED.
                        DoneReason::Filled => continue,
                        DoneReason::Cancelled => ("CANCELED", OrderStatus::Cancelled),
                        DoneReason::Expired | DoneReason::FundsExhausted => ("EXPIRED", OrderStatus::Expired),
                        DoneReason::Contingent => ("EXPIRED", OrderStatus::ExpiredContingent),
                        DoneReason::Refused(_) => ("REJECTED", OrderStatus::Rejected),
                        DoneReason::SelfTrade => ("TRADE_PREVENTION", OrderStatus::ExpiredSelfTrade),
                    };
                    if users_listening {
                        let report = execution_report(
                            views,
                            &order_view,
                            ReportKind {
                                execution,
                                status: status_name(status),
                                filled,
                                quote_filled,
                                working: false,
                                time_ms: now,
                            },
                        );
                        user_events.push((user, report));
                    }
                }
                // A waiting order enters the market (its trigger fired, its
                // OTO released it): Binance reports it NEW again, now with
                // its working time.
                EventKind::OrderTriggered { order, user, .. }
                | EventKind::OrderReleased { order, user, .. }
                | EventKind::TrailingStarted { order, user, .. }
                    if event.seq > known_until =>
                {
                    let timestamp_ns = match event.kind {
                        EventKind::OrderTriggered { timestamp_ns, .. }
                        | EventKind::OrderReleased { timestamp_ns, .. } => timestamp_ns,
                        _ => now * 1_000_000,
                    };
                    let Some(order_view) = self.tracked(views, user, order) else { continue };
                    order_view.follow(event, timestamp_ns);
                    let reported = !matches!(event.kind, EventKind::TrailingStarted { .. });
                    if users_listening && reported {
                        let order_view = &*order_view;
                        let report = execution_report(
                            views,
                            order_view,
                            ReportKind {
                                execution: "NEW",
                                status: super::order_status_name(order_view),
                                filled: order_view.filled,
                                quote_filled: order_view.quote_filled,
                                working: order_view.stage == OrderStage::Working,
                                time_ms: timestamp_ns / 1_000_000,
                            },
                        );
                        user_events.push((user, report));
                    }
                }
                EventKind::OrderListAccepted { list, user, timestamp_ns, .. }
                    if event.seq > known_until && users_listening =>
                {
                    if let Some(found) = views.find_list(user, engine_core::ListRef::Id(list)) {
                        user_events.push((user, list_status(views, found, false, timestamp_ns / 1_000_000)));
                    }
                }
                EventKind::OrderListDone { list, user, .. } if event.seq > known_until && users_listening => {
                    if let Some(found) = views.find_list(user, engine_core::ListRef::Id(list)) {
                        user_events.push((user, list_status(views, found, true, now)));
                    }
                }
                EventKind::Balance { user, asset, available, locked } if users_listening => {
                    balances.entry((event.seq, user)).or_default().insert(asset, (available.0, locked.0));
                }
                EventKind::Deposited { user, asset, amount }
                | EventKind::Withdrawn { user, asset, amount }
                    if users_listening =>
                {
                    let Some(a) = views.assets.get(asset.0 as usize) else { continue };
                    let sign = if matches!(event.kind, EventKind::Withdrawn { .. }) { "-" } else { "" };
                    user_events.push((
                        user,
                        json!({
                            "e": "balanceUpdate", "E": now, "a": a.symbol.as_str(),
                            "d": format!("{sign}{}", units_text(u128::from(amount.0), a.decimals)), "T": now,
                        }),
                    ));
                }
                _ => {}
            }
        }
        for ((_, user), changed) in balances {
            let positions: Vec<Value> = changed
                .iter()
                .filter_map(|(asset, (free, locked))| {
                    let a = views.assets.get(asset.0 as usize)?;
                    Some(json!({
                        "a": a.symbol.as_str(),
                        "f": units_text(u128::from(*free), a.decimals),
                        "l": units_text(u128::from(*locked), a.decimals),
                    }))
                })
                .collect();
            user_events
                .push((user, json!({ "e": "outboundAccountPosition", "E": now, "u": now, "B": positions })));
        }
        for (user, event) in user_events {
            let text = event.to_string();
            let bare: Arc<str> = Arc::from(text.as_str());
            subscribers.send_with(|connection| match connection.binance_user {
                Some((listener, subscription)) if listener == user => {
                    Some(match (&connection.listen_key, connection.framing) {
                        // A listen key's stream: the bare event at /ws,
                        // wrapped with the key as its stream at /stream.
                        (Some(key), Framing::Combined) => {
                            format!("{{\"stream\":\"{key}\",\"data\":{text}}}").into()
                        }
                        (Some(_), _) => Arc::clone(&bare),
                        (None, _) => format!("{{\"subscriptionId\":{subscription},\"event\":{text}}}").into(),
                    })
                }
                _ => None,
            });
        }
        for (market, list) in trades {
            let Some(view) = views.markets.get(market.0 as usize) else { continue };
            let lower = view.symbol.to_ascii_lowercase();
            let trade_channel = Channel::BinanceTrade(market);
            if subscribers.any(|c| c.channels.contains(&trade_channel)) {
                for t in &list {
                    let data = json!({
                        "e": "trade", "E": now, "s": view.symbol, "t": t.trade.0,
                        "p": price_text(&view.scale, t.price), "q": qty_text(&view.scale, t.qty),
                        "T": t.timestamp_ns / 1_000_000, "m": t.taker_side == Side::Sell, "M": true,
                    });
                    send_stream(subscribers, &trade_channel, &format!("{lower}@trade"), &data);
                }
            }
            let agg_channel = Channel::BinanceAggTrade(market);
            if subscribers.any(|c| c.channels.contains(&agg_channel)) {
                for agg in aggregate(list) {
                    let mut data = agg_json(view, &agg);
                    if let Some(object) = data.as_object_mut() {
                        object.insert("e".into(), json!("aggTrade"));
                        object.insert("E".into(), json!(now));
                        object.insert("s".into(), json!(view.symbol));
                    }
                    send_stream(subscribers, &agg_channel, &format!("{lower}@aggTrade"), &data);
                }
            }
        }
        for (market, seq) in tickers {
            let channel = Channel::BinanceBookTicker(market);
            let Some(view) = views.markets.get(market.0 as usize) else { continue };
            // Pushed when the best bid or ask changed, not for deeper levels.
            let top = best(view);
            if self.tops.insert(market, top) == Some(top)
                || !subscribers.any(|c| c.channels.contains(&channel))
            {
                continue;
            }
            let mut data = super::market::book_ticker_json(view);
            if let Some(object) = data.as_object_mut() {
                object.insert("u".into(), json!(seq));
                for (long, short) in [("bidPrice", "b"), ("bidQty", "B"), ("askPrice", "a"), ("askQty", "A")]
                {
                    if let Some(value) = object.remove(long) {
                        object.insert(short.into(), value);
                    }
                }
                object.insert("s".into(), json!(view.symbol));
                object.remove("symbol");
            }
            send_stream(
                subscribers,
                &channel,
                &format!("{}@bookTicker", view.symbol.to_ascii_lowercase()),
                &data,
            );
        }
    }

    /// Every 100 ms: pushes the depth diffs and partial books that are due.
    pub fn on_tick(&mut self, views: &Views, subscribers: &Subscribers) {
        self.ticks += 1;
        let due = |speed: Speed| speed == Speed::Ms100 || self.ticks.is_multiple_of(10);
        let now = now_ms();
        let keys: Vec<(MarketId, Speed)> = self.diffs.keys().copied().filter(|(_, s)| due(*s)).collect();
        for key in keys {
            let Some(pending) = self.diffs.remove(&key) else { continue };
            if pending.levels.is_empty() {
                continue;
            }
            let first = self.last_u.get(&key).copied().unwrap_or(0) + 1;
            self.last_u.insert(key, pending.last_seq);
            let (market, speed) = key;
            let channel = Channel::BinanceDepth(market, speed);
            if !subscribers.any(|c| c.channels.contains(&channel)) {
                continue;
            }
            let Some(view) = views.markets.get(market.0 as usize) else { continue };
            let side = |bids: bool| -> Vec<Value> {
                pending
                    .levels
                    .iter()
                    .filter(|((is_bid, _), _)| *is_bid == bids)
                    .map(|((_, price), qty)| {
                        json!([price_text(&view.scale, Ticks(*price)), qty_text(&view.scale, Lots(*qty))])
                    })
                    .collect()
            };
            let data = json!({
                "e": "depthUpdate", "E": now, "s": view.symbol, "U": first, "u": pending.last_seq,
                "b": side(true), "a": side(false),
            });
            if let Some(name) = stream_name(views, &channel) {
                send_stream(subscribers, &channel, &name, &data);
            }
        }
        for view in &views.markets {
            for mini in [false, true] {
                let channel = Channel::BinanceTicker(view.market.id, mini);
                if !due(Speed::Ms1000) || !subscribers.any(|c| c.channels.contains(&channel)) {
                    continue;
                }
                if let Some(name) = stream_name(views, &channel) {
                    send_stream(subscribers, &channel, &name, &ticker_event(view, now, mini));
                }
            }
            for minutes in super::market::KLINE_INTERVALS.iter().filter_map(|(_, m)| u16::try_from(*m).ok()) {
                let channel = Channel::BinanceKline(view.market.id, minutes);
                if !due(Speed::Ms1000) || !subscribers.any(|c| c.channels.contains(&channel)) {
                    continue;
                }
                if let (Some(name), Some(data)) =
                    (stream_name(views, &channel), kline_event(view, now, u64::from(minutes)))
                {
                    send_stream(subscribers, &channel, &name, &data);
                }
            }
            for levels in PARTIAL_LEVELS {
                for speed in [Speed::Ms100, Speed::Ms1000] {
                    let channel = Channel::BinancePartial(view.market.id, levels, speed);
                    if !due(speed) || !subscribers.any(|c| c.channels.contains(&channel)) {
                        continue;
                    }
                    let data = book_json(view, views.last_seq, usize::from(levels));
                    if let Some(name) = stream_name(views, &channel) {
                        send_stream(subscribers, &channel, &name, &data);
                    }
                }
            }
        }
    }
}

/// A `kline` event: the latest candle of `minutes` width (none before the
/// market's first trade of the day the views keep).
fn kline_event(view: &crate::views::MarketView, now: u64, minutes: u64) -> Option<Value> {
    let candle = *super::market::candles(view, minutes).last()?;
    let close_ms = (candle.minute + minutes) * 60_000 - 1;
    let scale = &view.scale;
    Some(json!({
        "e": "kline", "E": now, "s": view.symbol,
        "k": {
            "t": candle.minute * 60_000, "T": close_ms, "s": view.symbol,
            "i": super::market::kline_interval(minutes),
            "f": candle.first_trade.0, "L": candle.last_trade.0,
            "o": price_text(scale, candle.open), "c": price_text(scale, candle.close),
            "h": price_text(scale, candle.high), "l": price_text(scale, candle.low),
            "v": qty_text(scale, Lots(u64::try_from(candle.volume).unwrap_or(u64::MAX))),
            "n": candle.trades, "x": now > close_ms,
            "q": units_text(candle.quote_volume, scale.quote_decimals),
            "V": qty_text(scale, Lots(u64::try_from(candle.taker_buy_volume).unwrap_or(u64::MAX))),
            "Q": units_text(candle.taker_buy_quote_volume, scale.quote_decimals),
            "B": "0",
        },
    }))
}

/// A `24hrTicker` (or, `mini`, a `24hrMiniTicker`) event: REST
/// `ticker/24hr`'s figures under the stream's short names.
fn ticker_event(view: &crate::views::MarketView, now: u64, mini: bool) -> Value {
    let ticker = super::market::ticker_json(view, now, mini);
    let names: &[(&str, &str)] = &[
        ("priceChange", "p"),
        ("priceChangePercent", "P"),
        ("weightedAvgPrice", "w"),
        ("prevClosePrice", "x"),
        ("lastPrice", "c"),
        ("lastQty", "Q"),
        ("bidPrice", "b"),
        ("bidQty", "B"),
        ("askPrice", "a"),
        ("askQty", "A"),
        ("openPrice", "o"),
        ("highPrice", "h"),
        ("lowPrice", "l"),
        ("volume", "v"),
        ("quoteVolume", "q"),
        ("openTime", "O"),
        ("closeTime", "C"),
        ("firstId", "F"),
        ("lastId", "L"),
        ("count", "n"),
    ];
    let mut event = serde_json::Map::new();
    event.insert("e".into(), json!(if mini { "24hrMiniTicker" } else { "24hrTicker" }));
    event.insert("E".into(), json!(now));
    event.insert("s".into(), json!(view.symbol));
    let mini_names = ["c", "o", "h", "l", "v", "q"];
    for (long, short) in names.iter().filter(|(_, short)| !mini || mini_names.contains(short)) {
        if let Some(value) = ticker.get(*long) {
            event.insert((*short).into(), value.clone());
        }
    }
    Value::Object(event)
}

/// Sends one stream message to the connections subscribed to `channel`:
/// the bare data on `/ws`, wrapped with the stream's name on `/stream`.
/// Ends the user data stream of a closed listen key: its connections
/// receive no more events and are closed (Binance closes the stream).
pub fn close_listen_key(subscribers: &Subscribers, key: &str) {
    subscribers.end_listen_key(key, None, Some((1000, "listenKey closed")));
}

/// Ends the streams of the listen keys that expired by `now_ms`: each of
/// their connections is sent Binance's `listenKeyExpired` event and
/// receives no more user events.
pub fn expire_listen_keys(state: &super::state::State, subscribers: &Subscribers, now_ms: u64) {
    for key in state.expire_listen_keys(now_ms) {
        let event = json!({ "e": "listenKeyExpired", "E": now_ms, "listenKey": key }).to_string();
        subscribers.end_listen_key(&key, Some(event.into()), None);
    }
}

fn send_stream(subscribers: &Subscribers, channel: &Channel, name: &str, data: &Value) {
    let mut raw: Option<Arc<str>> = None;
    let mut combined: Option<Arc<str>> = None;
    subscribers.send_with(|connection| {
        if !connection.channels.contains(channel) {
            return None;
        }
        Some(match connection.framing {
            Framing::Combined => Arc::clone(
                combined.get_or_insert_with(|| json!({ "stream": name, "data": data }).to_string().into()),
            ),
            _ => Arc::clone(raw.get_or_insert_with(|| data.to_string().into())),
        })
    });
}

fn order_of(views: &Views, user: UserId, order: OrderId) -> Option<&OrderView> {
    let account = views.user(user)?;
    account.open.get(&order).or_else(|| account.closed.iter().rev().find(|o| o.order == order))
}

struct ReportKind {
    execution: &'static str,
    status: &'static str,
    filled: Lots,
    quote_filled: u128,
    working: bool,
    time_ms: u64,
}

/// An `executionReport` for `order` without the last fill's fields.
fn execution_report(views: &Views, order: &OrderView, kind: ReportKind) -> Value {
    let Some(view) = views.markets.get(order.market.0 as usize) else { return Value::Null };
    let scale = &view.scale;
    let (order_type, tif) = type_and_tif(order.kind);
    let zero = || super::fixed(rust_decimal::Decimal::ZERO, 0);
    let quote_amount = match order.kind {
        Some(OrderKind::MarketByQuote { amount }) => units_text(u128::from(amount.0), scale.quote_decimals),
        _ => zero(),
    };
    let client = order.client_order_id.map(|c| c.to_string()).unwrap_or_default();
    let cancel = kind.execution == "CANCELED";
    let fields = super::trading::trigger_fields(scale, order);
    let field = |name: &str| fields.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
    let mut report = json!({
        "e": "executionReport", "E": now_ms(), "s": view.symbol,
        "c": client, "S": side_name(order.side), "o": order_type, "f": tif,
        "q": qty_text(scale, order.quantity),
        "p": order.price.map_or_else(zero, |p| price_text(scale, p)),
        "P": field("stopPrice").unwrap_or_else(|| json!(zero())),
        "F": field("icebergQty").unwrap_or_else(|| json!(zero())),
        "g": super::trading::list_id(order),
        "C": if cancel { client.clone() } else { String::new() },
        "x": kind.execution, "X": kind.status, "r": "NONE", "i": order.order.0,
        "l": zero(), "z": qty_text(scale, kind.filled), "L": zero(), "n": "0", "N": null,
        "T": kind.time_ms, "t": -1, "I": 0, "w": kind.working, "m": false, "M": false,
        "O": order.created_ns / 1_000_000,
        "Z": units_text(kind.quote_filled, scale.quote_decimals),
        "Y": zero(), "Q": quote_amount,
        "V": stp_name(order.stp.unwrap_or(STP_DEFAULT)),
    });
    if let Some(object) = report.as_object_mut() {
        // Binance sends the working time only of an order that works, and
        // the trailing fields only of a trailing order.
        if let Some(working_ns) = order.working_ns {
            object.insert("W".into(), json!(working_ns / 1_000_000));
        }
        if let Some(delta) = field("trailingDelta") {
            object.insert("d".into(), delta);
            object.insert("D".into(), field("trailingTime").unwrap_or(json!(-1)));
        }
    }
    report
}

/// A `listStatus` event: a list started (`done` false) or ended.
fn list_status(views: &Views, list: &ListView, done: bool, time_ms: u64) -> Value {
    let json = super::trading::list_json(views, list, done);
    let orders: Vec<Value> = json["orders"]
        .as_array()
        .map(|orders| {
            orders
                .iter()
                .map(|o| json!({ "s": o["symbol"], "i": o["orderId"], "c": o["clientOrderId"] }))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "e": "listStatus", "E": now_ms(), "s": json["symbol"], "g": list.list.0,
        "c": json["contingencyType"], "l": json["listStatusType"], "L": json["listOrderStatus"],
        "r": "NONE", "C": json["listClientOrderId"], "T": time_ms, "O": orders,
    })
}

/// Answers a message on `/ws` or `/stream`: `SUBSCRIBE`, `UNSUBSCRIBE`,
/// `LIST_SUBSCRIPTIONS`, in Binance's shapes (`{"result": null, "id": 1}`,
/// errors `{"error": {"code": 2, "msg": ...}, "id": 1}`).
pub fn handle_request(views: &Views, subscribers: &Subscribers, connection: u64, payload: &[u8]) -> Value {
    let error =
        |code: i32, msg: String, id: &Value| json!({ "error": { "code": code, "msg": msg }, "id": id });
    let request: Value = match serde_json::from_slice(payload) {
        Ok(value) => value,
        Err(e) => return error(3, format!("Invalid JSON: {e}"), &Value::Null),
    };
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    if !(id.is_null() || id.is_u64() || id.is_string()) {
        return error(1, "Invalid value type: expected u64 or string id".into(), &Value::Null);
    }
    let Some(method) = request.get("method").and_then(Value::as_str) else {
        return error(2, "Invalid request: missing field `method`".into(), &id);
    };
    match method {
        "SUBSCRIBE" | "UNSUBSCRIBE" => {
            let Some(names) = request.get("params").and_then(Value::as_array) else {
                return error(2, "Invalid request: params must be a list of stream names".into(), &id);
            };
            let mut channels = Vec::with_capacity(names.len());
            for name in names {
                let Some(channel) = name.as_str().and_then(|n| parse_stream(views, n)) else {
                    return error(2, format!("Invalid request: unknown stream {name}"), &id);
                };
                channels.push(channel);
            }
            let subscribe = method == "SUBSCRIBE";
            match subscribers.change_channels(connection, &channels, subscribe) {
                Ok(()) => json!({ "result": null, "id": id }),
                Err(why) => error(2, format!("Invalid request: {why}"), &id),
            }
        }
        "LIST_SUBSCRIPTIONS" => {
            let mut names: Vec<String> = subscribers
                .channels_of(connection)
                .unwrap_or_default()
                .iter()
                .filter_map(|c| stream_name(views, c))
                .collect();
            names.sort();
            json!({ "result": names, "id": id })
        }
        "SET_PROPERTY" | "GET_PROPERTY" => error(0, "Unknown property".into(), &id),
        other => error(2, format!("Invalid request: unknown method {other:?}"), &id),
    }
}
