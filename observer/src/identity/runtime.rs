//! Workload identity from cgroup v2 paths.
//!
//! [`parse_cgroup_path`] turns a cgroup v2 path (relative to the cgroup v2
//! mount, e.g. the third field of `/proc/<pid>/cgroup`) into a [`CgroupKind`]:
//! a Kubernetes container or pod, a host systemd unit, or an opaque path.
//!
//! Matching works on path segments, never on absolute positions, so the
//! kubepods hierarchy may sit below other prefixes (kind/k3s nodes, a Docker
//! scope, `/system.slice/...`). Both kubelet cgroup drivers are understood:
//!
//! * systemd: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`
//! * cgroupfs: `/kubepods/burstable/pod<uid-with-dashes>/<id>`
//!
//! The parser is total: it never panics and never allocates more than a few
//! strings of at most the input's length.

/// Container runtime that created a container cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// containerd's CRI plugin (`cri-containerd-<id>.scope`).
    Containerd,
    /// CRI-O (`crio-<id>.scope`, `crio-conmon-<id>.scope`, cgroupfs `crio-<id>`).
    CriO,
    /// Docker via dockershim or cri-dockerd (`docker-<id>.scope`).
    Docker,
    /// The path does not say (cgroupfs driver with a bare container id).
    Unknown,
}

impl Runtime {
    /// Stable lowercase name: `"containerd"`, `"cri-o"`, `"docker"` or `"unknown"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Unknown => "unknown",
        }
    }
}

/// Kubernetes pod QoS class, as encoded in the pod's cgroup location.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QosClass {
    /// Directly below `kubepods` (`kubepods-pod<uid>.slice`, `/kubepods/pod<uid>`).
    Guaranteed,
    /// Below `kubepods-burstable.slice` or `/kubepods/burstable`.
    Burstable,
    /// Below `kubepods-besteffort.slice` or `/kubepods/besteffort`.
    BestEffort,
}

/// What a cgroup path identifies.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CgroupKind {
    /// A container (or the pod sandbox / pause container) of a Kubernetes pod.
    ///
    /// `pod_uid` is lowercase 8-4-4-4-12 with dashes, or 32 bare hex digits
    /// for static pods (their UID is the kubelet's manifest hash, which is what
    /// the mirror pod's `kubernetes.io/config.hash` annotation holds).
    /// `container_id` is 64 lowercase hex digits; [`parse_cgroup_path`] always
    /// sets it, `None` is for callers that know the pod but not the container.
    Container {
        pod_uid: String,
        qos: QosClass,
        container_id: Option<String>,
        runtime: Runtime,
    },
    /// The pod-level cgroup itself (no container below it in the path).
    Pod { pod_uid: String, qos: QosClass },
    /// A podman (libpod) container on a plain host, in a podman pod or not: named from
    /// podman's own metadata (`identity::libpod`). `container_id` and `pod_id` are 64 lowercase
    /// hex digits.
    Libpod {
        container_id: String,
        pod_id: Option<String>,
    },
    /// A host process in a systemd unit: unit name like "nginx.service" or "session-3.scope".
    SystemdUnit { unit: String },
    /// Anything else: identified by the cgroup path itself ("/" for the root).
    Other { path: String },
}

/// Parses a cgroup v2 path into a workload identity. Never panics.
///
/// 1. The first segment that is a valid pod cgroup (systemd or cgroupfs
///    driver, UID shape checked) makes the result a pod: `Container` with the
///    first container segment after it (deeper sub-cgroups such as
///    `<id>/init.scope` or `crio-<id>.scope/container` are ignored), or `Pod`
///    when no segment below it names a container.
/// 2. Otherwise the last segment ending in `.service` or `.scope` gives a
///    `SystemdUnit` (this includes plain `docker-<id>.scope` outside pods).
/// 3. Otherwise `Other` with the path normalised: empty segments dropped, one
///    leading `/`, no trailing `/`, `""` becomes `"/"`.
pub fn parse_cgroup_path(path: &str) -> CgroupKind {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for (i, seg) in segments.iter().enumerate() {
        // containerd with `SystemdCgroup = false` under a systemd-driver
        // kubelet names the leaf "<pod slice>:cri-containerd:<id>".
        if let Some((slice, rest)) = seg.split_once(':') {
            let pod = slice.strip_suffix(".slice").and_then(parse_systemd_pod);
            if let (Some((pod_uid, qos)), Some((id, runtime))) = (pod, parse_colon_container(rest))
            {
                return container(pod_uid, qos, id, runtime);
            }
            continue;
        }
        let parent = i.checked_sub(1).map(|j| segments[j]);
        let grandparent = i.checked_sub(2).map(|j| segments[j]);
        if let Some((pod_uid, qos)) = parse_pod_segment(seg, parent, grandparent) {
            return match segments[i + 1..]
                .iter()
                .find_map(|s| parse_container_segment(s))
            {
                Some((id, runtime)) => container(pod_uid, qos, id, runtime),
                None => CgroupKind::Pod { pod_uid, qos },
            };
        }
    }
    if let Some(kind) = parse_libpod(&segments) {
        return kind;
    }
    if let Some(unit) = segments.iter().rev().find(|s| is_unit(s)) {
        return CgroupKind::SystemdUnit {
            unit: (*unit).to_string(),
        };
    }
    CgroupKind::Other {
        path: format!("/{}", segments.join("/")),
    }
}

