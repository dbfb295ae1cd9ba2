//! The event bus conformance suite, on NATS JetStream (the shared test server, a fresh
//! namespace per test) and on the in-process bus: delivery, de-duplication, redelivery,
//! durable resumption, consumers' idempotency, bounded retries and dead letters, and the
//! outbox relay.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aida_core::bus::{ConsumerSpec, DEAD_LETTER_STREAM, EventBus, OutgoingMessage};
use aida_core::consumer::{self, ConsumerOptions, EventHandler, HandlerError, claim};
use aida_core::db::{Count, Database, Sql, core_migrations};
use aida_core::outbox::{Relay, enqueue};
use aida_core::settings::OutboxSettings;
use aida_core::testing::{TestBus, eventually, shared_nats_url};
use aida_proto::aida::events::v1::EventEnvelope;
use async_trait::async_trait;
use bytes::Bytes;
use prost::Message;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Nats,
    Memory,
}

async fn bus(kind: Kind) -> TestBus {
    let bus = match kind {
        Kind::Nats => TestBus::nats(&shared_nats_url()).await,
        Kind::Memory => TestBus::memory(),
    };
    bus.shared().ensure_streams().await.expect("streams");
    bus
}

fn message(event_type: &str, id: &str, payload: &[u8]) -> OutgoingMessage {
    OutgoingMessage {
        event_type: event_type.into(),
        message_id: id.into(),
        payload: Bytes::copy_from_slice(payload),
        headers: vec![("traceparent".into(), "00-abc-def-01".into())],
    }
}

fn spec(name: &str, filter: Option<&str>, ack_wait: Duration) -> ConsumerSpec {
    ConsumerSpec::durable(name, "CRM_LEADS", filter, ack_wait)
}

async fn publish_all(bus: &dyn EventBus, messages: &[OutgoingMessage]) {
    for result in bus.publish(messages).await {
        result.expect("publish");
    }
}

async fn next(source: &mut Box<dyn aida_core::bus::MessageSource>) -> aida_core::bus::Delivery {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(delivery) = source.next().await {
                return delivery;
            }
        }
    })
    .await
    .expect("a delivery within 10 s")
}

async fn a_published_message_is_delivered_with_its_id_and_headers(kind: Kind) {
    let test = bus(kind).await;
    let bus = test.shared();
    publish_all(bus.as_ref(), &[message("leads.captured", "m1", b"hello")]).await;
    let mut source = bus
        .subscribe(&spec("reader", None, Duration::from_secs(30)))
        .await
        .expect("subscribe");
    let delivery = next(&mut source).await;
    assert_eq!(delivery.event_type, "leads.captured");
    assert_eq!(delivery.message_id.as_deref(), Some("m1"));
    assert_eq!(delivery.payload.as_ref(), b"hello");
    assert_eq!(delivery.attempt, 1);
    assert_eq!(delivery.header("traceparent"), Some("00-abc-def-01"));
    delivery.ack().await.expect("ack");
}

async fn a_repeated_message_id_is_stored_once(kind: Kind) {
    let test = bus(kind).await;
    let bus = test.shared();
    publish_all(
        bus.as_ref(),
        &[
            message("leads.captured", "same", b"1"),
            message("leads.captured", "same", b"1"),
        ],
    )
    .await;
    publish_all(
        bus.as_ref(),
        &[
            message("leads.captured", "same", b"1"),
            message("leads.qualified", "other", b"2"),
        ],
    )
    .await;
    let stored = test.stored("CRM_LEADS").await;
    let ids: Vec<&str> = stored
        .iter()
        .map(|message| message.message_id.as_str())
        .collect();
    assert_eq!(ids, ["same", "other"]);
}

async fn a_nakked_message_comes_back_with_the_next_attempt_number(kind: Kind) {
    let test = bus(kind).await;
    let bus = test.shared();
    publish_all(bus.as_ref(), &[message("leads.captured", "m1", b"x")]).await;
    let mut source = bus
        .subscribe(&spec("retrier", None, Duration::from_secs(30)))
        .await
        .expect("subscribe");
    let first = next(&mut source).await;
    assert_eq!(first.attempt, 1);
    first.nak(Duration::from_millis(100)).await.expect("nak");
    let second = next(&mut source).await;
    assert_eq!(second.message_id.as_deref(), Some("m1"));
    assert_eq!(second.attempt, 2);
    second.ack().await.expect("ack");
}

