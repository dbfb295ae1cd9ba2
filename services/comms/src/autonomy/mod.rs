//! AutonomyService: what each AI agent has earned the right to do on its own, per
//! (agent, action, segment), with the ledger of reviewed decisions and the history of its
//! levels. The rules are [`aida_ai::autonomy`]'s; this module stores them, takes the
//! evidence from people's reviews and from what came of sent messages, and announces every
//! change (`comms.autonomy_changed`, `comms.autonomy_proposed`).

mod api;
pub mod store;

use std::sync::Arc;
use std::time::Duration as StdDuration;

use aida_ai::autonomy::{
    Authority, Baseline, Budget, BusinessOutcome, Cause, Grant, Incident, Level, NotYet, Policy,
    Proposal, Refused, Review, Transition,
};
use aida_core::Error;
use aida_core::auth::AuthContext;
use aida_core::error::FieldViolation;
use aida_core::events::{envelope, now_micros, timestamp};
use aida_core::outbox::Relay;
use aida_core::pagination::PageTokens;
use aida_core::query::{self, KeyValue};
use aida_core::settings::CommsSettings;
use aida_proto::aida::ai::v1 as pb;
use aida_proto::aida::ai::v1::autonomy_service_server::AutonomyService;
use aida_proto::aida::events::v1::event_envelope::Payload;
use aida_proto::aida::events::v1::{AutonomyChanged, AutonomyProposed};
use chrono::{DateTime, Duration, Utc};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use store::{
    AutonomyStore, DecisionRecord, GrantRecord, Key, StoredTransition, TransitionRecord, Version,
    Writes,
};

const PAGE_SIZES: query::PageSizes = query::PageSizes {
    default: 50,
    max: 200,
};
/// Retired versions kept per key.
const MAX_RETIRED: usize = 20;
/// People's messages needed before their outcomes are the bar; below it, the policy's
/// limits are.
const MIN_PEOPLE_SENDS: i64 = 50;
/// How far back people's messages count for the bar.
const BASELINE_DAYS: i64 = 90;

/// The promotion policy the settings ask for.
pub fn policy(settings: &CommsSettings) -> Policy {
    let mut policy = Policy::default();
    for (index, value) in settings.autonomy_min_decisions.iter().take(4).enumerate() {
        policy.min_decisions[index] = *value;
    }
    for (index, hours) in settings
        .autonomy_min_hours_at_level
        .iter()
        .take(4)
        .enumerate()
    {
        policy.min_time_at_level[index] = Duration::hours(i64::from(*hours));
    }
    policy.veto_window =
        Duration::seconds(i64::try_from(settings.outreach_veto_window_secs).unwrap_or(i64::MAX));
    policy
}

/// The L4 budget the settings ask for.
pub fn budget(settings: &CommsSettings) -> Budget {
    Budget {
        daily_volume: settings.outreach_daily_volume,
        quiet_start_hour: settings.outreach_quiet_hours.first().copied().unwrap_or(0),
        quiet_end_hour: settings.outreach_quiet_hours.get(1).copied().unwrap_or(0),
    }
}

/// What AutonomyService needs.
pub struct Autonomy {
    store: AutonomyStore,
    relay: Relay,
    page_tokens: PageTokens,
    policy: Policy,
    /// People's outcomes per tenant, recomputed every few minutes.
    baselines: moka::sync::Cache<String, Baseline>,
}

impl Autonomy {
    pub fn new(
        store: AutonomyStore,
        relay: Relay,
        page_tokens: PageTokens,
        policy: Policy,
    ) -> Self {
        Self {
            store,
            relay,
            page_tokens,
            policy,
            baselines: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(StdDuration::from_secs(300))
                .build(),
        }
    }

