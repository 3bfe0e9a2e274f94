//! The decoder: serde's `Deserializer` over a byte slice, for the
//! project's layout and (to read older files) bincode 2's standard layout.

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use crate::error::{Error, ErrorKind};

/// The input and how far it has been read. Every read is bounded by the
/// bytes left; nothing is allocated for a length before the bytes that
/// length needs are known to be there.
pub(crate) struct Reader<'de> {
    bytes: &'de [u8],
    pub(crate) pos: usize,
}

impl<'de> Reader<'de> {
    pub(crate) fn new(bytes: &'de [u8]) -> Reader<'de> {
        Reader { bytes, pos: 0 }
    }

    #[inline]
    pub(crate) fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'de [u8], Error> {
        match self.bytes.get(self.pos..self.pos.saturating_add(n)) {
            Some(bytes) => {
                self.pos += n;
                Ok(bytes)
            }
            None => Err(self.unexpected_end(n)),
        }
    }

    #[cold]
    fn unexpected_end(&self, needed_bytes: usize) -> Error {
        Error::at(ErrorKind::UnexpectedEnd { needed_bytes, left_bytes: self.left() }, self.pos)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        match self.bytes.get(self.pos..self.pos + N) {
            Some(bytes) => {
                let mut array = [0u8; N];
                array.copy_from_slice(bytes);
                self.pos += N;
                Ok(array)
            }
            None => Err(self.unexpected_end(N)),
        }
    }

    #[inline]
    fn byte(&mut self) -> Result<u8, Error> {
        match self.bytes.get(self.pos) {
            Some(&byte) => {
                self.pos += 1;
                Ok(byte)
            }
            None => Err(self.unexpected_end(1)),
        }
    }

    /// A length of elements or bytes; each takes at least one byte, so a
    /// length beyond the bytes left is refused before anything is
    /// allocated for it.
    #[inline]
    fn checked_len(&self, len: u64, at: usize) -> Result<usize, Error> {
        let left = self.left();
        if len > left as u64 {
            return Err(Error::at(ErrorKind::LengthPastEnd { len, left_bytes: left }, at));
        }
        Ok(len as usize)
    }
}

/// How integers, lengths, enum tags and chars are laid out.
pub(crate) trait Layout {
    fn u16(r: &mut Reader) -> Result<u16, Error>;
    fn u32(r: &mut Reader) -> Result<u32, Error>;
    fn u64(r: &mut Reader) -> Result<u64, Error>;
    fn u128(r: &mut Reader) -> Result<u128, Error>;
    fn i16(r: &mut Reader) -> Result<i16, Error>;
    fn i32(r: &mut Reader) -> Result<i32, Error>;
    fn i64(r: &mut Reader) -> Result<i64, Error>;
    fn i128(r: &mut Reader) -> Result<i128, Error>;
    fn char(r: &mut Reader) -> Result<char, Error>;
    fn len(r: &mut Reader) -> Result<u64, Error>;
    fn variant(r: &mut Reader) -> Result<u32, Error>;
}

/// bincode 2's `config::standard()`: little-endian varints for every
/// integer wider than a byte (a value up to 250 is one byte; tags 251, 252,
/// 253, 254 announce a `u16`, `u32`, `u64`, `u128` that follows), signed
/// integers zigzag-encoded first, lengths as varint `u64`, enum tags as
/// varint `u32`, chars as UTF-8. Read only: the exchange no longer writes it.
pub(crate) struct BincodeStandard;

pub(crate) const VARINT_SINGLE_BYTE_MAX: u8 = 250;
pub(crate) const VARINT_U16: u8 = 251;
pub(crate) const VARINT_U32: u8 = 252;
pub(crate) const VARINT_U64: u8 = 253;
pub(crate) const VARINT_U128: u8 = 254;

/// A varint of at most 64 bits (`width_bits`: 16, 32 or 64). `minimal`:
/// refuse a value written wider than it needs (the project's layout has
/// one encoding per value; bincode did not check, so older files are read
/// without it).
#[inline]
fn varint(r: &mut Reader, width_bits: u32, minimal: bool) -> Result<u64, Error> {
    let tag = r.byte()?;
    if tag <= VARINT_SINGLE_BYTE_MAX {
        return Ok(u64::from(tag));
    }
    let (value, tag_bits, smallest) = match tag {
        VARINT_U16 => (u64::from(u16::from_le_bytes(r.array()?)), 16, u64::from(VARINT_SINGLE_BYTE_MAX) + 1),
        VARINT_U32 => (u64::from(u32::from_le_bytes(r.array()?)), 32, u64::from(u16::MAX) + 1),
        VARINT_U64 => (u64::from_le_bytes(r.array()?), 64, u64::from(u32::MAX) + 1),
        _ => return Err(Error::at(ErrorKind::InvalidVarint { tag, width_bits }, r.pos - 1)),
    };
    if tag_bits > width_bits {
        return Err(Error::at(
            ErrorKind::InvalidVarint { tag, width_bits },
            r.pos - 1 - tag_bits as usize / 8,
        ));
    }
    if minimal && value < smallest {
        return Err(Error::at(ErrorKind::NonMinimalVarint { tag }, r.pos - 1 - tag_bits as usize / 8));
    }
    Ok(value)
}

