//! Appending to the journal, with an explicit batch boundary for group commit.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use engine_core::StampedCommand;
use memmap2::MmapMut;

use crate::error::JournalError;
use crate::segment::{
    align8, bincode_config, frame_crc, list_segments, read_frame, scan_segment, segment_file_name, Frame,
    SegmentHeader, FRAME_HEADER_BYTES, PAYLOAD_MAX_BYTES, SEGMENT_HEADER_BYTES,
};

/// When appended records become durable on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Records are in the page cache as soon as they are appended: they
    /// survive a crash of the process, not a crash of the machine.
    None,
    /// [`JournalWriter::commit_batch`] syncs the batch to disk before it
    /// returns (group commit): acknowledge a batch after it, and nothing
    /// acknowledged is lost even to power loss.
    Batch,
    /// A sync at most every `interval_ms`, from `commit_batch` or `poll`:
    /// at most that much acknowledged work is lost to power loss.
    Interval { interval_ms: u64 },
}

#[derive(Clone, Debug)]
pub struct JournalConfig {
    /// The directory of segment files; created if missing.
    pub dir: PathBuf,
    /// Size of each preallocated segment file.
    pub segment_bytes: u64,
    pub durability: Durability,
}

/// The smallest segment allowed: a header and a few maximum-size records.
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

