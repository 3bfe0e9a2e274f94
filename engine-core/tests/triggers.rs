//! One test per rule of docs/engine.md's "Stop, take-profit, trailing,
//! iceberg, OCO and OTO orders". The harness checks every invariant
//! (conservation, holds of open, waiting and hidden orders and of lists,
//! uncrossed books, snapshot round trip) after each command, and that a
//! rejection changed nothing.

mod harness;

use engine_core::*;
use harness::*;

const START_BTC: u64 = 10_000_000;
const START_USDT: u64 = 1_000_000_000_000;

fn stop(kind: TriggerKind, price: u64) -> Trigger {
    Trigger { kind, stop: Some(Ticks(price)), trailing_bips: 0 }
}

fn stop_market(kind: TriggerKind, price: u64, qty: u64) -> OrderKind {
    OrderKind::StopMarket { trigger: stop(kind, price), qty: Lots(qty) }
}

fn stop_limit(kind: TriggerKind, stop_price: u64, price: u64, qty: u64) -> OrderKind {
    OrderKind::StopLimit {
        trigger: stop(kind, stop_price),
        price: Ticks(price),
        qty: Lots(qty),
        tif: TimeInForce::Gtc,
        visible: Lots(0),
    }
}

fn market(qty: u64) -> OrderKind {
    OrderKind::Market { qty: Lots(qty) }
}

fn post_only(price: u64, qty: u64) -> OrderKind {
    limit_kind(price, qty, TimeInForce::PostOnly)
}

/// A book of one bid (user 0) at 100 and one ask (user 1) at 110, and a
/// last price of `last` set by user 2 trading one lot with user 1 there.
fn market_at(users: u32, last: u64) -> Harness {
    let mut h = Harness::btc_usdt(users);
    h.limit(1, Side::Sell, last, 1);
    h.limit(2, Side::Buy, last, 1);
    assert_eq!(h.trades().len(), 1);
    h
}

/// The order ids of the `OrderTriggered` events of the last command, with
/// the price that fired each.
fn triggered(h: &Harness) -> Vec<(u64, u64)> {
    h.events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::OrderTriggered { order, price, .. } => Some((order.0, price.0)),
            _ => None,
        })
        .collect()
}

fn list_of_last(h: &Harness) -> (ListId, [OrderId; 2]) {
    h.events
        .iter()
        .find_map(|e| match e.kind {
            EventKind::OrderListAccepted { list, orders, .. } => Some((list, orders)),
            _ => None,
        })
        .expect("an order list was accepted")
}

fn list_done(h: &Harness) -> Vec<u64> {
    h.events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::OrderListDone { list, .. } => Some(list.0),
            _ => None,
        })
        .collect()
}

fn oco(user: u32, side: Side, legs: [OrderKind; 2]) -> Command {
    Command::PlaceOrderList(NewOrderList {
        user: UserId(user),
        market: BTC_USDT,
        contingency: Contingency::Oco,
        client_list_id: None,
        stp: SelfTradePrevention::CancelTaker,
        legs: legs.map(|kind| ListLeg { side, kind, client_order_id: None }),
    })
}

fn oto(user: u32, working: (Side, OrderKind), pending: (Side, OrderKind)) -> Command {
    Command::PlaceOrderList(NewOrderList {
        user: UserId(user),
        market: BTC_USDT,
        contingency: Contingency::Oto,
        client_list_id: None,
        stp: SelfTradePrevention::CancelTaker,
        legs: [
            ListLeg { side: working.0, kind: working.1, client_order_id: None },
            ListLeg { side: pending.0, kind: pending.1, client_order_id: None },
        ],
    })
}

#[test]
fn a_stop_loss_sell_waits_off_the_book_holding_its_base_then_fires_as_a_market_order() {
    let mut h = market_at(4, 105);
    let bid_100 = h.limit(0, Side::Buy, 100, 7).0;
    let bid_99 = h.limit(0, Side::Buy, 99, 5).0;
    h.place(3, Side::Sell, stop_market(TriggerKind::StopLoss, 99, 6));
    let stop = h.accepted().unwrap();
    assert!(h.done().is_empty(), "a waiting order stays open");
    assert_eq!(h.balance(3, BTC), (START_BTC - 60, 60), "it holds its quantity of base");
    assert_eq!(h.depth(Side::Sell), vec![], "it is not on the book");
    assert_eq!(h.engine.open_order_count(), 3);

    // A trade at 100 is above its stop: nothing fires.
    h.place(2, Side::Sell, market(2));
    assert_eq!(h.trades(), vec![(bid_100, h.accepted().unwrap().0, 100, 2)]);
    assert!(triggered(&h).is_empty());

    // A sweep through 100 and 99 fires it at 99; it enters after the sweep
    // as a market sell and takes what is left at 99.
    let sweeper = {
        h.place(2, Side::Sell, market(6));
        h.accepted().unwrap()
    };
    assert_eq!(triggered(&h), vec![(stop.0, 99)]);
    let trades = h.trades();
    assert_eq!(trades[..2], [(bid_100, sweeper.0, 100, 5), (bid_99, sweeper.0, 99, 1)]);
    assert_eq!(trades[2..], [(bid_99, stop.0, 99, 4)]);
    // The book ran dry: the rest of the stop's market order expires.
    assert!(h.done().contains(&(stop.0, DoneReason::Expired, 4, 2)));
    assert_eq!(h.balance(3, BTC).1, 0, "the hold went with the order");
    let order_of = |e: &Event| match e.kind {
        EventKind::OrderTriggered { order, .. } => Some(order),
        _ => None,
    };
    let fired_at = h.events.iter().position(|e| order_of(e).is_some()).unwrap();
    let sweeper_done = h
        .events
        .iter()
        .position(|e| matches!(e.kind, EventKind::OrderDone { order, .. } if order == sweeper))
        .unwrap();
    assert!(sweeper_done < fired_at, "a fired order enters after the order that fired it is done");
}

