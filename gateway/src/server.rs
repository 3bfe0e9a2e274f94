//! Starting and stopping the exchange: recovery, the pipeline, the HTTP
//! listener, and a graceful shutdown that drains the ring, syncs the
//! journal and writes a snapshot.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use engine_core::{Command, Engine, EngineLimits};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use journal::{open_data_dir_with, DataDir, JournalConfig};
use tokio::net::TcpListener;

use crate::auth::{Authenticator, KeyTable};
use crate::config::{Config, WaitKind};
use crate::http;
use crate::pipeline::{self, PipelineConfig, Work};
use crate::state::AppState;
use crate::views::Views;

/// Why the exchange could not start or stop cleanly.
#[derive(Debug)]
pub struct ServerError(pub String);

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServerError {}

/// Where the server listens.
#[derive(Clone, Copy, Debug)]
pub struct Addresses {
    pub rest: SocketAddr,
    pub ws: SocketAddr,
}

/// How long open connections get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the database writer gets to catch up at shutdown.
const WRITER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the configured address and serves until `shutdown` resolves.
/// `on_listening` is told the bound address (useful with port 0).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    on_listening: impl FnOnce(Addresses),
) -> Result<(), ServerError> {
    let started = Instant::now();
    let recovered = match &config.cluster {
        Some(_) => Recovered::empty_for_cluster(&config),
        None => recover(&config).await?,
    };
    let Recovered { engine, views, writer, recovered_snapshot_seq, last_journaled_ns, new_data_dir } =
        recovered;
    let recovered_limits = engine.limits();
    // The database writer regenerates from the journal whatever the
    // database lacks up to here, then follows the live events.
    // On a cluster node it regenerates from the replicated log and the
    // snapshot images, once the node has applied the log it starts with.
    let writer_ready = config.cluster.as_ref().map(|_| Arc::new(std::sync::atomic::AtomicBool::new(false)));
    let database = match &config.database_url {
        Some(url) => {
            let data = DataDir::new(&config.data_dir);
            let mut writer_config = match &config.cluster {
                None => persistence::WriterConfig::new(url.clone(), data, EngineLimits::default()),
                Some(_) => {
                    let source = crate::cluster::committed_log::CommittedLog {
                        journal: data.journal(),
                        snapshots: data.snapshots(),
                    };
                    persistence::WriterConfig::with_source(url.clone(), Arc::new(source))
                }
            };
            writer_config.ready = writer_ready.clone();
            writer_config.transaction_timeout = Duration::from_millis(config.database_transaction_timeout_ms);
            writer_config.lag_max = Duration::from_millis(config.database_lag_max_ms);
            let published = persistence::Stamp { seq: engine.last_seq(), timestamp_ns: 0 };
            let writer = persistence::Writer::start(writer_config, published)
                .map_err(|e| ServerError(format!("cannot start the database writer: {e}")))?;
            Some((writer, Arc::new(persistence::History::new(url.clone()))))
        }
        None => None,
    };
    let views = Arc::new(RwLock::new(views));
    let keys = Arc::new(KeyTable::from_engine(&engine));
    let unconfirmed_keys = Arc::new(crate::cluster::UnconfirmedKeys::default());
    let data = DataDir::new(&config.data_dir);
    let subscribers = Arc::new(crate::subscribers::Subscribers::default());
    let (hub_sender, hub_receiver) = tokio::sync::mpsc::channel(crate::ws::HUB_QUEUE_MAX);
    let hub = tokio::spawn(crate::ws::run_hub(Arc::clone(&views), Arc::clone(&subscribers), hub_receiver));
    let health = Arc::new(pipeline::Health::default());
    // A cluster node's snapshot image (checked whole here: a node never
    // starts on a damaged one); openraft installs it first, then applies
    // the log after it.
    let images = match &config.cluster {
        Some(_) => Some(Arc::new(
            crate::images::Images::open(
                &data.snapshots(),
                database.as_ref().map(|(writer, _)| Arc::clone(&writer.status)),
            )
            .map_err(|e| {
                ServerError(format!(
                "cannot read this node's snapshot image: {e}; to rejoin the cluster, move this node's data \
                 directory away and start it empty (it catches up from the leader)"
            ))
            })?,
        )),
        None => None,
    };
    let pipeline_config = PipelineConfig {
        inbound_ring_size: config.inbound_ring_size,
        outbound_ring_size: config.outbound_ring_size,
        busy_spin: config.wait_strategy == WaitKind::BusySpin,
        matcher_core: config.matcher_core,
        snapshot_every_commands: config.snapshot_every_commands,
        snapshots_dir: data.snapshots(),
        snapshots_keep: config.snapshots_keep,
        journal_dir: data.journal(),
        retention: config.retention(),
        observer: None,
        downstream: {
            let mut downstream: Vec<Box<dyn pipeline::Downstream>> = vec![Box::new(HubFeed {
                sender: hub_sender,
                subscribers: Arc::clone(&subscribers),
                health: Arc::clone(&health),
            })];
            if let Some((writer, _)) = &database {
                downstream.push(Box::new(DatabaseFeed(writer.feed.clone())));
            }
            if config.cluster.is_some() {
                downstream.push(Box::new(crate::cluster::KeysFeed {
                    table: Arc::clone(&keys),
                    unconfirmed: Arc::clone(&unconfirmed_keys),
                }));
            }
            downstream
        },
        database_status: database.as_ref().map(|(writer, _)| Arc::clone(&writer.status)),
        // A cluster node stamps from the log alone (every node alike),
        // starting from nothing as its replay does.
        last_timestamp_ns: if config.cluster.is_some() { 0 } else { last_journaled_ns },
        health,
        images: images.clone(),
    };
    let mut computed_hashes = None;
    let pipeline = match (writer, &config.cluster) {
        (Some(writer), _) => pipeline::start(engine, writer, Arc::clone(&views), pipeline_config),
        (None, Some(cluster_config)) => {
            let (hash_marks, computed) = pipeline::HashMarks::new(
                cluster_config.node_id,
                cluster_config.hash_mark_interval_seqs,
                std::env::vars(),
            )
            .map_err(ServerError)?;
            computed_hashes = Some(computed);
            pipeline::start_replicated(engine, Arc::clone(&views), pipeline_config, hash_marks)
        }
        (None, None) => {
            return Err(ServerError("a node without a local journal must be a cluster node".into()))
        }
    };
    let signed_after = crate::auth::SignedAfter::default();
    let seen_signatures = crate::auth::SeenSignatures::default();
    let cluster = match &config.cluster {
        Some(cluster_config) => {
            let feed = crate::cluster::CommittedFeed::new(
                pipeline.publisher.clone(),
                cluster_config.node_id,
                Arc::clone(&unconfirmed_keys),
                seen_signatures.clone(),
                signed_after.clone(),
                images.clone().expect("a cluster node has images"),
                config.retention_of_views(),
            );
            let cluster =
                crate::cluster::Cluster::start(cluster_config, &data.journal(), feed, writer_ready.clone())
                    .await
                    .map_err(ServerError)?;
            let cluster = Arc::new(cluster);
            if let Some(computed) = computed_hashes.take() {
                let health = Arc::clone(&pipeline.health);
                tokio::spawn(crate::cluster::propose_hash_marks(Arc::clone(&cluster), computed, health));
            }
            Some(cluster)
        }
        None => None,
    };
    // /health tells the newest snapshot on disk from the start, not only
    // once this process has written one.
    pipeline.health.snapshot_seq.store(recovered_snapshot_seq, std::sync::atomic::Ordering::Relaxed);
    let state = Arc::new(AppState {
        views,
        auth: Authenticator::new(
            keys,
            config.recv_window_max_ms,
            config.rate_limit_per_s,
            config.rate_limit_burst,
        )
        .refusing_signed_before(last_journaled_ns / 1_000_000)
        .sharing_signed_after(signed_after)
        .sharing_seen_signatures(seen_signatures),
        pending: Arc::clone(&pipeline.pending),
        health: Arc::clone(&pipeline.health),
        admin_token: config.admin_token.clone(),
        body_max_bytes: config.request_body_max_bytes,
        request_timeout: Duration::from_millis(config.request_timeout_ms),
        database: database
            .as_ref()
            .map(|(writer, history)| (Arc::clone(&writer.status), Arc::clone(history))),
        binance: crate::binance::state::State::new(config.request_weight_per_minute),
        subscribers: Arc::clone(&subscribers),
        ws_queue_max: config.ws_queue_max,
        ws_send_timeout: Duration::from_millis(config.ws_send_timeout_ms),
        cluster: cluster.clone(),
    });
    let limits_task = match &cluster {
        // Each leader journals the configured limits when it takes over.
        Some(_) => Some(tokio::spawn(set_limits_when_leading(
            Arc::clone(&state),
            config.limits,
            pipeline.publisher.clone(),
        ))),
        None => {
            set_limits_at_start(&state, &pipeline, recovered_limits, new_data_dir, &config).await?;
            None
        }
    };
    let listen_keys = tokio::spawn(expire_listen_keys(Arc::clone(&state)));
    let stop_ticker = Arc::new(AtomicBool::new(false));
    let tick_every = Duration::from_millis(config.sync_interval_ms.clamp(1, 100));
    let ticker = pipeline::start_ticker(pipeline.publisher.clone(), tick_every, Arc::clone(&stop_ticker));

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServerError(format!("cannot listen on {}: {e}", config.listen)))?;
    let address = listener.local_addr().map_err(|e| ServerError(e.to_string()))?;
    let ws_listener = crate::ws::bind(config.ws_listen)
        .await
        .map_err(|e| ServerError(format!("cannot listen on {}: {e}", config.ws_listen)))?;
    let ws_address = ws_listener.local_addr().map_err(|e| ServerError(e.to_string()))?;
    let ws_server = tokio::spawn(crate::ws::serve(
        ws_listener,
        Arc::clone(&state),
        Arc::clone(&subscribers),
        pipeline.publisher.clone(),
        crate::ws::ConnectionLimits { queue_max: state.ws_queue_max, send_timeout: state.ws_send_timeout },
    ));
    tracing::info!(
        "ready after {:.3} s: REST API on http://{address}, WebSocket API on ws://{ws_address}",
        started.elapsed().as_secs_f64()
    );
    on_listening(Addresses { rest: address, ws: ws_address });

    // Each connection drops its permit when it ends: the drain at shutdown
    // waits until every permit is back.
    let connections = Arc::new(tokio::sync::Semaphore::new(config.connections_max));
    let (drain, draining) = tokio::sync::watch::channel(false);
    let accepting = pipeline.publisher.clone();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                // A connection over the limit is closed at once: each one
                // holds memory and a handle on the ring.
                let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let socket = stream.as_raw_fd();
                let producer = Arc::new(Mutex::new(accepting.clone()));
                let state = Arc::clone(&state);
                let service = service_fn(move |request| {
                    let client = http::Client { peer: peer.ip(), socket };
                    http::handle(Arc::clone(&state), Arc::clone(&producer), client, request)
                });
                // With upgrades: a WebSocket handshake on the REST port is
                // served as on the WebSocket port (one address for both).
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                let mut draining = draining.clone();
                tokio::spawn(async move {
                    let mut connection = std::pin::pin!(connection);
                    tokio::select! {
                        _ = connection.as_mut() => {}
                        _ = async { draining.wait_for(|draining| *draining).await.is_ok() } => {
                            // Answers the request in progress, then closes.
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        }
                    }
                    drop(permit);
                });
            }
            () = &mut shutdown => break,
        }
    }

    tracing::info!("shutting down: no new connections; draining");
    drop(listener);
    ws_server.abort();
    let _ = ws_server.await;
    listen_keys.abort();
    subscribers.close_all(1001, "going away");
    let _ = drain.send(true);
    let all = u32::try_from(config.connections_max).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, connections.acquire_many(all)).await.is_ok();
    if !drained {
        tracing::warn!("shutdown: connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
    stop_ticker.store(true, Ordering::Relaxed);
    // The matcher syncs the journal and writes a snapshot, then answers.
    let (id, done) = state.pending.register();
    let mut last = accepting;
    let published = last.try_publish(id, Work::Shutdown).is_ok();
    if published {
        let _ = tokio::time::timeout(Duration::from_secs(60), done).await;
    }
    if let Some(task) = limits_task {
        task.abort();
    }
    if let Some(cluster) = &cluster {
        // Stops answering the other nodes: they elect another leader.
        cluster.shutdown().await;
    }
    let health = Arc::clone(&state.health);
    drop(state);
    let producer = pipeline.publisher;
    // Dropping the last producers joins the pipeline's threads: not on a runtime thread.
    let _ = tokio::task::spawn_blocking(move || {
        let _ = ticker.join();
        drop(last);
        drop(producer);
    })
    .await;
    hub.abort();
    if let Some((writer, _)) = database {
        // Whatever it cannot write in time is regenerated at the next start.
        let _ = tokio::task::spawn_blocking(move || writer.stop(WRITER_STOP_TIMEOUT)).await;
    }
    if health.journal_failed.load(Ordering::Relaxed) {
        return Err(ServerError("stopped after a journal failure; the last snapshot was not written".into()));
    }
    tracing::info!(
        "stopped at sequence {} (snapshot at {})",
        health.last_seq.load(Ordering::Relaxed),
        health.snapshot_seq.load(Ordering::Relaxed)
    );
    Ok(())
}

/// What a node starts from.
struct Recovered {
    engine: Engine,
    views: Views,
    /// The local journal, positioned after its last record (`None` on a
    /// cluster node: its journal is the replicated log).
    writer: Option<journal::JournalWriter>,
    recovered_snapshot_seq: u64,
    last_journaled_ns: u64,
    new_data_dir: bool,
}

impl Recovered {
    /// A cluster node starts empty: openraft replays the committed log into
    /// its pipeline (the first slice of cluster mode keeps the whole log and
    /// takes no snapshots; docs/replication.md).
    fn empty_for_cluster(config: &Config) -> Recovered {
        let engine = Engine::new(EngineLimits::default());
        let views = Views::from_engine(&engine, config.retention_of_views());
        Recovered {
            engine,
            views,
            writer: None,
            recovered_snapshot_seq: 0,
            // Signed changes from before this start are refused: the replay
            // cache starts empty with the process.
            last_journaled_ns: crate::clock::now_ns(),
            new_data_dir: false,
        }
    }
}

/// Recovers a single node from its data directory: the newest snapshot
/// and a replay of the journal after it.
async fn recover(config: &Config) -> Result<Recovered, ServerError> {
    let data = DataDir::new(&config.data_dir);
    let journal_config = JournalConfig {
        dir: data.journal(),
        segment_bytes: config.segment_bytes,
        durability: config.durability(),
        checkpoint_interval_ms: config.checkpoint_interval_ms,
    };
    let retention = config.retention_of_views();
    // A journal replays from an empty engine with the default limits, as
    // every tool replays it; the configured limits are journaled below.
    let (writer, report, recovery, views) = tokio::task::spawn_blocking(move || {
        open_data_dir_with::<Views>(&data, journal_config, EngineLimits::default(), &retention)
    })
    .await
    .map_err(|e| ServerError(format!("recovery thread failed: {e}")))?
    .map_err(|e| ServerError(format!("cannot recover {}: {e}", config.data_dir.display())))?;
    if let Some(cut) = &report.cut {
        tracing::warn!(
            "journal: cut a torn tail of {} bytes at offset {} of {} (sequence {} was being written)",
            cut.bytes,
            cut.offset,
            cut.segment.display(),
            cut.seq
        );
    }
    for (path, why) in &recovery.skipped_snapshots {
        tracing::warn!("recovery: skipped snapshot {}: {why}", path.display());
    }
    if let Some(snapshot) = recovery.snapshot.as_ref().filter(|s| s.views_bytes == 0) {
        tracing::warn!(
            "recovery: snapshot {} carries no read views (written by an older version): closed orders, \
             trades and bars from before sequence {} are not in the views; with PostgreSQL they are \
             still served from the database",
            snapshot.path.display(),
            snapshot.seq
        );
    }
    tracing::info!(
        "recovered sequence {} in {:.3} s ({} from {}, {} commands replayed)",
        recovery.engine.last_seq(),
        recovery.elapsed.as_secs_f64(),
        recovery.snapshot.as_ref().map_or("nothing".to_string(), |s| format!("snapshot {}", s.seq)),
        config.data_dir.display(),
        recovery.replayed
    );

    let recovered_snapshot_seq = recovery.snapshot.as_ref().map_or(0, |s| s.seq);
    let engine = recovery.engine;
    let last_journaled_ns = last_journaled_ns(&DataDir::new(&config.data_dir), engine.last_seq())
        .map_err(|e| ServerError(format!("cannot read the journal's last record: {e}")))?;
    let new_data_dir = engine.last_seq() == 0;
    Ok(Recovered {
        engine,
        views,
        writer: Some(writer),
        recovered_snapshot_seq,
        last_journaled_ns,
        new_data_dir,
    })
}

/// Journals the configured limits when they differ from the journal's (and
/// always as the first command of a new data directory), so that the
/// journal alone says what the engine's limits were at every point.
async fn set_limits_at_start(
    state: &AppState,
    pipeline: &pipeline::Pipeline,
    recovered: EngineLimits,
    new_data_dir: bool,
    config: &Config,
) -> Result<(), ServerError> {
    let wanted = config.limits.apply_to(recovered);
    if wanted == recovered && !new_data_dir {
        return Ok(());
    }
    let mut publisher = pipeline.publisher.clone();
    let (id, reply) = state.pending.register();
    if pipeline::submit(&mut publisher, id, Command::SetLimits { limits: wanted }).is_err() {
        return Err(ServerError("cannot journal the configured limits: the ring is full".into()));
    }
    match tokio::time::timeout(Duration::from_secs(60), reply).await {
        Ok(Ok(Ok(_))) => {
            if !new_data_dir {
                tracing::info!("limits: the configuration changes the journal's limits to {wanted:?} (was {recovered:?})");
            }
            Ok(())
        }
        _ => Err(ServerError("cannot journal the configured limits: the journal is unavailable".into())),
    }
}

/// On a cluster node: whenever this node becomes the leader, journals the
/// limits its configuration names (so the limits in force are the leader's,
/// and are in the replicated log like every other change).
async fn set_limits_when_leading(
    state: Arc<AppState>,
    limits: crate::config::LimitsConfig,
    publisher: pipeline::Publisher,
) {
    let Some(cluster) = state.cluster.clone() else { return };
    if limits == crate::config::LimitsConfig::default() {
        return;
    }
    let mut led_term = None;
    let mut every = tokio::time::interval(Duration::from_millis(100));
    loop {
        every.tick().await;
        let status = cluster.status();
        if status.role != "leader" || led_term == Some(status.term) {
            continue;
        }
        // The views follow the engine: its limits as of the last command applied.
        let current = match state.views() {
            Ok(views) => views.limits,
            Err(_) => continue,
        };
        let wanted = limits.apply_to(current);
        if wanted == current {
            led_term = Some(status.term);
            continue;
        }
        let producer = Mutex::new(publisher.clone());
        match crate::app::execute(&state, &producer, Command::SetLimits { limits: wanted }).await {
            Ok(_) => {
                tracing::info!(
                    "limits: this leader journaled its configured limits {wanted:?} (were {current:?})"
                );
                led_term = Some(status.term);
            }
            Err(error) => {
                tracing::warn!("limits: cannot journal the configured limits yet: {}", error.message)
            }
        }
    }
}

/// When the journal's last command (`last_seq`) was stamped, in ns since the
/// epoch (0 for an empty journal): the matcher's clock never goes below it,
/// and signed requests older than it are not executed again.
fn last_journaled_ns(data: &DataDir, last_seq: u64) -> Result<u64, journal::JournalError> {
    if last_seq == 0 {
        return Ok(0);
    }
    match journal::JournalReader::open(&data.journal(), last_seq, journal::ReadMode::Strict) {
        Ok(mut reader) => Ok(reader.next()?.map_or(0, |command| command.timestamp_ns)),
        // Pruned behind the snapshot: now is a safe bound (later than the
        // record, whatever it was, unless the clock went back).
        Err(journal::JournalError::NotRetained { .. }) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)),
        Err(error) => Err(error),
    }
}

