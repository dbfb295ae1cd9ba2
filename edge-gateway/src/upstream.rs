//! The services behind the edge: one balanced channel per service over its replicas, fed
//! by a prober that takes a replica out while its gRPC health check fails and puts it back
//! when it passes again.

use std::collections::HashMap;
use std::time::Duration;

use aida_core::settings::Upstreams as UpstreamSettings;
use tokio_util::sync::CancellationToken;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Which replica set serves a gRPC service.
pub fn service_key(grpc_service: &str) -> Option<&'static str> {
    match grpc_service {
        "aida.leads.v1.LeadService" => Some("leads"),
        "aida.deals.v1.DealService" => Some("deals"),
        "aida.comms.v1.CommsService" | "aida.comms.v1.TrackingService" => Some("comms"),
        "aida.analytics.v1.AnalyticsService" => Some("analytics"),
        _ => None,
    }
}

#[derive(Clone)]
pub struct Upstreams {
    channels: HashMap<&'static str, Channel>,
}

fn endpoint(url: &str) -> Result<Endpoint, String> {
    Ok(Endpoint::from_shared(url.to_owned())
        .map_err(|error| format!("upstream {url}: {error}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true))
}

impl Upstreams {
    /// Balanced channels over every configured replica, probed every two seconds.
    pub async fn start(
        settings: &UpstreamSettings,
        shutdown: CancellationToken,
    ) -> Result<Self, String> {
        let mut channels = HashMap::new();
        for (key, urls) in [
            ("leads", &settings.leads),
            ("deals", &settings.deals),
            ("comms", &settings.comms),
            ("analytics", &settings.analytics),
        ] {
            if urls.is_empty() {
                return Err(format!("edge.upstreams.{key}: at least one replica"));
            }
            let endpoints: Vec<Endpoint> = urls
                .iter()
                .map(|url| endpoint(url))
                .collect::<Result<_, _>>()?;
            let (channel, changes) = Channel::balance_channel::<usize>(endpoints.len() * 2 + 1);
            for (index, endpoint) in endpoints.iter().enumerate() {
                changes
                    .send(Change::Insert(index, endpoint.clone()))
                    .await
                    .map_err(|_| "balance channel closed".to_owned())?;
            }
            tokio::spawn(probe(endpoints, changes, shutdown.clone()));
            channels.insert(key, channel);
        }
        Ok(Self { channels })
    }

    /// The channel for `grpc_service` (`package.Service`).
    pub fn channel(&self, grpc_service: &str) -> Option<Channel> {
        service_key(grpc_service)
            .and_then(|key| self.channels.get(key))
            .cloned()
    }
}

/// Health-checks every replica; removes a failing one while another is healthy, and
/// re-inserts it once it serves again.
async fn probe(
    endpoints: Vec<Endpoint>,
    changes: tokio::sync::mpsc::Sender<Change<usize, Endpoint>>,
    shutdown: CancellationToken,
) {
    if endpoints.len() < 2 {
        // With one replica there is nothing to fail over to.
        return;
    }
    let clients: Vec<HealthClient<Channel>> = endpoints
        .iter()
        .map(|endpoint| HealthClient::new(endpoint.connect_lazy()))
        .collect();
    let mut healthy = vec![true; endpoints.len()];
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        for (index, client) in clients.iter().enumerate() {
            let mut client = client.clone();
            let check = tokio::time::timeout(
                Duration::from_secs(1),
                client.check(HealthCheckRequest {
                    service: String::new(),
                }),
            )
            .await;
            let serving = matches!(check, Ok(Ok(response)) if response.get_ref().status == ServingStatus::Serving as i32);
            if serving == healthy[index] {
                continue;
            }
            let others_healthy = healthy
                .iter()
                .enumerate()
                .any(|(other, up)| other != index && *up);
            if !serving && !others_healthy {
                continue;
            }
            healthy[index] = serving;
            let change = if serving {
                Change::Insert(index, endpoints[index].clone())
            } else {
                Change::Remove(index)
            };
            tracing::info!(replica = index, serving, "upstream health changed");
            if changes.send(change).await.is_err() {
                return;
            }
        }
    }
}
