-- The exchange's history in PostgreSQL, written by the writer that follows
-- the matcher's events (see docs/persistence.md). The journal is the source
-- of truth; these tables converge to it.
--
-- Money is NUMERIC at the asset's own scale (a BTC amount has 8 decimals, a
-- USDT amount 6): the writer converts the engine's integer units exactly.
-- The domain refuses NaN and more decimals than any asset may have.

CREATE DOMAIN amount AS NUMERIC
    CHECK (VALUE <> 'NaN' AND scale(VALUE) <= 18);

-- The last sequence number whose events are in these tables. Updated in the
-- same transaction as the rows, so that a restart continues exactly after it.
CREATE TABLE writer_cursor (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    last_seq bigint NOT NULL CHECK (last_seq >= 0),
    last_command_at timestamptz,
    written_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO writer_cursor (id, last_seq) VALUES (true, 0);

CREATE TABLE assets (
    asset_id integer PRIMARY KEY,
    symbol text NOT NULL UNIQUE,
    decimals smallint NOT NULL CHECK (decimals BETWEEN 0 AND 18),
    created_seq bigint NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE TABLE markets (
    market_id integer PRIMARY KEY,
    -- BASE-QUOTE, as the API names it.
    name text NOT NULL UNIQUE,
    base_asset_id integer NOT NULL REFERENCES assets,
    quote_asset_id integer NOT NULL REFERENCES assets,
    -- The engine's integer scale factors (u64), kept exactly.
    base_units_per_lot numeric(20, 0) NOT NULL,
    quote_units_per_tick numeric(20, 0) NOT NULL,
    tick_size amount NOT NULL,
    lot_size amount NOT NULL,
    min_quantity amount NOT NULL,
    min_notional amount NOT NULL,
    maker_fee_ppm integer NOT NULL,
    taker_fee_ppm integer NOT NULL,
    status text NOT NULL CHECK (status IN ('open', 'cancel_only', 'halted')),
    created_seq bigint NOT NULL,
    created_at timestamptz NOT NULL,
    updated_seq bigint NOT NULL
);

CREATE TABLE users (
    user_id integer PRIMARY KEY,
    created_seq bigint NOT NULL,
    created_at timestamptz NOT NULL
);

-- Key identifiers only: secrets live in the journal and nowhere else.
CREATE TABLE api_keys (
    api_key text PRIMARY KEY,
    user_id integer NOT NULL REFERENCES users,
    created_seq bigint NOT NULL,
    created_at timestamptz NOT NULL,
    revoked_seq bigint,
    revoked_at timestamptz
);

-- Every order with its current state.
CREATE TABLE orders (
    order_id bigint PRIMARY KEY,
    user_id integer NOT NULL,
    market_id integer NOT NULL,
    side text NOT NULL CHECK (side IN ('buy', 'sell')),
    type text NOT NULL CHECK (type IN ('limit', 'market', 'market_by_quote')),
    time_in_force text CHECK (time_in_force IN ('GTC', 'IOC', 'FOK', 'POST_ONLY')),
    -- Limit price (NULL for market orders); changed by amends.
    price amount,
    -- Quantity asked for in base (NULL for a market buy by quote amount);
    -- an amend sets it to what was filled plus the new open quantity.
    quantity amount,
    -- What a market buy by quote may spend.
    quote_amount amount,
    client_order_id text,
    self_trade_prevention text NOT NULL,
    status text NOT NULL CHECK (status IN ('new', 'partially_filled', 'filled', 'cancelled', 'expired',
                                           'expired_self_trade', 'expired_insufficient_funds')),
    remaining_quantity amount NOT NULL,
    executed_quantity amount NOT NULL,
    executed_quote amount NOT NULL,
    created_seq bigint NOT NULL,
    created_at timestamptz NOT NULL,
    updated_seq bigint NOT NULL,
    updated_at timestamptz NOT NULL,
    closed_at timestamptz
);
CREATE INDEX orders_by_user ON orders (user_id, order_id);
CREATE INDEX orders_by_user_time ON orders (user_id, created_at);

-- Every trade with both sides and their fees.
CREATE TABLE trades (
    trade_id bigint PRIMARY KEY,
    seq bigint NOT NULL,
    market_id integer NOT NULL,
    price amount NOT NULL,
    quantity amount NOT NULL,
    quote_quantity amount NOT NULL,
    taker_side text NOT NULL CHECK (taker_side IN ('buy', 'sell')),
    maker_order_id bigint NOT NULL,
    maker_user_id integer NOT NULL,
    taker_order_id bigint NOT NULL,
    taker_user_id integer NOT NULL,
    maker_fee amount NOT NULL,
    maker_fee_asset_id integer NOT NULL,
    taker_fee amount NOT NULL,
    taker_fee_asset_id integer NOT NULL,
    executed_at timestamptz NOT NULL
);
CREATE INDEX trades_by_market ON trades (market_id, trade_id);
CREATE INDEX trades_by_maker ON trades (maker_user_id, trade_id);
CREATE INDEX trades_by_taker ON trades (taker_user_id, trade_id);
-- Times only grow with trade ids (the matcher's clock never runs
-- backwards), so a block range index serves time ranges at little cost.
CREATE INDEX trades_by_time ON trades USING brin (executed_at);

-- Every balance change: the balance after it, the change, and its cause.
CREATE TABLE ledger (
    seq bigint NOT NULL,
    -- The change's place among the events of its command.
    event_index integer NOT NULL,
    user_id integer NOT NULL,
    asset_id integer NOT NULL,
    available amount NOT NULL CHECK (available >= 0),
    locked amount NOT NULL CHECK (locked >= 0),
    available_change amount NOT NULL,
    locked_change amount NOT NULL,
    cause text NOT NULL CHECK (cause IN ('deposit', 'withdrawal', 'order', 'trade', 'cancel', 'amend')),
    order_id bigint,
    trade_id bigint,
    recorded_at timestamptz NOT NULL,
    PRIMARY KEY (seq, event_index)
);
CREATE INDEX ledger_by_account ON ledger (user_id, asset_id, seq);

-- Each account's balance as of the cursor.
CREATE TABLE balances (
    user_id integer NOT NULL,
    asset_id integer NOT NULL,
    available amount NOT NULL CHECK (available >= 0),
    locked amount NOT NULL CHECK (locked >= 0),
    updated_seq bigint NOT NULL,
    PRIMARY KEY (user_id, asset_id)
);

-- One-minute OHLCV candles; longer intervals are derived from them.
CREATE TABLE candles_1m (
    market_id integer NOT NULL,
    open_time timestamptz NOT NULL,
    open amount NOT NULL,
    high amount NOT NULL,
    low amount NOT NULL,
    close amount NOT NULL,
    volume amount NOT NULL,
    quote_volume amount NOT NULL,
    trades bigint NOT NULL,
    first_trade_id bigint NOT NULL,
    last_trade_id bigint NOT NULL,
    PRIMARY KEY (market_id, open_time)
);
