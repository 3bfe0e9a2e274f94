//! The encoder: serde's `Serializer` writing the project's layout.

use serde::ser::{self, Serialize};

use crate::de::{VARINT_SINGLE_BYTE_MAX, VARINT_U128, VARINT_U16, VARINT_U32, VARINT_U64};
use crate::error::{Error, ErrorKind};

/// Where encoded bytes go.
pub(crate) trait Output {
    fn put(&mut self, bytes: &[u8]) -> Result<(), Error>;
}

/// A caller's slice, filled from the start; never allocates.
pub(crate) struct SliceOutput<'a> {
    pub(crate) buf: &'a mut [u8],
    pub(crate) len: usize,
}

impl Output for SliceOutput<'_> {
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let end = self.len + bytes.len();
        match self.buf.get_mut(self.len..end) {
            Some(target) => {
                target.copy_from_slice(bytes);
                self.len = end;
                Ok(())
            }
            None => Err(output_full(self.buf.len())),
        }
    }
}

#[cold]
fn output_full(capacity_bytes: usize) -> Error {
    Error::new(ErrorKind::OutputFull { capacity_bytes })
}

impl Output for Vec<u8> {
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

pub(crate) struct Encoder<W> {
    pub(crate) out: W,
}

impl<W: Output> Encoder<W> {
    /// The varint of `docs/encoding.md`, in its one (minimal) form. Each
    /// width is one fixed-size write (no variable-length copy).
    #[inline]
    fn varint(&mut self, value: u64) -> Result<(), Error> {
        if value <= u64::from(VARINT_SINGLE_BYTE_MAX) {
            self.out.put(&[value as u8])
        } else if value <= u64::from(u16::MAX) {
            let [a, b] = (value as u16).to_le_bytes();
            self.out.put(&[VARINT_U16, a, b])
        } else if value <= u64::from(u32::MAX) {
            let [a, b, c, d] = (value as u32).to_le_bytes();
            self.out.put(&[VARINT_U32, a, b, c, d])
        } else {
            let [a, b, c, d, e, f, g, h] = value.to_le_bytes();
            self.out.put(&[VARINT_U64, a, b, c, d, e, f, g, h])
        }
    }

    fn varint_u128(&mut self, value: u128) -> Result<(), Error> {
        match u64::try_from(value) {
            Ok(value) => self.varint(value),
            Err(_) => {
                self.out.put(&[VARINT_U128])?;
                self.out.put(&value.to_le_bytes())
            }
        }
    }

    /// Zigzag (0, -1, 1, -2, ... -> 0, 1, 2, 3, ...), then the varint.
    #[inline]
    fn signed(&mut self, value: i64) -> Result<(), Error> {
        self.varint(((value << 1) ^ (value >> 63)) as u64)
    }

    #[inline]
    fn len(&mut self, len: usize) -> Result<(), Error> {
        self.varint(len as u64)
    }

    #[inline]
    fn variant(&mut self, index: u32) -> Result<(), Error> {
        let tag = u8::try_from(index).map_err(|_| Error::new(ErrorKind::VariantIndexTooLarge { index }))?;
        self.out.put(&[tag])
    }
}

impl<W: Output> ser::Serializer for &mut Encoder<W> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn is_human_readable(&self) -> bool {
        false
    }

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.out.put(&[u8::from(v)])
    }
    #[inline]
    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        self.out.put(&v.to_le_bytes())
    }
    #[inline]
    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        self.signed(i64::from(v))
    }
    #[inline]
    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        self.signed(i64::from(v))
    }
    #[inline]
    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        self.signed(v)
    }
    #[inline]
    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        self.varint_u128(((v << 1) ^ (v >> 127)) as u128)
    }
    #[inline]
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        self.out.put(&[v])
    }
    #[inline]
    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        self.varint(u64::from(v))
    }
    #[inline]
    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        self.varint(u64::from(v))
    }
    #[inline]
    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        self.varint(v)
    }
    #[inline]
    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        self.varint_u128(v)
    }
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        self.out.put(&v.to_bits().to_le_bytes())
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        self.out.put(&v.to_bits().to_le_bytes())
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.varint(u64::from(u32::from(v)))
    }
    #[inline]
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.len(v.len())?;
        self.out.put(v.as_bytes())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        self.len(v.len())?;
        self.out.put(v)
    }
    #[inline]
    fn serialize_none(self) -> Result<(), Error> {
        self.out.put(&[0])
    }
    #[inline]
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), Error> {
        self.out.put(&[1])?;
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        Ok(())
    }
    #[inline]
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        index: u32,
        _variant: &'static str,
    ) -> Result<(), Error> {
        self.variant(index)
    }
    #[inline]
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }
    #[inline]
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        index: u32,
        _variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.variant(index)?;
        value.serialize(self)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self, Error> {
        self.len(len.ok_or_else(|| Error::new(ErrorKind::LengthUnknown))?)?;
        Ok(self)
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self, Error> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Self, Error> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self, Error> {
        self.variant(index)?;
        Ok(self)
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Self, Error> {
        self.len(len.ok_or_else(|| Error::new(ErrorKind::LengthUnknown))?)?;
        Ok(self)
    }
    #[inline]
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self, Error> {
        Ok(self)
    }
    #[inline]
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self, Error> {
        self.variant(index)?;
        Ok(self)
    }
}

macro_rules! compound {
    ($trait:ident, $method:ident $(, $key:ident)?) => {
        impl<W: Output> ser::$trait for &mut Encoder<W> {
            type Ok = ();
            type Error = Error;
            #[inline]
            fn $method<T: ?Sized + Serialize>(&mut self, $($key: &'static str,)? value: &T) -> Result<(), Error> {
                $(let _ = $key;)?
                value.serialize(&mut **self)
            }
            #[inline]
            fn end(self) -> Result<(), Error> {
                Ok(())
            }
        }
    };
}

compound!(SerializeSeq, serialize_element);
compound!(SerializeTuple, serialize_element);
compound!(SerializeTupleStruct, serialize_field);
compound!(SerializeTupleVariant, serialize_field);
compound!(SerializeStruct, serialize_field, key);
compound!(SerializeStructVariant, serialize_field, key);

impl<W: Output> ser::SerializeMap for &mut Encoder<W> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), Error> {
        key.serialize(&mut **self)
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Error> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), Error> {
        Ok(())
    }
}
