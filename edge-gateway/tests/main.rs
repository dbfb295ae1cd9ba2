//! The edge's integration tests as one binary: REST, gRPC passthrough, grpc-web, tracking
//! links and admission (authentication, RBAC, rate limits, body limits) against a whole
//! mesh started in process (`aida::Mesh`).

mod edge;
