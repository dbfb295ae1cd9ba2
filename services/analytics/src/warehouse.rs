//! The analytics store: one DuckDB file holding every event of the mesh as a flat row
//! (pseudonyms, never e-mails, phones or names), and the SQL of every report.
//!
//! Rows are appended in batches (DuckDB appender into a staging table, then one
//! `INSERT OR IGNORE` keyed by event id), so a redelivered event never counts twice.
//! Times are microseconds since the Unix epoch (UTC).

use std::path::Path;
use std::sync::{Arc, Mutex};

use aida_core::Error;
use duckdb::types::Value;
use duckdb::{Connection, params};

/// One event as analytics keeps it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventRow {
    pub event_id: String,
    pub tenant_id: String,
    pub event_type: String,
    pub occurred_at: i64,
    pub lead_id: Option<String>,
    pub deal_id: Option<String>,
    pub message_id: Option<String>,
    pub source: Option<String>,
    /// Pseudonym of the owner ("" for none); `None` when the event says nothing of it.
    pub owner: Option<String>,
    pub pipeline_id: Option<String>,
    pub stage_from: Option<String>,
    pub stage_to: Option<String>,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    pub probability: Option<i32>,
    pub channel: Option<String>,
    pub machine: Option<bool>,
    pub first: Option<bool>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    event_id     VARCHAR PRIMARY KEY,
    tenant_id    VARCHAR NOT NULL,
    event_type   VARCHAR NOT NULL,
    occurred_at  BIGINT NOT NULL,
    lead_id      VARCHAR,
    deal_id      VARCHAR,
    message_id   VARCHAR,
    source       VARCHAR,
    owner        VARCHAR,
    pipeline_id  VARCHAR,
    stage_from   VARCHAR,
    stage_to     VARCHAR,
    amount_minor BIGINT,
    currency     VARCHAR,
    probability  INTEGER,
    channel      VARCHAR,
    machine      BOOLEAN,
    first        BOOLEAN,
    ingested_at  BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS events_staging AS SELECT * FROM events LIMIT 0;
";

/// Per-lead facts of one tenant ($1).
const LEADS: &str = "leads AS (
    SELECT lead_id,
           min(occurred_at) FILTER (WHERE event_type = 'leads.captured') AS captured_at,
           arg_max(source, event_id) FILTER (WHERE source IS NOT NULL) AS source,
           arg_max(owner, event_id) FILTER (WHERE owner IS NOT NULL) AS owner,
           bool_or(event_type = 'leads.qualified') AS qualified
    FROM events
    WHERE tenant_id = $1 AND lead_id IS NOT NULL AND starts_with(event_type, 'leads.')
    GROUP BY lead_id)";

/// Per-deal facts of one tenant ($1).
const DEALS: &str = "deals AS (
    SELECT deal_id,
           arg_max(lead_id, event_id) FILTER (WHERE lead_id IS NOT NULL) AS lead_id,
           min(occurred_at) FILTER (WHERE event_type = 'deals.created') AS created_at,
           arg_max(pipeline_id, event_id) FILTER (WHERE pipeline_id IS NOT NULL) AS pipeline_id,
           arg_max(stage_to, event_id) FILTER (WHERE stage_to IS NOT NULL) AS stage,
           arg_max(amount_minor, event_id) FILTER (WHERE amount_minor IS NOT NULL) AS amount_minor,
           arg_max(currency, event_id) FILTER (WHERE currency IS NOT NULL) AS currency,
           arg_max(probability, event_id) FILTER (WHERE probability IS NOT NULL) AS probability,
           arg_max(owner, event_id) FILTER (WHERE owner IS NOT NULL) AS owner,
           max(occurred_at) FILTER (WHERE event_type = 'deals.won') AS won_at,
           max(occurred_at) FILTER (WHERE event_type = 'deals.lost') AS lost_at
    FROM events
    WHERE tenant_id = $1 AND deal_id IS NOT NULL AND starts_with(event_type, 'deals.')
    GROUP BY deal_id)";

