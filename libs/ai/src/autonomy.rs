//! Earned autonomy: how much an AI agent may do on its own, per (agent, action, segment).
//!
//! Levels, from watching to acting:
//!
//! | level | the agent… |
//! |---|---|
//! | L0 shadow | decides and logs; nothing reaches a person |
//! | L1 suggest | suggests; a person does the work |
//! | L2 draft | drafts; a person approves, edits or rejects before anything is sent |
//! | L3 veto window | acts after a window in which a person may veto |
//! | L4 budgeted | acts at once, within a daily volume and outside quiet hours |
//!
//! New keys start at L1. Promotion is slow and earned: one level at a time, only when the
//! evidence gathered *at the current level* meets the [`Policy`] (enough decisions, enough
//! time, approve-without-edit rate, business outcomes no worse than people's, no critical
//! incident), and only once a person signs the proposal off. Demotion is fast and automatic:
//! a critical incident drops to L1, a threshold breach or a model/prompt version change drops
//! one level, the kill switch stops everything. Every change of level starts the evidence
//! afresh. Approvals given faster than a person can read (rubber stamps) are not evidence.
//!
//! This module is the state machine only: pure, clock passed in, no storage.

use std::fmt;

use chrono::{DateTime, Duration, Timelike, Utc};
use serde::{Deserialize, Serialize};

/// How far an agent may go on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Level {
    Shadow = 0,
    Suggest = 1,
    Draft = 2,
    VetoWindow = 3,
    Budgeted = 4,
}

impl Level {
    pub const ALL: [Level; 5] = [
        Level::Shadow,
        Level::Suggest,
        Level::Draft,
        Level::VetoWindow,
        Level::Budgeted,
    ];

    pub fn number(self) -> u8 {
        self as u8
    }

    pub fn from_number(number: u8) -> Option<Level> {
        Self::ALL.get(usize::from(number)).copied()
    }

    /// The level above, if any.
    pub fn up(self) -> Option<Level> {
        Self::from_number(self.number() + 1)
    }

    /// The level below (L0 stays L0).
    pub fn down(self) -> Level {
        self.number()
            .checked_sub(1)
            .and_then(Self::from_number)
            .unwrap_or(Level::Shadow)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}", self.number())
    }
}

/// What a person did with one AI decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Review {
    ApprovedUnchanged,
    Edited,
    Rejected,
    Vetoed,
    Undone,
}

/// What happened afterwards, in the world, to what the agent sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BusinessOutcome {
    Replied,
    Unsubscribed,
    Bounced,
}

/// Why autonomy is taken away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Incident {
    /// Something that must never happen, e.g. an attempt to contact a suppressed person:
    /// back to L1.
    Critical,
    /// An outcome rate crossed its limit (unsubscribes, bounces): one level down.
    ThresholdBreach,
}

/// The rules of promotion and demotion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Counted decisions needed at a level before promotion from it, indexed by level.
    pub min_decisions: [u32; 4],
    /// Time needed at a level before promotion from it, indexed by level.
    pub min_time_at_level: [Duration; 4],
    /// Approve-without-edit rate needed to leave a level, indexed by level: 95 % to reach
    /// L3, 99 % to reach L4.
    pub min_unchanged_rate: [f64; 4],
    /// A review faster than this was not a reading: it is not evidence.
    pub rubber_stamp_below: Duration,
    /// How far the agent's reply rate may fall below people's (fraction of theirs).
    pub reply_rate_tolerance: f64,
    /// Rates above these are a threshold breach (checked by [`Grant::check_thresholds`]).
    pub max_unsubscribe_rate: f64,
    pub max_bounce_rate: f64,
    /// Sends needed before the rate thresholds are judged.
    pub min_sends_for_thresholds: u32,
    /// How long a person has to veto at L3.
    pub veto_window: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            min_decisions: [50, 100, 200, 500],
            min_time_at_level: [
                Duration::days(3),
                Duration::days(7),
                Duration::days(14),
                Duration::days(30),
            ],
            min_unchanged_rate: [0.80, 0.90, 0.95, 0.99],
            rubber_stamp_below: Duration::seconds(3),
            reply_rate_tolerance: 0.10,
            max_unsubscribe_rate: 0.02,
            max_bounce_rate: 0.05,
            min_sends_for_thresholds: 50,
            veto_window: Duration::hours(4),
        }
    }
}

