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
    exchange.urls["api"]["sapi"] = REST + "/sapi/v1"  # fetch_status, fetch_trading_fees
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

        # Tickers, the best bid and ask, trades, balances and candles as they change.
        ticker = await asyncio.wait_for(watcher.watch_ticker(SYMBOL), 10)
        check(ticker["symbol"] == SYMBOL and ticker["last"] is not None, f"watch_ticker (@ticker): last {ticker['last']}")
        tickers = await asyncio.wait_for(watcher.watch_tickers([SYMBOL]), 10)
        check(SYMBOL in tickers, f"watch_tickers (@miniTicker): {list(tickers)}")
        bids_asks = asyncio.ensure_future(watcher.watch_bids_asks([SYMBOL]))
        public_trades = asyncio.ensure_future(watcher.watch_trades(SYMBOL))
        balance = asyncio.ensure_future(watcher.watch_balance())
        await asyncio.sleep(0.5)
        bought = own.create_order(SYMBOL, "market", "buy", 0.01)
        top = await asyncio.wait_for(bids_asks, 10)
        check(SYMBOL in top and top[SYMBOL]["ask"] is not None, f"watch_bids_asks (@bookTicker): ask {top[SYMBOL]['ask']}")
        seen = await asyncio.wait_for(public_trades, 10)
        check(any(t["id"] == bought["trades"][0]["id"] for t in seen), f"watch_trades sees the trade: {[t['id'] for t in seen]}")
        funds = await asyncio.wait_for(balance, 10)
        check("BTC" in funds and funds["BTC"]["free"] is not None, f"watch_balance (outboundAccountPosition): BTC {funds['BTC']}")
        candles = await asyncio.wait_for(watcher.watch_ohlcv(SYMBOL, "1m"), 10)
        check(len(candles) >= 1 and D(candles[-1][5]) > 0, f"watch_ohlcv (@kline_1m): {candles[-1]}")
    finally:
        await watcher.close()


