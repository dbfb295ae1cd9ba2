//! The lead repository: every SQL statement about leads, and the only place that touches
//! their personal data at rest. Each change commits together with its outbox event.
//!
//! E-mail, phone, first and last name are sealed under the lead's own subject key
//! ([`aida_core::crypto`]) before they are written, and opened when read. What must be found
//! by them is found through keyed blind indexes beside them (`email_index`, `phone_index`,
//! `first_name_index`, `last_name_index`, `email_local_index`): the one-lead-per-address rule
//! is a unique index on `email_index`, filters compare indexes, duplicate candidates share
//! one. A list ordered by a sealed field is ordered here, after opening, never by SQL.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use aida_core::contact::{normalize_email, normalize_phone};
use aida_core::crypto::{CryptoError, Keyring, SubjectKey, TenantKey};
use aida_core::db::{Database, Engine, Listing, Page, Sql, Table, Tx, is_unique_violation};
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
    Field::new("email", FieldKind::Sealed, true).in_column("email_index"),
    Field::new("first_name", FieldKind::Sealed, true).in_column("first_name_index"),
    Field::new("last_name", FieldKind::Sealed, true).in_column("last_name_index"),
    Field::new("company", FieldKind::Text, true),
    Field::new("title", FieldKind::Text, false),
    Field::new("phone", FieldKind::Sealed, false).in_column("phone_index"),
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

/// The columns that hold sealed personal data.
const SEALED_COLUMNS: [&str; 4] = ["email", "first_name", "last_name", "phone"];

impl LeadRow {
    fn is_sealed(&self) -> bool {
        [&self.email, &self.first_name, &self.last_name, &self.phone]
            .into_iter()
            .any(|value| aida_core::crypto::is_sealed(value))
    }

    /// The row with its sealed columns opened under `key`.
    fn opened(mut self, key: &SubjectKey) -> Result<Self, CryptoError> {
        let row = self.id.to_string();
        for (column, value) in SEALED_COLUMNS.into_iter().zip([
            &mut self.email,
            &mut self.first_name,
            &mut self.last_name,
            &mut self.phone,
        ]) {
            *value = key.open(column, &row, value)?;
        }
        Ok(self)
    }
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

/// A name as its blind index compares it: trimmed, without case.
fn name_key(name: &str) -> String {
    name.trim().to_lowercase()
}

/// The local part of a normalized e-mail address.
fn email_local(email: &str) -> &str {
    email.split('@').next().unwrap_or("")
}

/// The blind index a filter compares a sealed field with: the value normalized as the field
/// is stored (an address or a number that does not normalize is indexed as written, and so
/// matches nothing stored).
fn filter_index(key: &TenantKey, field: &str, value: &str) -> String {
    match field {
        "email" => key.blind_index(
            "email",
            &normalize_email(value).unwrap_or_else(|_| value.trim().to_lowercase()),
        ),
        "phone" => key.blind_index(
            "phone",
            &normalize_phone(value).unwrap_or_else(|_| value.trim().to_owned()),
        ),
        other => key.blind_index(other, &name_key(value)),
    }
}

/// What a lead's row holds of its personal data: the values (sealed unless encryption is
/// off) and their blind indexes.
struct StoredPii {
    email: String,
    first_name: String,
    last_name: String,
    phone: String,
    email_index: String,
    phone_index: String,
    first_name_index: String,
    last_name_index: String,
    email_local_index: String,
}

impl StoredPii {
    fn of(lead: &Lead, tenant: &TenantKey, key: Option<&SubjectKey>) -> Result<Self, Error> {
        let fields = &lead.fields;
        let row = lead.id.to_string();
        let seal = |column: &str, value: &str| -> Result<String, Error> {
            match key {
                Some(key) => Ok(key.seal(column, &row, value)?),
                None => Ok(value.to_owned()),
            }
        };
        Ok(Self {
            email: seal("email", &fields.email)?,
            first_name: seal("first_name", &fields.first_name)?,
            last_name: seal("last_name", &fields.last_name)?,
            phone: seal("phone", &fields.phone)?,
            email_index: tenant.blind_index("email", &fields.email),
            phone_index: tenant.blind_index("phone", &fields.phone),
            first_name_index: tenant.blind_index("first_name", &name_key(&fields.first_name)),
            last_name_index: tenant.blind_index("last_name", &name_key(&fields.last_name)),
            email_local_index: tenant.blind_index("email_local", email_local(&fields.email)),
        })
    }
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
    keys: Arc<Keyring>,
    /// Whether personal data is sealed when written (`crypto.enabled`).
    seal: bool,
}

impl LeadStore {
    pub fn new(db: Database, keys: Arc<Keyring>, seal: bool) -> Self {
        Self { db, keys, seal }
    }

