//! Properties of the autonomy state machine over random histories: promotion never skips a
//! level and never happens without a sign-off; every incident, breach and version change
//! demotes; evidence never survives a change of level; rubber stamps never count.

use aida_ai::autonomy::{
    Authority, Baseline, Budget, BusinessOutcome, Grant, Incident, Level, Policy, Review,
};
use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Review(Review, i64),
    Send(Option<BusinessOutcome>),
    Advance(i64),
    Propose,
    SignOff,
    Incident(Incident),
    CheckThresholds,
    NewVersion,
    SameVersion,
    Demote,
    Kill,
    Revive,
}

fn review() -> impl Strategy<Value = Review> {
    prop_oneof![
        6 => Just(Review::ApprovedUnchanged),
        1 => Just(Review::Edited),
        1 => Just(Review::Rejected),
        1 => Just(Review::Vetoed),
        1 => Just(Review::Undone),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => (review(), 0i64..60).prop_map(|(review, seconds)| Op::Review(review, seconds)),
        6 => prop_oneof![
            Just(None),
            Just(Some(BusinessOutcome::Replied)),
            Just(Some(BusinessOutcome::Unsubscribed)),
            Just(Some(BusinessOutcome::Bounced)),
        ]
        .prop_map(Op::Send),
        4 => (0i64..72).prop_map(Op::Advance),
        5 => Just(Op::Propose),
        5 => Just(Op::SignOff),
        1 => Just(Op::Incident(Incident::Critical)),
        1 => Just(Op::Incident(Incident::ThresholdBreach)),
        2 => Just(Op::CheckThresholds),
        1 => Just(Op::NewVersion),
        1 => Just(Op::SameVersion),
        1 => Just(Op::Demote),
        1 => Just(Op::Kill),
        2 => Just(Op::Revive),
    ]
}

/// A policy small enough for random histories to climb all the way.
fn policy() -> Policy {
    Policy {
        min_decisions: [3, 3, 4, 5],
        min_time_at_level: [
            Duration::hours(1),
            Duration::hours(2),
            Duration::hours(3),
            Duration::hours(4),
        ],
        min_unchanged_rate: [0.5, 0.6, 0.7, 0.8],
        min_sends_for_thresholds: 5,
        ..Policy::default()
    }
}

