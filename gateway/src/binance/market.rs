//! Public market data in Binance's shapes: exchange information with each
//! market's filters, the order book, recent and aggregate trades, and
//! tickers. All of it is read from the views; nothing here waits on the
//! matcher.

use engine_core::{Lots, MarketStatus, Side, Ticks};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use super::error::BinanceError;
use super::params::{Params, TradeRange};
use super::{fixed, price_text, qty_text, stp_name, units_text, STP_DEFAULT, STP_MODES};
use crate::clock::now_ms;
use crate::state::AppState;
use crate::views::{MarketView, MinuteBar, TradeView, Views};

pub const DEPTH_LIMIT_DEFAULT: u64 = 100;
pub const DEPTH_LIMIT_MAX: u64 = 5_000;
const TRADES_LIMIT_DEFAULT: u64 = 500;
const TRADES_LIMIT_MAX: u64 = 1_000;

pub fn read_views(state: &AppState) -> Result<std::sync::RwLockReadGuard<'_, Views>, BinanceError> {
    state.views.read().map_err(|_| BinanceError::internal("views unavailable"))
}

/// The market named by `symbol`.
pub fn market<'v>(views: &'v Views, symbol: &str) -> Result<&'v MarketView, BinanceError> {
    views.market_by_symbol(symbol).ok_or_else(BinanceError::bad_symbol)
}

/// The markets a request names with `symbol` or `symbols` (a JSON list),
/// or all of them; and whether it named exactly one with `symbol`.
fn markets<'v>(views: &'v Views, params: &Params) -> Result<(Vec<&'v MarketView>, bool), BinanceError> {
    match (params.get("symbol"), params.get("symbols")) {
        (Some(_), Some(_)) => Err(BinanceError::new(
            hyper::StatusCode::BAD_REQUEST,
            -1128,
            "Combination of optional parameters invalid.",
        )),
        (Some(symbol), None) => Ok((vec![market(views, symbol)?], true)),
        (None, Some(list)) => {
            let names: Vec<String> = serde_json::from_str(list)
                .map_err(|_| BinanceError::illegal_characters("symbols", "a JSON list of symbols"))?;
            if names.is_empty() {
                return Err(BinanceError::empty("symbols"));
            }
            let found = names.iter().map(|name| market(views, name)).collect::<Result<Vec<_>, _>>()?;
            Ok((found, false))
        }
        (None, None) => Ok((views.markets.iter().collect(), false)),
    }
}

pub fn time() -> Value {
    json!({ "serverTime": now_ms() })
}

/// `GET /sapi/v1/system/status`: 0 "normal", or 1 once the journal has
/// failed and no order is accepted.
pub fn system_status(state: &AppState, params: &Params) -> Result<Value, BinanceError> {
    params.only(&[])?;
    Ok(if state.health.journal_failed.load(std::sync::atomic::Ordering::Relaxed) {
        json!({ "status": 1, "msg": "system maintenance" })
    } else {
        json!({ "status": 0, "msg": "normal" })
    })
}

/// The markets a request names with `symbol` or `symbols`, or all of them.
pub fn markets_named<'v>(views: &'v Views, params: &Params) -> Result<Vec<&'v MarketView>, BinanceError> {
    markets(views, params).map(|(chosen, _)| chosen)
}

fn symbol_status(status: MarketStatus) -> &'static str {
    match status {
        MarketStatus::Open => "TRADING",
        MarketStatus::CancelOnly => "BREAK",
        MarketStatus::Halted => "HALT",
    }
}

/// `GET /api/v3/exchangeInfo`.
pub fn exchange_info(state: &AppState, params: &Params) -> Result<Value, BinanceError> {
    params.only(&["symbol", "symbols", "permissions", "showPermissionSets", "symbolStatus"])?;
    let views = read_views(state)?;
    let (chosen, _) = markets(&views, params)?;
    let symbols: Vec<Value> = chosen.iter().map(|m| symbol_info(&views, m)).collect();
    Ok(json!({
        "timezone": "UTC",
        "serverTime": now_ms(),
        "rateLimits": rate_limits(state),
        "exchangeFilters": [],
        "symbols": symbols,
    }))
}

