//! `journal/CHECKPOINT`: what must exist in the journal, recorded where a
//! crash cannot undo it.
//!
//! A crash (even a power loss) can only leave an unfinished tail after the
//! last durable point. A file shorter than its preallocated size, a missing
//! segment, or a journal that ends before a sequence number already known
//! to be durable cannot come from a crash: they mean lost files, and the
//! writer refuses to open on them. This file is how it knows (the role of
//! Kafka's recovery-point checkpoint and of TigerBeetle's superblock).
//!
//! ```text
//! 0      8         12           16            24                32                40              48     64
//! | magic | version | header crc | durable seq | oldest first seq | newest first seq | segment count | zeros |
//! ```
//!
//! * `durable seq`: every record up to it was synced to disk (0: none).
//! * `oldest first seq`: the first sequence number of the oldest segment
//!   the exchange keeps; older ones were pruned on purpose.
//! * `newest first seq`: the first sequence number of the newest segment
//!   created; it exists (synced with its directory) before this names it.
//! * `segment count`: how many segments exist from the oldest to the
//!   newest named here, both included; one missing in between shows.
//!
//! All integers are little-endian; the CRC-32 covers every byte but its
//! own four. The file is replaced atomically (temporary file, fsync,
//! rename, fsync of the directory) and read as hostile input.
//!
//! Every write in this process goes through [`update`] (or [`replace`]),
//! which hold one lock: the matcher's writer (a new segment), its
//! background keeper (the durable sequence number) and the pruning thread
//! (the oldest segment) never interleave their read-modify-write. Another
//! process writes the file only while holding `journal/LOCK`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::error::JournalError;
use crate::files::{private_file_options, sync_dir};
use crate::segment::{read_u32, read_u64};

pub const CHECKPOINT_FILE_NAME: &str = "CHECKPOINT";
pub const CHECKPOINT_MAGIC: &[u8; 8] = b"EXCHKPNT";
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;
pub const CHECKPOINT_BYTES: usize = 64;
const CHECKPOINT_TEMP_NAME: &str = "CHECKPOINT.tmp";

/// What must exist in a journal directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every record up to this sequence number was synced (0: none yet).
    pub durable_seq: u64,
    /// The first sequence number of the oldest segment kept on purpose.
    pub oldest_first_seq: u64,
    /// The first sequence number of the newest segment created.
    pub newest_first_seq: u64,
    /// Segments from the oldest to the newest, both included.
    pub segment_count: u64,
}

impl Checkpoint {
    pub fn encode(&self) -> [u8; CHECKPOINT_BYTES] {
        let mut bytes = [0u8; CHECKPOINT_BYTES];
        bytes[0..8].copy_from_slice(CHECKPOINT_MAGIC);
        bytes[8..12].copy_from_slice(&CHECKPOINT_FORMAT_VERSION.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.durable_seq.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.oldest_first_seq.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.newest_first_seq.to_le_bytes());
        bytes[40..48].copy_from_slice(&self.segment_count.to_le_bytes());
        let crc = checkpoint_crc(&bytes);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Checks and decodes the file's bytes; the error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, &'static str> {
        if bytes.len() != CHECKPOINT_BYTES {
            return Err("not 64 bytes long");
        }
        if &bytes[0..8] != CHECKPOINT_MAGIC {
            return Err("not a journal checkpoint (bad magic)");
        }
        if read_u32(bytes, 8) != CHECKPOINT_FORMAT_VERSION {
            return Err("unsupported checkpoint format version");
        }
        if read_u32(bytes, 12) != checkpoint_crc(bytes) {
            return Err("checksum mismatch");
        }
        if bytes[48..].iter().any(|&b| b != 0) {
            return Err("reserved bytes are not zero");
        }
        let checkpoint = Checkpoint {
            durable_seq: read_u64(bytes, 16),
            oldest_first_seq: read_u64(bytes, 24),
            newest_first_seq: read_u64(bytes, 32),
            segment_count: read_u64(bytes, 40),
        };
        checkpoint.check()?;
        Ok(checkpoint)
    }

    /// What must hold between the fields of any checkpoint written.
    fn check(&self) -> Result<(), &'static str> {
        if self.oldest_first_seq == 0 || self.oldest_first_seq > self.newest_first_seq {
            return Err("its oldest segment is not at or before its newest");
        }
        // Every segment but the newest holds at least one record.
        let span = self.newest_first_seq - self.oldest_first_seq;
        if self.segment_count == 0 || self.segment_count - 1 > span || (span > 0) != (self.segment_count > 1)
        {
            return Err("its segment count does not fit its sequence range");
        }
        // A segment is created only after every record before it was synced.
        if self.durable_seq < self.newest_first_seq - 1 {
            return Err("its durable sequence number is before its newest segment");
        }
        Ok(())
    }
}

