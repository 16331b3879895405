//! HTTP probe, kernel side: decides which socket data starts an HTTP/1.x message and hands
//! user space only those starts (with a bounded prefix) and the closes of HTTP connections.
//!
//! It runs inside the socket send/receive hooks of the TCP probe (`sock_send_length` /
//! `sock_recv_length`, or fexit on `tcp_sendmsg` / `tcp_recvmsg`), which give the socket and
//! the byte count of each call; the user buffer comes from the syscall's arguments, saved by
//! `sys_enter` in the thread's entry slot. Per call on a connection already known to carry HTTP
//! the cost is one hash lookup and a few stores (byte count, time, last bytes); a call on any
//! other socket reads 16 bytes of the buffer once per syscall and produces nothing unless they
//! look like a request line or a status line. Nothing per body chunk leaves the kernel: user
//! space reads the per-connection counters when it needs to know where a body ended.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::bpf_probe_read_user,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use observer_common::{
    io_kind, SyscallEntry,
    HttpConn, HttpEvent, HTTP_DIR_RECV, HTTP_DIR_SEND, HTTP_EV_CLOSE, HTTP_EV_START,
    HTTP_PREFIX, IO_BUF, IO_IOVEC, IO_MSGHDR, IO_NOBUF, IO_NONE, LOST_HTTP_CONN_MAP_FULL,
    LOST_HTTP_RINGBUF_FULL, LOST_HTTP_USER_READ, LOST_SOCK_READ, SYSCALL_SLOTS,
};

use crate::{
    maps::{
        count_lost, HTTP_CONNS, HTTP_EVENTS, HTTP_SCRATCH, RINGBUF_WAKEUP_BYTES, SYSCALL_ENTRY,
        SYSCALL_TP,
    },
    sock,
};

const BPF_NOEXIST: u64 = 1;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Offset of the second syscall argument (`si`) in x86_64's `struct pt_regs`.
pub const PT_REGS_ARG2: u64 = 104;
/// `msg_iov` in the user-space `struct msghdr` (x86_64 `struct user_msghdr`).
const MSGHDR_IOV: u64 = 16;
/// Iovec entries looked at for the last bytes of a vectored call.
const MAX_IOV: u32 = 16;

/// Entry of a socket I/O syscall (`syscalls:sys_enter_read`, `_write`, … attached to each):
/// when the syscall probe does not run `sys_enter`, the HTTP probe records the syscall's buffer
/// here, paying only on those syscalls instead of on every syscall of the host.
#[tracepoint(category = "syscalls", name = "sys_enter_write")]
pub fn http_sys_enter(ctx: TracePointContext) -> u32 {
    let off = SYSCALL_TP.load();
    // SAFETY: offsets from this kernel's format files of the syscall tracepoints.
    let Ok(nr) = (unsafe { ctx.read_at::<i32>(off.nr as usize) }) else { return 0 };
    let Ok(buf) = (unsafe { ctx.read_at::<u64>(off.arg2 as usize) }) else { return 0 };
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(slot) = SYSCALL_ENTRY.get_ptr_mut(tid & (SYSCALL_SLOTS - 1)) {
        let nr = nr as u32;
        let io = io_kind(nr);
        let buf = if io == IO_NOBUF { 0 } else { buf };
        let ts_ns = unsafe { bpf_ktime_get_ns() };
        // SAFETY: array slot pointer checked by the verifier.
        unsafe { *slot = SyscallEntry { ts_ns, tid, nr, buf, io, io_calls: 0 } };
    }
    0
}

/// Exit of a socket I/O syscall: the entry is consumed, so that a socket call made outside
/// these syscalls (splice, sendmmsg, …) never takes a stale buffer for its data.
#[tracepoint(category = "syscalls", name = "sys_exit_write")]
pub fn http_sys_exit(_ctx: TracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(slot) = SYSCALL_ENTRY.get_ptr_mut(tid & (SYSCALL_SLOTS - 1)) {
        // SAFETY: array slot pointer checked by the verifier.
        unsafe {
            if (*slot).tid == tid {
                (*slot).ts_ns = 0;
            }
        }
    }
    0
}

/// Saves the buffer argument of a socket I/O syscall at entry (`regs` is `struct pt_regs *`).
#[inline(always)]
pub fn enter_buf(regs: u64, io: u32) -> u64 {
    if io == IO_NONE || io == IO_NOBUF || regs == 0 {
        return 0;
    }
    // SAFETY: bpf_probe_read_kernel tolerates bad addresses.
    unsafe { bpf_probe_read_kernel((regs + PT_REGS_ARG2) as *const u64) }.unwrap_or(0)
}

