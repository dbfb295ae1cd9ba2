//! The transactional outbox and its relay.
//!
//! A service writes its state change and the event describing it in one transaction
//! ([`enqueue`]); the [`Relay`] publishes committed events to the bus in `seq` order, with
//! the event id as `Nats-Msg-Id`, and marks them published only after the bus acked them.
//! If the bus is down the events wait in the table; if the relay dies between the ack and
//! the mark, the republished event is dropped by the bus's duplicate window and by every
//! consumer's inbox. Nothing is lost and nothing is applied twice.

use std::sync::Arc;
use std::time::Duration;

use aida_proto::aida::events::v1::EventEnvelope;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use prost::Message;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bus::{EventBus, OutgoingMessage, headers};
use crate::db::{Count, Database, Engine, Sql, Tx, placeholders};
use crate::error::Error;
use crate::settings::OutboxSettings;

/// An event on its way to the outbox, encoded: what a store writes in the transaction of
/// the change it describes. Stores take this, never the generated envelope type.
#[derive(Debug, Clone)]
pub struct Event {
    event_id: String,
    event_type: String,
    tenant_id: String,
    /// The resource it is about (`leads/<id>`).
    subject: String,
    payload: Vec<u8>,
    occurred_at: Option<DateTime<Utc>>,
    /// The W3C traceparent of the call that made it ('' when untraced).
    traceparent: String,
}

impl From<&EventEnvelope> for Event {
    fn from(envelope: &EventEnvelope) -> Self {
        Self {
            event_id: envelope.event_id.clone(),
            event_type: envelope.event_type.clone(),
            tenant_id: envelope.tenant_id.clone(),
            subject: envelope.subject.clone(),
            payload: envelope.encode_to_vec(),
            occurred_at: envelope.occurred_at.as_ref().and_then(|time| {
                DateTime::from_timestamp(time.seconds, u32::try_from(time.nanos).unwrap_or(0))
            }),
            traceparent: envelope
                .trace
                .as_ref()
                .map(|trace| trace.traceparent.clone())
                .unwrap_or_default(),
        }
    }
}

impl From<EventEnvelope> for Event {
    fn from(envelope: EventEnvelope) -> Self {
        Self::from(&envelope)
    }
}

impl From<&Event> for Event {
    fn from(event: &Event) -> Self {
        event.clone()
    }
}

/// Adds `event` (an [`Event`] or an envelope) to the outbox inside the caller's transaction.
/// The first event of an audited call ([`crate::audit`]) brings the call's audit record
/// into the same transaction.
pub async fn enqueue(tx: &mut Tx, event: impl Into<Event>) -> Result<(), Error> {
    let event = event.into();
    insert(tx, &event).await?;
    if let Some(scope) = crate::audit::current()
        && tx.audit_scope().is_none()
        && let Some(record) = scope.for_event(&event.tenant_id, &event.subject)
    {
        insert(tx, &Event::from(&record)).await?;
        tx.carry_audit(scope);
    }
    Ok(())
}

