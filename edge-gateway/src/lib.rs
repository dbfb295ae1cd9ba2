//! The edge gateway: the one door for clients that do not speak gRPC, and a gRPC door too.
//!
//! - REST/JSON, transcoded by the `google.api.http` annotations of the descriptor set
//!   (`routes`, `transcode`), with server streaming as NDJSON or Server-Sent Events;
//! - OpenAPI 3.1 at `/openapi.json` (`openapi`);
//! - grpc-web (binary and text) and native gRPC, proxied to the services;
//! - the public tracking links of CommsService (`/t/o`, `/t/c`, `/t/u`).
//!
//! Every call is authenticated here (HS256, or RS256/ES256 from a JWKS) and checked against
//! the RBAC table, then forwarded with the token: the services verify it again. Calls are
//! rate limited per tenant and principal; analytics reports are cached per tenant and role
//! until the next `analytics.computed`.

mod admission;
mod grpc;
pub mod openapi;
pub mod privacy;
pub mod release;
pub mod routes;
pub mod template;
mod tracking;
pub mod transcode;
pub mod upstream;

use admission::{Admit, Admitted, LimitBody, Matched, ResolveRoute, ResolveService, StepLayer};
use grpc::GrpcProxy;
pub use grpc::RawCodec;
use tracking::{track_click, track_open, unsubscribe, unsubscribe_page};

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aida_core::auth::{AuthContext, TokenVerifier, authorize_fresh};
use aida_core::bus::{ConsumerSpec, EventBus};
use aida_core::error::http_status;
use aida_core::runtime::{StartError, verifier};
use aida_core::server::LocalMesh;
use aida_core::settings::EdgeSettings;
use aida_core::{Error, Settings};
use aida_proto::aida::comms::v1::tracking_service_client::TrackingServiceClient;
use aida_proto::aida::comms::v1::{TrackClickRequest, TrackOpenRequest, UnsubscribeRequest};
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::{BufMut, Bytes};
use futures::{StreamExt, TryStreamExt};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use prost_reflect::DescriptorPool;
use sha2::Digest;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tower::{Service, ServiceExt};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::routes::{Route, RouteTable};
use crate::upstream::Upstreams;

/// A cached response body and its entity tag.
struct Cached {
    etag: String,
    body: Bytes,
}

/// Everything the edge holds.
pub struct Edge {
    pool: DescriptorPool,
    routes: RouteTable,
    upstreams: Upstreams,
    verifier: Arc<TokenVerifier>,
    /// Authenticated calls, per tenant and principal.
    limiter: DefaultKeyedRateLimiter<String>,
    /// Calls without a valid token (refused ones, public tracking links), per address.
    anonymous: DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses over their anonymous rate, until when: refused before any token is read.
    blocked: moka::sync::Cache<IpAddr, Instant>,
    cache: moka::future::Cache<String, Arc<Cached>>,
    openapi: Bytes,
    settings: EdgeSettings,
    /// Proxies whose `Fly-Client-IP` / `X-Forwarded-For` name the client.
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Fires when the edge begins to drain: it then reports NOT_SERVING.
    draining: CancellationToken,
    /// Records the calls the edge refuses itself (they never reach a service).
    audit: aida_core::audit::AuditLayer,
}

/// HTTP requests the edge answered, by `handler` (the REST route's gRPC method, `grpc`,
/// `tracking`, `healthz`, …) and HTTP `status`.
pub const HTTP_REQUESTS: &str = "aida_edge_http_requests_total";
/// Seconds until the response head, by `handler`.
pub const HTTP_SECONDS: &str = "aida_edge_http_request_seconds";
/// Calls refused by a rate limit, by `limiter` (`principal`, `address`, `blocked`).
pub const RATE_LIMITED: &str = "aida_edge_rate_limited_total";
/// Report cache lookups, by `result` (`hit`, `miss`).
pub const CACHE_LOOKUPS: &str = "aida_edge_cache_lookups_total";

fn nonzero(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value).unwrap_or(NonZeroU32::MIN)
}

