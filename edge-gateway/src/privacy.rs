//! PrivacyService, served by the edge: a data-subject export gathered from every service
//! with the caller's own token (each service applies its own tenant and role rules), as
//! one typed document with a manifest of its sources.

use std::future::Future;

use aida_core::auth::AuthContext;
use aida_core::{Error, FieldViolation};
use aida_proto::aida::audit::v1::ListAuditRecordsRequest;
use aida_proto::aida::audit::v1::audit_service_client::AuditServiceClient;
use aida_proto::aida::comms::v1::comms_service_client::CommsServiceClient;
use aida_proto::aida::comms::v1::{
    ListConsentsRequest, ListDraftsRequest, ListMessagesRequest, ListSuppressionsRequest,
};
use aida_proto::aida::deals::v1::ListDealsRequest;
use aida_proto::aida::deals::v1::deal_service_client::DealServiceClient;
use aida_proto::aida::leads::v1::lead_service_client::LeadServiceClient;
use aida_proto::aida::leads::v1::{GetLeadRequest, GetLeadScoreRequest, Lead, ListLeadsRequest};
use aida_proto::aida::privacy::v1::privacy_service_server::PrivacyService;
use aida_proto::aida::privacy::v1::{ExportSource, ExportSubjectDataRequest, SubjectExport};
use tonic::{Code, Request, Response, Status};

use crate::upstream::{Upstream, Upstreams};

/// The schema of the export document.
pub const SCHEMA_VERSION: &str = "aida.privacy.v1.SubjectExport/1";
/// Items per page the export asks each service for.
const PAGE: i32 = 500;

pub struct PrivacyApi {
    pub upstreams: Upstreams,
}

/// Who the request is about, in the form the services store it.
enum Selector {
    Email(String),
    Phone(String),
    Lead(String),
}

impl Selector {
    /// Exactly one of `email`, `phone`, `lead_id`: none, or two, is INVALID_ARGUMENT naming
    /// the fields.
    fn of(request: &ExportSubjectDataRequest) -> Result<Self, Error> {
        let given: Vec<&str> = [
            ("email", &request.email),
            ("phone", &request.phone),
            ("lead_id", &request.lead_id),
        ]
        .into_iter()
        .filter(|(_, value)| !value.trim().is_empty())
        .map(|(field, _)| field)
        .collect();
        match given.as_slice() {
            [] => Err(Error::InvalidArgument(
                ["email", "phone", "lead_id"]
                    .into_iter()
                    .map(|field| {
                        FieldViolation::new(
                            field,
                            "exactly one of email, phone or lead_id is required",
                        )
                    })
                    .collect(),
            )),
            ["email"] => {
                let email = aida_core::contact::normalize_email(&request.email)
                    .map_err(|message| Error::invalid("email", message))?;
                Ok(Self::Email(literal("email", email)?))
            }
            ["phone"] => {
                let phone = aida_core::contact::normalize_phone(&request.phone)
                    .map_err(|message| Error::invalid("phone", message))?;
                Ok(Self::Phone(literal("phone", phone)?))
            }
            ["lead_id"] => {
                aida_core::parse_id("lead_id", &request.lead_id, "lead")?;
                Ok(Self::Lead(request.lead_id.trim().to_owned()))
            }
            several => Err(Error::InvalidArgument(
                several
                    .iter()
                    .map(|field| {
                        FieldViolation::new(
                            *field,
                            "only one of email, phone or lead_id may be given",
                        )
                    })
                    .collect(),
            )),
        }
    }
}

/// `value` for an AIP-160 string literal: refused when it could change the filter
/// (quotes, backslashes, the `*` wildcard).
fn literal(field: &str, value: String) -> Result<String, Error> {
    if value.chars().any(|c| matches!(c, '"' | '\\' | '*')) {
        return Err(Error::invalid(
            field,
            "must not contain '\"', '\\\\' or '*'",
        ));
    }
    Ok(value)
}

/// Every page of a list, in order.
async fn all_pages<T, F, Fut>(mut page: F) -> Result<Vec<T>, Status>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), Status>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (mut found, next) = page(token).await?;
        items.append(&mut found);
        if next.is_empty() {
            return Ok(items);
        }
        token = next;
    }
}

impl PrivacyApi {
    fn upstream(&self, grpc_service: &str) -> Result<Upstream, Status> {
        self.upstreams.channel(grpc_service).ok_or_else(|| {
            Status::from(Error::Unavailable(format!("{grpc_service} has no replica")))
        })
    }

    /// The selector's leads, and the leads merged into them.
    async fn leads(&self, context: &AuthContext, selector: &Selector) -> Result<Vec<Lead>, Status> {
        let client = LeadServiceClient::new(self.upstream("aida.leads.v1.LeadService")?);
        let list = |filter: String| {
            let client = client.clone();
            all_pages(move |page_token| {
                let mut client = client.clone();
                let request = context.forward(ListLeadsRequest {
                    page_size: PAGE,
                    page_token,
                    filter: filter.clone(),
                    order_by: String::new(),
                });
                async move {
                    let page = client.list_leads(request).await?.into_inner();
                    Ok((page.leads, page.next_page_token))
                }
            })
        };
        let mut leads = match selector {
            Selector::Email(email) => list(format!("email = \"{email}\"")).await?,
            Selector::Phone(phone) => list(format!("phone = \"{phone}\"")).await?,
            Selector::Lead(id) => {
                let request = context.forward(GetLeadRequest { id: id.clone() });
                match client.clone().get_lead(request).await {
                    Ok(lead) => vec![lead.into_inner()],
                    Err(status) if status.code() == Code::NotFound => Vec::new(),
                    Err(status) => return Err(status),
                }
            }
        };
        let mut merged = Vec::new();
        for lead in &leads {
            for found in list(format!("merged_into = \"{}\"", lead.id)).await? {
                if !leads
                    .iter()
                    .chain(&merged)
                    .any(|known: &Lead| known.id == found.id)
                {
                    merged.push(found);
                }
            }
        }
        leads.append(&mut merged);
        Ok(leads)
    }
}

