//! Exposition tests on fixed figures.
use observer_common::{SyscallStats, TcpStats, SYSCALL_NBUCKETS};
use prometheus_client::{encoding::prometheus_text, registry::Registry};

use super::*;

#[derive(Debug)]
struct Fixed(Totals, KernelHealth, Vec<ProbeStatus>);
impl Collector for Fixed {
    fn encode(&self, enc: DescriptorEncoder) -> fmt::Result {
        encode_all(enc, &self.0, &self.1, &self.2, &Topology::default())
    }
}

fn encode(t: Totals) -> String {
    let probes = vec![ProbeStatus {
        probe: "syscalls",
        hook: "tp_btf",
        up: true,
        reason: None,
        refused: false,
    }];
    let mut r = Registry::default();
    r.register_collector(Box::new(Fixed(t, KernelHealth::default(), probes)));
    let mut out = String::new();
    prometheus_text::encode(&mut out, &r).unwrap();
    out
}

#[test]
fn syscalls_encode_with_names_and_one_histogram_per_identity() {
    let id = Arc::new(Identity {
        k8s_pod_uid: "u-1".into(),
        service_name: "nginx".into(),
        ..Default::default()
    });
    let mut t = Totals::default();
    let mut read = SyscallStats {
        count: 3,
        errors: 1,
        sum_ns: 3_000,
        buckets: [0; SYSCALL_NBUCKETS],
    };
    read.buckets[0] = 3;
    let mut write = SyscallStats {
        count: 2,
        errors: 0,
        sum_ns: 2_000_000_000,
        buckets: [0; SYSCALL_NBUCKETS],
    };
    write.buckets[SYSCALL_NBUCKETS - 1] = 2;
    #[cfg(target_arch = "x86_64")]
    let (nr_read, nr_write) = (0, 1);
    #[cfg(not(target_arch = "x86_64"))]
    let (nr_read, nr_write) = (63, 64);
    t.syscalls.insert((id.clone(), nr_read), read);
    t.syscalls.insert((id.clone(), nr_write), write);
    t.errors.insert((id.clone(), nr_read, 11), 1);
    let out = encode(t);
    let labels = "k8s_namespace_name=\"\",k8s_pod_name=\"\",k8s_pod_uid=\"u-1\",k8s_container_name=\"\",service_name=\"nginx\"";
    assert!(
        out.contains(&format!(
            "observer_syscalls_total{{{labels},syscall=\"read\"}} 3\n"
        )),
        "{out}"
    );
    assert!(out.contains(&format!(
        "observer_syscalls_total{{{labels},syscall=\"write\"}} 2\n"
    )));
    assert!(out.contains(&format!(
        "observer_syscall_errors_total{{{labels},syscall=\"read\",errno=\"EAGAIN\"}} 1\n"
    )));
    // One histogram for the identity, cumulative buckets, seconds.
    assert!(
        out.contains(&format!(
            "observer_syscall_duration_seconds_count{{{labels}}} 5\n"
        )),
        "{out}"
    );
    assert!(out.contains(&format!(
        "observer_syscall_duration_seconds_sum{{{labels}}} 2.000003\n"
    )));
    assert!(
        out.contains(&format!(
            "observer_syscall_duration_seconds_bucket{{{labels},le=\"1e-05\"}} 3\n"
        )) || out.contains(&format!(
            "observer_syscall_duration_seconds_bucket{{{labels},le=\"0.00001\"}} 3\n"
        )),
        "{out}"
    );
    assert!(out.contains(&format!(
        "observer_syscall_duration_seconds_bucket{{{labels},le=\"0.1\"}} 3\n"
    )));
    assert!(out.contains(&format!(
        "observer_syscall_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 5\n"
    )));
    assert!(out.contains("observer_probe_up{probe=\"syscalls\",hook=\"tp_btf\"} 1\n"));
    assert!(out.contains("observer_build_info{version="));
    assert!(
        !out.contains("observer_tcp_"),
        "no TCP figures, no TCP families"
    );
}

#[test]
fn tcp_active_is_tracked_opens_minus_tracked_closes() {
    let id = Arc::new(Identity {
        service_name: "/".into(),
        ..Default::default()
    });
    let mut t = Totals::default();
    let s = TcpStats {
        opened: [5, 7],
        tracked: [5, 6],
        closed_tracked: [2, 6],
        closed: 9,
        ..Default::default()
    };
    t.tcp.insert(id, s);
    let out = encode(t);
    assert!(
        out.contains("service_name=\"/\",direction=\"inbound\"} 3\n"),
        "{out}"
    );
    assert!(out.contains("observer_tcp_connections_active{k8s_namespace_name=\"\",k8s_pod_name=\"\",k8s_pod_uid=\"\",k8s_container_name=\"\",service_name=\"/\",direction=\"outbound\"} 0\n"));
    assert!(out.contains("observer_tcp_connections_opened_total{k8s_namespace_name=\"\",k8s_pod_name=\"\",k8s_pod_uid=\"\",k8s_container_name=\"\",service_name=\"/\",direction=\"outbound\"} 7\n"));
    assert!(out.contains("observer_tcp_connections_closed_total{k8s_namespace_name=\"\",k8s_pod_name=\"\",k8s_pod_uid=\"\",k8s_container_name=\"\",service_name=\"/\"} 9\n"));
}
