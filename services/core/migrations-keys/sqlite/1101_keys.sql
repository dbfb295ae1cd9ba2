-- The keyring of encryption at rest (see the PostgreSQL migration for the model).
CREATE TABLE tenant_keys (
    tenant_id   TEXT PRIMARY KEY,
    master_id   TEXT NOT NULL,
    wrapped     BLOB NOT NULL,
    create_time TEXT NOT NULL,
    wrap_time   TEXT NOT NULL
);
CREATE INDEX tenant_keys_by_master ON tenant_keys (master_id);

CREATE TABLE subject_keys (
    tenant_id    TEXT NOT NULL,
    subject_id   TEXT NOT NULL,
    wrapped      BLOB,
    create_time  TEXT NOT NULL,
    destroy_time TEXT,
    PRIMARY KEY (tenant_id, subject_id)
);
