-- Earned autonomy of AI agents, per (agent, action, segment). `state` is the serialized
-- grant (level, evidence, proposal, versions); `level` and `killed` repeat it for listings.
-- `retired_versions` lists the model/prompt versions the key moved away from: reviews of
-- their decisions are kept in the ledger but are not evidence.
CREATE TABLE autonomy_grants (
    tenant_id        TEXT NOT NULL,
    agent            TEXT NOT NULL,
    action           TEXT NOT NULL,
    segment          TEXT NOT NULL,
    level            BIGINT NOT NULL,
    killed           BOOLEAN NOT NULL,
    state            JSONB NOT NULL,
    retired_versions JSONB NOT NULL,
    create_time      TIMESTAMPTZ NOT NULL,
    update_time      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, agent, action, segment)
);

-- The ledger: every reviewed AI decision with its review and later business outcome.
CREATE TABLE autonomy_decisions (
    tenant_id      TEXT NOT NULL,
    id             UUID NOT NULL,
    agent          TEXT NOT NULL,
    action         TEXT NOT NULL,
    segment        TEXT NOT NULL,
    subject        TEXT NOT NULL,
    review         TEXT NOT NULL,
    review_ms      BIGINT NOT NULL,
    counted        BOOLEAN NOT NULL,
    reviewer       TEXT NOT NULL,
    model_version  TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    level          BIGINT NOT NULL,
    sent           BOOLEAN NOT NULL,
    outcome        TEXT NOT NULL,
    outcome_time   TIMESTAMPTZ,
    request_id     TEXT NOT NULL,
    create_time    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX autonomy_decisions_by_key ON autonomy_decisions (tenant_id, agent, action, segment, id);
CREATE UNIQUE INDEX autonomy_decisions_by_request ON autonomy_decisions (tenant_id, request_id)
    WHERE request_id <> '';

-- Every change of level, as audited.
CREATE TABLE autonomy_transitions (
    tenant_id   TEXT NOT NULL,
    id          UUID NOT NULL,
    agent       TEXT NOT NULL,
    action      TEXT NOT NULL,
    segment     TEXT NOT NULL,
    from_level  BIGINT NOT NULL,
    to_level    BIGINT NOT NULL,
    cause       TEXT NOT NULL,
    actor       TEXT NOT NULL,
    detail      TEXT NOT NULL,
    create_time TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX autonomy_transitions_by_key ON autonomy_transitions (tenant_id, agent, action, segment, id);
