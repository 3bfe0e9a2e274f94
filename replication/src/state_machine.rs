//! The state machine: committed entries applied to an [`engine_core::Engine`], snapshots
//! built from the engine's own snapshot data and installed from a leader's.
//!
//! Two layers, so that the gateway's matcher pipeline can reuse the logic without openraft's
//! traits:
//!
//! * [`Replica`] (plain, synchronous): an engine plus the last applied log id and membership;
//!   [`Replica::apply_entry`] applies one committed entry, [`Replica::image`] encodes a
//!   snapshot image, [`Replica::from_image`] checks and decodes one.
//! * [`EngineStateMachine`]: openraft's `RaftStateMachine` + `RaftSnapshotBuilder` over a
//!   `Replica`, applying inline (on openraft's state machine task), keeping its newest
//!   snapshot image in a directory so that a restarted node resumes from it.
//!
//! # The snapshot image (version 2)
//!
//! ```text
//! 0       8         12        16            24            28        32
//! | magic | version | zeros   | payload len | payload crc | zeros   |
//! then the payload: codec((SnapshotMeta, state hash u64, last stamp u64,
//!                          engine_core::Snapshot, read views: Option<bytes>))
//! ```
//!
//! The read views are opaque here: a node that applies through its own pipeline (the
//! gateway's) keeps its views beside the engine, so that a node restarted or brought up to
//! date from an image serves the same closed orders and trades as the others. Version 1 (no
//! views) still loads.
//!
//! Everything in an image is hostile input (it comes over the network from a peer, or from a
//! disk): length, checksum, decoding, the engine's own consistency checks
//! (`Engine::from_snapshot`) and the recorded state hash are all checked before anything is
//! replaced; a refused image changes nothing.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use engine_core::{Engine, EngineLimits, Event, StampedCommand};
use futures_util::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use crate::types::{
    Batch, Entry, LogId, Proposal, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
};

pub const IMAGE_MAGIC: &[u8; 8] = b"EXRAFTSM";
pub const IMAGE_VERSION: u32 = 2;
/// The first version, without the read views.
pub const IMAGE_VERSION_WITHOUT_VIEWS: u32 = 1;
pub const IMAGE_HEADER_BYTES: usize = 32;
/// The largest snapshot image this build accepts (header included). The engine's limits keep
/// a real state far below it; anything larger is refused before it is decoded.
pub const IMAGE_BYTES_MAX: u64 = 1 << 30;
/// The file a state machine keeps its newest snapshot image in, inside its directory.
pub const IMAGE_FILE_NAME: &str = "raft-snapshot.img";

/// Why a committed entry could not be applied. Each one means the replicas' logs or engines
/// disagree (a bug or a breach of determinism), never bad client input: the node must stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyError {
    /// The entry is not after the last applied entry (a replay).
    NotAfterApplied { applied: u64, got: u64 },
    /// A command batch without commands (the proposer never makes one).
    EmptyBatch { entry: u64 },
    /// A hash mark for the engine's current sequence number that differs from its own hash.
    Diverged { entry: u64, seq: u64, node: u64, theirs: u64, ours: u64 },
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::NotAfterApplied { applied, got } => write!(
                f,
                "committed entry {got} is not after the last applied entry {applied}: an entry applied twice; \
                 stop this node and rejoin it with a wiped data directory"
            ),
            ApplyError::EmptyBatch { entry } => write!(f, "entry {entry} is a command batch without commands"),
            ApplyError::Diverged { entry, seq, node, theirs, ours } => write!(
                f,
                "entry {entry}: node {node} had state hash {theirs:016x} after seq {seq}, this node has {ours:016x}: \
                 the replicas diverged; stop this node and compare the journals"
            ),
        }
    }
}

impl std::error::Error for ApplyError {}

