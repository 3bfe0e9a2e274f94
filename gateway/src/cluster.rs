//! Cluster mode: this node as one member of a Raft group (openraft, through
//! the `replication` crate) whose replicated log is the journal.
//!
//! ```text
//! leader:     handler --propose--> openraft: append to the log (fsync), replicate
//!                                           |  committed on a majority
//! every node: openraft apply --Work::Committed--> [inbound ring] --> matcher --> outbound ring ...
//! ```
//!
//! A handler on the leader proposes its command; the proposals that arrive
//! while an entry is being written are packed into the next entry (group
//! commit: [`proposer`]). Once a majority has the entry on disk, openraft hands it to [`CommittedFeed`]
//! on every node, which publishes it into the matcher's ring. Every node's
//! matcher applies the same commands in the same order and stamps them
//! alike (the next sequence number, the leader's time unless that would run
//! backwards), so every node's engine and read views go through the same
//! states, and nothing reaches a client (answer, fill, market data, user
//! stream) before it is committed. The node that proposed a command knows
//! it by its origin and answers its waiting request.
//!
//! What this module must never do: publish an entry that is not committed
//! (only openraft's `apply` calls [`CommittedFeed`]), or answer a request
//! with another request's outcome (an origin names the node *and* its
//! incarnation, so entries replayed after a restart answer nobody).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine_core::{ApiKey, ApiSecret, Command, Event, EventKind, UserId};
use futures_util::{Stream, TryStreamExt};
use replication::openraft::async_runtime::watch::WatchReceiver;
use replication::openraft::storage::{EntryResponder, RaftStateMachine};
use replication::openraft::Instant as _;
use replication::openraft::{EntryPayload, RaftSnapshotBuilder, ServerState};
use replication::types::{LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership};
use replication::{
    Batch, ExchangeRaft, FreshNodeGate, NetConfig, NetworkFactory, Origin, Proposal, ReplayMark, TypeConfig,
};

use crate::auth::{KeyTable, SeenSignatures, SignedAfter};
use crate::config::ClusterConfig;
use crate::images::{ImageTaken, Images, Installed, Requested};
use crate::pipeline::{Downstream, Publisher, Work};
use crate::views::{Retention, Views, ViewsState};

pub mod committed_log;
mod membership;
mod proposer;

pub use membership::{MemberChange, MembershipError};
pub use proposer::PackingCounters;

/// How long the state machine waits before trying a full inbound ring
/// again: the matcher is behind, and the entry must go in (it is
/// committed), so it waits rather than drops.
const RING_FULL_RETRY: Duration = Duration::from_micros(100);

/// API keys created in commands being applied, by key, until their
/// `ApiKeyCreated` event confirms them (the secret is in the command only:
/// events never carry it). More than this many unconfirmed ones (commands
/// the engine refused) are forgotten.
const UNCONFIRMED_KEYS_MAX: usize = 1_024;

/// How long a snapshot image may take to reach a follower and be installed
/// there (sent in chunks, checked, decoded, written and synced), in
/// milliseconds. openraft's default (200 ms) is far too short for an
/// exchange's state.
const SNAPSHOT_TRANSFER_TIMEOUT_MS: u64 = 60_000;

pub type Raft = ExchangeRaft<CommittedFeed>;

/// Why a command was not proposed, or what became of it is unknown.
#[derive(Clone, Debug)]
pub enum ProposeError {
    /// This node is not the leader (or no longer hears a majority): the
    /// command was not appended anywhere. `leader` is the leader's API
    /// address when known.
    NotLeader { leader: Option<String> },
    /// This node leads but cannot take orders right now (it has not heard
    /// from a majority lately, or its term has not started): the command
    /// was not appended anywhere. Says why.
    Unconfirmed(String),
    /// The command was appended but may or may not commit (the leader
    /// changed under it, or the node is stopping): the client must look.
    Unknown(String),
}