pub fn rate_limits(state: &AppState) -> Value {
    json!([
        { "rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
          "limit": state.binance.weight_limit_per_minute() },
        { "rateLimitType": "RAW_REQUESTS", "interval": "SECOND", "intervalNum": 1,
          "limit": state.auth.rate_per_s() },
    ])
}

fn symbol_info(views: &Views, view: &MarketView) -> Value {
    let rules = &view.market.rules;
    let scale = &view.scale;
    let decimals = |asset: engine_core::AssetId| views.assets.get(asset.0 as usize).map_or(0, |a| a.decimals);
    let symbol = |asset: engine_core::AssetId| {
        views.assets.get(asset.0 as usize).map_or_else(String::new, |a| a.symbol.to_string())
    };
    let tick = fixed(scale.tick_size, scale.tick_size.scale());
    let step = fixed(scale.lot_size, scale.lot_size.scale());
    // The largest price and quantity the engine's integers hold.
    let max_price = price_text(scale, Ticks(u64::from(u32::MAX)));
    let max_qty = qty_text(scale, Lots(u64::from(u32::MAX)));
    let modes: Vec<&str> = STP_MODES.iter().map(|(name, _)| *name).collect();
    json!({
        "symbol": view.symbol,
        "status": symbol_status(view.market.status),
        "baseAsset": symbol(rules.base),
        "baseAssetPrecision": decimals(rules.base),
        "quoteAsset": symbol(rules.quote),
        "quotePrecision": decimals(rules.quote),
        "quoteAssetPrecision": decimals(rules.quote),
        "baseCommissionPrecision": decimals(rules.base),
        "quoteCommissionPrecision": decimals(rules.quote),
        "orderTypes": super::ORDER_TYPES,
        "icebergAllowed": true,
        "ocoAllowed": true,
        "otoAllowed": true,
        "quoteOrderQtyMarketAllowed": true,
        "allowTrailingStop": true,
        "cancelReplaceAllowed": true,
        "amendAllowed": true,
        "pegInstructionsAllowed": false,
        "isSpotTradingAllowed": true,
        "isMarginTradingAllowed": false,
        "filters": [
            { "filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": max_price, "tickSize": tick },
            { "filterType": "LOT_SIZE", "minQty": qty_text(scale, rules_min_qty(view)), "maxQty": max_qty, "stepSize": step },
            { "filterType": "NOTIONAL", "minNotional": units_text(u128::from(rules.min_notional.0), decimals(rules.quote)),
              "applyMinToMarket": true, "maxNotional": "9000000000.00000000", "applyMaxToMarket": false, "avgPriceMins": 0 },
            { "filterType": "ICEBERG_PARTS", "limit": super::ICEBERG_PARTS_MAX },
            { "filterType": "TRAILING_DELTA",
              "minTrailingAboveDelta": super::TRAILING_DELTA_BIPS_MIN, "maxTrailingAboveDelta": super::TRAILING_DELTA_BIPS_MAX,
              "minTrailingBelowDelta": super::TRAILING_DELTA_BIPS_MIN, "maxTrailingBelowDelta": super::TRAILING_DELTA_BIPS_MAX },
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": stp_name(STP_DEFAULT),
        "allowedSelfTradePreventionModes": modes,
    })
}

fn rules_min_qty(view: &MarketView) -> Lots {
    Lots(view.market.rules.min_qty.0.max(1))
}

/// `GET /api/v3/depth`: `lastUpdateId` is the sequence number of the last
/// command the book reflects, the id space of the depth streams' `U`/`u`.
pub fn depth(state: &AppState, params: &Params) -> Result<Value, BinanceError> {
    params.only(&["symbol", "limit", "symbolStatus"])?;
    let limit = params.bounded("limit", 1, DEPTH_LIMIT_MAX)?.unwrap_or(DEPTH_LIMIT_DEFAULT) as usize;
    let views = read_views(state)?;
    let view = market(&views, params.required("symbol")?)?;
    Ok(book_json(view, views.last_seq, limit))
}

pub fn book_json(view: &MarketView, last_update_id: u64, limit: usize) -> Value {
    let level =
        |(price, qty): (&Ticks, &Lots)| json!([price_text(&view.scale, *price), qty_text(&view.scale, *qty)]);
    json!({
        "lastUpdateId": last_update_id,
        "bids": view.bids.iter().rev().take(limit).map(level).collect::<Vec<_>>(),
        "asks": view.asks.iter().take(limit).map(level).collect::<Vec<_>>(),
    })
}

fn quote_of(view: &MarketView, price: Ticks, qty: Lots) -> u128 {
    u128::from(price.0) * u128::from(qty.0) * u128::from(view.market.rules.quote_units_per_tick)
}

pub fn trade_json(view: &MarketView, trade: &TradeView) -> Value {
    json!({
        "id": trade.trade.0,
        "price": price_text(&view.scale, trade.price),
        "qty": qty_text(&view.scale, trade.qty),
        "quoteQty": units_text(quote_of(view, trade.price, trade.qty), view.scale.quote_decimals),
        "time": trade.timestamp_ns / 1_000_000,
        "isBuyerMaker": trade.taker_side == Side::Sell,
        "isBestMatch": true,
    })
}

/// `GET /api/v3/trades`: the most recent trades the views keep, oldest first.
pub fn trades(state: &AppState, params: &Params) -> Result<Value, BinanceError> {
    params.only(&["symbol", "limit"])?;
    let limit = params.bounded("limit", 1, TRADES_LIMIT_MAX)?.unwrap_or(TRADES_LIMIT_DEFAULT) as usize;
    let views = read_views(state)?;
    let view = market(&views, params.required("symbol")?)?;
    let skip = view.trades.len().saturating_sub(limit);
    Ok(Value::Array(view.trades.iter().skip(skip).map(|t| trade_json(view, t)).collect()))
}

/// `GET /api/v3/historicalTrades`, `trades.historical`: the recent trades
/// the views keep, from `fromId` on (else the most recent), oldest first.
pub fn historical_trades(state: &AppState, params: &Params) -> Result<Value, BinanceError> {
    params.only(&["symbol", "limit", "fromId"])?;
    let limit = params.bounded("limit", 1, TRADES_LIMIT_MAX)?.unwrap_or(TRADES_LIMIT_DEFAULT) as usize;
    let range = TradeRange { from_id: params.integer("fromId")?, start_ms: None, end_ms: None };
    let views = read_views(state)?;
    let view = market(&views, params.required("symbol")?)?;
    let in_range = view.trades.iter().filter(|t| range.contains(t.trade.0, 0)).collect();
    let chosen: Vec<&TradeView> = range.window(in_range, limit);
    Ok(Value::Array(chosen.iter().map(|t| trade_json(view, t)).collect()))
}

/// The kline intervals served, in minutes: every Binance interval that is
/// a whole number of minutes up to a day (the views keep one-minute bars
/// of the last day).
pub const KLINE_INTERVALS: &[(&str, u64)] = &[
    ("1m", 1),
    ("3m", 3),
    ("5m", 5),
    ("15m", 15),
    ("30m", 30),
    ("1h", 60),
    ("2h", 120),
    ("4h", 240),
    ("6h", 360),
    ("8h", 480),
    ("12h", 720),
    ("1d", 1_440),
];
const KLINES_LIMIT_DEFAULT: u64 = 500;
const KLINES_LIMIT_MAX: u64 = 1_000;

/// `GET /api/v3/klines`, `klines`: candles of the last day, built from the
/// views' one-minute bars; intervals with no trade have no kline. The
/// taker-buy volumes are not kept and read 0.
/// One kline in decimals, from the views' minute bars or the database's
/// one-minute candles.
struct Kline {
    open_ms: u64,
    open: Decimal,
    high: Decimal,
    low: Decimal,
    close: Decimal,
    volume: Decimal,
    quote_volume: Decimal,
    trades: u64,
    taker_buy_volume: Decimal,
    taker_buy_quote_volume: Decimal,
}

/// `GET /api/v3/klines`: from the views' minute bars for the day they keep;
/// with PostgreSQL, older klines from its one-minute candles (a bucket that
/// straddles the day's start comes from the database whole).
pub async fn klines(state: &AppState, params: &Params) -> Result<Value, BinanceError> {
    params.only(&["symbol", "interval", "startTime", "endTime", "timeZone", "limit"])?;
    let interval = params.required("interval")?;
    let minutes = kline_minutes(interval).ok_or_else(|| {
        BinanceError::bad_request(
            -1120,
            "Invalid interval: this exchange serves 1m, 3m, 5m, 15m, 30m, 1h, 2h, 4h, 6h, 8h, 12h and 1d.",
        )
    })?;
    match params.get("timeZone") {
        None | Some("0") | Some("+00:00") | Some("0:00") => {}
        Some(_) => return Err(BinanceError::invalid_value("timeZone", "only UTC (0) is served")),
    }
    let limit = params.bounded("limit", 1, KLINES_LIMIT_MAX)?.unwrap_or(KLINES_LIMIT_DEFAULT) as usize;
    let range = TradeRange {
        from_id: None,
        start_ms: params.integer("startTime")?,
        end_ms: params.integer("endTime")?,
    };
    let width_ms = minutes * 60_000;
    // The views hold every minute after the one a day before now (they
    // drop a bar a day after it, by the journal's clock, never later than
    // now): from this bucket on they are complete.
    let now = now_ms();
    let covered_from_ms = (now / 60_000).saturating_sub(crate::views::MINUTES_PER_DAY - 1) * 60_000;
    // Without a database the views are all there is: every bar they hold.
    let views_from_ms =
        if state.database.is_some() { covered_from_ms.div_ceil(width_ms) * width_ms } else { 0 };
    let (scale, market_id, recent) = {
        let views = read_views(state)?;
        let view = market(&views, params.required("symbol")?)?;
        let recent: Vec<Kline> = candles(view, minutes)
            .iter()
            .filter(|c| c.minute * 60_000 >= views_from_ms && range.contains(0, c.minute * 60_000))
            .map(|c| bar_kline(view, c))
            .collect();
        (view.scale, view.market.id, recent)
    };
    let wanted_from_ms =
        range.start_ms.unwrap_or_else(|| range.end_ms.unwrap_or(now).saturating_sub(limit as u64 * width_ms));
    let mut all = Vec::new();
    if let (Some((_, history)), true) = (&state.database, wanted_from_ms < views_from_ms) {
        let stored = persistence::Range {
            from_ms: Some(wanted_from_ms),
            to_ms: Some(range.end_ms.map_or(views_from_ms, |end| end.saturating_add(1).min(views_from_ms))),
            from_id: None,
            limit: limit as u32,
            offset: 0,
        };
        let rows = history.candles(market_id.0 as i32, minutes as u32, stored).await.map_err(|error| {
            tracing::warn!("klines: history query failed: {error}");
            BinanceError::new(
                hyper::StatusCode::SERVICE_UNAVAILABLE,
                -1001,
                "Internal error; unable to process your request. Please try again.",
            )
        })?;
        all.extend(rows.iter().map(|row| Kline {
            open_ms: crate::clock::unix_ns(row.open_time) / 1_000_000,
            open: row.open.0,
            high: row.high.0,
            low: row.low.0,
            close: row.close.0,
            volume: row.volume.0,
            quote_volume: row.quote_volume.0,
            trades: u64::try_from(row.trades).unwrap_or(0),
            taker_buy_volume: row.taker_buy_volume.0,
            taker_buy_quote_volume: row.taker_buy_quote_volume.0,
        }));
    }
    all.extend(recent);
    let chosen = range.window(all, limit);
    let (price_scale, qty_scale) = (scale.tick_size.scale(), scale.lot_size.scale());
    Ok(Value::Array(
        chosen
            .iter()
            .map(|k| {
                json!([
                    k.open_ms,
                    fixed(k.open, price_scale),
                    fixed(k.high, price_scale),
                    fixed(k.low, price_scale),
                    fixed(k.close, price_scale),
                    fixed(k.volume, qty_scale),
                    k.open_ms + width_ms - 1,
                    fixed(k.quote_volume, u32::from(scale.quote_decimals)),
                    k.trades,
                    fixed(k.taker_buy_volume, qty_scale),
                    fixed(k.taker_buy_quote_volume, u32::from(scale.quote_decimals)),
                    "0",
                ])
            })
            .collect(),
    ))
}

/// A candle of the views' minute bars in decimals.
fn bar_kline(view: &MarketView, bar: &MinuteBar) -> Kline {
    let price = |ticks: Ticks| Decimal::from(ticks.0) * view.scale.tick_size;
    let base = |lots: u128| Decimal::from(u64::try_from(lots).unwrap_or(u64::MAX)) * view.scale.lot_size;
    let quote = |units: u128| {
        u64::try_from(units).map_or(Decimal::MAX, |units| {
            Decimal::from(units) / Decimal::from(10u64.pow(u32::from(view.scale.quote_decimals)))
        })
    };
    Kline {
        open_ms: bar.minute * 60_000,
        open: price(bar.open),
        high: price(bar.high),
        low: price(bar.low),
        close: price(bar.close),
        volume: base(bar.volume),
        quote_volume: quote(bar.quote_volume),
        trades: bar.trades,
        taker_buy_volume: base(bar.taker_buy_volume),
        taker_buy_quote_volume: quote(bar.taker_buy_quote_volume),
    }
}

/// The minutes of a kline interval's name (`1h` is 60), when it is served.
pub fn kline_minutes(interval: &str) -> Option<u64> {
    KLINE_INTERVALS.iter().find(|(name, _)| *name == interval).map(|(_, m)| *m)
}

/// The name of a kline interval of `minutes`.
pub fn kline_interval(minutes: u64) -> Option<&'static str> {
    KLINE_INTERVALS.iter().find(|(_, m)| *m == minutes).map(|(name, _)| *name)
}

