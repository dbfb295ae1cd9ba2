//! Templates, rendering, tracked links, machine-open detection and the consent rules.
//! No transport or storage types here.

use std::collections::BTreeMap;

use aida_core::{Error, FieldViolation};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_SUBJECT_CHARS: usize = 300;
pub const MAX_BODY_CHARS: usize = 100_000;
pub const MAX_SMS_CHARS: usize = 1_600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Email,
    Sms,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "EMAIL",
            Channel::Sms => "SMS",
        }
    }

    pub fn parse(text: &str) -> Option<Channel> {
        match text.strip_prefix("CHANNEL_").unwrap_or(text) {
            "EMAIL" => Some(Channel::Email),
            "SMS" => Some(Channel::Sms),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageStatus {
    Sending,
    Sent,
    Failed,
}

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Sending => "SENDING",
            MessageStatus::Sent => "SENT",
            MessageStatus::Failed => "FAILED",
        }
    }

    pub fn parse(text: &str) -> Option<MessageStatus> {
        match text.strip_prefix("MESSAGE_STATUS_").unwrap_or(text) {
            "SENDING" => Some(MessageStatus::Sending),
            "SENT" => Some(MessageStatus::Sent),
            "FAILED" => Some(MessageStatus::Failed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub id: Uuid,
    pub tenant_id: String,
    pub name: String,
    pub channel: Channel,
    pub subject: String,
    pub body: String,
    pub version: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

impl Template {
    pub fn etag(&self) -> String {
        aida_core::etag::of(self.version)
    }

    pub fn check_etag(&self, etag: &str) -> Result<(), Error> {
        aida_core::etag::check("template", self.id, self.version, etag)
    }
}

/// Validates a template's fields (and that its placeholders are well formed).
pub fn validate_template(
    name: &str,
    channel: Channel,
    subject: &str,
    body: &str,
) -> Result<(String, String, String), Error> {
    let mut violations = Vec::new();
    let name = name.trim().to_owned();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        violations.push(FieldViolation::new(
            "template.name",
            format!("1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    let subject = subject.trim().to_owned();
    if channel == Channel::Email && subject.is_empty() {
        violations.push(FieldViolation::new(
            "template.subject",
            "an e-mail template needs a subject",
        ));
    }
    if subject.chars().count() > MAX_SUBJECT_CHARS || subject.contains(['\r', '\n']) {
        violations.push(FieldViolation::new(
            "template.subject",
            format!("one line of at most {MAX_SUBJECT_CHARS} characters"),
        ));
    }
    let max_body = if channel == Channel::Sms {
        MAX_SMS_CHARS
    } else {
        MAX_BODY_CHARS
    };
    if body.trim().is_empty() || body.chars().count() > max_body {
        violations.push(FieldViolation::new(
            "template.body",
            format!("1 to {max_body} characters"),
        ));
    }
    for (field, text) in [
        ("template.subject", subject.as_str()),
        ("template.body", body),
    ] {
        if let Err(message) = placeholders(text) {
            violations.push(FieldViolation::new(field, message));
        }
    }
    if violations.is_empty() {
        Ok((name, subject, body.to_owned()))
    } else {
        Err(Error::InvalidArgument(violations))
    }
}

/// The `{{name}}` placeholders of `text`, in order.
pub fn placeholders(text: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "a '{{' is never closed".to_owned())?;
        let name = after[..end].trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(format!(
                "'{{{{{name}}}}}' is not a placeholder: use lower-case letters, digits and '_'"
            ));
        }
        names.push(name.to_owned());
        rest = &after[end + 2..];
    }
    Ok(names)
}

/// Replaces every placeholder with its value; a placeholder without a value is an error
/// naming `field` and the variable.
pub fn render(
    text: &str,
    variables: &BTreeMap<String, String>,
    field: &str,
) -> Result<String, Error> {
    let mut output = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        output.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| Error::invalid(field, "a '{{' is never closed"))?;
        let name = after[..end].trim();
        let value = variables.get(name).ok_or_else(|| {
            Error::invalid(
                "variables",
                format!("the template uses {{{{{name}}}}} and no value was given for it"),
            )
        })?;
        output.push_str(value);
        rest = &after[end + 2..];
    }
    output.push_str(rest);
    Ok(output)
}

/// What a tracking link does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkKind {
    #[serde(rename = "o")]
    Open,
    #[serde(rename = "c")]
    Click,
    #[serde(rename = "u")]
    Unsubscribe,
}

