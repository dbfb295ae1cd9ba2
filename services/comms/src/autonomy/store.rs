//! The autonomy repository: one grant per (agent, action, segment), the ledger of reviewed
//! decisions and the history of transitions. A change of a grant commits with its ledger
//! rows and outbox events, under a row lock on the grant.

use aida_ai::autonomy::{BusinessOutcome, Grant, Level, Review};
use aida_core::db::{Count, Database, Row, Sql, Table, Tx};
use aida_core::query::{FieldKind, KeyValue, OrderTerm};
use aida_core::{Error, outbox};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use uuid::Uuid;

use crate::domain::MessageStatus;

/// How ListAutonomy pages: by key, unique within a tenant.
pub const GRANT_ORDER: [OrderTerm; 3] = [
    OrderTerm::key("agent", FieldKind::Text, false),
    OrderTerm::key("action", FieldKind::Text, false),
    OrderTerm::key("segment", FieldKind::Text, false),
];
/// How ListDecisions and ListTransitions page: newest first (ids are time-ordered).
pub const LEDGER_ORDER: [OrderTerm; 1] = [OrderTerm::key("id", FieldKind::Uuid, true)];

/// What a grant is kept for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub agent: String,
    pub action: String,
    pub segment: String,
}

/// A model and prompt version pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub model: String,
    pub prompt: String,
}

/// A stored grant.
#[derive(Debug, Clone)]
pub struct GrantRecord {
    pub key: Key,
    pub grant: Grant,
    /// Versions the key moved away from, newest last.
    pub retired: Vec<Version>,
    pub update_time: DateTime<Utc>,
}

impl GrantRecord {
    /// A key never seen: L1 with no evidence and no versions yet.
    pub fn fresh(key: Key, now: DateTime<Utc>) -> Self {
        Self {
            key,
            grant: Grant::new(now, "", ""),
            retired: Vec::new(),
            update_time: now,
        }
    }
}

/// One reviewed AI decision.
#[derive(Debug, Clone)]
pub struct DecisionRecord {
    pub id: Uuid,
    pub key: Key,
    pub subject: String,
    pub review: Review,
    pub review_ms: i64,
    pub counted: bool,
    pub reviewer: String,
    pub version: Version,
    pub level: Level,
    pub sent: bool,
    pub outcome: Option<BusinessOutcome>,
    pub outcome_time: Option<DateTime<Utc>>,
    pub request_id: String,
    pub create_time: DateTime<Utc>,
}

/// One change of level.
#[derive(Debug, Clone)]
pub struct TransitionRecord {
    pub id: Uuid,
    pub key: Key,
    pub from: Level,
    pub to: Level,
    pub cause: &'static str,
    pub actor: String,
    pub detail: String,
    pub create_time: DateTime<Utc>,
}

/// What a change of a grant writes besides the grant.
#[derive(Debug, Default)]
pub struct Writes {
    pub new_decision: Option<DecisionRecord>,
    /// A decision whose outcome is recorded now (written only if it had none).
    pub outcome_of: Option<DecisionRecord>,
    pub transitions: Vec<TransitionRecord>,
    pub events: Vec<outbox::Event>,
}

pub fn review_name(review: Review) -> &'static str {
    match review {
        Review::ApprovedUnchanged => "approved_unchanged",
        Review::Edited => "edited",
        Review::Rejected => "rejected",
        Review::Vetoed => "vetoed",
        Review::Undone => "undone",
    }
}

fn parse_review(value: &str) -> Result<Review, Error> {
    Ok(match value {
        "approved_unchanged" => Review::ApprovedUnchanged,
        "edited" => Review::Edited,
        "rejected" => Review::Rejected,
        "vetoed" => Review::Vetoed,
        "undone" => Review::Undone,
        other => return Err(Error::internal(format!("stored review {other}"))),
    })
}

pub fn outcome_name(outcome: Option<BusinessOutcome>) -> &'static str {
    match outcome {
        None => "",
        Some(BusinessOutcome::Replied) => "replied",
        Some(BusinessOutcome::Unsubscribed) => "unsubscribed",
        Some(BusinessOutcome::Bounced) => "bounced",
    }
}

