use super::*;

fn lead(title: &str, email: &str, source: &str) -> LeadProfile {
    LeadProfile {
        id: "l1".into(),
        title: title.into(),
        company: "Acme".into(),
        email: email.into(),
        source: source.into(),
        phone_present: true,
        fields_filled: 2,
        fields_total: 4,
        notes: "wants a demo".into(),
    }
}

/// A tiny deterministic generator, so these tests need no RNG crate.
fn lcg(state: &mut u64) -> f64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1);
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

fn synthetic(n: usize, seed: u64) -> Vec<(Features, Outcome)> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            let mut v = [0.0; N_FEATURES];
            for x in v.iter_mut() {
                *x = lcg(&mut s);
            }
            let z = 3.0 * v[idx::SENIORITY] + 2.0 * v[idx::REPLIES] - 2.5;
            let won = lcg(&mut s) < sigmoid(z);
            (
                Features::from_values(v),
                if won { Outcome::Won } else { Outcome::Lost },
            )
        })
        .collect()
}

#[test]
fn seniority_is_parsed_in_several_languages() {
    use Seniority::*;
    for (title, want) in [
        ("CEO", CLevel),
        ("Co-Founder & CTO", CLevel),
        ("Geschäftsführer", CLevel),
        ("Directeur Général", CLevel),
        ("Managing Director", CLevel),
        ("VP of Sales", Vp),
        ("Vice-President, Marketing", Vp),
        ("Head of Data", Vp),
        ("Director of Engineering", Director),
        ("Directrice marketing", Director),
        ("Einkaufsleiter", Director),
        ("Jefe de compras", Director),
        ("Sales Manager", Manager),
        ("Gerente de ventas", Manager),
        ("Responsable achats", Manager),
        ("Team Lead", Manager),
        ("Software Engineer", IndividualContributor),
        ("Assistant to the CEO", IndividualContributor),
        ("Marketing intern", IndividualContributor),
        ("", Unknown),
        ("  --  ", Unknown),
    ] {
        assert_eq!(seniority(title), want, "{title:?}");
    }
}

#[test]
fn email_and_source_kinds() {
    assert_eq!(email_kind("ana@gmail.com"), EmailKind::Free);
    assert_eq!(email_kind("Ana@GMX.de"), EmailKind::Free);
    assert_eq!(email_kind("ana@acme.io"), EmailKind::Business);
    assert_eq!(email_kind("not an address"), EmailKind::None);
    assert_eq!(email_kind("@acme.io"), EmailKind::None);
    assert_eq!(email_kind(""), EmailKind::None);
    assert_eq!(source_kind("Customer referral"), SourceKind::Referral);
    assert_eq!(source_kind("Web form"), SourceKind::Inbound);
    assert_eq!(source_kind("Trade show"), SourceKind::Event);
    assert_eq!(source_kind("Cold email"), SourceKind::Outbound);
    assert_eq!(source_kind("LinkedIn Ads"), SourceKind::Paid);
    assert_eq!(source_kind("Reseller"), SourceKind::Partner);
    assert_eq!(source_kind("???"), SourceKind::Other);
}

#[test]
fn features_are_extracted() {
    let sim = Similarity {
        to_won: vec![("w1".into(), 0.9), ("w2".into(), 0.5)],
        to_lost: vec![("x1".into(), 0.7), ("x2".into(), f32::NAN)],
    };
    let e = Engagement {
        opens: 3,
        clicks: 1,
        replies: 1,
        messages_sent: 4,
        meetings: 0,
    };
    let f = Features::extract(&lead("VP Sales", "a@gmail.com", "webinar"), &e, &sim);
    let get = |n: &str| f.get(n).unwrap();
    assert_eq!(get("title_seniority"), 0.8);
    assert_eq!(get("free_email"), 1.0);
    assert_eq!(get("business_email"), 0.0);
    assert_eq!(get("source_event"), 1.0);
    assert_eq!(get("source_inbound"), 0.0);
    assert!((get("completeness") - 7.0 / 9.0).abs() < 1e-12);
    assert!((get("opens") - 4f64.ln()).abs() < 1e-12);
    assert_eq!(get("reply_rate"), 0.25);
    assert!((get("similar_to_won") - 0.7).abs() < 1e-6);
    assert!(
        (get("similar_to_lost") - 0.7).abs() < 1e-6,
        "NaN is dropped"
    );
    assert!((get("max_similar_won") - 0.9).abs() < 1e-6);
    // Nearest two of {0.9 won, 0.7 lost, 0.5 won}: one won of two.
    assert_eq!(get("neighbours_won_share"), 0.5);
    assert!(f.get("nope").is_none());
    assert!(f.values().iter().all(|x| x.is_finite()));
}