    /// The bar an agent's sent messages must clear: people's own reply, unsubscribe and
    /// bounce rates over the last 90 days, or the policy's limits while people have sent
    /// too little to tell.
    async fn baseline(&self, tenant: &str) -> Result<Baseline, Error> {
        if let Some(baseline) = self.baselines.get(tenant) {
            return Ok(baseline);
        }
        let people = self
            .store
            .people_outcomes(tenant, now_micros() - Duration::days(BASELINE_DAYS))
            .await?;
        let baseline = if people.sent < MIN_PEOPLE_SENDS {
            Baseline {
                reply_rate: 0.0,
                unsubscribe_rate: self.policy.max_unsubscribe_rate,
                bounce_rate: self.policy.max_bounce_rate,
            }
        } else {
            let sent = people.sent as f64;
            Baseline {
                reply_rate: people.replied as f64 / sent,
                unsubscribe_rate: people.unsubscribed as f64 / sent,
                bounce_rate: people.failed as f64 / (sent + people.failed as f64),
            }
        };
        self.baselines.insert(tenant.to_owned(), baseline);
        Ok(baseline)
    }

    /// What the agent may do now for `key`, and the level it acts at: the level at the
    /// moment of acting, read once. `used_today` (the budget spent) is asked for only at L4,
    /// the one level it decides.
    pub async fn authority<F, Fut>(
        &self,
        tenant: &str,
        key: &Key,
        budget: &Budget,
        used_today: F,
    ) -> Result<(Authority, Level), Error>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<u32, Error>>,
    {
        let now = now_micros();
        let record = self
            .store
            .grant(tenant, key)
            .await?
            .unwrap_or_else(|| GrantRecord::fresh(key.clone(), now));
        let level = record.grant.effective_level();
        let used = if level == Level::Budgeted {
            used_today().await?
        } else {
            0
        };
        Ok((
            record.grant.authority(&self.policy, budget, now, used),
            level,
        ))
    }

    fn to_proto(&self, record: &GrantRecord, baseline: &Baseline) -> pb::Autonomy {
        let grant = &record.grant;
        let evidence = &grant.evidence;
        let blocker = match grant.assess(&self.policy, baseline, now_micros()) {
            Ok(to) => format!("evidence supports {to}; proposed with the next review"),
            Err(reason) => blocker(&reason, grant.level),
        };
        pb::Autonomy {
            agent: record.key.agent.clone(),
            action: record.key.action.clone(),
            segment: record.key.segment.clone(),
            level: level_to_proto(grant.level),
            effective_level: level_to_proto(grant.effective_level()),
            killed: grant.killed,
            since: Some(timestamp(grant.since)),
            model_version: grant.model_version.clone(),
            prompt_version: grant.prompt_version.clone(),
            evidence: Some(pb::Evidence {
                counted: count(evidence.counted),
                approved_unchanged: count(evidence.unchanged),
                edited: count(evidence.edited),
                rejected: count(evidence.rejected),
                vetoed: count(evidence.vetoed),
                undone: count(evidence.undone),
                rubber_stamps: count(evidence.rubber_stamps),
                sends: count(evidence.sends),
                replies: count(evidence.replies),
                unsubscribes: count(evidence.unsubscribes),
                bounces: count(evidence.bounces),
                approved_unchanged_rate: evidence.unchanged_rate(),
            }),
            proposal: grant.proposal.as_ref().map(proposal_to_proto),
            promotion_blocker: if grant.proposal.is_some() {
                String::new()
            } else {
                blocker
            },
            update_time: Some(timestamp(record.update_time)),
        }
    }

    /// Changes `key`'s grant with `decide` and announces what changed.
    async fn change<F>(
        &self,
        context: &AuthContext,
        key: &Key,
        decide: F,
    ) -> Result<(GrantRecord, Writes), Error>
    where
        F: FnOnce(&mut GrantRecord, &mut Changes) -> Result<(), Error>,
    {
        let now = now_micros();
        let changed = self
            .store
            .modify(&context.tenant_id, key, now, |record| {
                let mut changes = Changes {
                    context,
                    key,
                    now,
                    writes: Writes::default(),
                };
                decide(record, &mut changes)?;
                Ok(changes.writes)
            })
            .await?;
        if !changed.1.events.is_empty() {
            self.relay.wake();
        }
        Ok(changed)
    }