/// This node's membership of the cluster.
pub struct Cluster {
    raft: Raft,
    node_id: u64,
    /// A number of this process's own: origins name it, so that an entry
    /// proposed before a restart never answers a request after it.
    incarnation: u64,
    /// Whether this node may take orders; shared with the proposer, which
    /// checks again before each entry.
    leadership: Arc<Leadership>,
    /// Packs the handlers' proposals into entries.
    proposer: proposer::Proposer,
    /// Closed while this node's log is new: its votes until it has caught
    /// up, its acknowledgements until it has learned its term floor.
    gate: FreshNodeGate,
}

/// What tells whether this node leads and may take orders, and where the
/// leader's API is.
struct Leadership {
    raft: Raft,
    node_id: u64,
    /// API addresses by node id from the configuration, for `X-Leader`
    /// when the membership does not name the node (it names every node
    /// added since).
    configured_api: BTreeMap<u64, String>,
    /// A leader that has not heard from a majority for this long stops
    /// taking orders (it may have been cut off and replaced): the longest
    /// election timeout, since under load the shortest was reached by a
    /// healthy leader whose only live follower was slow to sync.
    quorum_silence_max_ms: u64,
    /// The term whose first entry this node has applied (its feed's).
    term_started: Arc<AtomicU64>,
}

/// What `/health` shows of the cluster.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClusterStatus {
    pub node_id: u64,
    pub role: &'static str,
    pub leader: Option<u64>,
    pub leader_api: Option<String>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Whether this node votes (false while a new or wiped log catches up
    /// with the leader's).
    pub votes: bool,
    /// The lowest term of a leader whose log this node acknowledges (0 on
    /// a node that remembers its terms; null while a new log waits for the
    /// other voters to say theirs).
    pub term_floor: Option<u64>,
    /// The log position of this node's newest snapshot image, and how far
    /// its log is purged behind it.
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
}

