//! The cgroup v2 hierarchy: where it is mounted, and which path a cgroup id (the inode number
//! of its directory, as `bpf_get_current_cgroup_id()` returns) belongs to.

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use super::{kube::store::MetaStore, runtime, Identity};
use crate::error::StartError;

/// The mounted cgroup v2 hierarchy.
#[derive(Debug, Clone)]
pub struct CgroupFs {
    root: PathBuf,
}

impl CgroupFs {
    /// Finds the cgroup v2 mount in /proc/self/mountinfo (`/sys/fs/cgroup` on unified hosts,
    /// `/sys/fs/cgroup/unified` on hybrid ones): never assumed.
    pub fn discover() -> Result<Self, StartError> {
        let mounts = procfs::process::Process::myself()
            .and_then(|p| p.mountinfo())
            .map_err(|_| StartError::NoCgroup2)?;
        find_v2_mount(&mounts)
            .map(|root| Self { root })
            .ok_or(StartError::NoCgroup2)
    }

    pub fn at(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// The mount point of the first cgroup2 filesystem in a mountinfo text.
pub fn find_v2_mount(mounts: &procfs::process::MountInfos) -> Option<PathBuf> {
    mounts
        .iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| PathBuf::from(unescape_octal(&m.mount_point.to_string_lossy())))
}

/// mountinfo escapes spaces and a few other bytes as `\NNN` octal.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug)]
struct Known {
    identity: Arc<Identity>,
    /// When a rescan first failed to find this cgroup.
    gone_since: Option<Instant>,
    /// False for a stand-in identity (`cgroup-<id>`) given to an id no walk has found.
    resolved: bool,
    /// The cgroup directory, once a walk found it.
    dir: Option<PathBuf>,
}

/// Maps cgroup ids to identities, with a cache refreshed by walking the hierarchy.
#[derive(Debug)]
pub struct Resolver {
    fs: CgroupFs,
    known: HashMap<u64, Known, foldhash::fast::RandomState>,
    /// Whether the current round of lookups (one scrape) already walked the hierarchy.
    walked_this_round: bool,
    /// Kubernetes metadata, when the watchers run: names pods and workloads.
    meta: Option<Arc<RwLock<MetaStore>>>,
}

/// Directory depth below which the walk does not descend (pod containers sit at depth 4-6).
const MAX_DEPTH: usize = 16;

impl Resolver {
    pub fn new(fs: CgroupFs) -> Self {
        Self {
            fs,
            known: HashMap::default(),
            walked_this_round: false,
            meta: None,
        }
    }

    /// Names pods from Kubernetes metadata from now on (identities already cached are
    /// refreshed by the next walk).
    pub fn set_metadata(&mut self, meta: Arc<RwLock<MetaStore>>) {
        self.meta = Some(meta);
    }

    pub fn metadata(&self) -> Option<&Arc<RwLock<MetaStore>>> {
        self.meta.as_ref()
    }

    fn resolve(&self, root: &Path, dir: &Path) -> Identity {
        let meta = self
            .meta
            .as_ref()
            .map(|m| m.read().unwrap_or_else(|e| e.into_inner()));
        resolve_path(root, dir, meta.as_deref())
    }

    /// Starts a round of lookups (one scrape): at most one walk per round for unknown ids.
    pub fn begin_round(&mut self) {
        self.walked_this_round = false;
    }

    /// The identity of cgroup `id`. An unknown id triggers a walk of the hierarchy (at most one
    /// per round); an id that is not there (the cgroup was deleted before we saw it) gets a
    /// stand-in identity naming the id, which a later walk replaces if the cgroup turns up, and
    /// is expired like any deleted cgroup.
    pub fn identity(&mut self, id: u64) -> Arc<Identity> {
        if let Some(k) = self.known.get(&id) {
            return k.identity.clone();
        }
        if !self.walked_this_round {
            self.walked_this_round = true;
            self.rescan();
            if let Some(k) = self.known.get(&id) {
                return k.identity.clone();
            }
        }
        let identity = Arc::new(Identity {
            service_name: format!("cgroup-{id}"),
            ..Default::default()
        });
        let known = Known {
            identity: identity.clone(),
            gone_since: Some(Instant::now()),
            resolved: false,
            dir: None,
        };
        self.known.insert(id, known);
        identity
    }