/// Per-message facts of one tenant ($1).
const MESSAGES: &str = "msgs AS (
    SELECT message_id,
           arg_max(lead_id, event_id) FILTER (WHERE lead_id IS NOT NULL) AS lead_id,
           min(occurred_at) FILTER (WHERE event_type = 'comms.sent') AS sent_at,
           coalesce(bool_or(event_type = 'comms.opened' AND NOT coalesce(machine, false)), false) AS opened,
           count(*) FILTER (WHERE event_type = 'comms.opened' AND coalesce(machine, false)) AS machine_opens,
           coalesce(bool_or(event_type = 'comms.clicked'), false) AS clicked,
           coalesce(bool_or(event_type = 'comms.replied'), false) AS replied,
           coalesce(bool_or(event_type = 'comms.unsubscribed'), false) AS unsubscribed
    FROM events
    WHERE tenant_id = $1 AND message_id IS NOT NULL AND starts_with(event_type, 'comms.')
    GROUP BY message_id)";

/// How a report is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    None,
    Source,
    Owner,
    Pipeline,
}

/// A half-open time range in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub start: i64,
    pub end: i64,
}

impl Range {
    pub const ALL: Range = Range {
        start: i64::MIN,
        end: i64::MAX,
    };
}

#[derive(Debug, Clone, PartialEq)]
pub struct FunnelRow {
    pub key: String,
    pub captured: i64,
    pub qualified: i64,
    pub deals: i64,
    pub won: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StageRow {
    pub group: String,
    pub pipeline_id: String,
    pub stage: String,
    pub currency: String,
    pub open_deals: i64,
    pub amount: i64,
    pub weighted: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WinRow {
    pub key: String,
    pub won: i64,
    pub lost: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VelocityRow {
    pub key: String,
    pub open_deals: i64,
    pub average_won_amount: f64,
    pub won: i64,
    pub lost: i64,
    pub median_cycle_days: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CycleRow {
    pub key: String,
    pub won: i64,
    pub average_days: f64,
    pub median_days: f64,
    pub p90_days: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StageTimeRow {
    pub stage: String,
    pub visits: i64,
    pub average_days: f64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct EngagementRow {
    pub key: String,
    pub delivered: i64,
    pub opened: i64,
    pub clicked: i64,
    pub replied: i64,
    pub unsubscribed: i64,
    pub machine_opens: i64,
}

/// The key figures of `analytics.computed`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    pub leads_captured: i64,
    pub leads_qualified: i64,
    pub deals_open: i64,
    pub deals_won: i64,
    pub deals_lost: i64,
    pub forecast: Vec<(String, i64)>,
    pub messages_sent: i64,
}

fn failure(error: impl std::fmt::Display) -> Error {
    Error::internal(format!("analytics store: {error}"))
}

/// The DuckDB file, with one connection for ingestion and one for reports, so that a long
/// report does not hold up ingestion.
#[derive(Clone)]
pub struct Warehouse {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
}

fn lock(connection: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    connection
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Warehouse {
    /// Opens (or creates) the DuckDB file at `path`.
    pub fn open(path: &Path) -> Result<Self, Error> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(failure)?;
        }
        let writer = Connection::open(path).map_err(failure)?;
        writer.execute_batch(SCHEMA).map_err(failure)?;
        // A crash between staging and the insert leaves rows behind; they are redelivered.
        writer
            .execute_batch("DELETE FROM events_staging")
            .map_err(failure)?;
        let reader = writer.try_clone().map_err(failure)?;
        Ok(Self {
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    /// Appends `rows` in one transaction; returns how many were new.
    pub async fn ingest(&self, rows: Vec<EventRow>) -> Result<usize, Error> {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let connection = lock(&writer);
            connection.execute_batch("BEGIN TRANSACTION").map_err(failure)?;
            let result = (|| -> duckdb::Result<usize> {
                let now = chrono::Utc::now().timestamp_micros();
                {
                    let mut appender = connection.appender("events_staging")?;
                    for row in &rows {
                        appender.append_row(params![
                            row.event_id,
                            row.tenant_id,
                            row.event_type,
                            row.occurred_at,
                            row.lead_id,
                            row.deal_id,
                            row.message_id,
                            row.source,
                            row.owner,
                            row.pipeline_id,
                            row.stage_from,
                            row.stage_to,
                            row.amount_minor,
                            row.currency,
                            row.probability,
                            row.channel,
                            row.machine,
                            row.first,
                            now,
                        ])?;
                    }
                    appender.flush()?;
                }
                let inserted = connection.execute(
                    "INSERT OR IGNORE INTO events SELECT DISTINCT ON (event_id) * FROM events_staging ORDER BY event_id",
                    [],
                )?;
                connection.execute("DELETE FROM events_staging", [])?;
                Ok(inserted)
            })();
            match result {
                Ok(inserted) => {
                    connection.execute_batch("COMMIT").map_err(failure)?;
                    Ok(inserted)
                }
                Err(error) => {
                    let _ = connection.execute_batch("ROLLBACK");
                    Err(failure(error))
                }
            }
        })
        .await
        .map_err(failure)?
    }

    /// Runs a report query on the reader connection.
    async fn query<T, F>(&self, sql: String, params: Vec<Value>, map: F) -> Result<Vec<T>, Error>
    where
        T: Send + 'static,
        F: Fn(&duckdb::Row<'_>) -> duckdb::Result<T> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let connection = lock(&reader);
            let mut statement = connection.prepare(&sql).map_err(failure)?;
            let rows = statement
                .query_map(duckdb::params_from_iter(params), |row| map(row))
                .map_err(failure)?;
            rows.collect::<Result<Vec<T>, _>>().map_err(failure)
        })
        .await
        .map_err(failure)?
    }

    /// Events stored for `tenant` (all tenants when `None`).
    pub async fn event_count(&self, tenant: Option<&str>) -> Result<i64, Error> {
        let (sql, params) = match tenant {
            Some(tenant) => (
                "SELECT count(*) FROM events WHERE tenant_id = $1",
                vec![Value::Text(tenant.to_owned())],
            ),
            None => ("SELECT count(*) FROM events", vec![]),
        };
        let counts = self
            .query(sql.to_owned(), params, |row| row.get::<_, i64>(0))
            .await?;
        Ok(counts.first().copied().unwrap_or(0))
    }

    /// Tenants with events, and how many each has.
    pub async fn tenants(&self) -> Result<Vec<(String, i64)>, Error> {
        self.query(
            "SELECT tenant_id, count(*) FROM events GROUP BY tenant_id ORDER BY tenant_id"
                .to_owned(),
            vec![],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .await
    }

    pub async fn funnel(
        &self,
        tenant: &str,
        range: Range,
        grouping: Grouping,
    ) -> Result<Vec<FunnelRow>, Error> {
        let key = match grouping {
            Grouping::None => "'all'",
            Grouping::Source => "source",
            Grouping::Owner => "owner",
            Grouping::Pipeline => "pipeline",
        };
        let sql = format!(
            "WITH {LEADS}, {DEALS},
             lead_deals AS (
                 SELECT lead_id, min(pipeline_id) AS pipeline_id, bool_or(won_at IS NOT NULL) AS won
                 FROM deals WHERE lead_id IS NOT NULL GROUP BY lead_id),
             cohort AS (
                 SELECT coalesce(l.source, '') AS source, coalesce(l.owner, '') AS owner,
                        coalesce(d.pipeline_id, '') AS pipeline, l.qualified,
                        d.lead_id IS NOT NULL AS has_deal, coalesce(d.won, false) AS won
                 FROM leads l LEFT JOIN lead_deals d ON d.lead_id = l.lead_id
                 WHERE l.captured_at IS NOT NULL AND l.captured_at >= $2 AND l.captured_at < $3)
             SELECT {key} AS key, count(*), count(*) FILTER (WHERE qualified),
                    count(*) FILTER (WHERE has_deal), count(*) FILTER (WHERE won)
             FROM cohort GROUP BY 1 ORDER BY 1"
        );
        self.query(sql, tenant_range(tenant, range), |row| {
            Ok(FunnelRow {
                key: row.get(0)?,
                captured: row.get(1)?,
                qualified: row.get(2)?,
                deals: row.get(3)?,
                won: row.get(4)?,
            })
        })
        .await
    }

    pub async fn pipeline(
        &self,
        tenant: &str,
        range: Range,
        grouping: Grouping,
    ) -> Result<Vec<StageRow>, Error> {
        let key = deal_group(grouping);
        let sql = format!(
            "WITH {LEADS}, {DEALS}
             SELECT {key} AS grp, coalesce(d.pipeline_id, '') AS pipeline, coalesce(d.stage, '') AS stage,
                    coalesce(d.currency, '') AS currency, count(*),
                    CAST(coalesce(sum(d.amount_minor), 0) AS BIGINT),
                    CAST(coalesce(sum((coalesce(d.amount_minor, 0) * coalesce(d.probability, 0) + 50) // 100), 0) AS BIGINT)
             FROM deals d LEFT JOIN leads l ON l.lead_id = d.lead_id
             WHERE d.won_at IS NULL AND d.lost_at IS NULL AND d.created_at IS NOT NULL
               AND d.created_at >= $2 AND d.created_at < $3
             GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
        );
        self.query(sql, tenant_range(tenant, range), |row| {
            Ok(StageRow {
                group: row.get(0)?,
                pipeline_id: row.get(1)?,
                stage: row.get(2)?,
                currency: row.get(3)?,
                open_deals: row.get(4)?,
                amount: row.get(5)?,
                weighted: row.get(6)?,
            })
        })
        .await
    }

    pub async fn win_rate(
        &self,
        tenant: &str,
        range: Range,
        grouping: Grouping,
    ) -> Result<Vec<WinRow>, Error> {
        let key = deal_group(grouping);
        let sql = format!(
            "WITH {LEADS}, {DEALS}
             SELECT {key} AS key,
                    count(*) FILTER (WHERE d.won_at >= $2 AND d.won_at < $3),
                    count(*) FILTER (WHERE d.lost_at >= $2 AND d.lost_at < $3)
             FROM deals d LEFT JOIN leads l ON l.lead_id = d.lead_id
             WHERE (d.won_at >= $2 AND d.won_at < $3) OR (d.lost_at >= $2 AND d.lost_at < $3)
             GROUP BY 1 ORDER BY 1"
        );
        self.query(sql, tenant_range(tenant, range), |row| {
            Ok(WinRow {
                key: row.get(0)?,
                won: row.get(1)?,
                lost: row.get(2)?,
            })
        })
        .await
    }

    /// The currency most deals of `tenant` use.
    pub async fn main_currency(&self, tenant: &str) -> Result<Option<String>, Error> {
        let sql = format!(
            "WITH {DEALS} SELECT currency FROM deals WHERE currency IS NOT NULL GROUP BY currency ORDER BY count(*) DESC, currency LIMIT 1"
        );
        let rows = self
            .query(sql, vec![Value::Text(tenant.to_owned())], |row| {
                row.get::<_, String>(0)
            })
            .await?;
        Ok(rows.into_iter().next())
    }

    pub async fn velocity(
        &self,
        tenant: &str,
        range: Range,
        grouping: Grouping,
        currency: &str,
    ) -> Result<Vec<VelocityRow>, Error> {
        let key = deal_group(grouping);
        let sql = format!(
            "WITH {LEADS}, {DEALS}
             SELECT {key} AS key,
                    count(*) FILTER (WHERE d.won_at IS NULL AND d.lost_at IS NULL AND d.created_at < $3),
                    coalesce(avg(d.amount_minor) FILTER (WHERE d.won_at >= $2 AND d.won_at < $3), 0),
                    count(*) FILTER (WHERE d.won_at >= $2 AND d.won_at < $3),
                    count(*) FILTER (WHERE d.lost_at >= $2 AND d.lost_at < $3),
                    coalesce(median((d.won_at - d.created_at) / 86400000000.0) FILTER (WHERE d.won_at >= $2 AND d.won_at < $3), 0)
             FROM deals d LEFT JOIN leads l ON l.lead_id = d.lead_id
             WHERE d.currency = $4
             GROUP BY 1 ORDER BY 1"
        );
        let mut params = tenant_range(tenant, range);
        params.push(Value::Text(currency.to_owned()));
        self.query(sql, params, |row| {
            Ok(VelocityRow {
                key: row.get(0)?,
                open_deals: row.get(1)?,
                average_won_amount: row.get(2)?,
                won: row.get(3)?,
                lost: row.get(4)?,
                median_cycle_days: row.get(5)?,
            })
        })
        .await
    }

    pub async fn cycle_time(
        &self,
        tenant: &str,
        range: Range,
        grouping: Grouping,
    ) -> Result<Vec<CycleRow>, Error> {
        let key = deal_group(grouping);
        let sql = format!(
            "WITH {LEADS}, {DEALS}
             SELECT {key} AS key, count(*),
                    avg((d.won_at - d.created_at) / 86400000000.0),
                    median((d.won_at - d.created_at) / 86400000000.0),
                    quantile_cont((d.won_at - d.created_at) / 86400000000.0, 0.9)
             FROM deals d LEFT JOIN leads l ON l.lead_id = d.lead_id
             WHERE d.won_at >= $2 AND d.won_at < $3 AND d.created_at IS NOT NULL
             GROUP BY 1 ORDER BY 1"
        );
        self.query(sql, tenant_range(tenant, range), |row| {
            Ok(CycleRow {
                key: row.get(0)?,
                won: row.get(1)?,
                average_days: row.get(2)?,
                median_days: row.get(3)?,
                p90_days: row.get(4)?,
            })
        })
        .await
    }

    /// Completed stays per stage, from the stage moves that ended them in the range.
    pub async fn stage_times(
        &self,
        tenant: &str,
        range: Range,
    ) -> Result<Vec<StageTimeRow>, Error> {
        let sql = "WITH moves AS (
                 SELECT stage_from, occurred_at,
                        lag(occurred_at) OVER (PARTITION BY deal_id ORDER BY event_id) AS entered_at
                 FROM events
                 WHERE tenant_id = $1 AND deal_id IS NOT NULL
                   AND event_type IN ('deals.created', 'deals.progressed', 'deals.won', 'deals.lost'))
             SELECT stage_from, count(*), avg((occurred_at - entered_at) / 86400000000.0)
             FROM moves
             WHERE stage_from IS NOT NULL AND entered_at IS NOT NULL AND occurred_at >= $2 AND occurred_at < $3
             GROUP BY 1 ORDER BY 1"
            .to_owned();
        self.query(sql, tenant_range(tenant, range), |row| {
            Ok(StageTimeRow {
                stage: row.get(0)?,
                visits: row.get(1)?,
                average_days: row.get(2)?,
            })
        })
        .await
    }

    pub async fn engagement(
        &self,
        tenant: &str,
        range: Range,
        grouping: Grouping,
    ) -> Result<Vec<EngagementRow>, Error> {
        let key = match grouping {
            Grouping::None => "'all'",
            Grouping::Source => "coalesce(l.source, '')",
            Grouping::Owner => "coalesce(l.owner, '')",
            Grouping::Pipeline => {
                return Err(Error::invalid(
                    "group_by",
                    "engagement groups by SOURCE or OWNER",
                ));
            }
        };
        let sql = format!(
            "WITH {LEADS}, {MESSAGES}
             SELECT {key} AS key, count(*), count(*) FILTER (WHERE m.opened), count(*) FILTER (WHERE m.clicked),
                    count(*) FILTER (WHERE m.replied), count(*) FILTER (WHERE m.unsubscribed),
                    CAST(coalesce(sum(m.machine_opens), 0) AS BIGINT)
             FROM msgs m LEFT JOIN leads l ON l.lead_id = m.lead_id
             WHERE m.sent_at IS NOT NULL AND m.sent_at >= $2 AND m.sent_at < $3
             GROUP BY 1 ORDER BY 1"
        );
        self.query(sql, tenant_range(tenant, range), |row| {
            Ok(EngagementRow {
                key: row.get(0)?,
                delivered: row.get(1)?,
                opened: row.get(2)?,
                clicked: row.get(3)?,
                replied: row.get(4)?,
                unsubscribed: row.get(5)?,
                machine_opens: row.get(6)?,
            })
        })
        .await
    }

    /// Ingestion lag of `tenant`'s events (from the event's commit to its analytics row):
    /// (events, p50 µs, p99 µs).
    pub async fn ingestion_lag(&self, tenant: &str) -> Result<(i64, f64, f64), Error> {
        let rows = self
            .query(
                "SELECT count(*), coalesce(quantile_cont(ingested_at - occurred_at, 0.5), 0),
                        coalesce(quantile_cont(ingested_at - occurred_at, 0.99), 0)
                 FROM events WHERE tenant_id = $1"
                    .to_owned(),
                vec![Value::Text(tenant.to_owned())],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .await?;
        Ok(rows.into_iter().next().unwrap_or((0, 0.0, 0.0)))
    }

    /// Microseconds of the newest `leads.captured` of `tenant`.
    pub async fn last_capture(&self, tenant: &str) -> Result<Option<i64>, Error> {
        let rows = self
            .query(
                "SELECT max(occurred_at) FROM events WHERE tenant_id = $1 AND event_type = 'leads.captured'".to_owned(),
                vec![Value::Text(tenant.to_owned())],
                |row| row.get::<_, Option<i64>>(0),
            )
            .await?;
        Ok(rows.into_iter().next().flatten())
    }

    pub async fn snapshot(&self, tenant: &str) -> Result<Snapshot, Error> {
        let sql = format!(
            "WITH {LEADS}, {DEALS}
             SELECT (SELECT count(*) FROM leads WHERE captured_at IS NOT NULL),
                    (SELECT count(*) FROM leads WHERE qualified),
                    (SELECT count(*) FROM deals WHERE won_at IS NULL AND lost_at IS NULL AND created_at IS NOT NULL),
                    (SELECT count(*) FROM deals WHERE won_at IS NOT NULL),
                    (SELECT count(*) FROM deals WHERE lost_at IS NOT NULL),
                    (SELECT count(*) FROM events WHERE tenant_id = $1 AND event_type = 'comms.sent')"
        );
        let figures = self
            .query(sql, vec![Value::Text(tenant.to_owned())], |row| {
                Ok(Snapshot {
                    leads_captured: row.get(0)?,
                    leads_qualified: row.get(1)?,
                    deals_open: row.get(2)?,
                    deals_won: row.get(3)?,
                    deals_lost: row.get(4)?,
                    forecast: Vec::new(),
                    messages_sent: row.get(5)?,
                })
            })
            .await?;
        let mut snapshot = figures.into_iter().next().unwrap_or_default();
        let forecast_rows = self.pipeline(tenant, Range::ALL, Grouping::None).await?;
        let mut forecast: Vec<(String, i64)> = Vec::new();
        for row in forecast_rows {
            match forecast
                .iter_mut()
                .find(|(currency, _)| *currency == row.currency)
            {
                Some((_, sum)) => *sum += row.weighted,
                None => forecast.push((row.currency, row.weighted)),
            }
        }
        snapshot.forecast = forecast;
        Ok(snapshot)
    }
}

fn deal_group(grouping: Grouping) -> &'static str {
    match grouping {
        Grouping::None => "'all'",
        Grouping::Source => "coalesce(l.source, '')",
        Grouping::Owner => "coalesce(d.owner, '')",
        Grouping::Pipeline => "coalesce(d.pipeline_id, '')",
    }
}

fn tenant_range(tenant: &str, range: Range) -> Vec<Value> {
    vec![
        Value::Text(tenant.to_owned()),
        Value::BigInt(range.start),
        Value::BigInt(range.end),
    ]
}
