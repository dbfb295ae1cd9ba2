//! The crate's integration tests as one binary: one link, and one pool of test threads
//! across every area (each module below is one area).

mod autonomy_properties;
mod embeddings;
mod generate;
mod scoring;
mod support;
mod vector_store;
