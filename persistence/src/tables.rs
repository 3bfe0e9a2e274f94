//! The SQL side of the writer: applying migrations, loading the writer's
//! state as of its cursor, and writing one [`RowSet`] in one transaction.

use std::time::SystemTime;

use engine_core::{AssetId, MarketRules, Units, UserId};
use futures_util::pin_mut;
use rust_decimal::Decimal;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::DbError;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Transaction};

use crate::rows::{
    contingency_name, int4, int8, minute_start, side_name, status_name, stp_name, tif_name, time_of,
    trigger_kind_name, Balances, Catalog, CatalogMarket, LedgerRow, ListChange, OrderChange, Reference,
    RowError, RowSet, Stamp, TradeRow,
};
use crate::scale::{self, Amount, MarketScale};

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// How rows of the big tables (trades, ledger, orders) are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Binary `COPY ... FROM STDIN`: the default, and the fastest.
    Copy,
    /// Multi-row `INSERT ... VALUES`, for comparison in the benchmark.
    Insert,
}

/// Anything that stops a write: the database's error or ours.
#[derive(Debug)]
pub enum StoreError {
    Db(tokio_postgres::Error),
    Migration(String),
    /// The events and the tables disagree (see [`RowError`]).
    Rows(RowError),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Db(error) => write!(f, "database: {}", describe(error)),
            StoreError::Migration(message) => write!(f, "migration: {message}"),
            StoreError::Rows(error) => write!(f, "history: {error}"),
        }
    }
}

/// An error with everything that caused it, on one line. The server's own
/// report (a [`DbError`]) is spelled out in full, since "db error" alone
/// tells an operator nothing: severity, SQLSTATE code, message, detail and
/// hint ("ERROR 42501: permission denied for schema public").
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut link = Some(error);
    while let Some(error) = link {
        let part = match error.downcast_ref::<DbError>() {
            Some(db) => db_error(db),
            None => error.to_string(),
        };
        // tokio-postgres says "db error" before the report itself, and
        // wrappers often repeat their cause's text: say each thing once.
        let wrapper_only = part == "db error" && error.source().is_some();
        if !wrapper_only && !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
        link = error.source();
    }
    text
}

fn db_error(db: &DbError) -> String {
    let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    if let Some(detail) = db.detail() {
        text.push_str(&format!(" (detail: {detail})"));
    }
    if let Some(hint) = db.hint() {
        text.push_str(&format!(" (hint: {hint})"));
    }
    text
}

/// refinery wraps the database's error in its own, whose text quotes only
/// the wrapper's ("`error asserting migrations table`, `db error`").
fn migration_error(error: &refinery::Error) -> String {
    match error.kind() {
        refinery::error::Kind::Connection(what, cause) => format!("{what}: {}", describe(cause.as_ref())),
        _ => describe(error),
    }
}

impl std::error::Error for StoreError {}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> StoreError {
        StoreError::Db(error)
    }
}

impl From<RowError> for StoreError {
    fn from(error: RowError) -> StoreError {
        StoreError::Rows(error)
    }
}

/// Applies the migrations in `migrations/` that the database lacks, in
/// order, each recorded with its checksum (a changed, already applied
/// migration is an error). Returns the names of those applied now.
pub async fn migrate(client: &mut Client) -> Result<Vec<String>, StoreError> {
    let report = embedded::migrations::runner()
        .run_async(client)
        .await
        .map_err(|e| StoreError::Migration(migration_error(&e)))?;
    Ok(report.applied_migrations().iter().map(|m| m.to_string()).collect())
}

/// The writer's state as of its cursor.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The last command whose events are written (0: none).
    pub cursor_seq: u64,
    pub cursor_timestamp_ns: u64,
    /// The image's last command (sequence number, time in ns) when the
    /// database was seeded from a snapshot image; `None` when it holds the
    /// whole history.
    pub seeded_from: Option<(u64, u64)>,
    pub catalog: Catalog,
    pub balances: Balances,
}

fn unsigned(value: i64, what: &str) -> Result<u64, RowError> {
    u64::try_from(value).map_err(|_| RowError(format!("negative {what} in the database: {value}")))
}

fn units_column(value: Decimal, decimals: u8, what: &str) -> Result<Units, RowError> {
    scale::to_units(value, decimals)
        .ok_or_else(|| RowError(format!("{what} {value} in the database is not a whole number of units")))
}

/// A stored time in ns since the Unix epoch (0 when there is none).
fn ns_since_epoch(at: Option<SystemTime>) -> u64 {
    at.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos() as u64)
}