/// The candles of `minutes` width (aligned to the epoch, so to UTC days)
/// made of the views' one-minute bars, oldest first; `minute` is each
/// candle's first minute.
pub fn candles(view: &MarketView, minutes: u64) -> Vec<MinuteBar> {
    let mut candles: Vec<MinuteBar> = Vec::new();
    for bar in &view.minutes {
        let start = bar.minute - bar.minute % minutes;
        match candles.last_mut() {
            Some(candle) if candle.minute == start => {
                candle.high = candle.high.max(bar.high);
                candle.low = candle.low.min(bar.low);
                candle.close = bar.close;
                candle.volume += bar.volume;
                candle.quote_volume += bar.quote_volume;
                candle.taker_buy_volume += bar.taker_buy_volume;
                candle.taker_buy_quote_volume += bar.taker_buy_quote_volume;
                candle.trades += bar.trades;
                candle.last_trade = bar.last_trade;
            }
            _ => candles.push(MinuteBar { minute: start, ..*bar }),
        }
    }
    candles
}

/// Trades of one taker order at one price, as one aggregate trade whose id
/// is its first trade's id.
pub struct AggTrade {
    pub first: TradeView,
    pub last_id: u64,
    pub qty: Lots,
}

pub fn aggregate(trades: impl IntoIterator<Item = TradeView>) -> Vec<AggTrade> {
    let mut out: Vec<AggTrade> = Vec::new();
    for trade in trades {
        match out.last_mut() {
            Some(agg)
                if agg.first.taker_order == trade.taker_order
                    && agg.first.price == trade.price
                    && agg.last_id + 1 == trade.trade.0 =>
            {
                agg.last_id = trade.trade.0;
                agg.qty = Lots(agg.qty.0.saturating_add(trade.qty.0));
            }
            _ => out.push(AggTrade { first: trade, last_id: trade.trade.0, qty: trade.qty }),
        }
    }
    out
}

