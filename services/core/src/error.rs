//! The one mapping from domain errors to `tonic::Status` (with `google.rpc` details) and to
//! HTTP status codes. Every service converts its own error enum into [`Error`]; nothing else
//! builds a `Status` by hand.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every error AIDA-CRM returns.
pub const ERROR_DOMAIN: &str = "aida.crm";

/// One invalid field of a request: `field` is the proto field path (`lead.email`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// A request-level error, independent of the transport.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; every violation names its field.
    #[error("invalid argument: {}", summarize(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The resource does not exist for this tenant; `field`, when set, is the request
    /// field that referred to it (`deal.lead_id`).
    #[error("{}{resource} {id} not found", field.map(|field| format!("{field}: ")).unwrap_or_default())]
    NotFound {
        resource: &'static str,
        id: String,
        field: Option<&'static str>,
    },
    /// A unique property is already taken by `existing_id`.
    #[error("{message}")]
    AlreadyExists {
        resource: &'static str,
        existing_id: String,
        message: String,
    },
    /// The resource is not in a state that allows the operation.
    #[error("{message}")]
    FailedPrecondition {
        reason: &'static str,
        message: String,
    },
    /// A concurrency conflict, such as a stale etag; re-read and retry.
    #[error("{message}")]
    Aborted {
        reason: &'static str,
        message: String,
    },
    /// No valid credentials.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// Valid credentials without the right to do this.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A quota or rate limit is exhausted.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// A dependency is unreachable; the call may be retried.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected failure. The message is logged, never sent to the client.
    #[error("internal error: {0}")]
    Internal(String),
}

fn summarize(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|violation| format!("{}: {}", violation.field, violation.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// One invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn not_found(resource: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            resource,
            id: id.into(),
            field: None,
        }
    }

    /// NOT_FOUND for a resource a request field refers to (`deal.lead_id`).
    pub fn not_found_at(
        field: &'static str,
        resource: &'static str,
        id: impl Into<String>,
    ) -> Self {
        Self::NotFound {
            resource,
            id: id.into(),
            field: Some(field),
        }
    }

    /// The error of a call to another service of the mesh (`peer`), as this service
    /// reports it: the caller's own refusals pass through, the peer's NOT_FOUND becomes
    /// `not_found` (the resource the call was about), an unreachable peer is UNAVAILABLE,
    /// and anything else is this service's internal error.
    pub fn from_peer(peer: &str, status: &Status, not_found: impl FnOnce() -> Error) -> Self {
        match status.code() {
            Code::NotFound => not_found(),
            Code::Unauthenticated => Self::Unauthenticated(status.message().to_owned()),
            Code::PermissionDenied => Self::PermissionDenied(status.message().to_owned()),
            Code::Unavailable | Code::DeadlineExceeded => {
                Self::Unavailable(format!("{peer}: {}", status.message()))
            }
            _ => Self::internal(format!("{peer}: {status}")),
        }
    }

    /// ABORTED: a concurrent change conflicted with this one; the client retries.
    pub fn conflict() -> Self {
        Self::Aborted {
            reason: "CONFLICT",
            message: "a concurrent change conflicted with this one; retry".into(),
        }
    }

    pub fn internal(error: impl std::fmt::Display) -> Self {
        Self::Internal(error.to_string())
    }

    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound { .. } => Code::NotFound,
            Self::AlreadyExists { .. } => Code::AlreadyExists,
            Self::FailedPrecondition { .. } => Code::FailedPrecondition,
            Self::Aborted { .. } => Code::Aborted,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
        }
    }

    /// The machine-readable `ErrorInfo.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "INVALID_ARGUMENT",
            Self::NotFound { .. } => "NOT_FOUND",
            Self::AlreadyExists { .. } => "ALREADY_EXISTS",
            Self::FailedPrecondition { reason, .. } | Self::Aborted { reason, .. } => reason,
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::PermissionDenied(_) => "PERMISSION_DENIED",
            Self::ResourceExhausted(_) => "RATE_LIMITED",
            Self::Unavailable(_) => "UNAVAILABLE",
            Self::Internal(_) => "INTERNAL",
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let code = error.code();
        let mut metadata = HashMap::new();
        let mut details = ErrorDetails::new();
        let message = match &error {
            Error::InvalidArgument(violations) => {
                details.set_bad_request(
                    violations
                        .iter()
                        .map(|violation| {
                            tonic_types::FieldViolation::new(
                                violation.field.clone(),
                                violation.description.clone(),
                            )
                        })
                        .collect::<Vec<_>>(),
                );
                if let Some(first) = violations.first() {
                    metadata.insert("field".to_owned(), first.field.clone());
                }
                error.to_string()
            }
            Error::NotFound {
                resource,
                id,
                field,
            } => {
                details.set_resource_info(*resource, id.clone(), "", "not found");
                metadata.insert("resource".to_owned(), (*resource).to_owned());
                metadata.insert("id".to_owned(), id.clone());
                if let Some(field) = field {
                    metadata.insert("field".to_owned(), (*field).to_owned());
                    details.set_bad_request(vec![tonic_types::FieldViolation::new(
                        *field,
                        format!("no {resource} {id}"),
                    )]);
                }
                error.to_string()
            }
            Error::AlreadyExists {
                resource,
                existing_id,
                ..
            } => {
                details.set_resource_info(*resource, existing_id.clone(), "", "already exists");
                metadata.insert("resource".to_owned(), (*resource).to_owned());
                metadata.insert("existing_id".to_owned(), existing_id.clone());
                error.to_string()
            }
            Error::Internal(cause) => {
                // The cause may hold SQL or hostnames: log it, never send it.
                tracing::error!(error = %cause, "internal error");
                "internal error".to_owned()
            }
            _ => error.to_string(),
        };
        details.set_error_info(error.reason(), ERROR_DOMAIN, metadata);
        Status::with_error_details(code, message, details)
    }
}