/// Reads the cursor, reference data and balances.
pub async fn load(client: &Client) -> Result<Loaded, StoreError> {
    let row = client.query_one("SELECT last_seq, last_command_at FROM writer_cursor WHERE id", &[]).await?;
    let cursor_seq = unsigned(row.get(0), "cursor")?;
    let cursor_at: Option<SystemTime> = row.get(1);
    let cursor_timestamp_ns = ns_since_epoch(cursor_at);
    let seeded_from =
        match client.query_opt("SELECT image_seq, image_command_at FROM seeded_from", &[]).await? {
            None => None,
            Some(row) => Some((unsigned(row.get(0), "seeded_from.image_seq")?, ns_since_epoch(row.get(1)))),
        };

    let mut catalog = Catalog::default();
    for row in client.query("SELECT asset_id, symbol, decimals FROM assets ORDER BY asset_id", &[]).await? {
        let id: i32 = row.get(0);
        if id as usize != catalog.assets.len() {
            return Err(RowError(format!("asset ids in the database are not dense at {id}")).into());
        }
        let decimals: i16 = row.get(2);
        catalog.assets.push((row.get(1), u8::try_from(decimals).unwrap_or(u8::MAX)));
    }
    let markets = client
        .query(
            "SELECT market_id, name, base_asset_id, quote_asset_id, base_units_per_lot, quote_units_per_tick \
             FROM markets ORDER BY market_id",
            &[],
        )
        .await?;
    for row in markets {
        let id: i32 = row.get(0);
        if id as usize != catalog.markets.len() {
            return Err(RowError(format!("market ids in the database are not dense at {id}")).into());
        }
        let base = AssetId(u32::try_from(row.get::<_, i32>(2)).unwrap_or(u32::MAX));
        let quote = AssetId(u32::try_from(row.get::<_, i32>(3)).unwrap_or(u32::MAX));
        let per_lot = units_column(row.get(4), 0, "base_units_per_lot")?;
        let per_tick = units_column(row.get(5), 0, "quote_units_per_tick")?;
        let rules = MarketRules {
            base,
            quote,
            base_units_per_lot: per_lot.0,
            quote_units_per_tick: per_tick.0,
            // Only the scale matters for conversions; the rest is the engine's.
            min_qty: engine_core::Lots(0),
            min_notional: Units(0),
            maker_fee_ppm: 0,
            taker_fee_ppm: 0,
        };
        let scale = MarketScale::for_market(&rules, catalog.decimals(base)?, catalog.decimals(quote)?);
        catalog.markets.push(CatalogMarket { name: row.get(1), base, quote, scale });
    }

    let mut balances = Balances::new();
    for row in client.query("SELECT user_id, asset_id, available, locked FROM balances", &[]).await? {
        let user = UserId(u32::try_from(row.get::<_, i32>(0)).unwrap_or(u32::MAX));
        let asset = AssetId(u32::try_from(row.get::<_, i32>(1)).unwrap_or(u32::MAX));
        let decimals = catalog.decimals(asset)?;
        let available = units_column(row.get(2), decimals, "available balance")?;
        let locked = units_column(row.get(3), decimals, "locked balance")?;
        balances.insert((user, asset), (available, locked));
    }
    Ok(Loaded { cursor_seq, cursor_timestamp_ns, seeded_from, catalog, balances })
}

/// A table's rows as parameters for `COPY` or `INSERT`.
trait SqlRow<const N: usize> {
    fn params(&self) -> [&(dyn ToSql + Sync); N];
}

impl SqlRow<16> for TradeRow {
    fn params(&self) -> [&(dyn ToSql + Sync); 16] {
        [
            &self.trade_id,
            &self.seq,
            &self.market_id,
            &self.price,
            &self.quantity,
            &self.quote_quantity,
            &self.taker_side,
            &self.maker_order_id,
            &self.maker_user_id,
            &self.taker_order_id,
            &self.taker_user_id,
            &self.maker_fee,
            &self.maker_fee_asset_id,
            &self.taker_fee,
            &self.taker_fee_asset_id,
            &self.executed_at,
        ]
    }
}

const TRADE_COLUMNS: [(&str, Type); 16] = [
    ("trade_id", Type::INT8),
    ("seq", Type::INT8),
    ("market_id", Type::INT4),
    ("price", Type::NUMERIC),
    ("quantity", Type::NUMERIC),
    ("quote_quantity", Type::NUMERIC),
    ("taker_side", Type::TEXT),
    ("maker_order_id", Type::INT8),
    ("maker_user_id", Type::INT4),
    ("taker_order_id", Type::INT8),
    ("taker_user_id", Type::INT4),
    ("maker_fee", Type::NUMERIC),
    ("maker_fee_asset_id", Type::INT4),
    ("taker_fee", Type::NUMERIC),
    ("taker_fee_asset_id", Type::INT4),
    ("executed_at", Type::TIMESTAMPTZ),
];

impl SqlRow<12> for LedgerRow {
    fn params(&self) -> [&(dyn ToSql + Sync); 12] {
        [
            &self.seq,
            &self.event_index,
            &self.user_id,
            &self.asset_id,
            &self.available,
            &self.locked,
            &self.available_change,
            &self.locked_change,
            &self.cause,
            &self.order_id,
            &self.trade_id,
            &self.recorded_at,
        ]
    }
}

