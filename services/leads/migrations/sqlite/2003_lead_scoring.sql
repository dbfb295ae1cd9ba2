-- Lead scoring: engagement counters, labelled outcomes, the tenant's trained model and
-- the latest score of every lead.

-- What a lead did with our outreach, counted from comms events (each counted once: the
-- consumer inbox claims the event id in the same transaction).
CREATE TABLE lead_engagement (
    tenant_id     TEXT NOT NULL,
    lead_id       BLOB NOT NULL,
    opens         INTEGER NOT NULL DEFAULT 0,
    clicks        INTEGER NOT NULL DEFAULT 0,
    replies       INTEGER NOT NULL DEFAULT 0,
    messages_sent INTEGER NOT NULL DEFAULT 0,
    meetings      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, lead_id)
);

-- Leads whose deal was won or lost, with their features when the outcome was known: the
-- training set of the tenant's model.
CREATE TABLE lead_outcomes (
    tenant_id   TEXT NOT NULL,
    lead_id     BLOB NOT NULL,
    outcome     TEXT NOT NULL,
    deal_id     TEXT NOT NULL,
    features    TEXT NOT NULL,
    update_time TEXT NOT NULL,
    PRIMARY KEY (tenant_id, lead_id)
);

-- The tenant's fitted model (absent: the prior), as JSON.
CREATE TABLE lead_score_models (
    tenant_id   TEXT NOT NULL PRIMARY KEY,
    version     TEXT NOT NULL,
    labelled    INTEGER NOT NULL,
    model       TEXT NOT NULL,
    update_time TEXT NOT NULL
);

-- The latest score of each lead, as JSON, with a digest of what it was computed from:
-- the same inputs are never scored (nor published) twice.
CREATE TABLE lead_scores (
    tenant_id    TEXT NOT NULL,
    lead_id      BLOB NOT NULL,
    lead_version INTEGER NOT NULL,
    input_key    TEXT NOT NULL,
    score        TEXT NOT NULL,
    scored_at    TEXT NOT NULL,
    PRIMARY KEY (tenant_id, lead_id)
);
