//! The gRPC adapter of DealService: proto messages in, domain calls, proto messages out.

use std::collections::BTreeSet;
use std::pin::Pin;

use aida_core::Error;
use aida_core::auth::AuthContext;
use aida_core::events::{envelope, now_micros, timestamp};
use aida_core::outbox::Relay;
use aida_core::pagination::PageTokens;
use aida_core::query::{self, ListQuery};
use aida_core::rbac::Access;
use aida_proto::aida::common::v1::Money as PbMoney;
use aida_proto::aida::deals::v1 as pb;
use aida_proto::aida::deals::v1::deal_service_server::DealService;
use aida_proto::aida::events::v1::{
    DealCreated, DealLost, DealProgressed, DealUpdated, DealWon, event_envelope::Payload,
};
use aida_proto::aida::leads::v1::lead_service_client::LeadServiceClient;
use aida_proto::aida::leads::v1::{GetLeadRequest, LeadStatus};
use chrono::Utc;
use futures::Stream;
use sha2::Digest;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::{self, Deal, DealStatus, Money, NewDeal, Pipeline, Stage, StageKind};
use crate::store::{self, DealChange, DealStore, PipelineChange};
use crate::watch::WatchHub;

const PAGE_SIZES: query::PageSizes = query::PageSizes {
    default: 50,
    max: 1000,
};
const DEFAULT_ORDER: &str = "create_time desc";
const DEAL_WRITABLE: [&str; 5] = [
    "name",
    "amount",
    "expected_close_date",
    "owner_id",
    "probability",
];
const PIPELINE_WRITABLE: [&str; 4] = ["name", "stages", "rotting_days", "is_default"];

/// DealService over a [`DealStore`].
pub struct DealApi {
    store: DealStore,
    relay: Relay,
    page_tokens: PageTokens,
    hub: WatchHub,
    /// LeadService, asked with the caller's own token whether a deal's lead is theirs.
    leads: LeadServiceClient<Channel>,
}

impl DealApi {
    pub fn new(
        store: DealStore,
        relay: Relay,
        page_tokens: PageTokens,
        hub: WatchHub,
        leads: LeadServiceClient<Channel>,
    ) -> Self {
        Self {
            store,
            relay,
            page_tokens,
            hub,
            leads,
        }
    }

    /// Checks the lead a new deal is for with the caller's own rights: it must exist in
    /// their tenant and be reachable by them (a sales rep's own), and not be merged away.
    /// Creating the deal converts the lead, so a lead the caller may not change is refused.
    async fn check_lead(&self, context: &AuthContext, lead_id: Uuid) -> Result<(), Error> {
        let not_found = || Error::not_found_at("deal.lead_id", "lead", lead_id.to_string());
        let lead = self
            .leads
            .clone()
            .get_lead(context.forward(GetLeadRequest {
                id: lead_id.to_string(),
            }))
            .await
            .map_err(|status| Error::from_peer("LeadService", &status, not_found))?
            .into_inner();
        if lead.status == LeadStatus::Merged as i32 {
            return Err(Error::FailedPrecondition {
                reason: "LEAD_MERGED",
                message: format!(
                    "deal.lead_id: lead {lead_id} was merged into {}; create the deal for that lead",
                    lead.merged_into
                ),
            });
        }
        Ok(())
    }
}

