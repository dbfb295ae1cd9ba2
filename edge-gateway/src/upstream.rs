//! The services behind the edge: per service, one channel per replica, chosen round-robin
//! among the replicas whose gRPC health check passes (all of them if none does). With
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

/// Health-checks every replica of every service with more than one.
async fn probe(upstreams: Upstreams, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        for set in upstreams.sets.values().filter(|set| set.replicas.len() > 1) {
            for (index, replica) in set.replicas.iter().enumerate() {
                let mut client = HealthClient::new(replica.channel.clone());
                let check = tokio::time::timeout(
                    Duration::from_secs(1),
                    client.check(HealthCheckRequest {
                        service: String::new(),
                    }),
                )
                .await;
                let serving = matches!(check, Ok(Ok(response)) if response.get_ref().status == ServingStatus::Serving as i32);
                if replica.healthy.swap(serving, Ordering::Relaxed) != serving {
                    tracing::info!(replica = index, serving, "upstream health changed");
                }
            }
        }
    }
}

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
