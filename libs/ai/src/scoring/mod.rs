//! Explainable lead scoring that learns from won and lost outcomes.
//!
//! A lead is described by its [`LeadProfile`] (who), its [`Engagement`] (what it did) and its
//! [`Similarity`] to leads whose outcome is known (nearest won and lost leads by embedding,
//! from [`similar_leads`] over a store filled by [`record_outcomes`]). [`Features::extract`]
//! turns these into [`FEATURE_NAMES`], a small vector of named numbers.
//!
//! [`LeadScoreModel`] is a logistic regression over the standardised features:
//! - [`LeadScoreModel::train`] fits it by Newton's method (IRLS) with an L2 penalty on the
//!   weights (not the intercept) once there are enough outcomes ([`TrainConfig`]: at least 30
//!   labelled leads and 5 of each class by default). Before that it returns
//!   [`LeadScoreModel::prior`], a hand-set weight vector, and `model_version` says which
//!   (`lead-score-prior-v1` or `lead-score-lr-v1+n=412`).
//! - The fitted probability is calibrated in the sense of maximum likelihood with a free
//!   intercept: on the training leads the predicted probabilities sum to the number won.
//!   The score is that probability × 100, rounded.
//! - Tiers come from the training leads' score distribution, so they mean the same share of
//!   leads whatever the tenant's win rate: A = top 15 %, B = next 25 %, C = next 35 %,
//!   D = bottom 25 %. The prior uses fixed cut-offs (A ≥ 50, B ≥ 30, C ≥ 15).
//! - Every [`Score`] explains itself: the five [`Factor`]s with the largest contributions
//!   (weight × standardised value, in logit units), the sum of the others in
//!   [`Score::other`], and the intercept, which together add up to [`Score::logit`].
//!
//! The model is plain data (serde), validated when deserialised, so a service can persist it.

mod signals;

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::embed::{EmbedError, Embedder};
use crate::vector::{Filter, Item, Namespace, VectorError, VectorStore};

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/// Who the lead is. Empty strings mean "not known".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeadProfile {
    /// Stable id of the lead; used as the id in the outcome store.
    pub id: String,
    /// Job title, in any language ("VP Sales", "Directrice marketing", "Einkaufsleiter").
    pub title: String,
    pub company: String,
    pub email: String,
    /// Where the lead came from ("referral", "website", "webinar", "cold email", …).
    pub source: String,
    pub phone_present: bool,
    /// How many of the tenant's other (custom) lead fields are filled …
    pub fields_filled: u32,
    /// … out of how many.
    pub fields_total: u32,
    /// Free text: notes, the inquiry, the last conversation.
    pub notes: String,
}

/// What the lead did with our outreach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Engagement {
    pub opens: u32,
    pub clicks: u32,
    pub replies: u32,
    pub messages_sent: u32,
    pub meetings: u32,
}

/// Nearest leads with a known outcome, best first: `(lead id, cosine similarity)`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Similarity {
    pub to_won: Vec<(String, f32)>,
    pub to_lost: Vec<(String, f32)>,
}

/// The outcome of a lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Won,
    Lost,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Won => "won",
            Outcome::Lost => "lost",
        }
    }
}

pub use signals::*;

// ---------------------------------------------------------------------------------------------
// Features
// ---------------------------------------------------------------------------------------------

/// Number of features.
pub const N_FEATURES: usize = 22;

/// Names of the features, in vector order.
///
/// - `title_seniority`: [`Seniority::level`], 0–1.
/// - `company_present`, `phone_present`, `business_email`, `free_email`: 0 or 1.
/// - `source_*`: 1 for the lead's [`SourceKind`] (none for `Other`).
/// - `completeness`: share of title, company, e-mail, phone, notes and the custom fields filled.
/// - `opens`, `clicks`, `replies`, `meetings`, `messages_sent`: `ln(1 + count)`.
/// - `reply_rate`: replies / messages sent (0 when nothing was sent), at most 1.
/// - `similar_to_won`, `similar_to_lost`: mean cosine similarity of the k nearest won / lost
///   leads (0 without any).
/// - `max_similar_won`: similarity of the nearest won lead.
/// - `neighbours_won_share`: share of won leads among the k nearest leads of either outcome
///   (0 without any).
pub const FEATURE_NAMES: [&str; N_FEATURES] = [
    "title_seniority",
    "company_present",
    "phone_present",
    "business_email",
    "free_email",
    "source_referral",
    "source_inbound",
    "source_event",
    "source_outbound",
    "source_partner",
    "source_paid",
    "completeness",
    "opens",
    "clicks",
    "replies",
    "meetings",
    "messages_sent",
    "reply_rate",
    "similar_to_won",
    "similar_to_lost",
    "max_similar_won",
    "neighbours_won_share",
];

