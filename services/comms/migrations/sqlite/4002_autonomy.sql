-- Earned autonomy of AI agents, per (agent, action, segment). `state` is the serialized
-- grant (level, evidence, proposal, versions); `level` and `killed` repeat it for listings.
-- `retired_versions` lists the model/prompt versions the key moved away from: reviews of
-- their decisions are kept in the ledger but are not evidence.
CREATE TABLE autonomy_grants (
    tenant_id        TEXT NOT NULL,
    agent            TEXT NOT NULL,
    action           TEXT NOT NULL,
    segment          TEXT NOT NULL,
    level            INTEGER NOT NULL,
    killed           INTEGER NOT NULL,
    state            TEXT NOT NULL,
    retired_versions TEXT NOT NULL,
    create_time      TEXT NOT NULL,
    update_time      TEXT NOT NULL,
    PRIMARY KEY (tenant_id, agent, action, segment)
);

-- The ledger: every reviewed AI decision with its review and later business outcome.
CREATE TABLE autonomy_decisions (
    tenant_id      TEXT NOT NULL,
    id             BLOB NOT NULL,
    agent          TEXT NOT NULL,
    action         TEXT NOT NULL,
    segment        TEXT NOT NULL,
    subject        TEXT NOT NULL,
    review         TEXT NOT NULL,
    review_ms      INTEGER NOT NULL,
    counted        INTEGER NOT NULL,
    reviewer       TEXT NOT NULL,
    model_version  TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    level          INTEGER NOT NULL,
    sent           INTEGER NOT NULL,
    outcome        TEXT NOT NULL,
    outcome_time   TEXT,
    request_id     TEXT NOT NULL,
    create_time    TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX autonomy_decisions_by_key ON autonomy_decisions (tenant_id, agent, action, segment, id);
CREATE UNIQUE INDEX autonomy_decisions_by_request ON autonomy_decisions (tenant_id, request_id)
    WHERE request_id <> '';

-- Every change of level, as audited.
CREATE TABLE autonomy_transitions (
    tenant_id   TEXT NOT NULL,
    id          BLOB NOT NULL,
    agent       TEXT NOT NULL,
    action      TEXT NOT NULL,
    segment     TEXT NOT NULL,
    from_level  INTEGER NOT NULL,
    to_level    INTEGER NOT NULL,
    cause       TEXT NOT NULL,
    actor       TEXT NOT NULL,
    detail      TEXT NOT NULL,
    create_time TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX autonomy_transitions_by_key ON autonomy_transitions (tenant_id, agent, action, segment, id);
