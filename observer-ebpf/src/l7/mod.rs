//! The L7 path, kernel side: capture shared by every protocol.
//!
//! It runs inside the socket send/receive hooks (`sock_send_length` / `sock_recv_length`, or
//! fexit on `tcp_sendmsg` / `tcp_recvmsg` before 6.3), which give the socket and the byte count
//! of each call. The user buffer comes from the syscall's own arguments, read from the task's
//! saved user registers (`bpf_task_pt_regs`): no hook on any syscall.
//!
//! Per connection (the `CONNS` entry the TCP probe shares) the protocol is decided once, from
//! the first bytes: every enabled detector looks at them, and a connection no protocol wants is
//! marked and from then on costs one map lookup per call, no user read. A claimed connection
//! gets an `L7_CONNS` entry that its protocol's framer (one file per protocol) keeps, and the
//! framer sends one record per exchange to the `L7_EVENTS` ring. That state lives until the
//! socket is destroyed (`tcp_destroy_sock`), not just until its close transition, so data read
//! after a peer's FIN or reset still belongs to its own connection, and a socket's memory,
//! reused by a later connection, never inherits it.
//!
//! A TLS connection's plaintext (`crate::tls`, from the TLS library's calls) takes the same
//! path under its own key (the socket with [`TLS_KEY`] set): [`on_tls_io`] instead of the
//! socket hook, the same detectors and framers; the socket's ciphertext is never looked at.
//!
//! Adding a protocol: a file here with `detect` and `on_call`, one arm in [`detect`] and
//! [`frame`], and its id in `observer-common`.

pub mod dns;
pub mod http1;
pub mod http2;
pub mod memcached;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod stream;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_task_pt_regs, generated::bpf_probe_read_user,
    },
};
use observer_common::{
    ConnInfo, L7Conn, L7Dir, L7Event, TlsConn, DIR_UNKNOWN, L7_DNS, L7_EVENT_HEADER, L7_EV_CLOSE,
    L7_EV_REQUEST, L7_F_OPEN_AT_USER, L7_HTTP1, L7_HTTP2, L7_MEMCACHED, L7_MYSQL, L7_NONE,
    L7_POSTGRES, L7_REDIS, L7_REQ_MAX, L7_RESP_MAX, L7_UNDECIDED, LOST_L7_CONN_MAP_FULL,
    LOST_L7_RINGBUF_FULL, LOST_L7_USER_READ, SYSCALL_SLOTS, TLS_KEY, WORK_ENTRY_SLOTS,
    WORK_TASK_REGS, WORK_TLS,
};

use crate::{
    maps::{
        count_lost, L7_CONNS, L7_EVENTS, L7_PROTOCOLS, L7_SCRATCH, RINGBUF_WAKEUP_BYTES,
        SYSCALL_ENTRY, WORK,
    },
    sock,
};

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Offset of `si` (the second syscall argument) in x86_64's `struct pt_regs`; `di` and
/// `orig_ax` (the syscall number) follow it.
pub const PT_REGS_SI: u64 = 104;
/// `msg_iov` in the user-space `struct msghdr` (x86_64 `struct user_msghdr`).
const MSGHDR_IOV: u64 = 16;
/// Size of a `struct mmsghdr` (a msghdr and its `msg_len`), and where `msg_len` is in it.
const MMSGHDR_SIZE: u64 = 64;
const MMSGHDR_LEN: u64 = 56;
/// Messages of a `sendmmsg`/`recvmmsg` array looked at.
const MAX_MMSG: u64 = 8;
/// Iovec entries looked at for the last bytes of a vectored call.
const MAX_IOV: u32 = 16;
/// Calls looked at before a connection whose start was seen is given up as not L7 (its first
/// send and its first receive); one that predates the observer may be seen mid-message, so it
/// gets more.
const TRIES_NEW: u8 = 2;
const TRIES_OLD: u8 = 16;

/// Largest number of bytes read from a call (and mask of that length: every verifier version
/// tracks a mask, also through stack spills).
pub const HEAD_MASK: u32 = observer_common::L7_SNIP_MAX as u32;

/// How the current syscall hands its data over.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Io {
    /// One flat buffer (`read`, `write`, `recvfrom`, `sendto`).
    Buf,
    /// A `struct iovec` array (`readv`, `writev`).
    Iovec,
    /// A `struct msghdr` (`recvmsg`, `sendmsg`).
    Msghdr,
    /// A `struct mmsghdr` array (`recvmmsg`, `sendmmsg`: one socket call per message).
    Mmsg,
    /// No user buffer (`sendfile`, `splice`, io_uring, kernel threads).
    None,
}

