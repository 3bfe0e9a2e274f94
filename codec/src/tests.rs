use std::collections::{BTreeMap, VecDeque};

use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use super::*;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Id(u32);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Kind {
    Unit,
    Newtype(u64),
    Tuple(i16, bool),
    Struct { price: i64, qty: Option<u64> },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Everything {
    flag: bool,
    small: u8,
    signed: i8,
    wide: u128,
    negative: i128,
    letter: char,
    name: String,
    id: Id,
    kinds: Vec<Kind>,
    queue: VecDeque<(u16, i32)>,
    map: BTreeMap<String, u64>,
    nothing: (),
    maybe: Option<Box<Everything>>,
}

fn sample() -> Everything {
    Everything {
        flag: true,
        small: 200,
        signed: -5,
        wide: u128::MAX - 3,
        negative: i128::MIN + 1,
        letter: 'é',
        name: "BTC-USDT".into(),
        id: Id(0xdead_beef),
        kinds: vec![
            Kind::Unit,
            Kind::Newtype(u64::MAX),
            Kind::Tuple(-300, false),
            Kind::Struct { price: -1, qty: Some(9) },
        ],
        queue: VecDeque::from([(1, -1), (65_535, i32::MIN)]),
        map: BTreeMap::from([("a".into(), 1), ("bb".into(), 2)]),
        nothing: (),
        maybe: Some(Box::new(Everything {
            flag: false,
            small: 0,
            signed: 0,
            wide: 0,
            negative: 0,
            letter: 'x',
            name: String::new(),
            id: Id(0),
            kinds: vec![],
            queue: VecDeque::new(),
            map: BTreeMap::new(),
            nothing: (),
            maybe: None,
        })),
    }
}

#[test]
fn round_trip_of_every_shape() {
    let value = sample();
    let bytes = encode_to_vec(&value).unwrap();
    assert_eq!(decode::<Everything>(&bytes).unwrap(), value);
    let mut buf = vec![0u8; bytes.len()];
    assert_eq!(encode_into_slice(&value, &mut buf).unwrap(), bytes.len());
    assert_eq!(buf, bytes);
}

#[test]
fn the_layout_is_the_documented_one() {
    // Variant 3, then price -2 (zigzag 3), then Some(3).
    assert_eq!(encode_to_vec(&Kind::Struct { price: -2, qty: Some(3) }).unwrap(), [3, 3, 1, 3]);
    assert_eq!(encode_to_vec(&250u64).unwrap(), [250]);
    assert_eq!(encode_to_vec(&251u64).unwrap(), [251, 251, 0]);
    assert_eq!(encode_to_vec(&65_536u32).unwrap(), [252, 0, 0, 1, 0]);
    assert_eq!(encode_to_vec(&(1u64 << 32)).unwrap(), [253, 0, 0, 0, 0, 1, 0, 0, 0]);
    let mut wide = vec![254];
    wide.extend_from_slice(&(1u128 << 64).to_le_bytes());
    assert_eq!(encode_to_vec(&(1u128 << 64)).unwrap(), wide);
    assert_eq!(encode_to_vec(&i64::MIN).unwrap(), [253, 255, 255, 255, 255, 255, 255, 255, 255]);
    assert_eq!(encode_to_vec(&-1i32).unwrap(), [1]);
    assert_eq!(encode_to_vec("ab").unwrap(), [2, b'a', b'b']);
    assert_eq!(encode_to_vec(&vec![1u16, 300]).unwrap(), [2, 1, 251, 0x2c, 0x01]);
    assert_eq!(encode_to_vec(&Some(true)).unwrap(), [1, 1]);
    assert_eq!(encode_to_vec(&None::<u8>).unwrap(), [0]);
    assert_eq!(encode_to_vec(&'A').unwrap(), [65]);
    assert_eq!(encode_to_vec(&(200u8, -1i8)).unwrap(), [200, 255]);
}

#[test]
fn integers_have_one_encoding() {
    let error = decode::<u64>(&[251, 5, 0]).unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::NonMinimalVarint { tag: 251 });
    assert_eq!(error.offset(), Some(0));
    assert!(decode::<u64>(&[252, 0xff, 0xff, 0, 0]).is_err());
    assert!(decode::<u64>(&[253, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]).is_err());
    // The old layout did not insist, and is read as it was written.
    assert_eq!(decode_bincode_standard::<u64>(&[251, 5, 0]).unwrap(), 5);
}

#[test]
fn every_truncation_is_refused_with_its_offset() {
    let bytes = encode_to_vec(&sample()).unwrap();
    for cut in 0..bytes.len() {
        let error = decode::<Everything>(&bytes[..cut]).unwrap_err();
        assert!(error.offset().is_some_and(|at| at <= cut), "cut {cut}: {error}");
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = encode_to_vec(&Id(5)).unwrap();
    bytes.push(0);
    let error = decode::<Id>(&bytes).unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::TrailingBytes { left_bytes: 1 });
    assert_eq!(error.to_string(), "1 bytes left over after the value (at byte 1)");
}

#[test]
fn bad_tags_are_refused_precisely() {
    assert_eq!(decode::<bool>(&[2]).unwrap_err().kind(), &ErrorKind::InvalidBool(2));
    assert_eq!(decode::<Option<u8>>(&[7, 0]).unwrap_err().kind(), &ErrorKind::InvalidOptionTag(7));
    let error = decode::<Kind>(&[9]).unwrap_err();
    assert!(
        matches!(error.kind(), ErrorKind::Custom(m) if m.contains("integer `9`, expected variant index")),
        "{error}"
    );
    assert_eq!(error.offset(), Some(0));
    assert_eq!(decode::<char>(&[251, 0x00, 0xd8]).unwrap_err().kind(), &ErrorKind::InvalidChar(0xd800));
    assert_eq!(decode::<String>(&[1, 0xff]).unwrap_err().kind(), &ErrorKind::InvalidUtf8);
}

