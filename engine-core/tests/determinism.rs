//! Determinism and snapshots: the same commands give the same events and
//! hashes; a snapshot taken mid-stream, serialized, loaded and fed the rest
//! ends in the same state and emits the same events; a damaged snapshot is
//! refused with a reason.

use std::collections::{BTreeMap, BTreeSet};

use engine_core::*;

/// SplitMix64: a tiny seeded generator, so the stream is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const USERS: u32 = 50;
const MARKETS: u32 = 3;

/// Reference data, funding, then a random mix of every command.
fn stream(seed: u64, len: usize) -> Vec<Command> {
    let mut rng = Rng(seed);
    let mut commands = Vec::new();
    for symbol in ["BTC", "ETH", "SOL", "USDT"] {
        commands.push(Command::CreateAsset { symbol: Symbol::new(symbol).unwrap(), decimals: 8 });
    }
    for base in 0..MARKETS {
        let rules = MarketRules {
            base: AssetId(base),
            quote: AssetId(3),
            base_units_per_lot: 100,
            quote_units_per_tick: 10,
            min_qty: Lots(1),
            min_notional: Units(100),
            maker_fee_ppm: 500 * base,
            taker_fee_ppm: 1_000,
        };
        commands.push(Command::CreateMarket { rules, status: MarketStatus::Open });
    }
    for user in 0..USERS {
        commands.push(Command::CreateUser);
        for asset in 0..4 {
            commands.push(Command::Deposit {
                user: UserId(user),
                asset: AssetId(asset),
                amount: Units(50_000_000),
            });
        }
    }
    let stp = [
        SelfTradePrevention::CancelTaker,
        SelfTradePrevention::CancelMaker,
        SelfTradePrevention::CancelBoth,
        SelfTradePrevention::Allow,
    ];
    let mut mid = [1_000u64; MARKETS as usize];
    let mut next_order = 1u64;
    while commands.len() < len {
        let user = UserId(rng.below(u64::from(USERS)) as u32);
        let market = rng.below(u64::from(MARKETS)) as usize;
        mid[market] = (mid[market] + rng.below(5)).saturating_sub(2).max(60);
        let side = if rng.below(2) == 0 { Side::Buy } else { Side::Sell };
        // Order ids are handed out in order; aim at recent ones.
        let recent = OrderId(next_order.saturating_sub(rng.below(200)).max(1));
        let command = match rng.below(100) {
            0..=49 => {
                let price = Ticks(mid[market] + rng.below(41) - 20);
                let qty = Lots(1 + rng.below(20));
                let tif = match rng.below(10) {
                    0 => TimeInForce::Ioc,
                    1 => TimeInForce::Fok,
                    2 => TimeInForce::PostOnly,
                    _ => TimeInForce::Gtc,
                };
                let client_order_id = (rng.below(4) == 0)
                    .then(|| ClientOrderId::new(&format!("u{}-{}", user.0, rng.below(8))).unwrap());
                next_order += 1;
                Command::PlaceOrder(NewOrder {
                    user,
                    market: MarketId(market as u32),
                    side,
                    kind: OrderKind::Limit { price, qty, tif },
                    client_order_id,
                    stp: stp[rng.below(4) as usize],
                })
            }
            55..=59 => {
                next_order += 1;
                let kind = if rng.below(2) == 0 || side == Side::Sell {
                    OrderKind::Market { qty: Lots(1 + rng.below(30)) }
                } else {
                    OrderKind::MarketByQuote { amount: Units(1_000 + rng.below(500_000)) }
                };
                Command::PlaceOrder(NewOrder {
                    user,
                    market: MarketId(market as u32),
                    side,
                    kind,
                    client_order_id: None,
                    stp: stp[rng.below(4) as usize],
                })
            }
            // Stops and take-profits (fixed or trailing, market or limit,
            // some of them icebergs once fired) around the mid, so that they
            // wait, start trailing and fire.
            50..=54 => {
                next_order += 1;
                Command::PlaceOrder(NewOrder {
                    user,
                    market: MarketId(market as u32),
                    side,
                    kind: stop_kind(&mut rng, mid[market]),
                    client_order_id: None,
                    stp: stp[rng.below(4) as usize],
                })
            }
            60..=63 => {
                next_order += 1;
                let qty = 4 + rng.below(40);
                Command::PlaceOrder(NewOrder {
                    user,
                    market: MarketId(market as u32),
                    side,
                    kind: OrderKind::Iceberg {
                        price: Ticks(mid[market] + rng.below(41) - 20),
                        qty: Lots(qty),
                        visible: Lots(1 + rng.below(qty / 2)),
                        tif: if rng.below(4) == 0 { TimeInForce::PostOnly } else { TimeInForce::Gtc },
                    },
                    client_order_id: None,
                    stp: stp[rng.below(4) as usize],
                })
            }
            64..=67 => {
                next_order += 2;
                let qty = Lots(1 + rng.below(20));
                let m = mid[market];
                let oco = rng.below(2) == 0;
                let legs = if oco {
                    // A post-only limit on the passive side and a stop on the other.
                    let (maker, stop) = match side {
                        Side::Buy => (m - 5 - rng.below(10), m + 3 + rng.below(10)),
                        Side::Sell => (m + 5 + rng.below(10), m - 3 - rng.below(10)),
                    };
                    let trigger =
                        Trigger { kind: TriggerKind::StopLoss, stop: Some(Ticks(stop)), trailing_bips: 0 };
                    [
                        ListLeg {
                            side,
                            kind: OrderKind::Limit { price: Ticks(maker), qty, tif: TimeInForce::PostOnly },
                            client_order_id: None,
                        },
                        ListLeg {
                            side,
                            kind: if rng.below(2) == 0 {
                                OrderKind::StopMarket { trigger, qty }
                            } else {
                                let price = Ticks(stop);
                                OrderKind::StopLimit {
                                    trigger,
                                    price,
                                    qty,
                                    tif: TimeInForce::Gtc,
                                    visible: Lots(0),
                                }
                            },
                            client_order_id: None,
                        },
                    ]
                } else {
                    let working =
                        OrderKind::Limit { price: Ticks(m + rng.below(21) - 10), qty, tif: TimeInForce::Gtc };
                    let pending = match rng.below(3) {
                        0 => OrderKind::Limit {
                            price: Ticks(m + rng.below(41) - 20),
                            qty,
                            tif: TimeInForce::Gtc,
                        },
                        1 => OrderKind::Market { qty },
                        _ => stop_kind(&mut rng, m),
                    };
                    [
                        ListLeg { side, kind: working, client_order_id: None },
                        ListLeg { side: side.opposite(), kind: pending, client_order_id: None },
                    ]
                };
                Command::PlaceOrderList(NewOrderList {
                    user,
                    market: MarketId(market as u32),
                    contingency: if oco { Contingency::Oco } else { Contingency::Oto },
                    client_list_id: None,
                    stp: stp[rng.below(4) as usize],
                    legs,
                })
            }
            68 => Command::CancelOrderList {
                user,
                list: ListRef::Id(ListId(1 + rng.below(next_order / 8 + 1))),
            },
            69..=84 => Command::CancelOrder { user, order: OrderRef::Id(recent) },
            85..=93 => Command::Amend(Amend {
                user,
                order: OrderRef::Id(recent),
                new_qty: (rng.below(2) == 0).then(|| Lots(1 + rng.below(20))),
                new_price: (rng.below(2) == 0).then(|| Ticks(mid[market] + rng.below(41) - 20)),
            }),
            94 => Command::CancelAll { user, market: (rng.below(2) == 0).then_some(MarketId(market as u32)) },
            95..=96 => Command::Deposit {
                user,
                asset: AssetId(rng.below(4) as u32),
                amount: Units(rng.below(1_000_000)),
            },
            97..=98 => Command::Withdraw {
                user,
                asset: AssetId(rng.below(4) as u32),
                amount: Units(rng.below(1_000_000)),
            },
            _ => Command::SetMarketFees {
                market: MarketId(market as u32),
                maker_fee_ppm: rng.below(3) as u32 * 500,
                taker_fee_ppm: rng.below(3) as u32 * 1_000,
            },
        };
        commands.push(command);
    }
    commands
}

