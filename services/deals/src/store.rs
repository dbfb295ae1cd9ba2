//! The deal repository: pipelines and deals, each change committed with its outbox event.

use aida_core::consumer::claim;
use aida_core::db::{Count, Database, Listing, Lock, Page, Sql, Table, Tx, is_unique_violation};
use aida_core::idempotency::Claim;
use aida_core::query::{Field, FieldKind, KeyValue, ListQuery, OrderTerm};
use aida_core::{Error, outbox};
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use crate::domain::{Deal, DealStatus, Money, Pipeline, Stage, StageVisit, default_stages};

const PIPELINE_COLUMNS: &str =
    "tenant_id, id, name, stages, rotting_days, is_default, version, create_time, update_time";
const DEAL_COLUMNS: &str = "tenant_id, id, lead_id, name, currency_code, amount_minor, pipeline_id, stage, \
     probability, probability_overridden, expected_close_date, owner_id, status, lost_reason, stage_history, \
     version, create_time, update_time, close_time";
const DEALS: Table = Table {
    name: "deals",
    columns: DEAL_COLUMNS,
    resource: "deal",
};
const PIPELINES: Table = Table {
    name: "pipelines",
    columns: PIPELINE_COLUMNS,
    resource: "pipeline",
};

fn status_filter(value: &str) -> Option<&'static str> {
    DealStatus::parse(value).map(DealStatus::as_str)
}

/// The fields `filter` and `order_by` of ListDeals accept.
pub const LIST_FIELDS: &[Field] = &[
    Field::new("id", FieldKind::Uuid, false),
    Field::new("lead_id", FieldKind::Uuid, false),
    Field::new("name", FieldKind::Text, true),
    Field::new("pipeline_id", FieldKind::Uuid, false),
    Field::new("stage", FieldKind::Text, true),
    Field::new("status", FieldKind::Enum(status_filter), true),
    Field::new("owner_id", FieldKind::Text, true),
    Field::new("amount_minor", FieldKind::Integer, true),
    Field::new("currency_code", FieldKind::Text, false),
    Field::new("expected_close_date", FieldKind::Text, true),
    Field::new("create_time", FieldKind::Timestamp, true),
    Field::new("update_time", FieldKind::Timestamp, true),
    Field::new("close_time", FieldKind::Timestamp, false),
];

