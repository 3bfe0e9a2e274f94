//! The exchange's journal: every command, in order, on disk before anyone
//! is told its outcome; snapshots of the engine's state; and recovery.
//!
//! # What this crate owns
//!
//! The files under a data directory ([`DataDir`]): `journal/` holds
//! memory-mapped, preallocated, checksummed segment files of stamped
//! commands ([`JournalWriter`], [`JournalReader`]); `snapshots/` holds
//! atomically written, checksummed engine snapshots ([`write_snapshot`],
//! [`load_snapshot`]). [`recover`] and [`open_data_dir`] rebuild the engine
//! from the newest usable snapshot plus the journal after it.
//!
//! In cluster mode the journal directory holds the Raft log instead
//! ([`RaftLog`]: segment format 3, one frame per Raft entry, with append,
//! read, truncation of an uncommitted suffix and purge behind a snapshot)
//! and what a Raft node must not forget ([`RaftStateFile`]: vote,
//! committed). Both are openraft-free: this crate depends on neither
//! openraft nor tokio; the `replication` crate builds openraft's storage on
//! them. Layouts and crash arguments are in `docs/journal.md`.
//!
//! # What it must never do
//!
//! Skip a record, repair corruption silently, or report a record as
//! durable before it is. A torn tail (the shape a crash during an append
//! leaves at the very end, after the last durable point) is cut off and
//! reported; any other damage is an error naming the segment, the offset
//! and the sequence number. Lost files are never taken for a crash:
//! `journal/CHECKPOINT` records what must exist ([`Checkpoint`]), and a
//! segment cut short or missing, or a journal that ends before the durable
//! point or the newest snapshot, is refused. Dropping records is only ever
//! the operator's explicit, recorded act ([`repair`]). Every file is read
//! as hostile input: no panic on any byte.
//!
//! # Example
//!
//! ```
//! use engine_core::{Command, StampedCommand};
//! use journal::{Durability, JournalConfig, JournalReader, JournalWriter, ReadMode};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let mut config = JournalConfig::new(dir.path());
//! config.durability = Durability::Batch;
//! let (mut writer, report) = JournalWriter::open(config).unwrap();
//! assert_eq!(report.next_seq, 1);
//! writer.append(&StampedCommand { seq: 1, timestamp_ns: 5, command: Command::CreateUser }).unwrap();
//! writer.commit_batch().unwrap(); // on disk: now the outcome may be published
//! assert_eq!(writer.durable_seq(), 1);
//!
//! let mut reader = JournalReader::open(dir.path(), 1, ReadMode::Strict).unwrap();
//! assert_eq!(reader.next().unwrap().map(|c| c.seq), Some(1));
//! assert_eq!(reader.next().unwrap(), None);
//! ```

mod checkpoint;
mod error;
mod files;
mod inspect;
mod integrity;
mod raft_log;
mod raft_segment;
mod raft_state;
mod reader;
mod recovery;
mod repair;
mod segment;
mod slot_file;
mod snapshots;
mod syncer;
mod writer;

pub use checkpoint::{checkpoint_path, read_checkpoint, Checkpoint, CHECKPOINT_FILE_NAME};
pub use error::JournalError;
pub use inspect::{end_seq, inspect, snapshots_ahead, JournalReport, Problem, SegmentReport};
pub use raft_log::{
    decode_raft_segments_file, record_raft_segments, LogEntry, RaftLog, RaftLogLimits, RaftOpenReport,
    SyncRequest, RAFT_SEGMENTS_FILE_NAME, RAFT_SEGMENT_BYTES_DEFAULT,
};
pub use raft_segment::{
    check_raft_segment, list_raft_segments, raft_frame_bytes, raft_segment_file_name, read_raft_frame,
    scan_raft_segment, EntryKind, RaftDamage, RaftFrame, RaftFrameFault, RaftFrameRead, RaftSegmentHeader,
    RaftSegmentScan, RAFT_ENTRY_PAYLOAD_MAX_BYTES, RAFT_FRAME_HEADER_BYTES, RAFT_FRAME_MAX_BYTES,
    RAFT_SEGMENT_FORMAT_VERSION,
};
pub use raft_state::{
    decode_raft_state, LogPosition, RaftState, RaftStateFile, StoredVote, RAFT_STATE_FILE_NAME,
};
pub use reader::{JournalReader, ReadMode};
pub use recovery::{
    open_data_dir, open_data_dir_with, recover, recover_with, replay, replay_with, DataDir, Derived,
    RecoverOptions, Recovery, RecoveryError,
};
pub use repair::{
    last_valid_seq, plan_repair, repair, unused_repair_dir, RepairPlan, RepairReport, RepairRequest,
    REPAIRS_LOG_FILE_NAME,
};
pub use segment::{
    decode_command, list_segments, read_frame, segment_file_name, Damage, Frame, FrameFault, SegmentScan,
    FRAME_HEADER_BYTES, PAYLOAD_MAX_BYTES, SEGMENT_FORMAT_VERSION, SEGMENT_FORMAT_VERSION_BINCODE,
    SEGMENT_HEADER_BYTES,
};
pub use snapshots::{
    decode_snapshot_payload, decode_snapshot_payload_of_version, list_snapshots, load_snapshot,
    load_snapshot_with_views, prune_segments, snapshot_file_name, write_snapshot, write_snapshot_with_views,
    LoadedSnapshot, SegmentRetention, SnapshotFileError, SnapshotInfo, SnapshotKeep, SNAPSHOT_FILE_VERSION,
    SNAPSHOT_FILE_VERSION_BINCODE, SNAPSHOT_FILE_VERSION_ENGINE_ONLY, SNAPSHOT_FILE_VERSION_FORMAT_1,
};
pub use syncer::{Durability, JournalSyncer};
pub use writer::{
    CutTail, JournalConfig, JournalLock, JournalWriter, OpenReport, CHECKPOINT_INTERVAL_MS_DEFAULT,
    SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MIN,
};
