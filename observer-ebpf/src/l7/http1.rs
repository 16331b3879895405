//! HTTP/1.x detector and framer.
//!
//! A message starts with a call whose data begins with a request line (an upper-case method of
//! 3 to 10 letters, a space, a target) or a status line (`HTTP/1.x NNN`). Per connection the
//! framer keeps the pending request (its first call's time, length and first bytes) and the
//! counters of the response in flight; each response start sends one record with the pending
//! request and the response's first bytes, so one record describes one exchange. Responses
//! whose body outlasts their first call are ended in user space from the counters (they ride
//! the next record, or user space looks them up). Requests pipelined call by call (a second
//! request before the first response) send the older one on its own. Interim responses
//! (`100 Continue`) are records too: user space skips them and pairs the final one.

use observer_common::{
    L7Conn, L7Dir, L7Event, L7_CARRY_MAX, L7_EVENT_HEADER, L7_EVF_ANSWERED, L7_EV_EXCHANGE,
    L7_EV_REQUEST, L7_F_HEAD_OPEN, L7_F_OPEN_AT_USER, L7_HEAD_JOIN_MAX, L7_REQ_MAX, L7_RESP_MAX,
    L7_SIDE_CLIENT, LOST_L7_STALE_STATE,
};

use super::{attach_request, continue_dir, emit_with_request, output, tgid, Call, Detected};
use crate::{
    maps::{count_lost, L7_CALL, L7_CONNS, L7_SCRATCH},
    sock,
};

/// Byte `i` (< 16) of the call's first bytes (in the record's response area).
#[inline(always)]
fn byte(head: *const L7Event, i: usize) -> u8 {
    // SAFETY: `head` is the scratch record; `i` is a constant index below 16.
    unsafe { (*head).data[i & 15] }
}

/// A status line: `HTTP/1.x NNN`.
#[inline(always)]
fn is_status(head: *const L7Event, n: u32) -> bool {
    n >= 12
        && byte(head, 0) == b'H'
        && byte(head, 1) == b'T'
        && byte(head, 2) == b'T'
        && byte(head, 3) == b'P'
        && byte(head, 4) == b'/'
        && byte(head, 5) == b'1'
        && byte(head, 6) == b'.'
        && byte(head, 8) == b' '
        && byte(head, 9).is_ascii_digit()
        && byte(head, 10).is_ascii_digit()
        && byte(head, 11).is_ascii_digit()
}

/// A request line: `TOKEN SP target`, a token of 3-10 upper-case letters, the target starting
/// with `/`, `*` or an alphanumeric (absolute or authority form). HTTP/2's connection preface
/// (`PRI * HTTP/2.0`) is not HTTP/1.
#[inline(always)]
fn is_request(head: *const L7Event, n: u32) -> bool {
    if n < 8 {
        return false;
    }
    let mut i = 0usize;
    while i < 11 {
        if !byte(head, i).is_ascii_uppercase() {
            break;
        }
        i += 1;
    }
    if !(3..=10).contains(&i) || (i + 1) as u32 >= n || byte(head, i) != b' ' {
        return false;
    }
    let t = byte(head, i + 1);
    if !(t == b'/' || t == b'*' || t.is_ascii_alphanumeric()) {
        return false;
    }
    !(i == 3 && byte(head, 0) == b'P' && byte(head, 1) == b'R' && byte(head, 2) == b'I')
}

/// Whether the first `n` bytes of a call start an HTTP/1.x message.
#[inline(always)]
pub fn detect(head: *const L7Event, n: u32) -> Detected {
    if is_status(head, n) {
        Detected::Response
    } else if is_request(head, n) {
        Detected::Request
    } else {
        Detected::No
    }
}

/// The framer as a global BPF function, for the call the socket hook handed over in
/// `L7_CALL`, whose first `n` bytes are in the first scratch record. The verifier checks it
/// once, on its own, instead of once for every state the hook reaches it in: as part of the
/// hooks, 6.1's verifier went through 900,000 instructions for it (a minute and a half per
/// observer start under emulation), 5.10's past its million.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn l7_http1_call(n: u32) -> u32 {
    let Some(slot) = L7_CALL.get_ptr(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot, written by the hook that calls this function.
    let call = unsafe { *slot };
    let Some(st) = L7_CONNS.get_ptr_mut(&call.sk) else {
        return 0;
    };
    let Some(head) = L7_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    on_call(st, &call, head, n & super::HEAD_MASK);
    0
}

