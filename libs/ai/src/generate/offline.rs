//! The offline writer: deterministic drafts from templates per purpose and tone, for when
//! there is no OpenRouter key or no network.

use super::*;

/// Deterministic drafts from templates per purpose and tone: the same request always gives the
/// same draft (its `latency_ms` is reported as 0). Lead notes are never quoted.
#[derive(Debug, Clone, Copy, Default)]
pub struct Offline;

/// How the best example's subject is written, borrowed for ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubjectStyle {
    Default,
    Question,
    Lowercase,
}

/// Examples at least this similar lend their subject style.
const STYLE_SIMILARITY: f32 = 0.5;

fn subject_style(request: &GenerationRequest) -> SubjectStyle {
    let Some(best) = request
        .best_examples()
        .into_iter()
        .find(|e| e.similarity >= STYLE_SIMILARITY && !is_blank(&e.subject))
    else {
        return SubjectStyle::Default;
    };
    let subject = best.subject.trim();
    if subject.ends_with('?') {
        SubjectStyle::Question
    } else if subject.chars().any(char::is_alphabetic) && !subject.chars().any(char::is_uppercase) {
        SubjectStyle::Lowercase
    } else {
        SubjectStyle::Default
    }
}

/// The request's facts, trimmed, with fallbacks for what is missing.
struct Facts<'a> {
    first: &'a str,
    last: &'a str,
    title: &'a str,
    company: &'a str,
    source: &'a str,
    sender: &'a str,
    sender_company: &'a str,
    signature: &'a str,
    last_subject: Option<&'a str>,
    ever_replied: bool,
}

impl Facts<'_> {
    fn company_or<'b>(&'b self, fallback: &'b str) -> &'b str {
        if self.company.is_empty() {
            fallback
        } else {
            self.company
        }
    }

    /// "I'm Maria from Acme." and its formal variant; "We're the AIDA team." when the
    /// sender is a team rather than a person.
    fn sender_intro(&self, formal: bool) -> String {
        if let Some(team) = self
            .sender
            .strip_prefix("The ")
            .filter(|_| self.sender.to_lowercase().ends_with(" team"))
        {
            let verb = if formal { "We are" } else { "We're" };
            return if self.sender_company.is_empty() {
                format!("{verb} the {team}.")
            } else {
                format!("{verb} the {team} at {}.", self.sender_company)
            };
        }
        match (formal, self.sender_company.is_empty()) {
            (false, false) => format!("I'm {} from {}.", self.sender, self.sender_company),
            (false, true) => format!("I'm {}.", self.sender),
            (true, false) => format!(
                "My name is {} and I work at {}.",
                self.sender, self.sender_company
            ),
            (true, true) => format!("My name is {}.", self.sender),
        }
    }

    /// "you and the team at Acme", "you as Head of Sales at Acme", ...
    fn you_at_company(&self) -> String {
        match (self.title.is_empty(), self.company.is_empty()) {
            (false, false) => format!("you as {} at {}", self.title, self.company),
            (false, true) => format!("you as {}", self.title),
            (true, false) => format!("you and the team at {}", self.company),
            (true, true) => "you and your team".to_owned(),
        }
    }

    /// A sentence about how the lead found us, with a trailing space, or nothing.
    fn source_sentence(&self, formal: bool) -> String {
        let source = self.source.to_lowercase();
        if source.is_empty() {
            String::new()
        } else if source.contains("webinar") {
            if formal {
                "Thank you for attending our webinar. ".into()
            } else {
                "Thanks for joining our webinar. ".into()
            }
        } else if source.contains("referr") {
            "You were referred to us, so I wanted to reach out personally. ".into()
        } else if source.contains("web") || source.contains("site") || source.contains("form") {
            if formal {
                "Thank you for getting in touch through our website. ".into()
            } else {
                "Thanks for reaching out through our website. ".into()
            }
        } else {
            format!(
                "I'm writing because you came to us through {}. ",
                self.source
            )
        }
    }

    fn greeting(&self, tone: Tone) -> String {
        match tone {
            Tone::Formal => {
                let name = format!("{} {}", self.first, self.last);
                let name = name.trim();
                if name.is_empty() {
                    "Hello,".to_owned()
                } else {
                    format!("Dear {name},")
                }
            }
            Tone::Friendly | Tone::Brief => {
                if self.first.is_empty() {
                    "Hi there,".to_owned()
                } else {
                    format!("Hi {},", self.first)
                }
            }
        }
    }

    fn sign_off(&self, tone: Tone) -> String {
        let closing = match tone {
            Tone::Friendly => "Best,",
            Tone::Formal => "Kind regards,",
            Tone::Brief => "Thanks,",
        };
        let mut lines = vec![closing.to_owned()];
        if !self.signature.contains(self.sender) {
            lines.push(self.sender.to_owned());
        }
        if !self.signature.is_empty() {
            lines.push(self.signature.to_owned());
        } else if !self.sender_company.is_empty() {
            lines.push(self.sender_company.to_owned());
        }
        lines.join("\n")
    }
}

