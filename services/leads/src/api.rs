//! The gRPC adapter: proto messages in, domain calls, proto messages out. The only module
//! of this crate that knows the generated types.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use aida_core::Error;
use aida_core::auth::AuthContext;
use aida_core::crypto::SubjectKey;
use aida_core::events::{envelope, now_micros, timestamp};
use aida_core::outbox::{self, Relay};
use aida_core::pagination::PageTokens;
use aida_core::query::{self, ListQuery};
use aida_core::rbac::Access;
use aida_proto::aida::events::v1::{
    LeadCaptured, LeadDeleted, LeadMerged, LeadQualified, LeadRejected, LeadUpdated,
    event_envelope::Payload,
};
use aida_proto::aida::leads::v1 as pb;
use aida_proto::aida::leads::v1::lead_service_server::LeadService;
use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::{self, Lead, LeadFields, Source, Status as LeadStatus};
use crate::duplicates;
use crate::index::{self, SearchIndex};
use crate::scoring::Scores;
use crate::store::{self, CaptureRequest, Change, LeadStore, MergeClaim, MergePlan};

const DEFAULT_SEARCH_RESULTS: u32 = 10;
const MAX_SEARCH_RESULTS: u32 = 50;
const MAX_QUERY_CHARS: usize = 500;
/// Most nearest neighbours fetched while looking for enough leads passing the filter.
const MAX_SEARCH_CANDIDATES: usize = 5000;
const DEFAULT_MIN_DUPLICATE_SCORE: f32 = 0.8;
/// Candidates of duplicate detection: exact matches and nearest neighbours, each at most.
const DUPLICATE_CANDIDATES: usize = 200;
const MAX_DUPLICATES: usize = 50;
const MAX_MERGED: usize = 20;

const PAGE_SIZES: query::PageSizes = query::PageSizes {
    default: 50,
    max: 1000,
};
const DEFAULT_ORDER: &str = "create_time desc";

/// Fields UpdateLead may change, by proto name.
const WRITABLE: [&str; 10] = [
    "email",
    "first_name",
    "last_name",
    "company",
    "title",
    "phone",
    "source",
    "owner_id",
    "attributes",
    "status",
];

/// LeadService over a [`LeadStore`].
pub struct LeadApi {
    store: LeadStore,
    relay: Relay,
    page_tokens: PageTokens,
    index: Arc<SearchIndex>,
    scores: Scores,
}

impl LeadApi {
    pub fn new(
        store: LeadStore,
        relay: Relay,
        page_tokens: PageTokens,
        index: Arc<SearchIndex>,
        scores: Scores,
    ) -> Self {
        Self {
            store,
            relay,
            page_tokens,
            index,
            scores,
        }
    }

    /// Changes lead `id` for the caller. `decide` gets the current lead (reachable by the
    /// caller, its `etag` checked) and the time of the change, and returns the changed lead
    /// with its event's payload, or `None` when nothing changes. The lead and its event
    /// commit together; the relay is woken and the search index refreshed after. Returns
    /// the lead as the caller may see it.
    async fn change<F>(
        &self,
        context: &AuthContext,
        access: &Access,
        id: Uuid,
        etag: &str,
        decide: F,
    ) -> Result<pb::Lead, Error>
    where
        F: FnOnce(&Lead, DateTime<Utc>) -> Result<Option<(Lead, Payload)>, Error>,
    {
        let keys = self.store.event_keys(&context.tenant_id, &[id]).await?;
        let changed = self
            .store
            .modify(&context.tenant_id, id, |current| {
                let current = reachable(current, access)?;
                current.check_etag(etag)?;
                let now = now_micros();
                let Some((lead, payload)) = decide(&current, now)? else {
                    return Ok((Change::Unchanged, Some(current)));
                };
                let event = envelope(context, subject_of(lead.id), now, sealed(payload, &keys)?);
                Ok((
                    Change::Updated(Box::new(lead.clone()), Box::new(event.into())),
                    Some(lead),
                ))
            })
            .await?;
        self.relay.wake();
        let lead = changed.ok_or_else(|| Error::internal("a change returned no lead"))?;
        self.index.refresh(&context.tenant_id, &[lead.id]).await;
        Ok(visible(&lead, access))
    }
}

