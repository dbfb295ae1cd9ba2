//! Pipelines, stages and deals: validation, the default pipeline, stage moves, closing,
//! weighted amounts and rotting. No transport or storage types here.

pub use aida_core::parse_id;
use aida_core::{Error, FieldViolation};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_STAGE_NAME_CHARS: usize = 100;
pub const MAX_STAGES: usize = 30;
pub const MAX_REASON_CHARS: usize = 2000;

/// What a stage means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StageKind {
    Open,
    Won,
    Lost,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    pub name: String,
    pub probability: i32,
    pub kind: StageKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    pub id: Uuid,
    pub tenant_id: String,
    pub name: String,
    pub stages: Vec<Stage>,
    pub rotting_days: i32,
    pub is_default: bool,
    pub version: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

impl Pipeline {
    pub fn etag(&self) -> String {
        aida_core::etag::of(self.version)
    }

    pub fn check_etag(&self, etag: &str) -> Result<(), Error> {
        aida_core::etag::check("pipeline", self.id, self.version, etag)
    }

    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|stage| stage.name == name)
    }

    /// The first open stage: where new deals start.
    pub fn first_open_stage(&self) -> &Stage {
        self.stages
            .iter()
            .find(|stage| stage.kind == StageKind::Open)
            .unwrap_or(&self.stages[0])
    }

    pub fn closing_stage(&self, kind: StageKind) -> Option<&Stage> {
        self.stages.iter().find(|stage| stage.kind == kind)
    }
}

/// The stages every tenant starts with.
pub fn default_stages() -> Vec<Stage> {
    [
        ("Prospecting", 10, StageKind::Open),
        ("Qualification", 25, StageKind::Open),
        ("Proposal", 50, StageKind::Open),
        ("Negotiation", 75, StageKind::Open),
        ("Closed Won", 100, StageKind::Won),
        ("Closed Lost", 0, StageKind::Lost),
    ]
    .into_iter()
    .map(|(name, probability, kind)| Stage {
        name: name.to_owned(),
        probability,
        kind,
    })
    .collect()
}

/// Validates a pipeline's name, stages and rotting threshold, naming fields under `prefix`.
pub fn validate_pipeline(
    name: &str,
    stages: &[Stage],
    rotting_days: i32,
    prefix: &str,
) -> Result<(String, Vec<Stage>), Error> {
    let mut violations = Vec::new();
    let name = clean(
        name,
        MAX_NAME_CHARS,
        &format!("{prefix}.name"),
        true,
        &mut violations,
    );
    if stages.is_empty() || stages.len() > MAX_STAGES {
        violations.push(FieldViolation::new(
            format!("{prefix}.stages"),
            format!("1 to {MAX_STAGES} stages"),
        ));
    }
    let mut cleaned = Vec::new();
    for (index, stage) in stages.iter().enumerate() {
        let field = format!("{prefix}.stages[{index}]");
        let stage_name = clean(
            &stage.name,
            MAX_STAGE_NAME_CHARS,
            &format!("{field}.name"),
            true,
            &mut violations,
        );
        if !(0..=100).contains(&stage.probability) {
            violations.push(FieldViolation::new(
                format!("{field}.probability"),
                "0 to 100",
            ));
        }
        if cleaned
            .iter()
            .any(|other: &Stage| other.name.eq_ignore_ascii_case(&stage_name))
        {
            violations.push(FieldViolation::new(
                format!("{field}.name"),
                format!("'{stage_name}' appears twice"),
            ));
        }
        cleaned.push(Stage {
            name: stage_name,
            probability: stage.probability,
            kind: stage.kind,
        });
    }
    let count = |kind| cleaned.iter().filter(|stage| stage.kind == kind).count();
    if !stages.is_empty() {
        if count(StageKind::Open) == 0 {
            violations.push(FieldViolation::new(
                format!("{prefix}.stages"),
                "at least one open stage",
            ));
        }
        if count(StageKind::Won) != 1 {
            violations.push(FieldViolation::new(
                format!("{prefix}.stages"),
                "exactly one won stage",
            ));
        }
        if count(StageKind::Lost) != 1 {
            violations.push(FieldViolation::new(
                format!("{prefix}.stages"),
                "exactly one lost stage",
            ));
        }
    }
    if !(0..=3650).contains(&rotting_days) {
        violations.push(FieldViolation::new(
            format!("{prefix}.rotting_days"),
            "0 to 3650",
        ));
    }
    if violations.is_empty() {
        Ok((name, cleaned))
    } else {
        Err(Error::InvalidArgument(violations))
    }
}

/// An amount in minor units of a currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Money {
    pub currency_code: String,
    pub amount_minor: i64,
}

