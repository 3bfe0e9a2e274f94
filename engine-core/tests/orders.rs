//! One test per order type, time in force, self-trade prevention mode,
//! amend rule and rejection reason. The harness checks every invariant
//! (conservation, locks, uncrossed books, snapshot round trip) after each
//! command, and that a rejection changed nothing.

mod harness;

use engine_core::*;
use harness::*;

const START_BTC: u64 = 10_000_000;
const START_USDT: u64 = 1_000_000_000_000;

#[test]
fn resting_orders_lock_exactly_what_they_can_spend() {
    let mut h = Harness::btc_usdt(2);
    h.limit(0, Side::Buy, 100, 7);
    assert_eq!(h.balance(0, USDT), (START_USDT - 700, 700));
    h.limit(1, Side::Sell, 120, 3);
    assert_eq!(h.balance(1, BTC), (START_BTC - 30, 30));
    assert_eq!(h.depth(Side::Buy), vec![(100, 7)]);
    assert_eq!(h.depth(Side::Sell), vec![(120, 3)]);
}

#[test]
fn trades_at_the_makers_price_with_fees_on_what_each_side_receives() {
    let mut h = Harness::btc_usdt(2);
    let maker = h.limit(0, Side::Sell, 100, 10);
    let taker = h.limit(1, Side::Buy, 105, 4);
    assert_eq!(h.trades(), vec![(maker.0, taker.0, 100, 4)]);
    let trade = h.events.iter().find(|e| matches!(e.kind, EventKind::Trade { .. })).unwrap();
    let EventKind::Trade { maker_fee, taker_fee, maker_remaining, taker_remaining, taker_side, .. } =
        trade.kind
    else {
        unreachable!()
    };
    // 4 lots = 40 sats for 400 units of quote; maker 0.1% of 400 rounds up
    // to 1, taker 0.2% of 40 rounds up to 1.
    assert_eq!((maker_fee, taker_fee), (Units(1), Units(1)));
    assert_eq!((maker_remaining, taker_remaining, taker_side), (Lots(6), Lots(0), Side::Buy));
    assert_eq!(h.balance(0, BTC), (START_BTC - 100, 60));
    assert_eq!(h.balance(0, USDT), (START_USDT + 399, 0));
    // The buyer paid the maker's price, not its limit; nothing stays locked.
    assert_eq!(h.balance(1, USDT), (START_USDT - 400, 0));
    assert_eq!(h.balance(1, BTC), (START_BTC + 39, 0));
    assert_eq!(h.engine.asset_totals(BTC).unwrap().fees, Units(1));
    assert_eq!(h.engine.asset_totals(USDT).unwrap().fees, Units(1));
    assert_eq!(h.done(), vec![(taker.0, DoneReason::Filled, 4, 0)]);
    assert_eq!(h.depth(Side::Sell), vec![(100, 6)]);
}

#[test]
fn price_time_priority_better_price_first_then_earlier_first() {
    let mut h = Harness::btc_usdt(4);
    let late_at_100 = {
        let first = h.limit(0, Side::Sell, 100, 2);
        let cheaper = h.limit(1, Side::Sell, 99, 2);
        let second = h.limit(2, Side::Sell, 100, 2);
        h.limit(3, Side::Buy, 100, 5);
        assert_eq!(h.trades(), vec![(cheaper.0, 4, 99, 2), (first.0, 4, 100, 2), (second.0, 4, 100, 1)]);
        second
    };
    assert_eq!(h.depth(Side::Sell), vec![(100, 1)]);
    assert_eq!(h.done().iter().map(|d| d.0).collect::<Vec<_>>(), vec![2, 1, 4]);
    let _ = late_at_100;
}

#[test]
fn partial_fill_rests_the_remainder_at_the_limit() {
    let mut h = Harness::btc_usdt(2);
    h.limit(0, Side::Sell, 100, 3);
    let taker = h.limit(1, Side::Buy, 101, 10);
    assert_eq!(h.trades().len(), 1);
    assert!(h.done().iter().all(|d| d.0 != taker.0), "taker rests");
    assert_eq!(h.depth(Side::Buy), vec![(101, 7)]);
    assert_eq!(h.depth(Side::Sell), vec![]);
    assert_eq!(h.balance(1, USDT), (START_USDT - 300 - 707, 707));
}

#[test]
fn ioc_trades_what_it_can_and_expires_the_rest() {
    let mut h = Harness::btc_usdt(2);
    h.limit(0, Side::Sell, 100, 3);
    h.place(1, Side::Buy, limit_kind(100, 5, TimeInForce::Ioc));
    assert_eq!(h.trades().len(), 1);
    assert_eq!(h.done(), vec![(1, DoneReason::Filled, 3, 0), (2, DoneReason::Expired, 3, 2)]);
    assert!(h.depth(Side::Buy).is_empty());
    assert_eq!(h.balance(1, USDT), (START_USDT - 300, 0));
}

