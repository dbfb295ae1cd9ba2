//! Lead scoring measured on a synthetic but realistic population.
//!
//! 3,000 leads with titles in several languages, companies, e-mail addresses, sources, notes
//! and engagement are generated from a seeded RNG. A HIDDEN rule decides who wins: seniority,
//! replies, the product area the notes talk about, the source, plus noise. The scorer never
//! sees the rule, only the leads: it stores the training leads' outcomes in a real
//! `vector::Embedded` store, finds each lead's nearest won and lost leads, trains, and is
//! judged on the 900 held-out leads (ROC AUC ≥ 0.75, tier A converting ≥ 3× tier D, both
//! tiers holding ≥ 5 % of the leads).
//!
//! The lexical embedder always runs. MiniLM runs too when the model is in
//! `TEST_EMBED_MODEL_DIR` or `$HOME/.cache/aida/models/all-MiniLM-L6-v2`; when it is not,
//! the test says so loudly (it never downloads the model itself).

use std::path::PathBuf;
use std::time::Instant;

use aida_ai::embed::{Embedder, Lexical, MiniLm};
use aida_ai::scoring::{
    Engagement, Features, LeadProfile, LeadScoreModel, Outcome, Tier, TrainConfig,
    outcomes_namespace, record_outcomes, roc_auc, similar_leads,
};
use aida_ai::synthetic::{NOTE_OPENERS, SOURCES, normal, pick, sigmoid, weighted};
use aida_ai::vector::Embedded;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const LEADS: usize = 3_000;
const TRAIN: usize = 2_100;
const NEIGHBOURS: usize = 10;

struct Lead {
    profile: LeadProfile,
    engagement: Engagement,
    won: bool,
    /// The hidden rule's log-odds, for the oracle AUC (the best any scorer could do).
    hidden_logit: f64,
}

const TITLES: [&[&str]; 5] = [
    // Individual contributors.
    &[
        "Software Engineer",
        "Data Analyst",
        "Account Executive",
        "Marketing Specialist",
        "Assistant to the CEO",
        "Ingénieur systèmes",
        "Softwareentwickler",
        "Analista de datos",
        "Consultant",
        "Sales Development Representative",
    ],
    // Managers.
    &[
        "Sales Manager",
        "Product Manager",
        "Gerente de operaciones",
        "Responsable achats",
        "Team Lead Analytics",
        "Marketing Manager",
        "IT-Manager",
    ],
    // Directors.
    &[
        "Director of Engineering",
        "Directrice marketing",
        "Einkaufsleiter",
        "IT Director",
        "Jefe de compras",
        "Sales Director",
        "Directeur financier",
    ],
    // VPs.
    &[
        "VP Sales",
        "Vice President of Operations",
        "Head of Data",
        "SVP Marketing",
        "Vicepresidente comercial",
        "Head of Revenue Operations",
    ],
    // C-level.
    &[
        "CEO",
        "Chief Technology Officer",
        "Co-Founder",
        "Geschäftsführerin",
        "Directeur Général",
        "Managing Director",
        "Founder & CEO",
        "CFO",
    ],
];

const COMPANY_STEMS: &[&str] = &[
    "Acme",
    "Nordwind",
    "Bluepeak",
    "Solara",
    "Kestrel",
    "Vantage",
    "Orbis",
    "Lumen",
    "Haverford",
    "Quanta",
    "Riverstone",
    "Altamira",
    "Brightline",
    "Cobalt",
    "Meridian",
    "Tessera",
];
const COMPANY_SUFFIXES: &[&str] = &["GmbH", "SAS", "Ltd", "Inc.", "S.L.", "Group", "Labs", "AG"];
const FREE_DOMAINS: &[&str] = &[
    "gmail.com",
    "yahoo.fr",
    "outlook.com",
    "gmx.de",
    "hotmail.es",
];

/// Notes by product area. Area 0 (data and analytics) is what this tenant sells best; area 2
/// is people with no project. Several wordings per area, so only a model of meaning, or
/// shared vocabulary, connects them.
const NOTES: [&[&str]; 3] = [
    &[
        "Migrating our data warehouse to the cloud and needs analytics on the sales pipeline",
        "Looking for real-time dashboards on top of Snowflake for the revenue team",
        "Our BI team wants to consolidate reporting from several databases",
        "Needs ETL and analytics for 40 TB of event data, budget approved",
        "Asked how we integrate with their data warehouse for forecasting reports",
        "Wants one place for pipeline analytics instead of exporting to Excel for BI",
    ],
    &[
        "Evaluating a CRM for a 20-person sales team",
        "Wants to automate follow-up emails after demos",
        "Asked about calendar and contact sync with Outlook",
        "Replacing spreadsheets for tracking deals",
        "Comparing us with two other CRMs for the customer success team",
        "Interested in mobile access for field sales reps",
    ],
    &[
        "Just browsing, no budget this year",
        "Student writing a thesis on CRM tools",
        "Only wants a price list for a comparison",
        "Looking for a job in sales, not a customer",
        "Downloaded the e-book, no project in sight",
        "Freelancer asking for a free plan",
    ],
];

