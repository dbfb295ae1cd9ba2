-- Merging: a merged lead keeps its row (status MERGED) and points at its survivor.
ALTER TABLE leads ADD COLUMN merged_into TEXT NOT NULL DEFAULT '';
-- A merged lead no longer holds its e-mail: the survivor may take it.
DROP INDEX leads_email_unique;
CREATE UNIQUE INDEX leads_email_unique ON leads (tenant_id, email) WHERE email <> '' AND status <> 'MERGED';

-- Lineage of merges: which lead went into which, by whom, when, and what it held.
CREATE TABLE lead_merges (
    tenant_id   TEXT NOT NULL,
    survivor_id UUID NOT NULL,
    merged_id   UUID NOT NULL,
    actor       TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    merge_time  TIMESTAMPTZ NOT NULL,
    snapshot    JSONB NOT NULL,
    PRIMARY KEY (tenant_id, merged_id)
);
CREATE INDEX lead_merges_by_survivor ON lead_merges (tenant_id, survivor_id);

-- Idempotency keys of MergeLeads (AIP-155).
CREATE TABLE lead_merge_requests (
    tenant_id    TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    survivor_id  UUID NOT NULL,
    request_hash TEXT NOT NULL,
    create_time  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, request_id)
);

-- What the vector index holds: the lead version embedded per model version. A lead whose
-- version differs (or has no row) is re-indexed by the background indexer.
CREATE TABLE lead_index (
    tenant_id     TEXT NOT NULL,
    lead_id       UUID NOT NULL,
    model_version TEXT NOT NULL,
    version       BIGINT NOT NULL,
    index_time    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, lead_id, model_version)
);
