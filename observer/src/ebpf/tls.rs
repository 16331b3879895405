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
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use aya::{
    maps::{MapData, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
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
    /// One of the node's own libraries (probed at start whether used or not; kept).
    system: bool,
}

/// Figures of the probe, for the observer's own metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Figures {
    pub libraries: usize,
    pub attach_failures: u64,
}

/// The probe's figures (one probe per process: the library files are the node's).
static LIBRARIES: AtomicUsize = AtomicUsize::new(0);
static ATTACH_FAILURES: AtomicU64 = AtomicU64::new(0);

pub fn figures() -> Figures {
    Figures {
        libraries: LIBRARIES.load(Ordering::Relaxed),
        attach_failures: ATTACH_FAILURES.load(Ordering::Relaxed),
    }
}

pub struct Libraries {
    files: HashMap<FileId, FileState>,
    /// The Go programs are loaded: Go programs' `crypto/tls` is probed too.
    go: bool,
    /// What processes' maps call a node library probed by its path at start, where the file
    /// system's `stat` names it otherwise (overlayfs and the like: maps give the underlying
    /// file's device and inode). Node libraries stay probed, so these stay too.
    aliases: HashSet<FileId>,
}

impl Libraries {
    pub fn new(go: bool) -> Self {
        Libraries {
            files: HashMap::new(),
            go,
            aliases: HashSet::new(),
        }
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
        // The node's own libraries, used or not: a process that loads one later is seen
        // from its first call.
        for path in system_libraries() {
            match self.probe_file(ebpf, &path) {
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

    /// Probes a file of this mount namespace (not through a process) if it is a TLS library
    /// not probed yet.
    fn probe_file(&mut self, ebpf: &mut Ebpf, path: &Path) -> Result<usize, ProbeError> {
        let Some(id) = stat_id(path) else {
            return Ok(0);
        };
        if self.files.contains_key(&id) {
            return Ok(0);
        }
        self.probe(ebpf, id, path, path, None)
    }

    /// Probes file `id` at `target` (`path` as its process names it; `pid`: the process it was
    /// found in, `None` for a node library) if it has the TLS functions, and records what it
    /// is. Returns how many files were probed (0 or 1).
    fn probe(
        &mut self,
        ebpf: &mut Ebpf,
        id: FileId,
        target: &Path,
        path: &Path,
        pid: Option<u32>,
    ) -> Result<usize, ProbeError> {
        let started = Instant::now();
        let Some(points) = tls_functions(target, self.go) else {
            // Not a TLS library after all (a program without one, a stub), or gone.
            tracing::debug!(?pid, file = %path.display(), "no TLS functions");
            if target.exists() {
                self.files.insert(id, FileState::NotTls);
            }
            return Ok(0);
        };
        match attach(ebpf, target, &points) {
            Ok(links) => {
                let go = points.iter().any(|p| p.prog == GO_RETURN);
                tracing::info!(
                    pid,
                    library = %path.display(),
                    kind = if go { "go crypto/tls" } else { "openssl" },
                    uprobes = links.len(),
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "TLS library probed"
                );
                self.files.insert(
                    id,
                    FileState::Probed(Library {
                        path: path.to_path_buf(),
                        links,
                        pids: pid.into_iter().collect(),
                        system: pid.is_none(),
                    }),
                );
                LIBRARIES.store(self.probed(), Ordering::Relaxed);
                Ok(1)
            }
            Err(_) if !target.exists() => {
                // The process went (or moved to another program) while it was looked at: the
                // file is looked at again with the next process mapping it.
                tracing::debug!(?pid, library = %path.display(), "process gone");
                Ok(0)
            }
            Err(e) => {
                tracing::warn!(
                    ?pid,
                    library = %path.display(),
                    "TLS library not probed: {}",
                    chain(&e)
                );
                ATTACH_FAILURES.fetch_add(1, Ordering::Relaxed);
                self.files.insert(id, FileState::NotTls);
                Err(e)
            }
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
            if !seen.insert(id) || self.aliases.contains(&id) {
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
            let node_library = stat_id(&target).is_some_and(|s| {
                s != id && matches!(self.files.get(&s), Some(FileState::Probed(l)) if l.system)
            });
            if node_library {
                self.aliases.insert(id);
                continue;
            }
            match self.probe(ebpf, id, &target, path, Some(pid)) {
                Ok(n) => probed += n,
                Err(e) => failure = Some(e),
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
                FileState::Probed(lib) if !lib.system => {
                    lib.pids
                        .retain(|p| Path::new(&format!("/proc/{p}")).exists());
                    lib.pids.is_empty().then_some(*id)
                }
                FileState::Probed(_) => None,
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
        LIBRARIES.store(self.probed(), Ordering::Relaxed);
        // Files that were not TLS libraries are forgotten too once their inode may be reused.
        self.files
            .retain(|_, st| matches!(st, FileState::Probed(_)));
    }
}

/// Attaches the programs to the file at `target`, at their `points`; on a failure, what was
/// attached is detached again.
fn attach(
    ebpf: &mut Ebpf,
    target: &Path,
    points: &[Point],
) -> Result<Vec<(&'static str, UProbeLinkId)>, ProbeError> {
    let mut links = Vec::new();
    for p in points {
        let r = uprobe(ebpf, p.prog).and_then(|u| {
            u.attach(
                UProbeAttachLocation::AbsoluteOffset(p.offset),
                target,
                UProbeScope::AllProcesses,
            )
        });
        match r {
            Ok(id) => links.push((p.prog, id)),
            Err(e) => {
                detach(ebpf, links);
                return Err(ProbeError::Program {
                    program: format!(
                        "{} on {} (+{:#x}) of {}",
                        p.prog,
                        p.function,
                        p.offset,
                        target.display()
                    ),
                    source: Box::new(e),
                    verifier_log: None,
                });
            }
        }
    }
    Ok(links)
}

/// An error and its sources, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
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

/// A file's device and inode as `stat` gives them (in maps' form).
fn stat_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let dev = meta.dev();
    Some((
        u64::from(libc::major(dev)) << 32 | u64::from(libc::minor(dev)),
        meta.ino(),
    ))
}

/// `libssl.so`, `libssl.so.3`, `libssl.so.1.1`, ...
fn is_libssl(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("libssl.so"))
}

/// Where a program goes: which program, on which function (for messages), at which offset
/// of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Point {
    prog: &'static str,
    function: &'static str,
    offset: u64,
}

/// Go's TLS functions: (entry program, symbol).
const GO_FUNCTIONS: [(&str, &str); 2] = [
    ("go_tls_write", "crypto/tls.(*Conn).Write"),
    (GO_READ, "crypto/tls.(*Conn).Read"),
];
const GO_READ: &str = "go_tls_read";
/// The program on every `RET` of Go's read.
const GO_RETURN: &str = "go_tls_ret";
/// The Go programs (loaded only where the kernel's descriptor table could be located).
pub const GO_PROGRAMS: [&str; 3] = ["go_tls_write", "go_tls_read", GO_RETURN];
/// The oldest Go whose register ABI the Go programs read (1.17 brought it to amd64; 1.18 is
/// the first whose build information names its version inline).
const GO_MIN_MINOR: u32 = 18;

/// The probe points of the TLS functions a file defines, or `None` when it has none:
/// - OpenSSL's (its dynamic symbols, else its symbol table) when it has `SSL_read` and
///   `SSL_write`: a shared library, or a program with its own copy (Node.js, static OpenSSL or
///   BoringSSL builds that keep their symbols);
/// - with `go`, Go's `crypto/tls` in a Go program (symbol table) built by Go 1.18 or later:
///   each function's body start (after its stack check) and every `RET` in the read's code.
///
/// The file is read lazily, only its headers, symbol tables and the Go functions' code (a
/// program may be 100 MB).
fn tls_functions(path: &Path, go: bool) -> Option<Vec<Point>> {
    use object::{Object, ObjectKind, ObjectSection, ObjectSymbol};
    let file = std::fs::File::open(path).ok()?;
    let cache = object::ReadCache::new(file);
    let obj = object::File::parse(&cache).ok()?;
    let openssl: Vec<&'static str> = ENTRIES.iter().map(|(_, s, _)| *s).collect();
    let translate = matches!(obj.kind(), ObjectKind::Dynamic | ObjectKind::Executable);
    // Symbol -> (file offset, size).
    let mut found: HashMap<&'static str, (u64, u64)> = HashMap::new();
    for symbols in [obj.dynamic_symbols(), obj.symbols()] {
        for s in symbols {
            if !s.is_definition() {
                continue;
            }
            let Ok(name) = s.name() else { continue };
            let wanted = (openssl.iter().copied())
                .chain(GO_FUNCTIONS.iter().map(|(_, f)| *f))
                .find(|w| *w == name);
            let Some(name) = wanted else { continue };
            let offset = if translate {
                let section = s
                    .section_index()
                    .and_then(|i| obj.section_by_index(i).ok())?;
                let (file_offset, _) = section.file_range()?;
                s.address().checked_sub(section.address())? + file_offset
            } else {
                s.address()
            };
            found.entry(name).or_insert((offset, s.size()));
        }
        if openssl.iter().all(|w| found.contains_key(w)) {
            break;
        }
    }
    let required = ENTRIES.iter().filter(|(_, _, r)| *r);
    if required.clone().all(|(_, s, _)| found.contains_key(s)) {
        let mut points: Vec<Point> = ENTRIES
            .iter()
            .filter_map(|(prog, function, _)| {
                let (offset, _) = *found.get(function)?;
                Some(Point {
                    prog,
                    function,
                    offset,
                })
            })
            .collect();
        points.extend(RETURNS.iter().filter_map(|function| {
            let (offset, _) = *found.get(function)?;
            Some(Point {
                prog: RETURN,
                function,
                offset,
            })
        }));
        return Some(points);
    }
    // A Go program names its functions in the runtime's own table (`.gopclntab`) too, which
    // stripping (`-ldflags=-s`, common for container images) leaves in place.
    let pclntab = obj.section_by_name(".gopclntab");
    if !go || pclntab.is_none() {
        return None;
    }
    if obj.architecture() != object::Architecture::X86_64 {
        tracing::debug!(file = %path.display(), "Go program not on x86-64: not probed");
        return None;
    }
    let version = obj
        .section_by_name(".go.buildinfo")
        .and_then(|s| s.data().ok())
        .and_then(go_version);
    match version {
        Some((1, minor)) if minor >= GO_MIN_MINOR => {}
        v => {
            tracing::info!(file = %path.display(), version = ?v, "Go program older than 1.18 (or of unknown version): its crypto/tls is not probed");
            return None;
        }
    }
    if !GO_FUNCTIONS.iter().all(|(_, f)| found.contains_key(f)) {
        let names: Vec<&'static str> = GO_FUNCTIONS.iter().map(|(_, f)| *f).collect();
        let table = pclntab.and_then(|s| s.data().ok())?;
        for (name, (address, size)) in go_table_functions(table, &names)? {
            let section = obj
                .sections()
                .find(|s| (s.address()..s.address() + s.size()).contains(&address))?;
            let (file_offset, _) = section.file_range()?;
            found.insert(name, (address - section.address() + file_offset, size));
        }
        if !GO_FUNCTIONS.iter().all(|(_, f)| found.contains_key(f)) {
            return None;
        }
    }
    use object::ReadRef;
    let mut points = Vec::new();
    for (prog, function) in GO_FUNCTIONS {
        let (offset, size) = found[function];
        let code = (&cache).read_bytes_at(offset, size).ok()?;
        // Past the stack check: a goroutine whose stack must grow, or that the scheduler
        // asked to yield, leaves there and starts the function over, and a probe at the
        // entry would see one call twice (a write's plaintext sent twice).
        points.push(Point {
            prog,
            function,
            offset: offset + after_stack_check(code),
        });
        // A write's plaintext goes at its start; a read's at each return.
        if prog != GO_READ {
            continue;
        }
        let rets = returns(code);
        if rets.is_empty() {
            return None;
        }
        points.extend(rets.into_iter().map(|r| Point {
            prog: GO_RETURN,
            function,
            offset: offset + r,
        }));
    }
    Some(points)
}

/// The functions of `names` in a Go 1.18+ function table (`.gopclntab`, 64-bit): (address,
/// size) each. The table's header (magic `0xfffffff0`/`0xfffffff1`, pointer size, then eight
/// words: function count, file count, text start, and the offsets of the name table, ...,
/// and of the function table) leads to `nfunc + 1` pairs (entry offset from the text start,
/// record offset), each record starting with its entry offset and its name's offset. `None`
/// when the table is not one of these; names not there are left out.
fn go_table_functions(
    tab: &[u8],
    names: &[&'static str],
) -> Option<HashMap<&'static str, (u64, u64)>> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            tab.get(at..at.checked_add(4)?)?.try_into().ok()?,
        ))
    };
    let word = |i: usize| -> Option<u64> {
        let at = 8 + i * 8;
        Some(u64::from_le_bytes(tab.get(at..at + 8)?.try_into().ok()?))
    };
    let magic = u32_at(0)?;
    if !(magic == 0xffff_fff0 || magic == 0xffff_fff1) || tab.get(4..8)? != [0, 0, 1, 8] {
        return None;
    }
    let nfunc = usize::try_from(word(0)?).ok()?;
    let text_start = word(2)?;
    let funcnames = usize::try_from(word(3)?).ok()?;
    let functab = usize::try_from(word(7)?).ok()?;
    let mut out = HashMap::new();
    for i in 0..nfunc {
        let pair = functab.checked_add(i.checked_mul(8)?)?;
        let entry = u32_at(pair)?;
        let record = functab.checked_add(u32_at(pair + 4)? as usize)?;
        let name_at = funcnames.checked_add(u32_at(record.checked_add(4)?)? as usize)?;
        let rest = tab.get(name_at..)?;
        let name = &rest[..rest.iter().position(|&b| b == 0)?];
        if let Some(n) = names.iter().find(|n| n.as_bytes() == name) {
            let next = u32_at(pair + 8)?;
            out.insert(
                *n,
                (
                    text_start + u64::from(entry),
                    u64::from(next.checked_sub(entry)?),
                ),
            );
            if out.len() == names.len() {
                break;
            }
        }
    }
    Some(out)
}