    /// The tenant's key (its blind indexes).
    async fn tenant_key(&self, tenant: &str) -> Result<Arc<TenantKey>, Error> {
        Ok(self.keys.tenant(tenant).await?)
    }

    /// A key for a lead being captured (none when encryption is off): made before the
    /// capture's transaction, and used for its row and its event.
    pub async fn new_key(&self, lead: &Lead) -> Result<Option<SubjectKey>, Error> {
        if !self.seal {
            return Ok(None);
        }
        Ok(Some(
            self.keys
                .new_subject(&lead.tenant_id, &lead.id.to_string())
                .await?,
        ))
    }

    /// The keys events about these leads are sealed with (none when encryption is off, or
    /// for a lead without a key).
    pub async fn event_keys(
        &self,
        tenant: &str,
        ids: &[Uuid],
    ) -> Result<Vec<(Uuid, SubjectKey)>, Error> {
        let mut keys = Vec::new();
        if !self.seal {
            return Ok(keys);
        }
        for id in ids {
            if let Some(key) = self.lead_key(tenant, *id).await? {
                keys.push((*id, key));
            }
        }
        Ok(keys)
    }

    /// The subject key of lead `id` when it has one (NOT_FOUND once the lead was erased).
    async fn lead_key(&self, tenant: &str, id: Uuid) -> Result<Option<SubjectKey>, Error> {
        match self.keys.existing_subject(tenant, &id.to_string()).await {
            Ok(key) => Ok(key),
            Err(CryptoError::Erased(_)) => Err(Error::not_found("lead", id.to_string())),
            Err(error) => Err(error.into()),
        }
    }

    /// What `lead`'s row holds of its personal data, sealed under `key`.
    async fn stored(&self, lead: &Lead, key: Option<&SubjectKey>) -> Result<StoredPii, Error> {
        let tenant = self.tenant_key(&lead.tenant_id).await?;
        StoredPii::of(lead, &tenant, key.filter(|_| self.seal))
    }

    /// Rows in domain form, their sealed columns opened; a row whose subject was erased
    /// (its key destroyed, the row about to go) is left out.
    async fn open_rows(&self, rows: Vec<LeadRow>) -> Result<Vec<Lead>, Error> {
        let mut leads = Vec::with_capacity(rows.len());
        for row in rows {
            if let Some(lead) = self.open_row(row).await? {
                leads.push(lead);
            }
        }
        Ok(leads)
    }

