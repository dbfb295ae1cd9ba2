//! From bus events to analytics rows. Only what reports need is kept, and people are kept
//! out: owners become keyed pseudonyms, and e-mails, phones and names are never read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aida_core::consumer::{BatchHandler, HandlerError};
use aida_proto::aida::comms::v1::Channel;
use aida_proto::aida::events::v1::EventEnvelope;
use aida_proto::aida::events::v1::event_envelope::Payload;
use aida_proto::aida::leads::v1::{Lead, LeadSource};
use async_trait::async_trait;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use crate::warehouse::{EventRow, Warehouse};

/// Keyed pseudonyms: the same owner always maps to the same token, which cannot be turned
/// back into the id without the key.
#[derive(Clone)]
pub struct Pseudonymizer {
    key: [u8; 32],
}

impl Pseudonymizer {
    pub fn new(secret: &SecretString) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
            .expect("HMAC takes any key");
        mac.update(b"aida analytics pseudonyms v1");
        Self {
            key: mac.finalize().into_bytes().into(),
        }
    }

    /// `p_` and 16 hex digits; the empty id stays empty (no owner).
    pub fn pseudonym(&self, id: &str) -> String {
        if id.is_empty() {
            return String::new();
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(id.as_bytes());
        let digest = mac.finalize().into_bytes();
        let hex: String = digest
            .iter()
            .take(8)
            .map(|byte| format!("{byte:02x}"))
            .collect();
        format!("p_{hex}")
    }
}

fn micros(event: &EventEnvelope) -> Result<i64, HandlerError> {
    let time = event
        .occurred_at
        .as_ref()
        .ok_or_else(|| HandlerError::Poison("event without occurred_at".into()))?;
    time.seconds
        .checked_mul(1_000_000)
        .and_then(|seconds| seconds.checked_add(i64::from(time.nanos) / 1_000))
        .ok_or_else(|| HandlerError::Poison("occurred_at out of range".into()))
}

fn source_name(lead: &Lead) -> Option<String> {
    LeadSource::try_from(lead.source).ok().map(|source| {
        source
            .as_str_name()
            .trim_start_matches("LEAD_SOURCE_")
            .to_owned()
    })
}

