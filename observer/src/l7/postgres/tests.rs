//! The tracker on records built as the kernel builds them.

use observer_common::L7_POSTGRES;

use super::{wire::build::*, Postgres};
use crate::l7::{
    stream::testing::{close, feed, piece, whole, Live, NoConns, MS},
    Protocol, Request, Settings, Side, Status,
};

fn tracker() -> Postgres {
    Postgres::new(&Settings {
        request_timeout_ns: 30_000 * MS,
    })
}

/// (operation, table, SQLSTATE or "", duration in ms) of each finished operation.
fn ops(r: &[Request]) -> Vec<(&'static str, String, String, u64)> {
    r.iter()
        .map(|r| {
            let status = r.status.as_ref().map(Status::label).unwrap_or("-".into());
            (
                r.operation,
                r.target.to_string(),
                status,
                r.duration_ns / MS,
            )
        })
        .collect()
}

fn op(o: &'static str, t: &str, s: &str, d: u64) -> (&'static str, String, String, u64) {
    (o, t.into(), s.into(), d)
}

#[test]
fn startup_then_simple_queries_named_by_their_tags() {
    let mut t = tracker();
    let c = Side::Client;
    assert!(whole(&mut t, c, true, 0, 1, &startup()).is_empty());
    let auth = [msg(b'R', &[0, 0, 0, 0]), msg(b'S', b"a\0b\0"), ready()].concat();
    assert!(
        whole(&mut t, c, false, 2, 3, &auth).is_empty(),
        "startup is no operation"
    );
    whole(
        &mut t,
        c,
        true,
        10,
        10,
        &query("SELECT abalance FROM pgbench_accounts WHERE aid = 5"),
    );
    let r = whole(
        &mut t,
        c,
        false,
        11,
        14,
        &[
            msg(b'T', b"x"),
            msg(b'D', b"y"),
            complete("SELECT 1"),
            ready(),
        ]
        .concat(),
    );
    assert_eq!(ops(&r), [op("SELECT", "pgbench_accounts", "", 4)]);
    // Three statements in one query: three operations, by their tags.
    whole(
        &mut t,
        c,
        true,
        20,
        20,
        &query("BEGIN; UPDATE t SET a = 1; COMMIT"),
    );
    let r = whole(
        &mut t,
        c,
        false,
        21,
        22,
        &[
            complete("BEGIN"),
            complete("UPDATE 3"),
            complete("COMMIT"),
            ready(),
        ]
        .concat(),
    );
    assert_eq!(
        ops(&r),
        [
            op("BEGIN", "", "", 2),
            op("UPDATE", "", "", 2),
            op("COMMIT", "", "", 2)
        ]
    );
    assert!(r
        .iter()
        .all(|r| !r.failed() && r.side == Side::Client && r.tgid == 42));
}

#[test]
fn a_prepared_statement_executed_many_times_and_pipelined() {
    let mut t = tracker();
    let c = Side::Client;
    whole(
        &mut t,
        c,
        true,
        0,
        0,
        &[
            parse("upd", "UPDATE pgbench_branches SET bbalance = $1"),
            sync(),
        ]
        .concat(),
    );
    whole(&mut t, c, false, 1, 1, &[msg(b'1', b""), ready()].concat());
    // 1,000 executions, 100 per write, pipelined with one Sync each.
    let mut batch = Vec::new();
    for _ in 0..100 {
        batch.extend(bind("", "upd"));
        batch.extend(execute(""));
    }
    batch.extend(sync());
    let mut answer = Vec::new();
    for _ in 0..100 {
        answer.extend(msg(b'2', b""));
        answer.extend(complete("UPDATE 1"));
    }
    answer.extend(ready());
    let mut n = 0;
    for i in 0..10 {
        whole(&mut t, c, true, 100 * i, 100 * i, &batch);
        let r = whole(&mut t, c, false, 100 * i + 1, 100 * i + 3, &answer);
        assert!(ops(&r)
            .iter()
            .all(|o| *o == op("UPDATE", "pgbench_branches", "", 3)));
        n += r.len();
    }
    assert_eq!(n, 1000);
}

#[test]
fn errors_skip_to_sync_and_count_once() {
    let mut t = tracker();
    let c = Side::Client;
    // A simple query on a missing table.
    whole(&mut t, c, true, 0, 0, &query("SELECT * FROM missing"));
    let r = whole(&mut t, c, false, 1, 2, &[error("42P01"), ready()].concat());
    assert_eq!(ops(&r), [op("SELECT", "missing", "42P01", 2)]);
    assert!(r[0].failed());
    // An extended batch whose Parse fails: one operation with the error, the execution the
    // server skipped is none.
    let b = [
        parse("", "INSERT INTO nope VALUES (1)"),
        bind("", ""),
        execute(""),
        sync(),
    ]
    .concat();
    whole(&mut t, c, true, 10, 10, &b);
    let r = whole(
        &mut t,
        c,
        false,
        11,
        12,
        &[error("42P01"), ready()].concat(),
    );
    assert_eq!(ops(&r), [op("INSERT", "nope", "42P01", 2)]);
    // A batch where the second of three executions fails: the third is skipped.
    let mut b = parse("s", "DELETE FROM t WHERE id = $1");
    for _ in 0..3 {
        b.extend(bind("", "s"));
        b.extend(execute(""));
    }
    b.extend(sync());
    whole(&mut t, c, true, 20, 20, &b);
    let answer = [
        msg(b'1', b""),
        msg(b'2', b""),
        complete("DELETE 1"),
        msg(b'2', b""),
        error("23503"),
        ready(),
    ]
    .concat();
    let r = whole(&mut t, c, false, 21, 25, &answer);
    assert_eq!(
        ops(&r),
        [op("DELETE", "t", "", 5), op("DELETE", "t", "23503", 5)]
    );
    assert_eq!(t.conns(), 1);
    // Nothing waits any more: a later query pairs with its own answer.
    whole(&mut t, c, true, 30, 30, &query("SHOW x"));
    let r = whole(
        &mut t,
        c,
        false,
        31,
        31,
        &[msg(b'T', b""), complete("SHOW"), ready()].concat(),
    );
    assert_eq!(ops(&r), [op("SHOW", "", "", 1)]);
}