    async fn reply(
        &self,
        context: &AuthContext,
        record: &GrantRecord,
    ) -> Result<pb::Autonomy, Error> {
        let baseline = self.baseline(&context.tenant_id).await?;
        Ok(self.to_proto(record, &baseline))
    }
}

/// What one change writes, gathered while deciding.
struct Changes<'a> {
    context: &'a AuthContext,
    key: &'a Key,
    now: DateTime<Utc>,
    writes: Writes,
}

impl Changes<'_> {
    fn subject(&self) -> String {
        format!(
            "autonomy/{}/{}/{}",
            self.key.agent, self.key.action, self.key.segment
        )
    }

    /// Records a transition and its `comms.autonomy_changed` event.
    fn transition(&mut self, transition: &Transition, detail: String) {
        let (cause, actor) = match &transition.cause {
            Cause::Promoted { approver } => ("PROMOTED", approver.clone()),
            Cause::CriticalIncident => ("CRITICAL_INCIDENT", self.context.subject.clone()),
            Cause::ThresholdBreach => ("THRESHOLD_BREACH", self.context.subject.clone()),
            Cause::VersionChanged { .. } => ("VERSION_CHANGED", self.context.subject.clone()),
            Cause::Demoted { by } => ("DEMOTED", by.clone()),
            Cause::Killed { by } => ("KILLED", by.clone()),
            Cause::Revived { by } => ("REVIVED", by.clone()),
        };
        let record = TransitionRecord {
            id: Uuid::now_v7(),
            key: self.key.clone(),
            from: transition.from,
            to: transition.to,
            cause,
            actor,
            detail,
            create_time: self.now,
        };
        let event = envelope(
            self.context,
            self.subject(),
            self.now,
            Payload::AutonomyChanged(AutonomyChanged {
                transition: Some(transition_to_proto(&StoredTransition::from(&record))),
            }),
        );
        self.writes.transitions.push(record);
        self.writes.events.push(event.into());
    }

    /// Announces a promotion proposal (`comms.autonomy_proposed`).
    fn proposal(&mut self, proposal: &Proposal) {
        let event = envelope(
            self.context,
            self.subject(),
            self.now,
            Payload::AutonomyProposed(AutonomyProposed {
                agent: self.key.agent.clone(),
                action: self.key.action.clone(),
                segment: self.key.segment.clone(),
                proposal: Some(proposal_to_proto(proposal)),
            }),
        );
        self.writes.events.push(event.into());
    }

    /// Proposes the promotion the evidence supports, if it does.
    fn propose(&mut self, grant: &mut Grant, policy: &Policy, baseline: &Baseline) {
        if let Ok(proposal) = grant.propose(policy, baseline, self.now) {
            let proposal = proposal.clone();
            self.proposal(&proposal);
        }
    }
}

/// A person's review of one AI decision, validated.
pub struct ReviewInput {
    pub key: Key,
    /// What the decision was about, e.g. `messages/<id>`.
    pub subject: String,
    pub review: Review,
    pub review_ms: i64,
    pub version: Version,
    pub sent: bool,
    /// Makes the review idempotent when not empty.
    pub request_id: String,
}

/// AutonomyService over gRPC.
pub struct AutonomyApi(pub Arc<Autonomy>);

