//! The gRPC adapter of CommsService: proto messages in, calls of the application service
//! ([`service::Comms`]) out. TrackingService's adapter is in [`tracking`].

mod service;
mod tracking;

pub use service::Comms;
pub use tracking::TrackingApi;

use std::collections::BTreeMap;
use std::sync::Arc;

use aida_core::auth::AuthContext;
use aida_core::events::{envelope, now_micros, timestamp};
use aida_core::outbox::Relay;
use aida_core::pagination::PageTokens;
use aida_core::query::{self, KeyValue};
use aida_core::settings::CommsSettings;
use aida_core::{Error, parse_id};
use aida_proto::aida::comms::v1 as pb;
use aida_proto::aida::comms::v1::comms_service_server::CommsService;
use aida_proto::aida::comms::v1::tracking_service_server::TrackingService;
use aida_proto::aida::events::v1::event_envelope::Payload;
use aida_proto::aida::events::v1::{
    MessageClicked, MessageOpened, MessageReplied, MessageSent, RecipientUnsubscribed,
};
use aida_proto::aida::leads::v1::lead_service_client::LeadServiceClient;
use aida_proto::aida::leads::v1::{GetLeadRequest, Lead as PbLead, LeadStatus as PbLeadStatus};
use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use tonic::transport::Channel as GrpcChannel;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use aida_ai::autonomy::{BusinessOutcome, Review};
use aida_ai::generate::{Purpose, Tone};

use crate::autonomy::store::{Key, Version};
use crate::autonomy::{Autonomy, ReviewInput};
use crate::domain::{
    self, Channel, LinkKind, Message, MessageStatus, Suppression, Template, TrackingClaim,
    escape_html, find_urls, is_machine_open, normalize_address, render,
};
use crate::providers::{EmailSender, SmsSender};
use crate::store::{self, CommsStore};
use crate::writer::{self, DraftState, Writer};

const PAGE_SIZES: query::PageSizes = query::PageSizes {
    default: 50,
    max: 1000,
};
const DRAFT_PAGE_SIZES: query::PageSizes = query::PageSizes {
    default: 50,
    max: 200,
};
const TEMPLATE_WRITABLE: [&str; 4] = ["name", "channel", "subject", "body"];

/// CommsService.
pub struct CommsApi(pub Arc<Comms>);

fn channel_from_proto(value: i32, field: &str, required: bool) -> Result<Option<Channel>, Error> {
    match pb::Channel::try_from(value) {
        Ok(pb::Channel::Email) => Ok(Some(Channel::Email)),
        Ok(pb::Channel::Sms) => Ok(Some(Channel::Sms)),
        Ok(pb::Channel::Unspecified) if !required => Ok(None),
        Ok(pb::Channel::Unspecified) => Err(Error::invalid(
            field,
            "a channel is required (EMAIL or SMS)",
        )),
        Err(_) => Err(Error::invalid(
            field,
            format!("{value} is not a Channel value"),
        )),
    }
}