/// Ends the user data streams of expired listen keys, once a second.
async fn expire_listen_keys(state: Arc<AppState>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        crate::binance::streams::expire_listen_keys(
            &state.binance,
            &state.subscribers,
            crate::clock::now_ms(),
        );
    }
}

/// The WebSocket streams, downstream of the pipeline.
struct HubFeed {
    sender: crate::ws::HubSender,
    subscribers: Arc<crate::subscribers::Subscribers>,
    health: Arc<pipeline::Health>,
}

impl pipeline::Downstream for HubFeed {
    fn batch(&mut self, events: &Arc<[engine_core::Event]>, _stamps: &[persistence::Stamp]) {
        if self.sender.try_send(Arc::clone(events)).is_err() {
            // The streams fell behind: every subscriber is cut off (and
            // resyncs) rather than the pipeline waiting.
            self.subscribers.drop_all();
            self.health.metrics.ws_hub_overflows.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn installed(&mut self, _engine: &Engine) {
        // The books and orders jumped to a snapshot image's: every stream
        // starts again from the new state (the clients resubscribe).
        self.subscribers.close_all(1012, "state replaced by a snapshot; reconnect and resubscribe");
    }
}

/// The history database's writer, downstream of the pipeline.
struct DatabaseFeed(persistence::Feed);

impl pipeline::Downstream for DatabaseFeed {
    fn batch(&mut self, events: &Arc<[engine_core::Event]>, stamps: &[persistence::Stamp]) {
        // Never waits: a full feed drops, and the writer regenerates what
        // it missed from the journal.
        self.0.offer(persistence::Batch { events: Arc::clone(events), stamps: stamps.into() });
    }
}