/// The sealed content of a tracking link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackingClaim {
    #[serde(rename = "t")]
    pub tenant_id: String,
    #[serde(rename = "m")]
    pub message_id: Uuid,
    #[serde(rename = "k")]
    pub kind: LinkKind,
    /// Index into the message's links, for clicks.
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub link: Option<usize>,
    /// Unix seconds after which the link no longer works.
    #[serde(rename = "x")]
    pub expires: i64,
}

impl TrackingClaim {
    /// Refuses a link past its expiry (FAILED_PRECONDITION `LINK_EXPIRED`).
    pub fn check_fresh(&self, now_secs: i64) -> Result<(), Error> {
        if now_secs > self.expires {
            return Err(Error::FailedPrecondition {
                reason: "LINK_EXPIRED",
                message: "this link has expired".into(),
            });
        }
        Ok(())
    }
}

/// `http(s)://…` URLs in `text`, in order, with their byte ranges.
pub fn find_urls(text: &str) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut offset = 0;
    while offset < text.len() {
        let rest = &text[offset..];
        let next = [rest.find("https://"), rest.find("http://")]
            .into_iter()
            .flatten()
            .min();
        let Some(start) = next else { break };
        let absolute = offset + start;
        let tail = &text[absolute..];
        let mut end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | '\''))
            .unwrap_or(tail.len());
        // Sentence punctuation right after a URL is not part of it.
        while end > 0
            && matches!(
                tail.as_bytes()[end - 1],
                b'.' | b',' | b')' | b';' | b':' | b'!' | b'?'
            )
        {
            end -= 1;
        }
        if end > "https://".len() {
            found.push((absolute, absolute + end));
        }
        offset = absolute + end.max(1);
    }
    found
}

/// User agents of mail privacy proxies, link scanners and scripts: their opens and
/// prefetches are not people reading.
const MACHINE_AGENTS: [&str; 16] = [
    "googleimageproxy",
    "yahoomailproxy",
    "ymailproxy",
    "mimecast",
    "proofpoint",
    "barracuda",
    "symantec",
    "bot",
    "crawler",
    "spider",
    "preview",
    "python-requests",
    "curl/",
    "go-http-client",
    "wget",
    "headlesschrome",
];

/// A machine open: a known proxy or scanner, or an open right after sending (prefetch).
pub fn is_machine_open(
    user_agent: &str,
    send_time: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    window: chrono::Duration,
) -> bool {
    let agent = user_agent.to_ascii_lowercase();
    if MACHINE_AGENTS.iter().any(|marker| agent.contains(marker)) {
        return true;
    }
    send_time.is_some_and(|sent| now - sent < window)
}

