"""Drives a running exchange with ccxt's unmodified Binance client.

Started by gateway/tests/binance_compat.rs, which starts the exchange, creates
BTC-USDT and ETH-USDT and two funded users, and passes in the environment:
EXCHANGE_REST (http://host:port), EXCHANGE_WS (ws://host:port), and
MAKER_KEY/MAKER_SECRET, TAKER_KEY/TAKER_SECRET. Exits non-zero on the first
failed check; prints what it checked.
"""

import asyncio
import os
import sys
import time
from decimal import Decimal

import ccxt
import ccxt.pro as ccxtpro

REST = os.environ["EXCHANGE_REST"]
WS = os.environ["EXCHANGE_WS"]
SYMBOL = "BTC/USDT"


def configure(exchange):
    """Points a ccxt Binance client at the exchange; nothing else changes."""
    exchange.urls["api"]["public"] = REST + "/api/v3"
    exchange.urls["api"]["private"] = REST + "/api/v3"
    if "ws" in exchange.urls["api"]:
        exchange.urls["api"]["ws"]["spot"] = WS + "/ws"
        exchange.urls["api"]["ws"]["ws-api"]["spot"] = WS + "/ws-api/v3"
    exchange.options["fetchMarkets"] = {"types": ["spot"]}
    exchange.options["fetchCurrencies"] = False
    exchange.options["fetchMargins"] = False
    return exchange


def client(kind, key, secret):
    return configure(kind({"apiKey": key, "secret": secret, "enableRateLimit": False}))


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print("ok -", what.split("\n")[0][:160], flush=True)


def D(value):
    return Decimal(str(value))