/// Why a snapshot image was refused. Nothing was installed.
#[derive(Debug)]
pub enum ImageError {
    TooShort {
        len: usize,
    },
    TooLarge {
        len: u64,
        max: u64,
    },
    BadMagic,
    UnsupportedVersion {
        found: u32,
        supported: u32,
    },
    LengthMismatch {
        header: u64,
        actual: u64,
    },
    ChecksumMismatch {
        recorded: u32,
        computed: u32,
    },
    Decode(codec::Error),
    Engine(engine_core::SnapshotError),
    HashMismatch {
        recorded: u64,
        loaded: u64,
    },
    /// The image is of another point of the log than the one openraft said it is.
    MetaMismatch {
        image: Option<LogId>,
        raft: Option<LogId>,
    },
    Encode(codec::Error),
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::TooShort { len } => {
                write!(f, "snapshot image of {len} bytes is shorter than its {IMAGE_HEADER_BYTES}-byte header")
            }
            ImageError::TooLarge { len, max } => {
                write!(f, "snapshot image of {len} bytes is larger than the {max} bytes this build accepts")
            }
            ImageError::BadMagic => write!(f, "not a snapshot image (bad magic)"),
            ImageError::UnsupportedVersion { found, supported } => {
                write!(f, "snapshot image version {found}, this build reads versions 1 to {supported}")
            }
            ImageError::LengthMismatch { header, actual } => write!(
                f,
                "snapshot image header says {header} payload bytes, {actual} arrived: the transfer was cut short"
            ),
            ImageError::ChecksumMismatch { recorded, computed } => write!(
                f,
                "snapshot image checksum {computed:08x} differs from the recorded {recorded:08x}: damaged in \
                 transit or on disk"
            ),
            ImageError::Decode(e) => write!(f, "snapshot image does not decode: {e}"),
            ImageError::Engine(e) => write!(f, "snapshot image holds an inconsistent engine state: {e}"),
            ImageError::HashMismatch { recorded, loaded } => write!(
                f,
                "snapshot image records state hash {recorded:016x}, its engine hashes to {loaded:016x}"
            ),
            ImageError::MetaMismatch { image, raft } => {
                write!(f, "snapshot image is of log position {image:?}, but was offered as {raft:?}")
            }
            ImageError::Encode(e) => write!(f, "snapshot image could not be encoded: {e}"),
        }
    }
}

impl std::error::Error for ImageError {}

/// An engine and where in the Raft log it stands. Plain and synchronous: the pipeline can own
/// one on its matcher thread.
pub struct Replica {
    engine: Engine,
    applied: Option<LogId>,
    membership: StoredMembership,
    /// The stamp of the last command applied (time never runs backwards in the log).
    last_timestamp_ns: u64,
}

#[derive(Serialize, Deserialize)]
struct ImagePayload {
    meta: SnapshotMeta,
    state_hash: u64,
    /// The last command's stamp: the next one is never below it.
    last_timestamp_ns: u64,
    engine: engine_core::Snapshot,
    views: Option<Vec<u8>>,
}

/// Version 1's payload: the same without the views.
#[derive(Serialize, Deserialize)]
struct ImagePayloadV1 {
    meta: SnapshotMeta,
    state_hash: u64,
    last_timestamp_ns: u64,
    engine: engine_core::Snapshot,
}

/// A snapshot image's contents, checked (see [`decode_image`]).
pub struct Image {
    /// The log position and membership the state is at.
    pub meta: SnapshotMeta,
    pub engine: Engine,
    /// The last command's stamp: the next one is never below it.
    pub last_timestamp_ns: u64,
    /// The read views' state at the engine's sequence number, opaque here (None: the image
    /// carries none).
    pub views: Option<Vec<u8>>,
}