const LEDGER_COLUMNS: [(&str, Type); 12] = [
    ("seq", Type::INT8),
    ("event_index", Type::INT4),
    ("user_id", Type::INT4),
    ("asset_id", Type::INT4),
    ("available", Type::NUMERIC),
    ("locked", Type::NUMERIC),
    ("available_change", Type::NUMERIC),
    ("locked_change", Type::NUMERIC),
    ("cause", Type::TEXT),
    ("order_id", Type::INT8),
    ("trade_id", Type::INT8),
    ("recorded_at", Type::TIMESTAMPTZ),
];

/// A new order's whole row.
struct NewOrderRow {
    order_id: i64,
    user_id: i32,
    market_id: i32,
    side: &'static str,
    order_type: &'static str,
    time_in_force: Option<&'static str>,
    price: Option<Amount>,
    quantity: Option<Amount>,
    quote_amount: Option<Amount>,
    client_order_id: Option<String>,
    stp: &'static str,
    status: &'static str,
    remaining: Amount,
    executed: Amount,
    executed_quote: Amount,
    created_seq: i64,
    created_at: SystemTime,
    updated_seq: i64,
    updated_at: SystemTime,
    closed_at: Option<SystemTime>,
    trigger_kind: Option<&'static str>,
    stop_price: Option<Amount>,
    trailing_bips: Option<i16>,
    triggered_at: Option<SystemTime>,
    trigger_price: Option<Amount>,
    visible_quantity: Option<Amount>,
    list_id: Option<i64>,
    reject_reason: Option<String>,
}

impl SqlRow<28> for NewOrderRow {
    fn params(&self) -> [&(dyn ToSql + Sync); 28] {
        [
            &self.order_id,
            &self.user_id,
            &self.market_id,
            &self.side,
            &self.order_type,
            &self.time_in_force,
            &self.price,
            &self.quantity,
            &self.quote_amount,
            &self.client_order_id,
            &self.stp,
            &self.status,
            &self.remaining,
            &self.executed,
            &self.executed_quote,
            &self.created_seq,
            &self.created_at,
            &self.updated_seq,
            &self.updated_at,
            &self.closed_at,
            &self.trigger_kind,
            &self.stop_price,
            &self.trailing_bips,
            &self.triggered_at,
            &self.trigger_price,
            &self.visible_quantity,
            &self.list_id,
            &self.reject_reason,
        ]
    }
}

const ORDER_COLUMNS: [(&str, Type); 28] = [
    ("order_id", Type::INT8),
    ("user_id", Type::INT4),
    ("market_id", Type::INT4),
    ("side", Type::TEXT),
    ("type", Type::TEXT),
    ("time_in_force", Type::TEXT),
    ("price", Type::NUMERIC),
    ("quantity", Type::NUMERIC),
    ("quote_amount", Type::NUMERIC),
    ("client_order_id", Type::TEXT),
    ("self_trade_prevention", Type::TEXT),
    ("status", Type::TEXT),
    ("remaining_quantity", Type::NUMERIC),
    ("executed_quantity", Type::NUMERIC),
    ("executed_quote", Type::NUMERIC),
    ("created_seq", Type::INT8),
    ("created_at", Type::TIMESTAMPTZ),
    ("updated_seq", Type::INT8),
    ("updated_at", Type::TIMESTAMPTZ),
    ("closed_at", Type::TIMESTAMPTZ),
    ("trigger_kind", Type::TEXT),
    ("stop_price", Type::NUMERIC),
    ("trailing_bips", Type::INT2),
    ("triggered_at", Type::TIMESTAMPTZ),
    ("trigger_price", Type::NUMERIC),
    ("visible_quantity", Type::NUMERIC),
    ("list_id", Type::INT8),
    ("reject_reason", Type::TEXT),
];

/// A change to an order written before this row set.
struct OrderUpdateRow {
    order_id: i64,
    status: Option<&'static str>,
    price: Option<Amount>,
    amended_quantity: Option<Amount>,
    remaining: Option<Amount>,
    executed: Amount,
    executed_quote: Amount,
    updated_seq: i64,
    updated_at: SystemTime,
    closed_at: Option<SystemTime>,
    triggered_at: Option<SystemTime>,
    trigger_price: Option<Amount>,
    reject_reason: Option<String>,
}

impl SqlRow<13> for OrderUpdateRow {
    fn params(&self) -> [&(dyn ToSql + Sync); 13] {
        [
            &self.order_id,
            &self.status,
            &self.price,
            &self.amended_quantity,
            &self.remaining,
            &self.executed,
            &self.executed_quote,
            &self.updated_seq,
            &self.updated_at,
            &self.closed_at,
            &self.triggered_at,
            &self.trigger_price,
            &self.reject_reason,
        ]
    }
}

