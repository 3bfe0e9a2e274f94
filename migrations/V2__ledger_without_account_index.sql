-- The writer's hottest cost was keeping ledger_by_account up to date: the
-- ledger takes about two thirds of all rows the writer writes (2 to 4 per
-- trade), and each row went into that index at a random place (by user
-- and asset), where the primary key (seq, event_index) only ever grows at
-- its right edge. No history query reads it (the API serves no ledger);
-- without it the writer and the server spend markedly less CPU per row
-- (figures in docs/persistence.md). An operator who reads accounts'
-- ledgers often can build it again, without stopping the writer:
--   CREATE INDEX CONCURRENTLY ledger_by_account ON ledger (user_id, asset_id, seq);
DROP INDEX IF EXISTS ledger_by_account;