#[tonic::async_trait]
impl PrivacyService for PrivacyApi {
    async fn export_subject_data(
        &self,
        request: Request<ExportSubjectDataRequest>,
    ) -> Result<Response<SubjectExport>, Status> {
        let context = AuthContext::of(&request)?.clone();
        let selector = Selector::of(request.get_ref())?;
        let context = &context;
        let leads = self.leads(context, &selector).await?;

        let leads_client = LeadServiceClient::new(self.upstream("aida.leads.v1.LeadService")?);
        let deals_client = DealServiceClient::new(self.upstream("aida.deals.v1.DealService")?);
        let comms_client = CommsServiceClient::new(self.upstream("aida.comms.v1.CommsService")?);
        let audit_client = AuditServiceClient::new(self.upstream("aida.audit.v1.AuditService")?);
        let mut export = SubjectExport {
            schema_version: SCHEMA_VERSION.to_owned(),
            export_time: Some(aida_core::events::timestamp(aida_core::events::now_micros())),
            ..SubjectExport::default()
        };
        for lead in &leads {
            let by_lead = format!("lead_id = \"{}\"", lead.id);
            let score = leads_client
                .clone()
                .get_lead_score(context.forward(GetLeadScoreRequest {
                    lead_id: lead.id.clone(),
                }))
                .await;
            match score {
                Ok(score) => export.scores.push(score.into_inner()),
                // Not scored (yet): nothing to export.
                Err(status) if status.code() == Code::NotFound => {}
                Err(status) => return Err(status),
            }
            export.deals.extend(
                all_pages(|page_token| {
                    let mut client = deals_client.clone();
                    let request = context.forward(ListDealsRequest {
                        page_size: PAGE,
                        page_token,
                        filter: by_lead.clone(),
                        order_by: String::new(),
                    });
                    async move {
                        let page = client.list_deals(request).await?.into_inner();
                        Ok((page.deals, page.next_page_token))
                    }
                })
                .await?,
            );
            export.messages.extend(
                all_pages(|page_token| {
                    let mut client = comms_client.clone();
                    let request = context.forward(ListMessagesRequest {
                        page_size: PAGE,
                        page_token,
                        filter: by_lead.clone(),
                    });
                    async move {
                        let page = client.list_messages(request).await?.into_inner();
                        Ok((page.messages, page.next_page_token))
                    }
                })
                .await?,
            );
            export.drafts.extend(
                all_pages(|page_token| {
                    let mut client = comms_client.clone();
                    let request = context.forward(ListDraftsRequest {
                        page_size: 200,
                        page_token,
                        filter: by_lead.clone(),
                    });
                    async move {
                        let page = client.list_drafts(request).await?.into_inner();
                        Ok((page.drafts, page.next_page_token))
                    }
                })
                .await?,
            );
            export.consents.extend(
                all_pages(|page_token| {
                    let mut client = comms_client.clone();
                    let request = context.forward(ListConsentsRequest {
                        lead_id: lead.id.clone(),
                        page_size: PAGE,
                        page_token,
                    });
                    async move {
                        let page = client.list_consents(request).await?.into_inner();
                        Ok((page.consents, page.next_page_token))
                    }
                })
                .await?,
            );
            export.audit_records.extend(
                all_pages(|page_token| {
                    let mut client = audit_client.clone();
                    let request = context.forward(ListAuditRecordsRequest {
                        page_size: PAGE,
                        page_token,
                        filter: format!("resource = \"leads/{}\"", lead.id),
                    });
                    async move {
                        let page = client.list_audit_records(request).await?.into_inner();
                        Ok((page.audit_records, page.next_page_token))
                    }
                })
                .await?,
            );
        }
        // Suppressions are kept by address: the person's addresses, as comms spells them.
        let addresses: Vec<String> = leads
            .iter()
            .flat_map(|lead| [lead.email.to_lowercase(), lead.phone.replace(' ', "")])
            .filter(|address| !address.is_empty())
            .collect();
        if !addresses.is_empty() {
            let suppressions = all_pages(|page_token| {
                let mut client = comms_client.clone();
                let request = context.forward(ListSuppressionsRequest {
                    page_size: 1000,
                    page_token,
                });
                async move {
                    let page = client.list_suppressions(request).await?.into_inner();
                    Ok((page.suppressions, page.next_page_token))
                }
            })
            .await?;
            export.suppressions = suppressions
                .into_iter()
                .filter(|suppression| addresses.contains(&suppression.address))
                .collect();
        }
        export.leads = leads;
        let count = |items: usize| i64::try_from(items).unwrap_or(i64::MAX);
        export.manifest = [
            ("leads", "LeadService", export.leads.len()),
            ("scores", "LeadService", export.scores.len()),
            ("deals", "DealService", export.deals.len()),
            ("messages", "CommsService", export.messages.len()),
            ("drafts", "CommsService", export.drafts.len()),
            ("consents", "CommsService", export.consents.len()),
            ("suppressions", "CommsService", export.suppressions.len()),
            ("audit_records", "AuditService", export.audit_records.len()),
        ]
        .into_iter()
        .map(|(source, service, items)| ExportSource {
            source: source.to_owned(),
            service: service.to_owned(),
            count: count(items),
        })
        .collect();
        Ok(Response::new(export))
    }
}
