//! Stop-loss and take-profit orders (market, limit, trailing), icebergs and
//! the OCO and OTO order lists through the Binance-compatible API, against
//! the real `exchange` binary: Binance's parameter rules and error codes,
//! its answer shapes, the user data stream's reports, and the read views
//! (open orders, lists, depth) across a restart.

mod server;

use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};
use server::{Exchange, Key};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Answer = (u16, String, Value);

fn ok(answer: Answer) -> Value {
    assert_eq!(answer.0, 200, "{:?}", answer.2);
    answer.2
}

fn code(answer: &Answer) -> (u16, i64, String) {
    (answer.0, answer.2["code"].as_i64().unwrap_or(0), answer.2["msg"].as_str().unwrap_or("").to_string())
}

fn order(exchange: &Exchange, key: &Key, params: &str) -> Answer {
    exchange.binance(key, "POST", "/api/v3/order", &format!("symbol=BTCUSDT&{params}"))
}

/// A trade at `price` between `a` (selling) and `b` (buying) 0.01 BTC: the
/// market's last price from then on.
fn trade_at(exchange: &Exchange, a: &Key, b: &Key, price: &str) {
    ok(order(exchange, a, &format!("side=SELL&type=LIMIT&timeInForce=GTC&quantity=0.01&price={price}")));
    let taken = ok(order(exchange, b, "side=BUY&type=MARKET&quantity=0.01"));
    assert_eq!(taken["status"], "FILLED", "{taken}");
}

fn balance(exchange: &Exchange, key: &Key, asset: &str) -> (String, String) {
    let account = ok(exchange.binance(key, "GET", "/api/v3/account", ""));
    let found = account["balances"].as_array().unwrap().iter().find(|b| b["asset"] == asset).unwrap().clone();
    (found["free"].as_str().unwrap().to_string(), found["locked"].as_str().unwrap().to_string())
}

fn get_order(exchange: &Exchange, key: &Key, id: &Value) -> Value {
    ok(exchange.binance(key, "GET", "/api/v3/order", &format!("symbol=BTCUSDT&orderId={id}")))
}

fn asks(exchange: &Exchange) -> Value {
    exchange.raw("GET", "/api/v3/depth?symbol=BTCUSDT", &[], b"").2["asks"].clone()
}

