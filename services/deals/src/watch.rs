//! WatchDeals: every DealService replica follows `CRM_DEALS` with an ephemeral consumer and
//! fans the changes out to its watchers, so a watcher sees changes made on any replica.

use std::pin::Pin;
use std::sync::Arc;

use aida_core::bus::{ConsumerSpec, EventBus};
use aida_proto::aida::deals::v1::DealChange;
use aida_proto::aida::events::v1::EventEnvelope;
use aida_proto::aida::events::v1::event_envelope::Payload;
use futures::Stream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// Changes buffered per watcher before it is told it fell behind.
const BUFFER: usize = 4096;

#[derive(Clone)]
pub struct WatchHub {
    sender: broadcast::Sender<Arc<EventEnvelope>>,
}

impl Default for WatchHub {
    fn default() -> Self {
        Self::new()
    }
}

impl WatchHub {
    pub fn new() -> Self {
        Self {
            sender: broadcast::channel(BUFFER).0,
        }
    }

    /// Follows the deal stream until `shutdown`, re-subscribing when the bus drops it.
    pub async fn run(self, bus: Arc<dyn EventBus>, shutdown: CancellationToken) {
        let spec = ConsumerSpec::ephemeral("deals-watch", aida_core::bus::DEALS_STREAM, None);
        aida_core::consumer::follow(bus, spec, "deal watch feed", shutdown, |envelope| {
            let _ = self.sender.send(Arc::new(envelope));
        })
        .await;
    }

    /// The changes of `tenant`'s deals (optionally of one pipeline) from now on.
    pub fn watch(
        &self,
        tenant: String,
        pipeline: Option<String>,
        owner: Option<String>,
    ) -> Pin<Box<dyn Stream<Item = Result<DealChange, Status>> + Send>> {
        let receiver = self.sender.subscribe();
        Box::pin(futures::stream::unfold(
            (receiver, false),
            move |(mut receiver, finished)| {
                let tenant = tenant.clone();
                let pipeline = pipeline.clone();
                let owner = owner.clone();
                async move {
                    if finished {
                        return None;
                    }
                    loop {
                        match receiver.recv().await {
                            Ok(event) => {
                                if let Some(change) = to_change(
                                    &event,
                                    &tenant,
                                    pipeline.as_deref(),
                                    owner.as_deref(),
                                ) {
                                    return Some((Ok(change), (receiver, false)));
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(missed)) => {
                                let status = Status::aborted(format!(
                                    "this watcher fell {missed} changes behind; re-read the deals and watch again"
                                ));
                                return Some((Err(status), (receiver, true)));
                            }
                            Err(broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                }
            },
        ))
    }
}

fn to_change(
    event: &EventEnvelope,
    tenant: &str,
    pipeline: Option<&str>,
    owner: Option<&str>,
) -> Option<DealChange> {
    if event.tenant_id != tenant {
        return None;
    }
    let deal = match event.payload.as_ref()? {
        Payload::DealCreated(payload) => payload.deal.clone(),
        Payload::DealUpdated(payload) => payload.deal.clone(),
        Payload::DealProgressed(payload) => payload.deal.clone(),
        Payload::DealWon(payload) => payload.deal.clone(),
        Payload::DealLost(payload) => payload.deal.clone(),
        _ => None,
    }?;
    if pipeline.is_some_and(|pipeline| pipeline != deal.pipeline_id)
        || owner.is_some_and(|owner| owner != deal.owner_id)
    {
        return None;
    }
    Some(DealChange {
        event_type: event.event_type.clone(),
        deal: Some(deal),
        occurred_at: event.occurred_at,
    })
}