def market_maker_suite(maker, taker):
    """The rest of what a market maker calls, with the parameters ccxt sends."""
    check(maker.fetch_status()["status"] == "ok", "fetch_status (sapi system/status) says ok")
    tickers = taker.fetch_tickers()
    check(SYMBOL in tickers and "ETH/USDT" in tickers, f"fetch_tickers has every market: {list(tickers)}")
    check(list(taker.fetch_tickers([SYMBOL])) == [SYMBOL], "fetch_tickers of one symbol")
    check(SYMBOL in taker.fetch_bids_asks([SYMBOL]), "fetch_bids_asks (bookTicker)")
    candles = taker.fetch_ohlcv(SYMBOL, "1m")
    check(len(candles) >= 1 and all(len(c) == 6 for c in candles), f"fetch_ohlcv 1m from klines: {candles}")
    check(sum(D(c[5]) for c in taker.fetch_ohlcv(SYMBOL, "1h")) == D("0.35"), "fetch_ohlcv 1h volume is the trades' quantity")
    try:
        taker.fetch_ohlcv(SYMBOL, "1w")
        check(False, "a week interval is refused")
    except ccxt.BadRequest as error:
        check("-1120" in str(error), f"an interval longer than a day is -1120: {error}")
    fees = taker.fetch_trading_fees()
    check(D(fees[SYMBOL]["maker"]) == D("0.001") and D(fees[SYMBOL]["taker"]) == D("0.002"), f"fetch_trading_fees (sapi asset/tradeFee): {fees[SYMBOL]}")
    check(D(taker.fetch_trading_fee("ETH/USDT")["taker"]) == D("0.002"), "fetch_trading_fee of one market")

    # Orders with the parameters ccxt maps: clientOrderId, quoteOrderQty, timeInForce PO.
    resting = maker.create_order("ETH/USDT", "limit", "sell", 1, 3_000, {"clientOrderId": "mm-eth-1"})
    check(resting["clientOrderId"] == "mm-eth-1", f"ccxt's clientOrderId is newClientOrderId: {resting['clientOrderId']}")
    post_only = maker.create_order("ETH/USDT", "limit", "sell", 1, 3_100, {"timeInForce": "PO"})
    check(post_only["info"]["type"] == "LIMIT_MAKER", f"timeInForce PO is LIMIT_MAKER: {post_only['info']['type']}")
    by_quote = taker.create_order("ETH/USDT", "market", "buy", None, None, {"quoteOrderQty": 300})
    check(D(by_quote["cost"]) == D(300) and D(by_quote["filled"]) == D("0.1"), f"quoteOrderQty in params: {by_quote['cost']} {by_quote['filled']}")
    try:
        maker.create_orders([{"symbol": "ETH/USDT", "type": "limit", "side": "sell", "amount": 1, "price": 3_200}])
        check(False, "create_orders is refused by ccxt for spot")
    except ccxt.NotSupported as error:
        check(True, f"create_orders: ccxt itself refuses spot batches, nothing is sent: {error}")

    # Order history: allOrders, open ones across symbols.
    every = maker.fetch_orders(SYMBOL)
    check(len(every) >= 6 and all(o["symbol"] == SYMBOL for o in every), f"fetch_orders (allOrders) lists open and closed orders: {len(every)}")
    closed = taker.fetch_closed_orders(SYMBOL)
    check(closed and all(o["status"] == "closed" for o in closed), f"fetch_closed_orders: {[o['status'] for o in closed]}")
    cancelled = maker.fetch_canceled_orders(SYMBOL)
    check(cancelled and all(o["status"] == "canceled" for o in cancelled), f"fetch_canceled_orders: {len(cancelled)}")
    since = every[1]["timestamp"]
    check(all(o["timestamp"] >= since for o in maker.fetch_orders(SYMBOL, since)), "fetch_orders since a time")
    maker.options["fetchOpenOrders"]["warnWithoutSymbol"] = False
    open_ids = sorted(o["id"] for o in maker.fetch_open_orders())
    check(open_ids == sorted([resting["id"], post_only["id"]]), f"fetch_open_orders of every symbol: {open_ids}")
    check(maker.fetch_order(None, "ETH/USDT", {"clientOrderId": "mm-eth-1"})["id"] == resting["id"], "fetch_order by clientOrderId")
    maker.cancel_all_orders("ETH/USDT")

    # A self-trade (selfTradePreventionMode NONE): both sides in fetch_my_trades,
    # so balances plus commissions add up to deposits.
    before = maker.fetch_balance()
    maker.create_order("ETH/USDT", "limit", "sell", 2, 2_900)
    bought = maker.create_order("ETH/USDT", "limit", "buy", 2, 2_900, {"selfTradePreventionMode": "NONE"})
    check(bought["status"] == "closed", f"the self-trade fills: {bought['status']}")
    trade_id = bought["trades"][0]["id"]
    sides = [t for t in maker.fetch_my_trades("ETH/USDT") if t["id"] == trade_id]
    check(sorted(t["side"] for t in sides) == ["buy", "sell"] and sorted(t["takerOrMaker"] for t in sides) == ["maker", "taker"], f"fetch_my_trades has both sides of the self-trade: {[(t['side'], t['takerOrMaker'], t['fee']) for t in sides]}")
    after = maker.fetch_balance()
    for asset in ("ETH", "USDT"):
        fees = sum(D(t["fee"]["cost"]) for t in sides if t["fee"]["currency"] == asset)
        check(D(before[asset]["total"]) - D(after[asset]["total"]) == fees, f"{asset}: what the self-trade cost is its two commissions ({fees})")


