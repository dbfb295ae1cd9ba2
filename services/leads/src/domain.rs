//! Leads as the service understands them: validation, normalization and the status
//! life-cycle. No transport or storage types here.

use std::collections::BTreeMap;

use aida_core::{Error, FieldViolation};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Longest name, company or title, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest e-mail address (RFC 5321 path limit).
pub use aida_core::contact::{MAX_EMAIL_CHARS, normalize_email, normalize_phone};
/// Longest rejection reason or qualification note.
pub const MAX_REASON_CHARS: usize = 2000;
/// Attribute limits.
pub const MAX_ATTRIBUTES: usize = 50;
pub const MAX_ATTRIBUTE_KEY_CHARS: usize = 64;
pub const MAX_ATTRIBUTE_VALUE_CHARS: usize = 1024;
/// Longest owner id or request id.
pub const MAX_ID_CHARS: usize = 128;

/// Where a lead came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    WebForm,
    Referral,
    Event,
    Import,
    Outbound,
    Other,
}

impl Source {
    pub const ALL: [Source; 6] = [
        Source::WebForm,
        Source::Referral,
        Source::Event,
        Source::Import,
        Source::Outbound,
        Source::Other,
    ];

    /// The stored (and filterable) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::WebForm => "WEB_FORM",
            Source::Referral => "REFERRAL",
            Source::Event => "EVENT",
            Source::Import => "IMPORT",
            Source::Outbound => "OUTBOUND",
            Source::Other => "OTHER",
        }
    }

    /// Accepts the stored name or the proto name (`LEAD_SOURCE_WEB_FORM`).
    pub fn parse(text: &str) -> Option<Source> {
        let short = text.strip_prefix("LEAD_SOURCE_").unwrap_or(text);
        Source::ALL
            .into_iter()
            .find(|source| source.as_str() == short)
    }
}

/// Where a lead is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    New,
    Qualified,
    Rejected,
    Converted,
    /// Merged into another lead; kept for lineage.
    Merged,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::New,
        Status::Qualified,
        Status::Rejected,
        Status::Converted,
        Status::Merged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::New => "NEW",
            Status::Qualified => "QUALIFIED",
            Status::Rejected => "REJECTED",
            Status::Converted => "CONVERTED",
            Status::Merged => "MERGED",
        }
    }

    /// Accepts the stored name or the proto name (`LEAD_STATUS_NEW`).
    pub fn parse(text: &str) -> Option<Status> {
        let short = text.strip_prefix("LEAD_STATUS_").unwrap_or(text);
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == short)
    }
}

/// The fields a caller writes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeadFields {
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub company: String,
    pub title: String,
    pub phone: String,
    pub source: Option<Source>,
    pub owner_id: String,
    pub attributes: BTreeMap<String, String>,
}

/// A stored lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lead {
    pub id: Uuid,
    pub tenant_id: String,
    pub fields: LeadFields,
    pub source: Source,
    pub status: Status,
    pub rejection_reason: String,
    pub version: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    /// The survivor this lead was merged into (status MERGED).
    pub merged_into: Option<Uuid>,
}

impl Lead {
    /// Refuses any change to a merged lead: its survivor holds the person now.
    pub fn check_not_merged(&self) -> Result<(), Error> {
        match self.merged_into {
            Some(survivor) => Err(Error::FailedPrecondition {
                reason: "LEAD_MERGED",
                message: format!(
                    "lead {} was merged into {survivor}; change that lead",
                    self.id
                ),
            }),
            None => Ok(()),
        }
    }

    /// Opaque version tag for optimistic concurrency (AIP-154).
    pub fn etag(&self) -> String {
        aida_core::etag::of(self.version)
    }

    /// Checks a caller's etag: empty means "any version".
    pub fn check_etag(&self, etag: &str) -> Result<(), Error> {
        aida_core::etag::check("lead", self.id, self.version, etag)
    }

    /// NEW → QUALIFIED.
    pub fn qualify(&self) -> Result<Status, Error> {
        match self.status {
            Status::New => Ok(Status::Qualified),
            Status::Rejected => Err(illegal(
                self,
                "qualify",
                "a rejected lead must be reopened (UpdateLead with status NEW) before it is qualified",
            )),
            Status::Qualified => Err(illegal(self, "qualify", "the lead is already qualified")),
            Status::Converted => Err(illegal(self, "qualify", "the lead was converted to a deal")),
            Status::Merged => Err(illegal(self, "qualify", "the lead was merged into another")),
        }
    }