#[test]
fn fok_fills_completely_or_not_at_all() {
    let mut h = Harness::btc_usdt(3);
    h.limit(0, Side::Sell, 100, 3);
    h.limit(1, Side::Sell, 101, 3);
    h.place(2, Side::Buy, limit_kind(101, 7, TimeInForce::Fok));
    assert!(h.trades().is_empty());
    assert_eq!(h.done(), vec![(3, DoneReason::Expired, 0, 7)]);
    assert_eq!(h.depth(Side::Sell), vec![(100, 3), (101, 3)]);
    // The limit bounds what counts as fillable.
    h.place(2, Side::Buy, limit_kind(100, 4, TimeInForce::Fok));
    assert!(h.trades().is_empty());
    h.place(2, Side::Buy, limit_kind(101, 6, TimeInForce::Fok));
    assert_eq!(h.trades().len(), 2);
    assert_eq!(h.done().last(), Some(&(5, DoneReason::Filled, 6, 0)));
    assert!(h.depth(Side::Sell).is_empty());
}

#[test]
fn fok_counts_only_liquidity_self_trade_prevention_lets_it_take() {
    let mut h = Harness::btc_usdt(2);
    h.limit(1, Side::Sell, 100, 3); // the taker's own, first in the queue
    h.limit(0, Side::Sell, 100, 3);
    let mut fok = order(1, Side::Buy, limit_kind(100, 4, TimeInForce::Fok));
    fok.stp = SelfTradePrevention::CancelMaker;
    h.run(Command::PlaceOrder(fok));
    assert!(h.trades().is_empty(), "only 3 lots are not the user's own");
    assert_eq!(h.depth(Side::Sell), vec![(100, 6)], "nothing is cancelled when FOK fails");
    fok.kind = limit_kind(100, 3, TimeInForce::Fok);
    h.run(Command::PlaceOrder(fok));
    assert_eq!(h.trades().len(), 1);
    assert!(h.done().contains(&(1, DoneReason::SelfTrade, 0, 3)));
    assert!(h.depth(Side::Sell).is_empty());
}

#[test]
fn post_only_rests_or_is_rejected_never_repriced() {
    let mut h = Harness::btc_usdt(2);
    h.limit(0, Side::Sell, 100, 3);
    let reason =
        h.rejected(Command::PlaceOrder(order(1, Side::Buy, limit_kind(100, 1, TimeInForce::PostOnly))));
    assert_eq!(reason, RejectReason::PostOnlyWouldTake);
    h.place(1, Side::Buy, limit_kind(99, 1, TimeInForce::PostOnly));
    assert!(h.accepted().is_some());
    assert_eq!(h.depth(Side::Buy), vec![(99, 1)]);
}

#[test]
fn market_order_sweeps_levels_and_never_rests() {
    let mut h = Harness::btc_usdt(2);
    h.limit(0, Side::Buy, 100, 2);
    h.limit(0, Side::Buy, 98, 2);
    h.place(1, Side::Sell, OrderKind::Market { qty: Lots(5) });
    assert_eq!(h.trades(), vec![(1, 3, 100, 2), (2, 3, 98, 2)]);
    assert_eq!(h.done().last(), Some(&(3, DoneReason::Expired, 4, 1)));
    assert!(h.depth(Side::Sell).is_empty());
    assert_eq!(h.balance(1, BTC), (START_BTC - 40, 0));
}

#[test]
fn market_order_on_an_empty_book_expires() {
    let mut h = Harness::btc_usdt(1);
    h.place(0, Side::Buy, OrderKind::Market { qty: Lots(5) });
    assert_eq!(h.done(), vec![(1, DoneReason::Expired, 0, 5)]);
}

#[test]
fn market_buy_by_quantity_stops_when_funds_run_out() {
    let mut h = Harness::btc_usdt(1);
    h.ok(Command::CreateUser);
    h.ok(Command::Deposit { user: UserId(1), asset: USDT, amount: Units(250) });
    h.limit(0, Side::Sell, 100, 5);
    h.place(1, Side::Buy, OrderKind::Market { qty: Lots(5) });
    assert_eq!(h.trades(), vec![(1, 2, 100, 2)]);
    assert_eq!(h.done(), vec![(2, DoneReason::FundsExhausted, 2, 3)]);
    assert_eq!(h.balance(1, USDT), (50, 0));
}

#[test]
fn market_buy_by_quote_spends_at_most_the_amount() {
    let mut h = Harness::btc_usdt(2);
    h.limit(0, Side::Sell, 100, 2);
    h.limit(0, Side::Sell, 110, 5);
    h.place(1, Side::Buy, OrderKind::MarketByQuote { amount: Units(500) });
    // 2 lots at 100 (200), then 2 lots at 110 (220): 420 spent, 80 cannot buy a lot.
    assert_eq!(h.trades(), vec![(1, 3, 100, 2), (2, 3, 110, 2)]);
    assert_eq!(h.done(), vec![(1, DoneReason::Filled, 2, 0), (3, DoneReason::Filled, 4, 0)]);
    assert_eq!(h.balance(1, USDT), (START_USDT - 420, 0));
    let reason = h.rejected(Command::PlaceOrder(order(
        1,
        Side::Buy,
        OrderKind::MarketByQuote { amount: Units(START_USDT) },
    )));
    assert!(matches!(reason, RejectReason::InsufficientFunds { asset: USDT, .. }));
}

