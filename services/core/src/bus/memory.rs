//! The embedded bus for `aida up`: streams and durable consumers in process, with the same
//! contract as JetStream (duplicate window by message id, explicit acks, redelivery after
//! the ack wait or a nak, attempt counting).
//!
//! Opened on a directory ([`MemoryBus::open`], what `aida up` does) it keeps a [`Journal`]
//! there: a message is on the disk before `publish` returns, and acks are recorded, so a
//! process killed and started again has every accepted message and redelivers what its
//! durable consumers had not settled. [`MemoryBus::new`] (tests) keeps nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;

use super::journal::{Acked, Entry, Journal, Published};
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
    /// When the bus accepted it (Unix milliseconds).
    unix_ms: i64,
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

    /// Stores a message at the next sequence; the oldest falls out past the limit.
    fn push(&mut self, stored: Stored) {
        self.messages.push_back(stored);
        if self.messages.len() > MAX_MESSAGES_PER_STREAM {
            self.messages.pop_front();
            self.first_sequence += 1;
        }
    }
}

/// What one `publish` stores: a result per message, and the new messages with their
/// streams and sequences.
#[derive(Default)]
struct Accepted {
    results: Vec<Result<(), BusError>>,
    messages: Vec<(String, u64, Stored)>,
}

/// The journal entry of a stored message.
fn published(stream: &str, sequence: u64, message: &Stored) -> Entry {
    let (header_names, header_values) = message.headers.iter().cloned().unzip();
    Entry {
        message: Some(Published {
            stream: stream.to_owned(),
            sequence,
            subject: message.subject.clone(),
            message_id: message.message_id.clone(),
            payload: message.payload.clone(),
            header_names,
            header_values,
            unix_ms: message.unix_ms,
        }),
        ack: None,
    }
}

struct MemoryConsumer {
    filter: Option<String>,
    ack_wait: Duration,
    /// Kept in the journal (its acks are recorded); false for ephemeral consumers.
    durable: bool,
    /// Next never-delivered sequence.
    cursor: u64,
    /// Delivered, not yet settled: sequence → (attempts, redeliver at).
    pending: BTreeMap<u64, (u64, Instant)>,
    /// Sequences at or after `cursor` settled in an earlier run (read from the journal):
    /// passed over, not delivered again.
    settled: BTreeSet<u64>,
}

impl MemoryConsumer {
    fn new(filter: Option<String>, ack_wait: Duration, durable: bool, cursor: u64) -> Self {
        Self {
            filter,
            ack_wait,
            durable,
            cursor,
            pending: BTreeMap::new(),
            settled: BTreeSet::new(),
        }
    }
}

struct State {
    streams: HashMap<String, MemoryStream>,
}

/// The in-process [`EventBus`].
#[derive(Clone)]
pub struct MemoryBus {
    state: Arc<Mutex<State>>,
    /// Taken before `state` wherever both are held.
    journal: Option<Arc<Mutex<Journal>>>,
    notify: Arc<Notify>,
    topology: Topology,
    duplicate_window: Duration,
}

fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