def rest_suite(maker, taker):
    markets = taker.load_markets()
    check(SYMBOL in markets and "ETH/USDT" in markets, f"load_markets finds the markets: {list(markets)}")
    market = markets[SYMBOL]
    check(market["id"] == "BTCUSDT" and market["spot"] and market["active"], f"BTC/USDT is an active spot market: {market['id']}")
    check(D(market["precision"]["price"]) == D("0.01"), f"price precision from PRICE_FILTER: {market['precision']}")
    check(D(market["precision"]["amount"]) == D("0.0001"), f"amount precision from LOT_SIZE: {market['precision']}")
    check(D(market["limits"]["cost"]["min"]) == D("1"), f"minimum cost from NOTIONAL: {market['limits']}")
    check(abs(taker.fetch_time() - time.time() * 1000) < 60_000, "fetch_time answers the server's clock")

    book = taker.fetch_order_book(SYMBOL)
    check(book["bids"] == [] and book["asks"] == [], f"the book starts empty: {book}")

    # The maker rests asks, one with its own client order id and one post-only.
    ask1 = maker.create_order(SYMBOL, "limit", "sell", 0.5, 50_000, {"newClientOrderId": "maker-ask-1"})
    check(ask1["status"] == "open" and ask1["clientOrderId"] == "maker-ask-1", f"a limit ask rests: {ask1['status']} {ask1['clientOrderId']}")
    ask2 = maker.create_order(SYMBOL, "limit", "sell", 0.2, 50_100, {"postOnly": True})
    check(ask2["id"] is not None, f"a post-only (LIMIT_MAKER) ask is accepted: {ask2['id']}")
    bid1 = maker.create_order(SYMBOL, "limit", "buy", 0.3, 49_000)
    check(bid1["status"] == "open", "a limit bid rests")
    try:
        maker.create_order(SYMBOL, "limit", "buy", 0.1, 50_000, {"postOnly": True})
        check(False, "a post-only bid that would take is refused")
    except ccxt.OrderImmediatelyFillable as error:
        check(True, f"a post-only bid that would take is ccxt's OrderImmediatelyFillable: {error}")

    book = taker.fetch_order_book(SYMBOL)
    check([D(p) for p, _ in book["asks"]] == [D(50_000), D(50_100)], f"the book shows the asks: {book['asks']}")
    check(book["nonce"] is not None and book["nonce"] > 0, f"the book carries lastUpdateId: {book['nonce']}")

    # The taker trades: IOC, market by quantity, market by cost.
    ioc = taker.create_order(SYMBOL, "limit", "buy", 0.1, 50_000, {"timeInForce": "IOC"})
    check(ioc["status"] == "closed" and D(ioc["filled"]) == D("0.1"), f"an IOC buy fills: {ioc['status']} {ioc['filled']}")
    check(len(ioc["trades"]) == 1 and D(ioc["trades"][0]["price"]) == D(50_000), f"the IOC answer has its fill: {ioc['trades']}")
    ioc_miss = taker.create_order(SYMBOL, "limit", "buy", 0.1, 40_000, {"timeInForce": "IOC"})
    check(ioc_miss["status"] in ("canceled", "expired") and D(ioc_miss["filled"]) == 0, f"an IOC that cannot fill expires: {ioc_miss['status']}")
    mkt = taker.create_order(SYMBOL, "market", "buy", 0.1)
    check(mkt["status"] == "closed" and D(mkt["filled"]) == D("0.1"), f"a market buy fills: {mkt['status']} {mkt['filled']}")
    by_cost = taker.create_market_buy_order_with_cost(SYMBOL, 5_000)
    check(D(by_cost["filled"]) == D("0.1") and D(by_cost["cost"]) == D(5_000), f"a market buy by cost (quoteOrderQty) spends it: {by_cost['filled']} {by_cost['cost']}")
    fok = taker.create_order(SYMBOL, "limit", "buy", 5, 50_100, {"timeInForce": "FOK"})
    check(D(fok["filled"]) == 0 and fok["status"] in ("canceled", "expired"), f"a FOK too large for the book fills nothing: {fok['status']}")
    sell = taker.create_order(SYMBOL, "market", "sell", 0.05)
    check(D(sell["filled"]) == D("0.05") and D(sell["average"]) == D(49_000), f"a market sell hits the bid: {sell['average']}")

    # Queries.
    fetched = maker.fetch_order(ask1["id"], SYMBOL)
    check(fetched["status"] == "open" and D(fetched["filled"]) == D("0.3") and D(fetched["remaining"]) == D("0.2"), f"fetch_order sees the partly filled ask: {fetched['filled']} {fetched['remaining']}")
    by_client = maker.fetch_order(None, SYMBOL, {"origClientOrderId": "maker-ask-1"})
    check(by_client["id"] == ask1["id"], "fetch_order by client order id")
    open_orders = maker.fetch_open_orders(SYMBOL)
    check(sorted(o["id"] for o in open_orders) == sorted([ask1["id"], ask2["id"], bid1["id"]]), f"fetch_open_orders lists the three: {[o['id'] for o in open_orders]}")
    mine = taker.fetch_my_trades(SYMBOL)
    check(len(mine) == 4 and all(t["symbol"] == SYMBOL for t in mine), f"fetch_my_trades lists the taker's four trades: {len(mine)}")
    check(sum(D(t["amount"]) for t in mine) == D("0.35"), "the trades add up to what was filled")
    public = taker.fetch_trades(SYMBOL)
    check(len(public) == 4, f"fetch_trades lists the market's trades: {len(public)}")
    ticker = taker.fetch_ticker(SYMBOL)
    check(D(ticker["last"]) == D(49_000) and D(ticker["baseVolume"]) == D("0.35"), f"fetch_ticker: last {ticker['last']} volume {ticker['baseVolume']}")
    balance = taker.fetch_balance()
    # 10 BTC + 0.3 bought (less the 0.2% fee paid in BTC) - 0.05 sold.
    expected_btc = D(10) + D("0.3") * D("0.998") - D("0.05")
    check(D(balance["BTC"]["free"]) == expected_btc, f"fetch_balance: BTC free {balance['BTC']['free']} == {expected_btc}")
    check(D(balance["USDT"]["used"]) == 0, "nothing of the taker's is locked")

    # Amend: keep priority (lower the quantity) and cancel-replace (ccxt's edit_order).
    amended = maker.request("order/amend/keepPriority", ["private"], "PUT", {"symbol": "BTCUSDT", "orderId": bid1["id"], "newQty": "0.2"})
    check(D(amended["amendedOrder"]["qty"]) == D("0.2"), f"amend keepPriority lowers the quantity: {amended['amendedOrder']}")
    edited = maker.edit_order(ask2["id"], SYMBOL, "limit", "sell", 0.25, 50_200)
    check(edited["id"] != ask2["id"] and D(edited["price"]) == D(50_200) and D(edited["amount"]) == D("0.25"), f"edit_order replaces the ask: {edited['id']} {edited['price']}")
    check(maker.fetch_order(ask2["id"], SYMBOL)["status"] == "canceled", "the replaced order is cancelled")

    # Cancels: by id, by client id, all.
    cancelled = maker.cancel_order(bid1["id"], SYMBOL)
    check(cancelled["status"] == "canceled", f"cancel by id: {cancelled['status']}")
    cancelled = maker.cancel_order(None, SYMBOL, {"origClientOrderId": "maker-ask-1"})
    check(cancelled["id"] == ask1["id"] and cancelled["status"] == "canceled", "cancel by client order id")
    try:
        maker.cancel_order(ask1["id"], SYMBOL)
        check(False, "a second cancel is refused")
    except ccxt.OrderNotFound as error:
        check(True, f"a second cancel is ccxt's OrderNotFound: {error}")
    maker.create_order(SYMBOL, "limit", "sell", 0.1, 51_000)
    maker.create_order(SYMBOL, "limit", "sell", 0.1, 52_000)
    all_cancelled = maker.cancel_all_orders(SYMBOL)
    check(len(all_cancelled) == 3, f"cancel_all_orders cancels the three left: {len(all_cancelled)}")
    check(maker.fetch_open_orders(SYMBOL) == [], "no open orders are left")

    # Errors clients react to.
    try:
        taker.create_order(SYMBOL, "limit", "buy", 100, 50_000)
        check(False, "an order beyond the balance is refused")
    except ccxt.InsufficientFunds as error:
        check(True, f"insufficient balance is ccxt's InsufficientFunds: {error}")
    try:
        # ccxt rounds amounts itself; its raw endpoint sends the quantity as given.
        taker.private_post_order({"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.00015", "price": "50000"})
        check(False, "a quantity off the lot size is refused")
    except ccxt.InvalidOrder as error:
        check("LOT_SIZE" in str(error), f"off-lot quantity is ccxt's InvalidOrder: {error}")
    try:
        taker.create_order(SYMBOL, "limit", "sell", 0.1, 60_000, {"newClientOrderId": "dup-1"})
        taker.create_order(SYMBOL, "limit", "sell", 0.1, 60_000, {"newClientOrderId": "dup-1"})
        check(False, "a duplicate client order id is refused")
    except ccxt.InvalidOrder as error:
        check("Duplicate order" in str(error), f"a duplicate client order id is refused: {type(error).__name__} {error}")
    taker.cancel_all_orders(SYMBOL)
    bad = client(ccxt.binance, taker.apiKey, "wrong-secret-0123456789")
    bad.markets = taker.markets
    bad.markets_by_id = taker.markets_by_id
    bad.symbols = taker.symbols
    try:
        bad.fetch_balance()
        check(False, "a wrong signature is refused")
    except ccxt.AuthenticationError as error:
        check("Signature" in str(error), f"a wrong signature is ccxt's AuthenticationError: {error}")


