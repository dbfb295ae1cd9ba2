//! The comms repository: templates, messages with their tracking counters, suppressions.
//! Each change commits with its outbox event.

use std::sync::Arc;

use aida_core::crypto::{CryptoError, Keyring, SubjectKey};
use aida_core::db::{Count, Database, Listing, Lock, Sql, Table, Tx};
use aida_core::query::{self, Field, FieldKind, ListQuery, OrderTerm};

/// How ListTemplates pages: by name (ties by id).
pub const TEMPLATE_ORDER: [OrderTerm; 1] = [OrderTerm::key("name", FieldKind::Text, false)];
/// How ListConsents pages: newest first (ties by id).
pub const CONSENT_ORDER: [OrderTerm; 1] =
    [OrderTerm::key("create_time", FieldKind::Timestamp, true)];
/// How ListSuppressions pages: by address, unique within a tenant.
pub const SUPPRESSION_ORDER: [OrderTerm; 1] = [OrderTerm::key("address", FieldKind::Text, false)];
use aida_core::{Error, outbox};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use crate::domain::{
    Channel, Consent, ConsentState, MARKETING, Message, MessageStatus, Suppression, Template,
};

const CONSENT_COLUMNS: &str =
    "id, lead_id, channel, purpose, state, source, proof, recorded_by, create_time";

#[derive(sqlx::FromRow)]
struct ConsentRow {
    id: Uuid,
    lead_id: Uuid,
    channel: String,
    purpose: String,
    state: String,
    source: String,
    proof: String,
    recorded_by: String,
    create_time: DateTime<Utc>,
}

impl TryFrom<ConsentRow> for Consent {
    type Error = Error;
    fn try_from(row: ConsentRow) -> Result<Self, Error> {
        Ok(Consent {
            id: row.id,
            lead_id: row.lead_id,
            channel: Channel::parse(&row.channel)
                .ok_or_else(|| Error::internal(format!("stored channel {}", row.channel)))?,
            purpose: row.purpose,
            state: ConsentState::parse(&row.state)
                .ok_or_else(|| Error::internal(format!("stored consent state {}", row.state)))?,
            source: row.source,
            proof: row.proof,
            recorded_by: row.recorded_by,
            create_time: row.create_time,
        })
    }
}

/// The newest consent entry of `lead` for `channel` and `purpose`: the one in force.
fn in_force_sql(tenant: &str, lead: Uuid, channel: Channel, purpose: &str) -> Sql {
    Sql::new(format!(
        "SELECT {CONSENT_COLUMNS} FROM consents WHERE tenant_id = $1 AND lead_id = $2 \
         AND channel = $3 AND purpose = $4 ORDER BY create_time DESC, id DESC LIMIT 1"
    ))
    .bind(tenant)
    .bind(lead)
    .bind(channel.as_str())
    .bind(purpose)
}

/// Appends `consent` to `tenant`'s ledger inside `tx`.
async fn insert_consent(tx: &mut Tx, tenant: &str, consent: &Consent) -> Result<(), Error> {
    tx.execute(
        Sql::new(format!(
            "INSERT INTO consents (tenant_id, {CONSENT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(tenant)
        .bind(consent.id)
        .bind(consent.lead_id)
        .bind(consent.channel.as_str())
        .bind(consent.purpose.as_str())
        .bind(consent.state.as_str())
        .bind(consent.source.as_str())
        .bind(consent.proof.as_str())
        .bind(consent.recorded_by.as_str())
        .bind(consent.create_time),
    )
    .await?;
    Ok(())
}

const TEMPLATE_COLUMNS: &str =
    "tenant_id, id, name, channel, subject, body, version, create_time, update_time";
const MESSAGE_COLUMNS: &str = "tenant_id, id, lead_id, channel, to_address, subject, body, template_id, links, status, \
     failure_reason, open_count, machine_open_count, click_count, replied, send_time, first_open_time, reply_time, \
     request_id, create_time";
const TEMPLATES: Table = Table {
    name: "templates",
    columns: TEMPLATE_COLUMNS,
    resource: "template",
};
const MESSAGES: Table = Table {
    name: "messages",
    columns: MESSAGE_COLUMNS,
    resource: "message",
};

fn channel_filter(value: &str) -> Option<&'static str> {
    Channel::parse(value).map(Channel::as_str)
}

fn status_filter(value: &str) -> Option<&'static str> {
    MessageStatus::parse(value).map(MessageStatus::as_str)
}