#[inline(always)]
fn read_user<T: Copy + Default>(addr: u64) -> Option<T> {
    let mut v = T::default();
    // SAFETY: the helper writes at most size_of::<T>() bytes into `v`; bad addresses fail.
    let r = unsafe {
        bpf_probe_read_user(
            &mut v as *mut T as *mut _,
            core::mem::size_of::<T>() as u32,
            addr as *const _,
        )
    };
    (r == 0).then_some(v)
}

/// The first contiguous user segment of the call's data: (address, length).
#[inline(always)]
fn first_segment(io: u32, buf: u64, ret: u32) -> Option<(u64, u32)> {
    match io {
        IO_BUF => Some((buf, ret)),
        IO_IOVEC => iov_at(buf, 0).map(|(b, l)| (b, min(l, ret))),
        IO_MSGHDR => {
            let iov: u64 = read_user(buf + MSGHDR_IOV)?;
            iov_at(iov, 0).map(|(b, l)| (b, min(l, ret)))
        }
        _ => None,
    }
}

#[inline(always)]
fn min(a: u32, b: u32) -> u32 {
    if a < b { a } else { b }
}

#[inline(always)]
fn iov_at(iov: u64, i: u32) -> Option<(u64, u32)> {
    let [base, len]: [u64; 2] = read_user(iov + 16 * i as u64)?;
    Some((base, if len > u32::MAX as u64 { u32::MAX } else { len as u32 }))
}

/// The last up to 8 bytes of the call's data, right-aligned, and how many are valid.
#[inline(always)]
fn tail(io: u32, buf: u64, ret: u32) -> ([u8; 8], u32) {
    let (base, len) = match io {
        IO_BUF => (buf, ret),
        IO_IOVEC | IO_MSGHDR => {
            let iov = if io == IO_MSGHDR {
                match read_user::<u64>(buf + MSGHDR_IOV) {
                    Some(v) => v,
                    None => return ([0; 8], 0),
                }
            } else {
                buf
            };
            // Find the segment holding the call's last byte.
            let mut left = ret;
            let mut found = (0u64, 0u32);
            let mut i = 0u32;
            while i < MAX_IOV {
                let Some((b, l)) = iov_at(iov, i) else { break };
                if l >= left {
                    found = (b, left);
                    break;
                }
                left -= l;
                i += 1;
            }
            found
        }
        _ => (0, 0),
    };
    if base == 0 || len == 0 {
        return ([0; 8], 0);
    }
    // The 8 bytes ending at the segment's end; when the segment is shorter, the bytes before it
    // are read too (they lie in the same user allocation or page) and only `len` count.
    match read_user::<[u8; 8]>((base + len as u64).wrapping_sub(8)) {
        Some(t) => (t, if len >= 8 { 8 } else { len }),
        None => ([0; 8], 0),
    }
}

/// Shifts `add` (its last `n` bytes valid) into the rolling 8-byte tail `t`.
#[inline(always)]
fn push_tail(t: &mut [u8; 8], add: [u8; 8], n: u32) {
    if n >= 8 {
        *t = add;
        return;
    }
    let n = n as usize;
    let mut out = [0u8; 8];
    let mut i = 0usize;
    while i < 8 {
        // Keep the last 8-n bytes of t, then the n new bytes.
        out[i] = if i < 8 - n { t[i + n] } else { add[i] };
        i += 1;
    }
    *t = out;
}

#[inline(always)]
fn upper(b: u8) -> bool {
    b.is_ascii_uppercase()
}

/// A request line (`TOKEN SP target`, token of 3-10 upper-case letters, target starting with
/// `/`, `*` or a letter for absolute or authority form) or a status line (`HTTP/1.x `).
#[inline(always)]
fn is_start(h: &[u8; 16], n: u32) -> bool {
    if n < 8 {
        return false;
    }
    if h[0] == b'H' && h[1] == b'T' && h[2] == b'T' && h[3] == b'P' && h[4] == b'/' && h[5] == b'1'
        && h[6] == b'.'
    {
        return true;
    }
    let mut i = 0usize;
    while i < 11 {
        if !upper(h[i]) {
            break;
        }
        i += 1;
    }
    if !(3..=10).contains(&i) || (i + 1) as u32 >= n {
        return false;
    }
    let t = h[i + 1];
    h[i] == b' ' && (t == b'/' || t == b'*' || t.is_ascii_alphanumeric())
}