/// "Acme's", "Brightwave Logistics'"; "your team's" for the fallback.
fn possessive(name: &str) -> String {
    if name.ends_with('s') {
        format!("{name}'")
    } else {
        format!("{name}'s")
    }
}

fn opt_out(tone: Tone) -> &'static str {
    match tone {
        Tone::Friendly => {
            "If this isn't a priority, just reply and let me know, and I won't follow up."
        }
        Tone::Formal => {
            "If this is not relevant to you, please let me know and I will not contact you again."
        }
        Tone::Brief => "Not relevant? Just say so and I won't follow up.",
    }
}

impl Offline {
    fn subject(purpose: Purpose, tone: Tone, style: SubjectStyle, f: &Facts<'_>) -> String {
        let with_first = |s: &str| {
            if f.first.is_empty() {
                s.to_owned()
            } else {
                format!("{s}, {}", f.first)
            }
        };
        let subject = if style == SubjectStyle::Question {
            match purpose {
                Purpose::FirstTouch if f.company.is_empty() => with_first("A quick question") + "?",
                Purpose::FirstTouch => format!("A quick question for {}?", f.company),
                Purpose::FollowUp => "Did my last note reach you?".to_owned(),
                Purpose::ReEngage => format!("Still a priority for {}?", f.company_or("you")),
                Purpose::MeetingRequest => "20 minutes in the next few weeks?".to_owned(),
            }
        } else {
            match (purpose, tone) {
                (Purpose::FirstTouch, Tone::Friendly) => {
                    match (f.company.is_empty(), f.sender_company.is_empty()) {
                        (false, false) => format!("{} and {}", f.sender_company, f.company),
                        (true, false) => format!("Hello from {}", f.sender_company),
                        (false, true) => format!("Hello, {} team", f.company),
                        _ => with_first("Hello"),
                    }
                }
                (Purpose::FirstTouch, Tone::Formal) => {
                    match (f.company.is_empty(), f.sender_company.is_empty()) {
                        (false, false) => {
                            format!("Introduction: {} and {}", f.sender_company, f.company)
                        }
                        (true, false) => format!("Introduction from {}", f.sender_company),
                        _ => "A brief introduction".to_owned(),
                    }
                }
                (Purpose::FirstTouch, Tone::Brief) => with_first("Quick question"),
                (Purpose::FollowUp, Tone::Brief) => "Quick follow-up".to_owned(),
                (Purpose::FollowUp, _) => match f.last_subject {
                    Some(subject) => format!("Following up: {subject}"),
                    None => match tone {
                        Tone::Formal => "Following up on my previous message".to_owned(),
                        _ => with_first("Following up"),
                    },
                },
                (Purpose::ReEngage, Tone::Friendly) => with_first("Checking back in"),
                (Purpose::ReEngage, Tone::Formal) => {
                    format!("Reconnecting with {}", f.company_or("you"))
                }
                (Purpose::ReEngage, Tone::Brief) => "Still relevant?".to_owned(),
                (Purpose::MeetingRequest, Tone::Friendly) => "A 20-minute call?".to_owned(),
                (Purpose::MeetingRequest, Tone::Formal) => "Request for a brief meeting".to_owned(),
                (Purpose::MeetingRequest, Tone::Brief) => "Quick call?".to_owned(),
            }
        };
        if style == SubjectStyle::Lowercase {
            subject.to_lowercase()
        } else {
            subject
        }
    }

