//! The embedded bus for `aida up`: streams and durable consumers in memory, with the same
//! contract as JetStream (duplicate window by message id, explicit acks, redelivery after
//! the ack wait or a nak, attempt counting).
//!
//! It lives as long as the process. The outbox keeps every event in SQLite until this bus
//! has accepted it, but an event accepted and not yet consumed when the process stops is
//! gone: the embedded mode is for development, and production runs on JetStream.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;

use super::{
    Acker, BusError, ConsumerSpec, Delivery, EventBus, MessageSource, OutgoingMessage, Topology,
    subject_matches,
};
use crate::settings::BusSettings;

/// Messages kept per stream before the oldest are dropped (JetStream's `max_msgs`).
const MAX_MESSAGES_PER_STREAM: usize = 1_000_000;

#[derive(Clone)]
struct Stored {
    subject: String,
    message_id: String,
    payload: Bytes,
    headers: Vec<(String, String)>,
}

#[derive(Default)]
struct MemoryStream {
    /// Sequence of the first message still in `messages`.
    first_sequence: u64,
    messages: VecDeque<Stored>,
    seen_ids: HashMap<String, Instant>,
    consumers: HashMap<String, MemoryConsumer>,
}

impl MemoryStream {
    fn get(&self, sequence: u64) -> Option<&Stored> {
        let index = sequence.checked_sub(self.first_sequence)?;
        self.messages.get(usize::try_from(index).ok()?)
    }

    fn next_sequence(&self) -> u64 {
        self.first_sequence + self.messages.len() as u64
    }
}

struct MemoryConsumer {
    filter: Option<String>,
    ack_wait: Duration,
    /// Next never-delivered sequence.
    cursor: u64,
    /// Delivered, not yet settled: sequence → (attempts, redeliver at).
    pending: BTreeMap<u64, (u64, Instant)>,
}

struct State {
    streams: HashMap<String, MemoryStream>,
}

/// The in-process [`EventBus`].
#[derive(Clone)]
pub struct MemoryBus {
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
    topology: Topology,
    duplicate_window: Duration,
}

