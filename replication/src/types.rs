//! The openraft type configuration: what one log entry carries, what names a node, and
//! the aliases the rest of the crate uses.

use std::fmt;
use std::io::Cursor;

use engine_core::StampedCommand;
use serde::{Deserialize, Serialize};

/// What one Raft log entry carries (openraft's application data, `C::D`).
///
/// One entry is one pipeline batch: the leader's matcher stamps a run of commands with
/// contiguous sequence numbers and proposes them together, so that consensus costs one round
/// per batch, not per command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Batch {
    /// Commands stamped by the leader's matcher, `seq` contiguous within the batch and with
    /// the batch before it. Never empty.
    Commands(Vec<StampedCommand>),
    /// `node`'s engine had state hash `hash` after applying command `seq`: every replica
    /// compares it with its own (the determinism check). Consumes no sequence number.
    HashMark { seq: u64, node: u64, hash: u64 },
}

impl Batch {
    /// The sequence numbers of the commands in this batch, `None` for a batch without commands.
    pub fn seq_range(&self) -> Option<(u64, u64)> {
        match self {
            Batch::Commands(commands) => Some((commands.first()?.seq, commands.last()?.seq)),
            Batch::HashMark { .. } => None,
        }
    }
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Batch::Commands(commands) => match self.seq_range() {
                Some((first, last)) => write!(f, "{} commands, seq {first}..={last}", commands.len()),
                None => write!(f, "an empty command batch"),
            },
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