#[test]
fn market_buy_by_quote_that_spends_its_amount_as_the_book_runs_out_is_filled() {
    // Found by an outside client: SELL 0.0006 @30000.11 and 0.0006 @30000.12,
    // then BUY MARKET quoteOrderQty=36.000138, the exact cost of both.
    let mut h = Harness::btc_usdt(2);
    h.limit(0, Side::Sell, 3_000_011, 6);
    h.limit(0, Side::Sell, 3_000_012, 6);
    let amount = 6 * 3_000_011 + 6 * 3_000_012;
    h.place(1, Side::Buy, OrderKind::MarketByQuote { amount: Units(amount) });
    assert_eq!(h.trades(), vec![(1, 3, 3_000_011, 6), (2, 3, 3_000_012, 6)]);
    assert_eq!(
        h.done(),
        vec![(1, DoneReason::Filled, 6, 0), (2, DoneReason::Filled, 6, 0), (3, DoneReason::Filled, 12, 0)]
    );
    // Less than a lot left over when the book runs out: filled too.
    h.limit(0, Side::Sell, 100, 2);
    h.place(1, Side::Buy, OrderKind::MarketByQuote { amount: Units(250) });
    assert_eq!(h.done(), vec![(4, DoneReason::Filled, 2, 0), (5, DoneReason::Filled, 2, 0)]);
    // More than a lot left over when the book runs out: expired.
    h.limit(0, Side::Sell, 100, 2);
    h.place(1, Side::Buy, OrderKind::MarketByQuote { amount: Units(300) });
    assert_eq!(h.done(), vec![(6, DoneReason::Filled, 2, 0), (7, DoneReason::Expired, 2, 0)]);
    // Nothing to buy at all: expired, nothing spent.
    h.place(1, Side::Buy, OrderKind::MarketByQuote { amount: Units(300) });
    assert_eq!(h.done(), vec![(8, DoneReason::Expired, 0, 0)]);
}

#[test]
fn market_sell_by_quote_sells_base_until_the_amount_is_reached() {
    let mut h = Harness::btc_usdt(2);
    h.limit(0, Side::Buy, 110, 2);
    h.limit(0, Side::Buy, 100, 5);
    // 2 lots at 110 (220), then 2 lots at 100 (200): 420 received; a third
    // lot at 100 would pass 500.
    let base_before = h.balance(1, BTC).0;
    let quote_before = h.balance(1, USDT).0;
    h.place(1, Side::Sell, OrderKind::MarketByQuote { amount: Units(500) });
    assert_eq!(h.trades(), vec![(1, 3, 110, 2), (2, 3, 100, 2)]);
    assert_eq!(h.done(), vec![(1, DoneReason::Filled, 2, 0), (3, DoneReason::Filled, 4, 0)]);
    assert_eq!(h.balance(1, BTC), (base_before - 40, 0));
    // Taker fee 0.2% of each trade's 220 and 200, each rounded up.
    assert_eq!(h.balance(1, USDT), (quote_before + 420 - 2, 0));

    // Exactly the amount: filled. The book running out first: expired.
    h.place(1, Side::Sell, OrderKind::MarketByQuote { amount: Units(300) });
    assert_eq!(h.done(), vec![(2, DoneReason::Filled, 5, 0), (4, DoneReason::Filled, 3, 0)]);
    h.place(1, Side::Sell, OrderKind::MarketByQuote { amount: Units(1_000) });
    assert_eq!(h.done(), vec![(5, DoneReason::Expired, 0, 0)]);

    // A seller with less base than the amount needs sells all of it.
    h.ok(Command::CreateUser);
    h.ok(Command::Deposit { user: UserId(2), asset: BTC, amount: Units(35) });
    h.limit(0, Side::Buy, 100, 10);
    h.place(2, Side::Sell, OrderKind::MarketByQuote { amount: Units(1_000) });
    assert_eq!(h.trades(), vec![(6, 7, 100, 3)]);
    assert_eq!(h.done(), vec![(7, DoneReason::FundsExhausted, 3, 0)]);
    assert_eq!(h.balance(2, BTC), (5, 0));
    // Less than a lot of base: refused.
    let reason = h.rejected(Command::PlaceOrder(order(
        2,
        Side::Sell,
        OrderKind::MarketByQuote { amount: Units(100) },
    )));
    assert!(matches!(reason, RejectReason::InsufficientFunds { asset: BTC, .. }), "{reason:?}");
}

#[test]
fn limits_change_only_by_a_journaled_command() {
    let mut h = Harness::btc_usdt(1);
    let before = h.engine.state_hash();
    let limits = EngineLimits { open_orders_per_user_max: 1, ..EngineLimits::default() };
    let events = h.ok(Command::SetLimits { limits }).to_vec();
    assert_eq!(events.len(), 1);
    assert!(matches!(events[0].kind, EventKind::LimitsChanged { limits: l } if l == limits));
    assert_eq!(h.engine.limits(), limits);
    assert_ne!(h.engine.state_hash(), before, "the state hash covers the limits");
    h.limit(0, Side::Buy, 100, 1);
    let reason = h.rejected(Command::PlaceOrder(order(0, Side::Buy, limit_kind(100, 1, TimeInForce::Gtc))));
    assert_eq!(reason, RejectReason::OpenOrderLimit { limit: 1 });
    // Lowered below what a user holds: what is there stays, and a snapshot
    // of that state loads.
    h.ok(Command::CreateApiKey {
        user: UserId(0),
        key: ApiKey::new("key0000000000000001").unwrap(),
        secret: ApiSecret::new("secret0000000000001").unwrap(),
    });
    h.ok(Command::CreateApiKey {
        user: UserId(0),
        key: ApiKey::new("key0000000000000002").unwrap(),
        secret: ApiSecret::new("secret0000000000002").unwrap(),
    });
    h.ok(Command::SetLimits { limits: EngineLimits { api_keys_per_user_max: 1, ..limits } });
    let restored = Engine::from_snapshot(h.engine.snapshot()).unwrap();
    assert_eq!(restored.state_hash(), h.engine.state_hash());
    assert_eq!(restored.api_keys().len(), 2);
}