impl Cluster {
    /// Opens this node's Raft log in `journal_dir`, starts Raft and its
    /// listener, and (on the node configured to, with an empty log) forms
    /// the cluster in the background. `feed` is where committed entries go.
    ///
    /// A node whose log is new (first start, or a wiped disk) neither votes
    /// nor stands for election until it has caught up with a leader: it may
    /// have voted or acknowledged entries before it lost its disk
    /// (docs/replication.md, "Membership").
    ///
    /// `writer_ready`, the database writer's gate, opens once the node has
    /// applied every entry its log held committed at start.
    pub async fn start(
        config: &ClusterConfig,
        journal_dir: &Path,
        feed: CommittedFeed,
        writer_ready: Option<Arc<std::sync::atomic::AtomicBool>>,
    ) -> Result<Cluster, String> {
        let snapshot_policy = match config.snapshot_every_entries {
            0 => replication::openraft::SnapshotPolicy::Never,
            entries => replication::openraft::SnapshotPolicy::LogsSinceLast(entries),
        };
        let images = Arc::clone(&feed.images);
        // The database writer regenerates from the log after an image: the
        // log is purged no further than it may need.
        let mut log = replication::LogStore::open(journal_dir, replication::LogStoreConfig::default())
            .map_err(|e| format!("cannot open the Raft log in {}: {e}", journal_dir.display()))?
            .hold_purge(Arc::new(move || images.log_needed_from()));
        let committed_at_start = {
            use replication::openraft::storage::RaftLogStorage;
            log.read_committed().await.map_err(|e| format!("cannot read the committed position: {e}"))?
        };
        // Closed on a new log, and on one that was new at an earlier start
        // and had not caught up when the node stopped.
        let gate = FreshNodeGate::for_journal(journal_dir, log.was_fresh()).map_err(|e| {
            format!("cannot read or write the catching-up marker in {}: {e}", journal_dir.display())
        })?;
        let fresh = gate.is_fresh();
        let raft_config = replication::openraft::Config {
            cluster_name: "exchange".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            enable_pre_vote: Some(true),
            enable_elect: !fresh,
            // A follower whose disk was wiped answers with an empty log: the
            // leader sends it the log again rather than stop replicating to it.
            // Its votes and its acknowledgements, the real hazards, are held
            // back by its gate (replication::gate).
            allow_log_reversion: Some(true),
            // Every `snapshot_every_entries` entries the pipeline writes an
            // image; the log is purged behind it but for the last
            // `log_kept_after_snapshot_entries`, so that a follower a little
            // behind catches up by log, and one further behind by the image.
            snapshot_policy,
            max_in_snapshot_log_to_keep: config.log_kept_after_snapshot_entries,
            // The whole image travels and is installed (checked, decoded,
            // written and synced) within one request.
            install_snapshot_timeout: SNAPSHOT_TRANSFER_TIMEOUT_MS,
            ..Default::default()
        }
        .validate()
        .map_err(|e| format!("[cluster]: {e}"))?;
        let ip = config.raft_listen.ip();
        // Connections to the peers come from this node's Raft address, so that
        // firewall rules can tell the nodes of one host apart.
        let net = NetConfig { bind_outgoing: (!ip.is_unspecified()).then_some(ip), ..NetConfig::default() };
        let network = NetworkFactory::new(config.node_id, net.clone());
        let incarnation = feed.incarnation;
        let term_started = Arc::clone(&feed.term_started);
        let raft = Raft::new(config.node_id, Arc::new(raft_config), network, log, feed)
            .await
            .map_err(|e| format!("cannot start Raft: {e}"))?;
        let (listener, address) = replication::net::bind(&config.raft_listen.to_string())
            .await
            .map_err(|e| format!("cannot listen for Raft on {}: {e}", config.raft_listen))?;
        if let Some(ready) = writer_ready {
            let raft = raft.clone();
            tokio::spawn(async move {
                if let Some(committed) = committed_at_start {
                    // No time limit: the whole log may need applying.
                    let wait = raft.wait(None);
                    if let Err(error) =
                        wait.applied_index_at_least(Some(committed.index), "writer ready").await
                    {
                        tracing::warn!(
                            "database writer: Raft stopped before applying the log at start: {error}"
                        );
                        return;
                    }
                }
                ready.store(true, Ordering::Release);
            });
        }
        let server_config = NetConfig { gate: gate.clone(), ..net.clone() };
        tokio::spawn(replication::net::serve(raft.clone(), listener, server_config));
        let initialized = raft.is_initialized().await.map_err(|e| format!("Raft stopped: {e}"))?;
        let state = if initialized {
            if config.bootstrap {
                tokio::spawn(membership::finish_forming(raft.clone(), config.clone()));
            }
            "resuming its log"
        } else if config.bootstrap {
            tokio::spawn(membership::form(raft.clone(), config.clone(), gate.clone()));
            "forming the cluster once a majority of the members confirm none exists"
        } else {
            "new: it waits for the leader to add it and send it the log, and votes once caught up"
        };
        if fresh {
            tokio::spawn(membership::learn_term_floor(config.clone(), net, gate.clone()));
            tokio::spawn(membership::open_votes_when_caught_up(raft.clone(), config.node_id, gate.clone()));
        }
        tracing::info!(
            "cluster: node {} of members {:?} listening for Raft on {address}, {state}",
            config.node_id,
            config.members.iter().map(|m| m.id).collect::<Vec<_>>()
        );
        let leadership = Arc::new(Leadership {
            raft: raft.clone(),
            node_id: config.node_id,
            configured_api: config.members.iter().map(|m| (m.id, m.api.clone())).collect(),
            quorum_silence_max_ms: config.election_timeout_max_ms,
            term_started,
        });
        let proposer = proposer::Proposer::start(Arc::clone(&leadership));
        Ok(Cluster { raft, node_id: config.node_id, incarnation, leadership, proposer, gate })
    }