fn source_from_proto(value: i32, field: &str) -> Result<Option<Source>, Error> {
    match pb::LeadSource::try_from(value) {
        Ok(pb::LeadSource::Unspecified) => Ok(None),
        Ok(pb::LeadSource::WebForm) => Ok(Some(Source::WebForm)),
        Ok(pb::LeadSource::Referral) => Ok(Some(Source::Referral)),
        Ok(pb::LeadSource::Event) => Ok(Some(Source::Event)),
        Ok(pb::LeadSource::Import) => Ok(Some(Source::Import)),
        Ok(pb::LeadSource::Outbound) => Ok(Some(Source::Outbound)),
        Ok(pb::LeadSource::Other) => Ok(Some(Source::Other)),
        Err(_) => Err(Error::invalid(
            field,
            format!("{value} is not a LeadSource value"),
        )),
    }
}

fn source_to_proto(source: Source) -> pb::LeadSource {
    match source {
        Source::WebForm => pb::LeadSource::WebForm,
        Source::Referral => pb::LeadSource::Referral,
        Source::Event => pb::LeadSource::Event,
        Source::Import => pb::LeadSource::Import,
        Source::Outbound => pb::LeadSource::Outbound,
        Source::Other => pb::LeadSource::Other,
    }
}

fn status_from_proto(value: i32) -> Result<LeadStatus, Error> {
    match pb::LeadStatus::try_from(value) {
        Ok(pb::LeadStatus::New) => Ok(LeadStatus::New),
        Ok(pb::LeadStatus::Qualified) => Ok(LeadStatus::Qualified),
        Ok(pb::LeadStatus::Rejected) => Ok(LeadStatus::Rejected),
        Ok(pb::LeadStatus::Converted) => Ok(LeadStatus::Converted),
        Ok(pb::LeadStatus::Merged) => Ok(LeadStatus::Merged),
        Ok(pb::LeadStatus::Unspecified) => Err(Error::invalid(
            "lead.status",
            "a status is required when update_mask names it",
        )),
        Err(_) => Err(Error::invalid(
            "lead.status",
            format!("{value} is not a LeadStatus value"),
        )),
    }
}

pub(crate) fn status_to_proto(status: LeadStatus) -> pb::LeadStatus {
    match status {
        LeadStatus::New => pb::LeadStatus::New,
        LeadStatus::Qualified => pb::LeadStatus::Qualified,
        LeadStatus::Rejected => pb::LeadStatus::Rejected,
        LeadStatus::Converted => pb::LeadStatus::Converted,
        LeadStatus::Merged => pb::LeadStatus::Merged,
    }
}

fn fields_from_proto(lead: &pb::Lead) -> Result<LeadFields, Error> {
    Ok(LeadFields {
        email: lead.email.clone(),
        first_name: lead.first_name.clone(),
        last_name: lead.last_name.clone(),
        company: lead.company.clone(),
        title: lead.title.clone(),
        phone: lead.phone.clone(),
        source: source_from_proto(lead.source, "lead.source")?,
        owner_id: lead.owner_id.clone(),
        attributes: lead.attributes.clone(),
    })
}

/// What `access` may read of a lead: contact data blanked for callers who may not see it.
fn visible(lead: &Lead, access: &Access) -> pb::Lead {
    let mut proto = to_proto(lead);
    if access.redact_contact {
        proto.email.clear();
        proto.phone.clear();
    }
    proto
}

/// The lead as `access` may touch it: another owner's lead does not exist for a caller
/// limited to its own (NOT_FOUND, like another tenant's).
fn reachable(lead: Lead, access: &Access) -> Result<Lead, Error> {
    access.reach("lead", lead.id, &lead.fields.owner_id)?;
    Ok(lead)
}

/// The proto form of a stored lead.
pub fn to_proto(lead: &Lead) -> pb::Lead {
    pb::Lead {
        id: lead.id.to_string(),
        email: lead.fields.email.clone(),
        first_name: lead.fields.first_name.clone(),
        last_name: lead.fields.last_name.clone(),
        company: lead.fields.company.clone(),
        title: lead.fields.title.clone(),
        phone: lead.fields.phone.clone(),
        source: source_to_proto(lead.source) as i32,
        status: status_to_proto(lead.status) as i32,
        owner_id: lead.fields.owner_id.clone(),
        attributes: lead.fields.attributes.clone(),
        rejection_reason: lead.rejection_reason.clone(),
        create_time: Some(timestamp(lead.create_time)),
        update_time: Some(timestamp(lead.update_time)),
        etag: lead.etag(),
        merged_into: lead
            .merged_into
            .map(|id| id.to_string())
            .unwrap_or_default(),
        score: None,
    }
}