/// One send or receive call on a socket.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Call {
    pub sk: u64,
    pub ret: u32,
    pub send: bool,
    pub now: u64,
    /// When the syscall making the call began, where the syscall probe saw it (else `now`).
    pub start: u64,
    pub io: Io,
    /// The buffer, iovec, msghdr or mmsghdr argument of the syscall.
    pub arg: u64,
    /// A datagram socket's call (DNS): its state is in the second scratch slot, not in
    /// `L7_CONNS`.
    pub dgram: bool,
}

/// The data shape of syscall `nr` (x86_64 numbers, the only architecture built for). The
/// message arrays of `recvmmsg`/`sendmmsg` are followed with DNS on only (a constant of the
/// read-only globals: otherwise the verifier never sees that branch).
#[inline(always)]
pub fn io_of(nr: u32) -> Io {
    match nr {
        0 | 1 | 44 | 45 => Io::Buf, // read, write, sendto, recvfrom
        19 | 20 => Io::Iovec,       // readv, writev
        46 | 47 => Io::Msghdr,      // sendmsg, recvmsg
        299 | 307 if L7_PROTOCOLS.load() & (1 << L7_DNS) != 0 => Io::Mmsg, // recvmmsg, sendmmsg
        _ => Io::None,
    }
}

/// The syscall the current task is in: its data's shape and the buffer argument. The socket
/// hooks fire once per socket call, and every syscall of [`Io`] but `None` makes exactly one
/// socket call, starting at the buffer's beginning. When the syscall probe runs, its entry hook
/// kept them (no helper call here); otherwise, or for a syscall that began before the hooks,
/// they come from the task's saved user registers.
#[inline(always)]
pub(crate) fn syscall_io() -> (Io, u64, u64) {
    if WORK.load() & WORK_ENTRY_SLOTS != 0 {
        let tid = bpf_get_current_pid_tgid() as u32;
        if let Some(e) = SYSCALL_ENTRY.get(tid & (SYSCALL_SLOTS - 1)) {
            if e.tid == tid && e.ts_ns != 0 {
                return (io_of(e.nr), e.arg, e.ts_ns);
            }
        }
    }
    // Before 5.15 the helpers below do not exist; the verifier never sees this part there (a
    // constant of the read-only globals decides), and the slots above are the only source.
    if WORK.load() & WORK_TASK_REGS == 0 {
        return (Io::None, 0, 0);
    }
    // SAFETY: helpers on the current task; the registers are read with a checked helper.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    if regs == 0 {
        return (Io::None, 0, 0);
    }
    // si, di, orig_ax.
    let Ok(r) = (unsafe { bpf_probe_read_kernel((regs + PT_REGS_SI) as *const [u64; 3]) }) else {
        return (Io::None, 0, 0);
    };
    (io_of(r[2] as u32), r[0], 0)
}

