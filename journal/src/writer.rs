//! Appending to the journal, with an explicit batch boundary for group commit.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use engine_core::StampedCommand;
use memmap2::MmapMut;

use crate::checkpoint::{self, checkpoint_path, read_checkpoint, Checkpoint, CheckpointKeeper};
use crate::error::JournalError;
use crate::files::{create_private_dir, private_file_options, sync_dir, zero_tail};
use crate::integrity;
use crate::segment::{
    align8, frame_crc, list_segments, read_frame, scan_segment, segment_file_name, Damage, Frame,
    SegmentHeader, FRAME_HEADER_BYTES, PAYLOAD_MAX_BYTES, SEGMENT_FORMAT_VERSION, SEGMENT_HEADER_BYTES,
};
use crate::syncer::{Durability, JournalSyncer};

#[derive(Clone, Debug)]
pub struct JournalConfig {
    /// The directory of segment files; created if missing.
    pub dir: PathBuf,
    /// Size of each preallocated segment file.
    pub segment_bytes: u64,
    pub durability: Durability,
    /// The most time between two records of the durable sequence number in
    /// `journal/CHECKPOINT` (written by a background thread, never by the
    /// appending one). A journal found ending before the recorded number
    /// lost synced records; records synced within the last interval are
    /// not covered by that check.
    pub checkpoint_interval_ms: u64,
}

/// The smallest segment allowed: a header and a few maximum-size records.
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
pub const CHECKPOINT_INTERVAL_MS_DEFAULT: u64 = 1_000;

impl JournalConfig {
    pub fn new(dir: impl Into<PathBuf>) -> JournalConfig {
        JournalConfig {
            dir: dir.into(),
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            durability: Durability::Batch,
            checkpoint_interval_ms: CHECKPOINT_INTERVAL_MS_DEFAULT,
        }
    }
}

/// What opening the journal found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub segments: usize,
    /// The sequence number the next append must carry.
    pub next_seq: u64,
    /// A torn tail that was cut off.
    pub cut: Option<CutTail>,
    /// The journal had no `CHECKPOINT` (it is from before checkpoints, or
    /// new): one was written, and checks that need it start now.
    pub checkpoint_created: bool,
}

/// A damaged tail removed when the journal was opened after a crash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutTail {
    pub segment: PathBuf,
    pub offset: usize,
    pub bytes: usize,
    /// The sequence number of the record that was being written.
    pub seq: u64,
}

pub(crate) struct OpenSegment {
    path: PathBuf,
    first_seq: u64,
    map: MmapMut,
    /// Where the next record goes.
    offset: usize,
    /// Start of the bytes not yet synced.
    unsynced_from: usize,
}

/// The only writer of a journal directory (an exclusive lock on
/// `journal/LOCK` keeps a second one out; readers need no lock).
pub struct JournalWriter {
    config: JournalConfig,
    /// Held for the writer's life; the lock goes with the descriptor.
    _lock: File,
    segment: OpenSegment,
    next_seq: u64,
    /// Highest sequence number known to be on disk (0 for none).
    durable_seq: u64,
    last_sync: Instant,
    scratch: [u8; PAYLOAD_MAX_BYTES],
    /// Records `durable_seq` in `journal/CHECKPOINT`, off this thread.
    keeper: CheckpointKeeper,
}