#[test]
fn new_order_parameters_follow_binances_rules() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(1);
    let alice = &keys[0];
    for (params, expected, msg) in [
        (
            "side=SELL&type=STOP_LOSS&quantity=0.1",
            -1102,
            "Param 'stopPrice' or 'trailingDelta' must be sent, but both were empty/null!",
        ),
        (
            "side=SELL&type=LIMIT&timeInForce=GTC&quantity=0.1&price=50000&stopPrice=49000",
            -1106,
            "Parameter 'stopPrice' sent when not required.",
        ),
        (
            "side=SELL&type=LIMIT&timeInForce=GTC&quantity=0.1&price=50000&trailingDelta=100",
            -1106,
            "Parameter 'trailingDelta' sent when not required.",
        ),
        (
            "side=SELL&type=STOP_LOSS&quantity=0.1&stopPrice=49000&price=48000",
            -1106,
            "Parameter 'price' sent when not required.",
        ),
        (
            "side=SELL&type=TAKE_PROFIT&quantity=0.1&stopPrice=49000&timeInForce=GTC",
            -1106,
            "Parameter 'timeInForce' sent when not required.",
        ),
        (
            "side=SELL&type=STOP_LOSS_LIMIT&quantity=0.1&stopPrice=49000&price=48000",
            -1102,
            "Mandatory parameter 'timeInForce' was not sent, was empty/null, or malformed.",
        ),
        (
            "side=SELL&type=TAKE_PROFIT_LIMIT&timeInForce=GTC&quantity=0.1&stopPrice=49000",
            -1102,
            "Mandatory parameter 'price' was not sent, was empty/null, or malformed.",
        ),
        ("side=SELL&type=STOP_LOSS&quantity=0.1&trailingDelta=5", -1013, "Filter failure: TRAILING_DELTA"),
        ("side=SELL&type=STOP_LOSS&quantity=0.1&trailingDelta=2001", -1013, "Filter failure: TRAILING_DELTA"),
        (
            "side=SELL&type=LIMIT&timeInForce=GTC&quantity=1&price=50000&icebergQty=0.0001",
            -1013,
            "Filter failure: ICEBERG_PARTS",
        ),
        (
            "side=SELL&type=LIMIT&timeInForce=IOC&quantity=1&price=50000&icebergQty=0.1",
            -1014,
            "Unsupported order combination.",
        ),
        (
            "side=SELL&type=MARKET&quantity=1&icebergQty=0.1",
            -1106,
            "Parameter 'icebergQty' sent when not required.",
        ),
        (
            "side=SELL&type=STOP_LOSS&quantity=1&stopPrice=49000&icebergQty=0.1",
            -1106,
            "Parameter 'icebergQty' sent when not required.",
        ),
    ] {
        let refused = order(&exchange, alice, params);
        assert_eq!(code(&refused), (400, expected, msg.to_string()), "{params}");
    }
    // Nothing of that reached the engine.
    assert_eq!(balance(&exchange, alice, "BTC"), ("10.00000000".into(), "0.00000000".into()));
    let test = exchange.binance(
        alice,
        "POST",
        "/api/v3/order/test",
        "symbol=BTCUSDT&side=SELL&type=STOP_LOSS_LIMIT&timeInForce=GTC&quantity=0.1&price=48000&stopPrice=49000&icebergQty=0.05",
    );
    assert_eq!(ok(test), json!({}));

    let info = exchange.raw("GET", "/api/v3/exchangeInfo?symbol=BTCUSDT", &[], b"").2;
    let symbol = &info["symbols"][0];
    assert_eq!(
        symbol["orderTypes"],
        json!([
            "LIMIT",
            "LIMIT_MAKER",
            "MARKET",
            "STOP_LOSS",
            "STOP_LOSS_LIMIT",
            "TAKE_PROFIT",
            "TAKE_PROFIT_LIMIT"
        ])
    );
    for flag in ["icebergAllowed", "ocoAllowed", "otoAllowed", "allowTrailingStop"] {
        assert_eq!(symbol[flag], true, "{flag}");
    }
    let filter = |name: &str| {
        symbol["filters"].as_array().unwrap().iter().find(|f| f["filterType"] == name).cloned().unwrap()
    };
    assert_eq!(filter("ICEBERG_PARTS")["limit"], 100);
    let trailing = filter("TRAILING_DELTA");
    for (name, value) in [
        ("minTrailingAboveDelta", 10),
        ("maxTrailingAboveDelta", 2000),
        ("minTrailingBelowDelta", 10),
        ("maxTrailingBelowDelta", 2000),
    ] {
        assert_eq!(trailing[name], value, "{name}");
    }
}