/// A varint of up to 128 bits.
fn varint_u128(r: &mut Reader, minimal: bool) -> Result<u128, Error> {
    let at = r.pos;
    if r.bytes.get(at) != Some(&VARINT_U128) {
        return varint(r, 64, minimal).map(u128::from);
    }
    r.pos += 1;
    let value = u128::from_le_bytes(r.array()?);
    if minimal && value <= u128::from(u64::MAX) {
        return Err(Error::at(ErrorKind::NonMinimalVarint { tag: VARINT_U128 }, at));
    }
    Ok(value)
}

/// Zigzag: 0, -1, 1, -2, ... <- 0, 1, 2, 3, ...
#[inline]
fn unzigzag64(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

fn unzigzag128(n: u128) -> i128 {
    ((n >> 1) as i128) ^ -((n & 1) as i128)
}

/// The project's layout: varint integers (as bincode's standard layout,
/// minimal form only), varint lengths, `u8` enum tags, chars as varint
/// `u32` scalar values.
pub(crate) struct Compact;

impl Layout for Compact {
    #[inline]
    fn u16(r: &mut Reader) -> Result<u16, Error> {
        varint(r, 16, true).map(|v| v as u16)
    }
    #[inline]
    fn u32(r: &mut Reader) -> Result<u32, Error> {
        varint(r, 32, true).map(|v| v as u32)
    }
    #[inline]
    fn u64(r: &mut Reader) -> Result<u64, Error> {
        varint(r, 64, true)
    }
    fn u128(r: &mut Reader) -> Result<u128, Error> {
        varint_u128(r, true)
    }
    #[inline]
    fn i16(r: &mut Reader) -> Result<i16, Error> {
        varint(r, 16, true).map(|v| unzigzag64(v) as i16)
    }
    #[inline]
    fn i32(r: &mut Reader) -> Result<i32, Error> {
        varint(r, 32, true).map(|v| unzigzag64(v) as i32)
    }
    #[inline]
    fn i64(r: &mut Reader) -> Result<i64, Error> {
        varint(r, 64, true).map(unzigzag64)
    }
    fn i128(r: &mut Reader) -> Result<i128, Error> {
        varint_u128(r, true).map(unzigzag128)
    }
    fn char(r: &mut Reader) -> Result<char, Error> {
        let at = r.pos;
        let value = Self::u32(r)?;
        char::from_u32(value).ok_or_else(|| Error::at(ErrorKind::InvalidChar(value), at))
    }
    #[inline]
    fn len(r: &mut Reader) -> Result<u64, Error> {
        Self::u64(r)
    }
    #[inline]
    fn variant(r: &mut Reader) -> Result<u32, Error> {
        r.byte().map(u32::from)
    }
}

impl Layout for BincodeStandard {
    fn u16(r: &mut Reader) -> Result<u16, Error> {
        varint(r, 16, false).map(|v| v as u16)
    }
    fn u32(r: &mut Reader) -> Result<u32, Error> {
        varint(r, 32, false).map(|v| v as u32)
    }
    fn u64(r: &mut Reader) -> Result<u64, Error> {
        varint(r, 64, false)
    }
    fn u128(r: &mut Reader) -> Result<u128, Error> {
        varint_u128(r, false)
    }
    fn i16(r: &mut Reader) -> Result<i16, Error> {
        varint(r, 16, false).map(|v| unzigzag64(v) as i16)
    }
    fn i32(r: &mut Reader) -> Result<i32, Error> {
        varint(r, 32, false).map(|v| unzigzag64(v) as i32)
    }
    fn i64(r: &mut Reader) -> Result<i64, Error> {
        varint(r, 64, false).map(unzigzag64)
    }
    fn i128(r: &mut Reader) -> Result<i128, Error> {
        varint_u128(r, false).map(unzigzag128)
    }
    fn char(r: &mut Reader) -> Result<char, Error> {
        let at = r.pos;
        let first = r.byte()?;
        let width = match first {
            0x00..=0x7f => 1,
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => return Err(Error::at(ErrorKind::InvalidUtf8, at)),
        };
        let mut bytes = [first, 0, 0, 0];
        bytes[1..width].copy_from_slice(r.take(width - 1)?);
        std::str::from_utf8(&bytes[..width])
            .ok()
            .and_then(|s| s.chars().next())
            .ok_or_else(|| Error::at(ErrorKind::InvalidUtf8, at))
    }
    fn len(r: &mut Reader) -> Result<u64, Error> {
        Self::u64(r)
    }
    fn variant(r: &mut Reader) -> Result<u32, Error> {
        Self::u32(r)
    }
}

pub(crate) struct Decoder<'de, L> {
    pub(crate) reader: Reader<'de>,
    layout: std::marker::PhantomData<L>,
}