async fn an_unsettled_message_is_redelivered_after_the_ack_wait(kind: Kind) {
    let test = bus(kind).await;
    let bus = test.shared();
    publish_all(bus.as_ref(), &[message("leads.captured", "m1", b"x")]).await;
    let mut source = bus
        .subscribe(&spec("forgetful", None, Duration::from_secs(1)))
        .await
        .expect("subscribe");
    let first = next(&mut source).await;
    drop(first);
    let again = next(&mut source).await;
    assert_eq!(again.message_id.as_deref(), Some("m1"));
    assert_eq!(again.attempt, 2);
    again.ack().await.expect("ack");
}

async fn a_durable_consumer_resumes_after_the_last_acked_message(kind: Kind) {
    let test = bus(kind).await;
    let bus = test.shared();
    publish_all(
        bus.as_ref(),
        &[
            message("leads.captured", "a", b"a"),
            message("leads.captured", "b", b"b"),
            message("leads.captured", "c", b"c"),
        ],
    )
    .await;
    // A short ack wait: JetStream may have handed "c" to the first feed already (pull
    // batches prefetch), and it comes back to the durable consumer after the ack wait.
    {
        let mut source = bus
            .subscribe(&spec("durable", None, Duration::from_secs(2)))
            .await
            .expect("subscribe");
        for expected in ["a", "b"] {
            let delivery = next(&mut source).await;
            assert_eq!(delivery.message_id.as_deref(), Some(expected));
            delivery.ack().await.expect("ack");
        }
    }
    let mut resumed = bus
        .subscribe(&spec("durable", None, Duration::from_secs(2)))
        .await
        .expect("resubscribe");
    let delivery = next(&mut resumed).await;
    assert_eq!(delivery.message_id.as_deref(), Some("c"));
    delivery.ack().await.expect("ack");
}

async fn a_filter_selects_the_subjects_a_consumer_sees(kind: Kind) {
    let test = bus(kind).await;
    let bus = test.shared();
    publish_all(
        bus.as_ref(),
        &[
            message("leads.captured", "a", b"a"),
            message("leads.qualified", "b", b"b"),
            message("leads.captured", "c", b"c"),
        ],
    )
    .await;
    let mut source = bus
        .subscribe(&spec(
            "qualified-only",
            Some("leads.qualified"),
            Duration::from_secs(30),
        ))
        .await
        .expect("subscribe");
    let delivery = next(&mut source).await;
    assert_eq!(delivery.message_id.as_deref(), Some("b"));
    delivery.ack().await.expect("ack");
}

async fn an_ephemeral_consumer_sees_only_messages_published_after_it_subscribed(kind: Kind) {
    let test = bus(kind).await;
    let bus = test.shared();
    publish_all(bus.as_ref(), &[message("leads.captured", "old", b"old")]).await;
    let mut source = bus
        .subscribe(&ConsumerSpec::ephemeral("watcher", "CRM_LEADS", None))
        .await
        .expect("subscribe");
    publish_all(bus.as_ref(), &[message("leads.captured", "new", b"new")]).await;
    let delivery = next(&mut source).await;
    assert_eq!(delivery.message_id.as_deref(), Some("new"));
    delivery.ack().await.expect("ack");
}

/// A handler that records each event's effect in SQLite, once, through the inbox; it fails
/// transiently for `fail_first` calls and calls events of type `leads.poison` poison.
struct Recorder {
    db: Database,
    calls: AtomicU32,
    fail_first: u32,
}

