//! The crate's integration tests as one binary: one link, and one pool of test threads
//! across every area (each module below is one area).

mod analytics_restart;
mod cli;
mod edge;
mod full_loop;
mod mtls;
mod observability;
mod replicas;