/// A consent to record, checked: every violation names its field.
fn consent_from_proto(input: &pb::Consent, recorded_by: &str) -> Result<domain::Consent, Error> {
    fn collect<T>(result: &Result<T, Error>, into: &mut Vec<aida_core::FieldViolation>) {
        if let Err(Error::InvalidArgument(found)) = result {
            into.extend(found.iter().cloned());
        }
    }
    let word = |field: &str, value: &str| -> Result<(), Error> {
        let valid = !value.is_empty()
            && value.len() <= 64
            && value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if valid {
            Ok(())
        } else {
            Err(Error::invalid(
                field,
                "1 to 64 lower-case letters, digits, '_' or '-' (e.g. marketing, web_form)",
            ))
        }
    };
    let lead_id = parse_id("consent.lead_id", &input.lead_id, "lead");
    let channel = channel_from_proto(input.channel, "consent.channel", true);
    let state = match pb::ConsentState::try_from(input.state) {
        Ok(pb::ConsentState::Granted) => Ok(domain::ConsentState::Granted),
        Ok(pb::ConsentState::Withdrawn) => Ok(domain::ConsentState::Withdrawn),
        _ => Err(Error::invalid(
            "consent.state",
            "GRANTED or WITHDRAWN is required",
        )),
    };
    let purpose = word("consent.purpose", input.purpose.trim());
    let source = word("consent.source", input.source.trim());
    let proof = if input.proof.chars().count() > 500 || input.proof.chars().any(char::is_control) {
        Err(Error::invalid(
            "consent.proof",
            "at most 500 characters, no control characters",
        ))
    } else {
        Ok(())
    };
    let mut violations = Vec::new();
    collect(&lead_id, &mut violations);
    collect(&channel, &mut violations);
    collect(&purpose, &mut violations);
    collect(&state, &mut violations);
    collect(&source, &mut violations);
    collect(&proof, &mut violations);
    if !violations.is_empty() {
        return Err(Error::InvalidArgument(violations));
    }
    Ok(domain::Consent {
        id: Uuid::now_v7(),
        lead_id: lead_id?,
        channel: channel?.ok_or_else(|| Error::invalid("consent.channel", "required"))?,
        purpose: input.purpose.trim().to_owned(),
        state: state?,
        source: input.source.trim().to_owned(),
        proof: input.proof.clone(),
        recorded_by: recorded_by.to_owned(),
        create_time: now_micros(),
    })
}

fn consent_to_proto(consent: &domain::Consent) -> pb::Consent {
    pb::Consent {
        id: consent.id.to_string(),
        lead_id: consent.lead_id.to_string(),
        channel: channel_to_proto(consent.channel) as i32,
        purpose: consent.purpose.clone(),
        state: match consent.state {
            domain::ConsentState::Granted => pb::ConsentState::Granted,
            domain::ConsentState::Withdrawn => pb::ConsentState::Withdrawn,
        } as i32,
        source: consent.source.clone(),
        proof: consent.proof.clone(),
        create_time: Some(timestamp(consent.create_time)),
        recorded_by: consent.recorded_by.clone(),
    }
}

fn channel_to_proto(channel: Channel) -> pb::Channel {
    match channel {
        Channel::Email => pb::Channel::Email,
        Channel::Sms => pb::Channel::Sms,
    }
}

fn status_to_proto(status: MessageStatus) -> pb::MessageStatus {
    match status {
        MessageStatus::Sending => pb::MessageStatus::Sending,
        MessageStatus::Sent => pb::MessageStatus::Sent,
        MessageStatus::Failed => pb::MessageStatus::Failed,
    }
}

fn template_to_proto(template: &Template) -> pb::Template {
    pb::Template {
        id: template.id.to_string(),
        name: template.name.clone(),
        channel: channel_to_proto(template.channel) as i32,
        subject: template.subject.clone(),
        body: template.body.clone(),
        create_time: Some(timestamp(template.create_time)),
        update_time: Some(timestamp(template.update_time)),
        etag: template.etag(),
    }
}

fn count(value: i64) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

fn message_to_proto(message: &Message) -> pb::Message {
    pb::Message {
        id: message.id.to_string(),
        lead_id: message.lead_id.to_string(),
        channel: channel_to_proto(message.channel) as i32,
        to: message.to.clone(),
        subject: message.subject.clone(),
        body: message.body.clone(),
        template_id: message.template_id.clone(),
        status: status_to_proto(message.status) as i32,
        failure_reason: message.failure_reason.clone(),
        open_count: count(message.open_count),
        machine_open_count: count(message.machine_open_count),
        click_count: count(message.click_count),
        replied: message.replied,
        send_time: message.send_time.map(timestamp),
        first_open_time: message.first_open_time.map(timestamp),
        reply_time: message.reply_time.map(timestamp),
        create_time: Some(timestamp(message.create_time)),
    }
}

/// A row of a newest-first list (messages, drafts): its creation time and id continue the
/// next page.
trait Created {
    fn created(&self) -> (chrono::DateTime<chrono::Utc>, Uuid);
}

impl Created for Message {
    fn created(&self) -> (chrono::DateTime<chrono::Utc>, Uuid) {
        (self.create_time, self.id)
    }
}

impl Created for writer::Draft {
    fn created(&self) -> (chrono::DateTime<chrono::Utc>, Uuid) {
        (self.create_time, self.id)
    }
}