    /// NEW or QUALIFIED → REJECTED.
    pub fn reject(&self) -> Result<Status, Error> {
        match self.status {
            Status::New | Status::Qualified => Ok(Status::Rejected),
            Status::Rejected => Err(illegal(self, "reject", "the lead is already rejected")),
            Status::Converted => Err(illegal(self, "reject", "the lead was converted to a deal")),
            Status::Merged => Err(illegal(self, "reject", "the lead was merged into another")),
        }
    }

    /// Status changes through UpdateLead: only reopening (REJECTED → NEW).
    pub fn change_status(&self, wanted: Status) -> Result<Status, Error> {
        match (self.status, wanted) {
            (current, wanted) if current == wanted => Ok(current),
            (Status::Rejected, Status::New) => Ok(Status::New),
            (_, Status::New) => Err(illegal(
                self,
                "reopen",
                "only a rejected lead can be reopened",
            )),
            (_, other) => Err(Error::invalid(
                "lead.status",
                format!(
                    "UpdateLead can only reopen a lead (status NEW); use the {} method",
                    match other {
                        Status::Qualified => "QualifyLead",
                        Status::Rejected => "RejectLead",
                        Status::Merged => "MergeLeads",
                        _ => "deal",
                    }
                ),
            )),
        }
    }
}

fn illegal(lead: &Lead, action: &str, why: &str) -> Error {
    Error::FailedPrecondition {
        reason: "ILLEGAL_TRANSITION",
        message: format!(
            "cannot {action} lead {} in status {}: {why}",
            lead.id,
            lead.status.as_str()
        ),
    }
}

/// Validates and normalizes caller-written fields; every violation is reported at once,
/// named `<prefix>.<field>`.
pub fn normalize(fields: LeadFields, prefix: &str) -> Result<LeadFields, Error> {
    let mut violations = Vec::new();
    let name = |field: &str| format!("{prefix}.{field}");

    let email = normalize_email(&fields.email).unwrap_or_else(|message| {
        violations.push(FieldViolation::new(name("email"), message));
        String::new()
    });
    let phone = normalize_phone(&fields.phone).unwrap_or_else(|message| {
        violations.push(FieldViolation::new(name("phone"), message));
        String::new()
    });
    if fields.email.trim().is_empty() && fields.phone.trim().is_empty() {
        let message = "an e-mail address or a phone number is required";
        violations.push(FieldViolation::new(name("email"), message));
        violations.push(FieldViolation::new(name("phone"), message));
    }
    let mut text = |field: &str, value: &str, max: usize| -> String {
        match clean_text(value, max) {
            Ok(clean) => clean,
            Err(message) => {
                violations.push(FieldViolation::new(name(field), message));
                String::new()
            }
        }
    };
    let first_name = text("first_name", &fields.first_name, MAX_NAME_CHARS);
    let last_name = text("last_name", &fields.last_name, MAX_NAME_CHARS);
    let company = text("company", &fields.company, MAX_NAME_CHARS);
    let title = text("title", &fields.title, MAX_NAME_CHARS);
    let owner_id = text("owner_id", &fields.owner_id, MAX_ID_CHARS);

    if fields.attributes.len() > MAX_ATTRIBUTES {
        violations.push(FieldViolation::new(
            name("attributes"),
            format!("at most {MAX_ATTRIBUTES} attributes"),
        ));
    }
    let mut attributes = BTreeMap::new();
    for (key, value) in &fields.attributes {
        let key_ok = !key.is_empty()
            && key.chars().count() <= MAX_ATTRIBUTE_KEY_CHARS
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !key_ok {
            violations.push(FieldViolation::new(
                format!("{prefix}.attributes[{key}]"),
                format!("keys are 1 to {MAX_ATTRIBUTE_KEY_CHARS} letters, digits, '_', '-' or '.'"),
            ));
            continue;
        }
        match clean_text(value, MAX_ATTRIBUTE_VALUE_CHARS) {
            Ok(clean) => {
                attributes.insert(key.clone(), clean);
            }
            Err(message) => violations.push(FieldViolation::new(
                format!("{prefix}.attributes[{key}]"),
                message,
            )),
        }
    }

    if !violations.is_empty() {
        return Err(Error::InvalidArgument(violations));
    }
    Ok(LeadFields {
        email,
        first_name,
        last_name,
        company,
        title,
        phone,
        source: fields.source,
        owner_id,
        attributes,
    })
}