#[test]
fn each_kind_and_side_fires_in_its_direction_and_is_refused_if_it_would_fire_at_once() {
    let mut h = market_at(3, 100);
    use TriggerKind::{StopLoss, TakeProfit};
    // Would fire at once at a last price of 100: refused, nothing changes.
    for (kind, side, price) in [
        (StopLoss, Side::Buy, 100),
        (StopLoss, Side::Sell, 100),
        (TakeProfit, Side::Buy, 101),
        (TakeProfit, Side::Sell, 99),
    ] {
        assert_eq!(
            h.rejected(Command::PlaceOrder(order(0, side, stop_market(kind, price, 1)))),
            RejectReason::WouldTriggerImmediately { stop: Ticks(price), last: Ticks(100) },
            "{kind:?} {side:?} at {price}"
        );
    }
    // Waiting the right way round: rising (stop-loss buy at 102, take-profit
    // sell at 103) and falling (stop-loss sell at 98, take-profit buy at 97).
    let ids: Vec<OrderId> = [
        (StopLoss, Side::Buy, 102),
        (TakeProfit, Side::Sell, 103),
        (StopLoss, Side::Sell, 98),
        (TakeProfit, Side::Buy, 97),
    ]
    .into_iter()
    .map(|(kind, side, price)| {
        h.place(0, side, stop_market(kind, price, 1));
        h.accepted().unwrap()
    })
    .collect();
    // Rising to 102 fires only the stop-loss buy.
    h.limit(1, Side::Sell, 102, 1);
    h.limit(2, Side::Buy, 102, 1);
    assert_eq!(triggered(&h), vec![(ids[0].0, 102)]);
    // Rising to 103 fires the take-profit sell.
    h.limit(1, Side::Sell, 103, 1);
    h.limit(2, Side::Buy, 103, 1);
    assert_eq!(triggered(&h), vec![(ids[1].0, 103)]);
    // Falling to 97 fires both falling ones: the older first.
    h.limit(1, Side::Buy, 97, 1);
    h.limit(2, Side::Sell, 97, 1);
    assert_eq!(triggered(&h), vec![(ids[2].0, 97), (ids[3].0, 97)]);
}

#[test]
fn a_stop_whose_fill_fires_another_stop_cascades_within_the_command() {
    let mut h = market_at(5, 100);
    // Bids at 99, 98 and 97, one lot each at 99 and 98, five at 97.
    h.limit(0, Side::Buy, 99, 1);
    h.limit(0, Side::Buy, 98, 1);
    h.limit(0, Side::Buy, 97, 5);
    // Stop A fires at 99 and sells 2 (trading at 98 and 97); stop B fires at
    // 97 and sells 1 there.
    h.place(3, Side::Sell, stop_market(TriggerKind::StopLoss, 99, 2));
    let a = h.accepted().unwrap();
    h.place(4, Side::Sell, stop_market(TriggerKind::StopLoss, 97, 1));
    let b = h.accepted().unwrap();
    h.place(2, Side::Sell, market(1));
    assert_eq!(triggered(&h), vec![(a.0, 99), (b.0, 97)]);
    let trades = h.trades();
    assert_eq!(trades.len(), 4);
    assert_eq!((trades[1].1, trades[1].2), (a.0, 98));
    assert_eq!((trades[2].1, trades[2].2), (a.0, 97));
    assert_eq!((trades[3].1, trades[3].2), (b.0, 97));
    assert_eq!(h.engine.open_order_count(), 1, "only what is left of the 97 bid");
    // Nothing fires twice: more trades at 97 fire nothing.
    h.place(2, Side::Sell, market(1));
    assert!(triggered(&h).is_empty());
}

#[test]
fn a_stop_limit_enters_with_a_new_place_in_time_and_rests_what_does_not_trade() {
    let mut h = market_at(4, 100);
    h.limit(0, Side::Buy, 95, 3); // an older bid at the stop's limit price
    h.place(3, Side::Buy, stop_limit(TriggerKind::StopLoss, 101, 101, 4));
    let stop = h.accepted().unwrap();
    assert_eq!(h.balance(3, USDT), (START_USDT - 404, 404), "it holds its limit price times quantity");
    h.limit(1, Side::Sell, 101, 1);
    h.limit(2, Side::Buy, 101, 1);
    assert_eq!(triggered(&h), vec![(stop.0, 101)]);
    // Nothing left to buy at 101: it rests there for 4, holding exactly that.
    assert_eq!(h.depth(Side::Buy), vec![(101, 4), (95, 3)]);
    assert_eq!(h.balance(3, USDT), (START_USDT - 404, 404));
    assert!(h.done().iter().all(|d| d.0 != stop.0));
    // And can be amended now that it is on the book.
    h.ok(Command::Amend(Amend {
        user: UserId(3),
        order: OrderRef::Id(stop),
        new_qty: Some(Lots(2)),
        new_price: None,
    }));
    assert_eq!(h.balance(3, USDT), (START_USDT - 202, 202));
}

#[test]
fn waiting_orders_cannot_be_amended_but_are_cancelled_and_counted_as_open() {
    let limits = EngineLimits { open_orders_per_user_max: 2, ..EngineLimits::default() };
    let mut h = Harness::with_limits(limits);
    let rules = h.rules();
    h.ok(Command::CreateAsset { symbol: Symbol::new("BTC").unwrap(), decimals: 8 });
    h.ok(Command::CreateAsset { symbol: Symbol::new("USDT").unwrap(), decimals: 6 });
    h.ok(Command::CreateMarket { rules, status: MarketStatus::Open });
    h.ok(Command::CreateUser);
    h.ok(Command::Deposit { user: UserId(0), asset: BTC, amount: Units(START_BTC) });
    h.place(0, Side::Sell, stop_market(TriggerKind::StopLoss, 90, 5));
    let first = h.accepted().unwrap();
    h.place(0, Side::Sell, stop_market(TriggerKind::StopLoss, 91, 5));
    assert_eq!(
        h.rejected(Command::PlaceOrder(order(0, Side::Sell, stop_market(TriggerKind::StopLoss, 92, 5)))),
        RejectReason::OpenOrderLimit { limit: 2 }
    );
    assert_eq!(
        h.rejected(Command::Amend(Amend {
            user: UserId(0),
            order: OrderRef::Id(first),
            new_qty: Some(Lots(1)),
            new_price: None
        })),
        RejectReason::AmendNotAllowed
    );
    h.ok(Command::CancelOrder { user: UserId(0), order: OrderRef::Id(first) });
    assert_eq!(h.done(), vec![(first.0, DoneReason::Cancelled, 0, 5)]);
    h.ok(Command::CancelAll { user: UserId(0), market: None });
    assert_eq!(h.balance(0, BTC), (START_BTC, 0));
    assert_eq!(h.engine.open_order_count(), 0);
}

