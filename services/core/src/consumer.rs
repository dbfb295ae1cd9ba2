//! Durable event consumers: decode the envelope, hand it to a handler, settle the delivery.
//!
//! - A message that cannot be decoded, or that the handler calls poison, goes to the
//!   dead-letter stream at once and is acked; the consumer keeps going.
//! - A transient failure is retried with backoff; after `max_deliver` deliveries the
//!   message is dead-lettered too. Redelivery is bounded and nothing is dropped silently.
//! - Handlers make themselves idempotent with [`claim`]: the event id is recorded in the
//!   same transaction as the handler's effect, so a redelivered event changes nothing.

use std::sync::Arc;
use std::time::Duration;

use aida_proto::aida::events::v1::EventEnvelope;
use async_trait::async_trait;
use chrono::Utc;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::bus::{ConsumerSpec, Delivery, EventBus, MessageSource, OutgoingMessage, headers};
use crate::db::{Sql, Tx};
use crate::error::Error;

/// Why a handler did not finish.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying (a dependency is down, a conflict).
    #[error("transient: {0}")]
    Transient(String),
    /// Never going to work (invalid content): dead-letter it now.
    #[error("poison: {0}")]
    Poison(String),
}

impl From<Error> for HandlerError {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidArgument(_) | Error::NotFound { .. } => Self::Poison(error.to_string()),
            other => Self::Transient(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        Self::Transient(error.to_string())
    }
}

/// Handles one event type or several.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    async fn handle(&self, event: &EventEnvelope) -> Result<(), HandlerError>;
}

/// Records that `consumer` handled `event_id`, inside the transaction of its effect.
/// Returns false if it was handled before: the caller then skips the effect.
pub async fn claim(tx: &mut Tx, consumer: &str, event_id: &str) -> Result<bool, sqlx::Error> {
    let inserted = tx
        .execute(
            Sql::new(
                "INSERT INTO processed_events (consumer, event_id, processed_at) \
                 VALUES ($1, $2, $3) ON CONFLICT (consumer, event_id) DO NOTHING",
            )
            .bind(consumer)
            .bind(event_id)
            .bind(Utc::now()),
        )
        .await?;
    Ok(inserted == 1)
}

/// [`claim`] for a batch of event ids in one statement per 300: the ids claimed now (an
/// id seen before, or twice in `event_ids`, is claimed once).
pub async fn claim_many(
    tx: &mut Tx,
    consumer: &str,
    event_ids: &[&str],
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Claimed {
        event_id: String,
    }
    let mut claimed = std::collections::HashSet::with_capacity(event_ids.len());
    let now = Utc::now();
    for chunk in event_ids.chunks(300) {
        let mut sql =
            Sql::new("INSERT INTO processed_events (consumer, event_id, processed_at) VALUES ");
        for (n, id) in chunk.iter().enumerate() {
            sql.push(if n == 0 { "(" } else { ", (" });
            sql.push_arg(consumer).push(", ");
            sql.push_arg(*id).push(", ");
            sql.push_arg(now).push(")");
        }
        sql.push(" ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id");
        let rows: Vec<Claimed> = tx.fetch_all(sql).await?;
        claimed.extend(rows.into_iter().map(|row| row.event_id));
    }
    Ok(claimed)
}

