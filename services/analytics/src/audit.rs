//! The audit log's one writer and its readers: the `audit-chain` consumer appends every
//! `audit.recorded` event to its tenant's hash chain, `AuditService` lists the records,
//! and [`verify`] (`aida audit verify`) checks every chain.
//!
//! A record's hash is SHA-256 over the previous record's hash (32 zero bytes for the
//! first) and the record's canonical bytes: the JSON of [`Canonical`], fields in a fixed
//! order, identifiers only. `audit_heads` keeps where each chain ends, so a truncated
//! tail shows. The table refuses UPDATE and DELETE (grants and a trigger on PostgreSQL, a
//! trigger on SQLite); the chain shows what gets past them.

use aida_core::Error;
use aida_core::auth::AuthContext;
use aida_core::consumer::{BatchHandler, HandlerError};
use aida_core::db::{Database, Listing, Sql, Table, Tx};
use aida_core::pagination::PageTokens;
use aida_core::query::{self, Field, FieldKind, KeyValue, ListQuery};
use aida_proto::aida::audit::v1 as pb;
use aida_proto::aida::audit::v1::audit_service_server::AuditService;
use aida_proto::aida::events::v1::{EventEnvelope, event_envelope::Payload};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use uuid::Uuid;

/// The consumer that chains the records: one name for every replica, so each record is
/// chained once.
pub const CONSUMER: &str = "audit-chain";

/// The hash before a chain's first record.
const GENESIS: [u8; 32] = [0; 32];

/// The columns a [`Row`] is read with.
pub const COLUMNS: &str = "tenant_id, seq, id, occur_time, actor, roles, client_identity, action, \
                       resource, outcome, request_id, trace_id, recorded_by, prev_hash, hash";

const RECORDS: Table = Table {
    name: "audit_records",
    columns: COLUMNS,
    resource: "audit record",
};

/// What `ListAuditRecords` filters on.
pub const FIELDS: &[Field] = &[
    Field::new("actor", FieldKind::Text, false),
    Field::new("action", FieldKind::Text, false),
    Field::new("resource", FieldKind::Text, false),
    Field::new("outcome", FieldKind::Text, false),
    Field::new("recorded_by", FieldKind::Text, false),
    Field::new("sequence", FieldKind::Integer, true).in_column("seq"),
    Field::new("occur_time", FieldKind::Timestamp, false),
];

const PAGE_SIZES: query::PageSizes = query::PageSizes {
    default: 100,
    max: 500,
};

/// One record as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Row {
    pub tenant_id: String,
    pub seq: i64,
    pub id: Uuid,
    pub occur_time: DateTime<Utc>,
    pub actor: String,
    /// The roles as a JSON array.
    pub roles: String,
    pub client_identity: String,
    pub action: String,
    pub resource: String,
    pub outcome: String,
    pub request_id: String,
    pub trace_id: String,
    pub recorded_by: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

/// A record read for a page of `ListAuditRecords`.
struct Listed(Row);

impl TryFrom<Row> for Listed {
    type Error = Error;
    fn try_from(row: Row) -> Result<Self, Error> {
        Ok(Self(row))
    }
}

/// The bytes a record's hash covers, besides the previous hash.
#[derive(Serialize)]
struct Canonical<'a> {
    v: u8,
    id: String,
    tenant_id: &'a str,
    sequence: i64,
    occur_time: String,
    actor: &'a str,
    roles: &'a str,
    client_identity: &'a str,
    action: &'a str,
    resource: &'a str,
    outcome: &'a str,
    request_id: &'a str,
    trace_id: &'a str,
    recorded_by: &'a str,
}

impl Row {
    /// SHA-256 over `previous` and the record's canonical bytes.
    pub fn digest(&self, previous: &[u8]) -> Vec<u8> {
        let canonical = Canonical {
            v: 1,
            id: self.id.to_string(),
            tenant_id: &self.tenant_id,
            sequence: self.seq,
            occur_time: self.occur_time.to_rfc3339_opts(SecondsFormat::Micros, true),
            actor: &self.actor,
            roles: &self.roles,
            client_identity: &self.client_identity,
            action: &self.action,
            resource: &self.resource,
            outcome: &self.outcome,
            request_id: &self.request_id,
            trace_id: &self.trace_id,
            recorded_by: &self.recorded_by,
        };
        let mut hasher = Sha256::new();
        hasher.update(previous);
        // Serializing a struct of strings and integers cannot fail.
        hasher.update(serde_json::to_vec(&canonical).unwrap_or_default());
        hasher.finalize().to_vec()
    }

