//! `leads.qualified` → a deal for the lead, once (the inbox claims the event id, and a
//! lead has at most one deal), published as `deals.created`. LeadService consumes that event
//! and marks the lead CONVERTED.

use aida_core::auth::AuthContext;
use aida_core::consumer::{EventHandler, HandlerError};
use aida_core::events::{envelope, now_micros};
use aida_core::outbox::Relay;
use aida_proto::aida::events::v1::event_envelope::Payload;
use aida_proto::aida::events::v1::{DealCreated, EventEnvelope};
use async_trait::async_trait;
use uuid::Uuid;

use crate::api::deal_to_proto;
use crate::domain::{Deal, Money, NewDeal};
use crate::store::DealStore;

/// The durable consumer's name (and inbox key).
pub const CONSUMER: &str = "deals-qualified-leads";

pub struct QualifiedLeadHandler {
    pub store: DealStore,
    pub relay: Relay,
    pub currency: String,
}

#[async_trait]
impl EventHandler for QualifiedLeadHandler {
    async fn handle(&self, event: &EventEnvelope) -> Result<(), HandlerError> {
        let Some(Payload::LeadQualified(qualified)) = &event.payload else {
            return Err(HandlerError::Poison(format!(
                "{} without a LeadQualified payload",
                event.event_type
            )));
        };
        let lead = qualified
            .lead
            .as_ref()
            .ok_or_else(|| HandlerError::Poison("leads.qualified without the lead".into()))?;
        let lead_id = Uuid::parse_str(&lead.id)
            .map_err(|_| HandlerError::Poison(format!("lead id '{}'", lead.id)))?;
        if !aida_core::auth::valid_tenant(&event.tenant_id) {
            return Err(HandlerError::Poison(format!(
                "tenant '{}'",
                event.tenant_id
            )));
        }
        let pipeline = self.store.default_pipeline(&event.tenant_id).await?;
        // Named after the company, never after the person: a deal's name is not personal
        // data to erase (the lead's contact details travel sealed anyway).
        let name = Some(lead.company.trim())
            .filter(|company| !company.is_empty())
            .unwrap_or("New deal")
            .chars()
            .take(crate::domain::MAX_NAME_CHARS)
            .collect();
        let now = now_micros();
        let deal = Deal::create(
            &event.tenant_id,
            &pipeline,
            NewDeal {
                lead_id: Some(lead_id),
                name,
                amount: Money {
                    currency_code: self.currency.clone(),
                    amount_minor: 0,
                },
                stage: None,
                probability: None,
                expected_close_date: None,
                owner_id: lead.owner_id.clone(),
            },
            now,
        )?;
        let context = AuthContext::for_event(event, "service:deals");
        let created = envelope(
            &context,
            format!("deals/{}", deal.id),
            now,
            Payload::DealCreated(DealCreated {
                deal: Some(deal_to_proto(&deal, pipeline.rotting_days)),
            }),
        );
        if self
            .store
            .create_deal_for_lead(CONSUMER, &event.event_id, &deal, &(&created).into())
            .await?
        {
            self.relay.wake();
        }
        Ok(())
    }
}