    /// Like [`Resolver::identity`], with a process of the cgroup that was just seen at work: a
    /// pod whose main process had not started (or had already exited) when the hierarchy was
    /// walked has no service name yet, or only its launcher's; the process's command name gives
    /// it one (and a later walk finding the launcher again does not take it back). `comm` gives
    /// the name the kernel saw with the request, if it did: the process may be gone already.
    pub fn identity_hinted(
        &mut self,
        id: u64,
        tgid: u32,
        comm: impl FnOnce() -> Option<String>,
    ) -> Arc<Identity> {
        let ident = self.identity(id);
        // Named after a launcher only without metadata (metadata's names are the pod's own).
        let unnamed = ident.service_name.is_empty()
            || (ident.k8s_pod_name.is_empty() && is_launcher(&ident.service_name));
        if !unnamed || ident.k8s_pod_uid.is_empty() || tgid == 0 {
            return ident;
        }
        let name = match comm() {
            Some(c) => c,
            None => {
                let stat = procfs::process::Process::new(tgid as i32).and_then(|p| p.stat());
                let Ok(stat) = stat else {
                    return ident;
                };
                stat.comm
            }
        };
        if is_launcher(&name) || name == ident.service_name {
            return ident;
        }
        let named = Arc::new(Identity {
            service_name: name,
            ..(*ident).clone()
        });
        if let Some(k) = self.known.get_mut(&id) {
            k.identity = named.clone();
        }
        named
    }

    /// Walks the hierarchy: new cgroups are resolved, missing ones are marked gone.
    pub fn rescan(&mut self) {
        let now = Instant::now();
        let mut seen = HashSet::new();
        let root = self.fs.root.clone();
        let mut stack = vec![(root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            let id = meta.ino();
            seen.insert(id);
            match self.known.get_mut(&id) {
                Some(k) if !k.resolved || k.identity.service_name.is_empty() => {
                    k.gone_since = None;
                    let identity = Arc::new(self.resolve(&root, &dir));
                    let k = self.known.get_mut(&id).expect("just found");
                    k.identity = identity;
                    k.resolved = true;
                    if k.dir.is_none() {
                        k.dir = Some(dir.clone());
                    }
                }
                Some(k) => {
                    k.gone_since = None;
                    if !k.identity.k8s_pod_uid.is_empty() {
                        // A pod's names change when Kubernetes metadata arrives (or its owner
                        // chain completes), and without metadata its workload is named after
                        // its main process, which may have been a launcher when first seen
                        // (runc's init, `ip netns exec`): follow both, never back to less
                        // (metadata of a deleted pod is dropped while its cgroup may live on).
                        let had_pod_name = !k.identity.k8s_pod_name.is_empty();
                        let now_named = self.resolve(&root, &dir);
                        let k = self.known.get_mut(&id).expect("just found");
                        let downgrade = (had_pod_name && now_named.k8s_pod_name.is_empty())
                            || (is_launcher(&now_named.service_name)
                                && !k.identity.service_name.is_empty()
                                && !is_launcher(&k.identity.service_name));
                        if !now_named.service_name.is_empty()
                            && !downgrade
                            && now_named != *k.identity
                        {
                            k.identity = Arc::new(now_named);
                        }
                    }
                    let k = self.known.get_mut(&id).expect("just found");
                    if k.dir.is_none() {
                        k.dir = Some(dir.clone());
                    }
                }
                None => {
                    let identity = Arc::new(self.resolve(&root, &dir));
                    self.known.insert(
                        id,
                        Known {
                            identity,
                            gone_since: None,
                            resolved: true,
                            dir: Some(dir.clone()),
                        },
                    );
                }
            }
            if depth >= MAX_DEPTH {
                continue;
            }
            if let Ok(entries) = fs::read_dir(&dir) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push((e.path(), depth + 1));
                    }
                }
            }
        }
        for (id, k) in self.known.iter_mut() {
            if !seen.contains(id) && k.gone_since.is_none() {
                k.gone_since = Some(now);
            }
        }
    }

    /// Cgroups gone for longer than `grace`.
    pub fn expired(&self, grace: Duration) -> Vec<u64> {
        self.known
            .iter()
            .filter(|(_, k)| k.gone_since.is_some_and(|t| t.elapsed() >= grace))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Forgets expired cgroups (after their figures were retired).
    pub fn forget(&mut self, ids: &[u64]) {
        for id in ids {
            self.known.remove(id);
        }
    }

    /// Live pod cgroups (those whose identity has a pod UID) with their directories.
    pub fn pod_dirs(&self) -> Vec<(u64, Arc<Identity>, PathBuf)> {
        self.known
            .iter()
            .filter(|(_, k)| k.gone_since.is_none() && !k.identity.k8s_pod_uid.is_empty())
            .filter_map(|(id, k)| Some((*id, k.identity.clone(), k.dir.clone()?)))
            .collect()
    }

    /// Identities of the cgroups still known, without collecting them.
    pub fn known_identities_ref(&self) -> impl Iterator<Item = &Arc<Identity>> {
        self.known.values().map(|k| &k.identity)
    }

    /// Identities of the cgroups still known (alive or within their grace period).
    pub fn known_identities(&self) -> HashSet<Arc<Identity>> {
        self.known.values().map(|k| k.identity.clone()).collect()
    }
}