#[test]
fn copy_ssl_refusal_and_the_server_side() {
    let mut t = tracker();
    let s = Side::Server;
    // The server receives an SSLRequest, refuses it, then a startup and a COPY FROM STDIN.
    whole(&mut t, s, false, 0, 0, &ssl_request());
    whole(&mut t, s, true, 1, 1, b"N");
    whole(&mut t, s, false, 2, 2, &startup());
    whole(
        &mut t,
        s,
        true,
        3,
        3,
        &[msg(b'R', &[0, 0, 0, 0]), ready()].concat(),
    );
    whole(&mut t, s, false, 10, 10, &query("COPY accounts FROM STDIN"));
    whole(&mut t, s, true, 11, 11, &msg(b'G', &[0, 0, 0]));
    let data = [msg(b'd', b"1\t2\n"), msg(b'd', b"3\t4\n"), msg(b'c', b"")].concat();
    whole(&mut t, s, false, 12, 13, &data);
    let r = whole(
        &mut t,
        s,
        true,
        15,
        15,
        &[complete("COPY 2"), ready()].concat(),
    );
    assert_eq!(ops(&r), [op("COPY", "accounts", "", 5)]);
    assert_eq!(r[0].side, Side::Server);
    // An SSLRequest answered `S`: the rest is TLS, followed no further.
    let mut t = tracker();
    whole(&mut t, Side::Client, true, 0, 0, &ssl_request());
    whole(&mut t, Side::Client, false, 1, 1, b"S");
    whole(
        &mut t,
        Side::Client,
        true,
        2,
        2,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    );
    assert_eq!(t.encrypted, 1);
    assert_eq!(t.unparsed.invalid, 0);
}

#[test]
fn a_connection_joined_mid_way_a_long_row_and_hostile_bytes() {
    let mut t = tracker();
    let c = Side::Client;
    // No startup seen: typed from its first query.
    whole(&mut t, c, true, 0, 0, &query("SELECT data FROM blobs"));
    let row = msg(b'D', &vec![b'x'; 70_000]);
    let answer = [row, complete("SELECT 1"), ready()].concat();
    let len = answer.len() as u32;
    feed(
        &mut t,
        &piece(L7_POSTGRES, c, false, 1, 2, len, 0, &answer[..4095]),
    );
    feed(
        &mut t,
        &piece(L7_POSTGRES, c, false, 1, 2, len, 4095, &answer[4095..8190]),
    );
    // The kernel read no more of that call; the rest of the row is skipped, but the completion
    // after it was in the part not read: the framing is lost, counted once.
    // Its next query starts over: the one that waited is given up, the new one is paired.
    let r = whole(&mut t, c, true, 5, 5, &query("SELECT 2"));
    assert!(r.is_empty());
    assert_eq!(t.unparsed.gap, 1);
    assert_eq!(t.unparsed.lost_in_resync, 1, "the query that waited");
    let r = whole(
        &mut t,
        c,
        false,
        6,
        7,
        &[complete("SELECT 1"), ready()].concat(),
    );
    assert_eq!(ops(&r), [op("SELECT", "", "", 2)]);
    // Garbage from the server.
    whole(&mut t, c, true, 10, 10, &query("SELECT 3"));
    whole(&mut t, c, false, 11, 11, b"\xff\xff\xff\xff\xff");
    assert_eq!(t.unparsed.invalid, 1);
    // A statement unanswered past the timeout, and the end of a connection.
    let mut t = tracker();
    whole(&mut t, c, true, 0, 0, &query("SELECT pg_sleep(100)"));
    let mut out = Vec::new();
    t.poll(10_000 * MS, &Live, &mut out);
    assert!(out.is_empty());
    t.poll(31_000 * MS, &Live, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].error_type, Some("timeout"));
    whole(&mut t, c, true, 40_000, 40_000, &query("SELECT 1"));
    let r = feed(&mut t, &close(L7_POSTGRES, c, 40_001));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].error_type, Some("connection_closed"));
    let mut out = Vec::new();
    t.poll(100_000 * MS, &NoConns, &mut out);
    assert_eq!(t.conns(), 0);
}