/// Index of every feature in [`FEATURE_NAMES`].
mod idx {
    pub const SENIORITY: usize = 0;
    pub const COMPANY: usize = 1;
    pub const PHONE: usize = 2;
    pub const BUSINESS_EMAIL: usize = 3;
    pub const FREE_EMAIL: usize = 4;
    pub const SOURCE_REFERRAL: usize = 5;
    pub const SOURCE_INBOUND: usize = 6;
    pub const SOURCE_EVENT: usize = 7;
    pub const SOURCE_OUTBOUND: usize = 8;
    pub const SOURCE_PARTNER: usize = 9;
    pub const SOURCE_PAID: usize = 10;
    pub const COMPLETENESS: usize = 11;
    pub const OPENS: usize = 12;
    pub const CLICKS: usize = 13;
    pub const REPLIES: usize = 14;
    pub const MEETINGS: usize = 15;
    pub const MESSAGES_SENT: usize = 16;
    pub const REPLY_RATE: usize = 17;
    pub const SIMILAR_TO_WON: usize = 18;
    pub const SIMILAR_TO_LOST: usize = 19;
    pub const MAX_SIMILAR_WON: usize = 20;
    pub const NEIGHBOURS_WON_SHARE: usize = 21;
}

/// The feature vector of one lead, in [`FEATURE_NAMES`] order. Always finite.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Features {
    values: [f64; N_FEATURES],
}

impl Features {
    /// Computes the features of a lead.
    pub fn extract(
        profile: &LeadProfile,
        engagement: &Engagement,
        similarity: &Similarity,
    ) -> Self {
        let mut v = [0.0; N_FEATURES];
        let present = |s: &str| !s.trim().is_empty();
        let flag = |b: bool| if b { 1.0 } else { 0.0 };

        v[idx::SENIORITY] = seniority(&profile.title).level();
        v[idx::COMPANY] = flag(present(&profile.company));
        v[idx::PHONE] = flag(profile.phone_present);
        match email_kind(&profile.email) {
            EmailKind::Business => v[idx::BUSINESS_EMAIL] = 1.0,
            EmailKind::Free => v[idx::FREE_EMAIL] = 1.0,
            EmailKind::None => {}
        }
        match source_kind(&profile.source) {
            SourceKind::Referral => v[idx::SOURCE_REFERRAL] = 1.0,
            SourceKind::Inbound => v[idx::SOURCE_INBOUND] = 1.0,
            SourceKind::Event => v[idx::SOURCE_EVENT] = 1.0,
            SourceKind::Outbound => v[idx::SOURCE_OUTBOUND] = 1.0,
            SourceKind::Partner => v[idx::SOURCE_PARTNER] = 1.0,
            SourceKind::Paid => v[idx::SOURCE_PAID] = 1.0,
            SourceKind::Other => {}
        }
        let core = [
            present(&profile.title),
            present(&profile.company),
            email_kind(&profile.email) != EmailKind::None,
            profile.phone_present,
            present(&profile.notes),
        ];
        let filled = core.iter().filter(|b| **b).count() as f64
            + f64::from(profile.fields_filled.min(profile.fields_total));
        v[idx::COMPLETENESS] = filled / (core.len() as f64 + f64::from(profile.fields_total));

        let log = |n: u32| f64::from(n).ln_1p();
        v[idx::OPENS] = log(engagement.opens);
        v[idx::CLICKS] = log(engagement.clicks);
        v[idx::REPLIES] = log(engagement.replies);
        v[idx::MEETINGS] = log(engagement.meetings);
        v[idx::MESSAGES_SENT] = log(engagement.messages_sent);
        v[idx::REPLY_RATE] = if engagement.messages_sent == 0 {
            0.0
        } else {
            (f64::from(engagement.replies) / f64::from(engagement.messages_sent)).min(1.0)
        };

        let sims = |list: &[(String, f32)]| -> Vec<f64> {
            list.iter()
                .map(|(_, s)| f64::from(*s))
                .filter(|s| s.is_finite())
                .map(|s| s.clamp(-1.0, 1.0))
                .collect()
        };
        let won = sims(&similarity.to_won);
        let lost = sims(&similarity.to_lost);
        let mean = |xs: &[f64]| {
            if xs.is_empty() {
                0.0
            } else {
                xs.iter().sum::<f64>() / xs.len() as f64
            }
        };
        v[idx::SIMILAR_TO_WON] = mean(&won);
        v[idx::SIMILAR_TO_LOST] = mean(&lost);
        v[idx::MAX_SIMILAR_WON] = won.iter().copied().fold(0.0, f64::max);
        let k = won.len().max(lost.len());
        if k > 0 {
            let mut merged: Vec<(f64, bool)> = won
                .iter()
                .map(|s| (*s, true))
                .chain(lost.iter().map(|s| (*s, false)))
                .collect();
            merged.sort_by(|a, b| b.0.total_cmp(&a.0));
            let top = &merged[..k.min(merged.len())];
            v[idx::NEIGHBOURS_WON_SHARE] =
                top.iter().filter(|(_, w)| *w).count() as f64 / top.len() as f64;
        }
        Self::from_values(v)
    }