/// The fields `filter` of ListMessages accepts.
pub const MESSAGE_FIELDS: &[Field] = &[
    Field::new("lead_id", FieldKind::Uuid, false),
    Field::new("channel", FieldKind::Enum(channel_filter), false),
    Field::new("status", FieldKind::Enum(status_filter), false),
    Field::new("template_id", FieldKind::Text, false),
    Field::new("create_time", FieldKind::Timestamp, true),
];

#[derive(sqlx::FromRow)]
struct TemplateRow {
    tenant_id: String,
    id: Uuid,
    name: String,
    channel: String,
    subject: String,
    body: String,
    version: i64,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl TryFrom<TemplateRow> for Template {
    type Error = Error;
    fn try_from(row: TemplateRow) -> Result<Self, Error> {
        Ok(Template {
            id: row.id,
            tenant_id: row.tenant_id,
            name: row.name,
            channel: Channel::parse(&row.channel)
                .ok_or_else(|| Error::internal(format!("stored channel {}", row.channel)))?,
            subject: row.subject,
            body: row.body,
            version: row.version,
            create_time: row.create_time,
            update_time: row.update_time,
        })
    }
}

#[derive(sqlx::FromRow)]
struct MessageRow {
    tenant_id: String,
    id: Uuid,
    lead_id: Uuid,
    channel: String,
    to_address: String,
    subject: String,
    body: String,
    template_id: String,
    links: Json<Vec<String>>,
    status: String,
    failure_reason: String,
    open_count: i64,
    machine_open_count: i64,
    click_count: i64,
    replied: bool,
    send_time: Option<DateTime<Utc>>,
    first_open_time: Option<DateTime<Utc>>,
    reply_time: Option<DateTime<Utc>>,
    request_id: String,
    create_time: DateTime<Utc>,
}

impl TryFrom<MessageRow> for Message {
    type Error = Error;
    fn try_from(row: MessageRow) -> Result<Self, Error> {
        Ok(Message {
            id: row.id,
            tenant_id: row.tenant_id,
            lead_id: row.lead_id,
            channel: Channel::parse(&row.channel)
                .ok_or_else(|| Error::internal(format!("stored channel {}", row.channel)))?,
            to: row.to_address,
            subject: row.subject,
            body: row.body,
            template_id: row.template_id,
            links: row.links.0,
            status: MessageStatus::parse(&row.status)
                .ok_or_else(|| Error::internal(format!("stored status {}", row.status)))?,
            failure_reason: row.failure_reason,
            open_count: row.open_count,
            machine_open_count: row.machine_open_count,
            click_count: row.click_count,
            replied: row.replied,
            send_time: row.send_time,
            first_open_time: row.first_open_time,
            reply_time: row.reply_time,
            request_id: row.request_id,
            create_time: row.create_time,
        })
    }
}

#[derive(sqlx::FromRow)]
struct SuppressionRow {
    address: String,
    reason: String,
    create_time: DateTime<Utc>,
}

impl From<SuppressionRow> for Suppression {
    fn from(row: SuppressionRow) -> Self {
        Suppression {
            address: row.address,
            reason: row.reason,
            create_time: row.create_time,
        }
    }
}

/// Seals what a message holds of its recipient (the address, the subject and the body)
/// under the lead's subject key, with the tenant, the column and the message id as
/// associated data, and opens it again.
#[derive(Clone)]
pub struct MessageSealer {
    keys: Arc<Keyring>,
    /// Whether messages are sealed when written (`crypto.enabled`).
    seal: bool,
}

impl MessageSealer {
    pub fn new(keys: Arc<Keyring>, seal: bool) -> Self {
        Self { keys, seal }
    }

    /// The key messages to `lead` are sealed with, made when the lead has none yet; none
    /// when encryption is off. A lead that was erased is FAILED_PRECONDITION SUBJECT_ERASED:
    /// nothing is written about them again.
    pub async fn sealing_key(&self, tenant: &str, lead: Uuid) -> Result<Option<SubjectKey>, Error> {
        if !self.seal {
            return Ok(None);
        }
        Ok(Some(self.keys.subject(tenant, &lead.to_string()).await?))
    }

