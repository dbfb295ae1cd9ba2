//! Role-based access: which roles may call which RPC. The edge checks it before calling a
//! service and every service checks it again. A method missing from the table is denied.
//!
//! Resource-level rules live with the resources: a caller whose only role is `sales_rep`
//! sees and changes only the leads and deals it owns, and a `viewer` never sees e-mail
//! addresses or phone numbers (see [`Access`]).

use crate::Error;
use crate::auth::AuthContext;

/// Everyone with a token.
const ALL: &[&str] = &[
    "admin",
    "manager",
    "sales_rep",
    "analyst",
    "viewer",
    "service",
];
/// Those who work leads and deals.
const SELLERS: &[&str] = &["admin", "manager", "sales_rep", "service"];
/// Those who configure the tenant.
const MANAGERS: &[&str] = &["admin", "manager"];
/// Those who read communications (addresses and bodies).
const COMMS_READERS: &[&str] = &["admin", "manager", "sales_rep", "analyst", "service"];
/// Those who read reports.
const REPORT_READERS: &[&str] = &[
    "admin",
    "manager",
    "sales_rep",
    "analyst",
    "viewer",
    "service",
];
/// Those who run the platform: blue-green switches change every tenant's routing, so no
/// tenant role may.
const OPERATORS: &[&str] = &["operator"];
/// Those who define alert rules.
const ALERT_WRITERS: &[&str] = &["admin", "manager", "analyst"];

