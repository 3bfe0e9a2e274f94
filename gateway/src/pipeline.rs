//! The pipeline: an inbound ring (many producers: the request handlers),
//! one matcher thread that stamps, journals, applies and publishes, and an
//! outbound ring whose consumers make the journal durable, keep the read
//! views, answer requests and feed whoever follows downstream.
//!
//! ```text
//! handlers --try_publish--> [inbound ring] --> matcher --publish--> [outbound ring]
//!                                              append, apply          |
//!                                                          durability (sync per batch; batch/interval)
//!                                                                     |  durable watermark
//!                                                          views, then replies, then downstream
//!                                                                     (WebSocket hub, database feed)
//! ```
//!
//! The matcher never waits for I/O: it appends each command to the journal
//! (memory-mapped), applies it, and publishes its events at once. The
//! durability stage syncs what was appended, one sync per batch of the ring
//! (group commit), and only what it has passed reaches the next stage: the
//! disruptor hands a consumer a slot only after every stage before it is
//! done with it, so no client sees an answer, a fill or market data of a
//! command that is not durable under the policy (under `none` there is no
//! durability stage; under `interval` it syncs at most every interval). The
//! views stage applies events and then answers the requests of its batch,
//! so a client that has its answer also sees its change in every read
//! endpoint; a reply carries its command's events and the orders it touched
//! as they stood right after it ([`crate::outcome`]). Downstream consumers
//! ([`Downstream`]) get each batch after that without ever making the
//! pipeline wait: a slow one shows as its own lag, never as a slower
//! matcher. The pipeline names no consumer: they plug in.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use disruptor::wait_strategies::WaitStrategy;
use disruptor::{
    build_multi_producer, build_single_producer, BusySpin, MultiProducer, Producer, RingBufferFull,
    SingleConsumerBarrier, SingleProducer,
};
use engine_core::{Command, Engine, Event, StampedCommand};
use journal::{Durability, JournalWriter, SegmentRetention};
use tokio::sync::oneshot;

use crate::clock;
use crate::images::{ImageTaken, Images, InstalledViews};
use crate::metrics::{LocalHistograms, Metrics, Stage};
use crate::outcome::{Capture, Outcome};
use crate::views::{OrderView, Views, ViewsState};
use crate::wait::{Backoff, Doorbell, RingWhenDone};

/// What travels into the matcher.
#[derive(Clone, Copy, Debug)]
pub struct Inbound {
    /// Which waiting request gets the outcome (0: nobody waits).
    pub request_id: u64,
    pub work: Work,
    /// When it was published (wall clock, ns since the epoch): the matcher
    /// measures the ring wait from it.
    pub published_ns: u64,
}

// Ring slots are allocated once, each as large as the largest command;
// boxing the command would allocate once per order.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug)]
pub enum Work {
    Command(Command),
    /// A command committed to the cluster's replicated log (cluster mode):
    /// the matcher applies it in log order, stamped with the next sequence
    /// number and `max(previous stamp, timestamp_ns)`, the same on every
    /// node, and journals nothing (the replicated log is the journal).
    Committed {
        command: Command,
        timestamp_ns: u64,
    },
    /// A hash mark from the cluster's replicated log (cluster mode): node
    /// `node`'s engine had state hash `hash` after command `seq`. The
    /// matcher compares it with its own hash at `seq` and stops the process
    /// on a difference ([`HashMarks`]).
    HashMark {
        seq: u64,
        node: u64,
        hash: u64,
    },
    /// Cluster mode: take a snapshot image here, after every command
    /// published before this (the Raft state machine queued the log
    /// position in [`Images`]).
    ClusterSnapshot,
    /// Cluster mode: replace the whole state by a snapshot image's, queued
    /// in [`Images`] (the commands before this were applied to the old).
    Install,
    /// Housekeeping: interval syncs and due snapshots when otherwise idle.
    Tick,
    /// Sync the journal and write a snapshot; sent once, at shutdown.
    Shutdown,
}

/// What travels out of the matcher: one event of one command.
#[derive(Clone, Copy, Debug)]
pub struct Outbound {
    pub request_id: u64,
    pub event: Option<Event>,
    /// The first sequence number of the journal segment the command was
    /// appended to (for the durability stage).
    pub segment: u64,
    /// The last event of its command.
    pub last: bool,
    /// The command could not be journaled and was not applied.
    pub failed: bool,
    /// When the matcher stamped the command.
    pub timestamp_ns: u64,
    /// A snapshot marker: the matcher took the engine's state here, and the
    /// views consumer adds the views' state as of the same point (and
    /// `request_id`, if any, is answered once the file is written).
    pub snapshot: bool,
    /// An install marker (cluster mode): the matcher replaced its state by
    /// a snapshot image's here, and the views stage takes the views that
    /// go with it from [`Images`].
    pub installed: bool,
}

/// The answer a request handler waits for.
pub type Reply = Result<Outcome, PipelineFailure>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipelineFailure {
    /// The journal refused the command (a full disk, an I/O error): it was
    /// not applied, and the exchange stops accepting orders.
    JournalUnavailable,
}

/// Shared counters for `/health`, `/metrics` and the logs.
#[derive(Debug, Default)]
pub struct Health {
    pub last_seq: AtomicU64,
    pub durable_seq: AtomicU64,
    pub snapshot_seq: AtomicU64,
    /// How long the matcher stopped for the last snapshot (cloning the state).
    pub snapshot_stall_ns: AtomicU64,
    /// Set when the journal failed: no command is accepted any more.
    pub journal_failed: AtomicBool,
    /// Open WebSocket connections (counted by the WebSocket server).
    pub ws_connections: AtomicU64,
    /// Cluster mode: hash marks from the log that this node's own state
    /// hash agreed with, and the sequence number of the newest one.
    pub hash_marks_checked: AtomicU64,
    pub last_hash_mark_seq: AtomicU64,
    /// Latencies and counters for `GET /metrics`.
    pub metrics: Metrics,
}

/// Requests waiting for their outcome.
#[derive(Default)]
pub struct Pending {
    next_id: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
}

impl Pending {
    pub fn register(&self) -> (u64, oneshot::Receiver<Reply>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (sender, receiver) = oneshot::channel();
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.insert(id, sender);
        }
        (id, receiver)
    }

    pub fn forget(&self, id: u64) {
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.remove(&id);
        }
    }

    /// Answers request `id`, building the reply only if someone waits.
    fn complete(&self, id: u64, reply: impl FnOnce() -> Reply) {
        let sender = self.waiting.lock().ok().and_then(|mut waiting| waiting.remove(&id));
        if let Some(sender) = sender {
            // The handler may have timed out and gone; that is fine.
            let _ = sender.send(reply());
        }
    }
}

/// Sees every outcome after the responder (benchmarks measure here).
pub type Observer = Box<dyn FnMut(&Outbound) + Send>;