fn self_trade_setup(stp: SelfTradePrevention) -> Harness {
    let mut h = Harness::btc_usdt(2);
    h.limit(1, Side::Sell, 99, 1); // order 1, another user, best price
    h.limit(0, Side::Sell, 100, 2); // order 2, the taker's own
    h.limit(1, Side::Sell, 100, 2); // order 3, another user behind it
    let mut taker = order(0, Side::Buy, limit_kind(100, 4, TimeInForce::Gtc));
    taker.stp = stp;
    h.run(Command::PlaceOrder(taker));
    h
}

#[test]
fn stp_cancel_taker_stops_at_the_users_own_order() {
    let h = self_trade_setup(SelfTradePrevention::CancelTaker);
    assert_eq!(h.trades(), vec![(1, 4, 99, 1)]);
    assert_eq!(h.done(), vec![(1, DoneReason::Filled, 1, 0), (4, DoneReason::SelfTrade, 1, 3)]);
    assert_eq!(h.depth(Side::Sell), vec![(100, 4)]);
    assert!(h.depth(Side::Buy).is_empty(), "the taker's remainder does not rest");
}

#[test]
fn stp_cancel_maker_cancels_the_resting_order_and_goes_on() {
    let h = self_trade_setup(SelfTradePrevention::CancelMaker);
    assert_eq!(h.trades(), vec![(1, 4, 99, 1), (3, 4, 100, 2)]);
    assert!(h.done().contains(&(2, DoneReason::SelfTrade, 0, 2)));
    assert_eq!(h.depth(Side::Buy), vec![(100, 1)], "the taker's remainder rests");
    assert!(h.depth(Side::Sell).is_empty());
}

#[test]
fn stp_cancel_both_cancels_maker_and_taker() {
    let h = self_trade_setup(SelfTradePrevention::CancelBoth);
    assert_eq!(h.trades(), vec![(1, 4, 99, 1)]);
    assert!(h.done().contains(&(2, DoneReason::SelfTrade, 0, 2)));
    assert!(h.done().contains(&(4, DoneReason::SelfTrade, 1, 3)));
    assert_eq!(h.depth(Side::Sell), vec![(100, 2)]);
    assert!(h.depth(Side::Buy).is_empty());
}

#[test]
fn stp_allow_trades_with_oneself_and_pays_both_fees() {
    let h = self_trade_setup(SelfTradePrevention::Allow);
    assert_eq!(h.trades(), vec![(1, 4, 99, 1), (2, 4, 100, 2), (3, 4, 100, 1)]);
    assert_eq!(h.depth(Side::Sell), vec![(100, 1)]);
}

#[test]
fn amend_down_keeps_priority_and_unlocks_the_difference() {
    let mut h = Harness::btc_usdt(3);
    let first = h.limit(0, Side::Buy, 100, 5);
    let second = h.limit(1, Side::Buy, 100, 5);
    h.ok(Command::Amend(Amend {
        user: UserId(0),
        order: OrderRef::Id(first),
        new_qty: Some(Lots(2)),
        new_price: None,
    }));
    assert!(h.events.iter().any(|e| matches!(e.kind, EventKind::OrderAmended { priority_kept: true, .. })));
    assert_eq!(h.balance(0, USDT), (START_USDT - 200, 200));
    assert_eq!(h.depth(Side::Buy), vec![(100, 7)]);
    h.limit(2, Side::Sell, 100, 3);
    assert_eq!(h.trades(), vec![(first.0, 3, 100, 2), (second.0, 3, 100, 1)]);
}

#[test]
fn amend_up_goes_to_the_back_of_the_queue() {
    let mut h = Harness::btc_usdt(3);
    let first = h.limit(0, Side::Buy, 100, 2);
    let second = h.limit(1, Side::Buy, 100, 2);
    h.ok(Command::Amend(Amend {
        user: UserId(0),
        order: OrderRef::Id(first),
        new_qty: Some(Lots(3)),
        new_price: None,
    }));
    assert!(h.events.iter().any(|e| matches!(e.kind, EventKind::OrderAmended { priority_kept: false, .. })));
    assert_eq!(h.balance(0, USDT), (START_USDT - 300, 300));
    h.limit(2, Side::Sell, 100, 3);
    assert_eq!(h.trades(), vec![(second.0, 3, 100, 2), (first.0, 3, 100, 1)]);
}

#[test]
fn amend_to_a_new_price_loses_priority_and_may_trade() {
    let mut h = Harness::btc_usdt(3);
    let bid = h.limit(0, Side::Buy, 98, 4);
    h.limit(1, Side::Sell, 100, 1);
    h.ok(Command::Amend(Amend {
        user: UserId(0),
        order: OrderRef::Id(bid),
        new_qty: None,
        new_price: Some(Ticks(101)),
    }));
    assert_eq!(h.trades(), vec![(2, bid.0, 100, 1)]);
    assert_eq!(h.depth(Side::Buy), vec![(101, 3)]);
    assert_eq!(h.balance(0, USDT), (START_USDT - 100 - 303, 303));
    // The order keeps its id and its fill count.
    h.limit(2, Side::Sell, 101, 3);
    assert_eq!(h.done().first(), Some(&(bid.0, DoneReason::Filled, 4, 0)));
}