    /// `fields` (column, value) of row `id` about `lead`, sealed (as they are when
    /// encryption is off).
    pub async fn seal<const N: usize>(
        &self,
        tenant: &str,
        lead: Uuid,
        id: Uuid,
        fields: [(&str, &str); N],
    ) -> Result<[String; N], Error> {
        let key = self.sealing_key(tenant, lead).await?;
        let row = id.to_string();
        let mut sealed = fields.map(|(_, value)| value.to_owned());
        if let Some(key) = key {
            for (slot, (column, value)) in sealed.iter_mut().zip(fields) {
                *slot = key.seal(column, &row, value)?;
            }
        }
        Ok(sealed)
    }

    /// `fields` (column, value) of row `id` about `lead`, opened in place. `false`: the
    /// lead was erased, so they cannot be read any more.
    pub async fn open(
        &self,
        tenant: &str,
        lead: Uuid,
        id: Uuid,
        fields: Vec<(&str, &mut String)>,
    ) -> Result<bool, Error> {
        if !fields
            .iter()
            .any(|(_, value)| aida_core::crypto::is_sealed(value))
        {
            return Ok(true);
        }
        let key = match self.keys.existing_subject(tenant, &lead.to_string()).await {
            Ok(Some(key)) => key,
            Ok(None) => {
                return Err(Error::internal(format!(
                    "message {id} is sealed under a key the keyring does not hold"
                )));
            }
            Err(CryptoError::Erased(_)) => return Ok(false),
            Err(error) => return Err(error.into()),
        };
        let row = id.to_string();
        for (column, value) in fields {
            *value = key.open(column, &row, value)?;
        }
        Ok(true)
    }
}

#[derive(Clone)]
pub struct CommsStore {
    db: Database,
    sealer: MessageSealer,
}

impl CommsStore {
    pub fn new(db: Database, sealer: MessageSealer) -> Self {
        Self { db, sealer }
    }

    /// A stored message in domain form, what it holds of its recipient opened; `None` when
    /// the recipient was erased.
    async fn open_message(&self, mut row: MessageRow) -> Result<Option<Message>, Error> {
        let readable = self
            .sealer
            .open(
                &row.tenant_id,
                row.lead_id,
                row.id,
                vec![
                    ("to_address", &mut row.to_address),
                    ("subject", &mut row.subject),
                    ("body", &mut row.body),
                ],
            )
            .await?;
        if !readable {
            return Ok(None);
        }
        Message::try_from(row).map(Some)
    }

    async fn found_message(&self, row: Option<MessageRow>, id: Uuid) -> Result<Message, Error> {
        let row = row.ok_or_else(|| Error::not_found(MESSAGES.resource, id.to_string()))?;
        self.open_message(row)
            .await?
            .ok_or_else(|| Error::not_found(MESSAGES.resource, id.to_string()))
    }

    // ----- templates -----

    pub async fn insert_template(&self, template: &Template) -> Result<(), Error> {
        self.db
            .execute(
                Sql::new(format!("INSERT INTO templates ({TEMPLATE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"))
                    .bind(template.tenant_id.as_str())
                    .bind(template.id)
                    .bind(template.name.as_str())
                    .bind(template.channel.as_str())
                    .bind(template.subject.as_str())
                    .bind(template.body.as_str())
                    .bind(template.version)
                    .bind(template.create_time)
                    .bind(template.update_time),
            )
            .await?;
        Ok(())
    }

    pub async fn template(&self, tenant: &str, id: Uuid) -> Result<Template, Error> {
        self.db
            .get_as::<TemplateRow, _>(&TEMPLATES, tenant, id)
            .await
    }

    /// A page of templates in [`TEMPLATE_ORDER`], after `after`, and whether more follow.
    pub async fn templates(
        &self,
        tenant: &str,
        limit: u32,
        after: Option<&query::After>,
    ) -> Result<(Vec<Template>, bool), Error> {
        let sql = Sql::new(format!(
            "SELECT {TEMPLATE_COLUMNS} FROM templates WHERE tenant_id = $1"
        ))
        .bind(tenant);
        self.db
            .fetch_page_as::<TemplateRow, _>(sql, &TEMPLATE_ORDER, limit, after)
            .await
    }

