-- Drafts of the AI writer (GenerateMessage), with their provenance, until a person sends or
-- discards them.
CREATE TABLE drafts (
    tenant_id      TEXT NOT NULL,
    id             BLOB NOT NULL,
    lead_id        BLOB NOT NULL,
    purpose        TEXT NOT NULL,
    tone           TEXT NOT NULL,
    subject        TEXT NOT NULL,
    body           TEXT NOT NULL,
    provenance     TEXT NOT NULL,
    state          TEXT NOT NULL,
    autonomy_level INTEGER NOT NULL,
    message_id     BLOB,
    edited         INTEGER NOT NULL,
    approver       TEXT NOT NULL,
    request_id     TEXT NOT NULL,
    create_time    TEXT NOT NULL,
    update_time    TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX drafts_by_request ON drafts (tenant_id, request_id) WHERE request_id <> '';
CREATE INDEX drafts_by_message ON drafts (tenant_id, message_id);