/// Where a Go function's body starts (x86-64): after its prologue's stack check, a compare of
/// the stack pointer (or of `R12`, the pointer less the frame) with the goroutine's stack guard
/// (`0x10(R14)`) and the conditional jump to the code that grows the stack (or yields) and then
/// jumps back to the entry. The argument registers are untouched until there. 0 (the entry)
/// where the first instructions hold no such check (a function that never grows its stack).
fn after_stack_check(code: &[u8]) -> u64 {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut guard = false;
    for _ in 0..6 {
        if !decoder.can_decode() {
            break;
        }
        let i = decoder.decode();
        if guard && i.mnemonic() == Mnemonic::Jbe {
            return i.next_ip();
        }
        guard = i.mnemonic() == Mnemonic::Cmp
            && (0..i.op_count()).any(|k| i.op_kind(k) == OpKind::Memory)
            && i.memory_base() == Register::R14
            && i.memory_displacement64() == 0x10;
    }
    0
}

/// The offsets of the `RET` instructions in a function's machine code (x86-64), decoded from
/// its start: Go places no data among its instructions.
fn returns(code: &[u8]) -> Vec<u64> {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut out = Vec::new();
    while decoder.can_decode() {
        let i = decoder.decode();
        if i.mnemonic() == Mnemonic::Ret {
            out.push(i.ip());
        }
    }
    out
}