fn newest_key<T: Created>(last: &T) -> (Vec<KeyValue>, Uuid) {
    let (time, id) = last.created();
    (vec![KeyValue::Time(time)], id)
}

fn suppression_to_proto(suppression: &Suppression) -> pb::Suppression {
    pb::Suppression {
        address: suppression.address.clone(),
        reason: suppression.reason.clone(),
        create_time: Some(timestamp(suppression.create_time)),
    }
}

fn system_context(tenant: &str, subject: &str) -> AuthContext {
    AuthContext::system(tenant, subject, "", None)
}

pub(crate) fn draft_key(draft: &writer::Draft) -> Key {
    Key {
        agent: writer::AGENT.into(),
        action: draft.action(),
        segment: draft.segment.clone(),
    }
}

pub(crate) fn draft_closed(draft: &writer::Draft) -> Error {
    Error::FailedPrecondition {
        reason: "DRAFT_CLOSED",
        message: format!(
            "draft {} was already {}",
            draft.id,
            match draft.state {
                DraftState::Sending => "being sent".to_owned(),
                state => state.as_str().to_lowercase(),
            }
        ),
    }
}

/// The review a person gave `draft` at `now`, for the writer's ledger.
pub(crate) fn review_of(
    draft: &writer::Draft,
    review: Review,
    sent: bool,
    now: chrono::DateTime<chrono::Utc>,
    message: Option<Uuid>,
) -> ReviewInput {
    let writer = &draft.provenance.writer;
    ReviewInput {
        key: draft_key(draft),
        subject: match message {
            Some(message) => format!("messages/{message}"),
            None => format!("drafts/{}", draft.id),
        },
        review,
        review_ms: (now - draft.create_time).num_milliseconds().max(0),
        version: Version {
            model: writer.model.clone(),
            prompt: writer.prompt_version.clone(),
        },
        sent,
        request_id: format!("draft:{}", draft.id),
    }
}

fn purpose_to_proto(purpose: Purpose) -> pb::Purpose {
    match purpose {
        Purpose::FirstTouch => pb::Purpose::FirstTouch,
        Purpose::FollowUp => pb::Purpose::FollowUp,
        Purpose::ReEngage => pb::Purpose::ReEngage,
        Purpose::MeetingRequest => pb::Purpose::MeetingRequest,
    }
}

fn tone_to_proto(tone: Tone) -> pb::Tone {
    match tone {
        Tone::Friendly => pb::Tone::Friendly,
        Tone::Formal => pb::Tone::Formal,
        Tone::Brief => pb::Tone::Brief,
    }
}

fn draft_to_proto(draft: &writer::Draft) -> pb::Draft {
    let writer = &draft.provenance.writer;
    pb::Draft {
        id: draft.id.to_string(),
        lead_id: draft.lead_id.to_string(),
        purpose: purpose_to_proto(draft.purpose) as i32,
        tone: tone_to_proto(draft.tone) as i32,
        subject: draft.subject.clone(),
        body: draft.body.clone(),
        provenance: Some(pb::Provenance {
            generator: writer.generator.clone(),
            model: writer.model.clone(),
            prompt_version: writer.prompt_version.clone(),
            prompt_hash: writer.prompt_hash.clone(),
            template: writer.template.clone(),
            prompt_tokens: i32::try_from(writer.usage.prompt_tokens).unwrap_or(i32::MAX),
            completion_tokens: i32::try_from(writer.usage.completion_tokens).unwrap_or(i32::MAX),
            latency_ms: i64::try_from(writer.latency_ms).unwrap_or(i64::MAX),
            embedding_model: draft.provenance.embedding_model.clone(),
            examples: draft
                .provenance
                .examples
                .iter()
                .map(|example| pb::DraftExample {
                    message_id: example.message_id.clone(),
                    similarity: example.similarity,
                })
                .collect(),
        }),
        state: match draft.state {
            DraftState::Pending => pb::DraftState::Pending,
            DraftState::Sent => pb::DraftState::Sent,
            DraftState::Discarded => pb::DraftState::Discarded,
            DraftState::Scheduled | DraftState::Sending => pb::DraftState::Scheduled,
            DraftState::Vetoed => pb::DraftState::Vetoed,
        } as i32,
        autonomy_level: i32::from(draft.autonomy_level) + 1,
        message_id: draft
            .message_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        edited: draft.edited,
        approver: draft.approver.clone(),
        create_time: Some(timestamp(draft.create_time)),
        update_time: Some(timestamp(draft.update_time)),
        segment: draft.segment.clone(),
        requester: draft.requester.clone(),
        scheduled_send_time: draft.send_after.map(timestamp),
    }
}