/// A stop or take-profit order around `mid`: fixed or trailing (some
/// starting at placement), market or limit (some limits icebergs).
fn stop_kind(rng: &mut Rng, mid: u64) -> OrderKind {
    let trailing_bips = [0, 0, 10, 50, 200][rng.below(5) as usize];
    let stop =
        if trailing_bips > 0 && rng.below(2) == 0 { None } else { Some(Ticks(mid + rng.below(31) - 15)) };
    let kind = if rng.below(2) == 0 { TriggerKind::StopLoss } else { TriggerKind::TakeProfit };
    let trigger = Trigger { kind, stop, trailing_bips };
    let qty = Lots(2 + rng.below(20));
    if rng.below(2) == 0 {
        OrderKind::StopMarket { trigger, qty }
    } else {
        let visible = if rng.below(3) == 0 { Lots(1 + rng.below(qty.0 - 1)) } else { Lots(0) };
        let tif = match rng.below(6) {
            _ if visible.0 > 0 => TimeInForce::Gtc,
            0 => TimeInForce::Ioc,
            1 => TimeInForce::Fok,
            _ => TimeInForce::Gtc,
        };
        OrderKind::StopLimit { trigger, price: Ticks(mid + rng.below(31) - 15), qty, tif, visible }
    }
}

fn stamp(seq: u64, command: Command) -> StampedCommand {
    StampedCommand { seq, timestamp_ns: 1_700_000_000_000_000_000 + seq * 1_000, command }
}

