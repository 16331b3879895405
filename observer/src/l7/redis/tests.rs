//! The tracker on records built as the kernel builds them.

use observer_common::L7_REDIS;

use super::{resp::command, Redis, SPEC};
use crate::l7::{
    stream::testing::{close, feed, piece, whole as whole_call, Live, NoConns, MS},
    Protocol, Request, Settings, Side, Status,
};

fn tracker() -> Redis {
    Redis::new(&Settings {
        request_timeout_ns: 30_000 * MS,
    })
}

/// One record of a call: `bytes` sent or received at [start, end] ms, of a call of `len`
/// bytes, from `offset`.
fn call(
    side: Side,
    send: bool,
    start: u64,
    end: u64,
    len: u32,
    offset: u32,
    bytes: &[u8],
) -> Vec<u8> {
    piece(L7_REDIS, side, send, start, end, len, offset, bytes)
}

fn whole(
    t: &mut Redis,
    side: Side,
    send: bool,
    start: u64,
    end: u64,
    bytes: &[u8],
) -> Vec<Request> {
    whole_call(t, side, send, start, end, bytes)
}

fn ops(r: &[Request]) -> Vec<(&'static str, String, u64)> {
    r.iter()
        .map(|r| {
            let status = r.status.as_ref().map(Status::label).unwrap_or("-".into());
            (r.operation, status, r.duration_ns / MS)
        })
        .collect()
}

#[test]
fn a_pipeline_of_a_hundred_commands_is_a_hundred_operations() {
    let mut t = tracker();
    let mut w = Vec::new();
    for i in 0..100 {
        w.extend(command(&["SET", &format!("key:{i}"), "v"]));
    }
    assert!(whole(&mut t, Side::Client, true, 10, 11, &w).is_empty());
    // The replies come back in two reads, the first ending mid-reply.
    let replies = "+OK\r\n".repeat(100);
    let (a, b) = replies.as_bytes().split_at(302);
    let first = whole(&mut t, Side::Client, false, 12, 15, a);
    assert_eq!(first.len(), 60);
    assert!(ops(&first).iter().all(|o| *o == ("SET", String::new(), 5)));
    let rest = whole(&mut t, Side::Client, false, 16, 20, b);
    assert_eq!(rest.len(), 40);
    assert!(ops(&rest).iter().all(|o| *o == ("SET", String::new(), 10)));
    assert!(rest
        .iter()
        .all(|r| r.protocol == &SPEC && r.side == Side::Client && r.tgid == 42));
    assert!(rest.iter().all(|r| !r.failed()));
    assert_eq!(t.conns(), 1);
}

#[test]
fn errors_by_prefix_and_the_server_side() {
    let mut t = tracker();
    let mut w = command(&["LPUSH", "k", "a"]);
    w.extend(command(&["get", "k"]));
    w.extend(command(&["NOSUCH", "x"]));
    // The server received them at 5 ms and answered at 7 ms.
    assert!(whole(&mut t, Side::Server, false, 4, 5, &w).is_empty());
    let r = whole(
        &mut t,
        Side::Server,
        true,
        6,
        7,
        b":1\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n-ERR unknown command 'NOSUCH'\r\n",
    );
    assert_eq!(
        ops(&r),
        vec![
            ("LPUSH", String::new(), 2),
            ("GET", "WRONGTYPE".into(), 2),
            ("_OTHER", "ERR".into(), 2),
        ]
    );
    assert_eq!(
        r.iter().map(|r| r.failed()).collect::<Vec<_>>(),
        [false, true, true]
    );
}

