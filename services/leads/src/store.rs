//! The lead repository: every SQL statement about leads, and the only place that touches
//! their personal data at rest. Each change commits together with its outbox event.

use std::collections::BTreeMap;

use aida_core::db::{Database, Engine, Listing, Lock, Page, Sql, Table, Tx, is_unique_violation};
use aida_core::idempotency::Claim;
use aida_core::query::{self, Field, FieldKind, KeyValue, ListQuery, OrderTerm};
use aida_core::{Error, outbox};
use chrono::{DateTime, Utc};
use sha2::Digest;
use sqlx::types::Json;
use uuid::Uuid;

use crate::domain::{Lead, LeadFields, Source, Status};

const COLUMNS: &str = "tenant_id, id, email, first_name, last_name, company, title, phone, source, status, \
                       owner_id, attributes, rejection_reason, version, create_time, update_time, merged_into";
const LEADS: Table = Table {
    name: "leads",
    columns: COLUMNS,
    resource: "lead",
};

fn status_filter(value: &str) -> Option<&'static str> {
    Status::parse(value).map(Status::as_str)
}

fn source_filter(value: &str) -> Option<&'static str> {
    Source::parse(value).map(Source::as_str)
}

/// The fields `filter` and `order_by` accept.
pub const LIST_FIELDS: &[Field] = &[
    Field::new("id", FieldKind::Uuid, false),
    Field::new("email", FieldKind::Text, true),
    Field::new("first_name", FieldKind::Text, true),
    Field::new("last_name", FieldKind::Text, true),
    Field::new("company", FieldKind::Text, true),
    Field::new("title", FieldKind::Text, false),
    Field::new("phone", FieldKind::Text, false),
    Field::new("source", FieldKind::Enum(source_filter), true),
    Field::new("status", FieldKind::Enum(status_filter), true),
    Field::new("owner_id", FieldKind::Text, true),
    Field::new("create_time", FieldKind::Timestamp, true),
    Field::new("update_time", FieldKind::Timestamp, true),
    Field::new("attributes", FieldKind::Map, false),
    Field::new("merged_into", FieldKind::Text, false),
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
    merged_into: String,
}

impl TryFrom<LeadRow> for Lead {
    type Error = Error;

