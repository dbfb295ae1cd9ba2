//! Is this the same person? Deterministic signals (names with nicknames and typos, phone
//! digits, the e-mail's local part across domains, the company) combined with the
//! embedding similarity of the two profiles, explained in words.

use crate::domain::Lead;

/// First names and their usual short forms, as (canonical, nickname).
const NICKNAMES: &[(&str, &str)] = &[
    ("robert", "bob"),
    ("robert", "rob"),
    ("robert", "bobby"),
    ("william", "bill"),
    ("william", "will"),
    ("william", "billy"),
    ("elizabeth", "liz"),
    ("elizabeth", "beth"),
    ("elizabeth", "eliza"),
    ("elizabeth", "betty"),
    ("katherine", "kate"),
    ("katherine", "katie"),
    ("katherine", "kathy"),
    ("catherine", "cathy"),
    ("catherine", "kate"),
    ("michael", "mike"),
    ("michael", "mick"),
    ("james", "jim"),
    ("james", "jimmy"),
    ("jennifer", "jen"),
    ("jennifer", "jenny"),
    ("richard", "rick"),
    ("richard", "dick"),
    ("richard", "rich"),
    ("thomas", "tom"),
    ("thomas", "tommy"),
    ("joseph", "joe"),
    ("charles", "charlie"),
    ("charles", "chuck"),
    ("margaret", "maggie"),
    ("margaret", "peggy"),
    ("daniel", "dan"),
    ("daniel", "danny"),
    ("matthew", "matt"),
    ("anthony", "tony"),
    ("christopher", "chris"),
    ("christina", "chris"),
    ("alexander", "alex"),
    ("alexandra", "alex"),
    ("samuel", "sam"),
    ("samantha", "sam"),
    ("benjamin", "ben"),
    ("edward", "ed"),
    ("edward", "ted"),
    ("steven", "steve"),
    ("stephen", "steve"),
    ("patricia", "pat"),
    ("patricia", "patty"),
    ("susan", "sue"),
    ("deborah", "deb"),
    ("rebecca", "becky"),
    ("nicholas", "nick"),
    ("andrew", "andy"),
    ("andrew", "drew"),
    ("jonathan", "jon"),
    ("john", "jack"),
    ("john", "johnny"),
    ("david", "dave"),
    ("gregory", "greg"),
    ("timothy", "tim"),
    ("victoria", "vicky"),
    ("jessica", "jess"),
    ("peter", "pete"),
    ("frederick", "fred"),
    ("lawrence", "larry"),
    ("kenneth", "ken"),
    ("ronald", "ron"),
    ("donald", "don"),
    ("raymond", "ray"),
    ("abigail", "abby"),
    ("nathaniel", "nate"),
    ("zachary", "zach"),
];

/// Local parts that name a role, not a person: equal ones prove nothing.
const ROLE_MAILBOXES: &[&str] = &[
    "info", "sales", "contact", "hello", "office", "admin", "support", "team", "mail", "noreply",
];

/// Lower-case letters and digits only: "O'Brien-Smith" → "obriensmith".
fn fold(text: &str) -> String {
    text.chars()
        .flat_map(char::to_lowercase)
        .filter(|c| c.is_alphanumeric())
        .collect()
}