pub fn agg_json(view: &MarketView, agg: &AggTrade) -> Value {
    json!({
        "a": agg.first.trade.0,
        "p": price_text(&view.scale, agg.first.price),
        "q": qty_text(&view.scale, agg.qty),
        "f": agg.first.trade.0,
        "l": agg.last_id,
        "T": agg.first.timestamp_ns / 1_000_000,
        "m": agg.first.taker_side == Side::Sell,
        "M": true,
    })
}

/// `GET /api/v3/aggTrades` over the recent trades the views keep.
pub fn agg_trades(state: &AppState, params: &Params) -> Result<Value, BinanceError> {
    params.only(&["symbol", "fromId", "startTime", "endTime", "limit"])?;
    let limit = params.bounded("limit", 1, TRADES_LIMIT_MAX)?.unwrap_or(TRADES_LIMIT_DEFAULT) as usize;
    let range = TradeRange::read(params)?;
    let views = read_views(state)?;
    let view = market(&views, params.required("symbol")?)?;
    let aggs = aggregate(view.trades.iter().copied());
    let in_range =
        aggs.iter().filter(|a| range.contains(a.first.trade.0, a.first.timestamp_ns / 1_000_000)).collect();
    let chosen: Vec<&AggTrade> = range.window(in_range, limit);
    Ok(Value::Array(chosen.iter().map(|a| agg_json(view, a)).collect()))
}

