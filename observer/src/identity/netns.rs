//! Local pods by the IP addresses of their network namespaces: the topology's peer resolution
//! for this node, without any API. A pod's namespace is found through a process of its cgroup
//! (the inode of `/proc/<pid>/net/fib_trie`, one per namespace); its addresses are read once per namespace from that process's view of
//! `/proc/net/fib_trie` (IPv4 local addresses) and `/proc/net/if_inet6` (IPv6), loopback and
//! link-local left out.
//!
//! An address is kept only when every workload claiming it belongs to one pod (the containers of
//! a pod share its namespace; the pod's first container by name stands for it, the sandbox's
//! `pause` process never); an address several pods claim (host-network pods share the node's) is
//! left unresolved rather than guessed.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::Identity;

/// Addresses of local pods, refreshed from the cgroup walk and from the processes seen at work.
#[derive(Debug, Default)]
pub struct PeerMap {
    /// Addresses per network namespace inode (read once per namespace).
    by_netns: HashMap<u64, Vec<IpAddr>>,
    /// Live pod cgroups (by cgroup id): their identity and the namespace a process of theirs
    /// was last seen in (`None` while none was). The namespace is kept while the cgroup lives,
    /// so a client that ran between two walks, or whose last process has exited, keeps its
    /// addresses for the server-side view of its requests.
    pods: HashMap<u64, (Arc<Identity>, Option<u64>)>,
    /// Pod cgroups whose process could not be read since the last walk (it had exited, or
    /// `/proc` does not show it): tried again after the next walk, not on every request.
    tried: HashSet<u64>,
    map: HashMap<IpAddr, Arc<Identity>>,
    /// Cluster-wide addresses from Kubernetes metadata (pods of every node, Service
    /// ClusterIPs), and the metadata generation they were built from.
    cluster: HashMap<IpAddr, Arc<Identity>>,
    cluster_generation: Option<u64>,
}

impl PeerMap {
    /// The workload owning `ip`, if exactly one local pod does.
    pub fn get(&self, ip: &IpAddr) -> Option<Arc<Identity>> {
        self.map.get(ip).cloned()
    }

    pub fn map(&self) -> &HashMap<IpAddr, Arc<Identity>> {
        &self.map
    }

    /// A cluster address (a pod on another node, a Service) from Kubernetes metadata.
    pub fn cluster(&self, ip: &IpAddr) -> Option<Arc<Identity>> {
        self.cluster.get(ip).cloned()
    }

    /// Rebuilds the cluster addresses when the metadata changed since the last time.
    pub fn refresh_cluster(&mut self, meta: &super::kube::store::MetaStore) {
        if self.cluster_generation != Some(meta.generation) {
            self.cluster = meta.peers();
            self.cluster_generation = Some(meta.generation);
        }
    }

    /// Rebuilds the map from the live pod cgroups (cgroup id, identity, directory).
    pub fn refresh(&mut self, pods: &[(u64, Arc<Identity>, PathBuf)]) {
        let mut live = HashMap::with_capacity(pods.len());
        for (cgroup, id, dir) in pods {
            if id.service_name == "pause" {
                continue;
            }
            let ns = first_pid(dir)
                .and_then(|pid| self.namespace_of(pid))
                .or_else(|| self.pods.get(cgroup).and_then(|(_, ns)| *ns));
            live.insert(*cgroup, (id.clone(), ns));
        }
        self.pods = live;
        self.tried.clear();
        self.rebuild();
    }

    /// A process of pod cgroup `cgroup` was just seen at work: the first one teaches the pod's
    /// addresses without waiting for the next walk (which may find the cgroup empty). One
    /// lookup for a cgroup already known.
    pub fn learn(&mut self, cgroup: u64, id: &Arc<Identity>, tgid: u32) {
        if id.k8s_pod_uid.is_empty() || id.service_name == "pause" || tgid == 0 {
            return;
        }
        let same = |known: &Arc<Identity>| Arc::ptr_eq(known, id) || **known == **id;
        let old = match self.pods.get(&cgroup) {
            Some((known, Some(ns))) if same(known) => return,
            Some((known, None)) if same(known) && self.tried.contains(&cgroup) => return,
            Some((_, ns)) => *ns,
            None => None,
        };
        let ns = self.namespace_of(tgid);
        if ns.is_none() {
            self.tried.insert(cgroup);
        }
        self.pods.insert(cgroup, (id.clone(), ns.or(old)));
        self.rebuild();
    }

    /// The namespace of `pid`, its addresses read the first time it is seen.
    fn namespace_of(&mut self, pid: u32) -> Option<u64> {
        let ns = netns_key(pid)?;
        self.by_netns.entry(ns).or_insert_with(|| addresses(pid));
        Some(ns)
    }

    fn rebuild(&mut self) {
        let mut claims: BTreeMap<IpAddr, Vec<Arc<Identity>>> = BTreeMap::new();
        let mut used = HashSet::new();
        for (id, ns) in self.pods.values() {
            let Some(ns) = ns else { continue };
            used.insert(*ns);
            for a in self.by_netns.get(ns).into_iter().flatten() {
                claims.entry(*a).or_default().push(id.clone());
            }
        }
        self.by_netns.retain(|ns, _| used.contains(ns));
        self.map.clear();
        for (ip, mut ids) in claims {
            let pods: HashSet<&str> = ids.iter().map(|i| i.k8s_pod_uid.as_str()).collect();
            if pods.len() != 1 {
                continue;
            }
            // A named container before the sandbox, whose cgroup Kubernetes metadata names
            // after the pod with an empty container name (the sandbox's `pause` is left out
            // above only while no metadata names it).
            ids.sort_by(|a, b| {
                let key = |i: &Identity| {
                    (
                        i.k8s_container_name.is_empty(),
                        i.k8s_container_name.clone(),
                        i.service_name.clone(),
                    )
                };
                key(a).cmp(&key(b))
            });
            self.map.insert(ip, ids[0].clone());
        }
    }
}