fn population(seed: u64) -> Vec<Lead> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..LEADS)
        .map(|i| {
            let rank = weighted(&mut rng, &[0.35, 0.25, 0.20, 0.12, 0.08]);
            let title = if rng.random_bool(0.03) {
                String::new()
            } else {
                (*pick(&mut rng, TITLES[rank])).to_owned()
            };
            let company = if rng.random_bool(0.9) {
                format!(
                    "{} {}",
                    pick(&mut rng, COMPANY_STEMS),
                    pick(&mut rng, COMPANY_SUFFIXES)
                )
            } else {
                String::new()
            };
            let person = format!("lead{i}");
            let email = match weighted(&mut rng, &[0.65, 0.30, 0.05]) {
                0 if !company.is_empty() => format!(
                    "{person}@{}.com",
                    company
                        .split(' ')
                        .next()
                        .unwrap_or("company")
                        .to_lowercase()
                ),
                0 | 1 => format!("{person}@{}", pick(&mut rng, FREE_DOMAINS)),
                _ => String::new(),
            };
            let source_shares: Vec<f64> = SOURCES.iter().map(|s| s.2).collect();
            let (source, source_effect, _) = SOURCES[weighted(&mut rng, &source_shares)];
            let area = weighted(&mut rng, &[0.25, 0.50, 0.25]);
            let notes = if rng.random_bool(0.08) {
                String::new()
            } else {
                format!(
                    "{}{}",
                    pick(&mut rng, NOTE_OPENERS),
                    pick(&mut rng, NOTES[area])
                )
            };

            // Engagement follows a latent interest that the product area nudges.
            let interest = normal(&mut rng) + [0.5, 0.0, -0.5][area];
            let messages_sent = rng.random_range(1..=8u32);
            let mut e = Engagement {
                messages_sent,
                ..Engagement::default()
            };
            for _ in 0..messages_sent {
                if rng.random_bool(sigmoid(interest + 0.2)) {
                    e.opens += 1;
                    if rng.random_bool(sigmoid(interest - 1.0)) {
                        e.clicks += 1;
                    }
                }
                if rng.random_bool(sigmoid(interest - 2.0)) {
                    e.replies += 1;
                }
            }
            if e.replies > 0 && rng.random_bool(0.35) {
                e.meetings = 1;
            }

            // The hidden rule.
            let hidden_logit = -1.7
                + 0.45 * rank as f64
                + 1.0 * f64::from(e.replies).ln_1p()
                + [1.4, 0.0, -1.6][area]
                + source_effect
                + 0.5 * normal(&mut rng);
            let won = rng.random_bool(sigmoid(hidden_logit));

            Lead {
                profile: LeadProfile {
                    id: format!("lead-{i:05}"),
                    title,
                    company,
                    email,
                    source: source.to_owned(),
                    phone_present: rng.random_bool(0.6),
                    fields_filled: rng.random_range(0..=8),
                    fields_total: 8,
                    notes,
                },
                engagement: e,
                won,
                hidden_logit,
            }
        })
        .collect()
}

fn outcome(won: bool) -> Outcome {
    if won { Outcome::Won } else { Outcome::Lost }
}

