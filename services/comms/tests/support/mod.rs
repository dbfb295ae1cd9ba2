//! LeadService (with its scoring) and CommsService side by side over real gRPC, for the
//! tests whose messages and drafts need real leads.

use aida_core::testing::{Backend, RunningServer, TestEnv};
use aida_proto::aida::ai::v1::autonomy_service_client::AutonomyServiceClient;
use aida_proto::aida::ai::v1::{Decision, ListDecisionsRequest};
use aida_proto::aida::comms::v1::comms_service_client::CommsServiceClient;
use tonic::transport::Channel;

pub struct Services {
    pub env: TestEnv,
    pub leads: RunningServer,
    pub comms: RunningServer,
}

impl Services {
    /// Both services on `backend`, with the settings `configure` changes; CommsService reads
    /// leads from this LeadService.
    pub async fn spawn(backend: Backend, configure: impl FnOnce(&mut TestEnv)) -> Self {
        let mut env = TestEnv::new(backend).await;
        configure(&mut env);
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
        let comms = RunningServer::start(|listener, shutdown| {
            aida_comms::serve(context, listener, shutdown)
        })
        .await;
        Self { env, leads, comms }
    }

    pub async fn comms(&self) -> CommsServiceClient<Channel> {
        CommsServiceClient::new(self.comms.channel().await)
    }

    pub async fn autonomy(&self) -> AutonomyServiceClient<Channel> {
        AutonomyServiceClient::new(self.comms.channel().await)
    }

    /// `tenant`'s outreach decisions on `action` in `segments`, newest first.
    pub async fn decisions_in(
        &self,
        tenant: &str,
        action: &str,
        segments: &[&str],
    ) -> Vec<Decision> {
        let mut decisions = Vec::new();
        for segment in segments {
            let request = ListDecisionsRequest {
                agent: "outreach".into(),
                action: action.into(),
                segment: (*segment).into(),
                page_size: 100,
                page_token: String::new(),
            };
            let page = self
                .autonomy()
                .await
                .list_decisions(self.env.request(tenant, request))
                .await
                .expect("decisions")
                .into_inner();
            decisions.extend(page.decisions);
        }
        decisions.sort_by_key(|decision| {
            std::cmp::Reverse(
                decision
                    .create_time
                    .map(|time| (time.seconds, time.nanos))
                    .unwrap_or_default(),
            )
        });
        decisions
    }
}
