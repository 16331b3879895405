# syntax=docker/dockerfile:1
# The observer's image, built with the toolchain recipe of the development machines (README and
# xtask/src/install.rs): rustup's stable Rust 1.95 builds user space; Debian's rustc 1.96
# (rustc-web, which ships a prebuilt `core` for bpfel-unknown-none) and bpf-linker 0.13 built
# against LLVM 22 build the kernel programs, which observer/build.rs compiles and embeds into the
# one binary. Debian bookworm throughout (bookworm-security carries rustc-web 1.96 and LLVM 22).
#
#   docker build -t observer:0.1.0 .
#
# tests/tests/deploy.rs checks that this file, xtask's toolchain and the DaemonSet agree.

# ---- build: the whole workspace (its members are needed), as an unprivileged user ----
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      rustc-web libstd-rust-web-dev-bpf llvm-22-dev libzstd-dev zlib1g-dev protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
# Building needs no root: only the package installation above did.
RUN useradd --create-home --uid 10001 builder
USER builder
ENV CARGO_HOME=/home/builder/.cargo PATH=/home/builder/.cargo/bin:/usr/local/cargo/bin:$PATH
RUN PATH=/usr/lib/llvm-22/bin:$PATH \
    cargo install bpf-linker --version 0.13.0 --no-default-features --features llvm-22
WORKDIR /home/builder/src
COPY --chown=builder:builder . .
RUN cargo build --release --locked -p observer --bin observer \
 && cp target/release/observer /home/builder/observer

# ---- runtime ----
FROM debian:bookworm-slim
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