pub struct PipelineConfig {
    pub inbound_ring_size: usize,
    pub outbound_ring_size: usize,
    pub busy_spin: bool,
    pub matcher_core: Option<usize>,
    pub snapshot_every_commands: u64,
    pub snapshots_dir: PathBuf,
    pub snapshots_keep: usize,
    pub journal_dir: PathBuf,
    pub retention: SegmentRetention,
    pub observer: Option<Observer>,
    /// Who follows the released events (the WebSocket hub, the database
    /// feed), in this order.
    pub downstream: Vec<Box<dyn Downstream>>,
    /// The database writer's progress: snapshot pruning keeps one at or
    /// before its cursor, so that it can regenerate what it has not written.
    pub database_status: Option<Arc<persistence::WriterStatus>>,
    /// When the journal's last command was stamped: the matcher's clock
    /// never stamps below it, so journal time never runs backwards, across
    /// restarts too (even if the machine's clock was set back).
    pub last_timestamp_ns: u64,
    /// The counters the pipeline keeps (shared with whoever reports them).
    pub health: Arc<Health>,
    /// Cluster mode: where snapshot images are taken and installed.
    pub images: Option<Arc<Images>>,
}

/// A follower of what the pipeline released: each batch of events (and
/// the stamps of its commands) after the views have them and the requests
/// are answered. It must never wait: a consumer that falls behind drops,
/// and recovers on its own (the database writer regenerates from the
/// journal; the streams cut their subscribers, who resync).
pub trait Downstream: Send {
    fn batch(&mut self, events: &Arc<[Event]>, stamps: &[persistence::Stamp]);

    /// The whole state was replaced by a snapshot image's (cluster mode),
    /// whose engine is `engine`: what follows continues from it, not from
    /// the events seen so far.
    fn installed(&mut self, _engine: &Engine) {}
}

/// One half of a snapshot, on its way to the thread that writes the file:
/// the matcher sends the engine, the views consumer the views as of the
/// same sequence number.
enum SnapshotPart {
    /// The engine's state, and the journal segment its last command is in.
    Engine(Box<Engine>, u64),
    Views {
        state: ViewsState,
        reply: u64,
    },
}

type InboundProducer = MultiProducer<Inbound, SingleConsumerBarrier>;

/// A handle that publishes into the inbound ring and rings the matcher's
/// doorbell. Clone it for each publishing thread; the pipeline stops when
/// every clone is dropped.
#[derive(Clone)]
pub struct Publisher {
    producer: InboundProducer,
    doorbell: &'static Doorbell,
    health: Arc<Health>,
}

impl Publisher {
    /// Publishes `work` for `request_id`, or says the ring is full.
    pub fn try_publish(&mut self, request_id: u64, work: Work) -> Result<(), RingBufferFull> {
        let published_ns = clock::now_ns();
        let published =
            self.producer.try_publish(|slot| *slot = Inbound { request_id, work, published_ns }).map(|_| ());
        let metrics = &self.health.metrics;
        if published.is_ok() {
            metrics.inbound_published.fetch_add(1, Ordering::Relaxed);
            self.doorbell.ring();
        } else {
            metrics.ring_full.fetch_add(1, Ordering::Relaxed);
        }
        published
    }
}

/// The running pipeline.
pub struct Pipeline {
    pub publisher: Publisher,
    pub pending: Arc<Pending>,
    pub health: Arc<Health>,
}

/// Starts the matcher and the consumers around a recovered engine.
pub fn start(
    engine: Engine,
    journal: JournalWriter,
    views: Arc<RwLock<Views>>,
    config: PipelineConfig,
) -> Pipeline {
    start_journaled_by(engine, Some(journal), views, config, None)
}

/// Starts the pipeline of a cluster node: commands arrive as
/// [`Work::Committed`] (already durable on a majority of the nodes), in
/// the replicated log's order, so there is no local journal and no
/// durability stage, and no snapshot is taken here. `hash_marks` is where
/// the matcher keeps its state hashes at the marked points.
pub fn start_replicated(
    engine: Engine,
    views: Arc<RwLock<Views>>,
    config: PipelineConfig,
    hash_marks: HashMarks,
) -> Pipeline {
    let config = PipelineConfig { snapshot_every_commands: 0, ..config };
    start_journaled_by(engine, None, views, config, Some(hash_marks))
}

fn start_journaled_by(
    engine: Engine,
    journal: Option<JournalWriter>,
    views: Arc<RwLock<Views>>,
    config: PipelineConfig,
    hash_marks: Option<HashMarks>,
) -> Pipeline {
    let inbound_bell = Doorbell::leak();
    if config.busy_spin {
        start_with(engine, journal, views, config, hash_marks, BusySpin, inbound_bell)
    } else {
        let wait = Backoff { doorbell: inbound_bell };
        start_with(engine, journal, views, config, hash_marks, wait, inbound_bell)
    }
}

