//! `exctl journal dump`: the journal's records as text an operator reads,
//! with prices, quantities, amounts and fees as decimals and markets and
//! assets by name, or as JSON lines (the raw record, plus the same decimals
//! as strings under `"decimal"`).
//!
//! The scales live in the journal itself (the assets' and markets' creation
//! commands), so the dump replays the state just before `--from` (from the
//! newest snapshot at or before it, then the journal) and applies each
//! record it prints: a creation the engine rejected names nothing, and an
//! amend is shown in the market of the order it changed. When that replay
//! is impossible (a damaged journal being diagnosed, say) the dump says so
//! on standard error and prints the raw integers.

use std::path::Path;
use std::process::ExitCode;

use engine_core::{
    Asset, AssetId, Command, Engine, EngineLimits, Event, EventKind, ListRef, MarketId, OrderKind, OrderRef,
    Trigger, TriggerKind, Units,
};
use gateway::amounts::{ppm_to_string, Scale};
use journal::{DataDir, JournalReader, ReadMode, RecoverOptions};
use serde_json::{Map, Value};

use crate::market_name;

pub fn dump(dir: &Path, journal: &Path, from: u64, limit: u64, json: bool) -> Result<ExitCode, String> {
    let mut reader = JournalReader::open(journal, from, ReadMode::Follow).map_err(|e| e.to_string())?;
    let mut engine = state_before(dir, from);
    let mut events = Vec::new();
    let mut printed = 0;
    while printed < limit {
        let Some(record) = reader.next().map_err(|e| e.to_string())? else { break };
        events.clear();
        if let Some(live) = &mut engine {
            if let Err(error) = live.apply(&record, &mut events) {
                tracing::warn!("{error}: the rest of the dump shows raw ticks, lots and units");
                engine = None;
            }
        }
        let names = engine.as_ref().map(|engine| Names { engine, events: &events });
        if json {
            let mut line = serde_json::to_value(record).map_err(|e| e.to_string())?;
            if let Some(names) = &names {
                let fields = names.decimal_fields(&record.command);
                if !fields.is_empty() {
                    line["decimal"] = Value::Object(fields);
                }
                if let Some(reason) = names.rejected() {
                    line["rejected"] = Value::String(reason);
                }
            }
            println!("{line}");
        } else {
            let text = match &names {
                Some(names) => names.describe(&record.command),
                None => format!("{:?}", record.command),
            };
            println!("{:>12}  {}  {text}", record.seq, crate::time::format_timestamp_ns(record.timestamp_ns));
        }
        printed += 1;
    }
    Ok(ExitCode::SUCCESS)
}

/// The engine just before `from`: the assets and markets (and their
/// scales) the records from there on refer to. `None`, with a warning,
/// when it cannot be rebuilt.
fn state_before(dir: &Path, from: u64) -> Option<Engine> {
    if from <= 1 {
        return Some(Engine::new(EngineLimits::default()));
    }
    let data = DataDir::new(dir);
    let options =
        RecoverOptions { limits: EngineLimits::default(), to_seq: Some(from - 1), mode: ReadMode::Follow };
    match journal::recover(&data, options, |_| {}) {
        Ok(recovery) if recovery.engine.last_seq() == from - 1 => Some(recovery.engine),
        Ok(recovery) => {
            tracing::warn!(
                "the journal and snapshots reach sequence {} only, not {}: the dump shows raw ticks, lots and units",
                recovery.engine.last_seq(),
                from - 1
            );
            None
        }
        Err(error) => {
            tracing::warn!(
                "cannot rebuild the markets and assets before sequence {from} ({error}): the dump shows raw ticks, \
                 lots and units"
            );
            None
        }
    }
}

/// Names and decimals of one record, from the engine after applying it and
/// the events it gave.
pub(crate) struct Names<'e> {
    pub(crate) engine: &'e Engine,
    pub(crate) events: &'e [Event],
}

/// A decimal amount of an asset without trailing zeros.
fn amount(units: Units, asset: &Asset) -> String {
    persistence::scale::units(units, asset.decimals).normalize().to_string()
}

