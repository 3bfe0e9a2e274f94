//! The pipeline under back-pressure: when its consumers stall, the rings
//! fill and publishing fails at once (the API answers 503 "busy") instead
//! of blocking; when they resume, every accepted command completes.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use engine_core::{Command, Engine, EngineLimits, EventKind};
use gateway::pipeline::{self, PipelineConfig};
use gateway::views::Views;
use journal::{Durability, JournalConfig, JournalWriter, SegmentRetention};

/// A pipeline over a fresh journal in `dir` (no snapshots, no downstream
/// consumers), and the views it keeps.
fn start(
    dir: &std::path::Path,
    durability: Durability,
    retention: gateway::views::Retention,
    (inbound_ring_size, outbound_ring_size): (usize, usize),
    observer: Option<pipeline::Observer>,
) -> (pipeline::Pipeline, Arc<RwLock<Views>>) {
    let journal_dir = dir.join("journal");
    let config = JournalConfig {
        dir: journal_dir.clone(),
        segment_bytes: 1 << 20,
        durability,
        checkpoint_interval_ms: journal::CHECKPOINT_INTERVAL_MS_DEFAULT,
    };
    let (writer, _) = JournalWriter::open(config).unwrap();
    let engine = Engine::new(EngineLimits::default());
    let views = Arc::new(RwLock::new(Views::from_engine(&engine, retention)));
    let pipeline = pipeline::start(
        engine,
        writer,
        Arc::clone(&views),
        PipelineConfig {
            inbound_ring_size,
            outbound_ring_size,
            busy_spin: false,
            matcher_core: None,
            snapshot_every_commands: 0,
            snapshots_dir: dir.join("snapshots"),
            snapshots_keep: 1,
            journal_dir,
            retention: SegmentRetention::Keep,
            observer,
            downstream: Vec::new(),
            database_status: None,
            last_timestamp_ns: 0,
            health: Default::default(),
            images: None,
        },
    );
    (pipeline, views)
}

#[test]
fn a_full_ring_refuses_at_once_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (pipeline, views) =
        start(dir.path(), Durability::None, gateway::views::Retention::default(), (64, 64), None);
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
            .unwrap()
            .events;
        match events[0].kind {
            EventKind::UserCreated { user } => users.push(user.0),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(users.windows(2).all(|w| w[1] == w[0] + 1), "users created in order");
    assert_eq!(views.read().unwrap().users.len(), users.len());
    drop(producer);
}