#[test]
fn trigger_rules_refuse_what_cannot_work() {
    let mut h = Harness::btc_usdt(1);
    let none = Trigger { kind: TriggerKind::StopLoss, stop: None, trailing_bips: 0 };
    assert_eq!(
        h.rejected(Command::PlaceOrder(order(
            0,
            Side::Sell,
            OrderKind::StopMarket { trigger: none, qty: Lots(1) }
        ))),
        RejectReason::TriggerUnset
    );
    let wide = Trigger { trailing_bips: 2_001, ..stop(TriggerKind::StopLoss, 90) };
    assert!(matches!(
        h.rejected(Command::PlaceOrder(order(
            0,
            Side::Sell,
            OrderKind::StopMarket { trigger: wide, qty: Lots(1) }
        ))),
        RejectReason::TrailingDeltaOutOfRange { bips: 2_001, .. }
    ));
    // A trailing market buy with no stop price in a market that never traded
    // has no price to hold its funds at.
    let trailing = Trigger { kind: TriggerKind::StopLoss, stop: None, trailing_bips: 100 };
    assert_eq!(
        h.rejected(Command::PlaceOrder(order(
            0,
            Side::Buy,
            OrderKind::StopMarket { trigger: trailing, qty: Lots(1) }
        ))),
        RejectReason::NoReferencePrice
    );
    let post_only = OrderKind::StopLimit {
        trigger: stop(TriggerKind::StopLoss, 90),
        price: Ticks(90),
        qty: Lots(1),
        tif: TimeInForce::PostOnly,
        visible: Lots(0),
    };
    assert_eq!(
        h.rejected(Command::PlaceOrder(order(0, Side::Sell, post_only))),
        RejectReason::TimeInForceNotAllowed
    );
    // Without a last price, nothing is immediate.
    h.place(0, Side::Buy, stop_market(TriggerKind::StopLoss, 1, 1));
    assert!(h.accepted().is_some());
}

#[test]
fn a_trailing_sell_tracks_the_highest_price_and_fires_on_the_retracement() {
    // Binance's scenario E in ticks: placed at a last price of 40,000 with
    // 700 bips and no stop price; the high moves to 45,500; fires at 42,315.
    let mut h = market_at(4, 40_000);
    let trailing = Trigger { kind: TriggerKind::StopLoss, stop: None, trailing_bips: 700 };
    h.place(3, Side::Sell, OrderKind::StopMarket { trigger: trailing, qty: Lots(1) });
    let order_id = h.accepted().unwrap();
    assert!(h
        .events
        .iter()
        .any(|e| matches!(e.kind, EventKind::TrailingStarted { price: Ticks(40_000), .. })));
    let trade_at = |h: &mut Harness, price: u64| {
        h.limit(1, Side::Sell, price, 1);
        h.limit(2, Side::Buy, price, 1);
        triggered(h)
    };
    assert!(trade_at(&mut h, 42_000).is_empty());
    assert!(trade_at(&mut h, 39_500).is_empty(), "a 595 bips fall from 42,000");
    assert!(trade_at(&mut h, 45_500).is_empty());
    assert!(trade_at(&mut h, 42_316).is_empty(), "a tick short of 7% below 45,500");
    h.limit(0, Side::Buy, 42_000, 1); // something for the fired market sell to hit
    assert_eq!(trade_at(&mut h, 42_315), vec![(order_id.0, 42_315)]);
    assert!(h.done().contains(&(order_id.0, DoneReason::Filled, 1, 0)));
}

#[test]
fn a_trailing_buy_with_a_stop_price_starts_tracking_there() {
    // Binance's scenario A: stop price 44,000, 500 bips; tracking starts at
    // the first trade at or above 44,000, the low then falls to 42,000 and
    // a trade at 44,100 fires it.
    let mut h = market_at(4, 40_000);
    let trigger = Trigger { kind: TriggerKind::StopLoss, stop: Some(Ticks(44_000)), trailing_bips: 500 };
    let kind = OrderKind::StopLimit {
        trigger,
        price: Ticks(45_000),
        qty: Lots(1),
        tif: TimeInForce::Gtc,
        visible: Lots(0),
    };
    h.place(3, Side::Buy, kind);
    let order_id = h.accepted().unwrap();
    let trade_at = |h: &mut Harness, price: u64| {
        h.limit(1, Side::Sell, price, 1);
        h.limit(2, Side::Buy, price, 1);
        (triggered(h), h.events.iter().any(|e| matches!(e.kind, EventKind::TrailingStarted { .. })))
    };
    assert_eq!(trade_at(&mut h, 37_000), (vec![], false), "falls before tracking are ignored");
    assert_eq!(trade_at(&mut h, 44_000), (vec![], true), "tracking starts at 44,000");
    assert_eq!(trade_at(&mut h, 46_000), (vec![], false), "454 bips above the low");
    assert_eq!(trade_at(&mut h, 42_000), (vec![], false), "a new low");
    assert_eq!(trade_at(&mut h, 44_099), (vec![], false));
    assert_eq!(trade_at(&mut h, 44_100), (vec![(order_id.0, 44_100)], false));
}