/// One call of an HTTP/1.x connection; `head` holds its first `n` bytes.
#[inline(always)]
fn on_call(st: *mut L7Conn, call: &Call, head: *mut L7Event, n: u32) {
    // SAFETY: map value pointer checked by the verifier.
    let s = unsafe { &mut *st };
    let request_dir = call.send == (s.side == L7_SIDE_CLIENT);
    if request_dir {
        let short = call.ret as usize <= L7_CARRY_MAX && n == call.ret;
        // Kept bytes first: `P` then `OST /…` is a POST, though `OST /…` alone would read as
        // a request of method `OST`. Else the call alone.
        if s.carry_len != 0 && !short && joined(st, call, head, n) {
            return;
        }
        if is_request(head, n) {
            s.carry_len = 0;
            request_start(st, call, head, n);
            return;
        }
        // The rest of a head cut into calls (`GET /metrics`, then ` HTTP/1.1\r\n…`).
        if s.flags & L7_F_HEAD_OPEN != 0 {
            append_head(s, call, head, n);
        }
        // Short: kept, or added to what was kept (`G`, then `E`, ...): a next request's start
        // read alone (the request pending then is whole: it stays as it is).
        if short && (s.carry_len != 0 || byte(head, 0).is_ascii_uppercase()) {
            keep(s, head, n);
        }
        return;
    }
    if !is_status(head, n) {
        continue_dir(&mut s.resp, call, head, n);
        return;
    }
    // A response starts: one record, with the request it answers when one is pending.
    let (t, tn) = call.tail(head, n);
    // SAFETY: `head` is this CPU's scratch record, `st` a map value.
    unsafe {
        let has_req = s.req_ts != 0;
        (*head).sk = call.sk;
        (*head).cgroup_id = s.cgroup_id;
        (*head).ts_ns = call.now;
        (*head).req_ts = s.req_ts;
        (*head).prev = s.resp;
        (*head).peer = s.peer;
        (*head).resp_len = call.ret;
        (*head).req_len = if has_req { s.req_len } else { 0 };
        (*head).tgid = if has_req { s.tgid } else { tgid() };
        (*head).proto = s.proto;
        (*head).kind = L7_EV_EXCHANGE;
        (*head).side = s.side;
        (*head).flags = 0;
        (*head).resp_snip = n as u16;
        (*head)._pad2 = 0;
        let req = if has_req { attach_request(head, st) } else { 0 };
        (*head).req_snip = req as u16;
        output(head, (L7_EVENT_HEADER + L7_RESP_MAX) as u32 + req);
        // An interim response (1xx but 101): user space waits for the final one, which a
        // close must still end.
        let interim = byte(head, 9) == b'1' && !(byte(head, 10) == b'0' && byte(head, 11) == b'1');
        if interim {
            s.flags |= L7_F_OPEN_AT_USER;
        } else {
            s.flags &= !L7_F_OPEN_AT_USER;
        }
    }
    // A response with no request: its request's send hook may not have run yet (see
    // `request_start`).
    s.orphan_ts = if s.req_ts == 0 { call.now } else { 0 };
    s.req_ts = 0;
    s.req_snip = 0;
    s.resp_first = call.ret;
    s.resp = L7Dir {
        bytes: call.ret as u64,
        last_ns: call.now,
        tail: [0; 8],
    };
    super::push_tail(&mut s.resp.tail, t, tn);
}

/// A request-direction call of `n` (at most [`L7_CARRY_MAX`]) bytes that may be a request
/// line's start: kept for the next call (added to what was kept, or instead of it when both
/// would not fit).
#[inline(always)]
fn keep(s: &mut L7Conn, head: *const L7Event, n: u32) {
    let mut at = s.carry_len as usize;
    if at + n as usize > L7_CARRY_MAX {
        at = 0;
    }
    let mut i = 0usize;
    while i < L7_CARRY_MAX {
        if i < n as usize && at + i < L7_CARRY_MAX {
            s.carry[(at + i) % L7_CARRY_MAX] = byte(head, i);
        }
        i += 1;
    }
    let total = at + n as usize;
    s.carry_len = if total > L7_CARRY_MAX { 0 } else { total as u8 };
}