#[test]
fn a_stop_order_waits_then_works_as_binance_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(2);
    let (alice, bob) = (&keys[0], &keys[1]);
    trade_at(&exchange, alice, bob, "50000");

    let stop = ok(order(
        &exchange,
        alice,
        "side=SELL&type=STOP_LOSS_LIMIT&timeInForce=GTC&quantity=0.2&price=48900&stopPrice=49000&newOrderRespType=RESULT",
    ));
    assert_eq!(
        (&stop["status"], &stop["type"], &stop["stopPrice"], &stop["workingTime"], &stop["orderListId"]),
        (&json!("NEW"), &json!("STOP_LOSS_LIMIT"), &json!("49000.00000000"), &json!(-1), &json!(-1)),
        "{stop}"
    );
    let ack = ok(order(&exchange, alice, "side=SELL&type=TAKE_PROFIT&quantity=0.1&stopPrice=60000"));
    assert!(ack.get("status").is_none(), "a TAKE_PROFIT answers ACK by default: {ack}");
    let immediate = order(&exchange, alice, "side=SELL&type=STOP_LOSS&quantity=0.1&stopPrice=50000");
    assert_eq!(code(&immediate), (400, -2010, "Order would trigger immediately.".into()));
    let immediate = order(&exchange, alice, "side=BUY&type=TAKE_PROFIT&quantity=0.1&stopPrice=50100");
    assert_eq!(code(&immediate), (400, -2010, "Order would trigger immediately.".into()));

    // Waiting, it is open, holds its base, and is not on the book.
    let open = ok(exchange.binance(alice, "GET", "/api/v3/openOrders", "symbol=BTCUSDT"));
    let waiting = open.as_array().unwrap().iter().find(|o| o["orderId"] == stop["orderId"]).unwrap().clone();
    assert_eq!((&waiting["isWorking"], &waiting["workingTime"]), (&json!(false), &json!(-1)), "{waiting}");
    assert_eq!(balance(&exchange, alice, "BTC").1, "0.30000000");
    assert_eq!(asks(&exchange), json!([]));

    // A trade at 49,000 fires it: it rests at 48,900 and works from then.
    ok(order(&exchange, bob, "side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.01&price=49000"));
    ok(order(&exchange, alice, "side=SELL&type=MARKET&quantity=0.01"));
    let fired = get_order(&exchange, alice, &stop["orderId"]);
    assert_eq!((&fired["status"], &fired["isWorking"]), (&json!("NEW"), &json!(true)), "{fired}");
    assert!(fired["workingTime"].as_i64().unwrap() > 0, "{fired}");
    assert_eq!(asks(&exchange), json!([["48900.00000000", "0.20000000"]]));

    // Cancelling a waiting order.
    let cancelled = ok(exchange.binance(
        alice,
        "DELETE",
        "/api/v3/order",
        &format!("symbol=BTCUSDT&orderId={}", ack["orderId"]),
    ));
    assert_eq!((&cancelled["status"], &cancelled["type"]), (&json!("CANCELED"), &json!("TAKE_PROFIT")));
    assert_eq!(balance(&exchange, alice, "BTC").1, "0.20000000");

    // A trailing stop: its delta in the answer.
    let trailing = ok(order(
        &exchange,
        bob,
        "side=BUY&type=STOP_LOSS&quantity=0.01&trailingDelta=100&newOrderRespType=RESULT",
    ));
    assert_eq!(trailing["trailingDelta"], 100, "{trailing}");
    assert!(trailing.get("stopPrice").is_none(), "{trailing}");
}

#[test]
fn an_iceberg_shows_only_its_visible_part() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(2);
    let (alice, bob) = (&keys[0], &keys[1]);
    let iceberg = ok(order(
        &exchange,
        alice,
        "side=SELL&type=LIMIT&timeInForce=GTC&quantity=1&price=50000&icebergQty=0.1",
    ));
    assert_eq!((&iceberg["status"], &iceberg["icebergQty"]), (&json!("NEW"), &json!("0.10000000")));
    assert_eq!(asks(&exchange), json!([["50000.00000000", "0.10000000"]]));
    assert_eq!(balance(&exchange, alice, "BTC").1, "1.00000000", "the hidden part is held too");
    let taken = ok(order(&exchange, bob, "side=BUY&type=MARKET&quantity=0.25"));
    assert_eq!(taken["executedQty"], "0.25000000", "{taken}");
    let after = get_order(&exchange, alice, &iceberg["orderId"]);
    assert_eq!((&after["executedQty"], &after["icebergQty"]), (&json!("0.25000000"), &json!("0.10000000")));
    assert_eq!(asks(&exchange), json!([["50000.00000000", "0.05000000"]]));
}

fn oco_sell(exchange: &Exchange, key: &Key, list_client: &str) -> Value {
    ok(exchange.binance(
        key,
        "POST",
        "/api/v3/orderList/oco",
        &format!(
            "symbol=BTCUSDT&side=SELL&quantity=0.2&listClientOrderId={list_client}\
             &aboveType=LIMIT_MAKER&abovePrice=51000\
             &belowType=STOP_LOSS_LIMIT&belowStopPrice=49000&belowPrice=48900&belowTimeInForce=GTC"
        ),
    ))
}