fn start_with<W: WaitStrategy + 'static>(
    engine: Engine,
    journal: Option<JournalWriter>,
    views: Arc<RwLock<Views>>,
    config: PipelineConfig,
    hash_marks: Option<HashMarks>,
    wait: W,
    inbound_bell: &'static Doorbell,
) -> Pipeline {
    let pending = Arc::new(Pending::default());
    let health = Arc::clone(&config.health);
    health.last_seq.store(engine.last_seq(), Ordering::Relaxed);
    // A replicated node applies only what a majority has made durable.
    let durable_seq = journal.as_ref().map_or(engine.last_seq(), |journal| journal.durable_seq());
    health.durable_seq.store(durable_seq, Ordering::Relaxed);

    // Outbound: one consumer keeps the views, then answers the requests
    // whose outcomes are in the batch. One thread, not two, because a small
    // machine has few cores; views first, so an answered client reads its
    // own write.
    let mut config = config;
    let durability = journal.as_ref().map_or(Durability::None, |journal| journal.durability());
    let (snapshot_parts, snapshot_inbox) = std::sync::mpsc::channel();
    let snapshot_writer = SnapshotWriter {
        images: config.images.clone(),
        syncer: journal.as_ref().map(|journal| journal.syncer()),
        dir: config.snapshots_dir.clone(),
        keep_newest: config.snapshots_keep,
        database_status: config.database_status.clone(),
        journal_dir: config.journal_dir.clone(),
        retention: config.retention.clone(),
        health: Arc::clone(&health),
        pending: Arc::clone(&pending),
    };
    std::thread::Builder::new()
        .name("snapshots".into())
        .spawn(move || snapshot_writer.run(snapshot_inbox))
        .expect("the snapshot thread starts");
    let mut follower = Follower {
        images: config.images.clone(),
        views,
        snapshots: snapshot_parts.clone(),
        pending: Arc::clone(&pending),
        health: Arc::clone(&health),
        gated_by_sync: durability != Durability::None,
        downstream: std::mem::take(&mut config.downstream),
        stamps: Vec::with_capacity(1024),
        observer: config.observer.take(),
        batch_events: Vec::with_capacity(4096),
        request_marks: Vec::with_capacity(4096),
        capture: Capture::default(),
        reply_events: Vec::with_capacity(4096),
        replies: Vec::with_capacity(1024),
        current_start: 0,
        observed: Vec::new(),
        latencies: LocalHistograms::new(&[Stage::Views]),
    };
    let outbound_bell = Doorbell::leak();
    let outbound = build_single_producer(
        config.outbound_ring_size,
        || Outbound::EMPTY,
        Backoff { doorbell: outbound_bell },
    );
    let follow = move |slot: &Outbound, _seq, end_of_batch| follower.handle(slot, end_of_batch);
    let outbound = if durability == Durability::None {
        outbound.handle_events_with(follow).build()
    } else {
        let journal = journal.as_ref().expect("only a local journal has a durability other than none");
        // The views stage sees a slot only once the durability stage is
        // done with it (after its sync); the durability stage rings this
        // doorbell once the disruptor has marked its batch done.
        let durable_bell = Doorbell::leak();
        let mut stage = DurabilityStage {
            syncer: journal.syncer(),
            health: Arc::clone(&health),
            bell: durable_bell,
            batch_open: false,
            latencies: LocalHistograms::new(&[Stage::Sync]),
        };
        outbound
            .handle_events_with_wait_strategy(
                move |slot: &Outbound, _seq, end_of_batch| stage.handle(slot, end_of_batch),
                RingWhenDone { wait: Backoff { doorbell: outbound_bell }, done: durable_bell },
            )
            .and_then()
            .handle_events_with_wait_strategy(follow, Backoff { doorbell: durable_bell })
            .build()
    };

    let health_for_matcher = Arc::clone(&health);
    let inbound_ring_size = config.inbound_ring_size;
    let matcher_core = config.matcher_core;
    let make_matcher = move || Matcher {
        engine,
        journal,
        outbound,
        outbound_bell,
        staged: Vec::with_capacity(4096),
        events: Vec::with_capacity(256),
        last_timestamp_ns: config.last_timestamp_ns,
        commands_since_snapshot: 0,
        health: health_for_matcher,
        snapshots: snapshot_parts,
        config,
        hash_marks,
        taken: 0,
        latencies: LocalHistograms::new(&[
            Stage::RingWait,
            Stage::JournalAppend,
            Stage::Match,
            Stage::Publish,
            Stage::SnapshotStall,
        ]),
    };
    use disruptor::ProcessorSettings;
    let builder = build_multi_producer(inbound_ring_size, || Inbound::EMPTY, wait).thread_name("matcher");
    let builder = match matcher_core {
        Some(core) => builder.pin_at_core(core),
        None => builder,
    };
    let producer = builder
        .handle_events_and_state_with(
            |matcher: &mut Matcher, slot: &Inbound, _seq, end_of_batch| matcher.handle(slot, end_of_batch),
            make_matcher,
        )
        .build();
    Pipeline {
        publisher: Publisher { producer, doorbell: inbound_bell, health: Arc::clone(&health) },
        pending,
        health,
    }
}

impl Inbound {
    const EMPTY: Inbound = Inbound { request_id: 0, work: Work::Tick, published_ns: 0 };
}

impl Outbound {
    const EMPTY: Outbound = Outbound {
        request_id: 0,
        event: None,
        segment: 0,
        last: false,
        failed: false,
        timestamp_ns: 0,
        snapshot: false,
        installed: false,
    };

    /// The outcome of a command that was not applied.
    fn failed(request_id: u64) -> Outbound {
        Outbound { request_id, last: true, failed: true, ..Outbound::EMPTY }
    }
}

/// The durability stage: syncs what the matcher appended, once per batch of
/// the ring under `batch` (group commit), at most every interval under
/// `interval`, and publishes the durable watermark.
struct DurabilityStage {
    syncer: journal::JournalSyncer,
    health: Arc<Health>,
    /// Rung when a batch is marked done: by [`RingWhenDone`] when the stage
    /// waits, or here at the start of a batch that follows at once.
    bell: &'static Doorbell,
    batch_open: bool,
    latencies: LocalHistograms,
}

impl DurabilityStage {
    fn handle(&mut self, slot: &Outbound, end_of_batch: bool) {
        if !self.batch_open {
            // The previous batch is marked done by now.
            self.bell.ring();
            self.batch_open = true;
        }
        if let (Some(event), true) = (slot.event, slot.last) {
            if let Err(error) = self.syncer.appended(event.seq, slot.segment) {
                fail_journal(&self.health, &error);
            }
        }
        if end_of_batch {
            let started = Instant::now();
            match self.syncer.commit() {
                Ok(durable_seq) => {
                    self.health.durable_seq.fetch_max(durable_seq, Ordering::Relaxed);
                }
                Err(error) => fail_journal(&self.health, &error),
            }
            let now = Instant::now();
            self.latencies.record(Stage::Sync, now - started);
            self.latencies.fold_if_due(&self.health.metrics, now);
            self.batch_open = false;
        }
    }
}

/// Marks the journal failed (once, with the cause): no command is accepted
/// any more, and nothing after the durable watermark is released.
fn fail_journal(health: &Health, error: &dyn std::fmt::Display) {
    if !health.journal_failed.swap(true, Ordering::Relaxed) {
        tracing::error!(
            "journal failed: {error}; the exchange accepts no more commands; restart after fixing the disk"
        );
    }
}

type OutboundProducer = SingleProducer<Outbound, SingleConsumerBarrier>;

/// The consumer of the outbound ring.
struct Follower {
    images: Option<Arc<Images>>,
    views: Arc<RwLock<Views>>,
    snapshots: std::sync::mpsc::Sender<SnapshotPart>,
    pending: Arc<Pending>,
    health: Arc<Health>,
    /// A durability stage runs before this one: after a failed sync,
    /// nothing past the durable watermark may be released.
    gated_by_sync: bool,
    downstream: Vec<Box<dyn Downstream>>,
    /// Stamps of the batch's commands, for the database writer.
    stamps: Vec<persistence::Stamp>,
    observer: Option<Observer>,
    /// Events of the current batch, applied to the views under one lock.
    batch_events: Vec<Event>,
    /// The events of `batch_events` whose command has a request: (index,
    /// request, last event of its command).
    request_marks: Vec<(usize, u64, bool)>,
    /// The orders the command being applied touched, for its request.
    capture: Capture,
    /// Events of the batch's commands that have a request, in order.
    reply_events: Vec<Event>,
    /// The requests answered at the end of the batch, in order.
    replies: Vec<Waiting>,
    /// Where the events of the command being collected start.
    current_start: usize,
    observed: Vec<Outbound>,
    latencies: LocalHistograms,
}

