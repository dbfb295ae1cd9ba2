//! The AIDA-CRM contracts: every message, client and server generated from `proto/`,
//! and the file descriptor set they were generated from.
//!
//! Generated types stay at the gRPC boundary: services convert them to their own domain
//! types in one adapter module each.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/aida_protos.rs"));

/// The encoded `google.protobuf.FileDescriptorSet` of every file under `proto/` and its
/// imports, with custom options (such as `google.api.http`) preserved. Used for gRPC server
/// reflection, REST transcoding and OpenAPI generation.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/aida_descriptor.bin"));