/// Encodes a snapshot image of `engine` at `meta` (see the module documentation).
pub fn encode_image(
    meta: &SnapshotMeta,
    engine: &Engine,
    last_timestamp_ns: u64,
    views: Option<Vec<u8>>,
) -> Result<Vec<u8>, ImageError> {
    let payload = ImagePayload {
        meta: meta.clone(),
        state_hash: engine.state_hash(),
        last_timestamp_ns,
        engine: engine.snapshot(),
        views,
    };
    let mut bytes = vec![0u8; IMAGE_HEADER_BYTES];
    codec::encode_append(&payload, &mut bytes).map_err(ImageError::Encode)?;
    let payload_len = (bytes.len() - IMAGE_HEADER_BYTES) as u64;
    if bytes.len() as u64 > IMAGE_BYTES_MAX {
        return Err(ImageError::TooLarge { len: bytes.len() as u64, max: IMAGE_BYTES_MAX });
    }
    let crc = crc32fast::hash(&bytes[IMAGE_HEADER_BYTES..]);
    bytes[0..8].copy_from_slice(IMAGE_MAGIC);
    bytes[8..12].copy_from_slice(&IMAGE_VERSION.to_le_bytes());
    bytes[16..24].copy_from_slice(&payload_len.to_le_bytes());
    bytes[24..28].copy_from_slice(&crc.to_le_bytes());
    Ok(bytes)
}

/// Checks and decodes a snapshot image: its envelope (length, checksum), its decoding, the
/// engine's own consistency checks and the recorded state hash. Never panics, whatever the
/// bytes; the views are returned as they are (their reader checks them).
pub fn decode_image(bytes: &[u8]) -> Result<Image, ImageError> {
    let (version, payload) = check_image_envelope_of(bytes)?;
    let image: ImagePayload = if version == IMAGE_VERSION_WITHOUT_VIEWS {
        let v1: ImagePayloadV1 = codec::decode(payload).map_err(ImageError::Decode)?;
        ImagePayload {
            meta: v1.meta,
            state_hash: v1.state_hash,
            last_timestamp_ns: v1.last_timestamp_ns,
            engine: v1.engine,
            views: None,
        }
    } else {
        codec::decode(payload).map_err(ImageError::Decode)?
    };
    let engine = Engine::from_snapshot(image.engine).map_err(ImageError::Engine)?;
    let loaded = engine.state_hash();
    if loaded != image.state_hash {
        return Err(ImageError::HashMismatch { recorded: image.state_hash, loaded });
    }
    Ok(Image { meta: image.meta, engine, last_timestamp_ns: image.last_timestamp_ns, views: image.views })
}

/// Reads the image kept in `dir` ([`IMAGE_FILE_NAME`]), checked; `None` when there is none.
/// A damaged one is an error naming the file: a node must not silently start over.
pub fn read_image_file(dir: &Path) -> io::Result<Option<(Image, Vec<u8>)>> {
    read_image_at(&dir.join(IMAGE_FILE_NAME))
}

/// Keeps `bytes` as the image in `dir` ([`IMAGE_FILE_NAME`]): written to a temporary file,
/// synced, renamed over the old one and the directory synced, so that a crash leaves the old
/// image or the new one, never half of one.
pub fn write_image_file(dir: &Path, bytes: &[u8]) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    write_atomically(dir, IMAGE_FILE_NAME, bytes)
}

/// Numbers and stamps one committed proposal as every replica does: sequence number `seq`
/// (the engine's next), and the proposer's time unless that would run backwards
/// (`last_timestamp_ns` moves on with it).
pub fn stamp(proposal: &Proposal, seq: u64, last_timestamp_ns: &mut u64) -> StampedCommand {
    *last_timestamp_ns = (*last_timestamp_ns).max(proposal.timestamp_ns);
    StampedCommand { seq, timestamp_ns: *last_timestamp_ns, command: proposal.command }
}

/// Reads the image at `path`, checked; `None` when there is none (see [`read_image_file`]).
pub fn read_image_at(path: &Path) -> io::Result<Option<(Image, Vec<u8>)>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))),
    };
    let image = decode_image(&bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))?;
    Ok(Some((image, bytes)))
}