/// (fully qualified method, roles allowed). `None` for roles means public (no token).
pub const TABLE: &[(&str, Option<&[&str]>)] = &[
    ("aida.leads.v1.LeadService/CaptureLead", Some(SELLERS)),
    ("aida.leads.v1.LeadService/GetLead", Some(ALL)),
    ("aida.leads.v1.LeadService/GetLeadScore", Some(ALL)),
    ("aida.leads.v1.LeadService/ListLeads", Some(ALL)),
    ("aida.leads.v1.LeadService/UpdateLead", Some(SELLERS)),
    ("aida.leads.v1.LeadService/QualifyLead", Some(SELLERS)),
    ("aida.leads.v1.LeadService/RejectLead", Some(SELLERS)),
    ("aida.leads.v1.LeadService/DeleteLead", Some(MANAGERS)),
    ("aida.leads.v1.LeadService/SearchLeads", Some(ALL)),
    ("aida.leads.v1.LeadService/FindDuplicateLeads", Some(ALL)),
    ("aida.leads.v1.LeadService/MergeLeads", Some(SELLERS)),
    ("aida.deals.v1.DealService/CreateDeal", Some(SELLERS)),
    ("aida.deals.v1.DealService/GetDeal", Some(ALL)),
    ("aida.deals.v1.DealService/ListDeals", Some(ALL)),
    ("aida.deals.v1.DealService/UpdateDeal", Some(SELLERS)),
    ("aida.deals.v1.DealService/ProgressDeal", Some(SELLERS)),
    ("aida.deals.v1.DealService/WinDeal", Some(SELLERS)),
    ("aida.deals.v1.DealService/LoseDeal", Some(SELLERS)),
    ("aida.deals.v1.DealService/WatchDeals", Some(ALL)),
    ("aida.deals.v1.DealService/CreatePipeline", Some(MANAGERS)),
    ("aida.deals.v1.DealService/GetPipeline", Some(ALL)),
    ("aida.deals.v1.DealService/ListPipelines", Some(ALL)),
    ("aida.deals.v1.DealService/UpdatePipeline", Some(MANAGERS)),
    ("aida.deals.v1.DealService/DeletePipeline", Some(MANAGERS)),
    ("aida.comms.v1.CommsService/CreateTemplate", Some(MANAGERS)),
    (
        "aida.comms.v1.CommsService/GetTemplate",
        Some(COMMS_READERS),
    ),
    (
        "aida.comms.v1.CommsService/ListTemplates",
        Some(COMMS_READERS),
    ),
    ("aida.comms.v1.CommsService/UpdateTemplate", Some(MANAGERS)),
    ("aida.comms.v1.CommsService/DeleteTemplate", Some(MANAGERS)),
    ("aida.comms.v1.CommsService/SendMessage", Some(SELLERS)),
    ("aida.comms.v1.CommsService/GetMessage", Some(COMMS_READERS)),
    (
        "aida.comms.v1.CommsService/ListMessages",
        Some(COMMS_READERS),
    ),
    ("aida.comms.v1.CommsService/RecordReply", Some(SELLERS)),
    ("aida.comms.v1.CommsService/AddSuppression", Some(SELLERS)),
    (
        "aida.comms.v1.CommsService/ListSuppressions",
        Some(MANAGERS),
    ),
    (
        "aida.comms.v1.CommsService/DeleteSuppression",
        Some(&["admin"]),
    ),
    ("aida.comms.v1.CommsService/RecordConsent", Some(SELLERS)),
    (
        "aida.comms.v1.CommsService/ListConsents",
        Some(COMMS_READERS),
    ),
    ("aida.comms.v1.CommsService/GenerateMessage", Some(SELLERS)),
    ("aida.comms.v1.CommsService/GetDraft", Some(COMMS_READERS)),
    ("aida.comms.v1.CommsService/DiscardDraft", Some(SELLERS)),
    ("aida.comms.v1.CommsService/ListDrafts", Some(COMMS_READERS)),
    ("aida.comms.v1.CommsService/VetoDraft", Some(SELLERS)),
    (
        "aida.release.v1.ReleaseService/SwitchColor",
        Some(OPERATORS),
    ),
    (
        "aida.release.v1.ReleaseService/GetReleaseStatus",
        Some(OPERATORS),
    ),
    ("aida.ai.v1.AutonomyService/GetAutonomy", Some(ALL)),
    ("aida.ai.v1.AutonomyService/ListAutonomy", Some(ALL)),
    ("aida.ai.v1.AutonomyService/ListDecisions", Some(ALL)),
    ("aida.ai.v1.AutonomyService/ListTransitions", Some(ALL)),
    ("aida.ai.v1.AutonomyService/RecordReview", Some(SELLERS)),
    ("aida.ai.v1.AutonomyService/RecordOutcome", Some(SELLERS)),
    ("aida.ai.v1.AutonomyService/ReportIncident", Some(SELLERS)),
    // Anyone who works with the agents may stop one; only managers grant autonomy back.
    ("aida.ai.v1.AutonomyService/KillAutonomy", Some(SELLERS)),
    (
        "aida.ai.v1.AutonomyService/SignOffPromotion",
        Some(MANAGERS),
    ),
    ("aida.ai.v1.AutonomyService/DemoteAutonomy", Some(MANAGERS)),
    ("aida.ai.v1.AutonomyService/ReviveAutonomy", Some(MANAGERS)),
    ("aida.comms.v1.TrackingService/TrackOpen", None),
    ("aida.comms.v1.TrackingService/TrackClick", None),
    ("aida.comms.v1.TrackingService/Unsubscribe", None),
    (
        "aida.analytics.v1.AnalyticsService/GetFunnel",
        Some(REPORT_READERS),
    ),
    (
        "aida.analytics.v1.AnalyticsService/GetPipeline",
        Some(REPORT_READERS),
    ),
    (
        "aida.analytics.v1.AnalyticsService/GetWinRate",
        Some(REPORT_READERS),
    ),
    (
        "aida.analytics.v1.AnalyticsService/GetSalesVelocity",
        Some(REPORT_READERS),
    ),
    (
        "aida.analytics.v1.AnalyticsService/GetCycleTime",
        Some(REPORT_READERS),
    ),
    (
        "aida.analytics.v1.AnalyticsService/GetEngagement",
        Some(REPORT_READERS),
    ),
    (
        "aida.analytics.v1.AnalyticsService/ListAlerts",
        Some(REPORT_READERS),
    ),
    (
        "aida.analytics.v1.AnalyticsService/CreateAlertRule",
        Some(ALERT_WRITERS),
    ),
    (
        "aida.analytics.v1.AnalyticsService/ListAlertRules",
        Some(REPORT_READERS),
    ),
    (
        "aida.analytics.v1.AnalyticsService/DeleteAlertRule",
        Some(ALERT_WRITERS),
    ),
    // A person's whole record, across services: the tenant's admins only.
    (
        "aida.privacy.v1.PrivacyService/ExportSubjectData",
        Some(&["admin"]),
    ),
    // The audit log holds every user's actions: only the tenant's admins read it.
    (
        "aida.audit.v1.AuditService/ListAuditRecords",
        Some(&["admin"]),
    ),
];

/// What the table says about `method` (`package.Service/Method`, with or without a leading
/// slash).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// No token needed.
    Public,
    /// A token with one of these roles.
    Roles(&'static [&'static str]),
    /// Not in the table: denied.
    Unknown,
}

pub fn rule(method: &str) -> Rule {
    let method = method.trim_start_matches('/');
    match TABLE.iter().find(|(name, _)| *name == method) {
        Some((_, None)) => Rule::Public,
        Some((_, Some(roles))) => Rule::Roles(roles),
        None => Rule::Unknown,
    }
}

/// True when a caller with `roles` may call `method`.
pub fn allowed(method: &str, roles: &[String]) -> bool {
    match rule(method) {
        Rule::Public => true,
        Rule::Roles(allowed) => roles.iter().any(|role| allowed.contains(&role.as_str())),
        Rule::Unknown => false,
    }
}

/// Contact data: blanked for callers with [`Access::redact_contact`].
pub const CONTACT_FIELDS: &[&str] = &["email", "phone"];

/// Resource-level access of a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// `Some(subject)`: only resources owned by this subject are visible and changeable.
    pub owner_only: Option<String>,
    /// E-mail addresses and phone numbers are blanked in what the caller reads.
    pub redact_contact: bool,
}

