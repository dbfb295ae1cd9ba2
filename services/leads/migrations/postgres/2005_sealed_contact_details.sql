-- Encryption at rest: e-mail, phone and names are stored sealed (AES-256-GCM under the
-- lead's subject key), so equality is found through keyed blind indexes beside them
-- (HMAC-SHA256 under the tenant key; '' for "not given"). Rows written before are sealed
-- and indexed by LeadService when it starts.
ALTER TABLE leads ADD COLUMN email_index TEXT NOT NULL DEFAULT '';
ALTER TABLE leads ADD COLUMN phone_index TEXT NOT NULL DEFAULT '';
ALTER TABLE leads ADD COLUMN first_name_index TEXT NOT NULL DEFAULT '';
ALTER TABLE leads ADD COLUMN last_name_index TEXT NOT NULL DEFAULT '';
ALTER TABLE leads ADD COLUMN email_local_index TEXT NOT NULL DEFAULT '';
-- One live lead per address and tenant, now on the blind index.
DROP INDEX leads_email_unique;
CREATE UNIQUE INDEX leads_email_unique ON leads (tenant_id, email_index) WHERE email_index <> '' AND status <> 'MERGED';
CREATE INDEX leads_by_phone_index ON leads (tenant_id, phone_index) WHERE phone_index <> '';
CREATE INDEX leads_by_first_name_index ON leads (tenant_id, first_name_index) WHERE first_name_index <> '';
CREATE INDEX leads_by_last_name_index ON leads (tenant_id, last_name_index) WHERE last_name_index <> '';
CREATE INDEX leads_by_email_local_index ON leads (tenant_id, email_local_index) WHERE email_local_index <> '';