#[inline(always)]
pub fn read_user<T: Copy + Default>(addr: u64) -> Option<T> {
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

#[inline(always)]
fn min(a: u32, b: u32) -> u32 {
    if a < b {
        a
    } else {
        b
    }
}

#[inline(always)]
fn iov_at(iov: u64, i: u32) -> Option<(u64, u32)> {
    let [base, len]: [u64; 2] = read_user(iov + 16 * i as u64)?;
    Some((
        base,
        if len > u32::MAX as u64 {
            u32::MAX
        } else {
            len as u32
        },
    ))
}

impl Call {
    /// The address of the call's `struct iovec` array (`readv`/`writev`, `recvmsg`/`sendmsg`,
    /// the current message of `recvmmsg`/`sendmmsg`).
    #[inline(always)]
    pub fn iovecs(&self) -> Option<u64> {
        match self.io {
            Io::Iovec => Some(self.arg),
            Io::Msghdr => read_user(self.arg + MSGHDR_IOV),
            Io::Mmsg => read_user(self.mmsg_hdr()? + MSGHDR_IOV),
            Io::Buf | Io::None => None,
        }
    }

    /// The `struct msghdr` of the message this call is in a `sendmmsg`/`recvmmsg` array: the
    /// first whose `msg_len` is still 0. The kernel fills each one in right after its message
    /// (after this hook), and callers zero them (glibc's resolver does); an array reused
    /// without zeroing gives no message, and its bytes are a gap user space counts.
    #[inline(always)]
    pub(crate) fn mmsg_hdr(&self) -> Option<u64> {
        let mut i = 0u64;
        while i < MAX_MMSG {
            let hdr = self.arg + i * MMSGHDR_SIZE;
            let len: u32 = read_user(hdr + MMSGHDR_LEN)?;
            if len == 0 {
                return Some(hdr);
            }
            i += 1;
        }
        None
    }

    /// Segment `i` (> 0) of a vectored call: (address, length), its length cut at the call's
    /// byte count `off` bytes in. Never read past the array: a call's segments before the one
    /// where its byte count ends are all there.
    #[inline(always)]
    pub fn segment(&self, iov: u64, i: u32, off: u32) -> Option<(u64, u32)> {
        iov_at(iov, i).map(|(b, l)| (b, min(l, self.ret.saturating_sub(off))))
    }

    /// The first contiguous user segment of the call's data: (address, length).
    #[inline(always)]
    pub fn first_segment(&self) -> Option<(u64, u32)> {
        match self.io {
            Io::Buf => Some((self.arg, self.ret)),
            Io::Iovec => iov_at(self.arg, 0).map(|(b, l)| (b, min(l, self.ret))),
            Io::Msghdr | Io::Mmsg => {
                let iov: u64 = self.iovecs()?;
                iov_at(iov, 0).map(|(b, l)| (b, min(l, self.ret)))
            }
            Io::None => None,
        }
    }

    /// Reads the first up to [`HEAD_MASK`] bytes of the call's data into the response area of
    /// `ev.data` (at 0); returns how many (0 without a user buffer or when the read failed,
    /// which is counted).
    #[inline(always)]
    pub fn read_head(&self, ev: *mut L7Event) -> u32 {
        let Some((ptr, avail)) = self.first_segment() else {
            return 0;
        };
        let n = if avail > HEAD_MASK { HEAD_MASK } else { avail };
        let sz = unsafe { core::ptr::read_volatile(&n) } & HEAD_MASK;
        if sz == 0 {
            return 0;
        }
        // SAFETY: `ev` is this CPU's scratch record; the response area holds `sz` (< 256) bytes.
        let r =
            unsafe { bpf_probe_read_user((*ev).data.as_mut_ptr() as *mut _, sz, ptr as *const _) };
        if r == 0 {
            sz
        } else {
            count_lost(LOST_L7_USER_READ);
            0
        }
    }

    /// The last up to 8 bytes of the call's data, right-aligned, and how many are valid.
    /// `head` holds the first `n` bytes already read: a call that fits in them needs no read.
    #[inline(always)]
    pub fn tail(&self, head: *const L7Event, n: u32) -> ([u8; 8], u32) {
        if n > 0 && n >= self.ret {
            // Built in a register (stack arrays indexed by a variable make the compiler combine
            // the address with `|`, which the verifier refuses on pointers).
            let k = if n >= 8 { 8 } else { n };
            let mut v = 0u64;
            let mut i = 0u32;
            while i < 8 {
                if i >= k {
                    break;
                }
                let src = ((n - k + i) & HEAD_MASK) as usize;
                // SAFETY: `src` is within the response area; `head` is the scratch record.
                v = (v << 8) | u64::from(unsafe { (*head).data[src] });
                i += 1;
            }
            return (v.to_be_bytes(), k);
        }
        let (base, len) = match self.io {
            Io::Buf => (self.arg, self.ret),
            Io::Iovec | Io::Msghdr | Io::Mmsg => {
                let Some(iov) = self.iovecs() else {
                    return ([0; 8], 0);
                };
                // Find the segment holding the call's last byte.
                let mut left = self.ret;
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
            Io::None => (0, 0),
        };
        if base == 0 || len == 0 {
            return ([0; 8], 0);
        }
        // The 8 bytes ending at the segment's end; when the segment is shorter, the bytes
        // before it are read too (same user allocation or page) and only `len` count.
        match read_user::<[u8; 8]>((base + len as u64).wrapping_sub(8)) {
            Some(t) => (t, if len >= 8 { 8 } else { len }),
            None => ([0; 8], 0),
        }
    }
}

/// Shifts `add` (its last `n` bytes valid) into the rolling 8-byte tail `t`. Done on a u64 (no
/// byte indexed by a variable: older verifiers refuse such stack accesses).
#[inline(always)]
pub fn push_tail(t: &mut [u8; 8], add: [u8; 8], n: u32) {
    if n >= 8 {
        *t = add;
        return;
    }
    let shift = (n & 7) * 8;
    let mask = (1u64 << shift) - 1;
    let v = (u64::from_be_bytes(*t) << shift) | (u64::from_be_bytes(add) & mask);
    *t = v.to_be_bytes();
}

/// Adds a continuation call (no message starts in it) to a direction's counters.
#[inline(always)]
pub fn continue_dir(d: &mut L7Dir, call: &Call, head: *const L7Event, n: u32) {
    let (t, tn) = if call.io == Io::None {
        ([0; 8], 0)
    } else {
        call.tail(head, n)
    };
    d.bytes += call.ret as u64;
    d.last_ns = call.now;
    push_tail(&mut d.tail, t, tn);
}

/// What a detector says of a call's first bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Detected {
    No = 0,
    /// The bytes start a request (the receiving end is the server).
    Request = 1,
    /// The bytes start a response (the sending end is the server).
    Response = 2,
}

/// Runs every enabled detector on the first `n` bytes of a call of `ret` bytes, which
/// [`Call::read_head`] put in the first scratch record: the protocol (bits 8..16) and its
/// verdict. A global BPF function: the verifier checks it once, on its own, not again for
/// every state its callers reach it in (inlined, the detectors' branches made the compiler
/// spill an uninitialised register; as a static function, 5.10's verifier went through them
/// once per data shape of the call and ran out of its million instructions).
/// `dns` is what [`dns::tcp_ports`] read of the socket (0 with DNS off): DNS over TCP is
/// claimed by its port, not by its bytes (servers read a query's length prefix a byte at a
/// time). `old` is 0 for a connection whose start was seen; for one that predates the
/// observer, the [`Detected`] value its ports suggest (HTTP/2 joined mid-way).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn l7_detect(n: u32, ret: u32, dns: u32, old: u32) -> u32 {
    let Some(head) = L7_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let (p, d) = detect(head, n & HEAD_MASK, ret, dns, old);
    (p as u32) << 8 | d as u32
}

