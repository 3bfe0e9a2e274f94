#![no_main]
//! See `hostile::fuzz::journal_segment`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostile::fuzz::journal_segment(data));