/// A price level: price and total quantity.
pub type Level = Option<(Ticks, Lots)>;

/// The best bid and the best ask.
pub fn best(view: &MarketView) -> (Level, Level) {
    (view.bids.iter().next_back().map(|(p, q)| (*p, *q)), view.asks.iter().next().map(|(p, q)| (*p, *q)))
}

fn level_texts(view: &MarketView, level: Level) -> (String, String) {
    match level {
        Some((price, qty)) => (price_text(&view.scale, price), qty_text(&view.scale, qty)),
        None => (fixed(Decimal::ZERO, 0), fixed(Decimal::ZERO, 0)),
    }
}

pub fn book_ticker_json(view: &MarketView) -> Value {
    let (bid, ask) = best(view);
    let (bid_price, bid_qty) = level_texts(view, bid);
    let (ask_price, ask_qty) = level_texts(view, ask);
    json!({ "symbol": view.symbol, "bidPrice": bid_price, "bidQty": bid_qty, "askPrice": ask_price, "askQty": ask_qty })
}

fn one_or_many(values: Vec<Value>, one: bool) -> Value {
    if one {
        values.into_iter().next().unwrap_or(Value::Null)
    } else {
        Value::Array(values)
    }
}

/// `GET /api/v3/ticker/bookTicker`.
pub fn book_ticker(state: &AppState, params: &Params) -> Result<Value, BinanceError> {
    params.only(&["symbol", "symbols", "symbolStatus"])?;
    let views = read_views(state)?;
    let (chosen, one) = markets(&views, params)?;
    Ok(one_or_many(chosen.iter().map(|m| book_ticker_json(m)).collect(), one))
}

