//! The native API's stop, take-profit, trailing, iceberg, OCO and OTO
//! orders, end to end against the real `exchange` binary.

mod server;

use serde_json::{json, Value};
use server::{balance_of, Exchange, Key};

fn limit(side: &str, price: &str, quantity: &str) -> Value {
    json!({ "market": "BTC-USDT", "side": side, "type": "limit", "price": price, "quantity": quantity })
}

fn order_id(answer: &Value) -> u64 {
    answer["order_id"].as_u64().unwrap_or_else(|| panic!("no order id in {answer}"))
}

fn balance(exchange: &Exchange, key: &Key, asset: &str) -> (String, String) {
    let (status, answer) = exchange.signed(key, "GET", "/balance", "", None);
    assert_eq!(status, 200, "{answer}");
    balance_of(&answer, asset)
}

fn order(exchange: &Exchange, key: &Key, id: u64) -> Value {
    let (status, answer) = exchange.signed(key, "GET", "/order", &format!("order_id={id}"), None);
    assert_eq!(status, 200, "{answer}");
    answer
}

/// A trade at `price` between two users who keep nothing open after it:
/// the market's last price is then `price`.
fn trade_at(exchange: &Exchange, maker: &Key, taker: &Key, price: &str) {
    let (status, ask) = exchange.place(maker, limit("sell", price, "0.001"));
    assert_eq!(status, 200, "{ask}");
    let (status, bid) = exchange.place(taker, limit("buy", price, "0.001"));
    assert_eq!((status, bid["status"].as_str()), (200, Some("filled")), "{bid}");
}

