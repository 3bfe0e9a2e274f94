//! The exchange's PostgreSQL side: the schema's migrations, the writer that
//! follows the matcher's events into the tables, and the history queries
//! the API serves from them.
//!
//! # What this crate owns
//!
//! * [`migrate`]: the numbered SQL migrations in `migrations/`, applied in
//!   order and recorded with their checksums (by `refinery`).
//! * [`Writer`]: a thread that takes batches of events from a [`Feed`] (the
//!   outbound ring's consumer offers them and never waits), turns them
//!   into rows ([`RowSet`]) and writes each set in one transaction together
//!   with its cursor (the last sequence number written). Trades, ledger
//!   rows and new orders go by binary `COPY`. Whatever the feed dropped,
//!   or the database never saw before a crash, the writer regenerates from
//!   the journal (snapshot at or before its cursor plus replay), or from
//!   any other [`Source`] (a cluster node's replicated log).
//! * [`seed`]: an empty database seeded from a cluster node's snapshot
//!   image, as an operator's explicit action, when the node's log no
//!   longer reaches back to the database's cursor.
//! * [`History`]: trades, a user's orders and OHLCV candles.
//! * [`cluster`]: throwaway PostgreSQL databases for tests and benchmarks.
//! * [`connection_string::check`]: a connection string refused before
//!   anything connects with it (without echoing its password).
//!
//! # What it must never do
//!
//! Block the matcher (the feed drops instead, and the journal makes up for
//! it), write a command's events twice or skip one (the cursor moves in the
//! same transaction as the rows, and is re-read after every failure), or
//! store an API secret (events do not carry them).

pub mod cluster;
pub mod connection_string;
mod history;
mod rows;
pub mod scale;
pub mod seed;
mod source;
mod tables;
mod writer;

pub use history::{
    trade_row, Candle, History, OrderRecord, Range, SeededFrom, UserTradeRow, CANDLE_INTERVALS,
};
pub use rows::{
    contingency_name, done_status, side_name, stp_name, trigger_kind_name, Balances, Batch, Catalog, Cause,
    LedgerRow, RowError, RowSet, Stamp, TradeRow, PENDING_STATUS,
};
pub use source::{JournalSource, Replay, Source};
pub use tables::{load, migrate, write, Loaded, StoreError, WriteMode};
pub use writer::{Failure, Feed, Stage, Writer, WriterConfig, WriterStatus, WRITER_LAG_MAX_DEFAULT};
