//! The outreach agent: it writes a first touch for every scored lead that was never
//! contacted, and acts on it only as far as its earned autonomy for the key
//! (`outreach`, `send_first_touch`, the lead's tier) allows, read at the moment of acting:
//!
//! | level | the agent… |
//! |---|---|
//! | L0 shadow | writes the draft and keeps it; it can never be sent |
//! | L1 suggest, L2 draft | leaves the draft pending for a person (ListDrafts) |
//! | L3 veto window | schedules it; sends it when the window has passed unless vetoed |
//! | L4 budgeted | sends it at once, within the daily volume and outside quiet hours; otherwise leaves it for a person |
//!
//! A scheduled draft is checked again when it is due: a key demoted meanwhile hands the
//! draft to a person, a lead rejected, deleted or suppressed meanwhile closes it unsent.
//! Every send goes through the same checks as a person's (suppression, frequency cap) and
//! into the ledger: at L3 an unvetoed draft counts as approved unchanged by
//! `agent:outreach`; at L4 nobody looked, so the send is kept but not counted as a review.
//!
//! What the agent knows of leads comes from `CRM_LEADS` (a local copy kept by its durable
//! consumer): it acts without a person's token.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use aida_ai::autonomy::{Authority, Budget, Level};
use aida_ai::generate::{Purpose, Tone};
use aida_core::Error;
use aida_core::auth::AuthContext;
use aida_core::consumer::{EventHandler, HandlerError};
use aida_core::db::{Database, Sql};
use aida_core::events::now_micros;
use aida_proto::aida::comms::v1 as pb;
use aida_proto::aida::events::v1::EventEnvelope;
use aida_proto::aida::events::v1::event_envelope::Payload;
use aida_proto::aida::leads::v1::{Lead as PbLead, LeadScore, LeadStatus};
use async_trait::async_trait;
use chrono::{DateTime, Duration, NaiveTime};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api::{Comms, draft_key};
use crate::autonomy::store::Key;
use crate::domain::{Channel, normalize_address};
use crate::writer::{self, Draft, DraftState};

/// Who the agent is in drafts, ledgers and logs.
pub const SUBJECT: &str = "agent:outreach";
/// Its durable consumer (and inbox key) on `CRM_LEADS`.
pub const CONSUMER: &str = "comms-outreach";
/// A draft claimed for sending this long ago was left by a process that stopped.
const STALE_SENDING_SECS: i64 = 300;
/// Due drafts handled per tick at most.
const DUE_BATCH: u32 = 100;
/// How long a draft waits when the lead is at its frequency cap.
const CAP_RETRY_MINUTES: i64 = 60;
/// How long a draft waits after a failure worth retrying.
const RETRY_SECS: i64 = 60;

/// What the agent knows of each lead, kept from `CRM_LEADS` as the events carried it: the
/// contact details sealed under the lead's key, opened only when read.
#[derive(Clone)]
pub struct LeadBook {
    db: Database,
    keys: Arc<aida_core::crypto::Keyring>,
}

impl LeadBook {
    pub fn new(db: Database, keys: Arc<aida_core::crypto::Keyring>) -> Self {
        Self { db, keys }
    }

    /// Keeps `lead` unless a newer version is already known.
    pub async fn remember(&self, tenant: &str, lead: &PbLead) -> Result<(), Error> {
        let id = Uuid::parse_str(&lead.id).map_err(|_| Error::invalid("lead.id", "not a UUID"))?;
        let updated = lead
            .update_time
            .as_ref()
            .and_then(|time| {
                DateTime::from_timestamp(time.seconds, u32::try_from(time.nanos).unwrap_or(0))
            })
            .unwrap_or(DateTime::UNIX_EPOCH);
        self.db
            .execute(
                Sql::new(
                    "INSERT INTO outreach_leads (tenant_id, lead_id, lead, update_time) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (tenant_id, lead_id) DO UPDATE SET lead = excluded.lead, update_time = excluded.update_time \
                     WHERE outreach_leads.update_time <= excluded.update_time",
                )
                .bind(tenant)
                .bind(id)
                .bind(lead.encode_to_vec())
                .bind(updated),
            )
            .await?;
        Ok(())
    }

