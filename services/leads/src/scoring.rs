//! Lead scoring: every lead carries a score (0–100), a tier and the factors behind it,
//! from [`aida_ai::scoring`], kept current by three durable consumers:
//!
//! - `CRM_LEADS` (`leads.captured`, `leads.updated`, `leads.merged`): the lead changed, score it;
//!   `leads.deleted`: erase its score, engagement and outcome.
//! - `CRM_COMMS` (`comms.sent`, `comms.opened`, `comms.clicked`, `comms.replied`): bump the
//!   lead's engagement counters (once per event: the inbox claims the event id in the same
//!   transaction), then score it.
//! - `CRM_DEALS` (`deals.won`, `deals.lost`): the deal's lead becomes a labelled outcome,
//!   stored with its features and recorded in the vector store (for the similar-leads
//!   features); once enough outcomes exist the tenant's model is retrained, persisted, and
//!   every lead of the tenant is scored again.
//!
//! A score is written with its `leads.scored` event in one transaction (outbox), along with
//! a digest of its inputs (features and model): scoring the same inputs again (a redelivery,
//! a replay) writes nothing and publishes nothing.

use std::sync::Arc;

use aida_ai::embed::Embedder;
use aida_ai::scoring::{
    self as ai, Engagement, Features, LeadProfile, LeadScoreModel, Outcome, Score, Similarity,
    TrainConfig,
};
use aida_ai::vector::VectorStore;
use aida_core::auth::AuthContext;
use aida_core::consumer::{EventHandler, HandlerError, claim};
use aida_core::db::{Database, Sql, placeholders};
use aida_core::events::{envelope, now_micros};
use aida_core::outbox::{self, Relay};
use aida_core::{Error, consumer};
use aida_proto::aida::events::v1::event_envelope::Payload;
use aida_proto::aida::events::v1::{EventEnvelope, LeadScored};
use async_trait::async_trait;
use sha2::Digest;
use uuid::Uuid;

use crate::domain::{Lead, Source, Status};
use crate::store::LeadStore;

/// Durable consumer (and inbox key) of lead changes.
pub const LEADS_CONSUMER: &str = "leads-scoring-leads";
/// Durable consumer (and inbox key) of engagement events.
pub const COMMS_CONSUMER: &str = "leads-scoring-comms";
/// Durable consumer (and inbox key) of won and lost deals.
pub const OUTCOMES_CONSUMER: &str = "leads-scoring-outcomes";

/// Won and lost leads considered similar to a scored lead, of each kind.
const NEIGHBOURS: usize = 5;

/// The latest scores, as the API reads them.
#[derive(Clone)]
pub struct Scores {
    db: Database,
}

#[derive(sqlx::FromRow)]
struct ScoreRow {
    lead_id: Uuid,
    score: String,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    input_key: String,
}

#[derive(sqlx::FromRow)]
struct EngagementRow {
    opens: i64,
    clicks: i64,
    replies: i64,
    messages_sent: i64,
    meetings: i64,
}

#[derive(sqlx::FromRow)]
struct ModelRow {
    model: String,
}

#[derive(sqlx::FromRow)]
struct OutcomeRow {
    outcome: String,
    features: String,
}

#[derive(sqlx::FromRow)]
struct IdRow {
    id: Uuid,
}

fn decode_score(text: &str) -> Result<Score, Error> {
    serde_json::from_str(text).map_err(|e| Error::internal(format!("stored lead score: {e}")))
}

impl Scores {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The latest score of a lead, if it was scored.
    pub async fn get(&self, tenant: &str, lead_id: Uuid) -> Result<Option<Score>, Error> {
        let row: Option<ScoreRow> = self
            .db
            .fetch_optional(
                Sql::new(
                    "SELECT lead_id, score FROM lead_scores WHERE tenant_id = $1 AND lead_id = $2",
                )
                .bind(tenant)
                .bind(lead_id),
            )
            .await?;
        row.map(|row| decode_score(&row.score)).transpose()
    }