#[test]
fn each_order_type_is_refused_at_the_edge_with_the_field_that_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(1);
    let alice = &keys[0];
    let stop = |kind: &str| json!({ "kind": kind, "stop_price": "49000" });
    let with = |mut body: Value, fields: Value| {
        for (name, value) in fields.as_object().unwrap() {
            body[name] = value.clone();
        }
        body
    };
    let base = json!({ "market": "BTC-USDT", "side": "sell", "quantity": "0.1" });
    // (body, the field the message must name)
    let cases: Vec<(Value, &str)> = vec![
        (with(base.clone(), json!({ "type": "iceberg", "price": "50000" })), "visible_quantity"),
        (
            with(base.clone(), json!({ "type": "iceberg", "price": "50000", "visible_quantity": "0.1" })),
            "visible_quantity",
        ),
        (
            with(
                base.clone(),
                json!({ "type": "iceberg", "price": "50000", "visible_quantity": "0.01", "time_in_force": "IOC" }),
            ),
            "time_in_force",
        ),
        (
            with(base.clone(), json!({ "type": "iceberg", "price": "50000", "visible_quantity": "0.00001" })),
            "visible_quantity",
        ),
        (with(base.clone(), json!({ "type": "stop_market" })), "trigger"),
        (
            with(base.clone(), json!({ "type": "limit", "price": "50000", "trigger": stop("stop_loss") })),
            "trigger",
        ),
        (
            with(
                base.clone(),
                json!({ "type": "stop_market", "price": "50000", "trigger": stop("stop_loss") }),
            ),
            "price",
        ),
        (
            with(
                base.clone(),
                json!({ "type": "stop_market", "time_in_force": "GTC", "trigger": stop("take_profit") }),
            ),
            "time_in_force",
        ),
        (
            with(
                base.clone(),
                json!({ "type": "stop_market", "visible_quantity": "0.01", "trigger": stop("take_profit") }),
            ),
            "visible_quantity",
        ),
        (with(base.clone(), json!({ "type": "stop_limit", "trigger": stop("stop_loss") })), "price"),
        (
            with(
                base.clone(),
                json!({ "type": "stop_limit", "price": "48000", "time_in_force": "POST_ONLY", "trigger": stop("stop_loss") }),
            ),
            "time_in_force",
        ),
        (
            with(
                base.clone(),
                json!({ "type": "stop_limit", "price": "48000", "time_in_force": "IOC", "visible_quantity": "0.01", "trigger": stop("stop_loss") }),
            ),
            "visible_quantity",
        ),
        (with(base.clone(), json!({ "type": "stop_market", "trigger": { "kind": "stop_loss" } })), "trigger"),
        (
            with(
                base.clone(),
                json!({ "type": "stop_market", "trigger": { "kind": "stop_loss", "trailing_bips": 5 } }),
            ),
            "trigger.trailing_bips",
        ),
        (
            with(
                base.clone(),
                json!({ "type": "stop_market", "trigger": { "kind": "stop_loss", "trailing_bips": 70000 } }),
            ),
            "trigger.trailing_bips",
        ),
        (
            with(
                base.clone(),
                json!({ "type": "stop_market", "trigger": { "kind": "stop_loss", "stop_price": "49000.001" } }),
            ),
            "trigger.stop_price",
        ),
        (with(base.clone(), json!({ "type": "market", "visible_quantity": "0.01" })), "visible_quantity"),
    ];
    for (body, field) in &cases {
        let (status, answer) = exchange.place(alice, body.clone());
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some("invalid_parameter")),
            "{body}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("{field}:")), "{body}: {message:?} should name {field}");
    }
    // A trigger kind that does not exist is malformed JSON for the body's schema.
    let (status, answer) = exchange.place(
        alice,
        with(
            base.clone(),
            json!({ "type": "stop_market", "trigger": { "kind": "stop", "stop_price": "1" } }),
        ),
    );
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_json")), "{answer}");

    // Order lists: two orders, each checked as POST /order checks it.
    let oco_leg = json!({ "side": "sell", "type": "limit", "time_in_force": "POST_ONLY", "price": "52000", "quantity": "0.1" });
    let list = |orders: Value| json!({ "market": "BTC-USDT", "contingency": "oco", "orders": orders });
    let list_cases: Vec<(Value, &str)> = vec![
        (list(json!([oco_leg.clone()])), "orders"),
        (list(json!([oco_leg.clone(), oco_leg.clone(), oco_leg.clone()])), "orders"),
        (
            list(json!([oco_leg.clone(), { "side": "sell", "type": "stop_market", "quantity": "0.1" }])),
            "orders[1].trigger",
        ),
        (
            list(
                json!([{ "side": "sell", "type": "limit", "price": "1.001", "quantity": "0.1" }, oco_leg.clone()]),
            ),
            "orders[0].price",
        ),
    ];
    for (body, field) in &list_cases {
        let (status, answer) = exchange.signed(alice, "POST", "/order_list", "", Some(body.clone()));
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some("invalid_parameter")),
            "{body}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("{field}:")), "{body}: {message:?} should name {field}");
    }
    let mut unknown = list(json!([oco_leg.clone(), oco_leg.clone()]));
    unknown["contingency"] = json!("oso");
    let (status, answer) = exchange.signed(alice, "POST", "/order_list", "", Some(unknown));
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_json")), "{answer}");
    let (status, answer) = exchange.signed(alice, "DELETE", "/order_list", "", None);
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_parameter")), "{answer}");
    let (status, answer) = exchange.signed(alice, "DELETE", "/order_list", "list_id=0", None);
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_parameter")), "{answer}");

    // Nothing reached the engine: no order, nothing locked, still up.
    let (_, open) = exchange.signed(alice, "GET", "/orders/open", "", None);
    assert_eq!(open["orders"], json!([]), "{open}");
    assert_eq!(balance(&exchange, alice, "BTC"), ("10.00000000".into(), "0.00000000".into()));
    assert_eq!(exchange.get("/health").1["status"], "ok");
}

