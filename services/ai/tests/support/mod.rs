//! Shared test helpers.

pub mod chroma_server;