fn count(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

fn level_to_proto(level: Level) -> i32 {
    i32::from(level.number()) + 1
}

fn proposal_to_proto(proposal: &Proposal) -> pb::Proposal {
    pb::Proposal {
        from_level: level_to_proto(proposal.from),
        to_level: level_to_proto(proposal.to),
        propose_time: Some(timestamp(proposal.proposed_at)),
    }
}

fn review_to_proto(review: Review) -> pb::Review {
    match review {
        Review::ApprovedUnchanged => pb::Review::ApprovedUnchanged,
        Review::Edited => pb::Review::Edited,
        Review::Rejected => pb::Review::Rejected,
        Review::Vetoed => pb::Review::Vetoed,
        Review::Undone => pb::Review::Undone,
    }
}

fn outcome_to_proto(outcome: Option<BusinessOutcome>) -> pb::Outcome {
    match outcome {
        None => pb::Outcome::Unspecified,
        Some(BusinessOutcome::Replied) => pb::Outcome::Replied,
        Some(BusinessOutcome::Unsubscribed) => pb::Outcome::Unsubscribed,
        Some(BusinessOutcome::Bounced) => pb::Outcome::Bounced,
    }
}

fn decision_to_proto(decision: &DecisionRecord) -> pb::Decision {
    pb::Decision {
        id: decision.id.to_string(),
        agent: decision.key.agent.clone(),
        action: decision.key.action.clone(),
        segment: decision.key.segment.clone(),
        subject: decision.subject.clone(),
        review: review_to_proto(decision.review) as i32,
        review_duration: Some(prost_types::Duration {
            seconds: decision.review_ms / 1000,
            nanos: i32::try_from((decision.review_ms % 1000) * 1_000_000).unwrap_or(0),
        }),
        counted: decision.counted,
        reviewer: decision.reviewer.clone(),
        model_version: decision.version.model.clone(),
        prompt_version: decision.version.prompt.clone(),
        level: level_to_proto(decision.level),
        sent: decision.sent,
        outcome: outcome_to_proto(decision.outcome) as i32,
        create_time: Some(timestamp(decision.create_time)),
        outcome_time: decision.outcome_time.map(timestamp),
        autonomy: None,
    }
}

fn transition_to_proto(transition: &StoredTransition) -> pb::Transition {
    pb::Transition {
        id: transition.id.to_string(),
        agent: transition.key.agent.clone(),
        action: transition.key.action.clone(),
        segment: transition.key.segment.clone(),
        from_level: level_to_proto(transition.from),
        to_level: level_to_proto(transition.to),
        cause: transition.cause.clone(),
        actor: transition.actor.clone(),
        detail: transition.detail.clone(),
        create_time: Some(timestamp(transition.create_time)),
    }
}

/// Why no promotion is proposed, in words.
fn blocker(reason: &NotYet, level: Level) -> String {
    match reason {
        NotYet::Killed => "switched off by the kill switch".into(),
        NotYet::AtTop | NotYet::AlreadyProposed => String::new(),
        NotYet::TooFewDecisions { have, need } => {
            format!("{have} of {need} counted reviews at {level}")
        }
        NotYet::TooSoon { remaining } => format!(
            "{} more hours at {level}",
            (remaining.num_minutes() + 59) / 60
        ),
        NotYet::UnchangedRateTooLow { have, need } => format!(
            "approved unchanged {:.1} %, needs {:.1} %",
            have * 100.0,
            need * 100.0
        ),
        NotYet::OutcomesWorseThanPeople => {
            "replies, unsubscribes or bounces are worse than people's own messages".into()
        }
    }
}

fn refused(refusal: Refused) -> Error {
    let reason = match refusal {
        Refused::NoProposal => "NO_PROPOSAL",
        Refused::Stale { .. } => "STALE_PROPOSAL",
        Refused::NoApprover => "NO_APPROVER",
        Refused::Killed => "KILLED",
        Refused::NotKilled => "NOT_KILLED",
    };
    Error::FailedPrecondition {
        reason,
        message: refusal.to_string(),
    }
}

/// Checks one part of a key: 1–64 of `a-z`, `0-9`, `_`, `-`.
fn check_name(field: &str, value: &str, violations: &mut Vec<FieldViolation>) {
    let valid = (1..=64).contains(&value.len())
        && value.bytes().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || matches!(byte, b'_' | b'-')
        });
    if !valid {
        violations.push(FieldViolation::new(
            field,
            if value.is_empty() {
                "required".to_owned()
            } else {
                "1 to 64 of a-z, 0-9, '_' and '-'".to_owned()
            },
        ));
    }
}

/// Checks free text: required when `required`, at most `max` characters, no control
/// characters but newlines.
fn check_text(
    field: &str,
    value: &str,
    max: usize,
    required: bool,
    violations: &mut Vec<FieldViolation>,
) {
    if value.trim().is_empty() {
        if required {
            violations.push(FieldViolation::new(field, "required"));
        }
        return;
    }
    if value.chars().count() > max {
        violations.push(FieldViolation::new(
            field,
            format!("at most {max} characters"),
        ));
    } else if value.chars().any(|c| c.is_control() && c != '\n') {
        violations.push(FieldViolation::new(
            field,
            "control characters are not allowed",
        ));
    }
}

