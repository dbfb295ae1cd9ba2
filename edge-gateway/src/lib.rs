//! The edge gateway: the one door for clients that do not speak gRPC.

pub mod routes;
pub mod template;
pub mod transcode;
