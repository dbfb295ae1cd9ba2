//! The gRPC adapter of AnalyticsService.

use aida_core::Error;
use aida_core::auth::AuthContext;
use aida_core::events::{from_timestamp, now_micros};
use aida_core::pagination::PageTokens;
use aida_core::query;
use aida_proto::aida::analytics::v1 as pb;
use aida_proto::aida::analytics::v1::analytics_service_server::AnalyticsService;
use aida_proto::aida::common::v1::Money;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::alerts::{AlertKind, AlertStore, Rule, alert_to_proto, rule_to_proto};
use crate::warehouse::{Grouping, Range, Warehouse};

const ALERT_PAGE_SIZES: query::PageSizes = query::PageSizes {
    default: 50,
    max: 1000,
};

pub struct AnalyticsApi {
    pub warehouse: Warehouse,
    pub alerts: AlertStore,
    pub page_tokens: PageTokens,
}

fn rate(part: i64, whole: i64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The request's range; a start at or after the end is INVALID_ARGUMENT.
fn range(
    start: Option<&prost_types::Timestamp>,
    end: Option<&prost_types::Timestamp>,
) -> Result<Range, Error> {
    let convert =
        |time: Option<&prost_types::Timestamp>, field: &str| -> Result<Option<i64>, Error> {
            time.map(|time| {
                from_timestamp(time)
                    .map(|time| time.timestamp_micros())
                    .ok_or_else(|| Error::invalid(field, "not a valid timestamp"))
            })
            .transpose()
        };
    let start_micros = convert(start, "start_time")?;
    let end_micros = convert(end, "end_time")?;
    if let (Some(start), Some(end)) = (start_micros, end_micros)
        && start >= end
    {
        return Err(Error::invalid("end_time", "must be after start_time"));
    }
    Ok(Range {
        start: start_micros.unwrap_or(i64::MIN),
        end: end_micros.unwrap_or(i64::MAX),
    })
}

fn grouping(value: i32) -> Result<Grouping, Error> {
    match pb::GroupBy::try_from(value) {
        Ok(pb::GroupBy::Unspecified) => Ok(Grouping::None),
        Ok(pb::GroupBy::Source) => Ok(Grouping::Source),
        Ok(pb::GroupBy::Owner) => Ok(Grouping::Owner),
        Ok(pb::GroupBy::Pipeline) => Ok(Grouping::Pipeline),
        Err(_) => Err(Error::invalid(
            "group_by",
            format!("{value} is not a GroupBy value"),
        )),
    }
}

fn funnel_group(
    key: String,
    captured: i64,
    qualified: i64,
    deals: i64,
    won: i64,
) -> pb::FunnelGroup {
    pb::FunnelGroup {
        key,
        captured,
        qualified,
        deals,
        won,
        qualification_rate: rate(qualified, captured),
        deal_rate: rate(deals, qualified),
        win_rate: rate(won, deals),
        overall_conversion: rate(won, captured),
    }
}

fn win_group(key: String, won: i64, lost: i64) -> pb::WinRateGroup {
    pb::WinRateGroup {
        key,
        won,
        lost,
        win_rate: rate(won, won + lost),
    }
}

fn engagement_group(row: crate::warehouse::EngagementRow) -> pb::EngagementGroup {
    pb::EngagementGroup {
        open_rate: rate(row.opened, row.delivered),
        click_rate: rate(row.clicked, row.delivered),
        reply_rate: rate(row.replied, row.delivered),
        unsubscribe_rate: rate(row.unsubscribed, row.delivered),
        key: row.key,
        delivered: row.delivered,
        opened: row.opened,
        clicked: row.clicked,
        replied: row.replied,
        unsubscribed: row.unsubscribed,
        machine_opens: row.machine_opens,
    }
}

fn velocity_group(row: &crate::warehouse::VelocityRow, currency: &str) -> pb::SalesVelocityGroup {
    let win_rate = rate(row.won, row.won + row.lost);
    let velocity = if row.median_cycle_days > 0.0 {
        row.open_deals as f64 * row.average_won_amount * win_rate / row.median_cycle_days
    } else {
        0.0
    };
    pb::SalesVelocityGroup {
        key: row.key.clone(),
        open_deals: row.open_deals,
        average_won_amount: Some(Money {
            currency_code: currency.to_owned(),
            amount_minor: row.average_won_amount.round() as i64,
        }),
        win_rate,
        median_cycle_days: row.median_cycle_days,
        velocity_per_day: velocity,
    }
}

/// A report request: the time range and grouping every report takes.
trait Report {
    fn start_time(&self) -> Option<&prost_types::Timestamp>;
    fn end_time(&self) -> Option<&prost_types::Timestamp>;
    fn group_by(&self) -> i32;
}

macro_rules! reports {
    ($($request:ty),* $(,)?) => {$(
        impl Report for $request {
            fn start_time(&self) -> Option<&prost_types::Timestamp> {
                self.start_time.as_ref()
            }
            fn end_time(&self) -> Option<&prost_types::Timestamp> {
                self.end_time.as_ref()
            }
            fn group_by(&self) -> i32 {
                self.group_by
            }
        }
    )*};
}

reports!(
    pb::GetFunnelRequest,
    pb::GetPipelineRequest,
    pb::GetWinRateRequest,
    pb::GetSalesVelocityRequest,
    pb::GetCycleTimeRequest,
    pb::GetEngagementRequest,
);

/// Every report's prologue: the caller, the request, and the range and grouping it asks for.
fn report<T: Report>(request: &Request<T>) -> Result<(&AuthContext, &T, Range, Grouping), Status> {
    let context = AuthContext::of(request)?;
    let body = request.get_ref();
    let range = range(body.start_time(), body.end_time())?;
    Ok((context, body, range, grouping(body.group_by())?))
}

#[tonic::async_trait]
impl AnalyticsService for AnalyticsApi {
    async fn get_funnel(
        &self,
        request: Request<pb::GetFunnelRequest>,
    ) -> Result<Response<pb::GetFunnelResponse>, Status> {
        let (context, _, range, grouping) = report(&request)?;
        let rows = self
            .warehouse
            .funnel(&context.tenant_id, range, grouping)
            .await?;
        let total = rows.iter().fold((0, 0, 0, 0), |sum, row| {
            (
                sum.0 + row.captured,
                sum.1 + row.qualified,
                sum.2 + row.deals,
                sum.3 + row.won,
            )
        });
        Ok(Response::new(pb::GetFunnelResponse {
            groups: rows
                .into_iter()
                .map(|row| funnel_group(row.key, row.captured, row.qualified, row.deals, row.won))
                .collect(),
            total: Some(funnel_group(
                "all".into(),
                total.0,
                total.1,
                total.2,
                total.3,
            )),
        }))
    }

    async fn get_pipeline(
        &self,
        request: Request<pb::GetPipelineRequest>,
    ) -> Result<Response<pb::GetPipelineResponse>, Status> {
        let (context, _, range, grouping) = report(&request)?;
        let rows = self
            .warehouse
            .pipeline(&context.tenant_id, range, grouping)
            .await?;
        let mut forecast: Vec<Money> = Vec::new();
        let mut open_deals = 0;
        for row in &rows {
            open_deals += row.open_deals;
            match forecast
                .iter_mut()
                .find(|money| money.currency_code == row.currency)
            {
                Some(money) => money.amount_minor += row.weighted,
                None => forecast.push(Money {
                    currency_code: row.currency.clone(),
                    amount_minor: row.weighted,
                }),
            }
        }
        Ok(Response::new(pb::GetPipelineResponse {
            stages: rows
                .into_iter()
                .map(|row| pb::StageSummary {
                    group: row.group,
                    pipeline_id: row.pipeline_id,
                    stage: row.stage,
                    open_deals: row.open_deals,
                    amount: Some(Money {
                        currency_code: row.currency.clone(),
                        amount_minor: row.amount,
                    }),
                    weighted_amount: Some(Money {
                        currency_code: row.currency,
                        amount_minor: row.weighted,
                    }),
                })
                .collect(),
            open_deals,
            weighted_forecast: forecast,
        }))
    }

    async fn get_win_rate(
        &self,
        request: Request<pb::GetWinRateRequest>,
    ) -> Result<Response<pb::GetWinRateResponse>, Status> {
        let (context, _, range, grouping) = report(&request)?;
        let rows = self
            .warehouse
            .win_rate(&context.tenant_id, range, grouping)
            .await?;
        let (won, lost) = rows
            .iter()
            .fold((0, 0), |sum, row| (sum.0 + row.won, sum.1 + row.lost));
        Ok(Response::new(pb::GetWinRateResponse {
            groups: rows
                .into_iter()
                .map(|row| win_group(row.key, row.won, row.lost))
                .collect(),
            total: Some(win_group("all".into(), won, lost)),
        }))
    }

    async fn get_sales_velocity(
        &self,
        request: Request<pb::GetSalesVelocityRequest>,
    ) -> Result<Response<pb::GetSalesVelocityResponse>, Status> {
        let (context, body, range, grouping) = report(&request)?;
        let currency = if body.currency_code.is_empty() {
            self.warehouse
                .main_currency(&context.tenant_id)
                .await?
                .unwrap_or_default()
        } else {
            let code = body.currency_code.trim().to_ascii_uppercase();
            if code.len() != 3 || !code.chars().all(|c| c.is_ascii_uppercase()) {
                return Err(Error::invalid("currency_code", "an ISO 4217 code such as EUR").into());
            }
            code
        };
        let groups = self
            .warehouse
            .velocity(&context.tenant_id, range, grouping, &currency)
            .await?;
        let total = self
            .warehouse
            .velocity(&context.tenant_id, range, Grouping::None, &currency)
            .await?;
        let total = total
            .first()
            .map(|row| velocity_group(row, &currency))
            .unwrap_or_else(|| pb::SalesVelocityGroup {
                key: "all".into(),
                ..pb::SalesVelocityGroup::default()
            });
        Ok(Response::new(pb::GetSalesVelocityResponse {
            groups: groups
                .iter()
                .map(|row| velocity_group(row, &currency))
                .collect(),
            total: Some(total),
            currency_code: currency,
        }))
    }

    async fn get_cycle_time(
        &self,
        request: Request<pb::GetCycleTimeRequest>,
    ) -> Result<Response<pb::GetCycleTimeResponse>, Status> {
        let (context, _, range, grouping) = report(&request)?;
        let to_proto = |row: &crate::warehouse::CycleRow| pb::CycleTimeGroup {
            key: row.key.clone(),
            won: row.won,
            average_days: row.average_days,
            median_days: row.median_days,
            p90_days: row.p90_days,
        };
        let groups = self
            .warehouse
            .cycle_time(&context.tenant_id, range, grouping)
            .await?;
        let total = self
            .warehouse
            .cycle_time(&context.tenant_id, range, Grouping::None)
            .await?;
        let stages = self
            .warehouse
            .stage_times(&context.tenant_id, range)
            .await?;
        Ok(Response::new(pb::GetCycleTimeResponse {
            groups: groups.iter().map(to_proto).collect(),
            total: Some(
                total
                    .first()
                    .map(to_proto)
                    .unwrap_or_else(|| pb::CycleTimeGroup {
                        key: "all".into(),
                        ..Default::default()
                    }),
            ),
            stages: stages
                .into_iter()
                .map(|row| pb::StageTime {
                    stage: row.stage,
                    visits: row.visits,
                    average_days: row.average_days,
                })
                .collect(),
        }))
    }

    async fn get_engagement(
        &self,
        request: Request<pb::GetEngagementRequest>,
    ) -> Result<Response<pb::GetEngagementResponse>, Status> {
        let (context, _, range, grouping) = report(&request)?;
        let rows = self
            .warehouse
            .engagement(&context.tenant_id, range, grouping)
            .await?;
        let mut total = crate::warehouse::EngagementRow {
            key: "all".into(),
            ..Default::default()
        };
        for row in &rows {
            total.delivered += row.delivered;
            total.opened += row.opened;
            total.clicked += row.clicked;
            total.replied += row.replied;
            total.unsubscribed += row.unsubscribed;
            total.machine_opens += row.machine_opens;
        }
        Ok(Response::new(pb::GetEngagementResponse {
            groups: rows.into_iter().map(engagement_group).collect(),
            total: Some(engagement_group(total)),
        }))
    }

    async fn list_alerts(
        &self,
        request: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let context = AuthContext::of(&request)?;
        let body = request.get_ref();
        let size = ALERT_PAGE_SIZES.of(body.page_size)?;
        let paging = query::Paging::new(&self.page_tokens, size, "", &crate::alerts::ALERT_ORDER);
        let after = paging.resume(&body.page_token)?;
        let (alerts, more) = self
            .alerts
            .alerts(&context.tenant_id, size, after.as_ref())
            .await?;
        let next_page_token = paging.next(&alerts, more, |last| {
            (vec![query::KeyValue::Time(last.raise_time)], last.id)
        })?;
        Ok(Response::new(pb::ListAlertsResponse {
            alerts: alerts.iter().map(alert_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn create_alert_rule(
        &self,
        request: Request<pb::CreateAlertRuleRequest>,
    ) -> Result<Response<pb::AlertRule>, Status> {
        let context = AuthContext::of(&request)?.clone();
        let input = aida_core::required(
            "alert_rule",
            request.into_inner().alert_rule,
            "an alert rule is required",
        )?;
        let kind = match pb::AlertKind::try_from(input.kind) {
            Ok(pb::AlertKind::WinRateBelow) => AlertKind::WinRateBelow,
            Ok(pb::AlertKind::NoNewLeads) => AlertKind::NoNewLeads,
            Ok(pb::AlertKind::UnsubscribeRateAbove) => AlertKind::UnsubscribeRateAbove,
            _ => {
                return Err(Error::invalid(
                    "alert_rule.kind",
                    "WIN_RATE_BELOW, NO_NEW_LEADS or UNSUBSCRIBE_RATE_ABOVE",
                )
                .into());
            }
        };
        let mut violations = Vec::new();
        match kind {
            AlertKind::NoNewLeads => {
                if !(1..=8760).contains(&input.window_hours) {
                    violations.push(aida_core::FieldViolation::new(
                        "alert_rule.window_hours",
                        "1 to 8760",
                    ));
                }
            }
            AlertKind::WinRateBelow | AlertKind::UnsubscribeRateAbove => {
                if !(0.0..=1.0).contains(&input.threshold) || input.threshold.is_nan() {
                    violations.push(aida_core::FieldViolation::new(
                        "alert_rule.threshold",
                        "a rate from 0 to 1",
                    ));
                }
                if !(1..=365).contains(&input.window_days) {
                    violations.push(aida_core::FieldViolation::new(
                        "alert_rule.window_days",
                        "1 to 365",
                    ));
                }
            }
        }
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations).into());
        }
        let rule = Rule {
            id: Uuid::now_v7(),
            tenant_id: context.tenant_id.clone(),
            kind,
            threshold: input.threshold,
            window_days: i64::from(input.window_days),
            window_hours: i64::from(input.window_hours),
            create_time: now_micros(),
        };
        self.alerts.insert_rule(&rule).await?;
        Ok(Response::new(rule_to_proto(&rule)))
    }

    async fn list_alert_rules(
        &self,
        request: Request<pb::ListAlertRulesRequest>,
    ) -> Result<Response<pb::ListAlertRulesResponse>, Status> {
        let context = AuthContext::of(&request)?;
        let rules = self.alerts.rules(Some(&context.tenant_id)).await?;
        Ok(Response::new(pb::ListAlertRulesResponse {
            alert_rules: rules.iter().map(rule_to_proto).collect(),
        }))
    }

    async fn delete_alert_rule(
        &self,
        request: Request<pb::DeleteAlertRuleRequest>,
    ) -> Result<Response<()>, Status> {
        let context = AuthContext::of(&request)?;
        let raw = &request.get_ref().id;
        let id = Uuid::parse_str(raw).map_err(|_| Error::invalid("id", "not an alert rule id"))?;
        self.alerts.delete_rule(&context.tenant_id, id).await?;
        Ok(Response::new(()))
    }
}