    fn to_proto(&self) -> pb::AuditRecord {
        pb::AuditRecord {
            id: self.id.to_string(),
            sequence: self.seq,
            occur_time: Some(aida_core::events::timestamp(self.occur_time)),
            tenant_id: self.tenant_id.clone(),
            actor: Some(pb::AuditActor {
                subject: self.actor.clone(),
                roles: serde_json::from_str(&self.roles).unwrap_or_default(),
                client_identity: self.client_identity.clone(),
            }),
            action: self.action.clone(),
            resource: self.resource.clone(),
            outcome: self.outcome.clone(),
            request_id: self.request_id.clone(),
            trace_id: self.trace_id.clone(),
            recorded_by: self.recorded_by.clone(),
            previous_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
        }
    }
}

#[derive(sqlx::FromRow)]
struct Head {
    seq: i64,
    hash: Vec<u8>,
}

/// `record` in its row form, before its place in the chain is known.
fn unchained(record: &pb::AuditRecord) -> Result<Row, Error> {
    let id = Uuid::parse_str(&record.id).map_err(|_| Error::invalid("record.id", "not a UUID"))?;
    let occur_time = record
        .occur_time
        .as_ref()
        .and_then(aida_core::events::from_timestamp)
        .ok_or_else(|| Error::invalid("record.occur_time", "missing or out of range"))?;
    let actor = record.actor.clone().unwrap_or_default();
    Ok(Row {
        tenant_id: record.tenant_id.clone(),
        seq: 0,
        id,
        occur_time,
        actor: actor.subject,
        roles: serde_json::to_string(&actor.roles).unwrap_or_else(|_| "[]".into()),
        client_identity: actor.client_identity,
        action: record.action.clone(),
        resource: record.resource.clone(),
        outcome: record.outcome.clone(),
        request_id: record.request_id.clone(),
        trace_id: record.trace_id.clone(),
        recorded_by: record.recorded_by.clone(),
        prev_hash: Vec::new(),
        hash: Vec::new(),
    })
}

/// Rows per INSERT (15 arguments each).
const INSERT_ROWS: usize = 200;

