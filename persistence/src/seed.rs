//! Seeding an empty history database from a snapshot image: the state the
//! image holds, written as the writer's own rows would be, so that the
//! writer can go on from the image's sequence number as usual.
//!
//! A cluster node that compacted its log cannot regenerate the history
//! before its oldest image; a database attached to it afterwards can only
//! start at an image. Seeding is an operator's explicit action
//! (`exctl database seed-from-image`, which asks the node's writer through
//! the admin API: [`crate::WriterStatus::request_seed`]), never automatic,
//! and it never overwrites anything: it is refused unless the database
//! holds no history at all.
//!
//! One transaction writes: the reference data (assets, markets with their
//! rules and status, users, API key identifiers), every balance as one
//! ledger row of cause `opening` and its `balances` row, every open order
//! (resting, waiting for its trigger, or an OTO's pending order) and open
//! order list, the `seeded_from` record, and the cursor at the image's
//! sequence number. What the image does not carry is not invented: no
//! trade, closed order, candle or ledger row from before it.
//!
//! What this module must never do: write into a database that holds
//! anything (the check and the rows are one transaction, behind the
//! cursor's row lock), or write a balance the ledger does not explain.

use std::time::SystemTime;

use engine_core::{
    Engine, ListId, Lots, OrderId, OrderKind, ThenKind, TimeInForce, Units, UserId, WaitingOrder,
};
use tokio_postgres::Client;

use crate::rows::{
    int4, int8, time_of, BalanceRow, Balances, Catalog, Cause, LedgerRow, ListChange, ListOpening,
    OrderChange, OrderOpening, Reference, RowError, RowSet, Stamp, PENDING_STATUS,
};
use crate::scale::{self, Amount};
use crate::tables::{self, StoreError, WriteMode};

/// The longest reason an operator may give (it is stored with the record).
pub const SEED_REASON_CHARS_MAX: usize = 500;

/// A checked snapshot image a database may be seeded from.
pub struct SeedImage {
    /// The engine at the image's sequence number.
    pub engine: Engine,
    /// The stamp of the image's last command.
    pub last_timestamp_ns: u64,
    /// The image's position in the replicated log.
    pub raft_index: u64,
    pub raft_term: u64,
}

/// What the operator asked for.
#[derive(Clone, Debug)]
pub struct SeedRequest {
    /// Why, kept in `seeded_from.reason` (1 to [`SEED_REASON_CHARS_MAX`]
    /// characters).
    pub reason: String,
    /// The node whose writer seeds (kept in `seeded_from.node_id`).
    pub node_id: u64,
}

/// What a seeding wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seeded {
    pub image_seq: u64,
    pub raft_index: u64,
    pub raft_term: u64,
    pub assets: usize,
    pub markets: usize,
    pub users: usize,
    /// Balances written (non-zero ones: one ledger row each).
    pub balances: usize,
    /// Open orders written (resting, waiting and pending).
    pub orders: usize,
    pub order_lists: usize,
}

/// Why a seeding did not happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeedError {
    /// Refused by its preconditions; nothing was written. The message says
    /// what to do instead.
    Refused(String),
    /// It could not be done now (the database, the image); nothing was
    /// written. The message says why.
    Failed(String),
}

impl std::fmt::Display for SeedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SeedError::Refused(why) | SeedError::Failed(why) => f.write_str(why),
        }
    }
}

/// Checks an operator's reason.
pub fn check_reason(reason: &str) -> Result<(), SeedError> {
    let chars = reason.trim().chars().count();
    if chars == 0 || chars > SEED_REASON_CHARS_MAX {
        return Err(SeedError::Refused(format!(
            "give the reason for seeding (1 to {SEED_REASON_CHARS_MAX} characters, kept in the database's \
             seeded_from record): exctl database seed-from-image --reason '...'"
        )));
    }
    Ok(())
}

