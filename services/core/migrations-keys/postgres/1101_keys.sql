-- The keyring of encryption at rest. Every tenant has one data key, wrapped (AES-256-GCM)
-- by a master key that only the KeyProvider holds; `master_id` says which. Rotating the
-- master key re-wraps these rows and nothing else.
CREATE TABLE tenant_keys (
    tenant_id   TEXT PRIMARY KEY,
    master_id   TEXT NOT NULL,
    wrapped     BYTEA NOT NULL,
    create_time TIMESTAMPTZ NOT NULL,
    wrap_time   TIMESTAMPTZ NOT NULL
);
CREATE INDEX tenant_keys_by_master ON tenant_keys (master_id);

-- One key per data subject (a lead), wrapped by its tenant's key. Erasure destroys it:
-- `wrapped` becomes NULL and the row stays as a tombstone, so the key is never made again
-- and every copy of what it sealed (events, backups) stays unreadable.
CREATE TABLE subject_keys (
    tenant_id    TEXT NOT NULL,
    subject_id   TEXT NOT NULL,
    wrapped      BYTEA,
    create_time  TIMESTAMPTZ NOT NULL,
    destroy_time TIMESTAMPTZ,
    PRIMARY KEY (tenant_id, subject_id)
);
