//! The writer: a thread that follows the matcher's events into PostgreSQL.
//!
//! It takes batches from a [`Feed`] that the outbound ring's consumer offers
//! without ever waiting: when the writer falls behind (a slow or absent
//! database), the feed drops batches and says so. The writer then
//! regenerates what it missed from the journal: it loads the newest
//! snapshot at or before its cursor, replays the journal up to the cursor,
//! and replays on from there, producing the very events the matcher
//! produced (replay is deterministic). Each transaction writes the rows of
//! consecutive commands and moves the cursor; after any failure the writer
//! reconnects, reloads its cursor and state from the database, and goes on
//! from there. Nothing is missing and nothing is written twice.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine_core::{Engine, EngineLimits, Event};
use journal::{DataDir, JournalReader, ReadMode, RecoverOptions};
use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls};

use crate::rows::{Balances, Batch, Catalog, RowSet, Stamp};
use crate::tables::{self, StoreError, WriteMode};

#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// A tokio-postgres connection string (URL or key=value form).
    pub database_url: String,
    /// The exchange's data directory, for regenerating missed events.
    pub data: DataDir,
    /// The engine limits the exchange runs with (a replay from an empty
    /// engine must reject exactly what the live one rejected).
    pub limits: EngineLimits,
    /// Upper bound of events per transaction.
    pub events_per_transaction_max: usize,
    /// Batches the feed holds before it drops (and the writer regenerates).
    pub feed_batches_max: usize,
    /// The longest wait between reconnection attempts.
    pub retry_max: Duration,
    /// A transaction that takes longer is abandoned and retried.
    pub transaction_timeout: Duration,
    pub mode: WriteMode,
}

impl WriterConfig {
    pub fn new(database_url: impl Into<String>, data: DataDir, limits: EngineLimits) -> WriterConfig {
        WriterConfig {
            database_url: database_url.into(),
            data,
            limits,
            events_per_transaction_max: 100_000,
            feed_batches_max: 4_096,
            retry_max: Duration::from_secs(5),
            transaction_timeout: Duration::from_secs(30),
            mode: WriteMode::Copy,
        }
    }
}

