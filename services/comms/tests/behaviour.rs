//! CommsService's behaviour: on PostgreSQL + JetStream with a real SMTP server and an HTTP
//! SMS provider on loopback, and on SQLite + the in-process bus with the embedded mail and
//! SMS directories. LeadService runs beside it (CommsService reads leads from it).

use aida_core::testing::{assert_violates, violated_fields};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aida_core::bus::COMMS_STREAM;
use aida_core::db::{Count, Database, Sql};
use aida_core::testing::{Backend, RunningServer, SmtpSink, TestEnv, eml_files, eventually};
use aida_proto::aida::comms::v1::comms_service_client::CommsServiceClient;
use aida_proto::aida::comms::v1::tracking_service_client::TrackingServiceClient;
use aida_proto::aida::comms::v1::{
    AddSuppressionRequest, Channel, Consent, ConsentState, CreateTemplateRequest,
    GetMessageRequest, ListConsentsRequest, ListMessagesRequest, ListSuppressionsRequest,
    MessageStatus, RecordConsentRequest, RecordReplyRequest, SendMessageRequest, Suppression,
    Template, TrackClickRequest, TrackOpenRequest, UnsubscribeRequest,
};
use aida_proto::aida::events::v1::EventEnvelope;
use aida_proto::aida::events::v1::event_envelope::Payload;
use aida_proto::aida::leads::v1::lead_service_client::LeadServiceClient;
use aida_proto::aida::leads::v1::{CaptureLeadRequest, Lead, RejectLeadRequest};
use tonic::Code;
use tonic::transport::Channel as GrpcChannel;

/// SMS bodies the HTTP provider received.
type SmsLog = Arc<Mutex<Vec<serde_json::Value>>>;

struct App {
    env: TestEnv,
    leads: RunningServer,
    comms: RunningServer,
    db: Database,
    mail_dir: PathBuf,
    sms: Option<SmsLog>,
    _smtp: Option<SmtpSink>,
}