#[test]
fn amend_rejections_change_nothing() {
    let mut h = Harness::btc_usdt(2);
    let bid = h.limit(0, Side::Buy, 98, 4);
    h.limit(1, Side::Sell, 100, 1);
    let amend = |qty: Option<u64>, price: Option<u64>| {
        Command::Amend(Amend {
            user: UserId(0),
            order: OrderRef::Id(bid),
            new_qty: qty.map(Lots),
            new_price: price.map(Ticks),
        })
    };
    assert_eq!(h.rejected(amend(Some(4), Some(98))), RejectReason::AmendNoChange);
    assert_eq!(h.rejected(amend(Some(0), None)), RejectReason::ZeroQuantity);
    assert_eq!(h.rejected(amend(None, Some(0))), RejectReason::ZeroPrice);
    assert_eq!(h.rejected(amend(Some(u64::MAX), None)), RejectReason::Overflow);
    assert!(matches!(h.rejected(amend(Some(START_USDT), None)), RejectReason::InsufficientFunds { .. }));
    let not_mine = Command::Amend(Amend {
        user: UserId(1),
        order: OrderRef::Id(bid),
        new_qty: Some(Lots(1)),
        new_price: None,
    });
    assert_eq!(h.rejected(not_mine), RejectReason::UnknownOrder);

    let post_only = h.place(0, Side::Buy, limit_kind(97, 1, TimeInForce::PostOnly)).to_vec();
    let post_only = post_only.iter().find_map(|e| match e.kind {
        EventKind::OrderAccepted { order, .. } => Some(order),
        _ => None,
    });
    let cross = Command::Amend(Amend {
        user: UserId(0),
        order: OrderRef::Id(post_only.unwrap()),
        new_qty: None,
        new_price: Some(Ticks(100)),
    });
    assert_eq!(h.rejected(cross), RejectReason::PostOnlyWouldTake);
}

#[test]
fn cancel_only_market_accepts_cancels_and_amends_down_only() {
    let mut h = Harness::btc_usdt(1);
    let bid = h.limit(0, Side::Buy, 98, 4);
    h.ok(Command::SetMarketStatus { market: BTC_USDT, status: MarketStatus::CancelOnly });
    let reason = h.rejected(Command::PlaceOrder(order(0, Side::Buy, limit_kind(98, 1, TimeInForce::Gtc))));
    assert_eq!(reason, RejectReason::MarketNotOpen { market: BTC_USDT, status: MarketStatus::CancelOnly });
    let up = Command::Amend(Amend {
        user: UserId(0),
        order: OrderRef::Id(bid),
        new_qty: Some(Lots(5)),
        new_price: None,
    });
    assert!(matches!(h.rejected(up), RejectReason::MarketNotOpen { .. }));
    h.ok(Command::Amend(Amend {
        user: UserId(0),
        order: OrderRef::Id(bid),
        new_qty: Some(Lots(3)),
        new_price: None,
    }));
    h.ok(Command::CancelOrder { user: UserId(0), order: OrderRef::Id(bid) });
    assert_eq!(h.done(), vec![(bid.0, DoneReason::Cancelled, 0, 3)]);
}

#[test]
fn halted_market_refuses_even_cancels() {
    let mut h = Harness::btc_usdt(1);
    let bid = h.limit(0, Side::Buy, 98, 4);
    h.ok(Command::SetMarketStatus { market: BTC_USDT, status: MarketStatus::Halted });
    let reason = h.rejected(Command::CancelOrder { user: UserId(0), order: OrderRef::Id(bid) });
    assert_eq!(reason, RejectReason::MarketHalted { market: BTC_USDT });
    let reason = h.rejected(Command::CancelAll { user: UserId(0), market: Some(BTC_USDT) });
    assert_eq!(reason, RejectReason::MarketHalted { market: BTC_USDT });
    // Cancel-all across markets skips the halted one.
    h.ok(Command::CancelAll { user: UserId(0), market: None });
    assert!(h.events.iter().any(|e| matches!(e.kind, EventKind::CancelledAll { count: 0, .. })));
    h.ok(Command::SetMarketStatus { market: BTC_USDT, status: MarketStatus::Open });
    h.ok(Command::CancelOrder { user: UserId(0), order: OrderRef::Id(bid) });
}

#[test]
fn cancel_by_client_order_id_and_reuse_of_the_id_after() {
    let mut h = Harness::btc_usdt(2);
    let cid = ClientOrderId::new("quote-7").unwrap();
    let mut new = order(0, Side::Sell, limit_kind(110, 2, TimeInForce::Gtc));
    new.client_order_id = Some(cid);
    h.ok(Command::PlaceOrder(new));
    assert_eq!(h.rejected(Command::PlaceOrder(new)), RejectReason::DuplicateClientOrderId(cid));
    // Another user may use the same client order id.
    let mut other = new;
    other.user = UserId(1);
    h.ok(Command::PlaceOrder(other));
    assert_eq!(
        h.rejected(Command::CancelOrder { user: UserId(1), order: OrderRef::Id(OrderId(1)) }),
        RejectReason::UnknownOrder
    );
    h.ok(Command::CancelOrder { user: UserId(0), order: OrderRef::Client(cid) });
    assert_eq!(h.done(), vec![(1, DoneReason::Cancelled, 0, 2)]);
    assert_eq!(
        h.rejected(Command::CancelOrder { user: UserId(0), order: OrderRef::Client(cid) }),
        RejectReason::UnknownOrder
    );
    h.ok(Command::PlaceOrder(new));
}