/// Feeds `commands` (numbered from `first_seq`) and returns every event.
fn feed(engine: &mut Engine, commands: &[Command], first_seq: u64) -> Vec<Event> {
    let mut events = Vec::new();
    for (i, command) in commands.iter().enumerate() {
        engine.apply(&stamp(first_seq + i as u64, *command), &mut events).unwrap();
    }
    events
}

#[test]
fn same_stream_same_events_and_hash() {
    let commands = stream(7, 30_000);
    let mut a = Engine::new(EngineLimits::default());
    let mut b = Engine::new(EngineLimits::default());
    let events_a = feed(&mut a, &commands, 1);
    let events_b = feed(&mut b, &commands, 1);
    assert_eq!(events_a, events_b);
    assert_eq!(a.state_hash(), b.state_hash());
    // The stream must exercise the engine, or this proves little.
    let trades = events_a.iter().filter(|e| matches!(e.kind, EventKind::Trade { .. })).count();
    assert!(trades > 3_000, "only {trades} trades");
    assert!(a.open_order_count() > 100);
    a.check_invariants().unwrap();
    // The whole run as one batch of events: each balance, level and order
    // ends as its last event said.
    a.check_touched(&events_a).unwrap();

    // Serialized events are equal byte for byte too.
    let bytes = |events: &[Event]| codec::encode_to_vec(events).unwrap();
    assert_eq!(bytes(&events_a), bytes(&events_b));

    // A different stream ends in a different state.
    let mut c = Engine::new(EngineLimits::default());
    feed(&mut c, &stream(8, 30_000), 1);
    assert_ne!(a.state_hash(), c.state_hash());
}