fn container(pod_uid: String, qos: QosClass, id: String, runtime: Runtime) -> CgroupKind {
    CgroupKind::Container {
        pod_uid,
        qos,
        container_id: Some(id),
        runtime,
    }
}

/// A pod segment: systemd `...kubepods[-qos]-pod<uid>.slice`, or cgroupfs
/// `pod<uid>` whose parent is `kubepods` or `kubepods/{burstable,besteffort}`.
fn parse_pod_segment(
    seg: &str,
    parent: Option<&str>,
    grandparent: Option<&str>,
) -> Option<(String, QosClass)> {
    if let Some(stem) = seg.strip_suffix(".slice") {
        return parse_systemd_pod(stem);
    }
    let uid = normalise_uid(seg.strip_prefix("pod")?)?;
    let qos = match (parent?, grandparent) {
        ("kubepods", _) => QosClass::Guaranteed,
        ("burstable", Some("kubepods")) => QosClass::Burstable,
        ("besteffort", Some("kubepods")) => QosClass::BestEffort,
        _ => return None,
    };
    Some((uid, qos))
}

/// Parses a systemd pod slice name without `.slice`, e.g.
/// `kubelet-kubepods-burstable-pod<uid>`. systemd uses `-` as its hierarchy
/// separator, so the UID (written with `_`) is everything after the last `-`.
fn parse_systemd_pod(stem: &str) -> Option<(String, QosClass)> {
    let (head, last) = stem.rsplit_once('-')?;
    let uid = normalise_uid(last.strip_prefix("pod")?)?;
    let qos = if ends_with_unit(head, "kubepods-burstable") {
        QosClass::Burstable
    } else if ends_with_unit(head, "kubepods-besteffort") {
        QosClass::BestEffort
    } else if ends_with_unit(head, "kubepods") {
        QosClass::Guaranteed
    } else {
        return None;
    };
    Some((uid, qos))
}

/// True if `name` is `unit` or ends with `-<unit>` (a systemd slice prefix).
fn ends_with_unit(name: &str, unit: &str) -> bool {
    name.strip_suffix(unit)
        .is_some_and(|p| p.is_empty() || p.ends_with('-'))
}

/// Validates a pod UID and returns it lowercase: 8-4-4-4-12 hex with `-` or
/// `_` separators (returned with `-`), or 32 bare hex digits (static pods).
fn normalise_uid(s: &str) -> Option<String> {
    let b = s.as_bytes();
    match b.len() {
        32 if b.iter().all(u8::is_ascii_hexdigit) => Some(s.to_ascii_lowercase()),
        36 => {
            let mut out = String::with_capacity(36);
            for (i, &c) in b.iter().enumerate() {
                if matches!(i, 8 | 13 | 18 | 23) {
                    if c != b'-' && c != b'_' {
                        return None;
                    }
                    out.push('-');
                } else if c.is_ascii_hexdigit() {
                    out.push(c.to_ascii_lowercase() as char);
                } else {
                    return None;
                }
            }
            Some(out)
        }
        _ => None,
    }
}

/// Leaf prefixes, longest first where one is a prefix of another.
const CONTAINER_PREFIXES: [(&str, Runtime); 4] = [
    ("cri-containerd-", Runtime::Containerd),
    ("crio-conmon-", Runtime::CriO),
    ("crio-", Runtime::CriO),
    ("docker-", Runtime::Docker),
];

