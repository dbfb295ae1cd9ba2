//! The production bus: NATS JetStream with file-backed streams, publish acks, durable pull
//! consumers with explicit acks.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use futures::StreamExt;

use super::{
    Acker, BusError, ConsumerSpec, Delivery, EventBus, MessageSource, OutgoingMessage, Topology,
    headers,
};
use crate::settings::{BusSettings, NatsSettings};

/// JetStream behind [`EventBus`].
#[derive(Clone)]
pub struct NatsBus {
    jetstream: jetstream::Context,
    topology: Topology,
    duplicate_window: Duration,
    replicas: usize,
}

impl NatsBus {
    /// Connects to `url`. The client keeps reconnecting in the background, so a service
    /// starts (and its outbox fills) while NATS is down; nothing here waits for the server.
    pub async fn connect(url: &str, settings: &BusSettings) -> Result<Self, BusError> {
        Self::connect_with(url, settings, &NatsSettings::default()).await
    }

    /// Like [`NatsBus::connect`], authenticated and verified as `nats` says: a `.creds`
    /// file, user and password, or a token; TLS with `tls://` URLs or a CA file (and a
    /// client certificate when the server asks for one).
    pub async fn connect_with(
        url: &str,
        settings: &BusSettings,
        nats: &NatsSettings,
    ) -> Result<Self, BusError> {
        let mut options = async_nats::ConnectOptions::new();
        if let Some(file) = &nats.creds_file {
            options = options.credentials_file(file).await.map_err(|error| {
                BusError::Unavailable(format!("nats.creds_file {}: {error}", file.display()))
            })?;
        }
        if let (Some(user), Some(password)) = (&nats.user, &nats.password) {
            use secrecy::ExposeSecret as _;
            options = options.user_and_password(user.clone(), password.expose_secret().to_owned());
        }
        if let Some(token) = &nats.token {
            use secrecy::ExposeSecret as _;
            options = options.token(token.expose_secret().to_owned());
        }
        if let Some(ca) = &nats.ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&nats.cert_file, &nats.key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let client = options
            .name("aida")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            // `nats://a:4222,nats://b:4222`: the servers of a cluster, tried in turn.
            .connect(
                url.split(',')
                    .map(str::trim)
                    .filter(|part| !part.is_empty())
                    .collect::<Vec<_>>(),
            )
            .await
            .map_err(|error| BusError::Unavailable(error.to_string()))?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .build(client);
        Ok(Self {
            jetstream,
            topology: Topology::new(settings.namespace.clone()),
            duplicate_window: Duration::from_secs(settings.duplicate_window_secs),
            replicas: settings.stream_replicas.max(1),
        })
    }

    /// The underlying JetStream context (tests read streams directly).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }
}

fn unavailable(error: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(error.to_string())
}

#[async_trait]
impl EventBus for NatsBus {
    async fn ensure_streams(&self) -> Result<(), BusError> {
        for (name, subject) in self.topology.streams() {
            let config = stream::Config {
                name: name.clone(),
                subjects: vec![subject],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                duplicate_window: self.duplicate_window,
                // Events are kept a week: long enough for any consumer to catch up after an
                // outage, and for the analytics service to rebuild a day of DuckDB.
                max_age: Duration::from_secs(7 * 24 * 3600),
                num_replicas: self.replicas,
                ..Default::default()
            };
            self.jetstream
                .create_or_update_stream(config)
                .await
                .map_err(|error| BusError::Unavailable(format!("stream {name}: {error}")))?;
        }
        Ok(())
    }