#[test]
fn an_oco_cancels_its_other_order_when_one_trades() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(2);
    let (alice, bob) = (&keys[0], &keys[1]);
    trade_at(&exchange, alice, bob, "50000");

    let list = oco_sell(&exchange, alice, "exit-1");
    assert_eq!(
        (
            &list["contingencyType"],
            &list["listStatusType"],
            &list["listOrderStatus"],
            &list["listClientOrderId"]
        ),
        (&json!("OCO"), &json!("EXEC_STARTED"), &json!("EXECUTING"), &json!("exit-1")),
        "{list}"
    );
    let id = list["orderListId"].clone();
    let reports = list["orderReports"].as_array().unwrap();
    assert_eq!(reports.len(), 2, "{list}");
    assert_eq!(
        (&reports[0]["type"], &reports[1]["type"]),
        (&json!("STOP_LOSS_LIMIT"), &json!("LIMIT_MAKER"))
    );
    assert!(reports.iter().all(|r| r["orderListId"] == id), "{list}");
    assert_eq!(list["orders"][0]["orderId"], reports[0]["orderId"]);
    let (stop_leg, limit_leg) = (reports[0]["orderId"].clone(), reports[1]["orderId"].clone());
    // The list holds its quantity of base once.
    assert_eq!(balance(&exchange, alice, "BTC").1, "0.20000000");
    let open = ok(exchange.binance(alice, "GET", "/api/v3/openOrderList", ""));
    assert_eq!(open.as_array().map(Vec::len), Some(1), "{open}");
    let status = ok(exchange.binance(alice, "GET", "/api/v3/orderList", &format!("orderListId={id}")));
    assert_eq!(status["listOrderStatus"], "EXECUTING");

    // Binance's type and price rules.
    let wrong_type = exchange.binance(
        alice,
        "POST",
        "/api/v3/orderList/oco",
        "symbol=BTCUSDT&side=BUY&quantity=0.2&aboveType=LIMIT_MAKER&abovePrice=51000\
         &belowType=STOP_LOSS&belowStopPrice=49000",
    );
    assert_eq!(code(&wrong_type).1, -1158, "{wrong_type:?}");
    let wrong_price = exchange.binance(
        alice,
        "POST",
        "/api/v3/orderList/oco",
        "symbol=BTCUSDT&side=SELL&quantity=0.2&aboveType=LIMIT_MAKER&abovePrice=48000\
         &belowType=STOP_LOSS&belowStopPrice=49000",
    );
    assert_eq!(code(&wrong_price).1, -1166, "{wrong_price:?}");

    // Bob takes part of the limit order: the stop order expires, the list ends.
    let taken = ok(order(&exchange, bob, "side=BUY&type=LIMIT&timeInForce=IOC&quantity=0.05&price=51000"));
    assert_eq!(taken["executedQty"], "0.05000000", "{taken}");
    assert_eq!(get_order(&exchange, alice, &stop_leg)["status"], "EXPIRED");
    let limit = get_order(&exchange, alice, &limit_leg);
    assert_eq!((&limit["status"], &limit["orderListId"]), (&json!("PARTIALLY_FILLED"), &id));
    let status = ok(exchange.binance(alice, "GET", "/api/v3/orderList", "origClientOrderId=exit-1"));
    assert_eq!(
        (&status["listStatusType"], &status["listOrderStatus"]),
        (&json!("ALL_DONE"), &json!("ALL_DONE"))
    );
    assert_eq!(ok(exchange.binance(alice, "GET", "/api/v3/openOrderList", "")), json!([]));
    assert_eq!(balance(&exchange, alice, "BTC").1, "0.15000000");
    let all = ok(exchange.binance(alice, "GET", "/api/v3/allOrderList", ""));
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all}");
}

