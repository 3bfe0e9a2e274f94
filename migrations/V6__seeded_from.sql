-- A database seeded from a cluster node's snapshot image (exctl database
-- seed-from-image, docs/persistence.md "Seeding from a snapshot image"):
-- its history starts at the image. One row, written in the seeding's own
-- transaction together with the state the image holds and the cursor at
-- the image's sequence number. No row: the database holds the whole
-- history from sequence 1.
CREATE TABLE seeded_from (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    -- The engine's sequence number in the image: the history tables hold
    -- nothing of the commands up to it but the state they left.
    image_seq bigint NOT NULL CHECK (image_seq > 0),
    -- The image's position in the replicated log.
    raft_index bigint NOT NULL,
    raft_term bigint NOT NULL,
    -- The time of the image's last command.
    image_command_at timestamptz,
    -- The node whose writer seeded it.
    node_id bigint NOT NULL,
    -- Why, as the operator gave it.
    reason text NOT NULL CHECK (reason <> ''),
    seeded_at timestamptz NOT NULL DEFAULT now()
);

-- A seeded database opens every balance with one ledger row of cause
-- 'opening' (the balance the image holds; its change is the whole
-- balance), so that the ledger's changes still add up to the balances.
-- NOT VALID: every existing row passes the wider check, and a large
-- ledger is not scanned under an exclusive lock for it.
ALTER TABLE ledger DROP CONSTRAINT ledger_cause_check;
ALTER TABLE ledger ADD CONSTRAINT ledger_cause_check
    CHECK (cause IN ('deposit', 'withdrawal', 'order', 'trade', 'cancel', 'amend', 'opening')) NOT VALID;
