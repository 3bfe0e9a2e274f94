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
//!
//! Failing, it fails loudly, slowly and truthfully: every failure (connect,
//! migration, write, timeout, a session that dies soon after connecting)
//! doubles the wait before the next attempt up to [`WriterConfig::retry_max`];
//! the wait starts small again only after a session that wrote and lasted
//! that long. The error stays on [`WriterStatus`] until a transaction
//! commits after it, and a repeated error is logged once, then summarised.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine_core::EngineLimits;
use journal::DataDir;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, NoTls};

use crate::rows::{Balances, Batch, Catalog, RowSet, Stamp};
use crate::seed::{self, SeedError, SeedRequest, Seeded};
use crate::source::{JournalSource, Replay, Source};
use crate::tables::{self, StoreError, WriteMode};

/// Where the writer answers an operator's request to seed.
type SeedAnswer = oneshot::Sender<Result<Seeded, SeedError>>;

/// [`WriterConfig::lag_max`] unless configured: history more than 10 s
/// old is worth an operator's look.
pub const WRITER_LAG_MAX_DEFAULT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// A tokio-postgres connection string (URL or key=value form).
    pub database_url: String,
    /// Where missed events are regenerated from.
    pub source: Arc<dyn Source>,
    /// The writer connects only once this is true (None: at once). A
    /// cluster node sets it when it has applied the log it found at start:
    /// before that, a database that holds more than the node has applied
    /// is not ahead of it, only not yet caught up with.
    pub ready: Option<Arc<AtomicBool>>,
    /// Upper bound of events per transaction.
    pub events_per_transaction_max: usize,
    /// Batches the feed holds before it drops (and the writer regenerates).
    pub feed_batches_max: usize,
    /// The longest wait between reconnection attempts.
    pub retry_max: Duration,
    /// A transaction that takes longer is abandoned and retried.
    pub transaction_timeout: Duration,
    /// Behind the matcher by more than this (after a commit, or with
    /// nothing committed for this long), the writer reports itself
    /// degraded ([`WriterStatus::degraded_reason`]).
    pub lag_max: Duration,
    pub mode: WriteMode,
}

impl WriterConfig {
    /// A writer that regenerates from a single node's journal in `data`.
    pub fn new(database_url: impl Into<String>, data: DataDir, limits: EngineLimits) -> WriterConfig {
        WriterConfig::with_source(database_url, Arc::new(JournalSource { data, limits }))
    }

    /// A writer that regenerates from `source`.
    pub fn with_source(database_url: impl Into<String>, source: Arc<dyn Source>) -> WriterConfig {
        WriterConfig {
            database_url: database_url.into(),
            source,
            ready: None,
            events_per_transaction_max: 100_000,
            feed_batches_max: 4_096,
            retry_max: Duration::from_secs(5),
            transaction_timeout: Duration::from_secs(30),
            lag_max: WRITER_LAG_MAX_DEFAULT,
            mode: WriteMode::Copy,
        }
    }
}

/// Where in its work the writer failed; `/health` tells an unreachable
/// database from a writer that connects but cannot write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Opening a connection: the server is down, refuses us, or refuses
    /// our credentials.
    Connect,
    /// Applying the migrations (often: the role lacks the rights).
    Migrate,
    /// Reading the cursor, the reference data and the balances.
    Load,
    /// The database holds more than the journal: nothing is written.
    Ahead,
    /// Regenerating missed events from the journal.
    Replay,
    /// Turning events into rows (the events and the tables disagree).
    Rows,
    /// A transaction failed.
    Write,
    /// A transaction took longer than [`WriterConfig::transaction_timeout`].
    Timeout,
}

/// Why the writer's last attempt failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub stage: Stage,
    /// The cause, with the database's own report when there is one.
    pub message: String,
}

impl Failure {
    fn new(stage: Stage, message: impl Into<String>) -> Failure {
        Failure { stage, message: message.into() }
    }