/// Trims, bounds the length and refuses control characters.
pub fn clean_text(value: &str, max_chars: usize) -> Result<String, String> {
    let trimmed = value.trim();
    let length = trimmed.chars().count();
    if length > max_chars {
        return Err(format!("at most {max_chars} characters (got {length})"));
    }
    if trimmed.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(trimmed.to_owned())
}

/// Checks a rejection reason or note.
pub fn clean_reason(field: &str, value: &str, required: bool) -> Result<String, Error> {
    let clean =
        clean_text(value, MAX_REASON_CHARS).map_err(|message| Error::invalid(field, message))?;
    if required && clean.is_empty() {
        return Err(Error::invalid(field, "a reason is required"));
    }
    Ok(clean)
}

/// Parses a lead id from a request.
pub fn parse_id(field: &str, value: &str) -> Result<Uuid, Error> {
    aida_core::parse_id(field, value, "lead")
}

/// Checks an idempotency key.
pub fn clean_request_id(value: &str) -> Result<Option<String>, Error> {
    Ok(aida_core::idempotency::request_id(value)?.map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> LeadFields {
        LeadFields {
            email: "  Ada@Example.COM ".into(),
            first_name: " Ada ".into(),
            last_name: "Lovelace".into(),
            ..LeadFields::default()
        }
    }

    #[test]
    fn capture_fields_are_trimmed_and_the_email_lower_cased() {
        let clean = normalize(fields(), "lead").expect("valid");
        assert_eq!(clean.email, "ada@example.com");
        assert_eq!(clean.first_name, "Ada");
    }

    #[test]
    fn international_phones_become_e164_and_local_ones_are_kept() {
        assert_eq!(
            normalize_phone("+44 20 7946 0958").expect("valid"),
            "+442079460958"
        );
        assert_eq!(
            normalize_phone("0044 20 7946 0958").expect("valid"),
            "+442079460958"
        );
        assert_eq!(
            normalize_phone("(555) 123-4567").expect("valid"),
            "(555) 123-4567"
        );
        assert!(normalize_phone("call me maybe").is_err());
        assert!(normalize_phone("123").is_err());
        assert!(normalize_phone("+1 000").is_err());
    }

    #[test]
    fn bad_emails_are_refused() {
        for bad in [
            "ada",
            "ada@",
            "@example.com",
            "ada@localhost",
            "Ada <ada@example.com>",
            "a b@example.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_violation_is_reported_with_its_field() {
        let error = normalize(
            LeadFields {
                email: String::new(),
                phone: String::new(),
                first_name: "x".repeat(10_000),
                attributes: BTreeMap::from([("bad key".into(), "v".into())]),
                ..LeadFields::default()
            },
            "lead",
        )
        .expect_err("invalid");
        let Error::InvalidArgument(violations) = error else {
            panic!("not invalid argument")
        };
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert!(fields.contains(&"lead.email"));
        assert!(fields.contains(&"lead.phone"));
        assert!(fields.contains(&"lead.first_name"));
        assert!(fields.contains(&"lead.attributes[bad key]"));
    }

    fn lead(status: Status) -> Lead {
        Lead {
            id: Uuid::nil(),
            tenant_id: "t".into(),
            fields: fields(),
            source: Source::Other,
            status,
            rejection_reason: String::new(),
            version: 3,
            create_time: Utc::now(),
            update_time: Utc::now(),
            merged_into: None,
        }
    }

    #[test]
    fn a_rejected_lead_cannot_be_qualified_until_reopened() {
        let rejected = lead(Status::Rejected);
        assert!(matches!(
            rejected.qualify(),
            Err(Error::FailedPrecondition { .. })
        ));
        assert_eq!(
            rejected.change_status(Status::New).expect("reopen"),
            Status::New
        );
        assert_eq!(
            lead(Status::New).qualify().expect("qualify"),
            Status::Qualified
        );
    }

    #[test]
    fn illegal_transitions_are_failed_precondition() {
        assert!(matches!(
            lead(Status::Converted).reject(),
            Err(Error::FailedPrecondition { .. })
        ));
        assert!(matches!(
            lead(Status::Qualified).qualify(),
            Err(Error::FailedPrecondition { .. })
        ));
        assert!(matches!(
            lead(Status::Qualified).change_status(Status::New),
            Err(Error::FailedPrecondition { .. })
        ));
        assert!(matches!(
            lead(Status::New).change_status(Status::Qualified),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn a_stale_etag_is_aborted() {
        let current = lead(Status::New);
        assert!(current.check_etag("").is_ok());
        assert!(current.check_etag("v3").is_ok());
        assert!(matches!(
            current.check_etag("v2"),
            Err(Error::Aborted { .. })
        ));
    }
}