const ORDER_UPDATE_COLUMNS: [(&str, Type); 13] = [
    ("order_id", Type::INT8),
    ("status", Type::TEXT),
    ("price", Type::NUMERIC),
    ("amended_quantity", Type::NUMERIC),
    ("remaining_quantity", Type::NUMERIC),
    ("executed_quantity", Type::NUMERIC),
    ("executed_quote", Type::NUMERIC),
    ("updated_seq", Type::INT8),
    ("updated_at", Type::TIMESTAMPTZ),
    ("closed_at", Type::TIMESTAMPTZ),
    ("triggered_at", Type::TIMESTAMPTZ),
    ("trigger_price", Type::NUMERIC),
    ("reject_reason", Type::TEXT),
];

/// Staging for order updates: per connection, emptied at each commit. Its
/// columns are `ORDER_UPDATE_COLUMNS`, exactly (a temporary table lives
/// as long as its session, and every session of the writer starts by
/// migrating, so an older shape never meets newer code).
const CREATE_ORDER_UPDATES: &str = "CREATE TEMP TABLE IF NOT EXISTS order_updates (
    order_id bigint, status text, price numeric, amended_quantity numeric, remaining_quantity numeric,
    executed_quantity numeric, executed_quote numeric, updated_seq bigint, updated_at timestamptz,
    closed_at timestamptz, triggered_at timestamptz, trigger_price numeric, reject_reason text)
    ON COMMIT DELETE ROWS";

const APPLY_ORDER_UPDATES: &str = "UPDATE orders o SET
    status = COALESCE(u.status, o.status),
    price = COALESCE(u.price, o.price),
    quantity = CASE WHEN u.amended_quantity IS NULL THEN o.quantity
                    ELSE o.executed_quantity + u.amended_quantity END,
    remaining_quantity = COALESCE(u.remaining_quantity, o.remaining_quantity),
    executed_quantity = o.executed_quantity + u.executed_quantity,
    executed_quote = o.executed_quote + u.executed_quote,
    updated_seq = u.updated_seq,
    updated_at = u.updated_at,
    closed_at = COALESCE(u.closed_at, o.closed_at),
    triggered_at = COALESCE(u.triggered_at, o.triggered_at),
    trigger_price = COALESCE(u.trigger_price, o.trigger_price),
    reject_reason = COALESCE(u.reject_reason, o.reject_reason)
    FROM order_updates u WHERE o.order_id = u.order_id";

/// A new order list's whole row.
struct NewListRow {
    list_id: i64,
    user_id: i32,
    market_id: i32,
    contingency: &'static str,
    list_client_id: Option<String>,
    status: &'static str,
    order_ids: Vec<i64>,
    created_seq: i64,
    created_at: SystemTime,
    updated_seq: i64,
    updated_at: SystemTime,
}

impl SqlRow<11> for NewListRow {
    fn params(&self) -> [&(dyn ToSql + Sync); 11] {
        [
            &self.list_id,
            &self.user_id,
            &self.market_id,
            &self.contingency,
            &self.list_client_id,
            &self.status,
            &self.order_ids,
            &self.created_seq,
            &self.created_at,
            &self.updated_seq,
            &self.updated_at,
        ]
    }
}

const LIST_COLUMNS: [(&str, Type); 11] = [
    ("list_id", Type::INT8),
    ("user_id", Type::INT4),
    ("market_id", Type::INT4),
    ("contingency", Type::TEXT),
    ("list_client_id", Type::TEXT),
    ("status", Type::TEXT),
    ("order_ids", Type::INT8_ARRAY),
    ("created_seq", Type::INT8),
    ("created_at", Type::TIMESTAMPTZ),
    ("updated_seq", Type::INT8),
    ("updated_at", Type::TIMESTAMPTZ),
];

/// Lists opened before this row set that it ends: one statement for all.
const APPLY_LIST_DONE: &str =
    "UPDATE order_lists l SET status = 'done', updated_seq = u.seq, updated_at = u.at
    FROM unnest($1::bigint[], $2::bigint[], $3::timestamptz[]) AS u(list_id, seq, at)
    WHERE l.list_id = u.list_id";

fn list_rows(changes: &[ListChange]) -> Result<(Vec<NewListRow>, Vec<&ListChange>), RowError> {
    let mut new = Vec::new();
    let mut done = Vec::new();
    for change in changes {
        match &change.opening {
            Some(opening) => new.push(NewListRow {
                list_id: int8(change.list.0)?,
                user_id: int4(opening.user.0)?,
                market_id: int4(opening.market.0)?,
                contingency: contingency_name(opening.contingency),
                list_client_id: opening.client_list_id.clone(),
                status: if change.done { "done" } else { "open" },
                order_ids: vec![int8(opening.orders[0].0)?, int8(opening.orders[1].0)?],
                created_seq: int8(opening.created_seq)?,
                created_at: opening.created_at,
                updated_seq: int8(change.updated_seq)?,
                updated_at: change.updated_at,
            }),
            None if change.done => done.push(change),
            None => {}
        }
    }
    Ok((new, done))
}