fn parse_outcome(value: &str) -> Result<Option<BusinessOutcome>, Error> {
    Ok(match value {
        "" => None,
        "replied" => Some(BusinessOutcome::Replied),
        "unsubscribed" => Some(BusinessOutcome::Unsubscribed),
        "bounced" => Some(BusinessOutcome::Bounced),
        other => return Err(Error::internal(format!("stored outcome {other}"))),
    })
}

fn level(value: i64) -> Result<Level, Error> {
    u8::try_from(value)
        .ok()
        .and_then(Level::from_number)
        .ok_or_else(|| Error::internal(format!("stored level {value}")))
}

const GRANT_COLUMNS: &str = "agent, action, segment, state, retired_versions, update_time";
const DECISION_COLUMNS: &str = "id, agent, action, segment, subject, review, review_ms, counted, reviewer, \
     model_version, prompt_version, level, sent, outcome, outcome_time, request_id, create_time";
const AUTONOMY_DECISIONS: Table = Table {
    name: "autonomy_decisions",
    columns: DECISION_COLUMNS,
    resource: "decision",
};
const TRANSITION_COLUMNS: &str =
    "id, agent, action, segment, from_level, to_level, cause, actor, detail, create_time";

/// One of a key's append-only ledgers: its table and columns.
#[derive(Clone, Copy)]
pub struct Ledger {
    table: &'static str,
    columns: &'static str,
}

pub const DECISIONS: Ledger = Ledger {
    table: "autonomy_decisions",
    columns: DECISION_COLUMNS,
};
pub const TRANSITIONS: Ledger = Ledger {
    table: "autonomy_transitions",
    columns: TRANSITION_COLUMNS,
};

#[derive(sqlx::FromRow)]
struct GrantRow {
    agent: String,
    action: String,
    segment: String,
    state: Json<Grant>,
    retired_versions: Json<Vec<Version>>,
    update_time: DateTime<Utc>,
}