fn start() -> DateTime<Utc> {
    DateTime::from_timestamp(1_790_000_000, 0).expect("time")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn autonomy_is_earned_one_signed_level_at_a_time_and_lost_at_once(
        ops in proptest::collection::vec(op(), 1..200)
    ) {
        let policy = policy();
        let baseline = Baseline { reply_rate: 0.0, unsubscribe_rate: 0.5, bounce_rate: 0.5 };
        let budget = Budget::default();
        let mut now = start();
        let mut grant = Grant::new(now, "model-1", "prompt-1");
        prop_assert_eq!(grant.level, Level::Suggest, "new keys start at L1");
        let mut version = 1;
        let mut highest = Level::Suggest;

        for op in ops {
            let before = grant.clone();
            let mut signed_off = false;
            match &op {
                Op::Review(review, seconds) => {
                    grant.record_review(&policy, *review, Duration::seconds(*seconds));
                    if *review == Review::ApprovedUnchanged && Duration::seconds(*seconds) < policy.rubber_stamp_below {
                        prop_assert_eq!(grant.evidence.counted, before.evidence.counted, "a rubber stamp counted");
                        prop_assert_eq!(grant.evidence.unchanged, before.evidence.unchanged);
                    } else {
                        prop_assert_eq!(grant.evidence.counted, before.evidence.counted + 1);
                    }
                }
                Op::Send(outcome) => {
                    grant.record_send();
                    if let Some(outcome) = outcome {
                        grant.record_outcome(*outcome);
                    }
                }
                Op::Advance(hours) => now += Duration::hours(*hours),
                Op::Propose => {
                    let assessed = grant.assess(&policy, &baseline, now);
                    match grant.propose(&policy, &baseline, now) {
                        Ok(proposal) => {
                            prop_assert_eq!(Ok(proposal.to), assessed);
                            prop_assert_eq!(Some(proposal.to), before.level.up(), "a proposal skips a level");
                            prop_assert!(proposal.evidence.counted >= policy.min_decisions[usize::from(before.level.number())]);
                        }
                        Err(_) => prop_assert_eq!(&grant, &before, "a refused proposal changed the grant"),
                    }
                }
                Op::SignOff => {
                    signed_off = grant.sign_off("reviewer", now).is_ok();
                    if signed_off {
                        prop_assert!(!before.killed);
                        let proposal = before.proposal.as_ref().expect("signed off without a proposal");
                        prop_assert_eq!(proposal.from, before.level);
                    }
                }
                Op::Incident(incident) => {
                    grant.incident(*incident, now);
                }
                Op::CheckThresholds => {
                    if grant.check_thresholds(&policy, now).is_some() {
                        prop_assert_eq!(grant.level, before.level.down());
                    }
                }
                Op::NewVersion => {
                    version += 1;
                    let demoted = grant.version_changed("model-1", &format!("prompt-{version}"), now);
                    prop_assert!(demoted.is_some());
                    prop_assert_eq!(grant.level, before.level.down(), "a new prompt did not cost a level");
                }
                Op::SameVersion => {
                    let same = grant.prompt_version.clone();
                    prop_assert!(grant.version_changed("model-1", &same, now).is_none());
                }
                Op::Demote => {
                    grant.demote("manager", now);
                    prop_assert_eq!(grant.level, before.level.down());
                }
                Op::Kill => {
                    grant.kill("ops", now);
                }
                Op::Revive => {
                    if grant.revive("ops", now).is_ok() {
                        prop_assert!(before.killed);
                        prop_assert!(grant.level <= Level::Suggest);
                    }
                }
            }

            // Promotion: only by sign-off, one level, never while killed.
            if grant.level > before.level {
                prop_assert!(signed_off, "{:?} raised {} to {}", op, before.level, grant.level);
                prop_assert_eq!(Some(grant.level), before.level.up());
            }
            if let Op::Incident(Incident::Critical) = op {
                prop_assert!(grant.level <= Level::Suggest.min(before.level));
            }
            if let Op::Incident(Incident::ThresholdBreach) = op {
                prop_assert_eq!(grant.level, before.level.down());
            }
            // A change of level starts the evidence afresh and withdraws any proposal.
            if grant.level != before.level {
                prop_assert_eq!(grant.evidence.counted, 0);
                prop_assert_eq!(grant.evidence.sends, 0);
                prop_assert!(grant.proposal.is_none());
                prop_assert_eq!(grant.since, now);
            }
            // Killed means nothing reaches a person, whatever the level underneath.
            if grant.killed {
                prop_assert_eq!(grant.effective_level(), Level::Shadow);
                prop_assert_eq!(grant.authority(&policy, &budget, now, 0), Authority::LogOnly);
                prop_assert!(grant.proposal.is_none());
            }
            if grant.level > highest {
                prop_assert_eq!(Some(grant.level), highest.up(), "climbed past an unearned level");
            }
            highest = highest.max(grant.level);
        }
    }
}

#[test]
fn random_histories_do_reach_the_top_so_the_property_is_not_vacuous() {
    // The same small policy: three read approvals and an hour are enough at L1.
    let policy = policy();
    let baseline = Baseline::default();
    let mut now = start();
    let mut grant = Grant::new(now, "model-1", "prompt-1");
    while let Some(next) = grant.level.up() {
        for _ in 0..5 {
            grant.record_review(&policy, Review::ApprovedUnchanged, Duration::seconds(30));
        }
        now += Duration::hours(5);
        grant.propose(&policy, &baseline, now).expect("proposal");
        grant.sign_off("reviewer", now).expect("sign-off");
        assert_eq!(grant.level, next);
    }
    assert_eq!(grant.level, Level::Budgeted);
}