/// [`l7_detect`]'s packed answer: the protocol and its verdict.
#[inline(always)]
fn verdict(v: u32) -> (u8, Detected) {
    let d = match v & 0xff {
        1 => Detected::Request,
        2 => Detected::Response,
        _ => Detected::No,
    };
    ((v >> 8) as u8, d)
}

#[inline(always)]
fn detect(head: *const L7Event, n: u32, ret: u32, dns: u32, old: u32) -> (u8, Detected) {
    let enabled = L7_PROTOCOLS.load();
    if enabled & (1 << L7_DNS) != 0 {
        let d = dns::detect_tcp(dns);
        if d != Detected::No {
            return (L7_DNS, d);
        }
    }
    // Before HTTP/1, whose detector would take the preface's `PRI` for a method.
    if enabled & (1 << L7_HTTP2) != 0 {
        let d = http2::detect(head, n);
        if d != Detected::No {
            return (L7_HTTP2, d);
        }
    }
    if enabled & (1 << L7_HTTP1) != 0 {
        let d = http1::detect(head, n);
        if d != Detected::No {
            return (L7_HTTP1, d);
        }
    }
    if enabled & (1 << L7_REDIS) != 0 {
        let d = redis::detect(head, n);
        if d != Detected::No {
            return (L7_REDIS, d);
        }
    }
    if enabled & (1 << L7_POSTGRES) != 0 {
        let d = postgres::detect(head, n);
        if d != Detected::No {
            return (L7_POSTGRES, d);
        }
    }
    // After PostgreSQL: a `Q` message whose length's low byte is 3 reads as a MySQL query.
    if enabled & (1 << L7_MYSQL) != 0 {
        let d = mysql::detect(head, n, ret);
        if d != Detected::No {
            return (L7_MYSQL, d);
        }
    }
    if enabled & (1 << L7_MEMCACHED) != 0 {
        let d = memcached::detect(head, n);
        if d != Detected::No {
            return (L7_MEMCACHED, d);
        }
    }
    // Last: HTTP/2 joined mid-way is told by frame headers alone.
    if old != 0 && enabled & (1 << L7_HTTP2) != 0 {
        let guess = if old == Detected::Request as u32 {
            Detected::Request
        } else {
            Detected::Response
        };
        let d = http2::detect_frames(head, n, ret, guess);
        if d != Detected::No {
            return (L7_HTTP2, d);
        }
    }
    (L7_NONE, Detected::No)
}

