//! What every AIDA-CRM service shares: settings, errors, storage, the transactional outbox
//! and event bus, consumers, authentication, list queries, telemetry and server plumbing.

pub mod audit;
pub mod auth;
pub mod bus;
pub mod consumer;
pub mod contact;
pub mod crypto;
pub mod db;
pub mod error;
pub mod etag;
pub mod events;
pub mod idempotency;
pub mod mesh;
pub mod metrics;
pub mod outbox;
pub mod pagination;
pub mod query;
pub mod rbac;
pub mod runner;
pub mod runtime;
pub mod server;
pub mod settings;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;

pub use error::{Error, FieldViolation};
pub use settings::Settings;

/// An id from a request: INVALID_ARGUMENT on `field` when it is empty or no UUID (the
/// message names `what` the id should be, and the value, shortened).
pub fn parse_id(field: &str, value: &str, what: &str) -> Result<uuid::Uuid, Error> {
    if value.is_empty() {
        return Err(Error::invalid(field, "an id is required"));
    }
    uuid::Uuid::parse_str(value).map_err(|_| {
        let shown: String = value.chars().take(40).collect();
        let more = if shown.len() < value.len() { "…" } else { "" };
        Error::invalid(field, format!("'{shown}{more}' is not a {what} id"))
    })
}

/// A message field the request must carry: INVALID_ARGUMENT on `field` saying `what`
/// when it is absent.
pub fn required<T>(field: &str, value: Option<T>, what: &str) -> Result<T, Error> {
    value.ok_or_else(|| Error::invalid(field, what))
}

/// `bytes` random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buffer);
    buffer.iter().map(|byte| format!("{byte:02x}")).collect()
}