/// The proto form of a lead's score.
pub fn score_to_proto(score: &aida_ai::scoring::Score) -> pb::LeadScore {
    use aida_ai::scoring::Tier;
    let tier = match score.tier {
        Tier::A => pb::Tier::A,
        Tier::B => pb::Tier::B,
        Tier::C => pb::Tier::C,
        Tier::D => pb::Tier::D,
    };
    pb::LeadScore {
        score: i32::from(score.score),
        tier: tier as i32,
        factors: score
            .factors
            .iter()
            .map(|factor| pb::ScoreFactor {
                feature: factor.feature.clone(),
                value: factor.value,
                contribution: factor.contribution,
            })
            .collect(),
        similar_won: score
            .similar_won
            .iter()
            .map(|(lead_id, similarity)| pb::SimilarLead {
                lead_id: lead_id.clone(),
                similarity: *similarity,
            })
            .collect(),
        model_version: score.model_version.clone(),
        scored_at: Some(timestamp(score.scored_at)),
    }
}

fn subject_of(id: Uuid) -> String {
    format!("leads/{id}")
}

/// The paths an empty update mask stands for: the fields the caller populated (AIP-134).
fn populated_paths(lead: &pb::Lead) -> Vec<String> {
    let mut paths = Vec::new();
    let text = [
        ("email", &lead.email),
        ("first_name", &lead.first_name),
        ("last_name", &lead.last_name),
        ("company", &lead.company),
        ("title", &lead.title),
        ("phone", &lead.phone),
        ("owner_id", &lead.owner_id),
    ];
    for (name, value) in text {
        if !value.is_empty() {
            paths.push(name.to_owned());
        }
    }
    if lead.source != 0 {
        paths.push("source".into());
    }
    if lead.status != 0 {
        paths.push("status".into());
    }
    if !lead.attributes.is_empty() {
        paths.push("attributes".into());
    }
    paths
}

/// The update's mask, validated: every path is a writable field; `*` is all of them.
fn update_paths(
    lead: &pb::Lead,
    mask: Option<&prost_types::FieldMask>,
) -> Result<BTreeSet<String>, Error> {
    query::update_paths(mask, populated_paths(lead), &WRITABLE)
}

fn apply_paths(
    current: &LeadFields,
    input: &pb::Lead,
    paths: &BTreeSet<String>,
) -> Result<LeadFields, Error> {
    let mut fields = current.clone();
    for path in paths {
        match path.as_str() {
            "email" => fields.email = input.email.clone(),
            "first_name" => fields.first_name = input.first_name.clone(),
            "last_name" => fields.last_name = input.last_name.clone(),
            "company" => fields.company = input.company.clone(),
            "title" => fields.title = input.title.clone(),
            "phone" => fields.phone = input.phone.clone(),
            "owner_id" => fields.owner_id = input.owner_id.clone(),
            "attributes" => fields.attributes = input.attributes.clone(),
            "source" => {
                fields.source =
                    Some(source_from_proto(input.source, "lead.source")?.unwrap_or(Source::Other));
            }
            _ => {}
        }
    }
    Ok(fields)
}

fn changed_fields(before: &Lead, after: &LeadFields, status_changed: bool) -> Vec<String> {
    let mut changed = Vec::new();
    let pairs = [
        ("email", &before.fields.email, &after.email),
        ("first_name", &before.fields.first_name, &after.first_name),
        ("last_name", &before.fields.last_name, &after.last_name),
        ("company", &before.fields.company, &after.company),
        ("title", &before.fields.title, &after.title),
        ("phone", &before.fields.phone, &after.phone),
        ("owner_id", &before.fields.owner_id, &after.owner_id),
    ];
    for (name, old, new) in pairs {
        if old != new {
            changed.push(name.to_owned());
        }
    }
    if Some(before.source) != after.source {
        changed.push("source".into());
    }
    if before.fields.attributes != after.attributes {
        changed.push("attributes".into());
    }
    if status_changed {
        changed.push("status".into());
    }
    changed
}