#[async_trait]
impl EventHandler for Recorder {
    async fn handle(&self, event: &EventEnvelope) -> Result<(), HandlerError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if event.event_type == "leads.poison" {
            return Err(HandlerError::Poison("cannot handle this".into()));
        }
        if call < self.fail_first {
            return Err(HandlerError::Transient(format!("failure {call}")));
        }
        let mut tx = self.db.begin().await?;
        if claim(&mut tx, "recorder", &event.event_id).await? {
            tx.execute(
                Sql::new("INSERT INTO effects (event_id) VALUES ($1)")
                    .bind(event.event_id.as_str()),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

struct ConsumerFixture {
    test: TestBus,
    db: Database,
    handler: Arc<Recorder>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl ConsumerFixture {
    async fn start(kind: Kind, fail_first: u32, max_deliver: u32) -> Self {
        let test = bus(kind).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let url = SecretString::from(format!(
            "sqlite://{}/effects.db?mode=rwc",
            dir.path().display()
        ));
        let db = Database::connect(&url).await.expect("connect");
        db.migrate(&mut core_migrations()).await.expect("migrate");
        db.execute(Sql::new("CREATE TABLE effects (event_id TEXT NOT NULL)"))
            .await
            .expect("effects");
        let handler = Arc::new(Recorder {
            db: db.clone(),
            calls: AtomicU32::new(0),
            fail_first,
        });
        let shutdown = CancellationToken::new();
        let options = ConsumerOptions {
            spec: spec("recorder", None, Duration::from_secs(30)),
            max_deliver,
        };
        tokio::spawn(consumer::run(
            test.shared(),
            options,
            handler.clone(),
            shutdown.clone(),
        ));
        Self {
            test,
            db,
            handler,
            shutdown,
            _dir: dir,
        }
    }

    async fn effects(&self) -> i64 {
        let count: Count = self
            .db
            .fetch_one(Sql::new("SELECT COUNT(*) AS count FROM effects"))
            .await
            .expect("count");
        count.count
    }

    async fn dead_letters(&self) -> Vec<aida_core::testing::StoredMessage> {
        self.test.stored(DEAD_LETTER_STREAM).await
    }
}

impl Drop for ConsumerFixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn envelope(event_type: &str, event_id: &str) -> Bytes {
    Bytes::from(
        EventEnvelope {
            event_id: event_id.into(),
            event_type: event_type.into(),
            tenant_id: "acme".into(),
            ..EventEnvelope::default()
        }
        .encode_to_vec(),
    )
}

async fn a_redelivered_event_has_its_effect_once(kind: Kind) {
    let fixture = ConsumerFixture::start(kind, 0, 5).await;
    let bus = fixture.test.shared();
    // The same event twice under different message ids: past the bus's de-duplication,
    // as after a republish outside the duplicate window. The inbox must catch it.
    let event = envelope("leads.captured", "event-1");
    let mut first = message("leads.captured", "copy-1", b"");
    first.payload = event.clone();
    let mut second = message("leads.captured", "copy-2", b"");
    second.payload = event;
    publish_all(bus.as_ref(), &[first, second]).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            fixture.handler.calls.load(Ordering::SeqCst) >= 2
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fixture.effects().await, 1);
}

async fn a_poison_message_is_dead_lettered_and_the_consumer_keeps_going(kind: Kind) {
    let fixture = ConsumerFixture::start(kind, 0, 5).await;
    let bus = fixture.test.shared();
    let mut undecodable = message("leads.captured", "garbage", b"\xff\xff\xff not protobuf");
    undecodable.headers.clear();
    let mut poison = message("leads.poison", "poison", b"");
    poison.payload = envelope("leads.poison", "event-poison");
    let mut good = message("leads.captured", "good", b"");
    good.payload = envelope("leads.captured", "event-good");
    publish_all(bus.as_ref(), &[undecodable, poison, good]).await;

    assert!(
        eventually(Duration::from_secs(10), || async {
            fixture.effects().await == 1
        })
        .await,
        "good event handled"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            fixture.dead_letters().await.len() == 2
        })
        .await,
        "two dead letters"
    );
    let dead = fixture.dead_letters().await;
    assert_eq!(dead[0].event_type, "dlq.recorder");
    assert_eq!(dead[0].payload.as_ref(), b"\xff\xff\xff not protobuf");
    assert_eq!(dead[1].message_id, "recorder:poison");
}

async fn a_failing_event_is_retried_then_dead_lettered_after_max_deliver(kind: Kind) {
    let fixture = ConsumerFixture::start(kind, u32::MAX, 3).await;
    let bus = fixture.test.shared();
    let mut failing = message("leads.captured", "failing", b"");
    failing.payload = envelope("leads.captured", "event-failing");
    publish_all(bus.as_ref(), &[failing]).await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            fixture.dead_letters().await.len() == 1
        })
        .await
    );
    assert_eq!(
        fixture.handler.calls.load(Ordering::SeqCst),
        3,
        "exactly max_deliver attempts"
    );
    assert_eq!(fixture.effects().await, 0);
}