    /// Proposes `command` for the request `request_id` of this process;
    /// `Ok` once it is committed and in the matcher's ring (its outcome
    /// then reaches the request like any other). It may share its entry
    /// with other proposals, and then their answer.
    /// `replay_mark` is the signature of the signed request it executes:
    /// every node remembers it as it applies the command.
    pub async fn propose(
        &self,
        request_id: u64,
        command: Command,
        replay_mark: Option<ReplayMark>,
    ) -> Result<(), ProposeError> {
        // Refused here, a proposal waits for no entry.
        self.check_leading()?;
        let proposal = Proposal {
            origin: Origin { node: self.node_id, incarnation: self.incarnation, request: request_id },
            timestamp_ns: crate::clock::now_ns(),
            command,
            replay_mark,
        };
        self.proposer.propose(proposal).await
    }

    /// How full the entries this node proposed were, for `/metrics`.
    pub fn packing(&self) -> &PackingCounters {
        &self.proposer.counters
    }

    /// Refuses at once on a node that is not the leader, or a leader that
    /// has not heard from a majority lately (see [`Leadership::check`]).
    fn check_leading(&self) -> Result<(), ProposeError> {
        self.leadership.check()
    }

    fn api_address(&self, node: u64) -> Option<String> {
        self.leadership.api_address(node)
    }
}

impl Leadership {
    /// Refuses on a node that is not the leader, or a leader that has not
    /// heard from a majority lately (it may have been cut off and replaced;
    /// openraft would refuse too, but only once its lease ends).
    fn check(&self) -> Result<(), ProposeError> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let leader = metrics.current_leader;
        let not_leader = || ProposeError::NotLeader { leader: leader.and_then(|id| self.api_address(id)) };
        if metrics.state != ServerState::Leader || leader != Some(self.node_id) {
            return Err(not_leader());
        }
        // Until this leader has applied its term's first entry, it has not
        // seen everything its predecessors executed (nor remembered the
        // signatures of the requests they executed): not ready yet.
        let term = metrics.current_term;
        if self.term_started.load(Ordering::Acquire) < term {
            return Err(ProposeError::Unconfirmed(format!(
                "this node was just elected leader (term {term}) and is still applying its predecessors' entries"
            )));
        }
        // A sole voter is its own majority: nobody else acknowledges it.
        let alone = metrics.membership_config.membership().voter_ids().eq([self.node_id]);
        let silence_max = Duration::from_millis(self.quorum_silence_max_ms);
        let silence = metrics.last_quorum_acked.as_ref().map(|acked| acked.elapsed());
        if !alone && silence.is_none_or(|silence| silence > silence_max) {
            let heard = match silence {
                Some(silence) => format!("for {} ms", silence.as_millis()),
                None => "since it was elected".to_string(),
            };
            return Err(ProposeError::Unconfirmed(format!(
                "this node leads term {term} but has heard from no majority of the voters {heard} (limit {} ms): \
                 it may have been cut off and replaced, or its followers are slow",
                self.quorum_silence_max_ms
            )));
        }
        Ok(())
    }

    fn api_address(&self, node: u64) -> Option<String> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        match metrics.membership_config.membership().get_node(&node) {
            Some(known) => Some(known.api_addr.clone()),
            None => self.configured_api.get(&node).cloned(),
        }
    }
}

impl Cluster {
    /// This node's id in the cluster.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn status(&self) -> ClusterStatus {
        let metrics = self.raft.metrics().borrow_watched().clone();
        ClusterStatus {
            node_id: self.node_id,
            role: match metrics.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "stopped",
            },
            leader: metrics.current_leader,
            leader_api: metrics.current_leader.and_then(|id| self.api_address(id)),
            term: metrics.current_term,
            last_log_index: metrics.last_log_index,
            committed_index: metrics.local_committed.map(|id| id.index),
            applied_index: metrics.last_applied.map(|id| id.index),
            votes: self.gate.votes_open(),
            term_floor: self.gate.term_floor(),
            snapshot_index: metrics.snapshot.map(|id| id.index),
            purged_index: metrics.purged.map(|id| id.index),
        }
    }

    pub async fn shutdown(&self) {
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!("cluster: Raft did not stop cleanly: {error}");
        }
    }
}