    /// Features from raw values; non-finite values become 0.
    pub fn from_values(mut values: [f64; N_FEATURES]) -> Self {
        for x in &mut values {
            if !x.is_finite() {
                *x = 0.0;
            }
        }
        Self { values }
    }

    /// The values, in [`FEATURE_NAMES`] order.
    pub fn values(&self) -> &[f64; N_FEATURES] {
        &self.values
    }

    /// The value of a named feature.
    pub fn get(&self, name: &str) -> Option<f64> {
        FEATURE_NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| self.values[i])
    }
}

// ---------------------------------------------------------------------------------------------
// Similar won and lost leads
// ---------------------------------------------------------------------------------------------

/// Collection that holds leads with a known outcome, one per tenant.
pub const OUTCOMES_COLLECTION: &str = "lead-outcomes";

/// Where a tenant's labelled leads live.
pub fn outcomes_namespace(tenant: &str) -> Namespace {
    Namespace::new(tenant, OUTCOMES_COLLECTION)
}

/// Texts are embedded in batches of this many.
const EMBED_BATCH: usize = 64;

/// What is embedded for a lead: title, company and notes, one per line.
pub fn lead_text(profile: &LeadProfile) -> String {
    [&profile.title, &profile.company, &profile.notes]
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Why similar leads could not be stored or found.
#[derive(Debug, thiserror::Error)]
pub enum ScoringError {
    #[error("embedding lead text: {0}")]
    Embed(#[from] EmbedError),
    #[error("outcome store: {0}")]
    Vector(#[from] VectorError),
    #[error("the embedder returned {got} vectors for {expected} texts")]
    EmbedCount { expected: usize, got: usize },
}

fn embed_all(embedder: &dyn Embedder, texts: &[String]) -> Result<Vec<Vec<f32>>, ScoringError> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(EMBED_BATCH) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let vectors = embedder.embed(&refs)?;
        if vectors.len() != chunk.len() {
            return Err(ScoringError::EmbedCount {
                expected: chunk.len(),
                got: vectors.len(),
            });
        }
        out.extend(vectors);
    }
    Ok(out)
}

fn is_usable(v: &[f32]) -> bool {
    v.iter().all(|x| x.is_finite()) && v.iter().any(|x| *x != 0.0)
}

/// Stores leads whose outcome is known in `ns` (see [`outcomes_namespace`]), as their
/// [`lead_text`] embedded by `embedder`, with metadata `outcome` = "won"/"lost" and
/// `embedder` = the embedder's version (vectors of different embedders are never compared).
/// A lead stored again replaces its earlier entry. Leads with no text are skipped; returns
/// how many were stored.
///
/// Embedding runs inline on the calling thread; from an async service, call this from a
/// blocking-friendly task.
pub async fn record_outcomes(
    embedder: &dyn Embedder,
    store: &dyn VectorStore,
    ns: &Namespace,
    leads: &[(&LeadProfile, Outcome)],
) -> Result<usize, ScoringError> {
    let mut seen = HashSet::new();
    // Last occurrence of an id wins, as a later outcome replaces an earlier one.
    let unique: Vec<&(&LeadProfile, Outcome)> = leads
        .iter()
        .rev()
        .filter(|(p, _)| seen.insert(p.id.as_str()))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let texts: Vec<String> = unique.iter().map(|(p, _)| lead_text(p)).collect();
    let vectors = embed_all(embedder, &texts)?;
    let version = embedder.model_version().to_owned();
    let items: Vec<Item> = unique
        .iter()
        .zip(vectors)
        .zip(texts)
        .filter(|((_, v), _)| is_usable(v))
        .map(|(((profile, outcome), vector), text)| {
            Item::new(profile.id.clone(), vector)
                .document(text)
                .meta("outcome", outcome.as_str())
                .meta("embedder", version.as_str())
        })
        .collect();
    let stored = items.len();
    for chunk in items.chunks(256) {
        store.upsert(ns, chunk.to_vec()).await?;
    }
    Ok(stored)
}

/// For each lead, the `k` most similar won and the `k` most similar lost leads stored by
/// [`record_outcomes`] with the same embedder, leaving out the lead itself (so a labelled
/// lead's features do not see its own outcome). A lead with no text gets no neighbours.
///
/// Embedding runs inline, as in [`record_outcomes`].
pub async fn similar_leads(
    embedder: &dyn Embedder,
    store: &dyn VectorStore,
    ns: &Namespace,
    leads: &[&LeadProfile],
    k: usize,
) -> Result<Vec<Similarity>, ScoringError> {
    let texts: Vec<String> = leads.iter().map(|p| lead_text(p)).collect();
    let vectors = embed_all(embedder, &texts)?;
    let version = embedder.model_version();
    let won = Filter::all()
        .eq("outcome", Outcome::Won.as_str())
        .eq("embedder", version);
    let lost = Filter::all()
        .eq("outcome", Outcome::Lost.as_str())
        .eq("embedder", version);
    let mut out = Vec::with_capacity(leads.len());
    for (profile, vector) in leads.iter().zip(&vectors) {
        if k == 0 || !is_usable(vector) {
            out.push(Similarity::default());
            continue;
        }
        let nearest = |hits: Vec<crate::vector::Hit>| -> Vec<(String, f32)> {
            hits.into_iter()
                .filter(|h| h.id != profile.id)
                .take(k)
                .map(|h| (h.id, h.similarity))
                .collect()
        };
        let to_won = nearest(store.query(ns, vector, k + 1, &won).await?);
        let to_lost = nearest(store.query(ns, vector, k + 1, &lost).await?);
        out.push(Similarity { to_won, to_lost });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------------

/// Version label of the hand-set prior.
pub const PRIOR_VERSION: &str = "lead-score-prior-v1";
/// Version label of fitted models, followed by `+n=<labelled leads>`.
pub const LR_VERSION: &str = "lead-score-lr-v1";

/// Weights of the prior, on raw (unstandardised) features, in [`FEATURE_NAMES`] order.
///
/// Seniority, a business address, a warm source and engagement (above all replies and
/// meetings) raise the odds; a free-mail address and cold outbound lower them. Similarity is
/// rarely known before any outcome; when it is, nearness to won leads counts for and nearness
/// to lost leads against. With [`PRIOR_INTERCEPT`] a typical untouched lead scores 15–30 and
/// a senior lead who replied and met 60+.
pub const PRIOR_WEIGHTS: [f64; N_FEATURES] = [
    1.5,  // title_seniority
    0.3,  // company_present
    0.2,  // phone_present
    0.4,  // business_email
    -0.6, // free_email
    0.8,  // source_referral
    0.4,  // source_inbound
    0.2,  // source_event
    -0.4, // source_outbound
    0.5,  // source_partner
    0.0,  // source_paid
    0.5,  // completeness
    0.15, // opens
    0.3,  // clicks
    0.8,  // replies
    1.0,  // meetings
    -0.1, // messages_sent
    0.5,  // reply_rate
    1.0,  // similar_to_won
    -1.0, // similar_to_lost
    0.0,  // max_similar_won
    0.0,  // neighbours_won_share
];
/// Intercept of the prior (logit units).
pub const PRIOR_INTERCEPT: f64 = -2.5;

/// Score cut-offs of the prior's tiers: A ≥ 50, B ≥ 30, C ≥ 15, else D.
pub const PRIOR_TIERS: TierCutoffs = TierCutoffs {
    a: 50,
    b: 30,
    c: 15,
};

/// Share of training leads in tier A, B and C for fitted models (D gets the rest, 25 %).
pub const TIER_SHARES: [f64; 3] = [0.15, 0.25, 0.35];

/// Priority band of a lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Tier {
    A,
    B,
    C,
    D,
}

/// Lowest score of tiers A, B and C; below `c` is D. Always `a ≥ b ≥ c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierCutoffs {
    pub a: u8,
    pub b: u8,
    pub c: u8,
}

impl TierCutoffs {
    pub fn tier(&self, score: u8) -> Tier {
        if score >= self.a {
            Tier::A
        } else if score >= self.b {
            Tier::B
        } else if score >= self.c {
            Tier::C
        } else {
            Tier::D
        }
    }

    /// Cut-offs putting [`TIER_SHARES`] of `scores` in A, B and C (ties go to the higher tier).
    fn from_quantiles(scores: &[u8]) -> Self {
        let mut sorted = scores.to_vec();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let at = |share: f64| -> u8 {
            if sorted.is_empty() {
                return 0;
            }
            let rank = ((share * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            sorted[rank - 1]
        };
        let a = at(TIER_SHARES[0]).max(1);
        let b = at(TIER_SHARES[0] + TIER_SHARES[1]).min(a);
        let c = at(TIER_SHARES[0] + TIER_SHARES[1] + TIER_SHARES[2]).min(b);
        Self { a, b, c }
    }
}

/// When and how to fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Fewer labelled leads than this and the prior is used.
    pub min_labelled: usize,
    /// Fewer won, or fewer lost, leads than this and the prior is used.
    pub min_per_class: usize,
    /// L2 penalty λ on the standardised weights: the loss is the summed log-loss + λ/2·|w|².
    pub l2: f64,
    /// Newton iterations at most.
    pub max_iterations: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            min_labelled: 30,
            min_per_class: 5,
            l2: 1.0,
            max_iterations: 50,
        }
    }
}

