#![no_main]
//! See `hostile::fuzz::rest_order`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostile::fuzz::rest_order(data));
