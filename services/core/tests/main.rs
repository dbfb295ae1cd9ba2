//! The crate's integration tests as one binary: one link, and one pool of test threads
//! across every area (each module below is one area).

mod bus;
mod deployment;
mod keys;
mod storage;
mod telemetry;