/// Appends `rows` (one tenant's, in order) to `tenant`'s chain inside `tx`: the head read
/// and locked once, each row its next sequence number and the hash over the one before, the
/// rows written a few hundred per statement, the new head once.
async fn append_all(tx: &mut Tx, tenant: &str, mut rows: Vec<Row>) -> Result<(), Error> {
    let head: Option<Head> = tx
        .fetch_optional(
            Sql::new(format!(
                "SELECT seq, hash FROM audit_heads WHERE tenant_id = $1{}",
                tx.engine().lock_clause()
            ))
            .bind(tenant),
        )
        .await?;
    let (mut seq, mut previous) = head.map_or((0, GENESIS.to_vec()), |head| (head.seq, head.hash));
    for row in &mut rows {
        seq += 1;
        row.seq = seq;
        row.prev_hash = std::mem::take(&mut previous);
        row.hash = row.digest(&row.prev_hash);
        previous = row.hash.clone();
    }
    for chunk in rows.chunks(INSERT_ROWS) {
        let mut sql = Sql::new(format!("INSERT INTO audit_records ({COLUMNS}) VALUES "));
        for (n, row) in chunk.iter().enumerate() {
            sql.push(if n == 0 { "(" } else { ", (" });
            sql.push_arg(row.tenant_id.as_str()).push(", ");
            sql.push_arg(row.seq).push(", ");
            sql.push_arg(row.id).push(", ");
            sql.push_arg(row.occur_time).push(", ");
            sql.push_arg(row.actor.as_str()).push(", ");
            sql.push_arg(row.roles.as_str()).push(", ");
            sql.push_arg(row.client_identity.as_str()).push(", ");
            sql.push_arg(row.action.as_str()).push(", ");
            sql.push_arg(row.resource.as_str()).push(", ");
            sql.push_arg(row.outcome.as_str()).push(", ");
            sql.push_arg(row.request_id.as_str()).push(", ");
            sql.push_arg(row.trace_id.as_str()).push(", ");
            sql.push_arg(row.recorded_by.as_str()).push(", ");
            sql.push_arg(row.prev_hash.clone()).push(", ");
            sql.push_arg(row.hash.clone()).push(")");
        }
        tx.execute(sql).await?;
    }
    if rows.is_empty() {
        return Ok(());
    }
    tx.execute(
        Sql::new(
            "INSERT INTO audit_heads (tenant_id, seq, hash) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        )
        .bind(tenant)
        .bind(seq)
        .bind(previous),
    )
    .await?;
    Ok(())
}

/// The `audit-chain` consumer: appends each batch's records in one transaction, each
/// event once (the inbox, claimed for the whole batch at once), each tenant's in the order
/// the bus delivered them, with one head lock and a few statements per tenant.
pub struct Chain {
    pub db: Database,
}

#[tonic::async_trait]
impl BatchHandler for Chain {
    async fn handle_batch(&self, events: &[EventEnvelope]) -> Result<(), HandlerError> {
        let mut parsed = Vec::with_capacity(events.len());
        for event in events {
            let Some(Payload::AuditRecorded(recorded)) = &event.payload else {
                continue;
            };
            let Some(record) = &recorded.record else {
                return Err(HandlerError::Poison(
                    "audit.recorded without a record".into(),
                ));
            };
            let row = unchained(record).map_err(|error| HandlerError::Poison(error.to_string()))?;
            parsed.push((event.event_id.as_str(), row));
        }
        let mut tx = self.db.begin().await.map_err(Error::from)?;
        let ids: Vec<&str> = parsed.iter().map(|(id, _)| *id).collect();
        let mut fresh = aida_core::consumer::claim_many(&mut tx, CONSUMER, &ids)
            .await
            .map_err(Error::from)?;
        // Per tenant in delivery order; tenants in name order, so that two replicas'
        // batches lock heads in the same order and never wait on each other in a cycle.
        let mut by_tenant: std::collections::BTreeMap<String, Vec<Row>> =
            std::collections::BTreeMap::new();
        for (id, row) in parsed {
            if fresh.remove(id) {
                by_tenant
                    .entry(row.tenant_id.clone())
                    .or_default()
                    .push(row);
            }
        }
        for (tenant, rows) in by_tenant {
            append_all(&mut tx, &tenant, rows).await?;
        }
        tx.commit().await.map_err(Error::from)?;
        Ok(())
    }
}

/// Where a chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// The sequence number of the first record that does not verify.
    pub sequence: i64,
    /// That record's id, when it exists.
    pub id: Option<Uuid>,
    pub reason: String,
}

/// One tenant's chain, checked.
#[derive(Debug, Clone)]
pub struct ChainReport {
    pub tenant_id: String,
    /// Records read.
    pub records: u64,
    /// `None` when every record verifies.
    pub broken: Option<Break>,
}

#[derive(sqlx::FromRow)]
struct TenantRow {
    tenant_id: String,
}

/// Checks every chain (or `tenant`'s): sequence numbers from 1 without gaps, each
/// record's previous hash the hash before it, each hash over its own content, the head
/// at the last record. Names the first record that fails.
pub async fn verify(db: &Database, tenant: Option<&str>) -> Result<Vec<ChainReport>, Error> {
    let tenants: Vec<TenantRow> = match tenant {
        Some(tenant) => vec![TenantRow {
            tenant_id: tenant.to_owned(),
        }],
        None => {
            db.fetch_all(Sql::new(
                "SELECT tenant_id FROM audit_heads UNION SELECT tenant_id FROM audit_records \
                 ORDER BY tenant_id",
            ))
            .await?
        }
    };
    let mut reports = Vec::with_capacity(tenants.len());
    for TenantRow { tenant_id } in tenants {
        reports.push(verify_chain(db, tenant_id).await?);
    }
    Ok(reports)
}

const VERIFY_PAGE: i64 = 5_000;