/// A logistic regression over standardised [`Features`].
///
/// Deserialisation checks the feature names match [`FEATURE_NAMES`] and every number is
/// finite, so a persisted model from another feature set is refused rather than misread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ModelRepr", into = "ModelRepr")]
pub struct LeadScoreModel {
    version: String,
    mean: [f64; N_FEATURES],
    scale: [f64; N_FEATURES],
    weights: [f64; N_FEATURES],
    intercept: f64,
    tiers: TierCutoffs,
    labelled: usize,
    won: usize,
}

#[derive(Serialize, Deserialize)]
struct ModelRepr {
    version: String,
    features: Vec<String>,
    mean: Vec<f64>,
    scale: Vec<f64>,
    weights: Vec<f64>,
    intercept: f64,
    tiers: TierCutoffs,
    labelled: usize,
    won: usize,
}

impl From<LeadScoreModel> for ModelRepr {
    fn from(m: LeadScoreModel) -> Self {
        Self {
            version: m.version,
            features: FEATURE_NAMES.iter().map(|s| (*s).to_owned()).collect(),
            mean: m.mean.to_vec(),
            scale: m.scale.to_vec(),
            weights: m.weights.to_vec(),
            intercept: m.intercept,
            tiers: m.tiers,
            labelled: m.labelled,
            won: m.won,
        }
    }
}