/// Identity of the cgroup directory `dir` below the v2 mount `root`: from Kubernetes metadata
/// when it knows the pod, from the path (and the main process's name) otherwise.
fn resolve_path(root: &Path, dir: &Path, meta: Option<&MetaStore>) -> Identity {
    let rel = dir.strip_prefix(root).unwrap_or(dir);
    let path = format!("/{}", rel.to_string_lossy());
    let kind = runtime::parse_cgroup_path(&path);
    if let Some(id) = meta.and_then(|m| m.identity(&kind)) {
        return id;
    }
    if let runtime::CgroupKind::Libpod {
        container_id,
        pod_id,
    } = &kind
    {
        return super::libpod::identity(
            Path::new(super::libpod::STORAGE),
            container_id,
            pod_id.as_deref(),
        );
    }
    let process = match kind {
        runtime::CgroupKind::Container { .. } | runtime::CgroupKind::Pod { .. } => {
            process_name(dir)
        }
        _ => None,
    };
    Identity::from_kind(&kind, process.as_deref())
}

/// Command names of the programs that start a container's main process (runc's init stages,
/// `ip netns exec`, a shell's `exec`): a walk that found one of them at work named the workload
/// too early, and the first process seen making a request names it instead.
fn is_launcher(comm: &str) -> bool {
    matches!(comm, "ip" | "sh" | "runc" | "crun" | "conmon" | "exe") || comm.starts_with("runc:[")
}

