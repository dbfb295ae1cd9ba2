//! Labelled synthetic lead populations, for measuring lead scoring where no real outcomes
//! exist (the scoring tests and `aida-bench-ai`): the pieces both draw from. Each
//! population keeps its own hidden rule; what is shared is the source mix, the note
//! openers and the random draws.

use rand::Rng;
use rand::rngs::StdRng;

/// What a note may start with.
pub const NOTE_OPENERS: &[&str] = &["", "Call notes: ", "From the form: ", "Met briefly. "];

/// (source, hidden effect in log-odds, share of leads)
pub const SOURCES: &[(&str, f64, f64)] = &[
    ("Customer referral", 0.9, 0.10),
    ("Website demo request", 0.2, 0.25),
    ("Webinar", 0.3, 0.08),
    ("Trade show", 0.3, 0.07),
    ("Cold email", -0.6, 0.30),
    ("Reseller partner", 0.5, 0.05),
    ("LinkedIn Ads", -0.2, 0.15),
];

/// One of `items`, uniformly.
pub fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// An index drawn with probability proportional to its weight.
pub fn weighted(rng: &mut StdRng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

/// A standard normal draw (Box–Muller).
pub fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// The logistic function: log-odds to a probability.
pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}