/// The budget of L4: how much, and when not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub daily_volume: u32,
    /// Quiet hours in UTC, `[start, end)`; wraps past midnight when start > end.
    pub quiet_start_hour: u32,
    pub quiet_end_hour: u32,
}

impl Budget {
    pub fn is_quiet(&self, at: DateTime<Utc>) -> bool {
        let hour = at.hour();
        if self.quiet_start_hour == self.quiet_end_hour {
            false
        } else if self.quiet_start_hour < self.quiet_end_hour {
            (self.quiet_start_hour..self.quiet_end_hour).contains(&hour)
        } else {
            hour >= self.quiet_start_hour || hour < self.quiet_end_hour
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            daily_volume: 100,
            quiet_start_hour: 20,
            quiet_end_hour: 7,
        }
    }
}

/// What the agent may do right now with one action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// Decide and log only (L0, or killed).
    LogOnly,
    /// Offer a suggestion to a person (L1).
    Suggest,
    /// Prepare a draft that waits for approval (L2, or L4 outside its budget).
    DraftForApproval,
    /// Act at `at` unless vetoed before (L3).
    ActAfter { at: DateTime<Utc> },
    /// Act now (L4 within budget).
    Act,
}

/// What the evidence at the current level adds up to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Reviews that count (not rubber stamps).
    pub counted: u32,
    pub unchanged: u32,
    pub edited: u32,
    pub rejected: u32,
    pub vetoed: u32,
    pub undone: u32,
    /// Reviews too fast to be evidence.
    pub rubber_stamps: u32,
    /// Messages the agent sent at this level, and what came of them.
    pub sends: u32,
    pub replies: u32,
    pub unsubscribes: u32,
    pub bounces: u32,
}

impl Evidence {
    pub fn unchanged_rate(&self) -> f64 {
        ratio(self.unchanged, self.counted)
    }

    pub fn reply_rate(&self) -> f64 {
        ratio(self.replies, self.sends)
    }

    pub fn unsubscribe_rate(&self) -> f64 {
        ratio(self.unsubscribes, self.sends)
    }

    pub fn bounce_rate(&self) -> f64 {
        ratio(self.bounces, self.sends)
    }
}

fn ratio(part: u32, whole: u32) -> f64 {
    if whole == 0 {
        0.0
    } else {
        f64::from(part) / f64::from(whole)
    }
}

/// People's own results on the same action and segment: the bar the agent must meet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub reply_rate: f64,
    pub unsubscribe_rate: f64,
    pub bounce_rate: f64,
}

/// A promotion the evidence supports, waiting for a person's sign-off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub from: Level,
    pub to: Level,
    pub proposed_at: DateTime<Utc>,
    pub evidence: Evidence,
}

/// Why a promotion is not (yet) proposed; the first unmet condition.
#[derive(Debug, Clone, PartialEq)]
pub enum NotYet {
    Killed,
    AtTop,
    AlreadyProposed,
    TooFewDecisions { have: u32, need: u32 },
    TooSoon { remaining: Duration },
    UnchangedRateTooLow { have: f64, need: f64 },
    OutcomesWorseThanPeople,
}

/// Why a change of level was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("there is no promotion proposal to sign off")]
    NoProposal,
    #[error("the proposal is from {proposed} but the level is now {current}")]
    Stale { proposed: Level, current: Level },
    #[error("a promotion needs a person's sign-off: the approver may not be empty")]
    NoApprover,
    #[error("autonomy is switched off: revive it first")]
    Killed,
    #[error("autonomy is not switched off")]
    NotKilled,
}

/// A change of level, as it is announced and audited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub from: Level,
    pub to: Level,
    pub at: DateTime<Utc>,
    pub cause: Cause,
}

/// What moved the level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cause {
    Promoted { approver: String },
    CriticalIncident,
    ThresholdBreach,
    VersionChanged { model: String, prompt: String },
    Demoted { by: String },
    Killed { by: String },
    Revived { by: String },
}

