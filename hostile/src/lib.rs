//! The hostile-world suite's shared parts.
//!
//! # What this crate owns
//!
//! The bodies of the fuzz targets ([`fuzz`]): each takes arbitrary bytes,
//! feeds them to one of the exchange's readers of outside input (journal
//! segments, Raft log segments and state files, journal record payloads in both layouts, snapshot files, engine commands, REST and Binance request
//! parameters, WebSocket messages, signed requests) and asserts what must
//! hold whatever the bytes: no panic, a precise refusal, and the engine's
//! invariants after every command. `cargo fuzz` runs them under libFuzzer
//! (`fuzz/`); the tests run them on every file of their seed corpora and
//! of `fuzz/regressions/`, where each crash a fuzzer finds is kept.
//!
//! # What it must never do
//!
//! Weaken a check to make a target pass: a target that panics has found a
//! bug in the exchange, to be fixed there.

pub mod fuzz;

/// A fuzz target's body: any bytes in, a panic only for a bug found.
pub type Target = fn(&[u8]);

/// The fuzz targets by name, as `fuzz/fuzz_targets/` names them.
pub const TARGETS: &[(&str, Target)] = &[
    ("journal_segment", fuzz::journal_segment),
    ("raft_log", fuzz::raft_log),
    ("snapshot", fuzz::snapshot),
    ("codec_command", fuzz::codec_command),
    ("engine_commands", fuzz::engine_commands),
    ("rest_order", fuzz::rest_order),
    ("binance_params", fuzz::binance_params),
    ("ws_message", fuzz::ws_message),
    ("signature", fuzz::signature),
];