/// Whether a request's head whose last call is the first `n` bytes in `head` may go on in the
/// next calls: that call was read whole, did not end in `\r\n\r\n`, and fewer than
/// [`L7_HEAD_JOIN_MAX`] bytes are held. (A head with its body in one call counts as open: the
/// body's next calls, if any before the response, are added, and never read as a request.)
#[inline(always)]
fn head_open(head: *const L7Event, n: u32, whole: bool, held: usize) -> bool {
    if !whole || held >= L7_HEAD_JOIN_MAX {
        return false;
    }
    if n < 4 {
        return true;
    }
    let at = |i: u32| -> u8 {
        // SAFETY: `head` is the scratch record; the index is masked to its response area.
        unsafe { (*head).data[((n - 4 + i) & super::HEAD_MASK) as usize] }
    };
    !(at(0) == b'\r' && at(1) == b'\n' && at(2) == b'\r' && at(3) == b'\n')
}

/// Adds a request-direction call (its first `n` bytes in `head`) to the pending request's
/// first bytes, while its head is open (see [`head_open`]).
#[inline(always)]
fn append_head(s: &mut L7Conn, call: &Call, head: *const L7Event, n: u32) {
    let held = s.req_snip as usize;
    if s.req_ts == 0 || held >= L7_HEAD_JOIN_MAX || n == 0 {
        s.flags &= !L7_F_HEAD_OPEN;
        return;
    }
    // Offset and length bounded apart (below 128 each, 255 together) for the verifier, from
    // a load of their own.
    // SAFETY: a field of the map value.
    let off = unsafe { core::ptr::read_volatile(&s.req_snip) } as usize & (L7_HEAD_JOIN_MAX - 1);
    let len = (n as usize).min(L7_HEAD_JOIN_MAX) & (2 * L7_HEAD_JOIN_MAX - 1);
    if len == 0 || len > L7_HEAD_JOIN_MAX {
        return;
    }
    // SAFETY: `head` is this CPU's scratch record (`n` bytes read at its start); the state's
    // request buffer holds L7_REQ_MAX (256) bytes, `off + len` is at most 255.
    let copied = unsafe {
        aya_ebpf::helpers::bpf_probe_read_kernel_buf(
            (*head).data.as_ptr(),
            core::slice::from_raw_parts_mut(s.req.as_mut_ptr().add(off), len),
        )
    };
    if copied.is_err() {
        s.flags &= !L7_F_HEAD_OPEN;
        return;
    }
    s.req_snip = (off + len) as u16;
    if !head_open(head, n, n == call.ret, off + len) {
        s.flags &= !L7_F_HEAD_OPEN;
    }
}