fn first_pid(dir: &Path) -> Option<u32> {
    let procs = fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    procs.lines().next()?.trim().parse().ok()
}

/// Local addresses of the network namespace of `pid`.
fn addresses(pid: u32) -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(t) = fs::read_to_string(format!("/proc/{pid}/net/fib_trie")) {
        out.extend(parse_fib_trie(&t).into_iter().map(IpAddr::V4));
    }
    if let Ok(t) = fs::read_to_string(format!("/proc/{pid}/net/if_inet6")) {
        out.extend(parse_if_inet6(&t).into_iter().map(IpAddr::V6));
    }
    out.sort();
    out.dedup();
    out
}

/// A key that tells network namespaces apart: the inode of `/proc/<pid>/net/fib_trie`, which
/// the kernel creates once per namespace and anyone may stat (unlike `/proc/<pid>/ns/net`,
/// which needs CAP_SYS_PTRACE for another user's or a more privileged process); the namespace
/// inode where fib_trie is missing (no IPv4).
fn netns_key(pid: u32) -> Option<u64> {
    fs::metadata(format!("/proc/{pid}/net/fib_trie"))
        .or_else(|_| fs::metadata(format!("/proc/{pid}/ns/net")))
        .map(|m| m.ino())
        .ok()
}

/// The `/32 host LOCAL` leaves of a fib_trie dump, loopback left out.
pub fn parse_fib_trie(text: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(ip) = t.strip_prefix("|-- ") {
            last = ip.trim().parse().ok();
        } else if t.starts_with("/32 host LOCAL") {
            if let Some(ip) = last {
                if !ip.is_loopback() && !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
    }
    out
}

/// Addresses of `/proc/net/if_inet6`, loopback and link-local left out.
pub fn parse_if_inet6(text: &str) -> Vec<Ipv6Addr> {
    text.lines()
        .filter_map(|l| {
            let hex = l.split_whitespace().next()?;
            let v = u128::from_str_radix(hex, 16).ok()?;
            let ip = Ipv6Addr::from(v);
            let link_local = (ip.segments()[0] & 0xffc0) == 0xfe80;
            (!ip.is_loopback() && !link_local).then_some(ip)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_local_addresses() {
        let fib = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.231.5.0\n        /24 link UNICAST\n     |-- 10.231.5.2\n        /32 host LOCAL\n  |-- 127.0.0.1\n     /32 host LOCAL\nLocal:\n     |-- 10.231.5.2\n        /32 host LOCAL\n";
        assert_eq!(parse_fib_trie(fib), vec![Ipv4Addr::new(10, 231, 5, 2)]);
        let v6 = "00000000000000000000000000000001 01 80 10 80       lo\nfe8000000000000000fc00fffe000001 04 40 20 80     eth0\nfd000000000000000000000000000002 04 40 00 82     eth0\n";
        assert_eq!(
            parse_if_inet6(v6),
            vec!["fd00::2".parse::<Ipv6Addr>().unwrap()]
        );
    }

    fn pod(uid: &str, name: &str) -> Arc<Identity> {
        Arc::new(Identity {
            service_name: name.into(),
            k8s_pod_uid: uid.into(),
            ..Default::default()
        })
    }

    /// A client pod whose process is seen at work between two walks keeps its addresses while
    /// its cgroup lives, though the walks find the cgroup empty; they go with the cgroup.
    #[test]
    fn a_pod_seen_at_work_keeps_its_addresses_while_its_cgroup_lives() {
        let ours: HashSet<IpAddr> = addresses(std::process::id()).into_iter().collect();
        assert!(!ours.is_empty(), "this test needs a non-loopback address");
        let empty = std::env::temp_dir().join(format!("peermap-{}", std::process::id()));
        fs::create_dir_all(&empty).unwrap();
        fs::write(empty.join("cgroup.procs"), "").unwrap();
        let client = pod("u1", "loadgen");
        let mut m = PeerMap::default();
        m.refresh(&[(7, client.clone(), empty.clone())]);
        assert!(m.map().is_empty(), "no process seen yet");
        m.learn(7, &client, std::process::id());
        let got = |m: &PeerMap| -> HashSet<IpAddr> { m.map().keys().copied().collect() };
        assert_eq!(got(&m), ours);
        assert!(m.map().values().all(|i| i.service_name == "loadgen"));
        m.refresh(&[(7, client.clone(), empty.clone())]);
        assert_eq!(got(&m), ours, "kept while the cgroup lives");
        // The sandbox is never a claimant, and a second pod claiming the same addresses (host
        // network) leaves them unresolved.
        m.learn(8, &pod("u1", "pause"), std::process::id());
        assert_eq!(got(&m), ours);
        m.learn(9, &pod("u2", "other"), std::process::id());
        assert!(m.map().is_empty(), "two pods claim them");
        m.refresh(&[]);
        assert!(m.map().is_empty(), "gone with the cgroup");
        fs::remove_dir_all(&empty).unwrap();
    }

    #[test]
    fn addresses_of_this_process_namespace() {
        // Whatever this machine has, loopback is never among them.
        let a = addresses(std::process::id());
        assert!(a.iter().all(|ip| !ip.is_loopback()));
    }
}
