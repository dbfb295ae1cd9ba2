//! How a call gets in. Every REST and gRPC call passes the same steps before the edge
//! forwards it: its route is resolved (which RPC it names), the caller is admitted
//! (authentication, RBAC and the rate limits) and, for REST, its body is bounded. Each step
//! is a tower layer ([`StepLayer`]); [`crate::rest_service`] and [`crate::grpc_service`]
//! compose them, in one place each.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aida_core::Error;
use aida_core::auth::AuthContext;
use http::{Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::{ClientIp, Edge};

/// The RPC a call names, `/package.Service/Method`: what RBAC and the limits judge.
#[derive(Debug, Clone)]
pub(crate) struct Rpc(pub String);

/// The REST route a call matched: its place in the route table and its path bindings.
#[derive(Debug, Clone)]
pub(crate) struct Matched {
    pub index: usize,
    pub bindings: crate::routes::Bindings,
}

/// Where a gRPC call goes: a replica of the service it names.
#[derive(Clone)]
pub(crate) struct Target(pub crate::upstream::Upstream);

/// The admitted caller: `None` for a public method called without a token.
#[derive(Debug, Clone)]
pub(crate) struct Admitted(pub Option<AuthContext>);

/// Why a step refused a call: the status, and for REST an HTTP status other than the one
/// of its gRPC code (405, 413).
pub(crate) struct Refusal {
    status: tonic::Status,
    http: Option<StatusCode>,
}

impl From<tonic::Status> for Refusal {
    fn from(status: tonic::Status) -> Self {
        Self { status, http: None }
    }
}

/// How a protocol answers a refused call.
pub(crate) trait Protocol: Send + Sync + 'static {
    type Body: Send + 'static;
    fn refuse(edge: &Edge, refusal: Refusal) -> Response<Self::Body>;
}

/// REST/JSON: a `google.rpc.Status` body under the HTTP status of its code.
pub(crate) struct Rest;

impl Protocol for Rest {
    type Body = axum::body::Body;
    fn refuse(edge: &Edge, refusal: Refusal) -> Response<Self::Body> {
        let mut response = crate::error_response(&edge.pool, &refusal.status);
        if let Some(http) = refusal.http {
            *response.status_mut() = http;
        }
        response
    }
}

/// gRPC, and grpc-web once tonic-web has translated it: a trailers-only status.
pub(crate) struct Grpc;

impl Protocol for Grpc {
    type Body = tonic::body::Body;
    fn refuse(_: &Edge, refusal: Refusal) -> Response<Self::Body> {
        refusal.status.into_http()
    }
}

/// One step of admission: it checks a request and passes it on, annotated, or refuses it.
pub(crate) trait Step<B>: Clone + Send + Sync + 'static {
    fn check(
        &self,
        edge: &Edge,
        request: Request<B>,
    ) -> impl Future<Output = Result<Request<B>, Refusal>> + Send;
}

/// A [`Step`] as a tower layer, answering refusals in protocol `P`.
pub(crate) struct StepLayer<T, P> {
    edge: Arc<Edge>,
    step: T,
    protocol: PhantomData<fn() -> P>,
}

impl<T, P> StepLayer<T, P> {
    pub(crate) fn new(edge: &Arc<Edge>, step: T) -> Self {
        Self {
            edge: edge.clone(),
            step,
            protocol: PhantomData,
        }
    }
}

impl<S, T: Clone, P> Layer<S> for StepLayer<T, P> {
    type Service = StepService<S, T, P>;
    fn layer(&self, inner: S) -> Self::Service {
        StepService {
            inner,
            edge: self.edge.clone(),
            step: self.step.clone(),
            protocol: PhantomData,
        }
    }
}

/// The service of a [`StepLayer`].
pub(crate) struct StepService<S, T, P> {
    inner: S,
    edge: Arc<Edge>,
    step: T,
    protocol: PhantomData<fn() -> P>,
}

impl<S: Clone, T: Clone, P> Clone for StepService<S, T, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            edge: self.edge.clone(),
            step: self.step.clone(),
            protocol: PhantomData,
        }
    }
}