/// The command name of the first process of a cgroup (its main process, in a container).
fn process_name(dir: &Path) -> Option<String> {
    let procs = fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    let pid = procs.lines().next()?.trim().parse::<i32>().ok()?;
    let stat = procfs::process::Process::new(pid).ok()?.stat().ok()?;
    Some(stat.comm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts(text: &str) -> procfs::process::MountInfos {
        use procfs::FromRead;
        procfs::process::MountInfos::from_read(text.as_bytes()).expect("mountinfo")
    }

    #[test]
    fn finds_hybrid_and_unified_mounts() {
        let hybrid = "25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd";
        assert_eq!(
            find_v2_mount(&mounts(hybrid)),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot";
        assert_eq!(
            find_v2_mount(&mounts(unified)),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let escaped = "35 24 0:30 / /mnt/my\\040cgroup rw - cgroup2 none rw";
        assert_eq!(
            find_v2_mount(&mounts(escaped)),
            Some(PathBuf::from("/mnt/my cgroup"))
        );
        use procfs::FromRead;
        assert!(procfs::process::MountInfos::from_read("garbage\n - \n1 2 3".as_bytes()).is_err());
    }

    /// A walk that found a container's launcher at work (a shell about to exec the program)
    /// named it after the launcher; the first process seen making a request names it, and the
    /// next walk finding the launcher again does not take the name back.
    #[test]
    fn a_container_named_after_its_launcher_takes_its_programs_name() {
        let dir = std::env::temp_dir().join(format!("observer-launcher-{}", std::process::id()));
        let ctr = dir.join("kubepods/besteffort/pod6b1e3a5c-9f0d-4c1e-8a2b-3c4d5e6f7a8b/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
        fs::create_dir_all(&ctr).unwrap();
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 5; :"])
            .spawn()
            .unwrap();
        fs::write(ctr.join("cgroup.procs"), format!("{}\n", sh.id())).unwrap();
        let mut r = Resolver::new(CgroupFs::at(dir.clone()));
        r.rescan();
        let id = fs::metadata(&ctr).unwrap().ino();
        assert_eq!(r.identity(id).service_name, "sh");
        let me = procfs::process::Process::myself()
            .unwrap()
            .stat()
            .unwrap()
            .comm;
        assert_eq!(
            r.identity_hinted(id, std::process::id(), || None)
                .service_name,
            me
        );
        r.rescan();
        assert_eq!(
            r.identity(id).service_name,
            me,
            "the walk keeps the program's name"
        );
        let _ = sh.kill();
        let _ = sh.wait();
        // A pod whose only process made its requests and exited before they were recorded (no
        // process in its cgroup at the walk, none in /proc): the kernel's name for it names it.
        let gone = dir.join("kubepods/besteffort/pod0a1b2c3d-9f0d-4c1e-8a2b-3c4d5e6f7a8b/fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210");
        fs::create_dir_all(&gone).unwrap();
        r.rescan();
        let id = fs::metadata(&gone).unwrap().ino();
        assert_eq!(r.identity(id).service_name, "");
        let dead = sh.id();
        assert_eq!(r.identity_hinted(id, dead, || None).service_name, "");
        assert_eq!(
            r.identity_hinted(id, dead, || Some("short-lived".into()))
                .service_name,
            "short-lived"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stand_in_is_replaced_when_the_cgroup_turns_up() {
        let dir = std::env::temp_dir().join(format!("observer-resolver-{}", std::process::id()));
        let unit = dir.join("late.service");
        fs::create_dir_all(&dir).unwrap();
        let mut r = Resolver::new(CgroupFs::at(dir.clone()));
        r.begin_round();
        r.rescan();
        // An id no walk has seen yet: one walk this round, then a stand-in.
        fs::create_dir_all(&unit).unwrap();
        let id = fs::metadata(&unit).unwrap().ino();
        r.walked_this_round = true;
        assert_eq!(r.identity(id).service_name, format!("cgroup-{id}"));
        // The next walk finds the directory and replaces the stand-in.
        r.rescan();
        assert_eq!(r.identity(id).service_name, "late.service");
        assert!(r.expired(Duration::ZERO).is_empty());
        // A new round walks again for an unknown id.
        fs::remove_dir(&unit).unwrap();
        r.begin_round();
        let gone = r.identity(u64::MAX);
        assert_eq!(gone.service_name, format!("cgroup-{}", u64::MAX));
        assert!(r.expired(Duration::ZERO).contains(&id));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resolves_this_hosts_root() {
        let Ok(fs) = CgroupFs::discover() else { return };
        let id = fs::metadata(fs.root()).unwrap().ino();
        let mut r = Resolver::new(fs);
        assert_eq!(r.identity(id).service_name, "/");
        assert!(r.expired(Duration::ZERO).is_empty());
    }
}