#[tonic::async_trait]
impl CommsService for CommsApi {
    async fn create_template(
        &self,
        request: Request<pb::CreateTemplateRequest>,
    ) -> Result<Response<pb::Template>, Status> {
        let context = AuthContext::of(&request)?.clone();
        let input = aida_core::required(
            "template",
            request.into_inner().template,
            "a template is required",
        )?;
        let channel =
            channel_from_proto(input.channel, "template.channel", true)?.unwrap_or(Channel::Email);
        let (name, subject, body) =
            domain::validate_template(&input.name, channel, &input.subject, &input.body)?;
        let now = now_micros();
        let template = Template {
            id: Uuid::now_v7(),
            tenant_id: context.tenant_id.clone(),
            name,
            channel,
            subject,
            body,
            version: 1,
            create_time: now,
            update_time: now,
        };
        self.0.store.insert_template(&template).await?;
        Ok(Response::new(template_to_proto(&template)))
    }

    async fn get_template(
        &self,
        request: Request<pb::GetTemplateRequest>,
    ) -> Result<Response<pb::Template>, Status> {
        let context = AuthContext::of(&request)?;
        let id = parse_id("id", &request.get_ref().id, "template")?;
        Ok(Response::new(template_to_proto(
            &self.0.store.template(&context.tenant_id, id).await?,
        )))
    }