    /// Reads a template under a write lock and writes what `decide` returns (`None`: delete).
    pub async fn modify_template<F>(
        &self,
        tenant: &str,
        id: Uuid,
        decide: F,
    ) -> Result<Option<Template>, Error>
    where
        F: FnOnce(Template) -> Result<Option<Template>, Error>,
    {
        let mut tx = self.db.begin().await?;
        let current: Template = tx
            .get_as::<TemplateRow, _>(&TEMPLATES, tenant, id, Lock::ForUpdate)
            .await?;
        let decided = decide(current)?;
        match &decided {
            Some(template) => {
                tx.execute(
                    Sql::new("UPDATE templates SET name = $3, channel = $4, subject = $5, body = $6, version = $7, update_time = $8 WHERE tenant_id = $1 AND id = $2")
                        .bind(tenant)
                        .bind(id)
                        .bind(template.name.as_str())
                        .bind(template.channel.as_str())
                        .bind(template.subject.as_str())
                        .bind(template.body.as_str())
                        .bind(template.version)
                        .bind(template.update_time),
                )
                .await?;
            }
            None => {
                tx.execute(
                    Sql::new("DELETE FROM templates WHERE tenant_id = $1 AND id = $2")
                        .bind(tenant)
                        .bind(id),
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(decided)
    }

    // ----- suppressions -----

    pub async fn is_suppressed(&self, tenant: &str, address: &str) -> Result<bool, Error> {
        let count: Count = self
            .db
            .fetch_one(Sql::new("SELECT COUNT(*) AS count FROM suppressions WHERE tenant_id = $1 AND address = $2").bind(tenant).bind(address))
            .await?;
        Ok(count.count > 0)
    }

    /// Adds a suppression; an existing one is kept (and returned).
    pub async fn add_suppression(
        &self,
        tenant: &str,
        suppression: &Suppression,
    ) -> Result<Suppression, Error> {
        let mut tx = self.db.begin().await?;
        let added = insert_suppression(&mut tx, tenant, suppression).await?;
        tx.commit().await?;
        if added {
            return Ok(suppression.clone());
        }
        let row: SuppressionRow = self
            .db
            .fetch_one(
                Sql::new("SELECT address, reason, create_time FROM suppressions WHERE tenant_id = $1 AND address = $2")
                    .bind(tenant)
                    .bind(suppression.address.as_str()),
            )
            .await?;
        Ok(row.into())
    }

    /// A page of suppressions in [`SUPPRESSION_ORDER`], after `after`, and whether more
    /// follow.
    pub async fn suppressions(
        &self,
        tenant: &str,
        limit: u32,
        after: Option<&[query::KeyValue]>,
    ) -> Result<(Vec<Suppression>, bool), Error> {
        let sql =
            Sql::new("SELECT address, reason, create_time FROM suppressions WHERE tenant_id = $1")
                .bind(tenant);
        let (rows, more) = self
            .db
            .fetch_keyset::<SuppressionRow>(sql, &SUPPRESSION_ORDER, limit, after)
            .await?;
        Ok((rows.into_iter().map(Suppression::from).collect(), more))
    }

    pub async fn delete_suppression(&self, tenant: &str, address: &str) -> Result<(), Error> {
        let deleted = self
            .db
            .execute(
                Sql::new("DELETE FROM suppressions WHERE tenant_id = $1 AND address = $2")
                    .bind(tenant)
                    .bind(address),
            )
            .await?;
        if deleted == 0 {
            return Err(Error::not_found("suppression", address));
        }
        Ok(())
    }

    /// Suppresses the recipient of `message`, records the withdrawal of their marketing
    /// consent for its channel (the link is the proof) and the unsubscribe event, once.
    pub async fn unsubscribe(&self, message: &Message, event: &outbox::Event) -> Result<(), Error> {
        let mut tx = self.db.begin().await?;
        let now = aida_core::events::now_micros();
        let suppression = Suppression {
            address: crate::domain::normalize_address(&message.to),
            reason: "unsubscribed".into(),
            create_time: now,
        };
        let suppressed = insert_suppression(&mut tx, &message.tenant_id, &suppression).await?;
        let in_force: Option<ConsentRow> = tx
            .fetch_optional(in_force_sql(
                &message.tenant_id,
                message.lead_id,
                message.channel,
                MARKETING,
            ))
            .await?;
        // The link withdraws consent even when the address was already suppressed (a
        // bounce, say), and once: not again while the withdrawal is in force.
        if in_force.is_none_or(|row| row.state != ConsentState::Withdrawn.as_str()) {
            let withdrawal = Consent {
                id: Uuid::now_v7(),
                lead_id: message.lead_id,
                channel: message.channel,
                purpose: MARKETING.into(),
                state: ConsentState::Withdrawn,
                source: "unsubscribe_link".into(),
                proof: format!("messages/{}", message.id),
                recorded_by: "public:unsubscribe".into(),
                create_time: now,
            };
            insert_consent(&mut tx, &message.tenant_id, &withdrawal).await?;
        }
        if suppressed {
            outbox::enqueue(&mut tx, event).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    // ----- consents -----

    /// Appends `consent` to `tenant`'s ledger.
    pub async fn record_consent(&self, tenant: &str, consent: &Consent) -> Result<(), Error> {
        let mut tx = self.db.begin().await?;
        insert_consent(&mut tx, tenant, consent).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The state in force of `lead`'s consent for `channel` and `purpose`: the newest
    /// entry's, or `None` when the ledger has none.
    pub async fn consent_in_force(
        &self,
        tenant: &str,
        lead: Uuid,
        channel: Channel,
        purpose: &str,
    ) -> Result<Option<ConsentState>, Error> {
        let row: Option<ConsentRow> = self
            .db
            .fetch_optional(in_force_sql(tenant, lead, channel, purpose))
            .await?;
        Ok(row
            .map(Consent::try_from)
            .transpose()?
            .map(|consent| consent.state))
    }

    /// A page of `lead`'s consents in [`CONSENT_ORDER`], after `after`, and whether more
    /// follow.
    pub async fn consents(
        &self,
        tenant: &str,
        lead: Uuid,
        limit: u32,
        after: Option<&query::After>,
    ) -> Result<(Vec<Consent>, bool), Error> {
        let sql = Sql::new(format!(
            "SELECT {CONSENT_COLUMNS} FROM consents WHERE tenant_id = $1 AND lead_id = $2"
        ))
        .bind(tenant)
        .bind(lead);
        self.db
            .fetch_page_as::<ConsentRow, Consent>(sql, &CONSENT_ORDER, limit, after)
            .await
    }

    // ----- messages -----

    pub async fn message_by_request(
        &self,
        tenant: &str,
        request_id: &str,
    ) -> Result<Option<Message>, Error> {
        let row: Option<MessageRow> = self
            .db
            .fetch_optional(Sql::new(format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = $1 AND request_id = $2")).bind(tenant).bind(request_id))
            .await?;
        match row {
            Some(row) => self.open_message(row).await,
            None => Ok(None),
        }
    }

    /// Messages to `lead` created since `since` that were not refused by the provider.
    pub async fn recent_messages(
        &self,
        tenant: &str,
        lead: Uuid,
        since: DateTime<Utc>,
    ) -> Result<i64, Error> {
        let count: Count = self
            .db
            .fetch_one(
                Sql::new("SELECT COUNT(*) AS count FROM messages WHERE tenant_id = $1 AND lead_id = $2 AND create_time >= $3 AND status <> $4")
                    .bind(tenant)
                    .bind(lead)
                    .bind(since)
                    .bind(MessageStatus::Failed.as_str()),
            )
            .await?;
        Ok(count.count)
    }

    /// Records a message about to be handed to the provider. A concurrent call with the
    /// same request id loses: it gets the first call's message back.
    pub async fn insert_sending(&self, message: &Message) -> Result<Option<Message>, Error> {
        let [to, subject, body] = self
            .sealer
            .seal(
                &message.tenant_id,
                message.lead_id,
                message.id,
                [
                    ("to_address", &message.to),
                    ("subject", &message.subject),
                    ("body", &message.body),
                ],
            )
            .await?;
        let inserted = self
            .db
            .execute(
                Sql::new(format!(
                    "INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"
                ))
                .bind(message.tenant_id.as_str())
                .bind(message.id)
                .bind(message.lead_id)
                .bind(message.channel.as_str())
                .bind(to)
                .bind(subject)
                .bind(body)
                .bind(message.template_id.as_str())
                .bind(serde_json::json!(message.links))
                .bind(message.status.as_str())
                .bind(message.failure_reason.as_str())
                .bind(message.open_count)
                .bind(message.machine_open_count)
                .bind(message.click_count)
                .bind(message.replied)
                .bind(message.send_time)
                .bind(message.first_open_time)
                .bind(message.reply_time)
                .bind(message.request_id.as_str())
                .bind(message.create_time),
            )
            .await;
        match inserted {
            Ok(_) => Ok(None),
            Err(error)
                if aida_core::db::is_unique_violation(&error) && !message.request_id.is_empty() =>
            {
                self.message_by_request(&message.tenant_id, &message.request_id)
                    .await
            }
            Err(error) => Err(error.into()),
        }
    }

    pub async fn message(&self, tenant: &str, id: Uuid) -> Result<Message, Error> {
        let row: Option<MessageRow> = self
            .db
            .fetch_optional(
                Sql::new(format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = $1 AND id = $2"
                ))
                .bind(tenant)
                .bind(id),
            )
            .await?;
        self.found_message(row, id).await
    }

    /// Reads a message under a write lock, lets `decide` change it, and commits the change
    /// with its event (if any).
    pub async fn modify_message<F>(
        &self,
        tenant: &str,
        id: Uuid,
        decide: F,
    ) -> Result<Message, Error>
    where
        F: FnOnce(&Message) -> Result<Option<(Message, Option<outbox::Event>)>, Error>,
    {
        // Opened with a key read before the transaction (on PostgreSQL the keyring shares the
        // pool); what a change writes is never the sealed columns.
        let before = self.message(tenant, id).await?;
        let mut tx = self.db.begin().await?;
        let lock = tx.engine().lock_clause();
        let row: Option<MessageRow> = tx
            .fetch_optional(
                Sql::new(format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = $1 AND id = $2{lock}"
                ))
                .bind(tenant)
                .bind(id),
            )
            .await?;
        let row = row.ok_or_else(|| Error::not_found(MESSAGES.resource, id.to_string()))?;
        let current = Message {
            to: before.to,
            subject: before.subject,
            body: before.body,
            ..Message::try_from(row)?
        };
        let Some((next, event)) = decide(&current)? else {
            return Ok(current);
        };
        tx.execute(
            Sql::new(
                "UPDATE messages SET status = $3, failure_reason = $4, open_count = $5, machine_open_count = $6, \
                 click_count = $7, replied = $8, send_time = $9, first_open_time = $10, reply_time = $11 \
                 WHERE tenant_id = $1 AND id = $2",
            )
            .bind(tenant)
            .bind(id)
            .bind(next.status.as_str())
            .bind(next.failure_reason.as_str())
            .bind(next.open_count)
            .bind(next.machine_open_count)
            .bind(next.click_count)
            .bind(next.replied)
            .bind(next.send_time)
            .bind(next.first_open_time)
            .bind(next.reply_time),
        )
        .await?;
        if let Some(event) = &event {
            outbox::enqueue(&mut tx, event).await?;
        }
        tx.commit().await?;
        Ok(next)
    }

    /// The page of messages `query` asks for.
    pub async fn messages(
        &self,
        tenant: &str,
        query: &ListQuery<'_, '_>,
    ) -> Result<(Vec<Message>, bool), Error> {
        let (table, fields, owner) = (&MESSAGES, MESSAGE_FIELDS, None);
        let listing = Listing {
            table,
            fields,
            tenant,
            owner,
            query,
            blind: None,
        };
        let sql = listing.select(self.db.engine(), MESSAGE_COLUMNS)?;
        let (rows, more) = self
            .db
            .fetch_page::<MessageRow>(sql, &query.order, query.paging.size, query.after.as_ref())
            .await?;
        let mut messages = Vec::with_capacity(rows.len());
        for row in rows {
            messages.extend(self.open_message(row).await?);
        }
        Ok((messages, more))
    }
}

async fn insert_suppression(
    tx: &mut Tx,
    tenant: &str,
    suppression: &Suppression,
) -> Result<bool, sqlx::Error> {
    let inserted = tx
        .execute(
            Sql::new("INSERT INTO suppressions (tenant_id, address, reason, create_time) VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, address) DO NOTHING")
                .bind(tenant)
                .bind(suppression.address.as_str())
                .bind(suppression.reason.as_str())
                .bind(suppression.create_time),
        )
        .await?;
    Ok(inserted == 1)
}