#[tonic::async_trait]
impl LeadService for LeadApi {
    async fn capture_lead(
        &self,
        request: Request<pb::CaptureLeadRequest>,
    ) -> Result<Response<pb::Lead>, Status> {
        let (context, request) = AuthContext::split(request)?;
        let input = aida_core::required("lead", request.lead, "a lead is required")?;
        let request_id = domain::clean_request_id(&request.request_id)?;
        let access = Access::of(&context);
        let mut fields = domain::normalize(fields_from_proto(&input)?, "lead")?;
        access.claim(&mut fields.owner_id, "captures", "leads")?;
        let now = now_micros();
        let lead = Lead {
            id: Uuid::now_v7(),
            tenant_id: context.tenant_id.clone(),
            source: fields.source.unwrap_or(Source::Other),
            fields: LeadFields {
                source: Some(fields.source.unwrap_or(Source::Other)),
                ..fields
            },
            status: LeadStatus::New,
            rejection_reason: String::new(),
            version: 1,
            create_time: now,
            update_time: now,
            merged_into: None,
        };
        let key = self.store.new_key(&lead).await?;
        let keys: Vec<(Uuid, SubjectKey)> = key.iter().map(|key| (lead.id, key.clone())).collect();
        let event = envelope(
            &context,
            subject_of(lead.id),
            now,
            sealed(
                Payload::LeadCaptured(LeadCaptured {
                    lead: Some(to_proto(&lead)),
                }),
                &keys,
            )?,
        );
        let capture_request = request_id.as_deref().map(|request_id| CaptureRequest {
            request_id,
            fingerprint: store::fingerprint(&lead.fields),
        });
        let (stored, created) = self
            .store
            .capture(&lead, key.as_ref(), capture_request, &(&event).into())
            .await?;
        if created {
            self.relay.wake();
            self.index.refresh(&context.tenant_id, &[stored.id]).await;
        }
        Ok(Response::new(visible(&stored, &access)))
    }

    async fn get_lead(
        &self,
        request: Request<pb::GetLeadRequest>,
    ) -> Result<Response<pb::Lead>, Status> {
        let context = AuthContext::of(&request)?;
        let id = domain::parse_id("id", &request.get_ref().id)?;
        let access = Access::of(context);
        let lead = reachable(self.store.get(&context.tenant_id, id).await?, &access)?;
        let mut proto = visible(&lead, &access);
        proto.score = self
            .scores
            .get(&context.tenant_id, id)
            .await?
            .as_ref()
            .map(score_to_proto);
        Ok(Response::new(proto))
    }

    async fn get_lead_score(
        &self,
        request: Request<pb::GetLeadScoreRequest>,
    ) -> Result<Response<pb::LeadScore>, Status> {
        let context = AuthContext::of(&request)?;
        let id = domain::parse_id("lead_id", &request.get_ref().lead_id)?;
        let access = Access::of(context);
        // The lead decides visibility: another tenant's (or owner's) lead is NOT_FOUND.
        reachable(self.store.get(&context.tenant_id, id).await?, &access)?;
        let score = self
            .scores
            .get(&context.tenant_id, id)
            .await?
            .ok_or_else(|| Error::not_found("lead score", id.to_string()))?;
        Ok(Response::new(score_to_proto(&score)))
    }

    async fn list_leads(
        &self,
        request: Request<pb::ListLeadsRequest>,
    ) -> Result<Response<pb::ListLeadsResponse>, Status> {
        let context = AuthContext::of(&request)?;
        let access = Access::of(context);
        let list = request.get_ref();
        let listed = ListQuery::read(
            &self.page_tokens,
            PAGE_SIZES,
            list,
            store::LIST_FIELDS,
            DEFAULT_ORDER,
        )?;
        query::refuse_hidden(&list.filter, &listed.order, access.hidden_fields())?;
        let owner = access.owner_only.as_deref();
        let page = self.store.list(&context.tenant_id, owner, &listed).await?;
        let next_page_token = listed.paging.next(&page.rows, page.more, |last| {
            (store::key_values(last, &listed.order), last.id)
        })?;
        let ids: Vec<Uuid> = page.rows.iter().map(|lead| lead.id).collect();
        let mut scores: HashMap<Uuid, aida_ai::scoring::Score> = self
            .scores
            .get_many(&context.tenant_id, &ids)
            .await?
            .into_iter()
            .collect();
        Ok(Response::new(pb::ListLeadsResponse {
            leads: page
                .rows
                .iter()
                .map(|lead| {
                    let mut proto = visible(lead, &access);
                    proto.score = scores.remove(&lead.id).as_ref().map(score_to_proto);
                    proto
                })
                .collect(),
            next_page_token,
            total_size: i32::try_from(page.total).unwrap_or(i32::MAX),
        }))
    }