#[test]
fn an_iceberg_shows_its_visible_part_and_refills_to_the_back_of_the_queue() {
    let mut h = Harness::btc_usdt(3);
    h.place(
        0,
        Side::Sell,
        OrderKind::Iceberg { price: Ticks(100), qty: Lots(10), visible: Lots(3), tif: TimeInForce::Gtc },
    );
    let iceberg = h.accepted().unwrap();
    assert_eq!(h.depth(Side::Sell), vec![(100, 3)], "only the shown part is on the book");
    assert_eq!(h.balance(0, BTC), (START_BTC - 100, 100), "the lock covers the hidden part");
    let other = h.limit(1, Side::Sell, 100, 2);
    // A buy of 4 takes the 3 shown, the refill of 3 goes behind the other
    // order, which trades next.
    h.limit(2, Side::Buy, 100, 4);
    assert_eq!(h.trades(), vec![(iceberg.0, 3, 100, 3), (other.0, 3, 100, 1)]);
    let refill = h.events.iter().find_map(|e| match e.kind {
        EventKind::OrderRefilled { shown, hidden, .. } => Some((shown.0, hidden.0)),
        _ => None,
    });
    assert_eq!(refill, Some((3, 4)));
    let trade = h.events.iter().find_map(|e| match e.kind {
        EventKind::Trade { maker_remaining, .. } => Some(maker_remaining),
        _ => None,
    });
    assert_eq!(trade, Some(Lots(7)), "the owner's trade report counts the hidden part");
    assert_eq!(h.depth(Side::Sell), vec![(100, 4)]);
    // A big buy takes everything, meeting the iceberg again after each refill.
    h.limit(2, Side::Buy, 100, 20);
    let maker_fills: Vec<u64> = h.trades().iter().filter(|t| t.0 == iceberg.0).map(|t| t.3).collect();
    assert_eq!(maker_fills, vec![3, 3, 1]);
    assert!(h.done().contains(&(iceberg.0, DoneReason::Filled, 10, 0)));
    assert_eq!(h.balance(0, BTC), (START_BTC - 100, 0));
}

#[test]
fn iceberg_rules_amends_and_fok_count_hidden_lots() {
    let mut h = Harness::btc_usdt(3);
    let ice = |qty, visible, tif| OrderKind::Iceberg {
        price: Ticks(100),
        qty: Lots(qty),
        visible: Lots(visible),
        tif,
    };
    assert!(matches!(
        h.rejected(Command::PlaceOrder(order(0, Side::Sell, ice(10, 10, TimeInForce::Gtc)))),
        RejectReason::IcebergVisibleInvalid { .. }
    ));
    assert!(matches!(
        h.rejected(Command::PlaceOrder(order(0, Side::Sell, ice(1_000, 1, TimeInForce::Gtc)))),
        RejectReason::IcebergTooManyParts { parts: 1_000, max: 100 }
    ));
    assert_eq!(
        h.rejected(Command::PlaceOrder(order(0, Side::Sell, ice(10, 3, TimeInForce::Ioc)))),
        RejectReason::TimeInForceNotAllowed
    );
    h.place(0, Side::Sell, ice(10, 3, TimeInForce::Gtc));
    let iceberg = h.accepted().unwrap();
    // A FOK buy of 9 fills: only 3 show, but 7 more would refill.
    h.place(1, Side::Buy, limit_kind(100, 9, TimeInForce::Fok));
    assert_eq!(h.trades().iter().map(|t| t.3).sum::<u64>(), 9);
    // A FOK for more than it has fills nothing.
    h.place(1, Side::Buy, limit_kind(100, 2, TimeInForce::Fok));
    assert!(h.trades().is_empty());
    assert_eq!(h.depth(Side::Sell), vec![(100, 1)]);
    h.ok(Command::CancelOrder { user: UserId(0), order: OrderRef::Id(iceberg) });

    h.place(0, Side::Sell, ice(10, 3, TimeInForce::Gtc));
    let second = h.accepted().unwrap();
    assert_ne!(iceberg, second);
    // Down to 5 keeps the place: hidden lots go first (3 shown, 2 hidden).
    h.ok(Command::Amend(Amend {
        user: UserId(0),
        order: OrderRef::Id(second),
        new_qty: Some(Lots(5)),
        new_price: None,
    }));
    assert_eq!(h.depth(Side::Sell), vec![(100, 3)]);
    assert_eq!(h.balance(0, BTC).1, 50);
    // Down to 2 cuts the shown part.
    h.ok(Command::Amend(Amend {
        user: UserId(0),
        order: OrderRef::Id(second),
        new_qty: Some(Lots(2)),
        new_price: None,
    }));
    assert_eq!(h.depth(Side::Sell), vec![(100, 2)]);
    // A new price re-enters it with a fresh shown part.
    h.ok(Command::Amend(Amend {
        user: UserId(0),
        order: OrderRef::Id(second),
        new_qty: Some(Lots(9)),
        new_price: Some(Ticks(101)),
    }));
    assert_eq!(h.depth(Side::Sell), vec![(101, 3)]);
    assert_eq!(h.balance(0, BTC).1, 90);
    h.ok(Command::CancelOrder { user: UserId(0), order: OrderRef::Id(second) });
    assert_eq!(h.done(), vec![(second.0, DoneReason::Cancelled, 0, 9)]);
    assert_eq!(h.balance(0, BTC).1, 0);
}

#[test]
fn an_oco_holds_once_and_a_partial_fill_of_its_maker_leg_cancels_the_stop() {
    let mut h = market_at(4, 100);
    // Sell 5: take profit at 110 (post-only), stop-loss at 95.
    h.ok(oco(3, Side::Sell, [post_only(110, 5), stop_market(TriggerKind::StopLoss, 95, 5)]));
    let (list, [maker, stop_leg]) = list_of_last(&h);
    assert_eq!(h.balance(3, BTC), (START_BTC - 50, 50), "5 lots held once for both legs");
    assert_eq!(h.depth(Side::Sell), vec![(110, 5)]);
    h.limit(2, Side::Buy, 110, 2);
    assert_eq!(h.trades(), vec![(maker.0, h.accepted().unwrap().0, 110, 2)]);
    assert!(h.done().contains(&(stop_leg.0, DoneReason::Contingent, 0, 5)));
    assert!(!h.done().iter().any(|d| d.0 == maker.0));
    assert_eq!(list_done(&h), vec![list.0]);
    assert_eq!(h.balance(3, BTC), (START_BTC - 50, 30), "what is left holds its own need");
    // The maker leg goes on alone; cancelling it is an ordinary cancel.
    h.ok(Command::CancelOrder { user: UserId(3), order: OrderRef::Id(maker) });
    assert!(list_done(&h).is_empty());
    assert_eq!(h.balance(3, BTC), (START_BTC - 20, 0));
}