async def ws_api_suite(key, secret, other_key, other_secret):
    """ccxt.pro's WebSocket API methods (order entry and queries over /ws-api/v3)."""
    ws = client(ccxtpro.binance, key, secret)
    other = client(ccxt.binance, other_key, other_secret)
    try:
        await ws.load_markets()
        other.load_markets()
        # ccxt.pro sends a `clientOrderId` param on as it is (besides newClientOrderId),
        # which is refused as unread (-1104): newClientOrderId is the name to use.
        try:
            await ws.create_order_ws(SYMBOL, "limit", "sell", 0.1, 55_000, {"clientOrderId": "ws-ask-0"})
            check(False, "create_order_ws with clientOrderId is refused")
        except ccxt.BadRequest as error:
            check("Not read: 'clientOrderId'" in str(error), f"create_order_ws passes clientOrderId through: {error}")
        placed = await ws.create_order_ws(SYMBOL, "limit", "sell", 0.1, 55_000, {"newClientOrderId": "ws-ask-1"})
        check(placed["status"] == "open" and placed["clientOrderId"] == "ws-ask-1", f"create_order_ws rests a limit order: {placed['status']}")
        fetched = await ws.fetch_order_ws(placed["id"], SYMBOL)
        check(fetched["id"] == placed["id"] and fetched["status"] == "open", "fetch_order_ws")
        edited = await ws.edit_order_ws(placed["id"], SYMBOL, "limit", "sell", 0.1, 55_100)
        check(edited["id"] != placed["id"] and D(edited["price"]) == D(55_100), f"edit_order_ws (order.cancelReplace): {edited['price']}")
        second = await ws.create_order_ws(SYMBOL, "limit", "sell", 0.1, 55_200)
        listed = await ws.fetch_open_orders_ws(SYMBOL)
        check(sorted(o["id"] for o in listed) == sorted([edited["id"], second["id"]]), f"fetch_open_orders_ws: {[o['id'] for o in listed]}")
        cancelled = await ws.cancel_order_ws(second["id"], SYMBOL)
        check(cancelled["status"] == "canceled", f"cancel_order_ws: {cancelled['status']}")
        other.create_order(SYMBOL, "limit", "sell", 0.05, 54_000)
        taken = await ws.create_order_ws(SYMBOL, "market", "buy", 0.05)
        check(taken["status"] == "closed" and D(taken["filled"]) == D("0.05"), f"create_order_ws market buy takes: {taken['status']} {taken['filled']}")
        other.create_order(SYMBOL, "limit", "buy", 0.02, 55_100)
        mine = await ws.fetch_my_trades_ws(SYMBOL)
        check(any(t["order"] == edited["id"] and t["takerOrMaker"] == "maker" for t in mine), f"fetch_my_trades_ws has the maker fill: {[(t['order'], t['takerOrMaker']) for t in mine]}")
        recent = await ws.fetch_trades_ws(SYMBOL)
        check(len(recent) >= 1 and all(r["price"] is not None for r in recent), f"fetch_trades_ws (trades.historical): {len(recent)}")
        balance = await ws.fetch_balance_ws()
        # ccxt.pro parses account.status as a futures account: the spot
        # balances are in info only.
        btc = [b for b in balance["info"]["balances"] if b["asset"] == "BTC"]
        check(btc and D(btc[0]["locked"]) == D("0.08"), f"fetch_balance_ws (account.status): BTC {btc}")
        orders = await ws.fetch_orders_ws(SYMBOL)
        check({placed["id"], second["id"], edited["id"]} <= {o["id"] for o in orders}, "fetch_orders_ws (allOrders)")
        candles = await ws.fetch_ohlcv_ws(SYMBOL, "1m")
        check(len(candles) >= 1, f"fetch_ohlcv_ws (klines): {candles[-1]}")
        all_cancelled = await ws.cancel_all_orders_ws(SYMBOL)
        check([o["id"] for o in all_cancelled] == [edited["id"]], f"cancel_all_orders_ws: {[o['id'] for o in all_cancelled]}")
        for name, call in (("fetch_order_book_ws", ws.fetch_order_book_ws(SYMBOL)), ("fetch_ticker_ws", ws.fetch_ticker_ws(SYMBOL))):
            try:
                await call
                check(False, f"{name} is refused by ccxt for spot")
            except ccxt.BadRequest as error:
                check("only supports swap markets" in str(error), f"{name}: ccxt.pro refuses spot markets itself, nothing is sent: {error}")
    finally:
        await ws.close()


async def listen_key_suite(key, secret):
    """The listenKey user data stream, as bots built before the WebSocket
    API use it: ccxt's own calls of the userDataStream endpoints (its
    implicit API, signed as ccxt signs them), then the stream at
    /ws/<listenKey> read with aiohttp (which ccxt.pro itself uses). The
    pinned ccxt.pro subscribes spot user data over the WebSocket API
    instead, so the stream is read here directly."""
    import aiohttp

    rest = client(ccxt.binance, key, secret)
    rest.load_markets()
    opened = rest.publicPostUserDataStream()
    listen_key = opened["listenKey"]
    check(isinstance(listen_key, str) and len(listen_key) == 60, f"POST userDataStream opens a listen key: {opened}")
    again = rest.publicPostUserDataStream()
    check(again["listenKey"] == listen_key, "a second POST returns the live key, as Binance does")
    check(rest.publicPutUserDataStream({"listenKey": listen_key}) == {}, "PUT userDataStream keeps the key alive")
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{WS}/ws/{listen_key}") as socket:
            placed = rest.create_order(SYMBOL, "limit", "buy", 0.01, 30_000)
            events = []
            deadline = time.time() + 10
            while not any(e.get("e") == "executionReport" and str(e.get("i")) == placed["id"] for e in events):
                message = await asyncio.wait_for(socket.receive_json(), max(0.1, deadline - time.time()))
                events.append(message)
            check(True, f"/ws/<listenKey> delivers the order's executionReport: {[e.get('e') for e in events]}")
            while not any(e.get("e") == "outboundAccountPosition" for e in events):
                events.append(await asyncio.wait_for(socket.receive_json(), max(0.1, deadline - time.time())))
            check(True, "and the balance change (outboundAccountPosition), bare events as on Binance")
            rest.cancel_order(placed["id"], SYMBOL)
            check(rest.publicDeleteUserDataStream({"listenKey": listen_key}) == {}, "DELETE userDataStream closes the key")
            closed = await asyncio.wait_for(socket.receive(), 10)
            while closed.type == aiohttp.WSMsgType.TEXT:
                closed = await asyncio.wait_for(socket.receive(), 10)
            check(closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING), f"and closes its stream: {closed}")
    try:
        rest.publicPutUserDataStream({"listenKey": listen_key})
        raise AssertionError("a closed listen key was kept alive")
    except ccxt.ExchangeError as error:
        check("-1125" in str(error), f"a closed key is unknown (-1125): {error}")


