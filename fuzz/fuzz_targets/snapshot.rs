#![no_main]
//! See `hostile::fuzz::snapshot`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostile::fuzz::snapshot(data));