    fn store(stage: Stage, error: StoreError) -> Failure {
        let mut message = match error {
            StoreError::Db(error) => tables::describe(&error),
            StoreError::Migration(message) => message,
            StoreError::Rows(error) => error.to_string(),
        };
        if stage == Stage::Migrate && message.contains("42501") {
            // SQLSTATE 42501: insufficient privilege.
            message.push_str(
                "; apply the migrations as a role that may create tables (exctl migrate --database-url ...) \
                 or grant this role CREATE on the schema",
            );
        }
        Failure { stage, message }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.stage {
            Stage::Connect => "cannot connect",
            Stage::Migrate => "applying the migrations",
            Stage::Load => "reading the cursor and balances",
            Stage::Ahead | Stage::Timeout => return f.write_str(&self.message),
            Stage::Replay => "regenerating from the journal (or a cluster node's log)",
            Stage::Rows => "turning events into rows",
            Stage::Write => "writing",
        };
        write!(f, "{what}: {}", self.message)
    }
}

/// What the writer reports (for `/health`, the logs and tests).
#[derive(Debug)]
pub struct WriterStatus {
    /// The last command whose events are in the database, as last read or
    /// written (meaningful once `cursor_known`).
    pub cursor_seq: AtomicU64,
    pub cursor_timestamp_ns: AtomicU64,
    /// The last command whose events the matcher published.
    pub published_seq: AtomicU64,
    pub published_timestamp_ns: AtomicU64,
    /// Whether the writer has read the database's cursor since it started;
    /// until then the lag is unknown (the database may hold most of the
    /// journal already).
    pub cursor_known: AtomicBool,
    /// A session is open and writing: its last transaction committed, or it
    /// found the database holding everything. Not merely a connection that
    /// once succeeded: false from any failure until a commit after it.
    pub connected: AtomicBool,
    pub transactions: AtomicU64,
    pub events_written: AtomicU64,
    pub trades_written: AtomicU64,
    /// Rows of the history tables inserted or updated (orders, trades,
    /// ledger, balances, candles, reference data).
    pub rows_written: AtomicU64,
    /// Commands whose events were regenerated from the journal.
    pub commands_replayed: AtomicU64,
    /// Batches the feed dropped because the writer was behind.
    pub batches_dropped: AtomicU64,
    /// Attempts that failed since the last transaction that committed.
    pub failed_attempts: AtomicU64,
    failure: Mutex<Option<Failure>>,
    /// An operator's request to seed the database from a snapshot image,
    /// waiting for the writer ([`WriterStatus::request_seed`]).
    seed_request: Mutex<Option<(SeedRequest, SeedAnswer)>>,
    /// The sequence number of the image a seeding is writing from (0: none
    /// under way). The node keeps that image as if the writer's cursor
    /// were already there, so that it is still on disk when the writer
    /// goes on from it.
    pub seeding_seq: AtomicU64,
    /// Where the database's history starts when it was seeded from a
    /// snapshot image: the image's last command (0: it holds the whole
    /// history, or the writer has not read it yet).
    seeded_seq: AtomicU64,
    seeded_timestamp_ns: AtomicU64,
    /// The origin of the times below (monotonic).
    clock: Instant,
    /// When the writer last committed or found the database caught up, in
    /// ms on `clock`.
    progress_at_ms: AtomicU64,
    /// How far behind (ms of the matcher's time) the database still was
    /// right after the last commit: a writer slower than the matcher.
    lag_after_commit_ms: AtomicU64,
    /// [`WriterConfig::lag_max`].
    lag_max_ms: AtomicU64,
}

impl Default for WriterStatus {
    fn default() -> WriterStatus {
        WriterStatus {
            cursor_seq: AtomicU64::new(0),
            cursor_timestamp_ns: AtomicU64::new(0),
            published_seq: AtomicU64::new(0),
            published_timestamp_ns: AtomicU64::new(0),
            cursor_known: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            transactions: AtomicU64::new(0),
            events_written: AtomicU64::new(0),
            trades_written: AtomicU64::new(0),
            rows_written: AtomicU64::new(0),
            commands_replayed: AtomicU64::new(0),
            batches_dropped: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
            failure: Mutex::new(None),
            seed_request: Mutex::new(None),
            seeding_seq: AtomicU64::new(0),
            seeded_seq: AtomicU64::new(0),
            seeded_timestamp_ns: AtomicU64::new(0),
            clock: Instant::now(),
            progress_at_ms: AtomicU64::new(0),
            lag_after_commit_ms: AtomicU64::new(0),
            lag_max_ms: AtomicU64::new(WRITER_LAG_MAX_DEFAULT.as_millis() as u64),
        }
    }
}

