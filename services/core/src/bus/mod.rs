//! The event bus: NATS JetStream in production, an in-process bus for `aida up`, behind one
//! trait with one delivery contract:
//!
//! - `publish` returns only once the bus has stored the message (JetStream publish ack);
//!   a message id seen within the duplicate window is stored once.
//! - consumers are durable and named; a message is redelivered until it is acked, after
//!   `ack_wait` or a negative ack; `attempt` counts deliveries.
//!
//! Stream names and subjects come from [`Topology`], which prefixes both with a namespace
//! when one is configured (tests), and is the identity in production.

mod journal;
mod memory;
mod nats;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use memory::MemoryBus;
pub use nats::NatsBus;

/// The streams of the mesh: (stream, subject root). `crm.leads` is stream `CRM_LEADS`
/// holding `leads.>`, and so on; dead letters go to `CRM_DLQ` under `dlq.>`.
pub const STREAMS: [(&str, &str); 6] = [
    (LEADS_STREAM, "leads"),
    (DEALS_STREAM, "deals"),
    (COMMS_STREAM, "comms"),
    (ANALYTICS_STREAM, "analytics"),
    (AUDIT_STREAM, "audit"),
    (DEAD_LETTER_STREAM, "dlq"),
];

/// LeadService's events (`leads.>`).
pub const LEADS_STREAM: &str = "CRM_LEADS";
/// DealService's events (`deals.>`).
pub const DEALS_STREAM: &str = "CRM_DEALS";
/// CommsService's and AutonomyService's events (`comms.>`).
pub const COMMS_STREAM: &str = "CRM_COMMS";
/// AnalyticsService's events (`analytics.>`).
pub const ANALYTICS_STREAM: &str = "CRM_ANALYTICS";
/// Audit records on their way to the chain (`audit.recorded`), from every service and the
/// edge.
pub const AUDIT_STREAM: &str = "CRM_AUDIT";
/// The dead-letter stream.
pub const DEAD_LETTER_STREAM: &str = "CRM_DLQ";

/// Header names the mesh sets on bus messages.
pub mod headers {
    /// JetStream's de-duplication key: the event id.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// On a dead letter: the subject the message was first published on.
    pub const ORIGINAL_SUBJECT: &str = "Aida-Original-Subject";
    /// On a dead letter: the consumer that gave up.
    pub const CONSUMER: &str = "Aida-Consumer";
    /// On a dead letter: why it gave up.
    pub const ERROR: &str = "Aida-Error";
    /// On a dead letter: how many deliveries were tried.
    pub const DELIVERIES: &str = "Aida-Deliveries";
    /// W3C trace context of the change that caused the event.
    pub const TRACEPARENT: &str = "traceparent";
}

/// Names of streams and subjects, optionally namespaced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    namespace: String,
}

impl Topology {
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
        }
    }

    /// `CRM_LEADS`, or `T1_CRM_LEADS` in namespace `t1`.
    pub fn stream(&self, base: &str) -> String {
        if self.namespace.is_empty() {
            base.to_owned()
        } else {
            format!("{}_{base}", self.namespace.to_uppercase())
        }
    }

    /// `leads.captured`, or `t1.leads.captured` in namespace `t1`.
    pub fn subject(&self, event_type: &str) -> String {
        if self.namespace.is_empty() {
            event_type.to_owned()
        } else {
            format!("{}.{event_type}", self.namespace)
        }
    }

    /// The event type of a (possibly namespaced) subject.
    pub fn event_type<'a>(&self, subject: &'a str) -> &'a str {
        if self.namespace.is_empty() {
            return subject;
        }
        subject
            .strip_prefix(self.namespace.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .unwrap_or(subject)
    }

    /// The stream that holds `event_type`, by its subject root.
    pub fn stream_for(&self, event_type: &str) -> Option<String> {
        let root = event_type.split('.').next()?;
        STREAMS
            .iter()
            .find(|(_, subject_root)| *subject_root == root)
            .map(|(stream, _)| self.stream(stream))
    }

    /// Every (stream name, subject wildcard) pair to create.
    pub fn streams(&self) -> Vec<(String, String)> {
        STREAMS
            .iter()
            .map(|(stream, root)| (self.stream(stream), self.subject(&format!("{root}.>"))))
            .collect()
    }
}

/// A message to publish.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    /// Un-namespaced subject, such as `leads.captured`.
    pub event_type: String,
    /// De-duplication key (`Nats-Msg-Id`).
    pub message_id: String,
    pub payload: Bytes,
    pub headers: Vec<(String, String)>,
}

/// Which messages a durable consumer receives.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Durable name; the same name resumes where the last run stopped.
    pub durable_name: String,
    /// Base stream name, such as `CRM_LEADS`.
    pub stream: String,
    /// Un-namespaced subject filter, such as `leads.qualified` or `leads.>`; `None` for all.
    pub filter: Option<String>,
    /// Redelivery after this long without an ack.
    pub ack_wait: Duration,
    /// An ephemeral consumer sees only messages published after it subscribed and vanishes
    /// when its feed is dropped (fan-out to live watchers); a durable one resumes.
    pub ephemeral: bool,
}

