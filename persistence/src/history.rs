//! History queries: trades, a user's orders and candles, read from the
//! tables the writer keeps. They see what the writer has written (see
//! [`crate::WriterStatus::lag_seq`] for how far that is behind).

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crate::scale::Amount;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row};

use crate::rows::TradeRow;
use crate::tables::StoreError;

/// Reads history over one shared connection, reconnecting when it drops.
pub struct History {
    url: String,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
    /// The last connection failure, so that a down database answers at
    /// once instead of every request waiting for a connect timeout.
    down_since: RwLock<Option<std::time::Instant>>,
    /// The database's `seeded_from` record once seen (it never changes).
    seeded: std::sync::OnceLock<SeededFrom>,
}

/// Where a seeded database's history starts (`crate::seed`): it holds
/// nothing of the commands up to `image_seq` but the state they left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeededFrom {
    pub image_seq: u64,
    /// The time of the image's last command.
    pub image_command_at: Option<SystemTime>,
}

/// Bounds of a history query. Times are milliseconds since the epoch;
/// `from_id` starts at that id (inclusive), for paging. With `from_ms` or
/// `from_id` the rows ascend from there; with neither, the newest come
/// first. `offset` rows are skipped first (market trades only).
#[derive(Clone, Copy, Debug, Default)]
pub struct Range {
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    pub from_id: Option<u64>,
    pub limit: u32,
    pub offset: u32,
}

/// One order as the `orders` table holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderRecord {
    pub order_id: i64,
    pub user_id: i32,
    pub market_id: i32,
    pub side: String,
    pub order_type: String,
    pub time_in_force: Option<String>,
    pub price: Option<Amount>,
    pub quantity: Option<Amount>,
    pub quote_amount: Option<Amount>,
    pub client_order_id: Option<String>,
    pub self_trade_prevention: String,
    pub status: String,
    pub remaining_quantity: Amount,
    pub executed_quantity: Amount,
    pub executed_quote: Amount,
    pub created_seq: i64,
    pub created_at: SystemTime,
    pub updated_seq: i64,
    pub updated_at: SystemTime,
    pub closed_at: Option<SystemTime>,
    /// A stop order's trigger: `stop_loss` or `take_profit`.
    pub trigger_kind: Option<String>,
    pub stop_price: Option<Amount>,
    pub trailing_bips: Option<i16>,
    pub triggered_at: Option<SystemTime>,
    /// The trade price that fired the trigger.
    pub trigger_price: Option<Amount>,
    pub visible_quantity: Option<Amount>,
    pub list_id: Option<i64>,
    pub reject_reason: Option<String>,
}

/// The columns [`order_record`] reads, in its order.
const ORDER_COLUMNS: &str = "order_id, user_id, market_id, side, type, time_in_force, price, quantity, \
     quote_amount, client_order_id, self_trade_prevention, status, remaining_quantity, executed_quantity, \
     executed_quote, created_seq, created_at, updated_seq, updated_at, closed_at, trigger_kind, stop_price, \
     trailing_bips, triggered_at, trigger_price, visible_quantity, list_id, reject_reason";