/// The autonomy of one (agent, action, segment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub level: Level,
    pub since: DateTime<Utc>,
    pub model_version: String,
    pub prompt_version: String,
    pub evidence: Evidence,
    pub proposal: Option<Proposal>,
    pub killed: bool,
}

impl Grant {
    /// A new key: L1, suggesting only.
    pub fn new(now: DateTime<Utc>, model_version: &str, prompt_version: &str) -> Self {
        Self {
            level: Level::Suggest,
            since: now,
            model_version: model_version.to_owned(),
            prompt_version: prompt_version.to_owned(),
            evidence: Evidence::default(),
            proposal: None,
            killed: false,
        }
    }

    /// The level that applies now: L0 while killed.
    pub fn effective_level(&self) -> Level {
        if self.killed {
            Level::Shadow
        } else {
            self.level
        }
    }

    /// What the agent may do at `now`, having acted `used_today` times today.
    pub fn authority(
        &self,
        policy: &Policy,
        budget: &Budget,
        now: DateTime<Utc>,
        used_today: u32,
    ) -> Authority {
        match self.effective_level() {
            Level::Shadow => Authority::LogOnly,
            Level::Suggest => Authority::Suggest,
            Level::Draft => Authority::DraftForApproval,
            Level::VetoWindow => Authority::ActAfter {
                at: now + policy.veto_window,
            },
            Level::Budgeted => {
                if used_today < budget.daily_volume && !budget.is_quiet(now) {
                    Authority::Act
                } else {
                    Authority::DraftForApproval
                }
            }
        }
    }

    /// Records a person's review of one decision, `reviewed_in` after it was shown.
    pub fn record_review(&mut self, policy: &Policy, review: Review, reviewed_in: Duration) {
        let evidence = &mut self.evidence;
        // A rubber-stamped approval says nothing about quality; a fast rejection or veto
        // still says something is wrong, so only approvals are discounted.
        if review == Review::ApprovedUnchanged && reviewed_in < policy.rubber_stamp_below {
            evidence.rubber_stamps += 1;
            return;
        }
        evidence.counted += 1;
        match review {
            Review::ApprovedUnchanged => evidence.unchanged += 1,
            Review::Edited => evidence.edited += 1,
            Review::Rejected => evidence.rejected += 1,
            Review::Vetoed => evidence.vetoed += 1,
            Review::Undone => evidence.undone += 1,
        }
    }

    /// Records that the agent sent one message at this level.
    pub fn record_send(&mut self) {
        self.evidence.sends += 1;
    }

    /// Records what came of a sent message.
    pub fn record_outcome(&mut self, outcome: BusinessOutcome) {
        match outcome {
            BusinessOutcome::Replied => self.evidence.replies += 1,
            BusinessOutcome::Unsubscribed => self.evidence.unsubscribes += 1,
            BusinessOutcome::Bounced => self.evidence.bounces += 1,
        }
    }

    /// Whether the evidence supports a promotion now, and why not.
    pub fn assess(
        &self,
        policy: &Policy,
        baseline: &Baseline,
        now: DateTime<Utc>,
    ) -> Result<Level, NotYet> {
        if self.killed {
            return Err(NotYet::Killed);
        }
        let to = self.level.up().ok_or(NotYet::AtTop)?;
        if self.proposal.is_some() {
            return Err(NotYet::AlreadyProposed);
        }
        let index = usize::from(self.level.number());
        // "No critical incident at this level" holds by construction: an incident resets
        // the level's evidence, so everything counted here came after the last one.
        let evidence = &self.evidence;
        let need = policy.min_decisions[index];
        if evidence.counted < need {
            return Err(NotYet::TooFewDecisions {
                have: evidence.counted,
                need,
            });
        }
        let elapsed = now - self.since;
        if elapsed < policy.min_time_at_level[index] {
            return Err(NotYet::TooSoon {
                remaining: policy.min_time_at_level[index] - elapsed,
            });
        }
        let need = policy.min_unchanged_rate[index];
        if evidence.unchanged_rate() < need {
            return Err(NotYet::UnchangedRateTooLow {
                have: evidence.unchanged_rate(),
                need,
            });
        }
        if evidence.sends > 0 {
            let worse = evidence.unsubscribe_rate() > baseline.unsubscribe_rate
                || evidence.bounce_rate() > baseline.bounce_rate
                || evidence.reply_rate()
                    < baseline.reply_rate * (1.0 - policy.reply_rate_tolerance);
            if worse {
                return Err(NotYet::OutcomesWorseThanPeople);
            }
        }
        Ok(to)
    }

