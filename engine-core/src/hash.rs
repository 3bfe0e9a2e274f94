//! Hashing with fixed keys: the state fingerprint, and the hasher of the
//! order index. Neither is randomly seeded, so nothing here can make two
//! runs of the same journal differ.

use core::hash::Hasher;

/// A 64-bit fingerprint of a stream of words. Stable across runs, builds and
/// machines (it reads integers, never memory layouts); not cryptographic.
#[derive(Clone, Debug)]
pub struct StateHasher {
    state: u64,
    words: u64,
}

const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

impl StateHasher {
    pub fn new() -> StateHasher {
        StateHasher { state: 0x243F_6A88_85A3_08D3, words: 0 }
    }

    #[inline]
    pub fn word(&mut self, word: u64) {
        self.state = (self.state ^ word).wrapping_mul(MULTIPLIER).rotate_left(29);
        self.words += 1;
    }

    pub fn wide(&mut self, word: u128) {
        self.word(word as u64);
        self.word((word >> 64) as u64);
    }

    /// Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
    pub fn bytes(&mut self, bytes: &[u8]) {
        self.word(bytes.len() as u64);
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.word(u64::from_le_bytes(buf));
        }
    }

    pub fn finish(&self) -> u64 {
        // The finaliser of MurmurHash3: every input bit reaches every output bit.
        let mut h = self.state ^ self.words;
        h ^= h >> 33;
        h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        h ^= h >> 33;
        h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
        h ^= h >> 33;
        h
    }
}

impl Default for StateHasher {
    fn default() -> StateHasher {
        StateHasher::new()
    }
}

/// Hashes order ids for the order index. Ids are sequential, so a
/// multiplication spreads them well enough; it is one instruction.
#[derive(Clone, Copy, Debug, Default)]
pub struct OrderIdHasher(u64);

impl Hasher for OrderIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(MULTIPLIER);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(MULTIPLIER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_stable_and_order_sensitive() {
        let run = |words: &[u64]| {
            let mut h = StateHasher::new();
            words.iter().for_each(|&w| h.word(w));
            h.finish()
        };
        assert_eq!(run(&[1, 2, 3]), run(&[1, 2, 3]));
        assert_ne!(run(&[1, 2, 3]), run(&[3, 2, 1]));
        assert_ne!(run(&[0]), run(&[0, 0]));
        // Pinned: a change to the function changes every recorded state hash,
        // which operators compare across versions. Change it on purpose only.
        assert_eq!(run(&[1, 2, 3]), 0xb012_8118_83e8_4d5e);
    }

    #[test]
    fn byte_strings_are_length_prefixed() {
        let run = |parts: &[&[u8]]| {
            let mut h = StateHasher::new();
            parts.iter().for_each(|p| h.bytes(p));
            h.finish()
        };
        assert_ne!(run(&[b"ab", b"c"]), run(&[b"a", b"bc"]));
    }
}