/// One side of a trade: what one order of the user did in it.
#[derive(Clone, Debug, PartialEq)]
pub struct UserTradeRow {
    pub trade_id: i64,
    pub seq: i64,
    pub market_id: i32,
    pub price: Amount,
    pub quantity: Amount,
    pub quote_quantity: Amount,
    pub order_id: i64,
    /// The order bought (base for quote).
    pub buyer: bool,
    /// The order was resting on the book.
    pub maker: bool,
    /// Charged in what the order received.
    pub fee: Amount,
    pub fee_asset_id: i32,
    pub executed_at: SystemTime,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Candle {
    pub open_time: SystemTime,
    pub open: Amount,
    pub high: Amount,
    pub low: Amount,
    pub close: Amount,
    pub volume: Amount,
    pub quote_volume: Amount,
    pub trades: i64,
    /// What takers bought, in base and in quote.
    pub taker_buy_volume: Amount,
    pub taker_buy_quote_volume: Amount,
}

/// Candle widths served; longer ones are built from one-minute candles.
pub const CANDLE_INTERVALS: &[(&str, u32)] =
    &[("1m", 1), ("5m", 5), ("15m", 15), ("30m", 30), ("1h", 60), ("4h", 240), ("1d", 1_440)];

/// A range's bounds as query parameters.
struct Bounds {
    from: Option<SystemTime>,
    to: Option<SystemTime>,
    from_id: Option<i64>,
    limit: i64,
    offset: i64,
}

impl Bounds {
    fn of(range: &Range) -> Bounds {
        Bounds {
            from: range.from_ms.map(time_ms),
            to: range.to_ms.map(time_ms),
            from_id: range.from_id.map(|id| i64::try_from(id).unwrap_or(i64::MAX)),
            limit: i64::from(range.limit),
            offset: i64::from(range.offset),
        }
    }

    /// Appends ` AND ...` for the market (when given) and each bound present,
    /// with its value as the next parameter.
    fn filter<'a>(
        &'a self,
        market: &'a Option<i32>,
        time_column: &str,
        id_column: &str,
        params: &mut Vec<&'a (dyn ToSql + Sync)>,
        sql: &mut String,
    ) {
        if let Some(market) = market {
            params.push(market);
            sql.push_str(&format!(" AND market_id = ${}", params.len()));
        }
        if let Some(from) = &self.from {
            params.push(from);
            sql.push_str(&format!(" AND {time_column} >= ${}", params.len()));
        }
        if let Some(to) = &self.to {
            params.push(to);
            sql.push_str(&format!(" AND {time_column} < ${}", params.len()));
        }
        if let Some(from_id) = &self.from_id {
            params.push(from_id);
            sql.push_str(&format!(" AND {id_column} >= ${}", params.len()));
        }
    }
}

impl Range {
    fn order(&self) -> &'static str {
        if self.from_ms.is_none() && self.from_id.is_none() {
            "DESC"
        } else {
            "ASC"
        }
    }
}

const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

fn time_ms(ms: u64) -> SystemTime {
    std::time::UNIX_EPOCH + Duration::from_millis(ms)
}

impl History {
    pub fn new(url: impl Into<String>) -> History {
        History {
            url: url.into(),
            client: tokio::sync::Mutex::new(None),
            down_since: RwLock::new(None),
            seeded: std::sync::OnceLock::new(),
        }
    }

    /// Where the database's history starts, if it was seeded from a
    /// snapshot image (None: it holds the whole history, or the writer has
    /// not created the table yet).
    pub async fn seeded_from(&self) -> Result<Option<SeededFrom>, StoreError> {
        if let Some(seeded) = self.seeded.get() {
            return Ok(Some(*seeded));
        }
        let client = self.client().await?;
        let row = client.query_opt("SELECT image_seq, image_command_at FROM seeded_from", &[]).await;
        let row = match row {
            Ok(row) => row,
            // SQLSTATE 42P01: the migration that adds the table is not applied yet.
            Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => None,
            Err(error) => return Err(StoreError::Db(error)),
        };
        Ok(row.map(|row| {
            let seeded = SeededFrom {
                image_seq: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
                image_command_at: row.get(1),
            };
            *self.seeded.get_or_init(|| seeded)
        }))
    }