/// Protocols framed in user space (see [`stream`]).
#[inline(always)]
fn is_stream(proto: u8) -> bool {
    matches!(
        proto,
        L7_REDIS | L7_POSTGRES | L7_MYSQL | L7_MEMCACHED | L7_DNS | L7_HTTP2
    )
}

/// What the hook calls after [`on_tcp_io`], which handed the call over in `L7_CALL`: nothing,
/// the stream framer, or HTTP/1's framer (with the number of head bytes read in bits 8..).
const NEXT_NONE: u32 = 0;
const NEXT_STREAM: u32 = 1;
const NEXT_HTTP1: u32 = 2;

/// What the hook calls next for a claimed connection's call, handed over in `L7_CALL` (the
/// stream protocols' framer, or HTTP/1's with the `n` head bytes read).
#[inline(always)]
fn frame(proto: u8, call: &Call, n: u32) -> u32 {
    let next = if is_stream(proto) {
        NEXT_STREAM
    } else if proto == L7_HTTP1 {
        NEXT_HTTP1 | (n & HEAD_MASK) << 8
    } else {
        return NEXT_NONE;
    };
    if stream::hand_over(call) {
        next
    } else {
        NEXT_NONE
    }
}

/// Where a socket stands with the connection table: a TCP socket or not, and its entry (null
/// when the table does not hold it: closed before it was entered, or the table full). A plain
/// struct, not an enum: an enum's unused payload is an uninitialised register the compiler
/// may spill, which the verifier refuses.
#[derive(Clone, Copy)]
pub struct Sock {
    pub tcp: bool,
    pub conn: *mut ConnInfo,
}

impl Sock {
    pub const NOT_TCP: Sock = Sock {
        tcp: false,
        conn: core::ptr::null_mut(),
    };
    pub const LOOSE: Sock = Sock {
        tcp: true,
        conn: core::ptr::null_mut(),
    };

    pub fn known(conn: *mut ConnInfo) -> Sock {
        Sock { tcp: true, conn }
    }
}

/// One send or receive call of `ret` (> 0) bytes on socket `sk`.
#[inline(always)]
pub fn on_io(sk: u64, sock: Sock, ret: u32, send: bool, now: u64) {
    if !sock.tcp {
        // DNS over UDP, with DNS on only (a constant: the verifier drops this otherwise).
        if L7_PROTOCOLS.load() & (1 << L7_DNS) != 0 && dns::on_datagram(sk, ret, send, now, 0) {
            stream::l7_stream_call();
        }
        return;
    }
    // The framers are called from here, not from inside the function below: the BPF stack of
    // a chain of calls is 512 bytes in all.
    let next = on_tcp_io(sk, sock.conn, u64::from(ret) | u64::from(send) << 32, now);
    run_next(next);
}