impl Replica {
    /// An empty engine before the first entry.
    pub fn new(limits: EngineLimits) -> Replica {
        Replica {
            engine: Engine::new(limits),
            applied: None,
            membership: StoredMembership::default(),
            last_timestamp_ns: 0,
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The last applied log id (None before the first entry).
    pub fn applied(&self) -> Option<LogId> {
        self.applied
    }

    pub fn membership(&self) -> &StoredMembership {
        &self.membership
    }

    /// Applies one committed entry: a command batch goes through the engine (its events are
    /// appended to `events`), a membership entry is remembered, a blank entry only moves the
    /// applied position. Checks before changing anything that the entry follows the last one
    /// and that the batch's sequence numbers continue the engine's, so a refused entry leaves
    /// the replica as it was.
    pub fn apply_entry(&mut self, entry: &Entry, events: &mut Vec<Event>) -> Result<(), ApplyError> {
        let index = entry.log_id.index;
        // Indexes only grow. They are not required to be contiguous here: the engine's own
        // guard is the command sequence below, which no skipped command batch can pass (and
        // openraft's storage suite applies blank entries with gaps between them).
        if let Some(applied) = self.applied.filter(|applied| index <= applied.index) {
            return Err(ApplyError::NotAfterApplied { applied: applied.index, got: index });
        }
        match &entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Normal(Batch::Commands(proposals)) => {
                if proposals.is_empty() {
                    return Err(ApplyError::EmptyBatch { entry: index });
                }
                // Numbered and stamped here, alike on every replica (the gateway's matcher
                // does the same): the next sequence number, and the proposer's time unless
                // that would run backwards.
                for proposal in proposals {
                    let stamped = stamp(proposal, self.engine.last_seq() + 1, &mut self.last_timestamp_ns);
                    if let Err(e) = self.engine.apply(&stamped, events) {
                        unreachable!("entry {index}: the engine refused the next sequence number: {e:?}");
                    }
                }
            }
            EntryPayload::Normal(Batch::HashMark { seq, node, hash }) => {
                // Compared only where this engine stands at the mark's seq; a mark for another
                // point is checked by the replicas that stand there (the pipeline keeps a map).
                if *seq == self.engine.last_seq() {
                    let ours = self.engine.state_hash();
                    if ours != *hash {
                        return Err(ApplyError::Diverged {
                            entry: index,
                            seq: *seq,
                            node: *node,
                            theirs: *hash,
                            ours,
                        });
                    }
                }
            }
            EntryPayload::Membership(membership) => {
                self.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
            }
        }
        self.applied = Some(entry.log_id);
        Ok(())
    }

    /// The replica's state as a snapshot image (see the module documentation), with the meta
    /// openraft needs.
    pub fn image(&self) -> Result<(SnapshotMeta, Vec<u8>), ImageError> {
        let meta = SnapshotMeta { last_log_id: self.applied, last_membership: self.membership.clone() };
        let bytes = encode_image(&meta, &self.engine, self.last_timestamp_ns, None)?;
        Ok((meta, bytes))
    }

    /// Checks and decodes a snapshot image into a replica and the meta recorded in it.
    pub fn from_image(bytes: &[u8]) -> Result<(Replica, SnapshotMeta), ImageError> {
        let image = decode_image(bytes)?;
        let replica = Replica {
            engine: image.engine,
            applied: image.meta.last_log_id,
            membership: image.meta.last_membership.clone(),
            last_timestamp_ns: image.last_timestamp_ns,
        };
        Ok((replica, image.meta))
    }
}

/// Checks an image's header, length and checksum (cheap: no decoding) and returns its payload.
/// The transport runs this on a received snapshot before handing it to openraft.
pub fn check_image_envelope(bytes: &[u8]) -> Result<&[u8], ImageError> {
    check_image_envelope_of(bytes).map(|(_, payload)| payload)
}

/// [`check_image_envelope`], with the image's version.
fn check_image_envelope_of(bytes: &[u8]) -> Result<(u32, &[u8]), ImageError> {
    if bytes.len() < IMAGE_HEADER_BYTES {
        return Err(ImageError::TooShort { len: bytes.len() });
    }
    if bytes.len() as u64 > IMAGE_BYTES_MAX {
        return Err(ImageError::TooLarge { len: bytes.len() as u64, max: IMAGE_BYTES_MAX });
    }
    if &bytes[0..8] != IMAGE_MAGIC {
        return Err(ImageError::BadMagic);
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != IMAGE_VERSION && version != IMAGE_VERSION_WITHOUT_VIEWS {
        return Err(ImageError::UnsupportedVersion { found: version, supported: IMAGE_VERSION });
    }
    let payload_len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    let payload = &bytes[IMAGE_HEADER_BYTES..];
    if payload_len != payload.len() as u64 {
        return Err(ImageError::LengthMismatch { header: payload_len, actual: payload.len() as u64 });
    }
    let recorded = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes"));
    let computed = crc32fast::hash(payload);
    if recorded != computed {
        return Err(ImageError::ChecksumMismatch { recorded, computed });
    }
    Ok((version, payload))
}

struct Shared {
    replica: Replica,
    /// The newest snapshot: its meta and image bytes.
    current: Option<(SnapshotMeta, Vec<u8>)>,
    /// Where the newest image is kept (None: memory only).
    dir: Option<PathBuf>,
    /// Scratch for the engine's events (this state machine does not publish them).
    events: Vec<Event>,
}

/// openraft's state machine over an [`Engine`], applying committed batches inline.
///
/// Clones share one replica: a test (or a read path) keeps a clone to look at the engine
/// while openraft owns another.
#[derive(Clone)]
pub struct EngineStateMachine {
    shared: Arc<Mutex<Shared>>,
}

impl EngineStateMachine {
    /// A state machine in memory only (a restart starts from an empty engine).
    pub fn in_memory(limits: EngineLimits) -> EngineStateMachine {
        EngineStateMachine::with_parts(Replica::new(limits), None, None)
    }

    /// Opens the state machine kept in `dir`: resumes from the newest snapshot image there, if
    /// any (a damaged one is refused with the reason: a node must not silently start over).
    pub fn open(dir: &Path, limits: EngineLimits) -> io::Result<EngineStateMachine> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(IMAGE_FILE_NAME);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let (replica, meta) = Replica::from_image(&bytes).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
                })?;
                tracing::info!(path = %path.display(), applied = ?meta.last_log_id, "state machine resumes from its snapshot");
                Ok(EngineStateMachine::with_parts(replica, Some((meta, bytes)), Some(dir.to_path_buf())))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Ok(EngineStateMachine::with_parts(Replica::new(limits), None, Some(dir.to_path_buf())))
            }
            Err(e) => Err(io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))),
        }
    }

    fn with_parts(
        replica: Replica,
        current: Option<(SnapshotMeta, Vec<u8>)>,
        dir: Option<PathBuf>,
    ) -> EngineStateMachine {
        let shared = Shared { replica, current, dir, events: Vec::new() };
        EngineStateMachine { shared: Arc::new(Mutex::new(shared)) }
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, Shared>> {
        // A poisoned lock means an apply panicked half-way: the replica cannot be trusted.
        self.shared
            .lock()
            .map_err(|_| io::Error::other("the state machine panicked earlier; restart the node"))
    }

    /// The engine's state hash, its last applied seq and the last applied log id, read together.
    pub fn status(&self) -> io::Result<(u64, u64, Option<LogId>)> {
        let shared = self.lock()?;
        let engine = shared.replica.engine();
        Ok((engine.state_hash(), engine.last_seq(), shared.replica.applied()))
    }

    /// Runs `f` on the engine (a read: tests and views).
    pub fn with_engine<T>(&self, f: impl FnOnce(&Engine) -> T) -> io::Result<T> {
        Ok(f(self.lock()?.replica.engine()))
    }
}