/// One send (`send = true`) or receive call of `ret` bytes on socket `sk`.
#[inline(always)]
pub fn on_io(sk: u64, ret: u32, send: bool) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(slot) = SYSCALL_ENTRY.get_ptr_mut(tid & (SYSCALL_SLOTS - 1)) else {
        return;
    };
    // SAFETY: array slot pointer checked by the verifier.
    let e = unsafe { *slot };
    let in_syscall = e.tid == tid && e.ts_ns != 0 && e.io != IO_NONE;
    let first = in_syscall && e.io_calls == 0;
    if in_syscall {
        unsafe { (*slot).io_calls += 1 };
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let conn = HTTP_CONNS.get_ptr_mut(&sk);
    if first && e.buf != 0 {
        if let (Some((ptr, avail)), Some(ev)) = (first_segment(e.io, e.buf, ret), HTTP_SCRATCH.get_ptr_mut(0)) {
            // On a known HTTP connection the prefix is read straight into the record (one
            // read); elsewhere 16 bytes first, the prefix only if they look like HTTP.
            let got = if conn.is_some() {
                read_prefix(ev, ptr, avail)
            } else {
                let head: [u8; 16] = read_user(ptr).unwrap_or([0; 16]);
                if is_start(&head, avail) { read_prefix(ev, ptr, avail) } else { 0 }
            };
            // SAFETY: `ev` is this CPU's scratch record.
            let head = unsafe { first16(ev) };
            if is_start(&head, got) {
                start(sk, conn, ev, got, ret, send, now, &e);
                return;
            }
        }
    }
    let Some(c) = conn else { return };
    // SAFETY: map value pointer checked by the verifier.
    let c = unsafe { &mut *c };
    let (t, tn) = if in_syscall && e.io_calls == 0 {
        tail(e.io, e.buf, ret)
    } else {
        ([0; 8], 0)
    };
    if send {
        c.out_bytes += ret as u64;
        c.out_last_ns = now;
        push_tail(&mut c.out_tail, t, tn);
    } else {
        c.in_bytes += ret as u64;
        c.in_last_ns = now;
        push_tail(&mut c.in_tail, t, tn);
    }
}

/// The first 16 bytes of the scratch record's prefix.
#[inline(always)]
unsafe fn first16(ev: *const HttpEvent) -> [u8; 16] {
    let mut h = [0u8; 16];
    // SAFETY: the prefix array is longer than 16 bytes.
    unsafe { core::ptr::copy_nonoverlapping((*ev).prefix.as_ptr(), h.as_mut_ptr(), 16) };
    h
}

/// Reads up to [`PREFIX_MASK`] bytes of user data at `ptr` into the record's prefix; returns
/// how many (0 when the read failed, counted).
#[inline(always)]
fn read_prefix(ev: *mut HttpEvent, ptr: u64, avail: u32) -> u32 {
    let n = if avail > PREFIX_MASK { PREFIX_MASK } else { avail };
    // A mask (which every verifier version tracks, also through stack spills) bounds the size
    // right where the helper takes it.
    let sz = unsafe { core::ptr::read_volatile(&n) } & PREFIX_MASK;
    if sz == 0 {
        return 0;
    }
    // SAFETY: `ev` is this CPU's scratch record; `sz` < the prefix array's length.
    let r = unsafe { bpf_probe_read_user((*ev).prefix.as_mut_ptr() as *mut _, sz, ptr as *const _) };
    if r == 0 {
        sz
    } else {
        count_lost(LOST_HTTP_USER_READ);
        0
    }
}