#[test]
fn cancel_all_in_one_market_or_all_markets_oldest_first() {
    let mut h = Harness::btc_usdt(1);
    h.ok(Command::CreateAsset { symbol: Symbol::new("ETH").unwrap(), decimals: 8 });
    let mut eth_rules = h.rules();
    eth_rules.base = ETH;
    h.ok(Command::CreateMarket { rules: eth_rules, status: MarketStatus::Open });
    h.limit(0, Side::Buy, 90, 1);
    let mut eth_bid = order(0, Side::Buy, limit_kind(50, 1, TimeInForce::Gtc));
    eth_bid.market = MarketId(1);
    h.ok(Command::PlaceOrder(eth_bid));
    h.limit(0, Side::Buy, 91, 1);
    h.ok(Command::CancelAll { user: UserId(0), market: Some(BTC_USDT) });
    assert_eq!(h.done().iter().map(|d| d.0).collect::<Vec<_>>(), vec![1, 3]);
    assert!(h.events.iter().any(|e| matches!(e.kind, EventKind::CancelledAll { count: 2, .. })));
    h.ok(Command::CancelAll { user: UserId(0), market: None });
    assert_eq!(h.done().iter().map(|d| d.0).collect::<Vec<_>>(), vec![2]);
    assert_eq!(h.balance(0, USDT), (START_USDT, 0));
}

#[test]
fn open_order_limit_per_user_and_engine_capacity() {
    let limits = EngineLimits { open_orders_per_user_max: 2, orders_max: 3, ..EngineLimits::default() };
    let mut h = Harness::with_limits(limits);
    let rules = Harness::new().rules();
    h.ok(Command::CreateAsset { symbol: Symbol::new("BTC").unwrap(), decimals: 8 });
    h.ok(Command::CreateAsset { symbol: Symbol::new("USDT").unwrap(), decimals: 6 });
    h.ok(Command::CreateMarket { rules, status: MarketStatus::Open });
    for user in 0..2 {
        h.ok(Command::CreateUser);
        h.ok(Command::Deposit { user: UserId(user), asset: USDT, amount: Units(1_000_000) });
    }
    h.limit(0, Side::Buy, 10, 1);
    h.limit(0, Side::Buy, 11, 1);
    let third = Command::PlaceOrder(order(0, Side::Buy, limit_kind(12, 1, TimeInForce::Gtc)));
    assert_eq!(h.rejected(third), RejectReason::OpenOrderLimit { limit: 2 });
    // IOC never rests, so the limit does not apply to it.
    h.ok(Command::PlaceOrder(order(0, Side::Buy, limit_kind(12, 1, TimeInForce::Ioc))));
    h.limit(1, Side::Buy, 10, 1);
    let fourth = Command::PlaceOrder(order(1, Side::Buy, limit_kind(10, 1, TimeInForce::Gtc)));
    assert_eq!(h.rejected(fourth), RejectReason::EngineOrderCapacity { limit: 3 });
}

#[test]
fn reference_data_rejections() {
    let mut h = Harness::btc_usdt(1);
    let btc = Symbol::new("BTC").unwrap();
    assert_eq!(
        h.rejected(Command::CreateAsset { symbol: btc, decimals: 8 }),
        RejectReason::DuplicateAssetSymbol(btc)
    );
    let eth = Symbol::new("ETH").unwrap();
    assert_eq!(
        h.rejected(Command::CreateAsset { symbol: eth, decimals: 19 }),
        RejectReason::AssetDecimalsTooLarge { decimals: 19, max: 18 }
    );
    let rules = h.rules();
    let market = |rules: MarketRules| Command::CreateMarket { rules, status: MarketStatus::Open };
    assert_eq!(h.rejected(market(rules)), RejectReason::DuplicateMarket { existing: BTC_USDT });
    assert_eq!(h.rejected(market(MarketRules { quote: BTC, ..rules })), RejectReason::MarketAssetsEqual);
    assert_eq!(
        h.rejected(market(MarketRules { quote: AssetId(9), ..rules })),
        RejectReason::UnknownAsset(AssetId(9))
    );
    h.ok(Command::CreateAsset { symbol: eth, decimals: 18 });
    let eth_usdt = MarketRules { base: ETH, ..rules };
    assert_eq!(
        h.rejected(market(MarketRules { base_units_per_lot: 0, ..eth_usdt })),
        RejectReason::ZeroLotSize
    );
    assert_eq!(
        h.rejected(market(MarketRules { quote_units_per_tick: 0, ..eth_usdt })),
        RejectReason::ZeroTickSize
    );
    assert_eq!(
        h.rejected(market(MarketRules { taker_fee_ppm: FEE_PPM_MAX + 1, ..eth_usdt })),
        RejectReason::FeeRateTooHigh { fee_ppm: FEE_PPM_MAX + 1, max_ppm: FEE_PPM_MAX }
    );
    assert_eq!(
        h.rejected(Command::SetMarketFees { market: BTC_USDT, maker_fee_ppm: 0, taker_fee_ppm: 200_000 }),
        RejectReason::FeeRateTooHigh { fee_ppm: 200_000, max_ppm: FEE_PPM_MAX }
    );
    assert_eq!(
        h.rejected(Command::SetMarketStatus { market: MarketId(7), status: MarketStatus::Halted }),
        RejectReason::UnknownMarket(MarketId(7))
    );
    h.ok(Command::SetMarketFees { market: BTC_USDT, maker_fee_ppm: 0, taker_fee_ppm: 0 });

    let mut small = Harness::with_limits(EngineLimits {
        assets_max: 1,
        users_max: 1,
        markets_max: 0,
        ..EngineLimits::default()
    });
    small.ok(Command::CreateAsset { symbol: btc, decimals: 8 });
    assert_eq!(
        small.rejected(Command::CreateAsset { symbol: eth, decimals: 8 }),
        RejectReason::EngineCapacity { what: Capacity::Assets, limit: 1 }
    );
    small.ok(Command::CreateUser);
    assert_eq!(
        small.rejected(Command::CreateUser),
        RejectReason::EngineCapacity { what: Capacity::Users, limit: 1 }
    );
    assert_eq!(
        small.rejected(market(rules)),
        RejectReason::EngineCapacity { what: Capacity::Markets, limit: 0 }
    );
}