impl Access {
    pub fn of(context: &AuthContext) -> Self {
        let has = |role: &str| context.has_role(role);
        let broad = has("admin") || has("manager") || has("service") || has("analyst");
        Self {
            owner_only: (!broad && has("sales_rep")).then(|| context.subject.clone()),
            redact_contact: !broad && !has("sales_rep"),
        }
    }

    /// Fields (proto names) the caller may not read, and so may not filter on, order by or
    /// otherwise probe.
    pub fn hidden_fields(&self) -> &'static [&'static str] {
        if self.redact_contact {
            CONTACT_FIELDS
        } else {
            &[]
        }
    }

    /// Whether the caller may see or change a resource owned by `owner`.
    pub fn may_touch(&self, owner: &str) -> bool {
        self.owner_only
            .as_deref()
            .is_none_or(|subject| subject == owner)
    }

    /// `id`, a `resource` owned by `owner`, as the caller may reach it: another owner's
    /// resource does not exist for a caller limited to its own (NOT_FOUND, like another
    /// tenant's), so its existence is not disclosed.
    pub fn reach(
        &self,
        resource: &'static str,
        id: impl ToString,
        owner: &str,
    ) -> Result<(), Error> {
        if self.may_touch(owner) {
            Ok(())
        } else {
            Err(Error::not_found(resource, id.to_string()))
        }
    }

    /// The owner of a new resource (`plural`, as in "a sales rep captures leads"): a caller
    /// limited to its own resources creates them for itself (an empty owner becomes the
    /// caller) and may not create them for anyone else.
    pub fn claim(&self, owner: &mut String, verb: &str, plural: &str) -> Result<(), Error> {
        let Some(subject) = &self.owner_only else {
            return Ok(());
        };
        if owner.is_empty() {
            owner.clone_from(subject);
            Ok(())
        } else if owner != subject {
            Err(Error::PermissionDenied(format!(
                "a sales rep {verb} {plural} for themselves"
            )))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn unknown_methods_are_denied_and_tracking_is_public() {
        assert!(!allowed(
            "/aida.leads.v1.LeadService/DropTables",
            &roles(&["admin"])
        ));
        assert!(allowed("/aida.comms.v1.TrackingService/TrackOpen", &[]));
        assert!(!allowed("aida.leads.v1.LeadService/GetLead", &[]));
    }

    #[test]
    fn roles_follow_the_table() {
        assert!(allowed(
            "aida.leads.v1.LeadService/CaptureLead",
            &roles(&["sales_rep"])
        ));
        assert!(!allowed(
            "aida.leads.v1.LeadService/CaptureLead",
            &roles(&["viewer"])
        ));
        assert!(!allowed(
            "aida.leads.v1.LeadService/DeleteLead",
            &roles(&["sales_rep"])
        ));
        assert!(allowed(
            "aida.analytics.v1.AnalyticsService/GetFunnel",
            &roles(&["viewer"])
        ));
        assert!(!allowed(
            "aida.comms.v1.CommsService/ListMessages",
            &roles(&["viewer"])
        ));
    }

    #[test]
    fn a_sales_rep_claims_new_resources_and_cannot_reach_anothers() {
        let context =
            |names: &[&str]| AuthContext::system("t", "rep-1", "r", None).with_roles(names);
        let rep = Access::of(&context(&["sales_rep"]));
        let mut owner = String::new();
        rep.claim(&mut owner, "captures", "leads").expect("claim");
        assert_eq!(owner, "rep-1");
        let mut other = "rep-2".to_owned();
        let refused = rep.claim(&mut other, "captures", "leads");
        assert!(
            matches!(&refused, Err(Error::PermissionDenied(m)) if m == "a sales rep captures leads for themselves"),
            "{refused:?}"
        );
        assert!(rep.reach("lead", 7, "rep-1").is_ok());
        assert!(matches!(
            rep.reach("lead", 7, "rep-2"),
            Err(Error::NotFound { .. })
        ));
        let manager = Access::of(&context(&["manager"]));
        let mut kept = "rep-2".to_owned();
        manager
            .claim(&mut kept, "creates", "deals")
            .expect("managers assign");
        assert_eq!(kept, "rep-2");
        assert!(manager.reach("deal", 7, "rep-2").is_ok());
    }

    #[test]
    fn sales_reps_see_their_own_and_viewers_see_no_contact_data() {
        let context =
            |names: &[&str]| AuthContext::system("t", "rep-1", "r", None).with_roles(names);
        let rep = Access::of(&context(&["sales_rep"]));
        assert_eq!(rep.owner_only.as_deref(), Some("rep-1"));
        assert!(rep.may_touch("rep-1") && !rep.may_touch("rep-2"));
        assert!(!rep.redact_contact);
        let viewer = Access::of(&context(&["viewer"]));
        assert!(viewer.redact_contact && viewer.owner_only.is_none());
        let manager = Access::of(&context(&["manager", "sales_rep"]));
        assert!(manager.owner_only.is_none() && !manager.redact_contact);
    }
}
