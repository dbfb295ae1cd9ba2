//! The crate's integration tests as one binary: one link, and one pool of test threads
//! across every area (each module below is one area).

mod at_rest;
mod behaviour;
mod nats_outage;
mod scoring;
mod search;
mod support;
