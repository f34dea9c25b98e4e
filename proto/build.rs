//! Compiles `dataguardian/v1/*.proto` with the pure-Rust `protox` compiler (no system `protoc`), generates the
//! tonic/prost code and writes the file descriptor set that server reflection serves.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

const PROTOS: &[&str] = &[
    "dataguardian/v1/types.proto",
    "dataguardian/v1/auth.proto",
    "dataguardian/v1/access.proto",
    "dataguardian/v1/agents.proto",
    "dataguardian/v1/datasources.proto",
    "dataguardian/v1/storages.proto",
    "dataguardian/v1/jobs.proto",
    "dataguardian/v1/executions.proto",
    "dataguardian/v1/backups.proto",
    "dataguardian/v1/health.proto",
    "dataguardian/v1/audit.proto",
    "dataguardian/v1/drills.proto",
    "dataguardian/v1/notifications.proto",
    "dataguardian/v1/agent_protocol.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=dataguardian");
    let fds = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("dataguardian_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}