impl WriterStatus {
    /// The last command before the database's history, when it was seeded
    /// from a snapshot image (its sequence number and time, as the
    /// database's `seeded_from` record has them); `None` for a database
    /// that holds the whole history, or before the writer has read it.
    pub fn history_starts_after(&self) -> Option<(u64, u64)> {
        let seq = self.seeded_seq.load(Ordering::Acquire);
        (seq != 0).then(|| (seq, self.seeded_timestamp_ns.load(Ordering::Relaxed)))
    }

    fn publish_seeded(&self, seeded: Option<(u64, u64)>) {
        let (seq, timestamp_ns) = seeded.unwrap_or((0, 0));
        self.seeded_timestamp_ns.store(timestamp_ns, Ordering::Relaxed);
        self.seeded_seq.store(seq, Ordering::Release);
    }

    /// How many commands the database is behind the matcher; `None` until
    /// the writer has read the database's cursor.
    pub fn lag_seq(&self) -> Option<u64> {
        if !self.cursor_known.load(Ordering::Acquire) {
            return None;
        }
        let published = self.published_seq.load(Ordering::Relaxed);
        Some(published.saturating_sub(self.cursor_seq.load(Ordering::Relaxed)))
    }

    /// How far behind the database is, in the matcher's time: from the
    /// last written command to the last published one (0 when caught up).
    /// `None` while either time is unknown (see [`WriterStatus::lag_unknown`]).
    pub fn lag_ms(&self) -> Option<u64> {
        let lag = self.lag_seq()?;
        if lag == 0 {
            return Some(0);
        }
        let published = self.published_timestamp_ns.load(Ordering::Relaxed);
        let cursor = self.cursor_timestamp_ns.load(Ordering::Relaxed);
        if published == 0 || cursor == 0 {
            return None;
        }
        Some(published.saturating_sub(cursor) / 1_000_000)
    }

    /// Why [`WriterStatus::lag_seq`] or [`WriterStatus::lag_ms`] is
    /// unknown, when one is.
    pub fn lag_unknown(&self) -> Option<String> {
        let Some(lag) = self.lag_seq() else {
            return Some(match self.failure() {
                Some(failure) => format!("the writer has not read the database's cursor yet ({failure})"),
                None => "the writer has not read the database's cursor yet (connecting)".to_string(),
            });
        };
        if lag == 0 || self.lag_ms().is_some() {
            None
        } else if self.cursor_timestamp_ns.load(Ordering::Relaxed) == 0 {
            Some("the database holds no command yet, so its lag in time is unknown".to_string())
        } else {
            Some("the time of the exchange's last command is not known yet".to_string())
        }
    }

    /// The error of the last attempt; cleared when a transaction commits
    /// after it (or the writer finds the database holding everything).
    pub fn last_error(&self) -> Option<String> {
        self.failure().map(|f| f.to_string())
    }

    pub fn failure(&self) -> Option<Failure> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// Why the history database is not healthy, or `None` when it is:
    /// unreachable, failing, not writing yet, stalled (nothing committed
    /// for [`WriterConfig::lag_max`] while behind), or more than that
    /// behind the matcher after its last commit.
    pub fn degraded_reason(&self) -> Option<String> {
        let attempts = match self.failed_attempts.load(Ordering::Relaxed) {
            1 => "1 failed attempt".to_string(),
            n => format!("{n} failed attempts"),
        };
        if let Some(failure) = self.failure() {
            return Some(match failure.stage {
                Stage::Connect => format!("database unreachable ({attempts}): {}", failure.message),
                _ => format!("database writer failing ({attempts}): {failure}"),
            });
        }
        if !self.connected.load(Ordering::Acquire) {
            return Some(
                "the database writer is not writing yet (connecting, migrating or catching up)".into(),
            );
        }
        let lag = self.lag_seq().unwrap_or(0);
        if lag == 0 {
            return None;
        }
        let lag_max_ms = self.lag_max_ms.load(Ordering::Relaxed);
        let idle_ms = self.clock_ms().saturating_sub(self.progress_at_ms.load(Ordering::Relaxed));
        if idle_ms > lag_max_ms {
            return Some(format!(
                "database writer stalled: nothing committed for {idle_ms} ms while {lag} commands behind"
            ));
        }
        let behind_ms = self.lag_after_commit_ms.load(Ordering::Relaxed);
        if behind_ms > lag_max_ms {
            return Some(format!(
                "database lag above {lag_max_ms} ms: {lag} commands, {behind_ms} ms behind the matcher"
            ));
        }
        None
    }

