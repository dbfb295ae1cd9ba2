//! The audit trail, as every server of the mesh records it: [`AuditLayer`], one tower
//! layer outside the [`crate::auth::AuthLayer`], sees every call and records
//!
//! - every call of a mutating RPC (any outcome), and
//! - every refused call: UNAUTHENTICATED, PERMISSION_DENIED and NOT_FOUND (a row of
//!   another tenant is not found), reads included.
//!
//! A change that commits a transaction carries its record in that transaction: while a
//! call runs, its [`Scope`] is a task-local, and the first event the call puts in the
//! outbox ([`crate::outbox::enqueue`]) brings an `audit.recorded` event along, about the
//! same resource. Every other record (a refusal, a failed call, a change that commits no
//! event) is written by the layer once the call has answered: through the service's own
//! outbox, or at the edge, which has no database, straight to the bus.
//!
//! Records hold identifiers only (tenant, subject, roles, peer identity, RPC, resource
//! name, status code, request and trace ids), never personal data. They are chained by
//! one writer, the analytics service's `audit-chain` consumer, which keeps the per-tenant
//! hash chain and serves `AuditService`.

use std::sync::{Arc, LazyLock, Mutex};

use aida_proto::aida::audit::v1::{AuditActor, AuditRecord};
use aida_proto::aida::events::v1::{
    Actor, AuditRecorded, EventEnvelope, TraceContext, event_envelope::Payload,
};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage as _, Value};
use tonic::body::Body;

use crate::bus::{EventBus, OutgoingMessage};
use crate::db::Database;
use crate::error::Error;
use crate::outbox::Relay;

/// The event type of an audit record on its way to the chain.
pub const RECORDED: &str = "audit.recorded";
/// Audit records the layer failed to write (the call had answered; the record is lost).
pub const WRITE_FAILURES: &str = "aida_audit_write_failures_total";
/// The client identity of a call made inside one process (`aida up`'s edge).
pub const IN_PROCESS: &str = "in-process";

/// Where the layer writes the records that do not ride in a call's own transaction.
#[derive(Clone)]
pub enum Sink {
    /// A service: its outbox, in a transaction of its own, published by its relay.
    Outbox { db: Database, relay: Relay },
    /// The edge, which has no database: straight to the bus (stored once acked).
    Bus(Arc<dyn EventBus>),
}

impl Sink {
    /// Writes one record.
    pub async fn write(&self, envelope: &EventEnvelope) -> Result<(), Error> {
        match self {
            Self::Outbox { db, relay } => {
                let mut tx = db.begin().await?;
                crate::outbox::insert(&mut tx, &crate::outbox::Event::from(envelope)).await?;
                tx.commit().await?;
                relay.wake();
                Ok(())
            }
            Self::Bus(bus) => {
                let message = OutgoingMessage {
                    event_type: RECORDED.to_owned(),
                    message_id: envelope.event_id.clone(),
                    payload: Bytes::from(envelope.encode_to_vec()),
                    headers: Vec::new(),
                };
                match bus.publish(std::slice::from_ref(&message)).await.pop() {
                    Some(Err(error)) => Err(Error::Unavailable(error.to_string())),
                    _ => Ok(()),
                }
            }
        }
    }
}

/// The caller of an audited call, once its token was verified.
#[derive(Debug, Clone, Default)]
struct Caller {
    tenant_id: String,
    subject: String,
    roles: Vec<String>,
}

#[derive(Debug, Default)]
struct State {
    caller: Option<Caller>,
    /// A transaction of the call committed with the call's record in it.
    committed: bool,
}

/// One audited call: what its record needs, filled in as the call proceeds.
#[derive(Debug)]
pub struct Scope {
    /// The full RPC name.
    action: String,
    recorded_by: &'static str,
    request_id: String,
    trace_id: String,
    client_identity: String,
    /// Whether the call leaves records at all (public methods only when listed in
    /// [`AUDITED_PUBLIC`]).
    recordable: bool,
    state: Mutex<State>,
}

tokio::task_local! {
    static SCOPE: Arc<Scope>;
}

/// The audited call this task is running, if any.
pub fn current() -> Option<Arc<Scope>> {
    SCOPE.try_with(Arc::clone).ok()
}

