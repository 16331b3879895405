# syntax=docker/dockerfile:1
# The observer's image, from Debian packages and crates alone (no registry image is needed):
# Debian's rustc-web/cargo-web 1.96 build the whole workspace, user space and kernel programs
# (rustc-web ships a prebuilt `core` for bpfel-unknown-none), and bpf-linker 0.13 built against
# Debian's LLVM 22 links the kernel programs, which observer/build.rs compiles and embeds into
# the one binary. Debian bookworm throughout (bookworm-security carries rustc-web 1.96 and LLVM 22).
#
# The base image is a build argument: `cargo xtask image` makes one with
# `mmdebstrap --variant=minbase bookworm` and `podman import` when no registry is reachable, and
# builds this file with podman:
#
#   podman build --build-arg BASE=localhost/observer-base:bookworm -t localhost/observer:0.1.0 .
#
# The `prebuilt` stage packs a binary built on the host (`target/release/observer`, without its
# debug sections: `target/image/observer`, which `cargo xtask image --prebuilt` makes) onto the same
# runtime base instead: the tests use it to run the DaemonSet's pod spec in a real runtime
# without building the workspace a second time.
#
# tests/tests/deploy.rs checks that this file, xtask's toolchain and the DaemonSet agree.
ARG BASE=localhost/observer-base:bookworm

# ---- build: the whole workspace (its members are needed), as an unprivileged user ----
FROM ${BASE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      ca-certificates gcc libc6-dev pkg-config rustc-web cargo-web libstd-rust-web-dev-bpf \
      llvm-22-dev libzstd-dev zlib1g-dev protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
# Building needs no root: only the package installation above did.
RUN useradd --create-home --uid 10001 builder
USER builder
ENV CARGO_HOME=/home/builder/.cargo PATH=/home/builder/.cargo/bin:$PATH
RUN PATH=/usr/lib/llvm-22/bin:$PATH \
    cargo install bpf-linker --version 0.13.0 --no-default-features --features llvm-22
WORKDIR /home/builder/src
COPY --chown=builder:builder . .
RUN cargo build --release --locked -p observer --bin observer \
 && objcopy --strip-debug target/release/observer /home/builder/observer

# ---- prebuilt: the same runtime with a binary built on the host (tests) ----
FROM ${BASE} AS prebuilt
COPY target/image/observer /usr/local/bin/observer
USER 0:0
EXPOSE 9464 50051
ENTRYPOINT ["/usr/local/bin/observer"]

# ---- runtime: the base and the one binary ----
FROM ${BASE} AS runtime
COPY --from=build /home/builder/observer /usr/local/bin/observer
# User 0, with only the capabilities the DaemonSet adds (BPF, PERFMON; everything else dropped,
# no privilege escalation). A non-root user is not possible without granting more: a non-root
# process keeps added capabilities across exec only as ambient capabilities, which Kubernetes
# cannot set, or through file capabilities on the binary, which no_new_privs
# (allowPrivilegeEscalation: false) disables.
# The client subcommands (`observer top`, `topology`, `tail`) need nothing and run as any user.
USER 0:0
EXPOSE 9464 50051
ENTRYPOINT ["/usr/local/bin/observer"]