impl<'de, L: Layout> Decoder<'de, L> {
    pub(crate) fn new(bytes: &'de [u8]) -> Decoder<'de, L> {
        Decoder { reader: Reader::new(bytes), layout: std::marker::PhantomData }
    }

    #[inline]
    fn len(&mut self) -> Result<usize, Error> {
        let at = self.reader.pos;
        let len = L::len(&mut self.reader)?;
        self.reader.checked_len(len, at)
    }

    #[inline]
    fn str(&mut self) -> Result<&'de str, Error> {
        let len = self.len()?;
        let at = self.reader.pos;
        let bytes = self.reader.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| Error::at(ErrorKind::InvalidUtf8, at))
    }

    #[inline]
    fn tag(&mut self, invalid: fn(u8) -> ErrorKind) -> Result<bool, Error> {
        let at = self.reader.pos;
        match self.reader.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(Error::at(invalid(other), at)),
        }
    }
}

impl<'de, L: Layout> de::Deserializer<'de> for &mut Decoder<'de, L> {
    type Error = Error;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
        Err(Error::at(ErrorKind::NotSelfDescribing, self.reader.pos))
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
        Err(Error::at(ErrorKind::NotSelfDescribing, self.reader.pos))
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
        Err(Error::at(ErrorKind::NotSelfDescribing, self.reader.pos))
    }

    #[inline]
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bool(self.tag(ErrorKind::InvalidBool)?)
    }
    #[inline]
    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i8(self.reader.byte()? as i8)
    }
    #[inline]
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i16(L::i16(&mut self.reader)?)
    }
    #[inline]
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i32(L::i32(&mut self.reader)?)
    }
    #[inline]
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i64(L::i64(&mut self.reader)?)
    }
    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i128(L::i128(&mut self.reader)?)
    }
    #[inline]
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u8(self.reader.byte()?)
    }
    #[inline]
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u16(L::u16(&mut self.reader)?)
    }
    #[inline]
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u32(L::u32(&mut self.reader)?)
    }
    #[inline]
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(L::u64(&mut self.reader)?)
    }
    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u128(L::u128(&mut self.reader)?)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f32(f32::from_bits(u32::from_le_bytes(self.reader.array()?)))
    }
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f64(f64::from_bits(u64::from_le_bytes(self.reader.array()?)))
    }
    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_char(L::char(&mut self.reader)?)
    }
    #[inline]
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_str(self.str()?)
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_str(self.str()?)
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let len = self.len()?;
        visitor.visit_borrowed_bytes(self.reader.take(len)?)
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_bytes(visitor)
    }
    #[inline]
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.tag(ErrorKind::InvalidOptionTag)? {
            visitor.visit_some(self)
        } else {
            visitor.visit_none()
        }
    }
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let len = self.len()?;
        visitor.visit_seq(Elements { decoder: self, left: len })
    }
    #[inline]
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(Elements { decoder: self, left: len })
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_tuple(len, visitor)
    }
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let len = self.len()?;
        visitor.visit_map(Elements { decoder: self, left: len })
    }
    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_tuple(fields.len(), visitor)
    }
    #[inline]
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_enum(self)
    }
}

/// The elements of a sequence, tuple, struct or map, counted down.
struct Elements<'a, 'de, L> {
    decoder: &'a mut Decoder<'de, L>,
    left: usize,
}

impl<'de, L: Layout> de::SeqAccess<'de> for Elements<'_, 'de, L> {
    type Error = Error;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.decoder).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        // Never more than the bytes left: what a collection preallocates
        // is bounded by the input, whatever its length prefix says.
        Some(self.left.min(self.decoder.reader.left()))
    }
}

impl<'de, L: Layout> de::MapAccess<'de> for Elements<'_, 'de, L> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.decoder).map(Some)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(&mut *self.decoder)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left.min(self.decoder.reader.left()))
    }
}

impl<'de, L: Layout> de::EnumAccess<'de> for &mut Decoder<'de, L> {
    type Error = Error;
    type Variant = Self;

    #[inline]
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let at = self.reader.pos;
        let index = L::variant(&mut self.reader)?;
        let value =
            seed.deserialize(IntoDeserializer::<Error>::into_deserializer(index)).map_err(|e| e.or_at(at))?;
        Ok((value, self))
    }
}

impl<'de, L: Layout> de::VariantAccess<'de> for &mut Decoder<'de, L> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }
    #[inline]
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }
    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_tuple(self, fields.len(), visitor)
    }
}