    async fn open_row(&self, row: LeadRow) -> Result<Option<Lead>, Error> {
        if !row.is_sealed() {
            return Lead::try_from(row).map(Some);
        }
        let key = match self.lead_key(&row.tenant_id, row.id).await {
            Ok(Some(key)) => key,
            Ok(None) => {
                return Err(Error::internal(format!(
                    "lead {} is sealed under a key the keyring does not hold",
                    row.id
                )));
            }
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        Lead::try_from(row.opened(&key)?).map(Some)
    }

    /// Seals and indexes the rows written before encryption at rest (or, for the indexes,
    /// before blind indexes existed), a batch at a time, until none is left; each row is
    /// rewritten only if no one changed it meanwhile (its version). Returns how many rows
    /// it rewrote. LeadService runs it before it serves.
    pub async fn seal_legacy(&self) -> Result<u64, Error> {
        const BATCH: i64 = 500;
        let condition = if self.seal {
            "(email <> '' AND email NOT LIKE 'aes1.%') OR (phone <> '' AND phone NOT LIKE 'aes1.%') \
             OR (first_name <> '' AND first_name NOT LIKE 'aes1.%') OR (last_name <> '' AND last_name NOT LIKE 'aes1.%')"
        } else {
            "email_index = '' AND phone_index = '' AND first_name_index = '' AND last_name_index = '' \
             AND (email <> '' OR phone <> '' OR first_name <> '' OR last_name <> '')"
        };
        let mut rewritten = 0;
        loop {
            let rows: Vec<LeadRow> = self
                .db
                .fetch_all(
                    Sql::new(format!(
                        "SELECT {COLUMNS} FROM leads WHERE {condition} ORDER BY tenant_id, id LIMIT $1"
                    ))
                    .bind(BATCH),
                )
                .await?;
            let batch = rows.len();
            let mut changed = 0;
            for row in rows {
                if row.is_sealed() {
                    continue;
                }
                let lead = Lead::try_from(row)?;
                let key = if self.seal {
                    Some(
                        self.keys
                            .subject(&lead.tenant_id, &lead.id.to_string())
                            .await?,
                    )
                } else {
                    None
                };
                let stored = self.stored(&lead, key.as_ref()).await?;
                let sql = Sql::new(
                    "UPDATE leads SET email = $1, first_name = $2, last_name = $3, phone = $4, \
                     email_index = $5, phone_index = $6, first_name_index = $7, last_name_index = $8, \
                     email_local_index = $9 WHERE tenant_id = $10 AND id = $11 AND version = $12",
                )
                .bind(stored.email.as_str())
                .bind(stored.first_name.as_str())
                .bind(stored.last_name.as_str())
                .bind(stored.phone.as_str());
                changed += self
                    .db
                    .execute(
                        bind_indexes(sql, &stored)
                            .bind(lead.tenant_id.as_str())
                            .bind(lead.id)
                            .bind(lead.version),
                    )
                    .await?;
            }
            rewritten += changed;
            if (batch as i64) < BATCH || changed == 0 {
                return Ok(rewritten);
            }
        }
    }

    async fn fetch_leads(&self, sql: Sql) -> Result<Vec<Lead>, Error> {
        let rows: Vec<LeadRow> = self.db.fetch_all(sql).await?;
        self.open_rows(rows).await
    }

    pub fn engine(&self) -> Engine {
        self.db.engine()
    }

    /// Inserts `lead` with its event. With a request id, a repeated request returns the
    /// lead its first call created (`false`: not created now).
    /// `key`: from [`Self::new_key`], before the transaction: on PostgreSQL the keyring
    /// shares the pool, and a transaction waiting for a second connection could starve it.
    pub async fn capture(
        &self,
        lead: &Lead,
        key: Option<&SubjectKey>,
        request: Option<CaptureRequest<'_>>,
        event: &outbox::Event,
    ) -> Result<(Lead, bool), Error> {
        let stored = self.stored(lead, key).await?;
        // The request's hash is keyed: an unkeyed hash of an address could be reversed by
        // hashing guesses.
        let fingerprint = request
            .as_ref()
            .map(|request| self.keys_fingerprint(&lead.tenant_id, &request.fingerprint));
        let fingerprint = match fingerprint {
            Some(future) => Some(future.await?),
            None => None,
        };
        let mut tx = self.db.begin().await?;
        if let (Some(request), Some(fingerprint)) = (&request, &fingerprint) {
            // Claim the request id first: a concurrent call with the same id waits here for
            // this transaction, then finds the claim and returns this call's lead.
            let claim = Claim {
                operation: "CaptureLead",
                request_id: request.request_id,
                fingerprint,
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
        if let Err(error) = insert(&mut tx, lead, &stored).await {
            drop(tx);
            return Err(self.explain_conflict(error, lead, &stored).await);
        }
        outbox::enqueue(&mut tx, event).await?;
        if let Err(error) = tx.commit().await {
            return Err(self.explain_conflict(error, lead, &stored).await);
        }
        Ok((lead.clone(), true))
    }

    async fn keys_fingerprint(&self, tenant: &str, fingerprint: &str) -> Result<String, Error> {
        Ok(self
            .tenant_key(tenant)
            .await?
            .blind_index("capture-request", fingerprint))
    }

    /// Turns a unique violation on (tenant, e-mail) into ALREADY_EXISTS naming the lead that
    /// holds the e-mail.
    async fn explain_conflict(&self, error: sqlx::Error, lead: &Lead, stored: &StoredPii) -> Error {
        if !is_unique_violation(&error) {
            return error.into();
        }
        let existing: Result<Option<IdRow>, _> = self
            .db
            .fetch_optional(
                Sql::new("SELECT id FROM leads WHERE tenant_id = $1 AND email_index = $2 AND status <> 'MERGED'")
                    .bind(lead.tenant_id.as_str())
                    .bind(stored.email_index.as_str()),
            )
            .await;
        match existing {
            Ok(Some(row)) => duplicate_email(&lead.fields.email, row.id),
            Ok(None) => Error::conflict(),
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
        let row = row.ok_or_else(|| Error::not_found(LEADS.resource, id.to_string()))?;
        self.open_row(row)
            .await?
            .ok_or_else(|| Error::not_found(LEADS.resource, id.to_string()))
    }

    /// Reads the lead under a write lock, lets `decide` choose the change, and commits it
    /// with its event.
    pub async fn modify<F>(&self, tenant: &str, id: Uuid, decide: F) -> Result<Option<Lead>, Error>
    where
        F: FnOnce(Lead) -> Result<(Change, Option<Lead>), Error>,
    {
        let key = self.lead_key(tenant, id).await?;
        let tx = self.db.begin().await?;
        self.modify_in(tx, key, tenant, id, decide).await
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
        let key = match self.lead_key(tenant, id).await {
            Ok(key) => key,
            Err(Error::NotFound { .. }) => return Ok(()),
            Err(error) => return Err(error),
        };
        let mut tx = self.db.begin().await?;
        if !aida_core::consumer::claim(&mut tx, consumer, event_id).await? {
            return Ok(());
        }
        match self.modify_in(tx, key, tenant, id, decide).await {
            Ok(_) | Err(Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// `key`: the lead's subject key, read before the transaction (see [`Self::capture`]).
    async fn modify_in<F>(
        &self,
        mut tx: Tx,
        key: Option<SubjectKey>,
        tenant: &str,
        id: Uuid,
        decide: F,
    ) -> Result<Option<Lead>, Error>
    where
        F: FnOnce(Lead) -> Result<(Change, Option<Lead>), Error>,
    {
        let lock = tx.engine().lock_clause();
        let row: Option<LeadRow> = tx
            .fetch_optional(
                Sql::new(format!(
                    "SELECT {COLUMNS} FROM leads WHERE tenant_id = $1 AND id = $2{lock}"
                ))
                .bind(tenant)
                .bind(id),
            )
            .await?;
        let row = row.ok_or_else(|| Error::not_found(LEADS.resource, id.to_string()))?;
        let current = match (&key, row.is_sealed()) {
            (Some(key), true) => Lead::try_from(row.opened(key)?)?,
            (None, true) => return Err(Error::not_found(LEADS.resource, id.to_string())),
            (_, false) => Lead::try_from(row)?,
        };
        let tenant_key = self.tenant_key(tenant).await?;
        let (change, result) = decide(current)?;
        match change {
            Change::Unchanged => {
                tx.rollback().await?;
                return Ok(result);
            }
            Change::Updated(lead, event) => {
                let stored = StoredPii::of(&lead, &tenant_key, key.as_ref().filter(|_| self.seal))?;
                if let Err(error) = update(&mut tx, &lead, &stored).await {
                    drop(tx);
                    return Err(self.explain_conflict(error, &lead, &stored).await);
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
        let tenant_key = self.tenant_key(tenant).await?;
        let blind = |field: &str, value: &str| filter_index(&tenant_key, field, value);
        let listing = Listing {
            table: &LEADS,
            fields: LIST_FIELDS,
            tenant,
            owner,
            query,
            blind: Some(&blind),
        };
        let sealed_order = query
            .order
            .iter()
            .any(|term| matches!(term.field.kind, FieldKind::Sealed));
        if !sealed_order {
            let count = listing.select(self.db.engine(), "COUNT(*) AS count")?;
            let sql = listing.select(self.db.engine(), COLUMNS)?;
            let (rows, more) = self
                .db
                .fetch_page::<LeadRow>(sql, &query.order, query.paging.size, query.after.as_ref())
                .await?;
            let total: aida_core::db::Count = self.db.fetch_one(count).await?;
            return Ok(Page {
                rows: self.open_rows(rows).await?,
                more,
                total: total.count,
            });
        }
        // Ordered by a sealed field: every matching lead is opened and sorted here.
        let mut leads = self
            .fetch_leads(listing.select(self.db.engine(), COLUMNS)?)
            .await?;
        let order = &query.order;
        leads.sort_by(|a, b| {
            compare_keys(
                &key_values(a, order),
                a.id,
                &key_values(b, order),
                b.id,
                order,
            )
        });
        let total = leads.len() as i64;
        if let Some(after) = &query.after {
            leads.retain(|lead| {
                compare_keys(
                    &key_values(lead, order),
                    lead.id,
                    &after.values,
                    after.id,
                    order,
                ) == Ordering::Greater
            });
        }
        let size = query.paging.size as usize;
        let more = leads.len() > size;
        leads.truncate(size);
        Ok(Page {
            rows: leads,
            more,
            total,
        })
    }
}

/// The order of two leads' sort keys in `order`, ties broken by id ascending (the order SQL
/// keyset pages use).
fn compare_keys(
    a: &[KeyValue],
    a_id: Uuid,
    b: &[KeyValue],
    b_id: Uuid,
    order: &[OrderTerm],
) -> Ordering {
    for ((x, y), term) in a.iter().zip(b).zip(order) {
        let ordering = match (x, y) {
            (KeyValue::Text(x), KeyValue::Text(y)) => x.cmp(y),
            (KeyValue::Time(x), KeyValue::Time(y)) => x.cmp(y),
            (KeyValue::Uuid(x), KeyValue::Uuid(y)) => x.cmp(y),
            (KeyValue::Int(x), KeyValue::Int(y)) => x.cmp(y),
            _ => Ordering::Equal,
        };
        let ordering = if term.descending {
            ordering.reverse()
        } else {
            ordering
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    a_id.cmp(&b_id)
}

fn duplicate_email(email: &str, existing: Uuid) -> Error {
    Error::AlreadyExists {
        resource: "lead",
        existing_id: existing.to_string(),
        message: format!("a lead with e-mail {email} already exists: {existing}"),
    }
}

/// The blind-index columns, written beside the sealed values.
const INDEX_COLUMNS: &str =
    "email_index, phone_index, first_name_index, last_name_index, email_local_index";

async fn insert(tx: &mut Tx, lead: &Lead, stored: &StoredPii) -> Result<u64, sqlx::Error> {
    let sql = Sql::new(format!(
        "INSERT INTO leads ({COLUMNS}, {INDEX_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,          $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)"
    ));
    let sql = bind_stored(sql, lead, stored)
        .bind(lead.create_time)
        .bind(lead.update_time)
        .bind(merged_into_text(lead));
    tx.execute(bind_indexes(sql, stored)).await
}

/// Binds $1 to $14, what INSERT and UPDATE both write: the key, the fields (personal data
/// as stored), the status and the version.
fn bind_stored(sql: Sql, lead: &Lead, stored: &StoredPii) -> Sql {
    sql.bind(lead.tenant_id.as_str())
        .bind(lead.id)
        .bind(stored.email.as_str())
        .bind(stored.first_name.as_str())
        .bind(stored.last_name.as_str())
        .bind(lead.fields.company.as_str())
        .bind(lead.fields.title.as_str())
        .bind(stored.phone.as_str())
        .bind(lead.source.as_str())
        .bind(lead.status.as_str())
        .bind(lead.fields.owner_id.as_str())
        .bind(attributes_json(lead))
        .bind(lead.rejection_reason.as_str())
        .bind(lead.version)
}

/// Binds the next five arguments: the blind indexes, in [`INDEX_COLUMNS`] order.
fn bind_indexes(sql: Sql, stored: &StoredPii) -> Sql {
    sql.bind(stored.email_index.as_str())
        .bind(stored.phone_index.as_str())
        .bind(stored.first_name_index.as_str())
        .bind(stored.last_name_index.as_str())
        .bind(stored.email_local_index.as_str())
}

fn merged_into_text(lead: &Lead) -> String {
    lead.merged_into
        .map(|id| id.to_string())
        .unwrap_or_default()
}

async fn update(tx: &mut Tx, lead: &Lead, stored: &StoredPii) -> Result<u64, sqlx::Error> {
    let sql = Sql::new(
        "UPDATE leads SET email = $3, first_name = $4, last_name = $5, company = $6, title = $7, phone = $8, \
         source = $9, status = $10, owner_id = $11, attributes = $12, rejection_reason = $13, version = $14, \
         update_time = $15, merged_into = $16, email_index = $17, phone_index = $18, first_name_index = $19, \
         last_name_index = $20, email_local_index = $21 WHERE tenant_id = $1 AND id = $2",
    );
    let sql = bind_stored(sql, lead, stored)
        .bind(lead.update_time)
        .bind(merged_into_text(lead));
    tx.execute(bind_indexes(sql, stored)).await
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
        let tenant_key = self.tenant_key(tenant).await?;
        let blind = |field: &str, value: &str| filter_index(&tenant_key, field, value);
        query::push_filter_blind(
            &mut sql,
            self.db.engine(),
            filter,
            LIST_FIELDS,
            Some(&blind),
        )?;
        self.fetch_leads(sql).await
    }

    /// Checks an AIP-160 filter without running it (INVALID_ARGUMENT naming `filter`).
    pub fn check_filter(&self, filter: &str) -> Result<(), Error> {
        let mut sql = Sql::new("SELECT 1 FROM leads WHERE tenant_id = $1").bind("");
        let blind = |_: &str, value: &str| value.to_owned();
        query::push_filter_blind(
            &mut sql,
            self.db.engine(),
            filter,
            LIST_FIELDS,
            Some(&blind),
        )
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
        let stored = self.stored(lead, None).await?;
        let mut sql = Sql::new(format!(
            "SELECT {COLUMNS} FROM leads WHERE tenant_id = $1 AND id <> $2 AND status <> 'MERGED' AND (\
             (first_name_index <> '' AND first_name_index = $3) \
             OR (last_name_index <> '' AND last_name_index = $4) \
             OR (phone_index <> '' AND phone_index = $5) \
             OR (company <> '' AND lower(company) = lower($6)) \
             OR (email_local_index <> '' AND email_local_index = $7))"
        ))
        .bind(lead.tenant_id.as_str())
        .bind(lead.id)
        .bind(stored.first_name_index)
        .bind(stored.last_name_index)
        .bind(stored.phone_index)
        .bind(lead.fields.company.as_str())
        .bind(stored.email_local_index);
        if let Some(owner) = owner {
            sql.push(" AND owner_id = ");
            sql.push_arg(owner);
        }
        sql.push(" LIMIT ");
        sql.push_arg(limit);
        self.fetch_leads(sql).await
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
        // Keys before the transaction (see `capture`).
        let mut keys = BTreeMap::new();
        for id in std::iter::once(&survivor_id).chain(merged_ids) {
            keys.insert(*id, self.lead_key(tenant, *id).await?);
        }
        let tenant_key = self.tenant_key(tenant).await?;
        let sealing = |id: &Uuid| keys.get(id).and_then(Option::as_ref).filter(|_| self.seal);
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
            let lead = match (keys.get(&row.id).and_then(Option::as_ref), row.is_sealed()) {
                (Some(key), true) => Lead::try_from(row.opened(key)?)?,
                (None, true) => continue,
                (_, false) => Lead::try_from(row)?,
            };
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
            let stored = StoredPii::of(lead, &tenant_key, sealing(&lead.id))?;
            update(&mut tx, lead, &stored).await?;
        }
        for lead in &before {
            // The lineage keeps what the merged lead held, sealed under its own key.
            let snapshot = match sealing(&lead.id) {
                Some(key) => serde_json::json!({
                    "sealed": key.seal("snapshot", &lead.id.to_string(), &snapshot(lead).to_string())?
                }),
                None => snapshot(lead),
            };
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
                .bind(snapshot),
            )
            .await?;
        }
        if plan.survivor_changed {
            let stored = StoredPii::of(&plan.survivor, &tenant_key, sealing(&survivor_id))?;
            if let Err(error) = update(&mut tx, &plan.survivor, &stored).await {
                drop(tx);
                return Err(self.explain_conflict(error, &plan.survivor, &stored).await);
            }
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
        let mut merges = Vec::with_capacity(rows.len());
        for row in rows {
            let snapshot = match row
                .snapshot
                .0
                .get("sealed")
                .and_then(|value| value.as_str())
            {
                Some(sealed) => {
                    let Some(key) = self.lead_key(tenant, row.merged_id).await.ok().flatten()
                    else {
                        // Erased since: its lineage holds nothing readable any more.
                        continue;
                    };
                    let text = key.open("snapshot", &row.merged_id.to_string(), sealed)?;
                    serde_json::from_str(&text)
                        .map_err(|error| Error::internal(format!("stored snapshot: {error}")))?
                }
                None => row.snapshot.0,
            };
            merges.push((row.merged_id, row.actor, snapshot));
        }
        Ok(merges)
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
        self.fetch_leads(sql).await
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
