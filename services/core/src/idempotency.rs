//! Idempotency keys: a client sends the same `request_id` when it retries a write, and gets
//! the first outcome back instead of a second change.

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