    /// The latest scores of these leads (those scored), by lead id.
    pub async fn get_many(&self, tenant: &str, ids: &[Uuid]) -> Result<Vec<(Uuid, Score)>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = Sql::new(format!(
            "SELECT lead_id, score FROM lead_scores WHERE tenant_id = $1 AND lead_id IN ({})",
            placeholders(2, ids.len())
        ))
        .bind(tenant);
        for id in ids {
            sql = sql.bind(*id);
        }
        let rows: Vec<ScoreRow> = self.db.fetch_all(sql).await?;
        rows.into_iter()
            .map(|row| Ok((row.lead_id, decode_score(&row.score)?)))
            .collect()
    }
}

/// What scoring needs of a lead: who it is, in the terms of [`aida_ai::scoring`].
pub fn profile_of(lead: &Lead) -> LeadProfile {
    let f = &lead.fields;
    let source = match lead.source {
        Source::WebForm => "web form".to_owned(),
        Source::Referral => "referral".to_owned(),
        Source::Event => "event".to_owned(),
        Source::Outbound => "outbound".to_owned(),
        // An import or another source may say more in a `source` attribute.
        Source::Import | Source::Other => f.attributes.get("source").cloned().unwrap_or_default(),
    };
    let notes: Vec<&str> = f
        .attributes
        .iter()
        .filter(|(key, _)| key.as_str() != "source")
        .map(|(_, value)| value.as_str())
        .collect();
    LeadProfile {
        id: lead.id.to_string(),
        title: f.title.clone(),
        company: f.company.clone(),
        email: f.email.clone(),
        source,
        phone_present: !f.phone.trim().is_empty(),
        fields_filled: u32::try_from(
            f.attributes
                .values()
                .filter(|v| !v.trim().is_empty())
                .count(),
        )
        .unwrap_or(u32::MAX),
        fields_total: u32::try_from(f.attributes.len()).unwrap_or(u32::MAX),
        notes: notes.join("\n"),
    }
}

/// Which engagement counter an event bumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    Sent,
    Opened,
    Clicked,
    Replied,
}

/// Scores leads and learns from outcomes (see the module documentation).
pub struct Scorer {
    store: LeadStore,
    db: Database,
    relay: Relay,
    embedder: Arc<dyn Embedder>,
    vectors: Arc<dyn VectorStore>,
    config: TrainConfig,
    /// One scoring at a time in this process: each reads the inputs as committed now, so
    /// the last one to write a lead's score wrote it from the latest inputs.
    writing: tokio::sync::Mutex<()>,
}

fn service_context(event: &EventEnvelope) -> AuthContext {
    AuthContext::for_event(event, "service:leads")
}

fn unavailable(what: &str, error: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("{what}: {error}"))
}

