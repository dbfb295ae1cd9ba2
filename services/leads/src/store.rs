//! The lead repository: every SQL statement about leads, and the only place that touches
//! their personal data at rest. Each change commits together with its outbox event.

use std::collections::BTreeMap;

use aida_core::db::{Count, Database, Engine, Sql, Tx, is_unique_violation};
use aida_core::query::{self, Field, FieldKind, KeyValue, OrderTerm};
use aida_core::{Error, outbox};
use aida_proto::aida::events::v1::EventEnvelope;
use chrono::{DateTime, Utc};
use sha2::Digest;
use sqlx::types::Json;
use uuid::Uuid;

use crate::domain::{Lead, LeadFields, Source, Status};

const COLUMNS: &str = "tenant_id, id, email, first_name, last_name, company, title, phone, source, status, \
                       owner_id, attributes, rejection_reason, version, create_time, update_time";

fn status_filter(value: &str) -> Option<&'static str> {
    Status::parse(value).map(Status::as_str)
}

fn source_filter(value: &str) -> Option<&'static str> {
    Source::parse(value).map(Source::as_str)
}

/// The fields `filter` and `order_by` accept.
pub const LIST_FIELDS: &[Field] = &[
    Field {
        name: "id",
        column: "id",
        kind: FieldKind::Uuid,
        sortable: false,
    },
    Field {
        name: "email",
        column: "email",
        kind: FieldKind::Text,
        sortable: true,
    },
    Field {
        name: "first_name",
        column: "first_name",
        kind: FieldKind::Text,
        sortable: true,
    },
    Field {
        name: "last_name",
        column: "last_name",
        kind: FieldKind::Text,
        sortable: true,
    },
    Field {
        name: "company",
        column: "company",
        kind: FieldKind::Text,
        sortable: true,
    },
    Field {
        name: "title",
        column: "title",
        kind: FieldKind::Text,
        sortable: false,
    },
    Field {
        name: "phone",
        column: "phone",
        kind: FieldKind::Text,
        sortable: false,
    },
    Field {
        name: "source",
        column: "source",
        kind: FieldKind::Enum(source_filter),
        sortable: true,
    },
    Field {
        name: "status",
        column: "status",
        kind: FieldKind::Enum(status_filter),
        sortable: true,
    },
    Field {
        name: "owner_id",
        column: "owner_id",
        kind: FieldKind::Text,
        sortable: true,
    },
    Field {
        name: "create_time",
        column: "create_time",
        kind: FieldKind::Timestamp,
        sortable: true,
    },
    Field {
        name: "update_time",
        column: "update_time",
        kind: FieldKind::Timestamp,
        sortable: true,
    },
    Field {
        name: "attributes",
        column: "attributes",
        kind: FieldKind::Map,
        sortable: false,
    },
];

