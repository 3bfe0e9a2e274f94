//! Reading the journal in order from any sequence number, across segments,
//! and following a journal that the writer is still appending to.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};

use engine_core::StampedCommand;
use memmap2::Mmap;

use crate::error::JournalError;
use crate::segment::{list_segments, read_frame, Frame, SegmentHeader, SEGMENT_HEADER_BYTES};

/// How to treat a record that is not valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// Every invalid record is corruption: for a journal whose writer has
    /// opened it (and so cut any torn tail), and for verification.
    Strict,
    /// The writer may be mid-append: an invalid record at the end of the
    /// newest segment means "not written yet" and reads as the end.
    Follow,
}

struct MappedSegment {
    path: PathBuf,
    map: Mmap,
    header: SegmentHeader,
}

pub struct JournalReader {
    dir: PathBuf,
    mode: ReadMode,
    segment: Option<MappedSegment>,
    offset: usize,
    next_seq: u64,
}

impl JournalReader {
    /// Positions a reader on the record with sequence `from_seq` (or where
    /// it will be written, if the journal ends before it).
    pub fn open(dir: &Path, from_seq: u64, mode: ReadMode) -> Result<JournalReader, JournalError> {
        let from_seq = from_seq.max(1);
        let segments = list_segments(dir).map_err(|e| JournalError::io(dir, e))?;
        let mut reader =
            JournalReader { dir: dir.to_path_buf(), mode, segment: None, offset: 0, next_seq: from_seq };
        let Some(index) = segments.iter().rposition(|(first_seq, _)| *first_seq <= from_seq) else {
            if let Some((first_retained_seq, _)) = segments.first() {
                return Err(JournalError::NotRetained { from_seq, first_retained_seq: *first_retained_seq });
            }
            return Ok(reader);
        };
        let (first_seq, path) = &segments[index];
        reader.map(path, *first_seq)?;
        // Skip the records before `from_seq`.
        reader.next_seq = *first_seq;
        while reader.next_seq < from_seq {
            if reader.next()?.is_none() {
                break;
            }
        }
        if reader.next_seq < from_seq {
            // The journal ends before `from_seq`; reading goes on from there
            // only if the records in between appear, which `next` checks.
            reader.next_seq = from_seq;
        }
        Ok(reader)
    }

    fn map(&mut self, path: &Path, first_seq: u64) -> Result<(), JournalError> {
        let file = File::open(path).map_err(|e| JournalError::io(path, e))?;
        // Safety: segment files are never truncated while in use; the writer
        // only appends into preallocated space.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| JournalError::io(path, e))?;
        let header = SegmentHeader::decode(&map)
            .map_err(|why| JournalError::BadSegmentHeader { segment: path.to_path_buf(), why })?;
        if header.first_seq != first_seq {
            return Err(JournalError::BadSegmentHeader {
                segment: path.to_path_buf(),
                why: "header disagrees with the file's name",
            });
        }
        self.segment = Some(MappedSegment { path: path.to_path_buf(), map, header });
        self.offset = SEGMENT_HEADER_BYTES;
        Ok(())
    }

    /// The sequence number of the next record this reader returns.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The next record, or `None` at the end of what is written so far (in
    /// follow mode, call again later to see new records).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<StampedCommand>, JournalError> {
        loop {
            let Some(segment) = &self.segment else {
                // Nothing was mapped yet: a segment may have appeared since.
                return match self.find_segment_starting_at(self.next_seq)? {
                    Some(path) => {
                        self.map(&path, self.next_seq)?;
                        continue;
                    }
                    None => Ok(None),
                };
            };
            fence(Ordering::Acquire);
            match read_frame(&segment.map, self.offset) {
                Frame::Record { command, next_offset, .. } => {
                    if command.seq != self.next_seq {
                        return Err(JournalError::Corrupt {
                            segment: segment.path.clone(),
                            offset: self.offset,
                            seq: self.next_seq,
                            why: format!("found sequence {} where {} belongs", command.seq, self.next_seq),
                        });
                    }
                    self.offset = next_offset;
                    self.next_seq += 1;
                    return Ok(Some(command));
                }
                Frame::End => {
                    // The end of this segment's data: the writer has moved on
                    // only if a later segment exists.
                    let after = segment.header.first_seq;
                    match self.next_segment_after(after)? {
                        None => return Ok(None),
                        Some((first_seq, path)) => {
                            if first_seq != self.next_seq {
                                return Err(JournalError::Gap {
                                    expected_seq: self.next_seq,
                                    next_segment: path,
                                    next_first_seq: first_seq,
                                });
                            }
                            self.map(&path, first_seq)?;
                        }
                    }
                }
                Frame::Bad(fault) => {
                    let newest = self.next_segment_after(segment.header.first_seq)?.is_none();
                    if self.mode == ReadMode::Follow && newest {
                        return Ok(None);
                    }
                    return Err(JournalError::Corrupt {
                        segment: segment.path.clone(),
                        offset: self.offset,
                        seq: self.next_seq,
                        why: fault.to_string(),
                    });
                }
            }
        }
    }

    fn next_segment_after(&self, first_seq: u64) -> Result<Option<(u64, PathBuf)>, JournalError> {
        let segments = list_segments(&self.dir).map_err(|e| JournalError::io(&self.dir, e))?;
        Ok(segments.into_iter().find(|(seq, _)| *seq > first_seq))
    }

    fn find_segment_starting_at(&self, seq: u64) -> Result<Option<PathBuf>, JournalError> {
        let segments = list_segments(&self.dir).map_err(|e| JournalError::io(&self.dir, e))?;
        Ok(segments.into_iter().find(|(first_seq, _)| *first_seq == seq).map(|(_, path)| path))
    }
}