async def stream_suite(maker_key, maker_secret, taker_key, taker_secret):
    watcher = client(ccxtpro.binance, taker_key, taker_secret)
    trader = client(ccxt.binance, maker_key, maker_secret)
    own = client(ccxt.binance, taker_key, taker_secret)
    try:
        await watcher.load_markets()
        trader.load_markets()
        own.load_markets()
        book = await watcher.watch_order_book(SYMBOL)
        check(book is not None, "watch_order_book starts from the REST snapshot")
        # The maker changes the book; the local book must follow every change.
        orders = []
        for i in range(20):
            price = 50_000 + 10 * (i % 7)
            orders.append(trader.create_order(SYMBOL, "limit", "sell", 0.01 * (1 + i % 3), price))
            if i % 4 == 3:
                trader.cancel_order(orders[i - 2]["id"], SYMBOL)
        for i in range(5):
            trader.create_order(SYMBOL, "limit", "buy", 0.02, 48_000 - 10 * i)

        deadline = time.time() + 15
        while True:
            rest = trader.fetch_order_book(SYMBOL, 1000)
            book = await asyncio.wait_for(watcher.watch_order_book(SYMBOL), 5)
            local = ([[D(p), D(a)] for p, a in book["asks"]], [[D(p), D(a)] for p, a in book["bids"]])
            remote = ([[D(p), D(a)] for p, a in rest["asks"]], [[D(p), D(a)] for p, a in rest["bids"]])
            if local == remote:
                break
            if time.time() > deadline:
                raise AssertionError(f"the local book never matched the exchange's:\nlocal  {local}\nremote {remote}")
        check(True, f"the local book kept from the depth stream equals the exchange's ({len(local[0])} asks, {len(local[1])} bids)")

        # The taker's own fills and order updates arrive over the user data stream.
        my_trades = asyncio.ensure_future(watcher.watch_my_trades(SYMBOL))
        await asyncio.sleep(0.5)
        taken = own.create_order(SYMBOL, "market", "buy", 0.02)
        trades = await asyncio.wait_for(my_trades, 10)
        check(len(trades) >= 1 and trades[0]["order"] == taken["id"], f"watch_my_trades receives the taker's fill: {[t['order'] for t in trades]} vs {taken['id']}")
        orders_future = asyncio.ensure_future(watcher.watch_orders(SYMBOL))
        await asyncio.sleep(0.2)
        resting = own.create_order(SYMBOL, "limit", "buy", 0.01, 40_000)
        seen = await asyncio.wait_for(orders_future, 10)
        check(any(o["id"] == resting["id"] and o["status"] == "open" for o in seen), f"watch_orders sees the new order: {[(o['id'], o['status']) for o in seen]}")
        own.cancel_order(resting["id"], SYMBOL)
        deadline = time.time() + 10
        while True:
            seen = await asyncio.wait_for(watcher.watch_orders(SYMBOL), 10)
            if any(o["id"] == resting["id"] and o["status"] == "canceled" for o in seen):
                break
            if time.time() > deadline:
                raise AssertionError("the cancel never reached watch_orders")
        check(True, "watch_orders sees the cancel")
    finally:
        await watcher.close()


def main():
    maker = client(ccxt.binance, os.environ["MAKER_KEY"], os.environ["MAKER_SECRET"])
    taker = client(ccxt.binance, os.environ["TAKER_KEY"], os.environ["TAKER_SECRET"])
    maker.load_markets()
    rest_suite(maker, taker)
    asyncio.run(stream_suite(os.environ["MAKER_KEY"], os.environ["MAKER_SECRET"], os.environ["TAKER_KEY"], os.environ["TAKER_SECRET"]))
    print("all checks passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # noqa: BLE001 - report any failure and exit non-zero
        print(f"FAILED: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        raise