/// The running call's caller is known: its token verified as `subject` of `tenant` with
/// `roles` (called by the [`crate::auth::AuthLayer`], allowed or not).
pub fn identify(tenant: &str, subject: &str, roles: &[String]) {
    if let Some(scope) = current()
        && let Ok(mut state) = scope.state.lock()
    {
        state.caller = Some(Caller {
            tenant_id: tenant.to_owned(),
            subject: subject.to_owned(),
            roles: roles.to_vec(),
        });
    }
}

impl Scope {
    fn new(
        path: &str,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
        recorded_by: &'static str,
    ) -> Self {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("")
        };
        let traceparent = crate::telemetry::current_traceparent()
            .unwrap_or_else(|| header("traceparent").to_owned());
        Self {
            // A client names the path: bounded, so a refusal's record stays small.
            action: path.trim_start_matches('/').chars().take(256).collect(),
            recorded_by,
            request_id: header("x-request-id").chars().take(128).collect(),
            trace_id: trace_id(&traceparent),
            client_identity: client_identity(extensions),
            recordable: true,
            state: Mutex::new(State::default()),
        }
    }

    fn caller(&self) -> Option<Caller> {
        self.state
            .lock()
            .ok()
            .and_then(|state| state.caller.clone())
    }

    /// Whether a transaction of the call committed its record already.
    pub(crate) fn committed(&self) -> bool {
        self.state.lock().is_ok_and(|state| state.committed)
    }

    /// The call's record went into a transaction that has now committed.
    pub(crate) fn mark_committed(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.committed = true;
        }
    }

    /// The record of this call for `tenant`, about `resource`, with `outcome`.
    fn record(&self, tenant: &str, resource: &str, outcome: tonic::Code) -> EventEnvelope {
        let caller = self.caller().unwrap_or_default();
        let now = crate::events::now_micros();
        let id = uuid::Uuid::now_v7().to_string();
        let record = AuditRecord {
            id: id.clone(),
            sequence: 0,
            occur_time: Some(crate::events::timestamp(now)),
            tenant_id: tenant.to_owned(),
            actor: Some(AuditActor {
                subject: caller.subject.clone(),
                roles: caller.roles.clone(),
                client_identity: self.client_identity.clone(),
            }),
            action: self.action.clone(),
            resource: resource.to_owned(),
            outcome: code_name(outcome).to_owned(),
            request_id: self.request_id.clone(),
            trace_id: self.trace_id.clone(),
            recorded_by: self.recorded_by.to_owned(),
            previous_hash: Vec::new(),
            hash: Vec::new(),
        };
        EventEnvelope {
            event_id: id,
            event_type: RECORDED.to_owned(),
            tenant_id: tenant.to_owned(),
            occurred_at: Some(crate::events::timestamp(now)),
            actor: Some(Actor {
                subject: caller.subject,
                roles: caller.roles,
            }),
            subject: resource.to_owned(),
            // The record names its trace; its event is not part of it (no producer span).
            trace: None::<TraceContext>,
            request_id: self.request_id.clone(),
            payload: Some(Payload::AuditRecorded(AuditRecorded {
                record: Some(record),
            })),
        }
    }

    /// The record a call's transaction carries with `event`: the call's first event, so a
    /// call is recorded once however many events it writes.
    pub(crate) fn for_event(&self, tenant: &str, resource: &str) -> Option<EventEnvelope> {
        (self.recordable && !self.committed())
            .then(|| self.record(tenant, resource, tonic::Code::Ok))
    }
}

/// The W3C trace id of a `traceparent` (`00-<trace id>-<span id>-<flags>`), '' if none.
fn trace_id(traceparent: &str) -> String {
    let mut parts = traceparent.split('-');
    match (parts.next(), parts.next()) {
        (Some(_), Some(trace)) if trace.len() == 32 => trace.to_owned(),
        _ => String::new(),
    }
}

/// Marks a request made inside this process (see [`IN_PROCESS`]).
#[derive(Debug, Clone, Copy)]
pub struct InProcess;

/// The mesh identity of the peer (its client certificate), [`IN_PROCESS`], or ''.
fn client_identity(extensions: &http::Extensions) -> String {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    if extensions.get::<InProcess>().is_some() {
        return IN_PROCESS.to_owned();
    }
    extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
        .and_then(|certificates| certificates.first().and_then(crate::tls::spiffe_id))
        .unwrap_or_default()
}

/// The name of a gRPC status code as `google.rpc.Code` spells it (`PERMISSION_DENIED`).
pub fn code_name(code: tonic::Code) -> &'static str {
    aida_proto::google::rpc::Code::try_from(code as i32)
        .map(|code| code.as_str_name())
        .unwrap_or("UNKNOWN")
}

