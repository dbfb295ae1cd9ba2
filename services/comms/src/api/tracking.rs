//! TrackingService: the public side of CommsService, opened by mail clients; the sealed
//! link token is the credential.

use super::*;

/// TrackingService: the public side, authenticated by the signed link tokens.
pub struct TrackingApi(pub Arc<Comms>);

impl TrackingApi {
    /// The verified claim of a link token, of the expected kind.
    fn claim(&self, token: &str, kind: LinkKind) -> Result<TrackingClaim, Error> {
        if token.is_empty() {
            return Err(Error::invalid("token", "a token is required"));
        }
        let claim: TrackingClaim = self.0.tracking_tokens.decode(token)?;
        if claim.kind != kind {
            return Err(Error::invalid("token", "this link is of another kind"));
        }
        claim.check_fresh(chrono::Utc::now().timestamp())?;
        Ok(claim)
    }
}

#[tonic::async_trait]
impl TrackingService for TrackingApi {
    async fn track_open(
        &self,
        request: Request<pb::TrackOpenRequest>,
    ) -> Result<Response<pb::TrackOpenResponse>, Status> {
        let request = request.into_inner();
        let claim = self.claim(&request.token, LinkKind::Open)?;
        let window = chrono::Duration::seconds(
            i64::try_from(self.0.settings.machine_open_window_secs).unwrap_or(0),
        );
        let context = system_context(&claim.tenant_id, "public:tracking");
        let mut machine = false;
        self.0
            .store
            .modify_message(&claim.tenant_id, claim.message_id, |current| {
                let now = now_micros();
                machine = is_machine_open(&request.user_agent, current.send_time, now, window);
                let mut next = current.clone();
                let first = !machine && current.first_open_time.is_none();
                if machine {
                    next.machine_open_count += 1;
                } else {
                    next.open_count += 1;
                    next.first_open_time.get_or_insert(now);
                }
                let event = envelope(
                    &context,
                    format!("messages/{}", current.id),
                    now,
                    Payload::MessageOpened(MessageOpened {
                        message_id: current.id.to_string(),
                        lead_id: current.lead_id.to_string(),
                        machine,
                        first,
                    }),
                );
                Ok(Some((next, Some(event.into()))))
            })
            .await?;
        self.0.relay.wake();
        Ok(Response::new(pb::TrackOpenResponse { machine }))
    }

    async fn track_click(
        &self,
        request: Request<pb::TrackClickRequest>,
    ) -> Result<Response<pb::TrackClickResponse>, Status> {
        let request = request.into_inner();
        let claim = self.claim(&request.token, LinkKind::Click)?;
        let context = system_context(&claim.tenant_id, "public:tracking");
        let mut target = String::new();
        self.0
            .store
            .modify_message(&claim.tenant_id, claim.message_id, |current| {
                target = claim
                    .link
                    .and_then(|index| current.links.get(index))
                    .cloned()
                    .ok_or_else(|| Error::invalid("token", "the link is not in the message"))?;
                let now = now_micros();
                let mut next = current.clone();
                next.click_count += 1;
                let event = envelope(
                    &context,
                    format!("messages/{}", current.id),
                    now,
                    Payload::MessageClicked(MessageClicked {
                        message_id: current.id.to_string(),
                        lead_id: current.lead_id.to_string(),
                        url: target.clone(),
                        first: current.click_count == 0,
                    }),
                );
                Ok(Some((next, Some(event.into()))))
            })
            .await?;
        self.0.relay.wake();
        Ok(Response::new(pb::TrackClickResponse { target_url: target }))
    }

    async fn unsubscribe(
        &self,
        request: Request<pb::UnsubscribeRequest>,
    ) -> Result<Response<pb::UnsubscribeResponse>, Status> {
        let claim = self.claim(&request.get_ref().token, LinkKind::Unsubscribe)?;
        let message = self
            .0
            .store
            .message(&claim.tenant_id, claim.message_id)
            .await?;
        let context = system_context(&claim.tenant_id, "public:unsubscribe");
        let event = envelope(
            &context,
            format!("messages/{}", message.id),
            now_micros(),
            Payload::RecipientUnsubscribed(RecipientUnsubscribed {
                message_id: message.id.to_string(),
                lead_id: message.lead_id.to_string(),
                channel: channel_to_proto(message.channel) as i32,
            }),
        );
        self.0.store.unsubscribe(&message, &(&event).into()).await?;
        self.0.relay.wake();
        self.0
            .draft_outcome(&context, message.id, BusinessOutcome::Unsubscribed)
            .await?;
        // Whoever holds the link learns nothing about the recipient (links get forwarded).
        Ok(Response::new(pb::UnsubscribeResponse::default()))
    }
}