async fn write_lists(tx: &Transaction<'_>, mode: WriteMode, rows: &RowSet) -> Result<usize, StoreError> {
    let (new, done) = list_rows(&rows.lists)?;
    put(tx, mode, "order_lists", &LIST_COLUMNS, &new).await?;
    if !done.is_empty() {
        let ids = done.iter().map(|l| int8(l.list.0)).collect::<Result<Vec<_>, _>>()?;
        let seqs = done.iter().map(|l| int8(l.updated_seq)).collect::<Result<Vec<_>, _>>()?;
        let times: Vec<SystemTime> = done.iter().map(|l| l.updated_at).collect();
        let updated = tx.execute(APPLY_LIST_DONE, &[&ids, &seqs, &times]).await?;
        if updated != done.len() as u64 {
            return Err(RowError(format!(
                "{} order lists ended but only {updated} exist in the database",
                done.len()
            ))
            .into());
        }
    }
    Ok(new.len() + done.len())
}

fn order_rows(
    changes: &[OrderChange],
    catalog: &Catalog,
) -> Result<(Vec<NewOrderRow>, Vec<OrderUpdateRow>), RowError> {
    let mut new = Vec::new();
    let mut updates = Vec::new();
    for change in changes {
        let market = catalog.market(change.market)?;
        let scale = &market.scale;
        let overflow = || RowError(format!("order {} does not fit a decimal", change.order));
        let base = |lots| scale.base(lots).map(Amount).ok_or_else(overflow);
        let price = change.price.map(|p| scale.price(p).map(Amount).ok_or_else(overflow)).transpose()?;
        let executed = base(engine_core::Lots(change.executed_lots))?;
        let executed_quote = Amount(
            scale::wide_units(change.executed_quote_units, scale.quote_decimals).ok_or_else(overflow)?,
        );
        let remaining = change.remaining.map(base).transpose()?;
        let triggered_price =
            change.triggered.map(|(p, _)| scale.price(p).map(Amount).ok_or_else(overflow)).transpose()?;
        match &change.opening {
            Some(opening) => {
                use engine_core::OrderKind;
                let (order_type, tif, quantity, quote_amount) = match opening.kind {
                    OrderKind::Limit { qty, tif, .. } => ("limit", Some(tif_name(tif)), Some(qty), None),
                    OrderKind::Iceberg { qty, tif, .. } => ("iceberg", Some(tif_name(tif)), Some(qty), None),
                    OrderKind::StopLimit { qty, tif, .. } => {
                        ("stop_limit", Some(tif_name(tif)), Some(qty), None)
                    }
                    OrderKind::StopMarket { qty, .. } => ("stop_market", None, Some(qty), None),
                    OrderKind::Market { qty } => ("market", None, Some(qty), None),
                    OrderKind::MarketByQuote { amount } => (
                        "market_by_quote",
                        None,
                        None,
                        Some(Amount(scale::units(amount, scale.quote_decimals))),
                    ),
                };
                // An amend within the same row set changes the asked quantity.
                let quantity = change.amended_quantity.or(quantity).map(base).transpose()?;
                let trigger = opening.kind.trigger();
                let stop_price = trigger
                    .and_then(|t| t.stop)
                    .map(|p| scale.price(p).map(Amount).ok_or_else(overflow))
                    .transpose()?;
                let visible = match opening.kind {
                    OrderKind::Iceberg { visible, .. } => Some(visible),
                    OrderKind::StopLimit { visible, .. } if visible.0 > 0 => Some(visible),
                    _ => None,
                };
                new.push(NewOrderRow {
                    order_id: int8(change.order.0)?,
                    user_id: int4(change.user.0)?,
                    market_id: int4(change.market.0)?,
                    side: side_name(opening.side),
                    order_type,
                    time_in_force: tif,
                    price,
                    quantity,
                    quote_amount,
                    client_order_id: opening.client_order_id.clone(),
                    stp: stp_name(opening.stp),
                    status: change.status.unwrap_or("new"),
                    remaining: remaining.unwrap_or(Amount(Decimal::ZERO)),
                    executed,
                    executed_quote,
                    created_seq: int8(opening.created_seq)?,
                    created_at: opening.created_at,
                    updated_seq: int8(change.updated_seq)?,
                    updated_at: change.updated_at,
                    closed_at: change.closed_at,
                    trigger_kind: trigger.map(|t| trigger_kind_name(t.kind)),
                    stop_price,
                    trailing_bips: trigger
                        .filter(|t| t.trailing_bips > 0)
                        .map(|t| i16::try_from(t.trailing_bips).map_err(|_| overflow()))
                        .transpose()?,
                    triggered_at: change.triggered.map(|(_, at)| at),
                    trigger_price: triggered_price,
                    visible_quantity: visible.map(base).transpose()?,
                    list_id: opening.list.map(|l| int8(l.0)).transpose()?,
                    reject_reason: change.reject_reason.clone(),
                });
            }
            None => updates.push(OrderUpdateRow {
                order_id: int8(change.order.0)?,
                status: change.status,
                price,
                amended_quantity: change.amended_quantity.map(base).transpose()?,
                remaining,
                executed,
                executed_quote,
                updated_seq: int8(change.updated_seq)?,
                updated_at: change.updated_at,
                closed_at: change.closed_at,
                triggered_at: change.triggered.map(|(_, at)| at),
                trigger_price: triggered_price,
                reject_reason: change.reject_reason.clone(),
            }),
        }
    }
    Ok((new, updates))
}