#[test]
fn snapshot_mid_stream_then_the_rest_ends_identically() {
    let commands = stream(11, 40_000);
    let (head, tail) = commands.split_at(17_321);

    let mut live = Engine::new(EngineLimits::default());
    feed(&mut live, head, 1);
    let hash_at_snapshot = live.state_hash();
    let snapshot = live.snapshot();
    let live_tail_events = feed(&mut live, tail, head.len() as u64 + 1);

    for encoded in [codec::encode_to_vec(&snapshot).unwrap(), serde_json::to_vec(&snapshot).unwrap()] {
        let decoded: Snapshot = if encoded.first() == Some(&b'{') {
            serde_json::from_slice(&encoded).unwrap()
        } else {
            codec::decode(&encoded).unwrap()
        };
        assert_eq!(decoded, snapshot);
        let mut restored = Engine::from_snapshot(decoded).unwrap();
        assert_eq!(restored.state_hash(), hash_at_snapshot);
        assert_eq!(restored.last_seq(), head.len() as u64);
        let restored_tail_events = feed(&mut restored, tail, head.len() as u64 + 1);
        assert_eq!(restored_tail_events, live_tail_events);
        assert_eq!(restored.state_hash(), live.state_hash());
        assert_eq!(restored.snapshot(), live.snapshot());
    }
}

/// What the events say is waiting for a trigger, trailing, hidden behind an
/// iceberg's shown part, and bound in an open list: enough to choose a
/// snapshot point that holds all of them.
#[derive(Default)]
struct Followed {
    kinds: BTreeMap<u64, OrderKind>,
    pending: BTreeSet<u64>,
    waiting: BTreeSet<u64>,
    tracking: BTreeSet<u64>,
    /// Icebergs open: (visible, remaining).
    icebergs: BTreeMap<u64, (u64, u64)>,
    lists: BTreeMap<u64, Contingency>,
}

impl Followed {
    fn follow(&mut self, events: &[Event]) {
        for e in events {
            match e.kind {
                EventKind::OrderListAccepted { list, contingency, orders, .. } => {
                    self.lists.insert(list.0, contingency);
                    if contingency == Contingency::Oto {
                        self.pending.insert(orders[1].0);
                    }
                }
                EventKind::OrderAccepted { order, kind, .. } => {
                    self.kinds.insert(order.0, kind);
                    if !self.pending.contains(&order.0) {
                        self.enter(order.0, kind);
                    }
                }
                EventKind::OrderReleased { order, .. } => {
                    self.pending.remove(&order.0);
                    self.enter(order.0, self.kinds[&order.0]);
                }
                EventKind::OrderTriggered { order, .. } => {
                    self.waiting.remove(&order.0);
                    self.tracking.remove(&order.0);
                    if let OrderKind::StopLimit { qty, visible, .. } = self.kinds[&order.0] {
                        if visible.0 > 0 {
                            self.icebergs.insert(order.0, (visible.0, qty.0));
                        }
                    }
                }
                EventKind::TrailingStarted { order, .. } => {
                    self.tracking.insert(order.0);
                }
                EventKind::Trade { maker_order, maker_remaining, taker_order, taker_remaining, .. } => {
                    if let Some(i) = self.icebergs.get_mut(&maker_order.0) {
                        i.1 = maker_remaining.0;
                    }
                    if let Some(i) = self.icebergs.get_mut(&taker_order.0) {
                        i.1 = taker_remaining.0;
                    }
                }
                EventKind::OrderDone { order, .. } => {
                    self.kinds.remove(&order.0);
                    self.pending.remove(&order.0);
                    self.waiting.remove(&order.0);
                    self.tracking.remove(&order.0);
                    self.icebergs.remove(&order.0);
                }
                EventKind::OrderListDone { list, .. } => {
                    self.lists.remove(&list.0);
                }
                _ => {}
            }
        }
    }

    fn enter(&mut self, order: u64, kind: OrderKind) {
        match kind {
            OrderKind::StopMarket { .. } | OrderKind::StopLimit { .. } => {
                self.waiting.insert(order);
            }
            OrderKind::Iceberg { qty, visible, .. } => {
                self.icebergs.insert(order, (visible.0, qty.0));
            }
            _ => {}
        }
    }

    /// (waiting, trailing, icebergs with hidden lots, open OCOs, open OTOs)
    fn counts(&self) -> (usize, usize, usize, usize, usize) {
        let lists = |c| self.lists.values().filter(|&&x| x == c).count();
        (
            self.waiting.len(),
            self.tracking.len(),
            self.icebergs.values().filter(|(visible, remaining)| remaining > visible).count(),
            lists(Contingency::Oco),
            lists(Contingency::Oto),
        )
    }
}