    async fn update_lead(
        &self,
        request: Request<pb::UpdateLeadRequest>,
    ) -> Result<Response<pb::Lead>, Status> {
        let (context, request) = AuthContext::split(request)?;
        let access = Access::of(&context);
        let input = aida_core::required("lead", request.lead, "a lead is required")?;
        let id = domain::parse_id("lead.id", &input.id)?;
        let paths = update_paths(&input, request.update_mask.as_ref())?;
        let wanted_status = if paths.contains("status") {
            Some(status_from_proto(input.status)?)
        } else {
            None
        };
        let lead = self
            .change(&context, &access, id, &input.etag, |current, now| {
                current.check_not_merged()?;
                let fields =
                    domain::normalize(apply_paths(&current.fields, &input, &paths)?, "lead")?;
                if !access.may_touch(&fields.owner_id) {
                    return Err(Error::PermissionDenied(
                        "a sales rep cannot hand a lead to someone else".into(),
                    ));
                }
                let status = match wanted_status {
                    Some(wanted) => current.change_status(wanted)?,
                    None => current.status,
                };
                let changed = changed_fields(current, &fields, status != current.status);
                if changed.is_empty() {
                    return Ok(None);
                }
                let reopened = status != current.status;
                let lead = Lead {
                    source: fields.source.unwrap_or(current.source),
                    fields,
                    status,
                    rejection_reason: if reopened {
                        String::new()
                    } else {
                        current.rejection_reason.clone()
                    },
                    version: current.version + 1,
                    update_time: now,
                    ..current.clone()
                };
                let payload = Payload::LeadUpdated(LeadUpdated {
                    lead: Some(to_proto(&lead)),
                    previous_status: status_to_proto(current.status) as i32,
                    changed_fields: changed,
                });
                Ok(Some((lead, payload)))
            })
            .await?;
        Ok(Response::new(lead))
    }

    async fn qualify_lead(
        &self,
        request: Request<pb::QualifyLeadRequest>,
    ) -> Result<Response<pb::Lead>, Status> {
        let (context, request) = AuthContext::split(request)?;
        let access = Access::of(&context);
        let id = domain::parse_id("id", &request.id)?;
        let note = domain::clean_reason("note", &request.note, false)?;
        let lead = self
            .change(&context, &access, id, &request.etag, |current, now| {
                let lead = Lead {
                    status: current.qualify()?,
                    version: current.version + 1,
                    update_time: now,
                    ..current.clone()
                };
                let payload = Payload::LeadQualified(LeadQualified {
                    lead: Some(to_proto(&lead)),
                    previous_status: status_to_proto(current.status) as i32,
                    note,
                });
                Ok(Some((lead, payload)))
            })
            .await?;
        Ok(Response::new(lead))
    }

    async fn reject_lead(
        &self,
        request: Request<pb::RejectLeadRequest>,
    ) -> Result<Response<pb::Lead>, Status> {
        let (context, request) = AuthContext::split(request)?;
        let access = Access::of(&context);
        let id = domain::parse_id("id", &request.id)?;
        let reason = domain::clean_reason("reason", &request.reason, true)?;
        let lead = self
            .change(&context, &access, id, &request.etag, |current, now| {
                let lead = Lead {
                    status: current.reject()?,
                    rejection_reason: reason.clone(),
                    version: current.version + 1,
                    update_time: now,
                    ..current.clone()
                };
                let payload = Payload::LeadRejected(LeadRejected {
                    lead: Some(to_proto(&lead)),
                    previous_status: status_to_proto(current.status) as i32,
                    reason,
                });
                Ok(Some((lead, payload)))
            })
            .await?;
        Ok(Response::new(lead))
    }