/// The HTTP response of an error: the status for its gRPC code and a `google.rpc.Status`
/// JSON body with its details.
fn error_response(pool: &DescriptorPool, status: &tonic::Status) -> Response {
    let code = StatusCode::from_u16(http_status(status.code()))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (code, json_body(&transcode::status_json(pool, status))).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status.code() == tonic::Code::Unauthenticated {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(wait) = status
        .metadata()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| HeaderValue::from_str(value).ok())
    {
        response.headers_mut().insert(header::RETRY_AFTER, wait);
    }
    response
}

fn json_body(value: &serde_json::Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

fn etag_of(body: &[u8]) -> String {
    let digest = sha2::Sha256::digest(body);
    let hex: String = digest
        .iter()
        .take(12)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("\"{hex}\"")
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// RESOURCE_EXHAUSTED with `retry-after` seconds, counted under `limiter`.
fn rate_limited(limiter: &'static str, wait: Duration) -> tonic::Status {
    metrics::counter!(RATE_LIMITED, "limiter" => limiter).increment(1);
    let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    let mut status: tonic::Status =
        Error::ResourceExhausted(format!("rate limit reached; retry in {seconds} s")).into();
    if let Ok(value) = seconds.to_string().parse() {
        status.metadata_mut().insert("retry-after", value);
    }
    status
}

/// The address a call is charged to: the TCP peer, or, when the peer is a trusted proxy,
/// the client it names in `header` (`edge.client_ip_header`): `fly-client-ip`, or
/// `x-forwarded-for`, whose right-most entry that is not itself a trusted proxy counts (a
/// client can only add entries to the left; an entry that is no address stops the walk).
/// Put into every request's extensions by [`client_address`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    pub fn of(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet], header: &str) -> Self {
        let peer = peer.to_canonical();
        let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
        if !is_trusted(&peer) {
            return Self(peer);
        }
        if header == "fly-client-ip" {
            return Self(
                header_text(headers, "fly-client-ip")
                    .and_then(|value| value.trim().parse::<IpAddr>().ok())
                    .map_or(peer, |ip| ip.to_canonical()),
            );
        }
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for entry in entries.into_iter().rev() {
            let Ok(ip) = entry.parse::<IpAddr>().map(|ip| ip.to_canonical()) else {
                break;
            };
            client = ip;
            if !is_trusted(&ip) {
                break;
            }
        }
        Self(client)
    }
}

/// Stores the [`ClientIp`] of every request (before anything charges it to a limit).
async fn client_address(
    State(edge): State<Arc<Edge>>,
    mut request: Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(peer) = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
    {
        let client = ClientIp::of(
            peer,
            request.headers(),
            &edge.trusted_proxies,
            &edge.settings.client_ip_header,
        );
        request.extensions_mut().insert(client);
    }
    next.run(request).await
}

impl Edge {
    /// Authenticates and authorizes a call, with the rate limits around it: an address
    /// over its anonymous rate is refused before its token is even read (a token flood
    /// costs no verification work); a call without a valid token, or to a public method,
    /// is charged to its address; an authenticated call to its tenant and principal.
    async fn admit(
        &self,
        path: &str,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Option<AuthContext>, tonic::Status> {
        if let Some(ip) = peer
            && let Some(until) = self.blocked.get(&ip)
        {
            let now = Instant::now();
            if until > now {
                return Err(rate_limited("blocked", until - now));
            }
            self.blocked.invalidate(&ip);
        }
        match authorize_fresh(&self.verifier, path, headers).await {
            Ok(Some(context)) => {
                let key = format!("{}|{}", context.tenant_id, context.subject);
                match self.limiter.check_key(&key) {
                    Ok(()) => Ok(Some(context)),
                    Err(not_until) => {
                        let status = rate_limited(
                            "principal",
                            not_until.wait_time_from(DefaultClock::default().now()),
                        );
                        let caller = (
                            context.tenant_id.as_str(),
                            context.subject.as_str(),
                            context.roles.as_slice(),
                        );
                        self.audit
                            .refused(path, headers, Some(caller), status.code())
                            .await;
                        Err(status)
                    }
                }
            }
            Ok(None) => self
                .charge_address_audited(path, headers, peer)
                .await
                .map(|()| None),
            Err(error) => {
                self.charge_address_audited(path, headers, peer).await?;
                let status = tonic::Status::from(error);
                // A valid token without the right: the record names who was refused.
                let verified = aida_core::auth::bearer_token(headers)
                    .ok()
                    .and_then(|token| self.verifier.verify(&token).ok());
                let caller = verified.as_ref().map(|(tenant, subject, roles)| {
                    (tenant.as_str(), subject.as_str(), roles.as_slice())
                });
                self.audit
                    .refused(path, headers, caller, status.code())
                    .await;
                Err(status)
            }
        }
    }

    /// [`Edge::charge_address`], recording the trip when the address just ran over its rate.
    async fn charge_address_audited(
        &self,
        path: &str,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<(), tonic::Status> {
        let charged = self.charge_address(peer);
        if let Err(status) = &charged {
            self.audit.refused(path, headers, None, status.code()).await;
        }
        charged
    }

    /// Counts an anonymous call against its address; over the rate, the address is
    /// blocked until its bucket refills.
    fn charge_address(&self, peer: Option<IpAddr>) -> Result<(), tonic::Status> {
        let ip = peer.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        match self.anonymous.check_key(&ip) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                self.blocked.insert(ip, Instant::now() + wait);
                Err(rate_limited("address", wait))
            }
        }
    }