/// The L7 path of one call on a TCP socket (`packed` holds its byte count, and its direction in
/// bit 32): which framer the hook calls next (`NEXT_*`), the call handed over in `L7_CALL`. A
/// function of its own in the program (a BPF-to-BPF call): inlined into the socket hooks, the
/// compiler spilled a register it had left uninitialised on one path, which the verifier
/// refuses (5.10's on the fexit hooks, every kernel's once the detectors grew).
#[inline(never)]
fn on_tcp_io(sk: u64, c: *mut ConnInfo, packed: u64, now: u64) -> u32 {
    let ret = packed as u32;
    let send = packed >> 32 != 0;
    let (conn, st) = if c.is_null() {
        (None, L7_CONNS.get_ptr_mut(&sk))
    } else {
        // SAFETY: a map value pointer the caller got from the verifier-checked lookup.
        match unsafe { (*c).l7 } {
            L7_NONE => return NEXT_NONE,
            L7_UNDECIDED => (Some(c), None),
            // Claimed: its state should be there (else it was lost; decide again).
            _ => (Some(c), L7_CONNS.get_ptr_mut(&sk)),
        }
    };
    let (io, arg, start) = syscall_io();
    let call = Call {
        sk,
        ret,
        send,
        now,
        start: if start == 0 { now } else { start },
        io,
        arg,
        dgram: false,
    };
    let Some(head) = L7_SCRATCH.get_ptr_mut(0) else {
        return NEXT_NONE;
    };
    if let Some(st) = st {
        // SAFETY: map value pointer checked by the verifier.
        let proto = unsafe { (*st).proto };
        let n = if is_stream(proto) {
            0
        } else {
            call.read_head(head)
        };
        return frame(proto, &call, n);
    }
    if io == Io::None {
        return NEXT_NONE;
    }
    let n = call.read_head(head);
    let dns = if L7_PROTOCOLS.load() & (1 << L7_DNS) != 0 {
        dns::tcp_ports(sk, send)
    } else {
        0
    };
    // A connection that predates the observer: the side its ports suggest (the lower port
    // serves), in the terms of this call's direction.
    let old = match conn {
        // SAFETY: map value pointer checked by the verifier.
        Some(c) if unsafe { (*c).direction } == DIR_UNKNOWN => {
            let server = sock::local_port(sk) < sock::peer_port(sk);
            if server != send {
                Detected::Request as u32
            } else {
                Detected::Response as u32
            }
        }
        _ => 0,
    };
    let (proto, d) = verdict(l7_detect(n, call.ret, dns, old));
    if d == Detected::No {
        if let Some(c) = conn {
            // SAFETY: map value pointer checked by the verifier.
            unsafe {
                let limit = if (*c).direction == DIR_UNKNOWN {
                    TRIES_OLD
                } else {
                    TRIES_NEW
                };
                (*c).l7_tries += 1;
                if (*c).l7_tries >= limit {
                    (*c).l7 = L7_NONE;
                }
            }
        }
        return NEXT_NONE;
    }
    let Some(st) = claim(sk, sk, proto, d, send) else {
        return NEXT_NONE;
    };
    // SAFETY: map value pointer checked by the verifier.
    let proto = unsafe { (*st).proto };
    if let Some(c) = conn {
        // SAFETY: map value pointer checked by the verifier.
        unsafe { (*c).l7 = proto };
    }
    frame(proto, &call, n)
}

/// The L7 key of socket `sk`'s TLS plaintext: an addition, not a bit operation, which the
/// verifier refuses on a typed socket pointer (BTF tracepoints' and fexit's arguments);
/// socket addresses are aligned, so the two are the same.
#[inline(always)]
pub fn tls_key(sk: u64) -> u64 {
    sk.wrapping_add(TLS_KEY)
}

/// The socket of an L7 key (a TLS connection's plaintext has [`TLS_KEY`] set), of a key that
/// is a plain number (read from a map).
#[inline(always)]
pub fn sock_of(key: u64) -> u64 {
    key & !TLS_KEY
}

/// One plaintext call of `packed`'s byte count (its direction in bit 32) that a TLS library
/// made on TLS connection `t`, its data at `buf`, begun at `start`: the L7 path of
/// [`on_tcp_io`], keyed by the socket with [`TLS_KEY`] set, its protocol decided in `t`.
/// Returns what the caller runs next (`NEXT_*`).
#[inline(never)]
pub fn on_tls_io(t: *mut TlsConn, buf: u64, packed: u64, start: u64) -> u32 {
    let ret = packed as u32;
    let send = packed >> 32 != 0;
    // SAFETY: a map value pointer the caller got from a verifier-checked lookup.
    let (sk, decided) = unsafe { ((*t).sk, (*t).l7) };
    let key = tls_key(sk);
    let now = unsafe { bpf_ktime_get_ns() };
    let call = Call {
        sk: key,
        ret,
        send,
        now,
        start: if start == 0 { now } else { start },
        io: Io::Buf,
        arg: buf,
        dgram: false,
    };
    let Some(head) = L7_SCRATCH.get_ptr_mut(0) else {
        return NEXT_NONE;
    };
    if decided == L7_NONE {
        return NEXT_NONE;
    }
    // Decided; or undecided here while a call of the same connection on another CPU claimed
    // it (a reader and a writer goroutine start together), or the TLS table forgot this
    // connection (LRU): the state says.
    if let Some(st) = L7_CONNS.get_ptr_mut(&key) {
        // SAFETY: map value pointers checked by the verifier.
        let proto = unsafe { (*st).proto };
        if decided == L7_UNDECIDED {
            unsafe { (*t).l7 = proto };
        }
        let n = if is_stream(proto) {
            0
        } else {
            call.read_head(head)
        };
        return frame(proto, &call, n);
    }
    // Undecided, or its state was lost: decide (again).
    let n = call.read_head(head);
    let (proto, d) = verdict(l7_detect(n, ret, 0, 0));
    if d == Detected::No {
        // SAFETY: as above.
        unsafe {
            (*t).tries += 1;
            if (*t).tries >= TRIES_NEW {
                (*t).l7 = L7_NONE;
            }
        }
        return NEXT_NONE;
    }
    let Some(st) = claim(key, sk, proto, d, send) else {
        return NEXT_NONE;
    };
    // SAFETY: map value pointers checked by the verifier.
    let proto = unsafe { (*st).proto };
    unsafe { (*t).l7 = proto };
    frame(proto, &call, n)
}

