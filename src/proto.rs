//! Generated `cpis.v1` messages and service stubs, and the descriptor set
//! served by reflection. Nothing hand-written lives here but the redacted
//! `Debug` of the messages that carry personal data, in `redacted`.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("cpis.v1");

mod redacted;

/// Encoded `FileDescriptorSet` of the `cpis.v1` protos, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("cpis_v1_descriptor");
