//! Idempotency keys: a client sends the same `request_id` when it retries a write, and gets
//! the first outcome back instead of a second change.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::{Sql, Tx};
use crate::error::Error;

/// The longest `request_id`, in characters.
pub const MAX_REQUEST_ID_CHARS: usize = 128;

/// Checks a client's `request_id`: `None` when empty (no idempotency asked for),
/// INVALID_ARGUMENT on `request_id` when longer than [`MAX_REQUEST_ID_CHARS`] or holding
/// control characters.
pub fn request_id(value: &str) -> Result<Option<&str>, Error> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.chars().count() > MAX_REQUEST_ID_CHARS || value.chars().any(char::is_control) {
        return Err(Error::invalid(
            "request_id",
            format!("at most {MAX_REQUEST_ID_CHARS} printable characters"),
        ));
    }
    Ok(Some(value))
}

/// A client's request id claimed for one operation, in the transaction of the change it
/// guards (table `idempotent_requests`, core migration 1002): the first call with the id
/// takes it; a retry, even a concurrent one, finds what the first call made.
pub struct Claim<'a> {
    /// The RPC (`CaptureLead`, `MergeLeads`, `CreateDeal`): ids are per operation.
    pub operation: &'static str,
    pub request_id: &'a str,
    /// A digest of the request's content: a retry must carry the same.
    pub fingerprint: &'a str,
    /// What the operation makes, for the error of a reused id ("lead", "deal").
    pub resource: &'static str,
}

impl Claim<'_> {
    /// Claims the id for `resource_id` inside `tx`. `None`: claimed now, the caller goes on
    /// with its change. `Some(id)`: an earlier call took the id for `id`; the caller rolls
    /// back and answers with that. A call with the same id and other content is
    /// INVALID_ARGUMENT on `request_id`.
    pub async fn claim(
        &self,
        tx: &mut Tx,
        tenant: &str,
        resource_id: Uuid,
        time: DateTime<Utc>,
    ) -> Result<Option<Uuid>, Error> {
        // A concurrent call with the same id waits here for the first one's transaction,
        // then finds its row.
        let claimed = tx
            .execute(
                Sql::new(
                    "INSERT INTO idempotent_requests (tenant_id, operation, request_id, resource_id, request_hash, create_time) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id, operation, request_id) DO NOTHING",
                )
                .bind(tenant)
                .bind(self.operation)
                .bind(self.request_id)
                .bind(resource_id)
                .bind(self.fingerprint)
                .bind(time),
            )
            .await?;
        if claimed == 1 {
            return Ok(None);
        }
        #[derive(sqlx::FromRow)]
        struct Earlier {
            resource_id: Uuid,
            request_hash: String,
        }
        let earlier: Earlier = tx
            .fetch_optional(
                Sql::new(
                    "SELECT resource_id, request_hash FROM idempotent_requests \
                     WHERE tenant_id = $1 AND operation = $2 AND request_id = $3",
                )
                .bind(tenant)
                .bind(self.operation)
                .bind(self.request_id),
            )
            .await?
            .ok_or_else(|| Error::internal(format!("{} request vanished", self.operation)))?;
        if earlier.request_hash != self.fingerprint {
            return Err(Error::invalid(
                "request_id",
                format!(
                    "this request id was already used for a different {}; use a new request id",
                    self.resource
                ),
            ));
        }
        Ok(Some(earlier.resource_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_optional_bounded_and_printable() {
        assert_eq!(request_id("").expect("empty"), None);
        assert_eq!(request_id("retry-1").expect("ok"), Some("retry-1"));
        assert!(request_id(&"é".repeat(128)).is_ok());
        for bad in ["a".repeat(129), "a\nb".to_owned(), "\u{7}".to_owned()] {
            assert!(
                matches!(request_id(&bad), Err(Error::InvalidArgument(v)) if v[0].field == "request_id"),
                "{bad:?}"
            );
        }
    }
}
