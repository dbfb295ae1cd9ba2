-- The audit log: one hash chain per tenant, written only by the `audit-chain` consumer.
-- Records hold identifiers, never personal data, so erasure never touches them.
CREATE TABLE audit_records (
    tenant_id       TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    id              BLOB NOT NULL UNIQUE,
    occur_time      TEXT NOT NULL,
    actor           TEXT NOT NULL,
    roles           TEXT NOT NULL,
    client_identity TEXT NOT NULL,
    action          TEXT NOT NULL,
    resource        TEXT NOT NULL,
    outcome         TEXT NOT NULL,
    request_id      TEXT NOT NULL,
    trace_id        TEXT NOT NULL,
    recorded_by     TEXT NOT NULL,
    prev_hash       BLOB NOT NULL,
    hash            BLOB NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
CREATE INDEX audit_records_by_time ON audit_records (tenant_id, occur_time, id);

-- Where each chain ends: a truncated tail shows as a head beyond the last record.
CREATE TABLE audit_heads (
    tenant_id TEXT PRIMARY KEY,
    seq       INTEGER NOT NULL,
    hash      BLOB NOT NULL
);

-- Append-only: changing or removing a record is refused.
CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only: UPDATE refused');
END;
CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only: DELETE refused');
END;