def orders_suite(maker, taker):
    """Stop-loss, take-profit, trailing and iceberg orders through ccxt's
    unified create_order parameters, and OCO/OTO lists through its implicit
    orderList endpoints (this ccxt has no unified OCO call), on ETH/USDT."""
    eth = "ETH/USDT"
    for who in (maker, taker):
        if who.fetch_open_orders(eth):
            who.cancel_all_orders(eth)
    # A last price of 3,000.
    maker.create_order(eth, "limit", "sell", 0.01, 3_000)
    taker.create_order(eth, "market", "buy", 0.01)

    stop_limit = maker.create_order(eth, "limit", "sell", 0.5, 2_890, {"stopLossPrice": 2_900})
    check(stop_limit["info"]["type"] == "STOP_LOSS_LIMIT" and D(stop_limit["triggerPrice"]) == D(2_900) and stop_limit["status"] == "open",
          f"stopLossPrice on a limit order is a STOP_LOSS_LIMIT: {stop_limit['info']}")
    stop_market = maker.create_order(eth, "market", "sell", 0.5, None, {"triggerPrice": 2_800})
    check(stop_market["info"]["type"] == "STOP_LOSS" and D(stop_market["triggerPrice"]) == D(2_800),
          f"triggerPrice on a market order is a STOP_LOSS: {stop_market['info']}")
    take_profit = maker.create_order(eth, "limit", "sell", 0.5, 3_300, {"takeProfitPrice": 3_200})
    check(take_profit["info"]["type"] == "TAKE_PROFIT_LIMIT" and D(take_profit["triggerPrice"]) == D(3_200),
          f"takeProfitPrice is a TAKE_PROFIT_LIMIT: {take_profit['info']}")
    stop_price = maker.create_order(eth, "market", "sell", 0.1, None, {"stopPrice": 2_700})
    check(stop_price["info"]["type"] == "STOP_LOSS", f"stopPrice is a STOP_LOSS too: {stop_price['info']}")
    trailing = maker.create_order(eth, "market", "sell", 0.2, None, {"trailingPercent": 1, "stopLossOrTakeProfit": "stopLoss"})
    check(trailing["info"]["type"] == "STOP_LOSS" and trailing["info"].get("trailingDelta") == 100,
          f"trailingPercent 1 is a trailing STOP_LOSS of 100 basis points: {trailing['info']}")
    iceberg = maker.create_order(eth, "limit", "sell", 1, 3_500, {"icebergAmount": 0.1})
    check(D(iceberg["info"]["icebergQty"]) == D("0.1"), f"icebergAmount is icebergQty: {iceberg['info']}")
    book = taker.fetch_order_book(eth)
    check([[D(p), D(q)] for p, q in book["asks"]] == [[D(3_500), D("0.1")]], f"only the iceberg's visible part is in the book: {book['asks']}")
    try:
        maker.create_order(eth, "limit", "sell", 0.1, 3_100, {"stopLossPrice": 3_100})
        check(False, "a stop that would trigger immediately is refused")
    except ccxt.InvalidOrder as error:
        # ccxt knows Binance's exact message and raises OrderImmediatelyFillable.
        check("Order would trigger immediately." in str(error), f"a stop that would trigger at once is refused as on Binance: {type(error).__name__}: {error}")

    open_ids = {o["id"]: o for o in maker.fetch_open_orders(eth)}
    waiting = [stop_limit, stop_market, take_profit, stop_price, trailing]
    check(all(o["id"] in open_ids for o in waiting + [iceberg]), f"fetch_open_orders lists the waiting orders: {sorted(open_ids)}")
    check(D(open_ids[stop_limit["id"]]["triggerPrice"]) == D(2_900), "with their trigger price")
    cancelled = maker.cancel_order(take_profit["id"], eth)
    check(cancelled["status"] == "canceled", f"cancel_order cancels a waiting order: {cancelled['status']}")
    for other in (stop_market, stop_price, trailing):
        maker.cancel_order(other["id"], eth)

    # A trade at 2,900 fires the stop-limit: it rests at 2,890 and trades.
    before = maker.fetch_balance()
    taker.create_order(eth, "limit", "buy", 0.01, 2_900)
    maker.create_order(eth, "market", "sell", 0.01)
    fired = maker.fetch_order(stop_limit["id"], eth)
    check(fired["status"] == "open" and fired["info"]["isWorking"] is True, f"the fired stop works: {fired['info']}")
    bought = taker.create_order(eth, "limit", "buy", 0.5, 2_890, {"timeInForce": "IOC"})
    check(D(bought["filled"]) == D("0.5") and D(bought["average"]) == D(2_890), f"a taker fills it: {bought['filled']} at {bought['average']}")
    done = maker.fetch_order(stop_limit["id"], eth)
    check(done["status"] == "closed" and D(done["filled"]) == D("0.5"), f"the stop order is filled: {done['status']}")
    after = maker.fetch_balance()
    # The market sell of 0.01 at 2,900 (taker fee 0.2%) and the stop's 0.5 at 2,890 (maker fee 0.1%).
    got_usdt = D(after["USDT"]["total"]) - D(before["USDT"]["total"])
    expected = D("0.01") * 2_900 * D("0.998") + D("0.5") * 2_890 * D("0.999")
    check(got_usdt == expected, f"the maker received {got_usdt} USDT, {expected} expected")
    check(D(before["ETH"]["total"]) - D(after["ETH"]["total"]) == D("0.51"), "and gave 0.51 ETH")

    # OCO: take profit at 3,100 or stop at 2,700; the limit order trades.
    oco = maker.private_post_orderlist_oco({
        "symbol": "ETHUSDT", "side": "SELL", "quantity": "0.3",
        "aboveType": "LIMIT_MAKER", "abovePrice": "3100",
        "belowType": "STOP_LOSS", "belowStopPrice": "2700",
    })
    check(oco["contingencyType"] == "OCO" and oco["listOrderStatus"] == "EXECUTING" and len(oco["orderReports"]) == 2,
          f"privatePostOrderListOco places an OCO: {oco['contingencyType']} {oco['listOrderStatus']}")
    stop_leg = next(r for r in oco["orderReports"] if r["type"] == "STOP_LOSS")
    limit_leg = next(r for r in oco["orderReports"] if r["type"] == "LIMIT_MAKER")
    eth_locked = D(maker.fetch_balance()["ETH"]["used"])
    check(eth_locked == D("1.3"), f"the OCO holds its 0.3 ETH once (beside the iceberg's 1): {eth_locked}")
    lists = maker.private_get_openorderlist()
    check(len(lists) == 1 and str(lists[0]["orderListId"]) == str(oco["orderListId"]), "privateGetOpenOrderList lists it")
    taken = taker.create_order(eth, "limit", "buy", 0.3, 3_100, {"timeInForce": "IOC"})
    check(D(taken["filled"]) == D("0.3") and D(taken["average"]) == D(3_100), f"a taker takes the limit leg: {taken['filled']}")
    check(maker.fetch_order(limit_leg["orderId"], eth)["status"] == "closed", "the limit leg is filled")
    expired = maker.fetch_order(stop_leg["orderId"], eth)
    check(expired["status"] == "expired", f"the stop leg is cancelled with it (EXPIRED): {expired['status']}")
    status = maker.private_get_orderlist({"orderListId": oco["orderListId"]})
    check(status["listOrderStatus"] == "ALL_DONE", f"the list is done: {status['listOrderStatus']}")
    check(D(maker.fetch_balance()["ETH"]["used"]) == D("1"), "and holds nothing more")

    # An OCO cancelled through one of its orders.
    oco = maker.private_post_orderlist_oco({
        "symbol": "ETHUSDT", "side": "SELL", "quantity": "0.3",
        "aboveType": "TAKE_PROFIT", "aboveStopPrice": "3200",
        "belowType": "STOP_LOSS_LIMIT", "belowStopPrice": "2700", "belowPrice": "2690", "belowTimeInForce": "GTC",
    })
    cancelled = maker.cancel_order(str(oco["orderReports"][0]["orderId"]), eth)
    check(cancelled["status"] in ("canceled", None) or cancelled["info"].get("listOrderStatus") == "ALL_DONE", f"cancel_order on a leg cancels the list: {cancelled['info']}")
    check(maker.private_get_openorderlist() == [], "no list is open after that")

    # OTO: buy at 2,600, then sell at 3,400 once filled.
    oto = maker.private_post_orderlist_oto({
        "symbol": "ETHUSDT", "workingType": "LIMIT", "workingSide": "BUY", "workingPrice": "2600",
        "workingQuantity": "0.1", "workingTimeInForce": "GTC", "pendingType": "LIMIT", "pendingSide": "SELL",
        "pendingPrice": "3400", "pendingQuantity": "0.1", "pendingTimeInForce": "GTC",
    })
    pending = oto["orderReports"][1]
    check(oto["contingencyType"] == "OTO" and pending["status"] == "PENDING_NEW", f"privatePostOrderListOto places an OTO: {pending['status']}")
    taker.create_order(eth, "market", "sell", 0.1)
    released = maker.fetch_order(str(pending["orderId"]), eth)
    check(released["status"] == "open" and released["info"]["isWorking"] is True, f"the pending order works once the working order filled: {released['info']['status']}")
    book = taker.fetch_order_book(eth)
    check([D(p) for p, _ in book["asks"]] == [D(3_400), D(3_500)], f"and rests in the book: {book['asks']}")
    maker.cancel_all_orders(eth)
    check(maker.fetch_open_orders(eth) == [], "cancel_all_orders cancels them all")