#[test]
fn transactions_and_pub_sub() {
    let mut t = tracker();
    let c = Side::Client;
    let mut w = command(&["MULTI"]);
    w.extend(command(&["INCR", "n"]));
    w.extend(command(&["EXEC"]));
    whole(&mut t, c, true, 0, 1, &w);
    let r = whole(&mut t, c, false, 2, 3, b"+OK\r\n+QUEUED\r\n*1\r\n:1\r\n");
    assert_eq!(
        r.iter().map(|r| r.operation).collect::<Vec<_>>(),
        ["MULTI", "INCR", "EXEC"]
    );
    // SUBSCRIBE of two channels: one operation; the second confirmation and the messages are
    // not replies; a PING on the subscribed connection is.
    whole(&mut t, c, true, 10, 10, &command(&["SUBSCRIBE", "a", "b"]));
    let r = whole(
        &mut t,
        c,
        false,
        11,
        12,
        b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n",
    );
    assert_eq!(ops(&r), vec![("SUBSCRIBE", String::new(), 2)]);
    let r = whole(
        &mut t,
        c,
        false,
        20,
        20,
        b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n>3\r\n$7\r\nmessage\r\n$1\r\nb\r\n$1\r\nx\r\n",
    );
    assert!(r.is_empty());
    whole(&mut t, c, true, 30, 30, &command(&["PING"]));
    let r = whole(&mut t, c, false, 31, 31, b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    assert_eq!(ops(&r), vec![("PING", String::new(), 1)]);
    assert_eq!(t.unparsed.response_without_request, 0);
}

/// RESP3 (after `HELLO 3`): a (un)subscription is confirmed by pushes, the first of which
/// ends the command; messages and invalidations are pushes too, never replies, and commands
/// go on on the subscribed connection, each with its own reply.
#[test]
fn resp3_pushes_confirm_subscriptions_and_are_never_replies() {
    let mut t = tracker();
    let c = Side::Client;
    whole(&mut t, c, true, 0, 0, &command(&["HELLO", "3"]));
    let r = whole(&mut t, c, false, 1, 1, b"%1\r\n$5\r\nproto\r\n:3\r\n");
    assert_eq!(ops(&r), vec![("HELLO", String::new(), 1)]);
    let mut w = command(&["SUBSCRIBE", "a", "b"]);
    w.extend(command(&["PING"]));
    w.extend(command(&["GET", "k"]));
    whole(&mut t, c, true, 10, 10, &w);
    let r = whole(
        &mut t,
        c,
        false,
        11,
        12,
        b">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n>3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n",
    );
    assert_eq!(ops(&r), vec![("SUBSCRIBE", String::new(), 2)]);
    let r = whole(
        &mut t,
        c,
        false,
        14,
        14,
        b">3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n+PONG\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n_\r\n",
    );
    assert_eq!(
        ops(&r),
        vec![("PING", String::new(), 4), ("GET", String::new(), 4)]
    );
    whole(
        &mut t,
        c,
        true,
        20,
        20,
        &command(&["UNSUBSCRIBE", "a", "b"]),
    );
    let r = whole(
        &mut t,
        c,
        false,
        23,
        23,
        b">3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n>3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n",
    );
    assert_eq!(ops(&r), vec![("UNSUBSCRIBE", String::new(), 3)]);
    assert_eq!(t.unparsed.response_without_request, 0);
}

#[test]
fn a_long_call_in_pieces_and_beyond_what_was_read() {
    let mut t = tracker();
    let value = "v".repeat(70_000);
    let w = command(&["SET", "big", &value]);
    let len = w.len() as u32;
    // Two pieces of 4095 bytes, then the kernel stopped reading; the rest of the call is a
    // payload the parser skips by its length.
    feed(&mut t, &call(Side::Client, true, 1, 2, len, 0, &w[..4095]));
    feed(
        &mut t,
        &call(Side::Client, true, 1, 2, len, 4095, &w[4095..8190]),
    );
    let r = whole(&mut t, Side::Client, false, 3, 9, b"+OK\r\n");
    assert_eq!(ops(&r), vec![("SET", String::new(), 8)]);
    assert_eq!(t.unparsed.gap, 0);
    // A header lost in a gap: framing is lost, counted once, and found again at the next call
    // that starts a command.
    let mut w = command(&["GET", "a"]);
    w.extend(command(&["GET", "b"]));
    feed(
        &mut t,
        &call(Side::Client, true, 10, 10, w.len() as u32, 0, &w[..5]),
    );
    let r = whole(
        &mut t,
        Side::Client,
        false,
        11,
        11,
        b"$1\r\nx\r\n$1\r\ny\r\n",
    );
    assert!(r.is_empty());
    assert_eq!(t.unparsed.gap, 1);
    whole(&mut t, Side::Client, true, 20, 20, &command(&["GET", "c"]));
    let r = whole(&mut t, Side::Client, false, 21, 22, b"$-1\r\n");
    assert_eq!(ops(&r), vec![("GET", String::new(), 2)]);
}

#[test]
fn hostile_bytes_and_the_end_of_a_connection() {
    let mut t = tracker();
    whole(&mut t, Side::Client, true, 0, 0, &command(&["GET", "a"]));
    whole(&mut t, Side::Client, false, 1, 1, b"?garbage\r\n");
    assert_eq!(t.unparsed.invalid, 1);
    whole(&mut t, Side::Client, false, 2, 2, b"more garbage");
    assert_eq!(t.unparsed.invalid, 1, "counted once per loss");
    // The next command starts over; the one that waited is not an operation.
    whole(
        &mut t,
        Side::Client,
        true,
        3,
        3,
        &command(&["BLPOP", "q", "0"]),
    );
    assert_eq!(t.unparsed.lost_in_resync, 1);
    // A blocking command never times out; its connection's end closes it.
    let mut out = Vec::new();
    t.poll(100_000 * MS, &Live, &mut out);
    assert!(out.is_empty(), "blocking");
    let close = close(L7_REDIS, Side::Client, 200_000);
    let r = feed(&mut t, &close);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].operation, "BLPOP");
    assert_eq!(r[0].error_type, Some("connection_closed"));
    assert_eq!(t.conns(), 0);
    // A plain command unanswered past the timeout.
    whole(&mut t, Side::Client, true, 0, 0, &command(&["GET", "a"]));
    let mut out = Vec::new();
    t.poll(31_000 * MS, &NoConns, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].error_type, Some("timeout"));
    assert!(out[0].failed());
    // A connection idle and gone from the kernel's table is forgotten, its commands closed.
    whole(
        &mut t,
        Side::Client,
        true,
        0,
        0,
        &command(&["BLPOP", "q", "0"]),
    );
    let mut out = Vec::new();
    t.poll(200_000 * MS, &NoConns, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].error_type, Some("connection_closed"));
    assert_eq!(t.conns(), 0);
}