    /// A tonic request carrying the caller's token, request id, trace context and deadline.
    fn upstream_request<T>(&self, message: T, headers: &HeaderMap) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        for name in ["authorization", "x-request-id", "traceparent", "tracestate"] {
            if let Some(value) = header_text(headers, name).and_then(|value| value.parse().ok()) {
                metadata.insert(name, value);
            }
        }
        // The service continues the trace from the edge's span, not the client's.
        if let Some(value) = aida_core::telemetry::current_traceparent()
            .and_then(|traceparent| traceparent.parse().ok())
        {
            metadata.insert("traceparent", value);
        }
        let default = Duration::from_millis(self.settings.request_timeout_ms);
        let timeout =
            aida_core::server::grpc_timeout(headers).map_or(default, |asked| asked.min(default));
        request.set_timeout(timeout);
        request
    }

    async fn unary(
        &self,
        route: &Route,
        message: Bytes,
        headers: &HeaderMap,
    ) -> Result<Bytes, tonic::Status> {
        let pick = || {
            self.upstreams.channel(route.service()).ok_or_else(|| {
                tonic::Status::from(Error::internal(format!(
                    "no upstream for {}",
                    route.service()
                )))
            })
        };
        let path = http::uri::PathAndQuery::try_from(route.grpc_path.as_str())
            .map_err(|error| tonic::Status::internal(error.to_string()))?;
        // Reads are idempotent: a replica that is going away gets a second chance elsewhere.
        let attempts = if route.http_method == Method::GET {
            3
        } else {
            1
        };
        let mut last = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            // Picked again on every attempt: another replica, or the colour switched to.
            let mut grpc = tonic::client::Grpc::new(pick()?);
            grpc.ready()
                .await
                .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
            match grpc
                .unary(
                    self.upstream_request(message.clone(), headers),
                    path.clone(),
                    RawCodec,
                )
                .await
            {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if status.code() == tonic::Code::Unavailable => last = Some(status),
                Err(status) => return Err(status),
            }
        }
        Err(last.unwrap_or_else(|| tonic::Status::unavailable("no replica answered")))
    }

    /// A REST call that [`rest_service`]'s steps admitted: transcoded to its RPC, answered
    /// from the report cache or by a replica, and transcoded back.
    async fn rest(&self, request: Request) -> Response {
        let (parts, body) = request.into_parts();
        let (Some(matched), Some(Admitted(context))) = (
            parts.extensions.get::<Matched>(),
            parts.extensions.get::<Admitted>(),
        ) else {
            return error_response(&self.pool, &Error::internal("call not admitted").into());
        };
        let (Some(route), bindings) = (self.routes.get(matched.index), &matched.bindings) else {
            return error_response(&self.pool, &Error::internal("no such route").into());
        };
        // Already read whole (and bounded) by the LimitBody step.
        let body = match axum::body::to_bytes(body, usize::MAX).await {
            Ok(body) => body,
            Err(error) => return error_response(&self.pool, &Error::internal(error).into()),
        };
        let message = match transcode::request_message(route, bindings, parts.uri.query(), &body) {
            Ok(message) => message,
            Err(error) => return error_response(&self.pool, &error.into()),
        };
        if route.server_streaming() {
            return self.stream(route, message, &parts.headers).await;
        }

        let cache_key = (parts.method == Method::GET
            && route.service() == "aida.analytics.v1.AnalyticsService")
            .then_some(context.as_ref())
            .flatten()
            .map(|context| {
                let mut roles = context.roles.clone();
                roles.sort();
                format!("{}|{}|{}", context.tenant_id, roles.join(","), parts.uri)
            });
        let cached = match &cache_key {
            Some(key) => {
                let cached = self.cache.get(key).await;
                let result = if cached.is_some() { "hit" } else { "miss" };
                metrics::counter!(CACHE_LOOKUPS, "result" => result).increment(1);
                cached
            }
            None => None,
        };
        if let Some(cached) = cached {
            return self.json_response(
                &parts.headers,
                cached.etag.clone(),
                cached.body.clone(),
                "hit",
            );
        }
        let reply = match self.unary(route, message, &parts.headers).await {
            Ok(reply) => reply,
            Err(status) => return error_response(&self.pool, &status),
        };
        let body = match transcode::response_json(route, &reply) {
            Ok(body) => body,
            Err(error) => return error_response(&self.pool, &error.into()),
        };
        let etag = etag_of(&body);
        if let Some(key) = cache_key {
            self.cache
                .insert(
                    key,
                    Arc::new(Cached {
                        etag: etag.clone(),
                        body: body.clone(),
                    }),
                )
                .await;
        }
        self.json_response(&parts.headers, etag, body, "miss")
    }

    /// A JSON body with its ETag, or 304 when the client already has it.
    fn json_response(
        &self,
        headers: &HeaderMap,
        etag: String,
        body: Bytes,
        cache: &'static str,
    ) -> Response {
        let not_modified = header_text(headers, "if-none-match").is_some_and(|tags| {
            tags.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
        let mut response = if not_modified {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            (StatusCode::OK, body).into_response()
        };
        let response_headers = response.headers_mut();
        if !not_modified {
            response_headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        if let Ok(value) = HeaderValue::from_str(&etag) {
            response_headers.insert(header::ETAG, value);
        }
        response_headers.insert("x-cache", HeaderValue::from_static(cache));
        response
    }

    /// Server streaming as NDJSON (one message per line) or Server-Sent Events, by `Accept`.
    async fn stream(&self, route: &Route, message: Bytes, headers: &HeaderMap) -> Response {
        let Some(channel) = self.upstreams.channel(route.service()) else {
            return error_response(&self.pool, &Error::internal("no upstream").into());
        };
        let Ok(path) = http::uri::PathAndQuery::try_from(route.grpc_path.as_str()) else {
            return error_response(&self.pool, &Error::internal("bad path").into());
        };
        let mut grpc = tonic::client::Grpc::new(channel);
        if let Err(error) = grpc.ready().await {
            return error_response(&self.pool, &tonic::Status::unavailable(error.to_string()));
        }
        let mut request = tonic::Request::new(message);
        *request.metadata_mut() = self.upstream_request((), headers).into_parts().0;
        let streaming = match grpc.server_streaming(request, path, RawCodec).await {
            Ok(response) => response.into_inner(),
            Err(status) => return error_response(&self.pool, &status),
        };
        let sse = header_text(headers, "accept")
            .is_some_and(|accept| accept.contains("text/event-stream"));
        let pool = self.pool.clone();
        let output = route.method.output();
        let events = streaming.map(move |item| -> Result<Bytes, Infallible> {
            let (kind, json) = match item {
                Ok(bytes) => {
                    match prost_reflect::DynamicMessage::decode(output.clone(), bytes.as_ref()) {
                        Ok(message) => (
                            "message",
                            transcode::message_json(&message).unwrap_or_default(),
                        ),
                        Err(error) => (
                            "error",
                            transcode::status_json(
                                &pool,
                                &tonic::Status::internal(error.to_string()),
                            ),
                        ),
                    }
                }
                Err(status) => ("error", transcode::status_json(&pool, &status)),
            };
            let text = if sse {
                format!("event: {kind}\ndata: {json}\n\n")
            } else if kind == "error" {
                format!("{}\n", serde_json::json!({ "error": json }))
            } else {
                format!("{json}\n")
            };
            Ok(Bytes::from(text))
        });
        let mut response = Response::new(Body::from_stream(events));
        let content_type = if sse {
            "text/event-stream"
        } else {
            "application/x-ndjson"
        };
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }
}

async fn dispatch(State(edge): State<Arc<Edge>>, request: Request) -> Response {
    let grpc = header_text(request.headers(), "content-type")
        .is_some_and(|content_type| content_type.starts_with("application/grpc"));
    if grpc {
        return match grpc_service(&edge).oneshot(request).await {
            Ok(response) => response.map(Body::new),
            Err(never) => match never {},
        };
    }
    match rest_service(&edge).oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// What a REST call passes through, outermost first.
fn rest_service(
    edge: &Arc<Edge>,
) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send> + use<> {
    tower::ServiceBuilder::new()
        // The method and path name the RPC: 404 or 405 before anything else is read.
        .layer(StepLayer::<_, admission::Rest>::new(edge, ResolveRoute))
        // Authentication, RBAC and the rate limits, before the body: a refused caller
        // costs no buffering, and a blocked address no token verification.
        .layer(StepLayer::<_, admission::Rest>::new(edge, Admit))
        // The body, whole and bounded (413), for transcoding into the request message.
        .layer(StepLayer::<_, admission::Rest>::new(edge, LimitBody))
        .service(RestCall(edge.clone()))
}

/// What a gRPC or grpc-web call passes through, outermost first.
fn grpc_service(
    edge: &Arc<Edge>,
) -> impl Service<
    Request,
    Response = http::Response<tonic::body::Body>,
    Error = Infallible,
    Future: Send,
> + use<> {
    tower::ServiceBuilder::new()
        // grpc-web (binary or text) becomes gRPC; gRPC passes through as it is.
        .layer(tonic_web::GrpcWebLayer::new())
        // The path is the RPC: an unknown service is UNIMPLEMENTED before anything else.
        .layer(StepLayer::<_, admission::Grpc>::new(edge, ResolveService))
        // Authentication, RBAC and the rate limits, the same step as for REST.
        .layer(StepLayer::<_, admission::Grpc>::new(edge, Admit))
        // Streams and trailers relayed as they come: gRPC bodies are not buffered.
        .service(GrpcProxy(edge.clone()))
}

/// The tower face of [`Edge::rest`].
#[derive(Clone)]
struct RestCall(Arc<Edge>);

impl Service<Request> for RestCall {
    type Response = Response;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let edge = self.0.clone();
        Box::pin(async move { Ok(edge.rest(request).await) })
    }
}

async fn openapi(State(edge): State<Arc<Edge>>) -> Response {
    let mut response = (StatusCode::OK, edge.openapi.clone()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `/healthz` and `/readyz`: SERVING (200) while every service of the mesh can answer
/// (in process, or a replica whose last probe passed) and the edge is not draining;
/// NOT_SERVING (503) otherwise, with each service's status.
async fn health(State(edge): State<Arc<Edge>>) -> Response {
    let services = edge.upstreams.readiness();
    let serving = !edge.draining.is_cancelled() && services.iter().all(|(_, ready)| *ready);
    let status = |up: bool| if up { "SERVING" } else { "NOT_SERVING" };
    let body = serde_json::json!({
        "status": status(serving),
        "draining": edge.draining.is_cancelled(),
        "services": services
            .iter()
            .map(|(name, ready)| ((*name).to_owned(), serde_json::Value::from(status(*ready))))
            .collect::<serde_json::Map<_, _>>(),
    });
    let code = if serving {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Prometheus text of the edge's process (in `aida up`, the whole mesh).
async fn metrics_text() -> Response {
    (
        [(header::CONTENT_TYPE, aida_core::metrics::CONTENT_TYPE)],
        aida_core::metrics::render(),
    )
        .into_response()
}

/// What a request is, as the `handler` label: bounded (never a raw path).
fn handler_label(edge: &Edge, request: &Request) -> String {
    let path = request.uri().path();
    if header_text(request.headers(), "content-type")
        .is_some_and(|content_type| content_type.starts_with("application/grpc"))
    {
        return "grpc".to_owned();
    }
    if let Some(fixed) = ["/healthz", "/readyz", "/metrics", "/openapi.json"]
        .into_iter()
        .find(|fixed| *fixed == path)
    {
        return fixed.trim_start_matches('/').to_owned();
    }
    if path.starts_with("/t/") {
        return "tracking".to_owned();
    }
    match edge.routes.find(request.method(), path) {
        Some((route, _)) => route.grpc_path.trim_start_matches('/').to_owned(),
        None => "unmatched".to_owned(),
    }
}

/// The span of one request at the edge: it starts the trace, or continues the caller's
/// (W3C `traceparent`).
fn request_span(request: &http::Request<Body>) -> tracing::Span {
    let span = tracing::info_span!(
        "request",
        otel.name = %request.method(),
        otel.kind = "server",
        method = %request.method(),
        uri = %request.uri(),
        trace_id = tracing::field::Empty,
    );
    aida_core::telemetry::continue_trace(
        &span,
        aida_core::telemetry::parent_from_headers(request.headers()),
    );
    span
}

/// Counts and times every request (RED at the edge).
async fn observe(
    State(edge): State<Arc<Edge>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let handler = handler_label(&edge, &request);
    let request_id = header_text(request.headers(), "x-request-id")
        .unwrap_or_default()
        .to_owned();
    let trace_id = aida_core::telemetry::trace_id_of(request.headers());
    let started = Instant::now();
    let response = next.run(request).await;
    // gRPC answers are the services' to report; a 5xx of the edge's own is reported here.
    if response.status().is_server_error() && handler != "grpc" {
        aida_core::telemetry::report_server_error(
            &handler,
            response.status().as_str(),
            &request_id,
            trace_id.as_deref(),
        );
    }
    if aida_core::metrics::enabled() {
        metrics::counter!(
            HTTP_REQUESTS,
            "handler" => handler.clone(),
            "status" => response.status().as_u16().to_string()
        )
        .increment(1);
        metrics::histogram!(HTTP_SECONDS, "handler" => handler)
            .record(started.elapsed().as_secs_f64());
    }
    response
}

/// 431 (RFC 6585) for requests whose headers exceed `edge.max_header_bytes` in total.
async fn limit_headers(
    State(edge): State<Arc<Edge>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let size: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let limit = edge.settings.max_header_bytes;
    if size > limit {
        let status: tonic::Status =
            Error::invalid("headers", format!("request headers exceed {limit} bytes")).into();
        let mut response = error_response(&edge.pool, &status);
        *response.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        return response;
    }
    next.run(request).await
}

/// Drops cached reports of a tenant when its `analytics.computed` snapshot arrives.
async fn invalidate_on_snapshots(
    edge: Arc<Edge>,
    bus: Arc<dyn EventBus>,
    shutdown: CancellationToken,
) {
    let spec = ConsumerSpec::ephemeral(
        "edge-cache",
        aida_core::bus::ANALYTICS_STREAM,
        Some("analytics.computed"),
    );
    aida_core::consumer::follow(
        bus,
        spec,
        "edge cache invalidation feed",
        shutdown,
        |event| {
            let prefix = format!("{}|", event.tenant_id);
            let _ = edge
                .cache
                .invalidate_entries_if(move |key, _| key.starts_with(&prefix));
        },
    )
    .await;
}

/// Builds the edge: routes from the descriptors, upstream channels, the verifier.
pub async fn build(
    settings: &Settings,
    bus: Arc<dyn EventBus>,
    local: Option<LocalMesh>,
    shutdown: CancellationToken,
) -> Result<Arc<Edge>, StartError> {
    let audit = if settings.audit.enabled {
        aida_core::audit::AuditLayer::new(aida_core::audit::Sink::Bus(bus), "edge")
    } else {
        aida_core::audit::AuditLayer::off()
    };
    let pool = DescriptorPool::decode(aida_proto::FILE_DESCRIPTOR_SET)
        .map_err(|error| StartError::Server(format!("descriptors: {error}")))?;
    let routes = RouteTable::from_pool(&pool, "aida.").map_err(StartError::Server)?;
    let document = openapi::document(&routes, "AIDA-CRM", env!("CARGO_PKG_VERSION"));
    // The edge talks to the services over mutual TLS as spiffe://aida/edge when it is on.
    let tls = if settings.tls.enabled == Some(true) {
        let tls = aida_core::tls::MeshTls::load(&settings.certs_dir(), "edge")
            .map_err(|error| StartError::Server(error.to_string()))?;
        tls.watch(
            Duration::from_secs(settings.tls.reload_secs.max(1)),
            shutdown.clone(),
        );
        Some(tls)
    } else {
        None
    };
    let upstreams = Upstreams::start_colors(
        &settings.edge.upstreams,
        &settings.edge.green_upstreams,
        settings.edge.color,
        tls,
        local,
        shutdown.clone(),
    )
    .await
    .map_err(StartError::Server)?;
    let verifier = Arc::new(verifier(settings, &settings.signing_key()?).await);
    // ReleaseService and PrivacyService run here, behind the same authentication, RBAC
    // and audit as the services.
    {
        use aida_proto::aida::privacy::v1::privacy_service_server::PrivacyServiceServer;
        use aida_proto::aida::release::v1::release_service_server::ReleaseServiceServer;
        use tonic::server::NamedService as _;
        let api = release::ReleaseApi {
            upstreams: upstreams.clone(),
            drain: Duration::from_millis(settings.edge.request_timeout_ms),
        };
        let privacy = privacy::PrivacyApi {
            upstreams: upstreams.clone(),
        };
        let router = aida_core::server::builder(verifier.clone())
            .audited(audit.clone())
            .add_service(ReleaseServiceServer::new(api))
            .add_service(PrivacyServiceServer::new(privacy));
        upstreams.serve_here(
            &[
                ReleaseServiceServer::<release::ReleaseApi>::NAME,
                PrivacyServiceServer::<privacy::PrivacyApi>::NAME,
            ],
            router.local(),
        );
    }
    let edge_settings = settings.edge.clone();
    let quota = Quota::per_second(nonzero(edge_settings.rate_limit_per_second))
        .allow_burst(nonzero(edge_settings.rate_limit_burst));
    let anonymous = Quota::per_minute(nonzero(edge_settings.anonymous_rate_limit_per_minute))
        .allow_burst(nonzero(edge_settings.anonymous_rate_limit_burst));
    // The edge's own series, at zero from the start.
    aida_core::metrics::install();
    for limiter in ["principal", "address", "blocked"] {
        metrics::counter!(RATE_LIMITED, "limiter" => limiter).increment(0);
    }
    for result in ["hit", "miss"] {
        metrics::counter!(CACHE_LOOKUPS, "result" => result).increment(0);
    }
    Ok(Arc::new(Edge {
        pool,
        routes,
        upstreams,
        verifier,
        limiter: RateLimiter::keyed(quota),
        anonymous: RateLimiter::keyed(anonymous),
        blocked: moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(Duration::from_secs(3600))
            .build(),
        cache: moka::future::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(Duration::from_secs(edge_settings.cache_ttl_secs.max(1)))
            .support_invalidation_closures()
            .build(),
        openapi: json_body(&document),
        trusted_proxies: edge_settings
            .trusted_proxies()
            .map_err(|message| StartError::Server(format!("edge.trusted_proxies: {message}")))?,
        settings: edge_settings,
        draining: shutdown,
        audit,
    }))
}

fn cors(origins: &[String]) -> CorsLayer {
    let allow_origin = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_NONE_MATCH,
            http::HeaderName::from_static("x-grpc-web"),
            http::HeaderName::from_static("x-user-agent"),
            http::HeaderName::from_static("grpc-timeout"),
            http::HeaderName::from_static("x-request-id"),
            http::HeaderName::from_static("traceparent"),
        ])
        // Browsers may read the gRPC status trailers of grpc-web responses only when told.
        .expose_headers([
            http::HeaderName::from_static("grpc-status"),
            http::HeaderName::from_static("grpc-message"),
            http::HeaderName::from_static("grpc-status-details-bin"),
            http::HeaderName::from_static("x-request-id"),
            header::ETAG,
            header::RETRY_AFTER,
        ])
        .max_age(Duration::from_secs(3600))
}

/// Serves the edge on `listener` until `shutdown`.
pub async fn serve(
    settings: &Settings,
    bus: Arc<dyn EventBus>,
    listener: TcpListener,
    local: Option<LocalMesh>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let edge = build(settings, bus.clone(), local, shutdown.clone()).await?;
    tokio::spawn(invalidate_on_snapshots(edge.clone(), bus, shutdown.clone()));
    let app = axum::Router::new()
        .route("/healthz", get(health))
        .route("/readyz", get(health))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
        .route("/t/o/{token}", get(track_open))
        .route("/t/c/{token}", get(track_click))
        .route("/t/u/{token}", get(unsubscribe_page).post(unsubscribe))
        .fallback(dispatch)
        .with_state(edge.clone())
        // Layers run bottom-up on the way in: the request id first, so every log line and
        // every upstream call carries it; oversized headers are refused before anything
        // reads them; CORS answers preflights before anything else runs.
        .layer(axum::middleware::from_fn_with_state(
            edge.clone(),
            client_address,
        ))
        .layer(cors(&settings.edge.cors_origins))
        .layer(axum::middleware::from_fn_with_state(
            edge.clone(),
            limit_headers,
        ))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(axum::middleware::from_fn_with_state(edge.clone(), observe))
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(request_span))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid));
    // Small responses go out at once, not after the peer's delayed ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
    .map_err(|error| StartError::Server(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                value.parse().expect("value"),
            );
        }
        headers
    }

    #[test]
    fn the_client_address_comes_from_forwarding_headers_only_behind_a_trusted_proxy() {
        let fly: Vec<ipnet::IpNet> = vec!["172.16.0.0/12".parse().expect("net")];
        let proxy: IpAddr = "172.19.0.3".parse().expect("ip");
        let stranger: IpAddr = "192.0.2.1".parse().expect("ip");
        let ip = |text: &str| ClientIp(text.parse().expect("ip"));
        let fly_header = headers(&[("fly-client-ip", "198.51.100.7")]);
        assert_eq!(
            ClientIp::of(proxy, &fly_header, &fly, "fly-client-ip"),
            ip("198.51.100.7")
        );
        assert_eq!(
            ClientIp::of(stranger, &fly_header, &fly, "fly-client-ip"),
            ip("192.0.2.1"),
            "an untrusted peer cannot name another client"
        );
        assert_eq!(
            ClientIp::of(proxy, &fly_header, &fly, "x-forwarded-for"),
            ClientIp(proxy),
            "only the configured header is read"
        );
        let chain = headers(&[
            ("x-forwarded-for", "10.9.9.9, 198.51.100.8"),
            ("x-forwarded-for", "172.20.0.1"),
        ]);
        assert_eq!(
            ClientIp::of(proxy, &chain, &fly, "x-forwarded-for"),
            ip("198.51.100.8"),
            "the right-most entry that is not a trusted proxy"
        );
        assert_eq!(
            ClientIp::of(
                proxy,
                &headers(&[("x-forwarded-for", "203.0.113.1, 198.51.100.9:443")]),
                &fly,
                "x-forwarded-for"
            ),
            ClientIp(proxy),
            "an entry that is no address stops the walk: nothing left of it is believed"
        );
        let mapped: IpAddr = "::ffff:172.19.0.3".parse().expect("ip");
        assert_eq!(
            ClientIp::of(mapped, &fly_header, &fly, "fly-client-ip"),
            ip("198.51.100.7"),
            "an IPv4-mapped peer is its IPv4 address"
        );
    }
}