#[test]
fn a_stop_order_waits_holding_its_funds_and_fires_at_the_trade_that_crosses_it() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(3);
    let (alice, bob, carol) = (&keys[0], &keys[1], &keys[2]);
    trade_at(&exchange, bob, carol, "50000");

    let stop = json!({
        "market": "BTC-USDT", "side": "sell", "type": "stop_market", "quantity": "0.1",
        "trigger": { "kind": "stop_loss", "stop_price": "49000" }, "client_order_id": "alice-stop",
    });
    let (status, placed) = exchange.place(alice, stop);
    assert_eq!(status, 200, "{placed}");
    assert_eq!(placed["type"], "stop_market");
    assert_eq!(placed["status"], "new");
    assert_eq!(
        placed["trigger"],
        json!({ "kind": "stop_loss", "stop_price": "49000", "trailing_bips": null })
    );
    assert_eq!((placed["price"].clone(), placed["visible_quantity"].clone()), (Value::Null, Value::Null));
    // It waits off the book, holding what it would sell.
    assert_eq!(exchange.get("/depth?market=BTC-USDT").1["asks"], json!([]));
    assert_eq!(balance(&exchange, alice, "BTC"), ("9.90000000".into(), "0.10000000".into()));

    // A stop already crossed by the last price (50,000) is refused.
    let (status, refused) = exchange.place(
        alice,
        json!({ "market": "BTC-USDT", "side": "sell", "type": "stop_market", "quantity": "0.1",
                "trigger": { "kind": "stop_loss", "stop_price": "50000" } }),
    );
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (422, Some("would_trigger_immediately")),
        "{refused}"
    );
    // Waiting orders cannot be amended.
    let (status, amend) = exchange.signed(
        alice,
        "PUT",
        "/order",
        "",
        Some(json!({ "client_order_id": "alice-stop", "quantity": "0.05" })),
    );
    assert_eq!((status, amend["error"]["code"].as_str()), (422, Some("amend_not_allowed")), "{amend}");

    // Bob bids 0.2 at 48,900; Carol sells into it: the trade at 48,900
    // fires Alice's stop, which sells into what is left of Bob's bid.
    exchange.place(bob, limit("buy", "48900", "0.2"));
    let (status, taker) = exchange.place(carol, limit("sell", "48900", "0.05"));
    assert_eq!((status, taker["status"].as_str()), (200, Some("filled")), "{taker}");
    let fired = order(&exchange, alice, order_id(&placed));
    assert_eq!(
        (fired["status"].as_str(), fired["filled_quantity"].as_str()),
        (Some("filled"), Some("0.1")),
        "{fired}"
    );
    assert_eq!(fired["fills"][0]["price"], "48900");
    assert_eq!(fired["fills"][0]["maker"], false, "a fired stop takes liquidity");
    assert_eq!(balance(&exchange, alice, "BTC"), ("9.90000000".into(), "0.00000000".into()));
    assert_eq!(exchange.get("/depth?market=BTC-USDT").1["bids"], json!([["48900", "0.05"]]));
}

#[test]
fn a_stop_limit_and_a_trailing_stop_show_their_trigger() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(3);
    let (alice, bob, carol) = (&keys[0], &keys[1], &keys[2]);
    trade_at(&exchange, bob, carol, "50000");
    let (status, placed) = exchange.place(
        alice,
        json!({ "market": "BTC-USDT", "side": "buy", "type": "stop_limit", "price": "51100", "quantity": "0.1",
                "time_in_force": "GTC", "visible_quantity": "0.02",
                "trigger": { "kind": "stop_loss", "stop_price": "51000" } }),
    );
    assert_eq!(status, 200, "{placed}");
    assert_eq!(
        (placed["type"].as_str(), placed["price"].as_str(), placed["visible_quantity"].as_str()),
        (Some("stop_limit"), Some("51100"), Some("0.02"))
    );
    // A waiting stop-limit buy holds price x quantity of quote.
    assert_eq!(balance(&exchange, alice, "USDT").1, "5110.000000");
    let (status, trailing) = exchange.place(
        alice,
        json!({ "market": "BTC-USDT", "side": "sell", "type": "stop_market", "quantity": "0.1",
                "trigger": { "kind": "stop_loss", "trailing_bips": 100 } }),
    );
    assert_eq!(status, 200, "{trailing}");
    assert_eq!(trailing["trigger"], json!({ "kind": "stop_loss", "stop_price": null, "trailing_bips": 100 }));
    let (_, open) = exchange.signed(alice, "GET", "/orders/open", "", None);
    assert_eq!(open["orders"].as_array().unwrap().len(), 2, "waiting orders are open: {open}");

    // The price rises to 50,800 (the trailing sell's high) and falls back
    // by 1% to 50,292: the trailing stop fires; the stop-limit buy waits on.
    trade_at(&exchange, bob, carol, "50800");
    exchange.place(bob, limit("buy", "50200", "0.3"));
    trade_at(&exchange, carol, bob, "50300");
    assert_eq!(order(&exchange, alice, order_id(&trailing))["status"], "new", "50,300 is above 50,292");
    trade_at(&exchange, carol, bob, "50290");
    let fired = order(&exchange, alice, order_id(&trailing));
    assert_eq!(
        (fired["status"].as_str(), fired["fills"][0]["price"].as_str()),
        (Some("filled"), Some("50200")),
        "{fired}"
    );
    assert_eq!(order(&exchange, alice, order_id(&placed))["status"], "new");
}