#[test]
fn an_oco_buy_holds_its_larger_leg_and_a_fired_stop_cancels_the_maker() {
    let mut h = market_at(4, 100);
    // Buy 4: limit maker at 90 (needs 360), stop-limit at 105 for 107 (428).
    h.ok(oco(3, Side::Buy, [post_only(90, 4), stop_limit(TriggerKind::StopLoss, 105, 107, 4)]));
    let (list, [maker, stop_leg]) = list_of_last(&h);
    assert_eq!(h.balance(3, USDT), (START_USDT - 428, 428));
    h.limit(1, Side::Sell, 105, 1);
    h.limit(2, Side::Buy, 105, 1);
    assert_eq!(triggered(&h), vec![(stop_leg.0, 105)]);
    assert!(h.done().contains(&(maker.0, DoneReason::Contingent, 0, 4)));
    assert_eq!(list_done(&h), vec![list.0]);
    // The stop-limit rests at 107 for 4 (nothing to buy), holding 428.
    assert_eq!(h.depth(Side::Buy)[0], (107, 4));
    assert_eq!(h.balance(3, USDT), (START_USDT - 428, 428));
}

#[test]
fn oco_legs_fired_by_one_trade_fire_the_first_and_cancel_the_second() {
    // No last price yet, so both stops are accepted even though one price
    // meets both: take-profit sell at 100 (rising) and stop-loss sell at 102
    // (falling).
    let mut h = Harness::btc_usdt(4);
    h.limit(0, Side::Buy, 90, 10);
    h.ok(oco(
        3,
        Side::Sell,
        [stop_market(TriggerKind::TakeProfit, 100, 2), stop_market(TriggerKind::StopLoss, 102, 2)],
    ));
    let (list, [first, second]) = list_of_last(&h);
    h.limit(1, Side::Sell, 101, 1);
    h.limit(2, Side::Buy, 101, 1);
    assert_eq!(triggered(&h), vec![(first.0, 101)]);
    assert!(h.done().contains(&(second.0, DoneReason::Contingent, 0, 2)));
    assert_eq!(list_done(&h), vec![list.0]);
    assert!(h.done().contains(&(first.0, DoneReason::Filled, 2, 0)));
    assert_eq!(h.balance(3, BTC), (START_BTC - 20, 0));
}

#[test]
fn oco_shapes_are_checked_whole() {
    let mut h = market_at(4, 100);
    assert_eq!(
        h.rejected(oco(3, Side::Sell, [post_only(110, 5), stop_market(TriggerKind::StopLoss, 95, 4)])),
        RejectReason::OrderListInvalid(ListRule::OcoLegsDiffer)
    );
    assert_eq!(
        h.rejected(oco(3, Side::Sell, [post_only(110, 5), post_only(111, 5)])),
        RejectReason::OrderListInvalid(ListRule::OcoTwoMakers)
    );
    assert_eq!(
        h.rejected(oco(
            3,
            Side::Sell,
            [limit_kind(110, 5, TimeInForce::Gtc), stop_market(TriggerKind::StopLoss, 95, 5)]
        )),
        RejectReason::OrderListInvalid(ListRule::OcoLegKind)
    );
    assert!(matches!(
        h.rejected(oco(3, Side::Sell, [post_only(110, 5), stop_market(TriggerKind::StopLoss, 101, 5)])),
        RejectReason::WouldTriggerImmediately { .. }
    ));
    h.limit(0, Side::Buy, 99, 1);
    assert_eq!(
        h.rejected(oco(3, Side::Sell, [post_only(99, 5), stop_market(TriggerKind::StopLoss, 95, 5)])),
        RejectReason::PostOnlyWouldTake
    );
    // Cancelling the list by its id cancels both legs.
    h.ok(oco(3, Side::Sell, [post_only(110, 5), stop_market(TriggerKind::StopLoss, 95, 5)]));
    let (list, [a, b]) = list_of_last(&h);
    h.ok(Command::CancelOrderList { user: UserId(3), list: ListRef::Id(list) });
    let done: Vec<u64> = h.done().iter().map(|d| d.0).collect();
    assert_eq!(done, vec![a.0, b.0]);
    assert_eq!(h.balance(3, BTC), (START_BTC, 0));
    assert_eq!(
        h.rejected(Command::CancelOrderList { user: UserId(3), list: ListRef::Id(list) }),
        RejectReason::UnknownOrderList
    );
}

#[test]
fn an_oto_places_its_pending_order_when_the_working_order_fills() {
    let mut h = market_at(4, 100);
    // Buy 3 at 99, then sell them at 120.
    h.ok(oto(
        3,
        (Side::Buy, limit_kind(99, 3, TimeInForce::Gtc)),
        (Side::Sell, limit_kind(120, 3, TimeInForce::Gtc)),
    ));
    let (list, [working, pending]) = list_of_last(&h);
    assert_eq!(h.balance(3, USDT).1, 297, "the working order holds for itself");
    assert_eq!(h.balance(3, BTC).1, 0, "the pending order holds nothing");
    assert_eq!(h.depth(Side::Sell), vec![]);
    // A partial fill releases nothing.
    h.place(2, Side::Sell, market(1));
    assert!(!h.events.iter().any(|e| matches!(e.kind, EventKind::OrderReleased { .. })));
    h.place(2, Side::Sell, market(2));
    assert!(h
        .events
        .iter()
        .any(|e| matches!(e.kind, EventKind::OrderReleased { order, .. } if order == pending)));
    assert!(h.done().contains(&(working.0, DoneReason::Filled, 3, 0)));
    assert_eq!(list_done(&h), vec![list.0]);
    assert_eq!(h.depth(Side::Sell), vec![(120, 3)]);
    assert_eq!(h.balance(3, BTC).1, 30, "placed now, it holds what it sells");
}