/// A company name without case, punctuation and legal form ("Acme Corp." → "acme").
pub fn company_key(company: &str) -> String {
    const FORMS: &[&str] = &[
        "inc",
        "corp",
        "corporation",
        "ltd",
        "limited",
        "llc",
        "gmbh",
        "ag",
        "sa",
        "plc",
        "co",
        "company",
        "group",
        "bv",
        "srl",
        "oy",
        "ab",
    ];
    company
        .split(|c: char| !c.is_alphanumeric())
        .map(|word| word.to_lowercase())
        .filter(|word| !word.is_empty() && !FORMS.contains(&word.as_str()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Similarity of two first names in [0, 1]: 1 for the same name or a known nickname, 0.9
/// for an initial ("J." and "John") or two swapped letters, else Jaro-Winkler, halved below
/// 0.88 so that different names sharing letters (John, Jane, Joan) do not look alike.
pub fn first_name_similarity(a: &str, b: &str) -> f64 {
    let (a, b) = (fold(a), fold(b));
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    if a == b || same_nickname(&a, &b) {
        return 1.0;
    }
    if (a.len() == 1 && b.starts_with(&a)) || (b.len() == 1 && a.starts_with(&b)) {
        return 0.9;
    }
    if swapped_letters(&a, &b) {
        return 0.9;
    }
    let jw = strsim::jaro_winkler(&a, &b);
    if jw >= 0.88 { jw } else { jw * 0.5 }
}

/// Two adjacent letters swapped ("Mia" and "Mai"): a typing slip Jaro-Winkler undervalues
/// in short names, unlike a different letter (John, Joan), which may be another person.
fn swapped_letters(a: &str, b: &str) -> bool {
    strsim::osa_distance(a, b) == 1 && strsim::levenshtein(a, b) == 2
}

fn same_nickname(a: &str, b: &str) -> bool {
    let canonical = |name: &str| -> Vec<&'static str> {
        let mut forms: Vec<&'static str> = NICKNAMES
            .iter()
            .filter(|(full, short)| *full == name || *short == name)
            .map(|(full, _)| *full)
            .collect();
        if forms.is_empty() {
            forms.extend(
                NICKNAMES
                    .iter()
                    .find(|(full, _)| *full == name)
                    .map(|(f, _)| *f),
            );
        }
        forms
    };
    let (ca, cb) = (canonical(a), canonical(b));
    ca.iter().any(|x| cb.contains(x))
}

/// Similarity of two family names in [0, 1] (Jaro-Winkler, halved below 0.8).
pub fn last_name_similarity(a: &str, b: &str) -> f64 {
    let (a, b) = (fold(a), fold(b));
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    if swapped_letters(&a, &b) {
        return 0.9;
    }
    let jw = strsim::jaro_winkler(&a, &b);
    if jw >= 0.8 { jw } else { jw * 0.5 }
}

/// The digits of a phone number, when there are enough to identify a line.
fn phone_digits(phone: &str) -> Option<String> {
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    (digits.len() >= 7).then_some(digits)
}

/// The e-mail's local part without dots, plus tags and case, when it names a person.
fn email_person(email: &str) -> Option<String> {
    let local = email.split('@').next()?;
    let local = local.split('+').next().unwrap_or(local);
    let folded = fold(local);
    (folded.len() >= 3 && !ROLE_MAILBOXES.contains(&folded.as_str())).then_some(folded)
}

/// The text whose embedding stands for the person: name, title and company.
pub fn person_text(lead: &Lead) -> String {
    let f = &lead.fields;
    format!(
        "{} {}, {} at {}",
        f.first_name, f.last_name, f.title, f.company
    )
}

/// How likely `a` and `b` are the same person, in [0, 1], with the reasons.
///
/// The name carries most of the weight (0.75 for the same full name); agreeing phone
/// digits, e-mail local parts or companies add evidence, a different company takes some
/// away, and the profile embedding's cosine nudges the score either way.
pub fn score(a: &Lead, b: &Lead, embedding_cosine: Option<f32>) -> (f32, Vec<String>) {
    let mut reasons = Vec::new();
    let first = first_name_similarity(&a.fields.first_name, &b.fields.first_name);
    let last = last_name_similarity(&a.fields.last_name, &b.fields.last_name);
    let name = 0.5 * first + 0.5 * last;
    let full_a = format!("{} {}", a.fields.first_name, a.fields.last_name);
    let full_b = format!("{} {}", b.fields.first_name, b.fields.last_name);
    if name >= 0.999 && fold(&full_a) == fold(&full_b) {
        reasons.push("same name".to_owned());
    } else if name >= 0.85 {
        reasons.push(format!(
            "similar name ({} ~ {}, {:.2})",
            full_a.trim(),
            full_b.trim(),
            name
        ));
    }
    let mut total = 0.75 * name;

    if let (Some(x), Some(y)) = (phone_digits(&a.fields.phone), phone_digits(&b.fields.phone))
        && x == y
    {
        total += 0.25;
        reasons.push("same phone number".to_owned());
    }
    if let (Some(x), Some(y)) = (email_person(&a.fields.email), email_person(&b.fields.email))
        && x == y
    {
        total += 0.25;
        let domains_differ = a.fields.email.split('@').nth(1) != b.fields.email.split('@').nth(1);
        // Reasons name no contact data: a caller who may not read addresses reads these.
        reasons.push(if domains_differ {
            "same e-mail local part at another domain".to_owned()
        } else {
            "same e-mail local part".to_owned()
        });
    }
    let (ca, cb) = (
        company_key(&a.fields.company),
        company_key(&b.fields.company),
    );
    if !ca.is_empty() && !cb.is_empty() {
        if ca == cb {
            total += 0.15;
            reasons.push("same company".to_owned());
        } else if strsim::jaro_winkler(&ca, &cb) >= 0.9 {
            total += 0.1;
            reasons.push(format!("similar company ({ca} ~ {cb})"));
        } else {
            total -= 0.15;
        }
    }
    if let Some(cosine) = embedding_cosine {
        total += 0.1 * (f64::from(cosine) - 0.5);
        if cosine >= 0.8 {
            reasons.push(format!("similar profile (embedding {cosine:.2})"));
        }
    }
    (total.clamp(0.0, 1.0) as f32, reasons)
}

/// The highest [`score`] any embedding could give: candidates below the threshold by more
/// than this are dropped before embedding.
pub const MAX_EMBEDDING_BONUS: f32 = 0.05;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{LeadFields, Source, Status};

    fn lead(first: &str, last: &str, email: &str, company: &str, phone: &str) -> Lead {
        Lead {
            id: uuid::Uuid::now_v7(),
            tenant_id: "t".into(),
            fields: LeadFields {
                email: email.into(),
                first_name: first.into(),
                last_name: last.into(),
                company: company.into(),
                phone: phone.into(),
                ..LeadFields::default()
            },
            source: Source::Other,
            status: Status::New,
            rejection_reason: String::new(),
            version: 1,
            create_time: chrono::Utc::now(),
            update_time: chrono::Utc::now(),
            merged_into: None,
        }
    }

    #[test]
    fn nicknames_typos_and_other_domains_score_as_the_same_person() {
        let robert = lead("Robert", "Brown", "robert.brown@acme.com", "Acme Inc", "");
        let bob = lead("Bob", "Brown", "bob@acme.io", "ACME", "");
        let (score_bob, reasons) = score(&robert, &bob, None);
        assert!(score_bob >= 0.85, "{score_bob} {reasons:?}");

        let typo = lead("Robret", "Brwon", "rb@gmail.com", "Acme", "");
        assert!(score(&robert, &typo, None).0 >= 0.8);

        let elsewhere = lead("Robert", "Brown", "robert.brown@gmail.com", "", "");
        let (s, reasons) = score(&robert, &elsewhere, None);
        assert!(s >= 0.95, "{s}");
        assert!(reasons.iter().any(|r| r.contains("another domain")));
    }

    #[test]
    fn colleagues_and_namesakes_elsewhere_do_not() {
        let john = lead(
            "John",
            "Smith",
            "john.smith@acme.com",
            "Acme",
            "+1 555 0100 200",
        );
        let jane = lead("Jane", "Smith", "jane.smith@acme.com", "Acme", "");
        assert!(score(&john, &jane, None).0 < 0.8);
        let other = lead("John", "Smith", "js@globex.com", "Globex", "");
        assert!(score(&john, &other, None).0 < 0.8);
        let joan = lead("Joan", "Smith", "joan@acme.com", "Acme", "");
        assert!(score(&john, &joan, None).0 < 0.8);
        let mai = lead("Mai", "Smith", "", "", "+1 555 0100 200");
        let mia = lead("Mia", "Smith", "mia@acme.com", "Acme", "+1 555 0100 200");
        assert!(
            score(&mia, &mai, None).0 >= 0.8,
            "swapped letters and the same phone"
        );
        let colleague = lead("Maria", "Garcia", "maria@acme.com", "Acme", "");
        assert!(score(&john, &colleague, None).0 < 0.5);
    }
}