impl TryFrom<ModelRepr> for LeadScoreModel {
    type Error = String;

    fn try_from(r: ModelRepr) -> Result<Self, Self::Error> {
        if r.features != FEATURE_NAMES {
            return Err(format!(
                "model features {:?} differ from this build's {:?}",
                r.features, FEATURE_NAMES
            ));
        }
        let array = |name: &str, v: Vec<f64>| -> Result<[f64; N_FEATURES], String> {
            let a: [f64; N_FEATURES] = v.try_into().map_err(|v: Vec<f64>| {
                format!("{name} has {} values, not {N_FEATURES}", v.len())
            })?;
            if a.iter().any(|x| !x.is_finite()) {
                return Err(format!("{name} has a non-finite value"));
            }
            Ok(a)
        };
        let scale = array("scale", r.scale)?;
        if scale.iter().any(|s| *s <= 0.0) {
            return Err("scale values must be positive".into());
        }
        if !r.intercept.is_finite() {
            return Err("intercept is not finite".into());
        }
        if !(r.tiers.a >= r.tiers.b && r.tiers.b >= r.tiers.c) {
            return Err(format!("tier cut-offs {:?} are not descending", r.tiers));
        }
        Ok(Self {
            version: r.version,
            mean: array("mean", r.mean)?,
            scale,
            weights: array("weights", r.weights)?,
            intercept: r.intercept,
            tiers: r.tiers,
            labelled: r.labelled,
            won: r.won,
        })
    }
}

