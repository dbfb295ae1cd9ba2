//! Shared test helpers.

/// The Chroma test server (shared with the other crates' tests).
pub use aida_core::testing::chroma as chroma_server;
