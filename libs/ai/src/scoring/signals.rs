//! What a lead's own fields say: title seniority (in several languages), the kind of e-mail
//! address (free mail or a company domain), the channel it came through.

use serde::{Deserialize, Serialize};

/// Rank parsed from a job title.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Seniority {
    Unknown = 0,
    IndividualContributor = 1,
    Manager = 2,
    Director = 3,
    Vp = 4,
    CLevel = 5,
}

impl Seniority {
    /// The `title_seniority` feature: 0 (unknown) to 1 (c-level) in steps of 0.2.
    pub fn level(self) -> f64 {
        f64::from(self as u8) / 5.0
    }
}

/// Words that make a title junior whatever else it says ("Assistant to the CEO").
const JUNIOR_WORDS: &[&str] = &[
    "assistant",
    "assistante",
    "asistente",
    "assistent",
    "assistentin",
    "intern",
    "internship",
    "stagiaire",
    "praktikant",
    "praktikantin",
    "becario",
    "trainee",
    "student",
    "werkstudent",
    "apprentice",
    "alternant",
];

const C_LEVEL_WORDS: &[&str] = &[
    "ceo",
    "cto",
    "cfo",
    "coo",
    "cmo",
    "cio",
    "cro",
    "cpo",
    "ciso",
    "cdo",
    "chief",
    "founder",
    "cofounder",
    "owner",
    "president",
    "présidente",
    "président",
    "presidente",
    "pdg",
    "inhaber",
    "inhaberin",
    "geschäftsführer",
    "geschäftsführerin",
    "fundador",
    "fundadora",
    "fondateur",
    "fondatrice",
    "propietario",
    "partner",
];
const C_LEVEL_PHRASES: &[&str] = &[
    "managing director",
    "general manager",
    "directeur général",
    "directrice générale",
    "director general",
    "directora general",
    "amministratore delegato",
];
const VP_WORDS: &[&str] = &["vp", "svp", "evp", "avp", "vicepresidente", "vizepräsident"];
const VP_PHRASES: &[&str] = &[
    "vice president",
    "vice-president",
    "vice présidente",
    "vice président",
    "vice-président",
    "head of",
];
const DIRECTOR_WORDS: &[&str] = &[
    "director",
    "directora",
    "directeur",
    "directrice",
    "direktor",
    "direktorin",
    "diretor",
    "diretora",
    "direttore",
    "head",
    "leiter",
    "leiterin",
    "bereichsleiter",
    "abteilungsleiter",
    "jefe",
    "jefa",
    "principal",
];
const MANAGER_WORDS: &[&str] = &[
    "manager",
    "managerin",
    "gerente",
    "responsable",
    "lead",
    "teamlead",
    "supervisor",
    "supervisora",
    "coordinator",
    "coordinador",
    "coordinadora",
    "chef",
    "gestionnaire",
    "encargado",
    "encargada",
];

/// Parses the rank out of a job title; keywords in English, German, French, Spanish, a little
/// Portuguese and Italian. Words ending in `leiter`/`leiterin` ("Einkaufsleiter") count as
/// director. Junior words win ("Assistant to the CEO" is an individual contributor).
pub fn seniority(title: &str) -> Seniority {
    let lower = title.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        return Seniority::Unknown;
    }
    // Phrases are matched on the words re-joined by single spaces, so punctuation and extra
    // spacing do not matter ("Vice-President" → "vice president").
    let joined = format!(" {} ", words.join(" "));
    let has_word = |list: &[&str]| words.iter().any(|w| list.contains(w));
    let has_phrase = |list: &[&str]| {
        list.iter().any(|p| {
            let p: Vec<&str> = p
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .collect();
            joined.contains(&format!(" {} ", p.join(" ")))
        })
    };
    if has_word(JUNIOR_WORDS) {
        Seniority::IndividualContributor
    } else if has_phrase(C_LEVEL_PHRASES)
        || joined.contains(" co founder ")
        // "President" is c-level, "Vice President" is not.
        || words
            .iter()
            .enumerate()
            .any(|(i, w)| C_LEVEL_WORDS.contains(w) && (i == 0 || words[i - 1] != "vice"))
    {
        Seniority::CLevel
    } else if has_phrase(VP_PHRASES) || has_word(VP_WORDS) {
        Seniority::Vp
    } else if has_word(DIRECTOR_WORDS)
        || words
            .iter()
            .any(|w| w.len() > 6 && (w.ends_with("leiter") || w.ends_with("leiterin")))
    {
        Seniority::Director
    } else if has_word(MANAGER_WORDS) || words.iter().any(|w| w.ends_with("manager")) {
        Seniority::Manager
    } else {
        Seniority::IndividualContributor
    }
}

