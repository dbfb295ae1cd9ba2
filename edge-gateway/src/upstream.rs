//! The services behind the edge: per service, one channel per replica, chosen round-robin
//! among the replicas whose gRPC health check (overall `""`) passes, probed every two
//! seconds whether a service has one replica or many. When none passes, every replica is
//! tried (fail open: a service that reports NOT_SERVING because the bus is away still takes
//! captures into its outbox, and a wrong probe must not take the whole service down). With
//! mutual TLS each channel presents the edge's certificate and checks that the replica is
//! the service it should be (`spiffe://aida/<service>`). A service running in the edge's
//! own process (`aida up`) is called there, without a socket (see
//! [`aida_core::server::LocalMesh`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use aida_core::server::{CallError, LocalMesh, LocalService};
use aida_core::settings::Upstreams as UpstreamSettings;
use aida_core::tls::MeshTls;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tower::ServiceExt as _;

/// How the edge reaches a replica: a channel over the network, or the service in process.
pub type Upstream = LocalService;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Which replica set serves a gRPC service: the mesh service hosting it.
pub fn service_key(grpc_service: &str) -> Option<&'static str> {
    aida_core::mesh::hosting(grpc_service).map(|service| service.name)
}

struct Replica {
    channel: Upstream,
    healthy: AtomicBool,
}

struct ReplicaSet {
    replicas: Vec<Replica>,
    next: AtomicUsize,
    /// The health of the service when it runs in the edge's process (`aida up`).
    local_healthy: AtomicBool,
}

impl ReplicaSet {
    /// The next healthy replica, round-robin; any replica when none is healthy.
    fn pick(&self) -> Upstream {
        let count = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..count)
            .map(|offset| &self.replicas[(start + offset) % count])
            .find(|replica| replica.healthy.load(Ordering::Relaxed))
            .unwrap_or(&self.replicas[start % count])
            .channel
            .clone()
    }
}

#[derive(Clone)]
pub struct Upstreams {
    sets: Arc<HashMap<&'static str, ReplicaSet>>,
    local: Option<LocalMesh>,
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
    /// Channels to every configured replica, probed every two seconds; services found in
    /// `local` are called in process instead.
    pub async fn start(
        settings: &UpstreamSettings,
        tls: Option<Arc<MeshTls>>,
        local: Option<LocalMesh>,
        shutdown: CancellationToken,
    ) -> Result<Self, String> {
        let mut sets = HashMap::new();
        for service in aida_core::mesh::SERVICES {
            let (key, urls) = (service.name, settings.of(service.name));
            if urls.is_empty() {
                return Err(format!("edge.upstreams.{key}: at least one replica"));
            }
            let mut replicas = Vec::new();
            for url in urls {
                let endpoint = endpoint(url)?;
                let channel = match &tls {
                    Some(tls) => aida_core::tls::channel(tls, endpoint, key)
                        .map_err(|error| error.to_string())?,
                    None => endpoint.connect_lazy(),
                };
                replicas.push(Replica {
                    channel: Upstream::new(
                        channel.map_err(|error| CallError(tower::BoxError::from(error))),
                    ),
                    healthy: AtomicBool::new(true),
                });
            }
            sets.insert(
                key,
                ReplicaSet {
                    replicas,
                    next: AtomicUsize::new(0),
                    local_healthy: AtomicBool::new(true),
                },
            );
        }
        let upstreams = Self {
            sets: Arc::new(sets),
            local,
        };
        tokio::spawn(probe(upstreams.clone(), shutdown));
        Ok(upstreams)
    }

    /// A way to `grpc_service` (`package.Service`): in process when it runs here (and has
    /// started), a replica over the network otherwise.
    pub fn channel(&self, grpc_service: &str) -> Option<Upstream> {
        let key = service_key(grpc_service)?;
        if let Some(service) = self.local.as_ref().and_then(|local| local.get(key)) {
            return Some(service);
        }
        self.sets.get(key).map(ReplicaSet::pick)
    }
}