    async fn delete_lead(
        &self,
        request: Request<pb::DeleteLeadRequest>,
    ) -> Result<Response<()>, Status> {
        let (context, request) = AuthContext::split(request)?;
        let access = Access::of(&context);
        let id = domain::parse_id("id", &request.id)?;
        self.store
            .modify(&context.tenant_id, id, |current| {
                let current = reachable(current, &access)?;
                current.check_etag(&request.etag)?;
                let event = envelope(
                    &context,
                    subject_of(current.id),
                    now_micros(),
                    Payload::LeadDeleted(LeadDeleted {
                        lead_id: current.id.to_string(),
                    }),
                );
                Ok((Change::Deleted(Box::new(event.into())), None))
            })
            .await?;
        self.relay.wake();
        self.index.refresh(&context.tenant_id, &[id]).await;
        Ok(Response::new(()))
    }

    async fn search_leads(
        &self,
        request: Request<pb::SearchLeadsRequest>,
    ) -> Result<Response<pb::SearchLeadsResponse>, Status> {
        let context = AuthContext::of(&request)?;
        let access = Access::of(context);
        let search = request.get_ref();
        let text = search.query.trim();
        if text.is_empty() {
            return Err(Error::invalid("query", "a query is required").into());
        }
        if text.chars().count() > MAX_QUERY_CHARS {
            return Err(
                Error::invalid("query", format!("at most {MAX_QUERY_CHARS} characters")).into(),
            );
        }
        let page_size =
            query::page_size(search.page_size, DEFAULT_SEARCH_RESULTS, MAX_SEARCH_RESULTS)?
                as usize;
        self.store.check_filter(&search.filter)?;
        query::refuse_hidden(&search.filter, &[], access.hidden_fields())?;
        let vector = self
            .index
            .embed(vec![text.to_owned()])
            .await?
            .pop()
            .unwrap_or_default();
        // Ask the index for more neighbours than wanted, and more again while the filter,
        // ownership or merges drop too many of them.
        let mut k = (page_size * 4).max(40);
        let (hits, leads) = loop {
            let hits = self.index.nearest(&context.tenant_id, &vector, k).await?;
            let ids: Vec<Uuid> = hits
                .iter()
                .filter_map(|hit| Uuid::parse_str(&hit.id).ok())
                .collect();
            let leads = self
                .store
                .live_among(
                    &context.tenant_id,
                    access.owner_only.as_deref(),
                    &search.filter,
                    &ids,
                )
                .await?;
            if leads.len() >= page_size || hits.len() < k || k >= MAX_SEARCH_CANDIDATES {
                break (hits, leads);
            }
            k = (k * 4).min(MAX_SEARCH_CANDIDATES);
        };
        let mut by_id: HashMap<String, Lead> = leads
            .into_iter()
            .map(|lead| (lead.id.to_string(), lead))
            .collect();
        let results = hits
            .iter()
            .filter_map(|hit| {
                by_id.remove(&hit.id).map(|lead| pb::SearchResult {
                    lead: Some(visible(&lead, &access)),
                    similarity: hit.similarity,
                })
            })
            .take(page_size)
            .collect();
        Ok(Response::new(pb::SearchLeadsResponse {
            results,
            model_version: self.index.model_version().to_owned(),
        }))
    }

