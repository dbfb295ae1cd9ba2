//! The crate's integration tests as one binary: one link, and one pool of test threads
//! across every area (each module below is one area). The edge's HTTP tests, which start a
//! whole mesh too, live with the edge (`edge-gateway/tests`).

mod analytics_restart;
mod cli;
mod full_loop;
mod mtls;
mod observability;
mod replicas;
