//! The services behind the edge: per service, one channel per replica, chosen round-robin
//! among the replicas whose gRPC health check (overall `""`) passes, probed every two
//! seconds whether a service has one replica or many. When none passes, every replica is
//! tried (fail open: a service that reports NOT_SERVING because the bus is away still takes
//! captures into its outbox, and a wrong probe must not take the whole service down). With
//! mutual TLS each channel presents the edge's certificate and checks that the replica is
//! the service it should be (`spiffe://aida/<service>`). A service running in the edge's
//! own process (`aida up`) is called there, without a socket (see
//! [`aida_core::server::LocalMesh`]).
//!
//! Blue-green: the replicas of `edge.upstreams` are the blue deployment and those of
//! `edge.green_upstreams` the green one. Every call goes to the active colour
//! ([`Upstreams::switch`] changes it for all services at once, after every instance of the
//! new colour reported SERVING, and then waits for the calls still in flight on the old
//! one: a call counts from the moment it is sent until its response head arrives).

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
    url: String,
    /// Calls go through this one: counted in flight for a switch's drain.
    channel: Upstream,
    /// Health checks go through this one, so they never count as calls in flight.
    probe: Upstream,
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

pub use aida_core::settings::Color;

fn index_of(color: Color) -> usize {
    match color {
        Color::Blue => 0,
        Color::Green => 1,
    }
}

fn color_at(index: usize) -> Color {
    if index == 1 {
        Color::Green
    } else {
        Color::Blue
    }
}

/// The replicas of one colour, and its calls in flight.
struct Deployment {
    sets: HashMap<&'static str, ReplicaSet>,
    in_flight: Arc<AtomicUsize>,
}

/// One instance as [`Upstreams::instances`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub service: &'static str,
    pub color: Color,
    pub url: String,
    pub serving: bool,
}

/// What a switch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switched {
    pub active: Color,
    /// Calls in flight on the previous colour when it switched.
    pub drained_calls: usize,
    /// False when they were still not answered at the drain timeout.
    pub drained: bool,
}