    async fn find_duplicate_leads(
        &self,
        request: Request<pb::FindDuplicateLeadsRequest>,
    ) -> Result<Response<pb::FindDuplicateLeadsResponse>, Status> {
        let context = AuthContext::of(&request)?;
        let access = Access::of(context);
        let find = request.get_ref();
        let id = domain::parse_id("lead_id", &find.lead_id)?;
        let min_score = if find.min_score == 0.0 {
            DEFAULT_MIN_DUPLICATE_SCORE
        } else if find.min_score.is_finite() && find.min_score > 0.0 && find.min_score <= 1.0 {
            find.min_score
        } else {
            return Err(Error::invalid("min_score", "must be in (0, 1]; 0 means 0.8").into());
        };
        let target = reachable(self.store.get(&context.tenant_id, id).await?, &access)?;
        target.check_not_merged()?;
        let owner = access.owner_only.as_deref();

        // Candidates: leads sharing something exact with the target, and its nearest
        // neighbours in the index (which catch typos in every field at once).
        let mut candidates: HashMap<Uuid, Lead> = self
            .store
            .duplicate_candidates(&target, owner, DUPLICATE_CANDIDATES as i64)
            .await?
            .into_iter()
            .map(|lead| (lead.id, lead))
            .collect();
        let target_vector = self
            .index
            .embed(vec![index::document(&target)])
            .await?
            .pop()
            .unwrap_or_default();
        let hits = self
            .index
            .nearest(&context.tenant_id, &target_vector, DUPLICATE_CANDIDATES)
            .await?;
        let neighbour_ids: Vec<Uuid> = hits
            .iter()
            .filter_map(|hit| Uuid::parse_str(&hit.id).ok())
            .filter(|other| *other != target.id && !candidates.contains_key(other))
            .collect();
        for lead in self
            .store
            .live_among(&context.tenant_id, owner, "", &neighbour_ids)
            .await?
        {
            candidates.insert(lead.id, lead);
        }

        // Only candidates the embedding could still lift over the threshold are embedded.
        let promising: Vec<Lead> = candidates
            .into_values()
            .filter(|lead| {
                duplicates::score(&target, lead, None).0 + duplicates::MAX_EMBEDDING_BONUS
                    >= min_score
            })
            .collect();
        let mut texts = vec![duplicates::person_text(&target)];
        texts.extend(promising.iter().map(duplicates::person_text));
        let vectors = self.index.embed(texts).await?;
        let mut found: Vec<(f32, Vec<String>, Lead)> = promising
            .into_iter()
            .zip(vectors.iter().skip(1))
            .filter_map(|(lead, vector)| {
                let cosine = aida_ai::embed::cosine(&vectors[0], vector);
                let (score, reasons) = duplicates::score(&target, &lead, Some(cosine));
                (score >= min_score).then_some((score, reasons, lead))
            })
            .collect();
        found.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.2.id.cmp(&b.2.id)));
        found.truncate(MAX_DUPLICATES);
        Ok(Response::new(pb::FindDuplicateLeadsResponse {
            duplicates: found
                .into_iter()
                .map(|(score, reasons, lead)| pb::DuplicateCandidate {
                    lead: Some(visible(&lead, &access)),
                    score,
                    reasons,
                })
                .collect(),
        }))
    }

    async fn merge_leads(
        &self,
        request: Request<pb::MergeLeadsRequest>,
    ) -> Result<Response<pb::Lead>, Status> {
        let (context, request) = AuthContext::split(request)?;
        let access = Access::of(&context);
        let survivor_id = domain::parse_id("survivor_id", &request.survivor_id)?;
        let merged_ids = merged_ids(survivor_id, &request.merged_ids)?;
        let request_id = domain::clean_request_id(&request.request_id)?;
        let claim = request_id.as_deref().map(|request_id| MergeClaim {
            request_id,
            fingerprint: merge_fingerprint(survivor_id, &merged_ids),
        });
        let mut involved = vec![survivor_id];
        involved.extend_from_slice(&merged_ids);
        let keys = self.store.event_keys(&context.tenant_id, &involved).await?;
        let (survivor, merged_now) = self
            .store
            .merge(
                &context.tenant_id,
                survivor_id,
                &merged_ids,
                claim,
                &context.subject,
                |survivor, merged| plan_merge(&context, &access, survivor, merged, &keys),
            )
            .await?;
        if merged_now {
            self.relay.wake();
            let mut touched = vec![survivor_id];
            touched.extend_from_slice(&merged_ids);
            self.index.refresh(&context.tenant_id, &touched).await;
        }
        let survivor = reachable(survivor, &access)?;
        Ok(Response::new(visible(&survivor, &access)))
    }
}

/// The merged ids of a request: 1 to 20 distinct lead ids, none the survivor.
fn merged_ids(survivor: Uuid, raw: &[String]) -> Result<Vec<Uuid>, Error> {
    if raw.is_empty() || raw.len() > MAX_MERGED {
        return Err(Error::invalid(
            "merged_ids",
            format!("1 to {MAX_MERGED} lead ids are required"),
        ));
    }
    let mut ids = Vec::with_capacity(raw.len());
    for text in raw {
        let id = domain::parse_id("merged_ids", text)?;
        if id == survivor {
            return Err(Error::invalid(
                "merged_ids",
                "the survivor cannot be merged into itself",
            ));
        }
        if ids.contains(&id) {
            return Err(Error::invalid(
                "merged_ids",
                format!("{id} appears more than once"),
            ));
        }
        ids.push(id);
    }
    Ok(ids)
}