/// The rows of the state `image` holds, as of its sequence number, and
/// the catalog and balances the writer carries on with.
pub fn rows_from_image(image: &SeedImage) -> Result<(RowSet, Catalog, Balances, Seeded), RowError> {
    let snapshot = image.engine.snapshot();
    let seq = image.engine.last_seq();
    if seq == 0 {
        return Err(RowError(
            "the image holds no command (sequence 0): there is nothing to seed from".into(),
        ));
    }
    let at = time_of(image.last_timestamp_ns);
    let mut rows = RowSet::new();
    let mut catalog = Catalog::default();
    let mut balances = Balances::new();
    rows.last = Some(Stamp { seq, timestamp_ns: image.last_timestamp_ns });

    for (asset, _) in &snapshot.assets {
        if asset.id.0 as usize != catalog.assets.len() {
            return Err(RowError(format!("the image's asset {} is out of place", asset.id)));
        }
        catalog.assets.push((asset.symbol.to_string(), asset.decimals));
        rows.reference.push(Reference::Asset {
            asset: asset.id,
            symbol: asset.symbol.to_string(),
            decimals: asset.decimals,
            seq,
            at,
        });
    }
    for market in &snapshot.markets {
        let entry = catalog.add_market(market.id, &market.rules)?;
        rows.reference.push(Reference::Market {
            market: market.id,
            name: entry.name.clone(),
            rules: market.rules,
            scale: entry.scale,
            status: market.status,
            seq,
            at,
        });
    }
    let users = image.engine.user_count();
    if snapshot.balances.len() > users as usize {
        return Err(RowError(format!(
            "the image has balances of {} users but only {users} users",
            snapshot.balances.len()
        )));
    }
    rows.users.extend((0..users).map(|user| (UserId(user), seq, at)));
    for entry in &snapshot.api_keys {
        rows.reference.push(Reference::ApiKey { user: entry.user, key: entry.key.to_string(), seq, at });
    }

    // Each balance opens with one ledger row whose change is the whole
    // balance: the ledger's changes add up to the balances, as always.
    let mut event_index = 0i32;
    for (user, list) in snapshot.balances.iter().enumerate() {
        let user = UserId(u32::try_from(user).map_err(|_| RowError("too many users".into()))?);
        for (asset, balance) in list.iter().enumerate() {
            if balance.available == Units(0) && balance.locked == Units(0) {
                continue;
            }
            let asset =
                engine_core::AssetId(u32::try_from(asset).map_err(|_| RowError("too many assets".into()))?);
            let decimals = catalog.decimals(asset)?;
            rows.ledger.push(LedgerRow {
                seq: int8(seq)?,
                event_index,
                user_id: int4(user.0)?,
                asset_id: int4(asset.0)?,
                available: Amount(scale::units(balance.available, decimals)),
                locked: Amount(scale::units(balance.locked, decimals)),
                available_change: Amount(scale::units(balance.available, decimals)),
                locked_change: Amount(scale::units(balance.locked, decimals)),
                cause: Cause::Opening.name(),
                order_id: None,
                trade_id: None,
                recorded_at: at,
            });
            event_index = event_index.checked_add(1).ok_or_else(|| RowError("too many balances".into()))?;
            rows.balances.insert(
                (user, asset),
                BalanceRow { available: balance.available, locked: balance.locked, decimals, seq },
            );
            balances.insert((user, asset), (balance.available, balance.locked));
        }
    }

    let list_of = |order: OrderId| -> Option<ListId> {
        snapshot.lists.iter().find(|list| list.orders.contains(&order)).map(|list| list.id)
    };
    let opened = |order: OrderId,
                  user: UserId,
                  market: engine_core::MarketId,
                  side: engine_core::Side,
                  kind: OrderKind,
                  client_order_id: Option<String>,
                  stp: engine_core::SelfTradePrevention,
                  timestamp_ns: u64| OrderChange {
        order,
        user,
        market,
        opening: Some(OrderOpening {
            side,
            kind,
            client_order_id,
            stp,
            // The command that placed it is before the image: its number
            // is not known, its time is.
            created_seq: seq,
            created_at: time_of(timestamp_ns),
            list: list_of(order),
        }),
        price: kind.price(),
        amended_quantity: None,
        status: Some("new"),
        remaining: kind.qty(),
        executed_lots: 0,
        executed_quote_units: 0,
        updated_seq: seq,
        updated_at: at,
        closed_at: None,
        triggered: None,
        reject_reason: None,
    };
    for resting in &snapshot.orders {
        let market = catalog.market(resting.market)?;
        let hidden = snapshot.icebergs.iter().find(|part| part.order == resting.id);
        let tif = if resting.post_only { TimeInForce::PostOnly } else { TimeInForce::Gtc };
        let open = Lots(resting.remaining.0 + hidden.map_or(0, |part| part.hidden.0));
        let qty = Lots(resting.filled.0 + open.0);
        let kind = match hidden {
            Some(part) => OrderKind::Iceberg { price: resting.price, qty, visible: part.visible, tif },
            None => OrderKind::Limit { price: resting.price, qty, tif },
        };
        let mut change = opened(
            resting.id,
            resting.user,
            resting.market,
            resting.side,
            kind,
            resting.client_order_id.map(|c| c.to_string()),
            resting.stp,
            resting.timestamp_ns,
        );
        change.remaining = Some(open);
        if resting.filled.0 > 0 {
            // The image keeps how much filled, not at which prices: a
            // resting order's fills as a maker were at its own price, the
            // best guess for what it paid before the image.
            change.status = Some("partially_filled");
            change.executed_lots = resting.filled.0;
            change.executed_quote_units = market.scale.quote_units(resting.price, resting.filled);
        }
        rows.orders.push(change);
    }
    for waiting in &snapshot.waiting {
        let WaitingOrder { id, user, market, side, price, qty, stp, client_order_id, timestamp_ns, .. } =
            *waiting;
        catalog.market(market)?;
        let kind = match waiting.then {
            ThenKind::Market => OrderKind::StopMarket { trigger: waiting.trigger, qty },
            ThenKind::Limit(tif) => {
                OrderKind::StopLimit { trigger: waiting.trigger, price, qty, tif, visible: waiting.visible }
            }
        };
        let client = client_order_id.map(|c| c.to_string());
        rows.orders.push(opened(id, user, market, side, kind, client, stp, timestamp_ns));
    }
    for pending in &snapshot.pending {
        catalog.market(pending.market)?;
        let client = pending.client_order_id.map(|c| c.to_string());
        let mut change = opened(
            pending.id,
            pending.user,
            pending.market,
            pending.side,
            pending.kind,
            client,
            pending.stp,
            pending.timestamp_ns,
        );
        change.status = Some(PENDING_STATUS);
        rows.orders.push(change);
    }
    for list in &snapshot.lists {
        rows.lists.push(ListChange {
            list: list.id,
            opening: Some(ListOpening {
                user: list.user,
                market: list.market,
                contingency: list.contingency,
                client_list_id: list.client_list_id.map(|c| c.to_string()),
                orders: list.orders,
                created_seq: seq,
                created_at: at,
            }),
            done: false,
            updated_seq: seq,
            updated_at: at,
        });
    }
    rows.events = 1;
    let seeded = Seeded {
        image_seq: seq,
        raft_index: image.raft_index,
        raft_term: image.raft_term,
        assets: catalog.assets.len(),
        markets: catalog.markets.len(),
        users: users as usize,
        balances: rows.balances.len(),
        orders: rows.orders.len(),
        order_lists: rows.lists.len(),
    };
    Ok((rows, catalog, balances, seeded))
}

