//! The TLS probe's user side: which files hold a TLS library, and their uprobes.
//!
//! A uprobe belongs to a file (an inode), not to a process: every process mapping the file,
//! now or later, runs it. So each library file is probed once, however many processes use it,
//! and a process that loads an already probed file (a new nginx, a Python client importing
//! `ssl`) is seen from its first call without anything done here.
//!
//! Files are found in the processes' memory maps (`/proc/<pid>/maps`): the shared libraries
//! named `libssl.so*` (OpenSSL 3 and 1.1, BoringSSL and LibreSSL builds), and a program that
//! links one statically (its own symbols name `SSL_write`). At start every process is looked
//! at once; later only processes that exec a new program (`sched_process_exec`, from the
//! kernel), a few times over their first seconds, so that libraries loaded after start
//! (`dlopen`) are found too; no timer walks all of `/proc`. A container's own copy is another
//! file, reached through `/proc/<pid>/root`.
//!
//! A probed file whose known processes have all gone is looked for once in every process's
//! maps; if none maps it any more, its probes are detached (the kernel holds the inode while
//! they stay).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::{
    maps::{MapData, RingBuf},
    programs::{
        uprobe::{UProbeLinkId, UProbeScope},
        ProgramError, UProbe,
    },
    Ebpf,
};
use procfs::process::{MMPermissions, MMapPath, Process};

use crate::error::ProbeError;

/// The entry programs and the functions they probe: (program, symbol, required).
const ENTRIES: [(&str, &str, bool); 5] = [
    ("ssl_write", "SSL_write", true),
    ("ssl_read", "SSL_read", true),
    ("ssl_write_ex", "SSL_write_ex", false),
    ("ssl_read_ex", "SSL_read_ex", false),
    ("ssl_free", "SSL_free", false),
];
/// The return program, on every read and write function present.
const RETURN: &str = "ssl_ret";
const RETURNS: [&str; 4] = ["SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex"];

/// Every program of the probe (loaded at start, attached per library file).
pub const PROGRAMS: [&str; 6] = [
    "ssl_write",
    "ssl_read",
    "ssl_write_ex",
    "ssl_read_ex",
    "ssl_free",
    RETURN,
];

/// When a process that exec'd is looked at, after its exec.
const LOOKS: [Duration; 3] = [
    Duration::from_millis(20),
    Duration::from_millis(500),
    Duration::from_secs(3),
];
/// How often the exec reader looks at what is due.
pub const TICK: Duration = Duration::from_millis(20);
/// How often probed files whose processes all went are checked.
const SWEEP: Duration = Duration::from_secs(30);

/// A file: its device and inode, as `/proc/<pid>/maps` gives them.
type FileId = (u64, u64);

/// What is known of a file.
enum FileState {
    /// Not a TLS library (or one whose probes failed: tried once).
    NotTls,
    Probed(Library),
}

struct Library {
    path: PathBuf,
    links: Vec<(&'static str, UProbeLinkId)>,
    /// Processes seen mapping it.
    pids: HashSet<u32>,
}

/// Figures of the probe, for the observer's own metrics and the start-up line.
#[derive(Debug, Default, Clone)]
pub struct TlsStatus {
    pub libraries: usize,
    pub attach_failures: u64,
    /// The last failure, said once at start.
    pub last_error: Option<String>,
}

#[derive(Default)]
pub struct Libraries {
    files: HashMap<FileId, FileState>,
    status: Arc<Mutex<TlsStatus>>,
}

impl Libraries {
    pub fn status(&self) -> Arc<Mutex<TlsStatus>> {
        self.status.clone()
    }

