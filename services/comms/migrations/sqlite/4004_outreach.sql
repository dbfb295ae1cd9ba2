-- The outreach agent: the autonomy segment and requester of every draft, the time the agent
-- will send a scheduled one, and what the agent knows of each lead (kept from CRM_LEADS).
ALTER TABLE drafts ADD COLUMN segment TEXT NOT NULL DEFAULT 'all';
ALTER TABLE drafts ADD COLUMN requester TEXT NOT NULL DEFAULT '';
ALTER TABLE drafts ADD COLUMN send_after TEXT;
CREATE INDEX drafts_due ON drafts (state, send_after);
CREATE INDEX drafts_by_lead ON drafts (tenant_id, lead_id);

CREATE TABLE outreach_leads (
    tenant_id   TEXT NOT NULL,
    lead_id     BLOB NOT NULL,
    -- The lead as last announced (aida.leads.v1.Lead, protobuf).
    lead        BLOB NOT NULL,
    update_time TEXT NOT NULL,
    PRIMARY KEY (tenant_id, lead_id)
);