fn optional(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

/// The analytics row of `event`; `None` for events analytics does not keep.
pub fn to_row(
    event: &EventEnvelope,
    pseudonyms: &Pseudonymizer,
) -> Result<Option<EventRow>, HandlerError> {
    if event.event_id.is_empty() || event.tenant_id.is_empty() {
        return Err(HandlerError::Poison("event without id or tenant".into()));
    }
    let mut row = EventRow {
        event_id: event.event_id.clone(),
        tenant_id: event.tenant_id.clone(),
        event_type: event.event_type.clone(),
        occurred_at: micros(event)?,
        ..EventRow::default()
    };
    let missing = |what: &str| HandlerError::Poison(format!("{} without {what}", event.event_type));
    let lead_facts = |row: &mut EventRow, lead: Option<&Lead>| -> Result<(), HandlerError> {
        let lead = lead.ok_or_else(|| missing("the lead"))?;
        row.lead_id = Some(lead.id.clone()).filter(|id| !id.is_empty());
        row.source = source_name(lead);
        row.owner = Some(pseudonyms.pseudonym(&lead.owner_id));
        Ok(())
    };
    let deal_facts = |row: &mut EventRow,
                      deal: Option<&aida_proto::aida::deals::v1::Deal>|
     -> Result<(), HandlerError> {
        let deal = deal.ok_or_else(|| missing("the deal"))?;
        row.deal_id = optional(&deal.id);
        row.lead_id = optional(&deal.lead_id);
        row.pipeline_id = optional(&deal.pipeline_id);
        row.stage_to = optional(&deal.stage);
        row.probability = Some(deal.probability);
        row.owner = Some(pseudonyms.pseudonym(&deal.owner_id));
        if let Some(amount) = &deal.amount {
            row.amount_minor = Some(amount.amount_minor);
            row.currency = optional(&amount.currency_code);
        }
        Ok(())
    };
    let channel = |value: i32| {
        Channel::try_from(value).ok().map(|channel| {
            channel
                .as_str_name()
                .trim_start_matches("CHANNEL_")
                .to_owned()
        })
    };
    match event.payload.as_ref() {
        Some(Payload::LeadCaptured(payload)) => lead_facts(&mut row, payload.lead.as_ref())?,
        Some(Payload::LeadQualified(payload)) => lead_facts(&mut row, payload.lead.as_ref())?,
        Some(Payload::LeadRejected(payload)) => lead_facts(&mut row, payload.lead.as_ref())?,
        Some(Payload::LeadUpdated(payload)) => lead_facts(&mut row, payload.lead.as_ref())?,
        Some(Payload::LeadConverted(payload)) => lead_facts(&mut row, payload.lead.as_ref())?,
        Some(Payload::LeadDeleted(payload)) => row.lead_id = optional(&payload.lead_id),
        Some(Payload::DealCreated(payload)) => deal_facts(&mut row, payload.deal.as_ref())?,
        Some(Payload::DealUpdated(payload)) => deal_facts(&mut row, payload.deal.as_ref())?,
        Some(Payload::DealProgressed(payload)) => {
            deal_facts(&mut row, payload.deal.as_ref())?;
            row.stage_from = optional(&payload.from_stage);
        }
        Some(Payload::DealWon(payload)) => {
            deal_facts(&mut row, payload.deal.as_ref())?;
            row.stage_from = optional(&payload.from_stage);
        }
        Some(Payload::DealLost(payload)) => {
            deal_facts(&mut row, payload.deal.as_ref())?;
            row.stage_from = optional(&payload.from_stage);
        }
        Some(Payload::MessageSent(payload)) => {
            row.message_id = optional(&payload.message_id);
            row.lead_id = optional(&payload.lead_id);
            row.channel = channel(payload.channel);
        }
        Some(Payload::MessageOpened(payload)) => {
            row.message_id = optional(&payload.message_id);
            row.lead_id = optional(&payload.lead_id);
            row.machine = Some(payload.machine);
            row.first = Some(payload.first);
        }
        Some(Payload::MessageClicked(payload)) => {
            row.message_id = optional(&payload.message_id);
            row.lead_id = optional(&payload.lead_id);
            row.first = Some(payload.first);
        }
        Some(Payload::MessageReplied(payload)) => {
            row.message_id = optional(&payload.message_id);
            row.lead_id = optional(&payload.lead_id);
        }
        Some(Payload::RecipientUnsubscribed(payload)) => {
            row.message_id = optional(&payload.message_id);
            row.lead_id = optional(&payload.lead_id);
            row.channel = channel(payload.channel);
        }
        Some(
            Payload::AnalyticsComputed(_)
            | Payload::AnalyticsAlerted(_)
            | Payload::AutonomyChanged(_)
            | Payload::AutonomyProposed(_)
            | Payload::LeadMerged(_)
            | Payload::LeadScored(_)
            | Payload::AuditRecorded(_),
        ) => return Ok(None),
        None => {
            return Err(HandlerError::Poison(format!(
                "{} without a payload",
                event.event_type
            )));
        }
    }
    Ok(Some(row))
}

/// Writes batches of events into the warehouse.
pub struct Ingestor {
    pub warehouse: Warehouse,
    pub pseudonyms: Pseudonymizer,
    /// Events written (new ones only), for diagnostics and tests.
    pub ingested: Arc<AtomicU64>,
}

#[async_trait]
impl BatchHandler for Ingestor {
    async fn handle_batch(&self, events: &[EventEnvelope]) -> Result<(), HandlerError> {
        let mut rows = Vec::with_capacity(events.len());
        for event in events {
            if let Some(row) = to_row(event, &self.pseudonyms)? {
                rows.push(row);
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let span = tracing::info_span!(
            "duckdb append",
            otel.name = "duckdb append",
            otel.kind = "client",
            db.system = "duckdb",
            rows = rows.len(),
        );
        let inserted = tracing::Instrument::instrument(self.warehouse.ingest(rows), span)
            .await
            .map_err(|error| HandlerError::Transient(error.to_string()))?;
        self.ingested.fetch_add(inserted as u64, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_keyed_and_never_the_id() {
        let first = Pseudonymizer::new(&SecretString::from("a".repeat(40)));
        let second = Pseudonymizer::new(&SecretString::from("b".repeat(40)));
        assert_eq!(first.pseudonym("rep-7"), first.pseudonym("rep-7"));
        assert_ne!(first.pseudonym("rep-7"), second.pseudonym("rep-7"));
        assert!(!first.pseudonym("rep-7").contains("rep"));
        assert_eq!(first.pseudonym(""), "");
    }

    #[test]
    fn a_captured_lead_keeps_no_personal_data() {
        let pseudonyms = Pseudonymizer::new(&SecretString::from("a".repeat(40)));
        let event = EventEnvelope {
            event_id: "e1".into(),
            event_type: "leads.captured".into(),
            tenant_id: "acme".into(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 10,
                nanos: 5_000,
            }),
            payload: Some(Payload::LeadCaptured(
                aida_proto::aida::events::v1::LeadCaptured {
                    lead: Some(Lead {
                        id: "lead-1".into(),
                        email: "ada@example.com".into(),
                        first_name: "Ada".into(),
                        phone: "+441234567890".into(),
                        owner_id: "rep-7".into(),
                        source: LeadSource::Referral as i32,
                        ..Lead::default()
                    }),
                },
            )),
            ..EventEnvelope::default()
        };
        let row = to_row(&event, &pseudonyms).expect("row").expect("kept");
        assert_eq!(row.occurred_at, 10_000_005);
        assert_eq!(row.source.as_deref(), Some("REFERRAL"));
        let printed = format!("{row:?}");
        for personal in ["ada@example.com", "Ada", "+441234567890", "rep-7"] {
            assert!(!printed.contains(personal), "{personal} leaked: {printed}");
        }
    }

    #[test]
    fn an_event_without_payload_is_poison() {
        let pseudonyms = Pseudonymizer::new(&SecretString::from("a".repeat(40)));
        let event = EventEnvelope {
            event_id: "e1".into(),
            event_type: "leads.captured".into(),
            tenant_id: "acme".into(),
            occurred_at: Some(prost_types::Timestamp::default()),
            ..EventEnvelope::default()
        };
        assert!(matches!(
            to_row(&event, &pseudonyms),
            Err(HandlerError::Poison(_))
        ));
    }
}