fn check_key(
    agent: &str,
    action: &str,
    segment: &str,
    violations: &mut Vec<FieldViolation>,
) -> Key {
    check_name("agent", agent, violations);
    check_name("action", action, violations);
    check_name("segment", segment, violations);
    Key {
        agent: agent.to_owned(),
        action: action.to_owned(),
        segment: segment.to_owned(),
    }
}

fn valid(violations: Vec<FieldViolation>) -> Result<(), Error> {
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(violations))
    }
}

fn key(agent: &str, action: &str, segment: &str) -> Result<Key, Error> {
    let mut violations = Vec::new();
    let key = check_key(agent, action, segment, &mut violations);
    valid(violations)?;
    Ok(key)
}

/// A key and the reason a person gives for changing it (1–1000 characters).
fn key_with_reason(agent: &str, action: &str, segment: &str, reason: &str) -> Result<Key, Error> {
    let mut violations = Vec::new();
    let key = check_key(agent, action, segment, &mut violations);
    check_text("reason", reason, 1000, true, &mut violations);
    valid(violations)?;
    Ok(key)
}

fn review_from_proto(value: i32, violations: &mut Vec<FieldViolation>) -> Option<Review> {
    let review = match pb::Review::try_from(value) {
        Ok(pb::Review::ApprovedUnchanged) => Review::ApprovedUnchanged,
        Ok(pb::Review::Edited) => Review::Edited,
        Ok(pb::Review::Rejected) => Review::Rejected,
        Ok(pb::Review::Vetoed) => Review::Vetoed,
        Ok(pb::Review::Undone) => Review::Undone,
        Ok(pb::Review::Unspecified) => {
            violations.push(FieldViolation::new(
                "review",
                "required: APPROVED_UNCHANGED, EDITED, REJECTED, VETOED or UNDONE",
            ));
            return None;
        }
        Err(_) => {
            violations.push(FieldViolation::new(
                "review",
                format!("{value} is not a Review value"),
            ));
            return None;
        }
    };
    Some(review)
}

/// The review's duration in milliseconds: present, not negative, under a week.
fn review_ms(
    duration: Option<&prost_types::Duration>,
    violations: &mut Vec<FieldViolation>,
) -> i64 {
    let Some(duration) = duration else {
        violations.push(FieldViolation::new(
            "review_duration",
            "required: how long the person took to review",
        ));
        return 0;
    };
    let valid_nanos = (0..1_000_000_000).contains(&duration.nanos);
    if duration.seconds < 0 || !valid_nanos || duration.seconds > 7 * 24 * 3600 {
        violations.push(FieldViolation::new(
            "review_duration",
            "between 0 and 7 days",
        ));
        return 0;
    }
    duration.seconds * 1000 + i64::from(duration.nanos) / 1_000_000
}

