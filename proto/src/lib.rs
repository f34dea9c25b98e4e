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
/// backwards compatible and keep the number. Both sides refuse a version they do not speak, with an error
/// naming both versions.
///
/// 2: `BackupTask.datasource_id` is required and `key_prefix` must be exactly the one the ids dictate; the
/// controller ends attempts its agent's heartbeats do not list.
/// 3: object bytes of a `ReadObject` request travel on their own `SendObject` call (authenticated by the
/// agent's certificate), no longer as `ObjectData` on the session stream, whose field 9 is now reserved.
/// 4: a backup result carries the globals object and the wrapped data key's sha256 (required when encrypted),
/// and a restore task carries what the controller recorded (`RecordedBackup`); an agent refuses a manifest
/// that disagrees with it.
/// 5: a keyless cloud `StorageTarget` is opened anonymously (unsigned requests) unless its
/// `ambient_credentials` is set; GCS and Azure endpoints use plain HTTP only with `allow_http` (an older agent
/// would fall back to its host's ambient credentials or infer HTTP from the endpoint).
/// 6: `Assign` may carry a `VerifyTask` (a checksum-only verify of a backup's copies, each with its recorded
/// chunk list) and `Completed` a `VerifyResult` (findings per copy: damaged chunks by seq and fault, manifest,
/// stream and globals problems); an older agent could not decode such an assignment.
/// 7: a backup result carries per-table row counts, a restore task may carry drill checks and its result
/// the drill observation (an older agent would ignore the checks and report nothing to judge).
pub const AGENT_PROTOCOL_VERSION: u32 = 7;

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use prost::Message as _;
    use prost_types::{DescriptorProto, FileDescriptorSet};

    fn message_paths(prefix: Vec<i32>, m: &DescriptorProto, out: &mut Vec<(Vec<i32>, String)>) {
        out.push((prefix.clone(), format!("message {}", m.name())));
        for (i, f) in m.field.iter().enumerate() {
            let mut p = prefix.clone();
            p.extend([2, i as i32]);
            out.push((p, format!("field {}.{}", m.name(), f.name())));
        }
        for (i, n) in m.nested_type.iter().enumerate() {
            if n.options.as_ref().is_some_and(|o| o.map_entry()) {
                continue;
            }
            let mut p = prefix.clone();
            p.extend([3, i as i32]);
            message_paths(p, n, out);
        }
    }

    /// `grpcurl describe` is the manual: every service, RPC, message and field carries a comment.
    #[test]
    fn every_service_rpc_message_and_field_is_documented() {
        let fds = FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).expect("descriptor set");
        let mut missing = Vec::new();
        let mut checked = 0;
        for file in fds.file.iter().filter(|f| f.package() == "dataguardian.v1") {
            let documented: HashSet<Vec<i32>> = file
                .source_code_info
                .as_ref()
                .map(|s| {
                    s.location
                        .iter()
                        .filter(|l| !l.leading_comments().trim().is_empty())
                        .map(|l| l.path.clone())
                        .collect()
                })
                .unwrap_or_default();
            let mut wanted = Vec::new();
            for (i, m) in file.message_type.iter().enumerate() {
                message_paths(vec![4, i as i32], m, &mut wanted);
            }
            for (i, s) in file.service.iter().enumerate() {
                wanted.push((vec![6, i as i32], format!("service {}", s.name())));
                for (j, m) in s.method.iter().enumerate() {
                    wanted.push((vec![6, i as i32, 2, j as i32], format!("rpc {}.{}", s.name(), m.name())));
                }
            }
            for (i, e) in file.enum_type.iter().enumerate() {
                wanted.push((vec![5, i as i32], format!("enum {}", e.name())));
            }
            checked += wanted.len();
            for (path, what) in wanted {
                if !documented.contains(&path) {
                    missing.push(format!("{}: {what}", file.name()));
                }
            }
        }
        assert!(checked > 300, "only {checked} elements found");
        assert!(missing.is_empty(), "undocumented:\n{}", missing.join("\n"));
    }
}