impl From<std::convert::Infallible> for Error {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                Self::Unavailable(format!("database: {error}"))
            }
            // The server going away under a connection (57P01..57P03 shutdowns, class 08
            // connection exceptions): retryable, and writes carry request ids for that.
            sqlx::Error::Database(ref database)
                if database.code().is_some_and(|code| {
                    code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03")
                }) =>
            {
                Self::Unavailable(format!("database: {error}"))
            }
            other => Self::Internal(format!("database: {other}")),
        }
    }
}

/// The HTTP status for a gRPC code (the table grpc-gateway and Envoy use).
pub fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::Cancelled => 499,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::Unauthenticated => 401,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_bad_request_with_the_field() {
        let status = Status::from(Error::invalid("lead.email", "not an e-mail address"));
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let violations = details
            .bad_request()
            .expect("bad request")
            .field_violations
            .clone();
        assert_eq!(violations[0].field, "lead.email");
        assert_eq!(
            details.error_info().expect("error info").reason,
            "INVALID_ARGUMENT"
        );
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let status = Status::from(Error::internal("connection to 10.0.0.7 refused"));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
    }

    #[test]
    fn already_exists_names_the_existing_resource() {
        let status = Status::from(Error::AlreadyExists {
            resource: "lead",
            existing_id: "abc".into(),
            message: "a lead with this e-mail already exists: abc".into(),
        });
        assert_eq!(status.code(), Code::AlreadyExists);
        let info = status.get_details_error_info().expect("error info");
        assert_eq!(
            info.metadata.get("existing_id").map(String::as_str),
            Some("abc")
        );
    }

    #[test]
    fn http_status_follows_the_standard_table() {
        assert_eq!(http_status(Code::NotFound), 404);
        assert_eq!(http_status(Code::FailedPrecondition), 400);
        assert_eq!(http_status(Code::Aborted), 409);
        assert_eq!(http_status(Code::ResourceExhausted), 429);
        assert_eq!(http_status(Code::Unauthenticated), 401);
    }
}