impl Follower {
    fn handle(&mut self, slot: &Outbound, end_of_batch: bool) {
        if slot.snapshot {
            // Everything before the marker first, so that the views are
            // exactly at the engine's sequence number.
            self.flush();
            let state = match self.views.read() {
                Ok(views) => views.state(),
                Err(_) => return,
            };
            let _ = self.snapshots.send(SnapshotPart::Views { state, reply: slot.request_id });
            return;
        }
        if slot.installed {
            self.flush();
            self.install();
            return;
        }
        if let Some(event) = slot.event {
            if slot.request_id != 0 && !slot.failed {
                self.request_marks.push((self.batch_events.len(), slot.request_id, slot.last));
            }
            self.batch_events.push(event);
            if slot.last {
                self.stamps.push(persistence::Stamp { seq: event.seq, timestamp_ns: slot.timestamp_ns });
            }
        }
        if slot.request_id != 0 {
            if slot.failed {
                self.reply_events.truncate(self.current_start);
                self.replies.push(Waiting::failed(slot.request_id));
            } else {
                if let Some(event) = slot.event {
                    self.reply_events.push(event);
                }
                if slot.last {
                    self.replies.push(Waiting {
                        request: slot.request_id,
                        start: self.current_start,
                        end: self.reply_events.len(),
                        failed: false,
                        orders: Vec::new(),
                    });
                    self.current_start = self.reply_events.len();
                }
            }
        }
        if self.observer.is_some() && (slot.event.is_some() || slot.request_id != 0) {
            self.observed.push(*slot);
        }
        if end_of_batch {
            self.flush();
        }
    }

    /// Replaces the views by an installed image's, and tells the
    /// downstream consumers to start over from it.
    fn install(&mut self) {
        let Some(installed) = self.images.as_ref().and_then(|images| images.take_views()) else {
            debug_assert!(false, "an install marker without its views");
            return;
        };
        if let Ok(mut views) = self.views.write() {
            *views = installed.views;
        }
        for consumer in &mut self.downstream {
            consumer.installed(&installed.engine);
        }
    }

    /// After a failed sync: drops what is past the durable watermark (it
    /// may not be on disk, so nobody may see it) and fails its requests.
    fn hold_back_unsynced(&mut self) {
        if !self.gated_by_sync || !self.health.journal_failed.load(Ordering::Relaxed) {
            return;
        }
        let durable_seq = self.health.durable_seq.load(Ordering::Relaxed);
        if self.batch_events.iter().all(|e| e.seq <= durable_seq) {
            return;
        }
        let kept = self.batch_events.iter().filter(|e| e.seq <= durable_seq).count();
        self.batch_events.truncate(kept);
        self.request_marks.retain(|(at, _, _)| *at < kept);
        self.stamps.retain(|stamp| stamp.seq <= durable_seq);
        for reply in &mut self.replies {
            let seq = self.reply_events.get(reply.end.wrapping_sub(1)).map_or(0, |e| e.seq);
            if reply.failed || seq > durable_seq {
                reply.failed = true;
            }
        }
    }

    /// Applies what was collected to the views, hands it to the streams and
    /// the database, then answers the requests whose outcomes it holds.
    fn flush(&mut self) {
        let started = Instant::now();
        self.hold_back_unsynced();
        let metrics = &self.health.metrics;
        metrics.outbound_taken.fetch_add(self.batch_events.len() as u64, Ordering::Relaxed);
        if !self.batch_events.is_empty() {
            metrics.count_events(&self.batch_events);
            if let Ok(mut views) = self.views.write() {
                // Stamps are in sequence order, one per command.
                let mut stamps = self.stamps.iter().peekable();
                let mut timestamp_ns = 0;
                let mut marks = self.request_marks.iter().peekable();
                // Replies are in the order of their commands' last events.
                let mut waiting = self.replies.iter_mut().filter(|w| !w.failed);
                for (index, event) in self.batch_events.iter().enumerate() {
                    while let Some(stamp) = stamps.peek().filter(|s| s.seq <= event.seq) {
                        timestamp_ns = stamp.timestamp_ns;
                        stamps.next();
                    }
                    let mark = marks.next_if(|(at, _, _)| *at == index).copied();
                    if mark.is_some() {
                        self.capture.before(&views, event);
                    }
                    views.apply(event, timestamp_ns);
                    if let Some((_, request, last)) = mark {
                        self.capture.after(&views, event, timestamp_ns);
                        if last {
                            let orders = self.capture.finish(&views);
                            if let Some(reply) = waiting.find(|w| w.request == request) {
                                reply.orders = orders;
                            }
                        }
                    }
                }
            }
            self.request_marks.clear();
            if !self.downstream.is_empty() {
                let events: Arc<[Event]> = Arc::from(self.batch_events.as_slice());
                for consumer in &mut self.downstream {
                    consumer.batch(&events, &self.stamps);
                }
            }
            self.batch_events.clear();
            self.stamps.clear();
        }
        for reply in &mut self.replies {
            let events = &self.reply_events[reply.start..reply.end];
            let orders = std::mem::take(&mut reply.orders);
            self.pending.complete(reply.request, || {
                if reply.failed {
                    Err(PipelineFailure::JournalUnavailable)
                } else {
                    Ok(Outcome { events: events.to_vec(), orders })
                }
            });
        }
        self.replies.clear();
        // A command whose last event is still to come keeps what it has.
        self.reply_events.drain(..self.current_start);
        self.current_start = 0;
        if let Some(observe) = self.observer.as_mut() {
            for slot in self.observed.drain(..) {
                observe(&slot);
            }
        }
        let now = Instant::now();
        self.latencies.record(Stage::Views, now - started);
        self.latencies.fold_if_due(&self.health.metrics, now);
    }
}

/// A request to answer at the end of the batch.
struct Waiting {
    request: u64,
    /// Its command's events: `reply_events[start..end]`.
    start: usize,
    end: usize,
    /// The command was not applied: the journal failed.
    failed: bool,
    orders: Vec<OrderView>,
}

impl Waiting {
    fn failed(request: u64) -> Waiting {
        Waiting { request, start: 0, end: 0, failed: true, orders: Vec::new() }
    }
}

/// Polls of a full outbound ring spent spinning before the matcher yields.
const FULL_RING_SPINS: u32 = 64;

/// The single owner of trading state.
struct Matcher {
    engine: Engine,
    /// `None` on a cluster node: its commands come committed.
    journal: Option<JournalWriter>,
    outbound: OutboundProducer,
    outbound_bell: &'static Doorbell,
    /// Outcomes of the current batch of the inbound ring, published at its end.
    staged: Vec<Outbound>,
    events: Vec<Event>,
    last_timestamp_ns: u64,
    commands_since_snapshot: u64,
    health: Arc<Health>,
    snapshots: std::sync::mpsc::Sender<SnapshotPart>,
    config: PipelineConfig,
    /// A cluster node's own state hashes at the marked points (`None` on a
    /// single node: nothing to compare with).
    hash_marks: Option<HashMarks>,
    /// Slots taken from the inbound ring in the current batch.
    taken: u64,
    latencies: LocalHistograms,
}