/// Go's version (major, minor) from a program's `.go.buildinfo` section: a 16-byte magic and
/// flags, and since Go 1.18 (flag 2) the version inline at 32 as a length-prefixed string
/// (`go1.19.8`). Older layouts point into the data instead: `None`.
fn go_version(info: &[u8]) -> Option<(u32, u32)> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    if info.len() < 33 || &info[..14] != MAGIC || info[15] & 2 == 0 {
        return None;
    }
    let (len, used) = uvarint(&info[32..])?;
    let start = 32 + used;
    let text = info.get(start..start.checked_add(len as usize)?)?;
    let text = std::str::from_utf8(text).ok()?.strip_prefix("go")?;
    let mut parts = text.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// A Go `uvarint`: the value and how many bytes it took.
fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().take(10).enumerate() {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Directories where the node's shared libraries are.
const LIBRARY_DIRS: [&str; 6] = [
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/usr/local/lib",
];

/// The node's TLS shared libraries (`libssl.so*` in the library directories), as the node's
/// first process sees them (`/proc/1/root`: the host's, also from the observer's container
/// when it shares the host's pid namespace, as the DaemonSet does).
fn system_libraries() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in LIBRARY_DIRS {
        let Ok(dir) = std::fs::read_dir(format!("/proc/1/root{d}")) else {
            continue;
        };
        for e in dir.flatten() {
            let p = e.path();
            if is_libssl(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
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
            tracing::debug!(pid, look, "exec looked at");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The offsets are where the functions' code is in the file: the first bytes at each
    /// equal what `objdump` disassembles there (an ELF's symbols are virtual addresses; the
    /// file offset differs by the section's placement).
    #[test]
    fn finds_the_functions_of_a_shared_library_and_of_a_program_with_its_own_copy() {
        for path in ["/usr/lib/x86_64-linux-gnu/libssl.so.3", "/usr/bin/node"] {
            let p = Path::new(path);
            if !p.exists() {
                continue;
            }
            let f = tls_functions(p, true).unwrap_or_else(|| panic!("{path}"));
            for (_, s, required) in ENTRIES {
                let entry = f.iter().any(|x| x.function == s && x.prog != RETURN);
                assert!(!required || entry, "{path}: {s}");
            }
            // Each read and write function has its entry and its return at the same place.
            for s in RETURNS {
                let at = |ret: bool| {
                    f.iter()
                        .find(|x| x.function == s && (x.prog == RETURN) == ret)
                        .map(|x| x.offset)
                };
                assert_eq!(at(false), at(true), "{path}: {s}");
            }
            println!("{path}: {f:?}");
        }
        // A program without a TLS library of its own.
        assert!(tls_functions(Path::new("/bin/sh"), true).is_none());
    }

    /// `RET` (near, and near with an immediate) found among instructions of every length,
    /// including a `0xc3` byte inside another instruction's immediate (not a return).
    #[test]
    fn finds_the_returns_in_machine_code() {
        let code = [
            0x48, 0x89, 0xd8, // mov rax, rbx
            0xc3, // ret
            0xb8, 0xc3, 0x00, 0x00, 0x00, // mov eax, 0xc3
            0x49, 0x3b, 0x66, 0x10, // cmp rsp, [r14+0x10]
            0xc2, 0x08, 0x00, // ret 8
            0x90, // nop
            0xc3, // ret
        ];
        assert_eq!(returns(&code), vec![3, 13, 17]);
        assert!(returns(&[0x90, 0x90]).is_empty());
    }

    /// A Go function's body starts after its stack check, small frame or large (Go 1.19's
    /// `(*Conn).Read` and `(*Conn).Write`); a function without one is probed at its entry.
    #[test]
    fn finds_where_a_go_functions_body_starts() {
        let small = [
            0x49, 0x3b, 0x66, 0x10, // cmp rsp, [r14+0x10]
            0x0f, 0x86, 0xc2, 0x03, 0x00, 0x00, // jbe morestack
            0x48, 0x83, 0xec, 0x68, // sub rsp, 0x68
        ];
        assert_eq!(after_stack_check(&small), 10);
        let large = [
            0x4c, 0x8d, 0x64, 0x24, 0x98, // lea r12, [rsp-0x68]
            0x4d, 0x3b, 0x66, 0x10, // cmp r12, [r14+0x10]
            0x76, 0x40, // jbe morestack (short)
            0x48, 0x81, 0xec, 0xe8, 0x00, 0x00, 0x00, // sub rsp, 0xe8
        ];
        assert_eq!(after_stack_check(&large), 11);
        let nosplit = [
            0x48, 0x89, 0xd8, // mov rax, rbx
            0x48, 0x39, 0xc3, // cmp rbx, rax
            0x76, 0x02, // jbe
            0xc3, // ret
        ];
        assert_eq!(after_stack_check(&nosplit), 0);
    }

    /// A Go 1.18+ function table: the named functions' addresses (text start plus entry
    /// offset) and sizes (to the next entry); a table with another magic or pointer size, or
    /// offsets past its end, gives none.
    #[test]
    fn finds_functions_in_a_go_function_table() {
        let names = ["main.main", "crypto/tls.(*Conn).Read"];
        let mut tab = Vec::new();
        tab.extend(0xffff_fff1u32.to_le_bytes());
        tab.extend([0, 0, 1, 8]);
        // nfunc, nfiles, text start, funcnames, cu, files, pctab, functab.
        let funcnames = 8 + 8 * 8;
        let names_blob = b"main.main\0crypto/tls.(*Conn).Read\0runtime.x\0";
        let functab = funcnames + names_blob.len();
        for w in [
            3u64,
            0,
            0x40_1000,
            funcnames as u64,
            0,
            0,
            0,
            functab as u64,
        ] {
            tab.extend(w.to_le_bytes());
        }
        tab.extend(names_blob);
        // Pairs (entry, record offset from the function table), 3 functions and the end.
        let records = 4 * 8;
        let pairs = [
            (0x0u32, records),
            (0x100, records + 8),
            (0x180, records + 16),
            (0x200, 0),
        ];
        for (e, r) in pairs {
            tab.extend(e.to_le_bytes());
            tab.extend((r as u32).to_le_bytes());
        }
        // Records: entry offset, name offset.
        for (e, n) in [(0u32, 0u32), (0x100, 10), (0x180, 34)] {
            tab.extend(e.to_le_bytes());
            tab.extend(n.to_le_bytes());
        }
        let f = go_table_functions(&tab, &names).unwrap();
        assert_eq!(f["main.main"], (0x40_1000, 0x100));
        assert_eq!(f["crypto/tls.(*Conn).Read"], (0x40_1100, 0x80));
        let mut other = tab.clone();
        other[7] = 4;
        assert!(go_table_functions(&other, &names).is_none(), "32-bit");
        let mut lying = tab.clone();
        lying[64..72].copy_from_slice(&10_000u64.to_le_bytes());
        assert!(
            go_table_functions(&lying, &names).is_none(),
            "a function table past the end"
        );
    }

    /// Go 1.18+'s build information: the version inline after the 32-byte header; older
    /// layouts and other bytes give none.
    #[test]
    fn reads_the_go_version_from_build_information() {
        let mut info = b"\xff Go buildinf:".to_vec();
        info.extend([8, 2]);
        info.resize(32, 0);
        info.push(8);
        info.extend(b"go1.19.8");
        info.extend([0x80, 0x01]);
        assert_eq!(go_version(&info), Some((1, 19)));
        let mut old = info.clone();
        old[15] = 0;
        assert_eq!(
            go_version(&old),
            None,
            "pointer layout (Go 1.17 and before)"
        );
        let mut lying = info.clone();
        lying[32] = 200;
        assert_eq!(go_version(&lying), None, "a length past the end");
        assert_eq!(go_version(b"\xff Go buildinf:"), None);
        assert_eq!(uvarint(&[0x80, 0x01]), Some((128, 2)));
        assert_eq!(uvarint(&[0x80; 11]), None);
    }
}