/// Adds `event` to the outbox, nothing else.
pub(crate) async fn insert(tx: &mut Tx, event: &Event) -> Result<(), Error> {
    let event_id = Uuid::parse_str(&event.event_id)
        .map_err(|error| Error::internal(format!("event id {}: {error}", event.event_id)))?;
    tx.execute(
        Sql::new(
            "INSERT INTO outbox (event_id, event_type, tenant_id, payload, created_at, traceparent) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(event_id)
        .bind(event.event_type.as_str())
        .bind(event.tenant_id.as_str())
        .bind(event.payload.clone())
        .bind(event.occurred_at.unwrap_or_else(Utc::now))
        .bind(event.traceparent.as_str()),
    )
    .await?;
    Ok(())
}

#[derive(Debug, sqlx::FromRow)]
struct PendingRow {
    seq: i64,
    event_id: Uuid,
    event_type: String,
    payload: Vec<u8>,
    created_at: chrono::DateTime<chrono::Utc>,
    /// The committing call's trace ('' when untraced).
    traceparent: String,
}

/// Events the relay published (the bus acked them).
pub const PUBLISHED: &str = "aida_outbox_published_total";
/// Events a publish round failed to publish (they stay queued and are retried).
pub const PUBLISH_FAILURES: &str = "aida_outbox_publish_failures_total";
/// Seconds from an event's commit to the bus's ack of its publish, by event type.
pub const PUBLISH_LAG: &str = "aida_outbox_publish_lag_seconds";
/// Events committed and not yet published, by service (sampled).
pub const BACKLOG: &str = "aida_outbox_backlog";

/// How long the relay waits after a wake-up before it reads the outbox.
const WAKE_LINGER: Duration = Duration::from_millis(2);

/// Publishes the outbox. Cheap to clone; [`Relay::wake`] after a commit shortens the wait.
#[derive(Clone)]
pub struct Relay {
    db: Database,
    bus: Arc<dyn EventBus>,
    settings: OutboxSettings,
    wake: Arc<Notify>,
}

impl Relay {
    pub fn new(db: Database, bus: Arc<dyn EventBus>, settings: OutboxSettings) -> Self {
        Self {
            db,
            bus,
            settings,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Asks the relay to look at the outbox now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs until `shutdown`, then makes a last attempt (bounded) to publish what is left.
    pub async fn run(self, shutdown: CancellationToken) {
        metrics::counter!(PUBLISHED).increment(0);
        metrics::counter!(PUBLISH_FAILURES).increment(0);
        let poll = Duration::from_millis(self.settings.poll_interval_ms);
        let mut streams_ready = false;
        let mut failures: u32 = 0;
        let mut last_cleanup = tokio::time::Instant::now();
        loop {
            if !streams_ready {
                match self.bus.ensure_streams().await {
                    Ok(()) => streams_ready = true,
                    Err(error) => tracing::warn!(%error, "event streams not ready; retrying"),
                }
            }
            let outcome = if streams_ready {
                self.publish_pending().await
            } else {
                Err(Error::Unavailable("event streams not ready".into()))
            };
            let wait = match outcome {
                Ok(published) if published >= self.settings.batch_size as usize => {
                    failures = 0;
                    Duration::ZERO
                }
                Ok(_) => {
                    failures = 0;
                    poll
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_multiple_of(20) {
                        tracing::warn!(%error, failures, "outbox relay cannot publish; will retry");
                    }
                    // A failure may mean the streams were deleted or NATS lost its state:
                    // re-create them before the next attempt.
                    streams_ready = false;
                    backoff(failures)
                }
            };
            if last_cleanup.elapsed() > Duration::from_secs(60) {
                last_cleanup = tokio::time::Instant::now();
                if let Err(error) = self.delete_published().await {
                    tracing::warn!(%error, "outbox cleanup failed");
                }
            }
            if wait.is_zero() && !shutdown.is_cancelled() {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {
                    // Let the commits of concurrent requests join this round: one relay
                    // transaction per handful of events instead of one per event.
                    tokio::time::sleep(WAKE_LINGER).await;
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
        // Flush what the last requests committed, but never hang the shutdown on a dead bus.
        let flush = async {
            loop {
                match self.publish_pending().await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "outbox not flushed at shutdown; events stay queued");
                        break;
                    }
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), flush)
            .await
            .is_err()
        {
            tracing::warn!("outbox flush timed out at shutdown; events stay queued");
        }
    }

    /// Publishes one batch of pending events; returns how many were published.
    pub async fn publish_pending(&self) -> Result<usize, Error> {
        let limit = i64::from(self.settings.batch_size);
        match self.db.engine() {
            Engine::Postgres => {
                // Row locks let several replicas relay side by side without publishing the
                // same event twice in the common case (duplicates are harmless anyway).
                let mut tx = self.db.begin().await?;
                let rows: Vec<PendingRow> = tx
                    .fetch_all(
                        Sql::new(
                            "SELECT seq, event_id, event_type, payload, created_at, traceparent FROM outbox \
                             WHERE published_at IS NULL ORDER BY seq LIMIT $1 \
                             FOR UPDATE SKIP LOCKED",
                        )
                        .bind(limit),
                    )
                    .await?;
                let (published, error) = self.publish_rows(&rows).await;
                mark(&mut tx, &rows, &published, error.as_ref()).await?;
                tx.commit().await?;
                finish(published.len(), error)
            }
            Engine::Sqlite => {
                // SQLite has one writer: holding a transaction across the publish would stall
                // every request, and there is only one relay per file.
                let rows: Vec<PendingRow> = self
                    .db
                    .fetch_all(
                        Sql::new(
                            "SELECT seq, event_id, event_type, payload, created_at, traceparent FROM outbox \
                             WHERE published_at IS NULL ORDER BY seq LIMIT $1",
                        )
                        .bind(limit),
                    )
                    .await?;
                if rows.is_empty() {
                    return Ok(0);
                }
                let (published, error) = self.publish_rows(&rows).await;
                let mut tx = self.db.begin().await?;
                mark(&mut tx, &rows, &published, error.as_ref()).await?;
                tx.commit().await?;
                finish(published.len(), error)
            }
        }
    }

    /// Publishes `rows`; returns the seqs the bus acked and the first error.
    async fn publish_rows(&self, rows: &[PendingRow]) -> (Vec<i64>, Option<String>) {
        if rows.is_empty() {
            return (Vec::new(), None);
        }
        // One producer span per event, in the trace of the call that committed it; the
        // consumers continue from this span (its traceparent goes in the NATS headers).
        let mut spans = Vec::with_capacity(rows.len());
        let messages: Vec<OutgoingMessage> = rows
            .iter()
            .map(|row| {
                let mut message_headers = Vec::new();
                if !row.traceparent.is_empty() {
                    let span = tracing::info_span!(
                        "publish",
                        otel.name = %format!("publish {}", row.event_type),
                        otel.kind = "producer",
                        event_type = %row.event_type,
                        event_id = %row.event_id,
                        trace_id = tracing::field::Empty,
                    );
                    crate::telemetry::continue_trace(
                        &span,
                        crate::telemetry::parent_from_traceparent(&row.traceparent),
                    );
                    let traceparent = span
                        .in_scope(crate::telemetry::current_traceparent)
                        .unwrap_or_else(|| row.traceparent.clone());
                    spans.push(span);
                    message_headers.push((headers::TRACEPARENT.to_owned(), traceparent));
                }
                OutgoingMessage {
                    event_type: row.event_type.clone(),
                    message_id: row.event_id.to_string(),
                    payload: Bytes::from(row.payload.clone()),
                    headers: message_headers,
                }
            })
            .collect();
        let results = self.bus.publish(&messages).await;
        let mut published = Vec::new();
        let mut first_error = None;
        let now = chrono::Utc::now();
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(()) => {
                    published.push(row.seq);
                    // Commit to bus ack: what a consumer waits on top of its own work.
                    let lag = (now - row.created_at).to_std().unwrap_or_default();
                    metrics::histogram!(PUBLISH_LAG, "event_type" => row.event_type.clone())
                        .record(lag.as_secs_f64());
                }
                Err(error) => {
                    first_error.get_or_insert_with(|| error.to_string());
                }
            }
        }
        drop(spans);
        metrics::counter!(PUBLISHED).increment(published.len() as u64);
        metrics::counter!(PUBLISH_FAILURES).increment((rows.len() - published.len()) as u64);
        (published, first_error)
    }

    /// Deletes events published longer ago than the retention.
    async fn delete_published(&self) -> Result<u64, Error> {
        let hours = i64::try_from(self.settings.retention_hours).unwrap_or(i64::MAX / 3600);
        let cutoff = Utc::now() - chrono::Duration::hours(hours);
        Ok(self
            .db
            .execute(Sql::new("DELETE FROM outbox WHERE published_at < $1").bind(cutoff))
            .await?)
    }

    /// Events not yet published.
    pub async fn pending_count(&self) -> Result<i64, Error> {
        let count: Count = self
            .db
            .fetch_one(Sql::new(
                "SELECT COUNT(*) AS count FROM outbox WHERE published_at IS NULL",
            ))
            .await?;
        Ok(count.count)
    }
}

async fn mark(
    tx: &mut Tx,
    rows: &[PendingRow],
    published: &[i64],
    error: Option<&String>,
) -> Result<(), Error> {
    if !published.is_empty() {
        let mut sql = Sql::new("UPDATE outbox SET published_at = $1 WHERE seq IN (");
        sql = sql.bind(Utc::now());
        sql.push(&placeholders(2, published.len()));
        sql.push(")");
        for seq in published {
            sql = sql.bind(*seq);
        }
        tx.execute(sql).await?;
    }
    if let Some(error) = error {
        let failed: Vec<i64> = rows
            .iter()
            .map(|row| row.seq)
            .filter(|seq| !published.contains(seq))
            .collect();
        if !failed.is_empty() {
            let mut sql = Sql::new(
                "UPDATE outbox SET attempts = attempts + 1, last_error = $1 WHERE seq IN (",
            );
            sql = sql.bind(error.as_str());
            sql.push(&placeholders(2, failed.len()));
            sql.push(")");
            for seq in failed {
                sql = sql.bind(seq);
            }
            tx.execute(sql).await?;
        }
    }
    Ok(())
}

fn finish(published: usize, error: Option<String>) -> Result<usize, Error> {
    match error {
        Some(error) if published == 0 => Err(Error::Unavailable(error)),
        _ => Ok(published),
    }
}

/// 100 ms, 200 ms, … capped at 5 s.
fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(6);
    Duration::from_millis(100 * 2u64.pow(exponent)).min(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(30), Duration::from_secs(5));
    }
}