impl Matcher {
    fn handle(&mut self, slot: &Inbound, end_of_batch: bool) {
        self.taken += 1;
        match slot.work {
            Work::Command(command) => self.apply(slot.request_id, command, slot.published_ns),
            Work::Committed { command, timestamp_ns } => {
                self.apply_committed(slot.request_id, command, timestamp_ns, slot.published_ns)
            }
            Work::HashMark { seq, node, hash } => self.check_hash_mark(seq, node, hash),
            Work::ClusterSnapshot => self.snapshot(0),
            Work::Install => self.install(),
            Work::Tick => {
                // Under `interval`, wakes the durability stage so that the
                // last commands are synced within the interval even when
                // nothing follows them.
                let unsynced = self.health.durable_seq.load(Ordering::Relaxed) < self.engine.last_seq();
                let interval = self
                    .journal
                    .as_ref()
                    .is_some_and(|j| matches!(j.durability(), Durability::Interval { .. }));
                if interval && unsynced {
                    self.staged.push(Outbound::EMPTY);
                }
            }
            Work::Shutdown if self.journal.is_none() => {
                // A cluster node's state is in the replicated log: nothing
                // to sync or snapshot here.
                self.publish_batch();
                self.staged.push(Outbound { request_id: slot.request_id, last: true, ..Outbound::EMPTY });
                self.publish_staged();
            }
            Work::Shutdown => {
                self.publish_batch();
                // The waiting shutdown is answered once the snapshot is on disk.
                self.snapshot(slot.request_id);
            }
        }
        if end_of_batch {
            self.health.metrics.inbound_taken.fetch_add(std::mem::take(&mut self.taken), Ordering::Relaxed);
            let started = Instant::now();
            let events = self.staged.len();
            self.publish_batch();
            let now = Instant::now();
            if events > 0 {
                self.latencies.record(Stage::Publish, now - started);
            }
            self.latencies.fold_if_due(&self.health.metrics, now);
            if self.config.snapshot_every_commands > 0
                && self.commands_since_snapshot >= self.config.snapshot_every_commands
            {
                self.snapshot(0);
            }
        }
    }

    fn apply(&mut self, request_id: u64, command: Command, published_ns: u64) {
        let Some(journal) = self.journal.as_mut() else {
            // A cluster node takes commands only once they are committed.
            debug_assert!(false, "a command reached a replicated matcher uncommitted");
            self.staged.push(Outbound::failed(request_id));
            return;
        };
        if self.health.journal_failed.load(Ordering::Relaxed) {
            self.staged.push(Outbound::failed(request_id));
            return;
        }
        // Wall-clock time, never running backwards in the journal.
        let now_ns = clock::now_ns();
        if published_ns != 0 {
            self.latencies.record_ns(Stage::RingWait, now_ns.saturating_sub(published_ns));
        }
        self.last_timestamp_ns = self.last_timestamp_ns.max(now_ns);
        let started = Instant::now();
        let stamped =
            StampedCommand { seq: self.engine.last_seq() + 1, timestamp_ns: self.last_timestamp_ns, command };
        if let Err(error) = journal.append(&stamped) {
            fail_journal(&self.health, &error);
            self.staged.push(Outbound::failed(request_id));
            return;
        }
        let segment = journal.segment_first_seq();
        let appended = Instant::now();
        self.latencies.record(Stage::JournalAppend, appended - started);
        self.apply_stamped(request_id, &stamped, segment);
    }

    /// Applies a command committed to the cluster's log: every node stamps
    /// it alike, from the log alone (the next sequence number, and the
    /// leader's time unless that would run backwards), so that every node's
    /// engine goes through the same states.
    fn apply_committed(&mut self, request_id: u64, command: Command, timestamp_ns: u64, published_ns: u64) {
        if published_ns != 0 {
            self.latencies.record_ns(Stage::RingWait, clock::now_ns().saturating_sub(published_ns));
        }
        self.last_timestamp_ns = self.last_timestamp_ns.max(timestamp_ns);
        let stamped =
            StampedCommand { seq: self.engine.last_seq() + 1, timestamp_ns: self.last_timestamp_ns, command };
        self.apply_stamped(request_id, &stamped, 0);
        if let Some(marks) = self.hash_marks.as_mut() {
            marks.applied(&self.engine);
        }
    }

    /// Compares a hash mark from the log with this node's own hash at its
    /// sequence number. A difference means the replicas no longer hold the
    /// same state: this node must not answer, publish or acknowledge
    /// anything more, so the process exits (see [`DIVERGED_EXIT_CODE`]).
    fn check_hash_mark(&mut self, seq: u64, node: u64, hash: u64) {
        let Some(marks) = self.hash_marks.as_ref() else {
            // Only the cluster's log carries marks, and a cluster node's
            // matcher always keeps hashes.
            debug_assert!(false, "a hash mark reached a single node's matcher");
            return;
        };
        let last_seq = self.engine.last_seq();
        match marks.check(seq, hash, last_seq) {
            MarkCheck::Agreed => {
                self.health.hash_marks_checked.fetch_add(1, Ordering::Relaxed);
                self.health.last_hash_mark_seq.fetch_max(seq, Ordering::Relaxed);
            }
            MarkCheck::NotKept => tracing::debug!(
                "hash mark of node {node} at sequence {seq} not checked: this node no longer keeps its hash \
                 there (it keeps the last {HASH_MARKS_KEPT}, now at sequence {last_seq})"
            ),
            MarkCheck::OffInterval => tracing::warn!(
                "hash mark of node {node} at sequence {seq} not checked: this node hashes every {} sequence \
                 numbers; hash_mark_interval_seqs must be the same on every node",
                marks.interval_seqs
            ),
            MarkCheck::Diverged { ours } => {
                tracing::error!(
                    "replicas diverged: at sequence {seq} the state hash of node {} is {ours:016x}, the hash \
                     mark of node {node} says {hash:016x}; a breach of determinism: this node stops applying \
                     and exits with status {DIVERGED_EXIT_CODE}; keep both nodes' logs and data directories",
                    marks.node_id
                );
                std::process::exit(DIVERGED_EXIT_CODE);
            }
            MarkCheck::Ahead => {
                tracing::error!(
                    "replicas diverged: the hash mark of node {node} is for sequence {seq}, but node {} has \
                     applied only {last_seq} commands at that point of the log: the nodes number the log \
                     differently; this node stops applying and exits with status {DIVERGED_EXIT_CODE}",
                    marks.node_id
                );
                std::process::exit(DIVERGED_EXIT_CODE);
            }
        }
    }