    /// Looks at every running process once. Returns the failure to attach, if every library
    /// found failed (a permission, most likely: then the probe is down).
    pub fn scan_all(&mut self, ebpf: &mut Ebpf) -> Result<(), ProbeError> {
        let started = Instant::now();
        let mut processes = 0usize;
        let mut failed = None;
        let mut ok = 0usize;
        for pid in all_pids() {
            processes += 1;
            match self.scan(ebpf, pid) {
                Ok(n) => ok += n,
                Err(e) => failed = Some(e),
            }
        }
        tracing::info!(
            processes,
            libraries = self.probed(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "TLS libraries probed at start"
        );
        match failed {
            Some(e) if ok == 0 && self.probed() == 0 => Err(e),
            _ => Ok(()),
        }
    }

    fn probed(&self) -> usize {
        self.files
            .values()
            .filter(|s| matches!(s, FileState::Probed(_)))
            .count()
    }

    /// Looks at one process's maps: probes the TLS files not probed yet. Returns how many
    /// were probed now, or the last failure.
    pub fn scan(&mut self, ebpf: &mut Ebpf, pid: u32) -> Result<usize, ProbeError> {
        let Ok(p) = Process::new(pid as i32) else {
            return Ok(0);
        };
        let Ok(maps) = p.maps() else { return Ok(0) };
        let exe = p.exe().ok();
        let mut seen: HashSet<FileId> = HashSet::new();
        let mut probed = 0;
        let mut failure = None;
        for m in maps {
            if !m.perms.contains(MMPermissions::EXECUTE) || m.inode == 0 {
                continue;
            }
            let MMapPath::Path(path) = &m.pathname else {
                continue;
            };
            let id = ((m.dev.0 as u64) << 32 | m.dev.1 as u64, m.inode);
            if !seen.insert(id) {
                continue;
            }
            if let Some(FileState::Probed(lib)) = self.files.get_mut(&id) {
                lib.pids.insert(pid);
                continue;
            }
            if self.files.contains_key(&id) {
                continue;
            }
            let library = is_libssl(path);
            let program = !library && exe.as_deref() == Some(path.as_path());
            if !library && !program {
                continue;
            }
            // The file as this process sees it (its own mount namespace).
            let target = Path::new(&format!("/proc/{pid}/root"))
                .join(path.strip_prefix("/").unwrap_or(path));
            if program && !has_tls_symbols(&target) {
                self.files.insert(id, FileState::NotTls);
                continue;
            }
            let started = Instant::now();
            match attach(ebpf, &target) {
                Ok(links) => {
                    tracing::info!(
                        pid,
                        library = %path.display(),
                        uprobes = links.len(),
                        elapsed_us = started.elapsed().as_micros() as u64,
                        "TLS library probed"
                    );
                    self.files.insert(
                        id,
                        FileState::Probed(Library {
                            path: path.clone(),
                            links,
                            pids: HashSet::from([pid]),
                        }),
                    );
                    probed += 1;
                    let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
                    s.libraries = self.probed();
                }
                Err(e) => {
                    tracing::warn!(pid, library = %path.display(), "TLS library not probed: {e}");
                    let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
                    s.attach_failures += 1;
                    s.last_error = Some(e.to_string());
                    self.files.insert(id, FileState::NotTls);
                    failure = Some(e);
                }
            }
        }
        match failure {
            Some(e) if probed == 0 => Err(e),
            _ => Ok(probed),
        }
    }

    /// Detaches the probes of files no process maps any more. Files whose known processes
    /// are all gone are looked for in every process's maps first.
    fn sweep(&mut self, ebpf: &mut Ebpf) {
        let orphans: Vec<FileId> = self
            .files
            .iter_mut()
            .filter_map(|(id, s)| match s {
                FileState::Probed(lib) => {
                    lib.pids
                        .retain(|p| Path::new(&format!("/proc/{p}")).exists());
                    lib.pids.is_empty().then_some(*id)
                }
                FileState::NotTls => None,
            })
            .collect();
        if orphans.is_empty() {
            return;
        }
        let wanted: HashSet<FileId> = orphans.iter().copied().collect();
        for pid in all_pids() {
            let Ok(maps) = Process::new(pid as i32).and_then(|p| p.maps()) else {
                continue;
            };
            for m in maps {
                let id = ((m.dev.0 as u64) << 32 | m.dev.1 as u64, m.inode);
                if wanted.contains(&id) {
                    if let Some(FileState::Probed(lib)) = self.files.get_mut(&id) {
                        lib.pids.insert(pid);
                    }
                }
            }
        }
        for id in orphans {
            let gone =
                matches!(self.files.get(&id), Some(FileState::Probed(l)) if l.pids.is_empty());
            if gone {
                if let Some(FileState::Probed(lib)) = self.files.remove(&id) {
                    tracing::info!(library = %lib.path.display(), "TLS library unused: probes detached");
                    detach(ebpf, lib.links);
                }
            }
        }
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.libraries = self.probed();
        // Files that were not TLS libraries are forgotten too once their inode may be reused.
        self.files
            .retain(|_, st| matches!(st, FileState::Probed(_)));
    }
}

/// Attaches every program to the library at `target`; on a failure, what was attached is
/// detached again.
fn attach(ebpf: &mut Ebpf, target: &Path) -> Result<Vec<(&'static str, UProbeLinkId)>, ProbeError> {
    let mut links = Vec::new();
    let mut points: Vec<(&'static str, &'static str, bool)> = ENTRIES.to_vec();
    points.extend(
        RETURNS
            .iter()
            .map(|s| (RETURN, *s, *s == "SSL_write" || *s == "SSL_read")),
    );
    for (prog, symbol, required) in points {
        let r =
            uprobe(ebpf, prog).and_then(|p| p.attach(symbol, target, UProbeScope::AllProcesses));
        match r {
            Ok(id) => links.push((prog, id)),
            Err(e) if !required && is_missing_symbol(&e) => {}
            Err(e) => {
                detach(ebpf, links);
                return Err(ProbeError::Program {
                    program: format!("{prog} on {symbol} of {}", target.display()),
                    source: Box::new(e),
                    verifier_log: None,
                });
            }
        }
    }
    Ok(links)
}

fn uprobe<'e>(ebpf: &'e mut Ebpf, prog: &str) -> Result<&'e mut UProbe, ProgramError> {
    ebpf.program_mut(prog)
        .ok_or(ProgramError::NotLoaded)?
        .try_into()
}

