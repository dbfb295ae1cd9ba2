//! The application service of CommsService: what CommsService and TrackingService share
//! (sending with every check, composing e-mails with tracked links, reading leads from
//! LeadService with the caller's token, the drafts' reviews and outcomes).

use super::*;

/// What CommsService and TrackingService share.
pub struct Comms {
    pub store: CommsStore,
    pub relay: Relay,
    pub page_tokens: PageTokens,
    pub tracking_tokens: PageTokens,
    pub settings: CommsSettings,
    pub email: Arc<dyn EmailSender>,
    pub sms: Arc<dyn SmsSender>,
    pub leads: LeadServiceClient<GrpcChannel>,
    pub writer: Arc<Writer>,
    pub autonomy: Arc<Autonomy>,
}

/// The `List-Unsubscribe` header (RFC 2369).
#[derive(Clone)]
struct ListUnsubscribe(String);

impl Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }
    fn parse(value: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(value.to_owned()))
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// The `List-Unsubscribe-Post` header (RFC 8058 one-click).
#[derive(Clone)]
struct ListUnsubscribePost;

impl Header for ListUnsubscribePost {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self)
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".to_owned())
    }
}

impl Comms {
    /// A page of `size` rows of the list `filter` in the fixed order `order`.
    pub(crate) fn paging(
        &self,
        size: u32,
        filter: &str,
        order: &[query::OrderTerm],
    ) -> query::Paging<'_> {
        query::Paging::new(&self.page_tokens, size, filter, order)
    }

    /// The page `request` asks for of a list over `fields`, newest first (messages and
    /// drafts).
    pub(crate) fn newest_first<'r>(
        &self,
        sizes: query::PageSizes,
        request: &'r impl query::ListRequest,
        fields: &[query::Field],
    ) -> Result<query::ListQuery<'_, 'r>, Error> {
        query::ListQuery::read(
            &self.page_tokens,
            sizes,
            request,
            fields,
            "create_time desc",
        )
    }

    /// Sends to `lead` what `request` (already validated) asks for: the checks every
    /// message passes (rejected lead, address, suppression, frequency cap), then delivery,
    /// the message's record and `comms.sent`, and the draft's closing.
    pub(crate) async fn send_to(
        &self,
        context: &AuthContext,
        lead: &PbLead,
        channel: Channel,
        template: Option<&Template>,
        request: &pb::SendMessageRequest,
        draft: Option<&writer::Draft>,
    ) -> Result<Message, Error> {
        let comms = self;
        let lead_id = parse_id("lead_id", &lead.id, "lead")?;
        if lead.status == PbLeadStatus::Rejected as i32 {
            return Err(Error::FailedPrecondition {
                reason: "LEAD_REJECTED",
                message: format!("lead {lead_id} was rejected; it is not contacted"),
            });
        }
        let to = match channel {
            Channel::Email => lead.email.clone(),
            Channel::Sms => lead.phone.clone(),
        };
        if to.is_empty() {
            return Err(Error::FailedPrecondition {
                reason: "NO_ADDRESS",
                message: format!(
                    "lead {lead_id} has no {}",
                    if channel == Channel::Email {
                        "e-mail address"
                    } else {
                        "phone number"
                    }
                ),
            });
        }
        if comms
            .store
            .is_suppressed(&context.tenant_id, &normalize_address(&to))
            .await?
        {
            if let Some(draft) = draft {
                // The writer's draft tried to reach a suppressed person: a critical incident.
                comms
                    .autonomy
                    .incident(
                        context,
                        &draft_key(draft),
                        aida_ai::autonomy::Incident::Critical,
                        &format!("draft {} was addressed to a suppressed recipient", draft.id),
                    )
                    .await?;
            }
            return Err(Error::FailedPrecondition {
                reason: "SUPPRESSED",
                message: format!("{to} is on the suppression list"),
            });
        }
        let consent = comms
            .store
            .consent_in_force(&context.tenant_id, lead_id, channel, domain::MARKETING)
            .await?;
        if consent == Some(domain::ConsentState::Withdrawn) {
            if let Some(draft) = draft {
                // Like a suppressed address: the writer must never reach this person.
                comms
                    .autonomy
                    .incident(
                        context,
                        &draft_key(draft),
                        aida_ai::autonomy::Incident::Critical,
                        &format!(
                            "draft {} was addressed to a lead who withdrew consent",
                            draft.id
                        ),
                    )
                    .await?;
            }
            return Err(Error::FailedPrecondition {
                reason: "CONSENT_WITHDRAWN",
                message: format!(
                    "lead {lead_id} withdrew {} consent for {}",
                    domain::MARKETING,
                    channel.as_str()
                ),
            });
        }
        let now = now_micros();
        let recent = comms
            .store
            .recent_messages(
                &context.tenant_id,
                lead_id,
                now - chrono::Duration::hours(24),
            )
            .await?;
        if recent >= i64::from(comms.settings.max_messages_per_lead_per_day) {
            return Err(Error::FailedPrecondition {
                reason: "FREQUENCY_CAP",
                message: format!(
                    "lead {lead_id} already received {recent} messages in 24 hours (cap {})",
                    comms.settings.max_messages_per_lead_per_day
                ),
            });
        }

        let mut variables: BTreeMap<String, String> = BTreeMap::from([
            ("first_name".to_owned(), lead.first_name.clone()),
            ("last_name".to_owned(), lead.last_name.clone()),
            ("company".to_owned(), lead.company.clone()),
            ("title".to_owned(), lead.title.clone()),
            ("email".to_owned(), lead.email.clone()),
        ]);
        variables.extend(request.variables.clone());
        let (subject, body) = match template {
            Some(template) => (
                render(&template.subject, &variables, "subject")?,
                render(&template.body, &variables, "body")?,
            ),
            None => (request.subject.trim().to_owned(), request.body.clone()),
        };
        let links: Vec<String> = if channel == Channel::Email {
            find_urls(&body)
                .into_iter()
                .map(|(start, end)| body[start..end].to_owned())
                .collect()
        } else {
            Vec::new()
        };
        let message = Message {
            id: Uuid::now_v7(),
            tenant_id: context.tenant_id.clone(),
            lead_id,
            channel,
            to: to.clone(),
            subject,
            body,
            template_id: template
                .map(|template| template.id.to_string())
                .unwrap_or_default(),
            links,
            status: MessageStatus::Sending,
            failure_reason: String::new(),
            open_count: 0,
            machine_open_count: 0,
            click_count: 0,
            replied: false,
            send_time: None,
            first_open_time: None,
            reply_time: None,
            request_id: request.request_id.clone(),
            create_time: now,
        };
        if let Some(first) = comms.store.insert_sending(&message).await? {
            // Sent before under this request id (a retry, or an agent resuming after a
            // stop): the draft closes now if it did not then.
            if let Some(draft) = draft {
                match comms.close_sent_draft(context, draft, &first).await {
                    Ok(())
                    | Err(Error::FailedPrecondition {
                        reason: "DRAFT_CLOSED",
                        ..
                    }) => {}
                    Err(error) => return Err(error),
                }
            }
            return Ok(first);
        }

        let delivered = match channel {
            Channel::Email => {
                let name = format!("{} {}", lead.first_name, lead.last_name)
                    .trim()
                    .to_owned();
                let email = comms.compose_email(&message, &name)?;
                comms.email.send(email).await
            }
            Channel::Sms => {
                comms
                    .sms
                    .send(&message.id.to_string(), &message.to, &message.body)
                    .await
            }
        };
        let finished = comms
            .store
            .modify_message(&context.tenant_id, message.id, |current| {
                let mut next = current.clone();
                let event = match &delivered {
                    Ok(()) => {
                        let sent_at = now_micros();
                        next.status = MessageStatus::Sent;
                        next.send_time = Some(sent_at);
                        Some(envelope(
                            context,
                            format!("messages/{}", next.id),
                            sent_at,
                            Payload::MessageSent(MessageSent {
                                message_id: next.id.to_string(),
                                lead_id: next.lead_id.to_string(),
                                channel: channel_to_proto(next.channel) as i32,
                                template_id: next.template_id.clone(),
                            }),
                        ))
                    }
                    Err(error) => {
                        tracing::warn!(message = %next.id, %error, "delivery failed");
                        next.status = MessageStatus::Failed;
                        next.failure_reason = error.to_string();
                        None
                    }
                };
                Ok(Some((next, event.map(Into::into))))
            })
            .await?;
        comms.relay.wake();
        if let Some(draft) = draft {
            comms.close_sent_draft(context, draft, &finished).await?;
        }
        Ok(finished)
    }

    /// The pending draft `request` names, checked against the lead and channel.
    pub(crate) async fn open_draft(
        &self,
        context: &AuthContext,
        request: &pb::SendMessageRequest,
        lead_id: Uuid,
    ) -> Result<writer::Draft, Error> {
        let id = parse_id("draft_id", &request.draft_id, "draft")?;
        let draft = self
            .writer
            .drafts
            .get(&context.tenant_id, id)
            .await
            .map_err(|error| match error {
                Error::NotFound { .. } => Error::invalid("draft_id", "no such draft"),
                other => other,
            })?;
        if draft.lead_id != lead_id {
            return Err(Error::invalid("draft_id", "the draft is for another lead"));
        }
        if !request.template_id.is_empty() {
            return Err(Error::invalid(
                "template_id",
                "a draft is sent without a template",
            ));
        }
        if request.channel == pb::Channel::Sms as i32 {
            return Err(Error::invalid("channel", "a draft is an e-mail"));
        }
        if !matches!(draft.state, DraftState::Pending | DraftState::Scheduled) {
            return Err(draft_closed(&draft));
        }
        // The writer's level at the moment of acting: at L0 (shadow, or switched off) its
        // drafts are kept in the log and never reach a person outside.
        let level = self
            .autonomy
            .effective_level(&context.tenant_id, &draft_key(&draft))
            .await?;
        if level == aida_ai::autonomy::Level::Shadow {
            return Err(Error::FailedPrecondition {
                reason: "AUTONOMY_SHADOW",
                message: format!(
                    "the writer is at L0 (shadow or switched off) for {}: its drafts are logged, not sent",
                    draft.action()
                ),
            });
        }
        let mut draft = draft;
        if draft.state == DraftState::Scheduled {
            // A person takes the scheduled draft over from the agent: from now on it is
            // theirs to send, and the agent's scheduler no longer sees it.
            if !self
                .writer
                .drafts
                .shift(
                    &draft,
                    DraftState::Scheduled,
                    DraftState::Pending,
                    None,
                    now_micros(),
                )
                .await?
            {
                let current = self.writer.drafts.get(&context.tenant_id, draft.id).await?;
                return Err(draft_closed(&current));
            }
            draft.state = DraftState::Pending;
        }
        Ok(draft)
    }

    /// A draft was sent as `message`: it closes, and the person's review (unchanged or
    /// edited) and a bounce go into the writer's ledger.
    pub(crate) async fn close_sent_draft(
        &self,
        context: &AuthContext,
        draft: &writer::Draft,
        message: &Message,
    ) -> Result<(), Error> {
        let edited = message.subject != draft.subject || message.body != draft.body;
        let now = now_micros();
        if !self
            .writer
            .drafts
            .close(
                draft,
                draft.state,
                DraftState::Sent,
                Some(message.id),
                edited,
                &context.subject,
                now,
            )
            .await?
        {
            return Err(draft_closed(draft));
        }
        let review = if edited {
            Review::Edited
        } else {
            Review::ApprovedUnchanged
        };
        self.autonomy
            .review(
                context,
                review_of(draft, review, true, now, Some(message.id)),
            )
            .await?;
        if message.status == MessageStatus::Failed {
            self.autonomy
                .outcome_of_request(
                    context,
                    &format!("draft:{}", draft.id),
                    BusinessOutcome::Bounced,
                )
                .await?;
        }
        Ok(())
    }

    /// What came of a message sent from a draft goes into the writer's ledger.
    pub(crate) async fn draft_outcome(
        &self,
        context: &AuthContext,
        message: Uuid,
        outcome: BusinessOutcome,
    ) -> Result<(), Error> {
        if let Some(draft) = self
            .writer
            .drafts
            .by_message(&context.tenant_id, message)
            .await?
        {
            match self
                .autonomy
                .outcome_of_request(context, &format!("draft:{}", draft.id), outcome)
                .await
            {
                // The draft's message already has another outcome (a reply after an
                // unsubscribe, say): the first one stands.
                Err(Error::FailedPrecondition { message, .. }) => {
                    tracing::info!(%message, "outcome of a drafted message kept");
                }
                other => other?,
            }
        }
        Ok(())
    }

    /// A replied e-mail becomes an example for leads like its own. The index is derived
    /// data: a failure is logged, the reply stays recorded.
    pub(crate) async fn remember_replied(&self, context: &AuthContext, message: &Message) {
        let remembered = async {
            let lead = self.lead(context, message.lead_id).await?;
            self.writer
                .remember_replied(&context.tenant_id, message.id, &lead)
                .await
        }
        .await;
        if let Err(error) = remembered {
            tracing::warn!(message = %message.id, %error, "replied message not indexed as an example");
        }
    }

    pub(crate) fn link(&self, claim: &TrackingClaim, path: &str) -> Result<String, Error> {
        let token = self.tracking_tokens.encode(claim)?;
        Ok(format!(
            "{}/t/{path}/{token}",
            self.settings.public_base_url.trim_end_matches('/')
        ))
    }

    /// The lead, read from LeadService with the caller's own token.
    pub(crate) async fn lead(&self, context: &AuthContext, lead_id: Uuid) -> Result<PbLead, Error> {
        let request = context.forward(GetLeadRequest {
            id: lead_id.to_string(),
        });
        match self.leads.clone().get_lead(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(Error::from_peer("LeadService", &status, || {
                Error::not_found("lead", lead_id.to_string())
            })),
        }
    }

    /// The e-mail as sent: a plain and an HTML part with tracked links, an open pixel and
    /// an unsubscribe link, plus the RFC 8058 one-click headers.
    pub(crate) fn compose_email(
        &self,
        message: &Message,
        recipient_name: &str,
    ) -> Result<lettre::Message, Error> {
        let now = chrono::Utc::now().timestamp();
        let days = |days: u32| now + i64::from(days) * 86_400;
        let claim = |kind, link| TrackingClaim {
            tenant_id: message.tenant_id.clone(),
            message_id: message.id,
            kind,
            link,
            expires: days(if kind == LinkKind::Unsubscribe {
                self.settings.unsubscribe_link_ttl_days
            } else {
                self.settings.tracking_link_ttl_days
            }),
        };
        let unsubscribe = self.link(&claim(LinkKind::Unsubscribe, None), "u")?;
        let pixel = self.link(&claim(LinkKind::Open, None), "o")?;
        let mut plain = String::new();
        let mut html =
            String::from("<!doctype html><html><body><div style=\"white-space:pre-wrap\">");
        let mut cursor = 0;
        for (index, (start, end)) in find_urls(&message.body).into_iter().enumerate() {
            let tracked = self.link(&claim(LinkKind::Click, Some(index)), "c")?;
            plain.push_str(&message.body[cursor..start]);
            plain.push_str(&tracked);
            html.push_str(&escape_html(&message.body[cursor..start]));
            html.push_str(&format!(
                "<a href=\"{}\">{}</a>",
                escape_html(&tracked),
                escape_html(&message.body[start..end])
            ));
            cursor = end;
        }
        plain.push_str(&message.body[cursor..]);
        plain.push_str(&format!("\n\n--\nUnsubscribe: {unsubscribe}\n"));
        html.push_str(&escape_html(&message.body[cursor..]));
        html.push_str(&format!(
            "</div><p style=\"font-size:12px;color:#777\"><a href=\"{}\">Unsubscribe</a></p><img src=\"{}\" width=\"1\" height=\"1\" alt=\"\"></body></html>",
            escape_html(&unsubscribe),
            escape_html(&pixel)
        ));
        let from: Mailbox = self
            .settings
            .from_address
            .parse()
            .map_err(|error| Error::internal(format!("comms.from_address: {error}")))?;
        let address = message.to.parse().map_err(|_| Error::FailedPrecondition {
            reason: "BAD_ADDRESS",
            message: format!("'{}' cannot receive e-mail", message.to),
        })?;
        let name = Some(recipient_name.to_owned()).filter(|name| !name.is_empty());
        lettre::Message::builder()
            .from(from)
            .to(Mailbox::new(name, address))
            .subject(message.subject.clone())
            .message_id(Some(format!("<{}@aida>", message.id)))
            .header(ListUnsubscribe(format!("<{unsubscribe}>")))
            .header(ListUnsubscribePost)
            .multipart(
                MultiPart::alternative()
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_PLAIN)
                            .body(plain),
                    )
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_HTML)
                            .body(html),
                    ),
            )
            .map_err(|error| Error::internal(format!("compose e-mail: {error}")))
    }
}