fn digest(text: &str) -> String {
    let digest = sha2::Sha256::digest(text.trim().as_bytes());
    digest
        .iter()
        .take(12)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn money_to_proto(money: &Money) -> PbMoney {
    PbMoney {
        currency_code: money.currency_code.clone(),
        amount_minor: money.amount_minor,
    }
}

fn money_from_proto(money: Option<&PbMoney>) -> Option<Money> {
    money.map(|money| Money {
        currency_code: money.currency_code.clone(),
        amount_minor: money.amount_minor,
    })
}

fn status_to_proto(status: DealStatus) -> pb::DealStatus {
    match status {
        DealStatus::Open => pb::DealStatus::Open,
        DealStatus::Won => pb::DealStatus::Won,
        DealStatus::Lost => pb::DealStatus::Lost,
    }
}

fn kind_to_proto(kind: StageKind) -> pb::StageKind {
    match kind {
        StageKind::Open => pb::StageKind::Open,
        StageKind::Won => pb::StageKind::Won,
        StageKind::Lost => pb::StageKind::Lost,
    }
}

fn stages_from_proto(stages: &[pb::Stage], prefix: &str) -> Result<Vec<Stage>, Error> {
    stages
        .iter()
        .enumerate()
        .map(|(index, stage)| {
            let kind = match pb::StageKind::try_from(stage.kind) {
                Ok(pb::StageKind::Unspecified | pb::StageKind::Open) => StageKind::Open,
                Ok(pb::StageKind::Won) => StageKind::Won,
                Ok(pb::StageKind::Lost) => StageKind::Lost,
                Err(_) => {
                    return Err(Error::invalid(
                        format!("{prefix}.stages[{index}].kind"),
                        format!("{} is not a StageKind value", stage.kind),
                    ));
                }
            };
            Ok(Stage {
                name: stage.name.clone(),
                probability: stage.probability,
                kind,
            })
        })
        .collect()
}

pub fn pipeline_to_proto(pipeline: &Pipeline) -> pb::Pipeline {
    pb::Pipeline {
        id: pipeline.id.to_string(),
        name: pipeline.name.clone(),
        stages: pipeline
            .stages
            .iter()
            .map(|stage| pb::Stage {
                name: stage.name.clone(),
                probability: stage.probability,
                kind: kind_to_proto(stage.kind) as i32,
            })
            .collect(),
        rotting_days: pipeline.rotting_days,
        is_default: pipeline.is_default,
        create_time: Some(timestamp(pipeline.create_time)),
        update_time: Some(timestamp(pipeline.update_time)),
        etag: pipeline.etag(),
    }
}

/// The proto form of a deal; `rotting_days` of its pipeline decides `rotting`.
pub fn deal_to_proto(deal: &Deal, rotting_days: i32) -> pb::Deal {
    pb::Deal {
        id: deal.id.to_string(),
        lead_id: deal.lead_id.map(|id| id.to_string()).unwrap_or_default(),
        name: deal.name.clone(),
        amount: Some(money_to_proto(&deal.amount)),
        pipeline_id: deal.pipeline_id.to_string(),
        stage: deal.stage.clone(),
        probability: deal.probability,
        probability_overridden: deal.probability_overridden,
        weighted_amount: Some(money_to_proto(&deal.weighted_amount())),
        expected_close_date: deal
            .expected_close_date
            .map(|date| date.format("%Y-%m-%d").to_string())
            .unwrap_or_default(),
        owner_id: deal.owner_id.clone(),
        status: status_to_proto(deal.status) as i32,
        lost_reason: deal.lost_reason.clone(),
        stage_history: deal
            .stage_history
            .iter()
            .map(|visit| pb::StageVisit {
                stage: visit.stage.clone(),
                enter_time: Some(timestamp(visit.enter_time)),
                leave_time: visit.leave_time.map(timestamp),
            })
            .collect(),
        rotting: deal.is_rotting(rotting_days, Utc::now()),
        create_time: Some(timestamp(deal.create_time)),
        update_time: Some(timestamp(deal.update_time)),
        close_time: deal.close_time.map(timestamp),
        etag: deal.etag(),
    }
}

/// The deal as `access` may touch it: another owner's deal does not exist for a caller
/// limited to its own.
fn reachable(deal: Deal, access: &Access) -> Result<Deal, Error> {
    access.reach("deal", deal.id, &deal.owner_id)?;
    Ok(deal)
}

fn subject_of(id: Uuid) -> String {
    format!("deals/{id}")
}

/// Validates the caller-written fields of a deal for creation.
fn new_deal_from_proto(deal: &pb::Deal) -> Result<(NewDeal, Option<Uuid>), Error> {
    let mut violations = Vec::new();
    let name = domain::clean(
        &deal.name,
        domain::MAX_NAME_CHARS,
        "deal.name",
        true,
        &mut violations,
    );
    let owner_id = domain::clean(&deal.owner_id, 128, "deal.owner_id", false, &mut violations);
    let amount = domain::validate_money(
        money_from_proto(deal.amount.as_ref()).as_ref(),
        "deal.amount",
        true,
    )
    .unwrap_or_else(|violation| {
        violations.push(violation);
        None
    });
    let expected_close_date =
        domain::parse_date(&deal.expected_close_date, "deal.expected_close_date").unwrap_or_else(
            |violation| {
                violations.push(violation);
                None
            },
        );
    let probability = if deal.probability_overridden || deal.probability != 0 {
        if !(0..=100).contains(&deal.probability) {
            violations.push(aida_core::FieldViolation::new(
                "deal.probability",
                "0 to 100",
            ));
        }
        Some(deal.probability)
    } else {
        None
    };
    let lead_id = if deal.lead_id.is_empty() {
        None
    } else {
        match Uuid::parse_str(&deal.lead_id) {
            Ok(id) => Some(id),
            Err(_) => {
                violations.push(aida_core::FieldViolation::new(
                    "deal.lead_id",
                    "not a lead id",
                ));
                None
            }
        }
    };
    let pipeline_id = if deal.pipeline_id.is_empty() {
        None
    } else {
        match Uuid::parse_str(&deal.pipeline_id) {
            Ok(id) => Some(id),
            Err(_) => {
                violations.push(aida_core::FieldViolation::new(
                    "deal.pipeline_id",
                    "not a pipeline id",
                ));
                None
            }
        }
    };
    if !violations.is_empty() {
        return Err(Error::InvalidArgument(violations));
    }
    let amount = amount.ok_or_else(|| Error::invalid("deal.amount", "an amount is required"))?;
    Ok((
        NewDeal {
            lead_id,
            name,
            amount,
            stage: Some(deal.stage.trim().to_owned()).filter(|stage| !stage.is_empty()),
            probability,
            expected_close_date,
            owner_id,
        },
        pipeline_id,
    ))
}

fn mask_paths(
    mask: Option<&prost_types::FieldMask>,
    populated: Vec<&'static str>,
    writable: &[&str],
) -> Result<BTreeSet<String>, Error> {
    let paths = query::update_paths(mask, populated, writable)?;
    if paths.is_empty() {
        return Err(Error::invalid("update_mask", "names no field to update"));
    }
    Ok(paths)
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::DealChange, Status>> + Send>>;

#[tonic::async_trait]
impl DealService for DealApi {
    async fn create_deal(
        &self,
        request: Request<pb::CreateDealRequest>,
    ) -> Result<Response<pb::Deal>, Status> {
        let (context, request) = AuthContext::split(request)?;
        let input = aida_core::required("deal", request.deal, "a deal is required")?;
        let (mut new, pipeline_id) = new_deal_from_proto(&input)?;
        Access::of(&context).claim(&mut new.owner_id, "creates", "deals")?;
        aida_core::idempotency::request_id(&request.request_id)?;
        if let Some(lead_id) = new.lead_id {
            self.check_lead(&context, lead_id).await?;
        }
        let pipeline = match pipeline_id {
            Some(id) => self
                .store
                .pipeline(&context.tenant_id, id)
                .await
                .map_err(|error| match error {
                    Error::NotFound { .. } => {
                        Error::invalid("deal.pipeline_id", "no such pipeline")
                    }
                    other => other,
                })?,
            None => self.store.default_pipeline(&context.tenant_id).await?,
        };
        let now = now_micros();
        let deal = Deal::create(&context.tenant_id, &pipeline, new, now)?;
        let event = envelope(
            &context,
            subject_of(deal.id),
            now,
            Payload::DealCreated(DealCreated {
                deal: Some(deal_to_proto(&deal, pipeline.rotting_days)),
            }),
        );
        let request_key = (!request.request_id.is_empty()).then(|| {
            let fingerprint = digest(&format!("{input:?}"));
            (request.request_id.as_str(), fingerprint)
        });
        let (stored, created) = self
            .store
            .create_deal(&deal, request_key, &(&event).into())
            .await?;
        if created {
            self.relay.wake();
        }
        Ok(Response::new(deal_to_proto(&stored, pipeline.rotting_days)))
    }

    async fn get_deal(
        &self,
        request: Request<pb::GetDealRequest>,
    ) -> Result<Response<pb::Deal>, Status> {
        let context = AuthContext::of(&request)?;
        let id = domain::parse_id("id", &request.get_ref().id, "deal")?;
        let deal = reachable(
            self.store.deal(&context.tenant_id, id).await?,
            &Access::of(context),
        )?;
        let pipeline = self
            .store
            .pipeline(&context.tenant_id, deal.pipeline_id)
            .await?;
        Ok(Response::new(deal_to_proto(&deal, pipeline.rotting_days)))
    }

    async fn list_deals(
        &self,
        request: Request<pb::ListDealsRequest>,
    ) -> Result<Response<pb::ListDealsResponse>, Status> {
        let context = AuthContext::of(&request)?;
        let access = Access::of(context);
        let listed = ListQuery::read(
            &self.page_tokens,
            PAGE_SIZES,
            request.get_ref(),
            store::LIST_FIELDS,
            DEFAULT_ORDER,
        )?;
        let owner = access.owner_only.as_deref();
        let page = self.store.list(&context.tenant_id, owner, &listed).await?;
        let rotting = self.store.rotting_days(&context.tenant_id).await?;
        let next_page_token = listed.paging.next(&page.rows, page.more, |last| {
            (store::key_values(last, &listed.order), last.id)
        })?;
        Ok(Response::new(pb::ListDealsResponse {
            deals: page
                .rows
                .iter()
                .map(|deal| {
                    deal_to_proto(deal, rotting.get(&deal.pipeline_id).copied().unwrap_or(0))
                })
                .collect(),
            next_page_token,
            total_size: i32::try_from(page.total).unwrap_or(i32::MAX),
        }))
    }

    async fn update_deal(
        &self,
        request: Request<pb::UpdateDealRequest>,
    ) -> Result<Response<pb::Deal>, Status> {
        let (context, request) = AuthContext::split(request)?;
        let access = Access::of(&context);
        let input = aida_core::required("deal", request.deal, "a deal is required")?;
        let id = domain::parse_id("deal.id", &input.id, "deal")?;
        let mut populated = Vec::new();
        if !input.name.is_empty() {
            populated.push("name");
        }
        if input.amount.is_some() {
            populated.push("amount");
        }
        if !input.expected_close_date.is_empty() {
            populated.push("expected_close_date");
        }
        if !input.owner_id.is_empty() {
            populated.push("owner_id");
        }
        if input.probability_overridden || input.probability != 0 {
            populated.push("probability");
        }
        let paths = mask_paths(request.update_mask.as_ref(), populated, &DEAL_WRITABLE)?;
        let mut violations = Vec::new();
        let name = domain::clean(
            &input.name,
            domain::MAX_NAME_CHARS,
            "deal.name",
            paths.contains("name"),
            &mut violations,
        );
        let owner_id = domain::clean(
            &input.owner_id,
            128,
            "deal.owner_id",
            false,
            &mut violations,
        );
        let amount = if paths.contains("amount") {
            domain::validate_money(
                money_from_proto(input.amount.as_ref()).as_ref(),
                "deal.amount",
                true,
            )
            .unwrap_or_else(|violation| {
                violations.push(violation);
                None
            })
        } else {
            None
        };
        let date = domain::parse_date(&input.expected_close_date, "deal.expected_close_date")
            .unwrap_or_else(|violation| {
                violations.push(violation);
                None
            });
        if paths.contains("probability") && !(0..=100).contains(&input.probability) {
            violations.push(aida_core::FieldViolation::new(
                "deal.probability",
                "0 to 100",
            ));
        }
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations).into());
        }
        let (deal, pipeline) = self
            .store
            .modify_deal(&context.tenant_id, id, |current, pipeline| {
                let current = &reachable(current.clone(), &access)?;
                current.check_etag(&input.etag)?;
                let mut updated = current.clone();
                for path in &paths {
                    match path.as_str() {
                        "name" => updated.name = name.clone(),
                        "owner_id" => updated.owner_id = owner_id.clone(),
                        "expected_close_date" => updated.expected_close_date = date,
                        "amount" => {
                            if let Some(amount) = &amount {
                                updated.amount = amount.clone();
                            }
                        }
                        "probability" => {
                            if current.status != DealStatus::Open {
                                return Err(Error::FailedPrecondition {
                                    reason: "DEAL_CLOSED",
                                    message: "the probability of a closed deal is fixed".into(),
                                });
                            }
                            updated.probability = input.probability;
                            updated.probability_overridden = true;
                        }
                        _ => {}
                    }
                }
                let mut changed = Vec::new();
                if updated.name != current.name {
                    changed.push("name".to_owned());
                }
                if updated.owner_id != current.owner_id {
                    changed.push("owner_id".to_owned());
                }
                if updated.expected_close_date != current.expected_close_date {
                    changed.push("expected_close_date".to_owned());
                }
                if updated.amount != current.amount {
                    changed.push("amount".to_owned());
                }
                if updated.probability != current.probability
                    || updated.probability_overridden != current.probability_overridden
                {
                    changed.push("probability".to_owned());
                }
                if changed.is_empty() {
                    return Ok(DealChange::Unchanged);
                }
                let now = now_micros();
                updated.version += 1;
                updated.update_time = now;
                let event = envelope(
                    &context,
                    subject_of(updated.id),
                    now,
                    Payload::DealUpdated(DealUpdated {
                        deal: Some(deal_to_proto(&updated, pipeline.rotting_days)),
                        changed_fields: changed,
                    }),
                );
                Ok(DealChange::Updated(
                    Box::new(updated),
                    Box::new(event.into()),
                ))
            })
            .await?;
        self.relay.wake();
        Ok(Response::new(deal_to_proto(&deal, pipeline.rotting_days)))
    }

    async fn progress_deal(
        &self,
        request: Request<pb::ProgressDealRequest>,
    ) -> Result<Response<pb::Deal>, Status> {
        let (context, request) = AuthContext::split(request)?;
        let access = Access::of(&context);
        let id = domain::parse_id("id", &request.id, "deal")?;
        let target = request.stage.trim().to_owned();
        if target.is_empty() {
            return Err(Error::invalid("stage", "a stage is required").into());
        }
        let (deal, pipeline) = self
            .store
            .modify_deal(&context.tenant_id, id, |current, pipeline| {
                let current = &reachable(current.clone(), &access)?;
                current.check_etag(&request.etag)?;
                let now = now_micros();
                let mut moved = current.progress(pipeline, &target, now)?;
                moved.version += 1;
                moved.update_time = now;
                let event = envelope(
                    &context,
                    subject_of(moved.id),
                    now,
                    Payload::DealProgressed(DealProgressed {
                        deal: Some(deal_to_proto(&moved, pipeline.rotting_days)),
                        from_stage: current.stage.clone(),
                        to_stage: moved.stage.clone(),
                    }),
                );
                Ok(DealChange::Updated(Box::new(moved), Box::new(event.into())))
            })
            .await?;
        self.relay.wake();
        Ok(Response::new(deal_to_proto(&deal, pipeline.rotting_days)))
    }

    async fn win_deal(
        &self,
        request: Request<pb::WinDealRequest>,
    ) -> Result<Response<pb::Deal>, Status> {
        let (context, request) = AuthContext::split(request)?;
        let id = domain::parse_id("id", &request.id, "deal")?;
        self.close(&context, id, &request.etag, true, String::new())
            .await
    }

    async fn lose_deal(
        &self,
        request: Request<pb::LoseDealRequest>,
    ) -> Result<Response<pb::Deal>, Status> {
        let (context, request) = AuthContext::split(request)?;
        let id = domain::parse_id("id", &request.id, "deal")?;
        let mut violations = Vec::new();
        let reason = domain::clean(
            &request.reason,
            domain::MAX_REASON_CHARS,
            "reason",
            true,
            &mut violations,
        );
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations).into());
        }
        self.close(&context, id, &request.etag, false, reason).await
    }

    type WatchDealsStream = WatchStream;

    async fn watch_deals(
        &self,
        request: Request<pb::WatchDealsRequest>,
    ) -> Result<Response<Self::WatchDealsStream>, Status> {
        let context = AuthContext::of(&request)?.clone();
        let access = Access::of(&context);
        let pipeline = if request.get_ref().pipeline_id.is_empty() {
            None
        } else {
            let id = domain::parse_id("pipeline_id", &request.get_ref().pipeline_id, "pipeline")?;
            self.store.pipeline(&context.tenant_id, id).await?;
            Some(id.to_string())
        };
        Ok(Response::new(self.hub.watch(
            context.tenant_id,
            pipeline,
            access.owner_only,
        )))
    }

    async fn create_pipeline(
        &self,
        request: Request<pb::CreatePipelineRequest>,
    ) -> Result<Response<pb::Pipeline>, Status> {
        let context = AuthContext::of(&request)?.clone();
        let input = aida_core::required(
            "pipeline",
            request.into_inner().pipeline,
            "a pipeline is required",
        )?;
        let stages = stages_from_proto(&input.stages, "pipeline")?;
        let (name, stages) =
            domain::validate_pipeline(&input.name, &stages, input.rotting_days, "pipeline")?;
        let now = now_micros();
        let pipeline = Pipeline {
            id: Uuid::now_v7(),
            tenant_id: context.tenant_id.clone(),
            name,
            stages,
            rotting_days: input.rotting_days,
            is_default: input.is_default,
            version: 1,
            create_time: now,
            update_time: now,
        };
        self.store.create_pipeline(&pipeline).await?;
        Ok(Response::new(pipeline_to_proto(&pipeline)))
    }

    async fn get_pipeline(
        &self,
        request: Request<pb::GetPipelineRequest>,
    ) -> Result<Response<pb::Pipeline>, Status> {
        let context = AuthContext::of(&request)?;
        let id = domain::parse_id("id", &request.get_ref().id, "pipeline")?;
        Ok(Response::new(pipeline_to_proto(
            &self.store.pipeline(&context.tenant_id, id).await?,
        )))
    }

    async fn list_pipelines(
        &self,
        request: Request<pb::ListPipelinesRequest>,
    ) -> Result<Response<pb::ListPipelinesResponse>, Status> {
        let context = AuthContext::of(&request)?;
        let pipelines = self.store.pipelines(&context.tenant_id).await?;
        Ok(Response::new(pb::ListPipelinesResponse {
            pipelines: pipelines.iter().map(pipeline_to_proto).collect(),
        }))
    }

    async fn update_pipeline(
        &self,
        request: Request<pb::UpdatePipelineRequest>,
    ) -> Result<Response<pb::Pipeline>, Status> {
        let (context, request) = AuthContext::split(request)?;
        let input = aida_core::required("pipeline", request.pipeline, "a pipeline is required")?;
        let id = domain::parse_id("pipeline.id", &input.id, "pipeline")?;
        let mut populated = Vec::new();
        if !input.name.is_empty() {
            populated.push("name");
        }
        if !input.stages.is_empty() {
            populated.push("stages");
        }
        if input.rotting_days != 0 {
            populated.push("rotting_days");
        }
        if input.is_default {
            populated.push("is_default");
        }
        let paths = mask_paths(request.update_mask.as_ref(), populated, &PIPELINE_WRITABLE)?;
        let stages = stages_from_proto(&input.stages, "pipeline")?;
        let updated = self
            .store
            .modify_pipeline(&context.tenant_id, id, |current, occupied, _| {
                current.check_etag(&input.etag)?;
                let mut next = current.clone();
                for path in &paths {
                    match path.as_str() {
                        "name" => next.name = input.name.clone(),
                        "stages" => next.stages = stages.clone(),
                        "rotting_days" => next.rotting_days = input.rotting_days,
                        "is_default" => {
                            if current.is_default && !input.is_default {
                                return Err(Error::FailedPrecondition {
                                    reason: "DEFAULT_REQUIRED",
                                    message: "make another pipeline the default instead".into(),
                                });
                            }
                            next.is_default = input.is_default;
                        }
                        _ => {}
                    }
                }
                let (name, stages) = domain::validate_pipeline(
                    &next.name,
                    &next.stages,
                    next.rotting_days,
                    "pipeline",
                )?;
                next.name = name;
                next.stages = stages;
                for stage in &occupied {
                    if next
                        .stage(stage)
                        .is_none_or(|kept| kept.kind != StageKind::Open)
                    {
                        return Err(Error::FailedPrecondition {
                            reason: "STAGE_IN_USE",
                            message: format!(
                                "open deals are in stage '{stage}'; move them before removing it"
                            ),
                        });
                    }
                }
                if next == current {
                    return Ok(PipelineChange::Unchanged);
                }
                next.version += 1;
                next.update_time = now_micros();
                Ok(PipelineChange::Updated(Box::new(next)))
            })
            .await?;
        let pipeline = match updated {
            Some(pipeline) => pipeline,
            None => self.store.pipeline(&context.tenant_id, id).await?,
        };
        Ok(Response::new(pipeline_to_proto(&pipeline)))
    }

    async fn delete_pipeline(
        &self,
        request: Request<pb::DeletePipelineRequest>,
    ) -> Result<Response<()>, Status> {
        let context = AuthContext::of(&request)?;
        let id = domain::parse_id("id", &request.get_ref().id, "pipeline")?;
        self.store
            .modify_pipeline(&context.tenant_id, id, |current, _, deals| {
                if current.is_default {
                    return Err(Error::FailedPrecondition {
                        reason: "DEFAULT_PIPELINE",
                        message: "the default pipeline cannot be deleted".into(),
                    });
                }
                if deals > 0 {
                    return Err(Error::FailedPrecondition {
                        reason: "PIPELINE_IN_USE",
                        message: format!("{deals} deals are in this pipeline"),
                    });
                }
                Ok(PipelineChange::Deleted)
            })
            .await?;
        Ok(Response::new(()))
    }
}

