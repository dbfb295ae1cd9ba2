//! SearchLeads, FindDuplicateLeads and MergeLeads, on both engine pairs: search quality on
//! topical leads, duplicate recall on known near-duplicates, merges, and the index healing.

use crate::support;

use std::time::Duration;

use aida_core::db::Sql;
use aida_core::testing::eventually;
use aida_proto::aida::events::v1::event_envelope::Payload;
use aida_proto::aida::leads::v1::{
    FindDuplicateLeadsRequest, Lead, LeadStatus, MergeLeadsRequest, SearchLeadsRequest,
    SearchLeadsResponse,
};
use support::{Backend, TestApp, capture, violated_fields};
use tonic::Code;

async fn search(app: &TestApp, tenant: &str, query: &str, filter: &str) -> SearchLeadsResponse {
    app.client()
        .await
        .search_leads(app.request(
            tenant,
            SearchLeadsRequest {
                query: query.into(),
                page_size: 5,
                filter: filter.into(),
            },
        ))
        .await
        .expect("search")
        .into_inner()
}

fn person(first: &str, last: &str, email: &str, company: &str, title: &str, phone: &str) -> Lead {
    Lead {
        email: email.into(),
        first_name: first.into(),
        last_name: last.into(),
        company: company.into(),
        title: title.into(),
        phone: phone.into(),
        ..Lead::default()
    }
}

const FIRST: [&str; 12] = [
    "Olivia", "Liam", "Emma", "Noah", "Ava", "Lucas", "Mia", "Ethan", "Sofia", "Mateo", "Chloe",
    "Henrik",
];
const LAST: [&str; 13] = [
    "Andersen",
    "Baptiste",
    "Castillo",
    "Dubois",
    "Eriksen",
    "Fontaine",
    "Gallagher",
    "Horvath",
    "Iversen",
    "Jablonski",
    "Kowalczyk",
    "Lindqvist",
    "Moreau",
];

