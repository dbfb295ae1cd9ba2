//! Contact details in their one canonical form: what LeadService stores, de-duplicates
//! and filters by, and what a privacy request names a person by.

/// The longest e-mail address accepted (RFC 5321's path limit).
pub const MAX_EMAIL_CHARS: usize = 254;

/// Lower-cases and checks an e-mail address; empty stays empty.
pub fn normalize_email(value: &str) -> Result<String, String> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed.chars().count() > MAX_EMAIL_CHARS {
        return Err(format!("at most {MAX_EMAIL_CHARS} characters"));
    }
    let lower = trimmed.to_lowercase();
    let well_formed = email_address::EmailAddress::parse_with_options(
        &lower,
        email_address::Options::default().without_display_text(),
    )
    .is_ok();
    let has_dotted_domain = lower.rsplit_once('@').is_some_and(|(_, domain)| {
        domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
    });
    if !well_formed || !has_dotted_domain {
        return Err(format!(
            "'{}' is not an e-mail address",
            truncate_for_message(trimmed)
        ));
    }
    Ok(lower)
}

/// E.164 when the number can be parsed (it carries a country code); otherwise the trimmed
/// input, if it looks like a phone number at all.
pub fn normalize_phone(value: &str) -> Result<String, String> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed.chars().count() > 32 {
        return Err("at most 32 characters".into());
    }
    if !trimmed
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '(' | ')' | '.' | '/'))
    {
        return Err(format!(
            "'{}' is not a phone number",
            truncate_for_message(trimmed)
        ));
    }
    let digits = trimmed.chars().filter(char::is_ascii_digit).count();
    if !(5..=15).contains(&digits) {
        return Err("a phone number has 5 to 15 digits".into());
    }
    let international = if let Some(rest) = trimmed.strip_prefix("00") {
        format!("+{rest}")
    } else {
        trimmed.to_owned()
    };
    if international.starts_with('+')
        && let Ok(number) = phonenumber::parse(None, &international)
    {
        if phonenumber::is_valid(&number) {
            return Ok(number.format().mode(phonenumber::Mode::E164).to_string());
        }
        return Err(format!(
            "'{}' is not a valid phone number",
            truncate_for_message(trimmed)
        ));
    }
    Ok(trimmed.to_owned())
}

fn truncate_for_message(value: &str) -> String {
    if value.chars().count() <= 40 {
        value.to_owned()
    } else {
        format!("{}…", value.chars().take(40).collect::<String>())
    }
}
