-- Pipelines: ordered stages (JSON: name, probability, kind) per tenant, one default.
CREATE TABLE pipelines (
    tenant_id    TEXT NOT NULL,
    id           BLOB NOT NULL,
    name         TEXT NOT NULL,
    stages       TEXT NOT NULL,
    rotting_days INTEGER NOT NULL,
    is_default   INTEGER NOT NULL,
    version      INTEGER NOT NULL,
    create_time  TEXT NOT NULL,
    update_time  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX pipelines_one_default ON pipelines (tenant_id) WHERE is_default;

-- Deals. Amounts are integers in minor units; the stage history is JSON.
CREATE TABLE deals (
    tenant_id              TEXT NOT NULL,
    id                     BLOB NOT NULL,
    lead_id                BLOB,
    name                   TEXT NOT NULL,
    currency_code          TEXT NOT NULL,
    amount_minor           INTEGER NOT NULL,
    pipeline_id            BLOB NOT NULL,
    stage                  TEXT NOT NULL,
    probability            INTEGER NOT NULL,
    probability_overridden INTEGER NOT NULL,
    expected_close_date    TEXT NOT NULL,
    owner_id               TEXT NOT NULL,
    status                 TEXT NOT NULL,
    lost_reason            TEXT NOT NULL,
    stage_history          TEXT NOT NULL,
    version                INTEGER NOT NULL,
    create_time            TEXT NOT NULL,
    update_time            TEXT NOT NULL,
    close_time             TEXT,
    PRIMARY KEY (tenant_id, id)
);
-- One deal per lead: a redelivered leads.qualified event cannot make a second one.
CREATE UNIQUE INDEX deals_one_per_lead ON deals (tenant_id, lead_id) WHERE lead_id IS NOT NULL;
CREATE INDEX deals_by_create_time ON deals (tenant_id, create_time, id);
CREATE INDEX deals_by_pipeline_stage ON deals (tenant_id, pipeline_id, stage);

-- Idempotency keys of CreateDeal (AIP-155).
CREATE TABLE deal_create_requests (
    tenant_id    TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    deal_id      BLOB NOT NULL,
    request_hash TEXT NOT NULL,
    create_time  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, request_id)
);