async fn verify_chain(db: &Database, tenant_id: String) -> Result<ChainReport, Error> {
    let mut report = ChainReport {
        tenant_id,
        records: 0,
        broken: None,
    };
    // The head first: records appended while the check runs lie beyond it and wait for
    // the next check, instead of showing as a head that is behind.
    let head: Option<Head> = db
        .fetch_optional(
            Sql::new("SELECT seq, hash FROM audit_heads WHERE tenant_id = $1")
                .bind(report.tenant_id.as_str()),
        )
        .await?;
    let end = head.as_ref().map_or(i64::MAX, |head| head.seq);
    let stray: Option<Row> = db
        .fetch_optional(
            Sql::new(format!(
                "SELECT {COLUMNS} FROM audit_records WHERE tenant_id = $1 AND seq <= 0 \
                 ORDER BY seq LIMIT 1"
            ))
            .bind(report.tenant_id.as_str()),
        )
        .await?;
    if let Some(stray) = stray {
        report.broken = Some(Break {
            sequence: stray.seq,
            id: Some(stray.id),
            reason: format!(
                "record {} is outside the chain (sequences start at 1)",
                stray.seq
            ),
        });
        return Ok(report);
    }
    let mut last_seq = 0;
    let mut last_hash = GENESIS.to_vec();
    loop {
        let rows: Vec<Row> = db
            .fetch_all(
                Sql::new(format!(
                    "SELECT {COLUMNS} FROM audit_records WHERE tenant_id = $1 AND seq > $2 \
                     AND seq <= $3 ORDER BY seq LIMIT $4"
                ))
                .bind(report.tenant_id.as_str())
                .bind(last_seq)
                .bind(end)
                .bind(VERIFY_PAGE),
            )
            .await?;
        let done = (rows.len() as i64) < VERIFY_PAGE;
        for row in rows {
            report.records += 1;
            let expected = last_seq + 1;
            let reason = if row.seq != expected {
                Some((
                    expected,
                    None,
                    format!(
                        "record {expected} is missing (the next is record {})",
                        row.seq
                    ),
                ))
            } else if row.prev_hash != last_hash {
                Some((
                    row.seq,
                    Some(row.id),
                    format!(
                        "record {} does not follow record {}: its previous hash differs",
                        row.seq, last_seq
                    ),
                ))
            } else if row.digest(&row.prev_hash) != row.hash {
                Some((
                    row.seq,
                    Some(row.id),
                    format!(
                        "record {} was altered: its hash does not match its content",
                        row.seq
                    ),
                ))
            } else {
                None
            };
            if let Some((sequence, id, reason)) = reason {
                report.broken = Some(Break {
                    sequence,
                    id,
                    reason,
                });
                return Ok(report);
            }
            last_seq = row.seq;
            last_hash = row.hash;
        }
        if done {
            break;
        }
    }
    report.broken = match head {
        None if last_seq > 0 => Some(Break {
            sequence: last_seq,
            id: None,
            reason: "the chain has records but no head".into(),
        }),
        Some(head) if head.seq > last_seq => Some(Break {
            sequence: last_seq + 1,
            id: None,
            reason: format!(
                "records {} to {} are missing: the chain was cut after record {last_seq}",
                last_seq + 1,
                head.seq
            ),
        }),
        Some(head) if head.hash != last_hash => Some(Break {
            sequence: last_seq,
            id: None,
            reason: format!("the head does not match record {last_seq}: its hash differs"),
        }),
        _ => None,
    };
    Ok(report)
}

/// The gRPC adapter of AuditService.
pub struct AuditApi {
    pub db: Database,
    pub page_tokens: PageTokens,
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_records(
        &self,
        request: Request<pb::ListAuditRecordsRequest>,
    ) -> Result<Response<pb::ListAuditRecordsResponse>, Status> {
        let context = AuthContext::of(&request)?;
        let list = request.get_ref();
        let listed = ListQuery::read(&self.page_tokens, PAGE_SIZES, list, FIELDS, "sequence desc")?;
        let listing = Listing {
            table: &RECORDS,
            fields: FIELDS,
            tenant: &context.tenant_id,
            owner: None,
            query: &listed,
            blind: None,
        };
        let (rows, more) = self
            .db
            .fetch_listed_page_as::<Row, Listed>(&listing)
            .await?;
        let next_page_token = listed.paging.next(&rows, more, |last| {
            (vec![KeyValue::Int(last.0.seq)], last.0.id)
        })?;
        Ok(Response::new(pb::ListAuditRecordsResponse {
            audit_records: rows.iter().map(|listed| listed.0.to_proto()).collect(),
            next_page_token,
        }))
    }
}
