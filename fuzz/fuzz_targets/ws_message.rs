#![no_main]
//! See `hostile::fuzz::ws_message`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostile::fuzz::ws_message(data));