    /// Applies a stamped command to the engine and stages its events.
    fn apply_stamped(&mut self, request_id: u64, stamped: &StampedCommand, segment: u64) {
        self.events.clear();
        let started = Instant::now();
        // The sequence number was taken from the engine itself.
        if self.engine.apply(stamped, &mut self.events).is_err() {
            debug_assert!(false, "the matcher numbers commands from the engine");
            return;
        }
        self.latencies.record(Stage::Match, started.elapsed());
        self.commands_since_snapshot += 1;
        let count = self.events.len();
        for (index, event) in self.events.iter().enumerate() {
            self.staged.push(Outbound {
                request_id,
                event: Some(*event),
                segment,
                last: index + 1 == count,
                failed: false,
                timestamp_ns: stamped.timestamp_ns,
                snapshot: false,
                installed: false,
            });
        }
    }

    /// Publishes the batch's outcomes (the durability stage makes them
    /// durable before anyone sees them).
    fn publish_batch(&mut self) {
        self.health.last_seq.store(self.engine.last_seq(), Ordering::Relaxed);
        // The journal syncs on its own when a segment fills; a cluster
        // node's commands were durable on a majority before they came.
        let durable_seq = self.journal.as_ref().map_or(self.engine.last_seq(), |j| j.durable_seq());
        self.health.durable_seq.fetch_max(durable_seq, Ordering::Relaxed);
        self.publish_staged();
    }

    /// Publishes the staged outcomes to the outbound ring.
    fn publish_staged(&mut self) {
        // One claim per chunk of the ring, not one per event.
        let chunk = (self.config.outbound_ring_size / 4).max(1);
        for outcomes in self.staged.chunks(chunk) {
            let mut polls: u32 = 0;
            while self
                .outbound
                .try_batch_publish(outcomes.len(), |slots| {
                    for (slot, outcome) in slots.zip(outcomes) {
                        *slot = *outcome;
                    }
                })
                .is_err()
            {
                // The consumers are behind. Spinning here would take the
                // core they need to catch up (a small machine has fewer
                // cores than pipeline threads): spin briefly, then yield.
                polls += 1;
                if polls < FULL_RING_SPINS {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
            // Each chunk wakes the consumers, so that they drain the ring
            // while the next chunk waits for room.
            self.outbound_bell.ring();
        }
        self.health.metrics.outbound_published.fetch_add(self.staged.len() as u64, Ordering::Relaxed);
        self.staged.clear();
        self.outbound_bell.ring();
    }

    /// Replaces the engine by an installed snapshot image's (cluster mode):
    /// the commands before the marker went to the old engine, those after
    /// go to this one, and the views stage takes the views at the marker.
    fn install(&mut self) {
        let Some(images) = self.config.images.as_ref() else {
            debug_assert!(false, "an install marker reached a single node's matcher");
            return;
        };
        let Some(installed) = images.take_install() else {
            debug_assert!(false, "an install marker without its state");
            return;
        };
        self.engine = installed.engine;
        self.last_timestamp_ns = installed.last_timestamp_ns;
        if let Some(marks) = self.hash_marks.as_mut() {
            marks.installed(&self.engine);
        }
        images.push_views(InstalledViews { views: installed.views, engine: installed.engine_copy });
        self.staged.push(Outbound { last: true, installed: true, ..Outbound::EMPTY });
        tracing::info!("installed a snapshot image at sequence {}", self.engine.last_seq());
    }

    /// Takes a snapshot of the current state: the matcher stops only to
    /// clone the engine; the views consumer adds the views when it reaches
    /// the marker published here, and the snapshot thread syncs the journal
    /// up to it and writes the file. `reply` (0: none) is answered once it
    /// is on disk, or failed when no snapshot can be taken.
    fn snapshot(&mut self, reply: u64) {
        self.commands_since_snapshot = 0;
        if self.health.journal_failed.load(Ordering::Relaxed) {
            if reply != 0 {
                self.staged.push(Outbound::failed(reply));
                self.publish_staged();
            }
            return;
        }
        let started = Instant::now();
        let copy = Box::new(self.engine.clone());
        let stall = started.elapsed();
        self.health.snapshot_stall_ns.store(stall.as_nanos() as u64, Ordering::Relaxed);
        self.latencies.record(Stage::SnapshotStall, stall);
        let segment = self.journal.as_ref().map_or(0, |j| j.segment_first_seq());
        let _ = self.snapshots.send(SnapshotPart::Engine(copy, segment));
        self.staged.push(Outbound { request_id: reply, last: true, snapshot: true, ..Outbound::EMPTY });
        self.publish_staged();
    }
}

/// The thread that writes snapshot files, pairing each engine state with
/// the views at the same sequence number, and then prunes what the
/// snapshots make unnecessary.
struct SnapshotWriter {
    /// Cluster mode: the images' requests; the image is written there
    /// instead of a snapshot file.
    images: Option<Arc<Images>>,
    /// Syncs the journal up to a snapshot before it is written: a snapshot
    /// is never ahead of the durable journal (none on a cluster node).
    syncer: Option<journal::JournalSyncer>,
    dir: PathBuf,
    keep_newest: usize,
    database_status: Option<Arc<persistence::WriterStatus>>,
    journal_dir: PathBuf,
    retention: SegmentRetention,
    health: Arc<Health>,
    pending: Arc<Pending>,
}

impl SnapshotWriter {
    fn run(mut self, inbox: std::sync::mpsc::Receiver<SnapshotPart>) {
        // Engines waiting for their views, oldest first (a few at most: one
        // per snapshot taken while the views consumer is behind), with the
        // journal segment of their last command.
        let mut engines: VecDeque<(Box<Engine>, u64)> = VecDeque::new();
        while let Ok(part) = inbox.recv() {
            match part {
                SnapshotPart::Engine(engine, segment) => engines.push_back((engine, segment)),
                SnapshotPart::Views { state, reply } => {
                    // Engines older than these views will never get theirs.
                    while engines.front().is_some_and(|(e, _)| e.last_seq() < state.last_seq) {
                        engines.pop_front();
                    }
                    let written = match engines.pop_front() {
                        Some((engine, _)) if self.images.is_some() => self.write_image(&engine, &state),
                        Some((engine, segment)) if engine.last_seq() == state.last_seq => {
                            self.sync_journal(engine.last_seq(), segment) && self.write(&engine, &state)
                        }
                        other => {
                            tracing::error!(
                                "snapshot at sequence {}: the engine's state is missing ({:?} instead)",
                                state.last_seq,
                                other.map(|(e, _)| e.last_seq())
                            );
                            false
                        }
                    };
                    if reply != 0 {
                        self.pending.complete(reply, || {
                            if written {
                                Ok(Outcome::default())
                            } else {
                                Err(PipelineFailure::JournalUnavailable)
                            }
                        });
                    }
                }
            }
        }
    }

    /// Makes the journal durable through `seq` (in the segment that starts
    /// at `segment`): a snapshot must never be ahead of the durable journal.
    fn sync_journal(&mut self, seq: u64, segment: u64) -> bool {
        let Some(syncer) = self.syncer.as_mut() else { return true };
        let synced = syncer.appended(seq, segment).and_then(|()| syncer.sync());
        match synced {
            Ok(durable_seq) => {
                self.health.durable_seq.fetch_max(durable_seq, Ordering::Relaxed);
                true
            }
            Err(error) => {
                fail_journal(&self.health, &error);
                false
            }
        }
    }

    /// Writes the image a cluster node's Raft state machine asked for at
    /// the engine's sequence number, and answers the request.
    fn write_image(&self, engine: &Engine, state: &ViewsState) -> bool {
        let Some(images) = self.images.as_ref() else { return false };
        let seq = engine.last_seq();
        let Some(requested) = images.take_request(seq) else {
            tracing::error!("snapshot image at sequence {seq}: nobody asked for it");
            return false;
        };
        let written = (|| {
            if state.last_seq != seq {
                return Err(format!("the views are at sequence {}, the engine at {seq}", state.last_seq));
            }
            let views = state.encode().map_err(|e| format!("cannot encode the views: {e}"))?;
            let bytes =
                replication::encode_image(&requested.meta, engine, requested.last_timestamp_ns, Some(views))
                    .map_err(|e| e.to_string())?;
            let kept = images
                .keep(requested.meta.clone(), seq, &bytes)
                .map_err(|e| format!("cannot write it: {e}"))?;
            Ok((kept, bytes.len()))
        })();
        let result = match written {
            Ok((true, bytes)) => {
                self.health.snapshot_seq.store(seq, Ordering::Relaxed);
                tracing::info!(
                    "snapshot image at sequence {seq}, log position {:?}: {bytes} bytes",
                    requested.meta.last_log_id
                );
                Ok(ImageTaken::Kept)
            }
            Ok((false, _)) => {
                tracing::info!(
                    "snapshot image at sequence {seq}: not kept, an image of a later log position was installed \
                     meanwhile (the leader's)"
                );
                Ok(ImageTaken::Superseded)
            }
            Err(error) => {
                tracing::error!("snapshot image at sequence {seq}: {error}");
                Err(error)
            }
        };
        let ok = result.is_ok();
        let _ = requested.done.send(result);
        ok
    }

    fn write(&self, engine: &Engine, state: &ViewsState) -> bool {
        let views = match state.encode() {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(
                    "snapshot at sequence {}: cannot encode the views: {error}",
                    engine.last_seq()
                );
                return false;
            }
        };
        let keep = journal::SnapshotKeep {
            newest: self.keep_newest,
            hold_at_or_below: self.database_status.as_ref().map(|s| s.cursor_seq.load(Ordering::Relaxed)),
        };
        match journal::write_snapshot_with_views(&self.dir, engine, Some(&views), keep) {
            Ok(info) => {
                self.health.snapshot_seq.store(info.seq, Ordering::Relaxed);
                let snapshots = journal::list_snapshots(&self.dir).unwrap_or_default();
                let oldest = snapshots.last().map(|(seq, _)| *seq);
                // With a database writer behind, the journal from its held
                // snapshot on stays; with no snapshot at or before its
                // cursor, the whole journal stays (it replays from the start).
                let oldest = match keep.hold_at_or_below {
                    Some(hold) => snapshots.iter().find(|(seq, _)| *seq <= hold).and(oldest),
                    None => oldest,
                };
                if let Some(oldest) = oldest {
                    if let Err(error) = journal::prune_segments(&self.journal_dir, oldest, &self.retention) {
                        tracing::warn!("pruning journal segments failed: {error}");
                    }
                }
                true
            }
            Err(error) => {
                tracing::error!("snapshot at sequence {} failed: {error}", engine.last_seq());
                false
            }
        }
    }
}

/// Publishes a tick every `every` until `stop` is set, so that the matcher
/// does its housekeeping even when no command arrives.
pub fn start_ticker(
    mut publisher: Publisher,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(every);
            let _ = publisher.try_publish(0, Work::Tick);
        }
    })
}