fn merge_fingerprint(survivor: Uuid, merged: &[Uuid]) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(survivor.as_bytes());
    for id in merged {
        hasher.update(id.as_bytes());
    }
    format!("{:x}", hasher.finalize())
}

/// The survivor keeps its values and takes, in the order given, the first non-empty value
/// of the merged leads for each of its empty fields; attributes are united (the survivor's
/// value wins a shared key).
fn merged_fields(survivor: &LeadFields, merged: &[Lead]) -> LeadFields {
    let mut fields = survivor.clone();
    for other in merged {
        let o = &other.fields;
        for (mine, theirs) in [
            (&mut fields.email, &o.email),
            (&mut fields.first_name, &o.first_name),
            (&mut fields.last_name, &o.last_name),
            (&mut fields.company, &o.company),
            (&mut fields.title, &o.title),
            (&mut fields.phone, &o.phone),
            (&mut fields.owner_id, &o.owner_id),
        ] {
            if mine.is_empty() && !theirs.is_empty() {
                mine.clone_from(theirs);
            }
        }
        for (key, value) in &o.attributes {
            fields
                .attributes
                .entry(key.clone())
                .or_insert_with(|| value.clone());
        }
    }
    fields
}

/// `payload` with the contact details of the leads it carries sealed under their keys
/// (`keys`; a lead not among them stays as it is).
pub(crate) fn sealed(mut payload: Payload, keys: &[(Uuid, SubjectKey)]) -> Result<Payload, Error> {
    aida_core::crypto::seal_leads_in(&mut payload, |id| {
        keys.iter()
            .find(|(lead, _)| lead.to_string() == id)
            .map(|(_, key)| key)
    })?;
    Ok(payload)
}

fn plan_merge(
    context: &AuthContext,
    access: &Access,
    survivor: Lead,
    merged: Vec<Lead>,
    keys: &[(Uuid, SubjectKey)],
) -> Result<MergePlan, Error> {
    let survivor = reachable(survivor, access)?;
    survivor.check_not_merged()?;
    let mut merged = merged
        .into_iter()
        .map(|lead| reachable(lead, access))
        .collect::<Result<Vec<_>, _>>()?;
    for lead in &merged {
        lead.check_not_merged()?;
    }
    let mut fields = merged_fields(&survivor.fields, &merged);
    // More attributes than a lead may hold: the survivor's first, then in merge order.
    while fields.attributes.len() > domain::MAX_ATTRIBUTES {
        let extra = fields
            .attributes
            .keys()
            .rev()
            .find(|key| !survivor.fields.attributes.contains_key(*key))
            .cloned();
        match extra {
            Some(key) => fields.attributes.remove(&key),
            None => break,
        };
    }
    let now = now_micros();
    let changed = changed_fields(&survivor, &fields, false);
    let survivor_changed = !changed.is_empty();
    let updated = if survivor_changed {
        Lead {
            fields,
            version: survivor.version + 1,
            update_time: now,
            ..survivor.clone()
        }
    } else {
        survivor.clone()
    };
    for lead in &mut merged {
        lead.status = LeadStatus::Merged;
        lead.merged_into = Some(survivor.id);
        lead.version += 1;
        lead.update_time = now;
    }
    let mut events = vec![outbox::Event::from(envelope(
        context,
        subject_of(survivor.id),
        now,
        sealed(
            Payload::LeadMerged(LeadMerged {
                survivor: Some(to_proto(&updated)),
                merged: merged.iter().map(to_proto).collect(),
            }),
            keys,
        )?,
    ))];
    if survivor_changed {
        events.push(outbox::Event::from(envelope(
            context,
            subject_of(survivor.id),
            now,
            sealed(
                Payload::LeadUpdated(LeadUpdated {
                    lead: Some(to_proto(&updated)),
                    previous_status: status_to_proto(survivor.status) as i32,
                    changed_fields: changed,
                }),
                keys,
            )?,
        )));
    }
    Ok(MergePlan {
        survivor: updated,
        survivor_changed,
        merged,
        events,
    })
}