/// Escapes text for HTML.
pub fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_substitutes_every_placeholder_and_names_a_missing_one() {
        let variables = BTreeMap::from([
            ("first_name".to_owned(), "Ada".to_owned()),
            ("company".to_owned(), "AE".to_owned()),
        ]);
        assert_eq!(
            render("Hi {{ first_name }} of {{company}}!", &variables, "body").expect("render"),
            "Hi Ada of AE!"
        );
        let Err(Error::InvalidArgument(violations)) = render("Hi {{title}}", &variables, "body")
        else {
            panic!("missing variable accepted");
        };
        assert_eq!(violations[0].field, "variables");
        assert!(violations[0].description.contains("{{title}}"));
    }

    #[test]
    fn malformed_placeholders_are_refused() {
        assert!(placeholders("Hi {{first_name").is_err());
        assert!(placeholders("Hi {{First Name}}").is_err());
        assert_eq!(placeholders("{{a}} {{b_2}}").expect("ok"), ["a", "b_2"]);
    }

    #[test]
    fn urls_are_found_without_trailing_punctuation() {
        let text = "See https://example.com/a?b=1. Or (http://x.io/y), not https:// alone.";
        let urls: Vec<&str> = find_urls(text)
            .into_iter()
            .map(|(start, end)| &text[start..end])
            .collect();
        assert_eq!(urls, ["https://example.com/a?b=1", "http://x.io/y"]);
    }

    #[test]
    fn proxies_scanners_and_instant_opens_are_machine_opens() {
        let now = Utc::now();
        let window = chrono::Duration::seconds(2);
        let long_ago = Some(now - chrono::Duration::minutes(10));
        assert!(is_machine_open(
            "Mozilla/5.0 (via ggpht.com GoogleImageProxy)",
            long_ago,
            now,
            window
        ));
        assert!(is_machine_open(
            "Mozilla/5.0 (Macintosh)",
            Some(now),
            now,
            window
        ));
        assert!(!is_machine_open(
            "Mozilla/5.0 (Macintosh)",
            long_ago,
            now,
            window
        ));
    }

    #[test]
    fn sms_templates_are_short_and_email_templates_need_a_subject() {
        assert!(validate_template("t", Channel::Email, "", "body").is_err());
        assert!(validate_template("t", Channel::Sms, "", &"x".repeat(MAX_SMS_CHARS + 1)).is_err());
        assert!(validate_template("t", Channel::Sms, "", "Hi {{first_name}}").is_ok());
    }
}

/// A message to a lead, with what happened to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: Uuid,
    pub tenant_id: String,
    pub lead_id: Uuid,
    pub channel: Channel,
    pub to: String,
    pub subject: String,
    pub body: String,
    pub template_id: String,
    /// Targets of the tracked links, in order.
    pub links: Vec<String>,
    pub status: MessageStatus,
    pub failure_reason: String,
    pub open_count: i64,
    pub machine_open_count: i64,
    pub click_count: i64,
    pub replied: bool,
    pub send_time: Option<DateTime<Utc>>,
    pub first_open_time: Option<DateTime<Utc>>,
    pub reply_time: Option<DateTime<Utc>>,
    pub request_id: String,
    pub create_time: DateTime<Utc>,
}

/// The consent purpose sending checks: a message of CommsService is direct marketing.
pub const MARKETING: &str = "marketing";

/// Whether consent is given or withdrawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentState {
    Granted,
    Withdrawn,
}

impl ConsentState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentState::Granted => "GRANTED",
            ConsentState::Withdrawn => "WITHDRAWN",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "GRANTED" => Some(ConsentState::Granted),
            "WITHDRAWN" => Some(ConsentState::Withdrawn),
            _ => None,
        }
    }
}

/// One entry of a lead's consent ledger (never changed once written).
#[derive(Debug, Clone, PartialEq)]
pub struct Consent {
    pub id: Uuid,
    pub lead_id: Uuid,
    pub channel: Channel,
    pub purpose: String,
    pub state: ConsentState,
    pub source: String,
    pub proof: String,
    pub recorded_by: String,
    pub create_time: DateTime<Utc>,
}

/// An address that must never be contacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    pub address: String,
    pub reason: String,
    pub create_time: DateTime<Utc>,
}

/// The canonical form of an address for suppression lookups: e-mails lower-case, phones
/// as given without spaces.
pub fn normalize_address(address: &str) -> String {
    let trimmed = address.trim();
    if trimmed.contains('@') {
        trimmed.to_lowercase()
    } else {
        trimmed.chars().filter(|c| !c.is_whitespace()).collect()
    }
}