impl MemoryBus {
    pub fn new(settings: &BusSettings) -> Self {
        let topology = Topology::new(settings.namespace.clone());
        let streams = topology
            .streams()
            .into_iter()
            .map(|(name, _)| (name, MemoryStream::default()))
            .collect();
        Self {
            state: Arc::new(Mutex::new(State { streams })),
            notify: Arc::new(Notify::new()),
            topology,
            duplicate_window: Duration::from_secs(settings.duplicate_window_secs),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than losing the bus, so a poisoned lock is simply taken over.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every message currently stored in `stream` (base name), oldest first: (subject,
    /// message id, payload). For tests and `aida` diagnostics.
    pub fn stored(&self, stream: &str) -> Vec<(String, String, Bytes)> {
        let state = self.lock();
        state
            .streams
            .get(&self.topology.stream(stream))
            .map(|stream| {
                stream
                    .messages
                    .iter()
                    .map(|message| {
                        (
                            self.topology.event_type(&message.subject).to_owned(),
                            message.message_id.clone(),
                            message.payload.clone(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[async_trait]
impl EventBus for MemoryBus {
    async fn ensure_streams(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn publish(&self, messages: &[OutgoingMessage]) -> Vec<Result<(), BusError>> {
        let now = Instant::now();
        let mut results = Vec::with_capacity(messages.len());
        {
            let mut state = self.lock();
            for message in messages {
                let Some(stream_name) = self.topology.stream_for(&message.event_type) else {
                    results.push(Err(BusError::Other(format!(
                        "no stream holds subject {}",
                        message.event_type
                    ))));
                    continue;
                };
                let Some(stream) = state.streams.get_mut(&stream_name) else {
                    results.push(Err(BusError::Other(format!("no stream {stream_name}"))));
                    continue;
                };
                let window = self.duplicate_window;
                stream
                    .seen_ids
                    .retain(|_, seen| now.duration_since(*seen) < window);
                if stream.seen_ids.contains_key(&message.message_id) {
                    results.push(Ok(()));
                    continue;
                }
                stream.seen_ids.insert(message.message_id.clone(), now);
                stream.messages.push_back(Stored {
                    subject: self.topology.subject(&message.event_type),
                    message_id: message.message_id.clone(),
                    payload: message.payload.clone(),
                    headers: message.headers.clone(),
                });
                if stream.messages.len() > MAX_MESSAGES_PER_STREAM {
                    stream.messages.pop_front();
                    stream.first_sequence += 1;
                }
                results.push(Ok(()));
            }
        }
        self.notify.notify_waiters();
        results
    }

    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Box<dyn MessageSource>, BusError> {
        let stream_name = self.topology.stream(&spec.stream);
        {
            let mut state = self.lock();
            let stream = state
                .streams
                .get_mut(&stream_name)
                .ok_or_else(|| BusError::Other(format!("no stream {stream_name}")))?;
            let first_sequence = if spec.ephemeral {
                stream.next_sequence()
            } else {
                stream.first_sequence
            };
            stream
                .consumers
                .entry(spec.durable_name.clone())
                .or_insert_with(|| MemoryConsumer {
                    filter: spec
                        .filter
                        .as_deref()
                        .map(|filter| self.topology.subject(filter)),
                    ack_wait: spec.ack_wait,
                    cursor: first_sequence,
                    pending: BTreeMap::new(),
                });
        }
        Ok(Box::new(MemorySource {
            bus: self.clone(),
            stream: stream_name,
            consumer: spec.durable_name.clone(),
            ephemeral: spec.ephemeral,
        }))
    }

    fn topology(&self) -> &Topology {
        &self.topology
    }
}

struct MemorySource {
    bus: MemoryBus,
    stream: String,
    consumer: String,
    ephemeral: bool,
}

impl Drop for MemorySource {
    fn drop(&mut self) {
        if !self.ephemeral {
            return;
        }
        let mut state = self.bus.lock();
        if let Some(stream) = state.streams.get_mut(&self.stream) {
            stream.consumers.remove(&self.consumer);
        }
    }
}

impl MemorySource {
    /// The next deliverable message, if any, marked as delivered.
    fn take_next(&self) -> Result<Option<Delivery>, BusError> {
        let now = Instant::now();
        let mut state = self.bus.lock();
        let stream = state
            .streams
            .get_mut(&self.stream)
            .ok_or_else(|| BusError::Other(format!("no stream {}", self.stream)))?;
        let (first_sequence, next_sequence) = (stream.first_sequence, stream.next_sequence());
        let Some(consumer) = stream.consumers.get(&self.consumer) else {
            return Err(BusError::Other(format!("no consumer {}", self.consumer)));
        };
        let ack_wait = consumer.ack_wait;

        // Redeliveries first: the oldest pending message whose time has come.
        let due = consumer
            .pending
            .iter()
            .find(|(_, (_, redeliver_at))| *redeliver_at <= now)
            .map(|(sequence, (attempts, _))| (*sequence, attempts + 1));
        let chosen = match due {
            Some(found) => Some(found),
            None => {
                let mut cursor = consumer.cursor.max(first_sequence);
                let mut found = None;
                while cursor < next_sequence {
                    let sequence = cursor;
                    cursor += 1;
                    let matches = stream.get(sequence).is_some_and(|message| {
                        consumer
                            .filter
                            .as_deref()
                            .is_none_or(|filter| subject_matches(filter, &message.subject))
                    });
                    if matches {
                        found = Some((sequence, 1));
                        break;
                    }
                }
                if let Some(consumer) = stream.consumers.get_mut(&self.consumer) {
                    consumer.cursor = cursor;
                }
                found
            }
        };
        let Some((sequence, attempt)) = chosen else {
            return Ok(None);
        };
        let Some(message) = stream.get(sequence).cloned() else {
            // Dropped by the retention limit while pending.
            if let Some(consumer) = stream.consumers.get_mut(&self.consumer) {
                consumer.pending.remove(&sequence);
            }
            return Ok(None);
        };
        if let Some(consumer) = stream.consumers.get_mut(&self.consumer) {
            consumer.pending.insert(sequence, (attempt, now + ack_wait));
        }
        let acker = MemoryAcker {
            bus: self.bus.clone(),
            stream: self.stream.clone(),
            consumer: self.consumer.clone(),
            sequence,
        };
        Ok(Some(Delivery::new(
            self.bus.topology.event_type(&message.subject).to_owned(),
            Some(message.message_id),
            message.payload,
            message.headers,
            attempt,
            Box::new(acker),
        )))
    }
}

#[async_trait]
impl MessageSource for MemorySource {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            let notified = self.bus.notify.notified();
            if let Some(delivery) = self.take_next()? {
                return Ok(delivery);
            }
            // Woken by a publish or a nak; the timeout catches ack-wait expiries.
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }
}

struct MemoryAcker {
    bus: MemoryBus,
    stream: String,
    consumer: String,
    sequence: u64,
}

impl MemoryAcker {
    fn settle(&self, redeliver_after: Option<Duration>) {
        let mut state = self.bus.lock();
        let Some(consumer) = state
            .streams
            .get_mut(&self.stream)
            .and_then(|stream| stream.consumers.get_mut(&self.consumer))
        else {
            return;
        };
        match redeliver_after {
            None => {
                consumer.pending.remove(&self.sequence);
            }
            Some(delay) => {
                if let Some((_, redeliver_at)) = consumer.pending.get_mut(&self.sequence) {
                    *redeliver_at = Instant::now() + delay;
                }
            }
        }
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        self.settle(None);
        Ok(())
    }

    async fn nak(self: Box<Self>, delay: Duration) -> Result<(), BusError> {
        self.settle(Some(delay));
        self.bus.notify.notify_waiters();
        Ok(())
    }

    async fn term(self: Box<Self>) -> Result<(), BusError> {
        self.settle(None);
        Ok(())
    }
}