#[test]
fn cancelling_an_order_of_a_list_cancels_the_list() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(2);
    let (alice, bob) = (&keys[0], &keys[1]);
    trade_at(&exchange, alice, bob, "50000");

    let list = oco_sell(&exchange, alice, "exit-1");
    let leg = list["orderReports"][1]["orderId"].clone();
    let cancelled =
        ok(exchange.binance(alice, "DELETE", "/api/v3/order", &format!("symbol=BTCUSDT&orderId={leg}")));
    assert_eq!(cancelled["orderListId"], list["orderListId"], "{cancelled}");
    assert_eq!(cancelled["listStatusType"], "ALL_DONE", "{cancelled}");
    let reports = cancelled["orderReports"].as_array().unwrap();
    assert_eq!(reports.len(), 2, "{cancelled}");
    assert!(reports.iter().all(|r| r["status"] == "CANCELED"), "{cancelled}");
    assert_eq!(balance(&exchange, alice, "BTC").1, "0.00000000");

    let again = oco_sell(&exchange, alice, "exit-1");
    let cancelled =
        ok(exchange.binance(alice, "DELETE", "/api/v3/orderList", "symbol=BTCUSDT&listClientOrderId=exit-1"));
    assert_eq!(
        (&cancelled["orderListId"], &cancelled["listOrderStatus"]),
        (&again["orderListId"], &json!("ALL_DONE"))
    );
    assert_eq!(cancelled["orderReports"].as_array().map(Vec::len), Some(2));
    let unknown = exchange.binance(alice, "DELETE", "/api/v3/orderList", "symbol=BTCUSDT&orderListId=999");
    assert_eq!(code(&unknown).1, -2011, "{unknown:?}");
    assert_eq!(balance(&exchange, alice, "BTC").1, "0.00000000");

    // Cancel-all answers a list as the list, a lone order as an order.
    let third = oco_sell(&exchange, alice, "exit-3");
    let lone = ok(order(&exchange, alice, "side=SELL&type=LIMIT&timeInForce=GTC&quantity=0.1&price=60000"));
    let all = ok(exchange.binance(alice, "DELETE", "/api/v3/openOrders", "symbol=BTCUSDT"));
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    let list = all.iter().find(|a| a.get("contingencyType").is_some()).unwrap();
    assert_eq!((&list["orderListId"], &list["listStatusType"]), (&third["orderListId"], &json!("ALL_DONE")));
    assert_eq!(list["orderReports"].as_array().map(Vec::len), Some(2), "{list}");
    assert!(all.iter().any(|a| a["orderId"] == lone["orderId"] && a["status"] == "CANCELED"), "{all:?}");
    assert_eq!(balance(&exchange, alice, "BTC").1, "0.00000000");
}

fn oto(exchange: &Exchange, key: &Key) -> Value {
    ok(exchange.binance(
        key,
        "POST",
        "/api/v3/orderList/oto",
        "symbol=BTCUSDT&workingType=LIMIT&workingSide=BUY&workingPrice=49000&workingQuantity=0.1\
         &workingTimeInForce=GTC&pendingType=LIMIT&pendingSide=SELL&pendingPrice=52000\
         &pendingQuantity=0.1&pendingTimeInForce=GTC",
    ))
}

#[test]
fn an_oto_places_its_pending_order_when_the_working_order_fills() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(2);
    let (alice, bob) = (&keys[0], &keys[1]);
    let list = oto(&exchange, alice);
    assert_eq!(list["contingencyType"], "OTO", "{list}");
    let reports = list["orderReports"].as_array().unwrap();
    assert_eq!(
        (&reports[0]["status"], &reports[1]["status"]),
        (&json!("NEW"), &json!("PENDING_NEW")),
        "{list}"
    );
    let pending = reports[1]["orderId"].clone();
    let waiting = get_order(&exchange, alice, &pending);
    assert_eq!((&waiting["isWorking"], &waiting["workingTime"]), (&json!(false), &json!(-1)), "{waiting}");
    assert_eq!(asks(&exchange), json!([]), "the pending order is not on the book");
    assert_eq!(balance(&exchange, alice, "BTC").1, "0.00000000", "it holds nothing yet");

    ok(order(&exchange, bob, "side=SELL&type=LIMIT&timeInForce=GTC&quantity=0.1&price=49000"));
    let released = get_order(&exchange, alice, &pending);
    assert_eq!((&released["status"], &released["isWorking"]), (&json!("NEW"), &json!(true)), "{released}");
    assert_eq!(asks(&exchange), json!([["52000.00000000", "0.10000000"]]));
    assert_eq!(balance(&exchange, alice, "BTC").1, "0.10000000");
    let status = ok(exchange.binance(
        alice,
        "GET",
        "/api/v3/orderList",
        &format!("orderListId={}", list["orderListId"]),
    ));
    assert_eq!(status["listOrderStatus"], "ALL_DONE");
}