#[test]
fn funds_rejections() {
    let mut h = Harness::btc_usdt(1);
    assert_eq!(
        h.rejected(Command::Deposit { user: UserId(5), asset: BTC, amount: Units(1) }),
        RejectReason::UnknownUser(UserId(5))
    );
    assert_eq!(
        h.rejected(Command::Deposit { user: UserId(0), asset: AssetId(5), amount: Units(1) }),
        RejectReason::UnknownAsset(AssetId(5))
    );
    assert_eq!(
        h.rejected(Command::Deposit { user: UserId(0), asset: BTC, amount: Units(0) }),
        RejectReason::ZeroAmount
    );
    assert_eq!(
        h.rejected(Command::Deposit { user: UserId(0), asset: BTC, amount: Units(u64::MAX) }),
        RejectReason::SupplyOverflow { asset: BTC }
    );
    assert_eq!(
        h.rejected(Command::Withdraw { user: UserId(0), asset: BTC, amount: Units(0) }),
        RejectReason::ZeroAmount
    );
    h.limit(0, Side::Sell, 100, 1_000);
    // 10,000 of the 10,000,000 sats are locked by the order: not withdrawable.
    assert_eq!(
        h.rejected(Command::Withdraw { user: UserId(0), asset: BTC, amount: Units(START_BTC) }),
        RejectReason::InsufficientFunds {
            asset: BTC,
            needed: Units(START_BTC),
            available: Units(START_BTC - 10_000)
        }
    );
    h.ok(Command::Withdraw { user: UserId(0), asset: BTC, amount: Units(START_BTC - 10_000) });
    assert_eq!(h.balance(0, BTC), (0, 10_000));
    let totals = h.engine.asset_totals(BTC).unwrap();
    assert_eq!((totals.deposited, totals.withdrawn), (u128::from(START_BTC), u128::from(START_BTC - 10_000)));
}

#[test]
fn order_rejections() {
    let mut h = Harness::btc_usdt(1);
    h.ok(Command::SetMarketFees { market: BTC_USDT, maker_fee_ppm: 0, taker_fee_ppm: 0 });
    let place = |user: u32, side: Side, kind: OrderKind| Command::PlaceOrder(order(user, side, kind));
    let gtc = |price, qty| limit_kind(price, qty, TimeInForce::Gtc);
    assert_eq!(h.rejected(place(3, Side::Buy, gtc(1, 1))), RejectReason::UnknownUser(UserId(3)));
    let mut elsewhere = order(0, Side::Buy, gtc(1, 1));
    elsewhere.market = MarketId(4);
    assert_eq!(h.rejected(Command::PlaceOrder(elsewhere)), RejectReason::UnknownMarket(MarketId(4)));
    assert_eq!(h.rejected(place(0, Side::Buy, gtc(0, 1))), RejectReason::ZeroPrice);
    assert_eq!(h.rejected(place(0, Side::Buy, gtc(1, 0))), RejectReason::ZeroQuantity);
    assert_eq!(
        h.rejected(place(0, Side::Buy, OrderKind::Market { qty: Lots(0) })),
        RejectReason::ZeroQuantity
    );
    assert_eq!(
        h.rejected(place(0, Side::Buy, OrderKind::MarketByQuote { amount: Units(0) })),
        RejectReason::ZeroAmount
    );
    assert_eq!(h.rejected(place(0, Side::Buy, gtc(u64::MAX, 2))), RejectReason::Overflow);
    assert_eq!(h.rejected(place(0, Side::Sell, gtc(1, u64::MAX))), RejectReason::Overflow);
    assert_eq!(
        h.rejected(place(0, Side::Sell, OrderKind::Market { qty: Lots(u64::MAX) })),
        RejectReason::Overflow
    );
    assert_eq!(
        h.rejected(place(0, Side::Buy, gtc(START_USDT, 2))),
        RejectReason::InsufficientFunds {
            asset: USDT,
            needed: Units(2 * START_USDT),
            available: Units(START_USDT)
        }
    );
    assert_eq!(
        h.rejected(place(0, Side::Sell, OrderKind::Market { qty: Lots(START_BTC) })),
        RejectReason::InsufficientFunds {
            asset: BTC,
            needed: Units(10 * START_BTC),
            available: Units(START_BTC)
        }
    );

    let mut strict = h.rules();
    strict.min_qty = Lots(5);
    strict.min_notional = Units(1_000);
    h.ok(Command::CreateAsset { symbol: Symbol::new("ETH").unwrap(), decimals: 8 });
    strict.base = ETH;
    h.ok(Command::CreateMarket { rules: strict, status: MarketStatus::Open });
    let mut eth = order(0, Side::Buy, gtc(100, 4));
    eth.market = MarketId(1);
    assert_eq!(
        h.rejected(Command::PlaceOrder(eth)),
        RejectReason::QuantityBelowMinimum { qty: Lots(4), min: Lots(5) }
    );
    eth.kind = gtc(100, 5);
    assert_eq!(
        h.rejected(Command::PlaceOrder(eth)),
        RejectReason::NotionalBelowMinimum { notional: Units(500), min: Units(1_000) }
    );
    eth.kind = OrderKind::MarketByQuote { amount: Units(999) };
    assert_eq!(
        h.rejected(Command::PlaceOrder(eth)),
        RejectReason::NotionalBelowMinimum { notional: Units(999), min: Units(1_000) }
    );
    eth.kind = gtc(200, 5);
    h.ok(Command::PlaceOrder(eth));
}