impl JournalWriter {
    /// Opens (or creates) the journal in `config.dir` for appending.
    ///
    /// It first checks the journal against `journal/CHECKPOINT` (what must
    /// exist): the newest and oldest segments it names are there, none is
    /// missing in between, every segment file has its preallocated size.
    /// Then it scans from the segment holding the checkpoint's durable
    /// sequence number to the end: a torn last record after the durable
    /// point is cut off and reported; a journal that ends before the durable
    /// point, and anything else that is not a valid record, is an error
    /// that names the file, the sequence numbers and the way out. Segments
    /// before the durable point are not read here (replay and `verify` check
    /// them). A journal without a checkpoint (from before checkpoints) is
    /// checked as far as it can be and gets one.
    pub fn open(config: JournalConfig) -> Result<(JournalWriter, OpenReport), JournalError> {
        if config.segment_bytes < SEGMENT_BYTES_MIN {
            return Err(JournalError::Config(format!(
                "segment size {} bytes is below the minimum of {SEGMENT_BYTES_MIN}",
                config.segment_bytes
            )));
        }
        if config.checkpoint_interval_ms == 0 {
            return Err(JournalError::Config("checkpoint_interval_ms must be at least 1".into()));
        }
        create_private_dir(&config.dir)?;
        let lock = lock_dir(&config.dir)?;
        remove_leftover_temp_files(&config.dir)?;
        let segments = list_segments(&config.dir).map_err(|e| JournalError::io(&config.dir, e))?;
        let found = read_checkpoint(&config.dir)?;
        let mut report = OpenReport {
            segments: segments.len(),
            checkpoint_created: found.is_none(),
            ..OpenReport::default()
        };
        let (segment, next_seq, checkpoint) = match segments.last() {
            None => {
                if let Some(checkpoint) = found {
                    return Err(JournalError::MissingSegment {
                        segment: config.dir.join(segment_file_name(checkpoint.newest_first_seq)),
                        first_seq: checkpoint.newest_first_seq,
                        why:
                            "the checkpoint names it as the newest segment, and the journal directory holds \
                              no segment at all",
                        keep_through: None,
                    });
                }
                let segment = create_segment(&config, 1)?;
                report.segments = 1;
                let checkpoint =
                    Checkpoint { durable_seq: 0, oldest_first_seq: 1, newest_first_seq: 1, segment_count: 1 };
                (segment, 1, checkpoint)
            }
            Some(_) => open_existing(&config, &segments, found, &mut report)?,
        };
        if found != Some(checkpoint) {
            checkpoint::replace(&config.dir, &checkpoint)?;
        }
        report.next_seq = next_seq;
        let durable_seq = next_seq - 1;
        let keeper = CheckpointKeeper::start(
            config.dir.clone(),
            Duration::from_millis(config.checkpoint_interval_ms),
            durable_seq,
        );
        let writer = JournalWriter {
            config,
            _lock: lock,
            segment,
            next_seq,
            durable_seq,
            last_sync: Instant::now(),
            scratch: [0; PAYLOAD_MAX_BYTES],
            keeper,
        };
        Ok((writer, report))
    }

    /// A syncer for another thread (a durability stage, a snapshot writer):
    /// tell it what was appended, and it makes that durable under the
    /// policy without the appender waiting.
    pub fn syncer(&self) -> JournalSyncer {
        JournalSyncer::new(
            self.config.dir.clone(),
            self.config.durability,
            self.durable_seq,
            self.keeper.publisher(),
        )
    }

    /// The first sequence number of the segment the next record goes to
    /// (unless it fills it): what a [`JournalSyncer`] is told with each
    /// appended record.
    pub fn segment_first_seq(&self) -> u64 {
        self.segment.first_seq
    }

    /// The sequence number the next append must carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The highest sequence number synced to disk by this writer (records
    /// found at open count as durable).
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    pub fn durability(&self) -> Durability {
        self.config.durability
    }

    /// Appends one command. It is visible to readers (and survives a crash
    /// of this process) when this returns; it is durable under the policy
    /// after [`commit_batch`](Self::commit_batch).
    pub fn append(&mut self, command: &StampedCommand) -> Result<(), JournalError> {
        if command.seq != self.next_seq {
            return Err(JournalError::OutOfOrder { expected: self.next_seq, got: command.seq });
        }
        let payload_len = codec::encode_into_slice(&command.command, &mut self.scratch)
            .map_err(|e| JournalError::Encode(e.to_string()))?;
        let frame_len = align8(FRAME_HEADER_BYTES + payload_len);
        if self.segment.offset + frame_len > self.segment.map.len() {
            self.rotate()?;
        }
        let segment = &mut self.segment;
        let at = segment.offset;
        let payload = &self.scratch[..payload_len];
        let len = payload_len as u32;
        let crc = frame_crc(len, command.seq, command.timestamp_ns, payload);
        let frame = &mut segment.map[at..at + frame_len];
        frame[4..8].copy_from_slice(&crc.to_le_bytes());
        frame[8..16].copy_from_slice(&command.seq.to_le_bytes());
        frame[16..24].copy_from_slice(&command.timestamp_ns.to_le_bytes());
        frame[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + payload_len].copy_from_slice(payload);
        // The length goes last, after everything it vouches for.
        fence(Ordering::Release);
        frame[0..4].copy_from_slice(&len.to_le_bytes());
        debug_assert!(matches!(read_frame(&segment.map, at), Frame::Record { .. }));
        segment.offset = at + frame_len;
        self.next_seq += 1;
        Ok(())
    }

