#![no_main]
//! See `hostile::fuzz::binance_params`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostile::fuzz::binance_params(data));
