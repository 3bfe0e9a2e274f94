//! How the pipeline's threads wait for work.
//!
//! [`Backoff`] spins briefly, yields for a moment, and then sleeps on a
//! [`Doorbell`] that every publisher rings after publishing, so an idle
//! thread costs no CPU and still wakes within microseconds. On a 2-core
//! laptop that matters twice: idle pipeline threads leave the cores to the
//! HTTP threads, and a woken thread does not wait out a timer.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use disruptor::wait_strategies::WaitStrategy;
use disruptor::Sequence;

/// Polls spent spinning before yielding.
const SPINS: u32 = 64;
/// How long to keep yielding before sleeping on the doorbell.
const YIELD_FOR: Duration = Duration::from_micros(50);
/// The longest sleep: a safety net, since every publish rings.
const SLEEP_MAX: Duration = Duration::from_millis(10);

/// A futex that sleepers wait on and publishers ring.
#[derive(Debug, Default)]
pub struct Doorbell {
    rings: AtomicU32,
    sleepers: AtomicU32,
}

impl Doorbell {
    /// A doorbell that lives as long as the process (wait strategies are
    /// `Copy` and hold a plain reference). One is made per ring per server.
    pub fn leak() -> &'static Doorbell {
        Box::leak(Box::new(Doorbell::default()))
    }

    /// Wakes the threads sleeping on this doorbell; call after publishing.
    #[inline]
    pub fn ring(&self) {
        self.rings.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            futex_wake_all(&self.rings);
        }
    }

    /// Sleeps until the doorbell rings after `seen` was read, or `timeout`.
    fn sleep(&self, seen: u32, timeout: Duration) {
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        futex_wait(&self.rings, seen, timeout);
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The pipeline's default wait strategy: spin, yield, then sleep on a doorbell.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub doorbell: &'static Doorbell,
}

/// Per waiting thread: the sequence awaited, polls so far, when yielding
/// began, and the doorbell count read one poll before sleeping.
#[derive(Clone, Copy)]
struct Waiting {
    sequence: Sequence,
    polls: u32,
    since: Option<Instant>,
    seen: Option<u32>,
}

thread_local! {
    static WAITING: Cell<Waiting> = const { Cell::new(Waiting { sequence: -1, polls: 0, since: None, seen: None }) };
}

impl WaitStrategy for Backoff {
    fn wait_for(&self, sequence: Sequence) {
        let mut waiting = WAITING.with(Cell::get);
        if waiting.sequence != sequence {
            waiting = Waiting { sequence, polls: 0, since: None, seen: None };
        }
        waiting.polls = waiting.polls.saturating_add(1);
        if waiting.polls < SPINS {
            std::hint::spin_loop();
        } else if waiting.since.get_or_insert_with(Instant::now).elapsed() < YIELD_FOR {
            std::thread::yield_now();
        } else if let Some(seen) = waiting.seen.take() {
            // The disruptor checked for work after `seen` was read: a
            // publish since then has changed the count, and the wait
            // returns at once.
            self.doorbell.sleep(seen, SLEEP_MAX);
            // Woken: spin and yield again before the next sleep (a wake
            // may also be the safety net's timeout, or another ring).
            waiting.polls = 0;
            waiting.since = None;
        } else {
            // Read the count now; the disruptor checks for work before it
            // calls again, and only then do we sleep.
            waiting.seen = Some(self.doorbell.rings.load(Ordering::SeqCst));
        }
        WAITING.with(|cell| cell.set(waiting));
    }
}

/// The wait strategy of a stage that a later stage waits for: it rings the
/// later stage's doorbell when it starts waiting, which is after the
/// disruptor has marked its batch done. Ringing from the handler at the end
/// of its batch would come before that mark: a later stage woken by it
/// could find nothing yet, go back to sleep and stay asleep until the next
/// ring or the safety net's timeout (seen as 10 ms tails under `batch`).
/// A stage that goes straight on to its next batch without waiting must
/// ring at that batch's start too ([`Doorbell::ring`]).
#[derive(Clone, Copy, Debug)]
pub struct RingWhenDone {
    pub wait: Backoff,
    pub done: &'static Doorbell,
}

thread_local! {
    /// The sequence this thread last rang for on starting to wait.
    static RUNG_FOR: Cell<Sequence> = const { Cell::new(-1) };
}

impl WaitStrategy for RingWhenDone {
    fn wait_for(&self, sequence: Sequence) {
        if RUNG_FOR.with(|rung| rung.replace(sequence)) != sequence {
            self.done.ring();
        }
        self.wait.wait_for(sequence);
    }
}

#[cfg(target_os = "linux")]
fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // Safety: `word` is a live, aligned u32 for the duration of the call;
    // FUTEX_WAIT only reads it and returns on a change, a wake or the timeout.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            &timeout as *const libc::timespec,
        );
    }
}

#[cfg(target_os = "linux")]
fn futex_wake_all(word: &AtomicU32) {
    // Safety: as above; FUTEX_WAKE does not touch memory.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, i32::MAX);
    }
}

#[cfg(not(target_os = "linux"))]
fn futex_wait(_word: &AtomicU32, _expected: u32, _timeout: Duration) {
    std::thread::sleep(Duration::from_micros(50));
}

#[cfg(not(target_os = "linux"))]
fn futex_wake_all(_word: &AtomicU32) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Long enough that only a ring ends the sleep within a test run: a
    /// lost wake-up shows as a hung test, not as a timing assertion.
    const FOREVER: Duration = Duration::from_secs(3_600);

    #[test]
    fn a_ring_wakes_a_sleeper() {
        let doorbell = Doorbell::leak();
        let sleeper = std::thread::spawn(move || {
            let seen = doorbell.rings.load(Ordering::SeqCst);
            doorbell.sleep(seen, FOREVER);
        });
        while doorbell.sleepers.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        doorbell.ring();
        sleeper.join().unwrap();
        assert_eq!(doorbell.sleepers.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_stage_rings_once_when_it_starts_waiting_for_each_sequence() {
        let done = Doorbell::leak();
        let wait = RingWhenDone { wait: Backoff { doorbell: Doorbell::leak() }, done };
        std::thread::spawn(move || {
            let rings = || done.rings.load(Ordering::SeqCst);
            wait.wait_for(5);
            assert_eq!(rings(), 1);
            wait.wait_for(5);
            wait.wait_for(5);
            assert_eq!(rings(), 1, "polls of the same sequence do not ring again");
            wait.wait_for(9);
            assert_eq!(rings(), 2);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_ring_before_the_sleep_is_not_lost() {
        let doorbell = Doorbell::leak();
        let seen = doorbell.rings.load(Ordering::SeqCst);
        doorbell.ring();
        doorbell.sleep(seen, FOREVER);
        assert_eq!(doorbell.rings.load(Ordering::SeqCst), seen + 1);
    }
}
