//! Loading, attaching and reading the kernel programs.

pub mod btf;
pub mod load;
pub mod privileges;
pub mod reader;
pub mod tls;

/// The compiled kernel programs (built by build.rs from `observer-ebpf`).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer-ebpf.o"));
