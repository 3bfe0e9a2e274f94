-- Stop and take-profit orders (market and limit, trailing), icebergs, and
-- order lists (OCO and OTO): see docs/engine.md for their rules and
-- docs/persistence.md for what the writer puts here.
--
-- The new types and statuses. The checks are added NOT VALID and then
-- validated, so that the scan of the rows already written takes no lock
-- that stops the writer (they all pass: the sets only grow).
ALTER TABLE orders DROP CONSTRAINT orders_type_check;
ALTER TABLE orders ADD CONSTRAINT orders_type_check
    CHECK (type IN ('limit', 'market', 'market_by_quote', 'iceberg', 'stop_market', 'stop_limit')) NOT VALID;
ALTER TABLE orders VALIDATE CONSTRAINT orders_type_check;
ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('new', 'pending_new', 'partially_filled', 'filled', 'cancelled', 'expired',
                      'expired_self_trade', 'expired_insufficient_funds', 'expired_contingent',
                      'rejected')) NOT VALID;
ALTER TABLE orders VALIDATE CONSTRAINT orders_status_check;

-- Nullable columns without a default: adding them rewrites nothing.
ALTER TABLE orders
    -- A stop order's trigger: its kind, stop price (NULL for a trailing
    -- stop that starts tracking at once) and trailing delta in basis
    -- points (NULL for a fixed stop).
    ADD COLUMN trigger_kind text CHECK (trigger_kind IN ('stop_loss', 'take_profit')),
    ADD COLUMN stop_price amount,
    ADD COLUMN trailing_bips smallint CHECK (trailing_bips BETWEEN 1 AND 2000),
    -- When the trigger fired, and the trade price that fired it.
    ADD COLUMN triggered_at timestamptz,
    ADD COLUMN trigger_price amount,
    -- An iceberg's shown part (also a stop-limit order that enters as one).
    ADD COLUMN visible_quantity amount,
    -- The order list the order belongs to.
    ADD COLUMN list_id bigint,
    -- Why an OTO's pending order could not be placed (status 'rejected').
    ADD COLUMN reject_reason text;

-- Every OCO and OTO with its current state.
CREATE TABLE order_lists (
    list_id bigint PRIMARY KEY,
    user_id integer NOT NULL,
    market_id integer NOT NULL,
    contingency text NOT NULL CHECK (contingency IN ('oco', 'oto')),
    list_client_id text,
    -- 'open' while its orders are bound to each other; 'done' once they
    -- are closed or the one left goes on alone.
    status text NOT NULL CHECK (status IN ('open', 'done')),
    -- Its two orders: an OCO's in the order they were given; an OTO's
    -- working order, then its pending order.
    order_ids bigint[] NOT NULL CHECK (cardinality(order_ids) = 2),
    created_seq bigint NOT NULL,
    created_at timestamptz NOT NULL,
    updated_seq bigint NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX order_lists_by_user ON order_lists (user_id, list_id);
