//! Raft replication of the exchange's command log, with openraft.
//!
//! # What this crate owns
//!
//! The wiring between openraft and the rest of the exchange:
//!
//! * [`types`]: the type configuration. One log entry is one matcher batch
//!   ([`Batch::Commands`]) or a state-hash mark; a node is named by a `u64` and reached at an
//!   [`ExchangeNode`]'s addresses; a log id is `(term, index)`.
//! * [`net`]: the transport, openraft's RPCs (append, vote, pre-vote, snapshot in chunks,
//!   leader transfer) as length-prefixed [`codec`] frames over TCP, client and server, the
//!   server hardened against hostile frames.
//! * [`gate`]: what a node whose log was new at start may do (vote, acknowledge a leader's
//!   log) before it knows which terms it may have taken part in.
//! * [`log_file`]: the committed entries of a node's log read from its files, read-only (for
//!   the operator's tools and checkers).
//! * [`log_store`]: openraft's log storage on the journal's Raft log (`journal::RaftLog`,
//!   segment format 3) and its `RAFT_STATE` file, with group commit on a sync thread.
//! * [`state_machine`]: committed batches applied to an [`engine_core::Engine`], snapshots
//!   from the engine's own snapshot data; the apply and image logic ([`Replica`]) is plain
//!   code that the gateway's matcher pipeline can reuse.
//!
//! # What it must never do
//!
//! * Apply an entry that is not committed: only openraft's `apply` reaches the engine.
//! * Decide anything about consensus itself (elections, terms, log matching, truncation,
//!   membership): openraft does; this crate stores, sends and applies what it is told.
//! * Acknowledge an append before it is durable: the `IOFlushed` callback runs after the
//!   fdatasync, in submission order.
//! * Trust a peer: every frame and snapshot from the network is checked and a bad one refused
//!   with its reason, never half-installed.
//!
//! # The openraft version
//!
//! Pinned exactly to `=0.10.0-alpha.37`: pre-vote (a partitioned node cannot disrupt the
//! cluster when it returns) and conditional writes (`write(..).with_leader(id)`, so a batch
//! stamped under one leader never lands in another's term) exist only in the 0.10 line, which
//! is still alpha and changes its API between alphas. A bump is a deliberate commit that
//! reruns this crate's tests.
//!
//! # Example: a one-node cluster
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::collections::BTreeMap;
//! use replication::*;
//!
//! let dir = std::path::Path::new("/tmp/node1");
//! let config = std::sync::Arc::new(raft_config()?);
//! let log = LogStore::open(&dir.join("journal"), LogStoreConfig::default())?;
//! let sm = EngineStateMachine::open(&dir.join("snapshots"), engine_core::EngineLimits::default())?;
//! let (listener, addr) = net::bind("127.0.0.1:0").await?;
//! let raft = ExchangeRaft::new(1, config, NetworkFactory::new(1, NetConfig::default()), log, sm).await?;
//! tokio::spawn(net::serve(raft.clone(), listener, NetConfig::default()));
//! let node = ExchangeNode { raft_addr: addr.to_string(), api_addr: "127.0.0.1:8080".into() };
//! raft.initialize(BTreeMap::from([(1, node)])).await?;
//! # Ok(())
//! # }
//! ```

/// The exact openraft this crate is built on, for its users' trait impls and errors.
pub use openraft;

pub mod gate;
pub mod log_file;
pub mod log_store;
pub mod net;
pub mod state_machine;
pub mod types;

pub use gate::FreshNodeGate;
pub use log_store::{LogStore, LogStoreConfig, PurgeHold};
pub use net::{NetConfig, NetworkFactory};
pub use state_machine::{
    decode_image, encode_image, read_image_at, read_image_file, stamp, write_image_file, EngineStateMachine,
    Image, Replica,
};
pub use types::{Batch, ExchangeNode, ExchangeRaft, Origin, Proposal, ReplayMark, TypeConfig};

/// Heartbeat interval for a cluster on one machine or a LAN, in milliseconds.
pub const HEARTBEAT_MS_DEFAULT: u64 = 50;
/// Election timeouts, in milliseconds: a follower that hears nothing from a leader for a random
/// time in this range starts a (pre-)election. Failover takes about 1.7 x the maximum (the
/// followers' leader lease is the maximum).
pub const ELECTION_TIMEOUT_MS_MIN_DEFAULT: u64 = 150;
pub const ELECTION_TIMEOUT_MS_MAX_DEFAULT: u64 = 300;

/// openraft's configuration with this crate's defaults: heartbeat 50 ms, election 150-300 ms,
/// pre-vote on.
pub fn raft_config() -> Result<openraft::Config, openraft::ConfigError> {
    openraft::Config {
        cluster_name: "exchange".into(),
        heartbeat_interval: HEARTBEAT_MS_DEFAULT,
        election_timeout_min: ELECTION_TIMEOUT_MS_MIN_DEFAULT,
        election_timeout_max: ELECTION_TIMEOUT_MS_MAX_DEFAULT,
        enable_pre_vote: Some(true),
        ..Default::default()
    }
    .validate()
}