struct Topic {
    name: &'static str,
    companies: [&'static str; 6],
    titles: [&'static str; 5],
    notes: [&'static str; 4],
    query: &'static str,
}

const TOPICS: [Topic; 5] = [
    Topic {
        name: "logistics",
        companies: [
            "Northwind Freight",
            "Harbor Shipping Lines",
            "Rapid Cargo Logistics",
            "Continental Trucking",
            "BlueWave Warehousing",
            "Atlas Supply Chain",
        ],
        titles: [
            "Head of Logistics",
            "Fleet Manager",
            "Warehouse Operations Director",
            "Supply Chain Manager",
            "Freight Coordinator",
        ],
        notes: [
            "Looking to optimise freight routes and truck fleet utilisation",
            "Needs warehouse inventory tracking across distribution centres",
            "Evaluating shipment tracking for container cargo",
            "Wants last-mile delivery scheduling for parcels",
        ],
        query: "freight shipping and warehouse logistics",
    },
    Topic {
        name: "healthcare",
        companies: [
            "St. Mary Hospital",
            "CarePoint Clinics",
            "MediLife Health",
            "Wellspring Medical Group",
            "Pulse Cardiology",
            "BrightSmile Dental",
        ],
        titles: [
            "Chief Medical Officer",
            "Head of Nursing",
            "Clinical Operations Director",
            "Hospital Administrator",
            "Practice Manager",
        ],
        notes: [
            "Needs patient scheduling and electronic health records integration",
            "Evaluating telemedicine for remote patient consultations",
            "Wants to reduce clinic waiting times for patients",
            "Looking at medical billing and insurance claims",
        ],
        query: "hospital patients and medical clinics",
    },
    Topic {
        name: "fintech",
        companies: [
            "Ledgerly Payments",
            "CoinBridge Exchange",
            "NovaBank Digital",
            "Quantum Lending",
            "ClearPay Financial",
            "Vault Capital",
        ],
        titles: [
            "Head of Payments",
            "Chief Risk Officer",
            "Compliance Manager",
            "VP Banking Products",
            "Fraud Analytics Lead",
        ],
        notes: [
            "Processing card payments and needs fraud detection",
            "Building a digital banking app with loan origination",
            "Needs KYC and anti-money-laundering compliance checks",
            "Evaluating credit risk scoring for lending",
        ],
        query: "payments, banking and fraud compliance",
    },
    Topic {
        name: "retail",
        companies: [
            "UrbanStyle Fashion",
            "FreshMart Grocery",
            "HomeNest Furniture",
            "Sparkle Boutique",
            "MegaShop Stores",
            "TrendyKicks Shoes",
        ],
        titles: [
            "Store Operations Manager",
            "Head of E-commerce",
            "Merchandising Director",
            "Retail Buyer",
            "Customer Loyalty Manager",
        ],
        notes: [
            "Runs fifty shops and wants a loyalty programme for shoppers",
            "Needs point-of-sale and online store stock sync",
            "Planning seasonal fashion merchandising and promotions",
            "Wants to grow e-commerce basket size and checkout conversion",
        ],
        query: "retail stores, shoppers and e-commerce",
    },
    Topic {
        name: "education",
        companies: [
            "Riverside University",
            "BrightPath Academy",
            "LearnHub Online",
            "Oakwood High School",
            "Summit College",
            "KidsCode Bootcamp",
        ],
        titles: [
            "Dean of Students",
            "Head of Curriculum",
            "Director of Admissions",
            "E-learning Coordinator",
            "School Principal",
        ],
        notes: [
            "Needs a learning management system for online courses",
            "Wants student enrolment and admissions tracking",
            "Planning teacher training and classroom curriculum",
            "Evaluating exam grading and student performance analytics",
        ],
        query: "university students and online courses",
    },
];

async fn search_ranks_leads_of_the_query_topic_first(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // 150 leads, 30 per topic; the topic is only in the e-mail, which search does not read.
    for (t, topic) in TOPICS.iter().enumerate() {
        for i in 0..30 {
            let n = t * 30 + i;
            let mut lead = person(
                FIRST[n % FIRST.len()],
                LAST[(n / FIRST.len()) % LAST.len()],
                &format!("{}-{i}@example.com", topic.name),
                topic.companies[i % 6],
                topic.titles[(i / 2) % 5],
                "",
            );
            lead.attributes
                .insert("notes".into(), topic.notes[(i / 3) % 4].into());
            capture(&app, "quality", lead).await;
        }
    }
    let mut total = 0.0;
    let mut model = String::new();
    for topic in &TOPICS {
        let response = search(&app, "quality", topic.query, "").await;
        model = response.model_version.clone();
        assert_eq!(response.results.len(), 5);
        let relevant = response
            .results
            .iter()
            .filter(|r| {
                r.lead
                    .as_ref()
                    .is_some_and(|l| l.email.starts_with(&format!("{}-", topic.name)))
            })
            .count();
        let precision = relevant as f64 / 5.0;
        println!(
            "precision@5 {:<10} {precision:.2}  ({})",
            topic.name, topic.query
        );
        total += precision;
        let similarities: Vec<f32> = response.results.iter().map(|r| r.similarity).collect();
        assert!(similarities.windows(2).all(|w| w[0] >= w[1]), "best first");
    }
    let mean = total / TOPICS.len() as f64;
    println!("mean precision@5 {mean:.2} with {model}");
    assert!(mean >= 0.8, "mean precision@5 {mean:.2}");
}

/// Pairs of (original, duplicate) and the distinct people around them.
fn duplicate_population() -> (Vec<Lead>, Vec<(usize, Lead)>) {
    let companies = [
        "Acme Robotics",
        "Globex",
        "Initech",
        "Umbrella Labs",
        "Stark Industries",
        "Wayne Enterprises",
        "Hooli",
        "Soylent Foods",
    ];
    let mut people = Vec::new();
    for n in 0..60 {
        let first = FIRST[n % FIRST.len()];
        let last = LAST[(n * 7 + n / FIRST.len()) % LAST.len()];
        let company = companies[n % companies.len()];
        let domain = company.split(' ').next().unwrap_or("x").to_lowercase();
        people.push(person(
            first,
            last,
            &format!(
                "{}.{}{n}@{domain}.com",
                first.to_lowercase(),
                last.to_lowercase()
            ),
            company,
            "Operations Manager",
            &format!("+1 415 555 {:04}", 1000 + n),
        ));
    }
    // Known people with known nicknames, to make nickname duplicates.
    let named = [
        ("Robert", "Whitfield", "Bob"),
        ("Elizabeth", "Carrington", "Liz"),
        ("William", "Okafor", "Bill"),
        ("Katherine", "Novak", "Kate"),
        ("Michael", "Brennan", "Mike"),
    ];
    for (k, (first, last, _)) in named.iter().enumerate() {
        people.push(person(
            first,
            last,
            &format!(
                "{}.{}@{}.com",
                first.to_lowercase(),
                last.to_lowercase(),
                companies[k].split(' ').next().unwrap().to_lowercase()
            ),
            companies[k],
            "Head of Sales",
            &format!("+1 212 555 {:04}", 2000 + k),
        ));
    }
    let mut duplicates = Vec::new();
    // The same person at another e-mail domain (personal address), same company.
    for n in [0, 5, 10, 15, 20] {
        let p = &people[n];
        let local = p.email.split('@').next().unwrap();
        duplicates.push((
            n,
            person(
                &p.first_name,
                &p.last_name,
                &format!("{local}@gmail.com"),
                &p.company,
                "",
                "",
            ),
        ));
    }
    // A typo in the name, same phone, another address.
    for n in [1, 6, 11, 16, 21] {
        let p = &people[n];
        let mut first: Vec<char> = p.first_name.chars().collect();
        first.swap(1, 2);
        let first: String = first.into_iter().collect();
        duplicates.push((
            n,
            person(
                &first,
                &p.last_name,
                &format!("typo{n}@other.org"),
                "",
                "",
                &p.phone,
            ),
        ));
    }
    // A nickname at the same company, another address.
    for (k, (_, last, nick)) in named.iter().enumerate() {
        duplicates.push((
            60 + k,
            person(
                nick,
                last,
                &format!("{}@{}.io", nick.to_lowercase(), k),
                companies[k],
                "Sales Lead",
                "",
            ),
        ));
    }
    // The company missing, the same e-mail local part elsewhere.
    for n in [2, 7, 12, 17, 22] {
        let p = &people[n];
        let local = p.email.split('@').next().unwrap();
        duplicates.push((
            n,
            person(
                &p.first_name,
                &p.last_name,
                &format!("{local}@outlook.com"),
                "",
                "",
                "",
            ),
        ));
    }
    (people, duplicates)
}

async fn find_duplicates_recalls_near_duplicates_with_reasons_and_few_false_positives(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let (people, duplicates) = duplicate_population();
    let mut ids = Vec::new();
    for p in people {
        ids.push(capture(&app, "dups", p).await.id);
    }
    let mut pairs = Vec::new();
    for (original, dup) in duplicates {
        let described = format!(
            "{} {} <{}> {} {}",
            dup.first_name, dup.last_name, dup.email, dup.company, dup.phone
        );
        let dup = capture(&app, "dups", dup).await.id;
        println!("pair {} / {dup}: {described}", ids[original]);
        pairs.push((ids[original].clone(), dup));
    }
    let (mut found, mut false_positives, mut returned) = (0, 0, 0);
    for (original, dup) in &pairs {
        let response = app
            .client()
            .await
            .find_duplicate_leads(app.request(
                "dups",
                FindDuplicateLeadsRequest {
                    lead_id: original.clone(),
                    min_score: 0.0,
                },
            ))
            .await
            .expect("find")
            .into_inner();
        returned += response.duplicates.len();
        for candidate in &response.duplicates {
            let id = &candidate.lead.as_ref().unwrap().id;
            if id == dup {
                found += 1;
                assert!(!candidate.reasons.is_empty());
                assert!(candidate.score >= 0.8);
            } else {
                false_positives += 1;
                println!("false positive for {original}: {candidate:?}");
            }
        }
        if !response
            .duplicates
            .iter()
            .any(|c| &c.lead.as_ref().unwrap().id == dup)
        {
            println!("missed duplicate {dup} of {original}");
        }
    }
    let recall = found as f64 / pairs.len() as f64;
    println!(
        "duplicate recall {recall:.2} ({found}/{}), false positives {false_positives} of {returned} returned",
        pairs.len()
    );
    assert!(recall >= 0.9, "recall {recall:.2}");
    assert!(
        false_positives <= pairs.len() / 10,
        "{false_positives} false positives"
    );
}

async fn merge_fills_fields_records_lineage_emits_events_and_hides_merged_leads(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let survivor = capture(
        &app,
        "acme",
        person("Grace", "Hopper", "grace@navy.mil", "", "", ""),
    )
    .await;
    let mut other = person(
        "Grace",
        "Hoper",
        "",
        "US Navy",
        "Rear Admiral",
        "+1 202 555 0199",
    );
    other.attributes.insert("language".into(), "COBOL".into());
    let first = capture(&app, "acme", other).await;
    let second = capture(
        &app,
        "acme",
        person(
            "Gracie",
            "Hopper",
            "grace.hopper@yale.edu",
            "Yale",
            "Researcher",
            "",
        ),
    )
    .await;
    let foreign = capture(
        &app,
        "other",
        person("Grace", "Hopper", "gh@example.com", "", "", ""),
    )
    .await;

    let bad = |survivor_id: &str, merged_ids: Vec<String>| MergeLeadsRequest {
        survivor_id: survivor_id.into(),
        merged_ids,
        request_id: String::new(),
    };
    let mut client = app.client().await;
    for (request, field) in [
        (bad("nope", vec![first.id.clone()]), "survivor_id"),
        (bad(&survivor.id, vec![]), "merged_ids"),
        (bad(&survivor.id, vec![survivor.id.clone()]), "merged_ids"),
        (
            bad(&survivor.id, vec![first.id.clone(), first.id.clone()]),
            "merged_ids",
        ),
        (bad(&survivor.id, vec!["x".into()]), "merged_ids"),
        (
            bad(
                &survivor.id,
                (0..21).map(|_| uuid::Uuid::now_v7().to_string()).collect(),
            ),
            "merged_ids",
        ),
    ] {
        let status = client
            .merge_leads(app.request("acme", request))
            .await
            .expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&status), vec![field]);
    }
    let status = client
        .merge_leads(app.request("acme", bad(&survivor.id, vec![foreign.id.clone()])))
        .await
        .expect_err("foreign");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(app.count("lead_merges").await, 0);

    let request = MergeLeadsRequest {
        survivor_id: survivor.id.clone(),
        merged_ids: vec![first.id.clone(), second.id.clone()],
        request_id: "merge-1".into(),
    };
    let merged = client
        .merge_leads(app.request("acme", request.clone()))
        .await
        .expect("merge")
        .into_inner();
    assert_eq!(
        merged.email, "grace@navy.mil",
        "the survivor keeps its values"
    );
    assert_eq!(merged.last_name, "Hopper");
    assert_eq!(
        merged.company, "US Navy",
        "empty fields come from the merged leads in order"
    );
    assert_eq!(merged.title, "Rear Admiral");
    assert_eq!(merged.phone, "+12025550199");
    assert_eq!(
        merged.attributes.get("language").map(String::as_str),
        Some("COBOL")
    );
    for id in [&first.id, &second.id] {
        let gone = app.get("acme", id).await.expect("get merged");
        assert_eq!(gone.status, LeadStatus::Merged as i32);
        assert_eq!(gone.merged_into, survivor.id);
    }
    assert_eq!(app.count("lead_merges").await, 2);

    // A retry with the same request id merges nothing again.
    let again = client
        .merge_leads(app.request("acme", request))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(again, merged);
    assert_eq!(app.count("lead_merges").await, 2);
    // Without a request id, merging a merged lead is refused.
    let status = client
        .merge_leads(app.request("acme", bad(&survivor.id, vec![first.id.clone()])))
        .await
        .expect_err("merged twice");
    assert_eq!(status.code(), Code::FailedPrecondition);
    // A merged lead cannot be qualified.
    let status = app
        .qualify("acme", &first.id)
        .await
        .expect_err("qualify merged");
    assert_eq!(status.code(), Code::FailedPrecondition);

    let events = app.wait_for_lead_events(6).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = if events.len() < 6 {
        app.lead_events().await
    } else {
        events
    };
    let merged_events: Vec<_> = events
        .iter()
        .filter(|(t, _, _)| t == "leads.merged")
        .collect();
    assert_eq!(merged_events.len(), 1, "one leads.merged");
    match &merged_events[0].2.payload {
        Some(Payload::LeadMerged(payload)) => {
            assert_eq!(payload.survivor.as_ref().unwrap().id, survivor.id);
            assert_eq!(payload.merged.len(), 2);
        }
        other => panic!("unexpected payload {other:?}"),
    }
    let updated = events
        .iter()
        .filter(|(t, _, e)| t == "leads.updated" && e.subject == format!("leads/{}", survivor.id))
        .count();
    assert_eq!(updated, 1, "one leads.updated for the survivor");

    // Merged leads are gone from search and from duplicates.
    let found = search(&app, "acme", "Grace Hopper Yale researcher", "").await;
    let ids: Vec<_> = found
        .results
        .iter()
        .map(|r| r.lead.as_ref().unwrap().id.clone())
        .collect();
    assert!(ids.contains(&survivor.id));
    assert!(
        !ids.contains(&first.id) && !ids.contains(&second.id),
        "{ids:?}"
    );
    let dups = client
        .find_duplicate_leads(app.request(
            "acme",
            FindDuplicateLeadsRequest {
                lead_id: survivor.id.clone(),
                min_score: 0.1,
            },
        ))
        .await
        .expect("find")
        .into_inner();
    assert!(dups.duplicates.is_empty(), "{:?}", dups.duplicates);
}

async fn search_is_tenant_scoped_filtered_redacted_and_validated(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ours = capture(
        &app,
        "ours",
        person(
            "Ada",
            "Lovelace",
            "ada@engines.io",
            "Analytical Engines",
            "Mathematician",
            "",
        ),
    )
    .await;
    let qualified = capture(
        &app,
        "ours",
        person(
            "Charles",
            "Babbage",
            "cb@engines.io",
            "Analytical Engines",
            "Engineer",
            "",
        ),
    )
    .await;
    let theirs = capture(
        &app,
        "theirs",
        person(
            "Ada",
            "Lovelace",
            "ada@engines.io",
            "Analytical Engines",
            "Mathematician",
            "",
        ),
    )
    .await;
    let mut client = app.client().await;
    app.qualify("ours", &qualified.id).await.expect("qualify");

    let found = search(&app, "ours", "analytical engines mathematician", "").await;
    let ids: Vec<_> = found
        .results
        .iter()
        .map(|r| r.lead.as_ref().unwrap().id.clone())
        .collect();
    assert_eq!(ids.first(), Some(&ours.id));
    assert!(
        !ids.contains(&theirs.id),
        "another tenant's lead never shows"
    );
    assert!(!found.model_version.is_empty());

    let filtered = search(
        &app,
        "ours",
        "analytical engines mathematician",
        "status = \"QUALIFIED\"",
    )
    .await;
    let ids: Vec<_> = filtered
        .results
        .iter()
        .map(|r| r.lead.as_ref().unwrap().id.clone())
        .collect();
    assert_eq!(ids, vec![qualified.id.clone()]);

    // The same search as someone else of the tenant.
    let search_as = |subject: &str, roles: &[&str]| {
        let query = SearchLeadsRequest {
            query: "Ada".into(),
            ..Default::default()
        };
        let request = app.env.request_as("ours", subject, roles, query);
        let mut client = client.clone();
        async move {
            client
                .search_leads(request)
                .await
                .expect("search")
                .into_inner()
        }
    };
    let viewer = search_as("someone", &["viewer"]).await;
    assert!(
        viewer
            .results
            .iter()
            .all(|r| r.lead.as_ref().unwrap().email.is_empty())
    );
    let rep = search_as("rep-1", &["sales_rep"]).await;
    assert!(
        rep.results.is_empty(),
        "a sales rep sees only leads it owns"
    );

    for (request, field) in [
        (
            SearchLeadsRequest {
                query: "  ".into(),
                ..Default::default()
            },
            "query",
        ),
        (
            SearchLeadsRequest {
                query: "x".repeat(501),
                ..Default::default()
            },
            "query",
        ),
        (
            SearchLeadsRequest {
                query: "ada".into(),
                filter: "nope = 1".into(),
                ..Default::default()
            },
            "filter",
        ),
        (
            SearchLeadsRequest {
                query: "ada".into(),
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
    ] {
        let status = client
            .search_leads(app.request("ours", request))
            .await
            .expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&status), vec![field]);
    }
}

async fn concurrent_captures_are_each_searchable_when_their_call_returns(backend: Backend) {
    // Captures arriving together are indexed together (one batch, one durable write); each
    // call still returns only once its own lead is in the index.
    let app = std::sync::Arc::new(TestApp::spawn(backend).await);
    let mut captures = tokio::task::JoinSet::new();
    for n in 0..24 {
        let app = app.clone();
        captures.spawn(async move {
            let word = format!("quillon{n}");
            let lead = capture(
                &app,
                "batch",
                person(
                    "Pat",
                    &word,
                    &format!("pat{n}@example.com"),
                    "Plain Co",
                    "Clerk",
                    "",
                ),
            )
            .await;
            let found = search(&app, "batch", &word, "").await;
            (
                lead.id,
                found.results.first().and_then(|hit| hit.lead.clone()),
            )
        });
    }
    let mut checked = 0;
    while let Some(joined) = captures.join_next().await {
        let (id, top) = joined.expect("capture task");
        assert_eq!(
            top.map(|lead| lead.id),
            Some(id),
            "searchable once captured"
        );
        checked += 1;
    }
    assert_eq!(checked, 24);
}

async fn the_index_heals_a_lead_written_while_the_indexer_was_behind(backend: Backend) {
    let mut app = TestApp::spawn(backend).await;
    for n in 0..5 {
        capture(
            &app,
            "heal",
            person(
                "Test",
                &format!("Person{n}"),
                &format!("p{n}@example.com"),
                "Plain Co",
                "Clerk",
                "",
            ),
        )
        .await;
    }
    let target = capture(
        &app,
        "heal",
        person(
            "Hidden",
            "Change",
            "hidden@example.com",
            "Plain Co",
            "Clerk",
            "",
        ),
    )
    .await;
    // A write the index never heard of (another replica, a crash before indexing, a script).
    app.db
        .execute(
            Sql::new("UPDATE leads SET title = 'Zeppelin airship captain', version = version + 1 WHERE tenant_id = 'heal' AND id = $1")
                .bind(uuid::Uuid::parse_str(&target.id).expect("id")),
        )
        .await
        .expect("direct write");
    let before = search(&app, "heal", "zeppelin airship captain", "").await;
    let stale = before
        .results
        .iter()
        .find(|r| r.lead.as_ref().unwrap().id == target.id)
        .map(|r| r.similarity)
        .unwrap_or(0.0);
    assert!(
        stale < 0.3,
        "the index does not know the change yet ({stale})"
    );
    // Markers lost as well: every lead must come back from the SQL side.
    app.db
        .execute(Sql::new("DELETE FROM lead_index"))
        .await
        .expect("drop markers");

    app.restart().await;
    let healed = eventually(Duration::from_secs(20), || async {
        let found = search(&app, "heal", "zeppelin airship captain", "").await;
        found
            .results
            .first()
            .is_some_and(|r| r.lead.as_ref().unwrap().id == target.id && r.similarity > 0.3)
    })
    .await;
    assert!(healed, "the re-indexer picked up the direct write");
    let marked = eventually(Duration::from_secs(20), || async {
        app.count("lead_index").await == 6
    })
    .await;
    assert!(marked, "every lead is marked indexed again");
}

aida_core::backend_pair_suite!(on_postgres_and_jetstream, on_sqlite_and_in_process_bus:
    search_ranks_leads_of_the_query_topic_first,
    find_duplicates_recalls_near_duplicates_with_reasons_and_few_false_positives,
    merge_fills_fields_records_lineage_emits_events_and_hides_merged_leads,
    search_is_tenant_scoped_filtered_redacted_and_validated,
    the_index_heals_a_lead_written_while_the_indexer_was_behind,
    concurrent_captures_are_each_searchable_when_their_call_returns
);
