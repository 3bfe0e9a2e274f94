//! How the pipeline's threads wait for work.

use std::cell::Cell;
use std::time::Duration;

use disruptor::wait_strategies::WaitStrategy;
use disruptor::Sequence;

/// Spins briefly, then yields, then sleeps: low latency under load, and a
/// quiet CPU when idle, so the exchange behaves on a 2-core laptop. The
/// disruptor calls `wait_for` once per empty poll; a thread-local counter
/// (reset when the awaited sequence changes) tracks how long it has waited.
#[derive(Clone, Copy, Debug)]
pub struct Backoff;

const SPINS: u32 = 256;
const YIELDS: u32 = 64;
const SLEEP: Duration = Duration::from_micros(50);

thread_local! {
    static WAITED: Cell<(Sequence, u32)> = const { Cell::new((-1, 0)) };
}

impl WaitStrategy for Backoff {
    fn wait_for(&self, sequence: Sequence) {
        let polls = WAITED.with(|waited| {
            let (awaited, polls) = waited.get();
            let polls = if awaited == sequence { polls.saturating_add(1) } else { 0 };
            waited.set((sequence, polls));
            polls
        });
        if polls < SPINS {
            std::hint::spin_loop();
        } else if polls < SPINS + YIELDS {
            std::thread::yield_now();
        } else {
            std::thread::sleep(SLEEP);
        }
    }
}