/// Sends `rows` into `table` by binary COPY or by multi-row INSERTs.
async fn put<const N: usize, R: SqlRow<N>>(
    tx: &Transaction<'_>,
    mode: WriteMode,
    table: &str,
    columns: &[(&str, Type); N],
    rows: &[R],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let names = names.join(", ");
    match mode {
        WriteMode::Copy => {
            let types: Vec<Type> = columns.iter().map(|(_, ty)| ty.clone()).collect();
            let sink = tx.copy_in(&format!("COPY {table} ({names}) FROM STDIN BINARY")).await?;
            let writer = BinaryCopyInWriter::new(sink, &types);
            pin_mut!(writer);
            for row in rows {
                writer.as_mut().write(&row.params()).await?;
            }
            writer.finish().await?;
        }
        WriteMode::Insert => {
            // PostgreSQL takes at most 65,535 parameters per statement.
            let per_statement = (65_535 / N).min(1_000);
            for chunk in rows.chunks(per_statement) {
                let mut sql = format!("INSERT INTO {table} ({names}) VALUES ");
                let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(chunk.len() * N);
                for (index, row) in chunk.iter().enumerate() {
                    sql.push_str(if index == 0 { "(" } else { ", (" });
                    for (column, (_, ty)) in columns.iter().enumerate() {
                        if column > 0 {
                            sql.push_str(", ");
                        }
                        // Typed placeholders: the amount columns are a domain.
                        sql.push_str(&format!("${}::{}", index * N + column + 1, ty.name()));
                    }
                    sql.push(')');
                    params.extend(row.params());
                }
                tx.execute(sql.as_str(), &params).await?;
            }
        }
    }
    Ok(())
}

/// Writes `rows` and moves the cursor, in one transaction. `expected_seq`
/// is the cursor the rows follow; a database whose cursor is elsewhere (a
/// second writer, or a state reloaded wrongly) is refused. Returns the rows
/// of the history tables it inserted or updated (the cursor's not counted).
pub async fn write(
    client: &mut Client,
    rows: &RowSet,
    catalog: &Catalog,
    expected_seq: u64,
    mode: WriteMode,
) -> Result<u64, StoreError> {
    if rows.last.is_none() {
        return Ok(0);
    }
    let tx = client.transaction().await?;
    let written = write_rows(&tx, rows, catalog, expected_seq, mode).await?;
    tx.commit().await?;
    Ok(written)
}

/// [`write`] within `tx`, without committing (seeding from an image adds
/// its record to the same transaction).
pub(crate) async fn write_rows(
    tx: &Transaction<'_>,
    rows: &RowSet,
    catalog: &Catalog,
    expected_seq: u64,
    mode: WriteMode,
) -> Result<u64, StoreError> {
    let Some(last) = rows.last else { return Ok(0) };
    let cursor: i64 =
        tx.query_one("SELECT last_seq FROM writer_cursor WHERE id FOR UPDATE", &[]).await?.get(0);
    if cursor != int8(expected_seq)? {
        return Err(RowError(format!(
            "the database's cursor is at {cursor}, not at {expected_seq}: is another writer running?"
        ))
        .into());
    }
    write_reference(tx, rows).await?;
    let (new_orders, order_updates) = order_rows(&rows.orders, catalog)?;
    put(tx, mode, "orders", &ORDER_COLUMNS, &new_orders).await?;
    if !order_updates.is_empty() {
        tx.batch_execute(CREATE_ORDER_UPDATES).await?;
        put(tx, mode, "order_updates", &ORDER_UPDATE_COLUMNS, &order_updates).await?;
        let updated = tx.execute(APPLY_ORDER_UPDATES, &[]).await?;
        if updated != order_updates.len() as u64 {
            return Err(RowError(format!(
                "{} orders changed but only {updated} exist in the database",
                order_updates.len()
            ))
            .into());
        }
    }
    let lists_written = write_lists(tx, mode, rows).await?;
    put(tx, mode, "trades", &TRADE_COLUMNS, &rows.trades).await?;
    put(tx, mode, "ledger", &LEDGER_COLUMNS, &rows.ledger).await?;
    write_balances(tx, rows).await?;
    write_candles(tx, rows, catalog).await?;
    let last_at = time_of(last.timestamp_ns);
    tx.execute(
        "UPDATE writer_cursor SET last_seq = $1, last_command_at = $2, written_at = now() WHERE id",
        &[&int8(last.seq)?, &last_at],
    )
    .await?;
    let written = rows.reference.len()
        + rows.users.len()
        + new_orders.len()
        + order_updates.len()
        + lists_written
        + rows.trades.len()
        + rows.ledger.len()
        + rows.balances.len()
        + rows.candles.len();
    Ok(written as u64)
}

