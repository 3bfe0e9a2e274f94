//! Group commit at the consensus layer: the proposals that arrive while an
//! entry is being written go out together, as the next entry.
//!
//! ```text
//! handlers --Queued--> [queue] --> packer task: take what waits (up to the limits),
//!                                  check leadership, one conditional write
//!                                  --> openraft: one entry, one append, one fsync, one round trip
//!                                  <-- committed and applied: every waiting handler gets the answer
//! ```
//!
//! A lone proposal goes out at once: there is no timer, so a quiet
//! exchange adds no latency. Packing happens only when proposals arrive
//! while [`WRITES_IN_FLIGHT_MAX`] entries are already in flight ("one in
//! flight, batch the rest"): the busier the leader, the fuller its entries,
//! and the fewer appends, syncs and messages per command.
//!
//! Every proposal of an entry gets the entry's answer: an entry commits
//! whole or not at all. The proposals keep their own origin (node,
//! incarnation, request) and their own proposal time; each node's matcher
//! numbers and stamps them one by one as it applies the entry, exactly as
//! if each had been an entry of its own.
//!
//! What this module must never do: write an entry larger than the Raft log
//! takes (the log store would fail and stop the node), answer a proposal
//! before its entry is committed and applied, or answer `NotLeader` (which
//! tells the client the command was not applied) for an entry that was
//! handed to openraft and may still commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use replication::openraft::errors::ClientWriteError;
use replication::openraft::impls::ProgressResponder;
use replication::{Batch, Proposal};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{Leadership, ProposeError};

/// Most commands in one entry. At the limit the rest wait for the next
/// entry, so one entry's apply does not hold the matcher's ring for long.
pub const PACKED_COMMANDS_MAX: usize = 256;

/// Most bytes of one entry's encoded commands. Well below what the Raft log
/// takes ([`journal::RAFT_ENTRY_PAYLOAD_MAX_BYTES`]), and small enough that
/// openraft's batches of entries in one append message (300 by default)
/// stay below the transport's frame limit (`NetConfig::frame_bytes_max`,
/// 64 MiB): 300 x 64 KiB is under 20 MiB.
pub const PACKED_ENTRY_BYTES_MAX: usize = 64 * 1024;

/// The count of commands that starts an entry's encoding: a varint of at
/// most this many bytes (see `codec`).
const COMMAND_COUNT_BYTES_MAX: usize = 9;

const _: () = assert!(PACKED_ENTRY_BYTES_MAX <= journal::RAFT_ENTRY_PAYLOAD_MAX_BYTES);

/// Entries handed to openraft and not yet answered. One keeps entries full
/// under load; more let the next entry's append overlap the previous one's
/// replication, at the cost of smaller entries (docs/replication.md,
/// "Benchmarks").
pub const WRITES_IN_FLIGHT_MAX: usize = 1;

/// Proposals waiting to be packed; a handler waits for room beyond this
/// (within its request timeout).
pub const QUEUED_PROPOSALS_MAX: usize = 8 * 1024;

/// What `/metrics` shows of the packing.
#[derive(Default)]
pub struct PackingCounters {
    /// Entries of commands written (handed to openraft), committed or not.
    pub entries: AtomicU64,
    /// Commands in those entries.
    pub commands: AtomicU64,
    /// The most commands one entry held since the start.
    pub commands_per_entry_max: AtomicU64,
}

/// A proposal and the handler waiting for its entry's answer.
struct Queued {
    proposal: Proposal,
    answer: oneshot::Sender<Result<(), ProposeError>>,
}

/// The handlers' side of the queue.
pub(super) struct Proposer {
    queue: mpsc::Sender<Queued>,
    pub(super) counters: Arc<PackingCounters>,
}

impl Proposer {
    /// Starts the packer task; it ends once the `Proposer` is dropped and
    /// the queue is empty.
    pub(super) fn start(leadership: Arc<Leadership>) -> Proposer {
        let (queue, queued) = mpsc::channel(QUEUED_PROPOSALS_MAX);
        let counters = Arc::new(PackingCounters::default());
        tokio::spawn(pack(leadership, queued, Arc::clone(&counters)));
        Proposer { queue, counters }
    }

    /// Queues `proposal` and waits for its entry's answer.
    pub(super) async fn propose(&self, proposal: Proposal) -> Result<(), ProposeError> {
        let (answer, answered) = oneshot::channel();
        let stopping = || ProposeError::Unknown("the exchange is stopping".into());
        self.queue.send(Queued { proposal, answer }).await.map_err(|_| stopping())?;
        answered.await.map_err(|_| stopping())?
    }
}