/// Runs what [`on_tcp_io`] or [`on_tls_io`] returned.
#[inline(always)]
pub fn run_next(next: u32) {
    match next & 0xff {
        NEXT_STREAM => {
            stream::l7_stream_call();
        }
        NEXT_HTTP1 => {
            http1::l7_http1_call(next >> 8);
        }
        _ => {}
    }
}

/// Enters a connection a protocol claimed on socket `sk`, under `key` (the socket, or its TLS
/// plaintext key): its cgroup, peer and side. (Both are passed: where `sk` is a typed pointer
/// (fexit's arguments), the verifier refuses bit operations on it.)
#[inline(always)]
fn claim(key: u64, sk: u64, proto: u8, d: Detected, send: bool) -> Option<*mut L7Conn> {
    let Ok(cgroup_id) = sock::cgroup_id(sk) else {
        count_lost(observer_common::LOST_SOCK_READ);
        return None;
    };
    let cgroup_ptr = sock::cgroup_ptr(sk);
    // Built in the scratch record's data area (the BPF stack is too small for it).
    let Some(tmp) = L7_SCRATCH.get_ptr_mut(1) else {
        return None;
    };
    let st = tmp as *mut L7Conn;
    // SAFETY: an L7Event (608 bytes) holds an L7Conn (344 bytes); per-CPU scratch slot.
    unsafe {
        (*st).cgroup_id = cgroup_id;
        (*st).cgroup_ptr = cgroup_ptr;
        (*st).req_ts = 0;
        (*st).orphan_ts = 0;
        (*st).resp = L7Dir::default();
        (*st).peer = sock::peer(sk);
        (*st).req_len = 0;
        (*st).resp_first = 0;
        (*st).tgid = 0;
        (*st).proto = proto;
        // A request received or a response sent: this end serves.
        let server = (d == Detected::Request) != send;
        (*st).side = if server {
            observer_common::L7_SIDE_SERVER
        } else {
            observer_common::L7_SIDE_CLIENT
        };
        // A stream protocol's user space holds its pending messages: the socket's end must
        // reach it.
        (*st).flags = if is_stream(proto) {
            L7_F_OPEN_AT_USER
        } else {
            0
        };
        (*st).carry_len = 0;
        (*st).req_snip = 0;
        (*st).carry = [0; observer_common::L7_CARRY_MAX];
        if L7_CONNS.insert(&key, &*st, BPF_NOEXIST as u64).is_err() {
            // There already: another CPU's call of this connection claimed it a moment ago
            // (its state holds, whatever this call detected). Else the table is full.
            if let Some(p) = L7_CONNS.get_ptr_mut(&key) {
                return Some(p);
            }
            count_lost(LOST_L7_CONN_MAP_FULL);
            return None;
        }
    }
    L7_CONNS.get_ptr_mut(&key)
}

/// Drops the L7 state of a socket whose connection (re)starts: a new connection on reused
/// socket memory never inherits anything.
#[inline(always)]
pub fn forget(sk: u64) {
    let _ = L7_CONNS.remove(&sk);
    if WORK.load() & WORK_TLS != 0 {
        let _ = L7_CONNS.remove(&tls_key(sk));
    }
}

/// The socket is destroyed: whatever user space may still wait for (a pending request, a
/// response being transferred) ends with a `CLOSE` record; the state goes.
#[inline(always)]
pub fn on_destroy(sk: u64) {
    end(sk);
    if WORK.load() & WORK_TLS != 0 {
        end(tls_key(sk));
    }
}