/// Publishes one command for `request_id`, or says the ring is full.
pub fn submit(publisher: &mut Publisher, request_id: u64, command: Command) -> Result<(), RingBufferFull> {
    publisher.try_publish(request_id, Work::Command(command))
}

/// The exit status of a cluster node that found its state differs from
/// the leader's at a hash mark (distinct from a failed start, 1, and bad
/// arguments, 2): restarting it replays the same log and stops it again,
/// so a supervisor should alert rather than restart it in a loop.
pub const DIVERGED_EXIT_CODE: i32 = 3;

/// The newest own hashes a matcher keeps for the leader's marks to find:
/// a mark lands in the log shortly after its point (one commit after the
/// leader applied it), so only a node far behind misses one, and then the
/// next mark checks it.
pub const HASH_MARKS_KEPT: usize = 16;

/// Hashes the matcher hands to the mark proposer that are not taken yet;
/// more are dropped (a mark is a check, not state: the next one follows).
pub const HASH_MARKS_QUEUED_MAX: usize = 64;

/// Test-only: a node started with this variable set to a sequence number
/// records a wrong state hash there (flips one bit), so that tests can make
/// a replica diverge for real. Never set it on a production node.
pub const CORRUPT_HASH_FOR_TEST_VAR: &str = "TEST_EXCHANGE_CORRUPT_HASH_AT_SEQ";

/// A state hash the matcher computed at a marked point, for the leader to
/// propose as a hash mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ComputedHash {
    pub seq: u64,
    pub hash: u64,
}

/// A cluster node's own state hashes at the deterministic points (every
/// command whose sequence number is a multiple of `interval_seqs`), kept
/// until the leader's mark for the same point comes through the log.
pub struct HashMarks {
    node_id: u64,
    interval_seqs: u64,
    /// (seq, hash), oldest first, at most [`HASH_MARKS_KEPT`].
    kept: VecDeque<(u64, u64)>,
    computed: tokio::sync::mpsc::Sender<ComputedHash>,
    corrupt_at_seq: Option<u64>,
}

/// What a hash mark from the log says about this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkCheck {
    /// This node's hash at the mark's point is the same.
    Agreed,
    /// This node no longer keeps its hash at that point (it was far behind).
    NotKept,
    /// The point is not one this node hashes (the nodes' intervals differ).
    OffInterval,
    /// This node's hash at that point differs: the replicas diverged.
    Diverged { ours: u64 },
    /// The mark is for a command this node has not applied although the
    /// leader applied it before proposing the mark: the nodes number the
    /// log differently, which is a divergence too.
    Ahead,
}