fn detach(ebpf: &mut Ebpf, links: Vec<(&'static str, UProbeLinkId)>) {
    for (prog, id) in links {
        if let Ok(p) = uprobe(ebpf, prog) {
            let _ = p.detach(id);
        }
    }
}

fn is_missing_symbol(e: &ProgramError) -> bool {
    matches!(
        e,
        ProgramError::UProbeError(aya::programs::uprobe::UProbeError::SymbolError { .. })
    )
}

/// `libssl.so`, `libssl.so.3`, `libssl.so.1.1`, ...
fn is_libssl(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("libssl.so"))
}

/// Whether a program carries a TLS library of its own: `SSL_write` and `SSL_read` among its
/// symbols (static OpenSSL or BoringSSL builds that keep their symbols).
fn has_tls_symbols(path: &Path) -> bool {
    use object::{Object, ObjectSymbol};
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    let Ok(file) = object::File::parse(&*data) else {
        return false;
    };
    let mut found = [false; 2];
    for s in file.symbols().chain(file.dynamic_symbols()) {
        if !s.is_definition() {
            continue;
        }
        match s.name() {
            Ok("SSL_write") => found[0] = true,
            Ok("SSL_read") => found[1] = true,
            _ => {}
        }
        if found == [true, true] {
            return true;
        }
    }
    false
}

fn all_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Most processes waiting for a look (an exec storm beyond it is looked at in part).
const MAX_DUE: usize = 16_384;

/// Reads the exec ring: each new program's process is looked at over its first seconds.
pub struct ExecReader {
    ebpf: Arc<Mutex<Ebpf>>,
    libraries: Libraries,
    /// (when, pid, which look).
    due: VecDeque<(Instant, u32, usize)>,
    last_sweep: Instant,
}

impl ExecReader {
    pub fn new(ebpf: Arc<Mutex<Ebpf>>, libraries: Libraries) -> Self {
        ExecReader {
            ebpf,
            libraries,
            due: VecDeque::new(),
            last_sweep: Instant::now(),
        }
    }
}

impl super::reader::Reader for ExecReader {
    type Fd = RingBuf<MapData>;

    fn drain(&mut self, ring: &mut Self::Fd) {
        let now = Instant::now();
        while let Some(r) = ring.next() {
            if r.len() >= 4 && self.due.len() < MAX_DUE {
                let pid = u32::from_ne_bytes([r[0], r[1], r[2], r[3]]);
                self.due.push_back((now + LOOKS[0], pid, 0));
            }
        }
    }

    fn tick(&mut self, _ring: &mut Self::Fd) {
        let now = Instant::now();
        let ebpf = self.ebpf.clone();
        let mut ebpf = ebpf.lock().unwrap_or_else(|e| e.into_inner());
        // Looks are queued in time order per round; take whatever is due.
        let mut later = VecDeque::with_capacity(self.due.len());
        while let Some((when, pid, look)) = self.due.pop_front() {
            if when > now {
                later.push_back((when, pid, look));
                continue;
            }
            let _ = self.libraries.scan(&mut ebpf, pid);
            if look + 1 < LOOKS.len() && Path::new(&format!("/proc/{pid}")).exists() {
                later.push_back((when - LOOKS[look] + LOOKS[look + 1], pid, look + 1));
            }
        }
        self.due = later;
        if now.duration_since(self.last_sweep) >= SWEEP {
            self.last_sweep = now;
            self.libraries.sweep(&mut ebpf);
        }
    }
}