    /// Ends a batch. Under `Batch` the batch is on disk when this returns;
    /// under `Interval` it syncs if the interval has passed; under `None`
    /// it does nothing. Publish a batch's results only after this.
    pub fn commit_batch(&mut self) -> Result<(), JournalError> {
        match self.config.durability {
            Durability::None => Ok(()),
            Durability::Batch => self.sync(),
            Durability::Interval { interval_ms } => {
                if self.last_sync.elapsed() >= Duration::from_millis(interval_ms) {
                    self.sync()
                } else {
                    Ok(())
                }
            }
        }
    }

    /// For the `Interval` policy: call when idle, so that the last batch
    /// gets synced within the interval even if no other batch follows.
    pub fn poll(&mut self) -> Result<(), JournalError> {
        if let Durability::Interval { .. } = self.config.durability {
            if self.durable_seq + 1 < self.next_seq {
                return self.commit_batch();
            }
        }
        Ok(())
    }

    /// Syncs everything appended so far to disk, whatever the policy.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        let segment = &mut self.segment;
        if segment.offset > segment.unsynced_from {
            segment
                .map
                .flush_range(segment.unsynced_from, segment.offset - segment.unsynced_from)
                .map_err(|e| JournalError::io(&segment.path, e))?;
            segment.unsynced_from = segment.offset;
        }
        self.durable_seq = self.next_seq - 1;
        self.last_sync = Instant::now();
        self.keeper.publish(self.durable_seq);
        Ok(())
    }

    /// Starts a new segment at the next sequence number, after making the
    /// full one durable (under every policy, `none` included: a segment
    /// exists only after every record before it is on disk, so a power loss
    /// can only take the unsynced end of the newest segment), then records
    /// the new segment in the checkpoint before any record goes into it.
    fn rotate(&mut self) -> Result<(), JournalError> {
        self.sync()?;
        let first_seq = self.next_seq;
        debug_assert_eq!(self.durable_seq, first_seq - 1);
        let segment = create_segment(&self.config, first_seq)?;
        let durable_seq = self.durable_seq;
        let recorded = checkpoint::update(&self.config.dir, |checkpoint| {
            checkpoint.durable_seq = checkpoint.durable_seq.max(durable_seq);
            if first_seq > checkpoint.newest_first_seq {
                checkpoint.newest_first_seq = first_seq;
                checkpoint.segment_count += 1;
            }
        })?;
        if recorded.is_none() {
            return Err(JournalError::BadCheckpoint {
                path: checkpoint_path(&self.config.dir),
                why: "it was removed while the journal was open; restart the exchange so that it checks \
                      the journal and writes a new one",
            });
        }
        self.segment = segment;
        Ok(())
    }

    /// Records the durable sequence number in the checkpoint now (the
    /// background keeper does it at most every `checkpoint_interval_ms`).
    pub fn record_checkpoint(&self) -> Result<(), JournalError> {
        let durable_seq = self.durable_seq;
        checkpoint::update(&self.config.dir, |checkpoint| {
            checkpoint.durable_seq = checkpoint.durable_seq.max(durable_seq);
        })?;
        Ok(())
    }

    /// The segment currently appended to.
    pub fn current_segment(&self) -> &Path {
        &self.segment.path
    }

    /// Bytes used in the current segment.
    pub fn current_offset(&self) -> usize {
        self.segment.offset
    }
}