/// What the writer reports (for `/health`, the logs and tests).
#[derive(Debug, Default)]
pub struct WriterStatus {
    /// The last command whose events are in the database.
    pub cursor_seq: AtomicU64,
    pub cursor_timestamp_ns: AtomicU64,
    /// The last command whose events the matcher published.
    pub published_seq: AtomicU64,
    pub published_timestamp_ns: AtomicU64,
    pub connected: AtomicBool,
    pub transactions: AtomicU64,
    pub events_written: AtomicU64,
    pub trades_written: AtomicU64,
    /// Commands whose events were regenerated from the journal.
    pub commands_replayed: AtomicU64,
    /// Batches the feed dropped because the writer was behind.
    pub batches_dropped: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl WriterStatus {
    /// How many commands the database is behind the matcher.
    pub fn lag_seq(&self) -> u64 {
        self.published_seq.load(Ordering::Relaxed).saturating_sub(self.cursor_seq.load(Ordering::Relaxed))
    }

    /// How far behind the database is, in the matcher's time: from the
    /// last written command to the last published one (0 when caught up).
    pub fn lag_ms(&self) -> u64 {
        if self.lag_seq() == 0 {
            return 0;
        }
        let published = self.published_timestamp_ns.load(Ordering::Relaxed);
        let cursor = self.cursor_timestamp_ns.load(Ordering::Relaxed);
        published.saturating_sub(cursor) / 1_000_000
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    fn set_error(&self, error: Option<String>) {
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = error;
        }
    }
}

/// Where the outbound ring's consumer hands batches to the writer. Never
/// blocks: a full feed drops the batch and the writer regenerates it.
#[derive(Clone)]
pub struct Feed {
    sender: mpsc::Sender<Batch>,
    lost: Arc<AtomicBool>,
    status: Arc<WriterStatus>,
}

impl Feed {
    pub fn offer(&self, batch: Batch) {
        if let Some(last) = batch.stamps.last() {
            self.status.published_seq.store(last.seq, Ordering::Relaxed);
            self.status.published_timestamp_ns.store(last.timestamp_ns, Ordering::Relaxed);
        }
        if self.sender.try_send(batch).is_err() {
            self.lost.store(true, Ordering::Release);
            self.status.batches_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The running writer.
pub struct Writer {
    pub feed: Feed,
    pub status: Arc<WriterStatus>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread. `published` is the last command the
    /// exchange holds at start (recovered from the journal): the writer
    /// regenerates whatever the database lacks up to it.
    pub fn start(config: WriterConfig, published: Stamp) -> std::io::Result<Writer> {
        let status = Arc::new(WriterStatus::default());
        status.published_seq.store(published.seq, Ordering::Relaxed);
        status.published_timestamp_ns.store(published.timestamp_ns, Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel(config.feed_batches_max.max(1));
        // Nothing from before the start is in the feed.
        let lost = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let feed = Feed { sender, lost: Arc::clone(&lost), status: Arc::clone(&status) };
        let run = Run { config, status: Arc::clone(&status), lost, stop: Arc::clone(&stop), receiver };
        let thread = std::thread::Builder::new().name("pg-writer".to_string()).spawn(move || run.run())?;
        Ok(Writer { feed, status, stop, thread: Some(thread) })
    }

    /// Lets the writer catch up with what was published (for at most
    /// `deadline`), then stops it. What it did not write is regenerated
    /// from the journal at the next start.
    pub fn stop(mut self, deadline: Duration) {
        let until = Instant::now() + deadline;
        while self.status.lag_seq() > 0
            && self.status.connected.load(Ordering::Relaxed)
            && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Batches received but not yet written, trimmed as the cursor passes.
struct Pending {
    batch: Batch,
    /// First event and stamp not yet written.
    event_from: usize,
    stamp_from: usize,
}

impl Pending {
    fn first_seq(&self) -> Option<u64> {
        self.batch.stamps.get(self.stamp_from).map(|s| s.seq)
    }

    /// Skips what the database has. Returns false when nothing is left.
    fn trim(&mut self, cursor: u64) -> bool {
        while self.batch.stamps.get(self.stamp_from).is_some_and(|s| s.seq <= cursor) {
            self.stamp_from += 1;
        }
        while self.batch.events.get(self.event_from).is_some_and(|e| e.seq <= cursor) {
            self.event_from += 1;
        }
        self.stamp_from < self.batch.stamps.len()
    }
}

/// The engine the writer replays the journal with, positioned at the
/// writer's cursor.
struct Replayer {
    engine: Engine,
    reader: JournalReader,
}

impl Replayer {
    fn open(config: &WriterConfig, cursor_seq: u64) -> Result<Replayer, String> {
        let options =
            RecoverOptions { limits: config.limits, to_seq: Some(cursor_seq), mode: ReadMode::Follow };
        let recovery = journal::recover(&config.data, options, |_| {}).map_err(|e| e.to_string())?;
        if recovery.engine.last_seq() != cursor_seq {
            return Err(format!(
                "the journal ends at sequence {} but the database has events up to {cursor_seq}: \
                 the database is ahead of the journal (was the journal lost or replaced?)",
                recovery.engine.last_seq()
            ));
        }
        let reader = JournalReader::open(&config.data.journal(), cursor_seq + 1, ReadMode::Follow)
            .map_err(|e| e.to_string())?;
        Ok(Replayer { engine: recovery.engine, reader })
    }

    /// Replays commands up to `target` (at most about `events_max` events).
    fn replay(
        &mut self,
        target: u64,
        events_max: usize,
        events: &mut Vec<Event>,
        stamps: &mut Vec<Stamp>,
    ) -> Result<(), String> {
        while self.engine.last_seq() < target && events.len() < events_max {
            let Some(command) = self.reader.next().map_err(|e| e.to_string())? else { break };
            self.engine.apply(&command, events).map_err(|e| format!("replay out of order: {e:?}"))?;
            stamps.push(Stamp { seq: command.seq, timestamp_ns: command.timestamp_ns });
        }
        Ok(())
    }
}

struct Run {
    config: WriterConfig,
    status: Arc<WriterStatus>,
    lost: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    receiver: mpsc::Receiver<Batch>,
}

/// How a session with one connection ended.
enum SessionEnd {
    Stopped,
    Failed(String),
}

const IDLE_POLL: Duration = Duration::from_millis(100);
const LAG_LOG_EVERY: Duration = Duration::from_secs(10);

impl Run {
    fn run(mut self) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                eprintln!("database writer: cannot start its runtime: {error}");
                return;
            }
        };
        runtime.block_on(self.connect_loop());
    }

    async fn connect_loop(&mut self) {
        let mut pending = VecDeque::new();
        let mut backoff = Duration::from_millis(100);
        let mut last_log = Instant::now() - LAG_LOG_EVERY;
        while !self.stop.load(Ordering::Relaxed) {
            let end = match self.connect().await {
                Ok((mut client, loaded)) => {
                    backoff = Duration::from_millis(100);
                    self.status.connected.store(true, Ordering::Relaxed);
                    self.status.set_error(None);
                    eprintln!(
                        "database writer: connected; the database has events up to sequence {}, the exchange up to {}",
                        loaded.cursor_seq,
                        self.status.published_seq.load(Ordering::Relaxed)
                    );
                    let end = self.session(&mut client, loaded, &mut pending).await;
                    self.status.connected.store(false, Ordering::Relaxed);
                    end
                }
                Err(error) => SessionEnd::Failed(error.to_string()),
            };
            match end {
                SessionEnd::Stopped => return,
                SessionEnd::Failed(error) => {
                    if last_log.elapsed() >= LAG_LOG_EVERY {
                        eprintln!(
                            "database writer: {error}; {} commands behind ({} ms); retrying",
                            self.status.lag_seq(),
                            self.status.lag_ms()
                        );
                        last_log = Instant::now();
                    }
                    self.status.set_error(Some(error));
                    // What was taken for the failed transaction is gone
                    // from `pending`; the journal has it.
                    self.lost.store(true, Ordering::Release);
                    self.sleep_draining(backoff, &mut pending).await;
                    backoff = (backoff * 2).min(self.config.retry_max);
                }
            }
        }
    }

    async fn connect(&self) -> Result<(Client, tables::Loaded), StoreError> {
        let mut pg_config: tokio_postgres::Config =
            self.config.database_url.parse().map_err(StoreError::Db)?;
        pg_config.connect_timeout(Duration::from_secs(5));
        pg_config.keepalives_idle(Duration::from_secs(10));
        let (mut client, connection) = pg_config.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let applied = tables::migrate(&mut client).await?;
        if !applied.is_empty() {
            eprintln!("database writer: applied migrations {}", applied.join(", "));
        }
        let loaded = tables::load(&client).await?;
        Ok((client, loaded))
    }

    /// Waits, keeping the feed from filling while the database is away.
    async fn sleep_draining(&mut self, duration: Duration, pending: &mut VecDeque<Pending>) {
        let until = tokio::time::Instant::now() + duration;
        loop {
            tokio::select! {
                batch = self.receiver.recv() => match batch {
                    Some(batch) => self.keep(batch, pending),
                    None => tokio::time::sleep_until(until).await,
                },
                _ = tokio::time::sleep_until(until) => return,
            }
            if tokio::time::Instant::now() >= until || self.stop.load(Ordering::Relaxed) {
                return;
            }
        }
    }

    fn keep(&self, batch: Batch, pending: &mut VecDeque<Pending>) {
        if pending.len() >= self.config.feed_batches_max {
            // Memory stays bounded; the journal has all of it.
            pending.clear();
            self.lost.store(true, Ordering::Release);
            self.status.batches_dropped.fetch_add(1, Ordering::Relaxed);
        }
        pending.push_back(Pending { batch, event_from: 0, stamp_from: 0 });
    }

    async fn session(
        &mut self,
        client: &mut Client,
        loaded: tables::Loaded,
        pending: &mut VecDeque<Pending>,
    ) -> SessionEnd {
        let mut cursor = tables::cursor_stamp(&loaded);
        let published = self.status.published_seq.load(Ordering::Acquire);
        if cursor.seq > published {
            return SessionEnd::Failed(format!(
                "the database has events up to sequence {} but the exchange only up to {published}: the database \
                 is ahead of the journal (a journal lost to power failure, or another exchange's database); \
                 nothing is written until an operator resolves it",
                cursor.seq
            ));
        }
        let mut catalog: Catalog = loaded.catalog;
        let mut balances: Balances = loaded.balances;
        self.publish_cursor(cursor);
        let mut replayer: Option<Replayer> = None;
        let mut events = Vec::new();
        let mut stamps = Vec::new();
        let mut last_log = Instant::now();
        loop {
            while let Ok(batch) = self.receiver.try_recv() {
                self.keep(batch, pending);
            }
            pending.retain_mut(|p| p.trim(cursor.seq));

            let mut rows = RowSet::new();
            let events_max = self.config.events_per_transaction_max;
            let live = pending.front().and_then(Pending::first_seq) == Some(cursor.seq + 1);
            let added = if live {
                replayer = None;
                let mut result = Ok(());
                while rows.events < events_max {
                    let Some(front) = pending.front() else { break };
                    let expected = rows.last.map_or(cursor.seq, |s| s.seq) + 1;
                    if front.first_seq() != Some(expected) {
                        break;
                    }
                    let front = pending.pop_front().map(|p| (p.batch, p.event_from, p.stamp_from));
                    if let Some((batch, event_from, stamp_from)) = front {
                        result = rows.add(
                            &batch.events[event_from..],
                            &batch.stamps[stamp_from..],
                            &mut catalog,
                            &mut balances,
                        );
                        if result.is_err() {
                            break;
                        }
                    }
                }
                result.map_err(|e| e.to_string())
            } else {
                // The next batch at hand (if any) is not the next command:
                // regenerate the gap from the journal.
                let lost = self.lost.swap(false, Ordering::AcqRel);
                let target = match pending.front().and_then(Pending::first_seq) {
                    Some(first) => first - 1,
                    None if lost || replayer.is_some() => self.status.published_seq.load(Ordering::Acquire),
                    None => cursor.seq,
                };
                if target > cursor.seq {
                    if replayer.as_ref().is_none_or(|r| r.engine.last_seq() != cursor.seq) {
                        match Replayer::open(&self.config, cursor.seq) {
                            Ok(opened) => replayer = Some(opened),
                            Err(error) => {
                                return SessionEnd::Failed(format!("regenerating from the journal: {error}"))
                            }
                        }
                    }
                    events.clear();
                    stamps.clear();
                    let replayed = match replayer.as_mut() {
                        Some(replayer) => replayer.replay(target, events_max, &mut events, &mut stamps),
                        None => Ok(()),
                    };
                    if let Err(error) = replayed {
                        return SessionEnd::Failed(format!("regenerating from the journal: {error}"));
                    }
                    self.status.commands_replayed.fetch_add(stamps.len() as u64, Ordering::Relaxed);
                    rows.add(&events, &stamps, &mut catalog, &mut balances).map_err(|e| e.to_string())
                } else {
                    replayer = None;
                    Ok(())
                }
            };
            if let Err(error) = added {
                return SessionEnd::Failed(error);
            }

            if rows.is_empty() {
                if self.stop.load(Ordering::Relaxed) {
                    return SessionEnd::Stopped;
                }
                tokio::select! {
                    batch = self.receiver.recv() => if let Some(batch) = batch { self.keep(batch, pending) },
                    _ = tokio::time::sleep(IDLE_POLL) => {
                        // Behind the matcher with nothing arriving: the
                        // batches in between were dropped (perhaps while an
                        // earlier session failed, which took the "lost"
                        // signal with it). Regenerate them. Found by the
                        // hostile suite: after a database froze for a
                        // minute the writer sat idle, 100,000 commands behind.
                        if self.status.published_seq.load(Ordering::Acquire) > cursor.seq {
                            self.lost.store(true, Ordering::Release);
                        }
                    }
                }
                continue;
            }

            let write = tables::write(client, &rows, &catalog, cursor.seq, self.config.mode);
            match tokio::time::timeout(self.config.transaction_timeout, write).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return SessionEnd::Failed(error.to_string()),
                Err(_) => {
                    return SessionEnd::Failed(format!(
                        "a transaction took longer than {} s",
                        self.config.transaction_timeout.as_secs()
                    ))
                }
            }
            if let Some(last) = rows.last {
                cursor = last;
            }
            self.publish_cursor(cursor);
            self.status.transactions.fetch_add(1, Ordering::Relaxed);
            self.status.events_written.fetch_add(rows.events as u64, Ordering::Relaxed);
            self.status.trades_written.fetch_add(rows.trades.len() as u64, Ordering::Relaxed);
            if self.status.lag_seq() > 0 && last_log.elapsed() >= LAG_LOG_EVERY {
                eprintln!(
                    "database writer: {} commands ({} ms) behind the matcher, catching up",
                    self.status.lag_seq(),
                    self.status.lag_ms()
                );
                last_log = Instant::now();
            }
        }
    }

    fn publish_cursor(&self, cursor: Stamp) {
        self.status.cursor_seq.store(cursor.seq, Ordering::Relaxed);
        self.status.cursor_timestamp_ns.store(cursor.timestamp_ns, Ordering::Relaxed);
    }
}