    async fn client(&self) -> Result<Arc<Client>, StoreError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(client));
        }
        *slot = None;
        let recently_down = self
            .down_since
            .read()
            .ok()
            .and_then(|d| *d)
            .is_some_and(|since| since.elapsed() < RECONNECT_PAUSE);
        let mut config: tokio_postgres::Config = self.url.parse().map_err(StoreError::Db)?;
        config.connect_timeout(Duration::from_secs(if recently_down { 1 } else { 5 }));
        match config.connect(NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                let client = Arc::new(client);
                *slot = Some(Arc::clone(&client));
                if let Ok(mut down) = self.down_since.write() {
                    *down = None;
                }
                Ok(client)
            }
            Err(error) => {
                if let Ok(mut down) = self.down_since.write() {
                    down.get_or_insert_with(std::time::Instant::now);
                }
                Err(StoreError::Db(error))
            }
        }
    }

    /// Trades of a market, of a user (as maker or taker), or both, in
    /// trade id order. A trade is one row, even one a user made with
    /// themself: for a user's own rows, one per side, see
    /// [`History::user_trades`].
    pub async fn trades(
        &self,
        market: Option<i32>,
        user: Option<i32>,
        range: Range,
    ) -> Result<Vec<TradeRow>, StoreError> {
        let client = self.client().await?;
        let mut sql = String::from(
            "SELECT trade_id, seq, market_id, price, quantity, quote_quantity, taker_side, maker_order_id, \
             maker_user_id, taker_order_id, taker_user_id, maker_fee, maker_fee_asset_id, taker_fee, \
             taker_fee_asset_id, executed_at FROM trades WHERE true",
        );
        let bounds = Bounds::of(&range);
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        if let Some(user) = user.as_ref() {
            params.push(user);
            let n = params.len();
            sql.push_str(&format!(" AND (maker_user_id = ${n} OR taker_user_id = ${n})"));
        }
        bounds.filter(&market, "executed_at", "trade_id", &mut params, &mut sql);
        params.push(&bounds.limit);
        sql.push_str(&format!(" ORDER BY trade_id {} LIMIT ${}", range.order(), params.len()));
        params.push(&bounds.offset);
        sql.push_str(&format!(" OFFSET ${}", params.len()));
        let rows = client.query(sql.as_str(), &params).await?;
        Ok(rows.iter().map(trade_row).collect::<Result<_, _>>()?)
    }

    /// A user's side of each trade they took part in: one row per order,
    /// so a trade they made with themself (self-trade prevention off) is
    /// two rows, the buyer's and the seller's, each with its own order,
    /// fee and fee asset. In trade id order, then order id order; `limit`
    /// counts rows.
    pub async fn user_trades(
        &self,
        user: i32,
        market: Option<i32>,
        range: Range,
    ) -> Result<Vec<UserTradeRow>, StoreError> {
        let client = self.client().await?;
        let bounds = Bounds::of(&range);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&user];
        let mut filters = String::new();
        bounds.filter(&market, "executed_at", "trade_id", &mut params, &mut filters);
        params.push(&bounds.limit);
        let order = range.order();
        // Each half uses its own index (trades_by_maker, trades_by_taker).
        let sql = format!(
            "SELECT trade_id, seq, market_id, price, quantity, quote_quantity, taker_side, order_id, maker, \
             fee, fee_asset_id, executed_at FROM (\
             SELECT trade_id, seq, market_id, price, quantity, quote_quantity, taker_side, \
             maker_order_id AS order_id, true AS maker, maker_fee AS fee, maker_fee_asset_id AS fee_asset_id, \
             executed_at FROM trades WHERE maker_user_id = $1{filters} \
             UNION ALL \
             SELECT trade_id, seq, market_id, price, quantity, quote_quantity, taker_side, \
             taker_order_id, false, taker_fee, taker_fee_asset_id, executed_at \
             FROM trades WHERE taker_user_id = $1{filters}) AS sides \
             ORDER BY trade_id {order}, order_id {order} LIMIT ${}",
            params.len()
        );
        let rows = client.query(sql.as_str(), &params).await?;
        Ok(rows.iter().map(user_trade_row).collect::<Result<_, _>>()?)
    }

    /// A user's orders (open and closed), in order id order.
    pub async fn orders(
        &self,
        user: i32,
        market: Option<i32>,
        range: Range,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        let client = self.client().await?;
        let mut sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = $1");
        let bounds = Bounds::of(&range);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&user];
        bounds.filter(&market, "created_at", "order_id", &mut params, &mut sql);
        params.push(&bounds.limit);
        sql.push_str(&format!(" ORDER BY order_id {} LIMIT ${}", range.order(), params.len()));
        let rows = client.query(sql.as_str(), &params).await?;
        Ok(rows.iter().map(order_record).collect::<Result<_, _>>()?)
    }

    /// One of a user's orders, by id, or by client order id (the newest of
    /// the user's orders with it); `None` when the database has no such
    /// order of this user.
    pub async fn order(
        &self,
        user: i32,
        order_id: Option<i64>,
        client_order_id: Option<&str>,
    ) -> Result<Option<OrderRecord>, StoreError> {
        let client = self.client().await?;
        let row = match (order_id, client_order_id) {
            (Some(id), _) => {
                let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = $1 AND order_id = $2");
                client.query_opt(sql.as_str(), &[&user, &id]).await?
            }
            (None, Some(client_id)) => {
                let sql = format!(
                    "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = $1 AND client_order_id = $2 \
                     ORDER BY order_id DESC LIMIT 1"
                );
                client.query_opt(sql.as_str(), &[&user, &client_id]).await?
            }
            (None, None) => None,
        };
        Ok(row.as_ref().map(order_record).transpose()?)
    }

    /// The trades of one order (as maker or taker), oldest first, at most `limit`.
    pub async fn order_trades(&self, order: &OrderRecord, limit: u32) -> Result<Vec<TradeRow>, StoreError> {
        let client = self.client().await?;
        let limit = i64::from(limit);
        // The order's life bounds its trades in time, which the BRIN index
        // on execution time narrows cheaply.
        let rows = client
            .query(
                "SELECT trade_id, seq, market_id, price, quantity, quote_quantity, taker_side, maker_order_id, \
                 maker_user_id, taker_order_id, taker_user_id, maker_fee, maker_fee_asset_id, taker_fee, \
                 taker_fee_asset_id, executed_at FROM trades \
                 WHERE executed_at >= $1 AND executed_at <= $2 AND market_id = $3 \
                 AND ((maker_order_id = $4 AND maker_user_id = $5) OR (taker_order_id = $4 AND taker_user_id = $5)) \
                 ORDER BY trade_id LIMIT $6",
                &[&order.created_at, &order.updated_at, &order.market_id, &order.order_id, &order.user_id, &limit],
            )
            .await?;
        Ok(rows.iter().map(trade_row).collect::<Result<_, _>>()?)
    }

    /// Candles of `minutes` width (one of [`CANDLE_INTERVALS`]) in time
    /// order. Longer candles are aligned to the epoch (days start at 00:00 UTC).
    pub async fn candles(&self, market: i32, minutes: u32, range: Range) -> Result<Vec<Candle>, StoreError> {
        let client = self.client().await?;
        let from = time_ms(range.from_ms.unwrap_or(0));
        let to = time_ms(range.to_ms.unwrap_or(u64::MAX / 4_000_000));
        let limit = i64::from(range.limit);
        let rows = if minutes == 1 {
            client
                .query(
                    "SELECT open_time, open, high, low, close, volume, quote_volume, trades, taker_buy_volume, \
                     taker_buy_quote_volume FROM candles_1m \
                     WHERE market_id = $1 AND open_time >= $2 AND open_time < $3 ORDER BY open_time LIMIT $4",
                    &[&market, &from, &to, &limit],
                )
                .await?
        } else {
            let width = format!("{minutes} minutes");
            client
                .query(
                    "SELECT date_bin($5::text::interval, open_time, TIMESTAMPTZ 'epoch') AS bucket, \
                     (array_agg(open ORDER BY open_time))[1], max(high), min(low), \
                     (array_agg(close ORDER BY open_time DESC))[1], sum(volume), sum(quote_volume), \
                     sum(trades)::bigint, sum(taker_buy_volume), sum(taker_buy_quote_volume) FROM candles_1m \
                     WHERE market_id = $1 AND open_time >= $2 AND open_time < $3 \
                     GROUP BY bucket ORDER BY bucket LIMIT $4",
                    &[&market, &from, &to, &limit, &width],
                )
                .await?
        };
        let candles = rows
            .iter()
            .map(|row| {
                Ok(Candle {
                    open_time: row.try_get(0)?,
                    open: row.try_get(1)?,
                    high: row.try_get(2)?,
                    low: row.try_get(3)?,
                    close: row.try_get(4)?,
                    volume: row.try_get(5)?,
                    quote_volume: row.try_get(6)?,
                    trades: row.try_get(7)?,
                    taker_buy_volume: row.try_get(8)?,
                    taker_buy_quote_volume: row.try_get(9)?,
                })
            })
            .collect::<Result<Vec<Candle>, tokio_postgres::Error>>()?;
        Ok(candles)
    }
}

