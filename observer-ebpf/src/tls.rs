//! TLS probe: the plaintext of TLS connections, from uprobes on the TLS library's read and
//! write calls (OpenSSL's `SSL_read`, `SSL_write` and their `_ex` forms; BoringSSL and LibreSSL
//! export the same).
//!
//! No library struct is read. The entry uprobe keeps the call (its `SSL` object, buffer and,
//! for the `_ex` forms, where the count goes) in its thread's slot; the socket hooks, which
//! run for every socket call, note the socket a call in flight on their thread reads or
//! writes (the ciphertext) and leave its bytes alone; the return uprobe hands the plaintext,
//! tied to that socket, to the L7 path under the socket's TLS key. A call that found its data
//! already buffered makes no socket call: the socket its `SSL` object had last is used
//! (`TLS_CONNS`, by process and object, removed at `SSL_free`, an LRU table so a missed free
//! costs nothing).
//!
//! Libraries whose `SSL` objects read and write memory instead of the socket (Node.js,
//! Python's asyncio) make no socket call inside theirs: a new object's socket is the one its
//! thread last received on (`TLS_THREADS`), where the handshake's last flight (or a read's
//! data) came from just before. (The write's buffer cannot wait for the next send: Node frees
//! it as soon as `SSL_write` returns.)
//!
//! Go's `crypto/tls` has no library to hook and Go programs make no socket call on the thread
//! that entered a read: a goroutine parked for its data resumes on any thread. Its
//! `(*Conn).Read` and `(*Conn).Write` are probed at entry and at each of their `RET`
//! instructions (a return uprobe would break Go's moving stacks), the call kept by goroutine
//! (`g`, register R14 in Go's register ABI). The socket comes from the connection itself: its
//! `net.Conn`'s descriptor (`*net.TCPConn` -> `netFD` -> `poll.FD.Sysfd`, a layout Go has
//! kept since 1.9) and the process's descriptor table (layout from BTF), checked to be a TCP
//! socket.
//!
//! `sched_process_exec` tells user space of every new program, whose TLS libraries it then
//! looks for and probes (once per library file).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, raw_tracepoint, uprobe, uretprobe},
    programs::{BtfTracePointContext, ProbeContext, RawTracePointContext, RetProbeContext},
};
use observer_common::{
    GoTlsCall, TlsCall, TlsConn, L7_NONE, L7_UNDECIDED, LOST_TLS_CONN_MAP_FULL,
    LOST_TLS_GO_CALL_MAP_FULL, LOST_TLS_GO_NO_SOCKET, LOST_TLS_NO_SOCKET, LOST_TLS_SLOT_COLLISION,
    TLS_SLOTS,
};

use crate::{
    l7::{self, read_user},
    maps::{
        count_lost, CONNS, EXEC_EVENTS, FILES, GO_TLS_CALLS, TLS_CALLS, TLS_CONNS, TLS_THREADS,
    },
};

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, false, true);
    0
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, true, true);
    0
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, false, false);
    0
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, true, false);
    0
}

/// The return of any of the four. Each returns a C `int`: the upper half of the register is
/// not part of it (`-1` reads as 4294967295 in 64 bits).
#[uretprobe]
pub fn ssl_ret(ctx: RetProbeContext) -> u32 {
    on_return(ctx.ret::<i32>());
    0
}

/// `SSL_free(ssl)`: the object's socket is forgotten (its memory may serve another).
#[uprobe]
pub fn ssl_free(ctx: ProbeContext) -> u32 {
    if let Some(ssl) = ctx.arg::<u64>(0) {
        let _ = TLS_CONNS.remove(&conn_key(ssl));
    }
    0
}

/// `crypto/tls.(*Conn).Write(c, b)`, past its stack check: `c` in RAX, `b`'s pointer and length
/// in RBX and RCX (its plaintext goes there; its returns are not needed).
#[uprobe]
pub fn go_tls_write(ctx: ProbeContext) -> u32 {
    go_enter(&ctx, true);
    0
}

/// `crypto/tls.(*Conn).Read(c, b)`, past its stack check.
#[uprobe]
pub fn go_tls_read(ctx: ProbeContext) -> u32 {
    go_enter(&ctx, false);
    0
}