#[test]
fn an_iceberg_shows_only_its_visible_part_and_locks_the_whole() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(2);
    let (alice, bob) = (&keys[0], &keys[1]);
    let (status, placed) = exchange.place(
        alice,
        json!({ "market": "BTC-USDT", "side": "sell", "type": "iceberg", "price": "50000", "quantity": "1",
                "visible_quantity": "0.1" }),
    );
    assert_eq!(status, 200, "{placed}");
    assert_eq!(
        (placed["type"].as_str(), placed["visible_quantity"].as_str(), placed["time_in_force"].as_str()),
        (Some("iceberg"), Some("0.1"), Some("GTC"))
    );
    assert_eq!(exchange.get("/depth?market=BTC-USDT").1["asks"], json!([["50000", "0.1"]]));
    assert_eq!(balance(&exchange, alice, "BTC"), ("9.00000000".into(), "1.00000000".into()));
    // A limit order with a visible quantity is an iceberg too.
    let (status, also) = exchange.place(
        alice,
        json!({ "market": "BTC-USDT", "side": "sell", "type": "limit", "price": "50100", "quantity": "0.5",
                "visible_quantity": "0.2" }),
    );
    assert_eq!((status, also["type"].as_str()), (200, Some("iceberg")), "{also}");

    // Bob takes 0.25: the first part, a refill, and half of the next.
    let (status, taken) = exchange.place(bob, limit("buy", "50000", "0.25"));
    assert_eq!((status, taken["filled_quantity"].as_str()), (200, Some("0.25")), "{taken}");
    assert_eq!(exchange.get("/depth?market=BTC-USDT").1["asks"][0], json!(["50000", "0.05"]));
    let resting = order(&exchange, alice, order_id(&placed));
    assert_eq!(
        (resting["status"].as_str(), resting["remaining_quantity"].as_str()),
        (Some("partially_filled"), Some("0.75"))
    );
    assert_eq!(balance(&exchange, alice, "BTC").1, "1.25000000", "0.75 + the second iceberg's 0.5");
}