fn side(text: &str) -> &'static str {
    if text == "buy" {
        "buy"
    } else {
        "sell"
    }
}

pub fn trade_row(row: &Row) -> Result<TradeRow, tokio_postgres::Error> {
    Ok(TradeRow {
        trade_id: row.try_get(0)?,
        seq: row.try_get(1)?,
        market_id: row.try_get(2)?,
        price: row.try_get(3)?,
        quantity: row.try_get(4)?,
        quote_quantity: row.try_get(5)?,
        taker_side: side(row.try_get(6)?),
        maker_order_id: row.try_get(7)?,
        maker_user_id: row.try_get(8)?,
        taker_order_id: row.try_get(9)?,
        taker_user_id: row.try_get(10)?,
        maker_fee: row.try_get(11)?,
        maker_fee_asset_id: row.try_get(12)?,
        taker_fee: row.try_get(13)?,
        taker_fee_asset_id: row.try_get(14)?,
        executed_at: row.try_get(15)?,
    })
}

fn user_trade_row(row: &Row) -> Result<UserTradeRow, tokio_postgres::Error> {
    let taker_side = side(row.try_get(6)?);
    let maker: bool = row.try_get(8)?;
    let taker_buys = taker_side == "buy";
    Ok(UserTradeRow {
        trade_id: row.try_get(0)?,
        seq: row.try_get(1)?,
        market_id: row.try_get(2)?,
        price: row.try_get(3)?,
        quantity: row.try_get(4)?,
        quote_quantity: row.try_get(5)?,
        order_id: row.try_get(7)?,
        buyer: taker_buys != maker,
        maker,
        fee: row.try_get(9)?,
        fee_asset_id: row.try_get(10)?,
        executed_at: row.try_get(11)?,
    })
}