impl Upstreams {
    /// Per mesh service, whether it can answer now: it runs in process and reports
    /// SERVING, or one of its replicas does (as last probed).
    pub fn readiness(&self) -> Vec<(&'static str, bool)> {
        aida_core::mesh::SERVICES
            .iter()
            .map(|service| {
                let ready = self.sets.get(service.name).is_some_and(|set| {
                    if self
                        .local
                        .as_ref()
                        .and_then(|local| local.get(service.name))
                        .is_some()
                    {
                        set.local_healthy.load(Ordering::Relaxed)
                    } else {
                        set.replicas
                            .iter()
                            .any(|replica| replica.healthy.load(Ordering::Relaxed))
                    }
                });
                (service.name, ready)
            })
            .collect()
    }
}

/// Whether `upstream` reports SERVING (overall `""`) within a second.
async fn serving(upstream: Upstream) -> bool {
    let mut client = HealthClient::new(upstream);
    let check = tokio::time::timeout(
        Duration::from_secs(1),
        client.check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await;
    matches!(check, Ok(Ok(response)) if response.get_ref().status == ServingStatus::Serving as i32)
}

/// Health-checks every replica of every service, and the services running in process.
async fn probe(upstreams: Upstreams, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        for (name, set) in upstreams.sets.iter() {
            if let Some(local) = upstreams.local.as_ref().and_then(|local| local.get(name)) {
                let healthy = serving(local).await;
                if set.local_healthy.swap(healthy, Ordering::Relaxed) != healthy {
                    tracing::info!(
                        service = name,
                        serving = healthy,
                        "in-process service health changed"
                    );
                }
                continue;
            }
            for (index, replica) in set.replicas.iter().enumerate() {
                let healthy = serving(replica.channel.clone()).await;
                metrics::gauge!(UPSTREAM_UP, "service" => *name, "replica" => index.to_string())
                    .set(if healthy { 1.0 } else { 0.0 });
                if replica.healthy.swap(healthy, Ordering::Relaxed) != healthy {
                    tracing::info!(
                        service = name,
                        replica = index,
                        serving = healthy,
                        "upstream health changed"
                    );
                }
            }
        }
    }
}

/// Whether a replica answered its last health probe with SERVING, by service and replica.
pub const UPSTREAM_UP: &str = "aida_edge_upstream_up";

#[cfg(test)]
mod tests {
    use super::*;
    use aida_core::auth::TokenVerifier;
    use aida_core::server::builder;

    /// Every replica at a port where nothing listens: only an in-process call can answer.
    fn unreachable() -> UpstreamSettings {
        let nowhere = vec!["http://127.0.0.1:9".to_owned()];
        UpstreamSettings {
            leads: nowhere.clone(),
            deals: nowhere.clone(),
            comms: nowhere.clone(),
            analytics: nowhere,
        }
    }

    async fn health(upstreams: &Upstreams, service: &str) -> Result<i32, tonic::Status> {
        let channel = upstreams.channel(service).expect("a known service");
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|response| response.get_ref().status)
    }

    #[tokio::test]
    async fn a_service_registered_in_process_is_called_there_and_the_others_over_the_network() {
        let shutdown = CancellationToken::new();
        let local = LocalMesh::default();
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let verifier = Arc::new(TokenVerifier::hs256(
            &secrecy::SecretString::from("k".repeat(32)),
            "aida",
            "aida",
            Duration::from_secs(5),
        ));
        local.register("leads", &builder(verifier).add_service(service));
        let upstreams = Upstreams::start(&unreachable(), None, Some(local), shutdown.clone())
            .await
            .expect("upstreams");

        let status = health(&upstreams, "aida.leads.v1.LeadService")
            .await
            .expect("in process");
        assert_eq!(status, ServingStatus::Serving as i32);
        let error = health(&upstreams, "aida.deals.v1.DealService")
            .await
            .expect_err("nothing listens for deals");
        assert_eq!(error.code(), tonic::Code::Unavailable);
        shutdown.cancel();
    }
}
