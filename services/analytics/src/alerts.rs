//! Alert rules and their alerts (in the service's SQL database, beside its outbox), and the
//! periodic job that publishes `analytics.computed` snapshots and raises or resolves alerts
//! (`analytics.alerted`), once per breach.

use std::collections::HashMap;
use std::time::Duration;

use aida_core::auth::AuthContext;
use aida_core::db::{Database, Sql};
use aida_core::events::{envelope, now_micros, timestamp};
use aida_core::outbox::{self, Relay};
use aida_core::query::{self, FieldKind, OrderTerm};
use aida_core::{Error, db::is_unique_violation};
use aida_proto::aida::analytics::v1 as pb;
use aida_proto::aida::common::v1::Money;
use aida_proto::aida::events::v1::event_envelope::Payload;
use aida_proto::aida::events::v1::{AnalyticsAlerted, AnalyticsComputed};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::warehouse::{Grouping, Range, Snapshot, Warehouse};

/// How ListAlerts pages: newest first (ties by id).
pub const ALERT_ORDER: [OrderTerm; 1] = [OrderTerm::key("raise_time", FieldKind::Timestamp, true)];

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    WinRateBelow,
    NoNewLeads,
    UnsubscribeRateAbove,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::WinRateBelow => "WIN_RATE_BELOW",
            AlertKind::NoNewLeads => "NO_NEW_LEADS",
            AlertKind::UnsubscribeRateAbove => "UNSUBSCRIBE_RATE_ABOVE",
        }
    }

    pub fn parse(text: &str) -> Option<AlertKind> {
        match text {
            "WIN_RATE_BELOW" => Some(AlertKind::WinRateBelow),
            "NO_NEW_LEADS" => Some(AlertKind::NoNewLeads),
            "UNSUBSCRIBE_RATE_ABOVE" => Some(AlertKind::UnsubscribeRateAbove),
            _ => None,
        }
    }

    pub fn to_proto(self) -> pb::AlertKind {
        match self {
            AlertKind::WinRateBelow => pb::AlertKind::WinRateBelow,
            AlertKind::NoNewLeads => pb::AlertKind::NoNewLeads,
            AlertKind::UnsubscribeRateAbove => pb::AlertKind::UnsubscribeRateAbove,
        }
    }
}

