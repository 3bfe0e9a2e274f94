//! Query strings and form bodies as the APIs read them: a parameter by
//! name, percent-decoded. Signing reads the raw pairs instead
//! ([`crate::auth::query_pairs`]): a signature covers the bytes as sent.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use crate::auth::query_pairs;
use crate::error::ApiError;

/// A query component decoded: `+` is a space, `%XX` a byte, and the bytes
/// must be UTF-8. `None` for a `%` without two hex digits after it or for
/// bytes that are not UTF-8: a request gets an error, not a guess.
pub fn decode(component: &str) -> Option<String> {
    // The crate passes a malformed escape through as text; refuse it first.
    let bytes = component.as_bytes();
    let hex_at = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_hexdigit);
    if bytes.iter().enumerate().any(|(i, &byte)| byte == b'%' && !(hex_at(i + 1) && hex_at(i + 2))) {
        return None;
    }
    // `+` before decoding, so that an encoded plus (`%2B`) stays one.
    let spaced = if component.contains('+') {
        Cow::Owned(component.replace('+', " "))
    } else {
        Cow::Borrowed(component)
    };
    percent_decode_str(&spaced).decode_utf8().ok().map(Cow::into_owned)
}

/// The decoded value of the first parameter `name` in `query`, if sent.
pub fn param(query: &str, name: &str) -> Result<Option<String>, ApiError> {
    match query_pairs(query).find(|(n, _)| *n == name) {
        None => Ok(None),
        Some((_, value)) => decode(value).map(Some).ok_or_else(|| {
            ApiError::bad_request("invalid_parameter", format!("{name}: bad percent-encoding"))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_decode_as_forms_encode_them() {
        assert_eq!(decode("a+b%20c%2Bd").as_deref(), Some("a b c+d"));
        assert_eq!(decode("%E2%82%AC").as_deref(), Some("\u{20ac}"));
        assert_eq!(decode("plain").as_deref(), Some("plain"));
        assert_eq!(decode(""), Some(String::new()));
    }

    #[test]
    fn malformed_escapes_and_bytes_that_are_not_utf8_are_refused() {
        for bad in ["%", "%Z", "%ZZ", "a%2", "%+1", "%FF", "%C3"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