/// Follows an ephemeral feed (`spec`, a per-replica consumer starting at new messages)
/// until `shutdown`, handing every decodable envelope to `on_event` and acking it;
/// re-subscribes when the bus drops the feed. Undecodable messages are the durable
/// consumers' business (dead letters): a follower skips them. `what` names the feed in logs.
pub async fn follow(
    bus: Arc<dyn EventBus>,
    spec: ConsumerSpec,
    what: &str,
    shutdown: CancellationToken,
    mut on_event: impl FnMut(EventEnvelope) + Send,
) {
    loop {
        let subscribed = async {
            bus.ensure_streams().await?;
            bus.subscribe(&spec).await
        };
        let mut source = tokio::select! {
            () = shutdown.cancelled() => return,
            result = subscribed => match result {
                Ok(source) => source,
                Err(error) => {
                    tracing::warn!(%error, "{what} unavailable; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        loop {
            let delivery = tokio::select! {
                () = shutdown.cancelled() => return,
                next = source.next() => next,
            };
            let Ok(delivery) = delivery else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            if let Ok(envelope) = EventEnvelope::decode(delivery.payload.as_ref()) {
                on_event(envelope);
            }
            let _ = delivery.ack().await;
        }
    }
}

/// How a consumer runs.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    pub spec: ConsumerSpec,
    /// Deliveries before a transiently failing message is dead-lettered.
    pub max_deliver: u32,
}

/// Consumes until `shutdown`. Subscribing is retried while the bus is unavailable.
pub async fn run(
    bus: Arc<dyn EventBus>,
    options: ConsumerOptions,
    handler: Arc<dyn EventHandler>,
    shutdown: CancellationToken,
) {
    let consumer = options.spec.durable_name.clone();
    register(&consumer);
    let Some(mut source) = subscribe_until_ready(bus.as_ref(), &options.spec, &shutdown).await
    else {
        return;
    };
    loop {
        let delivery = tokio::select! {
            () = shutdown.cancelled() => return,
            next = source.next() => next,
        };
        match delivery {
            Ok(delivery) => {
                process(
                    bus.as_ref(),
                    &consumer,
                    options.max_deliver,
                    handler.as_ref(),
                    delivery,
                )
                .await;
            }
            Err(error) => {
                tracing::debug!(%consumer, %error, "consumer feed interrupted");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }
}

/// Handles a batch of events at once (analytics ingestion: one DuckDB transaction per
/// batch instead of one per event).
#[async_trait]
pub trait BatchHandler: Send + Sync + 'static {
    async fn handle_batch(&self, events: &[EventEnvelope]) -> Result<(), HandlerError>;
}

/// How big a batch may grow and how long it may wait for more events.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    pub max_size: usize,
    pub max_wait: Duration,
}

/// Like [`run`], but hands events over in batches. A batch that fails is retried event by
/// event, so one poison event is dead-lettered alone and the rest go through.
pub async fn run_batched(
    bus: Arc<dyn EventBus>,
    options: ConsumerOptions,
    batch: BatchOptions,
    handler: Arc<dyn BatchHandler>,
    shutdown: CancellationToken,
) {
    let consumer = options.spec.durable_name.clone();
    register(&consumer);
    let Some(mut source) = subscribe_until_ready(bus.as_ref(), &options.spec, &shutdown).await
    else {
        return;
    };
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => return,
            next = source.next() => next,
        };
        let first = match first {
            Ok(delivery) => delivery,
            Err(error) => {
                tracing::debug!(%consumer, %error, "consumer feed interrupted");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            }
        };
        let mut deliveries = vec![first];
        let deadline = tokio::time::Instant::now() + batch.max_wait;
        while deliveries.len() < batch.max_size {
            match tokio::time::timeout_at(deadline, source.next()).await {
                Ok(Ok(delivery)) => deliveries.push(delivery),
                Ok(Err(_)) | Err(_) => break,
            }
        }

        let mut decoded = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            match EventEnvelope::decode(delivery.payload.as_ref()) {
                Ok(envelope) if !envelope.event_id.is_empty() => decoded.push((envelope, delivery)),
                Ok(_) => {
                    dead_letter(
                        bus.as_ref(),
                        &consumer,
                        delivery,
                        "envelope has no event id",
                    )
                    .await
                }
                Err(error) => {
                    dead_letter(
                        bus.as_ref(),
                        &consumer,
                        delivery,
                        &format!("undecodable envelope: {error}"),
                    )
                    .await;
                }
            }
        }
        if decoded.is_empty() {
            continue;
        }
        let events: Vec<EventEnvelope> = decoded
            .iter()
            .map(|(envelope, _)| envelope.clone())
            .collect();
        // The batch continues the trace of its first event; every other event's trace gets
        // a span of its own, linked to the batch.
        let batch_span = tracing::info_span!(
            "batch",
            otel.name = %format!("{consumer} batch"),
            otel.kind = "consumer",
            %consumer,
            size = events.len(),
            trace_id = tracing::field::Empty,
        );
        for (index, (envelope, delivery)) in decoded.iter().enumerate() {
            delivered(&consumer, delivery.attempt);
            let span = event_span(&consumer, envelope, delivery);
            if index == 0 {
                crate::telemetry::continue_trace(&batch_span, span.context());
            } else {
                span.follows_from(&batch_span);
            }
        }
        let started = std::time::Instant::now();
        let handled =
            tracing::Instrument::instrument(handler.handle_batch(&events), batch_span).await;
        metrics::histogram!(BATCH_SECONDS, "consumer" => consumer.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!(BATCH_SIZE, "consumer" => consumer.clone()).record(events.len() as f64);
        match handled {
            Ok(()) => {
                metrics::counter!(EVENTS, "consumer" => consumer.clone(), "outcome" => "ok")
                    .increment(events.len() as u64);
                for (_, delivery) in decoded {
                    if let Err(error) = delivery.ack().await {
                        tracing::warn!(%consumer, %error, "ack failed");
                    }
                }
            }
            Err(error) if decoded.len() == 1 => {
                let (_, delivery) = decoded.remove(0);
                settle_failure(
                    bus.as_ref(),
                    &consumer,
                    options.max_deliver,
                    delivery,
                    error,
                )
                .await;
            }
            Err(error) => {
                tracing::info!(%consumer, %error, size = decoded.len(), "batch failed; retrying event by event");
                for (envelope, delivery) in decoded {
                    match handler.handle_batch(std::slice::from_ref(&envelope)).await {
                        Ok(()) => {
                            metrics::counter!(EVENTS, "consumer" => consumer.clone(), "outcome" => "ok")
                                .increment(1);
                            if let Err(error) = delivery.ack().await {
                                tracing::warn!(%consumer, %error, "ack failed");
                            }
                        }
                        Err(error) => {
                            settle_failure(
                                bus.as_ref(),
                                &consumer,
                                options.max_deliver,
                                delivery,
                                error,
                            )
                            .await;
                        }
                    }
                }
            }
        }
    }
}

