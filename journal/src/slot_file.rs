//! A small state file of two checksummed slots, written alternately: the
//! home of what Raft must remember across a crash (`RAFT_STATE`: vote,
//! committed, last purged) and of what the Raft log must find on disk
//! (`RAFT_SEGMENTS`).
//!
//! ```text
//! slot (128 bytes), twice:
//! 0      8         12    16          24                     128
//! | magic | version | crc | slot seq | body (104 bytes) ... |
//! ```
//!
//! All integers are little-endian; the CRC-32 covers every byte of the slot
//! but its own four. A save overwrites the slot that does not hold the
//! newest state (the older one, or a damaged one) with a higher slot
//! sequence number, then `fdatasync`s when asked: a crash mid-write can
//! only damage the slot being written, and the other still holds the state
//! before the save. Reading takes the valid slot with the higher sequence;
//! both damaged is refused (no crash leaves that). One sync per save, no
//! rename and no directory sync (a vote is saved inside an election, where
//! the `CHECKPOINT` path's rename and two syncs would cost milliseconds).
//!
//! A new file is created whole under a temporary name (slot 0 written,
//! slot 1 zero), synced, renamed into place and its directory synced, so
//! an existing file always has one valid slot.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::JournalError;
use crate::files::{private_file_options, sync_dir};
use crate::segment::{read_u32, read_u64};

pub(crate) const SLOT_BYTES: usize = 128;
pub(crate) const SLOT_BODY_BYTES: usize = SLOT_BYTES - 24;
pub(crate) const SLOT_FILE_BYTES: usize = 2 * SLOT_BYTES;
const SLOT_FORMAT_VERSION: u32 = 1;

/// An open slot file and which slot holds its newest state.
pub(crate) struct SlotFile {
    path: PathBuf,
    file: File,
    magic: &'static [u8; 8],
    /// The slot holding the newest state, and its sequence number.
    newest: usize,
    newest_seq: u64,
}

/// Why a slot does not hold a state.
fn check_slot(slot: &[u8], magic: &[u8; 8]) -> Result<u64, &'static str> {
    if slot.iter().all(|&byte| byte == 0) {
        return Err("empty");
    }
    if &slot[0..8] != magic {
        return Err("bad magic");
    }
    if read_u32(slot, 8) != SLOT_FORMAT_VERSION {
        return Err("unsupported version");
    }
    if read_u32(slot, 12) != slot_crc(slot) {
        return Err("checksum mismatch");
    }
    Ok(read_u64(slot, 16))
}

fn slot_crc(slot: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&slot[0..12]);
    hasher.update(&slot[16..SLOT_BYTES]);
    hasher.finalize()
}

fn encode_slot(magic: &[u8; 8], seq: u64, body: &[u8; SLOT_BODY_BYTES]) -> [u8; SLOT_BYTES] {
    let mut slot = [0u8; SLOT_BYTES];
    slot[0..8].copy_from_slice(magic);
    slot[8..12].copy_from_slice(&SLOT_FORMAT_VERSION.to_le_bytes());
    slot[16..24].copy_from_slice(&seq.to_le_bytes());
    slot[24..].copy_from_slice(body);
    let crc = slot_crc(&slot);
    slot[12..16].copy_from_slice(&crc.to_le_bytes());
    slot
}

/// The newest valid body in a slot file's bytes, or why there is none.
/// Never panics, whatever the bytes.
pub(crate) fn decode_slots(
    bytes: &[u8],
    magic: &[u8; 8],
) -> Result<(usize, u64, [u8; SLOT_BODY_BYTES]), &'static str> {
    if bytes.len() != SLOT_FILE_BYTES {
        return Err("the file is not 256 bytes long (two 128-byte slots): it was cut short or padded");
    }
    let slots = [&bytes[..SLOT_BYTES], &bytes[SLOT_BYTES..]];
    let checked = [check_slot(slots[0], magic), check_slot(slots[1], magic)];
    let newest = match checked {
        [Ok(a), Ok(b)] if a == b => return Err("both slots carry the same sequence number"),
        [Ok(a), Ok(b)] => usize::from(b > a),
        [Ok(_), Err(_)] => 0,
        [Err(_), Ok(_)] => 1,
        [Err(_), Err(_)] => {
            return Err("neither of its two slots is valid (checksum, magic or version wrong in both)")
        }
    };
    let mut body = [0u8; SLOT_BODY_BYTES];
    body.copy_from_slice(&slots[newest][24..]);
    let seq = read_u64(slots[newest], 16);
    Ok((newest, seq, body))
}

