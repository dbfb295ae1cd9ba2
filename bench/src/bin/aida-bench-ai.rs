//! `aida-bench-ai`: how fast the AI side of AIDA-CRM embeds, searches and scores, next to
//! ceilings measured in the same run on the same machine.
//!
//! Three parts, one run:
//!
//! 1. Embeddings: all-MiniLM-L6-v2 (candle, CPU) over ~500 realistic lead profiles (title,
//!    company, notes), one sentence per call and in batches of 32, with the thread count
//!    candle uses; the lexical embedder over the same sentences for comparison.
//! 2. Vector search over N leads (100,000 by default) of 384-dim vectors: a base of real
//!    profiles is embedded with MiniLM, the rest are synthesised from them (a parent, a little
//!    of another profile, seeded Gaussian noise, re-normalised). SearchLeads-style top-10
//!    queries (the part-1 sentences, embedded beforehand) against `Embedded` and a local
//!    Chroma server (HNSW), with the exact single-threaded `brute_force_top_k` over the same
//!    vectors as the reference: latency percentiles, queries/s, recall@10 against the exact
//!    answer, and insert throughput.
//! 3. Scoring: a `LeadScoreModel` trained on a labelled synthetic population, then
//!    `Features::extract` + `score` over every lead without embedding, and with the nearest
//!    won/lost leads looked up in an `Embedded` outcome store for a sample.
//!
//! A separate command, never a timed test. Build and run:
//! `cargo build --release -p aida-bench --bin aida-bench-ai`, then
//! `$CARGO_TARGET_DIR/release/aida-bench-ai` (see BENCHMARKS.md).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aida_ai::embed::{Embedder, Lexical, MiniLm};
use aida_ai::scoring::{
    Engagement, Features, LeadProfile, LeadScoreModel, Outcome, Similarity, TrainConfig, lead_text,
    outcomes_namespace, roc_auc,
};
use aida_ai::synthetic::{NOTE_OPENERS, SOURCES, normal, pick, sigmoid, weighted};
use aida_ai::vector::{
    Chroma, ChromaConfig, Embedded, Filter, Item, Namespace, VectorStore, brute_force_top_k,
    recall_at_k,
};
use aida_bench::rss_mib;
use aida_core::testing::chroma::ChromaProcess;
use anyhow::{Context, bail};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Parser)]
#[command(about = "Benchmark embeddings, vector search and lead scoring against same-run ceilings")]
struct Args {
    /// Leads (vectors) in the search and scoring parts.
    #[arg(long, default_value_t = 100_000)]
    leads: usize,
    /// Lead-profile sentences embedded in part 1; they are also the search queries.
    #[arg(long, default_value_t = 500)]
    sentences: usize,
    /// Real profiles embedded with MiniLM as the base of the synthetic vectors.
    #[arg(long, default_value_t = 2_000)]
    base: usize,
    /// Hits per search query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Labelled leads in the outcome store (training set of the scorer).
    #[arg(long, default_value_t = 5_000)]
    labelled: usize,
    /// Leads scored with the similarity lookup (2 store queries each).
    #[arg(long, default_value_t = 10_000)]
    similar_sample: usize,
    /// Directory of all-MiniLM-L6-v2 (default: $HOME/.cache/aida/models/all-MiniLM-L6-v2).
    #[arg(long, env = "AIDA_EMBED_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// The `chroma` executable (default: $HOME/.cache/aida/chroma-venv/bin/chroma).
    #[arg(long)]
    chroma: Option<PathBuf>,
    /// Use this running Chroma server instead of starting one.
    #[arg(long, env = "TEST_CHROMA_URL")]
    chroma_url: Option<String>,
    /// Skip Chroma.
    #[arg(long)]
    no_chroma: bool,
    /// Seed of every generator.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

// ---------------------------------------------------------------------------------------------
// Synthetic leads
// ---------------------------------------------------------------------------------------------

const TITLES: [&[&str]; 5] = [
    &[
        "Software Engineer",
        "Data Analyst",
        "Account Executive",
        "Marketing Specialist",
        "Ingénieur systèmes",
        "Softwareentwickler",
        "Analista de datos",
        "Consultant",
        "Sales Development Representative",
        "Customer Success Associate",
    ],
    &[
        "Sales Manager",
        "Product Manager",
        "Gerente de operaciones",
        "Responsable achats",
        "Team Lead Analytics",
        "Marketing Manager",
        "IT-Manager",
        "Engineering Manager",
    ],
    &[
        "Director of Engineering",
        "Directrice marketing",
        "Einkaufsleiter",
        "IT Director",
        "Jefe de compras",
        "Sales Director",
        "Directeur financier",
        "Director of Customer Success",
    ],
    &[
        "VP Sales",
        "Vice President of Operations",
        "Head of Data",
        "SVP Marketing",
        "Vicepresidente comercial",
        "Head of Revenue Operations",
        "VP Engineering",
    ],
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
    "Ferrovia",
    "Polaris",
    "Greenfield",
    "Halcyon",
];
const COMPANY_SUFFIXES: &[&str] = &[
    "GmbH",
    "SAS",
    "Ltd",
    "Inc.",
    "S.L.",
    "Group",
    "Labs",
    "AG",
    "Logistics",
    "Health",
];
const FREE_DOMAINS: &[&str] = &[
    "gmail.com",
    "yahoo.fr",
    "outlook.com",
    "gmx.de",
    "hotmail.es",
];

/// Notes by product area: 0 data and analytics (sells best), 1 CRM, 2 no project.
const NOTES: [&[&str]; 3] = [
    &[
        "Migrating our data warehouse to the cloud and needs analytics on the sales pipeline",
        "Looking for real-time dashboards on top of Snowflake for the revenue team",
        "Our BI team wants to consolidate reporting from several databases",
        "Needs ETL and analytics for 40 TB of event data, budget approved",
        "Asked how we integrate with their data warehouse for forecasting reports",
        "Wants one place for pipeline analytics instead of exporting to Excel for BI",
        "Churn prediction for the subscription business, data team of six",
    ],
    &[
        "Evaluating a CRM for a 20-person sales team",
        "Wants to automate follow-up emails after demos",
        "Asked about calendar and contact sync with Outlook",
        "Replacing spreadsheets for tracking deals",
        "Comparing us with two other CRMs for the customer success team",
        "Interested in mobile access for field sales reps",
        "Needs lead routing by territory and a shared inbox for the SDRs",
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
const NOTE_TAILS: &[&str] = &[
    "",
    "",
    ". Decision expected next quarter",
    ". Follow up after the trade show",
    ". Prefers contact by phone",
    ". Procurement involved",
    ". Wants a pilot in one region first",
];

/// Who a lead is, as far as its text goes: what is embedded, and what the hidden rule reads.
#[derive(Clone)]
struct Persona {
    title: String,
    company: String,
    notes: String,
    rank: usize,
    area: usize,
}

fn persona(rng: &mut StdRng) -> Persona {
    let rank = weighted(rng, &[0.35, 0.25, 0.20, 0.12, 0.08]);
    let area = weighted(rng, &[0.25, 0.50, 0.25]);
    let title = if rng.random_bool(0.03) {
        String::new()
    } else {
        (*pick(rng, TITLES[rank])).to_owned()
    };
    let company = if rng.random_bool(0.9) {
        format!(
            "{} {}",
            pick(rng, COMPANY_STEMS),
            pick(rng, COMPANY_SUFFIXES)
        )
    } else {
        String::new()
    };
    let notes = if rng.random_bool(0.05) {
        String::new()
    } else {
        format!(
            "{}{}{}",
            pick(rng, NOTE_OPENERS),
            pick(rng, NOTES[area]),
            pick(rng, NOTE_TAILS)
        )
    };
    Persona {
        title,
        company,
        notes,
        rank,
        area,
    }
}

fn persona_text(p: &Persona) -> String {
    lead_text(&LeadProfile {
        title: p.title.clone(),
        company: p.company.clone(),
        notes: p.notes.clone(),
        ..LeadProfile::default()
    })
}

/// A full lead of the scoring population: its persona's text, its own contact details,
/// source and engagement, and the outcome a hidden rule gave it.
struct Lead {
    profile: LeadProfile,
    engagement: Engagement,
    won: bool,
}

fn lead(rng: &mut StdRng, index: usize, persona: &Persona) -> Lead {
    let person = format!("lead{index}");
    let email = match weighted(rng, &[0.65, 0.30, 0.05]) {
        0 if !persona.company.is_empty() => format!(
            "{person}@{}.com",
            persona
                .company
                .split(' ')
                .next()
                .unwrap_or("company")
                .to_lowercase()
        ),
        0 | 1 => format!("{person}@{}", pick(rng, FREE_DOMAINS)),
        _ => String::new(),
    };
    let shares: Vec<f64> = SOURCES.iter().map(|s| s.2).collect();
    let (source, source_effect, _) = SOURCES[weighted(rng, &shares)];
    let interest = normal(rng) + [0.5, 0.0, -0.5][persona.area];
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
    let hidden = -1.7
        + 0.45 * persona.rank as f64
        + f64::from(e.replies).ln_1p()
        + 0.8 * f64::from(e.meetings)
        + [0.9, 0.0, -1.5][persona.area]
        + source_effect
        + 0.5 * normal(rng);
    let won = rng.random_bool(sigmoid(hidden));
    let fields_total = 6;
    Lead {
        profile: LeadProfile {
            id: lead_id(index),
            title: persona.title.clone(),
            company: persona.company.clone(),
            email,
            source: source.to_owned(),
            phone_present: rng.random_bool(0.4),
            fields_filled: rng.random_range(0..=fields_total),
            fields_total,
            notes: persona.notes.clone(),
        },
        engagement: e,
        won,
    }
}

fn lead_id(index: usize) -> String {
    format!("lead-{index:07}")
}

fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in v {
            *x /= norm;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

/// Latencies of `count` operations that took `elapsed` in all.
struct Timing {
    count: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Timing {
    fn new(elapsed: Duration, mut latencies: Vec<Duration>) -> Self {
        latencies.sort();
        Self {
            count: latencies.len(),
            elapsed,
            latencies,
        }
    }

    fn of(count: usize, elapsed: Duration) -> Self {
        Self {
            count,
            elapsed,
            latencies: Vec::new(),
        }
    }

    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, fraction: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let index = ((self.latencies.len() as f64 - 1.0) * fraction).round() as usize;
        self.latencies[index].as_secs_f64() * 1000.0
    }
}

/// Embeds `texts` one per call (`batch` = 1) or `batch` per call; per-call latencies.
fn time_embedding(
    embedder: &dyn Embedder,
    texts: &[&str],
    batch: usize,
) -> anyhow::Result<(Timing, Vec<Vec<f32>>)> {
    // Warm-up: first calls allocate and fault in the weights.
    embedder.embed(&texts[..texts.len().min(batch.max(4))])?;
    let mut latencies = Vec::new();
    let mut vectors = Vec::with_capacity(texts.len());
    let started = Instant::now();
    for chunk in texts.chunks(batch) {
        let begun = Instant::now();
        vectors.extend(embedder.embed(chunk)?);
        latencies.push(begun.elapsed());
    }
    let elapsed = started.elapsed();
    let mut timing = Timing::new(elapsed, latencies);
    timing.count = texts.len(); // rate in sentences/s; latencies per call
    Ok((timing, vectors))
}

struct Search {
    timing: Timing,
    recall: f64,
}

/// Sequential top-k queries (one client), after `warmup` untimed ones; mean recall@k against
/// `exact`.
async fn time_queries(
    store: &dyn VectorStore,
    ns: &Namespace,
    queries: &[Vec<f32>],
    k: usize,
    exact: &[Vec<String>],
) -> anyhow::Result<Search> {
    let all = Filter::all();
    for query in queries.iter().take(20) {
        store.query(ns, query, k, &all).await?;
    }
    let mut latencies = Vec::with_capacity(queries.len());
    let mut recall = 0.0;
    let started = Instant::now();
    for (query, truth) in queries.iter().zip(exact) {
        let begun = Instant::now();
        let hits = store.query(ns, query, k, &all).await?;
        latencies.push(begun.elapsed());
        let ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
        recall += recall_at_k(truth, &ids);
    }
    let elapsed = started.elapsed();
    Ok(Search {
        timing: Timing::new(elapsed, latencies),
        recall: recall / queries.len().max(1) as f64,
    })
}

/// Upserts `items` in batches of `batch`; items/s.
async fn time_inserts(
    store: &dyn VectorStore,
    ns: &Namespace,
    items: &[Item],
    batch: usize,
) -> anyhow::Result<Timing> {
    let started = Instant::now();
    for chunk in items.chunks(batch) {
        store.upsert(ns, chunk.to_vec()).await?;
    }
    Ok(Timing::of(items.len(), started.elapsed()))
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

/// The 1-minute load average, from /proc.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from)
}

fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

struct Row {
    measure: String,
    value: String,
    ratio: String,
}

fn row(rows: &mut Vec<Row>, measure: impl Into<String>, value: String, ratio: String) {
    let row = Row {
        measure: measure.into(),
        value,
        ratio,
    };
    eprintln!("  {} = {} ({})", row.measure, row.value, row.ratio);
    rows.push(row);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.base == 0 || args.sentences == 0 || args.leads < args.base {
        bail!("need --base ≥ 1, --sentences ≥ 1 and --leads ≥ --base");
    }
    let command: Vec<String> = std::env::args().collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let threads = candle_core::utils::get_num_threads();
    let load_before = load_average();
    let mut rows = Vec::new();

    // ---- 1. Embeddings ------------------------------------------------------------------
    let model_dir = args
        .model_dir
        .clone()
        .unwrap_or_else(|| aida_ai::models::model_dir(&home().join(".cache/aida")));
    let minilm = MiniLm::load(&model_dir)
        .with_context(|| format!("loading all-MiniLM-L6-v2 from {}", model_dir.display()))?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let sentences: Vec<String> = (0..args.sentences)
        .map(|_| persona_text(&persona(&mut rng)))
        .collect();
    let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();
    eprintln!(
        "1. embeddings: {} sentences, candle threads {threads}",
        refs.len()
    );
    let (single, _) = time_embedding(&minilm, &refs, 1)?;
    let (batched, queries) = time_embedding(&minilm, &refs, 32)?;
    let lexical = Lexical::new();
    let (lex_single, _) = time_embedding(&lexical, &refs, 1)?;
    let (lex_batched, _) = time_embedding(&lexical, &refs, 32)?;
    row(
        &mut rows,
        format!("MiniLM, 1 sentence per call ({threads} threads)"),
        format!(
            "{} sentences/s (p50 {:.1} ms, p99 {:.1} ms per call)",
            thousands(single.rate()),
            single.percentile_ms(0.5),
            single.percentile_ms(0.99)
        ),
        format!("{:.2} of batched", single.rate() / batched.rate()),
    );
    row(
        &mut rows,
        format!("MiniLM, batches of 32 ({threads} threads)"),
        format!(
            "{} sentences/s (p50 {:.0} ms per batch)",
            thousands(batched.rate()),
            batched.percentile_ms(0.5)
        ),
        "-".into(),
    );
    row(
        &mut rows,
        "Lexical, 1 sentence per call (1 thread)",
        format!("{} sentences/s", thousands(lex_single.rate())),
        format!("{:.0}× MiniLM single", lex_single.rate() / single.rate()),
    );
    row(
        &mut rows,
        "Lexical, batches of 32 (1 thread)",
        format!("{} sentences/s", thousands(lex_batched.rate())),
        format!("{:.0}× MiniLM batched", lex_batched.rate() / batched.rate()),
    );

    // ---- 2. Vector search ---------------------------------------------------------------
    let n = args.leads;
    eprintln!(
        "2. search: {n} leads, {} embedded with MiniLM, the rest synthesised",
        args.base
    );
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0x5eed);
    let personas: Vec<Persona> = (0..args.base).map(|_| persona(&mut rng)).collect();
    let base_texts: Vec<String> = personas.iter().map(persona_text).collect();
    let base_refs: Vec<&str> = base_texts.iter().map(String::as_str).collect();
    // Whichever way part 1 measured faster on this machine.
    let base_batch = if single.rate() > batched.rate() {
        1
    } else {
        32
    };
    let started = Instant::now();
    let mut base_vectors = Vec::with_capacity(base_refs.len());
    for chunk in base_refs.chunks(base_batch) {
        base_vectors.extend(minilm.embed(chunk)?);
    }
    let base_embed = started.elapsed();
    let started = Instant::now();
    // parent[i]: the persona whose text lead i has (its vector is near the parent's).
    let mut parent = Vec::with_capacity(n);
    let mut vectors: Vec<(String, Vec<f32>)> = Vec::with_capacity(n);
    for (i, v) in base_vectors.iter().enumerate() {
        parent.push(i);
        vectors.push((lead_id(i), v.clone()));
    }
    for i in args.base..n {
        let p = rng.random_range(0..args.base);
        let other = rng.random_range(0..args.base);
        let mix = rng.random_range(0.0..0.4f32);
        let mut v: Vec<f32> = base_vectors[p]
            .iter()
            .zip(&base_vectors[other])
            .map(|(a, b)| a + mix * b + 0.02 * normal(&mut rng) as f32)
            .collect();
        normalise(&mut v);
        parent.push(p);
        vectors.push((lead_id(i), v));
    }
    let synthesis = started.elapsed();
    row(
        &mut rows,
        format!(
            "vectors: {} embedded (MiniLM, {} per call)",
            args.base, base_batch
        ),
        format!(
            "{:.1} s ({} /s)",
            base_embed.as_secs_f64(),
            thousands(args.base as f64 / base_embed.as_secs_f64())
        ),
        "-".into(),
    );
    row(
        &mut rows,
        format!(
            "vectors: {} synthesised (parent + 0–0.4 × other + N(0, 0.02²) noise, normalised)",
            n - args.base
        ),
        format!("{:.1} s", synthesis.as_secs_f64()),
        "-".into(),
    );

    // Exact reference, single-threaded, over the same vectors.
    let k = args.k;
    let mut exact = Vec::with_capacity(queries.len());
    let mut latencies = Vec::with_capacity(queries.len());
    let started = Instant::now();
    for query in &queries {
        let begun = Instant::now();
        let top = black_box(brute_force_top_k(&vectors, query, k));
        latencies.push(begun.elapsed());
        exact.push(top.into_iter().map(|(id, _)| id).collect::<Vec<String>>());
    }
    let brute = Timing::new(started.elapsed(), latencies);
    row(
        &mut rows,
        format!(
            "exact brute_force_top_k, top-{k} of {}, 1 thread (ceiling)",
            thousands(n as f64)
        ),
        format!(
            "{:.0} q/s, p50 {:.2} ms, p99 {:.2} ms, recall 1.000",
            brute.rate(),
            brute.percentile_ms(0.5),
            brute.percentile_ms(0.99)
        ),
        "-".into(),
    );

    let items: Vec<Item> = vectors
        .iter()
        .zip(&parent)
        .map(|((id, v), p)| {
            Item::new(id.clone(), v.clone())
                .document(base_texts[*p].clone())
                .meta("area", personas[*p].area as i64)
        })
        .collect();
    let ns = Namespace::new("bench", "leads");

    // (a) Embedded.
    let dir = tempfile::tempdir()?;
    let embedded = Embedded::open(dir.path())?;
    let inserted = time_inserts(&embedded, &ns, &items, 1_000).await?;
    let embedded_insert_rate = inserted.rate();
    let search = time_queries(&embedded, &ns, &queries, k, &exact).await?;
    let own = rss_mib(std::process::id());
    row(
        &mut rows,
        "Embedded insert (batches of 1,000, fsync per batch)",
        format!("{} items/s", thousands(inserted.rate())),
        "-".into(),
    );
    row(
        &mut rows,
        format!("Embedded top-{k} query, 1 client"),
        format!(
            "{:.0} q/s, p50 {:.2} ms, p99 {:.2} ms, recall@{k} {:.3}",
            search.timing.rate(),
            search.timing.percentile_ms(0.5),
            search.timing.percentile_ms(0.99),
            search.recall
        ),
        format!("{:.2} of exact", search.timing.rate() / brute.rate()),
    );
    drop(embedded);
    drop(dir);

    // (b) Chroma.
    if args.no_chroma {
        eprintln!("chroma skipped (--no-chroma)");
    } else {
        let server = match &args.chroma_url {
            Some(_) => None,
            None => Some(
                ChromaProcess::start(
                    &args
                        .chroma
                        .clone()
                        .unwrap_or_else(|| home().join(".cache/aida/chroma-venv/bin/chroma")),
                )
                .map_err(anyhow::Error::msg)?,
            ),
        };
        let url = args
            .chroma_url
            .clone()
            .or_else(|| server.as_ref().map(|s| s.url.clone()))
            .context("no chroma url")?;
        let mut config = ChromaConfig::new(url);
        config.timeout = Duration::from_secs(300);
        let chroma = Chroma::new(config)?;
        let inserted = time_inserts(&chroma, &ns, &items, 1_000).await?;
        // Make sure every item is counted before searching (the local server applies writes
        // as they come; this only guards against a lagging index).
        let started = Instant::now();
        while chroma.count(&ns).await? < n && started.elapsed() < Duration::from_secs(300) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let settle = started.elapsed();
        let search = time_queries(&chroma, &ns, &queries, k, &exact).await?;
        row(
            &mut rows,
            "Chroma insert (batches of 1,000; read + upsert per batch)",
            format!(
                "{} items/s (all counted {:.1} s later)",
                thousands(inserted.rate()),
                settle.as_secs_f64()
            ),
            format!("{:.2} of Embedded", inserted.rate() / embedded_insert_rate),
        );
        row(
            &mut rows,
            format!("Chroma (HNSW) top-{k} query, 1 client, over HTTP"),
            format!(
                "{:.0} q/s, p50 {:.2} ms, p99 {:.2} ms, recall@{k} {:.3}",
                search.timing.rate(),
                search.timing.percentile_ms(0.5),
                search.timing.percentile_ms(0.99),
                search.recall
            ),
            format!("{:.2} of exact", search.timing.rate() / brute.rate()),
        );
        if let Some(server) = &server {
            row(
                &mut rows,
                "Chroma server resident memory after the queries",
                format!("{:.0} MiB", server.server_pid.map_or(0.0, rss_mib)),
                "-".into(),
            );
        }
        drop(server);
    }

    // ---- 3. Scoring ---------------------------------------------------------------------
    score_leads(&args, &personas, &parent, &vectors, &mut rows).await?;

    // ---- Report -------------------------------------------------------------------------
    println!();
    println!("command: {}", command.join(" "));
    println!(
        "machine: {cores} cores ({cpu}); candle threads {threads}; search and scoring single-threaded, one client"
    );
    println!(
        "vectors: {} of {} embedded with MiniLM, the rest synthesised from them (seed {})",
        args.base, n, args.seed
    );
    println!(
        "load average (1 min) at start {load_before}, at end {} (other work on the machine skews every figure)",
        load_average()
    );
    println!("process resident memory after the Embedded queries: {own:.0} MiB");
    println!();
    println!("| measure | value | ratio |");
    println!("|---|---|---|");
    for r in &rows {
        println!("| {} | {} | {} |", r.measure, r.value, r.ratio);
    }
    Ok(())
}

/// Nearest `k` won and `k` lost labelled leads of `id` (itself left out), as
/// `scoring::similar_leads` finds them but from a vector already at hand (no embedding).
async fn lookup(
    store: &Embedded,
    ns: &Namespace,
    id: &str,
    vector: &[f32],
    k: usize,
    filters: &(Filter, Filter),
) -> anyhow::Result<Similarity> {
    let keep = |hits: Vec<aida_ai::vector::Hit>| -> Vec<(String, f32)> {
        hits.into_iter()
            .filter(|h| h.id != id)
            .take(k)
            .map(|h| (h.id, h.similarity))
            .collect()
    };
    Ok(Similarity {
        to_won: keep(store.query(ns, vector, k + 1, &filters.0).await?),
        to_lost: keep(store.query(ns, vector, k + 1, &filters.1).await?),
    })
}

fn outcome(won: bool) -> Outcome {
    if won { Outcome::Won } else { Outcome::Lost }
}

/// Part 3: train on the labelled leads, then score every lead without similarity, and a
/// sample with similarity looked up in an `Embedded` outcome store.
async fn score_leads(
    args: &Args,
    personas: &[Persona],
    parent: &[usize],
    vectors: &[(String, Vec<f32>)],
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    const NEIGHBOURS: usize = 10;
    let n = vectors.len();
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0x5c0e);
    let leads: Vec<Lead> = (0..n)
        .map(|i| lead(&mut rng, i, &personas[parent[i]]))
        .collect();
    let labelled = args.labelled.min(n);
    let won_share = leads.iter().filter(|l| l.won).count() as f64 / n as f64;
    eprintln!(
        "3. scoring: {n} leads ({:.0} % won by the hidden rule), {labelled} labelled",
        won_share * 100.0
    );

    // The outcome store: the labelled leads' vectors with their outcome.
    let dir = tempfile::tempdir()?;
    let store = Embedded::open(dir.path())?;
    let ns = outcomes_namespace("bench");
    let version = "all-MiniLM-L6-v2+synthetic";
    let items: Vec<Item> = (0..labelled)
        .map(|i| {
            Item::new(vectors[i].0.clone(), vectors[i].1.clone())
                .meta("outcome", outcome(leads[i].won).as_str())
                .meta("embedder", version)
        })
        .collect();
    for chunk in items.chunks(1_000) {
        store.upsert(&ns, chunk.to_vec()).await?;
    }
    let filters = (
        Filter::all()
            .eq("outcome", Outcome::Won.as_str())
            .eq("embedder", version),
        Filter::all()
            .eq("outcome", Outcome::Lost.as_str())
            .eq("embedder", version),
    );

    // Training: without similarity (model A) and with it (model B).
    let none = Similarity::default();
    let started = Instant::now();
    let plain: Vec<(Features, Outcome)> = leads[..labelled]
        .iter()
        .map(|l| {
            (
                Features::extract(&l.profile, &l.engagement, &none),
                outcome(l.won),
            )
        })
        .collect();
    let model_a = LeadScoreModel::train(&plain, &TrainConfig::default());
    let train_a = started.elapsed();
    let started = Instant::now();
    let mut with_sim = Vec::with_capacity(labelled);
    for (l, (id, v)) in leads[..labelled].iter().zip(vectors) {
        let similarity = lookup(&store, &ns, id, v, NEIGHBOURS, &filters).await?;
        with_sim.push((
            Features::extract(&l.profile, &l.engagement, &similarity),
            outcome(l.won),
        ));
    }
    let model_b = LeadScoreModel::train(&with_sim, &TrainConfig::default());
    let train_b = started.elapsed();
    row(
        rows,
        format!("train on {labelled} labelled leads, no similarity"),
        format!(
            "{:.0} ms ({})",
            train_a.as_secs_f64() * 1000.0,
            model_a.version()
        ),
        "-".into(),
    );
    row(
        rows,
        format!("train on {labelled} labelled leads, with similarity lookups"),
        format!(
            "{:.0} ms ({})",
            train_b.as_secs_f64() * 1000.0,
            model_b.version()
        ),
        "-".into(),
    );

    // Throughput without similarity, over every lead.
    let started = Instant::now();
    for l in &leads {
        black_box(Features::extract(
            black_box(&l.profile),
            black_box(&l.engagement),
            &none,
        ));
    }
    let extract = Timing::of(n, started.elapsed());
    let mut probabilities = Vec::with_capacity(n);
    let started = Instant::now();
    for l in &leads {
        let score = model_a.score(black_box(&l.profile), black_box(&l.engagement), &none);
        probabilities.push(score.probability);
    }
    let scored = Timing::of(n, started.elapsed());
    let held_out = |probabilities: &[f64], from: usize| {
        let won: Vec<bool> = leads[from..from + probabilities.len()]
            .iter()
            .map(|l| l.won)
            .collect();
        roc_auc(probabilities, &won).unwrap_or(f64::NAN)
    };
    let auc_a = held_out(&probabilities[labelled..], labelled);
    row(
        rows,
        format!("Features::extract, {} leads (ceiling)", thousands(n as f64)),
        format!("{} leads/s", thousands(extract.rate())),
        "-".into(),
    );
    row(
        rows,
        format!(
            "extract + score with explanation, {} leads, no embedding",
            thousands(n as f64)
        ),
        format!(
            "{} scores/s (held-out AUC {auc_a:.3})",
            thousands(scored.rate())
        ),
        format!("{:.2} of extract", scored.rate() / extract.rate()),
    );

    // With similarity: two filtered queries of the outcome store per lead, for a sample of
    // unlabelled leads.
    let sample = args.similar_sample.min(n - labelled);
    if sample > 0 {
        let mut probabilities = Vec::with_capacity(sample);
        let started = Instant::now();
        for (l, (id, v)) in leads[labelled..labelled + sample]
            .iter()
            .zip(&vectors[labelled..])
        {
            let similarity = lookup(&store, &ns, id, v, NEIGHBOURS, &filters).await?;
            probabilities.push(
                model_b
                    .score(&l.profile, &l.engagement, &similarity)
                    .probability,
            );
        }
        let looked_up = Timing::of(sample, started.elapsed());
        let auc_b = held_out(&probabilities, labelled);
        row(
            rows,
            format!(
                "lookup {NEIGHBOURS} won + {NEIGHBOURS} lost in Embedded ({} outcomes) + extract + score, {} leads",
                thousands(labelled as f64),
                thousands(sample as f64)
            ),
            format!(
                "{} scores/s (held-out AUC {auc_b:.3})",
                thousands(looked_up.rate())
            ),
            format!(
                "{:.3} of no-similarity scoring",
                looked_up.rate() / scored.rate()
            ),
        );
    }
    Ok(())
}