/// Runs the whole pipeline with one embedder and checks the held-out quality.
async fn measure(embedder: &dyn Embedder) {
    let started = Instant::now();
    let leads = population(20_240_611);
    let (train, held_out) = leads.split_at(TRAIN);
    let won_share = leads.iter().filter(|l| l.won).count() as f64 / LEADS as f64;
    println!(
        "[{}] {LEADS} leads, {:.1} % won; training on {}, judging on {}",
        embedder.model_version(),
        won_share * 100.0,
        train.len(),
        held_out.len()
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let store = Embedded::open(dir.path()).expect("open store");
    let ns = outcomes_namespace("tenant-scoring-test");
    let labelled: Vec<(&LeadProfile, Outcome)> =
        train.iter().map(|l| (&l.profile, outcome(l.won))).collect();
    let stored = record_outcomes(embedder, &store, &ns, &labelled)
        .await
        .expect("record outcomes");
    assert!(stored >= TRAIN * 9 / 10, "only {stored} leads stored");

    let profiles: Vec<&LeadProfile> = leads.iter().map(|l| &l.profile).collect();
    let similarities = similar_leads(embedder, &store, &ns, &profiles, NEIGHBOURS)
        .await
        .expect("similar leads");
    // A labelled lead never finds itself.
    for (lead, sim) in train.iter().zip(&similarities) {
        assert!(
            sim.to_won
                .iter()
                .chain(&sim.to_lost)
                .all(|(id, _)| *id != lead.profile.id)
        );
    }
    let features: Vec<Features> = leads
        .iter()
        .zip(&similarities)
        .map(|(l, s)| Features::extract(&l.profile, &l.engagement, s))
        .collect();

    let examples: Vec<(Features, Outcome)> = train
        .iter()
        .zip(&features)
        .map(|(l, f)| (*f, outcome(l.won)))
        .collect();
    let model = LeadScoreModel::train(&examples, &TrainConfig::default());
    assert_eq!(model.version(), format!("lead-score-lr-v1+n={TRAIN}"));

    let scores: Vec<_> = held_out
        .iter()
        .zip(&features[TRAIN..])
        .zip(&similarities[TRAIN..])
        .map(|((_, f), s)| model.score_features(f, s.to_won.clone(), chrono::Utc::now()))
        .collect();
    let won: Vec<bool> = held_out.iter().map(|l| l.won).collect();
    let probabilities: Vec<f64> = scores.iter().map(|s| s.probability).collect();
    let auc = roc_auc(&probabilities, &won).expect("both classes held out");
    let oracle: Vec<f64> = held_out.iter().map(|l| l.hidden_logit).collect();
    let oracle_auc = roc_auc(&oracle, &won).expect("both classes");
    let prior = LeadScoreModel::prior();
    let prior_scores: Vec<f64> = features[TRAIN..]
        .iter()
        .map(|f| prior.probability(f))
        .collect();
    let prior_auc = roc_auc(&prior_scores, &won).expect("both classes");
    println!(
        "[{}] held-out ROC AUC {auc:.3} (prior {prior_auc:.3}, hidden rule itself {oracle_auc:.3})",
        embedder.model_version()
    );

    let tiers = model.tiers();
    println!(
        "  tier cut-offs: A ≥ {}, B ≥ {}, C ≥ {}",
        tiers.a, tiers.b, tiers.c
    );
    let mut conversion = Vec::new();
    for tier in [Tier::A, Tier::B, Tier::C, Tier::D] {
        let in_tier: Vec<bool> = scores
            .iter()
            .zip(&won)
            .filter(|(s, _)| s.tier == tier)
            .map(|(_, w)| *w)
            .collect();
        let rate = if in_tier.is_empty() {
            0.0
        } else {
            in_tier.iter().filter(|w| **w).count() as f64 / in_tier.len() as f64
        };
        println!(
            "  tier {tier:?}: {:>4} leads ({:>4.1} %), {:>5.1} % won",
            in_tier.len(),
            100.0 * in_tier.len() as f64 / held_out.len() as f64,
            rate * 100.0
        );
        conversion.push((in_tier.len(), rate));
    }
    let mut weights: Vec<(&str, f64)> = aida_ai::scoring::FEATURE_NAMES
        .iter()
        .copied()
        .zip(model.weights().iter().copied())
        .collect();
    weights.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    println!("  largest weights (per standard deviation):");
    for (name, w) in weights.iter().take(8) {
        println!("    {name:<22} {w:+.3}");
    }
    let best = scores
        .iter()
        .max_by_key(|s| s.score)
        .expect("held-out leads");
    println!(
        "  best held-out lead: score {} tier {:?}",
        best.score, best.tier
    );
    for f in &best.factors {
        println!(
            "    {:<22} value {:>6.3} → {:+.3}",
            f.feature, f.value, f.contribution
        );
    }
    println!("  took {:.1} s", started.elapsed().as_secs_f64());

    assert!(auc >= 0.75, "held-out ROC AUC {auc:.3} < 0.75");
    let (a, d) = (conversion[0], conversion[3]);
    let min_size = held_out.len() / 20;
    assert!(a.0 >= min_size, "tier A holds {} leads, under 5 %", a.0);
    assert!(d.0 >= min_size, "tier D holds {} leads, under 5 %", d.0);
    assert!(
        a.1 >= 3.0 * d.1,
        "tier A converts {:.1} %, not 3× tier D's {:.1} %",
        a.1 * 100.0,
        d.1 * 100.0
    );
    // Every score explains itself exactly.
    for s in &scores {
        let sum = s.intercept + s.other + s.factors.iter().map(|f| f.contribution).sum::<f64>();
        assert!((sum - s.logit).abs() < 1e-9);
    }
}

#[tokio::test]
async fn held_out_quality_with_the_lexical_embedder() {
    measure(&Lexical::new()).await;
}

fn minilm_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TEST_EMBED_MODEL_DIR") {
        return Some(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")?;
    let dir = PathBuf::from(home).join(".cache/aida/models/all-MiniLM-L6-v2");
    dir.exists().then_some(dir)
}

#[tokio::test]
async fn held_out_quality_with_minilm_when_installed() {
    let Some(dir) = minilm_dir() else {
        // Not silent: the lexical run above always measures; this says MiniLM did not.
        eprintln!(
            "WARNING: MiniLM lead-scoring run NOT performed: set TEST_EMBED_MODEL_DIR or \
             install the model in $HOME/.cache/aida/models/all-MiniLM-L6-v2 (aida models fetch)"
        );
        return;
    };
    // The model directory exists, so it must load: a broken install fails here.
    let model = MiniLm::load(&dir).unwrap_or_else(|e| panic!("MiniLM in {}: {e}", dir.display()));
    measure(&model).await;
}