/// The call after kept bytes: if both together start a request, it starts with the kept
/// bytes' call (the call's first `n` bytes join them, then move to the front of `head`).
/// Whether it did; the kept bytes are used up either way, and `head` still starts with the
/// call's own bytes when it did not (the caller then tries the call alone).
#[inline(always)]
fn joined(st: *mut L7Conn, call: &Call, head: *mut L7Event, n: u32) -> bool {
    // SAFETY: map value pointer checked by the verifier.
    let s = unsafe { &mut *st };
    let k = (s.carry_len as usize).min(L7_CARRY_MAX);
    // Where the call's bytes go behind them, from a load of its own: the loop's comparisons
    // below leave `k` with bounds that 5.10's verifier, on paths it cannot tell are dead,
    // refuses to add to a pointer.
    // SAFETY: as above.
    let off = unsafe { core::ptr::read_volatile(&(*st).carry_len) } as usize & 7;
    s.carry_len = 0;
    // The request area of the scratch record is free while a request-direction call is
    // framed: the joined bytes are built there, the call's own stay at the front.
    // SAFETY: `head` is this CPU's scratch record: its data holds L7_RESP_MAX + L7_REQ_MAX
    // bytes; the copy's length is below L7_REQ_MAX - L7_CARRY_MAX.
    unsafe {
        let data = (*head).data.as_mut_ptr();
        let mut i = 0usize;
        while i < L7_CARRY_MAX {
            if i < k {
                *data.add(L7_RESP_MAX + i) = s.carry[i];
            }
            i += 1;
        }
        let len = n.min((L7_REQ_MAX - L7_CARRY_MAX - 1) as u32) & super::HEAD_MASK;
        let dst = data.add(L7_RESP_MAX + off);
        if aya_ebpf::helpers::bpf_probe_read_kernel_buf(
            data as *const u8,
            core::slice::from_raw_parts_mut(dst, len as usize),
        )
        .is_err()
        {
            return false;
        }
    }
    // The joined bytes read as a record whose data starts at the request area (the detector
    // reads a record's first 16 bytes of data).
    let behind = (head as *const u8).wrapping_add(L7_RESP_MAX) as *const L7Event;
    let total = (n + k as u32).min(super::HEAD_MASK);
    if is_request(behind, total) {
        // SAFETY: as above: both areas hold L7_REQ_MAX bytes.
        unsafe {
            let data = (*head).data.as_mut_ptr();
            core::ptr::copy_nonoverlapping(
                data.add(L7_RESP_MAX) as *const u64,
                data as *mut u64,
                L7_REQ_MAX / 8,
            );
        }
        let mut c = *call;
        c.ret = call.ret.saturating_add(k as u32);
        request_start(st, &c, head, total);
        true
    } else {
        false
    }
}

/// A request starts with this call: the socket's own cgroup is checked (a state that does not
/// match it is stale and starts over), a request still waiting for its response is sent on its
/// own, and the new one is kept, from when it began: a client's sending syscall's start (the
/// hook runs after the data left), a server's receiving call (the data just came).
///
/// A client's send hook runs after the data left, and a preempted sender may run it after the
/// answer came back on another CPU: a response started with no request pending after this
/// send began was this request's answer. Then the request goes out at once, marked answered,
/// right behind that response's record, and is not kept. (Without the syscall probe, the send's
/// start is not known, and such a pair stays a response without request and a request without
/// response.)
#[inline(always)]
fn request_start(st: *mut L7Conn, call: &Call, head: *mut L7Event, n: u32) {
    // SAFETY: map value pointer checked by the verifier.
    let s = unsafe { &mut *st };
    let sk = super::sock_of(call.sk);
    let ptr = sock::cgroup_ptr(sk);
    if ptr != s.cgroup_ptr {
        // Another cgroup's socket on this memory: its destruction was not seen.
        count_lost(LOST_L7_STALE_STATE);
        if let Ok(cg) = sock::cgroup_id(sk) {
            s.cgroup_id = cg;
        }
        s.cgroup_ptr = ptr;
        s.peer = sock::peer(sk);
        s.req_ts = 0;
        s.orphan_ts = 0;
        s.resp = L7Dir::default();
        s.resp_first = 0;
        s.flags = 0;
    }
    if s.req_ts != 0 {
        emit_with_request(call.sk, st, L7_EV_REQUEST, 0, call.now);
    }
    let start = if call.send { call.start } else { call.now };
    let answered = s.orphan_ts != 0 && s.orphan_ts >= start;
    s.orphan_ts = 0;
    // SAFETY: both hold L7_REQ_MAX bytes: the scratch record's response area (where the call's
    // first bytes are) and the state's request buffer; a whole, aligned copy.
    unsafe {
        core::ptr::copy_nonoverlapping(
            (*head).data.as_ptr() as *const u64,
            s.req.as_mut_ptr() as *mut u64,
            L7_REQ_MAX / 8,
        );
    }
    s.req_snip = (n & super::HEAD_MASK) as u16;
    if head_open(head, n, n == call.ret, n as usize) {
        s.flags |= L7_F_HEAD_OPEN;
    } else {
        s.flags &= !L7_F_HEAD_OPEN;
    }
    s.req_ts = start;
    s.req_len = call.ret;
    s.tgid = tgid();
    if answered {
        emit_with_request(call.sk, st, L7_EV_REQUEST, L7_EVF_ANSWERED, call.now);
        s.req_ts = 0;
        s.req_snip = 0;
    }
}
