#![no_main]
//! See `hostile::fuzz::engine_commands`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostile::fuzz::engine_commands(data));