    pub async fn forget(&self, tenant: &str, id: Uuid) -> Result<(), Error> {
        self.db
            .execute(
                Sql::new("DELETE FROM outreach_leads WHERE tenant_id = $1 AND lead_id = $2")
                    .bind(tenant)
                    .bind(id),
            )
            .await?;
        Ok(())
    }

    pub async fn lead(&self, tenant: &str, id: Uuid) -> Result<Option<PbLead>, Error> {
        #[derive(sqlx::FromRow)]
        struct Row {
            lead: Vec<u8>,
        }
        let row: Option<Row> = self
            .db
            .fetch_optional(
                Sql::new("SELECT lead FROM outreach_leads WHERE tenant_id = $1 AND lead_id = $2")
                    .bind(tenant)
                    .bind(id),
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut lead = PbLead::decode(row.lead.as_slice()).map_err(Error::internal)?;
        match self.keys.open_lead(tenant, &mut lead).await {
            Ok(()) => Ok(Some(lead)),
            // Erased: the agent knows nothing of them any more.
            Err(aida_core::crypto::CryptoError::Erased(_)) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }
}

/// The outreach agent.
pub struct Outreach {
    comms: Arc<Comms>,
    book: LeadBook,
    budget: Budget,
}

/// Whether the agent may write to `lead` at all.
fn reachable(lead: &PbLead) -> bool {
    let open = lead.status == LeadStatus::New as i32 || lead.status == LeadStatus::Qualified as i32;
    open && !lead.email.trim().is_empty()
}

fn transient(error: Error) -> HandlerError {
    HandlerError::Transient(error.to_string())
}

impl Outreach {
    pub fn new(comms: Arc<Comms>, book: LeadBook, budget: Budget) -> Self {
        Self {
            comms,
            book,
            budget,
        }
    }

    /// First touches the agent sent on its own today (UTC), every segment: the L4 budget.
    async fn used_today(&self, tenant: &str) -> Result<u32, Error> {
        let midnight = now_micros().date_naive().and_time(NaiveTime::MIN).and_utc();
        self.comms
            .writer
            .drafts
            .sent_by_since(tenant, SUBJECT, Purpose::FirstTouch, midnight)
            .await
    }

    async fn authority(&self, tenant: &str, key: &Key) -> Result<(Authority, Level), Error> {
        self.comms
            .autonomy
            .authority(tenant, key, &self.budget, || self.used_today(tenant))
            .await
    }

    /// Whether the lead may not get marketing e-mail: a suppressed address, or a withdrawn
    /// consent (the agent never sends to them, so neither is the writer's incident).
    async fn suppressed(&self, tenant: &str, lead: &PbLead) -> Result<bool, Error> {
        if self
            .comms
            .store
            .is_suppressed(tenant, &normalize_address(&lead.email))
            .await?
        {
            return Ok(true);
        }
        let Ok(lead_id) = Uuid::parse_str(&lead.id) else {
            return Ok(false);
        };
        let consent = self
            .comms
            .store
            .consent_in_force(tenant, lead_id, Channel::Email, crate::domain::MARKETING)
            .await?;
        Ok(consent == Some(crate::domain::ConsentState::Withdrawn))
    }

    /// A lead was scored: the agent considers a first touch.
    async fn consider(
        &self,
        tenant: &str,
        lead_id: Uuid,
        score: Option<LeadScore>,
    ) -> Result<(), Error> {
        let Some(mut lead) = self.book.lead(tenant, lead_id).await? else {
            // Deleted since, or captured before the agent's history began.
            tracing::debug!(lead = %lead_id, "scored lead unknown to the outreach agent");
            return Ok(());
        };
        lead.score = score;
        self.book.remember(tenant, &lead).await?;
        if !reachable(&lead) {
            return Ok(());
        }
        let drafts = &self.comms.writer.drafts;
        if drafts
            .exists_for(tenant, lead_id, Purpose::FirstTouch, SUBJECT)
            .await?
        {
            return Ok(());
        }
        let contacted = self
            .comms
            .store
            .recent_messages(tenant, lead_id, DateTime::UNIX_EPOCH)
            .await?;
        if contacted > 0 || self.suppressed(tenant, &lead).await? {
            return Ok(());
        }
        let segment = writer::segment_of(&lead);
        let key = Key {
            agent: writer::AGENT.into(),
            action: writer::action(Purpose::FirstTouch),
            segment: segment.clone(),
        };
        let (authority, level) = self.authority(tenant, &key).await?;
        let (state, send_delay) = match authority {
            Authority::LogOnly | Authority::Suggest | Authority::DraftForApproval => {
                (DraftState::Pending, None)
            }
            // The window runs from when the draft is written, for a person to read it.
            Authority::ActAfter { .. } => (
                DraftState::Scheduled,
                Some(Duration::seconds(
                    i64::try_from(self.comms.settings.outreach_veto_window_secs)
                        .unwrap_or(i64::MAX),
                )),
            ),
            Authority::Act => (DraftState::Scheduled, Some(Duration::zero())),
        };
        let written = self
            .comms
            .writer
            .draft(
                tenant,
                &lead,
                writer::Request {
                    purpose: Purpose::FirstTouch,
                    tone: Tone::Friendly,
                    segment,
                    level,
                    requester: SUBJECT.into(),
                    request_id: format!("{SUBJECT}:first_touch:{lead_id}"),
                    state,
                    send_delay,
                },
            )
            .await;
        let draft = match written {
            Ok(draft) => draft,
            // The lead has too little to write to: nothing to do for it.
            Err(Error::FailedPrecondition { message, .. }) => {
                tracing::info!(lead = %lead_id, %message, "outreach agent wrote nothing");
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        tracing::info!(
            lead = %lead_id,
            draft = %draft.id,
            level = %level,
            state = draft.state.as_str(),
            "outreach agent drafted a first touch"
        );
        if authority == Authority::Act
            && let Err(error) = self.send_due(draft).await
        {
            tracing::warn!(%error, "outreach agent's send postponed to its next tick");
        }
        Ok(())
    }

    /// Sends a due draft if the key still allows it now; otherwise hands it to a person
    /// or closes it.
    pub async fn send_due(&self, draft: Draft) -> Result<(), Error> {
        let drafts = &self.comms.writer.drafts;
        let tenant = draft.tenant_id.clone();
        let mut draft = draft;
        // Claim it: a person's veto or send, or another replica, may be first.
        if !drafts
            .shift(
                &draft,
                draft.state,
                DraftState::Sending,
                draft.send_after,
                now_micros(),
            )
            .await?
        {
            return Ok(());
        }
        draft.state = DraftState::Sending;
        let context = AuthContext::system(&tenant, SUBJECT, "", None);
        let request_id = format!("draft:{}", draft.id);
        // Sent by a process that stopped before closing the draft: close it now.
        if let Some(message) = self
            .comms
            .store
            .message_by_request(&tenant, &request_id)
            .await?
        {
            return self
                .comms
                .close_sent_draft(&context, &draft, &message)
                .await;
        }
        match self.authority(&tenant, &draft_key(&draft)).await?.0 {
            Authority::ActAfter { .. } | Authority::Act => {}
            authority => {
                tracing::info!(draft = %draft.id, ?authority, "the agent may no longer send on its own: the draft waits for a person");
                drafts
                    .shift(
                        &draft,
                        DraftState::Sending,
                        DraftState::Pending,
                        None,
                        now_micros(),
                    )
                    .await?;
                return Ok(());
            }
        }
        let lead = self.book.lead(&tenant, draft.lead_id).await?;
        let sendable = match &lead {
            Some(lead) => reachable(lead) && !self.suppressed(&tenant, lead).await?,
            None => false,
        };
        let Some(lead) = lead.filter(|_| sendable) else {
            tracing::info!(draft = %draft.id, "the lead was deleted, closed or suppressed: draft not sent");
            return self.discard(&draft).await;
        };
        let request = pb::SendMessageRequest {
            lead_id: lead.id.clone(),
            channel: pb::Channel::Email as i32,
            subject: draft.subject.clone(),
            body: draft.body.clone(),
            request_id,
            draft_id: draft.id.to_string(),
            ..pb::SendMessageRequest::default()
        };
        let sent = self
            .comms
            .send_to(
                &context,
                &lead,
                Channel::Email,
                None,
                &request,
                Some(&draft),
            )
            .await;
        match sent {
            Ok(message) => {
                tracing::info!(draft = %draft.id, message = %message.id, "outreach agent sent a first touch");
                Ok(())
            }
            Err(Error::FailedPrecondition {
                reason: "FREQUENCY_CAP",
                ..
            }) => {
                self.retry(&draft, Duration::minutes(CAP_RETRY_MINUTES))
                    .await
            }
            Err(Error::FailedPrecondition { message, .. }) => {
                tracing::info!(draft = %draft.id, %message, "draft not sent");
                self.discard(&draft).await
            }
            Err(error) => {
                tracing::warn!(draft = %draft.id, %error, "outreach agent's send failed; retried later");
                self.retry(&draft, Duration::seconds(RETRY_SECS)).await
            }
        }
    }

    async fn discard(&self, draft: &Draft) -> Result<(), Error> {
        self.comms
            .writer
            .drafts
            .close(
                draft,
                DraftState::Sending,
                DraftState::Discarded,
                None,
                false,
                SUBJECT,
                now_micros(),
            )
            .await?;
        Ok(())
    }

    async fn retry(&self, draft: &Draft, after: Duration) -> Result<(), Error> {
        let now = now_micros();
        self.comms
            .writer
            .drafts
            .shift(
                draft,
                DraftState::Sending,
                DraftState::Scheduled,
                Some(now + after),
                now,
            )
            .await?;
        Ok(())
    }

    /// Sends what is due now; returns how many drafts it looked at.
    pub async fn tick(&self) -> Result<usize, Error> {
        let now = now_micros();
        let due = self
            .comms
            .writer
            .drafts
            .due(now, now - Duration::seconds(STALE_SENDING_SECS), DUE_BATCH)
            .await?;
        let count = due.len();
        for draft in due {
            let id = draft.id;
            if let Err(error) = self.send_due(draft).await {
                tracing::warn!(draft = %id, %error, "outreach agent could not handle a due draft");
            }
        }
        Ok(count)
    }

    /// Looks for due drafts every `every` until `shutdown`.
    pub async fn run(self: Arc<Self>, every: StdDuration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            if let Err(error) = self.tick().await {
                tracing::warn!(%error, "outreach agent's scheduler tick failed");
            }
        }
    }
}

fn lead_id(value: &str) -> Result<Uuid, HandlerError> {
    Uuid::parse_str(value).map_err(|_| HandlerError::Poison(format!("lead id '{value}'")))
}

#[async_trait]
impl EventHandler for Outreach {
    async fn handle(&self, event: &EventEnvelope) -> Result<(), HandlerError> {
        let tenant = event.tenant_id.as_str();
        let mut leads: Vec<&PbLead> = Vec::new();
        match &event.payload {
            Some(Payload::LeadCaptured(captured)) => leads.extend(captured.lead.as_ref()),
            Some(Payload::LeadUpdated(updated)) => leads.extend(updated.lead.as_ref()),
            Some(Payload::LeadQualified(qualified)) => leads.extend(qualified.lead.as_ref()),
            Some(Payload::LeadRejected(rejected)) => leads.extend(rejected.lead.as_ref()),
            Some(Payload::LeadConverted(converted)) => leads.extend(converted.lead.as_ref()),
            Some(Payload::LeadMerged(merged)) => {
                leads.extend(merged.survivor.as_ref());
                leads.extend(merged.merged.iter());
            }
            Some(Payload::LeadDeleted(deleted)) => {
                let id = lead_id(&deleted.lead_id)?;
                return self.book.forget(tenant, id).await.map_err(transient);
            }
            Some(Payload::LeadScored(scored)) => {
                let id = lead_id(&scored.lead_id)?;
                return self
                    .consider(tenant, id, scored.score.clone())
                    .await
                    .map_err(HandlerError::from);
            }
            _ => return Ok(()),
        }
        for lead in leads {
            // The score travels in `leads.scored`; a change of the lead keeps the last one.
            let mut lead = lead.clone();
            if lead.score.is_none() {
                let id = lead_id(&lead.id)?;
                if let Some(known) = self.book.lead(tenant, id).await.map_err(transient)? {
                    lead.score = known.score;
                }
            }
            self.book
                .remember(tenant, &lead)
                .await
                .map_err(HandlerError::from)?;
        }
        Ok(())
    }
}