/// A `RET` of `Read`: the count in RAX, the goroutine still in R14.
#[uprobe]
pub fn go_tls_ret(ctx: ProbeContext) -> u32 {
    go_return(&ctx);
    0
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn process_exec_btf(_ctx: BtfTracePointContext) -> i32 {
    on_exec();
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn process_exec_raw(_ctx: RawTracePointContext) -> i32 {
    on_exec();
    0
}

/// A new program runs in this process: its pid to user space (a lost one is counted by the
/// ring's reader as a gap it cannot see; the ring is far larger than exec rates need).
#[inline(always)]
fn on_exec() {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let _ = EXEC_EVENTS.output::<u32>(pid, 0);
}

/// `SSL_read(ssl, buf, num)` / `SSL_write(ssl, buf, num)`, and the `_ex` forms with the count's
/// address as fourth argument.
#[inline(always)]
fn enter(ctx: &ProbeContext, ex: bool, send: bool) {
    let id = bpf_get_current_pid_tgid();
    let tid = id as u32;
    let Some(slot) = TLS_CALLS.get_ptr_mut(tid & (TLS_SLOTS - 1)) else {
        return;
    };
    let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return;
    };
    let count_ptr = if ex {
        match ctx.arg::<u64>(3) {
            Some(p) if p != 0 => p,
            _ => return,
        }
    } else {
        0
    };
    // SAFETY: an array value pointer checked by the verifier.
    unsafe {
        if (*slot).tid != 0 && (*slot).tid != tid {
            count_lost(LOST_TLS_SLOT_COLLISION);
        }
        *slot = TlsCall {
            ssl,
            buf,
            count_ptr,
            start_ns: bpf_ktime_get_ns(),
            sk: 0,
            tid,
            send: send as u32,
        };
    }
}

/// Called by the socket hooks for each call of `ret` > 0 bytes on TCP socket `sk`: whether a
/// TLS call is in flight on this thread (its ciphertext, then, which the L7 path leaves
/// alone; the first socket is the call's). A receive outside one is noted as the thread's
/// last.
#[inline(always)]
pub fn on_socket_call(sk: u64, send: bool) -> bool {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(slot) = TLS_CALLS.get_ptr_mut(tid & (TLS_SLOTS - 1)) else {
        return false;
    };
    // SAFETY: an array value pointer checked by the verifier.
    unsafe {
        if (*slot).tid == tid {
            if (*slot).sk == 0 {
                (*slot).sk = sk;
            }
            return true;
        }
    }
    if !send {
        if let Some(th) = TLS_THREADS.get_ptr_mut(tid & (TLS_SLOTS - 1)) {
            // Written only when it changes: a thread mostly receives on one socket, and a
            // store to a shared line on every receive of the node costs more than the read.
            // SAFETY: as above.
            unsafe {
                if (*th).tid != tid || (*th).recv_sk != sk {
                    (*th).tid = tid;
                    (*th).recv_sk = sk;
                }
            }
        }
    }
    false
}

/// The TLS connection of `ssl`, entered with socket `sk` (when not 0) if new or if it serves
/// another socket now (`SSL_set_fd` again, or a missed free: decided anew). A new one's
/// socket is left alone by the L7 path from then on.
#[inline(always)]
fn tls_conn(ssl: u64, sk: u64) -> Option<*mut TlsConn> {
    let key = conn_key(ssl);
    if let Some(t) = TLS_CONNS.get_ptr_mut(&key) {
        // SAFETY: map value pointer checked by the verifier.
        unsafe {
            if sk != 0 && (*t).sk != sk {
                *t = fresh(sk);
            }
        }
        return Some(t);
    }
    if sk == 0 {
        return None;
    }
    // Only if still absent: a call of the same connection on another CPU (Go's reader and
    // writer goroutines start together) may have entered it, and decided it, since the
    // lookup; replacing its entry would undo that decision.
    if TLS_CONNS
        .insert(&key, &fresh(sk), BPF_NOEXIST as u64)
        .is_err()
        && TLS_CONNS.get_ptr(&key).is_none()
    {
        count_lost(LOST_TLS_CONN_MAP_FULL);
        return None;
    }
    if let Some(c) = CONNS.get_ptr_mut(&sk) {
        // SAFETY: as above.
        unsafe {
            if (*c).l7 == L7_UNDECIDED {
                (*c).l7 = L7_NONE;
            }
        }
    }
    TLS_CONNS.get_ptr_mut(&key)
}

/// The `TLS_CONNS` key of `SSL` object `ssl` of the current process: processes running the
/// same program allocate their objects at the same addresses.
#[inline(always)]
fn conn_key(ssl: u64) -> [u64; 2] {
    [ssl, bpf_get_current_pid_tgid() >> 32]
}

#[inline(always)]
fn on_return(rc: i32) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(slot) = TLS_CALLS.get_ptr_mut(tid & (TLS_SLOTS - 1)) else {
        return;
    };
    // SAFETY: an array value pointer checked by the verifier.
    let c = unsafe {
        if (*slot).tid != tid {
            return;
        }
        (*slot).tid = 0;
        *slot
    };
    let n: u64 = if c.count_ptr != 0 {
        if rc != 1 {
            return;
        }
        match read_user::<u64>(c.count_ptr) {
            Some(n) => n,
            None => return,
        }
    } else if rc > 0 {
        rc as u64
    } else {
        return;
    };
    if n == 0 {
        return;
    }
    let n = if n > u32::MAX as u64 {
        u32::MAX
    } else {
        n as u32
    };
    // Without a socket call inside and on a new object, a memory BIO's: its ciphertext came
    // from the socket the thread last received on (a read's data, and a write's handshake
    // before it: its first write follows the read that completed the handshake).
    let sk = if c.sk == 0 && TLS_CONNS.get_ptr(&conn_key(c.ssl)).is_none() {
        match TLS_THREADS.get_ptr(tid & (TLS_SLOTS - 1)) {
            // SAFETY: an array value pointer checked by the verifier.
            Some(th) if unsafe { (*th).tid } == tid => unsafe { (*th).recv_sk },
            _ => 0,
        }
    } else {
        c.sk
    };
    let Some(t) = tls_conn(c.ssl, sk) else {
        count_lost(LOST_TLS_NO_SOCKET);
        return;
    };
    let next = l7::on_tls_io(t, c.buf, u64::from(n) | (c.send as u64) << 32, c.start_ns);
    l7::run_next(next);
}

