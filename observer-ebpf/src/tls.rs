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
//! `sched_process_exec` tells user space of every new program, whose TLS libraries it then
//! looks for and probes (once per library file).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, raw_tracepoint, uprobe, uretprobe},
    programs::{BtfTracePointContext, ProbeContext, RawTracePointContext, RetProbeContext},
};
use observer_common::{
    TlsCall, TlsConn, L7_NONE, L7_UNDECIDED, LOST_TLS_CONN_MAP_FULL, LOST_TLS_NO_SOCKET,
    LOST_TLS_SLOT_COLLISION, TLS_SLOTS,
};

use crate::{
    l7::{self, read_user},
    maps::{count_lost, CONNS, EXEC_EVENTS, TLS_CALLS, TLS_CONNS, TLS_THREADS},
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
    if TLS_CONNS.insert(&key, &fresh(sk), 0).is_err() {
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

#[inline(always)]
fn fresh(sk: u64) -> TlsConn {
    TlsConn {
        sk,
        l7: L7_UNDECIDED,
        tries: 0,
        _pad: [0; 6],
    }
}
