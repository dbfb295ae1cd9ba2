//! Optimistic concurrency (AIP-154): one etag rule for every versioned resource.
//!
//! A resource's etag is its row version (`v<version>`); a write that carries an etag
//! applies only to that version. An empty etag means "any version".

use std::fmt::Display;

use crate::Error;

/// The etag of a resource at `version`.
pub fn of(version: i64) -> String {
    format!("v{version}")
}

/// Checks a caller's `etag` against the `resource` `id` at `version`: ABORTED
/// (`ETAG_MISMATCH`) when it names another version.
pub fn check(resource: &str, id: impl Display, version: i64, etag: &str) -> Result<(), Error> {
    let current = of(version);
    if etag.is_empty() || etag == current {
        return Ok(());
    }
    Err(Error::Aborted {
        reason: "ETAG_MISMATCH",
        message: format!(
            "{resource} {id} was changed since it was read (etag {etag}, now {current}); read it again"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_or_current_etag_passes_and_a_stale_one_is_aborted() {
        assert_eq!(of(3), "v3");
        assert!(check("lead", 1, 3, "").is_ok());
        assert!(check("lead", 1, 3, "v3").is_ok());
        let error = check("lead", 1, 3, "v2").expect_err("stale");
        assert!(
            matches!(&error, Error::Aborted { reason: "ETAG_MISMATCH", message }
                if message.contains("lead 1") && message.contains("now v3")),
            "{error:?}"
        );
    }
}