impl Money {
    /// `self` × `probability` / 100, rounded half up.
    pub fn weighted(&self, probability: i32) -> Money {
        let product = i128::from(self.amount_minor) * i128::from(probability);
        let rounded = (product + 50).div_euclid(100);
        Money {
            currency_code: self.currency_code.clone(),
            amount_minor: i64::try_from(rounded).unwrap_or(i64::MAX),
        }
    }
}

/// Validates an amount: an ISO 4217 code and a non-negative number of minor units.
pub fn validate_money(
    money: Option<&Money>,
    field: &str,
    required: bool,
) -> Result<Option<Money>, FieldViolation> {
    let Some(money) = money else {
        return if required {
            Err(FieldViolation::new(field, "an amount is required"))
        } else {
            Ok(None)
        };
    };
    let code = money.currency_code.trim().to_ascii_uppercase();
    if code.len() != 3 || !code.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(FieldViolation::new(
            format!("{field}.currency_code"),
            "an ISO 4217 code such as EUR",
        ));
    }
    if money.amount_minor < 0 {
        return Err(FieldViolation::new(
            format!("{field}.amount_minor"),
            "must not be negative",
        ));
    }
    Ok(Some(Money {
        currency_code: code,
        amount_minor: money.amount_minor,
    }))
}

/// Whether a deal is still being worked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DealStatus {
    Open,
    Won,
    Lost,
}

impl DealStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DealStatus::Open => "OPEN",
            DealStatus::Won => "WON",
            DealStatus::Lost => "LOST",
        }
    }

    pub fn parse(text: &str) -> Option<DealStatus> {
        match text.strip_prefix("DEAL_STATUS_").unwrap_or(text) {
            "OPEN" => Some(DealStatus::Open),
            "WON" => Some(DealStatus::Won),
            "LOST" => Some(DealStatus::Lost),
            _ => None,
        }
    }
}

/// One stay in one stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageVisit {
    pub stage: String,
    pub enter_time: DateTime<Utc>,
    pub leave_time: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deal {
    pub id: Uuid,
    pub tenant_id: String,
    pub lead_id: Option<Uuid>,
    pub name: String,
    pub amount: Money,
    pub pipeline_id: Uuid,
    pub stage: String,
    pub probability: i32,
    pub probability_overridden: bool,
    pub expected_close_date: Option<NaiveDate>,
    pub owner_id: String,
    pub status: DealStatus,
    pub lost_reason: String,
    pub stage_history: Vec<StageVisit>,
    pub version: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub close_time: Option<DateTime<Utc>>,
}

impl Deal {
    pub fn etag(&self) -> String {
        aida_core::etag::of(self.version)
    }

    pub fn check_etag(&self, etag: &str) -> Result<(), Error> {
        aida_core::etag::check("deal", self.id, self.version, etag)
    }

    pub fn weighted_amount(&self) -> Money {
        self.amount.weighted(self.probability)
    }

    /// True when the deal sat in its open stage longer than `rotting_days`.
    pub fn is_rotting(&self, rotting_days: i32, now: DateTime<Utc>) -> bool {
        if self.status != DealStatus::Open || rotting_days <= 0 {
            return false;
        }
        self.stage_history.last().is_some_and(|visit| {
            now - visit.enter_time > chrono::Duration::days(i64::from(rotting_days))
        })
    }

    fn require_open(&self, action: &str) -> Result<(), Error> {
        if self.status == DealStatus::Open {
            return Ok(());
        }
        Err(Error::FailedPrecondition {
            reason: "DEAL_CLOSED",
            message: format!(
                "cannot {action} deal {}: it is already {}",
                self.id,
                self.status.as_str()
            ),
        })
    }

    /// Leaves the current stage and enters `stage` at `now`.
    fn enter(&mut self, stage: &Stage, now: DateTime<Utc>) {
        if let Some(last) = self.stage_history.last_mut()
            && last.leave_time.is_none()
        {
            last.leave_time = Some(now);
        }
        self.stage_history.push(StageVisit {
            stage: stage.name.clone(),
            enter_time: now,
            leave_time: None,
        });
        self.stage = stage.name.clone();
        if !self.probability_overridden || stage.kind != StageKind::Open {
            self.probability = stage.probability;
        }
    }