/// The end of the L7 state under `sk` (a socket or its TLS plaintext key).
#[inline(always)]
fn end(sk: u64) {
    let Some(st) = L7_CONNS.get_ptr_mut(&sk) else {
        return;
    };
    // SAFETY: map value pointer checked by the verifier.
    let pending = unsafe {
        (*st).req_ts != 0
            || (*st).resp.bytes > (*st).resp_first as u64
            || (*st).flags & L7_F_OPEN_AT_USER != 0
    };
    if pending {
        // SAFETY: as above.
        let now = unsafe { bpf_ktime_get_ns() };
        emit_with_request(sk, st, L7_EV_CLOSE, 0, now);
    }
    let _ = L7_CONNS.remove(&sk);
}

/// The current process id.
#[inline(always)]
pub fn tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// Sends the record the framer built in the scratch slot `ev`: `size` bytes.
#[inline(always)]
pub fn output(ev: *const L7Event, size: u32) {
    // A mask the verifier tracks, and the record's length bounds it.
    let size = (unsafe { core::ptr::read_volatile(&size) } & 1023) as usize;
    if size > core::mem::size_of::<L7Event>() {
        return;
    }
    // SAFETY: `ev` is a valid L7Event and `size` is within it.
    let bytes = unsafe { core::slice::from_raw_parts(ev as *const u8, size) };
    if L7_EVENTS.output::<[u8]>(bytes, wakeup()).is_err() {
        count_lost(LOST_L7_RINGBUF_FULL);
    }
}

/// Wake the reader only when a batch is waiting; user space also drains on a short timer, so a
/// lone record is delivered within that period.
#[inline(always)]
pub fn wakeup() -> u64 {
    if L7_EVENTS.query(BPF_RB_AVAIL_DATA) >= RINGBUF_WAKEUP_BYTES.load() {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// A record of kind `kind` carrying the connection's pending request (if any), its response
/// counters and no response bytes, built in the ring itself (rare records: the pending request
/// of a call-by-call pipeline, a socket's end).
#[inline(always)]
pub fn emit_with_request(sk: u64, st: *mut L7Conn, kind: u8, flags: u8, ts: u64) {
    const SIZE: usize = L7_EVENT_HEADER + L7_RESP_MAX + L7_REQ_MAX;
    let Some(mut slot) = L7_EVENTS.reserve_bytes(SIZE, 0) else {
        count_lost(LOST_L7_RINGBUF_FULL);
        return;
    };
    let ev = slot.as_mut_ptr() as *mut L7Event;
    // SAFETY: the slot holds SIZE bytes: the header and L7_REQ_MAX bytes of data; `st` is a
    // map value pointer checked by the verifier.
    unsafe {
        let has_req = (*st).req_ts != 0;
        (*ev).sk = sk;
        (*ev).cgroup_id = (*st).cgroup_id;
        (*ev).ts_ns = if kind == L7_EV_REQUEST {
            (*st).req_ts
        } else {
            ts
        };
        (*ev).req_ts = (*st).req_ts;
        (*ev).prev = (*st).resp;
        (*ev).peer = (*st).peer;
        (*ev).resp_len = 0;
        (*ev).req_len = if has_req { (*st).req_len } else { 0 };
        (*ev).tgid = (*st).tgid;
        (*ev).proto = (*st).proto;
        (*ev).kind = kind;
        (*ev).side = (*st).side;
        (*ev).flags = flags;
        (*ev).req_snip = if has_req {
            (*st).req_snip & HEAD_MASK as u16
        } else {
            0
        };
        (*ev).resp_snip = 0;
        (*ev)._pad2 = 0;
        core::ptr::copy_nonoverlapping(
            (*st).req.as_ptr() as *const u64,
            (*ev).data.as_mut_ptr().add(L7_RESP_MAX) as *mut u64,
            L7_REQ_MAX / 8,
        );
    }
    slot.submit(wakeup());
}

/// Copies the pending request's bytes into the record's request area (whole: a fixed, aligned
/// copy is cheaper than a helper call); returns how many of them count.
#[inline(always)]
pub fn attach_request(ev: *mut L7Event, st: *const L7Conn) -> u32 {
    // SAFETY: map value pointers checked by the verifier; both areas hold L7_REQ_MAX bytes.
    unsafe {
        core::ptr::copy_nonoverlapping(
            (*st).req.as_ptr() as *const u64,
            (*ev).data.as_mut_ptr().add(L7_RESP_MAX) as *mut u64,
            L7_REQ_MAX / 8,
        );
        ((*st).req_snip as u32) & HEAD_MASK
    }
}
