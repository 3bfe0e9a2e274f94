//! How the pipeline's threads wait for work.

use std::cell::Cell;
use std::time::{Duration, Instant};

use disruptor::wait_strategies::WaitStrategy;
use disruptor::Sequence;

/// Spins briefly, then yields for a while, then sleeps: low latency under
/// load, and a quiet CPU when idle, so the exchange behaves on a 2-core
/// laptop. The disruptor calls `wait_for` once per empty poll; a
/// thread-local record (reset when the awaited sequence changes) says how
/// long this wait has lasted. Yielding, unlike sleeping, hands the core to
/// another pipeline thread at once, which matters when threads outnumber
/// cores.
#[derive(Clone, Copy, Debug)]
pub struct Backoff;

const SPINS: u32 = 64;
const YIELD_FOR: Duration = Duration::from_micros(200);
const SLEEP: Duration = Duration::from_micros(50);

thread_local! {
    static WAITED: Cell<(Sequence, u32, Option<Instant>)> = const { Cell::new((-1, 0, None)) };
}

impl WaitStrategy for Backoff {
    fn wait_for(&self, sequence: Sequence) {
        let (polls, since) = WAITED.with(|waited| {
            let (awaited, polls, since) = waited.get();
            let (polls, since) =
                if awaited == sequence { (polls.saturating_add(1), since) } else { (0, None) };
            let since = if polls == SPINS { Some(Instant::now()) } else { since };
            waited.set((sequence, polls, since));
            (polls, since)
        });
        if polls < SPINS {
            std::hint::spin_loop();
        } else if since.is_none_or(|since| since.elapsed() < YIELD_FOR) {
            std::thread::yield_now();
        } else {
            std::thread::sleep(SLEEP);
        }
    }
}