/// A container segment: `<prefix><64hex>` with optional `.scope`, or a bare
/// 64-hex id (cgroupfs driver, runtime unknown).
fn parse_container_segment(seg: &str) -> Option<(String, Runtime)> {
    let s = seg.strip_suffix(".scope").unwrap_or(seg);
    let (id, runtime) = CONTAINER_PREFIXES
        .iter()
        .find_map(|(p, rt)| s.strip_prefix(p).map(|id| (id, *rt)))
        .unwrap_or((s, Runtime::Unknown));
    is_container_id(id).then(|| (id.to_ascii_lowercase(), runtime))
}

/// The `<runtime>:<id>` tail of a colon-style leaf.
fn parse_colon_container(rest: &str) -> Option<(String, Runtime)> {
    let (prefix, id) = rest.split_once(':')?;
    let runtime = match prefix {
        "cri-containerd" => Runtime::Containerd,
        "crio" => Runtime::CriO,
        "docker" => Runtime::Docker,
        _ => Runtime::Unknown,
    };
    is_container_id(id).then(|| (id.to_ascii_lowercase(), runtime))
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// A podman container: `libpod-<id>` (cgroupfs manager, below `libpod_parent/[<pod id>/]`) or
/// `libpod-<id>.scope` (systemd manager, below `machine.slice` or
/// `machine-libpod_pod_<pod id>.slice`). Its monitor, `libpod-conmon-<id>.scope`, is not the
/// container and stays a unit.
fn parse_libpod(segments: &[&str]) -> Option<CgroupKind> {
    let (i, id) = segments.iter().enumerate().find_map(|(i, s)| {
        let id = s.strip_prefix("libpod-")?;
        let id = id.strip_suffix(".scope").unwrap_or(id);
        is_hex64(id).then(|| (i, id.to_string()))
    })?;
    let parent = i.checked_sub(1).map(|j| segments[j]).unwrap_or("");
    let pod = parent
        .strip_prefix("machine-libpod_pod_")
        .and_then(|p| p.strip_suffix(".slice"))
        .unwrap_or(parent);
    Some(CgroupKind::Libpod {
        container_id: id,
        pod_id: is_hex64(pod).then(|| pod.to_string()),
    })
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_unit(seg: &str) -> bool {
    [".service", ".scope"]
        .iter()
        .any(|suf| seg.len() > suf.len() && seg.ends_with(suf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_containers_in_pods_and_alone_with_either_cgroup_manager() {
        let c = "0bb08bf04be6ed90e0089599fcdb2eeb38b205280b8842ced02d3805c9bd7ba3";
        let p = "3a3db7e74e6a705d6ccad204d98c522f824272c8fdce7595779068b15e241a3f";
        let in_pod = CgroupKind::Libpod {
            container_id: c.into(),
            pod_id: Some(p.into()),
        };
        let alone = CgroupKind::Libpod {
            container_id: c.into(),
            pod_id: None,
        };
        assert_eq!(
            parse_cgroup_path(&format!("/libpod_parent/{p}/libpod-{c}")),
            in_pod
        );
        assert_eq!(
            parse_cgroup_path(&format!("/libpod_parent/libpod-{c}")),
            alone
        );
        assert_eq!(
            parse_cgroup_path(&format!(
                "/machine.slice/machine-libpod_pod_{p}.slice/libpod-{c}.scope/container"
            )),
            in_pod
        );
        assert_eq!(
            parse_cgroup_path(&format!("/machine.slice/libpod-{c}.scope")),
            alone
        );
        // The monitor is a unit; a short or upper-case id is not a container.
        assert_eq!(
            parse_cgroup_path(&format!("/machine.slice/libpod-conmon-{c}.scope")),
            CgroupKind::SystemdUnit {
                unit: format!("libpod-conmon-{c}.scope")
            }
        );
        assert!(matches!(
            parse_cgroup_path("/machine.slice/libpod-0bb08bf04be6.scope"),
            CgroupKind::SystemdUnit { .. }
        ));
        assert!(matches!(
            parse_cgroup_path(&format!("/libpod_parent/libpod-{}", c.to_uppercase())),
            CgroupKind::Other { .. }
        ));
    }
    use QosClass::*;
    use Runtime::*;

    const U: &str = "1234abcd-5678-90ab-cdef-1234567890ab";
    const S: &str = "1234abcd_5678_90ab_cdef_1234567890ab"; // systemd-escaped
    const C: &str = "4c01db0b339c64b2a2f3e0b7c1d5f4e8a9b6c3d2e1f0a9b8c7d6e5f4a3b2c1d0";
    const STATIC: &str = "5a5d2b2c6f0e0a7d1b3a4c5d6e7f8091";

    fn ctr(qos: QosClass, runtime: Runtime) -> CgroupKind {
        container(U.into(), qos, C.into(), runtime)
    }
    fn pod(qos: QosClass) -> CgroupKind {
        CgroupKind::Pod {
            pod_uid: U.into(),
            qos,
        }
    }
    fn unit(u: &str) -> CgroupKind {
        CgroupKind::SystemdUnit { unit: u.into() }
    }
    fn other(p: &str) -> CgroupKind {
        CgroupKind::Other { path: p.into() }
    }

    #[test]
    fn table() {
        let cases: Vec<(String, CgroupKind)> = vec![
            // systemd driver: containerd / CRI-O / cri-dockerd x QoS.
            (format!("/kubepods.slice/kubepods-pod{S}.slice/cri-containerd-{C}.scope"), ctr(Guaranteed, Containerd)),
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{S}.slice/cri-containerd-{C}.scope"), ctr(Burstable, Containerd)),
            (format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{S}.slice/cri-containerd-{C}.scope"), ctr(BestEffort, Containerd)),
            (format!("/kubepods.slice/kubepods-pod{S}.slice/crio-{C}.scope"), ctr(Guaranteed, CriO)),
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{S}.slice/crio-{C}.scope"), ctr(Burstable, CriO)),
            (format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{S}.slice/crio-conmon-{C}.scope"), ctr(BestEffort, CriO)),
            (format!("/kubepods.slice/kubepods-pod{S}.slice/docker-{C}.scope"), ctr(Guaranteed, Docker)),
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{S}.slice/docker-{C}.scope"), ctr(Burstable, Docker)),
            (format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{S}.slice/docker-{C}.scope"), ctr(BestEffort, Docker)),
            // cgroupfs driver: containerd and Docker leave a bare id, CRI-O says "crio-".
            (format!("/kubepods/pod{U}/{C}"), ctr(Guaranteed, Unknown)),
            (format!("/kubepods/burstable/pod{U}/{C}"), ctr(Burstable, Unknown)),
            (format!("/kubepods/besteffort/pod{U}/{C}"), ctr(BestEffort, Unknown)),
            (format!("/kubepods/pod{U}/crio-{C}"), ctr(Guaranteed, CriO)),
            (format!("/kubepods/burstable/pod{U}/crio-{C}"), ctr(Burstable, CriO)),
            (format!("/kubepods/besteffort/pod{U}/crio-conmon-{C}"), ctr(BestEffort, CriO)),
            // Nested prefixes: kind/k3s nodes, host view of a kind node, systemd.
            (format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{S}.slice/cri-containerd-{C}.scope"), ctr(Burstable, Containerd)),
            (format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{S}.slice/cri-containerd-{C}.scope"), ctr(Guaranteed, Containerd)),
            (format!("/system.slice/docker-{C}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{S}.slice/cri-containerd-{C}.scope"), ctr(BestEffort, Containerd)),
            (format!("/system.slice/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{S}.slice/cri-containerd-{C}.scope"), ctr(Burstable, Containerd)),
            (format!("/docker/{C}/kubepods/besteffort/pod{U}/{C}"), ctr(BestEffort, Unknown)),
            (format!("/k3s/kubepods/burstable/pod{U}/{C}"), ctr(Burstable, Unknown)),
            // Sub-cgroups below the container segment belong to the container.
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{S}.slice/crio-{C}.scope/container"), ctr(Burstable, CriO)),
            (format!("/kubepods/burstable/pod{U}/{C}/init.scope"), ctr(Burstable, Unknown)),
            // containerd SystemdCgroup=false under a systemd-driver kubelet.
            (format!("/system.slice/containerd.service/kubepods-besteffort-pod{S}.slice:cri-containerd:{C}"), ctr(BestEffort, Containerd)),
            // Uppercase input is normalised.
            (format!("/kubepods/burstable/pod{}/{}", U.to_uppercase(), C.to_uppercase()), ctr(Burstable, Unknown)),
            // Static pod: UID is a 32-hex manifest hash, no dashes.
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC}.slice/cri-containerd-{C}.scope"),
             container(STATIC.into(), Burstable, C.into(), Containerd)),
            // Pod-level cgroups (no container, or junk below it).
            (format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{S}.slice"), pod(BestEffort)),
            (format!("/kubepods.slice/kubepods-pod{S}.slice/"), pod(Guaranteed)),
            (format!("/kubepods/burstable/pod{U}"), pod(Burstable)),
            (format!("/kubepods/burstable/pod{U}/not-a-container"), pod(Burstable)),
            // Host units and non-pod paths.
            ("/system.slice/nginx.service".into(), unit("nginx.service")),
            ("/user.slice/user-0.slice/session-3.scope".into(), unit("session-3.scope")),
            ("/init.scope".into(), unit("init.scope")),
            ("/system.slice/containerd.service/sub".into(), unit("containerd.service")),
            (format!("/system.slice/docker-{C}.scope"), unit(&format!("docker-{C}.scope"))),
            // Malformed UIDs, wrong parents and QoS-level slices are not pods.
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{C}.scope", &S[1..]), unit(&format!("cri-containerd-{C}.scope"))),
            (format!("/kubepods/burstable/pod{S}x/{C}"), other(&format!("/kubepods/burstable/pod{S}x/{C}"))),
            (format!("/foo/burstable/pod{U}"), other(&format!("/foo/burstable/pod{U}"))),
            (format!("/foo.slice/foo-pod{S}.slice"), other(&format!("/foo.slice/foo-pod{S}.slice"))),
            ("/kubepods.slice/kubepods-burstable.slice/".into(), other("/kubepods.slice/kubepods-burstable.slice")),
            // Root and normalisation.
            ("/".into(), other("/")),
            ("".into(), other("/")),
            ("//a//b/".into(), other("/a/b")),
            ("/.scope".into(), other("/.scope")),
        ];
        for (path, want) in cases {
            assert_eq!(parse_cgroup_path(&path), want, "path {path:?}");
        }
    }

    #[test]
    fn runtime_names() {
        let names = [
            (Containerd, "containerd"),
            (CriO, "cri-o"),
            (Docker, "docker"),
            (Unknown, "unknown"),
        ];
        for (rt, name) in names {
            assert_eq!(rt.as_str(), name);
        }
    }

    /// xorshift64: deterministic junk without external crates.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 as usize
        }
    }

    #[test]
    fn junk_never_panics() {
        let words = "/ / kubepods .slice - _ pod kubepods-burstable-pod burstable besteffort : \
                     cri-containerd- crio- docker- libpod- machine-libpod_pod_ .scope .service \
                     a 0 F é 🦀 \0";
        let ids = [" ", U, S, C, STATIC, &C[..63], &S[..35]];
        let tokens: Vec<&str> = words.split_whitespace().chain(ids).collect();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..5000 {
            let n = rng.next() % 24;
            let s: String = (0..n).map(|_| tokens[rng.next() % tokens.len()]).collect();
            match parse_cgroup_path(&s) {
                CgroupKind::Container {
                    pod_uid,
                    container_id,
                    ..
                } => {
                    assert!(matches!(pod_uid.len(), 32 | 36), "{s:?}");
                    assert_eq!(container_id.map(|c| c.len()), Some(64), "{s:?}");
                }
                CgroupKind::Pod { pod_uid, .. } => assert!(matches!(pod_uid.len(), 32 | 36)),
                CgroupKind::Libpod {
                    container_id,
                    pod_id,
                } => {
                    assert_eq!(container_id.len(), 64, "{s:?}");
                    assert!(pod_id.is_none_or(|p| p.len() == 64), "{s:?}");
                }
                CgroupKind::SystemdUnit { unit } => assert!(!unit.contains('/')),
                CgroupKind::Other { path } => {
                    assert!(
                        path.starts_with('/') && (path == "/" || !path.ends_with('/')),
                        "{s:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn very_long_input() {
        let long = "/a".repeat(200_000) + &format!("/kubepods/pod{U}") + &"/x".repeat(100_000);
        assert_eq!(parse_cgroup_path(&long), pod(Guaranteed));
        assert_eq!(parse_cgroup_path(&"/".repeat(100_000)), other("/"));
    }
}
