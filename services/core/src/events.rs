//! Building event envelopes from the request that caused them.

use aida_proto::aida::events::v1::{Actor, EventEnvelope, TraceContext, event_envelope::Payload};
use chrono::{DateTime, Utc};

use crate::auth::AuthContext;

/// The type of an event: the subject it is published under, decided by its payload alone
/// (so the two can never disagree).
pub fn event_type(payload: &Payload) -> &'static str {
    match payload {
        Payload::LeadCaptured(_) => "leads.captured",
        Payload::LeadQualified(_) => "leads.qualified",
        Payload::LeadRejected(_) => "leads.rejected",
        Payload::LeadUpdated(_) => "leads.updated",
        Payload::LeadDeleted(_) => "leads.deleted",
        Payload::LeadConverted(_) => "leads.converted",
        Payload::LeadMerged(_) => "leads.merged",
        Payload::LeadScored(_) => "leads.scored",
        Payload::DealCreated(_) => "deals.created",
        Payload::DealUpdated(_) => "deals.updated",
        Payload::DealProgressed(_) => "deals.progressed",
        Payload::DealWon(_) => "deals.won",
        Payload::DealLost(_) => "deals.lost",
        Payload::MessageSent(_) => "comms.sent",
        Payload::MessageOpened(_) => "comms.opened",
        Payload::MessageClicked(_) => "comms.clicked",
        Payload::MessageReplied(_) => "comms.replied",
        Payload::RecipientUnsubscribed(_) => "comms.unsubscribed",
        Payload::AutonomyChanged(_) => "comms.autonomy_changed",
        Payload::AutonomyProposed(_) => "comms.autonomy_proposed",
        Payload::AnalyticsComputed(_) => "analytics.computed",
        Payload::AnalyticsAlerted(_) => "analytics.alerted",
        Payload::AuditRecorded(_) => "audit.recorded",
    }
}

/// The envelope of an event about `subject`, caused by `context`'s request at
/// `occurred_at`, with a fresh UUIDv7 id; its type follows from `payload`.
pub fn envelope(
    context: &AuthContext,
    subject: String,
    occurred_at: DateTime<Utc>,
    payload: Payload,
) -> EventEnvelope {
    EventEnvelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: event_type(&payload).to_owned(),
        tenant_id: context.tenant_id.clone(),
        occurred_at: Some(timestamp(occurred_at)),
        actor: Some(Actor {
            subject: context.subject.clone(),
            roles: context.roles.clone(),
        }),
        subject,
        // The span that caused the event (a service's call, a consumer's handling), else
        // the caller's trace as it came in.
        trace: crate::telemetry::current_traceparent()
            .or_else(|| context.traceparent.clone())
            .map(|traceparent| TraceContext {
                traceparent,
                tracestate: String::new(),
            }),
        request_id: context.request_id.clone(),
        payload: Some(payload),
    }
}

/// A `google.protobuf.Timestamp` from a UTC time.
pub fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A UTC time from a `google.protobuf.Timestamp`, if it is in range.
pub fn from_timestamp(timestamp: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(timestamp.seconds, u32::try_from(timestamp.nanos).ok()?)
}

/// Now, truncated to microseconds: what PostgreSQL stores, so that a value read back
/// equals the value written on every engine.
pub fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}
