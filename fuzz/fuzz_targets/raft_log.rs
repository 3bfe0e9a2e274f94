#![no_main]
//! See `hostile::fuzz::raft_log`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostile::fuzz::raft_log(data));