/// The packer: takes what waits, writes it as one entry, and goes on with
/// the next while at most [`WRITES_IN_FLIGHT_MAX`] entries are in flight.
async fn pack(
    leadership: Arc<Leadership>,
    mut queued: mpsc::Receiver<Queued>,
    counters: Arc<PackingCounters>,
) {
    let slots = Arc::new(Semaphore::new(WRITES_IN_FLIGHT_MAX));
    // A proposal taken that did not fit the last entry: the next one starts with it.
    let mut carried: Option<Queued> = None;
    let mut scratch = Vec::with_capacity(PACKED_ENTRY_BYTES_MAX);
    loop {
        // Never closed: `slots` lives as long as this loop.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        let first = match carried.take() {
            Some(first) => first,
            None => match queued.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let mut entry = Vec::with_capacity(queued.len().min(PACKED_COMMANDS_MAX) + 1);
        scratch.clear();
        add(&mut entry, &mut scratch, first);
        while entry.len() < PACKED_COMMANDS_MAX {
            let Ok(next) = queued.try_recv() else { break };
            let before_bytes = scratch.len();
            let fits = codec::encode_append(&next.proposal, &mut scratch).is_ok()
                && scratch.len() + COMMAND_COUNT_BYTES_MAX <= PACKED_ENTRY_BYTES_MAX;
            scratch.truncate(before_bytes);
            if !fits {
                carried = Some(next);
                break;
            }
            add(&mut entry, &mut scratch, next);
        }
        // A handler that gave up (its request timed out) was told the
        // command may or may not be applied: leaving it out is allowed,
        // and spares the log a command nobody waits for.
        entry.retain(|queued| !queued.answer.is_closed());
        if entry.is_empty() {
            continue;
        }
        let written = write(&leadership, &entry).await;
        if written.is_ok() {
            let commands = entry.len() as u64;
            counters.entries.fetch_add(1, Ordering::Relaxed);
            counters.commands.fetch_add(commands, Ordering::Relaxed);
            counters.commands_per_entry_max.fetch_max(commands, Ordering::Relaxed);
        }
        tokio::spawn(async move {
            let result = match written {
                Ok(applied) => applied.await,
                Err(refused) => Err(refused),
            };
            for queued in entry {
                // The handler may have given up meanwhile: nobody to tell.
                let _ = queued.answer.send(result.clone());
            }
            drop(slot);
        });
    }
}

/// Adds `queued` to the entry and its encoding to `scratch` (which holds
/// the entry's encoded commands so far, for the byte limit).
fn add(entry: &mut Vec<Queued>, scratch: &mut Vec<u8>, queued: Queued) {
    if codec::encode_append(&queued.proposal, scratch).is_err() {
        // Cannot happen for a command; count it as a full entry so that
        // nothing joins it.
        scratch.resize(PACKED_ENTRY_BYTES_MAX, 0);
    }
    entry.push(queued);
}

/// Hands the entry to openraft if this node still leads, conditionally on
/// the term it checked (a write refused for a changed leader was appended
/// nowhere). Returns the entry's outcome to wait for.
async fn write(
    leadership: &Arc<Leadership>,
    entry: &[Queued],
) -> Result<impl std::future::Future<Output = Result<(), ProposeError>>, ProposeError> {
    // The term first, then the checks: a term that moved on between the two
    // makes the conditional write refuse the entry rather than append it.
    let term = match leadership.raft.as_leader() {
        Ok(leader) => leader.to_committed_leader_id(),
        Err(forward) => {
            return Err(ProposeError::NotLeader {
                leader: forward.leader_id.and_then(|id| leadership.api_address(id)),
            })
        }
    };
    leadership.check()?;
    let proposals = entry.iter().map(|queued| queued.proposal).collect();
    let (responder, applied) = ProgressResponder::complete_only();
    let sent = leadership.raft.write(Batch::Commands(proposals)).with_leader(term).responder(responder).await;
    // openraft has stopped: the entry may have reached it first.
    sent.map_err(|fatal| ProposeError::Unknown(fatal.to_string()))?;
    let leadership = Arc::clone(leadership);
    Ok(async move {
        match applied.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(ClientWriteError::ForwardToLeader(forward))) => Err(ProposeError::NotLeader {
                leader: forward.leader_id.and_then(|id| leadership.api_address(id)),
            }),
            Ok(Err(error)) => Err(ProposeError::Unknown(error.to_string())),
            Err(_) => Err(ProposeError::Unknown("Raft stopped before the entry was applied".into())),
        }
    })
}
