//! The pipeline under back-pressure: when its consumers stall, the rings
//! fill and publishing fails at once (the API answers 503 "busy") instead
//! of blocking; when they resume, every accepted command completes.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use engine_core::{Command, Engine, EngineLimits, EventKind};
use gateway::pipeline::{self, PipelineConfig};
use gateway::views::Views;
use journal::{Durability, JournalConfig, JournalWriter, SegmentRetention};

#[test]
fn a_full_ring_refuses_at_once_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let journal_dir = dir.path().join("journal");
    let config = JournalConfig {
        dir: journal_dir.clone(),
        segment_bytes: 1 << 20,
        durability: Durability::None,
        checkpoint_interval_ms: journal::CHECKPOINT_INTERVAL_MS_DEFAULT,
    };
    let (writer, _) = JournalWriter::open(config).unwrap();
    let engine = Engine::new(EngineLimits::default());
    let views = Arc::new(RwLock::new(Views::from_engine(&engine, gateway::views::Retention::default())));
    let pipeline = pipeline::start(
        engine,
        writer,
        Arc::clone(&views),
        PipelineConfig {
            inbound_ring_size: 64,
            outbound_ring_size: 64,
            busy_spin: false,
            matcher_core: None,
            snapshot_every_commands: 0,
            snapshots_dir: dir.path().join("snapshots"),
            snapshots_keep: 1,
            journal_dir,
            retention: SegmentRetention::Keep,
            observer: None,
            hub: None,
            database: None,
            database_status: None,
        },
    );
    let mut producer = pipeline.publisher.clone();

    // Stall the views consumer: the outbound ring fills, then the matcher
    // waits, then the inbound ring fills.
    let stalled = views.write().unwrap();
    let mut waiting = Vec::new();
    let mut refused = false;
    for _ in 0..1_000 {
        let (id, reply) = pipeline.pending.register();
        if pipeline::submit(&mut producer, id, Command::CreateUser).is_err() {
            pipeline.pending.forget(id);
            refused = true;
            break;
        }
        waiting.push(reply);
        // Give the matcher time to move what it can.
        std::thread::sleep(Duration::from_micros(200));
    }
    assert!(refused, "a stalled pipeline must refuse, not block");
    assert!(
        waiting.len() >= 64 && waiting.len() <= 64 + 64 + 64,
        "{} accepted before the rings filled",
        waiting.len()
    );
    drop(stalled);

    // Every accepted command completes, in order.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut users = Vec::new();
    for reply in waiting {
        let events = runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), reply).await })
            .unwrap()
            .unwrap()
            .unwrap();
        match events[0].kind {
            EventKind::UserCreated { user } => users.push(user.0),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(users.windows(2).all(|w| w[1] == w[0] + 1), "users created in order");
    assert_eq!(views.read().unwrap().users.len(), users.len());
    drop(producer);
}