    /// Proposes the promotion the evidence supports, if it does.
    pub fn propose(
        &mut self,
        policy: &Policy,
        baseline: &Baseline,
        now: DateTime<Utc>,
    ) -> Result<&Proposal, NotYet> {
        let to = self.assess(policy, baseline, now)?;
        Ok(self.proposal.insert(Proposal {
            from: self.level,
            to,
            proposed_at: now,
            evidence: self.evidence.clone(),
        }))
    }

    /// A person signs the pending proposal off: one level up.
    pub fn sign_off(&mut self, approver: &str, now: DateTime<Utc>) -> Result<Transition, Refused> {
        if self.killed {
            return Err(Refused::Killed);
        }
        if approver.trim().is_empty() {
            return Err(Refused::NoApprover);
        }
        let proposal = self.proposal.take().ok_or(Refused::NoProposal)?;
        if proposal.from != self.level {
            return Err(Refused::Stale {
                proposed: proposal.from,
                current: self.level,
            });
        }
        Ok(self.move_to(
            proposal.to,
            now,
            Cause::Promoted {
                approver: approver.trim().to_owned(),
            },
        ))
    }

    /// Something went wrong; autonomy shrinks at once.
    pub fn incident(&mut self, incident: Incident, now: DateTime<Utc>) -> Transition {
        match incident {
            Incident::Critical => {
                self.move_to(self.level.min(Level::Suggest), now, Cause::CriticalIncident)
            }
            Incident::ThresholdBreach => {
                self.move_to(self.level.down(), now, Cause::ThresholdBreach)
            }
        }
    }

    /// Judges the outcome rates at this level; a breach demotes one level.
    pub fn check_thresholds(&mut self, policy: &Policy, now: DateTime<Utc>) -> Option<Transition> {
        let evidence = &self.evidence;
        if evidence.sends < policy.min_sends_for_thresholds {
            return None;
        }
        let breached = evidence.unsubscribe_rate() > policy.max_unsubscribe_rate
            || evidence.bounce_rate() > policy.max_bounce_rate;
        breached.then(|| self.incident(Incident::ThresholdBreach, now))
    }

    /// The model or the prompt changed: what was earned was earned by another agent.
    pub fn version_changed(
        &mut self,
        model: &str,
        prompt: &str,
        now: DateTime<Utc>,
    ) -> Option<Transition> {
        if model == self.model_version && prompt == self.prompt_version {
            return None;
        }
        self.model_version = model.to_owned();
        self.prompt_version = prompt.to_owned();
        Some(self.move_to(
            self.level.down(),
            now,
            Cause::VersionChanged {
                model: model.to_owned(),
                prompt: prompt.to_owned(),
            },
        ))
    }

    /// A person lowers the level by one.
    pub fn demote(&mut self, by: &str, now: DateTime<Utc>) -> Transition {
        self.move_to(self.level.down(), now, Cause::Demoted { by: by.to_owned() })
    }

    /// The kill switch: the agent only logs until a person revives it.
    pub fn kill(&mut self, by: &str, now: DateTime<Utc>) -> Transition {
        let from = self.effective_level();
        self.killed = true;
        self.proposal = None;
        Transition {
            from,
            to: Level::Shadow,
            at: now,
            cause: Cause::Killed { by: by.to_owned() },
        }
    }

    /// Back from the kill switch, at L1 with the evidence started afresh.
    pub fn revive(&mut self, by: &str, now: DateTime<Utc>) -> Result<Transition, Refused> {
        if !self.killed {
            return Err(Refused::NotKilled);
        }
        self.killed = false;
        let mut transition = self.move_to(
            self.level.min(Level::Suggest),
            now,
            Cause::Revived { by: by.to_owned() },
        );
        transition.from = Level::Shadow;
        Ok(transition)
    }