#[test]
fn a_length_never_reaches_past_the_input() {
    // Four billion elements claimed, four bytes present: refused before
    // anything is allocated for them.
    let error = decode::<Vec<u64>>(&[252, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4]).unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::LengthPastEnd { len: u32::MAX as u64, left_bytes: 4 });
    assert_eq!(error.offset(), Some(0));
    let error = decode::<String>(&[5, b'a']).unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::LengthPastEnd { len: 5, left_bytes: 1 });
}

#[test]
fn a_full_slice_is_an_error_not_a_panic() {
    let mut buf = [0u8; 5];
    let error = encode_into_slice(&sample(), &mut buf).unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::OutputFull { capacity_bytes: 5 });
    let mut buf = [0u8; 2];
    assert!(encode_into_slice(&u64::MAX, &mut buf).is_err());
}

#[test]
fn enums_with_more_than_256_variants_and_self_describing_types_are_refused() {
    struct Wide;
    impl Serialize for Wide {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_unit_variant("Wide", 300, "V300")
        }
    }
    assert_eq!(encode_to_vec(&Wide).unwrap_err().kind(), &ErrorKind::VariantIndexTooLarge { index: 300 });
    #[derive(Debug, Deserialize)]
    #[serde(untagged)]
    #[allow(dead_code)]
    enum Untagged {
        A(u8),
    }
    assert_eq!(decode::<Untagged>(&[1]).unwrap_err().kind(), &ErrorKind::NotSelfDescribing);
}

/// bincode 2's standard layout, byte by byte as its specification gives it.
#[test]
fn bincode_standard_layout_is_read() {
    // Varints: up to 250 in one byte, then 251 + u16, 252 + u32, 253 + u64.
    assert_eq!(decode_bincode_standard::<u64>(&[250]).unwrap(), 250);
    assert_eq!(decode_bincode_standard::<u64>(&[251, 0x2c, 0x01]).unwrap(), 300);
    assert_eq!(decode_bincode_standard::<u32>(&[252, 0, 0, 1, 0]).unwrap(), 65_536);
    assert_eq!(decode_bincode_standard::<u64>(&[253, 0, 0, 0, 0, 1, 0, 0, 0]).unwrap(), 1 << 32);
    assert_eq!(
        decode_bincode_standard::<u128>(&[254, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap(),
        1
    );
    // A wider tag than the type is refused.
    assert_eq!(
        decode_bincode_standard::<u16>(&[252, 0, 0, 1, 0]).unwrap_err().kind(),
        &ErrorKind::InvalidVarint { tag: 252, width_bits: 16 }
    );
    assert_eq!(
        decode_bincode_standard::<u64>(&[255]).unwrap_err().kind(),
        &ErrorKind::InvalidVarint { tag: 255, width_bits: 64 }
    );
    // Zigzag for signed integers; u8 and i8 are raw bytes.
    assert_eq!(decode_bincode_standard::<i64>(&[3]).unwrap(), -2);
    assert_eq!(decode_bincode_standard::<i32>(&[4]).unwrap(), 2);
    assert_eq!(decode_bincode_standard::<u8>(&[255]).unwrap(), 255);
    assert_eq!(decode_bincode_standard::<i8>(&[0xfe]).unwrap(), -2);
    // Strings: varint length then UTF-8; chars: UTF-8.
    assert_eq!(decode_bincode_standard::<String>(&[2, b'o', b'k']).unwrap(), "ok");
    assert_eq!(decode_bincode_standard::<char>("é".as_bytes()).unwrap(), 'é');
    // Enums: varint u32 variant index; struct fields follow.
    assert_eq!(
        decode_bincode_standard::<Kind>(&[3, 3, 1, 9]).unwrap(),
        Kind::Struct { price: -2, qty: Some(9) }
    );
    assert_eq!(decode_bincode_standard::<Vec<Id>>(&[2, 1, 251, 0x2c, 0x01]).unwrap(), vec![Id(1), Id(300)]);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_either_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode::<Everything>(&bytes);
        let _ = decode::<Vec<Kind>>(&bytes);
        let _ = decode_bincode_standard::<Everything>(&bytes);
        let _ = decode_bincode_standard::<Vec<Kind>>(&bytes);
    }

    #[test]
    fn integers_round_trip(a in any::<u64>(), b in any::<i64>(), c in any::<u16>(), d in any::<i128>(), e in any::<u128>(), f in any::<i32>()) {
        let value = (a, b, c, d, e, f, vec![Kind::Newtype(a), Kind::Struct { price: b, qty: Some(a) }]);
        let bytes = encode_to_vec(&value).unwrap();
        prop_assert_eq!(decode::<(u64, i64, u16, i128, u128, i32, Vec<Kind>)>(&bytes).unwrap(), value.clone());
        // Read as the old layout too: the integer scheme is the same.
        prop_assert_eq!(decode_bincode_standard::<(u64, i64, u16, i128, u128, i32, Vec<Kind>)>(&bytes).unwrap(), value);
    }

    #[test]
    fn what_decodes_encodes_back_to_the_same_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(value) = decode::<Vec<Kind>>(&bytes) {
            prop_assert_eq!(encode_to_vec(&value).unwrap(), bytes);
        }
    }
}