#[test]
fn an_oco_holds_once_and_ends_its_other_order_when_one_trades() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(3);
    let (alice, bob, carol) = (&keys[0], &keys[1], &keys[2]);
    trade_at(&exchange, bob, carol, "50000");
    let oco = |client: &str| {
        json!({
            "market": "BTC-USDT", "contingency": "oco", "list_client_id": client,
            "orders": [
                { "side": "sell", "type": "limit", "time_in_force": "POST_ONLY", "price": "52000", "quantity": "0.1",
                  "client_order_id": format!("{client}-take") },
                { "side": "sell", "type": "stop_market", "quantity": "0.1",
                  "trigger": { "kind": "stop_loss", "stop_price": "48000" } },
            ],
        })
    };
    let (status, list) = exchange.signed(alice, "POST", "/order_list", "", Some(oco("exit-1")));
    assert_eq!(status, 200, "{list}");
    let list_id = list["list_id"].as_u64().unwrap();
    assert_eq!(
        (list["contingency"].as_str(), list["status"].as_str(), list["list_client_id"].as_str()),
        (Some("oco"), Some("open"), Some("exit-1"))
    );
    let orders = list["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 2);
    assert_eq!(
        (orders[0]["type"].as_str(), orders[1]["type"].as_str()),
        (Some("limit"), Some("stop_market"))
    );
    assert!(orders.iter().all(|o| o["list_id"] == list_id && o["status"] == "new"), "{list}");
    // The list holds 0.1 BTC once, not once per order.
    assert_eq!(balance(&exchange, alice, "BTC"), ("9.90000000".into(), "0.10000000".into()));
    let mut again = oco("exit-1");
    again["orders"][0]["client_order_id"] = json!("another-take");
    let (status, again) = exchange.signed(alice, "POST", "/order_list", "", Some(again));
    assert_eq!((status, again["error"]["code"].as_str()), (409, Some("duplicate_list_client_id")), "{again}");

    // Bob buys 0.04 at 52,000: the limit order trades, the stop is cancelled.
    let (status, taken) = exchange.place(bob, limit("buy", "52000", "0.04"));
    assert_eq!((status, taken["status"].as_str()), (200, Some("filled")), "{taken}");
    let stop = order(&exchange, alice, order_id(&orders[1]));
    assert_eq!(stop["remaining_quantity"], "0", "{stop}");
    assert_ne!(stop["status"], "new", "{stop}");
    let take = order(&exchange, alice, order_id(&orders[0]));
    assert_eq!(
        (take["status"].as_str(), take["remaining_quantity"].as_str()),
        (Some("partially_filled"), Some("0.06"))
    );
    // What stays locked is the limit order's own need.
    assert_eq!(balance(&exchange, alice, "BTC").1, "0.06000000");
    let (status, gone) = exchange.signed(alice, "DELETE", "/order_list", &format!("list_id={list_id}"), None);
    assert_eq!(
        (status, gone["error"]["code"].as_str()),
        (404, Some("unknown_order_list")),
        "the list is over: {gone}"
    );

    // A second list, cancelled by its client id: both orders close.
    let (status, list) = exchange.signed(alice, "POST", "/order_list", "", Some(oco("exit-2")));
    assert_eq!(status, 200, "{list}");
    let (status, cancelled) = exchange.signed(alice, "DELETE", "/order_list", "list_client_id=exit-2", None);
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(
        (cancelled["list_id"].clone(), cancelled["status"].as_str()),
        (list["list_id"].clone(), Some("done"))
    );
    let statuses: Vec<&str> =
        cancelled["orders"].as_array().unwrap().iter().map(|o| o["status"].as_str().unwrap()).collect();
    assert_eq!(statuses.len(), 2, "{cancelled}");
    assert!(statuses.iter().all(|s| *s == "cancelled" || *s == "expired_contingent"), "{cancelled}");
    assert_eq!(balance(&exchange, alice, "BTC").1, "0.06000000");
}

#[test]
fn an_oto_places_its_pending_order_when_the_working_order_fills() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(2);
    let (alice, bob) = (&keys[0], &keys[1]);
    let oto = json!({
        "market": "BTC-USDT", "contingency": "oto",
        "orders": [
            { "side": "buy", "type": "limit", "price": "50000", "quantity": "0.1" },
            { "side": "sell", "type": "limit", "price": "51000", "quantity": "0.1", "client_order_id": "then-sell" },
        ],
    });
    let (status, list) = exchange.signed(alice, "POST", "/order_list", "", Some(oto));
    assert_eq!(status, 200, "{list}");
    assert_eq!((list["contingency"].as_str(), list["status"].as_str()), (Some("oto"), Some("open")));
    assert_eq!(
        (list["orders"][0]["status"].as_str(), list["orders"][1]["status"].as_str()),
        (Some("new"), Some("pending_new"))
    );
    // The pending order holds nothing yet and is not on the book.
    assert_eq!(balance(&exchange, alice, "BTC"), ("10.00000000".into(), "0.00000000".into()));
    assert_eq!(balance(&exchange, alice, "USDT").1, "5000.000000");
    assert_eq!(exchange.get("/depth?market=BTC-USDT").1["asks"], json!([]));

    // Bob fills the working order: the pending sell is placed and rests.
    let (status, taken) = exchange.place(bob, limit("sell", "50000", "0.1"));
    assert_eq!((status, taken["status"].as_str()), (200, Some("filled")), "{taken}");
    assert_eq!(exchange.get("/depth?market=BTC-USDT").1["asks"], json!([["51000", "0.1"]]));
    let (status, released) = exchange.signed(alice, "GET", "/order", "client_order_id=then-sell", None);
    assert_eq!((status, released["status"].as_str()), (200, Some("new")), "{released}");
    assert_eq!(balance(&exchange, alice, "BTC").1, "0.10000000");
}