impl SlotFile {
    /// Opens the slot file at `path`: `None` when there is none.
    pub(crate) fn open(
        path: &Path,
        magic: &'static [u8; 8],
    ) -> Result<Option<(SlotFile, [u8; SLOT_BODY_BYTES])>, JournalError> {
        let file = match private_file_options().read(true).write(true).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(JournalError::io(path, e)),
        };
        // Read only what a slot file can be: a huge file is refused unread.
        let mut bytes = Vec::with_capacity(SLOT_FILE_BYTES);
        std::io::Read::read_to_end(&mut std::io::Read::take(&file, SLOT_FILE_BYTES as u64 + 1), &mut bytes)
            .map_err(|e| JournalError::io(path, e))?;
        let (newest, newest_seq, body) = decode_slots(&bytes, magic)
            .map_err(|why| JournalError::BadStateFile { path: path.to_path_buf(), why })?;
        Ok(Some((SlotFile { path: path.to_path_buf(), file, magic, newest, newest_seq }, body)))
    }

    /// Creates the slot file at `path` holding `body`, durably (the file
    /// and its directory entry), replacing any file there.
    pub(crate) fn create(
        path: &Path,
        magic: &'static [u8; 8],
        body: &[u8; SLOT_BODY_BYTES],
    ) -> Result<SlotFile, JournalError> {
        let mut bytes = [0u8; SLOT_FILE_BYTES];
        bytes[..SLOT_BYTES].copy_from_slice(&encode_slot(magic, 1, body));
        let temp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let file = private_file_options().write(true).create(true).truncate(true).open(&temp)?;
            file.write_all_at(&bytes, 0)?;
            file.sync_all()
        };
        write().map_err(|e| JournalError::io(&temp, e))?;
        std::fs::rename(&temp, path).map_err(|e| JournalError::io(path, e))?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))?;
        let file = private_file_options()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| JournalError::io(path, e))?;
        Ok(SlotFile { path: path.to_path_buf(), file, magic, newest: 0, newest_seq: 1 })
    }

    /// Writes `body` into the slot not holding the newest state, and syncs
    /// it when `sync` (else it is durable with the next sync of this file).
    pub(crate) fn save(&mut self, body: &[u8; SLOT_BODY_BYTES], sync: bool) -> Result<(), JournalError> {
        let target = 1 - self.newest;
        let seq = self.newest_seq + 1;
        let slot = encode_slot(self.magic, seq, body);
        self.file
            .write_all_at(&slot, (target * SLOT_BYTES) as u64)
            .map_err(|e| JournalError::io(&self.path, e))?;
        if sync {
            self.file.sync_data().map_err(|e| JournalError::io(&self.path, e))?;
        }
        self.newest = target;
        self.newest_seq = seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: &[u8; 8] = b"TESTSLOT";

    fn body(byte: u8) -> [u8; SLOT_BODY_BYTES] {
        [byte; SLOT_BODY_BYTES]
    }

    #[test]
    fn saves_alternate_and_the_newest_valid_slot_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("STATE");
        assert!(SlotFile::open(&path, MAGIC).unwrap().is_none());
        let mut file = SlotFile::create(&path, MAGIC, &body(1)).unwrap();
        file.save(&body(2), true).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(decode_slots(&bytes, MAGIC).unwrap().2, body(2));
        assert_eq!(decode_slots(&bytes, MAGIC).unwrap().0, 1);
        file.save(&body(3), false).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(decode_slots(&bytes, MAGIC).unwrap(), (0, 3, body(3)));
        // A torn write of the newest slot falls back to the other one.
        let mut torn = bytes.clone();
        torn[40] ^= 1;
        assert_eq!(decode_slots(&torn, MAGIC).unwrap(), (1, 2, body(2)));
        // Both damaged: refused.
        torn[SLOT_BYTES + 40] ^= 1;
        assert!(decode_slots(&torn, MAGIC).is_err());
        // Another magic is not this file.
        assert!(decode_slots(&bytes, b"OTHERMAG").is_err());
        assert!(decode_slots(&bytes[..200], MAGIC).is_err());
        let (reopened, read) = SlotFile::open(&path, MAGIC).unwrap().unwrap();
        assert_eq!(read, body(3));
        assert_eq!((reopened.newest, reopened.newest_seq), (0, 3));
    }

    #[test]
    fn every_single_flip_falls_back_or_is_detected() {
        let mut bytes = vec![0u8; SLOT_FILE_BYTES];
        bytes[..SLOT_BYTES].copy_from_slice(&encode_slot(MAGIC, 4, &body(4)));
        bytes[SLOT_BYTES..].copy_from_slice(&encode_slot(MAGIC, 5, &body(5)));
        for at in 0..SLOT_FILE_BYTES {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x20;
            let (_, seq, read) = decode_slots(&damaged, MAGIC).unwrap();
            // Damage in slot 1 (the newest) falls back to slot 0.
            let expected = if at >= SLOT_BYTES { (4, body(4)) } else { (5, body(5)) };
            assert_eq!((seq, read), expected, "flip at {at}");
        }
    }
}