/// Registers of a probed Go function (register ABI): RAX, RBX, RCX and the goroutine (R14).
#[inline(always)]
fn go_regs(ctx: &ProbeContext) -> (u64, u64, u64, u64) {
    let r = ctx.regs;
    // SAFETY: the context of a uprobe is its pt_regs, readable by the program.
    unsafe { ((*r).rax, (*r).rbx, (*r).rcx, (*r).r14) }
}

#[inline(always)]
fn go_enter(ctx: &ProbeContext, send: bool) {
    let (conn, buf, len, g) = go_regs(ctx);
    if conn == 0 || g == 0 {
        return;
    }
    let sk = match go_socket(conn) {
        GoSocket::Tcp(sk) => sk,
        // A call on a closed connection fails at once: nothing to follow.
        GoSocket::Closed => return,
        GoSocket::Unknown => {
            count_lost(LOST_TLS_GO_NO_SOCKET);
            return;
        }
    };
    // The connection is known from its first call on: a handshake inside it (a server's
    // first read) leaves the socket's ciphertext to no protocol.
    let Some(t) = tls_conn(conn, sk) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if send {
        // A write's plaintext goes now, whole: Go writes all of it or fails the connection,
        // and another goroutine may read the answer before this one returns (an HTTP/2
        // client's reader): the request must come first.
        if len == 0 {
            return;
        }
        let n = if len > u64::from(u32::MAX) {
            u32::MAX
        } else {
            len as u32
        };
        let next = l7::on_tls_io(t, buf, u64::from(n) | 1 << 32, now);
        l7::run_next(next);
        return;
    }
    let call = GoTlsCall {
        conn,
        buf,
        start_ns: now,
        sk,
        send: 0,
        _pad: 0,
    };
    // The probe is past the stack check (a function started over for a larger stack passes
    // it once): an entry again for the same goroutine is a call whose return was lost, and
    // the last one holds.
    if GO_TLS_CALLS.insert(&go_key(g), &call, 0).is_err() {
        count_lost(LOST_TLS_GO_CALL_MAP_FULL);
    }
}