    fn move_to(&mut self, to: Level, now: DateTime<Utc>, cause: Cause) -> Transition {
        let from = self.level;
        self.level = to;
        self.since = now;
        self.evidence = Evidence::default();
        self.proposal = None;
        Transition {
            from,
            to,
            at: now,
            cause,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hours: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000, 0).expect("time") + Duration::hours(hours)
    }

    fn draft_grant() -> (Policy, Grant) {
        let policy = Policy::default();
        let mut grant = Grant::new(at(0), "kimi-k2", "first-touch-v1");
        grant.level = Level::Draft;
        (policy, grant)
    }

    #[test]
    fn two_hundred_read_approvals_at_l2_propose_l3_and_one_incident_sends_it_back_to_l1() {
        let (policy, mut grant) = draft_grant();
        for _ in 0..199 {
            grant.record_review(&policy, Review::ApprovedUnchanged, Duration::seconds(40));
        }
        let now = at(24 * 15);
        assert_eq!(
            grant.assess(&policy, &Baseline::default(), now),
            Err(NotYet::TooFewDecisions {
                have: 199,
                need: 200
            })
        );
        grant.record_review(&policy, Review::ApprovedUnchanged, Duration::seconds(40));
        let proposal = grant
            .propose(&policy, &Baseline::default(), now)
            .expect("the evidence supports L3")
            .clone();
        assert_eq!(
            (proposal.from, proposal.to),
            (Level::Draft, Level::VetoWindow)
        );
        assert_eq!(
            grant.level,
            Level::Draft,
            "a proposal alone changes nothing"
        );

        let transition = grant.incident(Incident::Critical, now);
        assert_eq!(
            (transition.from, transition.to),
            (Level::Draft, Level::Suggest)
        );
        assert_eq!(grant.proposal, None, "the incident withdrew the proposal");
        assert_eq!(grant.sign_off("maria", now), Err(Refused::NoProposal));
    }

    #[test]
    fn rubber_stamps_are_not_evidence() {
        let (policy, mut grant) = draft_grant();
        for _ in 0..500 {
            grant.record_review(
                &policy,
                Review::ApprovedUnchanged,
                Duration::milliseconds(400),
            );
        }
        assert_eq!(grant.evidence.counted, 0);
        assert_eq!(grant.evidence.rubber_stamps, 500);
        assert!(matches!(
            grant.assess(&policy, &Baseline::default(), at(24 * 30)),
            Err(NotYet::TooFewDecisions { have: 0, .. })
        ));
    }

    #[test]
    fn promotion_needs_time_a_high_unchanged_rate_and_outcomes_as_good_as_people() {
        let (policy, mut grant) = draft_grant();
        for index in 0..200 {
            let review = if index < 189 {
                Review::ApprovedUnchanged
            } else {
                Review::Edited
            };
            grant.record_review(&policy, review, Duration::seconds(30));
        }
        assert!(matches!(
            grant.assess(&policy, &Baseline::default(), at(24)),
            Err(NotYet::TooSoon { .. })
        ));
        // 189 of 200 is 94.5 %: L3 needs 95 %.
        assert!(matches!(
            grant.assess(&policy, &Baseline::default(), at(24 * 15)),
            Err(NotYet::UnchangedRateTooLow { .. })
        ));
        for _ in 0..20 {
            grant.record_review(&policy, Review::ApprovedUnchanged, Duration::seconds(30));
        }
        for index in 0..100 {
            grant.record_send();
            if index < 5 {
                grant.record_outcome(BusinessOutcome::Replied);
            }
        }
        let people = Baseline {
            reply_rate: 0.10,
            unsubscribe_rate: 0.01,
            bounce_rate: 0.02,
        };
        assert_eq!(
            grant.assess(&policy, &people, at(24 * 15)),
            Err(NotYet::OutcomesWorseThanPeople),
            "5 % replies against people's 10 %"
        );
        for _ in 0..5 {
            grant.record_outcome(BusinessOutcome::Replied);
        }
        assert_eq!(
            grant.assess(&policy, &people, at(24 * 15)),
            Ok(Level::VetoWindow)
        );
    }

