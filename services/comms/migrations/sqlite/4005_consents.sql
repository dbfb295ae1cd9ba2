-- The consent ledger: every consent given or withdrawn, append-only; the newest entry per
-- (lead, channel, purpose) is in force.
CREATE TABLE consents (
    tenant_id   TEXT NOT NULL,
    id          BLOB NOT NULL,
    lead_id     BLOB NOT NULL,
    channel     TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    state       TEXT NOT NULL,
    source      TEXT NOT NULL,
    proof       TEXT NOT NULL,
    recorded_by TEXT NOT NULL,
    create_time TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX consents_by_lead ON consents (tenant_id, lead_id, create_time, id);
