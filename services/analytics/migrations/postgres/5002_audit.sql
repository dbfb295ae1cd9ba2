-- The audit log: one hash chain per tenant, written only by the `audit-chain` consumer.
-- Records hold identifiers, never personal data, so erasure never touches them.
CREATE TABLE audit_records (
    tenant_id       TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    id              UUID NOT NULL UNIQUE,
    occur_time      TIMESTAMPTZ NOT NULL,
    actor           TEXT NOT NULL,
    roles           TEXT NOT NULL,
    client_identity TEXT NOT NULL,
    action          TEXT NOT NULL,
    resource        TEXT NOT NULL,
    outcome         TEXT NOT NULL,
    request_id      TEXT NOT NULL,
    trace_id        TEXT NOT NULL,
    recorded_by     TEXT NOT NULL,
    prev_hash       BYTEA NOT NULL,
    hash            BYTEA NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
CREATE INDEX audit_records_by_time ON audit_records (tenant_id, occur_time, id);

-- Where each chain ends: a truncated tail shows as a head beyond the last record.
CREATE TABLE audit_heads (
    tenant_id TEXT PRIMARY KEY,
    seq       BIGINT NOT NULL,
    hash      BYTEA NOT NULL
);

-- Append-only: no role may change or remove a record, the service's own included (the
-- grants), and not even the table's owner or a superuser without disabling the trigger.
CREATE FUNCTION audit_records_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit records are append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_records_no_change BEFORE UPDATE OR DELETE ON audit_records
    FOR EACH ROW EXECUTE FUNCTION audit_records_append_only();
CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION audit_records_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON audit_records FROM PUBLIC;
REVOKE UPDATE, DELETE, TRUNCATE ON audit_records FROM CURRENT_USER;