/// One feature's part in a score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Factor {
    pub feature: String,
    /// The raw feature value.
    pub value: f64,
    /// Weight × standardised value, in logit units: positive raises the score.
    pub contribution: f64,
}

/// A lead's score with its explanation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Probability of winning × 100, rounded.
    pub score: u8,
    pub probability: f64,
    pub tier: Tier,
    /// Log-odds: `intercept + Σ factors.contribution + other`.
    pub logit: f64,
    pub intercept: f64,
    /// The five largest contributions by absolute value, largest first.
    pub factors: Vec<Factor>,
    /// Sum of the contributions not listed in `factors`.
    pub other: f64,
    /// Nearest won leads, best first.
    pub similar_won: Vec<(String, f32)>,
    pub model_version: String,
    pub scored_at: DateTime<Utc>,
}

/// How many factors a [`Score`] lists.
pub const TOP_FACTORS: usize = 5;

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

fn to_score(p: f64) -> u8 {
    (p * 100.0).round().clamp(0.0, 100.0) as u8
}

impl LeadScoreModel {
    /// The hand-set prior ([`PRIOR_WEIGHTS`], [`PRIOR_INTERCEPT`], [`PRIOR_TIERS`]), on raw
    /// features (mean 0, scale 1).
    pub fn prior() -> Self {
        Self::prior_with(0, 0)
    }

    fn prior_with(labelled: usize, won: usize) -> Self {
        Self {
            version: PRIOR_VERSION.to_owned(),
            mean: [0.0; N_FEATURES],
            scale: [1.0; N_FEATURES],
            weights: PRIOR_WEIGHTS,
            intercept: PRIOR_INTERCEPT,
            tiers: PRIOR_TIERS,
            labelled,
            won,
        }
    }

    /// Fits the model to labelled leads, or returns the prior when there are too few of them
    /// (see [`TrainConfig`]). Deterministic: same examples in the same order, same model.
    pub fn train(examples: &[(Features, Outcome)], config: &TrainConfig) -> Self {
        let n = examples.len();
        let won = examples.iter().filter(|(_, o)| *o == Outcome::Won).count();
        let lost = n - won;
        if n < config.min_labelled.max(2)
            || won < config.min_per_class.max(1)
            || lost < config.min_per_class.max(1)
        {
            return Self::prior_with(n, won);
        }

        // Standardisation.
        let mut mean = [0.0; N_FEATURES];
        for (f, _) in examples {
            for (m, x) in mean.iter_mut().zip(f.values()) {
                *m += x;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut scale = [0.0; N_FEATURES];
        for (f, _) in examples {
            for ((s, x), m) in scale.iter_mut().zip(f.values()).zip(&mean) {
                *s += (x - m) * (x - m);
            }
        }
        for s in &mut scale {
            let sd = (*s / n as f64).sqrt();
            *s = if sd > 1e-9 && sd.is_finite() { sd } else { 1.0 };
        }
        let rows: Vec<([f64; N_FEATURES], f64)> = examples
            .iter()
            .map(|(f, o)| {
                let mut z = [0.0; N_FEATURES];
                for (i, zi) in z.iter_mut().enumerate() {
                    *zi = (f.values()[i] - mean[i]) / scale[i];
                }
                (z, if *o == Outcome::Won { 1.0 } else { 0.0 })
            })
            .collect();

        let (weights, intercept) = fit_newton(&rows, config.l2.max(0.0), config.max_iterations);
        let mut model = Self {
            version: format!("{LR_VERSION}+n={n}"),
            mean,
            scale,
            weights,
            intercept,
            tiers: PRIOR_TIERS,
            labelled: n,
            won,
        };
        let scores: Vec<u8> = examples
            .iter()
            .map(|(f, _)| to_score(model.probability(f)))
            .collect();
        model.tiers = TierCutoffs::from_quantiles(&scores);
        model
    }

    /// `lead-score-prior-v1` or `lead-score-lr-v1+n=<labelled>`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether this is the hand-set prior rather than a fitted model.
    pub fn is_prior(&self) -> bool {
        self.version == PRIOR_VERSION
    }

    /// Weights on standardised features, in [`FEATURE_NAMES`] order.
    pub fn weights(&self) -> &[f64; N_FEATURES] {
        &self.weights
    }

    pub fn intercept(&self) -> f64 {
        self.intercept
    }

    /// Means subtracted before scaling.
    pub fn means(&self) -> &[f64; N_FEATURES] {
        &self.mean
    }

    /// Standard deviations divided by (1 for constant features and for the prior).
    pub fn scales(&self) -> &[f64; N_FEATURES] {
        &self.scale
    }

    pub fn tiers(&self) -> TierCutoffs {
        self.tiers
    }

    /// Labelled leads seen by [`LeadScoreModel::train`], and how many of them were won.
    pub fn labelled(&self) -> (usize, usize) {
        (self.labelled, self.won)
    }

    /// Every feature's contribution, in [`FEATURE_NAMES`] order.
    pub fn explain(&self, features: &Features) -> Vec<Factor> {
        FEATURE_NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let value = features.values()[i];
                Factor {
                    feature: (*name).to_owned(),
                    value,
                    contribution: self.weights[i] * (value - self.mean[i]) / self.scale[i],
                }
            })
            .collect()
    }

