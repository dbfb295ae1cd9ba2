"""A short LeadService session from Python, over plain gRPC.

Setup (once):
    python3 -m venv .venv && .venv/bin/pip install grpcio grpcio-tools googleapis-common-protos
    .venv/bin/python -m grpc_tools.protoc -Iproto --python_out=examples/python \
        --grpc_python_out=examples/python proto/aida/leads/v1/leads.proto

Run (with `aida up` running and AIDA_TOKEN exported from its banner):
    .venv/bin/python examples/python/leads_demo.py
"""

import os
import sys
import uuid

import grpc
from google.protobuf import field_mask_pb2

from aida.leads.v1 import leads_pb2, leads_pb2_grpc

address = os.environ.get("AIDA_LEADS_ADDRESS", "127.0.0.1:8080")  # the edge
token = os.environ.get("AIDA_TOKEN")
if not token:
    sys.exit("export AIDA_TOKEN=... (printed by `aida up`, or `aida token --tenant dev --role admin`)")
auth = [("authorization", f"Bearer {token}")]

with grpc.insecure_channel(address) as channel:
    leads = leads_pb2_grpc.LeadServiceStub(channel)

    email = f"ada-{uuid.uuid4().hex[:8]}@example.com"
    lead = leads.CaptureLead(
        leads_pb2.CaptureLeadRequest(
            lead=leads_pb2.Lead(
                email=f"  {email.upper()} ",
                first_name="Ada",
                last_name="Lovelace",
                company="Analytical Engines",
                phone="+44 20 7946 0958",
                source=leads_pb2.LEAD_SOURCE_WEB_FORM,
                attributes={"tier": "gold"},
            ),
            request_id=str(uuid.uuid4()),
        ),
        metadata=auth,
    )
    print("captured", lead.id, lead.email, lead.phone, leads_pb2.LeadStatus.Name(lead.status))

    try:
        leads.CaptureLead(
            leads_pb2.CaptureLeadRequest(lead=leads_pb2.Lead(email="not-an-email")), metadata=auth
        )
    except grpc.RpcError as error:
        print("invalid input ->", error.code().name, "|", error.details())

    updated = leads.UpdateLead(
        leads_pb2.UpdateLeadRequest(
            lead=leads_pb2.Lead(id=lead.id, title="Head of Research", etag=lead.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["title"]),
        ),
        metadata=auth,
    )
    qualified = leads.QualifyLead(
        leads_pb2.QualifyLeadRequest(id=lead.id, etag=updated.etag, note="asked for a demo"),
        metadata=auth,
    )
    print("qualified", qualified.id, leads_pb2.LeadStatus.Name(qualified.status))

    page = leads.ListLeads(
        leads_pb2.ListLeadsRequest(filter='status = "QUALIFIED" AND attributes.tier = gold', page_size=10),
        metadata=auth,
    )
    print("qualified gold leads:", page.total_size, [l.email for l in page.leads])