impl Autonomy {
    /// Records a person's review of one decision (see RecordReview).
    pub async fn review(
        &self,
        context: &AuthContext,
        input: ReviewInput,
    ) -> Result<pb::Decision, Error> {
        let autonomy = self;
        let ReviewInput {
            key,
            subject,
            review,
            review_ms,
            version,
            sent,
            request_id,
        } = input;

        if !request_id.is_empty()
            && let Some(existing) = autonomy
                .store
                .decision_by_request(&context.tenant_id, &request_id)
                .await?
        {
            return self.replay(context, &existing).await;
        }
        let baseline = autonomy.baseline(&context.tenant_id).await?;
        let policy = &autonomy.policy;
        let changed = autonomy
            .change(context, &key, |record, changes| {
                let grant = &mut record.grant;
                let current = Version {
                    model: grant.model_version.clone(),
                    prompt: grant.prompt_version.clone(),
                };
                // A decision by a version the key moved away from says nothing about the
                // agent as it is now: kept in the ledger, not evidence.
                let mut applies = true;
                if current.model.is_empty() && current.prompt.is_empty() {
                    grant.model_version.clone_from(&version.model);
                    grant.prompt_version.clone_from(&version.prompt);
                } else if current != version {
                    if record.retired.contains(&version) {
                        applies = false;
                    } else if let Some(transition) =
                        grant.version_changed(&version.model, &version.prompt, changes.now)
                    {
                        record.retired.retain(|retired| retired != &current);
                        record.retired.push(current);
                        if record.retired.len() > MAX_RETIRED {
                            record.retired.remove(0);
                        }
                        changes.transition(
                            &transition,
                            format!("model {}, prompt {}", version.model, version.prompt),
                        );
                    }
                }
                let mut counted = false;
                if applies {
                    let stamps = grant.evidence.rubber_stamps;
                    grant.record_review(policy, review, Duration::milliseconds(review_ms));
                    counted = grant.evidence.rubber_stamps == stamps;
                    if sent {
                        grant.record_send();
                    }
                    changes.propose(grant, policy, &baseline);
                }
                changes.writes.new_decision = Some(DecisionRecord {
                    id: Uuid::now_v7(),
                    key: key.clone(),
                    subject: subject.clone(),
                    review,
                    review_ms,
                    counted,
                    reviewer: context.subject.clone(),
                    version: version.clone(),
                    level: grant.effective_level(),
                    sent,
                    outcome: None,
                    outcome_time: None,
                    request_id: request_id.clone(),
                    create_time: changes.now,
                });
                Ok(())
            })
            .await;
        let (record, writes) = match changed {
            Ok(changed) => changed,
            // A concurrent retry with the same request id won.
            Err(Error::AlreadyExists {
                resource: "decision",
                ..
            }) => {
                let existing = autonomy
                    .store
                    .decision_by_request(&context.tenant_id, &request_id)
                    .await?
                    .ok_or_else(|| Error::internal("the concurrent decision vanished"))?;
                return self.replay(context, &existing).await;
            }
            Err(error) => return Err(error),
        };
        let decision = writes
            .new_decision
            .as_ref()
            .ok_or_else(|| Error::internal("no decision written"))?;
        let mut reply = decision_to_proto(decision);
        reply.autonomy = Some(autonomy.to_proto(&record, &baseline));
        Ok(reply)
    }

    /// The level the agent may act at now for `key` (L0 while killed).
    pub async fn effective_level(&self, tenant: &str, key: &Key) -> Result<Level, Error> {
        Ok(self
            .store
            .grant(tenant, key)
            .await?
            .map_or(Level::Suggest, |record| record.grant.effective_level()))
    }

    /// Records what came of the decision recorded with `request_id`, if there is one.
    pub async fn outcome_of_request(
        &self,
        context: &AuthContext,
        request_id: &str,
        outcome: BusinessOutcome,
    ) -> Result<(), Error> {
        if let Some(decision) = self
            .store
            .decision_by_request(&context.tenant_id, request_id)
            .await?
        {
            self.outcome(context, decision.id, outcome).await?;
        }
        Ok(())
    }

    /// A person moves `key`'s level with `moves` (a sign-off, a revival); a refusal is
    /// FAILED_PRECONDITION.
    async fn moved_by_person<F>(
        &self,
        context: &AuthContext,
        key: &Key,
        moves: F,
    ) -> Result<GrantRecord, Error>
    where
        F: FnOnce(&mut Grant, &str, DateTime<Utc>) -> Result<Transition, Refused>,
    {
        let (record, _) = self
            .change(context, key, |record, changes| {
                let transition =
                    moves(&mut record.grant, &context.subject, changes.now).map_err(refused)?;
                changes.transition(&transition, String::new());
                Ok(())
            })
            .await?;
        Ok(record)
    }