    /// Log-odds of winning.
    pub fn logit(&self, features: &Features) -> f64 {
        self.intercept
            + self
                .explain(features)
                .iter()
                .map(|f| f.contribution)
                .sum::<f64>()
    }

    /// Probability of winning.
    pub fn probability(&self, features: &Features) -> f64 {
        sigmoid(self.logit(features))
    }

    /// Scores a lead now.
    pub fn score(
        &self,
        profile: &LeadProfile,
        engagement: &Engagement,
        similarity: &Similarity,
    ) -> Score {
        self.score_features(
            &Features::extract(profile, engagement, similarity),
            similarity.to_won.clone(),
            Utc::now(),
        )
    }

    /// Scores already extracted features, stamped `scored_at`.
    pub fn score_features(
        &self,
        features: &Features,
        similar_won: Vec<(String, f32)>,
        scored_at: DateTime<Utc>,
    ) -> Score {
        let mut factors = self.explain(features);
        let logit = self.intercept + factors.iter().map(|f| f.contribution).sum::<f64>();
        // Stable sort: ties keep feature order, so explanations are deterministic.
        factors.sort_by(|a, b| b.contribution.abs().total_cmp(&a.contribution.abs()));
        let rest = factors.split_off(TOP_FACTORS.min(factors.len()));
        let other = rest.iter().map(|f| f.contribution).sum();
        let probability = sigmoid(logit);
        let score = to_score(probability);
        Score {
            score,
            probability,
            tier: self.tiers.tier(score),
            logit,
            intercept: self.intercept,
            factors,
            other,
            similar_won,
            model_version: self.version.clone(),
            scored_at,
        }
    }
}

const D1: usize = N_FEATURES + 1;