/// `GET /api/v3/ticker/price`.
pub fn price(state: &AppState, params: &Params) -> Result<Value, BinanceError> {
    params.only(&["symbol", "symbols", "symbolStatus"])?;
    let views = read_views(state)?;
    let (chosen, one) = markets(&views, params)?;
    let prices = chosen
        .iter()
        .map(|m| {
            let last = m.last_price.map_or_else(|| fixed(Decimal::ZERO, 0), |p| price_text(&m.scale, p));
            json!({ "symbol": m.symbol, "price": last })
        })
        .collect();
    Ok(one_or_many(prices, one))
}

/// `GET /api/v3/ticker/24hr` over the minutes the views keep (the last day).
pub fn ticker_24hr(state: &AppState, params: &Params) -> Result<Value, BinanceError> {
    params.only(&["symbol", "symbols", "type", "symbolStatus"])?;
    let mini = match params.get("type") {
        None | Some("FULL") => false,
        Some("MINI") => true,
        Some(_) => return Err(BinanceError::invalid_value("type", "must be FULL or MINI")),
    };
    let views = read_views(state)?;
    let (chosen, one) = markets(&views, params)?;
    let now = now_ms();
    let tickers = chosen.iter().map(|m| ticker_json(m, now, mini)).collect();
    Ok(one_or_many(tickers, one))
}