#[test]
fn reject_reasons_read_as_instructions() {
    let reason = RejectReason::InsufficientFunds { asset: USDT, needed: Units(700), available: Units(5) };
    assert_eq!(reason.to_string(), "insufficient balance of asset 1: 700 units needed, 5 available");
    let reason = RejectReason::QuantityBelowMinimum { qty: Lots(4), min: Lots(5) };
    assert_eq!(reason.to_string(), "quantity 4 lots is below the market's minimum of 5 lots");
}

#[test]
fn out_of_order_sequence_numbers_are_refused_without_effect() {
    let mut engine = Engine::new(EngineLimits::default());
    let mut events = Vec::new();
    let command = StampedCommand { seq: 2, timestamp_ns: 0, command: Command::CreateUser };
    assert_eq!(engine.apply(&command, &mut events), Err(SequenceError { expected: 1, got: 2 }));
    assert!(events.is_empty());
    assert_eq!(engine.last_seq(), 0);
    engine.apply(&StampedCommand { seq: 1, ..command }, &mut events).unwrap();
    assert_eq!(
        engine.apply(&StampedCommand { seq: 1, ..command }, &mut events),
        Err(SequenceError { expected: 2, got: 1 })
    );
}

#[test]
fn api_keys_are_state_journaled_with_limits_and_no_secret_in_events() {
    let limits = EngineLimits { api_keys_per_user_max: 2, ..EngineLimits::default() };
    let mut h = Harness::with_limits(limits);
    h.ok(Command::CreateUser);
    h.ok(Command::CreateUser);
    let key = |s: &str| ApiKey::new(s).unwrap();
    let secret = ApiSecret::new("0123456789abcdef0123456789abcdef").unwrap();
    let create = |user: u32, k: &str| Command::CreateApiKey { user: UserId(user), key: key(k), secret };
    h.ok(create(0, "keyAAAAAAAAAAAAAAAA"));
    assert!(matches!(h.events[0].kind, EventKind::ApiKeyCreated { user: UserId(0), .. }));
    assert!(!format!("{:?}", h.events).contains("0123456789abcdef"), "no secret in events");
    assert_eq!(h.rejected(create(1, "keyAAAAAAAAAAAAAAAA")), RejectReason::DuplicateApiKey);
    assert_eq!(h.rejected(create(5, "keyBBBBBBBBBBBBBBBB")), RejectReason::UnknownUser(UserId(5)));
    assert_eq!(h.rejected(create(0, "short")), RejectReason::ApiKeyTooShort { len: 5, min: 16 });
    h.ok(create(0, "keyBBBBBBBBBBBBBBBB"));
    assert_eq!(h.rejected(create(0, "keyCCCCCCCCCCCCCCCC")), RejectReason::ApiKeyLimit { limit: 2 });
    // Only the owner may revoke.
    let revoke = |user: u32, k: &str| Command::RevokeApiKey { user: UserId(user), key: key(k) };
    assert_eq!(h.rejected(revoke(1, "keyAAAAAAAAAAAAAAAA")), RejectReason::UnknownApiKey);
    h.ok(revoke(0, "keyAAAAAAAAAAAAAAAA"));
    h.ok(create(0, "keyCCCCCCCCCCCCCCCC"));
    let keys: Vec<(&str, u32)> = h.engine.api_keys().iter().map(|e| (e.key.as_str(), e.user.0)).collect();
    assert_eq!(keys, vec![("keyBBBBBBBBBBBBBBBB", 0), ("keyCCCCCCCCCCCCCCCC", 0)]);
    // Keys survive a snapshot, secrets included, and change the state hash.
    let restored = Engine::from_snapshot(h.engine.snapshot()).unwrap();
    assert_eq!(restored.api_keys(), h.engine.api_keys());
    let before = h.engine.state_hash();
    h.ok(revoke(0, "keyCCCCCCCCCCCCCCCC"));
    assert_ne!(h.engine.state_hash(), before);
}
