//! Generates a gRPC client of the observer's API from the same .proto the observer is built
//! from (proto/observer/v1/observer.proto), so the tests talk to it as any other client would.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
    let proto_dir = root.join("proto");
    let proto = proto_dir.join("observer/v1/observer.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&[proto], &[proto_dir])
        .unwrap_or_else(|e| {
            panic!("compiling the gRPC API (protoc from Debian's protobuf-compiler): {e}")
        });
}