/// openraft's state machine on a cluster node: it publishes committed
/// entries into the matcher's inbound ring, in log order; the matcher is
/// the state machine proper.
pub struct CommittedFeed {
    publisher: Publisher,
    node_id: u64,
    incarnation: u64,
    applied: Option<LogId>,
    membership: StoredMembership,
    keys: Arc<UnconfirmedKeys>,
    /// The latest proposal stamp applied: no command executed through any
    /// leader so far was stamped later.
    last_proposal_ns: u64,
    /// The replay cache: the signature of every signed request a command
    /// applied here executed goes in, so that this node, once it leads,
    /// refuses the same request sent again.
    seen: SeenSignatures,
    /// Raised when an image is installed: the image holds its commands'
    /// effects, not their signatures.
    signed_after: SignedAfter,
    /// The term whose first entry (the blank a new leader appends) this
    /// feed has applied last.
    term_started: Arc<AtomicU64>,
    /// Commands published so far (the matcher's sequence number once it
    /// has applied them).
    seq: u64,
    images: Arc<Images>,
    /// For the read views of an installed image.
    retention: Retention,
}

impl CommittedFeed {
    /// A feed before the first entry: openraft installs this node's own
    /// image first, if it has one (in `images`), then applies the log after it.
    pub fn new(
        publisher: Publisher,
        node_id: u64,
        keys: Arc<UnconfirmedKeys>,
        seen: SeenSignatures,
        signed_after: SignedAfter,
        images: Arc<Images>,
        retention: Retention,
    ) -> CommittedFeed {
        // Distinct for each start of this node (and never 0).
        let incarnation = crate::clock::now_ns() | 1;
        CommittedFeed {
            publisher,
            node_id,
            incarnation,
            applied: None,
            membership: StoredMembership::default(),
            keys,
            last_proposal_ns: 0,
            seen,
            signed_after,
            term_started: Arc::new(AtomicU64::new(0)),
            seq: 0,
            images,
            retention,
        }
    }

    /// Publishes one committed command; waits while the ring is full (the
    /// entry is committed: it must go in, in order).
    async fn publish(&mut self, proposal: &Proposal) {
        let Proposal { origin, timestamp_ns, command, replay_mark: _ } = *proposal;
        self.last_proposal_ns = self.last_proposal_ns.max(timestamp_ns);
        self.seq += 1;
        if let Command::CreateApiKey { user, key, secret } = command {
            self.keys.expect(key, user, secret);
        }
        let request = if origin.node == self.node_id && origin.incarnation == self.incarnation {
            origin.request
        } else {
            0
        };
        self.publish_work(request, Work::Committed { command, timestamp_ns }).await;
    }

    async fn publish_work(&mut self, request: u64, work: Work) {
        while self.publisher.try_publish(request, work).is_err() {
            tokio::time::sleep(RING_FULL_RETRY).await;
        }
    }
}

/// Builds a snapshot: waits for the pipeline to write the image it was
/// asked for (see [`crate::images`]), then offers the image on disk.
pub struct ImageBuilder {
    images: Arc<Images>,
    waiting: Option<tokio::sync::oneshot::Receiver<Result<ImageTaken, String>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for ImageBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        if let Some(waiting) = self.waiting.take() {
            let written = waiting.await.unwrap_or_else(|_| Err("the pipeline stopped".to_string()));
            // openraft keeps the newer of what it had and what it gets.
            match written {
                Ok(ImageTaken::Kept) => {}
                Ok(ImageTaken::Superseded) => {
                    tracing::info!("cluster: offering the later image installed meanwhile")
                }
                Err(error) => tracing::warn!(
                    "cluster: the snapshot image was not taken ({error}); offering the one on disk"
                ),
            }
        }
        match self.images.current()? {
            Some((meta, bytes)) => Ok(Snapshot { meta, snapshot: SnapshotData::new(bytes) }),
            None => Err(io::Error::other(format!(
                "no snapshot image could be written in {} (see the log above)",
                self.images.dir().display()
            ))),
        }
    }
}