/// A snapshot taken while orders wait for triggers, trailing orders track,
/// icebergs hide lots and OCO and OTO lists are open: restored, it goes on
/// exactly as the engine it was taken from (same events, same hash), and
/// the whole run is the same twice.
#[test]
fn snapshot_with_waiting_trailing_hidden_and_listed_orders_goes_on_identically() {
    let commands = stream(23, 40_000);
    let mut live = Engine::new(EngineLimits::default());
    let mut followed = Followed::default();
    let mut events = Vec::new();
    let mut split = None;
    for (i, command) in commands.iter().enumerate() {
        events.clear();
        live.apply(&stamp(i as u64 + 1, *command), &mut events).unwrap();
        followed.follow(&events);
        let (waiting, trailing, hidden, ocos, otos) = followed.counts();
        if i >= 10_000 && waiting >= 5 && trailing >= 1 && hidden >= 1 && ocos >= 1 && otos >= 1 {
            split = Some(i + 1);
            break;
        }
    }
    let Some(split) = split else {
        panic!(
            "no point of the stream holds waiting, trailing, hidden and listed orders: {:?}",
            followed.counts()
        );
    };
    let (head, tail) = commands.split_at(split);
    let hash_at_snapshot = live.state_hash();
    let snapshot = live.snapshot();
    let live_tail_events = feed(&mut live, tail, head.len() as u64 + 1);
    live.check_invariants().unwrap();
    let fired =
        live_tail_events.iter().filter(|e| matches!(e.kind, EventKind::OrderTriggered { .. })).count();
    let refills =
        live_tail_events.iter().filter(|e| matches!(e.kind, EventKind::OrderRefilled { .. })).count();
    assert!(fired > 100 && refills > 100, "the rest of the stream fires {fired} and refills {refills}");

    for encoded in [codec::encode_to_vec(&snapshot).unwrap(), serde_json::to_vec(&snapshot).unwrap()] {
        let decoded: Snapshot = if encoded.first() == Some(&b'{') {
            serde_json::from_slice(&encoded).unwrap()
        } else {
            codec::decode(&encoded).unwrap()
        };
        assert_eq!(decoded, snapshot);
        let mut restored = Engine::from_snapshot(decoded).unwrap();
        assert_eq!(restored.state_hash(), hash_at_snapshot);
        let restored_tail_events = feed(&mut restored, tail, head.len() as u64 + 1);
        assert!(restored_tail_events == live_tail_events, "the restored engine emits the same events");
        assert_eq!(restored.state_hash(), live.state_hash());
        assert_eq!(restored.snapshot(), live.snapshot());
    }

    // From the start, without a snapshot, the same again.
    let mut again = Engine::new(EngineLimits::default());
    let mut all_events = feed(&mut again, head, 1);
    let tail_events = feed(&mut again, tail, head.len() as u64 + 1);
    assert!(tail_events == live_tail_events, "replaying the whole journal emits the same events");
    assert_eq!(again.state_hash(), live.state_hash());
    all_events.extend(tail_events);
    again.check_touched(&all_events).unwrap();
}

#[test]
fn hash_covers_every_part_of_the_state() {
    let commands = stream(3, 5_000);
    let mut engine = Engine::new(EngineLimits::default());
    feed(&mut engine, &commands, 1);
    let base = engine.snapshot();
    let hash = |snapshot: &Snapshot| {
        // Hash what loads; changes that cannot load are covered by the loader's checks.
        Engine::from_snapshot(snapshot.clone()).map(|e| e.state_hash())
    };
    let original = hash(&base).unwrap();
    let mut variants: Vec<Snapshot> = Vec::new();
    let mut s = base.clone();
    s.next_trade_id += 1;
    variants.push(s);
    let mut s = base.clone();
    s.markets[1].rules.taker_fee_ppm += 1;
    variants.push(s);
    let mut s = base.clone();
    s.orders[0].timestamp_ns += 1;
    variants.push(s);
    let mut s = base.clone();
    s.orders[0].filled.0 += 1;
    variants.push(s);
    let mut s = base.clone();
    s.limits.open_orders_per_user_max += 1;
    variants.push(s);
    let mut s = base.clone();
    // Move a unit from one user's available balance to another's.
    s.balances[0][3].available.0 -= 1;
    s.balances[1][3].available.0 += 1;
    variants.push(s);
    for variant in &variants {
        assert_ne!(hash(variant).unwrap(), original);
    }
}