/// The history tables a seeded database must find empty.
const HISTORY_TABLES: [&str; 11] = [
    "seeded_from",
    "assets",
    "markets",
    "users",
    "api_keys",
    "orders",
    "order_lists",
    "trades",
    "ledger",
    "balances",
    "candles_1m",
];

/// Writes `rows` (from [`rows_from_image`]) and the `seeded_from` record,
/// and sets the cursor to the image, in one transaction; refused unless
/// the database holds no history at all. Returns the rows written.
pub async fn write(
    client: &mut Client,
    rows: &RowSet,
    catalog: &Catalog,
    seeded: &Seeded,
    request: &SeedRequest,
    mode: WriteMode,
) -> Result<u64, SeedError> {
    let failed = |error: StoreError| SeedError::Failed(format!("seeding the database: {}", describe(error)));
    let tx = client.transaction().await.map_err(|e| failed(e.into()))?;
    // The cursor's row lock first: a writer committing meanwhile waits,
    // and then finds the cursor moved.
    let cursor: i64 = tx
        .query_one("SELECT last_seq FROM writer_cursor WHERE id FOR UPDATE", &[])
        .await
        .map_err(|e| failed(e.into()))?
        .get(0);
    let mut holding = Vec::new();
    for table in HISTORY_TABLES {
        let any: bool = tx
            .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), &[])
            .await
            .map_err(|e| failed(e.into()))?
            .get(0);
        if any {
            holding.push(table);
        }
    }
    if cursor != 0 || !holding.is_empty() {
        return Err(SeedError::Refused(format!(
            "the database is not empty (its cursor is at sequence {cursor}; rows in: {}): seeding writes only \
             into a database without history and never overwrites one. Attach an empty database to seed, or \
             feed this one from a node whose log reaches back to its cursor",
            if holding.is_empty() { "none".to_string() } else { holding.join(", ") }
        )));
    }
    let written = tables::write_rows(&tx, rows, catalog, 0, mode).await.map_err(failed)?;
    let last = rows.last.ok_or_else(|| SeedError::Failed("seeding: no image sequence number".into()))?;
    let command_at: SystemTime = time_of(last.timestamp_ns);
    let to_int8 = |value: u64| int8(value).map_err(|e| failed(e.into()));
    tx.execute(
        "INSERT INTO seeded_from (image_seq, raft_index, raft_term, image_command_at, node_id, reason) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &to_int8(seeded.image_seq)?,
            &to_int8(seeded.raft_index)?,
            &to_int8(seeded.raft_term)?,
            &command_at,
            &to_int8(request.node_id)?,
            &request.reason.trim(),
        ],
    )
    .await
    .map_err(|e| failed(e.into()))?;
    tx.commit().await.map_err(|e| failed(e.into()))?;
    Ok(written + 1)
}

fn describe(error: StoreError) -> String {
    match error {
        StoreError::Db(error) => tables::describe(&error),
        StoreError::Migration(message) => message,
        StoreError::Rows(error) => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_required_and_bounded() {
        for bad in ["", "   ", &"x".repeat(SEED_REASON_CHARS_MAX + 1)] {
            let error = check_reason(bad).unwrap_err();
            assert!(matches!(error, SeedError::Refused(_)), "{bad:?}");
            assert!(error.to_string().contains("--reason"), "{error}");
        }
        check_reason("reporting database for the auditors").unwrap();
        check_reason(&"é".repeat(SEED_REASON_CHARS_MAX)).unwrap();
    }
}