async fn a_transient_failure_is_retried_until_it_succeeds(kind: Kind) {
    let fixture = ConsumerFixture::start(kind, 2, 5).await;
    let bus = fixture.test.shared();
    let mut flaky = message("leads.captured", "flaky", b"");
    flaky.payload = envelope("leads.captured", "event-flaky");
    publish_all(bus.as_ref(), &[flaky]).await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            fixture.effects().await == 1
        })
        .await
    );
    assert!(fixture.dead_letters().await.is_empty());
}

async fn the_relay_publishes_committed_events_once_even_when_republished(kind: Kind) {
    let test = bus(kind).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = SecretString::from(format!(
        "sqlite://{}/outbox.db?mode=rwc",
        dir.path().display()
    ));
    let db = Database::connect(&url).await.expect("connect");
    db.migrate(&mut core_migrations()).await.expect("migrate");
    let relay = Relay::new(
        db.clone(),
        test.shared(),
        OutboxSettings {
            poll_interval_ms: 50,
            batch_size: 2,
            retention_hours: 24,
        },
    );
    let mut ids = Vec::new();
    let mut tx = db.begin().await.expect("begin");
    for index in 0..5 {
        let event = EventEnvelope {
            event_id: uuid::Uuid::now_v7().to_string(),
            event_type: if index % 2 == 0 {
                "leads.captured"
            } else {
                "leads.qualified"
            }
            .into(),
            tenant_id: "acme".into(),
            ..EventEnvelope::default()
        };
        ids.push(event.event_id.clone());
        enqueue(&mut tx, &event).await.expect("enqueue");
    }
    // Not committed yet: nothing may be published.
    assert_eq!(relay.publish_pending().await.expect("publish"), 0);
    tx.commit().await.expect("commit");

    let mut published = 0;
    while published < 5 {
        published += relay.publish_pending().await.expect("publish");
    }
    let stored = test.stored("CRM_LEADS").await;
    let stored_ids: Vec<&str> = stored
        .iter()
        .map(|message| message.message_id.as_str())
        .collect();
    assert_eq!(
        stored_ids,
        ids.iter().map(String::as_str).collect::<Vec<_>>(),
        "in commit order"
    );

    // The relay crashed after the publish and before the mark: everything goes again.
    db.execute(Sql::new("UPDATE outbox SET published_at = NULL"))
        .await
        .expect("reset");
    let mut republished = 0;
    while republished < 5 {
        republished += relay.publish_pending().await.expect("publish");
    }
    assert_eq!(
        test.stored("CRM_LEADS").await.len(),
        5,
        "the duplicate window dropped the copies"
    );
    assert_eq!(relay.pending_count().await.expect("pending"), 0);
    let envelope_back = EventEnvelope::decode(stored[0].payload.as_ref()).expect("decode");
    assert_eq!(envelope_back.event_id, ids[0]);
    assert!(stored.iter().all(|message| !message.message_id.is_empty()));
}

macro_rules! conformance {
    ($kind:ident, $module:ident) => {
        mod $module {
            use super::*;
            conformance!(@tests $kind,
                a_published_message_is_delivered_with_its_id_and_headers,
                a_repeated_message_id_is_stored_once,
                a_nakked_message_comes_back_with_the_next_attempt_number,
                an_unsettled_message_is_redelivered_after_the_ack_wait,
                a_durable_consumer_resumes_after_the_last_acked_message,
                a_filter_selects_the_subjects_a_consumer_sees,
                an_ephemeral_consumer_sees_only_messages_published_after_it_subscribed,
                a_redelivered_event_has_its_effect_once,
                a_poison_message_is_dead_lettered_and_the_consumer_keeps_going,
                a_failing_event_is_retried_then_dead_lettered_after_max_deliver,
                a_transient_failure_is_retried_until_it_succeeds,
                the_relay_publishes_committed_events_once_even_when_republished
            );
        }
    };
    (@tests $kind:ident, $($name:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(Kind::$kind).await;
            }
        )+
    };
}

