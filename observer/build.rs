//! Builds the kernel programs (`observer-ebpf`) for `bpfel-unknown-none` with Debian's rustc,
//! which ships a prebuilt `core` for that target (rustup's toolchains here have no rust-src,
//! so `-Z build-std` is impossible), and links them with bpf-linker. `cargo xtask` installs
//! both; see README.md.
//!
//! Then it generates the gRPC API (`proto/observer/v1/observer.proto`) with tonic-prost-build,
//! which runs Debian's `protoc` (package protobuf-compiler, also installed by `cargo xtask`),
//! and writes the file descriptor set that the reflection service serves.

use std::{env, path::PathBuf, process::Command};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let ebpf = root.join("observer-ebpf");
    let common = root.join("observer-common");
    for p in [
        ebpf.join("src"),
        ebpf.join("Cargo.toml"),
        common.join("src"),
    ] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    println!("cargo:rerun-if-env-changed=OBSERVER_BPF_RUSTC");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let target_dir = root.join("target").join("ebpf");
    let rustc = env::var("OBSERVER_BPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());

    let mut cmd = Command::new(cargo);
    cmd.current_dir(&ebpf)
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "--target-dir",
        ])
        .arg(&target_dir)
        .env("RUSTC", &rustc)
        // aya-ebpf uses unstable features; Debian's rustc is a stable build.
        .env("RUSTC_BOOTSTRAP", "1")
        // Cargo sets CARGO_ENCODED_RUSTFLAGS for build scripts, and it overrides RUSTFLAGS.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-C", "debuginfo=2", "-C", "link-arg=--btf"].join("\x1f"),
        )
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET");
    // Make bpf-linker findable when cargo was started without ~/.cargo/bin on PATH.
    if let Ok(home) =
        env::var("CARGO_HOME").or_else(|_| env::var("HOME").map(|h| format!("{h}/.cargo")))
    {
        let path = env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{home}/bin:{path}"));
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run cargo for observer-ebpf: {e} (run `cargo xtask install` first)")
    });
    if !status.success() {
        panic!(
            "building the eBPF programs failed; the toolchain is installed by `cargo xtask install` \
             (Debian rustc-web, libstd-rust-web-dev-bpf, bpf-linker)"
        );
    }
    let obj = target_dir.join("bpfel-unknown-none/release/observer");
    std::fs::copy(&obj, out.join("observer-ebpf.o"))
        .unwrap_or_else(|e| panic!("copying {}: {e}", obj.display()));

    compile_proto(&root, &out);
}

/// Generates the `observer.v1` messages, server and client (see `export::grpc`).
fn compile_proto(root: &std::path::Path, out: &std::path::Path) {
    let proto_dir = root.join("proto");
    let proto = proto_dir.join("observer/v1/observer.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    println!("cargo:rerun-if-env-changed=PROTOC");
    let protoc_found =
        env::var_os("PROTOC").is_some() || Command::new("protoc").arg("--version").output().is_ok();
    if !protoc_found {
        panic!(
            "protoc not found: it compiles proto/observer/v1/observer.proto; install Debian's \
             protobuf-compiler (`cargo xtask install` does) or set PROTOC"
        );
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("observer_descriptor.bin"))
        .compile_protos(&[proto], &[proto_dir])
        .unwrap_or_else(|e| panic!("compiling the gRPC API: {e}"));
}