impl RaftStateMachine<TypeConfig> for CommittedFeed {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = ImageBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>>
            + Unpin
            + replication::openraft::OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            match &entry.payload {
                EntryPayload::Blank => {
                    // A new leader's first entry: every entry of earlier
                    // terms that will ever commit is before it, and their
                    // replay marks are in this node's cache. From here on
                    // this node may take orders if it leads this term.
                    self.term_started.fetch_max(entry.log_id.leader_id.term, Ordering::AcqRel);
                }
                EntryPayload::Normal(Batch::Commands(proposals)) => {
                    // Before the commands are published: once this node
                    // may lead, no request they executed passes again.
                    let marks = proposals.iter().filter_map(|proposal| proposal.replay_mark);
                    self.seen.remember(marks, crate::clock::now_ms());
                    for proposal in proposals {
                        self.publish(proposal).await;
                    }
                }
                // In log order with the commands: the matcher has applied
                // the mark's command when it takes the mark.
                &EntryPayload::Normal(Batch::HashMark { seq, node, hash }) => {
                    self.publish_work(0, Work::HashMark { seq, node, hash }).await;
                }
                EntryPayload::Membership(membership) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                }
            }
            self.applied = Some(entry.log_id);
            if let Some(responder) = responder {
                responder.send(());
            }
        }
        Ok(())
    }

    /// Asks the pipeline for an image at the position applied so far (the
    /// matcher reaches it after every command published before): runs on
    /// openraft's state machine task, in order with `apply`.
    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<ImageBuilder> {
        let images = Arc::clone(&self.images);
        if images.current_meta().is_some_and(|meta| meta.last_log_id == self.applied) {
            return Some(ImageBuilder { images, waiting: None });
        }
        let (done, waiting) = tokio::sync::oneshot::channel();
        let meta = SnapshotMeta { last_log_id: self.applied, last_membership: self.membership.clone() };
        images.request(Requested { seq: self.seq, meta, last_timestamp_ns: self.last_proposal_ns, done });
        self.publish_work(0, Work::ClusterSnapshot).await;
        Some(ImageBuilder { images, waiting: Some(waiting) })
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        ImageBuilder { images: Arc::clone(&self.images), waiting: None }
    }

    /// Installs an image (the leader's, or this node's own at start): checks
    /// it whole before anything changes, keeps it on disk, and hands the
    /// state to the pipeline, which replaces its own at this point of the
    /// log. A refused image changes nothing.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let bytes = snapshot.into_inner();
        let refuse = |error: String| {
            tracing::warn!(
                "cluster: refusing the snapshot image of log position {:?}: {error}",
                meta.last_log_id
            );
            io::Error::new(io::ErrorKind::InvalidData, error)
        };
        let image = replication::decode_image(&bytes).map_err(|e| refuse(e.to_string()))?;
        if image.meta != *meta {
            return Err(refuse(format!("it holds log position {:?}", image.meta.last_log_id)));
        }
        let views = match &image.views {
            Some(encoded) => ViewsState::decode(encoded)
                .and_then(|state| Views::restore(&image.engine, state, self.retention))
                .map_err(|e| refuse(format!("its read views: {e}")))?,
            None => Views::from_engine(&image.engine, self.retention),
        };
        // This node's own image (at start) is on disk already.
        let seq = image.engine.last_seq();
        let received = self.images.current_meta().as_ref() != Some(meta);
        if received {
            self.images.keep(meta.clone(), seq, &bytes)?;
        }
        let engine_copy = image.engine.clone();
        self.images.push_install(Installed {
            engine: image.engine,
            last_timestamp_ns: image.last_timestamp_ns,
            views,
            engine_copy,
        });
        self.publish_work(0, Work::Install).await;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.seq = seq;
        self.last_proposal_ns = self.last_proposal_ns.max(image.last_timestamp_ns);
        // The image holds what its commands did, not the signatures of the
        // requests they executed: changes signed before the last of them
        // could have been are refused from now on, as after a restart.
        self.signed_after
            .refuse_signed_until(image.last_timestamp_ns / 1_000_000, crate::auth::CLOCK_AHEAD_ALLOWED_MS);
        // The image holds its last term's first entry (a term's entries
        // follow its leader's blank one).
        if let Some(last) = meta.last_log_id {
            self.term_started.fetch_max(last.leader_id.term, Ordering::AcqRel);
        }
        // Tests and operators tell a catch-up from the leader apart from a
        // restart by this line.
        tracing::info!(
            "cluster: installed the snapshot image of log position {:?}, sequence {seq}, {}",
            meta.last_log_id,
            if received { "received from the leader" } else { "this node's own, at start" }
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self.images.current()?.map(|(meta, bytes)| Snapshot { meta, snapshot: SnapshotData::new(bytes) }))
    }
}