fn checkpoint_crc(bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[0..12]);
    hasher.update(&bytes[16..CHECKPOINT_BYTES]);
    hasher.finalize()
}

/// The checkpoint file of a journal directory.
pub fn checkpoint_path(journal_dir: &Path) -> PathBuf {
    journal_dir.join(CHECKPOINT_FILE_NAME)
}

/// Reads the checkpoint of `journal_dir`: `None` when there is none (a
/// journal from before checkpoints, or a new one), an error naming the
/// file when it cannot be trusted.
pub fn read_checkpoint(journal_dir: &Path) -> Result<Option<Checkpoint>, JournalError> {
    let path = checkpoint_path(journal_dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(JournalError::io(&path, error)),
    };
    Checkpoint::decode(&bytes).map(Some).map_err(|why| JournalError::BadCheckpoint { path, why })
}

/// Serialises every write of a checkpoint in this process.
static CHECKPOINT_WRITES: Mutex<()> = Mutex::new(());

/// Replaces the checkpoint of `journal_dir` with `checkpoint`, atomically.
pub(crate) fn replace(journal_dir: &Path, checkpoint: &Checkpoint) -> Result<(), JournalError> {
    let _serial = CHECKPOINT_WRITES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    write_file(journal_dir, checkpoint)
}

/// Reads the checkpoint, applies `change` and writes it back, all under
/// the one lock. Returns the checkpoint written, or `None` (and writes
/// nothing) when the directory has no checkpoint.
pub(crate) fn update(
    journal_dir: &Path,
    change: impl FnOnce(&mut Checkpoint),
) -> Result<Option<Checkpoint>, JournalError> {
    let _serial = CHECKPOINT_WRITES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(mut checkpoint) = read_checkpoint(journal_dir)? else { return Ok(None) };
    let before = checkpoint;
    change(&mut checkpoint);
    if checkpoint != before {
        write_file(journal_dir, &checkpoint)?;
    }
    Ok(Some(checkpoint))
}

fn write_file(journal_dir: &Path, checkpoint: &Checkpoint) -> Result<(), JournalError> {
    // Never write what a reader would refuse. The writer's own changes keep
    // the fields consistent; segment files moved by hand while the journal
    // is open can make an update inconsistent, and that is refused.
    if checkpoint.check().is_err() {
        return Err(JournalError::BadCheckpoint {
            path: checkpoint_path(journal_dir),
            why: "an update would make it inconsistent (were segment files moved while the journal was \
                  open?); it was left as it was",
        });
    }
    let temp = journal_dir.join(CHECKPOINT_TEMP_NAME);
    let path = checkpoint_path(journal_dir);
    let write = || -> std::io::Result<()> {
        let mut file = private_file_options().write(true).create(true).truncate(true).open(&temp)?;
        file.write_all(&checkpoint.encode())?;
        file.sync_all()
    };
    write().map_err(|e| JournalError::io(&temp, e))?;
    std::fs::rename(&temp, &path).map_err(|e| JournalError::io(&path, e))?;
    sync_dir(journal_dir)
}

