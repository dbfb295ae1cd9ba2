//! The whole sales loop through the running mesh (`aida::Mesh`, as `aida up` runs it):
//! 100 leads captured, 60 qualified and turned into deals by the event handler, deals moved,
//! 20 won and 10 lost, 50 e-mails sent, 30 opened, 10 clicked, 5 replied. Every analytics
//! report must then give the exact numbers, checked against a hand computation.
//!
//! Once on PostgreSQL + NATS JetStream + a real SMTP server, once on the embedded defaults
//! (SQLite, in-process bus, mail directory).

use std::collections::HashMap;
use std::time::Duration;

use aida::{Mesh, Service};
use aida_core::testing::{Backend, SmtpSink, TestEnv, eml_files, eventually, shared_nats_url};
use aida_proto::aida::analytics::v1::analytics_service_client::AnalyticsServiceClient;
use aida_proto::aida::analytics::v1::{
    GetCycleTimeRequest, GetEngagementRequest, GetFunnelRequest, GetPipelineRequest,
    GetSalesVelocityRequest, GetWinRateRequest, GroupBy,
};
use aida_proto::aida::common::v1::Money;
use aida_proto::aida::comms::v1::comms_service_client::CommsServiceClient;
use aida_proto::aida::comms::v1::tracking_service_client::TrackingServiceClient;
use aida_proto::aida::comms::v1::{
    Channel as MessageChannel, RecordReplyRequest, SendMessageRequest, TrackClickRequest,
    TrackOpenRequest,
};
use aida_proto::aida::deals::v1::deal_service_client::DealServiceClient;
use aida_proto::aida::deals::v1::{
    Deal, ListDealsRequest, LoseDealRequest, ProgressDealRequest, UpdateDealRequest, WinDealRequest,
};
use aida_proto::aida::leads::v1::lead_service_client::LeadServiceClient;
use aida_proto::aida::leads::v1::{
    CaptureLeadRequest, Lead, LeadSource, ListLeadsRequest, QualifyLeadRequest,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const TENANT: &str = "acme";

struct Loop {
    env: TestEnv,
    mesh: Option<Mesh>,
    shutdown: CancellationToken,
    mail_dir: std::path::PathBuf,
    _smtp: Option<SmtpSink>,
}

impl Loop {
    async fn start(backend: Backend) -> Self {
        let mut env = TestEnv::new(backend).await;
        let settings = &mut env.settings;
        settings.listen.leads_port = 0;
        settings.listen.deals_port = 0;
        settings.listen.comms_port = 0;
        settings.listen.analytics_port = 0;
        settings.edge.port = 0;
        settings.comms.machine_open_window_secs = 0;
        settings.comms.public_base_url = "https://crm.example.com".into();
        settings.analytics.snapshot_interval_secs = 1;
        let (smtp, mail_dir) = match backend {
            Backend::Production => {
                settings.nats_url = Some(shared_nats_url());
                let smtp = SmtpSink::start();
                settings.comms.smtp_url = Some(secrecy::SecretString::from(smtp.url()));
                let dir = smtp.dir().to_path_buf();
                (Some(smtp), dir)
            }
            Backend::Embedded => (None, settings.data_dir.join("mail")),
        };
        let shutdown = CancellationToken::new();
        let mesh = Mesh::start(&env.settings, shutdown.clone())
            .await
            .expect("mesh");
        Self {
            env,
            mesh: Some(mesh),
            shutdown,
            mail_dir,
            _smtp: smtp,
        }
    }

    async fn channel(&self, service: Service) -> Channel {
        let address = self
            .mesh
            .as_ref()
            .and_then(|mesh| mesh.address(service))
            .expect("address");
        Channel::from_shared(format!("http://{address}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        self.env.request(TENANT, message)
    }

    async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(mesh) = self.mesh.take() {
            mesh.wait().await.expect("clean stop");
        }
    }
}

fn days(deal: &Deal) -> f64 {
    let created = deal.create_time.as_ref().expect("create time");
    let closed = deal.close_time.as_ref().expect("close time");
    let micros = (closed.seconds - created.seconds) * 1_000_000
        + i64::from(closed.nanos / 1000 - created.nanos / 1000);
    micros as f64 / 86_400_000_000.0
}

fn median(sorted: &[f64]) -> f64 {
    let middle = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    }
}

fn close(actual: f64, expected: f64, what: &str) {
    let tolerance = 1e-6 * expected.abs().max(1e-12);
    assert!(
        (actual - expected).abs() <= tolerance,
        "{what}: {actual} != {expected}"
    );
}

/// The tracking token of kind `kind` in an e-mail (quoted-printable soft breaks undone).
fn token(email: &str, kind: &str) -> String {
    let text = email
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=");
    let marker = format!("https://crm.example.com/t/{kind}/");
    let start = text.find(&marker).expect("tracking link") + marker.len();
    text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect()
}

async fn the_whole_sales_loop_gives_exact_analytics(backend: Backend) {
    let mut world = Loop::start(backend).await;
    let mut leads = LeadServiceClient::new(world.channel(Service::Leads).await);
    let mut deals = DealServiceClient::new(world.channel(Service::Deals).await);
    let mut comms = CommsServiceClient::new(world.channel(Service::Comms).await);
    let mut tracking = TrackingServiceClient::new(world.channel(Service::Comms).await);
    let mut analytics = AnalyticsServiceClient::new(world.channel(Service::Analytics).await);

    // 100 leads: even ones from the web form, odd ones referred; three owners.
    let mut lead_ids = Vec::new();
    for index in 0..100 {
        let source = if index % 2 == 0 {
            LeadSource::WebForm
        } else {
            LeadSource::Referral
        };
        let lead = leads
            .capture_lead(world.request(CaptureLeadRequest {
                lead: Some(Lead {
                    email: format!("lead{index}@example.com"),
                    first_name: format!("Person{index}"),
                    company: format!("Company {index}"),
                    owner_id: format!("rep-{}", index % 3),
                    source: source as i32,
                    ..Lead::default()
                }),
                request_id: format!("capture-{index}"),
            }))
            .await
            .expect("capture")
            .into_inner();
        lead_ids.push(lead.id);
    }
    for lead_id in &lead_ids[..60] {
        leads
            .qualify_lead(world.request(QualifyLeadRequest {
                id: lead_id.clone(),
                ..Default::default()
            }))
            .await
            .expect("qualify");
    }

    // The event handler makes one deal per qualified lead; LeadService marks them converted.
    let deals_reader = deals.clone();
    let all_deals = || {
        let mut deals = deals_reader.clone();
        let request = world.request(ListDealsRequest {
            page_size: 1000,
            ..Default::default()
        });
        async move {
            deals
                .list_deals(request)
                .await
                .expect("list deals")
                .into_inner()
                .deals
        }
    };
    assert!(
        eventually(Duration::from_secs(30), || async {
            all_deals().await.len() == 60
        })
        .await,
        "60 deals"
    );
    let leads_reader = leads.clone();
    let converted = || {
        let mut leads = leads_reader.clone();
        let request = world.request(ListLeadsRequest {
            filter: "status = CONVERTED".into(),
            ..Default::default()
        });
        async move {
            leads
                .list_leads(request)
                .await
                .expect("list leads")
                .into_inner()
                .total_size
        }
    };
    assert!(
        eventually(Duration::from_secs(30), || async {
            converted().await == 60
        })
        .await,
        "60 leads converted"
    );
    let deal_of: HashMap<String, Deal> = all_deals()
        .await
        .into_iter()
        .map(|deal| (deal.lead_id.clone(), deal))
        .collect();
    let deal_ids: Vec<String> = lead_ids[..60]
        .iter()
        .map(|lead| deal_of[lead].id.clone())
        .collect();

    // Amounts: deal i is worth (i + 1) × 100.00 EUR. Moves, wins and losses.
    for (index, deal_id) in deal_ids.iter().enumerate() {
        deals
            .update_deal(world.request(UpdateDealRequest {
                deal: Some(Deal {
                    id: deal_id.clone(),
                    amount: Some(Money {
                        currency_code: "EUR".into(),
                        amount_minor: (index as i64 + 1) * 10_000,
                    }),
                    ..Deal::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["amount".into()],
                }),
            }))
            .await
            .expect("amount");
    }
    for (index, deal_id) in deal_ids[..30].iter().enumerate() {
        let progress = |stage: &str| {
            world.request(ProgressDealRequest {
                id: deal_id.clone(),
                stage: stage.into(),
                etag: String::new(),
            })
        };
        deals
            .progress_deal(progress("Qualification"))
            .await
            .expect("qualification");
        if index < 20 {
            deals
                .progress_deal(progress("Proposal"))
                .await
                .expect("proposal");
            deals
                .win_deal(world.request(WinDealRequest {
                    id: deal_id.clone(),
                    etag: String::new(),
                }))
                .await
                .expect("win");
        } else {
            deals
                .lose_deal(world.request(LoseDealRequest {
                    id: deal_id.clone(),
                    reason: "budget".into(),
                    etag: String::new(),
                }))
                .await
                .expect("lose");
        }
    }

    // 50 e-mails; 30 opened by people, 10 clicked, 5 replied.
    let mut message_ids = Vec::new();
    for lead_id in &lead_ids[..50] {
        let message = comms
            .send_message(world.request(SendMessageRequest {
                lead_id: lead_id.clone(),
                channel: MessageChannel::Email as i32,
                subject: "A demo for you".into(),
                body: "Book a slot at https://example.com/demo".into(),
                ..Default::default()
            }))
            .await
            .expect("send")
            .into_inner();
        message_ids.push(message.id);
    }
    assert!(
        eventually(Duration::from_secs(15), || async {
            eml_files(&world.mail_dir).len() == 50
        })
        .await,
        "50 e-mails delivered"
    );
    let emails = eml_files(&world.mail_dir);
    let email_of = |index: usize| {
        let address = format!("lead{index}@example.com");
        emails
            .iter()
            .find(|email| email.contains(&address))
            .unwrap_or_else(|| panic!("no e-mail to {address}"))
            .clone()
    };
    for (index, message_id) in message_ids.iter().enumerate().take(30) {
        let email = email_of(index);
        tracking
            .track_open(TrackOpenRequest {
                token: token(&email, "o"),
                user_agent: "Mozilla/5.0 (X11; Linux x86_64)".into(),
            })
            .await
            .expect("open");
        if index < 10 {
            tracking
                .track_click(TrackClickRequest {
                    token: token(&email, "c"),
                    user_agent: String::new(),
                })
                .await
                .expect("click");
        }
        if index < 5 {
            comms
                .record_reply(world.request(RecordReplyRequest {
                    id: message_id.clone(),
                    body: "Yes please".into(),
                }))
                .await
                .expect("reply");
        }
    }

    // Analytics catches up.
    let analytics_reader = analytics.clone();
    let engagement = || {
        let mut analytics = analytics_reader.clone();
        let request = world.request(GetEngagementRequest::default());
        async move {
            analytics
                .get_engagement(request)
                .await
                .expect("engagement")
                .into_inner()
                .total
                .expect("total")
        }
    };
    let win_totals = || {
        let mut analytics = analytics_reader.clone();
        let request = world.request(GetWinRateRequest::default());
        async move {
            analytics
                .get_win_rate(request)
                .await
                .expect("win rate")
                .into_inner()
                .total
                .expect("total")
        }
    };
    assert!(
        eventually(Duration::from_secs(60), || async {
            let engagement = engagement().await;
            let wins = win_totals().await;
            (
                engagement.delivered,
                engagement.opened,
                engagement.clicked,
                engagement.replied,
                wins.won,
                wins.lost,
            ) == (50, 30, 10, 5, 20, 10)
        })
        .await,
        "analytics ingested every event"
    );

    // Funnel.
    let funnel = analytics
        .get_funnel(world.request(GetFunnelRequest::default()))
        .await
        .expect("funnel")
        .into_inner();
    let total = funnel.total.expect("total");
    assert_eq!(
        (total.captured, total.qualified, total.deals, total.won),
        (100, 60, 60, 20)
    );
    close(total.qualification_rate, 0.6, "qualification rate");
    close(total.deal_rate, 1.0, "deal rate");
    close(total.win_rate, 20.0 / 60.0, "win rate of deals");
    close(total.overall_conversion, 0.2, "overall conversion");
    let by_source = analytics
        .get_funnel(world.request(GetFunnelRequest {
            group_by: GroupBy::Source as i32,
            ..Default::default()
        }))
        .await
        .expect("funnel by source")
        .into_inner();
    let groups: Vec<(String, i64, i64, i64, i64)> = by_source
        .groups
        .into_iter()
        .map(|group| {
            (
                group.key,
                group.captured,
                group.qualified,
                group.deals,
                group.won,
            )
        })
        .collect();
    assert_eq!(
        groups,
        [
            ("REFERRAL".into(), 50, 30, 30, 10),
            ("WEB_FORM".into(), 50, 30, 30, 10)
        ]
    );

    // Pipeline: the 30 untouched deals, in Prospecting at 10 %.
    let pipeline = analytics
        .get_pipeline(world.request(GetPipelineRequest::default()))
        .await
        .expect("pipeline")
        .into_inner();
    let open_amount: i64 = (31..=60).map(|n| n * 10_000).sum();
    assert_eq!(pipeline.open_deals, 30);
    assert_eq!(pipeline.stages.len(), 1);
    assert_eq!(
        (
            pipeline.stages[0].stage.as_str(),
            pipeline.stages[0].open_deals
        ),
        ("Prospecting", 30)
    );
    assert_eq!(
        pipeline.stages[0]
            .amount
            .as_ref()
            .map(|money| money.amount_minor),
        Some(open_amount)
    );
    assert_eq!(
        pipeline.weighted_forecast,
        [Money {
            currency_code: "EUR".into(),
            amount_minor: open_amount / 10
        }]
    );

    // Win rate.
    let wins = win_totals().await;
    close(wins.win_rate, 20.0 / 30.0, "win rate");

    // Velocity and cycle time against the deals' own timestamps.
    let won: Vec<Deal> = all_deals()
        .await
        .into_iter()
        .filter(|deal| deal.close_time.is_some() && deal.lost_reason.is_empty())
        .collect();
    assert_eq!(won.len(), 20);
    let mut cycle: Vec<f64> = won.iter().map(days).collect();
    cycle.sort_by(f64::total_cmp);
    let median_days = median(&cycle);
    let average_won = (1..=20).map(|n| (n * 10_000) as f64).sum::<f64>() / 20.0;
    let velocity = analytics
        .get_sales_velocity(world.request(GetSalesVelocityRequest::default()))
        .await
        .expect("velocity")
        .into_inner();
    assert_eq!(velocity.currency_code, "EUR");
    let velocity_total = velocity.total.expect("total");
    assert_eq!(velocity_total.open_deals, 30);
    assert_eq!(
        velocity_total
            .average_won_amount
            .as_ref()
            .map(|money| money.amount_minor),
        Some(105_000)
    );
    close(velocity_total.win_rate, 2.0 / 3.0, "velocity win rate");
    close(
        velocity_total.median_cycle_days,
        median_days,
        "median cycle days",
    );
    close(
        velocity_total.velocity_per_day,
        30.0 * average_won * (2.0 / 3.0) / median_days,
        "velocity",
    );

    let cycle_time = analytics
        .get_cycle_time(world.request(GetCycleTimeRequest::default()))
        .await
        .expect("cycle time")
        .into_inner();
    let cycle_total = cycle_time.total.expect("total");
    assert_eq!(cycle_total.won, 20);
    close(
        cycle_total.average_days,
        cycle.iter().sum::<f64>() / 20.0,
        "average cycle",
    );
    close(cycle_total.median_days, median_days, "median cycle");
    close(
        cycle_total.p90_days,
        cycle[17] + 0.1 * (cycle[18] - cycle[17]),
        "p90 cycle",
    );
    let visits: Vec<(String, i64)> = cycle_time
        .stages
        .into_iter()
        .map(|stage| (stage.stage, stage.visits))
        .collect();
    assert_eq!(
        visits,
        [
            ("Proposal".into(), 20),
            ("Prospecting".into(), 30),
            ("Qualification".into(), 30)
        ]
    );

    // Engagement.
    let engagement = engagement().await;
    assert_eq!((engagement.unsubscribed, engagement.machine_opens), (0, 0));
    close(engagement.open_rate, 0.6, "open rate");
    close(engagement.click_rate, 0.2, "click rate");
    close(engagement.reply_rate, 0.1, "reply rate");

    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_sales_loop_on_postgres_jetstream_and_smtp() {
    the_whole_sales_loop_gives_exact_analytics(Backend::Production).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_sales_loop_under_aida_up_defaults() {
    the_whole_sales_loop_gives_exact_analytics(Backend::Embedded).await;
}