fn io_error(error: std::io::Error) -> BusError {
    BusError::Other(format!("event journal: {error}"))
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
            journal: None,
            notify: Arc::new(Notify::new()),
            topology,
            duplicate_window: Duration::from_secs(settings.duplicate_window_secs),
        }
    }

    /// A bus that keeps its journal in `dir`: what an earlier run accepted is there again,
    /// and each durable consumer resumes after what it settled. The journal is compacted.
    pub fn open(settings: &BusSettings, dir: &Path) -> Result<Self, BusError> {
        let (journal, entries) = Journal::open(dir).map_err(io_error)?;
        let mut bus = Self::new(settings);
        bus.replay(entries);
        bus.journal = Some(Arc::new(Mutex::new(journal)));
        bus.compact().map_err(io_error)?;
        Ok(bus)
    }

    /// Rebuilds the streams and the durable consumers' progress from journal entries.
    fn replay(&self, entries: Vec<Entry>) {
        let now = Instant::now();
        let wall = unix_ms_now();
        let mut state = self.lock();
        for entry in entries {
            if let Some(message) = entry.message {
                let Some(stream) = state.streams.get_mut(&message.stream) else {
                    continue;
                };
                if message.sequence < stream.next_sequence() && !stream.messages.is_empty() {
                    continue;
                }
                if message.sequence != stream.next_sequence() {
                    // The first message kept (older ones fell out of the retention limit).
                    stream.messages.clear();
                    stream.first_sequence = message.sequence;
                }
                let age = Duration::from_millis(u64::try_from(wall - message.unix_ms).unwrap_or(0));
                if age < self.duplicate_window {
                    let seen = now.checked_sub(age).unwrap_or(now);
                    stream.seen_ids.insert(message.message_id.clone(), seen);
                }
                stream.push(Stored {
                    subject: message.subject,
                    message_id: message.message_id,
                    payload: message.payload,
                    headers: message
                        .header_names
                        .into_iter()
                        .zip(message.header_values)
                        .collect(),
                    unix_ms: message.unix_ms,
                });
            }
            if let Some(ack) = entry.ack {
                let Some(stream) = state.streams.get_mut(&ack.stream) else {
                    continue;
                };
                // Filter and ack wait come with the consumer's next subscribe.
                let consumer = stream
                    .consumers
                    .entry(ack.consumer)
                    .or_insert_with(|| MemoryConsumer::new(None, Duration::from_secs(30), true, 0));
                if ack.up_to {
                    consumer.cursor = consumer.cursor.max(ack.sequence + 1);
                    consumer.settled = consumer.settled.split_off(&consumer.cursor);
                } else if ack.sequence >= consumer.cursor {
                    consumer.settled.insert(ack.sequence);
                }
            }
        }
    }

    /// Rewrites the journal to what the bus holds: the messages kept and, per durable
    /// consumer, the sequence up to which everything is settled and what is settled after it.
    fn compact(&self) -> std::io::Result<()> {
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        let mut journal = journal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entries = {
            let state = self.lock();
            let mut entries = Vec::new();
            for (name, stream) in &state.streams {
                for (offset, message) in stream.messages.iter().enumerate() {
                    entries.push(published(
                        name,
                        stream.first_sequence + offset as u64,
                        message,
                    ));
                }
                for (consumer_name, consumer) in &stream.consumers {
                    if !consumer.durable {
                        continue;
                    }
                    let passed = consumer.cursor.max(stream.first_sequence);
                    let floor = consumer.pending.keys().next().copied().unwrap_or(passed);
                    let acked = |sequence: u64, up_to: bool| Entry {
                        message: None,
                        ack: Some(Acked {
                            stream: name.clone(),
                            consumer: consumer_name.clone(),
                            sequence,
                            up_to,
                        }),
                    };
                    if floor > 0 {
                        entries.push(acked(floor - 1, true));
                    }
                    for sequence in floor..passed {
                        if !consumer.pending.contains_key(&sequence) {
                            entries.push(acked(sequence, false));
                        }
                    }
                    for sequence in &consumer.settled {
                        entries.push(acked(*sequence, false));
                    }
                }
            }
            entries
        };
        journal.rewrite(entries)
    }

    /// What `publish` of `messages` stores: per message its result, and the new messages
    /// (not seen within the duplicate window) with their streams and sequences. Changes
    /// nothing but expiring old message ids.
    fn accept(&self, state: &mut State, messages: &[OutgoingMessage]) -> Accepted {
        let now = Instant::now();
        let unix_ms = unix_ms_now();
        let mut accepted = Accepted::default();
        let mut batch_ids = std::collections::HashSet::new();
        let mut added: HashMap<String, u64> = HashMap::new();
        for message in messages {
            let stream_name = match self.stream_of(state, message) {
                Ok(name) => name,
                Err(error) => {
                    accepted.results.push(Err(error));
                    continue;
                }
            };
            let Some(stream) = state.streams.get_mut(&stream_name) else {
                accepted
                    .results
                    .push(Err(BusError::Other(format!("no stream {stream_name}"))));
                continue;
            };
            let window = self.duplicate_window;
            stream
                .seen_ids
                .retain(|_, seen| now.duration_since(*seen) < window);
            accepted.results.push(Ok(()));
            if stream.seen_ids.contains_key(&message.message_id)
                || !batch_ids.insert((stream_name.clone(), message.message_id.clone()))
            {
                continue;
            }
            let offset = added.entry(stream_name.clone()).or_insert(0);
            let sequence = stream.next_sequence() + *offset;
            *offset += 1;
            accepted.messages.push((
                stream_name,
                sequence,
                Stored {
                    subject: self.topology.subject(&message.event_type),
                    message_id: message.message_id.clone(),
                    payload: message.payload.clone(),
                    headers: message.headers.clone(),
                    unix_ms,
                },
            ));
        }
        accepted
    }

    /// Stores what [`Self::accept`] accepted and wakes the consumers.
    fn store(&self, state: &mut State, accepted: Vec<(String, u64, Stored)>) {
        let now = Instant::now();
        for (stream_name, _, stored) in accepted {
            if let Some(stream) = state.streams.get_mut(&stream_name) {
                stream.seen_ids.insert(stored.message_id.clone(), now);
                stream.push(stored);
            }
        }
        self.notify.notify_waiters();
    }

    /// `publish` through the journal: the accepted messages are on the disk before they are
    /// visible to consumers. Publishers take turns on the journal, so the sequences
    /// [`Self::accept`] gives stay right until they are stored.
    fn publish_journaled(
        &self,
        journal: &Mutex<Journal>,
        messages: &[OutgoingMessage],
    ) -> Vec<Result<(), BusError>> {
        let mut journal = journal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let accepted = self.accept(&mut self.lock(), messages);
        let entries: Vec<Entry> = accepted
            .messages
            .iter()
            .map(|(stream, sequence, stored)| published(stream, *sequence, stored))
            .collect();
        if let Err(error) = journal.append(&entries, true) {
            let error = io_error(error);
            return messages
                .iter()
                .map(|_| Err(BusError::Other(error.to_string())))
                .collect();
        }
        self.store(&mut self.lock(), accepted.messages);
        if journal.wants_compaction() {
            drop(journal);
            if let Err(error) = self.compact() {
                tracing::warn!(%error, "compacting the event journal failed; it keeps growing");
            }
        }
        accepted.results
    }

    /// The stream that holds `message`'s subject.
    fn stream_of(&self, state: &State, message: &OutgoingMessage) -> Result<String, BusError> {
        let Some(stream_name) = self.topology.stream_for(&message.event_type) else {
            return Err(BusError::Other(format!(
                "no stream holds subject {}",
                message.event_type
            )));
        };
        if !state.streams.contains_key(&stream_name) {
            return Err(BusError::Other(format!("no stream {stream_name}")));
        }
        Ok(stream_name)
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
        if let Some(journal) = self.journal.clone() {
            // The journal writes and flushes a file: off the async workers.
            let bus = self.clone();
            let messages = messages.to_vec();
            let count = messages.len();
            return tokio::task::spawn_blocking(move || bus.publish_journaled(&journal, &messages))
                .await
                .unwrap_or_else(|error| {
                    (0..count)
                        .map(|_| Err(BusError::Other(format!("event journal: {error}"))))
                        .collect()
                });
        }
        let mut state = self.lock();
        let accepted = self.accept(&mut state, messages);
        self.store(&mut state, accepted.messages);
        accepted.results
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
            let filter = spec
                .filter
                .as_deref()
                .map(|filter| self.topology.subject(filter));
            let consumer = stream
                .consumers
                .entry(spec.durable_name.clone())
                .or_insert_with(|| {
                    MemoryConsumer::new(None, spec.ack_wait, !spec.ephemeral, first_sequence)
                });
            // A consumer read back from the journal learns its filter and ack wait here.
            consumer.filter = filter;
            consumer.ack_wait = spec.ack_wait;
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
                    if matches && !consumer.settled.contains(&sequence) {
                        found = Some((sequence, 1));
                        break;
                    }
                }
                if let Some(consumer) = stream.consumers.get_mut(&self.consumer) {
                    consumer.cursor = cursor;
                    if !consumer.settled.is_empty() {
                        consumer.settled = consumer.settled.split_off(&cursor);
                    }
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
            durable: !self.ephemeral,
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
    durable: bool,
    sequence: u64,
}

impl MemoryAcker {
    fn settle(&self, redeliver_after: Option<Duration>) {
        // A durable consumer's ack goes into the journal (not flushed: losing it to a crash
        // of the machine only means one redelivery), before the state it describes.
        let _journal = match (&self.bus.journal, redeliver_after) {
            (Some(journal), None) if self.durable => {
                let mut journal = journal
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let entry = Entry {
                    message: None,
                    ack: Some(Acked {
                        stream: self.stream.clone(),
                        consumer: self.consumer.clone(),
                        sequence: self.sequence,
                        up_to: false,
                    }),
                };
                if let Err(error) = journal.append(&[entry], false) {
                    tracing::warn!(%error, "recording an ack in the event journal failed; it will be redelivered after a restart");
                }
                Some(journal)
            }
            _ => None,
        };
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