pub fn ticker_json(view: &MarketView, now_ms: u64, mini: bool) -> Value {
    let zero = || fixed(Decimal::ZERO, 0);
    let price = |p: Ticks| price_text(&view.scale, p);
    let quote_decimals = view.scale.quote_decimals;
    let stats = view.day_stats();
    let (open, high, low, close) = stats.map_or_else(
        || (zero(), zero(), zero(), zero()),
        |s| (price(s.open), price(s.high), price(s.low), price(s.close)),
    );
    let volume =
        stats.map_or_else(zero, |s| qty_text(&view.scale, Lots(u64::try_from(s.volume).unwrap_or(u64::MAX))));
    let quote_volume = stats.map_or_else(zero, |s| units_text(s.quote_volume, quote_decimals));
    let open_time = stats.map_or(now_ms.saturating_sub(86_400_000), |s| s.open_time_ms);
    let (first_id, last_id, count) =
        stats.map_or((-1i64, -1i64, 0u64), |s| (s.first_trade.0 as i64, s.last_trade.0 as i64, s.trades));
    let mut ticker = json!({
        "symbol": view.symbol,
        "openPrice": open,
        "highPrice": high,
        "lowPrice": low,
        "lastPrice": close,
        "volume": volume,
        "quoteVolume": quote_volume,
        "openTime": open_time,
        "closeTime": now_ms,
        "firstId": first_id,
        "lastId": last_id,
        "count": count,
    });
    if mini {
        return ticker;
    }
    let (change, percent, weighted) = match stats {
        Some(s) => {
            let tick = view.scale.tick_size;
            let to_price = |t: Ticks| Decimal::from(t.0).checked_mul(tick);
            let change = to_price(s.close).zip(to_price(s.open)).and_then(|(c, o)| c.checked_sub(o));
            let percent = change.zip(to_price(s.open)).and_then(|(d, o)| {
                if o.is_zero() {
                    None
                } else {
                    d.checked_mul(Decimal::ONE_HUNDRED).and_then(|x| x.checked_div(o))
                }
            });
            let volume_base =
                Decimal::from(u64::try_from(s.volume).unwrap_or(u64::MAX)).checked_mul(view.scale.lot_size);
            let quote = Decimal::try_from_i128_with_scale(
                i128::try_from(s.quote_volume).unwrap_or(i128::MAX),
                u32::from(quote_decimals),
            )
            .ok();
            let weighted =
                quote.zip(volume_base).and_then(|(q, v)| if v.is_zero() { None } else { q.checked_div(v) });
            (
                change.map_or_else(zero, |c| fixed(c, tick.scale())),
                percent.map_or_else(|| "0.000".to_string(), |p| p.round_dp(3).to_string()),
                weighted.map_or_else(zero, |w| fixed(w.round_dp(tick.scale().max(8)), tick.scale())),
            )
        }
        None => (zero(), "0.000".to_string(), zero()),
    };
    let (bid, ask) = best(view);
    let (bid_price, bid_qty) = level_texts(view, bid);
    let (ask_price, ask_qty) = level_texts(view, ask);
    let object = ticker.as_object_mut();
    if let Some(object) = object {
        object.insert("priceChange".into(), json!(change));
        object.insert("priceChangePercent".into(), json!(percent));
        object.insert("weightedAvgPrice".into(), json!(weighted));
        object.insert("prevClosePrice".into(), json!(stats.map_or_else(zero, |s| price(s.open))));
        object.insert("lastQty".into(), json!(view.last_qty.map_or_else(zero, |q| qty_text(&view.scale, q))));
        object.insert("bidPrice".into(), json!(bid_price));
        object.insert("bidQty".into(), json!(bid_qty));
        object.insert("askPrice".into(), json!(ask_price));
        object.insert("askQty".into(), json!(ask_qty));
    }
    ticker
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_core::{OrderId, TradeId};

    fn trade(id: u64, taker: u64, price: u64, qty: u64) -> TradeView {
        TradeView {
            trade: TradeId(id),
            taker_order: OrderId(taker),
            seq: id,
            price: Ticks(price),
            qty: Lots(qty),
            taker_side: Side::Buy,
            timestamp_ns: id * 1_000_000,
        }
    }

    #[test]
    fn consecutive_trades_of_one_taker_at_one_price_aggregate() {
        let aggs =
            aggregate([trade(1, 7, 100, 1), trade(2, 7, 100, 2), trade(3, 7, 101, 1), trade(4, 8, 101, 5)]);
        let summary: Vec<(u64, u64, u64)> =
            aggs.iter().map(|a| (a.first.trade.0, a.last_id, a.qty.0)).collect();
        assert_eq!(summary, vec![(1, 2, 3), (3, 3, 1), (4, 4, 5)]);
    }
}