/// Opens the newest segment of an existing journal for appending, after
/// checking the journal against its checkpoint (`found`, if any). Returns
/// the segment, the next sequence number and the checkpoint to record.
fn open_existing(
    config: &JournalConfig,
    segments: &[(u64, PathBuf)],
    found: Option<Checkpoint>,
    report: &mut OpenReport,
) -> Result<(OpenSegment, u64, Checkpoint), JournalError> {
    if let Some(found) = &found {
        integrity::check_listing(&config.dir, segments, found)?;
    }
    let mut headers = Vec::with_capacity(segments.len());
    for (first_seq, path) in segments {
        headers.push(integrity::check_segment_file(path, *first_seq)?);
    }
    let durable_seq = found.map_or(0, |c| c.durable_seq);
    let newest = segments.len() - 1;
    // From the segment that holds the durable point on, every record must
    // be there; a journal without a checkpoint only has its newest checked.
    let scan_from = match found {
        Some(found) => {
            segments.iter().rposition(|(first_seq, _)| *first_seq <= found.durable_seq).unwrap_or(0)
        }
        None => newest,
    };
    for index in scan_from..newest {
        let (first_seq, path) = &segments[index];
        let scan = integrity::scan_file(path, &headers[index])?;
        let (next_first_seq, next_path) = &segments[index + 1];
        if let Some(error) = integrity::discontinuity(path, *first_seq, &scan, next_path, *next_first_seq) {
            return Err(error);
        }
    }
    let (first_seq, path) = &segments[newest];
    let header = headers[newest];
    let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| JournalError::io(path, e))?;
    // Safety: the writer is the only process that writes the journal (the
    // lock enforces it), and the file is not truncated while mapped.
    let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| JournalError::io(path, e))?;
    let scan = scan_segment(&map, &header, |_| {});
    if let Some(damage) = scan.damage {
        let recorded_in = checkpoint_path(&config.dir);
        if !damage.torn_tail {
            return Err(JournalError::Corrupt {
                segment: path.clone(),
                offset: damage.offset,
                seq: damage.expected_seq,
                why: describe_damage(&damage),
            });
        }
        if damage.expected_seq <= durable_seq {
            // The shape of a torn tail, but where records were synced: a
            // crash cannot have left it.
            return Err(JournalError::EndsBeforeDurable {
                segment: path.clone(),
                last_seq: damage.expected_seq - 1,
                durable_seq,
                recorded_in,
                damage: Some(format!("{} at offset {}", describe_damage(&damage), damage.offset)),
            });
        }
        zero_tail(&mut map, path, damage.offset)?;
        report.cut = Some(CutTail {
            segment: path.clone(),
            offset: damage.offset,
            bytes: damage.written_end - damage.offset,
            seq: damage.expected_seq,
        });
    }
    let last_seq = scan.last_seq.unwrap_or(first_seq - 1);
    if last_seq < durable_seq {
        return Err(JournalError::EndsBeforeDurable {
            segment: path.clone(),
            last_seq,
            durable_seq,
            recorded_in: checkpoint_path(&config.dir),
            damage: None,
        });
    }
    // What a crashed process left may be in the page cache only: make it
    // durable before the checkpoint says so.
    map.flush_range(0, scan.end_offset).map_err(|e| JournalError::io(path, e))?;
    if found.is_none() {
        // Older writers did not sync a full segment under `none`.
        for (_, path) in &segments[..newest] {
            File::open(path).and_then(|f| f.sync_data()).map_err(|e| JournalError::io(path, e))?;
        }
    }
    let mut checkpoint = match found {
        Some(found) => Checkpoint {
            durable_seq: last_seq,
            oldest_first_seq: found.oldest_first_seq,
            newest_first_seq: *first_seq,
            // Segments created after the checkpoint was last written.
            segment_count: found.segment_count
                + segments.iter().filter(|(seq, _)| *seq > found.newest_first_seq).count() as u64,
        },
        None => Checkpoint {
            durable_seq: last_seq,
            oldest_first_seq: segments[0].0,
            newest_first_seq: *first_seq,
            segment_count: segments.len() as u64,
        },
    };
    if header.format_version != SEGMENT_FORMAT_VERSION {
        // A segment of an older format is never appended to (one file, one
        // payload encoding): new records go to a new segment. An old
        // segment without records is replaced by a new one of the same name.
        drop(map);
        let next_seq = last_seq + 1;
        let segment = create_segment(config, next_seq)?;
        if next_seq != *first_seq {
            checkpoint.newest_first_seq = next_seq;
            checkpoint.segment_count += 1;
        }
        tracing::info!(
            old = %path.display(),
            new = %segment.path.display(),
            "the newest journal segment is in format {}; new records go to a new segment in format {}",
            header.format_version,
            SEGMENT_FORMAT_VERSION
        );
        return Ok((segment, next_seq, checkpoint));
    }
    let segment = OpenSegment {
        path: path.clone(),
        first_seq: *first_seq,
        map,
        offset: scan.end_offset,
        unsynced_from: scan.end_offset,
    };
    Ok((segment, last_seq + 1, checkpoint))
}

pub(crate) fn describe_damage(damage: &Damage) -> String {
    match damage.fault {
        Some(fault) => fault.to_string(),
        None => format!(
            "{} bytes of unreadable data follow the last valid record",
            damage.written_end - damage.offset
        ),
    }
}

impl Drop for JournalWriter {
    fn drop(&mut self) {
        self.keeper.stop();
        if self.config.durability != Durability::None {
            // Best effort: an explicit `sync` is how callers learn of errors.
            let _ = self.sync();
        }
        let _ = self.record_checkpoint();
    }
}