impl From<GrantRow> for GrantRecord {
    fn from(row: GrantRow) -> Self {
        GrantRecord {
            key: Key {
                agent: row.agent,
                action: row.action,
                segment: row.segment,
            },
            grant: row.state.0,
            retired: row.retired_versions.0,
            update_time: row.update_time,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct DecisionRow {
    id: Uuid,
    agent: String,
    action: String,
    segment: String,
    subject: String,
    review: String,
    review_ms: i64,
    counted: bool,
    reviewer: String,
    model_version: String,
    prompt_version: String,
    level: i64,
    sent: bool,
    outcome: String,
    outcome_time: Option<DateTime<Utc>>,
    request_id: String,
    create_time: DateTime<Utc>,
}

impl TryFrom<DecisionRow> for DecisionRecord {
    type Error = Error;
    fn try_from(row: DecisionRow) -> Result<Self, Error> {
        Ok(DecisionRecord {
            id: row.id,
            key: Key {
                agent: row.agent,
                action: row.action,
                segment: row.segment,
            },
            subject: row.subject,
            review: parse_review(&row.review)?,
            review_ms: row.review_ms,
            counted: row.counted,
            reviewer: row.reviewer,
            version: Version {
                model: row.model_version,
                prompt: row.prompt_version,
            },
            level: level(row.level)?,
            sent: row.sent,
            outcome: parse_outcome(&row.outcome)?,
            outcome_time: row.outcome_time,
            request_id: row.request_id,
            create_time: row.create_time,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct TransitionRow {
    id: Uuid,
    agent: String,
    action: String,
    segment: String,
    from_level: i64,
    to_level: i64,
    cause: String,
    actor: String,
    detail: String,
    create_time: DateTime<Utc>,
}

/// A stored transition; `cause` is read back as text.
#[derive(Debug, Clone)]
pub struct StoredTransition {
    pub id: Uuid,
    pub key: Key,
    pub from: Level,
    pub to: Level,
    pub cause: String,
    pub actor: String,
    pub detail: String,
    pub create_time: DateTime<Utc>,
}

impl TryFrom<TransitionRow> for StoredTransition {
    type Error = Error;
    fn try_from(row: TransitionRow) -> Result<Self, Error> {
        Ok(StoredTransition {
            id: row.id,
            key: Key {
                agent: row.agent,
                action: row.action,
                segment: row.segment,
            },
            from: level(row.from_level)?,
            to: level(row.to_level)?,
            cause: row.cause,
            actor: row.actor,
            detail: row.detail,
            create_time: row.create_time,
        })
    }
}

impl From<&TransitionRecord> for StoredTransition {
    fn from(record: &TransitionRecord) -> Self {
        StoredTransition {
            id: record.id,
            key: record.key.clone(),
            from: record.from,
            to: record.to,
            cause: record.cause.to_owned(),
            actor: record.actor.clone(),
            detail: record.detail.clone(),
            create_time: record.create_time,
        }
    }
}

/// What people's own messages achieved: the bar an agent's must not fall below.
#[derive(sqlx::FromRow)]
pub struct PeopleOutcomes {
    pub sent: i64,
    pub replied: i64,
    pub failed: i64,
    pub unsubscribed: i64,
}

/// The SELECT of one key's ledger rows (decisions or transitions), WHERE begun.
fn key_clause(sql: &mut Sql, key: &Key) {
    sql.push(" AND agent = ");
    sql.push_arg(key.agent.as_str());
    sql.push(" AND action = ");
    sql.push_arg(key.action.as_str());
    sql.push(" AND segment = ");
    sql.push_arg(key.segment.as_str());
}

#[derive(Clone)]
pub struct AutonomyStore {
    db: Database,
}

impl AutonomyStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub async fn grant(&self, tenant: &str, key: &Key) -> Result<Option<GrantRecord>, Error> {
        let mut sql = Sql::new(format!(
            "SELECT {GRANT_COLUMNS} FROM autonomy_grants WHERE tenant_id = $1"
        ))
        .bind(tenant);
        key_clause(&mut sql, key);
        let row: Option<GrantRow> = self.db.fetch_optional(sql).await?;
        Ok(row.map(GrantRecord::from))
    }

    /// A page of grants in [`GRANT_ORDER`], after `after`, and whether more follow.
    pub async fn grants(
        &self,
        tenant: &str,
        limit: u32,
        after: Option<&[KeyValue]>,
    ) -> Result<(Vec<GrantRecord>, bool), Error> {
        let sql = Sql::new(format!(
            "SELECT {GRANT_COLUMNS} FROM autonomy_grants WHERE tenant_id = $1"
        ))
        .bind(tenant);
        let (rows, more) = self
            .db
            .fetch_keyset::<GrantRow>(sql, &GRANT_ORDER, limit, after)
            .await?;
        Ok((rows.into_iter().map(GrantRecord::from).collect(), more))
    }

    pub async fn decision(&self, tenant: &str, id: Uuid) -> Result<DecisionRecord, Error> {
        self.db
            .get_as::<DecisionRow, _>(&AUTONOMY_DECISIONS, tenant, id)
            .await
    }

    pub async fn decision_by_request(
        &self,
        tenant: &str,
        request_id: &str,
    ) -> Result<Option<DecisionRecord>, Error> {
        let row: Option<DecisionRow> = self
            .db
            .fetch_optional(
                Sql::new(format!(
                    "SELECT {DECISION_COLUMNS} FROM autonomy_decisions WHERE tenant_id = $1 AND request_id = $2"
                ))
                .bind(tenant)
                .bind(request_id),
            )
            .await?;
        row.map(DecisionRecord::try_from).transpose()
    }

    /// A page of the key's records in `ledger` (its decisions or its transitions), newest
    /// first ([`LEDGER_ORDER`]), and whether more follow.
    pub async fn ledger_page<R: Row, T: TryFrom<R, Error = Error>>(
        &self,
        ledger: Ledger,
        tenant: &str,
        key: &Key,
        limit: u32,
        after: Option<&[KeyValue]>,
    ) -> Result<(Vec<T>, bool), Error> {
        let mut sql = Sql::new(format!(
            "SELECT {} FROM {} WHERE tenant_id = $1",
            ledger.columns, ledger.table
        ))
        .bind(tenant);
        key_clause(&mut sql, key);
        self.db
            .fetch_keyset_as::<R, T>(sql, &LEDGER_ORDER, limit, after)
            .await
    }

    /// How people's own messages of the last `since` fared: sent, replied, failed, and the
    /// addresses that unsubscribed.
    pub async fn people_outcomes(
        &self,
        tenant: &str,
        since: DateTime<Utc>,
    ) -> Result<PeopleOutcomes, Error> {
        let messages = |condition: &str, status: MessageStatus| {
            Sql::new(format!(
                "SELECT COUNT(*) AS count FROM messages WHERE tenant_id = $1 AND create_time >= $2 AND status = $3{condition}"
            ))
            .bind(tenant)
            .bind(since)
            .bind(status.as_str())
        };
        let sent: Count = self.db.fetch_one(messages("", MessageStatus::Sent)).await?;
        let replied: Count = self
            .db
            .fetch_one(messages(" AND replied", MessageStatus::Sent))
            .await?;
        let failed: Count = self
            .db
            .fetch_one(messages("", MessageStatus::Failed))
            .await?;
        let unsubscribed: Count = self
            .db
            .fetch_one(
                Sql::new("SELECT COUNT(*) AS count FROM suppressions WHERE tenant_id = $1 AND create_time >= $2 AND reason = 'unsubscribed'")
                    .bind(tenant)
                    .bind(since),
            )
            .await?;
        Ok(PeopleOutcomes {
            sent: sent.count,
            replied: replied.count,
            failed: failed.count,
            unsubscribed: unsubscribed.count,
        })
    }

    /// Reads the key's grant under a write lock (a fresh L1 grant for a key never seen),
    /// lets `decide` change it, and commits the grant with what `decide` wants written.
    /// Nothing is written when `decide` fails.
    pub async fn modify<F>(
        &self,
        tenant: &str,
        key: &Key,
        now: DateTime<Utc>,
        decide: F,
    ) -> Result<(GrantRecord, Writes), Error>
    where
        F: FnOnce(&mut GrantRecord) -> Result<Writes, Error>,
    {
        let mut tx = self.db.begin().await?;
        let fresh = GrantRecord::fresh(key.clone(), now);
        tx.execute(
            Sql::new(
                "INSERT INTO autonomy_grants (tenant_id, agent, action, segment, level, killed, state, retired_versions, create_time, update_time) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (tenant_id, agent, action, segment) DO NOTHING",
            )
            .bind(tenant)
            .bind(key.agent.as_str())
            .bind(key.action.as_str())
            .bind(key.segment.as_str())
            .bind(i64::from(fresh.grant.level.number()))
            .bind(fresh.grant.killed)
            .bind(json(&fresh.grant)?)
            .bind(json(&fresh.retired)?)
            .bind(now)
            .bind(now),
        )
        .await?;
        let mut sql = Sql::new(format!(
            "SELECT {GRANT_COLUMNS} FROM autonomy_grants WHERE tenant_id = $1"
        ))
        .bind(tenant);
        key_clause(&mut sql, key);
        sql.push(tx.engine().lock_clause());
        let row: GrantRow = tx.fetch_one(sql).await?;
        let mut record = GrantRecord::from(row);
        let writes = decide(&mut record)?;
        record.update_time = now;
        let mut update = Sql::new(
            "UPDATE autonomy_grants SET level = $2, killed = $3, state = $4, retired_versions = $5, update_time = $6 WHERE tenant_id = $1",
        )
        .bind(tenant)
        .bind(i64::from(record.grant.level.number()))
        .bind(record.grant.killed)
        .bind(json(&record.grant)?)
        .bind(json(&record.retired)?)
        .bind(now);
        key_clause(&mut update, key);
        tx.execute(update).await?;
        if let Some(decision) = &writes.new_decision {
            insert_decision(&mut tx, tenant, decision).await?;
        }
        if let Some(decision) = &writes.outcome_of {
            let updated = tx
                .execute(
                    Sql::new("UPDATE autonomy_decisions SET outcome = $3, outcome_time = $4 WHERE tenant_id = $1 AND id = $2 AND outcome = ''")
                        .bind(tenant)
                        .bind(decision.id)
                        .bind(outcome_name(decision.outcome))
                        .bind(decision.outcome_time),
                )
                .await?;
            if updated != 1 {
                return Err(Error::Aborted {
                    reason: "OUTCOME_RACE",
                    message: format!(
                        "the outcome of decision {} was recorded concurrently; read it again",
                        decision.id
                    ),
                });
            }
        }
        for transition in &writes.transitions {
            insert_transition(&mut tx, tenant, transition).await?;
        }
        for event in &writes.events {
            outbox::enqueue(&mut tx, event).await?;
        }
        tx.commit().await?;
        metrics::gauge!(
            LEVEL,
            "tenant" => tenant.to_owned(),
            "agent" => key.agent.clone(),
            "action" => key.action.clone(),
            "segment" => key.segment.clone()
        )
        .set(if record.grant.killed {
            -1.0
        } else {
            f64::from(record.grant.level.number())
        });
        Ok((record, writes))
    }
}

/// The autonomy level of a key (its number as the API reports it; -1 while killed), as last
/// written.
pub const LEVEL: &str = "aida_autonomy_level";

fn json<T: Serialize>(value: &T) -> Result<serde_json::Value, Error> {
    serde_json::to_value(value).map_err(Error::internal)
}

async fn insert_decision(
    tx: &mut Tx,
    tenant: &str,
    decision: &DecisionRecord,
) -> Result<(), Error> {
    let inserted = tx
        .execute(
            Sql::new(format!(
                "INSERT INTO autonomy_decisions (tenant_id, {DECISION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
            ))
            .bind(tenant)
            .bind(decision.id)
            .bind(decision.key.agent.as_str())
            .bind(decision.key.action.as_str())
            .bind(decision.key.segment.as_str())
            .bind(decision.subject.as_str())
            .bind(review_name(decision.review))
            .bind(decision.review_ms)
            .bind(decision.counted)
            .bind(decision.reviewer.as_str())
            .bind(decision.version.model.as_str())
            .bind(decision.version.prompt.as_str())
            .bind(i64::from(decision.level.number()))
            .bind(decision.sent)
            .bind(outcome_name(decision.outcome))
            .bind(decision.outcome_time)
            .bind(decision.request_id.as_str())
            .bind(decision.create_time),
        )
        .await;
    match inserted {
        Ok(_) => Ok(()),
        Err(error)
            if aida_core::db::is_unique_violation(&error) && !decision.request_id.is_empty() =>
        {
            Err(Error::AlreadyExists {
                resource: "decision",
                existing_id: decision.request_id.clone(),
                message: format!(
                    "a decision with request_id {} was recorded concurrently",
                    decision.request_id
                ),
            })
        }
        Err(error) => Err(error.into()),
    }
}

async fn insert_transition(
    tx: &mut Tx,
    tenant: &str,
    transition: &TransitionRecord,
) -> Result<(), Error> {
    tx.execute(
        Sql::new(format!(
            "INSERT INTO autonomy_transitions (tenant_id, {TRANSITION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(tenant)
        .bind(transition.id)
        .bind(transition.key.agent.as_str())
        .bind(transition.key.action.as_str())
        .bind(transition.key.segment.as_str())
        .bind(i64::from(transition.from.number()))
        .bind(i64::from(transition.to.number()))
        .bind(transition.cause)
        .bind(transition.actor.as_str())
        .bind(transition.detail.as_str())
        .bind(transition.create_time),
    )
    .await?;
    Ok(())
}