#[derive(Debug, sqlx::FromRow)]
struct LeadRow {
    tenant_id: String,
    id: Uuid,
    email: String,
    first_name: String,
    last_name: String,
    company: String,
    title: String,
    phone: String,
    source: String,
    status: String,
    owner_id: String,
    attributes: Json<BTreeMap<String, String>>,
    rejection_reason: String,
    version: i64,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl TryFrom<LeadRow> for Lead {
    type Error = Error;

    fn try_from(row: LeadRow) -> Result<Self, Error> {
        let source = Source::parse(&row.source)
            .ok_or_else(|| Error::internal(format!("stored source {}", row.source)))?;
        let status = Status::parse(&row.status)
            .ok_or_else(|| Error::internal(format!("stored status {}", row.status)))?;
        Ok(Lead {
            id: row.id,
            tenant_id: row.tenant_id,
            fields: LeadFields {
                email: row.email,
                first_name: row.first_name,
                last_name: row.last_name,
                company: row.company,
                title: row.title,
                phone: row.phone,
                source: Some(source),
                owner_id: row.owner_id,
                attributes: row.attributes.0,
            },
            source,
            status,
            rejection_reason: row.rejection_reason,
            version: row.version,
            create_time: row.create_time,
            update_time: row.update_time,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
struct RequestRow {
    lead_id: Uuid,
    request_hash: String,
}

#[derive(Debug, sqlx::FromRow)]
struct IdRow {
    id: Uuid,
}

/// What a modification decided.
pub enum Change {
    /// Nothing to write.
    Unchanged,
    /// Write the lead (its version already bumped) and the event.
    Updated(Box<Lead>, Box<EventEnvelope>),
    /// Delete the lead and write the event.
    Deleted(Box<EventEnvelope>),
}

/// A page of leads.
pub struct Page {
    pub leads: Vec<Lead>,
    pub has_more: bool,
    pub total: i64,
}

pub use aida_core::query::After;

/// An idempotent capture request.
pub struct CaptureRequest<'a> {
    pub request_id: &'a str,
    pub fingerprint: String,
}

/// A hash of the normalized fields, to tell a retry from a different request that reuses
/// the same request id.
pub fn fingerprint(fields: &LeadFields) -> String {
    let mut hasher = sha2::Sha256::new();
    for part in [
        &fields.email,
        &fields.first_name,
        &fields.last_name,
        &fields.company,
        &fields.title,
        &fields.phone,
        &fields.owner_id,
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher.update(fields.source.map(Source::as_str).unwrap_or("").as_bytes());
    for (key, value) in &fields.attributes {
        hasher.update([0]);
        hasher.update(key.as_bytes());
        hasher.update([1]);
        hasher.update(value.as_bytes());
    }
    format!("{:x}", hasher.finalize())
}

#[derive(Clone)]
pub struct LeadStore {
    db: Database,
}

impl LeadStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub fn engine(&self) -> Engine {
        self.db.engine()
    }

    /// Inserts `lead` with its event. With a request id, a repeated request returns the
    /// lead its first call created (`false`: not created now).
    pub async fn capture(
        &self,
        lead: &Lead,
        request: Option<CaptureRequest<'_>>,
        event: &EventEnvelope,
    ) -> Result<(Lead, bool), Error> {
        let mut tx = self.db.begin().await?;
        if let Some(request) = &request {
            // Claim the request id first: a concurrent call with the same id waits here for
            // this transaction, then finds the claim and returns this call's lead.
            let claimed = tx
                .execute(
                    Sql::new(
                        "INSERT INTO lead_capture_requests (tenant_id, request_id, lead_id, request_hash, create_time) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, request_id) DO NOTHING",
                    )
                    .bind(lead.tenant_id.as_str())
                    .bind(request.request_id)
                    .bind(lead.id)
                    .bind(request.fingerprint.as_str())
                    .bind(lead.create_time),
                )
                .await?;
            if claimed == 0 {
                tx.rollback().await?;
                return self
                    .replay(&lead.tenant_id, request)
                    .await
                    .map(|lead| (lead, false));
            }
        }
        // The unique index on (tenant, e-mail) is the duplicate check: one statement fewer
        // than looking first, and free of races.
        if let Err(error) = insert(&mut tx, lead).await {
            drop(tx);
            return Err(self.explain_conflict(error, lead).await);
        }
        outbox::enqueue(&mut tx, event).await?;
        if let Err(error) = tx.commit().await {
            return Err(self.explain_conflict(error, lead).await);
        }
        Ok((lead.clone(), true))
    }

    async fn replay(&self, tenant: &str, request: &CaptureRequest<'_>) -> Result<Lead, Error> {
        let row: RequestRow = self
            .db
            .fetch_optional(
                Sql::new("SELECT lead_id, request_hash FROM lead_capture_requests WHERE tenant_id = $1 AND request_id = $2")
                    .bind(tenant)
                    .bind(request.request_id),
            )
            .await?
            .ok_or_else(|| Error::internal("capture request vanished"))?;
        if row.request_hash != request.fingerprint {
            return Err(Error::invalid(
                "request_id",
                "this request id was already used for a different lead; use a new request id",
            ));
        }
        self.get(tenant, row.lead_id).await
    }

    /// Turns a unique violation on (tenant, e-mail) into ALREADY_EXISTS naming the lead that
    /// holds the e-mail.
    async fn explain_conflict(&self, error: sqlx::Error, lead: &Lead) -> Error {
        if !is_unique_violation(&error) {
            return error.into();
        }
        let existing: Result<Option<IdRow>, _> = self
            .db
            .fetch_optional(
                Sql::new("SELECT id FROM leads WHERE tenant_id = $1 AND email = $2")
                    .bind(lead.tenant_id.as_str())
                    .bind(lead.fields.email.as_str()),
            )
            .await;
        match existing {
            Ok(Some(row)) => duplicate_email(&lead.fields.email, row.id),
            Ok(None) => Error::Aborted {
                reason: "CONFLICT",
                message: "a concurrent change conflicted with this one; retry".into(),
            },
            Err(error) => error.into(),
        }
    }

    pub async fn get(&self, tenant: &str, id: Uuid) -> Result<Lead, Error> {
        let row: Option<LeadRow> = self
            .db
            .fetch_optional(
                Sql::new(format!(
                    "SELECT {COLUMNS} FROM leads WHERE tenant_id = $1 AND id = $2"
                ))
                .bind(tenant)
                .bind(id),
            )
            .await?;
        row.ok_or_else(|| Error::not_found("lead", id.to_string()))?
            .try_into()
    }

    /// Reads the lead under a write lock, lets `decide` choose the change, and commits it
    /// with its event.
    pub async fn modify<F>(&self, tenant: &str, id: Uuid, decide: F) -> Result<Option<Lead>, Error>
    where
        F: FnOnce(Lead) -> Result<(Change, Option<Lead>), Error>,
    {
        let tx = self.db.begin().await?;
        self.modify_in(tx, tenant, id, decide).await
    }

    /// [`LeadStore::modify`] for event handlers: the event id is claimed in `consumer`'s
    /// inbox in the same transaction, so a redelivered event changes nothing. A lead that
    /// no longer exists is not an error: there is nothing left to change.
    pub async fn modify_once<F>(
        &self,
        consumer: &str,
        event_id: &str,
        tenant: &str,
        id: Uuid,
        decide: F,
    ) -> Result<(), Error>
    where
        F: FnOnce(Lead) -> Result<(Change, Option<Lead>), Error>,
    {
        let mut tx = self.db.begin().await?;
        if !aida_core::consumer::claim(&mut tx, consumer, event_id).await? {
            return Ok(());
        }
        match self.modify_in(tx, tenant, id, decide).await {
            Ok(_) | Err(Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    async fn modify_in<F>(
        &self,
        mut tx: Tx,
        tenant: &str,
        id: Uuid,
        decide: F,
    ) -> Result<Option<Lead>, Error>
    where
        F: FnOnce(Lead) -> Result<(Change, Option<Lead>), Error>,
    {
        let lock = match tx.engine() {
            Engine::Postgres => " FOR UPDATE",
            // SQLite transactions here are IMMEDIATE: the write lock is already held.
            Engine::Sqlite => "",
        };
        let row: Option<LeadRow> = tx
            .fetch_optional(
                Sql::new(format!(
                    "SELECT {COLUMNS} FROM leads WHERE tenant_id = $1 AND id = $2{lock}"
                ))
                .bind(tenant)
                .bind(id),
            )
            .await?;
        let current: Lead = row
            .ok_or_else(|| Error::not_found("lead", id.to_string()))?
            .try_into()?;
        let (change, result) = decide(current)?;
        match change {
            Change::Unchanged => {
                tx.rollback().await?;
                return Ok(result);
            }
            Change::Updated(lead, event) => {
                if let Err(error) = update(&mut tx, &lead).await {
                    drop(tx);
                    return Err(self.explain_conflict(error, &lead).await);
                }
                outbox::enqueue(&mut tx, &event).await?;
            }
            Change::Deleted(event) => {
                tx.execute(
                    Sql::new("DELETE FROM leads WHERE tenant_id = $1 AND id = $2")
                        .bind(tenant)
                        .bind(id),
                )
                .await?;
                outbox::enqueue(&mut tx, &event).await?;
            }
        }
        tx.commit().await?;
        Ok(result)
    }

    /// One page of leads matching `filter`, ordered by `order`, after `after`.
    pub async fn list(
        &self,
        tenant: &str,
        owner: Option<&str>,
        filter: &str,
        order: &[OrderTerm],
        page_size: u32,
        after: Option<&After>,
    ) -> Result<Page, Error> {
        let engine = self.db.engine();
        let mut count_sql =
            Sql::new("SELECT COUNT(*) AS count FROM leads WHERE tenant_id = $1").bind(tenant);
        if let Some(owner) = owner {
            count_sql.push(" AND owner_id = ");
            count_sql.push_arg(owner);
        }
        query::push_filter(&mut count_sql, engine, filter, LIST_FIELDS)?;

        let mut sql =
            Sql::new(format!("SELECT {COLUMNS} FROM leads WHERE tenant_id = $1")).bind(tenant);
        if let Some(owner) = owner {
            sql.push(" AND owner_id = ");
            sql.push_arg(owner);
        }
        query::push_filter(&mut sql, engine, filter, LIST_FIELDS)?;
        if let Some(after) = after {
            query::push_keyset(&mut sql, order, &after.values, "id", after.id)?;
        }
        query::push_order_by(&mut sql, order, "id");
        sql.push(" LIMIT ");
        sql.push_arg(i64::from(page_size) + 1);

        let rows: Vec<LeadRow> = self.db.fetch_all(sql).await?;
        let total: Count = self.db.fetch_one(count_sql).await?;
        let has_more = rows.len() > page_size as usize;
        let leads = rows
            .into_iter()
            .take(page_size as usize)
            .map(Lead::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page {
            leads,
            has_more,
            total: total.count,
        })
    }
}

fn duplicate_email(email: &str, existing: Uuid) -> Error {
    Error::AlreadyExists {
        resource: "lead",
        existing_id: existing.to_string(),
        message: format!("a lead with e-mail {email} already exists: {existing}"),
    }
}

async fn insert(tx: &mut Tx, lead: &Lead) -> Result<u64, sqlx::Error> {
    tx.execute(
        Sql::new(format!(
            "INSERT INTO leads ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        ))
        .bind(lead.tenant_id.as_str())
        .bind(lead.id)
        .bind(lead.fields.email.as_str())
        .bind(lead.fields.first_name.as_str())
        .bind(lead.fields.last_name.as_str())
        .bind(lead.fields.company.as_str())
        .bind(lead.fields.title.as_str())
        .bind(lead.fields.phone.as_str())
        .bind(lead.source.as_str())
        .bind(lead.status.as_str())
        .bind(lead.fields.owner_id.as_str())
        .bind(attributes_json(lead))
        .bind(lead.rejection_reason.as_str())
        .bind(lead.version)
        .bind(lead.create_time)
        .bind(lead.update_time),
    )
    .await
}

async fn update(tx: &mut Tx, lead: &Lead) -> Result<u64, sqlx::Error> {
    tx.execute(
        Sql::new(
            "UPDATE leads SET email = $3, first_name = $4, last_name = $5, company = $6, title = $7, phone = $8, \
             source = $9, status = $10, owner_id = $11, attributes = $12, rejection_reason = $13, version = $14, \
             update_time = $15 WHERE tenant_id = $1 AND id = $2",
        )
        .bind(lead.tenant_id.as_str())
        .bind(lead.id)
        .bind(lead.fields.email.as_str())
        .bind(lead.fields.first_name.as_str())
        .bind(lead.fields.last_name.as_str())
        .bind(lead.fields.company.as_str())
        .bind(lead.fields.title.as_str())
        .bind(lead.fields.phone.as_str())
        .bind(lead.source.as_str())
        .bind(lead.status.as_str())
        .bind(lead.fields.owner_id.as_str())
        .bind(attributes_json(lead))
        .bind(lead.rejection_reason.as_str())
        .bind(lead.version)
        .bind(lead.update_time),
    )
    .await
}

fn attributes_json(lead: &Lead) -> serde_json::Value {
    serde_json::Value::Object(
        lead.fields
            .attributes
            .iter()
            .map(|(key, value)| (key.clone(), serde_json::Value::String(value.clone())))
            .collect(),
    )
}

/// The sort-key value of `lead` for an `order_by` term.
pub fn key_value(lead: &Lead, term: &OrderTerm) -> KeyValue {
    match term.field.name {
        "email" => KeyValue::Text(lead.fields.email.clone()),
        "first_name" => KeyValue::Text(lead.fields.first_name.clone()),
        "last_name" => KeyValue::Text(lead.fields.last_name.clone()),
        "company" => KeyValue::Text(lead.fields.company.clone()),
        "source" => KeyValue::Text(lead.source.as_str().to_owned()),
        "status" => KeyValue::Text(lead.status.as_str().to_owned()),
        "owner_id" => KeyValue::Text(lead.fields.owner_id.clone()),
        "update_time" => KeyValue::Time(lead.update_time),
        _ => KeyValue::Time(lead.create_time),
    }
}