impl DealApi {
    async fn close(
        &self,
        context: &AuthContext,
        id: Uuid,
        etag: &str,
        won: bool,
        reason: String,
    ) -> Result<Response<pb::Deal>, Status> {
        let access = Access::of(context);
        let (deal, pipeline) = self
            .store
            .modify_deal(&context.tenant_id, id, |current, pipeline| {
                let current = &reachable(current.clone(), &access)?;
                current.check_etag(etag)?;
                let now = now_micros();
                let mut closed = current.close(pipeline, won, &reason, now)?;
                closed.version += 1;
                closed.update_time = now;
                let proto = Some(deal_to_proto(&closed, pipeline.rotting_days));
                let payload = if won {
                    Payload::DealWon(DealWon {
                        deal: proto,
                        from_stage: current.stage.clone(),
                    })
                } else {
                    Payload::DealLost(DealLost {
                        deal: proto,
                        from_stage: current.stage.clone(),
                        reason: reason.clone(),
                    })
                };
                let event = envelope(context, subject_of(closed.id), now, payload);
                Ok(DealChange::Updated(
                    Box::new(closed),
                    Box::new(event.into()),
                ))
            })
            .await?;
        self.relay.wake();
        Ok(Response::new(deal_to_proto(&deal, pipeline.rotting_days)))
    }
}
