#![no_main]
//! See `hostile::fuzz::codec_command`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostile::fuzz::codec_command(data));