#[test]
fn an_oto_pending_order_is_cancelled_with_its_working_order_or_refused_without_funds() {
    let mut h = market_at(4, 100);
    h.ok(oto(
        3,
        (Side::Buy, limit_kind(99, 3, TimeInForce::Gtc)),
        (Side::Sell, limit_kind(120, 3, TimeInForce::Gtc)),
    ));
    let (list, [working, pending]) = list_of_last(&h);
    h.ok(Command::CancelOrder { user: UserId(3), order: OrderRef::Id(pending) });
    assert_eq!(
        h.done(),
        vec![(pending.0, DoneReason::Cancelled, 0, 3), (working.0, DoneReason::Cancelled, 0, 3)]
    );
    assert_eq!(list_done(&h), vec![list.0]);

    // An IOC working order that does not fill completely takes the pending one with it.
    h.limit(1, Side::Sell, 101, 1);
    h.ok(oto(
        3,
        (Side::Buy, limit_kind(101, 2, TimeInForce::Ioc)),
        (Side::Sell, limit_kind(120, 2, TimeInForce::Gtc)),
    ));
    let (_, [_, pending]) = list_of_last(&h);
    assert!(h.done().contains(&(pending.0, DoneReason::Contingent, 0, 2)));

    // User 2 buys 1 lot and then wants to sell 1,000,001 lots it does not have.
    h.limit(1, Side::Sell, 101, 1);
    h.ok(oto(
        2,
        (Side::Buy, limit_kind(101, 1, TimeInForce::Gtc)),
        (Side::Sell, limit_kind(130, 1_000_002, TimeInForce::Gtc)),
    ));
    let (_, [working, pending]) = list_of_last(&h);
    assert!(h.done().contains(&(working.0, DoneReason::Filled, 1, 0)));
    let refused = h.done().into_iter().find(|d| d.0 == pending.0).unwrap();
    assert!(matches!(refused.1, DoneReason::Refused(RejectReason::InsufficientFunds { .. })), "{refused:?}");
}

#[test]
fn cancel_all_cancels_waiting_orders_and_whole_lists() {
    let mut h = market_at(4, 100);
    h.place(3, Side::Sell, stop_market(TriggerKind::StopLoss, 90, 1));
    h.ok(oco(3, Side::Sell, [post_only(110, 5), stop_market(TriggerKind::StopLoss, 95, 5)]));
    h.ok(oto(
        3,
        (Side::Buy, limit_kind(99, 3, TimeInForce::Gtc)),
        (Side::Sell, limit_kind(120, 3, TimeInForce::Gtc)),
    ));
    h.place(
        3,
        Side::Sell,
        OrderKind::Iceberg { price: Ticks(130), qty: Lots(9), visible: Lots(2), tif: TimeInForce::Gtc },
    );
    h.ok(Command::CancelAll { user: UserId(3), market: Some(BTC_USDT) });
    assert_eq!(h.done().len(), 6);
    assert!(h.events.iter().any(|e| matches!(e.kind, EventKind::CancelledAll { count: 6, .. })));
    assert_eq!(list_done(&h).len(), 2);
    assert_eq!(h.balance(3, BTC), (START_BTC, 0));
    assert_eq!(h.balance(3, USDT), (START_USDT, 0));
}

/// A scripted stream through every new kind, with a snapshot taken at each
/// step: restoring and continuing gives the same events and hash as not.
#[test]
fn snapshots_mid_stream_keep_waiting_hidden_and_list_state_exactly() {
    let script: Vec<Command> = {
        let mut h = market_at(5, 100);
        let mut commands = Vec::new();
        let mut push = |c: Command| commands.push(c);
        let _ = &mut h;
        let trailing = Trigger { kind: TriggerKind::StopLoss, stop: None, trailing_bips: 300 };
        push(Command::PlaceOrder(order(
            3,
            Side::Sell,
            OrderKind::StopMarket { trigger: trailing, qty: Lots(2) },
        )));
        push(Command::PlaceOrder(order(3, Side::Sell, stop_market(TriggerKind::StopLoss, 97, 1))));
        push(Command::PlaceOrder(order(4, Side::Buy, stop_limit(TriggerKind::StopLoss, 104, 106, 2))));
        push(Command::PlaceOrder(order(
            0,
            Side::Buy,
            OrderKind::Iceberg { price: Ticks(98), qty: Lots(20), visible: Lots(3), tif: TimeInForce::Gtc },
        )));
        push(oco(4, Side::Sell, [post_only(112, 3), stop_market(TriggerKind::StopLoss, 93, 3)]));
        push(oto(
            1,
            (Side::Buy, limit_kind(99, 2, TimeInForce::Gtc)),
            (Side::Sell, stop_market(TriggerKind::TakeProfit, 115, 2)),
        ));
        for (user, side, price) in [
            (1, Side::Sell, 103),
            (2, Side::Buy, 103),
            (2, Side::Sell, 98),
            (1, Side::Buy, 104),
            (2, Side::Sell, 96),
        ] {
            push(Command::PlaceOrder(order(user, side, limit_kind(price, 4, TimeInForce::Ioc))));
            push(Command::PlaceOrder(order(user, side.opposite(), limit_kind(price, 1, TimeInForce::Gtc))));
        }
        push(Command::PlaceOrder(order(2, Side::Sell, market(30))));
        push(Command::PlaceOrder(order(2, Side::Buy, limit_kind(116, 40, TimeInForce::Ioc))));
        commands
    };
    let mut straight = market_at(5, 100);
    let mut events = Vec::new();
    for command in &script {
        straight.run(*command);
        events.push(straight.events.clone());
    }
    assert!(events.iter().flatten().any(|e| matches!(e.kind, EventKind::OrderTriggered { .. })));
    assert!(
        events.iter().flatten().any(|e| matches!(e.kind, EventKind::OrderRefilled { .. })),
        "{:#?}",
        events
            .iter()
            .flatten()
            .filter(|e| !matches!(e.kind, EventKind::Balance { .. } | EventKind::BookLevel { .. }))
            .collect::<Vec<_>>()
    );
    assert!(events.iter().flatten().any(|e| matches!(e.kind, EventKind::OrderReleased { .. })));
    for cut in 0..script.len() {
        let mut h = market_at(5, 100);
        for command in &script[..cut] {
            h.run(*command);
        }
        let snapshot = h.engine.snapshot();
        let bytes = serde_json::to_vec(&snapshot).unwrap();
        let back: Snapshot = serde_json::from_slice(&bytes).unwrap();
        h.engine = Engine::from_snapshot(back).unwrap();
        for (offset, command) in script[cut..].iter().enumerate() {
            h.run(*command);
            assert_eq!(h.events, events[cut + offset], "after a snapshot at command {cut}");
        }
        assert_eq!(h.engine.state_hash(), straight.engine.state_hash());
    }
}