fn order_record(row: &Row) -> Result<OrderRecord, tokio_postgres::Error> {
    Ok(OrderRecord {
        order_id: row.try_get(0)?,
        user_id: row.try_get(1)?,
        market_id: row.try_get(2)?,
        side: row.try_get(3)?,
        order_type: row.try_get(4)?,
        time_in_force: row.try_get(5)?,
        price: row.try_get(6)?,
        quantity: row.try_get(7)?,
        quote_amount: row.try_get(8)?,
        client_order_id: row.try_get(9)?,
        self_trade_prevention: row.try_get(10)?,
        status: row.try_get(11)?,
        remaining_quantity: row.try_get(12)?,
        executed_quantity: row.try_get(13)?,
        executed_quote: row.try_get(14)?,
        created_seq: row.try_get(15)?,
        created_at: row.try_get(16)?,
        updated_seq: row.try_get(17)?,
        updated_at: row.try_get(18)?,
        closed_at: row.try_get(19)?,
        trigger_kind: row.try_get(20)?,
        stop_price: row.try_get(21)?,
        trailing_bips: row.try_get(22)?,
        triggered_at: row.try_get(23)?,
        trigger_price: row.try_get(24)?,
        visible_quantity: row.try_get(25)?,
        list_id: row.try_get(26)?,
        reject_reason: row.try_get(27)?,
    })
}
