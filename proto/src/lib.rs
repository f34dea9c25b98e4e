//! DataGuardian wire contract (`dataguardian.v1`): generated messages, clients and servers, plus the encoded
//! file descriptor set served by gRPC reflection. Generated types stay at the edges of the binaries.

/// Generated code for `dataguardian.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("dataguardian.v1");
}

/// Encoded `FileDescriptorSet` of every DataGuardian proto file (for server reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dataguardian_descriptor.bin"));

/// Agent protocol version this build speaks. Bumped only for incompatible changes; additions are
/// backwards compatible and keep the number.
pub const AGENT_PROTOCOL_VERSION: u32 = 1;