    #[test]
    fn sign_off_promotes_one_level_and_starts_the_evidence_afresh() {
        let (policy, mut grant) = draft_grant();
        for _ in 0..200 {
            grant.record_review(&policy, Review::ApprovedUnchanged, Duration::seconds(30));
        }
        let now = at(24 * 15);
        grant
            .propose(&policy, &Baseline::default(), now)
            .expect("proposal");
        assert_eq!(grant.sign_off("  ", now), Err(Refused::NoApprover));
        let transition = grant.sign_off("maria", now).expect("signed off");
        assert_eq!(
            transition,
            Transition {
                from: Level::Draft,
                to: Level::VetoWindow,
                at: now,
                cause: Cause::Promoted {
                    approver: "maria".into()
                }
            }
        );
        assert_eq!(grant.evidence, Evidence::default());
        assert_eq!(grant.since, now);
    }

    #[test]
    fn a_new_model_or_prompt_costs_one_level() {
        let (_, mut grant) = draft_grant();
        assert_eq!(
            grant.version_changed("kimi-k2", "first-touch-v1", at(1)),
            None
        );
        let transition = grant
            .version_changed("kimi-k2", "first-touch-v2", at(1))
            .expect("demoted");
        assert_eq!(
            (transition.from, transition.to),
            (Level::Draft, Level::Suggest)
        );
        assert_eq!(grant.prompt_version, "first-touch-v2");
    }

    #[test]
    fn unsubscribes_above_the_limit_cost_one_level() {
        let (policy, mut grant) = draft_grant();
        for index in 0..60 {
            grant.record_send();
            if index < 3 {
                grant.record_outcome(BusinessOutcome::Unsubscribed);
            }
        }
        let transition = grant.check_thresholds(&policy, at(2)).expect("5 % > 2 %");
        assert_eq!(transition.to, Level::Suggest);
        assert_eq!(
            grant.check_thresholds(&policy, at(3)),
            None,
            "evidence restarted"
        );
    }

    #[test]
    fn the_kill_switch_stops_acting_until_a_person_revives_it_at_l1() {
        let (policy, mut grant) = draft_grant();
        grant.level = Level::Budgeted;
        let budget = Budget::default();
        let noon = at(0)
            .date_naive()
            .and_hms_opt(12, 0, 0)
            .expect("noon")
            .and_utc();
        assert_eq!(grant.authority(&policy, &budget, noon, 0), Authority::Act);
        grant.kill("ops", noon);
        assert_eq!(
            grant.authority(&policy, &budget, noon, 0),
            Authority::LogOnly
        );
        assert!(matches!(
            grant.propose(&policy, &Baseline::default(), noon),
            Err(NotYet::Killed)
        ));
        let transition = grant.revive("ops", noon).expect("revived");
        assert_eq!(
            (transition.from, transition.to),
            (Level::Shadow, Level::Suggest)
        );
        assert_eq!(
            grant.authority(&policy, &budget, noon, 0),
            Authority::Suggest
        );
        assert_eq!(grant.revive("ops", noon), Err(Refused::NotKilled));
    }

    #[test]
    fn l4_drafts_instead_of_acting_outside_its_budget() {
        let (policy, mut grant) = draft_grant();
        grant.level = Level::Budgeted;
        let budget = Budget {
            daily_volume: 10,
            quiet_start_hour: 20,
            quiet_end_hour: 7,
        };
        let day = at(0).date_naive();
        let noon = day.and_hms_opt(12, 0, 0).expect("time").and_utc();
        let night = day.and_hms_opt(23, 30, 0).expect("time").and_utc();
        let dawn = day.and_hms_opt(6, 59, 0).expect("time").and_utc();
        assert_eq!(grant.authority(&policy, &budget, noon, 9), Authority::Act);
        assert_eq!(
            grant.authority(&policy, &budget, noon, 10),
            Authority::DraftForApproval
        );
        assert_eq!(
            grant.authority(&policy, &budget, night, 0),
            Authority::DraftForApproval
        );
        assert_eq!(
            grant.authority(&policy, &budget, dawn, 0),
            Authority::DraftForApproval
        );
        grant.level = Level::VetoWindow;
        assert_eq!(
            grant.authority(&policy, &budget, noon, 0),
            Authority::ActAfter {
                at: noon + policy.veto_window
            }
        );
    }
}