    fn clock_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// Asks the writer to seed its empty database from the node's newest
    /// snapshot image (see [`crate::seed`]). The writer takes the request
    /// when it next connects (at once if it is failing for want of the
    /// history, within its retry wait otherwise); the answer says what it
    /// wrote or why it refused. One request at a time.
    pub fn request_seed(
        &self,
        request: SeedRequest,
    ) -> Result<oneshot::Receiver<Result<Seeded, SeedError>>, SeedError> {
        seed::check_reason(&request.reason)?;
        let mut slot = self
            .seed_request
            .lock()
            .map_err(|_| SeedError::Failed("the writer's state is poisoned; restart the node".into()))?;
        if slot.as_ref().is_some_and(|(_, answer)| !answer.is_closed()) {
            return Err(SeedError::Refused(
                "a seeding is already waiting for this node's writer; wait for its answer".into(),
            ));
        }
        let (answer, receiver) = oneshot::channel();
        *slot = Some((request, answer));
        Ok(receiver)
    }

    /// Withdraws a request the writer has not taken (its asker gave up
    /// waiting). Returns whether it was still waiting.
    pub fn withdraw_seed(&self) -> bool {
        self.seed_request.lock().ok().and_then(|mut slot| slot.take()).is_some()
    }

    fn take_seed_request(&self) -> Option<(SeedRequest, SeedAnswer)> {
        let mut slot = self.seed_request.lock().ok()?;
        slot.take().filter(|(_, answer)| !answer.is_closed())
    }

    fn has_seed_request(&self) -> bool {
        self.seed_request.lock().is_ok_and(|slot| slot.is_some())
    }

    fn set_failure(&self, failure: Option<Failure>) {
        if let Ok(mut slot) = self.failure.lock() {
            *slot = failure;
        }
    }

