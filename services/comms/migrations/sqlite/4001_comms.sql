-- Message templates.
CREATE TABLE templates (
    tenant_id   TEXT NOT NULL,
    id          BLOB NOT NULL,
    name        TEXT NOT NULL,
    channel     TEXT NOT NULL,
    subject     TEXT NOT NULL,
    body        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    create_time TEXT NOT NULL,
    update_time TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX templates_by_name ON templates (tenant_id, name, id);

-- Messages sent to leads, with their tracking counters. `links` holds the targets of the
-- tracked links in order (a click token names its index).
CREATE TABLE messages (
    tenant_id          TEXT NOT NULL,
    id                 BLOB NOT NULL,
    lead_id            BLOB NOT NULL,
    channel            TEXT NOT NULL,
    to_address         TEXT NOT NULL,
    subject            TEXT NOT NULL,
    body               TEXT NOT NULL,
    template_id        TEXT NOT NULL,
    links              TEXT NOT NULL,
    status             TEXT NOT NULL,
    failure_reason     TEXT NOT NULL,
    open_count         INTEGER NOT NULL,
    machine_open_count INTEGER NOT NULL,
    click_count        INTEGER NOT NULL,
    replied            INTEGER NOT NULL,
    send_time          TEXT,
    first_open_time    TEXT,
    reply_time         TEXT,
    request_id         TEXT NOT NULL,
    create_time        TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX messages_by_request ON messages (tenant_id, request_id) WHERE request_id <> '';
CREATE INDEX messages_by_lead ON messages (tenant_id, lead_id, create_time);
CREATE INDEX messages_by_create_time ON messages (tenant_id, create_time, id);

-- Addresses that must never be contacted (lower-case e-mails, phone numbers).
CREATE TABLE suppressions (
    tenant_id   TEXT NOT NULL,
    address     TEXT NOT NULL,
    reason      TEXT NOT NULL,
    create_time TEXT NOT NULL,
    PRIMARY KEY (tenant_id, address)
);