fn connect(exchange: &Exchange, path: &str) -> WebSocket<MaybeTlsStream<TcpStream>> {
    let stream = TcpStream::connect(exchange.ws_address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (socket, _) =
        tungstenite::client(format!("ws://{}{path}", exchange.ws_address), MaybeTlsStream::Plain(stream))
            .unwrap();
    socket
}

fn ws_request(key: &Key, id: &str, method: &str, mut params: Value) -> Value {
    static NONCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    params["apiKey"] = json!(key.api_key);
    params["timestamp"] = json!(now);
    params["recvWindow"] = json!(50_000 + NONCE.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
    let payload = gateway::binance::ws_api::signature_payload(params.as_object().unwrap());
    params["signature"] = json!(gateway::auth::sign(&key.secret, &payload, b""));
    json!({ "id": id, "method": method, "params": params })
}

/// The first message (seen before or still to come) that `wanted` accepts.
fn until(
    socket: &mut WebSocket<MaybeTlsStream<TcpStream>>,
    seen: &mut Vec<Value>,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    if let Some(at) = seen.iter().position(&wanted) {
        return seen.remove(at);
    }
    loop {
        let message = match socket.read().expect("a message in time") {
            Message::Text(text) => serde_json::from_str::<Value>(&text).unwrap(),
            _ => continue,
        };
        if wanted(&message) {
            return message;
        }
        seen.push(message);
    }
}

#[test]
fn the_websocket_api_places_lists_and_the_user_stream_reports_them() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(2);
    let (alice, bob) = (&keys[0], &keys[1]);
    trade_at(&exchange, alice, bob, "50000");
    let mut socket = connect(&exchange, "/ws-api/v3");
    let mut seen = Vec::new();
    socket
        .send(Message::text(
            ws_request(alice, "sub", "userDataStream.subscribe.signature", json!({})).to_string(),
        ))
        .unwrap();
    until(&mut socket, &mut seen, |m| m["id"] == "sub");

    let place = ws_request(
        alice,
        "oco",
        "orderList.place.oco",
        json!({
            "symbol": "BTCUSDT", "side": "SELL", "quantity": "0.2", "listClientOrderId": "ws-exit",
            "aboveType": "LIMIT_MAKER", "abovePrice": "51000",
            "belowType": "STOP_LOSS", "belowStopPrice": "49000",
        }),
    );
    socket.send(Message::text(place.to_string())).unwrap();
    let placed = until(&mut socket, &mut seen, |m| m["id"] == "oco");
    assert_eq!(placed["status"], 200, "{placed}");
    let list_id = placed["result"]["orderListId"].clone();
    let started = until(&mut socket, &mut seen, |m| m["event"]["e"] == "listStatus");
    let event = &started["event"];
    assert_eq!(
        (&event["g"], &event["c"], &event["l"], &event["L"], &event["C"]),
        (&list_id, &json!("OCO"), &json!("EXEC_STARTED"), &json!("EXECUTING"), &json!("ws-exit")),
        "{started}"
    );
    assert_eq!(event["O"].as_array().map(Vec::len), Some(2), "{started}");
    let stop_report = until(&mut socket, &mut seen, |m| {
        m["event"]["e"] == "executionReport" && m["event"]["o"] == "STOP_LOSS"
    });
    let report = &stop_report["event"];
    assert_eq!(
        (&report["P"], &report["g"], &report["x"], &report["X"]),
        (&json!("49000.00000000"), &list_id, &json!("NEW"), &json!("NEW")),
        "{stop_report}"
    );
    assert!(report.get("W").is_none(), "a waiting order has no working time: {stop_report}");

    for (id, method) in [("status", "orderList.status"), ("open", "openOrderLists.status")] {
        let params = if method == "orderList.status" { json!({ "orderListId": list_id }) } else { json!({}) };
        socket.send(Message::text(ws_request(alice, id, method, params).to_string())).unwrap();
        let answer = until(&mut socket, &mut seen, |m| m["id"] == id);
        assert_eq!(answer["status"], 200, "{answer}");
    }

    // A trade at 49,000 fires the stop leg: NEW again with its working
    // time, then it trades; the limit leg expires; the list is done.
    ok(order(&exchange, bob, "side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.3&price=49000"));
    ok(order(&exchange, alice, "side=SELL&type=MARKET&quantity=0.01"));
    let fired = until(&mut socket, &mut seen, |m| {
        m["event"]["e"] == "executionReport" && m["event"]["o"] == "STOP_LOSS" && m["event"]["W"].is_u64()
    });
    assert_eq!((&fired["event"]["x"], &fired["event"]["X"]), (&json!("NEW"), &json!("NEW")), "{fired}");
    let expired = until(&mut socket, &mut seen, |m| {
        m["event"]["e"] == "executionReport"
            && m["event"]["o"] == "LIMIT_MAKER"
            && m["event"]["x"] == "EXPIRED"
    });
    assert_eq!(expired["event"]["g"], list_id);
    let done =
        until(&mut socket, &mut seen, |m| m["event"]["e"] == "listStatus" && m["event"]["l"] == "ALL_DONE");
    assert_eq!(done["event"]["L"], "ALL_DONE", "{done}");
    let filled = until(&mut socket, &mut seen, |m| {
        m["event"]["e"] == "executionReport" && m["event"]["o"] == "STOP_LOSS" && m["event"]["X"] == "FILLED"
    });
    assert_eq!(filled["event"]["z"], "0.20000000", "{filled}");

    let oto = ws_request(
        alice,
        "oto",
        "orderList.place.oto",
        json!({
            "symbol": "BTCUSDT", "workingType": "LIMIT", "workingSide": "BUY", "workingPrice": "40000",
            "workingQuantity": "0.1", "workingTimeInForce": "GTC", "pendingType": "STOP_LOSS",
            "pendingSide": "SELL", "pendingQuantity": "0.1", "pendingStopPrice": "39000",
        }),
    );
    socket.send(Message::text(oto.to_string())).unwrap();
    let placed = until(&mut socket, &mut seen, |m| m["id"] == "oto");
    assert_eq!(placed["result"]["orderReports"][1]["status"], "PENDING_NEW", "{placed}");
    let cancel = ws_request(
        alice,
        "cancel",
        "orderList.cancel",
        json!({ "symbol": "BTCUSDT", "orderListId": placed["result"]["orderListId"] }),
    );
    socket.send(Message::text(cancel.to_string())).unwrap();
    let cancelled = until(&mut socket, &mut seen, |m| m["id"] == "cancel");
    assert_eq!(cancelled["result"]["listOrderStatus"], "ALL_DONE", "{cancelled}");
}

#[test]
fn waiting_orders_and_lists_are_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Exchange::start(dir.path(), &[]);
    let keys = exchange.demo(2);
    let (alice, bob) = (&keys[0], &keys[1]);
    trade_at(&exchange, alice, bob, "50000");
    let stop = ok(order(
        &exchange,
        alice,
        "side=SELL&type=STOP_LOSS&quantity=0.1&stopPrice=49000&newClientOrderId=my-stop",
    ));
    let list = oco_sell(&exchange, alice, "exit-1");
    let pending = oto(&exchange, bob);
    let iceberg = ok(order(
        &exchange,
        alice,
        "side=SELL&type=LIMIT&timeInForce=GTC&quantity=1&price=55000&icebergQty=0.1",
    ));
    let before_open = ok(exchange.binance(alice, "GET", "/api/v3/openOrders", "symbol=BTCUSDT"));
    let before_lists = ok(exchange.binance(alice, "GET", "/api/v3/openOrderList", ""));
    let bob_before = ok(exchange.binance(bob, "GET", "/api/v3/openOrders", "symbol=BTCUSDT"));
    assert_eq!(before_open.as_array().map(Vec::len), Some(4), "{before_open}");

    // A clean stop writes a snapshot with the views (format 4).
    let data_dir = exchange.data_dir.clone();
    assert!(exchange.terminate().success());
    let exchange = Exchange::start(&data_dir, &[]);
    assert_eq!(ok(exchange.binance(alice, "GET", "/api/v3/openOrders", "symbol=BTCUSDT")), before_open);
    assert_eq!(ok(exchange.binance(alice, "GET", "/api/v3/openOrderList", "")), before_lists);
    assert_eq!(ok(exchange.binance(bob, "GET", "/api/v3/openOrders", "symbol=BTCUSDT")), bob_before);
    let stop = get_order(&exchange, alice, &stop["orderId"]);
    assert_eq!((&stop["clientOrderId"], &stop["workingTime"]), (&json!("my-stop"), &json!(-1)));
    assert_eq!(get_order(&exchange, alice, &iceberg["orderId"])["icebergQty"], "0.10000000");
    assert_eq!(asks(&exchange), json!([["51000.00000000", "0.20000000"], ["55000.00000000", "0.10000000"]]));
    let _ = (list, pending);

    // And after a crash, from the journal.
    let exchange = exchange.crash_and_restart();
    assert_eq!(ok(exchange.binance(alice, "GET", "/api/v3/openOrderList", "")), before_lists);
    assert_eq!(ok(exchange.binance(bob, "GET", "/api/v3/openOrders", "symbol=BTCUSDT")), bob_before);
}