    fn try_from(row: LeadRow) -> Result<Self, Error> {
        let source = Source::parse(&row.source)
            .ok_or_else(|| Error::internal(format!("stored source {}", row.source)))?;
        let status = Status::parse(&row.status)
            .ok_or_else(|| Error::internal(format!("stored status {}", row.status)))?;
        let merged_into =
            if row.merged_into.is_empty() {
                None
            } else {
                Some(Uuid::parse_str(&row.merged_into).map_err(|_| {
                    Error::internal(format!("stored merged_into {}", row.merged_into))
                })?)
            };
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
            merged_into,
        })
    }
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
    Updated(Box<Lead>, Box<outbox::Event>),
    /// Delete the lead and write the event.
    Deleted(Box<outbox::Event>),
}

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
        event: &outbox::Event,
    ) -> Result<(Lead, bool), Error> {
        let mut tx = self.db.begin().await?;
        if let Some(request) = &request {
            // Claim the request id first: a concurrent call with the same id waits here for
            // this transaction, then finds the claim and returns this call's lead.
            let claim = Claim {
                operation: "CaptureLead",
                request_id: request.request_id,
                fingerprint: &request.fingerprint,
                resource: "lead",
            };
            let earlier = claim
                .claim(&mut tx, &lead.tenant_id, lead.id, lead.create_time)
                .await?;
            if let Some(earlier) = earlier {
                tx.rollback().await?;
                return Ok((self.get(&lead.tenant_id, earlier).await?, false));
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

    /// Turns a unique violation on (tenant, e-mail) into ALREADY_EXISTS naming the lead that
    /// holds the e-mail.
    async fn explain_conflict(&self, error: sqlx::Error, lead: &Lead) -> Error {
        if !is_unique_violation(&error) {
            return error.into();
        }
        let existing: Result<Option<IdRow>, _> = self
            .db
            .fetch_optional(
                Sql::new("SELECT id FROM leads WHERE tenant_id = $1 AND email = $2 AND status <> 'MERGED'")
                    .bind(lead.tenant_id.as_str())
                    .bind(lead.fields.email.as_str()),
            )
            .await;
        match existing {
            Ok(Some(row)) => duplicate_email(&lead.fields.email, row.id),
            Ok(None) => Error::conflict(),
            Err(error) => error.into(),
        }
    }

    pub async fn get(&self, tenant: &str, id: Uuid) -> Result<Lead, Error> {
        self.db.get_as::<LeadRow, _>(&LEADS, tenant, id).await
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
        let current: Lead = tx
            .get_as::<LeadRow, _>(&LEADS, tenant, id, Lock::ForUpdate)
            .await?;
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
                outbox::enqueue(&mut tx, &*event).await?;
            }
            Change::Deleted(event) => {
                tx.execute(
                    Sql::new("DELETE FROM leads WHERE tenant_id = $1 AND id = $2")
                        .bind(tenant)
                        .bind(id),
                )
                .await?;
                outbox::enqueue(&mut tx, &*event).await?;
            }
        }
        tx.commit().await?;
        Ok(result)
    }

    /// The page of leads `query` asks for, of `owner`'s alone when set.
    pub async fn list(
        &self,
        tenant: &str,
        owner: Option<&str>,
        query: &ListQuery<'_, '_>,
    ) -> Result<Page<Lead>, Error> {
        let (table, fields) = (&LEADS, LIST_FIELDS);
        let listing = Listing {
            table,
            fields,
            tenant,
            owner,
            query,
        };
        self.db.fetch_counted_page_as::<LeadRow, _>(&listing).await
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
    let sql = Sql::new(format!(
        "INSERT INTO leads ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
    ));
    tx.execute(
        bind_stored(sql, lead)
            .bind(lead.create_time)
            .bind(lead.update_time)
            .bind(merged_into_text(lead)),
    )
    .await
}

/// Binds $1 to $14, what INSERT and UPDATE both write: the key, the fields, the status and
/// the version.
fn bind_stored(sql: Sql, lead: &Lead) -> Sql {
    sql.bind(lead.tenant_id.as_str())
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
}

fn merged_into_text(lead: &Lead) -> String {
    lead.merged_into
        .map(|id| id.to_string())
        .unwrap_or_default()
}

async fn update(tx: &mut Tx, lead: &Lead) -> Result<u64, sqlx::Error> {
    let sql = Sql::new(
        "UPDATE leads SET email = $3, first_name = $4, last_name = $5, company = $6, title = $7, phone = $8, \
         source = $9, status = $10, owner_id = $11, attributes = $12, rejection_reason = $13, version = $14, \
         update_time = $15, merged_into = $16 WHERE tenant_id = $1 AND id = $2",
    );
    tx.execute(
        bind_stored(sql, lead)
            .bind(lead.update_time)
            .bind(merged_into_text(lead)),
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

/// The sort-key values of `lead` in the list order `order` (a page token's keys).
pub fn key_values(lead: &Lead, order: &[OrderTerm]) -> Vec<KeyValue> {
    order.iter().map(|term| key_value(lead, term)).collect()
}

/// The sort-key value of `lead` for an `order_by` term.
fn key_value(lead: &Lead, term: &OrderTerm) -> KeyValue {
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

#[derive(Debug, sqlx::FromRow)]
struct KeyRow {
    tenant_id: String,
    id: Uuid,
}

/// An idempotent merge request: its key and a hash of what it asked.
pub struct MergeClaim<'a> {
    pub request_id: &'a str,
    pub fingerprint: String,
}

/// What a merge writes, decided by the caller from the locked leads.
pub struct MergePlan {
    /// The survivor after the merge (version bumped when it changed).
    pub survivor: Lead,
    pub survivor_changed: bool,
    /// The merged leads after the merge (status MERGED, `merged_into` set).
    pub merged: Vec<Lead>,
    /// `leads.merged` and, when the survivor changed, `leads.updated`.
    pub events: Vec<outbox::Event>,
}

/// The lineage snapshot of a lead: what it held when it was merged.
fn snapshot(lead: &Lead) -> serde_json::Value {
    serde_json::json!({
        "id": lead.id.to_string(),
        "email": lead.fields.email,
        "first_name": lead.fields.first_name,
        "last_name": lead.fields.last_name,
        "company": lead.fields.company,
        "title": lead.fields.title,
        "phone": lead.fields.phone,
        "source": lead.source.as_str(),
        "status": lead.status.as_str(),
        "owner_id": lead.fields.owner_id,
        "attributes": lead.fields.attributes,
        "rejection_reason": lead.rejection_reason,
        "version": lead.version,
        "create_time": lead.create_time.to_rfc3339(),
        "update_time": lead.update_time.to_rfc3339(),
    })
}

fn push_id_list(sql: &mut Sql, ids: &[Uuid]) {
    sql.push(" AND id IN (");
    for (n, id) in ids.iter().enumerate() {
        if n > 0 {
            sql.push(", ");
        }
        sql.push_arg(*id);
    }
    sql.push(")");
}

/// `value` with LIKE's wildcards escaped (escape character `\`).
fn like_escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Search, duplicates, merges and the vector index markers.
impl LeadStore {
    /// The tenant's leads with these ids that are not merged, owned by `owner` when given and
    /// matching the AIP-160 `filter`, in no particular order.
    pub async fn live_among(
        &self,
        tenant: &str,
        owner: Option<&str>,
        filter: &str,
        ids: &[Uuid],
    ) -> Result<Vec<Lead>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = Sql::new(format!(
            "SELECT {COLUMNS} FROM leads WHERE tenant_id = $1 AND status <> 'MERGED'"
        ))
        .bind(tenant);
        if let Some(owner) = owner {
            sql.push(" AND owner_id = ");
            sql.push_arg(owner);
        }
        push_id_list(&mut sql, ids);
        query::push_filter(&mut sql, self.db.engine(), filter, LIST_FIELDS)?;
        let rows: Vec<LeadRow> = self.db.fetch_all(sql).await?;
        rows.into_iter().map(Lead::try_from).collect()
    }

    /// Checks an AIP-160 filter without running it (INVALID_ARGUMENT naming `filter`).
    pub fn check_filter(&self, filter: &str) -> Result<(), Error> {
        let mut sql = Sql::new("SELECT 1 FROM leads WHERE tenant_id = $1").bind("");
        query::push_filter(&mut sql, self.db.engine(), filter, LIST_FIELDS)
    }

    /// Leads sharing something exact with `lead` (a first or last name, the phone, the
    /// company, or the e-mail's local part at any domain): the candidates of duplicate
    /// detection, besides the nearest neighbours in the vector index.
    pub async fn duplicate_candidates(
        &self,
        lead: &Lead,
        owner: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Lead>, Error> {
        let local = lead.fields.email.split('@').next().unwrap_or("");
        let email_pattern = if local.is_empty() {
            String::new()
        } else {
            format!("{}@%", like_escape(local))
        };
        let mut sql = Sql::new(format!(
            "SELECT {COLUMNS} FROM leads WHERE tenant_id = $1 AND id <> $2 AND status <> 'MERGED' AND (\
             (first_name <> '' AND lower(first_name) = lower($3)) \
             OR (last_name <> '' AND lower(last_name) = lower($4)) \
             OR (phone <> '' AND phone = $5) \
             OR (company <> '' AND lower(company) = lower($6)) \
             OR (email <> '' AND $7 <> '' AND email LIKE $7 ESCAPE '\\'))"
        ))
        .bind(lead.tenant_id.as_str())
        .bind(lead.id)
        .bind(lead.fields.first_name.as_str())
        .bind(lead.fields.last_name.as_str())
        .bind(lead.fields.phone.as_str())
        .bind(lead.fields.company.as_str())
        .bind(email_pattern);
        if let Some(owner) = owner {
            sql.push(" AND owner_id = ");
            sql.push_arg(owner);
        }
        sql.push(" LIMIT ");
        sql.push_arg(limit);
        let rows: Vec<LeadRow> = self.db.fetch_all(sql).await?;
        rows.into_iter().map(Lead::try_from).collect()
    }

    /// Merges under write locks on every lead involved: `decide` sees the survivor and the
    /// merged leads as stored and returns what to write; lineage rows and events commit in
    /// the same transaction. With a claim, a repeated request id returns the survivor as
    /// it is now, without merging again.
    pub async fn merge<F>(
        &self,
        tenant: &str,
        survivor_id: Uuid,
        merged_ids: &[Uuid],
        claim: Option<MergeClaim<'_>>,
        actor: &str,
        decide: F,
    ) -> Result<(Lead, bool), Error>
    where
        F: FnOnce(Lead, Vec<Lead>) -> Result<MergePlan, Error>,
    {
        let mut tx = self.db.begin().await?;
        let now = aida_core::events::now_micros();
        if let Some(claim) = &claim {
            let claim = Claim {
                operation: "MergeLeads",
                request_id: claim.request_id,
                fingerprint: &claim.fingerprint,
                resource: "merge",
            };
            if let Some(earlier) = claim.claim(&mut tx, tenant, survivor_id, now).await? {
                tx.rollback().await?;
                return Ok((self.get(tenant, earlier).await?, false));
            }
        }
        let lock = tx.engine().lock_clause();
        let mut all = vec![survivor_id];
        all.extend_from_slice(merged_ids);
        let mut sql =
            Sql::new(format!("SELECT {COLUMNS} FROM leads WHERE tenant_id = $1")).bind(tenant);
        push_id_list(&mut sql, &all);
        sql.push(" ORDER BY id");
        sql.push(lock);
        let rows: Vec<LeadRow> = tx.fetch_all(sql).await?;
        let mut found = BTreeMap::new();
        for row in rows {
            let lead = Lead::try_from(row)?;
            found.insert(lead.id, lead);
        }
        let survivor = found
            .remove(&survivor_id)
            .ok_or_else(|| Error::not_found("lead", survivor_id.to_string()))?;
        let mut merged = Vec::with_capacity(merged_ids.len());
        for id in merged_ids {
            merged.push(
                found
                    .remove(id)
                    .ok_or_else(|| Error::not_found("lead", id.to_string()))?,
            );
        }
        let before = merged.clone();
        let plan = decide(survivor, merged)?;
        // The merged leads leave the e-mail index first, so the survivor may take an e-mail.
        for lead in &plan.merged {
            update(&mut tx, lead).await?;
        }
        for lead in &before {
            tx.execute(
                Sql::new(
                    "INSERT INTO lead_merges (tenant_id, survivor_id, merged_id, actor, request_id, merge_time, snapshot) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(tenant)
                .bind(survivor_id)
                .bind(lead.id)
                .bind(actor)
                .bind(claim.as_ref().map(|c| c.request_id).unwrap_or(""))
                .bind(now)
                .bind(snapshot(lead)),
            )
            .await?;
        }
        if plan.survivor_changed
            && let Err(error) = update(&mut tx, &plan.survivor).await
        {
            drop(tx);
            return Err(self.explain_conflict(error, &plan.survivor).await);
        }
        for event in &plan.events {
            outbox::enqueue(&mut tx, event).await?;
        }
        tx.commit().await?;
        Ok((plan.survivor, true))
    }

    /// The lineage rows of merges into `survivor`: (merged id, actor, snapshot).
    pub async fn merges_into(
        &self,
        tenant: &str,
        survivor: Uuid,
    ) -> Result<Vec<(Uuid, String, serde_json::Value)>, Error> {
        #[derive(sqlx::FromRow)]
        struct Row {
            merged_id: Uuid,
            actor: String,
            snapshot: Json<serde_json::Value>,
        }
        let rows: Vec<Row> = self
            .db
            .fetch_all(
                Sql::new("SELECT merged_id, actor, snapshot FROM lead_merges WHERE tenant_id = $1 AND survivor_id = $2 ORDER BY merged_id")
                    .bind(tenant)
                    .bind(survivor),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.merged_id, row.actor, row.snapshot.0))
            .collect())
    }

    /// Leads the index does not hold at their current version for `model` (never indexed,
    /// or changed since), merged ones excepted: (tenant, id).
    pub async fn stale_in_index(
        &self,
        model: &str,
        limit: i64,
    ) -> Result<Vec<(String, Uuid)>, Error> {
        let rows: Vec<KeyRow> = self
            .db
            .fetch_all(
                Sql::new(
                    "SELECT l.tenant_id, l.id FROM leads l LEFT JOIN lead_index i \
                     ON i.tenant_id = l.tenant_id AND i.lead_id = l.id AND i.model_version = $1 \
                     WHERE l.status <> 'MERGED' AND (i.version IS NULL OR i.version <> l.version) \
                     ORDER BY l.tenant_id, l.id LIMIT $2",
                )
                .bind(model)
                .bind(limit),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.tenant_id, row.id))
            .collect())
    }

    /// Index markers of `model` whose lead is gone or merged: (tenant, id).
    pub async fn orphans_in_index(
        &self,
        model: &str,
        limit: i64,
    ) -> Result<Vec<(String, Uuid)>, Error> {
        let rows: Vec<KeyRow> = self
            .db
            .fetch_all(
                Sql::new(
                    "SELECT i.tenant_id, i.lead_id AS id FROM lead_index i LEFT JOIN leads l \
                     ON l.tenant_id = i.tenant_id AND l.id = i.lead_id \
                     WHERE i.model_version = $1 AND (l.id IS NULL OR l.status = 'MERGED') \
                     ORDER BY i.tenant_id, i.lead_id LIMIT $2",
                )
                .bind(model)
                .bind(limit),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.tenant_id, row.id))
            .collect())
    }

    /// The tenant's leads with these ids, merged ones included.
    pub async fn get_many(&self, tenant: &str, ids: &[Uuid]) -> Result<Vec<Lead>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql =
            Sql::new(format!("SELECT {COLUMNS} FROM leads WHERE tenant_id = $1")).bind(tenant);
        push_id_list(&mut sql, ids);
        let rows: Vec<LeadRow> = self.db.fetch_all(sql).await?;
        rows.into_iter().map(Lead::try_from).collect()
    }

    /// Records that the index holds these `(lead, version)`s for `model`, in one
    /// transaction (one commit for a whole batch).
    pub async fn mark_indexed(
        &self,
        tenant: &str,
        indexed: &[(Uuid, i64)],
        model: &str,
    ) -> Result<(), Error> {
        if indexed.is_empty() {
            return Ok(());
        }
        let now = aida_core::events::now_micros();
        let mut tx = self.db.begin().await?;
        for (id, version) in indexed {
            tx.execute(
                Sql::new(
                    "INSERT INTO lead_index (tenant_id, lead_id, model_version, version, index_time) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, lead_id, model_version) \
                     DO UPDATE SET version = excluded.version, index_time = excluded.index_time",
                )
                .bind(tenant)
                .bind(*id)
                .bind(model)
                .bind(*version)
                .bind(now),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forgets the index marker of a lead for `model`.
    pub async fn unmark_indexed(&self, tenant: &str, id: Uuid, model: &str) -> Result<(), Error> {
        self.db
            .execute(
                Sql::new(
                    "DELETE FROM lead_index WHERE tenant_id = $1 AND lead_id = $2 AND model_version = $3",
                )
                .bind(tenant)
                .bind(id)
                .bind(model),
            )
            .await?;
        Ok(())
    }
}
