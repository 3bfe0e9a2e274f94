//! The exchange's own binary encoding for the files it writes: journal
//! records, snapshots, the views section of a snapshot, workload files.
//!
//! # What this crate is for
//!
//! One documented layout (`docs/encoding.md`), implemented as a serde
//! `Serializer` and `Deserializer`, so that the bytes on disk depend on
//! nothing but this crate and the types' serde derives:
//!
//! * integers wider than a byte: a varint, in its one minimal form (a value
//!   up to 250 is that one byte; otherwise a tag byte 251, 252, 253 or 254
//!   and the value as a little-endian `u16`, `u32`, `u64` or `u128`);
//!   signed integers zigzag-encoded first (0, -1, 1, -2 -> 0, 1, 2, 3);
//! * `u8`, `i8`: one byte; `bool`: one byte, 0 or 1; `Option`: one byte 0
//!   (`None`) or 1 then the value; `f32`/`f64`: their bits, little-endian;
//! * strings and byte strings: a varint length, then the bytes (UTF-8);
//! * sequences and maps: a varint element count, then the elements (a map's
//!   keys and values alternate);
//! * structs and tuples: their fields in declaration order, nothing else;
//! * enums: a `u8` variant index (declaration order), then the variant's fields;
//! * unit and unit structs: nothing; newtypes: the inner value; `char`: its
//!   scalar value as a varint.
//!
//! The layout carries no type information: a reader must know the type (and
//! the files carry a version number in their headers for when a type changes).
//!
//! Decoding is for hostile input: it never panics, never reads past the
//! input, never allocates for a length more than the bytes left can hold,
//! refuses trailing bytes, and says what is wrong and at which byte offset.
//!
//! [`decode_bincode_standard`] reads the layout the exchange wrote before
//! this crate (bincode 2 with `config::standard()`), so that older journal
//! segments, snapshots and views load; nothing writes it any more.
//!
//! # What it is not for
//!
//! Self-describing data (`serde_json`'s job): `deserialize_any` is refused,
//! so types that need it (untagged enums, `#[serde(flatten)]`, rust_decimal's
//! default impl) must not be stored through this crate. Sequences of
//! zero-sized elements are refused too (each element must take a byte).
//!
//! # Example
//!
//! ```
//! #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
//! enum Command { Deposit { user: u32, amount: u64 }, Halt }
//!
//! let mut buf = [0u8; 64];
//! let len = codec::encode_into_slice(&Command::Deposit { user: 7, amount: 500 }, &mut buf).unwrap();
//! assert_eq!(&buf[..len], &[0, 7, 251, 0xf4, 0x01]);
//! let back: Command = codec::decode(&buf[..len]).unwrap();
//! assert_eq!(back, Command::Deposit { user: 7, amount: 500 });
//! assert!(codec::decode::<Command>(&buf[..len - 1]).is_err());
//! ```

#![forbid(unsafe_code)]

mod de;
mod error;
mod ser;

use serde::{de::DeserializeOwned, Serialize};

pub use error::{Error, ErrorKind};

use de::{BincodeStandard, Compact, Decoder, Layout};
use ser::{Encoder, SliceOutput};

/// Encodes `value` into the start of `out` without allocating; returns the
/// number of bytes written. Fails with [`ErrorKind::OutputFull`] when `out`
/// is too small (what was written so far is garbage then).
#[inline]
pub fn encode_into_slice<T: Serialize + ?Sized>(value: &T, out: &mut [u8]) -> Result<usize, Error> {
    let mut encoder = Encoder { out: SliceOutput { buf: out, len: 0 } };
    value.serialize(&mut encoder)?;
    Ok(encoder.out.len)
}

/// Encodes `value` at the end of `out`.
pub fn encode_append<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), Error> {
    let mut encoder = Encoder { out: std::mem::take(out) };
    let result = value.serialize(&mut encoder);
    *out = encoder.out;
    result
}

/// Encodes `value` into a new vector.
pub fn encode_to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    encode_append(value, &mut out)?;
    Ok(out)
}

/// Decodes one `T` that must take all of `bytes` (trailing bytes are an error).
#[inline]
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    decode_with::<T, Compact>(bytes)
}

/// Decodes one `T` written by bincode 2 with `config::standard()` (the
/// exchange's files before this crate), taking all of `bytes`.
pub fn decode_bincode_standard<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    decode_with::<T, BincodeStandard>(bytes)
}

#[inline]
fn decode_with<T: DeserializeOwned, L: Layout>(bytes: &[u8]) -> Result<T, Error> {
    let mut decoder = Decoder::<L>::new(bytes);
    let value = T::deserialize(&mut decoder).map_err(|e| e.or_at(decoder.reader.pos))?;
    let left_bytes = decoder.reader.left();
    if left_bytes != 0 {
        return Err(Error::at(ErrorKind::TrailingBytes { left_bytes }, decoder.reader.pos));
    }
    Ok(value)
}

#[cfg(test)]
mod tests;
