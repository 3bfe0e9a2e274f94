//! Kills a real child process with SIGKILL while it appends, then checks
//! that every record it reported as written is in the journal, intact.
//!
//! The child is this same test binary, started with an environment
//! variable that turns `child_appender` from a no-op into the appender.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engine_core::{
    AssetId, Command, Lots, MarketId, NewOrder, OrderKind, SelfTradePrevention, Side, StampedCommand,
};
use engine_core::{Ticks, TimeInForce, Units, UserId};
use journal::{Durability, JournalConfig, JournalReader, JournalWriter, ReadMode, SEGMENT_BYTES_MIN};

const CHILD_DIR_ENV: &str = "JOURNAL_CRASH_TEST_CHILD_DIR";
const CHILD_POLICY_ENV: &str = "JOURNAL_CRASH_TEST_CHILD_POLICY";

/// The command the child writes at `seq`: derived from `seq` alone, so the
/// parent can check every record's content.
fn command_at(seq: u64) -> StampedCommand {
    let command = match seq % 3 {
        0 => Command::Deposit {
            user: UserId((seq % 97) as u32),
            asset: AssetId((seq % 5) as u32),
            amount: Units(seq),
        },
        1 => Command::PlaceOrder(NewOrder {
            user: UserId((seq % 89) as u32),
            market: MarketId((seq % 7) as u32),
            side: if seq.is_multiple_of(2) { Side::Buy } else { Side::Sell },
            kind: OrderKind::Limit {
                price: Ticks(seq * 3),
                qty: Lots(seq % 1_000 + 1),
                tif: TimeInForce::Gtc,
            },
            client_order_id: None,
            stp: SelfTradePrevention::CancelMaker,
        }),
        _ => Command::CreateUser,
    };
    StampedCommand { seq, timestamp_ns: seq.wrapping_mul(7_919), command }
}

fn config(dir: &Path, durability: Durability) -> JournalConfig {
    JournalConfig { segment_bytes: SEGMENT_BYTES_MIN, durability, ..JournalConfig::new(dir) }
}

/// Not a test on its own: the body of the child process.
#[test]
fn child_appender() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else { return };
    let durability = match std::env::var(CHILD_POLICY_ENV).as_deref() {
        Ok("batch") => Durability::Batch,
        _ => Durability::None,
    };
    let (mut writer, report) = JournalWriter::open(config(Path::new(&dir), durability)).unwrap();
    let mut seq = report.next_seq;
    loop {
        // Batches of 1 to 16 records, each reported once committed.
        for _ in 0..(seq % 16 + 1) {
            writer.append(&command_at(seq)).unwrap();
            seq += 1;
        }
        writer.commit_batch().unwrap();
        println!("written {}", seq - 1);
    }
}

/// Starts the appender child on `dir` and a thread that collects its
/// reports; the thread returns the last sequence reported written, and
/// the counter shows it as it goes.
fn spawn_appender(
    dir: &Path,
    policy: &str,
) -> (std::process::Child, std::thread::JoinHandle<u64>, Arc<AtomicU64>) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Process::new(&exe)
        .args(["--exact", "child_appender", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_POLICY_ENV, policy)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let progress = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&progress);
    let reports = std::thread::spawn(move || {
        let mut last = 0u64;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(seq) = line.strip_prefix("written ").and_then(|s| s.parse().ok()) {
                last = seq;
                seen.store(seq, Ordering::Relaxed);
            }
        }
        last
    });
    (child, reports, progress)
}

/// A seed from the clock, printed so that a failure can be replayed.
fn seed() -> u64 {
    let seed = std::env::var("CRASH_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    eprintln!("crash test seed: {seed} (set CRASH_TEST_SEED to repeat)");
    seed
}

#[test]
fn sigkill_during_appends_loses_nothing_that_was_reported_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = seed();
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut last_reported_ever = 0;
    for round in 0..8 {
        let policy = if round % 2 == 0 { "none" } else { "batch" };
        // Reports are read on a thread; the kill comes at a random moment
        // after the child's first new report (how long opening and the first
        // sync take depends on the disk, not on what is tested here).
        let (mut child, reader, progress) = spawn_appender(dir.path(), policy);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while progress.load(Ordering::Relaxed) <= last_reported_ever && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(next() % 200));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let last_reported = reader.join().unwrap();
        assert!(last_reported > last_reported_ever, "round {round}: the child made no progress");
        last_reported_ever = last_reported;

        // Reopen as the next writer would (cutting any torn tail), then
        // read everything back.
        let (writer, report) = JournalWriter::open(config(dir.path(), Durability::None)).unwrap();
        drop(writer);
        let mut reader = JournalReader::open(dir.path(), 1, ReadMode::Strict).unwrap();
        let mut expected = 1;
        while let Some(record) = reader.next().unwrap() {
            assert_eq!(record, command_at(expected), "round {round}: record {expected} differs");
            expected += 1;
        }
        let last_present = expected - 1;
        assert!(
            last_present >= last_reported,
            "round {round} ({policy}): child reported {last_reported} written, journal ends at {last_present} ({report:?})"
        );
        assert_eq!(report.next_seq, last_present + 1);
    }
}

#[test]
fn a_reader_follows_a_journal_that_another_process_is_writing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, reports, _) = spawn_appender(dir.path(), "none");
    // Follow while the child writes (across its segment rotations).
    let mut reader = JournalReader::open(dir.path(), 1, ReadMode::Follow).unwrap();
    let mut next_expected = 1u64;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(400) {
        match reader.next().unwrap() {
            Some(record) => {
                assert_eq!(record, command_at(next_expected));
                next_expected += 1;
            }
            None => std::thread::yield_now(),
        }
    }
    let seen_while_running = next_expected - 1;
    child.kill().unwrap();
    child.wait().unwrap();
    let last_reported = reports.join().unwrap();
    while let Some(record) = reader.next().unwrap() {
        assert_eq!(record, command_at(next_expected));
        next_expected += 1;
    }
    assert!(seen_while_running > 0, "the follower saw nothing while the writer ran");
    assert!(
        next_expected > last_reported,
        "follower ended at {} < reported {last_reported}",
        next_expected - 1
    );
    assert!(journal::list_segments(dir.path()).unwrap().len() > 1, "the writer rotated at least once");
}