    /// Moves an open deal to another open stage of `pipeline`.
    pub fn progress(
        &self,
        pipeline: &Pipeline,
        target: &str,
        now: DateTime<Utc>,
    ) -> Result<Deal, Error> {
        self.require_open("move")?;
        let stage = pipeline.stage(target).ok_or_else(|| {
            let open: Vec<&str> = pipeline
                .stages
                .iter()
                .filter(|stage| stage.kind == StageKind::Open)
                .map(|stage| stage.name.as_str())
                .collect();
            Error::invalid(
                "stage",
                format!(
                    "pipeline '{}' has no stage '{target}'; open stages: {}",
                    pipeline.name,
                    open.join(", ")
                ),
            )
        })?;
        if stage.kind != StageKind::Open {
            return Err(Error::FailedPrecondition {
                reason: "CLOSING_STAGE",
                message: format!("'{target}' closes the deal: use WinDeal or LoseDeal"),
            });
        }
        if stage.name == self.stage {
            return Err(Error::FailedPrecondition {
                reason: "SAME_STAGE",
                message: format!("deal {} is already in stage '{target}'", self.id),
            });
        }
        let mut moved = self.clone();
        moved.enter(stage, now);
        Ok(moved)
    }

    /// Closes an open deal as won or lost.
    pub fn close(
        &self,
        pipeline: &Pipeline,
        won: bool,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Deal, Error> {
        self.require_open(if won { "win" } else { "lose" })?;
        let kind = if won { StageKind::Won } else { StageKind::Lost };
        let stage = pipeline
            .closing_stage(kind)
            .ok_or_else(|| {
                Error::internal(format!("pipeline {} has no {kind:?} stage", pipeline.id))
            })?
            .clone();
        let mut closed = self.clone();
        closed.enter(&stage, now);
        if let Some(last) = closed.stage_history.last_mut() {
            // A closed deal stays in its closing stage for good.
            last.leave_time = None;
        }
        closed.status = if won {
            DealStatus::Won
        } else {
            DealStatus::Lost
        };
        closed.lost_reason = reason.to_owned();
        closed.close_time = Some(now);
        Ok(closed)
    }
}

/// What a caller (or the qualified-lead handler) asks for when creating a deal.
#[derive(Debug, Clone)]
pub struct NewDeal {
    pub lead_id: Option<Uuid>,
    pub name: String,
    pub amount: Money,
    pub stage: Option<String>,
    pub probability: Option<i32>,
    pub expected_close_date: Option<NaiveDate>,
    pub owner_id: String,
}

impl Deal {
    /// A new open deal in `pipeline`: in `new.stage` (an open stage) or the first one.
    pub fn create(
        tenant: &str,
        pipeline: &Pipeline,
        new: NewDeal,
        now: DateTime<Utc>,
    ) -> Result<Deal, Error> {
        let stage = match new.stage.as_deref().filter(|stage| !stage.is_empty()) {
            None => pipeline.first_open_stage().clone(),
            Some(name) => match pipeline.stage(name) {
                Some(stage) if stage.kind == StageKind::Open => stage.clone(),
                Some(_) => {
                    return Err(Error::invalid(
                        "deal.stage",
                        format!("'{name}' closes a deal; create deals in an open stage"),
                    ));
                }
                None => {
                    return Err(Error::invalid(
                        "deal.stage",
                        format!("pipeline '{}' has no stage '{name}'", pipeline.name),
                    ));
                }
            },
        };
        let mut deal = Deal {
            id: Uuid::now_v7(),
            tenant_id: tenant.to_owned(),
            lead_id: new.lead_id,
            name: new.name,
            amount: new.amount,
            pipeline_id: pipeline.id,
            stage: String::new(),
            probability: stage.probability,
            probability_overridden: new.probability.is_some(),
            expected_close_date: new.expected_close_date,
            owner_id: new.owner_id,
            status: DealStatus::Open,
            lost_reason: String::new(),
            stage_history: Vec::new(),
            version: 1,
            create_time: now,
            update_time: now,
            close_time: None,
        };
        deal.enter(&stage, now);
        if let Some(probability) = new.probability {
            deal.probability = probability;
        }
        Ok(deal)
    }
}

/// Trims and bounds a text field; records a violation instead of failing.
pub fn clean(
    value: &str,
    max: usize,
    field: &str,
    required: bool,
    violations: &mut Vec<FieldViolation>,
) -> String {
    let trimmed = value.trim();
    let length = trimmed.chars().count();
    if required && trimmed.is_empty() {
        violations.push(FieldViolation::new(field, "is required"));
    } else if length > max {
        violations.push(FieldViolation::new(
            field,
            format!("at most {max} characters (got {length})"),
        ));
    } else if trimmed.chars().any(char::is_control) {
        violations.push(FieldViolation::new(
            field,
            "must not contain control characters",
        ));
    }
    trimmed.to_owned()
}

/// Parses an ISO 8601 date; empty means none.
pub fn parse_date(value: &str, field: &str) -> Result<Option<NaiveDate>, FieldViolation> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    NaiveDate::parse_from_str(value.trim(), "%Y-%m-%d")
        .map(Some)
        .map_err(|_| FieldViolation::new(field, format!("'{value}' is not a date (YYYY-MM-DD)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline() -> Pipeline {
        Pipeline {
            id: Uuid::nil(),
            tenant_id: "t".into(),
            name: "Sales".into(),
            stages: default_stages(),
            rotting_days: 14,
            is_default: true,
            version: 1,
            create_time: Utc::now(),
            update_time: Utc::now(),
        }
    }

    fn deal(now: DateTime<Utc>) -> Deal {
        let pipeline = pipeline();
        let first = pipeline.first_open_stage().clone();
        let mut deal = Deal {
            id: Uuid::nil(),
            tenant_id: "t".into(),
            lead_id: None,
            name: "Big one".into(),
            amount: Money {
                currency_code: "EUR".into(),
                amount_minor: 100_000,
            },
            pipeline_id: pipeline.id,
            stage: String::new(),
            probability: 0,
            probability_overridden: false,
            expected_close_date: None,
            owner_id: String::new(),
            status: DealStatus::Open,
            lost_reason: String::new(),
            stage_history: Vec::new(),
            version: 1,
            create_time: now,
            update_time: now,
            close_time: None,
        };
        deal.enter(&first, now);
        deal
    }

    #[test]
    fn moving_a_deal_takes_the_stage_probability_and_records_history() {
        let now = Utc::now();
        let moved = deal(now)
            .progress(&pipeline(), "Proposal", now + chrono::Duration::days(1))
            .expect("move");
        assert_eq!(moved.stage, "Proposal");
        assert_eq!(moved.probability, 50);
        assert_eq!(moved.weighted_amount().amount_minor, 50_000);
        assert_eq!(moved.stage_history.len(), 2);
        assert!(moved.stage_history[0].leave_time.is_some());
        assert!(moved.stage_history[1].leave_time.is_none());
    }

    #[test]
    fn closed_deals_cannot_move_and_closing_stages_need_win_or_lose() {
        let now = Utc::now();
        let open = deal(now);
        assert!(matches!(
            open.progress(&pipeline(), "Closed Won", now),
            Err(Error::FailedPrecondition { .. })
        ));
        assert!(matches!(
            open.progress(&pipeline(), "Nowhere", now),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            open.progress(&pipeline(), "Prospecting", now),
            Err(Error::FailedPrecondition { .. })
        ));
        let won = open.close(&pipeline(), true, "", now).expect("win");
        assert_eq!(
            (won.status, won.probability, won.stage.as_str()),
            (DealStatus::Won, 100, "Closed Won")
        );
        assert!(matches!(
            won.progress(&pipeline(), "Proposal", now),
            Err(Error::FailedPrecondition { .. })
        ));
        assert!(matches!(
            won.close(&pipeline(), false, "x", now),
            Err(Error::FailedPrecondition { .. })
        ));
    }

    #[test]
    fn an_overridden_probability_survives_open_moves_but_not_closing() {
        let now = Utc::now();
        let mut custom = deal(now);
        custom.probability = 33;
        custom.probability_overridden = true;
        let moved = custom
            .progress(&pipeline(), "Negotiation", now)
            .expect("move");
        assert_eq!(moved.probability, 33);
        let lost = moved
            .close(&pipeline(), false, "budget", now)
            .expect("lose");
        assert_eq!(lost.probability, 0);
    }

    #[test]
    fn weighted_amounts_round_half_up() {
        let money = Money {
            currency_code: "EUR".into(),
            amount_minor: 999,
        };
        assert_eq!(money.weighted(25).amount_minor, 250);
        assert_eq!(money.weighted(10).amount_minor, 100);
        assert_eq!(money.weighted(0).amount_minor, 0);
    }

    #[test]
    fn a_deal_rots_after_the_pipeline_threshold_in_one_stage() {
        let now = Utc::now();
        let old = deal(now - chrono::Duration::days(20));
        assert!(old.is_rotting(14, now));
        assert!(!old.is_rotting(0, now));
        assert!(!deal(now).is_rotting(14, now));
    }

    #[test]
    fn pipelines_need_open_won_and_lost_stages_with_unique_names() {
        assert!(validate_pipeline("Sales", &default_stages(), 14, "pipeline").is_ok());
        let mut duplicate = default_stages();
        duplicate[1].name = "prospecting".into();
        let Err(Error::InvalidArgument(violations)) =
            validate_pipeline("Sales", &duplicate, 14, "pipeline")
        else {
            panic!("duplicate names accepted");
        };
        assert_eq!(violations[0].field, "pipeline.stages[1].name");
        let only_open = vec![Stage {
            name: "A".into(),
            probability: 10,
            kind: StageKind::Open,
        }];
        assert!(validate_pipeline("Sales", &only_open, 14, "pipeline").is_err());
        assert!(validate_pipeline("", &default_stages(), -1, "pipeline").is_err());
    }
}