    async fn publish(&self, messages: &[OutgoingMessage]) -> Vec<Result<(), BusError>> {
        // Send every message first and await the acks after: one round trip for the batch
        // instead of one per message, in order on one connection.
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            let mut publish = jetstream::message::PublishMessage::build()
                .payload(message.payload.clone())
                .message_id(&message.message_id);
            for (name, value) in &message.headers {
                publish = publish.header(name.as_str(), value.as_str());
            }
            let subject = self.topology.subject(&message.event_type);
            pending.push(self.jetstream.send_publish(subject, publish).await);
        }
        let mut results = Vec::with_capacity(pending.len());
        for sent in pending {
            let result = match sent {
                Ok(ack) => ack.await.map(|_| ()).map_err(unavailable),
                Err(error) => Err(unavailable(error)),
            };
            results.push(result);
        }
        results
    }

    fn is_connected(&self) -> bool {
        self.jetstream.client().connection_state() == async_nats::connection::State::Connected
    }

    async fn pending(&self, spec: &ConsumerSpec) -> Option<u64> {
        let stream = self
            .jetstream
            .get_stream(self.topology.stream(&spec.stream))
            .await
            .ok()?;
        let info = stream.consumer_info(&spec.durable_name).await.ok()?;
        Some(info.num_pending)
    }

    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Box<dyn MessageSource>, BusError> {
        let stream_name = self.topology.stream(&spec.stream);
        let stream = self
            .jetstream
            .get_stream(&stream_name)
            .await
            .map_err(|error| unavailable(format!("stream {stream_name}: {error}")))?;
        let filter_subject = spec
            .filter
            .as_deref()
            .map(|filter| self.topology.subject(filter))
            .unwrap_or_default();
        let consumer = if spec.ephemeral {
            let config = consumer::pull::Config {
                name: Some(spec.durable_name.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: spec.ack_wait,
                deliver_policy: consumer::DeliverPolicy::New,
                // The server removes it once nobody pulls from it.
                inactive_threshold: Duration::from_secs(60),
                filter_subject,
                ..Default::default()
            };
            stream.create_consumer(config).await
        } else {
            let config = consumer::pull::Config {
                durable_name: Some(spec.durable_name.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: spec.ack_wait,
                // The consumer runner bounds redelivery itself and dead-letters the message,
                // so the server never silently drops one after a fixed number of attempts.
                max_deliver: -1,
                filter_subject,
                ..Default::default()
            };
            stream
                .get_or_create_consumer(&spec.durable_name, config)
                .await
        }
        .map_err(|error| unavailable(format!("consumer {}: {error}", spec.durable_name)))?;
        Ok(Box::new(NatsSource {
            consumer,
            messages: None,
            topology: self.topology.clone(),
        }))
    }

    fn topology(&self) -> &Topology {
        &self.topology
    }
}

struct NatsSource {
    consumer: consumer::Consumer<consumer::pull::Config>,
    messages: Option<consumer::pull::Stream>,
    topology: Topology,
}

#[async_trait]
impl MessageSource for NatsSource {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            if self.messages.is_none() {
                let messages = self
                    .consumer
                    .stream()
                    .max_messages_per_batch(256)
                    .heartbeat(Duration::from_secs(5))
                    .expires(Duration::from_secs(30))
                    .messages()
                    .await
                    .map_err(unavailable)?;
                self.messages = Some(messages);
            }
            let Some(messages) = self.messages.as_mut() else {
                continue;
            };
            match messages.next().await {
                Some(Ok(message)) => {
                    let attempt = message
                        .info()
                        .map(|info| u64::try_from(info.delivered).unwrap_or(1))
                        .unwrap_or(1);
                    let (message, acker) = message.split();
                    let mut header_list = Vec::new();
                    let mut message_id = None;
                    if let Some(map) = &message.headers {
                        for (name, values) in map.iter() {
                            for value in values {
                                if name.to_string().eq_ignore_ascii_case(headers::MSG_ID) {
                                    message_id = Some(value.as_str().to_owned());
                                }
                                header_list.push((name.to_string(), value.as_str().to_owned()));
                            }
                        }
                    }
                    let event_type = self
                        .topology
                        .event_type(message.subject.as_str())
                        .to_owned();
                    return Ok(Delivery::new(
                        event_type,
                        message_id,
                        message.payload,
                        header_list,
                        attempt,
                        Box::new(NatsAcker(acker)),
                    ));
                }
                Some(Err(error)) => {
                    // Missed heartbeats and reconnects surface here; the stream recovers by
                    // itself, and a fresh one is opened if it ended.
                    return Err(unavailable(error));
                }
                None => {
                    self.messages = None;
                }
            }
        }
    }
}

struct NatsAcker(jetstream::message::Acker);

#[async_trait]
impl Acker for NatsAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        // A double ack waits for the server's confirmation, so an acked event is not
        // redelivered after a crash that follows.
        self.0.double_ack().await.map_err(unavailable)
    }

    async fn nak(self: Box<Self>, delay: Duration) -> Result<(), BusError> {
        self.0
            .ack_with(jetstream::AckKind::Nak(Some(delay)))
            .await
            .map_err(unavailable)
    }

    async fn term(self: Box<Self>) -> Result<(), BusError> {
        self.0
            .ack_with(jetstream::AckKind::Term)
            .await
            .map_err(unavailable)
    }
}
