-- Binance's klines carry the volume bought by takers (base and quote),
-- which ccxt and charting bots read. One-minute candles keep both from now
-- on; the candles already written get theirs from the trades table, which
-- holds every trade with its taker's side.
ALTER TABLE candles_1m
    ADD COLUMN taker_buy_volume amount NOT NULL DEFAULT 0,
    ADD COLUMN taker_buy_quote_volume amount NOT NULL DEFAULT 0;

UPDATE candles_1m AS c
SET taker_buy_volume = t.volume, taker_buy_quote_volume = t.quote_volume
FROM (
    SELECT market_id, date_trunc('minute', executed_at) AS minute,
           sum(quantity) AS volume, sum(quote_quantity) AS quote_volume
    FROM trades
    WHERE taker_side = 'buy'
    GROUP BY market_id, date_trunc('minute', executed_at)
) AS t
WHERE c.market_id = t.market_id AND c.open_time = t.minute;
