-- CaptureLead's and MergeLeads's request ids move to the shared idempotent_requests table.
INSERT INTO idempotent_requests (tenant_id, operation, request_id, resource_id, request_hash, create_time)
SELECT tenant_id, 'CaptureLead', request_id, lead_id, request_hash, create_time FROM lead_capture_requests;
INSERT INTO idempotent_requests (tenant_id, operation, request_id, resource_id, request_hash, create_time)
SELECT tenant_id, 'MergeLeads', request_id, survivor_id, request_hash, create_time FROM lead_merge_requests;
DROP TABLE lead_capture_requests;
DROP TABLE lead_merge_requests;