/// A message starts with this call: reset the connection's counters of its direction and
/// send the record (its prefix already in the scratch slot `ev`, `got` bytes).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn start(
    sk: u64,
    conn: Option<*mut HttpConn>,
    ev: *mut HttpEvent,
    got: u32,
    ret: u32,
    send: bool,
    now: u64,
    e: &SyscallEntry,
) {
    // The record carries the connection's state before this call; a new connection's state
    // is built in the record and entered from there (no copy on the small BPF stack).
    let c = match conn {
        Some(c) => {
            // SAFETY: map value and scratch record pointers checked by the verifier.
            unsafe { (*ev).conn = *c };
            c
        }
        None => {
            if !sock::is_tcp(sk) {
                return;
            }
            let Ok(cgroup_id) = sock::cgroup_id(sk) else {
                count_lost(LOST_SOCK_READ);
                return;
            };
            // SAFETY: scratch record pointer checked by the verifier.
            unsafe {
                let k = &mut (*ev).conn;
                k.out_bytes = 0;
                k.out_last_ns = 0;
                k.in_bytes = 0;
                k.in_last_ns = 0;
                k.out_tail = [0; 8];
                k.in_tail = [0; 8];
                k.cgroup_id = cgroup_id;
                k._pad = 0;
                sock::addrs_into(k, sk);
                if HTTP_CONNS.insert(&sk, &*k, BPF_NOEXIST).is_err() {
                    count_lost(LOST_HTTP_CONN_MAP_FULL);
                }
            }
            match HTTP_CONNS.get_ptr_mut(&sk) {
                Some(c) => c,
                None => return,
            }
        }
    };
    // The last bytes matter only when the data goes beyond the prefix (else user space has
    // them); read only for a flat buffer (one read).
    let (t, tn) = if e.io == IO_BUF && ret > got { tail(IO_BUF, e.buf, ret) } else { ([0; 8], 0) };
    // SAFETY: map value pointer checked by the verifier.
    let cm = unsafe { &mut *c };
    if send {
        cm.out_bytes = ret as u64;
        cm.out_last_ns = now;
        cm.out_tail = [0; 8];
        push_tail(&mut cm.out_tail, t, tn);
    } else {
        cm.in_bytes = ret as u64;
        cm.in_last_ns = now;
        cm.in_tail = [0; 8];
        push_tail(&mut cm.in_tail, t, tn);
    }
    // SAFETY: `ev` is this CPU's scratch record.
    unsafe {
        (*ev).sk = sk;
        (*ev).cgroup_id = (*ev).conn.cgroup_id;
        (*ev).ts_ns = now;
        (*ev).len = ret;
        (*ev).tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        (*ev).kind = HTTP_EV_START;
        (*ev).dir = if send { HTTP_DIR_SEND } else { HTTP_DIR_RECV };
        (*ev).prefix_len = got as u16;
        (*ev)._pad0 = 0;
        output(ev, got);
    }
}

/// Bytes of an [`HttpEvent`] before its prefix.
const HTTP_HEADER: usize = core::mem::offset_of!(HttpEvent, prefix);

/// Largest prefix sent (and mask of its length): one less than the record's prefix array.
const PREFIX_MASK: u32 = HTTP_PREFIX as u32 - 1;

/// Sends the scratch record cut after `prefix_len` bytes of its prefix.
#[inline(always)]
unsafe fn output(ev: *const HttpEvent, prefix_len: u32) {
    let size = HTTP_HEADER + (unsafe { core::ptr::read_volatile(&prefix_len) } & PREFIX_MASK) as usize;
    // SAFETY: `ev` is a valid HttpEvent and `size` is within it.
    let bytes = unsafe { core::slice::from_raw_parts(ev as *const u8, size) };
    // Wake the reader only when a batch is waiting; user space also drains on a short timer,
    // so a lone request is delivered within that period.
    let flags = if HTTP_EVENTS.query(BPF_RB_AVAIL_DATA) >= RINGBUF_WAKEUP_BYTES.load() {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if HTTP_EVENTS.output::<[u8]>(bytes, flags).is_err() {
        count_lost(LOST_HTTP_RINGBUF_FULL);
    }
}

/// A TCP connection closed: if it carried HTTP, tell user space (with the last counters) so
/// that requests still waiting for their response are counted, and forget it.
#[inline(always)]
pub fn on_close(sk: u64) {
    let Some(c) = HTTP_CONNS.get_ptr_mut(&sk) else {
        return;
    };
    let Some(ev) = HTTP_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: map value and this CPU's scratch record, pointers checked by the verifier.
    unsafe {
        (*ev).conn = *c;
        let _ = HTTP_CONNS.remove(&sk);
        (*ev).sk = sk;
        (*ev).cgroup_id = (*ev).conn.cgroup_id;
        (*ev).ts_ns = bpf_ktime_get_ns();
        (*ev).len = 0;
        (*ev).tgid = 0;
        (*ev).kind = HTTP_EV_CLOSE;
        (*ev).dir = 0;
        (*ev).prefix_len = 0;
        (*ev)._pad0 = 0;
        output(ev, 0);
    }
}