impl HashMarks {
    /// Hashes for node `node_id` every `interval_seqs` (positive) commands;
    /// the receiver gets each hash as it is computed. Reads the test-only
    /// [`CORRUPT_HASH_FOR_TEST_VAR`] from `env`.
    pub fn new(
        node_id: u64,
        interval_seqs: u64,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(HashMarks, tokio::sync::mpsc::Receiver<ComputedHash>), String> {
        if interval_seqs == 0 {
            return Err("hash_mark_interval_seqs must be positive".into());
        }
        let mut corrupt_at_seq = None;
        for (name, value) in env {
            if name == CORRUPT_HASH_FOR_TEST_VAR {
                let seq = value.parse::<u64>().map_err(|e| format!("{name}={value:?}: {e}"))?;
                tracing::warn!(
                    "{name}={seq}: this node records a wrong state hash at sequence {seq} (test only)"
                );
                corrupt_at_seq = Some(seq);
            }
        }
        let (computed, receiver) = tokio::sync::mpsc::channel(HASH_MARKS_QUEUED_MAX);
        let kept = VecDeque::with_capacity(HASH_MARKS_KEPT);
        Ok((HashMarks { node_id, interval_seqs, kept, computed, corrupt_at_seq }, receiver))
    }

    /// After each committed command: at a marked point, hashes the whole
    /// state (the cost the interval is chosen for; docs/replication.md),
    /// keeps the hash and offers it to the proposer without waiting.
    fn applied(&mut self, engine: &Engine) {
        let seq = engine.last_seq();
        if !seq.is_multiple_of(self.interval_seqs) {
            return;
        }
        let mut hash = engine.state_hash();
        if self.corrupt_at_seq == Some(seq) {
            hash ^= 1;
        }
        self.keep(seq, hash);
    }

    /// The engine was replaced by an installed image's: hashes kept from
    /// beyond its point are of another history, and its own point may be a
    /// marked one.
    fn installed(&mut self, engine: &Engine) {
        let seq = engine.last_seq();
        self.kept.retain(|&(kept, _)| kept < seq);
        self.applied(engine);
    }

    fn keep(&mut self, seq: u64, hash: u64) {
        debug_assert!(self.kept.back().is_none_or(|&(last, _)| last < seq), "hashes are kept in seq order");
        if self.kept.len() == HASH_MARKS_KEPT {
            self.kept.pop_front();
        }
        self.kept.push_back((seq, hash));
        // A follower's hashes are offered too: the proposer drops them
        // unless this node leads. A full queue drops (never waits).
        let _ = self.computed.try_send(ComputedHash { seq, hash });
    }

    /// Compares the mark (`seq`, `hash`) with this node's own hash, this
    /// node having applied `last_seq` commands when the mark came.
    fn check(&self, seq: u64, hash: u64, last_seq: u64) -> MarkCheck {
        if seq > last_seq {
            return MarkCheck::Ahead;
        }
        if let Some(&(_, ours)) = self.kept.iter().find(|(kept, _)| *kept == seq) {
            return if ours == hash { MarkCheck::Agreed } else { MarkCheck::Diverged { ours } };
        }
        if seq == 0 || !seq.is_multiple_of(self.interval_seqs) {
            return MarkCheck::OffInterval;
        }
        MarkCheck::NotKept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(interval_seqs: u64) -> (HashMarks, tokio::sync::mpsc::Receiver<ComputedHash>) {
        HashMarks::new(1, interval_seqs, Vec::new()).unwrap()
    }

    #[test]
    fn a_mark_agrees_differs_or_is_not_checked() {
        let (mut marks, mut computed) = marks(10);
        for seq in (10..=200).step_by(10) {
            marks.keep(seq, seq * 7);
        }
        assert_eq!(marks.check(200, 1_400, 205), MarkCheck::Agreed);
        assert_eq!(marks.check(50, 350, 205), MarkCheck::Agreed);
        assert_eq!(marks.check(200, 1_401, 205), MarkCheck::Diverged { ours: 1_400 });
        // Only the newest ones are kept: 20 computed, 16 kept.
        assert_eq!(marks.check(40, 280, 205), MarkCheck::NotKept);
        assert_eq!(marks.check(0, 0, 205), MarkCheck::OffInterval);
        assert_eq!(marks.check(195, 0, 205), MarkCheck::OffInterval);
        // A mark for a command this node has not applied: numbering differs.
        assert_eq!(marks.check(210, 1_470, 205), MarkCheck::Ahead);
        let offered: Vec<u64> = std::iter::from_fn(|| computed.try_recv().ok()).map(|c| c.seq).collect();
        assert_eq!(offered, (10..=200).step_by(10).collect::<Vec<_>>());
    }

    #[test]
    fn the_matcher_hashes_at_the_marked_points_only() {
        let (mut marks, mut computed) = marks(3);
        let mut engine = Engine::new(engine_core::EngineLimits::default());
        let mut events = Vec::new();
        for seq in 1..=7 {
            let limits = engine_core::EngineLimits::default();
            let command = StampedCommand { seq, timestamp_ns: seq, command: Command::SetLimits { limits } };
            engine.apply(&command, &mut events).unwrap();
            marks.applied(&engine);
            if seq == 6 {
                let hash = engine.state_hash();
                assert_eq!(marks.check(6, hash, 6), MarkCheck::Agreed);
            }
        }
        let offered: Vec<u64> = std::iter::from_fn(|| computed.try_recv().ok()).map(|c| c.seq).collect();
        assert_eq!(offered, [3, 6]);
    }

    #[test]
    fn the_test_only_variable_makes_a_node_diverge_at_its_point() {
        let env = vec![(CORRUPT_HASH_FOR_TEST_VAR.to_string(), "6".to_string())];
        let (mut marks, _computed) = HashMarks::new(2, 3, env).unwrap();
        let mut engine = Engine::new(engine_core::EngineLimits::default());
        let mut events = Vec::new();
        for seq in 1..=6 {
            let limits = engine_core::EngineLimits::default();
            let command = StampedCommand { seq, timestamp_ns: seq, command: Command::SetLimits { limits } };
            engine.apply(&command, &mut events).unwrap();
            marks.applied(&engine);
        }
        let hash = engine.state_hash();
        assert_eq!(marks.check(6, hash, 6), MarkCheck::Diverged { ours: hash ^ 1 });
        let bad = vec![(CORRUPT_HASH_FOR_TEST_VAR.to_string(), "soon".to_string())];
        let error = HashMarks::new(2, 3, bad).err().unwrap();
        assert!(error.contains(CORRUPT_HASH_FOR_TEST_VAR), "{error}");
        assert!(HashMarks::new(2, 0, Vec::new()).is_err());
    }
}