/// Secrets of API keys in committed commands, until the engine's events
/// say whether it created them.
#[derive(Default)]
pub struct UnconfirmedKeys {
    keys: Mutex<HashMap<ApiKey, (UserId, ApiSecret)>>,
}

impl UnconfirmedKeys {
    fn expect(&self, key: ApiKey, user: UserId, secret: ApiSecret) {
        if let Ok(mut keys) = self.keys.lock() {
            if keys.len() >= UNCONFIRMED_KEYS_MAX {
                keys.clear();
            }
            keys.insert(key, (user, secret));
        }
    }

    fn confirm(&self, key: &ApiKey) -> Option<(UserId, ApiSecret)> {
        self.keys.lock().ok()?.remove(key)
    }
}

/// Keeps this node's API key table in step with the engine's, from the
/// events: on a cluster node, keys are created through whichever node led
/// at the time, and every node must authenticate them.
pub struct KeysFeed {
    pub table: Arc<KeyTable>,
    pub unconfirmed: Arc<UnconfirmedKeys>,
}

impl Downstream for KeysFeed {
    fn batch(&mut self, events: &Arc<[Event]>, _stamps: &[persistence::Stamp]) {
        for event in events.iter() {
            match event.kind {
                EventKind::ApiKeyCreated { key, .. } => {
                    if let Some((user, secret)) = self.unconfirmed.confirm(&key) {
                        self.table.insert(key, user, secret);
                    }
                }
                EventKind::ApiKeyRevoked { key, .. } => self.table.remove(&key),
                _ => {}
            }
        }
    }

    fn installed(&mut self, engine: &engine_core::Engine) {
        self.table.replace_from_engine(engine);
    }
}

/// Proposes the state hashes this node's matcher computed as hash marks in
/// the log, while this node leads (a follower's hashes are dropped: the
/// leader's marks are what every node compares with). The leader applied a
/// hash's command before computing it, so the mark lands after that command
/// in every node's log. Runs until the matcher's side of `computed` closes.
pub async fn propose_hash_marks(
    cluster: Arc<Cluster>,
    mut computed: tokio::sync::mpsc::Receiver<crate::pipeline::ComputedHash>,
    health: Arc<crate::pipeline::Health>,
) {
    while let Some(crate::pipeline::ComputedHash { seq, hash }) = computed.recv().await {
        // At or behind a mark already checked: a hash of the replay after a
        // restart, whose point the log has marked already.
        let marked = seq <= health.last_hash_mark_seq.load(std::sync::atomic::Ordering::Relaxed);
        if marked || cluster.check_leading().is_err() {
            continue;
        }
        let mark = Batch::HashMark { seq, node: cluster.node_id, hash };
        if let Err(error) = cluster.raft.client_write(mark).await {
            // Leadership moved under it; the next leader marks the next point.
            tracing::debug!("cluster: the hash mark at sequence {seq} was not committed: {error}");
        }
    }
}
