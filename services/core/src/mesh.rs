//! The registry of the mesh: every place that names a service (`aida`, settings defaults,
//! the edge's routing, certificates) reads it here, so adding a service is one entry.

use crate::bus::{ANALYTICS_STREAM, COMMS_STREAM, DEALS_STREAM, LEADS_STREAM};

/// One service of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshService {
    /// `aida serve <name>`, its database file, its certificate (`spiffe://aida/<name>`),
    /// its in-process registration and its replica set at the edge.
    pub name: &'static str,
    /// What people call it (the `aida up` banner).
    pub title: &'static str,
    /// The gRPC services its server hosts: the edge routes them to its replicas.
    pub grpc_services: &'static [&'static str],
    /// Its port unless the settings say otherwise.
    pub default_port: u16,
    /// Its `/metrics` port under `aida serve` unless `telemetry.metrics_port` says otherwise.
    pub metrics_port: u16,
    /// The stream its events are published to.
    pub stream: &'static str,
}

pub const LEADS: MeshService = MeshService {
    name: "leads",
    title: "LeadService",
    grpc_services: &["aida.leads.v1.LeadService"],
    default_port: 50051,
    metrics_port: 9451,
    stream: LEADS_STREAM,
};

pub const DEALS: MeshService = MeshService {
    name: "deals",
    title: "DealService",
    grpc_services: &["aida.deals.v1.DealService"],
    default_port: 50052,
    metrics_port: 9452,
    stream: DEALS_STREAM,
};

pub const COMMS: MeshService = MeshService {
    name: "comms",
    title: "CommsService",
    grpc_services: &[
        "aida.comms.v1.CommsService",
        "aida.comms.v1.TrackingService",
        "aida.ai.v1.AutonomyService",
    ],
    default_port: 50053,
    metrics_port: 9453,
    stream: COMMS_STREAM,
};

pub const ANALYTICS: MeshService = MeshService {
    name: "analytics",
    title: "AnalyticsService",
    grpc_services: &[
        "aida.analytics.v1.AnalyticsService",
        "aida.audit.v1.AuditService",
    ],
    default_port: 50054,
    metrics_port: 9454,
    stream: ANALYTICS_STREAM,
};

/// Every service, in start order.
pub const SERVICES: [MeshService; 4] = [LEADS, DEALS, COMMS, ANALYTICS];

/// The edge's identity: it has a certificate, but no database and no stream.
pub const EDGE: &str = "edge";

/// Every identity of the mesh that gets a certificate.
pub const IDENTITIES: [&str; 5] = [LEADS.name, DEALS.name, COMMS.name, ANALYTICS.name, EDGE];

/// The service named `name`.
pub fn named(name: &str) -> Option<&'static MeshService> {
    SERVICES.iter().find(|service| service.name == name)
}

/// The service whose server hosts the gRPC service `grpc_service`.
pub fn hosting(grpc_service: &str) -> Option<&'static MeshService> {
    SERVICES
        .iter()
        .find(|service| service.grpc_services.contains(&grpc_service))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_grpc_service_has_one_host_and_names_are_unique() {
        let mut names: Vec<&str> = IDENTITIES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), IDENTITIES.len());
        assert_eq!(hosting("aida.ai.v1.AutonomyService"), Some(&COMMS));
        assert_eq!(
            hosting("aida.leads.v1.LeadService").map(|s| s.name),
            Some("leads")
        );
        assert_eq!(hosting("aida.billing.v1.Billing"), None);
        assert_eq!(named("deals").map(|s| s.default_port), Some(50052));
    }
}