async def orders_ws_suite(key, secret):
    """ccxt.pro places and cancels a stop-loss-limit order over the WebSocket API."""
    ws = client(ccxtpro.binance, key, secret)
    try:
        await ws.load_markets()
        # ccxt.pro sends the unified trigger parameters on as they are
        # (besides stopPrice), which is refused as unread, as it would be
        # by Binance: Binance's own type and stopPrice are the way.
        try:
            await ws.create_order_ws("ETH/USDT", "limit", "sell", 0.1, 1_990, {"stopLossPrice": 2_000})
            check(False, "create_order_ws with stopLossPrice is refused")
        except ccxt.BadRequest as error:
            check("Not read: 'stopLossPrice'" in str(error), f"create_order_ws with stopLossPrice: the unread parameter is named: {error}")
        placed = await ws.create_order_ws("ETH/USDT", "STOP_LOSS_LIMIT", "sell", 0.1, 1_990, {"stopPrice": 2_000})
        check(placed["info"]["type"] == "STOP_LOSS_LIMIT" and D(placed["info"]["stopPrice"]) == D(2_000),
              f"create_order_ws places a STOP_LOSS_LIMIT with stopPrice over order.place: {placed['info']}")
        cancelled = await ws.cancel_order_ws(placed["id"], "ETH/USDT")
        check(cancelled["status"] == "canceled", f"cancel_order_ws cancels it: {cancelled['status']}")
    finally:
        await ws.close()


def main():
    maker = client(ccxt.binance, os.environ["MAKER_KEY"], os.environ["MAKER_SECRET"])
    taker = client(ccxt.binance, os.environ["TAKER_KEY"], os.environ["TAKER_SECRET"])
    maker.load_markets()
    rest_suite(maker, taker)
    market_maker_suite(maker, taker)
    asyncio.run(ws_api_suite(os.environ["MAKER_KEY"], os.environ["MAKER_SECRET"], os.environ["TAKER_KEY"], os.environ["TAKER_SECRET"]))
    asyncio.run(listen_key_suite(os.environ["MAKER_KEY"], os.environ["MAKER_SECRET"]))
    asyncio.run(stream_suite(os.environ["MAKER_KEY"], os.environ["MAKER_SECRET"], os.environ["TAKER_KEY"], os.environ["TAKER_SECRET"]))
    orders_suite(maker, taker)
    asyncio.run(orders_ws_suite(os.environ["MAKER_KEY"], os.environ["MAKER_SECRET"]))
    print("all checks passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # noqa: BLE001 - report any failure and exit non-zero
        print(f"FAILED: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        raise
