-- CreateDeal's request ids move to the shared idempotent_requests table.
INSERT INTO idempotent_requests (tenant_id, operation, request_id, resource_id, request_hash, create_time)
SELECT tenant_id, 'CreateDeal', request_id, deal_id, request_hash, create_time FROM deal_create_requests;
DROP TABLE deal_create_requests;