#[test]
fn auc_of_known_cases() {
    assert_eq!(
        roc_auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
        Some(1.0)
    );
    assert_eq!(
        roc_auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]),
        Some(0.0)
    );
    assert_eq!(roc_auc(&[0.5; 4], &[false, true, false, true]), Some(0.5));
    // Pairs (won, lost): (0.8,0.1) (0.8,0.4) (0.35,0.1) (0.35,0.4) → 3 of 4 ordered.
    assert_eq!(
        roc_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]),
        Some(0.75)
    );
    // A tie between a won and a lost lead counts half: (0.5,0.5) ½, (0.5,0.2) 1.
    assert_eq!(roc_auc(&[0.5, 0.5, 0.2], &[true, false, false]), Some(0.75));
    assert_eq!(roc_auc(&[0.1, 0.2], &[true, true]), None);
    assert_eq!(roc_auc(&[0.1], &[true, false]), None);
    assert_eq!(roc_auc(&[f64::NAN, 0.2], &[true, false]), None);
}

#[test]
fn factors_plus_intercept_sum_to_the_logit() {
    let examples = synthetic(400, 7);
    for model in [
        LeadScoreModel::prior(),
        LeadScoreModel::train(&examples, &TrainConfig::default()),
    ] {
        for (f, _) in examples.iter().take(50) {
            let s = model.score_features(f, vec![], Utc::now());
            assert_eq!(s.factors.len(), TOP_FACTORS);
            let sum = s.intercept + s.other + s.factors.iter().map(|f| f.contribution).sum::<f64>();
            assert!((sum - s.logit).abs() < 1e-9, "{sum} vs {}", s.logit);
            assert!((s.logit - model.logit(f)).abs() < 1e-9);
            let all: f64 = model.explain(f).iter().map(|f| f.contribution).sum();
            assert!((model.intercept() + all - s.logit).abs() < 1e-9);
            for w in s.factors.windows(2) {
                assert!(w[0].contribution.abs() >= w[1].contribution.abs());
            }
            assert_eq!(s.score, (s.probability * 100.0).round() as u8);
            assert_eq!(s.tier, model.tiers().tier(s.score));
        }
    }
}

#[test]
fn prior_is_used_below_the_threshold_and_says_so() {
    let examples = synthetic(400, 11);
    let config = TrainConfig::default();
    let few = LeadScoreModel::train(&examples[..29], &config);
    assert!(few.is_prior());
    assert_eq!(few.version(), PRIOR_VERSION);
    assert_eq!(few.labelled().0, 29);
    let won_only: Vec<_> = examples
        .iter()
        .filter(|(_, o)| *o == Outcome::Won)
        .cloned()
        .collect();
    assert!(won_only.len() >= 30);
    assert!(LeadScoreModel::train(&won_only, &config).is_prior());
    assert!(LeadScoreModel::train(&[], &config).is_prior());

    let fitted = LeadScoreModel::train(&examples, &config);
    assert!(!fitted.is_prior());
    assert_eq!(fitted.version(), "lead-score-lr-v1+n=400");
    // It found the hidden rule: seniority and replies matter most, the rest is noise.
    let w = fitted.weights();
    for (i, wi) in w.iter().enumerate() {
        if i != idx::SENIORITY && i != idx::REPLIES {
            assert!(
                wi.abs() < w[idx::SENIORITY].min(w[idx::REPLIES]),
                "{}",
                FEATURE_NAMES[i]
            );
        }
    }
    // Calibrated in the large: predicted probabilities sum to the number won.
    let predicted: f64 = examples.iter().map(|(f, _)| fitted.probability(f)).sum();
    let won = examples.iter().filter(|(_, o)| *o == Outcome::Won).count() as f64;
    assert!((predicted - won).abs() < 1.0, "{predicted} vs {won}");
}

