//! podman as this kind of machine needs it (xtask/src/image.rs has the same options for the image
//! build): runc, since crun (podman's default runtime) refuses the hybrid cgroup hierarchy, the
//! cgroupfs manager, and ulimits the sandbox grants (podman's defaults exceed them). None of this
//! is part of a pod spec.

use std::process::Command;

pub const GLOBAL: &[&str] = &["--runtime", "runc", "--cgroup-manager", "cgroupfs"];
pub const ULIMITS: &[&str] = &[
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// `podman` with [`GLOBAL`].
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(GLOBAL);
    c
}