async fn sms_provider(log: SmsLog) -> String {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/sms",
        post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let log = log.clone();
            async move {
                let refuse = body["to"].as_str().is_some_and(|to| to.ends_with("0000"));
                log.lock().expect("log").push(body);
                if refuse {
                    axum::http::StatusCode::BAD_REQUEST
                } else {
                    axum::http::StatusCode::ACCEPTED
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}/sms")
}

impl App {
    async fn spawn(backend: Backend) -> Self {
        let mut env = TestEnv::new(backend).await;
        env.settings.comms.machine_open_window_secs = 0;
        env.settings.comms.public_base_url = "https://crm.example.com".into();
        let (smtp, mail_dir, sms) = match backend {
            Backend::Production => {
                let smtp = SmtpSink::start();
                env.settings.comms.smtp_url = Some(secrecy::SecretString::from(smtp.url()));
                let log: SmsLog = Arc::default();
                env.settings.comms.sms_url = Some(sms_provider(log.clone()).await);
                let dir = smtp.dir().to_path_buf();
                (Some(smtp), dir, Some(log))
            }
            Backend::Embedded => (None, env.settings.data_dir.join("mail"), None),
        };
        let leads_context = env
            .context(aida_leads::SERVICE, aida_leads::migrations())
            .await;
        let leads = RunningServer::start(|listener, shutdown| {
            aida_leads::serve(leads_context, listener, shutdown)
        })
        .await;
        env.settings.services.leads_url = format!("http://{}", leads.address);
        let context = env
            .context(aida_comms::SERVICE, aida_comms::migrations())
            .await;
        let db = context.db.clone();
        let comms = RunningServer::start(|listener, shutdown| {
            aida_comms::serve(context, listener, shutdown)
        })
        .await;
        Self {
            env,
            leads,
            comms,
            db,
            mail_dir,
            sms,
            _smtp: smtp,
        }
    }

    async fn client(&self) -> CommsServiceClient<GrpcChannel> {
        CommsServiceClient::new(self.comms.channel().await)
    }

    async fn tracking(&self) -> TrackingServiceClient<GrpcChannel> {
        TrackingServiceClient::new(self.comms.channel().await)
    }

    async fn lead(&self, tenant: &str, email: &str, phone: &str) -> Lead {
        LeadServiceClient::new(self.leads.channel().await)
            .capture_lead(self.env.request(
                tenant,
                CaptureLeadRequest {
                    lead: Some(Lead {
                        email: email.into(),
                        phone: phone.into(),
                        first_name: "Grace".into(),
                        company: "Navy".into(),
                        ..Lead::default()
                    }),
                    request_id: String::new(),
                },
            ))
            .await
            .expect("capture")
            .into_inner()
    }

    async fn send(
        &self,
        tenant: &str,
        request: SendMessageRequest,
    ) -> Result<aida_proto::aida::comms::v1::Message, tonic::Status> {
        self.client()
            .await
            .send_message(self.env.request(tenant, request))
            .await
            .map(tonic::Response::into_inner)
    }

    /// An e-mail template `name` as `tenant`: CreateTemplate's answer.
    async fn email_template(
        &self,
        tenant: &str,
        name: &str,
        subject: &str,
        body: &str,
    ) -> Result<Template, tonic::Status> {
        let template = Template {
            name: name.to_owned(),
            channel: Channel::Email as i32,
            subject: subject.to_owned(),
            body: body.to_owned(),
            ..Template::default()
        };
        let request = CreateTemplateRequest {
            template: Some(template),
        };
        self.client()
            .await
            .create_template(self.env.request(tenant, request))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn emails(&self) -> Vec<String> {
        eml_files(&self.mail_dir)
    }

    async fn wait_for_emails(&self, count: usize) -> Vec<String> {
        assert!(
            eventually(Duration::from_secs(10), || async {
                self.emails().await.len() >= count
            })
            .await,
            "{count} e-mails"
        );
        self.emails().await
    }

    async fn wait_for_comms_events(&self, count: usize) -> Vec<(String, EventEnvelope)> {
        self.env.bus.wait_for_events(COMMS_STREAM, count).await
    }

    async fn count(&self, table: &str) -> i64 {
        let count: Count = self
            .db
            .fetch_one(Sql::new(format!("SELECT COUNT(*) AS count FROM {table}")))
            .await
            .expect("count");
        count.count
    }
}

fn email(lead: &Lead, subject: &str, body: &str) -> SendMessageRequest {
    SendMessageRequest {
        lead_id: lead.id.clone(),
        channel: Channel::Email as i32,
        subject: subject.into(),
        body: body.into(),
        ..Default::default()
    }
}

/// The value of `name` in the token of a tracking URL `…/t/<kind>/<token>` found in `text`.
fn tracking_token(text: &str, kind: &str) -> String {
    let marker = format!("https://crm.example.com/t/{kind}/");
    let start = text
        .find(&marker)
        .unwrap_or_else(|| panic!("no /t/{kind}/ link in:\n{text}"))
        + marker.len();
    text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect()
}

/// The e-mail with quoted-printable soft breaks undone, so URLs read whole.
fn unfold(email: &str) -> String {
    email
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=")
}

async fn a_templated_email_is_delivered_with_tracked_links_and_one_click_unsubscribe(
    backend: Backend,
) {
    let app = App::spawn(backend).await;
    let lead = app.lead("acme", "grace@example.com", "").await;
    let template = app
        .email_template(
            "acme",
            "First touch",
            "Hello {{first_name}} at {{company}}",
            "Dear {{first_name}},\nour {{offer}} is at https://example.com/offer?x=1.\nBest",
        )
        .await
        .expect("template");
    let sent = app
        .send(
            "acme",
            SendMessageRequest {
                lead_id: lead.id.clone(),
                template_id: template.id.clone(),
                variables: [("offer".to_owned(), "new plan".to_owned())].into(),
                ..Default::default()
            },
        )
        .await
        .expect("send");
    assert_eq!(sent.status, MessageStatus::Sent as i32);
    assert_eq!(sent.subject, "Hello Grace at Navy");
    assert!(
        sent.body
            .contains("our new plan is at https://example.com/offer?x=1.")
    );

    let emails = app.wait_for_emails(1).await;
    let raw = unfold(&emails[0]);
    assert!(raw.contains("Subject: Hello Grace at Navy"), "{raw}");
    assert!(raw.contains("grace@example.com"));
    assert!(
        raw.contains("List-Unsubscribe: <https://crm.example.com/t/u/"),
        "{raw}"
    );
    assert!(raw.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));
    // People see where a link goes; the link itself passes through the click tracker.
    assert!(raw.contains(">https://example.com/offer?x=1</a>"), "{raw}");
    assert!(
        !raw.contains("href=\"https://example.com/offer"),
        "the href is tracked"
    );
    tracking_token(&raw, "o");
    tracking_token(&raw, "c");

    let events = app.wait_for_comms_events(1).await;
    assert_eq!(events[0].0, "comms.sent");
    let Some(Payload::MessageSent(payload)) = &events[0].1.payload else {
        panic!("not comms.sent")
    };
    assert_eq!(
        (payload.message_id.as_str(), payload.lead_id.as_str()),
        (sent.id.as_str(), lead.id.as_str())
    );
}

async fn opens_clicks_and_replies_are_recorded_once_each_and_published(backend: Backend) {
    let app = App::spawn(backend).await;
    let lead = app.lead("acme", "ada@example.com", "").await;
    let sent = app
        .send(
            "acme",
            email(&lead, "Offer", "See https://example.com/pricing today"),
        )
        .await
        .expect("send");
    let raw = unfold(&app.wait_for_emails(1).await[0]);
    let (open, click) = (tracking_token(&raw, "o"), tracking_token(&raw, "c"));
    let mut tracking = app.tracking().await;
    let machine = tracking
        .track_open(TrackOpenRequest {
            token: open.clone(),
            user_agent: "Mozilla/5.0 (via ggpht.com GoogleImageProxy)".into(),
        })
        .await
        .expect("proxy open")
        .into_inner();
    assert!(machine.machine);
    let human = tracking
        .track_open(TrackOpenRequest {
            token: open.clone(),
            user_agent: "Mozilla/5.0 (Macintosh)".into(),
        })
        .await
        .expect("open")
        .into_inner();
    assert!(!human.machine);
    tracking
        .track_open(TrackOpenRequest {
            token: open,
            user_agent: "Mozilla/5.0 (Macintosh)".into(),
        })
        .await
        .expect("second open");
    let target = tracking
        .track_click(TrackClickRequest {
            token: click,
            user_agent: String::new(),
        })
        .await
        .expect("click")
        .into_inner();
    assert_eq!(target.target_url, "https://example.com/pricing");
    let mut client = app.client().await;
    client
        .record_reply(app.env.request(
            "acme",
            RecordReplyRequest {
                id: sent.id.clone(),
                body: "Interested!".into(),
            },
        ))
        .await
        .expect("reply");
    client
        .record_reply(app.env.request(
            "acme",
            RecordReplyRequest {
                id: sent.id.clone(),
                body: "Again".into(),
            },
        ))
        .await
        .expect("second reply");

    let message = client
        .get_message(app.env.request(
            "acme",
            GetMessageRequest {
                id: sent.id.clone(),
            },
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        (
            message.open_count,
            message.machine_open_count,
            message.click_count
        ),
        (2, 1, 1)
    );
    assert!(message.replied && message.first_open_time.is_some() && message.reply_time.is_some());

    let events = app.wait_for_comms_events(6).await;
    let types: Vec<&str> = events.iter().map(|(subject, _)| subject.as_str()).collect();
    assert_eq!(
        types,
        [
            "comms.sent",
            "comms.opened",
            "comms.opened",
            "comms.opened",
            "comms.clicked",
            "comms.replied"
        ]
    );
    let opens: Vec<(bool, bool)> = events
        .iter()
        .filter_map(|(_, event)| match &event.payload {
            Some(Payload::MessageOpened(opened)) => Some((opened.machine, opened.first)),
            _ => None,
        })
        .collect();
    assert_eq!(opens, [(true, false), (false, true), (false, false)]);
}

async fn unsubscribing_suppresses_the_address_and_nothing_more_is_sent(backend: Backend) {
    let app = App::spawn(backend).await;
    let lead = app.lead("acme", "Leave@Example.com", "").await;
    app.send("acme", email(&lead, "Hi", "Hello"))
        .await
        .expect("send");
    let raw = unfold(&app.wait_for_emails(1).await[0]);
    let token = tracking_token(&raw, "u");
    let unsubscribed = app
        .tracking()
        .await
        .unsubscribe(UnsubscribeRequest {
            token: token.clone(),
        })
        .await
        .expect("unsubscribe")
        .into_inner();
    // The response names nobody: a forwarded link must not reveal the recipient.
    assert_eq!(prost::Message::encoded_len(&unsubscribed), 0);
    app.tracking()
        .await
        .unsubscribe(UnsubscribeRequest { token })
        .await
        .expect("one-click again is fine");
    let listed = app
        .client()
        .await
        .list_suppressions(app.env.request("acme", ListSuppressionsRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.suppressions.len(), 1);
    assert_eq!(listed.suppressions[0].reason, "unsubscribed");

    let refused = app
        .send("acme", email(&lead, "Hi again", "Hello"))
        .await
        .expect_err("suppressed");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.emails().await.len(), 1, "nothing more was sent");
    let events = app.wait_for_comms_events(2).await;
    assert_eq!(
        events
            .iter()
            .filter(|(subject, _)| subject == "comms.unsubscribed")
            .count(),
        1
    );
}

async fn rejected_leads_suppressed_addresses_and_capped_leads_are_not_contacted(backend: Backend) {
    let app = App::spawn(backend).await;
    let rejected = app.lead("acme", "no@example.com", "").await;
    LeadServiceClient::new(app.leads.channel().await)
        .reject_lead(app.env.request(
            "acme",
            RejectLeadRequest {
                id: rejected.id.clone(),
                reason: "spam".into(),
                etag: String::new(),
            },
        ))
        .await
        .expect("reject");
    let status = app
        .send("acme", email(&rejected, "Hi", "Hello"))
        .await
        .expect_err("rejected lead");
    assert_eq!(status.code(), Code::FailedPrecondition);

    let suppressed = app.lead("acme", "blocked@example.com", "").await;
    app.client()
        .await
        .add_suppression(app.env.request(
            "acme",
            AddSuppressionRequest {
                suppression: Some(Suppression {
                    address: " BLOCKED@example.com".into(),
                    ..Suppression::default()
                }),
            },
        ))
        .await
        .expect("suppress");
    let status = app
        .send("acme", email(&suppressed, "Hi", "Hello"))
        .await
        .expect_err("suppressed");
    assert_eq!(status.code(), Code::FailedPrecondition);

    let busy = app.lead("acme", "busy@example.com", "").await;
    for index in 0..3 {
        app.send("acme", email(&busy, &format!("Mail {index}"), "Hello"))
            .await
            .expect("under the cap");
    }
    let capped = app
        .send("acme", email(&busy, "One too many", "Hello"))
        .await
        .expect_err("capped");
    assert_eq!(capped.code(), Code::FailedPrecondition);
    use tonic_types::StatusExt;
    assert_eq!(
        capped.get_details_error_info().expect("info").reason,
        "FREQUENCY_CAP"
    );

    let other_tenant = app
        .send("globex", email(&busy, "Hi", "Hello"))
        .await
        .expect_err("another tenant's lead");
    assert_eq!(other_tenant.code(), Code::NotFound);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.emails().await.len(), 3, "only the three capped mails");
}

async fn bad_input_and_forged_links_are_invalid_argument_naming_the_field(backend: Backend) {
    let app = App::spawn(backend).await;
    let lead = app.lead("acme", "valid@example.com", "").await;
    let mut client = app.client().await;
    for (name, request, field) in [
        (
            "no lead",
            SendMessageRequest {
                channel: Channel::Email as i32,
                subject: "s".into(),
                body: "b".into(),
                ..Default::default()
            },
            "lead_id",
        ),
        (
            "bad lead id",
            SendMessageRequest {
                lead_id: "42".into(),
                ..email(&lead, "s", "b")
            },
            "lead_id",
        ),
        (
            "no channel",
            SendMessageRequest {
                channel: 0,
                ..email(&lead, "s", "b")
            },
            "channel",
        ),
        (
            "unknown channel",
            SendMessageRequest {
                channel: 9,
                ..email(&lead, "s", "b")
            },
            "channel",
        ),
        ("no subject", email(&lead, "", "b"), "subject"),
        ("no body", email(&lead, "s", " "), "body"),
        (
            "unknown template",
            SendMessageRequest {
                template_id: uuid::Uuid::now_v7().to_string(),
                ..email(&lead, "s", "b")
            },
            "template_id",
        ),
    ] {
        let status = client
            .send_message(app.env.request("acme", request))
            .await
            .expect_err(name);
        assert_violates(&status, field, name);
    }
    let bad_template = app
        .email_template("acme", "t", "", "Hi {{Name}}")
        .await
        .expect_err("template");
    assert_eq!(
        violated_fields(&bad_template),
        ["template.subject", "template.body"]
    );
    let template = app
        .email_template("acme", "t", "s", "Hi {{nickname}}")
        .await
        .expect("template");
    let missing = client
        .send_message(app.env.request(
            "acme",
            SendMessageRequest {
                lead_id: lead.id.clone(),
                template_id: template.id,
                ..Default::default()
            },
        ))
        .await
        .expect_err("missing variable");
    assert_eq!(violated_fields(&missing), ["variables"]);
    let mut tracking = app.tracking().await;
    for token in ["", "abc", "eyJ0IjoiYWNtZSJ9.AAAAAAAAAAAAAAAAAAAAAA"] {
        let status = tracking
            .track_open(TrackOpenRequest {
                token: token.into(),
                user_agent: String::new(),
            })
            .await
            .expect_err(token);
        assert_eq!(violated_fields(&status), ["token"], "{token:?}");
    }
    assert_eq!(app.count("messages").await, 0, "nothing was recorded");
    assert!(app.emails().await.is_empty(), "nothing was sent");
}

async fn a_retried_send_with_the_same_request_id_sends_once(backend: Backend) {
    let app = App::spawn(backend).await;
    let lead = app.lead("acme", "once@example.com", "").await;
    let request = SendMessageRequest {
        request_id: "send-1".into(),
        ..email(&lead, "Once", "Only once")
    };
    let first = app.send("acme", request.clone()).await.expect("first");
    let again = app.send("acme", request).await.expect("retry");
    assert_eq!(first.id, again.id);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.emails().await.len(), 1);
    let listed = app
        .client()
        .await
        .list_messages(app.env.request(
            "acme",
            ListMessagesRequest {
                filter: format!("lead_id = \"{}\"", lead.id),
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.messages.len(), 1);
}

async fn an_sms_reaches_the_provider_and_a_refusal_is_recorded_as_failed(backend: Backend) {
    let app = App::spawn(backend).await;
    let lead = app.lead("acme", "", "+44 20 7946 0958").await;
    let sent = app
        .send(
            "acme",
            SendMessageRequest {
                lead_id: lead.id.clone(),
                channel: Channel::Sms as i32,
                body: "Your demo is at 3pm".into(),
                ..Default::default()
            },
        )
        .await
        .expect("sms");
    assert_eq!(
        (sent.status, sent.to.as_str()),
        (MessageStatus::Sent as i32, "+442079460958")
    );
    match &app.sms {
        Some(log) => {
            let received = log.lock().expect("log").clone();
            assert_eq!(received.len(), 1);
            assert_eq!(received[0]["to"], "+442079460958");
            assert_eq!(received[0]["body"], "Your demo is at 3pm");
            let refused_lead = app.lead("acme", "", "+1 202 555 0000").await;
            let refused = app
                .send(
                    "acme",
                    SendMessageRequest {
                        lead_id: refused_lead.id,
                        channel: Channel::Sms as i32,
                        body: "Hi".into(),
                        ..Default::default()
                    },
                )
                .await
                .expect("recorded");
            assert_eq!(refused.status, MessageStatus::Failed as i32);
            assert!(
                refused.failure_reason.contains("400"),
                "{}",
                refused.failure_reason
            );
        }
        None => {
            let file = app
                .env
                .settings
                .data_dir
                .join("sms")
                .join(format!("{}.json", sent.id));
            let content: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(file).expect("sms file"))
                    .expect("json");
            assert_eq!(content["to"], "+442079460958");
        }
    }
    let events = app.wait_for_comms_events(1).await;
    assert_eq!(events.len(), 1, "only the delivered SMS is published");
}

/// A consent entry for `lead`.
fn consent(
    lead: &Lead,
    channel: Channel,
    state: ConsentState,
    source: &str,
) -> RecordConsentRequest {
    RecordConsentRequest {
        consent: Some(Consent {
            lead_id: lead.id.clone(),
            channel: channel as i32,
            purpose: "marketing".into(),
            state: state as i32,
            source: source.into(),
            proof: "https://example.com/signup?form=v3".into(),
            ..Consent::default()
        }),
    }
}

impl App {
    async fn consents(&self, tenant: &str, lead: &Lead) -> Vec<Consent> {
        self.client()
            .await
            .list_consents(self.env.request(
                tenant,
                ListConsentsRequest {
                    lead_id: lead.id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .expect("list consents")
            .into_inner()
            .consents
    }
}

async fn a_withdrawn_marketing_consent_stops_sending_on_its_channel_until_given_again(
    backend: Backend,
) {
    let app = App::spawn(backend).await;
    let lead = app
        .lead("acme", "consent@example.com", "+44 20 7946 0100")
        .await;
    let mut client = app.client().await;
    let given = client
        .record_consent(app.env.request(
            "acme",
            consent(&lead, Channel::Email, ConsentState::Granted, "web_form"),
        ))
        .await
        .expect("granted")
        .into_inner();
    assert_eq!(given.recorded_by, "tester");
    assert!(!given.id.is_empty() && given.create_time.is_some());
    app.send("acme", email(&lead, "Hi", "Hello"))
        .await
        .expect("sent with consent");

    client
        .record_consent(app.env.request(
            "acme",
            consent(&lead, Channel::Email, ConsentState::Withdrawn, "phone_call"),
        ))
        .await
        .expect("withdrawn");
    let refused = app
        .send("acme", email(&lead, "Hi again", "Hello"))
        .await
        .expect_err("withdrawn consent");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("withdrew"),
        "{}",
        refused.message()
    );
    // Another channel is another consent.
    let sms = SendMessageRequest {
        lead_id: lead.id.clone(),
        channel: Channel::Sms as i32,
        body: "Hello by SMS".into(),
        ..Default::default()
    };
    app.send("acme", sms).await.expect("sms still allowed");

    client
        .record_consent(app.env.request(
            "acme",
            consent(&lead, Channel::Email, ConsentState::Granted, "web_form"),
        ))
        .await
        .expect("given again");
    app.send("acme", email(&lead, "Welcome back", "Hello"))
        .await
        .expect("sent again");
    let history: Vec<(String, i32)> = app
        .consents("acme", &lead)
        .await
        .iter()
        .map(|entry| (entry.source.clone(), entry.state))
        .collect();
    assert_eq!(
        history,
        [
            ("web_form".to_owned(), ConsentState::Granted as i32),
            ("phone_call".to_owned(), ConsentState::Withdrawn as i32),
            ("web_form".to_owned(), ConsentState::Granted as i32),
        ],
        "newest first"
    );
    let first_page = client
        .list_consents(app.env.request(
            "acme",
            ListConsentsRequest {
                lead_id: lead.id.clone(),
                page_size: 2,
                ..Default::default()
            },
        ))
        .await
        .expect("page")
        .into_inner();
    assert_eq!(first_page.consents.len(), 2);
    let rest = client
        .list_consents(app.env.request(
            "acme",
            ListConsentsRequest {
                lead_id: lead.id.clone(),
                page_size: 2,
                page_token: first_page.next_page_token,
            },
        ))
        .await
        .expect("next page")
        .into_inner();
    assert_eq!(rest.consents.len(), 1);
    assert!(rest.next_page_token.is_empty());
}

async fn an_unsubscribe_link_records_a_withdrawal_with_the_message_as_proof(backend: Backend) {
    let app = App::spawn(backend).await;
    let lead = app.lead("acme", "optout@example.com", "").await;
    let sent = app
        .send("acme", email(&lead, "Hi", "Hello"))
        .await
        .expect("send");
    let raw = unfold(&app.wait_for_emails(1).await[0]);
    let token = tracking_token(&raw, "u");
    for _ in 0..2 {
        app.tracking()
            .await
            .unsubscribe(UnsubscribeRequest {
                token: token.clone(),
            })
            .await
            .expect("unsubscribe");
    }
    let history = app.consents("acme", &lead).await;
    assert_eq!(
        history.len(),
        1,
        "one withdrawal however often the link is used"
    );
    let withdrawal = &history[0];
    assert_eq!(withdrawal.state, ConsentState::Withdrawn as i32);
    assert_eq!(withdrawal.channel, Channel::Email as i32);
    assert_eq!(withdrawal.purpose, "marketing");
    assert_eq!(withdrawal.source, "unsubscribe_link");
    assert_eq!(withdrawal.proof, format!("messages/{}", sent.id));
    assert_eq!(withdrawal.recorded_by, "public:unsubscribe");
}

async fn bad_consents_are_invalid_argument_naming_each_field_and_other_tenants_leads_not_found(
    backend: Backend,
) {
    let app = App::spawn(backend).await;
    let lead = app.lead("acme", "fields@example.com", "").await;
    let mut client = app.client().await;
    let empty = client
        .record_consent(app.env.request(
            "acme",
            RecordConsentRequest {
                consent: Some(Consent {
                    proof: "x".repeat(501),
                    purpose: "Marketing!".into(),
                    ..Consent::default()
                }),
            },
        ))
        .await
        .expect_err("empty");
    assert_eq!(empty.code(), Code::InvalidArgument);
    let mut fields = violated_fields(&empty);
    fields.sort();
    assert_eq!(
        fields,
        [
            "consent.channel",
            "consent.lead_id",
            "consent.proof",
            "consent.purpose",
            "consent.source",
            "consent.state",
        ]
    );
    let missing = client
        .record_consent(
            app.env
                .request("acme", RecordConsentRequest { consent: None }),
        )
        .await
        .expect_err("no consent");
    assert_violates(&missing, "consent", "no consent");
    let elsewhere = client
        .record_consent(app.env.request(
            "globex",
            consent(&lead, Channel::Email, ConsentState::Withdrawn, "web_form"),
        ))
        .await
        .expect_err("another tenant's lead");
    assert_eq!(elsewhere.code(), Code::NotFound);
    let viewer = client
        .record_consent(app.env.request_as(
            "acme",
            "v-1",
            &["viewer"],
            consent(&lead, Channel::Email, ConsentState::Withdrawn, "web_form"),
        ))
        .await
        .expect_err("viewers record nothing");
    assert_eq!(viewer.code(), Code::PermissionDenied);
    assert!(
        app.consents("acme", &lead).await.is_empty(),
        "nothing was recorded"
    );
}

async fn a_sent_message_is_ciphertext_in_the_database_and_plain_to_its_readers(backend: Backend) {
    let app = App::spawn(backend).await;
    let lead = app.lead("acme", "grace.hopper@navy.example", "").await;
    let sent = app
        .send(
            "acme",
            email(
                &lead,
                "Compilers for Grace",
                "Dear Grace Hopper, about COBOL",
            ),
        )
        .await
        .expect("send");
    assert_eq!(sent.to, "grace.hopper@navy.example");

    #[derive(sqlx::FromRow)]
    struct Stored {
        to_address: String,
        subject: String,
        body: String,
    }
    let stored: Stored = app
        .db
        .fetch_one(
            Sql::new("SELECT to_address, subject, body FROM messages WHERE id = $1")
                .bind(uuid::Uuid::parse_str(&sent.id).expect("id")),
        )
        .await
        .expect("row");
    for value in [&stored.to_address, &stored.subject, &stored.body] {
        assert!(value.starts_with("aes1."), "sealed: {value}");
        let lower = value.to_lowercase();
        for secret in ["grace", "hopper", "cobol"] {
            assert!(!lower.contains(secret), "{secret} in {value}");
        }
    }

    let mut client = app.client().await;
    let read = client
        .get_message(app.env.request(
            "acme",
            GetMessageRequest {
                id: sent.id.clone(),
            },
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        (read.to.as_str(), read.subject.as_str()),
        ("grace.hopper@navy.example", "Compilers for Grace")
    );
    assert!(read.body.contains("about COBOL"), "{}", read.body);
    let listed = client
        .list_messages(app.env.request(
            "acme",
            ListMessagesRequest {
                filter: format!("lead_id = \"{}\"", lead.id),
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.messages.len(), 1);
    assert_eq!(listed.messages[0].subject, "Compilers for Grace");
    // The recipient's copy is plaintext, as it must be.
    let delivered = app.wait_for_emails(1).await;
    assert!(delivered[0].contains("grace.hopper@navy.example"));
}

aida_core::backend_pair_suite!(on_postgres_jetstream_and_smtp, on_sqlite_and_mail_directory:
    a_sent_message_is_ciphertext_in_the_database_and_plain_to_its_readers,
    a_withdrawn_marketing_consent_stops_sending_on_its_channel_until_given_again,
    an_unsubscribe_link_records_a_withdrawal_with_the_message_as_proof,
    bad_consents_are_invalid_argument_naming_each_field_and_other_tenants_leads_not_found,
    a_templated_email_is_delivered_with_tracked_links_and_one_click_unsubscribe,
    opens_clicks_and_replies_are_recorded_once_each_and_published,
    unsubscribing_suppresses_the_address_and_nothing_more_is_sent,
    rejected_leads_suppressed_addresses_and_capped_leads_are_not_contacted,
    bad_input_and_forged_links_are_invalid_argument_naming_the_field,
    a_retried_send_with_the_same_request_id_sends_once,
    an_sms_reaches_the_provider_and_a_refusal_is_recorded_as_failed
);