impl ConsumerSpec {
    /// A durable consumer of `stream` (base name) with an optional subject filter.
    pub fn durable(name: &str, stream: &str, filter: Option<&str>, ack_wait: Duration) -> Self {
        Self {
            durable_name: name.to_owned(),
            stream: stream.to_owned(),
            filter: filter.map(str::to_owned),
            ack_wait,
            ephemeral: false,
        }
    }

    /// An ephemeral consumer of new messages on `stream`.
    pub fn ephemeral(label: &str, stream: &str, filter: Option<&str>) -> Self {
        Self {
            durable_name: format!("{label}-{}", crate::random_hex(6)),
            stream: stream.to_owned(),
            filter: filter.map(str::to_owned),
            ack_wait: Duration::from_secs(30),
            ephemeral: true,
        }
    }
}

/// One delivery of a message to a consumer. Settle it with exactly one of
/// [`Delivery::ack`], [`Delivery::nak`] or [`Delivery::term`]; an unsettled delivery is
/// redelivered after the consumer's ack wait.
pub struct Delivery {
    /// Un-namespaced subject.
    pub event_type: String,
    /// `Nats-Msg-Id`, when the publisher set one.
    pub message_id: Option<String>,
    pub payload: Bytes,
    pub headers: Vec<(String, String)>,
    /// 1 on first delivery.
    pub attempt: u64,
    acker: Box<dyn Acker>,
}

impl Delivery {
    pub fn new(
        event_type: String,
        message_id: Option<String>,
        payload: Bytes,
        headers: Vec<(String, String)>,
        attempt: u64,
        acker: Box<dyn Acker>,
    ) -> Self {
        Self {
            event_type,
            message_id,
            payload,
            headers,
            attempt,
            acker,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Done: never deliver again.
    pub async fn ack(self) -> Result<(), BusError> {
        self.acker.ack().await
    }

    /// Not now: deliver again after `delay`.
    pub async fn nak(self, delay: Duration) -> Result<(), BusError> {
        self.acker.nak(delay).await
    }

    /// Never deliver again, without processing (the caller dead-lettered it).
    pub async fn term(self) -> Result<(), BusError> {
        self.acker.term().await
    }
}

/// Settles one delivery on the bus it came from.
#[async_trait]
pub trait Acker: Send + Sync {
    async fn ack(self: Box<Self>) -> Result<(), BusError>;
    async fn nak(self: Box<Self>, delay: Duration) -> Result<(), BusError>;
    async fn term(self: Box<Self>) -> Result<(), BusError>;
}

/// A durable consumer's message feed.
#[async_trait]
pub trait MessageSource: Send {
    /// The next delivery; waits until one is available. Errors are transient (the source
    /// reconnects by itself); the caller logs them and calls again.
    async fn next(&mut self) -> Result<Delivery, BusError>;
}

/// Why the bus could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
    #[error("event bus: {0}")]
    Other(String),
}

/// The event bus.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Creates the streams or updates their configuration.
    async fn ensure_streams(&self) -> Result<(), BusError>;

    /// Publishes `messages`, in order, and waits until each is stored. The result has one
    /// entry per message.
    async fn publish(&self, messages: &[OutgoingMessage]) -> Vec<Result<(), BusError>>;

    /// Opens (or resumes) a durable consumer.
    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Box<dyn MessageSource>, BusError>;

    /// The naming scheme this bus uses.
    fn topology(&self) -> &Topology;

    /// Whether the bus is reachable now (health): the client's connection is up.
    fn is_connected(&self) -> bool {
        true
    }

    /// Messages the durable consumer `spec` has not yet been delivered (metrics); `None`
    /// when the bus cannot tell now.
    async fn pending(&self, _spec: &ConsumerSpec) -> Option<u64> {
        None
    }
}

/// NATS subject matching: `*` matches one token, `>` the rest.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut filter_tokens = filter.split('.');
    let mut subject_tokens = subject.split('.');
    loop {
        match (filter_tokens.next(), subject_tokens.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(expected), Some(actual)) if expected == actual => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_is_the_identity_without_a_namespace() {
        let topology = Topology::default();
        assert_eq!(topology.stream("CRM_LEADS"), "CRM_LEADS");
        assert_eq!(topology.subject("leads.captured"), "leads.captured");
        assert_eq!(
            topology.stream_for("deals.won").as_deref(),
            Some("CRM_DEALS")
        );
        assert!(
            topology
                .streams()
                .contains(&("CRM_ANALYTICS".to_owned(), "analytics.>".to_owned()))
        );
    }

    #[test]
    fn a_namespace_prefixes_streams_and_subjects() {
        let topology = Topology::new("t42");
        assert_eq!(topology.stream("CRM_LEADS"), "T42_CRM_LEADS");
        assert_eq!(topology.subject("leads.captured"), "t42.leads.captured");
        assert_eq!(topology.event_type("t42.leads.captured"), "leads.captured");
    }

    #[test]
    fn subject_wildcards_match_like_nats() {
        assert!(subject_matches("leads.>", "leads.captured"));
        assert!(subject_matches("leads.*", "leads.captured"));
        assert!(!subject_matches("leads.*", "leads.captured.x"));
        assert!(subject_matches("leads.>", "leads.captured.x"));
        assert!(!subject_matches("leads.>", "leads"));
        assert!(!subject_matches("deals.won", "deals.lost"));
        assert!(subject_matches("deals.won", "deals.won"));
    }
}
