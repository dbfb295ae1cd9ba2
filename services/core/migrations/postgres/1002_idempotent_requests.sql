-- Idempotency keys (AIP-155) of every service: the first result of a client's request id,
-- per operation (the RPC, e.g. CaptureLead), with a digest of the request's content so a
-- reused id with other content is refused.
CREATE TABLE idempotent_requests (
    tenant_id    TEXT NOT NULL,
    operation    TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    resource_id  UUID NOT NULL,
    request_hash TEXT NOT NULL,
    create_time  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, operation, request_id)
);