/// Penalised maximum likelihood by Newton's method with step halving. The intercept (last
/// coordinate) is not penalised. Returns (weights, intercept).
// Dense matrix code reads best with explicit indices.
#[allow(clippy::needless_range_loop)]
fn fit_newton(
    rows: &[([f64; N_FEATURES], f64)],
    l2: f64,
    max_iterations: usize,
) -> ([f64; N_FEATURES], f64) {
    let objective = |beta: &[f64; D1]| -> f64 {
        let mut loss = 0.0;
        for (x, y) in rows {
            let z = linear(beta, x);
            // log(1 + e^z) − y·z, computed without overflow.
            loss += z.max(0.0) + (-z.abs()).exp().ln_1p() - y * z;
        }
        loss + 0.5 * l2 * beta[..N_FEATURES].iter().map(|b| b * b).sum::<f64>()
    };
    // Start from the base rate.
    let rate = rows.iter().map(|(_, y)| y).sum::<f64>() / rows.len().max(1) as f64;
    let mut beta = [0.0; D1];
    beta[N_FEATURES] = (rate.clamp(1e-6, 1.0 - 1e-6) / (1.0 - rate.clamp(1e-6, 1.0 - 1e-6))).ln();
    let mut current = objective(&beta);
    for _ in 0..max_iterations {
        let mut grad = [0.0; D1];
        let mut hess = [[0.0; D1]; D1];
        for (x, y) in rows {
            let p = sigmoid(linear(&beta, x));
            let w = p * (1.0 - p);
            let xi = |i: usize| if i < N_FEATURES { x[i] } else { 1.0 };
            for i in 0..D1 {
                grad[i] += (p - y) * xi(i);
                for j in 0..=i {
                    hess[i][j] += w * xi(i) * xi(j);
                }
            }
        }
        for i in 0..D1 {
            for j in 0..i {
                hess[j][i] = hess[i][j];
            }
            let penalty = if i < N_FEATURES { l2 } else { 1e-9 };
            grad[i] += if i < N_FEATURES { l2 * beta[i] } else { 0.0 };
            hess[i][i] += penalty;
        }
        let Some(step) = solve_spd(hess, grad) else {
            break;
        };
        let mut t = 1.0;
        let mut improved = false;
        for _ in 0..30 {
            let mut next = beta;
            for i in 0..D1 {
                next[i] -= t * step[i];
            }
            let value = objective(&next);
            if value.is_finite() && value <= current {
                let gain = current - value;
                beta = next;
                current = value;
                improved = gain > 1e-10 * (1.0 + current.abs());
                break;
            }
            t *= 0.5;
        }
        if !improved {
            break;
        }
    }
    let mut weights = [0.0; N_FEATURES];
    weights.copy_from_slice(&beta[..N_FEATURES]);
    (weights, beta[N_FEATURES])
}

fn linear(beta: &[f64; D1], x: &[f64; N_FEATURES]) -> f64 {
    beta[N_FEATURES]
        + beta[..N_FEATURES]
            .iter()
            .zip(x)
            .map(|(b, x)| b * x)
            .sum::<f64>()
}

/// Solves `a·x = b` for symmetric positive definite `a` by Cholesky; `None` if it is not.
#[allow(clippy::needless_range_loop)]
fn solve_spd(mut a: [[f64; D1]; D1], b: [f64; D1]) -> Option<[f64; D1]> {
    // In-place Cholesky: the lower triangle becomes L with a = L·Lᵀ.
    for j in 0..D1 {
        let mut d = a[j][j];
        for k in 0..j {
            d -= a[j][k] * a[j][k];
        }
        if !(d > 0.0 && d.is_finite()) {
            return None;
        }
        let d = d.sqrt();
        a[j][j] = d;
        for i in j + 1..D1 {
            let mut s = a[i][j];
            for k in 0..j {
                s -= a[i][k] * a[j][k];
            }
            a[i][j] = s / d;
        }
    }
    let mut y = [0.0; D1];
    for i in 0..D1 {
        let mut s = b[i];
        for k in 0..i {
            s -= a[i][k] * y[k];
        }
        y[i] = s / a[i][i];
    }
    let mut x = [0.0; D1];
    for i in (0..D1).rev() {
        let mut s = y[i];
        for k in i + 1..D1 {
            s -= a[k][i] * x[k];
        }
        x[i] = s / a[i][i];
    }
    Some(x)
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

/// Area under the ROC curve: the chance a random won lead scores above a random lost one,
/// ties counting half. `None` without both classes, with unequal lengths or non-finite scores.
pub fn roc_auc(scores: &[f64], won: &[bool]) -> Option<f64> {
    if scores.len() != won.len() || scores.iter().any(|s| !s.is_finite()) {
        return None;
    }
    let positives = won.iter().filter(|w| **w).count();
    let negatives = won.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    // Mann–Whitney U with mid-ranks for ties.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let mid_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += mid_rank * order[i..=j].iter().filter(|k| won[**k]).count() as f64;
        i = j + 1;
    }
    let p = positives as f64;
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * negatives as f64))
}

#[cfg(test)]
mod tests;