#[test]
fn no_hold_is_lost_over_a_long_mix() {
    // A deterministic mix of every kind; the harness checks conservation and
    // holds after each command. Checked here: everything closes cleanly.
    let mut h = market_at(6, 1_000);
    let mut seed = 7u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..1_500 {
        for event in &h.events {
            let name = match event.kind {
                EventKind::OrderTriggered { .. } => "triggered",
                EventKind::OrderRefilled { .. } => "refilled",
                EventKind::OrderReleased { .. } => "released",
                EventKind::TrailingStarted { .. } => "trailing",
                EventKind::OrderListDone { .. } => "list done",
                EventKind::OrderDone { reason: DoneReason::Contingent, .. } => "contingent",
                EventKind::Rejected { .. } => "rejected",
                EventKind::Trade { .. } => "trade",
                _ => continue,
            };
            *seen.entry(name).or_insert(0u32) += 1;
        }
        let user = 1 + next(5) as u32;
        let side = if next(2) == 0 { Side::Buy } else { Side::Sell };
        let price = 980 + next(41);
        let qty = 1 + next(6);
        let kind = match next(9) {
            0 => stop_market(
                if next(2) == 0 { TriggerKind::StopLoss } else { TriggerKind::TakeProfit },
                price,
                qty,
            ),
            1 => stop_limit(TriggerKind::StopLoss, price, price, qty),
            2 => OrderKind::Iceberg {
                price: Ticks(price),
                qty: Lots(qty * 3),
                visible: Lots(qty),
                tif: TimeInForce::Gtc,
            },
            3 => OrderKind::StopMarket {
                trigger: Trigger {
                    kind: TriggerKind::StopLoss,
                    stop: None,
                    trailing_bips: 20 + next(100) as u16,
                },
                qty: Lots(qty),
            },
            4 => market(qty),
            _ => limit_kind(price, qty, TimeInForce::Gtc),
        };
        match next(12) {
            0 => {
                h.run(oco(
                    user,
                    side,
                    [
                        post_only(if side == Side::Sell { 1_030 } else { 970 }, qty),
                        stop_market(TriggerKind::StopLoss, price, qty),
                    ],
                ));
            }
            1 => {
                h.run(oto(
                    user,
                    (side, limit_kind(price, qty, TimeInForce::Gtc)),
                    (side.opposite(), limit_kind(price, qty, TimeInForce::Gtc)),
                ));
            }
            2 => {
                h.run(Command::CancelAll { user: UserId(user), market: None });
            }
            _ => {
                h.place(user, side, kind);
            }
        }
    }
    for name in ["triggered", "refilled", "released", "trailing", "list done", "contingent", "trade"] {
        assert!(seen.get(name).copied().unwrap_or(0) >= 5, "too few {name}: {seen:?}");
    }
    for user in 0..6 {
        h.ok(Command::CancelAll { user: UserId(user), market: None });
    }
    assert_eq!(h.engine.open_order_count(), 0);
    for user in 0..6 {
        assert_eq!(h.balance(user, BTC).1, 0);
        assert_eq!(h.balance(user, USDT).1, 0);
    }
}

#[test]
fn an_oto_pending_market_order_trades_when_released() {
    let mut h = market_at(4, 100);
    h.limit(0, Side::Buy, 90, 5);
    // Buy 2 at 101 from user 1, then sell them at market.
    h.limit(1, Side::Sell, 101, 2);
    h.ok(oto(3, (Side::Buy, limit_kind(101, 2, TimeInForce::Gtc)), (Side::Sell, market(2))));
    let (list, [working, pending]) = list_of_last(&h);
    assert!(h.done().contains(&(working.0, DoneReason::Filled, 2, 0)));
    assert!(h.done().contains(&(pending.0, DoneReason::Filled, 2, 0)));
    assert_eq!(list_done(&h), vec![list.0]);
    assert!(h.trades().iter().any(|t| t.1 == pending.0 && t.2 == 90));

    // Resting, the same list waits with its pending market order open.
    h.ok(oto(3, (Side::Buy, limit_kind(95, 2, TimeInForce::Gtc)), (Side::Sell, market(2))));
    let (_, [_, pending]) = list_of_last(&h);
    assert_eq!(h.engine.open_order_count(), 3);
    h.place(2, Side::Sell, market(2));
    assert!(h
        .events
        .iter()
        .any(|e| matches!(e.kind, EventKind::OrderReleased { order, .. } if order == pending)));
}

#[test]
fn an_iceberg_filled_down_to_its_visible_size_may_still_move() {
    let mut h = Harness::btc_usdt(2);
    h.place(
        0,
        Side::Sell,
        OrderKind::Iceberg { price: Ticks(100), qty: Lots(10), visible: Lots(3), tif: TimeInForce::Gtc },
    );
    let iceberg = h.accepted().unwrap();
    h.limit(1, Side::Buy, 100, 8);
    h.ok(Command::Amend(Amend {
        user: UserId(0),
        order: OrderRef::Id(iceberg),
        new_qty: None,
        new_price: Some(Ticks(105)),
    }));
    assert_eq!(h.depth(Side::Sell), vec![(105, 2)]);
}