/// A stored kind that is not one of ours is a corrupt row: INTERNAL.
impl TryFrom<String> for AlertKind {
    type Error = Error;
    fn try_from(text: String) -> Result<Self, Error> {
        AlertKind::parse(&text).ok_or_else(|| Error::internal(format!("stored alert kind {text}")))
    }
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Rule {
    pub id: Uuid,
    pub tenant_id: String,
    #[sqlx(try_from = "String")]
    pub kind: AlertKind,
    pub threshold: f64,
    pub window_days: i64,
    pub window_hours: i64,
    pub create_time: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Alert {
    pub id: Uuid,
    pub tenant_id: String,
    pub rule_id: Uuid,
    #[sqlx(try_from = "String")]
    pub kind: AlertKind,
    pub message: String,
    pub value: f64,
    pub threshold: f64,
    pub raise_time: DateTime<Utc>,
    pub resolve_time: Option<DateTime<Utc>>,
}

const RULE_COLUMNS: &str = "tenant_id, id, kind, threshold, window_days, window_hours, create_time";
const ALERT_COLUMNS: &str =
    "tenant_id, id, rule_id, kind, message, value, threshold, raise_time, resolve_time";

pub fn alert_to_proto(alert: &Alert) -> pb::Alert {
    pb::Alert {
        id: alert.id.to_string(),
        rule_id: alert.rule_id.to_string(),
        kind: alert.kind.to_proto() as i32,
        message: alert.message.clone(),
        value: alert.value,
        threshold: alert.threshold,
        raise_time: Some(timestamp(alert.raise_time)),
        resolve_time: alert.resolve_time.map(timestamp),
    }
}

pub fn rule_to_proto(rule: &Rule) -> pb::AlertRule {
    pb::AlertRule {
        id: rule.id.to_string(),
        kind: rule.kind.to_proto() as i32,
        threshold: rule.threshold,
        window_days: i32::try_from(rule.window_days).unwrap_or(i32::MAX),
        window_hours: i32::try_from(rule.window_hours).unwrap_or(i32::MAX),
        create_time: Some(timestamp(rule.create_time)),
    }
}

#[derive(Clone)]
pub struct AlertStore {
    db: Database,
}

impl AlertStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub async fn insert_rule(&self, rule: &Rule) -> Result<(), Error> {
        self.db
            .execute(
                Sql::new(format!(
                    "INSERT INTO alert_rules ({RULE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                ))
                .bind(rule.tenant_id.as_str())
                .bind(rule.id)
                .bind(rule.kind.as_str())
                .bind(rule.threshold)
                .bind(rule.window_days)
                .bind(rule.window_hours)
                .bind(rule.create_time),
            )
            .await?;
        Ok(())
    }

    /// The rules of `tenant`, or of every tenant.
    pub async fn rules(&self, tenant: Option<&str>) -> Result<Vec<Rule>, Error> {
        let sql = match tenant {
            Some(tenant) => Sql::new(format!("SELECT {RULE_COLUMNS} FROM alert_rules WHERE tenant_id = $1 ORDER BY create_time, id")).bind(tenant),
            None => Sql::new(format!("SELECT {RULE_COLUMNS} FROM alert_rules ORDER BY tenant_id, create_time, id")),
        };
        Ok(self.db.fetch_all(sql).await?)
    }

    pub async fn delete_rule(&self, tenant: &str, id: Uuid) -> Result<(), Error> {
        let deleted = self
            .db
            .execute(
                Sql::new("DELETE FROM alert_rules WHERE tenant_id = $1 AND id = $2")
                    .bind(tenant)
                    .bind(id),
            )
            .await?;
        if deleted == 0 {
            return Err(Error::not_found("alert rule", id.to_string()));
        }
        Ok(())
    }

    async fn open_alert(&self, tenant: &str, rule: Uuid) -> Result<Option<Alert>, Error> {
        Ok(self
            .db
            .fetch_optional(
                Sql::new(format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE tenant_id = $1 AND rule_id = $2 AND resolve_time IS NULL"))
                    .bind(tenant)
                    .bind(rule),
            )
            .await?)
    }

    /// Records a new alert with its event; false if one is already open for the rule.
    async fn raise(
        &self,
        alert: &Alert,
        event: &aida_proto::aida::events::v1::EventEnvelope,
    ) -> Result<bool, Error> {
        let mut tx = self.db.begin().await?;
        let inserted = tx
            .execute(
                Sql::new(format!("INSERT INTO alerts ({ALERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"))
                    .bind(alert.tenant_id.as_str())
                    .bind(alert.id)
                    .bind(alert.rule_id)
                    .bind(alert.kind.as_str())
                    .bind(alert.message.as_str())
                    .bind(alert.value)
                    .bind(alert.threshold)
                    .bind(alert.raise_time)
                    .bind(alert.resolve_time),
            )
            .await;
        match inserted {
            Ok(_) => {}
            Err(error) if is_unique_violation(&error) => return Ok(false),
            Err(error) => return Err(error.into()),
        }
        outbox::enqueue(&mut tx, event).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn resolve(
        &self,
        alert: &Alert,
        event: &aida_proto::aida::events::v1::EventEnvelope,
    ) -> Result<(), Error> {
        let mut tx = self.db.begin().await?;
        tx.execute(
            Sql::new("UPDATE alerts SET resolve_time = $3 WHERE tenant_id = $1 AND id = $2 AND resolve_time IS NULL")
                .bind(alert.tenant_id.as_str())
                .bind(alert.id)
                .bind(alert.resolve_time),
        )
        .await?;
        outbox::enqueue(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A page of `tenant`'s alerts in [`ALERT_ORDER`] (newest first), after `after`, and
    /// whether more follow.
    pub async fn alerts(
        &self,
        tenant: &str,
        limit: u32,
        after: Option<&query::After>,
    ) -> Result<(Vec<Alert>, bool), Error> {
        let sql = Sql::new(format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE tenant_id = $1"
        ))
        .bind(tenant);
        self.db
            .fetch_page::<Alert>(sql, &ALERT_ORDER, limit, after)
            .await
    }
}

/// Publishes snapshots and evaluates alert rules every `interval`.
pub struct Monitor {
    pub warehouse: Warehouse,
    pub alerts: AlertStore,
    pub db: Database,
    pub relay: Relay,
    pub interval: Duration,
}

/// (observed value, breached) of `rule` now.
async fn evaluate(
    warehouse: &Warehouse,
    rule: &Rule,
    now: DateTime<Utc>,
) -> Result<(f64, bool), Error> {
    let now_micros = now.timestamp_micros();
    let window = Range {
        start: now_micros - rule.window_days * 86_400_000_000,
        end: i64::MAX,
    };
    match rule.kind {
        AlertKind::WinRateBelow => {
            let rows = warehouse
                .win_rate(&rule.tenant_id, window, Grouping::None)
                .await?;
            let (won, lost) = rows
                .iter()
                .fold((0, 0), |(won, lost), row| (won + row.won, lost + row.lost));
            if won + lost == 0 {
                return Ok((0.0, false));
            }
            let rate = won as f64 / (won + lost) as f64;
            Ok((rate, rate < rule.threshold))
        }
        AlertKind::UnsubscribeRateAbove => {
            let rows = warehouse
                .engagement(&rule.tenant_id, window, Grouping::None)
                .await?;
            let (sent, unsubscribed) = rows.iter().fold((0, 0), |(sent, unsubscribed), row| {
                (sent + row.delivered, unsubscribed + row.unsubscribed)
            });
            if sent == 0 {
                return Ok((0.0, false));
            }
            let rate = unsubscribed as f64 / sent as f64;
            Ok((rate, rate > rule.threshold))
        }
        AlertKind::NoNewLeads => {
            let since = warehouse
                .last_capture(&rule.tenant_id)
                .await?
                .unwrap_or(rule.create_time.timestamp_micros());
            let since = since.max(rule.create_time.timestamp_micros());
            let hours = (now_micros - since) as f64 / 3_600_000_000.0;
            Ok((hours, hours >= rule.window_hours as f64))
        }
    }
}

fn describe(rule: &Rule, value: f64) -> String {
    match rule.kind {
        AlertKind::WinRateBelow => format!(
            "win rate over the last {} days is {:.1}%, below {:.1}%",
            rule.window_days,
            value * 100.0,
            rule.threshold * 100.0
        ),
        AlertKind::UnsubscribeRateAbove => format!(
            "unsubscribe rate over the last {} days is {:.1}%, above {:.1}%",
            rule.window_days,
            value * 100.0,
            rule.threshold * 100.0
        ),
        AlertKind::NoNewLeads => format!(
            "no new lead for {value:.1} hours (limit {} hours)",
            rule.window_hours
        ),
    }
}

impl Monitor {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut published: HashMap<String, i64> = HashMap::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
            if let Err(error) = self.round(&mut published).await {
                tracing::warn!(%error, "analytics snapshot or alert evaluation failed");
            }
        }
    }

    /// One snapshot-and-alerts round.
    pub async fn round(&self, published: &mut HashMap<String, i64>) -> Result<(), Error> {
        let mut woke = false;
        for (tenant, events) in self.warehouse.tenants().await? {
            if published.get(&tenant) == Some(&events) {
                continue;
            }
            self.publish_snapshot(&tenant).await?;
            published.insert(tenant, events);
            woke = true;
        }
        let now = Utc::now();
        for rule in self.alerts.rules(None).await? {
            let (value, breached) = evaluate(&self.warehouse, &rule, now).await?;
            let open = self.alerts.open_alert(&rule.tenant_id, rule.id).await?;
            let context = AuthContext::system(&rule.tenant_id, "service:analytics", "", None);
            match (breached, open) {
                (true, None) => {
                    let alert = Alert {
                        id: Uuid::now_v7(),
                        tenant_id: rule.tenant_id.clone(),
                        rule_id: rule.id,
                        kind: rule.kind,
                        message: describe(&rule, value),
                        value,
                        threshold: if rule.kind == AlertKind::NoNewLeads {
                            rule.window_hours as f64
                        } else {
                            rule.threshold
                        },
                        raise_time: now_micros(),
                        resolve_time: None,
                    };
                    let event = envelope(
                        &context,
                        format!("alerts/{}", alert.id),
                        alert.raise_time,
                        Payload::AnalyticsAlerted(AnalyticsAlerted {
                            alert: Some(alert_to_proto(&alert)),
                        }),
                    );
                    woke |= self.alerts.raise(&alert, &event).await?;
                }
                (false, Some(mut alert)) => {
                    alert.resolve_time = Some(now_micros());
                    let event = envelope(
                        &context,
                        format!("alerts/{}", alert.id),
                        now_micros(),
                        Payload::AnalyticsAlerted(AnalyticsAlerted {
                            alert: Some(alert_to_proto(&alert)),
                        }),
                    );
                    self.alerts.resolve(&alert, &event).await?;
                    woke = true;
                }
                _ => {}
            }
        }
        if woke {
            self.relay.wake();
        }
        Ok(())
    }

    async fn publish_snapshot(&self, tenant: &str) -> Result<(), Error> {
        let snapshot = self.warehouse.snapshot(tenant).await?;
        self.business_gauges(tenant, &snapshot).await?;
        let closed = snapshot.deals_won + snapshot.deals_lost;
        let computed = AnalyticsComputed {
            leads_captured: snapshot.leads_captured,
            leads_qualified: snapshot.leads_qualified,
            deals_open: snapshot.deals_open,
            deals_won: snapshot.deals_won,
            deals_lost: snapshot.deals_lost,
            win_rate: if closed == 0 {
                0.0
            } else {
                snapshot.deals_won as f64 / closed as f64
            },
            weighted_forecast: snapshot
                .forecast
                .into_iter()
                .map(|(currency_code, amount_minor)| Money {
                    currency_code,
                    amount_minor,
                })
                .collect(),
            messages_sent: snapshot.messages_sent,
        };
        let context = AuthContext::system(tenant, "service:analytics", "", None);
        let now = now_micros();
        let event = envelope(
            &context,
            format!("tenants/{tenant}/snapshot"),
            now,
            Payload::AnalyticsComputed(computed),
        );
        let mut tx = self.db.begin().await?;
        outbox::enqueue(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The business figures of a snapshot as Prometheus gauges, per tenant: counts only,
    /// never a person (the warehouse holds no PII).
    async fn business_gauges(&self, tenant: &str, snapshot: &Snapshot) -> Result<(), Error> {
        let tenant_label = tenant.to_owned();
        for (stage, count) in [
            ("captured", snapshot.leads_captured),
            ("qualified", snapshot.leads_qualified),
        ] {
            metrics::gauge!(BUSINESS_LEADS, "tenant" => tenant_label.clone(), "stage" => stage)
                .set(count as f64);
        }
        for (state, count) in [
            ("open", snapshot.deals_open),
            ("won", snapshot.deals_won),
            ("lost", snapshot.deals_lost),
        ] {
            metrics::gauge!(BUSINESS_DEALS, "tenant" => tenant_label.clone(), "state" => state)
                .set(count as f64);
        }
        let closed = snapshot.deals_won + snapshot.deals_lost;
        // No closed deal yet: no rate (NaN, a gap on a graph), not a 0 % that never was.
        metrics::gauge!(BUSINESS_WIN_RATE, "tenant" => tenant_label.clone()).set(if closed > 0 {
            snapshot.deals_won as f64 / closed as f64
        } else {
            f64::NAN
        });
        for (currency, amount) in &snapshot.forecast {
            metrics::gauge!(
                BUSINESS_FORECAST,
                "tenant" => tenant_label.clone(),
                "currency" => currency.clone()
            )
            .set(*amount as f64);
        }
        for row in self
            .warehouse
            .funnel(tenant, Range::ALL, Grouping::Source)
            .await?
        {
            metrics::gauge!(
                BUSINESS_LEADS_BY_SOURCE,
                "tenant" => tenant_label.clone(),
                "source" => row.key
            )
            .set(row.captured as f64);
        }
        let engagement = self
            .warehouse
            .engagement(tenant, Range::ALL, Grouping::None)
            .await?;
        let total = |pick: fn(&crate::warehouse::EngagementRow) -> i64| {
            engagement.iter().map(pick).sum::<i64>() as f64
        };
        for (kind, value) in [
            ("delivered", total(|row| row.delivered)),
            ("opened", total(|row| row.opened)),
            ("clicked", total(|row| row.clicked)),
            ("replied", total(|row| row.replied)),
            ("unsubscribed", total(|row| row.unsubscribed)),
        ] {
            metrics::gauge!(BUSINESS_ENGAGEMENT, "tenant" => tenant_label.clone(), "kind" => kind)
                .set(value);
        }
        Ok(())
    }
}

/// Leads of a tenant by funnel `stage` (`captured`, `qualified`), as of the last snapshot.
pub const BUSINESS_LEADS: &str = "aida_business_leads";
/// Leads captured by `source` (cumulative; `delta(…[1h])` is leads per hour).
pub const BUSINESS_LEADS_BY_SOURCE: &str = "aida_business_leads_by_source";
/// Deals by `state` (`open`, `won`, `lost`).
pub const BUSINESS_DEALS: &str = "aida_business_deals";
/// Won / (won + lost); NaN until a deal closed.
pub const BUSINESS_WIN_RATE: &str = "aida_business_win_rate";
/// Weighted open pipeline in minor units, by `currency`.
pub const BUSINESS_FORECAST: &str = "aida_business_forecast_minor";
/// Messages by `kind` (`delivered`, `opened`, `clicked`, `replied`, `unsubscribed`).
pub const BUSINESS_ENGAGEMENT: &str = "aida_business_engagement";
