#![no_main]
//! See `hostile::fuzz::signature`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostile::fuzz::signature(data));