    async fn list_templates(
        &self,
        request: Request<pb::ListTemplatesRequest>,
    ) -> Result<Response<pb::ListTemplatesResponse>, Status> {
        let context = AuthContext::of(&request)?;
        let list = request.get_ref();
        let paging = self
            .0
            .paging(PAGE_SIZES.of(list.page_size)?, "", &store::TEMPLATE_ORDER);
        let after = paging.resume(&list.page_token)?;
        let (templates, more) = self
            .0
            .store
            .templates(&context.tenant_id, paging.size, after.as_ref())
            .await?;
        let next_page_token = paging.next(&templates, more, |last| {
            (vec![KeyValue::Text(last.name.clone())], last.id)
        })?;
        Ok(Response::new(pb::ListTemplatesResponse {
            templates: templates.iter().map(template_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_template(
        &self,
        request: Request<pb::UpdateTemplateRequest>,
    ) -> Result<Response<pb::Template>, Status> {
        let (context, request) = AuthContext::split(request)?;
        let input = aida_core::required("template", request.template, "a template is required")?;
        let id = parse_id("template.id", &input.id, "template")?;
        let populated = [
            ("name", !input.name.is_empty()),
            ("channel", input.channel != 0),
            ("subject", !input.subject.is_empty()),
            ("body", !input.body.is_empty()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name));
        let requested =
            query::update_paths(request.update_mask.as_ref(), populated, &TEMPLATE_WRITABLE)?;
        let channel = channel_from_proto(
            input.channel,
            "template.channel",
            requested.iter().any(|path| path == "channel"),
        )?;
        let updated = self
            .0
            .store
            .modify_template(&context.tenant_id, id, |current| {
                current.check_etag(&input.etag)?;
                let mut next = current.clone();
                for path in &requested {
                    match path.as_str() {
                        "name" => next.name = input.name.clone(),
                        "subject" => next.subject = input.subject.clone(),
                        "body" => next.body = input.body.clone(),
                        "channel" => next.channel = channel.unwrap_or(current.channel),
                        _ => {}
                    }
                }
                let (name, subject, body) =
                    domain::validate_template(&next.name, next.channel, &next.subject, &next.body)?;
                next.name = name;
                next.subject = subject;
                next.body = body;
                if next != current {
                    next.version += 1;
                    next.update_time = now_micros();
                }
                Ok(Some(next))
            })
            .await?
            .ok_or_else(|| Error::internal("update returned no template"))?;
        Ok(Response::new(template_to_proto(&updated)))
    }

    async fn delete_template(
        &self,
        request: Request<pb::DeleteTemplateRequest>,
    ) -> Result<Response<()>, Status> {
        let context = AuthContext::of(&request)?;
        let id = parse_id("id", &request.get_ref().id, "template")?;
        self.0
            .store
            .modify_template(&context.tenant_id, id, |_| Ok(None))
            .await?;
        Ok(Response::new(()))
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let (context, request) = AuthContext::split(request)?;
        let comms = &self.0;
        let lead_id = parse_id("lead_id", &request.lead_id, "lead")?;
        aida_core::idempotency::request_id(&request.request_id)?;
        if !request.request_id.is_empty()
            && let Some(existing) = comms
                .store
                .message_by_request(&context.tenant_id, &request.request_id)
                .await?
        {
            return Ok(Response::new(message_to_proto(&existing)));
        }
        let mut request = request;
        let draft = if request.draft_id.is_empty() {
            None
        } else {
            let draft = comms.open_draft(&context, &request, lead_id).await?;
            if request.subject.trim().is_empty() {
                request.subject.clone_from(&draft.subject);
            }
            if request.body.trim().is_empty() {
                request.body.clone_from(&draft.body);
            }
            request.channel = pb::Channel::Email as i32;
            Some(draft)
        };
        let requested_channel = channel_from_proto(request.channel, "channel", false)?;
        let template = if request.template_id.is_empty() {
            None
        } else {
            let id = parse_id("template_id", &request.template_id, "template")?;
            Some(comms.store.template(&context.tenant_id, id).await.map_err(
                |error| match error {
                    Error::NotFound { .. } => Error::invalid("template_id", "no such template"),
                    other => other,
                },
            )?)
        };
        let channel = match (&template, requested_channel) {
            (Some(template), Some(channel)) if template.channel != channel => {
                return Err(Error::invalid(
                    "channel",
                    format!("the template is for {}", template.channel.as_str()),
                )
                .into());
            }
            (Some(template), _) => template.channel,
            (None, Some(channel)) => channel,
            (None, None) => {
                return Err(
                    Error::invalid("channel", "a channel is required without a template").into(),
                );
            }
        };
        if template.is_none() {
            let (_, _, _) =
                domain::validate_template("message", channel, &request.subject, &request.body)
                    .map_err(|error| match error {
                        Error::InvalidArgument(violations) => Error::InvalidArgument(
                            violations
                                .into_iter()
                                .map(|violation| {
                                    aida_core::FieldViolation::new(
                                        violation.field.replace("template.", ""),
                                        violation.description,
                                    )
                                })
                                .collect(),
                        ),
                        other => other,
                    })?;
        }
        for (key, value) in &request.variables {
            if key.is_empty() || key.len() > 64 || value.chars().count() > 2000 {
                return Err(Error::invalid(
                    format!("variables[{key}]"),
                    "keys up to 64 and values up to 2000 characters",
                )
                .into());
            }
        }

        let lead = comms.lead(&context, lead_id).await?;
        let finished = comms
            .send_to(
                &context,
                &lead,
                channel,
                template.as_ref(),
                &request,
                draft.as_ref(),
            )
            .await?;
        Ok(Response::new(message_to_proto(&finished)))
    }

    async fn get_message(
        &self,
        request: Request<pb::GetMessageRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let context = AuthContext::of(&request)?;
        let id = parse_id("id", &request.get_ref().id, "message")?;
        Ok(Response::new(message_to_proto(
            &self.0.store.message(&context.tenant_id, id).await?,
        )))
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let context = AuthContext::of(&request)?;
        let list = request.get_ref();
        let listed = self
            .0
            .newest_first(PAGE_SIZES, list, store::MESSAGE_FIELDS)?;
        let (messages, more) = self.0.store.messages(&context.tenant_id, &listed).await?;
        let next_page_token = listed.paging.next(&messages, more, newest_key)?;
        Ok(Response::new(pb::ListMessagesResponse {
            messages: messages.iter().map(message_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn record_reply(
        &self,
        request: Request<pb::RecordReplyRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let (context, request) = AuthContext::split(request)?;
        let id = parse_id("id", &request.id, "message")?;
        if request.body.chars().count() > domain::MAX_BODY_CHARS {
            return Err(Error::invalid(
                "body",
                format!("at most {} characters", domain::MAX_BODY_CHARS),
            )
            .into());
        }
        let message = self
            .0
            .store
            .modify_message(&context.tenant_id, id, |current| {
                if current.status != MessageStatus::Sent {
                    return Err(Error::FailedPrecondition {
                        reason: "NOT_SENT",
                        message: format!("message {id} was not sent"),
                    });
                }
                if current.replied {
                    return Ok(None);
                }
                let now = now_micros();
                let mut next = current.clone();
                next.replied = true;
                next.reply_time = Some(now);
                let event = envelope(
                    &context,
                    format!("messages/{id}"),
                    now,
                    Payload::MessageReplied(MessageReplied {
                        message_id: id.to_string(),
                        lead_id: current.lead_id.to_string(),
                    }),
                );
                Ok(Some((next, Some(event.into()))))
            })
            .await?;
        self.0.relay.wake();
        if message.channel == Channel::Email {
            self.0
                .draft_outcome(&context, message.id, BusinessOutcome::Replied)
                .await?;
            self.0.remember_replied(&context, &message).await;
        }
        Ok(Response::new(message_to_proto(&message)))
    }

    async fn add_suppression(
        &self,
        request: Request<pb::AddSuppressionRequest>,
    ) -> Result<Response<pb::Suppression>, Status> {
        let context = AuthContext::of(&request)?.clone();
        let input = aida_core::required(
            "suppression",
            request.into_inner().suppression,
            "a suppression is required",
        )?;
        let address = normalize_address(&input.address);
        if address.is_empty()
            || address.chars().count() > 254
            || address.chars().any(char::is_control)
        {
            return Err(Error::invalid(
                "suppression.address",
                "an e-mail address or phone number of at most 254 characters",
            )
            .into());
        }
        let reason = input.reason.trim();
        if reason.chars().count() > 200 {
            return Err(Error::invalid("suppression.reason", "at most 200 characters").into());
        }
        let suppression = Suppression {
            address,
            reason: if reason.is_empty() {
                "manual".into()
            } else {
                reason.to_owned()
            },
            create_time: now_micros(),
        };
        let stored = self
            .0
            .store
            .add_suppression(&context.tenant_id, &suppression)
            .await?;
        Ok(Response::new(suppression_to_proto(&stored)))
    }

    async fn list_suppressions(
        &self,
        request: Request<pb::ListSuppressionsRequest>,
    ) -> Result<Response<pb::ListSuppressionsResponse>, Status> {
        let context = AuthContext::of(&request)?;
        let list = request.get_ref();
        let paging = self.0.paging(
            PAGE_SIZES.of(list.page_size)?,
            "",
            &store::SUPPRESSION_ORDER,
        );
        let after = paging.resume_key(&list.page_token)?;
        let (suppressions, more) = self
            .0
            .store
            .suppressions(&context.tenant_id, paging.size, after.as_deref())
            .await?;
        let next_page_token = paging.next_key(&suppressions, more, |last| {
            vec![KeyValue::Text(last.address.clone())]
        })?;
        Ok(Response::new(pb::ListSuppressionsResponse {
            suppressions: suppressions.iter().map(suppression_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn generate_message(
        &self,
        request: Request<pb::GenerateMessageRequest>,
    ) -> Result<Response<pb::Draft>, Status> {
        let (context, input) = AuthContext::split(request)?;
        let comms = &self.0;
        let mut violations = Vec::new();
        let lead_id = match Uuid::parse_str(&input.lead_id) {
            Ok(id) => Some(id),
            Err(_) => {
                violations.push(aida_core::FieldViolation::new(
                    "lead_id",
                    if input.lead_id.is_empty() {
                        "required"
                    } else {
                        "not a lead id"
                    },
                ));
                None
            }
        };
        let purpose = match pb::Purpose::try_from(input.purpose) {
            Ok(pb::Purpose::FirstTouch) => Some(Purpose::FirstTouch),
            Ok(pb::Purpose::FollowUp) => Some(Purpose::FollowUp),
            Ok(pb::Purpose::ReEngage) => Some(Purpose::ReEngage),
            Ok(pb::Purpose::MeetingRequest) => Some(Purpose::MeetingRequest),
            Ok(pb::Purpose::Unspecified) | Err(_) => {
                violations.push(aida_core::FieldViolation::new(
                    "purpose",
                    "required: FIRST_TOUCH, FOLLOW_UP, RE_ENGAGE or MEETING_REQUEST",
                ));
                None
            }
        };
        let tone = match pb::Tone::try_from(input.tone) {
            Ok(pb::Tone::Unspecified | pb::Tone::Friendly) => Some(Tone::Friendly),
            Ok(pb::Tone::Formal) => Some(Tone::Formal),
            Ok(pb::Tone::Brief) => Some(Tone::Brief),
            Err(_) => {
                violations.push(aida_core::FieldViolation::new(
                    "tone",
                    format!("{} is not a Tone value", input.tone),
                ));
                None
            }
        };
        if let Err(Error::InvalidArgument(invalid)) =
            aida_core::idempotency::request_id(&input.request_id)
        {
            violations.extend(invalid);
        }
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations).into());
        }
        let (Some(lead_id), Some(purpose), Some(tone)) = (lead_id, purpose, tone) else {
            return Err(Error::internal("validated").into());
        };
        if !input.request_id.is_empty()
            && let Some(existing) = comms
                .writer
                .drafts
                .by_request(&context.tenant_id, &input.request_id)
                .await?
        {
            return Ok(Response::new(draft_to_proto(&existing)));
        }
        let lead = comms.lead(&context, lead_id).await?;
        if lead.status == PbLeadStatus::Rejected as i32 {
            return Err(Error::FailedPrecondition {
                reason: "LEAD_REJECTED",
                message: format!("lead {lead_id} was rejected; it is not contacted"),
            }
            .into());
        }
        let segment = writer::segment_of(&lead);
        let level = comms
            .autonomy
            .effective_level(
                &context.tenant_id,
                &Key {
                    agent: writer::AGENT.into(),
                    action: writer::action(purpose),
                    segment: segment.clone(),
                },
            )
            .await?;
        let stored = comms
            .writer
            .draft(
                &context.tenant_id,
                &lead,
                writer::Request {
                    purpose,
                    tone,
                    segment,
                    level,
                    requester: context.subject.clone(),
                    request_id: input.request_id,
                    state: DraftState::Pending,
                    send_delay: None,
                },
            )
            .await?;
        Ok(Response::new(draft_to_proto(&stored)))
    }

    async fn get_draft(
        &self,
        request: Request<pb::GetDraftRequest>,
    ) -> Result<Response<pb::Draft>, Status> {
        let context = AuthContext::of(&request)?;
        let draft = self.draft_of(context, &request.get_ref().id).await?;
        Ok(Response::new(draft_to_proto(&draft)))
    }

    async fn discard_draft(
        &self,
        request: Request<pb::DiscardDraftRequest>,
    ) -> Result<Response<pb::Draft>, Status> {
        let context = AuthContext::of(&request)?.clone();
        let draft = self.draft_of(&context, &request.get_ref().id).await?;
        // Discarding a scheduled draft stops the agent: a veto.
        let closed = self.stop_draft(&context, &draft).await?;
        Ok(Response::new(draft_to_proto(&closed)))
    }

    async fn delete_suppression(
        &self,
        request: Request<pb::DeleteSuppressionRequest>,
    ) -> Result<Response<()>, Status> {
        let context = AuthContext::of(&request)?;
        let address = normalize_address(&request.get_ref().address);
        if address.is_empty() {
            return Err(Error::invalid("address", "an address is required").into());
        }
        self.0
            .store
            .delete_suppression(&context.tenant_id, &address)
            .await?;
        Ok(Response::new(()))
    }

    async fn record_consent(
        &self,
        request: Request<pb::RecordConsentRequest>,
    ) -> Result<Response<pb::Consent>, Status> {
        let (context, request) = AuthContext::split(request)?;
        let input = aida_core::required("consent", request.consent, "a consent is required")?;
        let consent = consent_from_proto(&input, &context.subject)?;
        // The lead as the caller may see it: another tenant's, or a colleague's for a
        // sales rep, is NOT_FOUND.
        self.0.lead(&context, consent.lead_id).await?;
        self.0
            .store
            .record_consent(&context.tenant_id, &consent)
            .await?;
        Ok(Response::new(consent_to_proto(&consent)))
    }

    async fn list_consents(
        &self,
        request: Request<pb::ListConsentsRequest>,
    ) -> Result<Response<pb::ListConsentsResponse>, Status> {
        let (context, list) = AuthContext::split(request)?;
        let lead_id = parse_id("lead_id", &list.lead_id, "lead")?;
        let paging = self
            .0
            .paging(PAGE_SIZES.of(list.page_size)?, "", &store::CONSENT_ORDER);
        let after = paging.resume(&list.page_token)?;
        self.0.lead(&context, lead_id).await?;
        let (consents, more) = self
            .0
            .store
            .consents(&context.tenant_id, lead_id, paging.size, after.as_ref())
            .await?;
        let next_page_token = paging.next(&consents, more, |last| {
            (vec![KeyValue::Time(last.create_time)], last.id)
        })?;
        Ok(Response::new(pb::ListConsentsResponse {
            consents: consents.iter().map(consent_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn list_drafts(
        &self,
        request: Request<pb::ListDraftsRequest>,
    ) -> Result<Response<pb::ListDraftsResponse>, Status> {
        let context = AuthContext::of(&request)?;
        let list = request.get_ref();
        let listed = self
            .0
            .newest_first(DRAFT_PAGE_SIZES, list, writer::DRAFT_FIELDS)?;
        let (drafts, more) = self
            .0
            .writer
            .drafts
            .list(&context.tenant_id, &listed)
            .await?;
        let next_page_token = listed.paging.next(&drafts, more, newest_key)?;
        Ok(Response::new(pb::ListDraftsResponse {
            drafts: drafts.iter().map(draft_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn veto_draft(
        &self,
        request: Request<pb::VetoDraftRequest>,
    ) -> Result<Response<pb::Draft>, Status> {
        let context = AuthContext::of(&request)?.clone();
        let draft = self.draft_of(&context, &request.get_ref().id).await?;
        if draft.state == DraftState::Pending {
            return Err(Error::FailedPrecondition {
                reason: "NOT_SCHEDULED",
                message: format!(
                    "draft {} waits for a person and is not scheduled: discard it instead",
                    draft.id
                ),
            }
            .into());
        }
        let vetoed = self.stop_draft(&context, &draft).await?;
        Ok(Response::new(draft_to_proto(&vetoed)))
    }
}

impl CommsApi {
    /// A person stops an open draft: a pending one is discarded (a rejection), a scheduled
    /// one vetoed; either way the review goes into the writer's ledger. A draft no longer
    /// open (sent, being sent, already stopped) is FAILED_PRECONDITION.
    async fn stop_draft(
        &self,
        context: &AuthContext,
        draft: &writer::Draft,
    ) -> Result<writer::Draft, Error> {
        let drafts = &self.0.writer.drafts;
        let (to, review) = match draft.state {
            DraftState::Pending => (DraftState::Discarded, Review::Rejected),
            DraftState::Scheduled => (DraftState::Vetoed, Review::Vetoed),
            _ => return Err(draft_closed(draft)),
        };
        let now = now_micros();
        if !drafts
            .close(draft, draft.state, to, None, false, &context.subject, now)
            .await?
        {
            let current = drafts.get(&context.tenant_id, draft.id).await?;
            return Err(draft_closed(&current));
        }
        self.0
            .autonomy
            .review(context, review_of(draft, review, false, now, None))
            .await?;
        drafts.get(&context.tenant_id, draft.id).await
    }

    async fn draft_of(&self, context: &AuthContext, id: &str) -> Result<writer::Draft, Error> {
        let id = parse_id("id", id, "draft")?;
        self.0.writer.drafts.get(&context.tenant_id, id).await
    }
}