#[test]
fn prior_ranks_a_warm_senior_lead_above_a_cold_one() {
    let prior = LeadScoreModel::prior();
    let warm = prior.score(
        &lead("Chief Revenue Officer", "cro@acme.io", "referral"),
        &Engagement {
            opens: 5,
            clicks: 2,
            replies: 2,
            messages_sent: 3,
            meetings: 1,
        },
        &Similarity::default(),
    );
    let cold = prior.score(
        &LeadProfile {
            id: "l2".into(),
            title: "student".into(),
            email: "x@gmail.com".into(),
            source: "cold list".into(),
            ..LeadProfile::default()
        },
        &Engagement {
            messages_sent: 4,
            ..Engagement::default()
        },
        &Similarity::default(),
    );
    assert!(warm.score >= 60 && warm.tier == Tier::A, "{warm:?}");
    assert!(cold.score < 15 && cold.tier == Tier::D, "{cold:?}");
    assert_eq!(warm.model_version, PRIOR_VERSION);
}

#[test]
fn model_roundtrips_through_serde_and_refuses_other_feature_sets() {
    let model = LeadScoreModel::train(&synthetic(300, 3), &TrainConfig::default());
    // serde_json (without its `float_roundtrip` feature) may move the last bit of a
    // float; everything else comes back exactly.
    let close = |a: &LeadScoreModel, b: &LeadScoreModel| {
        let near = |x: f64, y: f64| (x - y).abs() <= 1e-14 * (1.0 + x.abs());
        assert_eq!(a.version(), b.version());
        assert_eq!(a.tiers(), b.tiers());
        assert_eq!(a.labelled(), b.labelled());
        assert!(near(a.intercept(), b.intercept()));
        for (x, y) in a
            .weights()
            .iter()
            .chain(a.means())
            .chain(a.scales())
            .zip(b.weights().iter().chain(b.means()).chain(b.scales()))
        {
            assert!(near(*x, *y), "{x} vs {y}");
        }
    };
    let json = serde_json::to_string(&model).unwrap();
    let back: LeadScoreModel = serde_json::from_str(&json).unwrap();
    close(&back, &model);
    let probe = synthetic(1, 9)[0].0;
    assert!((back.logit(&probe) - model.logit(&probe)).abs() < 1e-12);
    let prior = LeadScoreModel::prior();
    let back: LeadScoreModel =
        serde_json::from_str(&serde_json::to_string(&prior).unwrap()).unwrap();
    close(&back, &prior);

    let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
    value["features"][0] = "title_rank".into();
    assert!(serde_json::from_value::<LeadScoreModel>(value).is_err());
    let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
    value["weights"].as_array_mut().unwrap().pop();
    assert!(serde_json::from_value::<LeadScoreModel>(value).is_err());
    let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
    value["scale"][3] = 0.0.into();
    assert!(serde_json::from_value::<LeadScoreModel>(value).is_err());

    let s = model.score_features(&probe, vec![("w".into(), 0.5)], Utc::now());
    let back: Score = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(
        (
            &back.factors.len(),
            back.score,
            back.tier,
            &back.similar_won
        ),
        (&s.factors.len(), s.score, s.tier, &s.similar_won)
    );
    assert_eq!(
        (&back.model_version, back.scored_at),
        (&s.model_version, s.scored_at)
    );
    assert!((back.logit - s.logit).abs() < 1e-12);
}

#[test]
fn training_is_deterministic() {
    let examples = synthetic(500, 5);
    let a = LeadScoreModel::train(&examples, &TrainConfig::default());
    let b = LeadScoreModel::train(&examples, &TrainConfig::default());
    assert_eq!(a, b);
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
}

#[test]
fn quantile_tiers_split_as_documented() {
    let scores: Vec<u8> = (0..100).collect();
    let t = TierCutoffs::from_quantiles(&scores);
    let count = |tier| scores.iter().filter(|s| t.tier(**s) == tier).count();
    assert_eq!(
        [
            count(Tier::A),
            count(Tier::B),
            count(Tier::C),
            count(Tier::D)
        ],
        [15, 25, 35, 25]
    );
    let t = TierCutoffs::from_quantiles(&[]);
    assert!(t.a >= t.b && t.b >= t.c);
}
