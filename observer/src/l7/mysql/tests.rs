use super::*;
use crate::l7::stream::testing::{close, whole, Live};

fn settings() -> Settings {
    Settings {
        request_timeout_ns: 30_000_000_000,
    }
}

fn pkt(seq: u8, payload: &[u8]) -> Vec<u8> {
    let n = payload.len() as u32;
    let mut v = vec![n as u8, (n >> 8) as u8, (n >> 16) as u8, seq];
    v.extend_from_slice(payload);
    v
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

const GREETING_MARIADB: &[u8] =
    b"\x0a5.5.5-10.11.6-MariaDB\0\x08\0\0\0abcdefgh\0\xfe\xf7\x08\x02\0\xff\x81\x15\0\0\0\0\0\0\x0f\0\0\0ijklmnopqrst\0mysql_native_password\0";

/// A column definition (its content does not matter to the tracker).
fn coldef(seq: u8) -> Vec<u8> {
    pkt(
        seq,
        b"\x03def\x04test\x02kv\x02kv\x01v\x01v\x0c\x08\0\x0b\0\0\0\x03\0\0\0\0\0",
    )
}

fn eof(seq: u8, status: u16) -> Vec<u8> {
    let s = status.to_le_bytes();
    pkt(seq, &[0xfe, 0, 0, s[0], s[1]])
}

fn ok(seq: u8, status: u16) -> Vec<u8> {
    let s = status.to_le_bytes();
    pkt(seq, &[0x00, 0, 0, s[0], s[1], 0, 0])
}

fn ok_eof(seq: u8) -> Vec<u8> {
    pkt(seq, &[0xfe, 0, 0, 0x02, 0, 0, 0])
}

fn err(seq: u8, code: u16) -> Vec<u8> {
    let c = code.to_le_bytes();
    let mut p = vec![0xff, c[0], c[1]];
    p.extend_from_slice(b"#42S02Table 'test.nope' doesn't exist");
    pkt(seq, &p)
}

fn query(sql: &str) -> Vec<u8> {
    let mut p = vec![0x03];
    p.extend_from_slice(sql.as_bytes());
    pkt(0, &p)
}

/// A connection from its start, client side: greeting, handshake response, `OK`.
fn handshake(m: &mut Mysql, caps: u32) {
    assert!(whole(m, Side::Client, false, 0, 1, &pkt(0, GREETING_MARIADB)).is_empty());
    let mut resp = caps.to_le_bytes().to_vec();
    resp.extend_from_slice(&[0, 0, 0, 1, 33]);
    resp.extend_from_slice(&[0; 23]);
    resp.extend_from_slice(b"obs\0\x14aaaaaaaaaaaaaaaaaaaa");
    assert!(whole(m, Side::Client, true, 2, 2, &pkt(1, &resp)).is_empty());
    assert!(whole(m, Side::Client, false, 3, 3, &ok(2, 2)).is_empty());
}

fn names(out: &[Request]) -> Vec<(&'static str, String, String)> {
    out.iter()
        .map(|r| {
            (
                r.operation,
                r.target.to_string(),
                r.status.as_ref().map(|s| s.label()).unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn a_query_from_the_connections_start_with_rows_and_the_old_eof() {
    let mut m = Mysql::new(&settings());
    handshake(&mut m, 0x000f_a68d);
    assert!(whole(
        &mut m,
        Side::Client,
        true,
        10,
        10,
        &query("SELECT v FROM kv WHERE k = 1")
    )
    .is_empty());
    let resp = cat(&[
        pkt(1, b"\x01"),
        coldef(2),
        eof(3, 2),
        pkt(4, b"\x03abc"),
        pkt(5, b"\x03def"),
        eof(6, 2),
    ]);
    let out = whole(&mut m, Side::Client, false, 12, 14, &resp);
    assert_eq!(names(&out), [("SELECT", "kv".into(), "".into())]);
    assert_eq!(out[0].duration_ns, 4_000_000);
    assert_eq!(
        out[0].protocol.constant_labels,
        [("db_system_name", "mariadb")]
    );
    assert!(!out[0].failed());
}

#[test]
fn prepared_statements_are_named_by_their_ids_and_executed_many_times() {
    let mut m = Mysql::new(&settings());
    handshake(&mut m, 0x000f_a68d);
    let mut prep = vec![0x16];
    prep.extend_from_slice(b"SELECT v FROM kv WHERE k = ?");
    assert!(whole(&mut m, Side::Client, true, 10, 10, &pkt(0, &prep)).is_empty());
    // Statement 7: one column, one parameter; each group with the old protocol's EOF.
    let resp = cat(&[
        pkt(1, b"\x00\x07\0\0\0\x01\0\x01\0\0\0\0"),
        coldef(2),
        eof(3, 2),
        coldef(4),
    ]);
    let out = whole(&mut m, Side::Client, false, 11, 11, &resp);
    assert_eq!(names(&out), [("PREPARE", "kv".into(), "".into())]);
    // The last group's EOF in a call of its own.
    assert!(whole(&mut m, Side::Client, false, 12, 12, &eof(5, 2)).is_empty());
    for i in 0..3u64 {
        let t = 20 + 10 * i;
        let exec = pkt(
            0,
            b"\x17\x07\0\0\0\0\x01\0\0\0\0\x01\x08\0\x01\0\0\0\0\0\0\0",
        );
        assert!(whole(&mut m, Side::Client, true, t, t, &exec).is_empty());
        let rows = cat(&[
            pkt(1, b"\x01"),
            coldef(2),
            eof(3, 2),
            pkt(4, b"\x00\x00\x03abc"),
            eof(5, 2),
        ]);
        let out = whole(&mut m, Side::Client, false, t + 1, t + 2, &rows);
        assert_eq!(
            names(&out),
            [("SELECT", "kv".into(), "".into())],
            "execution {i}"
        );
    }
    // Closed (no response), then an execution of the unknown id.
    assert!(whole(
        &mut m,
        Side::Client,
        true,
        60,
        60,
        &pkt(0, b"\x19\x07\0\0\0")
    )
    .is_empty());
    let exec = pkt(0, b"\x17\x07\0\0\0\0\x01\0\0\0");
    assert!(whole(&mut m, Side::Client, true, 61, 61, &exec).is_empty());
    let out = whole(&mut m, Side::Client, false, 62, 62, &err(1, 1243));
    assert_eq!(names(&out), [("_OTHER", "".into(), "1243".into())]);
    assert!(out[0].failed());
    assert_eq!(m.unparsed.invalid, 0);
}

#[test]
fn a_connection_joined_midway_with_deprecated_eof_and_an_error() {
    let mut m = Mysql::new(&settings());
    // Server side: queries read, responses written.
    assert!(whole(
        &mut m,
        Side::Server,
        false,
        1,
        1,
        &query("select * from nope")
    )
    .is_empty());
    let out = whole(&mut m, Side::Server, true, 3, 3, &err(1, 1146));
    assert_eq!(names(&out), [("SELECT", "nope".into(), "1146".into())]);
    assert_eq!(
        out[0].protocol.constant_labels,
        [("db_system_name", "mysql")]
    );
    assert_eq!(out[0].duration_ns, 2_000_000);
    // Rows ended by an OK with the 0xfe header; an empty result set likewise.
    assert!(whole(
        &mut m,
        Side::Server,
        false,
        5,
        5,
        &query("SELECT a, b FROM t")
    )
    .is_empty());
    let resp = cat(&[
        pkt(1, b"\x02"),
        coldef(2),
        coldef(3),
        pkt(4, b"\x011\x012"),
        ok_eof(5),
    ]);
    let out = whole(&mut m, Side::Server, true, 6, 6, &resp);
    assert_eq!(names(&out), [("SELECT", "t".into(), "".into())]);
    assert!(whole(
        &mut m,
        Side::Server,
        false,
        7,
        7,
        &query("SELECT a FROM t WHERE 0")
    )
    .is_empty());
    let out = whole(
        &mut m,
        Side::Server,
        true,
        8,
        8,
        &cat(&[pkt(1, b"\x01"), coldef(2), ok_eof(3)]),
    );
    assert_eq!(names(&out), [("SELECT", "t".into(), "".into())]);
    // A ping and an insert's OK.
    assert!(whole(&mut m, Side::Server, false, 9, 9, &pkt(0, b"\x0e")).is_empty());
    let out = whole(&mut m, Side::Server, true, 10, 10, &ok(1, 2));
    assert_eq!(names(&out), [("PING", "".into(), "".into())]);
    assert!(whole(
        &mut m,
        Side::Server,
        false,
        11,
        11,
        &query("INSERT INTO `Items` VALUES (1)")
    )
    .is_empty());
    let out = whole(&mut m, Side::Server, true, 12, 12, &ok(1, 2));
    assert_eq!(names(&out), [("INSERT", "Items".into(), "".into())]);
}

#[test]
fn a_multi_statement_query_is_one_operation_per_statement_and_a_call_is_one() {
    let mut m = Mysql::new(&settings());
    let q = query("BEGIN; UPDATE t SET a = 'x;y' WHERE b = 1; SELECT a FROM t; COMMIT");
    assert!(whole(&mut m, Side::Client, true, 1, 1, &q).is_empty());
    let resp = cat(&[
        ok(1, 0x0a),
        ok(2, 0x0b),
        pkt(3, b"\x01"),
        coldef(4),
        eof(5, 0x0b),
        pkt(6, b"\x01x"),
        eof(7, 0x0b),
        ok(8, 0x02),
    ]);
    let out = whole(&mut m, Side::Client, false, 2, 3, &resp);
    assert_eq!(
        names(&out),
        [
            ("BEGIN", "".into(), "".into()),
            ("UPDATE", "t".into(), "".into()),
            ("SELECT", "t".into(), "".into()),
            ("COMMIT", "".into(), "".into()),
        ]
    );
    // A procedure: a result set, then the final OK: one operation.
    assert!(whole(&mut m, Side::Client, true, 4, 4, &query("CALL p()")).is_empty());
    let resp = cat(&[
        pkt(1, b"\x01"),
        coldef(2),
        eof(3, 0x0a),
        pkt(4, b"\x011"),
        eof(5, 0x0a),
        ok(6, 2),
    ]);
    let out = whole(&mut m, Side::Client, false, 5, 5, &resp);
    assert_eq!(names(&out), [("CALL", "".into(), "".into())]);
}

#[test]
fn tls_ends_the_following_and_a_lost_framing_comes_back_at_a_command() {
    let mut m = Mysql::new(&settings());
    handshake(&mut m, 0x000f_a68d | CLIENT_SSL);
    assert_eq!(m.encrypted, 1);
    assert!(whole(
        &mut m,
        Side::Client,
        true,
        10,
        10,
        &[0x16, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5]
    )
    .is_empty());
    assert!(whole(
        &mut m,
        Side::Client,
        false,
        11,
        11,
        &[0x17, 0x03, 0x03, 0x00, 0x02, 1, 2]
    )
    .is_empty());
    // Out-of-sequence packets lose the framing; the next command brings it back.
    let mut m = Mysql::new(&settings());
    assert!(whole(&mut m, Side::Client, true, 1, 1, &query("SELECT 1")).is_empty());
    assert!(whole(&mut m, Side::Client, false, 2, 2, &pkt(7, b"\x01")).is_empty());
    assert_eq!(m.unparsed.invalid, 1);
    assert!(whole(&mut m, Side::Client, true, 3, 3, &query("SELECT 2")).is_empty());
    let out = whole(&mut m, Side::Client, false, 4, 4, &ok(1, 2));
    assert_eq!(names(&out), [("SELECT", "".into(), "".into())]);
    assert_eq!(m.unparsed.lost_in_resync, 1);
    // A command left unanswered at the socket's end.
    assert!(whole(&mut m, Side::Client, true, 5, 5, &query("DO SLEEP(10)")).is_empty());
    let mut out = Vec::new();
    let rec = close(L7_MYSQL, Side::Client, 9);
    let ev = crate::l7::Event::parse(&rec).unwrap();
    m.on_event(&ev, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].error_type, Some("connection_closed"));
    m.poll(100_000_000_000, &Live, &mut out);
}

#[test]
fn random_bytes_never_panic() {
    let mut m = Mysql::new(&settings());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..2000u64 {
        let mut b = Vec::new();
        for _ in 0..(x % 64) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.push(x as u8);
        }
        let _ = whole(&mut m, Side::Client, i % 2 == 0, i, i, &b);
    }
}