/// Subscribes, retrying while the bus is unavailable; `None` once `shutdown` fires.
async fn subscribe_until_ready(
    bus: &dyn EventBus,
    spec: &ConsumerSpec,
    shutdown: &CancellationToken,
) -> Option<Box<dyn MessageSource>> {
    loop {
        let attempt = async {
            bus.ensure_streams().await?;
            bus.subscribe(spec).await
        };
        tokio::select! {
            () = shutdown.cancelled() => return None,
            result = attempt => match result {
                Ok(source) => return Some(source),
                Err(error) => {
                    tracing::warn!(consumer = %spec.durable_name, %error, "cannot subscribe yet; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}

/// Dead-letters a poison delivery, or one that failed `max_deliver` times; naks the rest.
async fn settle_failure(
    bus: &dyn EventBus,
    consumer: &str,
    max_deliver: u32,
    delivery: Delivery,
    error: HandlerError,
) {
    let outcome = match &error {
        HandlerError::Transient(_) if delivery.attempt < u64::from(max_deliver) => "retried",
        _ => "dead_lettered",
    };
    metrics::counter!(EVENTS, "consumer" => consumer.to_owned(), "outcome" => outcome).increment(1);
    match error {
        HandlerError::Poison(reason) => {
            tracing::warn!(%reason, "poison event; dead-lettering");
            dead_letter(bus, consumer, delivery, &reason).await;
        }
        HandlerError::Transient(reason) => {
            if delivery.attempt >= u64::from(max_deliver) {
                tracing::warn!(%reason, "event failed {max_deliver} times; dead-lettering");
                dead_letter(bus, consumer, delivery, &reason).await;
            } else {
                let delay = retry_delay(delivery.attempt);
                tracing::info!(%reason, ?delay, "event failed; will be redelivered");
                if let Err(error) = delivery.nak(delay).await {
                    tracing::warn!(%error, "nak failed; redelivery after ack wait");
                }
            }
        }
    }
}

/// Handles one delivery and settles it.
async fn process(
    bus: &dyn EventBus,
    consumer: &str,
    max_deliver: u32,
    handler: &dyn EventHandler,
    delivery: Delivery,
) {
    let envelope = match EventEnvelope::decode(delivery.payload.as_ref()) {
        Ok(envelope) if !envelope.event_id.is_empty() => envelope,
        Ok(_) => {
            dead_letter(bus, consumer, delivery, "envelope has no event id").await;
            return;
        }
        Err(error) => {
            dead_letter(
                bus,
                consumer,
                delivery,
                &format!("undecodable envelope: {error}"),
            )
            .await;
            return;
        }
    };
    let span = event_span(consumer, &envelope, &delivery);
    let settle = async move {
        delivered(consumer, delivery.attempt);
        let started = std::time::Instant::now();
        let handled = handler.handle(&envelope).await;
        metrics::histogram!(HANDLING_SECONDS, "consumer" => consumer.to_owned())
            .record(started.elapsed().as_secs_f64());
        match handled {
            Ok(()) => {
                metrics::counter!(EVENTS, "consumer" => consumer.to_owned(), "outcome" => "ok")
                    .increment(1);
                if let Err(error) = delivery.ack().await {
                    // Not acked means redelivered; the inbox makes that harmless.
                    tracing::warn!(%error, "ack failed");
                }
            }
            Err(error) => settle_failure(bus, consumer, max_deliver, delivery, error).await,
        }
    };
    tracing::Instrument::instrument(settle, span).await;
}

/// The span of one event's handling, continuing the trace its publisher started (the
/// `traceparent` header, else the envelope's).
fn event_span(consumer: &str, envelope: &EventEnvelope, delivery: &Delivery) -> tracing::Span {
    let span = tracing::info_span!(
        "event",
        otel.name = %format!("{consumer} {}", envelope.event_type),
        otel.kind = "consumer",
        %consumer,
        event_type = %envelope.event_type,
        event_id = %envelope.event_id,
        tenant = %envelope.tenant_id,
        attempt = delivery.attempt,
        trace_id = tracing::field::Empty,
    );
    let traceparent = delivery
        .header(headers::TRACEPARENT)
        .map(str::to_owned)
        .or_else(|| {
            envelope
                .trace
                .as_ref()
                .map(|trace| trace.traceparent.clone())
        })
        .filter(|traceparent| !traceparent.is_empty());
    if let Some(traceparent) = traceparent {
        crate::telemetry::continue_trace(
            &span,
            crate::telemetry::parent_from_traceparent(&traceparent),
        );
    }
    span
}

/// Events a durable consumer settled, by `outcome`: `ok`, `retried` (redelivery asked
/// for) or `dead_lettered`.
pub const EVENTS: &str = "aida_consumer_events_total";
/// Deliveries that were redeliveries (a second or later attempt), by consumer.
pub const REDELIVERIES: &str = "aida_consumer_redeliveries_total";
/// Deliveries moved to the dead-letter stream, by consumer.
pub const DEAD_LETTERS: &str = "aida_consumer_dead_letters_total";
/// Seconds one event's handler took, by consumer.
pub const HANDLING_SECONDS: &str = "aida_consumer_handling_seconds";
/// Seconds one batch's handler took (analytics ingest: one DuckDB append), by consumer.
pub const BATCH_SECONDS: &str = "aida_consumer_batch_seconds";
/// Events per handled batch, by consumer.
pub const BATCH_SIZE: &str = "aida_consumer_batch_events";
/// Messages the durable has not yet been delivered, by consumer (sampled).
pub const PENDING: &str = "aida_consumer_pending";

/// The consumer's series, at zero, from its start: a dashboard sees "no dead letters yet"
/// rather than no data, and `rate()` has a first sample.
fn register(consumer: &str) {
    for outcome in ["ok", "retried", "dead_lettered"] {
        metrics::counter!(EVENTS, "consumer" => consumer.to_owned(), "outcome" => outcome)
            .increment(0);
    }
    metrics::counter!(REDELIVERIES, "consumer" => consumer.to_owned()).increment(0);
    metrics::counter!(DEAD_LETTERS, "consumer" => consumer.to_owned()).increment(0);
}

fn delivered(consumer: &str, attempt: u64) {
    if attempt > 1 {
        metrics::counter!(REDELIVERIES, "consumer" => consumer.to_owned()).increment(1);
    }
}

/// 250 ms, 500 ms, 1 s, … capped at 30 s.
fn retry_delay(attempt: u64) -> Duration {
    let exponent = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(7);
    Duration::from_millis(250 * 2u64.pow(exponent)).min(Duration::from_secs(30))
}

/// Publishes the delivery to the dead-letter stream, then terminates it. If the dead-letter
/// publish fails, the delivery is left unsettled and comes back after the ack wait.
async fn dead_letter(bus: &dyn EventBus, consumer: &str, delivery: Delivery, reason: &str) {
    let original_id = delivery
        .message_id
        .clone()
        .unwrap_or_else(|| format!("{:x}", sha_of(&delivery.payload)));
    let mut message_headers = vec![
        (
            headers::ORIGINAL_SUBJECT.to_owned(),
            delivery.event_type.clone(),
        ),
        (headers::CONSUMER.to_owned(), consumer.to_owned()),
        (headers::ERROR.to_owned(), truncate(reason, 1024)),
        (headers::DELIVERIES.to_owned(), delivery.attempt.to_string()),
    ];
    if let Some(traceparent) = delivery.header(headers::TRACEPARENT) {
        message_headers.push((headers::TRACEPARENT.to_owned(), traceparent.to_owned()));
    }
    let message = OutgoingMessage {
        event_type: format!("dlq.{consumer}"),
        message_id: format!("{consumer}:{original_id}"),
        payload: delivery.payload.clone(),
        headers: message_headers,
    };
    let published = bus.publish(std::slice::from_ref(&message)).await;
    match published.into_iter().next() {
        Some(Ok(())) => {
            metrics::counter!(DEAD_LETTERS, "consumer" => consumer.to_owned()).increment(1);
            if let Err(error) = delivery.term().await {
                tracing::warn!(%error, "term after dead-lettering failed");
            }
        }
        Some(Err(error)) => {
            tracing::error!(%error, "dead-letter publish failed; message will be redelivered");
        }
        None => tracing::error!("dead-letter publish returned no result"),
    }
}

fn sha_of(payload: &[u8]) -> u128 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(payload);
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_and_is_capped() {
        assert_eq!(retry_delay(1), Duration::from_millis(250));
        assert_eq!(retry_delay(3), Duration::from_secs(1));
        assert_eq!(retry_delay(50), Duration::from_secs(30));
    }

    #[test]
    fn truncate_respects_character_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