impl Shared {
    /// Keeps `bytes` as the newest image: on disk first (write, sync, rename, sync the
    /// directory), so a crash leaves the old image or the new one, never half of one.
    fn keep(&mut self, meta: SnapshotMeta, bytes: Vec<u8>) -> io::Result<()> {
        if let Some(dir) = &self.dir {
            write_atomically(dir, IMAGE_FILE_NAME, &bytes)?;
        }
        self.current = Some((meta, bytes));
        Ok(())
    }
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

impl RaftSnapshotBuilder<TypeConfig> for EngineStateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let mut shared = self.lock()?;
        let (meta, bytes) = shared.replica.image().map_err(io::Error::other)?;
        shared.keep(meta.clone(), bytes.clone())?;
        tracing::info!(applied = ?meta.last_log_id, bytes = bytes.len(), "built a snapshot");
        Ok(Snapshot { meta, snapshot: SnapshotData::new(bytes) })
    }
}

impl RaftStateMachine<TypeConfig> for EngineStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let shared = self.lock()?;
        Ok((shared.replica.applied(), shared.replica.membership().clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + openraft::OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            {
                let mut shared = self.lock()?;
                let Shared { replica, events, .. } = &mut *shared;
                events.clear();
                if let Err(e) = replica.apply_entry(&entry, events) {
                    tracing::error!(error = %e, entry = %entry.log_id, "refusing a committed entry: this node stops");
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            }
            if let Some(responder) = responder {
                responder.send(());
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let bytes = snapshot.into_inner();
        // Decode and check everything before touching the replica: a bad image changes nothing.
        let (replica, image_meta) = Replica::from_image(&bytes).map_err(|e| {
            tracing::warn!(error = %e, applied = ?meta.last_log_id, "refusing a snapshot");
            io::Error::new(io::ErrorKind::InvalidData, e)
        })?;
        if image_meta.last_log_id != meta.last_log_id || image_meta.last_membership != meta.last_membership {
            let e = ImageError::MetaMismatch { image: image_meta.last_log_id, raft: meta.last_log_id };
            tracing::warn!(error = %e, applied = ?meta.last_log_id, "refusing a snapshot");
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        let mut shared = self.lock()?;
        shared.keep(meta.clone(), bytes)?;
        shared.replica = replica;
        tracing::info!(applied = ?meta.last_log_id, "installed a snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let shared = self.lock()?;
        Ok(shared
            .current
            .as_ref()
            .map(|(meta, bytes)| Snapshot { meta: meta.clone(), snapshot: SnapshotData::new(bytes.clone()) }))
    }
}

#[cfg(test)]
mod tests {
    use engine_core::Command;

    use super::*;

    fn commands(n: u64) -> Vec<Proposal> {
        (1..=n)
            .map(|i| Proposal {
                origin: crate::Origin { node: 1, incarnation: 1, request: i },
                timestamp_ns: 1_000 + i,
                command: Command::CreateUser,
                replay_mark: None,
            })
            .collect()
    }

    fn entry(index: u64, batch: Batch) -> Entry {
        Entry { log_id: LogId::new_term_index(1, index), payload: EntryPayload::Normal(batch) }
    }

    fn replica_with(n: u64) -> Replica {
        let mut replica = Replica::new(EngineLimits::default());
        replica.apply_entry(&entry(1, Batch::Commands(commands(n))), &mut Vec::new()).unwrap();
        replica
    }

    #[test]
    fn commands_are_numbered_in_log_order_and_time_never_runs_backwards() {
        let mut replica = replica_with(5);
        assert_eq!(replica.engine().last_seq(), 5);
        // A proposer whose clock is behind the last stamp: stamped at the last stamp.
        let mut events = Vec::new();
        let behind = vec![Proposal { timestamp_ns: 3, ..commands(1)[0] }];
        replica.apply_entry(&entry(2, Batch::Commands(behind)), &mut events).unwrap();
        assert_eq!(replica.engine().last_seq(), 6);
        assert!(events.iter().all(|e| e.seq == 6));
        assert_eq!(replica.last_timestamp_ns, 1_005);
        // An entry applied twice, and an empty batch, are refused and change nothing.
        let before = replica.engine().state_hash();
        let again = replica.apply_entry(&entry(1, Batch::Commands(commands(1))), &mut Vec::new());
        assert_eq!(again, Err(ApplyError::NotAfterApplied { applied: 2, got: 1 }));
        let empty = replica.apply_entry(&entry(3, Batch::Commands(Vec::new())), &mut Vec::new());
        assert_eq!(empty, Err(ApplyError::EmptyBatch { entry: 3 }));
        assert_eq!(replica.engine().state_hash(), before);
        assert_eq!(replica.applied().map(|l| l.index), Some(2));
    }

    #[test]
    fn a_hash_mark_that_disagrees_stops_the_replica() {
        let mut replica = replica_with(3);
        let ours = replica.engine().state_hash();
        let agree = Batch::HashMark { seq: 3, node: 2, hash: ours };
        replica.apply_entry(&entry(2, agree), &mut Vec::new()).unwrap();
        let differ = Batch::HashMark { seq: 3, node: 2, hash: ours ^ 1 };
        let refused = replica.apply_entry(&entry(3, differ), &mut Vec::new());
        assert!(matches!(refused, Err(ApplyError::Diverged { seq: 3, node: 2, .. })), "{refused:?}");
    }

    #[test]
    fn an_image_round_trips_and_every_damage_is_refused() {
        let replica = replica_with(7);
        let (meta, image) = replica.image().unwrap();
        let (back, back_meta) = Replica::from_image(&image).unwrap();
        assert_eq!(back_meta, meta);
        assert_eq!(back.engine().state_hash(), replica.engine().state_hash());
        assert_eq!(back.engine().last_seq(), 7);
        assert_eq!(back.applied(), replica.applied());

        let refuse = |bytes: &[u8]| Replica::from_image(bytes).err().expect("a damaged image was accepted");
        assert!(matches!(refuse(&image[..10]), ImageError::TooShort { len: 10 }));
        assert!(matches!(refuse(&image[..image.len() - 1]), ImageError::LengthMismatch { .. }));
        let mut magic = image.clone();
        magic[0] ^= 1;
        assert!(matches!(refuse(&magic), ImageError::BadMagic));
        let mut version = image.clone();
        version[8] = 9;
        assert!(matches!(refuse(&version), ImageError::UnsupportedVersion { found: 9, .. }));
        // Every byte of the payload is covered by the checksum.
        for at in (IMAGE_HEADER_BYTES..image.len()).step_by(7) {
            let mut flipped = image.clone();
            flipped[at] ^= 0x40;
            assert!(matches!(refuse(&flipped), ImageError::ChecksumMismatch { .. }), "byte {at}");
        }
        // A payload with a valid checksum that does not decode, or whose engine hashes to
        // something else than recorded, is refused too (a buggy or hostile sender).
        let reseal = |mut bytes: Vec<u8>| {
            let len = (bytes.len() - IMAGE_HEADER_BYTES) as u64;
            let crc = crc32fast::hash(&bytes[IMAGE_HEADER_BYTES..]);
            bytes[16..24].copy_from_slice(&len.to_le_bytes());
            bytes[24..28].copy_from_slice(&crc.to_le_bytes());
            bytes
        };
        let mut garbage = image[..IMAGE_HEADER_BYTES].to_vec();
        garbage.extend_from_slice(&[0xff; 40]);
        assert!(matches!(refuse(&reseal(garbage)), ImageError::Decode(_)));
        let (meta, _) = replica.image().unwrap();
        let lying = ImagePayload {
            meta,
            state_hash: 42,
            last_timestamp_ns: 0,
            engine: replica.engine().snapshot(),
            views: None,
        };
        let mut bytes = image[..IMAGE_HEADER_BYTES].to_vec();
        codec::encode_append(&lying, &mut bytes).unwrap();
        assert!(matches!(refuse(&reseal(bytes)), ImageError::HashMismatch { recorded: 42, .. }));
    }

    #[test]
    fn an_image_carries_the_views_and_a_version_1_image_still_loads() {
        let replica = replica_with(4);
        let meta =
            SnapshotMeta { last_log_id: replica.applied(), last_membership: StoredMembership::default() };
        let bytes = encode_image(&meta, replica.engine(), 77, Some(vec![1, 2, 3])).unwrap();
        let image = decode_image(&bytes).unwrap();
        assert_eq!(
            (image.meta, image.last_timestamp_ns, image.views),
            (meta.clone(), 77, Some(vec![1, 2, 3]))
        );
        assert_eq!(image.engine.state_hash(), replica.engine().state_hash());

        let v1 = ImagePayloadV1 {
            meta: meta.clone(),
            state_hash: replica.engine().state_hash(),
            last_timestamp_ns: 5,
            engine: replica.engine().snapshot(),
        };
        let mut bytes = vec![0u8; IMAGE_HEADER_BYTES];
        codec::encode_append(&v1, &mut bytes).unwrap();
        let len = (bytes.len() - IMAGE_HEADER_BYTES) as u64;
        let crc = crc32fast::hash(&bytes[IMAGE_HEADER_BYTES..]);
        bytes[0..8].copy_from_slice(IMAGE_MAGIC);
        bytes[8..12].copy_from_slice(&IMAGE_VERSION_WITHOUT_VIEWS.to_le_bytes());
        bytes[16..24].copy_from_slice(&len.to_le_bytes());
        bytes[24..28].copy_from_slice(&crc.to_le_bytes());
        let image = decode_image(&bytes).unwrap();
        assert_eq!((image.meta, image.last_timestamp_ns, image.views), (meta, 5, None));

        // Written and read back through the file, and a damaged file is named.
        let dir = tempfile::tempdir().unwrap();
        assert!(read_image_file(dir.path()).unwrap().is_none());
        write_image_file(dir.path(), &bytes).unwrap();
        let (read, kept) = read_image_file(dir.path()).unwrap().unwrap();
        assert_eq!((read.engine.last_seq(), kept), (4, bytes.clone()));
        let mut damaged = bytes;
        damaged[IMAGE_HEADER_BYTES] ^= 1;
        write_image_file(dir.path(), &damaged).unwrap();
        let refused = read_image_file(dir.path()).err().expect("refused");
        assert!(refused.to_string().contains(IMAGE_FILE_NAME), "{refused}");
    }

    #[tokio::test]
    async fn a_refused_snapshot_leaves_the_state_machine_as_it_was() {
        let mut sm = EngineStateMachine::in_memory(EngineLimits::default());
        let entries = futures_util::stream::iter([Ok((entry(1, Batch::Commands(commands(4))), None))]);
        sm.apply(entries).await.unwrap();
        let before = sm.status().unwrap();
        let (meta, mut image) = replica_with(9).image().unwrap();
        let last = image.len() - 1;
        image[last] ^= 1;
        assert!(sm.install_snapshot(&meta, SnapshotData::new(image)).await.is_err());
        assert_eq!(sm.status().unwrap(), before);
        // A sound image offered as another log position is refused too.
        let (mut meta, image) = replica_with(9).image().unwrap();
        meta.last_log_id = Some(LogId::new_term_index(5, 77));
        assert!(sm.install_snapshot(&meta, SnapshotData::new(image)).await.is_err());
        assert_eq!(sm.status().unwrap(), before);
        // And a good one replaces the engine.
        let (meta, image) = replica_with(9).image().unwrap();
        sm.install_snapshot(&meta, SnapshotData::new(image)).await.unwrap();
        assert_eq!(sm.status().unwrap().1, 9);
    }

    #[tokio::test]
    async fn a_restarted_state_machine_resumes_from_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = EngineStateMachine::open(dir.path(), EngineLimits::default()).unwrap();
        let entries = futures_util::stream::iter([Ok((entry(1, Batch::Commands(commands(6))), None))]);
        sm.apply(entries).await.unwrap();
        let built = sm.build_snapshot().await.unwrap();
        let status = sm.status().unwrap();
        drop(sm);
        let mut again = EngineStateMachine::open(dir.path(), EngineLimits::default()).unwrap();
        assert_eq!(again.status().unwrap(), status);
        let current = again.get_current_snapshot().await.unwrap().expect("the snapshot is kept");
        assert_eq!(current.meta, built.meta);
        // A damaged file is refused at open, with its path in the message.
        let path = dir.path().join(IMAGE_FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[IMAGE_HEADER_BYTES + 3] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let refused = EngineStateMachine::open(dir.path(), EngineLimits::default()).err().expect("refused");
        assert!(refused.to_string().contains(IMAGE_FILE_NAME), "{refused}");
    }
}