conformance!(Nats, on_jetstream);
conformance!(Memory, in_process);

// The embedded bus with its journal (`aida up`): what it accepted survives the process.

fn journaled(dir: &std::path::Path) -> aida_core::bus::MemoryBus {
    let settings = aida_core::Settings::embedded().bus;
    aida_core::bus::MemoryBus::open(&settings, dir).expect("open the journaled bus")
}

/// Delivers the next message of `source` within 2 s, or none.
async fn maybe_next(
    source: &mut Box<dyn aida_core::bus::MessageSource>,
) -> Option<aida_core::bus::Delivery> {
    tokio::time::timeout(Duration::from_secs(2), source.next())
        .await
        .ok()
        .and_then(Result::ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_embedded_bus_keeps_every_accepted_message_and_redelivers_only_the_unsettled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let durable = spec("journal", None, Duration::from_secs(30));
    {
        let bus = journaled(dir.path());
        let batch: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|id| message("leads.captured", id, id.as_bytes()))
            .collect();
        publish_all(&bus, &batch).await;
        let mut source = bus.subscribe(&durable).await.expect("subscribe");
        let first = next(&mut source).await;
        assert_eq!(first.message_id.as_deref(), Some("a"));
        first.ack().await.expect("ack a");
        let second = next(&mut source).await;
        assert_eq!(second.message_id.as_deref(), Some("b"));
        // b is delivered and never settled: the process "dies" here.
        drop(second);
    }

    let bus = journaled(dir.path());
    // The relay of the next run may publish again what the last run accepted: stored once.
    publish_all(&bus, &[message("leads.captured", "a", b"a")]).await;
    let stored: Vec<String> = bus
        .stored("CRM_LEADS")
        .into_iter()
        .map(|(_, id, _)| id)
        .collect();
    assert_eq!(stored, ["a", "b", "c"]);
    let mut source = bus.subscribe(&durable).await.expect("resubscribe");
    let mut redelivered = Vec::new();
    while let Some(delivery) = maybe_next(&mut source).await {
        redelivered.push(delivery.message_id.clone().unwrap_or_default());
        assert_eq!(
            delivery.headers,
            [("traceparent".to_owned(), "00-abc-def-01".to_owned())]
        );
        delivery.ack().await.expect("ack");
    }
    assert_eq!(redelivered, ["b", "c"], "a was settled before the restart");

    // Settled for good: a third run delivers nothing more, and keeps the three messages.
    drop(source);
    drop(bus);
    let bus = journaled(dir.path());
    assert_eq!(bus.stored("CRM_LEADS").len(), 3);
    let mut source = bus.subscribe(&durable).await.expect("third run");
    assert!(maybe_next(&mut source).await.is_none());
}

#[tokio::test]
async fn a_torn_journal_tail_is_cut_off_and_the_bus_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let bus = journaled(dir.path());
        publish_all(&bus, &[message("leads.captured", "whole", b"1")]).await;
    }
    // A crash in the middle of a write leaves half a frame.
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("journal"))
        .expect("journal")
        .write_all(&[42, 0, 0, 0, 1, 2])
        .expect("tear");
    {
        let bus = journaled(dir.path());
        assert_eq!(bus.stored("CRM_LEADS").len(), 1);
        publish_all(&bus, &[message("leads.captured", "after", b"2")]).await;
    }
    let bus = journaled(dir.path());
    let ids: Vec<String> = bus
        .stored("CRM_LEADS")
        .into_iter()
        .map(|(_, id, _)| id)
        .collect();
    assert_eq!(ids, ["whole", "after"]);
}

#[tokio::test]
async fn a_journal_in_use_is_refused_to_a_second_bus() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = journaled(dir.path());
    let settings = aida_core::Settings::embedded().bus;
    let second = aida_core::bus::MemoryBus::open(&settings, dir.path());
    let Err(error) = second else {
        panic!("two buses opened one journal");
    };
    assert!(error.to_string().contains("in use"), "{error}");
}
