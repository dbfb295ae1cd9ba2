//! What every AIDA-CRM service shares: settings, errors, storage, the transactional outbox
//! and event bus, consumers, authentication, list queries, telemetry and server plumbing.

pub mod auth;
pub mod bus;
pub mod consumer;
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

/// `bytes` random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buffer);
    buffer.iter().map(|byte| format!("{byte:02x}")).collect()
}
