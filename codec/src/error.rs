//! What can go wrong encoding or decoding, with where it happened.

use std::fmt;

/// An encoding or decoding failure. Decoding errors carry the byte offset
/// in the input where the value that could not be read starts (or where the
/// decoder stood when serde reported the problem).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    offset: Option<usize>,
}

/// The kinds of [`Error`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input ends inside a value.
    UnexpectedEnd {
        needed_bytes: usize,
        left_bytes: usize,
    },
    /// A length prefix claims more elements or bytes than the input has left.
    LengthPastEnd {
        len: u64,
        left_bytes: usize,
    },
    /// A value was decoded but bytes are left after it.
    TrailingBytes {
        left_bytes: usize,
    },
    InvalidBool(u8),
    InvalidOptionTag(u8),
    InvalidChar(u32),
    InvalidUtf8,
    /// A bincode varint whose tag byte does not fit the integer's width.
    InvalidVarint {
        tag: u8,
        width_bits: u32,
    },
    /// A varint written wider than its value needs (the project's layout
    /// has one encoding per value).
    NonMinimalVarint {
        tag: u8,
    },
    /// A decoded integer does not fit the type asked for (a length on a
    /// 32-bit target, a varint enum index).
    IntegerOutOfRange {
        value: u128,
    },
    /// The output slice is too small for the encoded value.
    OutputFull {
        capacity_bytes: usize,
    },
    /// An enum with more than 256 variants (the tag is one byte).
    VariantIndexTooLarge {
        index: u32,
    },
    /// A sequence or map whose length serde does not know up front.
    LengthUnknown,
    /// The type asked for a self-describing format (`deserialize_any`):
    /// this layout carries no type information.
    NotSelfDescribing,
    /// A message from serde or the type being decoded (an unknown variant,
    /// a value the type refuses).
    Custom(String),
}

impl Error {
    pub(crate) fn new(kind: ErrorKind) -> Error {
        Error { kind, offset: None }
    }

    pub(crate) fn at(kind: ErrorKind, offset: usize) -> Error {
        Error { kind, offset: Some(offset) }
    }

    /// Sets the offset unless the error already has one.
    pub(crate) fn or_at(mut self, offset: usize) -> Error {
        self.offset.get_or_insert(offset);
        self
    }

    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The byte offset in the input (decoding only).
    pub fn offset(&self) -> Option<usize> {
        self.offset
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::UnexpectedEnd { needed_bytes, left_bytes } => {
                write!(f, "the input ends inside a value: {needed_bytes} bytes needed, {left_bytes} left")
            }
            ErrorKind::LengthPastEnd { len, left_bytes } => {
                write!(f, "a length of {len} runs past the end of the input ({left_bytes} bytes left)")
            }
            ErrorKind::TrailingBytes { left_bytes } => {
                write!(f, "{left_bytes} bytes left over after the value")
            }
            ErrorKind::InvalidBool(byte) => write!(f, "{byte} is not a bool (0 or 1)"),
            ErrorKind::InvalidOptionTag(byte) => write!(f, "{byte} is not an option tag (0 or 1)"),
            ErrorKind::InvalidChar(value) => write!(f, "{value:#x} is not a Unicode scalar value"),
            ErrorKind::InvalidUtf8 => f.write_str("a string is not valid UTF-8"),
            ErrorKind::InvalidVarint { tag, width_bits } => {
                write!(f, "varint tag {tag} does not fit a {width_bits}-bit integer")
            }
            ErrorKind::NonMinimalVarint { tag } => {
                write!(f, "varint tag {tag} announces a wider integer than its value needs")
            }
            ErrorKind::IntegerOutOfRange { value } => write!(f, "integer {value} is out of range"),
            ErrorKind::OutputFull { capacity_bytes } => {
                write!(f, "the encoded value does not fit the {capacity_bytes}-byte output")
            }
            ErrorKind::VariantIndexTooLarge { index } => {
                write!(f, "enum variant index {index} does not fit the one-byte tag")
            }
            ErrorKind::LengthUnknown => f.write_str("a sequence or map must say its length up front"),
            ErrorKind::NotSelfDescribing => {
                f.write_str("the type needs a self-describing format, which this layout is not")
            }
            ErrorKind::Custom(message) => f.write_str(message),
        }?;
        if let Some(offset) = self.offset {
            write!(f, " (at byte {offset})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl serde::ser::Error for Error {
    fn custom<T: fmt::Display>(message: T) -> Error {
        Error::new(ErrorKind::Custom(message.to_string()))
    }
}

impl serde::de::Error for Error {
    fn custom<T: fmt::Display>(message: T) -> Error {
        Error::new(ErrorKind::Custom(message.to_string()))
    }
}