fn clamp_count(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

impl Scorer {
    pub fn new(
        store: LeadStore,
        db: Database,
        relay: Relay,
        embedder: Arc<dyn Embedder>,
        vectors: Arc<dyn VectorStore>,
        config: TrainConfig,
    ) -> Self {
        Self {
            store,
            db,
            relay,
            embedder,
            vectors,
            config,
            writing: tokio::sync::Mutex::new(()),
        }
    }

    async fn engagement(&self, tenant: &str, lead_id: Uuid) -> Result<Engagement, Error> {
        let row: Option<EngagementRow> = self
            .db
            .fetch_optional(
                Sql::new(
                    "SELECT opens, clicks, replies, messages_sent, meetings FROM lead_engagement \
                     WHERE tenant_id = $1 AND lead_id = $2",
                )
                .bind(tenant)
                .bind(lead_id),
            )
            .await?;
        Ok(row
            .map(|row| Engagement {
                opens: clamp_count(row.opens),
                clicks: clamp_count(row.clicks),
                replies: clamp_count(row.replies),
                messages_sent: clamp_count(row.messages_sent),
                meetings: clamp_count(row.meetings),
            })
            .unwrap_or_default())
    }

    /// The tenant's trained model, or the prior.
    pub async fn model(&self, tenant: &str) -> Result<LeadScoreModel, Error> {
        let row: Option<ModelRow> = self
            .db
            .fetch_optional(
                Sql::new("SELECT model FROM lead_score_models WHERE tenant_id = $1").bind(tenant),
            )
            .await?;
        match row {
            None => Ok(LeadScoreModel::prior()),
            Some(row) => serde_json::from_str(&row.model).or_else(|error| {
                // A model of another feature set (an older build) is not misread: the prior
                // scores until the next retraining replaces it.
                tracing::warn!(%tenant, %error, "stored lead score model refused; using the prior");
                Ok(LeadScoreModel::prior())
            }),
        }
    }

    /// The nearest won and lost leads, embedded off the async threads.
    async fn similarity(&self, tenant: &str, profile: &LeadProfile) -> Result<Similarity, Error> {
        let embedder = self.embedder.clone();
        let vectors = self.vectors.clone();
        let profile = profile.clone();
        let namespace = ai::outcomes_namespace(tenant);
        let handle = tokio::runtime::Handle::current();
        let found = tokio::task::spawn_blocking(move || {
            handle.block_on(ai::similar_leads(
                embedder.as_ref(),
                vectors.as_ref(),
                &namespace,
                &[&profile],
                NEIGHBOURS,
            ))
        })
        .await
        .map_err(|e| Error::internal(format!("similarity task: {e}")))?
        .map_err(|e| unavailable("similar leads", e))?;
        Ok(found.into_iter().next().unwrap_or_default())
    }

    /// The features of a lead now, or `None` for a lead that is gone or merged.
    async fn features(
        &self,
        tenant: &str,
        lead_id: Uuid,
    ) -> Result<Option<(Lead, LeadProfile, Features, Similarity)>, Error> {
        let lead = match self.store.get(tenant, lead_id).await {
            Ok(lead) => lead,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        if lead.status == Status::Merged {
            return Ok(None);
        }
        let profile = profile_of(&lead);
        let engagement = self.engagement(tenant, lead_id).await?;
        let similarity = self.similarity(tenant, &profile).await?;
        let features = Features::extract(&profile, &engagement, &similarity);
        Ok(Some((lead, profile, features, similarity)))
    }

    /// Scores a lead from its current inputs and commits the score with its `leads.scored`
    /// event, unless the stored score was computed from the same inputs.
    pub async fn rescore(&self, event: &EventEnvelope, lead_id: Uuid) -> Result<(), Error> {
        let _writing = self.writing.lock().await;
        self.rescore_locked(event, lead_id).await
    }

    async fn rescore_locked(&self, event: &EventEnvelope, lead_id: Uuid) -> Result<(), Error> {
        let tenant = event.tenant_id.as_str();
        let Some((lead, _, features, similarity)) = self.features(tenant, lead_id).await? else {
            return Ok(());
        };
        let model = self.model(tenant).await?;
        let model_json = serde_json::to_string(&model)
            .map_err(|e| Error::internal(format!("lead score model: {e}")))?;
        let mut digest = sha2::Sha256::new();
        digest.update(model_json.as_bytes());
        for value in features.values() {
            digest.update(value.to_bits().to_be_bytes());
        }
        for (id, similarity) in &similarity.to_won {
            digest.update(id.as_bytes());
            digest.update(similarity.to_bits().to_be_bytes());
        }
        let input_key = format!("{:x}", digest.finalize());

        let mut tx = self.db.begin().await?;
        let lock = tx.engine().lock_clause();
        let stored: Option<KeyRow> = tx
            .fetch_optional(
                Sql::new(format!(
                    "SELECT input_key FROM lead_scores WHERE tenant_id = $1 AND lead_id = $2{lock}"
                ))
                .bind(tenant)
                .bind(lead_id),
            )
            .await?;
        if stored.is_some_and(|row| row.input_key == input_key) {
            tx.rollback().await?;
            return Ok(());
        }
        let now = now_micros();
        let score = model.score_features(&features, similarity.to_won, now);
        let score_json = serde_json::to_string(&score)
            .map_err(|e| Error::internal(format!("lead score: {e}")))?;
        tx.execute(
            Sql::new(
                "INSERT INTO lead_scores (tenant_id, lead_id, lead_version, input_key, score, scored_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id, lead_id) DO UPDATE SET \
                 lead_version = excluded.lead_version, input_key = excluded.input_key, \
                 score = excluded.score, scored_at = excluded.scored_at",
            )
            .bind(tenant)
            .bind(lead_id)
            .bind(lead.version)
            .bind(input_key)
            .bind(score_json)
            .bind(now),
        )
        .await?;
        let scored = envelope(
            &service_context(event),
            format!("leads/{lead_id}"),
            now,
            Payload::LeadScored(LeadScored {
                lead_id: lead_id.to_string(),
                score: Some(crate::api::score_to_proto(&score)),
            }),
        );
        outbox::enqueue(&mut tx, &scored).await?;
        tx.commit().await?;
        self.relay.wake();
        Ok(())
    }

    /// Counts an engagement event once (inbox), then scores the lead.
    pub async fn engage(
        &self,
        consumer: &str,
        event: &EventEnvelope,
        lead_id: Uuid,
        touch: Touch,
    ) -> Result<(), Error> {
        let tenant = event.tenant_id.as_str();
        match self.store.get(tenant, lead_id).await {
            Ok(_) => {}
            // Outreach to a lead that is gone (or of another service) counts for nothing.
            Err(Error::NotFound { .. }) => return Ok(()),
            Err(error) => return Err(error),
        }
        let one = |t: Touch| i64::from(touch == t);
        let mut tx = self.db.begin().await?;
        if claim(&mut tx, consumer, &event.event_id).await? {
            tx.execute(
                Sql::new(
                    "INSERT INTO lead_engagement (tenant_id, lead_id, opens, clicks, replies, messages_sent, meetings) \
                     VALUES ($1, $2, $3, $4, $5, $6, 0) ON CONFLICT (tenant_id, lead_id) DO UPDATE SET \
                     opens = lead_engagement.opens + excluded.opens, \
                     clicks = lead_engagement.clicks + excluded.clicks, \
                     replies = lead_engagement.replies + excluded.replies, \
                     messages_sent = lead_engagement.messages_sent + excluded.messages_sent",
                )
                .bind(tenant)
                .bind(lead_id)
                .bind(one(Touch::Opened))
                .bind(one(Touch::Clicked))
                .bind(one(Touch::Replied))
                .bind(one(Touch::Sent)),
            )
            .await?;
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        // Scored even when the event was counted before: a crash between counting and
        // scoring is healed by the redelivery, and scoring the same inputs is a no-op.
        self.rescore(event, lead_id).await
    }

    /// Records a lead's outcome (once per event), retrains the tenant's model when enough
    /// outcomes exist, and scores the lead (or, after retraining, every lead) again.
    pub async fn label(
        &self,
        consumer: &str,
        event: &EventEnvelope,
        lead_id: Uuid,
        outcome: Outcome,
        deal_id: &str,
    ) -> Result<(), Error> {
        let tenant = event.tenant_id.as_str();
        let _writing = self.writing.lock().await;
        let Some((_, profile, features, _)) = self.features(tenant, lead_id).await? else {
            return Ok(());
        };
        let mut tx = self.db.begin().await?;
        if claim(&mut tx, consumer, &event.event_id).await? {
            let features_json = serde_json::to_string(&features)
                .map_err(|e| Error::internal(format!("lead features: {e}")))?;
            tx.execute(
                Sql::new(
                    "INSERT INTO lead_outcomes (tenant_id, lead_id, outcome, deal_id, features, update_time) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id, lead_id) DO UPDATE SET \
                     outcome = excluded.outcome, deal_id = excluded.deal_id, \
                     features = excluded.features, update_time = excluded.update_time",
                )
                .bind(tenant)
                .bind(lead_id)
                .bind(outcome.as_str())
                .bind(deal_id)
                .bind(features_json)
                .bind(now_micros()),
            )
            .await?;
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        // The vector store is not transactional: the outcome is (re)recorded on every
        // delivery, which replaces the same entry.
        let stored: Option<OutcomeRow> = self
            .db
            .fetch_optional(
                Sql::new(
                    "SELECT outcome, features FROM lead_outcomes WHERE tenant_id = $1 AND lead_id = $2",
                )
                .bind(tenant)
                .bind(lead_id),
            )
            .await?;
        let outcome = match stored.as_ref().map(|row| row.outcome.as_str()) {
            Some("won") => Outcome::Won,
            Some(_) => Outcome::Lost,
            None => outcome,
        };
        self.record(tenant, profile, outcome).await?;
        if self.retrain(tenant).await? {
            self.rescore_tenant(event).await
        } else {
            self.rescore_locked(event, lead_id).await
        }
    }

    async fn record(
        &self,
        tenant: &str,
        profile: LeadProfile,
        outcome: Outcome,
    ) -> Result<(), Error> {
        let embedder = self.embedder.clone();
        let vectors = self.vectors.clone();
        let namespace = ai::outcomes_namespace(tenant);
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            handle.block_on(ai::record_outcomes(
                embedder.as_ref(),
                vectors.as_ref(),
                &namespace,
                &[(&profile, outcome)],
            ))
        })
        .await
        .map_err(|e| Error::internal(format!("outcome task: {e}")))?
        .map_err(|e| unavailable("recording outcome", e))?;
        Ok(())
    }

    /// Retrains the tenant's model when there are enough outcomes and 20 % more (at least
    /// five more) than the current model saw; returns whether the model changed.
    async fn retrain(&self, tenant: &str) -> Result<bool, Error> {
        let rows: Vec<OutcomeRow> = self
            .db
            .fetch_all(
                Sql::new(
                    "SELECT outcome, features FROM lead_outcomes WHERE tenant_id = $1 ORDER BY lead_id",
                )
                .bind(tenant),
            )
            .await?;
        let n = rows.len();
        if n < self.config.min_labelled {
            return Ok(false);
        }
        let current = self.model(tenant).await?;
        if !current.is_prior() {
            let (seen, _) = current.labelled();
            if n < seen + (seen / 5).max(5) {
                return Ok(false);
            }
        }
        let mut examples = Vec::with_capacity(n);
        for row in rows {
            let features: Features = serde_json::from_str(&row.features)
                .map_err(|e| Error::internal(format!("stored lead features: {e}")))?;
            let outcome = if row.outcome == "won" {
                Outcome::Won
            } else {
                Outcome::Lost
            };
            examples.push((features, outcome));
        }
        let model = LeadScoreModel::train(&examples, &self.config);
        if model.is_prior() {
            return Ok(false);
        }
        let model_json = serde_json::to_string(&model)
            .map_err(|e| Error::internal(format!("lead score model: {e}")))?;
        self.db
            .execute(
                Sql::new(
                    "INSERT INTO lead_score_models (tenant_id, version, labelled, model, update_time) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id) DO UPDATE SET \
                     version = excluded.version, labelled = excluded.labelled, \
                     model = excluded.model, update_time = excluded.update_time",
                )
                .bind(tenant)
                .bind(model.version())
                .bind(i64::try_from(n).unwrap_or(i64::MAX))
                .bind(model_json)
                .bind(now_micros()),
            )
            .await?;
        tracing::info!(%tenant, version = model.version(), "lead score model retrained");
        Ok(true)
    }

    /// Erases what scoring holds about a deleted lead: its score, engagement, outcome and
    /// outcome vector (the lead's text).
    pub async fn forget(&self, tenant: &str, lead_id: Uuid) -> Result<(), Error> {
        let _writing = self.writing.lock().await;
        let mut tx = self.db.begin().await?;
        for table in ["lead_scores", "lead_engagement", "lead_outcomes"] {
            tx.execute(
                Sql::new(format!(
                    "DELETE FROM {table} WHERE tenant_id = $1 AND lead_id = $2"
                ))
                .bind(tenant)
                .bind(lead_id),
            )
            .await?;
        }
        tx.commit().await?;
        self.vectors
            .delete(&ai::outcomes_namespace(tenant), &[lead_id.to_string()])
            .await
            .map_err(|e| unavailable("vector store", e))
    }

    /// Scores every live lead of the event's tenant again (after a retraining).
    async fn rescore_tenant(&self, event: &EventEnvelope) -> Result<(), Error> {
        let ids: Vec<IdRow> = self
            .db
            .fetch_all(
                Sql::new(
                    "SELECT id FROM leads WHERE tenant_id = $1 AND status <> 'MERGED' ORDER BY id",
                )
                .bind(event.tenant_id.as_str()),
            )
            .await?;
        for row in ids {
            self.rescore_locked(event, row.id).await?;
        }
        Ok(())
    }
}

/// The consumers' handler: one per stream, each with its own inbox key.
pub struct ScoringHandler {
    pub scorer: Arc<Scorer>,
    pub consumer: &'static str,
}

fn lead_id_of(value: &str) -> Result<Option<Uuid>, HandlerError> {
    if value.is_empty() {
        return Ok(None);
    }
    Uuid::parse_str(value)
        .map(Some)
        .map_err(|_| HandlerError::Poison(format!("lead id '{value}'")))
}

#[async_trait]
impl EventHandler for ScoringHandler {
    async fn handle(&self, event: &EventEnvelope) -> Result<(), HandlerError> {
        let scorer = &self.scorer;
        let lead_of = |lead: &Option<aida_proto::aida::leads::v1::Lead>| {
            lead.as_ref()
                .map(|lead| lead_id_of(&lead.id))
                .transpose()
                .map(Option::flatten)
        };
        let touch = |lead_id: &str, touch: Touch| (lead_id.to_owned(), touch);
        let engagement = match &event.payload {
            Some(Payload::LeadCaptured(captured)) => {
                if let Some(id) = lead_of(&captured.lead)? {
                    scorer.rescore(event, id).await?;
                }
                return Ok(());
            }
            Some(Payload::LeadUpdated(updated)) => {
                if let Some(id) = lead_of(&updated.lead)? {
                    scorer.rescore(event, id).await?;
                }
                return Ok(());
            }
            Some(Payload::LeadMerged(merged)) => {
                if let Some(id) = lead_of(&merged.survivor)? {
                    scorer.rescore(event, id).await?;
                }
                return Ok(());
            }
            Some(Payload::LeadDeleted(deleted)) => {
                if let Some(id) = lead_id_of(&deleted.lead_id)? {
                    scorer.forget(&event.tenant_id, id).await?;
                }
                return Ok(());
            }
            Some(Payload::DealWon(won)) => {
                return self.outcome(event, won.deal.as_ref(), Outcome::Won).await;
            }
            Some(Payload::DealLost(lost)) => {
                return self.outcome(event, lost.deal.as_ref(), Outcome::Lost).await;
            }
            Some(Payload::MessageSent(sent)) => touch(&sent.lead_id, Touch::Sent),
            // Machine opens (privacy proxies, scanners) say nothing about the person.
            Some(Payload::MessageOpened(opened)) if !opened.machine => {
                touch(&opened.lead_id, Touch::Opened)
            }
            Some(Payload::MessageClicked(clicked)) => touch(&clicked.lead_id, Touch::Clicked),
            Some(Payload::MessageReplied(replied)) => touch(&replied.lead_id, Touch::Replied),
            // Everything else on these streams (including our own `leads.scored`) changes
            // no input of a score.
            _ => return Ok(()),
        };
        let (lead_id, touch) = engagement;
        if let Some(id) = lead_id_of(&lead_id)? {
            scorer.engage(self.consumer, event, id, touch).await?;
        }
        Ok(())
    }
}

impl ScoringHandler {
    async fn outcome(
        &self,
        event: &EventEnvelope,
        deal: Option<&aida_proto::aida::deals::v1::Deal>,
        outcome: Outcome,
    ) -> Result<(), HandlerError> {
        let Some(deal) = deal else {
            return Err(HandlerError::Poison(format!(
                "{} without the deal",
                event.event_type
            )));
        };
        let Some(lead_id) = lead_id_of(&deal.lead_id)? else {
            return Ok(());
        };
        self.scorer
            .label(self.consumer, event, lead_id, outcome, &deal.id)
            .await
            .map_err(consumer::HandlerError::from)
    }
}