impl JournalConfig {
    pub fn new(dir: impl Into<PathBuf>) -> JournalConfig {
        JournalConfig { dir: dir.into(), segment_bytes: SEGMENT_BYTES_DEFAULT, durability: Durability::Batch }
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

struct OpenSegment {
    path: PathBuf,
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
}

impl JournalWriter {
    /// Opens (or creates) the journal in `config.dir` for appending. After a
    /// crash, the last segment's tail is scanned: a torn last record is cut
    /// off and reported; anything else that is not a valid record is
    /// corruption and an error. Earlier segments are not read here (replay
    /// and `verify` check them).
    pub fn open(config: JournalConfig) -> Result<(JournalWriter, OpenReport), JournalError> {
        if config.segment_bytes < SEGMENT_BYTES_MIN {
            return Err(JournalError::Config(format!(
                "segment size {} bytes is below the minimum of {SEGMENT_BYTES_MIN}",
                config.segment_bytes
            )));
        }
        create_private_dir(&config.dir)?;
        let lock = lock_dir(&config.dir)?;
        remove_leftover_temp_files(&config.dir)?;
        let segments = list_segments(&config.dir).map_err(|e| JournalError::io(&config.dir, e))?;
        let mut report = OpenReport { segments: segments.len(), ..OpenReport::default() };
        let (segment, next_seq) = match segments.last() {
            None => {
                let segment = create_segment(&config, 1)?;
                report.segments = 1;
                (segment, 1)
            }
            Some((first_seq, path)) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(|e| JournalError::io(path, e))?;
                // Safety: the writer is the only process that writes the
                // journal (a lock file would enforce it; see the docs), and
                // the file is not truncated while mapped.
                let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| JournalError::io(path, e))?;
                let header = SegmentHeader::decode(&map)
                    .map_err(|why| JournalError::BadSegmentHeader { segment: path.clone(), why })?;
                if header.first_seq != *first_seq || header.capacity_bytes < map.len() as u64 {
                    return Err(JournalError::BadSegmentHeader {
                        segment: path.clone(),
                        why: "header disagrees with the file's name or size",
                    });
                }
                if (map.len() as u64) < header.capacity_bytes {
                    // The file lost its end (copied or truncated after a
                    // crash): restore its size; the lost bytes read as zero
                    // and the scan below treats them like any torn tail.
                    drop(map);
                    preallocate(&file, header.capacity_bytes).map_err(|e| JournalError::io(path, e))?;
                    // Safety: as above.
                    map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| JournalError::io(path, e))?;
                }
                let scan = scan_segment(&map, &header, |_| {});
                if let Some(damage) = scan.damage {
                    if !damage.torn_tail {
                        return Err(JournalError::Corrupt {
                            segment: path.clone(),
                            offset: damage.offset,
                            seq: damage.expected_seq,
                            why: match damage.fault {
                                Some(fault) => fault.to_string(),
                                None => format!(
                                    "{} bytes of unreadable data follow the last valid record",
                                    damage.written_end - damage.offset
                                ),
                            },
                        });
                    }
                    map[damage.offset..damage.written_end].fill(0);
                    map.flush_range(damage.offset, damage.written_end - damage.offset)
                        .map_err(|e| JournalError::io(path, e))?;
                    report.cut = Some(CutTail {
                        segment: path.clone(),
                        offset: damage.offset,
                        bytes: damage.written_end - damage.offset,
                        seq: damage.expected_seq,
                    });
                }
                let next_seq = scan.last_seq.map_or(header.first_seq, |last| last + 1);
                let segment = OpenSegment {
                    path: path.clone(),
                    map,
                    offset: scan.end_offset,
                    unsynced_from: scan.end_offset,
                };
                (segment, next_seq)
            }
        };
        report.next_seq = next_seq;
        let writer = JournalWriter {
            config,
            _lock: lock,
            segment,
            next_seq,
            durable_seq: next_seq - 1,
            last_sync: Instant::now(),
            scratch: [0; PAYLOAD_MAX_BYTES],
        };
        Ok((writer, report))
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
        let payload_len =
            bincode::serde::encode_into_slice(command.command, &mut self.scratch, bincode_config())
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
        Ok(())
    }

    /// Starts a new segment at the next sequence number, after making the
    /// full one durable (under any policy but `None`).
    fn rotate(&mut self) -> Result<(), JournalError> {
        if self.config.durability != Durability::None {
            let durable_before = self.durable_seq;
            self.sync()?;
            // Records of the old segment are on disk; later ones are not yet.
            debug_assert!(self.durable_seq >= durable_before);
        }
        self.segment = create_segment(&self.config, self.next_seq)?;
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

impl Drop for JournalWriter {
    fn drop(&mut self) {
        if self.config.durability != Durability::None {
            // Best effort: an explicit `sync` is how callers learn of errors.
            let _ = self.sync();
        }
    }
}

/// Takes the journal's writer lock, or says who cannot have it.
fn lock_dir(dir: &Path) -> Result<File, JournalError> {
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
/// name only once its header is written (and, unless the policy is `None`,
/// synced together with the directory entry).
fn create_segment(config: &JournalConfig, first_seq: u64) -> Result<OpenSegment, JournalError> {
    let path = config.dir.join(segment_file_name(first_seq));
    let temp = path.with_extension("seg.tmp");
    let file = private_file_options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&temp)
        .map_err(|e| JournalError::io(&temp, e))?;
    preallocate(&file, config.segment_bytes).map_err(|e| JournalError::io(&temp, e))?;
    // Safety: the file was just created by this process and nobody else
    // writes journal segments.
    let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| JournalError::io(&temp, e))?;
    let header = SegmentHeader { first_seq, capacity_bytes: config.segment_bytes };
    map[..SEGMENT_HEADER_BYTES].copy_from_slice(&header.encode());
    let durable = config.durability != Durability::None;
    if durable {
        map.flush_range(0, SEGMENT_HEADER_BYTES).map_err(|e| JournalError::io(&temp, e))?;
    }
    std::fs::rename(&temp, &path).map_err(|e| JournalError::io(&path, e))?;
    if durable {
        sync_dir(&config.dir)?;
    }
    Ok(OpenSegment { path, map, offset: SEGMENT_HEADER_BYTES, unsynced_from: SEGMENT_HEADER_BYTES })
}

/// Reserves the disk blocks of the whole segment up front, so that a full
/// disk shows as an error when a segment is created, not as a fault while
/// writing through the mapping.
fn preallocate(file: &File, bytes: u64) -> std::io::Result<()> {
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

/// Options for files the journal creates: readable by their owner only,
/// since commands carry API secrets.
/// Creates `dir` (and missing parents) readable by the owner only: the
/// journal and snapshots hold every user's orders and key secrets.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), JournalError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| JournalError::io(dir, e))
}

pub(crate) fn private_file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// Makes a directory's entries (a created or renamed file) durable.
pub fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| JournalError::io(dir, e))
}