impl<S, T, P, B> Service<Request<B>> for StepService<S, T, P>
where
    S: Service<Request<B>, Response = Response<P::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    T: Step<B>,
    P: Protocol,
    B: Send + 'static,
{
    type Response = Response<P::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The service that was polled ready is the one that takes the call.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let (edge, step) = (self.edge.clone(), self.step.clone());
        Box::pin(async move {
            match step.check(&edge, request).await {
                Ok(request) => inner.call(request).await,
                Err(refusal) => Ok(P::refuse(&edge, refusal)),
            }
        })
    }
}

/// REST: the route of the method and path names the RPC ([`Matched`], [`Rpc`]). A path no
/// route knows is NOT_FOUND (404); a known path under another method, 405.
#[derive(Clone)]
pub(crate) struct ResolveRoute;

impl<B: Send + 'static> Step<B> for ResolveRoute {
    async fn check(&self, edge: &Edge, mut request: Request<B>) -> Result<Request<B>, Refusal> {
        let (method, path) = (request.method(), request.uri().path());
        let Some((index, route, bindings)) = edge.routes.locate(method, path) else {
            if edge.routes.path_exists(path) {
                return Err(Refusal {
                    status: tonic::Status::unimplemented(format!(
                        "{method} is not allowed on {path}"
                    )),
                    http: Some(StatusCode::METHOD_NOT_ALLOWED),
                });
            }
            return Err(tonic::Status::not_found(format!("no route for {method} {path}")).into());
        };
        let rpc = Rpc(route.grpc_path.clone());
        request.extensions_mut().insert(rpc);
        request.extensions_mut().insert(Matched { index, bindings });
        Ok(request)
    }
}

/// gRPC: the path is the RPC ([`Rpc`]); its service must be one the mesh serves
/// ([`Target`]), or the call is UNIMPLEMENTED.
#[derive(Clone)]
pub(crate) struct ResolveService;

impl<B: Send + 'static> Step<B> for ResolveService {
    async fn check(&self, edge: &Edge, mut request: Request<B>) -> Result<Request<B>, Refusal> {
        let path = request.uri().path().to_owned();
        let service = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default();
        let Some(channel) = edge.upstreams.channel(service) else {
            return Err(tonic::Status::unimplemented(format!("unknown service {service}")).into());
        };
        request.extensions_mut().insert(Target(channel));
        request.extensions_mut().insert(Rpc(path));
        Ok(request)
    }
}

/// Authentication, RBAC and the rate limits ([`Edge::admit`]) for the resolved [`Rpc`]:
/// the caller goes on as [`Admitted`].
#[derive(Clone)]
pub(crate) struct Admit;

impl<B: Send + 'static> Step<B> for Admit {
    async fn check(&self, edge: &Edge, request: Request<B>) -> Result<Request<B>, Refusal> {
        // Only the head is borrowed across the wait: a body need not be Sync.
        let (mut parts, body) = request.into_parts();
        let Some(Rpc(rpc)) = parts.extensions.get::<Rpc>().cloned() else {
            return Err(tonic::Status::from(Error::internal("admission before resolution")).into());
        };
        let peer = parts.extensions.get::<ClientIp>().map(|client| client.0);
        let caller = edge.admit(&rpc, &parts.headers, peer).await?;
        parts.extensions.insert(Admitted(caller));
        Ok(Request::from_parts(parts, body))
    }
}

/// REST: the body, read whole up to `edge.max_body_bytes`; above it the call is
/// INVALID_ARGUMENT on `body` with 413.
#[derive(Clone)]
pub(crate) struct LimitBody;

impl Step<axum::body::Body> for LimitBody {
    async fn check(
        &self,
        edge: &Edge,
        request: Request<axum::body::Body>,
    ) -> Result<Request<axum::body::Body>, Refusal> {
        let (parts, body) = request.into_parts();
        let limit = edge.settings.max_body_bytes;
        match axum::body::to_bytes(body, limit).await {
            Ok(bytes) => Ok(Request::from_parts(parts, axum::body::Body::from(bytes))),
            Err(_) => Err(Refusal {
                status: Error::invalid("body", format!("larger than {limit} bytes")).into(),
                http: Some(StatusCode::PAYLOAD_TOO_LARGE),
            }),
        }
    }
}