/// Whether calls of `path` pass the layer audited: everything but health and reflection.
fn audited(path: &str) -> bool {
    !(path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection."))
}

/// Whether `path` changes something: every RPC of the table that does not only read
/// (`Get…`, `List…`, `Search…`, `Find…`, `Watch…`).
pub fn mutates(path: &str) -> bool {
    let method = path.rsplit('/').next().unwrap_or("");
    !["Get", "List", "Search", "Find", "Watch"]
        .iter()
        .any(|verb| method.starts_with(verb))
}

/// Outcomes recorded for every RPC, reads included: the refusals.
fn refused(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied | tonic::Code::NotFound
    )
}

/// The code a unary response answers with: its `grpc-status` header when it failed (a
/// trailers-only response), OK otherwise.
fn outcome(response: &http::Response<Body>) -> tonic::Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from)
}

static POOL: LazyLock<Option<DescriptorPool>> =
    LazyLock::new(|| DescriptorPool::decode(aida_proto::FILE_DESCRIPTOR_SET).ok());

/// The resource a request names, read from its message: `id` (`templates/<id>` for
/// `DeleteTemplate`), the `id` of the message field named after the method's noun
/// (`lead.id` for `UpdateLead`), or the first `<thing>_id` field (`leads/<id>` for
/// `SendMessage`'s `lead_id`); '' when it names none. Only ids: never an address or a name.
fn resource_of(path: &str, frame: &[u8]) -> String {
    let Some(message) = decode_request(path, frame) else {
        return String::new();
    };
    let method = path.rsplit('/').next().unwrap_or("");
    // `UpdateAlertRule` → `AlertRule`: the method's name after its verb.
    let noun = method
        .char_indices()
        .skip(1)
        .find(|(_, c)| c.is_ascii_uppercase())
        .map_or("", |(index, _)| &method[index..]);
    // Ids are UUIDs: anything else in an id field (an address, by mistake or on purpose)
    // never reaches the log.
    let text = |message: &DynamicMessage, field: &str| match message
        .get_field_by_name(field)
        .as_deref()
    {
        Some(Value::String(value)) if uuid::Uuid::parse_str(value).is_ok() => Some(value.clone()),
        _ => None,
    };
    if let Some(id) = text(&message, "id") {
        return format!("{}/{id}", collection(noun));
    }
    let inner = match message.get_field_by_name(&snake(noun)).as_deref() {
        Some(Value::Message(inner)) => Some(inner.clone()),
        _ => None,
    };
    if let Some(id) = inner.as_ref().and_then(|inner| text(inner, "id")) {
        return format!("{}/{id}", collection(noun));
    }
    // `SendMessage`'s `lead_id`, or `RecordConsent`'s `consent.lead_id`.
    for message in std::iter::once(&message).chain(inner.as_ref()) {
        for field in message.descriptor().fields() {
            let name = field.name();
            if let Some(thing) = name.strip_suffix("_id")
                && !matches!(thing, "tenant" | "request")
                && let Some(id) = text(message, name)
            {
                return format!("{thing}s/{id}");
            }
        }
    }
    String::new()
}

/// The request message of a unary gRPC frame (uncompressed), decoded by its method.
fn decode_request(path: &str, frame: &[u8]) -> Option<DynamicMessage> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    let input = POOL
        .as_ref()?
        .get_service_by_name(service)?
        .methods()
        .find(|candidate| candidate.name() == method)?
        .input();
    let (&compressed, rest) = frame.split_first()?;
    let length = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    if compressed != 0 {
        return None;
    }
    DynamicMessage::decode(input, rest.get(4..4 + length)?).ok()
}

/// `AlertRule` → `alertRules`.
fn collection(noun: &str) -> String {
    let mut chars = noun.chars();
    let first = chars.next().map(|c| c.to_ascii_lowercase());
    format!(
        "{}{}s",
        first.map(String::from).unwrap_or_default(),
        chars.as_str()
    )
}