#[inline(always)]
fn go_return(ctx: &ProbeContext) {
    let (n, _, _, g) = go_regs(ctx);
    let key = go_key(g);
    // SAFETY: map value pointer checked by the verifier; copied before the removal.
    let Some(c) = (unsafe { GO_TLS_CALLS.get(&key) }).copied() else {
        return;
    };
    let _ = GO_TLS_CALLS.remove(&key);
    let n = n as i64;
    if n <= 0 {
        return;
    }
    let n = if n > u32::MAX as i64 {
        u32::MAX
    } else {
        n as u32
    };
    let Some(t) = tls_conn(c.conn, c.sk) else {
        count_lost(LOST_TLS_NO_SOCKET);
        return;
    };
    let next = l7::on_tls_io(t, c.buf, u64::from(n) | (c.send as u64) << 32, c.start_ns);
    l7::run_next(next);
}

#[inline(always)]
fn go_key(g: u64) -> [u64; 2] {
    [g, bpf_get_current_pid_tgid() >> 32]
}

enum GoSocket {
    Tcp(u64),
    /// The descriptor is gone (`-1`: the connection was closed).
    Closed,
    /// Not a TCP socket, or not readable.
    Unknown,
}

/// The TCP socket under Go connection `conn` (a `*tls.Conn`): its `net.Conn`'s data word
/// (offset 8 of the interface, the first field of `tls.Conn`) is a `*net.TCPConn`, whose
/// first word is its `*netFD`, whose `poll.FD` holds the descriptor after its 16-byte mutex.
#[inline(always)]
fn go_socket(conn: u64) -> GoSocket {
    let Some(fd) = read_user::<u64>(conn + 8)
        .and_then(read_user::<u64>)
        .and_then(|netfd| read_user::<i64>(netfd + 16))
    else {
        return GoSocket::Unknown;
    };
    if fd == -1 {
        return GoSocket::Closed;
    }
    match fd_file(fd) {
        // Not open: closed by another goroutine under this call (Go closes the descriptor
        // before it marks it -1); the call fails at once.
        Some(0) => GoSocket::Closed,
        Some(file) => match file_socket(file) {
            Some(sk) if crate::sock::is_tcp(sk) => GoSocket::Tcp(sk),
            _ => GoSocket::Unknown,
        },
        None => GoSocket::Unknown,
    }
}

/// The file behind descriptor `fd` of the current process (0: the descriptor is not open);
/// `None` where the table could not be read.
#[inline(always)]
fn fd_file(fd: i64) -> Option<u64> {
    let o = FILES.load();
    if o.valid == 0 || fd < 0 {
        return None;
    }
    let task = unsafe { bpf_get_current_task() };
    let files = kernel_at::<u64>(task, o.task_files)?;
    let fdt = kernel_at::<u64>(files, o.files_fdt)?;
    let max = kernel_at::<u32>(fdt, o.fdtable_max_fds)?;
    if fd as u64 >= u64::from(max) {
        return Some(0);
    }
    let fds = kernel_at::<u64>(fdt, o.fdtable_fd)?;
    kernel_at::<u64>(fds + fd as u64 * 8, 0)
}

/// The socket (`struct sock`) of `file`, if it is one: the file's private data is a
/// `struct socket` whose `file` points back at the file.
#[inline(always)]
fn file_socket(file: u64) -> Option<u64> {
    let o = FILES.load();
    let socket = kernel_at::<u64>(file, o.file_private_data)?;
    if kernel_at::<u64>(socket, o.socket_file)? != file {
        return None;
    }
    let sk = kernel_at::<u64>(socket, o.socket_sk)?;
    (sk != 0).then_some(sk)
}

#[inline(always)]
fn kernel_at<T: Copy>(base: u64, off: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel tolerates bad addresses (returns an error).
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T) }.ok()
}

#[inline(always)]
fn fresh(sk: u64) -> TlsConn {
    TlsConn {
        sk,
        l7: L7_UNDECIDED,
        tries: 0,
        _pad: [0; 6],
    }
}