/// The journal's writer lock (`journal/LOCK`), held by a tool that changes
/// a data directory, so that no server opens it meanwhile (and so that no
/// tool changes a directory a running server holds).
pub struct JournalLock {
    _file: File,
}

impl JournalLock {
    /// Takes the lock of the journal in `journal_dir`, or says that another
    /// process (a running server) holds it.
    pub fn acquire(journal_dir: &Path) -> Result<JournalLock, JournalError> {
        Ok(JournalLock { _file: lock_dir(journal_dir)? })
    }
}

/// Takes the journal's writer lock, or says who cannot have it.
pub(crate) fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join("LOCK");
    let file = private_file_options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| JournalError::io(&path, e))?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // Safety: a valid descriptor; flock has no memory effects.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(JournalError::Locked { dir: dir.to_path_buf() });
            }
            return Err(JournalError::io(&path, error));
        }
    }
    Ok(file)
}

fn remove_leftover_temp_files(dir: &Path) -> Result<(), JournalError> {
    for entry in std::fs::read_dir(dir).map_err(|e| JournalError::io(dir, e))? {
        let path = entry.map_err(|e| JournalError::io(dir, e))?.path();
        if path.extension().is_some_and(|ext| ext == "tmp") {
            std::fs::remove_file(&path).map_err(|e| JournalError::io(&path, e))?;
        }
    }
    Ok(())
}

/// Creates, preallocates and maps a new segment. It appears under its final
/// name only once its header is written, and is synced together with the
/// directory entry.
pub(crate) fn create_segment(config: &JournalConfig, first_seq: u64) -> Result<OpenSegment, JournalError> {
    let path = config.dir.join(segment_file_name(first_seq));
    let header = SegmentHeader::new(first_seq, config.segment_bytes);
    let (_, map) = create_mapped(&config.dir, &path, config.segment_bytes, &header.encode())?;
    Ok(OpenSegment {
        path,
        first_seq,
        map,
        offset: SEGMENT_HEADER_BYTES,
        unsynced_from: SEGMENT_HEADER_BYTES,
    })
}

/// Creates the segment file `path` in `dir`, preallocated to
/// `capacity_bytes`, with `header` at its start, and maps it. It is
/// written under a temporary name (`<name>.tmp`, removed if this fails)
/// and appears under its final name only once its header is synced, and
/// is synced together with the directory entry (under every policy: a
/// checkpoint names the segment next, and what it names must survive a
/// power loss).
pub(crate) fn create_mapped(
    dir: &Path,
    path: &Path,
    capacity_bytes: u64,
    header: &[u8],
) -> Result<(File, MmapMut), JournalError> {
    let mut temp_name = path.file_name().unwrap_or_default().to_os_string();
    temp_name.push(".tmp");
    let temp = path.with_file_name(temp_name);
    let file = private_file_options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&temp)
        .map_err(|e| JournalError::io(&temp, e))?;
    let write = || -> Result<MmapMut, JournalError> {
        preallocate(&file, capacity_bytes).map_err(|e| JournalError::io(&temp, e))?;
        // Safety: the file was just created by this process and nobody
        // else writes segments (the directory's lock).
        let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| JournalError::io(&temp, e))?;
        map[..header.len()].copy_from_slice(header);
        map.flush_range(0, header.len()).map_err(|e| JournalError::io(&temp, e))?;
        std::fs::rename(&temp, path).map_err(|e| JournalError::io(path, e))?;
        Ok(map)
    };
    let map = match write() {
        Ok(map) => map,
        Err(error) => {
            // A full disk, say: leave no half-made file for the next try.
            let _ = std::fs::remove_file(&temp);
            return Err(error);
        }
    };
    sync_dir(dir)?;
    Ok((file, map))
}

/// Reserves the disk blocks of the whole segment up front, so that a full
/// disk shows as an error when a segment is created, not as a fault while
/// writing through the mapping.
pub(crate) fn preallocate(file: &File, bytes: u64) -> std::io::Result<()> {
    file.set_len(bytes)?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let Ok(len) = libc::off_t::try_from(bytes) else {
            return Err(std::io::Error::other("segment size does not fit off_t"));
        };
        // Safety: a valid open descriptor and a non-negative range.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
        if rc != 0 && rc != libc::EOPNOTSUPP && rc != libc::EINVAL {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}