/// `AlertRule` → `alert_rule`.
fn snake(noun: &str) -> String {
    let mut out = String::new();
    for (index, c) in noun.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if index > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Records the calls of the services it wraps (see the module documentation).
#[derive(Clone)]
pub struct AuditLayer {
    sink: Option<Sink>,
    recorded_by: &'static str,
}

impl AuditLayer {
    /// The layer of `recorded_by` (a service's name, or `edge`), writing to `sink`.
    pub fn new(sink: Sink, recorded_by: &'static str) -> Self {
        Self {
            sink: Some(sink),
            recorded_by,
        }
    }

    /// A layer that records nothing (servers of tests that have no outbox).
    pub fn off() -> Self {
        Self {
            sink: None,
            recorded_by: "",
        }
    }

    /// Records a call refused before it reached a service (the edge's own refusals).
    pub async fn refused(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        caller: Option<(&str, &str, &[String])>,
        code: tonic::Code,
    ) {
        let scope = Scope::new(path, headers, &http::Extensions::new(), self.recorded_by);
        if let Some((tenant, subject, roles)) = caller
            && let Ok(mut state) = scope.state.lock()
        {
            state.caller = Some(Caller {
                tenant_id: tenant.to_owned(),
                subject: subject.to_owned(),
                roles: roles.to_vec(),
            });
        }
        let tenant = scope
            .caller()
            .map(|caller| caller.tenant_id)
            .unwrap_or_default();
        self.write(&scope.record(&tenant, "", code)).await;
    }

    async fn write(&self, envelope: &EventEnvelope) {
        let Some(sink) = &self.sink else {
            return;
        };
        if let Err(error) = sink.write(envelope).await {
            metrics::counter!(WRITE_FAILURES).increment(1);
            tracing::error!(%error, action = %envelope.subject, "audit record not written");
        }
    }
}

impl<S> tower::Layer<S> for AuditLayer {
    type Service = Audited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Audited {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Audited<S> {
    inner: S,
    layer: AuditLayer,
}

impl<S> tower::Service<http::Request<Body>> for Audited<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path().to_owned();
        if self.layer.sink.is_none() || !audited(&path) {
            return Box::pin(ready.call(request));
        }
        let layer = self.layer.clone();
        Box::pin(async move {
            let rule = crate::rbac::rule(&path);
            let public = rule == crate::rbac::Rule::Public;
            // Only methods of the table: an unknown path is refused by the AuthLayer and
            // recorded as such, never buffered.
            let mutating = matches!(rule, crate::rbac::Rule::Roles(_)) && mutates(&path);
            let mut scope = Scope::new(
                &path,
                request.headers(),
                request.extensions(),
                layer.recorded_by,
            );
            scope.recordable = !public || AUDITED_PUBLIC.contains(&scope.action.as_str());
            let scope = Arc::new(scope);
            // A mutating call's message is kept to name its resource should the record
            // not ride in its transaction: unary calls, one frame, bounded like tonic's
            // own decoding limit.
            let (request, frame) = if mutating {
                let (parts, body) = request.into_parts();
                match http_body_util::Limited::new(body, MAX_FRAME)
                    .collect()
                    .await
                {
                    Ok(collected) => {
                        let bytes = collected.to_bytes();
                        let request = http::Request::from_parts(
                            parts,
                            Body::new(http_body_util::Full::new(bytes.clone())),
                        );
                        (request, Some(bytes))
                    }
                    Err(error) => {
                        let status = if error.is::<http_body_util::LengthLimitError>() {
                            tonic::Status::resource_exhausted(format!(
                                "the request is larger than {MAX_FRAME} bytes"
                            ))
                        } else {
                            // The client went away mid-request: nothing reached the service.
                            tonic::Status::cancelled("the request body was cut off")
                        };
                        return Ok(status.into_http());
                    }
                }
            } else {
                (request, None)
            };
            let mut pending = Pending {
                layer: layer.clone(),
                scope: scope.clone(),
                path,
                frame,
                mutating,
                public,
                answered: false,
            };
            let response = SCOPE.scope(scope, ready.call(request)).await?;
            pending.answered = true;
            pending.finish(outcome(&response));
            Ok(response)
        })
    }
}

/// Public methods whose changes are audited: an unsubscribe withdraws consent. (Opens
/// and clicks are counted by their messages, not audited one by one.)
const AUDITED_PUBLIC: &[&str] = &["aida.comms.v1.TrackingService/Unsubscribe"];

/// The largest request the layer reads to name a resource: tonic's default decoding limit
/// and the frame header.
const MAX_FRAME: usize = 4 * 1024 * 1024 + 5;

/// A call on its way through the layer: what its record needs once it answers, or, when
/// the call is dropped first (its deadline, a reset), when it is dropped.
struct Pending {
    layer: AuditLayer,
    scope: Arc<Scope>,
    path: String,
    frame: Option<Bytes>,
    mutating: bool,
    public: bool,
    answered: bool,
}

impl Pending {
    /// Writes the call's record unless its transaction carried it: a refusal, a failure
    /// (also after a committed change: the change's record says OK, this one the call's
    /// code), a change that commits no event. In a task of its own, so a caller that
    /// goes away cannot cut it off.
    fn finish(&self, code: tonic::Code) {
        if self.public || !self.scope.recordable {
            return;
        }
        let committed = self.scope.committed();
        let record = if committed {
            code != tonic::Code::Ok
        } else {
            self.mutating || refused(code)
        };
        if !record {
            return;
        }
        let tenant = self
            .scope
            .caller()
            .map(|caller| caller.tenant_id)
            .unwrap_or_default();
        let resource = self
            .frame
            .as_deref()
            .map(|frame| resource_of(&self.path, frame))
            .unwrap_or_default();
        let envelope = self.scope.record(&tenant, &resource, code);
        let layer = self.layer.clone();
        tokio::spawn(async move { layer.write(&envelope).await });
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.answered {
            self.finish(tonic::Code::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(message: &impl prost::Message) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut frame = vec![0];
        frame.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    #[test]
    fn a_request_names_its_resource_by_id_never_by_address() {
        use aida_proto::aida::comms::v1 as comms;
        use aida_proto::aida::leads::v1 as leads;
        let delete = comms::DeleteTemplateRequest {
            id: "0190f7c2-0000-7000-8000-000000000001".into(),
        };
        assert_eq!(
            resource_of(
                "/aida.comms.v1.CommsService/DeleteTemplate",
                &frame(&delete)
            ),
            "templates/0190f7c2-0000-7000-8000-000000000001"
        );
        let update = leads::UpdateLeadRequest {
            lead: Some(leads::Lead {
                id: "0190f7c2-0000-7000-8000-000000000002".into(),
                email: "ada@example.com".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            resource_of("/aida.leads.v1.LeadService/UpdateLead", &frame(&update)),
            "leads/0190f7c2-0000-7000-8000-000000000002"
        );
        let send = comms::SendMessageRequest {
            lead_id: "0190f7c2-0000-7000-8000-000000000003".into(),
            ..Default::default()
        };
        assert_eq!(
            resource_of("/aida.comms.v1.CommsService/SendMessage", &frame(&send)),
            "leads/0190f7c2-0000-7000-8000-000000000003"
        );
        let suppress = comms::AddSuppressionRequest {
            suppression: Some(comms::Suppression {
                address: "ada@example.com".into(),
                ..Default::default()
            }),
        };
        let named = resource_of(
            "/aida.comms.v1.CommsService/AddSuppression",
            &frame(&suppress),
        );
        assert!(!named.contains("ada"), "{named}");
        let mistaken = leads::UpdateLeadRequest {
            lead: Some(leads::Lead {
                id: "ada@example.com".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            resource_of("/aida.leads.v1.LeadService/UpdateLead", &frame(&mistaken)),
            "",
            "an id that is no UUID is never recorded"
        );
        let consent = comms::RecordConsentRequest {
            consent: Some(comms::Consent {
                lead_id: "0190f7c2-0000-7000-8000-000000000004".into(),
                proof: "ada@example.com".into(),
                ..Default::default()
            }),
        };
        assert_eq!(
            resource_of(
                "/aida.comms.v1.CommsService/RecordConsent",
                &frame(&consent)
            ),
            "leads/0190f7c2-0000-7000-8000-000000000004"
        );
        assert_eq!(
            resource_of("/aida.leads.v1.LeadService/UpdateLead", b"\x00"),
            ""
        );
    }

    #[test]
    fn reads_are_not_mutations_and_refusals_are_named_like_google_rpc() {
        assert!(mutates("/aida.leads.v1.LeadService/CaptureLead"));
        assert!(mutates("/aida.ai.v1.AutonomyService/KillAutonomy"));
        assert!(!mutates("/aida.leads.v1.LeadService/GetLead"));
        assert!(!mutates("/aida.deals.v1.DealService/WatchDeals"));
        assert!(!mutates("/aida.audit.v1.AuditService/ListAuditRecords"));
        assert_eq!(
            code_name(tonic::Code::PermissionDenied),
            "PERMISSION_DENIED"
        );
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(
            trace_id("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(trace_id(""), "");
    }
}