impl Names<'_> {
    fn asset(&self, asset: AssetId) -> Option<&Asset> {
        self.engine.assets().get(asset.0 as usize)
    }

    /// The market's canonical name, its scale, and its base and quote.
    fn market(&self, market: MarketId) -> Option<(String, Scale, &Asset, &Asset)> {
        let rules = &self.engine.market(market)?.rules;
        let (base, quote) = (self.asset(rules.base)?, self.asset(rules.quote)?);
        let scale = Scale::for_market(rules, base.decimals, quote.decimals);
        Some((market_name::canonical(base.symbol.as_str(), quote.symbol.as_str()), scale, base, quote))
    }

    /// The market an amend changed, from the event it gave.
    fn amended_market(&self) -> Option<MarketId> {
        self.events.iter().find_map(|event| match event.kind {
            EventKind::OrderAmended { market, .. } => Some(market),
            _ => None,
        })
    }

    pub(crate) fn rejected(&self) -> Option<String> {
        self.events.iter().find_map(|event| match &event.kind {
            EventKind::Rejected { reason, .. } => Some(reason.to_string()),
            _ => None,
        })
    }

    /// One line for an operator; the raw command where a name is unknown.
    pub(crate) fn describe(&self, command: &Command) -> String {
        let raw = || format!("{command:?}");
        let order_ref = |order: &OrderRef| match order {
            OrderRef::Id(id) => format!("order {id}"),
            OrderRef::Client(id) => format!("client order id {id}"),
        };
        let text = match command {
            Command::CreateAsset { symbol, decimals } => format!("CreateAsset {symbol} decimals {decimals}"),
            Command::CreateMarket { rules, status } => {
                match (self.asset(rules.base), self.asset(rules.quote)) {
                    (Some(base), Some(quote)) => {
                        let scale = Scale::for_market(rules, base.decimals, quote.decimals);
                        format!(
                        "CreateMarket {} tick_size {} lot_size {} min_quantity {} min_notional {} maker_fee {} \
                         taker_fee {} {status:?}",
                        market_name::canonical(base.symbol.as_str(), quote.symbol.as_str()),
                        scale.tick_size.normalize(),
                        scale.lot_size.normalize(),
                        scale.qty(rules.min_qty),
                        amount(rules.min_notional, quote),
                        ppm_to_string(rules.maker_fee_ppm),
                        ppm_to_string(rules.taker_fee_ppm),
                    )
                    }
                    _ => raw(),
                }
            }
            Command::SetMarketStatus { market, status } => match self.market(*market) {
                Some((name, ..)) => format!("SetMarketStatus {name} {status:?}"),
                None => raw(),
            },
            Command::SetMarketFees { market, maker_fee_ppm, taker_fee_ppm } => match self.market(*market) {
                Some((name, ..)) => format!(
                    "SetMarketFees {name} maker_fee {} taker_fee {}",
                    ppm_to_string(*maker_fee_ppm),
                    ppm_to_string(*taker_fee_ppm)
                ),
                None => raw(),
            },
            Command::CreateUser => "CreateUser".to_string(),
            // The secret is never printed.
            Command::CreateApiKey { user, key, .. } => format!("CreateApiKey user {user} key {key}"),
            Command::RevokeApiKey { user, key } => format!("RevokeApiKey user {user} key {key}"),
            Command::Deposit { user, asset, amount: units }
            | Command::Withdraw { user, asset, amount: units } => {
                let verb = if matches!(command, Command::Deposit { .. }) { "Deposit" } else { "Withdraw" };
                match self.asset(*asset) {
                    Some(asset) => format!("{verb} user {user} {} {}", amount(*units, asset), asset.symbol),
                    None => raw(),
                }
            }
            Command::PlaceOrder(order) => match self.market(order.market) {
                Some((name, scale, base, quote)) => {
                    let what = kind_text(&order.kind, &scale, base, quote);
                    let client =
                        order.client_order_id.map_or(String::new(), |id| format!(" client order id {id}"));
                    format!(
                        "PlaceOrder user {} {name} {} {what}{client} stp {:?}",
                        order.user, order.side, order.stp
                    )
                }
                None => raw(),
            },
            Command::PlaceOrderList(list) => match self.market(list.market) {
                Some((name, scale, base, quote)) => {
                    let client =
                        list.client_list_id.map_or(String::new(), |id| format!(" list client id {id}"));
                    let legs: Vec<String> = list
                        .legs
                        .iter()
                        .enumerate()
                        .map(|(index, leg)| {
                            let client = leg
                                .client_order_id
                                .map_or(String::new(), |id| format!(" client order id {id}"));
                            format!(
                                "{}) {} {}{client}",
                                index + 1,
                                leg.side,
                                kind_text(&leg.kind, &scale, base, quote)
                            )
                        })
                        .collect();
                    format!(
                        "PlaceOrderList user {} {name} {:?}{client} stp {:?}: {}",
                        list.user,
                        list.contingency,
                        list.stp,
                        legs.join("; ")
                    )
                }
                None => raw(),
            },
            Command::CancelOrderList { user, list } => match list {
                ListRef::Id(id) => format!("CancelOrderList user {user} list {id}"),
                ListRef::Client(client) => format!("CancelOrderList user {user} list client id {client}"),
            },
            Command::CancelOrder { user, order } => format!("CancelOrder user {user} {}", order_ref(order)),
            Command::CancelAll { user, market: None } => format!("CancelAll user {user} all markets"),
            Command::CancelAll { user, market: Some(market) } => match self.market(*market) {
                Some((name, ..)) => format!("CancelAll user {user} {name}"),
                None => raw(),
            },
            Command::Amend(amend) => match self.amended_market().and_then(|m| self.market(m)) {
                Some((name, scale, base, quote)) => {
                    let mut text = format!("Amend user {} {} {name}", amend.user, order_ref(&amend.order));
                    if let Some(qty) = amend.new_qty {
                        text.push_str(&format!(" new_qty {} {}", scale.qty(qty), base.symbol));
                    }
                    if let Some(price) = amend.new_price {
                        text.push_str(&format!(" new_price {} {}", scale.price(price), quote.symbol));
                    }
                    text
                }
                None => raw(),
            },
            Command::SetLimits { .. } => raw(),
        };
        match self.rejected() {
            Some(reason) => format!("{text} -> rejected: {reason}"),
            None => text,
        }
    }

    /// The record's prices, quantities, amounts and fees as decimal
    /// strings, with the market or asset they belong to.
    pub(crate) fn decimal_fields(&self, command: &Command) -> Map<String, Value> {
        let mut fields = Map::new();
        let mut put = |name: &str, value: String| {
            fields.insert(name.to_string(), Value::String(value));
        };
        match command {
            Command::CreateMarket { rules, .. } => {
                if let (Some(base), Some(quote)) = (self.asset(rules.base), self.asset(rules.quote)) {
                    let scale = Scale::for_market(rules, base.decimals, quote.decimals);
                    put("market", market_name::canonical(base.symbol.as_str(), quote.symbol.as_str()));
                    put("tick_size", scale.tick_size.normalize().to_string());
                    put("lot_size", scale.lot_size.normalize().to_string());
                    put("min_quantity", scale.qty(rules.min_qty));
                    put("min_notional", amount(rules.min_notional, quote));
                    put("maker_fee", ppm_to_string(rules.maker_fee_ppm));
                    put("taker_fee", ppm_to_string(rules.taker_fee_ppm));
                }
            }
            Command::SetMarketStatus { market, .. } | Command::CancelAll { market: Some(market), .. } => {
                if let Some((name, ..)) = self.market(*market) {
                    put("market", name);
                }
            }
            Command::SetMarketFees { market, maker_fee_ppm, taker_fee_ppm } => {
                if let Some((name, ..)) = self.market(*market) {
                    put("market", name);
                }
                put("maker_fee", ppm_to_string(*maker_fee_ppm));
                put("taker_fee", ppm_to_string(*taker_fee_ppm));
            }
            Command::Deposit { asset, amount: units, .. }
            | Command::Withdraw { asset, amount: units, .. } => {
                if let Some(asset) = self.asset(*asset) {
                    put("asset", asset.symbol.to_string());
                    put("amount", amount(*units, asset));
                }
            }
            Command::PlaceOrder(order) => {
                if let Some((name, scale, _, quote)) = self.market(order.market) {
                    put("market", name);
                    for (field, value) in kind_fields(&order.kind, &scale, quote) {
                        put(field, value);
                    }
                }
            }
            Command::PlaceOrderList(list) => {
                if let Some((name, scale, _, quote)) = self.market(list.market) {
                    put("market", name);
                    let legs = list
                        .legs
                        .iter()
                        .map(|leg| {
                            Value::Object(
                                kind_fields(&leg.kind, &scale, quote)
                                    .into_iter()
                                    .map(|(field, value)| (field.to_string(), Value::String(value)))
                                    .collect(),
                            )
                        })
                        .collect();
                    fields.insert("legs".to_string(), Value::Array(legs));
                }
            }
            Command::Amend(amend) => {
                if let Some((name, scale, ..)) = self.amended_market().and_then(|m| self.market(m)) {
                    put("market", name);
                    if let Some(qty) = amend.new_qty {
                        put("new_qty", scale.qty(qty));
                    }
                    if let Some(price) = amend.new_price {
                        put("new_price", scale.price(price));
                    }
                }
            }
            _ => {}
        }
        fields
    }
}