/// Consumer mail providers: an address there says nothing about an employer.
pub const FREE_MAIL_DOMAINS: &[&str] = &[
    "gmail.com",
    "googlemail.com",
    "yahoo.com",
    "yahoo.co.uk",
    "yahoo.fr",
    "yahoo.es",
    "yahoo.de",
    "ymail.com",
    "hotmail.com",
    "hotmail.co.uk",
    "hotmail.fr",
    "hotmail.es",
    "hotmail.de",
    "outlook.com",
    "outlook.fr",
    "outlook.de",
    "outlook.es",
    "live.com",
    "live.fr",
    "msn.com",
    "aol.com",
    "icloud.com",
    "me.com",
    "mac.com",
    "proton.me",
    "protonmail.com",
    "pm.me",
    "gmx.de",
    "gmx.net",
    "gmx.com",
    "web.de",
    "t-online.de",
    "freenet.de",
    "orange.fr",
    "wanadoo.fr",
    "free.fr",
    "laposte.net",
    "sfr.fr",
    "libero.it",
    "virgilio.it",
    "mail.ru",
    "yandex.ru",
    "yandex.com",
    "qq.com",
    "163.com",
    "126.com",
    "naver.com",
    "zoho.com",
    "mail.com",
    "fastmail.com",
    "tutanota.com",
    "hey.com",
    "seznam.cz",
    "wp.pl",
    "o2.pl",
    "interia.pl",
    "bol.com.br",
    "uol.com.br",
    "terra.com.br",
];

/// The kind of e-mail address a lead gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmailKind {
    /// Missing or not an address.
    None,
    /// A consumer provider from [`FREE_MAIL_DOMAINS`].
    Free,
    /// Anything else: presumably the employer's domain.
    Business,
}

/// Classifies an e-mail address by its domain.
pub fn email_kind(email: &str) -> EmailKind {
    let email = email.trim();
    let Some((local, domain)) = email.rsplit_once('@') else {
        return EmailKind::None;
    };
    let domain = domain.trim_end_matches('.').to_lowercase();
    if local.is_empty() || domain.is_empty() || !domain.contains('.') {
        return EmailKind::None;
    }
    if FREE_MAIL_DOMAINS.contains(&domain.as_str()) {
        EmailKind::Free
    } else {
        EmailKind::Business
    }
}

/// Channel a lead came through; free-text sources are mapped by keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Referral,
    Inbound,
    Event,
    Outbound,
    Partner,
    Paid,
    Other,
}

/// Maps a free-text source ("Web form", "Trade show", "Cold call", "LinkedIn ads") to a kind.
pub fn source_kind(source: &str) -> SourceKind {
    let s = source.to_lowercase();
    let any = |keys: &[&str]| keys.iter().any(|k| s.contains(k));
    if any(&[
        "referr",
        "recommend",
        "word of mouth",
        "empfehlung",
        "recomenda",
        "parrainage",
    ]) {
        SourceKind::Referral
    } else if any(&["partner", "reseller", "channel", "affiliate", "integrator"]) {
        SourceKind::Partner
    } else if any(&[
        "ads",
        "adwords",
        "ppc",
        "paid",
        "sponsored",
        "cpc",
        "display",
        "retarget",
    ]) {
        SourceKind::Paid
    } else if any(&[
        "event",
        "conference",
        "webinar",
        "trade show",
        "tradeshow",
        "meetup",
        "summit",
        "expo",
        "fair",
        "messe",
        "salon",
        "booth",
    ]) {
        SourceKind::Event
    } else if any(&[
        "outbound",
        "cold",
        "prospect",
        "list",
        "sdr",
        "bdr",
        "scraped",
        "kaltakquise",
    ]) {
        SourceKind::Outbound
    } else if any(&[
        "inbound",
        "website",
        "web",
        "form",
        "organic",
        "seo",
        "demo request",
        "contact",
        "chat",
        "trial",
        "signup",
        "sign-up",
        "download",
        "newsletter",
        "blog",
    ]) {
        SourceKind::Inbound
    } else {
        SourceKind::Other
    }
}