    /// A person lowers or stops `key` giving `reason` (demote, kill): `lowers` moves the
    /// grant, or leaves it as it is (`None`: nothing to do).
    async fn lowered_by_person<F>(
        &self,
        context: &AuthContext,
        key: &Key,
        reason: &str,
        lowers: F,
    ) -> Result<GrantRecord, Error>
    where
        F: FnOnce(&mut Grant, &str, DateTime<Utc>) -> Result<Option<Transition>, Error>,
    {
        let (record, _) = self
            .change(context, key, |record, changes| {
                if let Some(transition) = lowers(&mut record.grant, &context.subject, changes.now)?
                {
                    changes.transition(&transition, reason.trim().to_owned());
                }
                Ok(())
            })
            .await?;
        Ok(record)
    }

    /// Reports an incident on `key` (see ReportIncident).
    pub async fn incident(
        &self,
        context: &AuthContext,
        key: &Key,
        incident: Incident,
        description: &str,
    ) -> Result<GrantRecord, Error> {
        let (record, _) = self
            .change(context, key, |record, changes| {
                let transition = record.grant.incident(incident, changes.now);
                changes.transition(&transition, description.to_owned());
                Ok(())
            })
            .await?;
        Ok(record)
    }

    /// Records what came of a sent decision (see RecordOutcome).
    pub async fn outcome(
        &self,
        context: &AuthContext,
        id: Uuid,
        outcome: BusinessOutcome,
    ) -> Result<pb::Decision, Error> {
        let autonomy = self;
        let decision = autonomy.store.decision(&context.tenant_id, id).await?;
        if !decision.sent {
            return Err(Error::FailedPrecondition {
                reason: "NOT_SENT",
                message: format!("decision {id} was not sent: it has no outcome"),
            });
        }
        match decision.outcome {
            Some(recorded) if recorded == outcome => {
                return self.replay(context, &decision).await;
            }
            Some(recorded) => {
                return Err(Error::FailedPrecondition {
                    reason: "OUTCOME_RECORDED",
                    message: format!(
                        "decision {id} already has the outcome {}",
                        store::outcome_name(Some(recorded))
                    ),
                });
            }
            None => {}
        }
        let baseline = autonomy.baseline(&context.tenant_id).await?;
        let policy = &autonomy.policy;
        let (record, writes) = autonomy
            .change(context, &decision.key.clone(), |record, changes| {
                let grant = &mut record.grant;
                // Only outcomes of decisions made at this level, by this version, are
                // evidence about it.
                let applies = !grant.killed
                    && decision.level == grant.level
                    && decision.create_time >= grant.since
                    && decision.version.model == grant.model_version
                    && decision.version.prompt == grant.prompt_version;
                if applies {
                    grant.record_outcome(outcome);
                    let rates = format!(
                        "unsubscribe rate {:.1} %, bounce rate {:.1} % over {} sends",
                        grant.evidence.unsubscribe_rate() * 100.0,
                        grant.evidence.bounce_rate() * 100.0,
                        grant.evidence.sends
                    );
                    match grant.check_thresholds(policy, changes.now) {
                        Some(transition) => changes.transition(&transition, rates),
                        None => changes.propose(grant, policy, &baseline),
                    }
                }
                let mut decided = decision.clone();
                decided.outcome = Some(outcome);
                decided.outcome_time = Some(changes.now);
                changes.writes.outcome_of = Some(decided);
                Ok(())
            })
            .await?;
        let decided = writes
            .outcome_of
            .as_ref()
            .ok_or_else(|| Error::internal("no outcome written"))?;
        let mut reply = decision_to_proto(decided);
        reply.autonomy = Some(autonomy.to_proto(&record, &baseline));
        Ok(reply)
    }

    /// A decision recorded earlier, as replied then (with the key as it is now).
    async fn replay(
        &self,
        context: &AuthContext,
        decision: &DecisionRecord,
    ) -> Result<pb::Decision, Error> {
        let record = self
            .store
            .grant(&context.tenant_id, &decision.key)
            .await?
            .unwrap_or_else(|| GrantRecord::fresh(decision.key.clone(), now_micros()));
        let mut reply = decision_to_proto(decision);
        reply.autonomy = Some(self.reply(context, &record).await?);
        Ok(reply)
    }
}