/// An order kind in words, with decimals: `limit 0.5 BTC @ 50000 USDT Gtc`,
/// `stop_market 0.1 BTC stop_loss at 49000 USDT trailing 100 bips`.
fn kind_text(kind: &OrderKind, scale: &Scale, base: &Asset, quote: &Asset) -> String {
    let qty = |q| format!("{} {}", scale.qty(q), base.symbol);
    let price = |p| format!("{} {}", scale.price(p), quote.symbol);
    let trigger = |trigger: &Trigger| {
        let kind = match trigger.kind {
            TriggerKind::StopLoss => "stop_loss",
            TriggerKind::TakeProfit => "take_profit",
        };
        let mut text = kind.to_string();
        if let Some(stop) = trigger.stop {
            text.push_str(&format!(" at {}", price(stop)));
        }
        if trigger.trailing_bips > 0 {
            text.push_str(&format!(" trailing {} bips", trigger.trailing_bips));
        }
        text
    };
    match *kind {
        OrderKind::Limit { price: p, qty: q, tif } => format!("limit {} @ {} {tif:?}", qty(q), price(p)),
        OrderKind::Market { qty: q } => format!("market {}", qty(q)),
        OrderKind::MarketByQuote { amount: units } => {
            format!("market for {} {}", amount(units, quote), quote.symbol)
        }
        OrderKind::Iceberg { price: p, qty: q, visible, tif } => {
            format!("iceberg {} @ {} showing {} {tif:?}", qty(q), price(p), scale.qty(visible))
        }
        OrderKind::StopMarket { trigger: t, qty: q } => format!("stop_market {} {}", qty(q), trigger(&t)),
        OrderKind::StopLimit { trigger: t, price: p, qty: q, tif, visible } => {
            let showing =
                if visible.0 > 0 { format!(" showing {}", scale.qty(visible)) } else { String::new() };
            format!("stop_limit {} @ {} {tif:?}{showing} {}", qty(q), price(p), trigger(&t))
        }
    }
}