/// A request's outcome describes its own command, even when the views
/// consumer applies a later command of the same batch before anyone reads
/// the views: the order each command touched is captured right after it.
#[test]
fn an_outcome_is_the_state_its_own_command_left() {
    use engine_core::{
        Amend, AssetId, MarketId, MarketRules, MarketStatus, NewOrder, OrderKind, OrderRef,
        SelfTradePrevention, Side, Symbol, Ticks, TimeInForce, Units, UserId,
    };
    use gateway::views::OrderStatus;

    let dir = tempfile::tempdir().unwrap();
    // Two closed orders kept per user: fewer than the cancel-all below closes.
    let retention =
        gateway::views::Retention { closed_orders_per_user_max: 2, ..gateway::views::Retention::default() };
    let (pipeline, views) = start(dir.path(), Durability::None, retention, (64, 256), None);
    let mut producer = pipeline.publisher.clone();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut send = |command: Command| {
        let (id, reply) = pipeline.pending.register();
        pipeline::submit(&mut producer, id, command).expect("room in the ring");
        reply
    };
    let wait = |reply: tokio::sync::oneshot::Receiver<pipeline::Reply>| {
        runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), reply).await })
            .unwrap()
            .unwrap()
            .unwrap()
    };
    for symbol in ["BTC", "USDT"] {
        wait(send(Command::CreateAsset { symbol: Symbol::new(symbol).unwrap(), decimals: 8 }));
    }
    let rules = MarketRules {
        base: AssetId(0),
        quote: AssetId(1),
        base_units_per_lot: 1,
        quote_units_per_tick: 1,
        min_qty: engine_core::Lots(1),
        min_notional: Units(0),
        maker_fee_ppm: 0,
        taker_fee_ppm: 0,
    };
    wait(send(Command::CreateMarket { rules, status: MarketStatus::Open }));
    let (maker, taker) = (UserId(0), UserId(1));
    for user in [maker, taker] {
        wait(send(Command::CreateUser));
        for asset in [AssetId(0), AssetId(1)] {
            wait(send(Command::Deposit { user, asset, amount: Units(1_000_000) }));
        }
    }
    let limit = |user, side, price, qty| {
        Command::PlaceOrder(NewOrder {
            user,
            market: MarketId(0),
            side,
            kind: OrderKind::Limit {
                price: Ticks(price),
                qty: engine_core::Lots(qty),
                tif: TimeInForce::Gtc,
            },
            client_order_id: None,
            stp: SelfTradePrevention::CancelTaker,
        })
    };

    // One batch: the views consumer is held while the commands queue up.
    let held = views.write().unwrap();
    let ask = send(limit(maker, Side::Sell, 100, 10));
    let amend = send(Command::Amend(Amend {
        user: maker,
        order: OrderRef::Id(engine_core::OrderId(1)),
        new_qty: Some(engine_core::Lots(8)),
        new_price: None,
    }));
    let bid = send(limit(taker, Side::Buy, 100, 3));
    let spare: Vec<_> = (0..5).map(|i| send(limit(maker, Side::Sell, 200 + i, 1))).collect();
    let cancel_all = send(Command::CancelAll { user: maker, market: Some(MarketId(0)) });
    std::thread::sleep(Duration::from_millis(100));
    drop(held);

    let ask = wait(ask);
    let placed = &ask.orders[0];
    assert_eq!(
        (placed.status, placed.filled.0, placed.remaining.0),
        (OrderStatus::New, 0, 10),
        "the ask as its own command left it: resting, nothing filled"
    );
    assert!(placed.fills.is_empty());
    let amended = wait(amend);
    let amended = &amended.orders[0];
    assert_eq!((amended.status, amended.filled.0, amended.remaining.0), (OrderStatus::New, 0, 8));
    let bid = wait(bid);
    assert_eq!((bid.orders[0].status, bid.orders[0].filled.0), (OrderStatus::Filled, 3));
    for reply in spare {
        assert_eq!(wait(reply).orders[0].status, OrderStatus::New);
    }
    let cancelled = wait(cancel_all);
    let mut statuses: Vec<(u64, OrderStatus, u64)> =
        cancelled.orders.iter().map(|o| (o.order.0, o.status, o.filled.0)).collect();
    statuses.sort_by_key(|s| s.0);
    assert_eq!(
        statuses,
        vec![
            (1, OrderStatus::Cancelled, 3),
            (3, OrderStatus::Cancelled, 0),
            (4, OrderStatus::Cancelled, 0),
            (5, OrderStatus::Cancelled, 0),
            (6, OrderStatus::Cancelled, 0),
            (7, OrderStatus::Cancelled, 0),
        ],
        "every order the cancel-all closed, though the views keep two"
    );
    // The views, read after the batch, show the later commands too.
    let views = views.read().unwrap();
    assert_eq!(views.user(maker).unwrap().closed.len(), 2);
    drop(producer);
}

/// Under `batch`, the matcher does not wait for the sync; the durability
/// stage does, and the stages after it see a command only once it is
/// synced: no outcome reaches the views, a reply or a stream before the
/// durable watermark has passed it.
#[test]
fn under_batch_nothing_is_released_before_it_is_synced() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    let dir = tempfile::tempdir().unwrap();
    let health: Arc<OnceLock<Arc<pipeline::Health>>> = Arc::new(OnceLock::new());
    let (seen, early) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let observer = {
        let (health, seen, early) = (Arc::clone(&health), Arc::clone(&seen), Arc::clone(&early));
        Box::new(move |slot: &pipeline::Outbound| {
            let (Some(event), Some(health)) = (slot.event, health.get()) else { return };
            seen.fetch_add(1, Ordering::Relaxed);
            if event.seq > health.durable_seq.load(Ordering::Relaxed) {
                early.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let (pipeline, _views) = start(
        dir.path(),
        Durability::Batch,
        gateway::views::Retention::default(),
        (1024, 1024),
        Some(observer),
    );
    health.set(Arc::clone(&pipeline.health)).ok().unwrap();
    let mut producer = pipeline.publisher.clone();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut waiting = Vec::new();
    for _ in 0..2_000 {
        let (id, reply) = pipeline.pending.register();
        while pipeline::submit(&mut producer, id, Command::CreateUser).is_err() {
            std::thread::yield_now();
        }
        waiting.push(reply);
    }
    for reply in waiting {
        runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(30), reply).await })
            .unwrap()
            .unwrap()
            .unwrap();
    }
    assert!(seen.load(Ordering::Relaxed) >= 2_000);
    assert_eq!(early.load(Ordering::Relaxed), 0, "outcomes seen before their sync");
    assert_eq!(pipeline.health.durable_seq.load(Ordering::Relaxed), 2_000);
    drop(producer);
}