/// Counts a call in flight from its start until its response head.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn start(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Clone)]
pub struct Upstreams {
    colors: Arc<[Deployment; 2]>,
    active: Arc<AtomicUsize>,
    /// One switch at a time.
    switching: Arc<tokio::sync::Mutex<()>>,
    local: Option<LocalMesh>,
    /// The edge's own services (ReleaseService, PrivacyService) by gRPC name, and the
    /// router serving them, set once at start.
    own: Arc<std::sync::OnceLock<(Vec<&'static str>, Upstream)>>,
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
    /// Channels to every configured replica (blue only), probed every two seconds;
    /// services found in `local` are called in process instead.
    pub async fn start(
        settings: &UpstreamSettings,
        tls: Option<Arc<MeshTls>>,
        local: Option<LocalMesh>,
        shutdown: CancellationToken,
    ) -> Result<Self, String> {
        let none = UpstreamSettings {
            leads: Vec::new(),
            deals: Vec::new(),
            comms: Vec::new(),
            analytics: Vec::new(),
        };
        Self::start_colors(settings, &none, Color::Blue, tls, local, shutdown).await
    }

    /// Channels to the replicas of both colours (`green` may name none), routing to
    /// `active` until [`Upstreams::switch`] says otherwise.
    pub async fn start_colors(
        blue: &UpstreamSettings,
        green: &UpstreamSettings,
        active: Color,
        tls: Option<Arc<MeshTls>>,
        local: Option<LocalMesh>,
        shutdown: CancellationToken,
    ) -> Result<Self, String> {
        let green_configured = aida_core::mesh::SERVICES
            .iter()
            .any(|service| !green.of(service.name).is_empty());
        let blue = deployment(blue, "edge.upstreams", &tls)?;
        let green = if green_configured {
            deployment(green, "edge.green_upstreams", &tls)?
        } else {
            Deployment {
                sets: HashMap::new(),
                in_flight: Arc::new(AtomicUsize::new(0)),
            }
        };
        if active == Color::Green && !green_configured {
            return Err("edge.color: green, but edge.green_upstreams names no replica".into());
        }
        let upstreams = Self {
            colors: Arc::new([blue, green]),
            active: Arc::new(AtomicUsize::new(index_of(active))),
            switching: Arc::new(tokio::sync::Mutex::new(())),
            local,
            own: Arc::default(),
        };
        metrics::gauge!(ACTIVE_COLOR).set(index_of(active) as f64);
        tokio::spawn(probe(upstreams.clone(), shutdown));
        Ok(upstreams)
    }

    /// Serves `grpc_service` (`package.Service`) from the edge itself (once; a second
    /// call is ignored).
    pub fn serve_here(&self, grpc_services: &[&'static str], service: Upstream) {
        let _ = self.own.set((grpc_services.to_vec(), service));
    }

    /// A way to `grpc_service` (`package.Service`): the edge's own service, in process
    /// when it runs here (and has started), else a replica of the active colour.
    pub fn channel(&self, grpc_service: &str) -> Option<Upstream> {
        if let Some((names, own)) = self.own.get()
            && names.contains(&grpc_service)
        {
            return Some(own.clone());
        }
        let key = service_key(grpc_service)?;
        if let Some(service) = self.local.as_ref().and_then(|local| local.get(key)) {
            return Some(service);
        }
        self.colors[self.active.load(Ordering::Acquire)]
            .sets
            .get(key)
            .map(ReplicaSet::pick)
    }

    /// The colour every call goes to.
    pub fn active(&self) -> Color {
        color_at(self.active.load(Ordering::Acquire))
    }

    /// Every instance of both colours, with its last probed health.
    pub fn instances(&self) -> Vec<Instance> {
        let mut instances = Vec::new();
        for color in [Color::Blue, Color::Green] {
            let deployment = &self.colors[index_of(color)];
            for service in aida_core::mesh::SERVICES {
                for replica in deployment
                    .sets
                    .get(service.name)
                    .into_iter()
                    .flat_map(|set| &set.replicas)
                {
                    instances.push(Instance {
                        service: service.name,
                        color,
                        url: replica.url.clone(),
                        serving: replica.healthy.load(Ordering::Relaxed),
                    });
                }
            }
        }
        instances
    }

    /// Routes every service to `to` once every instance of `to` answers its health check
    /// with SERVING (checked now, not as last probed); refused naming the first that does
    /// not. Then waits up to `drain` for the calls in flight on the previous colour.
    pub async fn switch(&self, to: Color, drain: Duration) -> Result<Switched, String> {
        let _one_at_a_time = self.switching.lock().await;
        let deployment = &self.colors[index_of(to)];
        if deployment.sets.is_empty() {
            return Err(format!(
                "there is no {} deployment: edge.green_upstreams names no replica",
                to.name()
            ));
        }
        for service in aida_core::mesh::SERVICES {
            let Some(set) = deployment.sets.get(service.name) else {
                return Err(format!("{} has no {} replica", service.name, to.name()));
            };
            let checks = set
                .replicas
                .iter()
                .map(|replica| serving(replica.probe.clone()));
            let results = futures::future::join_all(checks).await;
            for (replica, healthy) in set.replicas.iter().zip(results) {
                replica.healthy.store(healthy, Ordering::Relaxed);
                if !healthy {
                    return Err(format!(
                        "{} {} instance {} is not SERVING",
                        service.name,
                        to.name(),
                        replica.url
                    ));
                }
            }
        }
        let previous = color_at(self.active.swap(index_of(to), Ordering::AcqRel));
        metrics::gauge!(ACTIVE_COLOR).set(index_of(to) as f64);
        if previous == to {
            return Ok(Switched {
                active: to,
                drained_calls: 0,
                drained: true,
            });
        }
        tracing::info!(from = previous.name(), to = to.name(), "release switched");
        let in_flight = &self.colors[index_of(previous)].in_flight;
        let drained_calls = in_flight.load(Ordering::Acquire);
        let deadline = tokio::time::Instant::now() + drain;
        while in_flight.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Switched {
            active: to,
            drained_calls,
            drained: in_flight.load(Ordering::Acquire) == 0,
        })
    }
}

/// The replica sets of one colour, from its settings (`field` names them in errors).
fn deployment(
    settings: &UpstreamSettings,
    field: &str,
    tls: &Option<Arc<MeshTls>>,
) -> Result<Deployment, String> {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut sets = HashMap::new();
    for service in aida_core::mesh::SERVICES {
        let (key, urls) = (service.name, settings.of(service.name));
        if urls.is_empty() {
            return Err(format!("{field}.{key}: at least one replica"));
        }
        let mut replicas = Vec::new();
        for url in urls {
            let endpoint = endpoint(url)?;
            let channel = match tls {
                Some(tls) => aida_core::tls::channel(tls, endpoint, key)
                    .map_err(|error| error.to_string())?,
                None => endpoint.connect_lazy(),
            };
            let counter = in_flight.clone();
            let channel = channel.map_err(|error| CallError(tower::BoxError::from(error)));
            let probe = Upstream::new(channel.clone());
            let counted = channel.map_future(move |future| {
                let call = InFlight::start(&counter);
                async move {
                    let answered = future.await;
                    drop(call);
                    answered
                }
            });
            replicas.push(Replica {
                url: url.clone(),
                channel: Upstream::new(counted),
                probe,
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
    Ok(Deployment { sets, in_flight })
}

impl Upstreams {
    /// Per mesh service, whether it can answer now: it runs in process and reports
    /// SERVING, or one of its replicas does (as last probed).
    pub fn readiness(&self) -> Vec<(&'static str, bool)> {
        aida_core::mesh::SERVICES
            .iter()
            .map(|service| {
                let sets = &self.colors[self.active.load(Ordering::Acquire)].sets;
                let ready = sets.get(service.name).is_some_and(|set| {
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
        for (color, deployment) in upstreams.colors.iter().enumerate() {
            probe_deployment(&upstreams, color_at(color), deployment).await;
        }
    }
}

/// One probe round of one colour's replicas (and of the services running in process).
async fn probe_deployment(upstreams: &Upstreams, color: Color, deployment: &Deployment) {
    let color = color.name();
    for (name, set) in deployment.sets.iter() {
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
            let healthy = serving(replica.probe.clone()).await;
            metrics::gauge!(UPSTREAM_UP, "service" => *name, "replica" => index.to_string(), "color" => color)
                .set(if healthy { 1.0 } else { 0.0 });
            if replica.healthy.swap(healthy, Ordering::Relaxed) != healthy {
                tracing::info!(
                    service = name,
                    color,
                    replica = index,
                    serving = healthy,
                    "upstream health changed"
                );
            }
        }
    }
}

/// Whether a replica answered its last health probe with SERVING, by service, replica
/// and colour.
pub const UPSTREAM_UP: &str = "aida_edge_upstream_up";
/// The colour calls go to: 0 blue, 1 green.
pub const ACTIVE_COLOR: &str = "aida_edge_active_color";

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