/// The writer's side of the periodic checkpoint: the writer publishes its
/// durable sequence number after each sync (one atomic store, no I/O), and
/// a background thread records it in the checkpoint at most every
/// interval, when it advanced. The matcher never waits for this write.
pub(crate) struct CheckpointKeeper {
    shared: Arc<KeeperShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Publishes durable sequence numbers to a [`CheckpointKeeper`] from
/// another thread; the keeper records the highest one published.
#[derive(Clone)]
pub(crate) struct DurablePublisher {
    shared: Arc<KeeperShared>,
}

impl DurablePublisher {
    pub(crate) fn publish(&self, durable_seq: u64) {
        self.shared.durable_seq.fetch_max(durable_seq, Ordering::AcqRel);
    }
}

struct KeeperShared {
    durable_seq: AtomicU64,
    stop: Mutex<bool>,
    wake: Condvar,
}

impl CheckpointKeeper {
    pub(crate) fn start(journal_dir: PathBuf, interval: Duration, durable_seq: u64) -> CheckpointKeeper {
        let shared = Arc::new(KeeperShared {
            durable_seq: AtomicU64::new(durable_seq),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let for_thread = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("journal-checkpoint".into())
            .spawn(move || keep(&journal_dir, interval, &for_thread, durable_seq))
            .ok();
        if thread.is_none() {
            tracing::error!(
                "journal checkpoint: cannot start its thread; the durable sequence number is recorded \
                 only when a segment is created and when the journal closes"
            );
        }
        CheckpointKeeper { shared, thread }
    }

    /// Publishes a new durable sequence number (called after each sync).
    pub(crate) fn publish(&self, durable_seq: u64) {
        self.shared.durable_seq.fetch_max(durable_seq, Ordering::AcqRel);
    }

    /// A handle for another thread that syncs the journal (the pipeline's
    /// durability stage) to publish through.
    pub(crate) fn publisher(&self) -> DurablePublisher {
        DurablePublisher { shared: Arc::clone(&self.shared) }
    }

    /// Stops the thread and waits for a write it may be doing.
    pub(crate) fn stop(&mut self) {
        if let Ok(mut stop) = self.shared.stop.lock() {
            *stop = true;
        }
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for CheckpointKeeper {
    fn drop(&mut self) {
        self.stop();
    }
}

fn keep(journal_dir: &Path, interval: Duration, shared: &KeeperShared, mut recorded: u64) {
    let mut next_write = Instant::now() + interval;
    loop {
        {
            let Ok(mut stop) = shared.stop.lock() else { return };
            loop {
                if *stop {
                    return;
                }
                let now = Instant::now();
                if now >= next_write {
                    break;
                }
                match shared.wake.wait_timeout(stop, next_write - now) {
                    Ok((guard, _)) => stop = guard,
                    Err(_) => return,
                }
            }
        }
        next_write = Instant::now() + interval;
        let durable_seq = shared.durable_seq.load(Ordering::Acquire);
        if durable_seq <= recorded {
            continue;
        }
        match update(journal_dir, |checkpoint| {
            checkpoint.durable_seq = checkpoint.durable_seq.max(durable_seq)
        }) {
            Ok(Some(_)) => recorded = durable_seq,
            Ok(None) => tracing::error!(
                "journal checkpoint: {} is gone; durable sequence {durable_seq} is not recorded. \
                 Restart the exchange (it writes a new one after checking the journal)",
                checkpoint_path(journal_dir).display()
            ),
            Err(error) => {
                tracing::error!("journal checkpoint: cannot record durable sequence {durable_seq}: {error}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_damage_is_refused() {
        let checkpoint = Checkpoint {
            durable_seq: 5_000,
            oldest_first_seq: 1_001,
            newest_first_seq: 4_001,
            segment_count: 4,
        };
        let bytes = checkpoint.encode();
        assert_eq!(Checkpoint::decode(&bytes), Ok(checkpoint));
        for at in 0..CHECKPOINT_BYTES {
            for bit in 0..8 {
                let mut damaged = bytes;
                damaged[at] ^= 1 << bit;
                assert!(Checkpoint::decode(&damaged).is_err(), "flip of bit {bit} at {at} not detected");
            }
        }
        for len in 0..CHECKPOINT_BYTES + 2 {
            let mut bytes = bytes.to_vec();
            bytes.resize(len, 0);
            assert_eq!(Checkpoint::decode(&bytes).is_ok(), len == CHECKPOINT_BYTES);
        }
    }

    #[test]
    fn inconsistent_fields_are_refused_even_with_a_good_checksum() {
        let good = Checkpoint { durable_seq: 10, oldest_first_seq: 1, newest_first_seq: 5, segment_count: 2 };
        for bad in [
            Checkpoint { oldest_first_seq: 0, ..good },
            Checkpoint { oldest_first_seq: 6, ..good },
            Checkpoint { segment_count: 0, ..good },
            Checkpoint { segment_count: 6, ..good },
            Checkpoint { durable_seq: 3, ..good },
        ] {
            let mut bytes = [0u8; CHECKPOINT_BYTES];
            bytes[0..8].copy_from_slice(CHECKPOINT_MAGIC);
            bytes[8..12].copy_from_slice(&CHECKPOINT_FORMAT_VERSION.to_le_bytes());
            bytes[16..24].copy_from_slice(&bad.durable_seq.to_le_bytes());
            bytes[24..32].copy_from_slice(&bad.oldest_first_seq.to_le_bytes());
            bytes[32..40].copy_from_slice(&bad.newest_first_seq.to_le_bytes());
            bytes[40..48].copy_from_slice(&bad.segment_count.to_le_bytes());
            let crc = checkpoint_crc(&bytes);
            bytes[12..16].copy_from_slice(&crc.to_le_bytes());
            assert!(Checkpoint::decode(&bytes).is_err(), "{bad:?} accepted");
        }
        assert!(Checkpoint::decode(&good.encode()).is_ok());
    }
}