async fn write_reference(tx: &Transaction<'_>, rows: &RowSet) -> Result<(), StoreError> {
    for change in &rows.reference {
        match change {
            Reference::Asset { asset, symbol, decimals, seq, at } => {
                tx.execute(
                    "INSERT INTO assets (asset_id, symbol, decimals, created_seq, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                    &[&int4(asset.0)?, symbol, &i16::from(*decimals), &int8(*seq)?, at],
                )
                .await?;
            }
            Reference::Market { market, name, rules, scale, status, seq, at } => {
                let min_quantity = scale.base(rules.min_qty).unwrap_or(Decimal::ZERO);
                let min_notional = scale::units(rules.min_notional, scale.quote_decimals);
                tx.execute(
                    "INSERT INTO markets (market_id, name, base_asset_id, quote_asset_id, base_units_per_lot, \
                     quote_units_per_tick, tick_size, lot_size, min_quantity, min_notional, maker_fee_ppm, \
                     taker_fee_ppm, status, created_seq, created_at, updated_seq) \
                     VALUES ($1, $2, $3, $4, $5::numeric, $6::numeric, $7::numeric, $8::numeric, $9::numeric, \
                     $10::numeric, $11, $12, $13, $14, $15, $14)",
                    &[
                        &int4(market.0)?,
                        name,
                        &int4(rules.base.0)?,
                        &int4(rules.quote.0)?,
                        &Decimal::from(rules.base_units_per_lot),
                        &Decimal::from(rules.quote_units_per_tick),
                        &scale.tick_size,
                        &scale.lot_size,
                        &min_quantity,
                        &min_notional,
                        &i32::try_from(rules.maker_fee_ppm).unwrap_or(i32::MAX),
                        &i32::try_from(rules.taker_fee_ppm).unwrap_or(i32::MAX),
                        &status_name(*status),
                        &int8(*seq)?,
                        at,
                    ],
                )
                .await?;
            }
            Reference::MarketStatus { market, status, seq } => {
                tx.execute(
                    "UPDATE markets SET status = $2, updated_seq = $3 WHERE market_id = $1",
                    &[&int4(market.0)?, &status_name(*status), &int8(*seq)?],
                )
                .await?;
            }
            Reference::MarketFees { market, maker_fee_ppm, taker_fee_ppm, seq } => {
                tx.execute(
                    "UPDATE markets SET maker_fee_ppm = $2, taker_fee_ppm = $3, updated_seq = $4 WHERE market_id = $1",
                    &[
                        &int4(market.0)?,
                        &i32::try_from(*maker_fee_ppm).unwrap_or(i32::MAX),
                        &i32::try_from(*taker_fee_ppm).unwrap_or(i32::MAX),
                        &int8(*seq)?,
                    ],
                )
                .await?;
            }
            Reference::ApiKey { user, key, seq, at } => {
                write_users_before(tx, rows, *seq).await?;
                tx.execute(
                    "INSERT INTO api_keys (api_key, user_id, created_seq, created_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (api_key) DO UPDATE SET user_id = EXCLUDED.user_id, created_seq = EXCLUDED.created_seq, \
                     created_at = EXCLUDED.created_at, revoked_seq = NULL, revoked_at = NULL",
                    &[key, &int4(user.0)?, &int8(*seq)?, at],
                )
                .await?;
            }
            Reference::ApiKeyRevoked { key, seq, at, .. } => {
                tx.execute(
                    "UPDATE api_keys SET revoked_seq = $2, revoked_at = $3 WHERE api_key = $1",
                    &[key, &int8(*seq)?, at],
                )
                .await?;
            }
        }
    }
    write_users_before(tx, rows, u64::MAX).await
}

/// Users go in one statement; an API key needs its user first.
async fn write_users_before(tx: &Transaction<'_>, rows: &RowSet, seq: u64) -> Result<(), StoreError> {
    let users: Vec<&(UserId, u64, SystemTime)> = rows.users.iter().filter(|(_, s, _)| *s <= seq).collect();
    if users.is_empty() {
        return Ok(());
    }
    let ids = users.iter().map(|(u, _, _)| int4(u.0)).collect::<Result<Vec<i32>, _>>()?;
    let seqs = users.iter().map(|(_, s, _)| int8(*s)).collect::<Result<Vec<i64>, _>>()?;
    let times: Vec<SystemTime> = users.iter().map(|(_, _, t)| *t).collect();
    tx.execute(
        "INSERT INTO users (user_id, created_seq, created_at) \
         SELECT * FROM unnest($1::int4[], $2::int8[], $3::timestamptz[]) ON CONFLICT (user_id) DO NOTHING",
        &[&ids, &seqs, &times],
    )
    .await?;
    Ok(())
}