    /// The paragraphs between greeting and opt-out line.
    fn paragraphs(purpose: Purpose, tone: Tone, f: &Facts<'_>) -> Vec<String> {
        let formal = tone == Tone::Formal;
        let company = f.company_or("your team");
        let ours = if f.sender_company.is_empty() {
            "we"
        } else {
            f.sender_company
        };
        match (purpose, tone) {
            (Purpose::FirstTouch, Tone::Friendly) => vec![
                format!(
                    "{} {}I'd love to hear what's top of mind for {} this quarter, and whether \
                     {} could make some of it easier.",
                    f.sender_intro(false),
                    f.source_sentence(false),
                    f.you_at_company(),
                    ours
                ),
                "Would you be open to sharing a line or two about where things stand?".into(),
            ],
            (Purpose::FirstTouch, Tone::Formal) => vec![
                format!(
                    "{} {}I would welcome the opportunity to learn about {} current priorities \
                     and to explore whether we could be of help.",
                    f.sender_intro(true),
                    f.source_sentence(true),
                    possessive(company)
                ),
                "Would you be open to a brief exchange on this?".into(),
            ],
            (Purpose::FirstTouch, Tone::Brief) => vec![format!(
                "{} {}Worth a quick chat about what {} is working on this quarter?",
                f.sender_intro(false),
                f.source_sentence(false),
                company
            )],
            (Purpose::FollowUp, _) => {
                let previous = match (f.last_subject, formal) {
                    (Some(subject), false) => {
                        format!("I wanted to follow up on my note about \"{subject}\".")
                    }
                    (Some(subject), true) => {
                        format!("I am following up on my message regarding \"{subject}\".")
                    }
                    (None, false) => "I wanted to check in briefly.".to_owned(),
                    (None, true) => "I would like to check in briefly.".to_owned(),
                };
                match tone {
                    Tone::Friendly => vec![
                        format!(
                            "{previous} I know inboxes get busy, so no pressure at all. If \
                             improving how {company} works is on the list this quarter, I'd be \
                             glad to share how {ours} could help."
                        ),
                        "Is this worth a short conversation, or should I check back later?".into(),
                    ],
                    Tone::Formal => vec![
                        format!(
                            "{previous} I appreciate that your time is limited. Should this be \
                             a topic for {company} in the coming months, I would be glad to \
                             provide more detail."
                        ),
                        "Would it be useful to continue the conversation, or would you prefer \
                         that I get back to you at a later date?"
                            .into(),
                    ],
                    Tone::Brief => vec![format!(
                        "{previous} Is this worth a quick conversation for {company}?"
                    )],
                }
            }
            (Purpose::ReEngage, _) => {
                let gap = match (f.ever_replied, formal) {
                    (true, false) => "It's been a while since we last spoke",
                    (false, false) => "It's been a while since I last reached out",
                    (true, true) => "Some time has passed since we last spoke",
                    (false, true) => "Some time has passed since I last wrote to you",
                };
                let gap = match f.last_subject {
                    Some(subject) if tone != Tone::Brief => format!("{gap} about \"{subject}\"."),
                    _ => format!("{gap}."),
                };
                match tone {
                    Tone::Friendly => vec![
                        format!(
                            "{gap} Priorities shift, so I wanted to ask: is this something {} \
                             is thinking about again?",
                            company
                        ),
                        "If so, I'd be happy to pick things up wherever suits you.".into(),
                    ],
                    Tone::Formal => vec![
                        format!(
                            "{gap} As priorities often change, I wanted to ask whether this \
                             topic is once again relevant for {company}."
                        ),
                        "If so, I would be glad to continue the conversation at a time that \
                         suits you."
                            .into(),
                    ],
                    Tone::Brief => vec![format!("{gap} Has anything changed at {company}?")],
                }
            }
            (Purpose::MeetingRequest, Tone::Friendly) => vec![
                format!(
                    "{} I'd love to set up a 20-minute call to learn what's on the agenda for {}, \
                     and to see whether {} could help.",
                    f.sender_intro(false),
                    f.you_at_company(),
                    ours
                ),
                "If you're up for it, just reply with a time that works for you, and I'll send \
                 an invite."
                    .into(),
            ],
            (Purpose::MeetingRequest, Tone::Formal) => vec![
                format!(
                    "{} I would appreciate the opportunity to speak with you for about twenty \
                     minutes about {} priorities and whether we could support them.",
                    f.sender_intro(true),
                    possessive(company)
                ),
                "Please let me know a time that suits you and I will send an invitation.".into(),
            ],
            (Purpose::MeetingRequest, Tone::Brief) => vec![format!(
                "Would a 20-minute call about {company} work for you? Reply with a time and I'll \
                 send an invite."
            )],
        }
    }
}

#[async_trait]
impl ContentGenerator for Offline {
    fn name(&self) -> &str {
        "offline"
    }

    fn model(&self) -> &str {
        OFFLINE_MODEL
    }

    async fn generate(&self, request: &GenerationRequest) -> Result<Draft, GenerateError> {
        request.validate()?;
        let prompt = build_prompt(request);
        let (lead, sender) = (&request.lead, &request.sender);
        let facts = Facts {
            first: lead.first_name.trim(),
            last: lead.last_name.trim(),
            title: lead.title.trim(),
            company: lead.company.trim(),
            source: lead.source.trim(),
            sender: sender.name.trim(),
            sender_company: sender.company.trim(),
            signature: sender.signature.trim(),
            last_subject: request
                .history
                .iter()
                .rev()
                .map(|m| m.subject.trim())
                .find(|s| !s.is_empty()),
            ever_replied: request.history.iter().any(|m| m.replied),
        };
        let (purpose, tone) = (request.purpose, request.tone);
        let style = subject_style(request);
        let subject = Offline::subject(purpose, tone, style, &facts);

        let mut paragraphs = vec![facts.greeting(tone)];
        paragraphs.extend(
            Offline::paragraphs(purpose, tone, &facts)
                .into_iter()
                .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" ")),
        );
        paragraphs.push(opt_out(tone).to_owned());
        paragraphs.push(facts.sign_off(tone));
        let body = paragraphs.join("\n\n");

        let mut template = format!("{}/{}", purpose.as_str(), tone.as_str());
        match style {
            SubjectStyle::Default => {}
            SubjectStyle::Question => template.push_str("+subject:question"),
            SubjectStyle::Lowercase => template.push_str("+subject:lowercase"),
        }
        tracing::debug!(%template, prompt_hash = %prompt.hash, "offline draft generated");
        Ok(Draft {
            subject,
            body,
            provenance: Provenance {
                generator: self.name().to_owned(),
                model: OFFLINE_MODEL.to_owned(),
                prompt_version: PROMPT_VERSION.to_owned(),
                prompt_hash: prompt.hash,
                template,
                usage: Usage::default(),
                latency_ms: 0,
            },
        })
    }
}