/// An order kind's prices, quantities and amounts as decimal strings.
fn kind_fields(kind: &OrderKind, scale: &Scale, quote: &Asset) -> Vec<(&'static str, String)> {
    let mut fields = Vec::new();
    if let OrderKind::MarketByQuote { amount: units } = *kind {
        fields.push(("amount", amount(units, quote)));
    }
    if let Some(price) = kind.price() {
        fields.push(("price", scale.price(price)));
    }
    if let Some(qty) = kind.qty() {
        fields.push(("qty", scale.qty(qty)));
    }
    match *kind {
        OrderKind::Iceberg { visible, .. } => fields.push(("visible_qty", scale.qty(visible))),
        OrderKind::StopLimit { visible, .. } if visible.0 > 0 => {
            fields.push(("visible_qty", scale.qty(visible)))
        }
        _ => {}
    }
    if let Some(stop) = kind.trigger().and_then(|t| t.stop) {
        fields.push(("stop_price", scale.price(stop)));
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_are_strings() {
        let engine = Engine::new(EngineLimits::default());
        let names = Names { engine: &engine, events: &[] };
        let fields = names.decimal_fields(&Command::SetMarketFees {
            market: MarketId(0),
            maker_fee_ppm: 1_000,
            taker_fee_ppm: 2_000,
        });
        assert_eq!(Value::Object(fields), json!({ "maker_fee": "0.001", "taker_fee": "0.002" }));
    }
}
