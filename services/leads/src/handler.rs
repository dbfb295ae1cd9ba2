//! `deals.created` for a lead → the lead is CONVERTED (once: the inbox claims the event id),
//! published as `leads.converted`.

use aida_core::auth::AuthContext;
use aida_core::consumer::{EventHandler, HandlerError};
use aida_core::events::{envelope, now_micros};
use aida_core::outbox::Relay;
use aida_proto::aida::events::v1::event_envelope::Payload;
use aida_proto::aida::events::v1::{EventEnvelope, LeadConverted};
use async_trait::async_trait;
use uuid::Uuid;

use crate::api::{status_to_proto, to_proto};
use crate::domain::{Lead, Status};
use crate::store::{Change, LeadStore};

/// The durable consumer's name (and inbox key).
pub const CONSUMER: &str = "leads-deal-conversions";

pub struct ConversionHandler {
    pub store: LeadStore,
    pub relay: Relay,
}

#[async_trait]
impl EventHandler for ConversionHandler {
    async fn handle(&self, event: &EventEnvelope) -> Result<(), HandlerError> {
        let Some(Payload::DealCreated(created)) = &event.payload else {
            return Err(HandlerError::Poison(format!(
                "{} without a DealCreated payload",
                event.event_type
            )));
        };
        let deal = created
            .deal
            .as_ref()
            .ok_or_else(|| HandlerError::Poison("deals.created without the deal".into()))?;
        if deal.lead_id.is_empty() {
            return Ok(());
        }
        let lead_id = Uuid::parse_str(&deal.lead_id)
            .map_err(|_| HandlerError::Poison(format!("lead id '{}'", deal.lead_id)))?;
        let context = AuthContext::for_event(event, "service:leads");
        let deal_id = deal.id.clone();
        let keys = self.store.event_keys(&event.tenant_id, &[lead_id]).await?;
        self.store
            .modify_once(
                CONSUMER,
                &event.event_id,
                &event.tenant_id,
                lead_id,
                |current| {
                    // A lead rejected (or already converted) since it was qualified stays as it is.
                    if !matches!(current.status, Status::Qualified | Status::New) {
                        return Ok((Change::Unchanged, None));
                    }
                    let now = now_micros();
                    let lead = Lead {
                        status: Status::Converted,
                        version: current.version + 1,
                        update_time: now,
                        ..current.clone()
                    };
                    let converted = envelope(
                        &context,
                        format!("leads/{}", lead.id),
                        now,
                        crate::api::sealed(
                            Payload::LeadConverted(LeadConverted {
                                lead: Some(to_proto(&lead)),
                                previous_status: status_to_proto(current.status) as i32,
                                deal_id: deal_id.clone(),
                            }),
                            &keys,
                        )?,
                    );
                    Ok((
                        Change::Updated(Box::new(lead), Box::new(converted.into())),
                        None,
                    ))
                },
            )
            .await?;
        self.relay.wake();
        Ok(())
    }
}