#[derive(Debug, sqlx::FromRow)]
struct PipelineRow {
    tenant_id: String,
    id: Uuid,
    name: String,
    stages: Json<Vec<Stage>>,
    rotting_days: i64,
    is_default: bool,
    version: i64,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl From<PipelineRow> for Pipeline {
    fn from(row: PipelineRow) -> Self {
        Pipeline {
            id: row.id,
            tenant_id: row.tenant_id,
            name: row.name,
            stages: row.stages.0,
            rotting_days: i32::try_from(row.rotting_days).unwrap_or(0),
            is_default: row.is_default,
            version: row.version,
            create_time: row.create_time,
            update_time: row.update_time,
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
struct DealRow {
    tenant_id: String,
    id: Uuid,
    lead_id: Option<Uuid>,
    name: String,
    currency_code: String,
    amount_minor: i64,
    pipeline_id: Uuid,
    stage: String,
    probability: i64,
    probability_overridden: bool,
    expected_close_date: String,
    owner_id: String,
    status: String,
    lost_reason: String,
    stage_history: Json<Vec<StageVisit>>,
    version: i64,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
    close_time: Option<DateTime<Utc>>,
}

impl TryFrom<DealRow> for Deal {
    type Error = Error;

    fn try_from(row: DealRow) -> Result<Self, Error> {
        let status = DealStatus::parse(&row.status)
            .ok_or_else(|| Error::internal(format!("stored status {}", row.status)))?;
        let expected_close_date = if row.expected_close_date.is_empty() {
            None
        } else {
            Some(
                NaiveDate::parse_from_str(&row.expected_close_date, "%Y-%m-%d").map_err(|_| {
                    Error::internal(format!("stored date {}", row.expected_close_date))
                })?,
            )
        };
        Ok(Deal {
            id: row.id,
            tenant_id: row.tenant_id,
            lead_id: row.lead_id,
            name: row.name,
            amount: Money {
                currency_code: row.currency_code,
                amount_minor: row.amount_minor,
            },
            pipeline_id: row.pipeline_id,
            stage: row.stage,
            probability: i32::try_from(row.probability).unwrap_or(0),
            probability_overridden: row.probability_overridden,
            expected_close_date,
            owner_id: row.owner_id,
            status,
            lost_reason: row.lost_reason,
            stage_history: row.stage_history.0,
            version: row.version,
            create_time: row.create_time,
            update_time: row.update_time,
            close_time: row.close_time,
        })
    }
}

/// What a deal modification decided.
pub enum DealChange {
    Unchanged,
    Updated(Box<Deal>, Box<outbox::Event>),
}

/// What a pipeline modification decided.
pub enum PipelineChange {
    Unchanged,
    Updated(Box<Pipeline>),
    Deleted,
}

#[derive(Clone)]
pub struct DealStore {
    db: Database,
}

impl DealStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    // ----- pipelines -----

    /// The tenant's default pipeline, created with the standard stages on first use.
    pub async fn default_pipeline(&self, tenant: &str) -> Result<Pipeline, Error> {
        if let Some(pipeline) = self.find_default(tenant).await? {
            return Ok(pipeline);
        }
        let now = aida_core::events::now_micros();
        let pipeline = Pipeline {
            id: Uuid::now_v7(),
            tenant_id: tenant.to_owned(),
            name: "Sales".into(),
            stages: default_stages(),
            rotting_days: 30,
            is_default: true,
            version: 1,
            create_time: now,
            update_time: now,
        };
        let mut tx = self.db.begin().await?;
        match insert_pipeline(&mut tx, &pipeline).await {
            Ok(_) => {
                tx.commit().await?;
                Ok(pipeline)
            }
            // Another call created it first: use theirs.
            Err(error) if is_unique_violation(&error) => {
                drop(tx);
                self.find_default(tenant)
                    .await?
                    .ok_or_else(|| Error::internal("default pipeline vanished"))
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn find_default(&self, tenant: &str) -> Result<Option<Pipeline>, Error> {
        let row: Option<PipelineRow> = self
            .db
            .fetch_optional(
                Sql::new(format!("SELECT {PIPELINE_COLUMNS} FROM pipelines WHERE tenant_id = $1 AND is_default = $2"))
                    .bind(tenant)
                    .bind(true),
            )
            .await?;
        Ok(row.map(Pipeline::from))
    }

    pub async fn pipeline(&self, tenant: &str, id: Uuid) -> Result<Pipeline, Error> {
        self.db
            .get_as::<PipelineRow, _>(&PIPELINES, tenant, id)
            .await
    }

    pub async fn pipelines(&self, tenant: &str) -> Result<Vec<Pipeline>, Error> {
        self.default_pipeline(tenant).await?;
        let rows: Vec<PipelineRow> = self
            .db
            .fetch_all(
                Sql::new(format!(
                    "SELECT {PIPELINE_COLUMNS} FROM pipelines WHERE tenant_id = $1 ORDER BY is_default DESC, name, id"
                ))
                .bind(tenant),
            )
            .await?;
        Ok(rows.into_iter().map(Pipeline::from).collect())
    }

    /// Inserts a pipeline; a new default takes the flag from the old one.
    pub async fn create_pipeline(&self, pipeline: &Pipeline) -> Result<(), Error> {
        self.default_pipeline(&pipeline.tenant_id).await?;
        let mut tx = self.db.begin().await?;
        if pipeline.is_default {
            clear_default(&mut tx, &pipeline.tenant_id).await?;
        }
        insert_pipeline(&mut tx, pipeline).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Reads a pipeline under a write lock and applies `decide`'s change. `decide` gets the
    /// stages that open deals are in, so it can refuse to remove them.
    pub async fn modify_pipeline<F>(
        &self,
        tenant: &str,
        id: Uuid,
        decide: F,
    ) -> Result<Option<Pipeline>, Error>
    where
        F: FnOnce(Pipeline, Vec<String>, i64) -> Result<PipelineChange, Error>,
    {
        let mut tx = self.db.begin().await?;
        let current: Pipeline = tx
            .get_as::<PipelineRow, _>(&PIPELINES, tenant, id, Lock::ForUpdate)
            .await?;
        #[derive(sqlx::FromRow)]
        struct StageRow {
            stage: String,
        }
        let occupied: Vec<StageRow> = tx
            .fetch_all(
                Sql::new("SELECT DISTINCT stage FROM deals WHERE tenant_id = $1 AND pipeline_id = $2 AND status = $3")
                    .bind(tenant)
                    .bind(id)
                    .bind(DealStatus::Open.as_str()),
            )
            .await?;
        let deals: Count = tx
            .fetch_one(
                Sql::new(
                    "SELECT COUNT(*) AS count FROM deals WHERE tenant_id = $1 AND pipeline_id = $2",
                )
                .bind(tenant)
                .bind(id),
            )
            .await?;
        let occupied = occupied.into_iter().map(|row| row.stage).collect();
        match decide(current, occupied, deals.count)? {
            PipelineChange::Unchanged => Ok(None),
            PipelineChange::Updated(pipeline) => {
                if pipeline.is_default {
                    clear_default(&mut tx, tenant).await?;
                }
                tx.execute(
                    Sql::new(
                        "UPDATE pipelines SET name = $3, stages = $4, rotting_days = $5, is_default = $6, version = $7, \
                         update_time = $8 WHERE tenant_id = $1 AND id = $2",
                    )
                    .bind(tenant)
                    .bind(id)
                    .bind(pipeline.name.as_str())
                    .bind(stages_json(&pipeline.stages))
                    .bind(i64::from(pipeline.rotting_days))
                    .bind(pipeline.is_default)
                    .bind(pipeline.version)
                    .bind(pipeline.update_time),
                )
                .await?;
                tx.commit().await?;
                Ok(Some(*pipeline))
            }
            PipelineChange::Deleted => {
                tx.execute(
                    Sql::new("DELETE FROM pipelines WHERE tenant_id = $1 AND id = $2")
                        .bind(tenant)
                        .bind(id),
                )
                .await?;
                tx.commit().await?;
                Ok(None)
            }
        }
    }

    // ----- deals -----

    /// Inserts `deal` with its event; with a request id, a retry returns the first deal.
    pub async fn create_deal(
        &self,
        deal: &Deal,
        request: Option<(&str, String)>,
        event: &outbox::Event,
    ) -> Result<(Deal, bool), Error> {
        let mut tx = self.db.begin().await?;
        if let Some((request_id, fingerprint)) = &request {
            let claim = Claim {
                operation: "CreateDeal",
                request_id,
                fingerprint,
                resource: "deal",
            };
            let earlier = claim
                .claim(&mut tx, &deal.tenant_id, deal.id, deal.create_time)
                .await?;
            if let Some(earlier) = earlier {
                tx.rollback().await?;
                return Ok((self.deal(&deal.tenant_id, earlier).await?, false));
            }
        }
        if let Err(error) = insert_deal(&mut tx, deal).await {
            drop(tx);
            return Err(self.explain_conflict(error, deal).await);
        }
        outbox::enqueue(&mut tx, event).await?;
        tx.commit().await?;
        Ok((deal.clone(), true))
    }

    /// Creates the deal of a qualified lead, once: the event id is claimed in the inbox and
    /// the lead may have one deal only. Returns false when nothing was created.
    pub async fn create_deal_for_lead(
        &self,
        consumer: &str,
        event_id: &str,
        deal: &Deal,
        event: &outbox::Event,
    ) -> Result<bool, Error> {
        let mut tx = self.db.begin().await?;
        if !claim(&mut tx, consumer, event_id).await? {
            return Ok(false);
        }
        let existing: Option<Count> = tx
            .fetch_optional(
                Sql::new(
                    "SELECT COUNT(*) AS count FROM deals WHERE tenant_id = $1 AND lead_id = $2",
                )
                .bind(deal.tenant_id.as_str())
                .bind(deal.lead_id),
            )
            .await?;
        if existing.is_some_and(|count| count.count > 0) {
            // A different event (a second qualification after a reopen) for a lead that
            // already has a deal: remember the event, create nothing.
            tx.commit().await?;
            return Ok(false);
        }
        insert_deal(&mut tx, deal).await?;
        outbox::enqueue(&mut tx, event).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn explain_conflict(&self, error: sqlx::Error, deal: &Deal) -> Error {
        if !is_unique_violation(&error) {
            return error.into();
        }
        #[derive(sqlx::FromRow)]
        struct IdRow {
            id: Uuid,
        }
        let existing: Result<Option<IdRow>, _> = self
            .db
            .fetch_optional(
                Sql::new("SELECT id FROM deals WHERE tenant_id = $1 AND lead_id = $2")
                    .bind(deal.tenant_id.as_str())
                    .bind(deal.lead_id),
            )
            .await;
        match existing {
            Ok(Some(row)) => Error::AlreadyExists {
                resource: "deal",
                existing_id: row.id.to_string(),
                message: format!(
                    "lead {} already has deal {}",
                    deal.lead_id.map(|id| id.to_string()).unwrap_or_default(),
                    row.id
                ),
            },
            Ok(None) => Error::conflict(),
            Err(error) => error.into(),
        }
    }

    pub async fn deal(&self, tenant: &str, id: Uuid) -> Result<Deal, Error> {
        self.db.get_as::<DealRow, _>(&DEALS, tenant, id).await
    }

    /// Reads a deal and its pipeline under a write lock, lets `decide` choose the change,
    /// and commits it with its event.
    pub async fn modify_deal<F>(
        &self,
        tenant: &str,
        id: Uuid,
        decide: F,
    ) -> Result<(Deal, Pipeline), Error>
    where
        F: FnOnce(&Deal, &Pipeline) -> Result<DealChange, Error>,
    {
        let mut tx = self.db.begin().await?;
        let current: Deal = tx
            .get_as::<DealRow, _>(&DEALS, tenant, id, Lock::ForUpdate)
            .await?;
        let pipeline: Pipeline = match tx
            .get_as::<PipelineRow, _>(&PIPELINES, tenant, current.pipeline_id, Lock::None)
            .await
        {
            Err(Error::NotFound { .. }) => {
                Err(Error::internal(format!("deal {id} has no pipeline")))
            }
            found => found,
        }?;
        match decide(&current, &pipeline)? {
            DealChange::Unchanged => Ok((current, pipeline)),
            DealChange::Updated(deal, event) => {
                update_deal(&mut tx, &deal).await?;
                outbox::enqueue(&mut tx, &*event).await?;
                tx.commit().await?;
                Ok((*deal, pipeline))
            }
        }
    }

    /// The page of deals `query` asks for, of `owner`'s alone when set.
    pub async fn list(
        &self,
        tenant: &str,
        owner: Option<&str>,
        query: &ListQuery<'_, '_>,
    ) -> Result<Page<Deal>, Error> {
        let (table, fields) = (&DEALS, LIST_FIELDS);
        let listing = Listing {
            table,
            fields,
            tenant,
            owner,
            query,
            blind: None,
        };
        self.db.fetch_counted_page_as::<DealRow, _>(&listing).await
    }

    /// Rotting thresholds of the tenant's pipelines, for deals read in bulk.
    pub async fn rotting_days(
        &self,
        tenant: &str,
    ) -> Result<std::collections::HashMap<Uuid, i32>, Error> {
        Ok(self
            .pipelines(tenant)
            .await?
            .into_iter()
            .map(|pipeline| (pipeline.id, pipeline.rotting_days))
            .collect())
    }
}

fn stages_json(stages: &[Stage]) -> serde_json::Value {
    serde_json::to_value(stages).unwrap_or(serde_json::Value::Null)
}

async fn clear_default(tx: &mut Tx, tenant: &str) -> Result<(), sqlx::Error> {
    tx.execute(
        Sql::new("UPDATE pipelines SET is_default = $2 WHERE tenant_id = $1 AND is_default = $3")
            .bind(tenant)
            .bind(false)
            .bind(true),
    )
    .await
    .map(|_| ())
}

async fn insert_pipeline(tx: &mut Tx, pipeline: &Pipeline) -> Result<u64, sqlx::Error> {
    tx.execute(
        Sql::new(format!(
            "INSERT INTO pipelines ({PIPELINE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(pipeline.tenant_id.as_str())
        .bind(pipeline.id)
        .bind(pipeline.name.as_str())
        .bind(stages_json(&pipeline.stages))
        .bind(i64::from(pipeline.rotting_days))
        .bind(pipeline.is_default)
        .bind(pipeline.version)
        .bind(pipeline.create_time)
        .bind(pipeline.update_time),
    )
    .await
}

fn history_json(deal: &Deal) -> serde_json::Value {
    serde_json::to_value(&deal.stage_history).unwrap_or(serde_json::Value::Null)
}

fn date_text(deal: &Deal) -> String {
    deal.expected_close_date
        .map(|date| date.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

async fn insert_deal(tx: &mut Tx, deal: &Deal) -> Result<u64, sqlx::Error> {
    tx.execute(
        Sql::new(format!(
            "INSERT INTO deals ({DEAL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
        ))
        .bind(deal.tenant_id.as_str())
        .bind(deal.id)
        .bind(deal.lead_id)
        .bind(deal.name.as_str())
        .bind(deal.amount.currency_code.as_str())
        .bind(deal.amount.amount_minor)
        .bind(deal.pipeline_id)
        .bind(deal.stage.as_str())
        .bind(i64::from(deal.probability))
        .bind(deal.probability_overridden)
        .bind(date_text(deal))
        .bind(deal.owner_id.as_str())
        .bind(deal.status.as_str())
        .bind(deal.lost_reason.as_str())
        .bind(history_json(deal))
        .bind(deal.version)
        .bind(deal.create_time)
        .bind(deal.update_time)
        .bind(deal.close_time),
    )
    .await
}

async fn update_deal(tx: &mut Tx, deal: &Deal) -> Result<u64, sqlx::Error> {
    tx.execute(
        Sql::new(
            "UPDATE deals SET name = $3, currency_code = $4, amount_minor = $5, stage = $6, probability = $7, \
             probability_overridden = $8, expected_close_date = $9, owner_id = $10, status = $11, lost_reason = $12, \
             stage_history = $13, version = $14, update_time = $15, close_time = $16 WHERE tenant_id = $1 AND id = $2",
        )
        .bind(deal.tenant_id.as_str())
        .bind(deal.id)
        .bind(deal.name.as_str())
        .bind(deal.amount.currency_code.as_str())
        .bind(deal.amount.amount_minor)
        .bind(deal.stage.as_str())
        .bind(i64::from(deal.probability))
        .bind(deal.probability_overridden)
        .bind(date_text(deal))
        .bind(deal.owner_id.as_str())
        .bind(deal.status.as_str())
        .bind(deal.lost_reason.as_str())
        .bind(history_json(deal))
        .bind(deal.version)
        .bind(deal.update_time)
        .bind(deal.close_time),
    )
    .await
}

/// The sort-key values of `deal` in the list order `order` (a page token's keys).
pub fn key_values(deal: &Deal, order: &[OrderTerm]) -> Vec<KeyValue> {
    order.iter().map(|term| key_value(deal, term)).collect()
}

/// The sort-key value of `deal` for an `order_by` term.
fn key_value(deal: &Deal, term: &OrderTerm) -> KeyValue {
    match term.field.name {
        "name" => KeyValue::Text(deal.name.clone()),
        "stage" => KeyValue::Text(deal.stage.clone()),
        "status" => KeyValue::Text(deal.status.as_str().to_owned()),
        "owner_id" => KeyValue::Text(deal.owner_id.clone()),
        "amount_minor" => KeyValue::Int(deal.amount.amount_minor),
        "expected_close_date" => KeyValue::Text(date_text(deal)),
        "update_time" => KeyValue::Time(deal.update_time),
        _ => KeyValue::Time(deal.create_time),
    }
}
