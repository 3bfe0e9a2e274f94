//! The openraft type configuration: what one log entry carries, what names a node, and
//! the aliases the rest of the crate uses.

use std::fmt;
use std::io::Cursor;

use engine_core::Command;
use serde::{Deserialize, Serialize};

/// What one Raft log entry carries (openraft's application data, `C::D`).
///
/// Commands carry no sequence number: every replica numbers committed commands as it applies
/// them (the next sequence number, in log order), so no leader has to predict numbers across
/// leadership changes, and a proposal refused before it is appended consumes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Batch {
    /// Commands as the leader proposed them, in order. Never empty.
    Commands(Vec<Proposal>),
    /// `node`'s engine had state hash `hash` after applying command `seq`: every replica
    /// compares it with its own (the determinism check). Consumes no sequence number.
    HashMark { seq: u64, node: u64, hash: u64 },
}

/// Who proposed a command: the node, that node's process incarnation, and the request waiting
/// there. Only that node, in that incarnation, answers the request when it applies the command;
/// an entry replayed after a restart answers nobody.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub node: u64,
    pub incarnation: u64,
    pub request: u64,
}

/// One command as the leader proposes it, with the leader's clock when it did (a replica
/// stamps it with `max(previous stamp, timestamp_ns)`: time never runs backwards in the log
/// even when a new leader's clock is behind), and the replay mark of the signed request it
/// executes, if one did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub origin: Origin,
    pub timestamp_ns: u64,
    pub command: Command,
    pub replay_mark: Option<ReplayMark>,
}

/// The signature of the signed client request a command executes, and when that request
/// stops being valid (its timestamp plus its receive window, in ms since the epoch). Every
/// replica remembers the signatures of the commands it applies until then, so that a node
/// that becomes leader refuses the same signed bytes sent again: a request is executed once
/// across failovers, whatever the client's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReplayMark {
    pub signature: [u8; 32],
    pub expires_ms: u64,
}

/// A proposal as entries of kind `journal::EntryKind::Commands` hold it: written before replay
/// marks were carried (read, never written).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmarkedProposal {
    pub origin: Origin,
    pub timestamp_ns: u64,
    pub command: Command,
}

impl From<UnmarkedProposal> for Proposal {
    fn from(old: UnmarkedProposal) -> Proposal {
        Proposal {
            origin: old.origin,
            timestamp_ns: old.timestamp_ns,
            command: old.command,
            replay_mark: None,
        }
    }
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Batch::Commands(commands) => write!(f, "{} commands", commands.len()),
            Batch::HashMark { seq, node, hash } => {
                write!(f, "hash mark {hash:016x} of node {node} at seq {seq}")
            }
        }
    }
}

/// How to reach a member of the cluster: its Raft transport (this crate's [`crate::net`]) and
/// its client API (where a follower sends clients that need the leader).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ExchangeNode {
    /// `host:port` of the node's Raft listener.
    pub raft_addr: String,
    /// `host:port` of the node's REST/WebSocket API.
    pub api_addr: String,
}

impl fmt::Display for ExchangeNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft {} api {}", self.raft_addr, self.api_addr)
    }
}

openraft::declare_raft_types!(
    /// The exchange's Raft type configuration.
    pub TypeConfig:
        D = Batch,
        R = (),
        NodeId = u64,
        Node = ExchangeNode,
        Term = u64,
        // One leader per term, and a log id is (term, index): what a journal frame stores.
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A snapshot as it travels and is installed: the bytes of a [`crate::state_machine`] image.
/// (Held in memory: this state machine's engine lives in memory too. The production state
/// machine will hand over a file instead.)
pub type SnapshotData = Cursor<Vec<u8>>;

/// A Raft node of the exchange over the state machine `SM`.
pub type ExchangeRaft<SM> = openraft::Raft<TypeConfig, SM>;

pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type Membership = openraft::Membership<u64, ExchangeNode>;
pub type EntryPayload = openraft::type_config::alias::EntryPayloadOf<TypeConfig>;