    /// A line for the log: how far behind the database is.
    fn behind(&self) -> String {
        match (self.lag_seq(), self.lag_ms()) {
            (Some(seq), Some(ms)) => format!("{seq} commands ({ms} ms) behind"),
            (Some(seq), None) => format!("{seq} commands behind"),
            (None, _) => "lag unknown (the database's cursor is not read yet)".to_string(),
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
        status.lag_max_ms.store(config.lag_max.as_millis() as u64, Ordering::Relaxed);
        status.published_seq.store(published.seq, Ordering::Relaxed);
        status.published_timestamp_ns.store(published.timestamp_ns, Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel(config.feed_batches_max.max(1));
        // Nothing from before the start is in the feed.
        let lost = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let feed = Feed { sender, lost: Arc::clone(&lost), status: Arc::clone(&status) };
        let retry = Retry::new(config.retry_max);
        let run = Run {
            config,
            status: Arc::clone(&status),
            lost,
            stop: Arc::clone(&stop),
            receiver,
            retry,
            session_progressed: false,
        };
        let thread = std::thread::Builder::new().name("pg-writer".to_string()).spawn(move || run.run())?;
        Ok(Writer { feed, status, stop, thread: Some(thread) })
    }

    /// Lets the writer catch up with what was published (for at most
    /// `deadline`, and only while it makes progress), then stops it. What
    /// it did not write is regenerated from the journal at the next start,
    /// so a database that is down or hung costs the shutdown
    /// [`STOP_STALL`], not the whole deadline.
    pub fn stop(mut self, deadline: Duration) {
        let started = Instant::now();
        let behind = self.status.lag_seq().unwrap_or(0);
        if behind > 0 && self.status.connected.load(Ordering::Relaxed) {
            tracing::info!(
                "shutdown: letting the database writer catch up ({behind} commands behind, at most {} ms)",
                deadline.as_millis()
            );
        }
        let mut cursor = self.status.cursor_seq.load(Ordering::Relaxed);
        let mut progressed_at = started;
        loop {
            let now = Instant::now();
            if self.status.lag_seq().is_none_or(|lag| lag == 0)
                || !self.status.connected.load(Ordering::Relaxed)
                || now >= started + deadline
            {
                break;
            }
            let current = self.status.cursor_seq.load(Ordering::Relaxed);
            if current != cursor {
                (cursor, progressed_at) = (current, now);
            } else if now.duration_since(progressed_at) >= STOP_STALL {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(lag) = self.status.lag_seq().filter(|lag| *lag > 0) {
            tracing::warn!(
                "shutdown: the database writer stops {lag} commands behind ({}); they are written from the \
                 journal at the next start",
                self.status.degraded_reason().unwrap_or_else(|| "it was still writing".to_string())
            );
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // A writer inside a call to a hung database is left to the
            // process's exit rather than waited for.
            let until = Instant::now() + STOP_STALL;
            while !thread.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                tracing::warn!(
                    "shutdown: the database writer is still waiting for the database; not waiting for it"
                );
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How long a stopping writer may go without writing anything before the
/// shutdown stops waiting for it.
pub const STOP_STALL: Duration = Duration::from_secs(1);

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

struct Run {
    config: WriterConfig,
    status: Arc<WriterStatus>,
    lost: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    receiver: mpsc::Receiver<Batch>,
    retry: Retry,
    /// Whether the current session has committed (or found nothing to do).
    session_progressed: bool,
}

/// How a session with one connection ended.
enum SessionEnd {
    Stopped,
    Failed(Failure),
}

const IDLE_POLL: Duration = Duration::from_millis(100);
/// How long a writer behind a readiness gate waits for the node to publish
/// what the database already holds before it calls the database ahead.
const AHEAD_GRACE: Duration = Duration::from_secs(10);
const LAG_LOG_EVERY: Duration = Duration::from_secs(10);
/// The first wait after a failure; it doubles up to `retry_max`.
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// A repeated error is summarised at most this often.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// The wait before the next attempt, and what the log has been told.
struct Retry {
    wait: Duration,
    wait_max: Duration,
    /// Failed attempts since the writer last ran well for `wait_max`.
    failures: u64,
    failing_since: Option<Instant>,
    /// The failure last logged in full; the same one again is only counted.
    logged: Option<String>,
    logged_at: Instant,
    /// Whether the log last said "failing" (so that it says when it stops).
    told_failing: bool,
}

impl Retry {
    fn new(wait_max: Duration) -> Retry {
        Retry {
            wait: RETRY_FIRST.min(wait_max),
            wait_max,
            failures: 0,
            failing_since: None,
            logged: None,
            logged_at: Instant::now(),
            told_failing: false,
        }
    }

    /// Counts a failed attempt, logs it (once, then a summary now and
    /// then), and returns how long to wait before the next. `ran_well`: the
    /// session that ended had written and lasted `wait_max`, so this is a
    /// new trouble, not more of the old.
    fn failed(&mut self, failure: &Failure, ran_well: bool, behind: &str) -> Duration {
        if ran_well {
            self.wait = RETRY_FIRST.min(self.wait_max);
            self.failures = 0;
            self.failing_since = None;
            self.logged = None;
        }
        let wait = self.wait;
        self.wait = (self.wait * 2).min(self.wait_max);
        self.failures += 1;
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        let text = failure.to_string();
        if self.logged.as_deref() != Some(text.as_str()) {
            tracing::warn!("database writer: {text}; {behind}; next try in {} ms", wait.as_millis());
            self.logged = Some(text);
            self.logged_at = Instant::now();
            self.told_failing = true;
        } else if self.logged_at.elapsed() >= FAILURE_LOG_EVERY {
            tracing::warn!(
                "database writer: still failing with the same error after {} attempts in {} s; {behind}; \
                 next try in {} ms",
                self.failures,
                since.elapsed().as_secs(),
                wait.as_millis()
            );
            self.logged_at = Instant::now();
            self.told_failing = true;
        }
        wait
    }

    /// A session committed: says so if the log last said "failing".
    fn recovered(&mut self, behind: &str) {
        if self.told_failing {
            let since = self.failing_since.map_or(0, |s| s.elapsed().as_secs());
            tracing::info!(
                "database writer: writing again after {} failed attempts in {since} s; {behind}",
                self.failures
            );
            self.told_failing = false;
        }
    }
}

impl Run {
    fn run(mut self) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!("database writer: cannot start its runtime: {error}");
                return;
            }
        };
        self.learn_published_time();
        runtime.block_on(self.connect_loop());
    }

    /// The exchange tells the writer the sequence number it recovered to,
    /// not that command's time; `lag_ms` needs it, and the journal has it.
    fn learn_published_time(&self) {
        let seq = self.status.published_seq.load(Ordering::Acquire);
        if seq == 0 || self.status.published_timestamp_ns.load(Ordering::Acquire) != 0 {
            return;
        }
        if let Some(timestamp_ns) = self.config.source.timestamp_of(seq) {
            // A newer time from the feed wins.
            let _ = self.status.published_timestamp_ns.compare_exchange(
                0,
                timestamp_ns,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    async fn connect_loop(&mut self) {
        let mut pending = VecDeque::new();
        if let Some(ready) = self.config.ready.clone() {
            while !ready.load(Ordering::Acquire) && !self.stop.load(Ordering::Relaxed) {
                self.sleep_draining(IDLE_POLL, &mut pending).await;
            }
        }
        while !self.stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            self.session_progressed = false;
            // A server that accepts the connection and then hangs (frozen,
            // or waiting on a lock) would hold the writer here for ever.
            let connected = tokio::time::timeout(self.config.transaction_timeout, self.connect())
                .await
                .unwrap_or_else(|_| {
                    Err(Failure::new(
                        Stage::Timeout,
                        format!(
                            "connecting, migrating and reading the cursor took longer than {} ms and was \
                             abandoned (database_transaction_timeout_ms)",
                            self.config.transaction_timeout.as_millis()
                        ),
                    ))
                });
            let connected = match connected {
                Ok((mut client, loaded)) => match self.status.take_seed_request() {
                    Some((request, answer)) => {
                        let seeded = self.seed(&mut client, &loaded, &request).await;
                        let reloaded = match &seeded {
                            Ok(_) => tables::load(&client).await.map_err(|e| Failure::store(Stage::Load, e)),
                            Err(_) => Ok(loaded),
                        };
                        let _ = answer.send(seeded);
                        reloaded.map(|loaded| (client, loaded))
                    }
                    None => Ok((client, loaded)),
                },
                Err(failure) => Err(failure),
            };
            let end = match connected {
                Ok((mut client, loaded)) => {
                    if self.retry.failures == 0 {
                        tracing::info!(
                            "database writer: connected; the database has events up to sequence {}, the exchange up to {}",
                            loaded.cursor_seq,
                            self.status.published_seq.load(Ordering::Relaxed)
                        );
                    }
                    self.session(&mut client, loaded, &mut pending).await
                }
                Err(failure) => SessionEnd::Failed(failure),
            };
            self.status.connected.store(false, Ordering::Release);
            match end {
                SessionEnd::Stopped => return,
                SessionEnd::Failed(failure) => {
                    let ran_well = self.session_progressed && started.elapsed() >= self.config.retry_max;
                    let wait = self.retry.failed(&failure, ran_well, &self.status.behind());
                    self.status.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    self.status.set_failure(Some(failure));
                    // What was taken for the failed transaction is gone
                    // from `pending`; the journal has it.
                    self.lost.store(true, Ordering::Release);
                    self.sleep_draining(wait, &mut pending).await;
                }
            }
        }
    }

    async fn connect(&self) -> Result<(Client, tables::Loaded), Failure> {
        let mut pg_config: tokio_postgres::Config = self.config.database_url.parse().map_err(|e| {
            Failure::new(Stage::Connect, format!("the database URL: {}", tables::describe(&e)))
        })?;
        pg_config.connect_timeout(Duration::from_secs(5));
        pg_config.keepalives_idle(Duration::from_secs(10));
        let (mut client, connection) =
            pg_config.connect(NoTls).await.map_err(|e| Failure::store(Stage::Connect, e.into()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let applied = tables::migrate(&mut client).await.map_err(|e| Failure::store(Stage::Migrate, e))?;
        if !applied.is_empty() {
            tracing::info!("database writer: applied migrations {}", applied.join(", "));
        }
        let loaded = tables::load(&client).await.map_err(|e| Failure::store(Stage::Load, e))?;
        Ok((client, loaded))
    }

    /// Seeds the empty database from the source's snapshot image, if the
    /// source cannot feed it from its cursor (see [`crate::seed`]).
    async fn seed(
        &self,
        client: &mut Client,
        loaded: &tables::Loaded,
        request: &SeedRequest,
    ) -> Result<Seeded, SeedError> {
        if loaded.cursor_seq != 0 {
            return Err(SeedError::Refused(format!(
                "the database already holds history up to sequence {}: seeding writes only into an empty \
                 database and never overwrites one. Feed this one from a node whose log reaches back to its \
                 cursor, or attach an empty database to seed",
                loaded.cursor_seq
            )));
        }
        if self.can_feed_from(0).is_ok() {
            return Err(SeedError::Refused(
                "this node's log reaches back to the database's cursor (0): its writer feeds the whole history \
                 by itself, so there is nothing to seed"
                    .into(),
            ));
        }
        let image = self.config.source.seed_image().map_err(SeedError::Failed)?;
        let seq = image.engine.last_seq();
        self.status.seeding_seq.store(seq, Ordering::Release);
        let seeded = self.seed_from(client, &image, request).await;
        match &seeded {
            Ok(seeded) => {
                self.status.publish_seeded(Some((seq, image.last_timestamp_ns)));
                self.publish_cursor(Stamp { seq, timestamp_ns: image.last_timestamp_ns });
                tracing::info!(
                    "database writer: seeded the empty database from the snapshot image at sequence {seq} (log \
                     index {}, term {}): {} users, {} balances, {} open orders; the history before it is not in \
                     the database. Reason: {}",
                    seeded.raft_index,
                    seeded.raft_term,
                    seeded.users,
                    seeded.balances,
                    seeded.orders,
                    request.reason.trim()
                );
            }
            Err(error) => tracing::warn!("database writer: seeding from a snapshot image refused: {error}"),
        }
        self.status.seeding_seq.store(0, Ordering::Release);
        seeded
    }

    async fn seed_from(
        &self,
        client: &mut Client,
        image: &seed::SeedImage,
        request: &SeedRequest,
    ) -> Result<Seeded, SeedError> {
        let seq = image.engine.last_seq();
        // With the image held for the seeding (`seeding_seq`), the node
        // must still have it, and the log after it: otherwise the writer
        // could not go on from the cursor it is about to write.
        self.can_feed_from(seq).map_err(|why| {
            SeedError::Failed(format!(
                "the image at sequence {seq} cannot be fed on from ({why}); try again (a newer image may have \
                 replaced it meanwhile)"
            ))
        })?;
        let (rows, catalog, _, seeded) =
            seed::rows_from_image(image).map_err(|e| SeedError::Failed(format!("the image's state: {e}")))?;
        let write = seed::write(client, &rows, &catalog, &seeded, request, self.config.mode);
        match tokio::time::timeout(self.config.transaction_timeout, write).await {
            Ok(written) => written.map(|_| seeded),
            Err(_) => Err(SeedError::Failed(format!(
                "the seeding transaction took longer than {} ms and was abandoned \
                 (database_transaction_timeout_ms); nothing was written",
                self.config.transaction_timeout.as_millis()
            ))),
        }
    }

    /// Whether the source can regenerate the command after `cursor_seq`
    /// (or has none yet).
    fn can_feed_from(&self, cursor_seq: u64) -> Result<(), String> {
        let mut replay = self.config.source.open(cursor_seq)?;
        let (mut events, mut stamps) = (Vec::new(), Vec::new());
        replay.replay(cursor_seq + 1, 1, &mut events, &mut stamps)
    }

    /// The session writes (or has nothing to write): `/health` says so
    /// and the error of an earlier attempt is over.
    fn progressed(&mut self) {
        self.status.progress_at_ms.store(self.status.clock_ms(), Ordering::Relaxed);
        if self.session_progressed {
            return;
        }
        self.session_progressed = true;
        self.status.set_failure(None);
        self.status.failed_attempts.store(0, Ordering::Relaxed);
        self.status.connected.store(true, Ordering::Release);
        self.retry.recovered(&self.status.behind());
    }

    /// Waits, keeping the feed from filling while the database is away,
    /// and looking at the stop flag now and then (a shutdown does not wait
    /// out a 5 s backoff).
    async fn sleep_draining(&mut self, duration: Duration, pending: &mut VecDeque<Pending>) {
        let until = tokio::time::Instant::now() + duration;
        loop {
            let wake = until.min(tokio::time::Instant::now() + IDLE_POLL);
            tokio::select! {
                batch = self.receiver.recv() => match batch {
                    Some(batch) => self.keep(batch, pending),
                    None => tokio::time::sleep_until(wake).await,
                },
                _ = tokio::time::sleep_until(wake) => {}
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
        let mut published = self.status.published_seq.load(Ordering::Acquire);
        // Behind a readiness gate (a cluster node), what the node has
        // applied may still be on its way through the pipeline.
        let grace_until = Instant::now() + AHEAD_GRACE;
        while cursor.seq > published && self.config.ready.is_some() && Instant::now() < grace_until {
            self.sleep_draining(IDLE_POLL, pending).await;
            if self.stop.load(Ordering::Relaxed) {
                return SessionEnd::Stopped;
            }
            published = self.status.published_seq.load(Ordering::Acquire);
        }
        if cursor.seq > published {
            return SessionEnd::Failed(Failure::new(
                Stage::Ahead,
                format!(
                    "the database has events up to sequence {} but the exchange only up to {published}: the \
                     database is ahead of the journal (a journal lost to power failure, or another exchange's \
                     database); nothing is written until an operator resolves it",
                    cursor.seq
                ),
            ));
        }
        let mut catalog: Catalog = loaded.catalog;
        let mut balances: Balances = loaded.balances;
        self.status.publish_seeded(loaded.seeded_from);
        self.publish_cursor(cursor);
        if cursor.seq == published {
            self.progressed();
        }
        let mut replayer: Option<Box<dyn Replay>> = None;
        let mut events = Vec::new();
        let mut stamps = Vec::new();
        let mut last_log = Instant::now();
        loop {
            if self.session_progressed {
                if let Some((_, answer)) = self.status.take_seed_request() {
                    let _ = answer.send(Err(SeedError::Refused(format!(
                        "this node's writer feeds the database from its log (written up to sequence {}): there \
                         is nothing to seed. Seeding is for an empty database this node cannot feed",
                        cursor.seq
                    ))));
                }
            } else if self.status.has_seed_request() {
                // Not writing yet: the next connection takes the request.
                return SessionEnd::Failed(Failure::new(
                    Stage::Load,
                    "reconnecting to take an operator's request to seed the database",
                ));
            }
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
                result.map_err(|e| Failure::new(Stage::Rows, e.to_string()))
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
                    if replayer.as_ref().is_none_or(|r| r.seq() != cursor.seq) {
                        match self.config.source.open(cursor.seq) {
                            Ok(opened) => replayer = Some(opened),
                            Err(error) => return SessionEnd::Failed(Failure::new(Stage::Replay, error)),
                        }
                    }
                    events.clear();
                    stamps.clear();
                    let replayed = match replayer.as_mut() {
                        Some(replayer) => replayer.replay(target, events_max, &mut events, &mut stamps),
                        None => Ok(()),
                    };
                    if let Err(error) = replayed {
                        return SessionEnd::Failed(Failure::new(Stage::Replay, error));
                    }
                    self.status.commands_replayed.fetch_add(stamps.len() as u64, Ordering::Relaxed);
                    rows.add(&events, &stamps, &mut catalog, &mut balances)
                        .map_err(|e| Failure::new(Stage::Rows, e.to_string()))
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
                if cursor.seq >= self.status.published_seq.load(Ordering::Acquire) {
                    // Caught up: the database holds everything.
                    self.status.lag_after_commit_ms.store(0, Ordering::Relaxed);
                    self.progressed();
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
            let written = match tokio::time::timeout(self.config.transaction_timeout, write).await {
                Ok(Ok(written)) => written,
                Ok(Err(error)) => return SessionEnd::Failed(Failure::store(Stage::Write, error)),
                Err(_) => {
                    return SessionEnd::Failed(Failure::new(
                        Stage::Timeout,
                        format!(
                            "a transaction took longer than {} ms and was abandoned (database_transaction_timeout_ms)",
                            self.config.transaction_timeout.as_millis()
                        ),
                    ))
                }
            };
            if let Some(last) = rows.last {
                cursor = last;
            }
            self.publish_cursor(cursor);
            self.status.lag_after_commit_ms.store(self.status.lag_ms().unwrap_or(0), Ordering::Relaxed);
            self.progressed();
            self.status.transactions.fetch_add(1, Ordering::Relaxed);
            self.status.events_written.fetch_add(rows.events as u64, Ordering::Relaxed);
            self.status.trades_written.fetch_add(rows.trades.len() as u64, Ordering::Relaxed);
            self.status.rows_written.fetch_add(written, Ordering::Relaxed);
            if self.status.lag_seq().is_some_and(|lag| lag > 0) && last_log.elapsed() >= LAG_LOG_EVERY {
                tracing::info!("database writer: {} the matcher, catching up", self.status.behind());
                last_log = Instant::now();
            }
        }
    }

    fn publish_cursor(&self, cursor: Stamp) {
        self.status.cursor_seq.store(cursor.seq, Ordering::Relaxed);
        self.status.cursor_timestamp_ns.store(cursor.timestamp_ns, Ordering::Relaxed);
        self.status.cursor_known.store(true, Ordering::Release);
    }
}
