-- Message templates.
CREATE TABLE templates (
    tenant_id   TEXT NOT NULL,
    id          UUID NOT NULL,
    name        TEXT NOT NULL,
    channel     TEXT NOT NULL,
    subject     TEXT NOT NULL,
    body        TEXT NOT NULL,
    version     BIGINT NOT NULL,
    create_time TIMESTAMPTZ NOT NULL,
    update_time TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX templates_by_name ON templates (tenant_id, name, id);

-- Messages sent to leads, with their tracking counters. `links` holds the targets of the
-- tracked links in order (a click token names its index).
CREATE TABLE messages (
    tenant_id          TEXT NOT NULL,
    id                 UUID NOT NULL,
    lead_id            UUID NOT NULL,
    channel            TEXT NOT NULL,
    to_address         TEXT NOT NULL,
    subject            TEXT NOT NULL,
    body               TEXT NOT NULL,
    template_id        TEXT NOT NULL,
    links              JSONB NOT NULL,
    status             TEXT NOT NULL,
    failure_reason     TEXT NOT NULL,
    open_count         BIGINT NOT NULL,
    machine_open_count BIGINT NOT NULL,
    click_count        BIGINT NOT NULL,
    replied            BOOLEAN NOT NULL,
    send_time          TIMESTAMPTZ,
    first_open_time    TIMESTAMPTZ,
    reply_time         TIMESTAMPTZ,
    request_id         TEXT NOT NULL,
    create_time        TIMESTAMPTZ NOT NULL,
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
    create_time TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, address)
);
