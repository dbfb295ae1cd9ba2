-- Alert rules per tenant, and the alerts they raised (one per breach).
CREATE TABLE alert_rules (
    tenant_id    TEXT NOT NULL,
    id           BLOB NOT NULL,
    kind         TEXT NOT NULL,
    threshold    REAL NOT NULL,
    window_days  INTEGER NOT NULL,
    window_hours INTEGER NOT NULL,
    create_time  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE alerts (
    tenant_id    TEXT NOT NULL,
    id           BLOB NOT NULL,
    rule_id      BLOB NOT NULL,
    kind         TEXT NOT NULL,
    message      TEXT NOT NULL,
    value        REAL NOT NULL,
    threshold    REAL NOT NULL,
    raise_time   TEXT NOT NULL,
    resolve_time TEXT,
    PRIMARY KEY (tenant_id, id)
);
-- At most one open alert per rule: a breach raises once.
CREATE UNIQUE INDEX alerts_one_open_per_rule ON alerts (tenant_id, rule_id) WHERE resolve_time IS NULL;
CREATE INDEX alerts_by_raise_time ON alerts (tenant_id, raise_time, id);