async fn write_balances(tx: &Transaction<'_>, rows: &RowSet) -> Result<(), StoreError> {
    if rows.balances.is_empty() {
        return Ok(());
    }
    let mut users = Vec::with_capacity(rows.balances.len());
    let mut assets = Vec::with_capacity(rows.balances.len());
    let mut available = Vec::with_capacity(rows.balances.len());
    let mut locked = Vec::with_capacity(rows.balances.len());
    let mut seqs = Vec::with_capacity(rows.balances.len());
    for ((user, asset), row) in &rows.balances {
        users.push(int4(user.0)?);
        assets.push(int4(asset.0)?);
        available.push(Amount(scale::units(row.available, row.decimals)));
        locked.push(Amount(scale::units(row.locked, row.decimals)));
        seqs.push(int8(row.seq)?);
    }
    tx.execute(
        "INSERT INTO balances (user_id, asset_id, available, locked, updated_seq) \
         SELECT * FROM unnest($1::int4[], $2::int4[], $3::numeric[], $4::numeric[], $5::int8[]) \
         ON CONFLICT (user_id, asset_id) DO UPDATE SET available = EXCLUDED.available, \
         locked = EXCLUDED.locked, updated_seq = EXCLUDED.updated_seq",
        &[&users, &assets, &available, &locked, &seqs],
    )
    .await?;
    Ok(())
}

async fn write_candles(tx: &Transaction<'_>, rows: &RowSet, catalog: &Catalog) -> Result<(), StoreError> {
    if rows.candles.is_empty() {
        return Ok(());
    }
    let count = rows.candles.len();
    let (mut markets, mut times, mut trades, mut first, mut last) = (
        Vec::with_capacity(count),
        Vec::with_capacity(count),
        Vec::with_capacity(count),
        Vec::new(),
        Vec::new(),
    );
    let mut prices: [Vec<Amount>; 4] = Default::default();
    let (mut volumes, mut quote_volumes) = (Vec::with_capacity(count), Vec::with_capacity(count));
    let (mut taker_volumes, mut taker_quote_volumes) = (Vec::with_capacity(count), Vec::with_capacity(count));
    for candle in &rows.candles {
        let market: &CatalogMarket = catalog.market(candle.market)?;
        let scale = &market.scale;
        let overflow = || RowError(format!("a candle of market {} does not fit a decimal", candle.market));
        markets.push(int4(candle.market.0)?);
        times.push(minute_start(candle.minute));
        for (column, ticks) in prices.iter_mut().zip([candle.open, candle.high, candle.low, candle.close]) {
            column.push(Amount(scale.price(ticks).ok_or_else(overflow)?));
        }
        volumes
            .push(Amount(scale::wide_units(candle.volume_units, scale.base_decimals).ok_or_else(overflow)?));
        quote_volumes
            .push(Amount(scale::wide_units(candle.quote_units, scale.quote_decimals).ok_or_else(overflow)?));
        taker_volumes.push(Amount(
            scale::wide_units(candle.taker_buy_units, scale.base_decimals).ok_or_else(overflow)?,
        ));
        taker_quote_volumes.push(Amount(
            scale::wide_units(candle.taker_buy_quote_units, scale.quote_decimals).ok_or_else(overflow)?,
        ));
        trades.push(int8(candle.trades)?);
        first.push(int8(candle.first_trade.0)?);
        last.push(int8(candle.last_trade.0)?);
    }
    tx.execute(
        "INSERT INTO candles_1m (market_id, open_time, open, high, low, close, volume, quote_volume, trades, \
         first_trade_id, last_trade_id, taker_buy_volume, taker_buy_quote_volume) \
         SELECT * FROM unnest($1::int4[], $2::timestamptz[], $3::numeric[], $4::numeric[], $5::numeric[], \
         $6::numeric[], $7::numeric[], $8::numeric[], $9::int8[], $10::int8[], $11::int8[], $12::numeric[], \
         $13::numeric[]) \
         ON CONFLICT (market_id, open_time) DO UPDATE SET \
         high = GREATEST(candles_1m.high, EXCLUDED.high), low = LEAST(candles_1m.low, EXCLUDED.low), \
         close = EXCLUDED.close, volume = candles_1m.volume + EXCLUDED.volume, \
         quote_volume = candles_1m.quote_volume + EXCLUDED.quote_volume, trades = candles_1m.trades + EXCLUDED.trades, \
         last_trade_id = EXCLUDED.last_trade_id, \
         taker_buy_volume = candles_1m.taker_buy_volume + EXCLUDED.taker_buy_volume, \
         taker_buy_quote_volume = candles_1m.taker_buy_quote_volume + EXCLUDED.taker_buy_quote_volume",
        &[
            &markets,
            &times,
            &prices[0],
            &prices[1],
            &prices[2],
            &prices[3],
            &volumes,
            &quote_volumes,
            &trades,
            &first,
            &last,
            &taker_volumes,
            &taker_quote_volumes,
        ],
    )
    .await?;
    Ok(())
}

/// The stamp the database's cursor stands at.
pub fn cursor_stamp(loaded: &Loaded) -> Stamp {
    Stamp { seq: loaded.cursor_seq, timestamp_ns: loaded.cursor_timestamp_ns }
}