#[test]
fn damaged_waiting_hidden_and_list_sections_of_a_snapshot_are_refused() {
    let mut h = market_at(4, 100);
    h.place(3, Side::Sell, stop_market(TriggerKind::StopLoss, 90, 2));
    h.place(
        0,
        Side::Buy,
        OrderKind::Iceberg { price: Ticks(95), qty: Lots(9), visible: Lots(2), tif: TimeInForce::Gtc },
    );
    h.ok(oco(3, Side::Sell, [post_only(110, 5), stop_market(TriggerKind::StopLoss, 95, 5)]));
    h.ok(oto(
        1,
        (Side::Buy, limit_kind(94, 2, TimeInForce::Gtc)),
        (Side::Sell, limit_kind(120, 2, TimeInForce::Gtc)),
    ));
    let base = h.engine.snapshot();
    assert!(
        !base.waiting.is_empty()
            && !base.icebergs.is_empty()
            && base.lists.len() == 2
            && base.pending.len() == 1
    );
    Engine::from_snapshot(base.clone()).unwrap();

    let refused = |change: &dyn Fn(&mut Snapshot)| {
        let mut s = base.clone();
        change(&mut s);
        Engine::from_snapshot(s).expect_err("a damaged snapshot loaded")
    };
    assert!(matches!(refused(&|s| s.waiting[0].hold.0 += 1), SnapshotError::BadOrder { .. }));
    assert!(matches!(refused(&|s| s.waiting[0].trigger.stop = None), SnapshotError::BadOrder { .. }));
    assert!(matches!(refused(&|s| s.waiting[0].qty = Lots(0)), SnapshotError::BadOrder { .. }));
    assert!(matches!(refused(&|s| s.waiting[0].id = OrderId(u64::MAX)), SnapshotError::BadOrder { .. }));
    assert!(matches!(refused(&|s| s.icebergs[0].visible = Lots(0)), SnapshotError::BadOrder { .. }));
    assert!(matches!(refused(&|s| s.icebergs[0].hidden.0 += 1), SnapshotError::LockedMismatch { .. }));
    assert!(matches!(refused(&|s| s.lists[0].held.0 += 1), SnapshotError::BadList { .. }));
    assert!(matches!(
        refused(&|s| s.lists[0].orders[1] = s.lists[0].orders[0]),
        SnapshotError::BadList { .. }
    ));
    assert!(matches!(
        refused(&|s| {
            s.lists.remove(1);
        }),
        SnapshotError::BadOrder { .. }
    ));
    assert!(matches!(refused(&|s| s.last_prices.clear()), SnapshotError::BadMarket { .. }));
    assert!(matches!(refused(&|s| s.last_prices[0] = Some(Ticks(0))), SnapshotError::BadMarket { .. }));
}

#[test]
fn thousands_of_tracking_orders_fire_exactly_where_each_would_alone() {
    // 4,000 trailing orders (buys and sells, deltas from 10 to 2,000 bips,
    // some tracking from placement, some from a stop price) placed while
    // the price walks, so their best prices differ; after each trade the
    // orders it fires are exactly those a brute-force evaluation of every
    // order on its own fires, and every best price matches.
    #[derive(Clone, Copy)]
    enum State {
        Waiting { stop: u64, rises: bool },
        Tracking { best: u64 },
    }
    struct Model {
        id: u64,
        side: Side,
        bips: u16,
        state: State,
    }
    let mut h = market_at(13, 40_000);
    let mut seed = 7u64;
    let mut random = |n: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    let mut model: Vec<Model> = Vec::new();
    let mut price = 40_000u64;
    let mut seq = h.seq;
    let mut events = Vec::new();
    let mut fires = 0usize;
    for round in 0..200 {
        // Twenty placements, applied without the harness's full checks
        // after each (which would make the test quadratic); the trade
        // below checks everything.
        for n in 0..20u64 {
            let side = if random(2) == 0 { Side::Buy } else { Side::Sell };
            let bips = [10, 25, 50, 100, 200, 500, 2_000][random(7) as usize];
            let with_stop = random(4) == 0;
            // A stop beyond the price, so it waits; StopLoss sells wait for
            // a fall, buys for a rise. Fired orders rest far from the
            // market (a sell at 1,000,000, a buy at 1) and trade no more.
            let (stop, limit) = match side {
                Side::Sell => (price - 1 - random(100), 1_000_000),
                Side::Buy => (price + 1 + random(100), 1),
            };
            let trigger = Trigger {
                kind: TriggerKind::StopLoss,
                stop: with_stop.then_some(Ticks(stop)),
                trailing_bips: bips,
            };
            let kind = OrderKind::StopLimit {
                trigger,
                price: Ticks(limit),
                qty: Lots(1),
                tif: TimeInForce::Gtc,
                visible: Lots(0),
            };
            seq += 1;
            events.clear();
            let user = 3 + ((round * 20 + n) % 10) as u32;
            let command = StampedCommand {
                seq,
                timestamp_ns: seq,
                command: Command::PlaceOrder(order(user, side, kind)),
            };
            h.engine.apply(&command, &mut events).unwrap();
            let id = events
                .iter()
                .find_map(|e| match e.kind {
                    EventKind::OrderAccepted { order, .. } => Some(order.0),
                    _ => None,
                })
                .expect("a trailing order is accepted");
            let state = match with_stop {
                true => State::Waiting { stop, rises: side == Side::Buy },
                false => State::Tracking { best: price },
            };
            model.push(Model { id, side, bips, state });
        }
        h.seq = seq;
        price = (price + random(201)).saturating_sub(100);
        h.limit(1, Side::Sell, price, 1);
        h.limit(2, Side::Buy, price, 1);
        seq = h.seq;
        let mut expected = Vec::new();
        model.retain_mut(|m| match m.state {
            State::Waiting { stop, rises } => {
                if (rises && price >= stop) || (!rises && price <= stop) {
                    m.state = State::Tracking { best: price };
                }
                true
            }
            State::Tracking { best } => {
                let (fired, best) = trail_alone(m.side, m.bips, best, price);
                m.state = State::Tracking { best };
                if fired {
                    expected.push((m.id, price));
                }
                !fired
            }
        });
        assert_eq!(triggered(&h), expected, "round {round}, trade at {price}");
        fires += expected.len();
        let snapshot = h.engine.snapshot();
        let bests: Vec<(u64, Option<u64>)> =
            snapshot.waiting.iter().map(|w| (w.id.0, w.tracking.flatten().map(|t| t.0))).collect();
        let want: Vec<(u64, Option<u64>)> = model
            .iter()
            .map(|m| match m.state {
                State::Waiting { .. } => (m.id, None),
                State::Tracking { best } => (m.id, Some(best)),
            })
            .collect();
        assert_eq!(bests, want, "round {round}");
    }
    assert!(model.len() > 1_000, "most orders still track: {}", model.len());
    assert!(fires > 100, "the walk fires orders: {fires}");
}

/// The firing rule of docs/engine.md, for one order on its own: a sell
/// tracks the highest price and fires on a fall of `bips` basis points
/// from it, a buy tracks the lowest and fires on a rise.
fn trail_alone(side: Side, bips: u16, best: u64, price: u64) -> (bool, u64) {
    let (p, b, d) = (u128::from(price), u128::from(best), u128::from(bips));
    match side {
        Side::Sell if price > best => (false, price),
        Side::Sell => (p * 10_000 <= b * (10_000 - d), best),
        Side::Buy if price < best => (false, price),
        Side::Buy => (p * 10_000 >= b * (10_000 + d), best),
    }
}