#[test]
fn damaged_snapshots_are_refused_with_the_reason() {
    let commands = stream(5, 8_000);
    let mut engine = Engine::new(EngineLimits::default());
    feed(&mut engine, &commands, 1);
    let base = engine.snapshot();
    assert!(!base.orders.is_empty());

    let mut s = base.clone();
    s.format_version = 99;
    assert_eq!(
        Engine::from_snapshot(s).unwrap_err(),
        SnapshotError::UnsupportedVersion { found: 99, supported: engine_core::SNAPSHOT_FORMAT_VERSION }
    );

    let mut s = base.clone();
    s.balances[2][0].available.0 += 5;
    assert!(matches!(
        Engine::from_snapshot(s).unwrap_err(),
        SnapshotError::NotConserved { asset: AssetId(0), .. }
    ));

    let mut s = base.clone();
    s.orders[0].remaining.0 += 1;
    assert!(matches!(Engine::from_snapshot(s).unwrap_err(), SnapshotError::LockedMismatch { .. }));

    let mut s = base.clone();
    let first = s.orders[0];
    s.orders.push(first);
    assert_eq!(
        Engine::from_snapshot(s).unwrap_err(),
        SnapshotError::BadOrder { order: first.id, why: "listed twice" }
    );

    let mut s = base.clone();
    s.orders[0].market = MarketId(40);
    assert!(matches!(
        Engine::from_snapshot(s).unwrap_err(),
        SnapshotError::BadOrder { why: "unknown market", .. }
    ));

    let mut s = base.clone();
    s.orders[0].id = OrderId(s.next_order_id);
    assert!(matches!(Engine::from_snapshot(s).unwrap_err(), SnapshotError::BadOrder { .. }));

    let mut s = base.clone();
    s.assets.swap(0, 1);
    assert!(matches!(
        Engine::from_snapshot(s).unwrap_err(),
        SnapshotError::AssetOutOfPlace { position: 0, .. }
    ));

    let mut s = base.clone();
    s.markets[0].rules.base_units_per_lot = 0;
    assert!(matches!(Engine::from_snapshot(s).unwrap_err(), SnapshotError::BadMarket { .. }));

    let mut s = base.clone();
    s.balances[0].push(Balance::default());
    s.balances[0].push(Balance::default());
    assert!(matches!(Engine::from_snapshot(s).unwrap_err(), SnapshotError::BalanceForUnknownAsset { .. }));

    // A crossed book: move the best ask below the best bid (keeping locks
    // consistent is not needed, the book check comes first).
    let mut s = base.clone();
    let best_bid = s.orders.iter().find(|o| o.market == MarketId(0) && o.side == Side::Buy).unwrap().price;
    if let Some(ask) = s.orders.iter_mut().find(|o| o.market == MarketId(0) && o.side == Side::Sell) {
        ask.price = best_bid;
        assert!(Engine::from_snapshot(s).is_err());
    }

    // Arbitrary bytes never panic the decoder-plus-loader path.
    let bytes = codec::encode_to_vec(&base).unwrap();
    let mut rng = Rng(99);
    for _ in 0..300 {
        let mut damaged = bytes.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(damaged.len() as u64) as usize;
            damaged[at] ^= 1 << rng.below(8);
        }
        if let Ok(snapshot) = codec::decode::<Snapshot>(&damaged) {
            if let Ok(loaded) = Engine::from_snapshot(snapshot) {
                loaded.check_invariants().unwrap();
            }
        }
    }
}
