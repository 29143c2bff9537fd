//! Compiles `proto/` into Rust with protox (a pure-Rust protobuf compiler, so no `protoc`
//! is needed on any machine) and tonic-prost-build. The encoded descriptor set is kept in
//! OUT_DIR for server reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/cacheback/v1/cacheback.proto";
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("cacheback_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
