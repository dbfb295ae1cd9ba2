-- Leads, one row per prospect, scoped by tenant. Text columns are NOT NULL with '' for
-- "not given", so that comparisons and keyset pagination never meet NULL.
CREATE TABLE leads (
    tenant_id        TEXT NOT NULL,
    id               UUID NOT NULL,
    email            TEXT NOT NULL,
    first_name       TEXT NOT NULL,
    last_name        TEXT NOT NULL,
    company          TEXT NOT NULL,
    title            TEXT NOT NULL,
    phone            TEXT NOT NULL,
    source           TEXT NOT NULL,
    status           TEXT NOT NULL,
    owner_id         TEXT NOT NULL,
    attributes       JSONB NOT NULL,
    rejection_reason TEXT NOT NULL,
    version          BIGINT NOT NULL,
    create_time      TIMESTAMPTZ NOT NULL,
    update_time      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
-- One lead per e-mail and tenant (e-mails are stored lower-case).
CREATE UNIQUE INDEX leads_email_unique ON leads (tenant_id, email) WHERE email <> '';
CREATE INDEX leads_by_create_time ON leads (tenant_id, create_time, id);
CREATE INDEX leads_by_update_time ON leads (tenant_id, update_time, id);
CREATE INDEX leads_by_status ON leads (tenant_id, status, create_time);

-- Idempotency keys of CaptureLead (AIP-155): the first result of a request id.
CREATE TABLE lead_capture_requests (
    tenant_id    TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    lead_id      UUID NOT NULL,
    request_hash TEXT NOT NULL,
    create_time  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, request_id)
);
