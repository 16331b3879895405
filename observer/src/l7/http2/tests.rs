//! The tracker on records built as the kernel builds them, with header blocks from a real
//! HPACK encoder.

use observer_common::L7_HTTP2;

use super::hpack::{pruned, Strings};
use super::{
    frame::{frame, CONTINUATION, DATA, GOAWAY, HEADERS, PREFACE, RST_STREAM, SETTINGS},
    *,
};
use crate::l7::stream::testing::{close, feed, piece, whole, MS};

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn settings() -> Settings {
    Settings {
        request_timeout_ns: 5_000 * MS,
    }
}

/// One side of a connection's HPACK state, as a peer keeps it.
struct Peer(loona_hpack::Encoder<'static>);

impl Peer {
    fn new() -> Peer {
        Peer(loona_hpack::Encoder::new())
    }

    fn headers(&mut self, stream: u32, end_stream: bool, h: &[(&str, &str)]) -> Vec<u8> {
        let block = self
            .0
            .encode(h.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        frame(HEADERS, flags, stream, &block)
    }
}

fn request(p: &mut Peer, stream: u32, method: &str, path: &str, grpc: bool) -> Vec<u8> {
    let mut h = vec![
        (":method", method),
        (":scheme", "http"),
        (":path", path),
        (":authority", "svc"),
    ];
    if grpc {
        h.push(("content-type", "application/grpc"));
        h.push(("te", "trailers"));
    }
    p.headers(stream, !grpc && method == "GET", &h)
}

/// What the tests compare of a request: protocol, operation, target, status, error, ms.
type Seen = (
    &'static str,
    &'static str,
    String,
    String,
    Option<&'static str>,
    u64,
);

fn seen(out: &[Request]) -> Vec<Seen> {
    out.iter()
        .map(|r| {
            (
                r.protocol.name,
                r.operation,
                r.target.to_string(),
                r.status.as_ref().map(|s| s.label()).unwrap_or_default(),
                r.error_type,
                r.duration_ns / MS,
            )
        })
        .collect()
}

#[test]
fn concurrent_streams_answered_out_of_order() {
    let mut t = Http2::new(&settings());
    let (mut c, mut s) = (Peer::new(), Peer::new());
    let mut w = PREFACE.to_vec();
    w.extend(frame(SETTINGS, 0, 0, &[]));
    w.extend(request(&mut c, 1, "GET", "/users/42", false));
    w.extend(request(&mut c, 3, "GET", "/users/7?x=1", false));
    w.extend(request(&mut c, 5, "POST", "/orders", false));
    w.extend(frame(DATA, END_STREAM, 5, b"{}"));
    assert!(whole(&mut t, Side::Client, true, 10, 10, &w).is_empty());
    let mut r = s.headers(3, false, &[(":status", "404")]);
    r.extend(frame(DATA, END_STREAM, 3, b"no"));
    r.extend(s.headers(1, true, &[(":status", "200")]));
    let out = whole(&mut t, Side::Client, false, 12, 13, &r);
    assert_eq!(
        seen(&out),
        [
            ("http2", "GET", "/users/{id}".into(), "404".into(), None, 3),
            ("http2", "GET", "/users/{id}".into(), "200".into(), None, 3),
        ]
    );
    // The response of the POST in two calls: 100 Continue first, then the answer.
    let out = whole(
        &mut t,
        Side::Client,
        false,
        14,
        14,
        &s.headers(5, false, &[(":status", "100")]),
    );
    assert!(out.is_empty());
    let mut r = s.headers(5, false, &[(":status", "503")]);
    r.extend(frame(DATA, END_STREAM, 5, b""));
    let out = whole(&mut t, Side::Client, false, 15, 20, &r);
    assert_eq!(
        seen(&out),
        [("http2", "POST", "/orders".into(), "503".into(), None, 10)]
    );
    assert!(out[0].failed());
    assert_eq!(
        out[0].protocol.constant_labels,
        [("network_protocol_version", "2")]
    );
    assert_eq!(t.unparsed.invalid + t.unparsed.gap + t.unsynced, 0);
}

#[test]
fn grpc_unary_trailers_only_and_streaming_calls() {
    let mut t = Http2::new(&settings());
    let (mut c, mut s) = (Peer::new(), Peer::new());
    // The server side: it reads the requests.
    let mut w = PREFACE.to_vec();
    w.extend(request(&mut c, 1, "POST", "/shop.Cart/Add", true));
    w.extend(frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 1, 9]));
    w.extend(request(&mut c, 3, "POST", "/shop.Cart/Get", true));
    w.extend(frame(DATA, END_STREAM, 3, &[0, 0, 0, 0, 0]));
    w.extend(request(&mut c, 5, "POST", "/shop.Cart/Watch", true));
    w.extend(frame(DATA, END_STREAM, 5, &[0, 0, 0, 0, 0]));
    assert!(whole(&mut t, Side::Server, false, 0, 1, &w).is_empty());
    // Add: headers, a message, trailers with status 0.
    let mut r = s.headers(
        1,
        false,
        &[(":status", "200"), ("content-type", "application/grpc")],
    );
    r.extend(frame(DATA, 0, 1, &[0, 0, 0, 0, 1, 7]));
    r.extend(s.headers(1, true, &[("grpc-status", "0")]));
    // Get: trailers only, NOT_FOUND.
    r.extend(s.headers(
        3,
        true,
        &[
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-status", "5"),
        ],
    ));
    let out = whole(&mut t, Side::Server, true, 4, 5, &r);
    assert_eq!(
        seen(&out),
        [
            ("grpc", "grpc", "/shop.Cart/Add".into(), "0".into(), None, 3),
            ("grpc", "grpc", "/shop.Cart/Get".into(), "5".into(), None, 3),
        ]
    );
    assert!(!out[0].failed() && out[1].failed());
    // Watch streams three messages over two calls, then its trailers: one call.
    let mut r = s.headers(5, false, &[(":status", "200")]);
    r.extend(frame(DATA, 0, 5, &[0, 0, 0, 0, 1, 1]));
    assert!(whole(&mut t, Side::Server, true, 6, 6, &r).is_empty());
    let mut r = frame(DATA, 0, 5, &[0, 0, 0, 0, 1, 2]);
    r.extend(frame(DATA, 0, 5, &[0, 0, 0, 0, 1, 3]));
    r.extend(s.headers(5, true, &[("grpc-status", "13"), ("grpc-message", "boom")]));
    let out = whole(&mut t, Side::Server, true, 9, 9, &r);
    assert_eq!(
        seen(&out),
        [(
            "grpc",
            "grpc",
            "/shop.Cart/Watch".into(),
            "13".into(),
            None,
            8
        )]
    );
}

#[test]
fn resets_goaway_and_a_closed_connection() {
    let mut t = Http2::new(&settings());
    let (mut c, mut s) = (Peer::new(), Peer::new());
    let mut w = PREFACE.to_vec();
    for id in [1, 3, 5, 7] {
        w.extend(request(&mut c, id, "GET", "/a", false));
    }
    // The client gives up on stream 1.
    w.extend(frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]));
    let out = whole(&mut t, Side::Client, true, 1, 2, &w);
    assert_eq!(
        seen(&out),
        [(
            "http2",
            "GET",
            "/a".into(),
            "".into(),
            Some("stream_reset"),
            1
        )]
    );
    // The server answers 3 and goes away after it: 5 and 7 never ran.
    let mut r = s.headers(3, true, &[(":status", "200")]);
    r.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0]));
    let out = whole(&mut t, Side::Client, false, 3, 4, &r);
    let mut got = seen(&out);
    got.sort();
    assert_eq!(
        got,
        [
            ("http2", "GET", "/a".into(), "".into(), Some("goaway"), 3),
            ("http2", "GET", "/a".into(), "".into(), Some("goaway"), 3),
            ("http2", "GET", "/a".into(), "200".into(), None, 3),
        ]
    );
    let w = request(&mut c, 9, "GET", "/b", false);
    assert!(whole(&mut t, Side::Client, true, 5, 5, &w).is_empty());
    let out = feed(&mut t, &close(L7_HTTP2, Side::Client, 9));
    assert_eq!(
        seen(&out),
        [(
            "http2",
            "GET",
            "/b".into(),
            "".into(),
            Some("connection_closed"),
            4
        )]
    );
    assert_eq!(t.conns(), 0);
}

#[test]
fn a_lost_header_block_leaves_unknown_names_never_wrong_ones() {
    let mut t = Http2::new(&settings());
    let (mut c, mut s) = (Peer::new(), Peer::new());
    let mut w = PREFACE.to_vec();
    w.extend(request(&mut c, 1, "GET", "/first", false));
    assert!(whole(&mut t, Side::Client, true, 0, 0, &w).is_empty());
    // The next request's block (which adds `/second` to the table) is only partly read.
    let second = request(&mut c, 3, "GET", "/second", false);
    let rec = piece(
        L7_HTTP2,
        Side::Client,
        true,
        1,
        1,
        second.len() as u32,
        0,
        &second[..12],
    );
    assert!(feed(&mut t, &rec).is_empty());
    // Later requests of the direction: counted, named `_unknown`.
    let third = request(&mut c, 5, "GET", "/second", false);
    assert!(whole(&mut t, Side::Client, true, 2, 2, &third).is_empty());
    let mut r = s.headers(1, true, &[(":status", "200")]);
    r.extend(s.headers(3, true, &[(":status", "200")]));
    r.extend(s.headers(5, true, &[(":status", "204")]));
    let out = whole(&mut t, Side::Client, false, 3, 3, &r);
    assert_eq!(
        seen(&out),
        [
            ("http2", "GET", "/first".into(), "200".into(), None, 3),
            (
                "http2",
                "_unknown",
                "_unknown".into(),
                "200".into(),
                None,
                2
            ),
            (
                "http2",
                "_unknown",
                "_unknown".into(),
                "204".into(),
                None,
                1
            ),
        ]
    );
    assert_eq!(t.unsynced, 1);
}

#[test]
fn large_headers_in_continuations_and_a_frame_split_across_calls() {
    let mut t = Http2::new(&settings());
    let (mut c, mut s) = (Peer::new(), Peer::new());
    let big = "v".repeat(9000);
    let block = c.0.encode([
        (&b":method"[..], &b"GET"[..]),
        (b":path", b"/big"),
        (b"x-big", big.as_bytes()),
    ]);
    let mut w = PREFACE.to_vec();
    w.extend(frame(HEADERS, END_STREAM, 1, &block[..4000]));
    w.extend(frame(CONTINUATION, END_HEADERS, 1, &block[4000..]));
    // The first 30 bytes in one call; the rest in another, which the kernel sends in
    // records of at most 4 KiB.
    let (a, b) = w.split_at(30);
    assert!(whole(&mut t, Side::Client, true, 1, 1, a).is_empty());
    for (i, chunk) in b.chunks(4000).enumerate() {
        let rec = piece(
            L7_HTTP2,
            Side::Client,
            true,
            2,
            2,
            b.len() as u32,
            (i * 4000) as u32,
            chunk,
        );
        assert!(feed(&mut t, &rec).is_empty());
    }
    let out = whole(
        &mut t,
        Side::Client,
        false,
        3,
        3,
        &s.headers(1, true, &[(":status", "200")]),
    );
    // Timed from the call that completed the request's header block.
    assert_eq!(
        seen(&out),
        [("http2", "GET", "/big".into(), "200".into(), None, 1)]
    );
}

#[test]
fn bytes_after_a_valid_preface_that_are_no_frames_are_counted() {
    let mut t = Http2::new(&settings());
    let mut w = PREFACE.to_vec();
    w.extend(frame(CONTINUATION, END_HEADERS, 1, b"x"));
    assert!(whole(&mut t, Side::Client, true, 0, 0, &w).is_empty());
    let mut x: u64 = 77;
    for i in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let junk: Vec<u8> = (0..(x % 64)).map(|k| (x >> (k % 56)) as u8).collect();
        let _ = whole(&mut t, Side::Client, true, i, i, &junk);
    }
    assert_eq!(t.unparsed.invalid, 1);
}

/// A gRPC call's response: headers, a message, trailers with `status`.
fn grpc_response(s: &mut Peer, stream: u32, status: &str) -> Vec<u8> {
    let mut r = s.headers(
        stream,
        false,
        &[(":status", "200"), ("content-type", "application/grpc")],
    );
    r.extend(frame(DATA, 0, stream, &[0, 0, 0, 0, 0]));
    r.extend(s.headers(stream, true, &[("grpc-status", status)]));
    r
}

#[test]
fn a_connection_joined_mid_way_counts_every_stream_with_unknown_names_never_wrong_ones() {
    let mut t = Http2::new(&settings());
    let (mut c, mut s) = (Peer::new(), Peer::new());
    // Before the observer: a gRPC call fills both tables (never seen).
    let _ = request(&mut c, 1, "POST", "/pkg.Svc/Old", true);
    let _ = grpc_response(&mut s, 1, "0");
    // The kernel guessed the sides the wrong way round (by ports): the client's socket taken
    // for a server's, put right by the first block's `:method`.
    let guess = Side::Server;
    // The same call again: `content-type` and `grpc-status` refer to entries from before
    // the join. A gRPC call all the same (its response ends with trailers), status unknown.
    let w = request(&mut c, 3, "POST", "/pkg.Svc/Old", true);
    assert!(whole(&mut t, guess, true, 0, 0, &w).is_empty());
    let mut out = whole(&mut t, guess, false, 2, 2, &grpc_response(&mut s, 3, "0"));
    // Another status: a new value under a name from before the join, still unknown.
    let w = request(&mut c, 5, "POST", "/pkg.Svc/New", true);
    assert!(whole(&mut t, guess, true, 3, 3, &w).is_empty());
    out.extend(whole(
        &mut t,
        guess,
        false,
        4,
        4,
        &grpc_response(&mut s, 5, "5"),
    ));
    // A plain HTTP/2 request: no trailers.
    let w = request(&mut c, 7, "GET", "/health", false);
    assert!(whole(&mut t, guess, true, 8, 8, &w).is_empty());
    out.extend(whole(
        &mut t,
        guess,
        false,
        9,
        9,
        &s.headers(7, true, &[(":status", "204")]),
    ));
    assert_eq!(
        seen(&out),
        [
            (
                "grpc",
                "grpc",
                "/pkg.Svc/Old".into(),
                "_unknown".into(),
                None,
                2
            ),
            (
                "grpc",
                "grpc",
                "/pkg.Svc/New".into(),
                "_unknown".into(),
                None,
                1
            ),
            ("http2", "GET", "/health".into(), "204".into(), None, 1),
        ]
    );
    // Sides put right: client timing (from the request's start to the response's end).
    assert!(out.iter().all(|r| r.side == Side::Client));
    // An unknown status is no error.
    assert!(out
        .iter()
        .all(|r| !(r.protocol.failed)(r.status.as_ref(), r.error_type)));
    assert_eq!(t.joined, 2);
    assert_eq!(t.unsynced, 0);
    assert_eq!(t.unparsed.invalid + t.unparsed.gap, 0);
    assert_eq!(t.unparsed.response_without_request, 0);
}

#[test]
fn entries_added_after_a_mid_way_join_decode_as_themselves() {
    let mut t = Http2::new(&settings());
    let (mut c, mut s) = (Peer::new(), Peer::new());
    // Before the observer: plain HTTP/2 only.
    let _ = request(&mut c, 1, "GET", "/old", false);
    let _ = s.headers(1, true, &[(":status", "200"), ("server", "x")]);
    let mut out = Vec::new();
    // `content-type`, `te` and `grpc-status` enter the tables after the join: the first call
    // as literals, the second by reference to them.
    for (k, status) in [(3u32, "5"), (5, "5"), (7, "0")] {
        let w = request(&mut c, k, "POST", "/pkg.Svc/New", true);
        let at = u64::from(k) * 10;
        assert!(whole(&mut t, Side::Client, true, at, at, &w).is_empty());
        let r = grpc_response(&mut s, k, status);
        out.extend(whole(&mut t, Side::Client, false, at + 1, at + 1, &r));
    }
    let w = request(&mut c, 9, "GET", "/old", false);
    assert!(whole(&mut t, Side::Client, true, 90, 90, &w).is_empty());
    let r = s.headers(9, true, &[(":status", "200"), ("server", "x")]);
    out.extend(whole(&mut t, Side::Client, false, 92, 92, &r));
    assert_eq!(
        seen(&out),
        [
            ("grpc", "grpc", "/pkg.Svc/New".into(), "5".into(), None, 1),
            ("grpc", "grpc", "/pkg.Svc/New".into(), "5".into(), None, 1),
            ("grpc", "grpc", "/pkg.Svc/New".into(), "0".into(), None, 1),
            ("http2", "GET", "/old".into(), "200".into(), None, 2),
        ]
    );
    assert_eq!(t.joined, 2);
    assert_eq!(t.unsynced, 0);
}

#[test]
fn a_connection_from_its_preface_is_not_taken_as_joined() {
    let mut t = Http2::new(&settings());
    let mut c = Peer::new();
    let mut w = PREFACE.to_vec();
    w.extend(request(&mut c, 1, "GET", "/a", false));
    assert!(whole(&mut t, Side::Client, true, 0, 0, &w).is_empty());
    assert_eq!(t.joined, 0);
}

/// A gRPC message: its flag, its length, its bytes.
fn message(body: &[u8]) -> Vec<u8> {
    let mut m = vec![0];
    m.extend_from_slice(&(body.len() as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

#[test]
fn a_streaming_calls_messages_are_counted_across_frames_padding_and_calls() {
    let mut t = Http2::new(&settings());
    let (mut c, mut s) = (Peer::new(), Peer::new());
    let mut w = PREFACE.to_vec();
    w.extend(request(&mut c, 1, "POST", "/pkg.Svc/Watch", true));
    // One request message, split across two DATA frames.
    let m = message(b"query");
    w.extend(frame(DATA, 0, 1, &m[..3]));
    w.extend(frame(DATA, END_STREAM, 1, &m[3..]));
    assert!(whole(&mut t, Side::Client, true, 0, 0, &w).is_empty());
    let mut r = s.headers(
        1,
        false,
        &[(":status", "200"), ("content-type", "application/grpc")],
    );
    // Two messages in one frame, an empty one, then one in a padded frame (pad length 4).
    let mut two = message(b"first");
    two.extend(message(b"second"));
    two.extend(message(b""));
    r.extend(frame(DATA, 0, 1, &two));
    let mut padded = vec![4];
    padded.extend(message(b"third"));
    padded.extend([0; 4]);
    r.extend(frame(DATA, 0x8, 1, &padded));
    r.extend(s.headers(1, true, &[("grpc-status", "0")]));
    // The response read in calls cut anywhere.
    let mut out = Vec::new();
    for (k, chunk) in r.chunks(7).enumerate() {
        out.extend(whole(
            &mut t,
            Side::Client,
            false,
            1 + k as u64,
            1 + k as u64,
            chunk,
        ));
    }
    assert_eq!(seen(&out).len(), 1);
    assert_eq!(out[0].messages, Some([1, 4]));
    // Plain HTTP/2 requests count none.
    let w = request(&mut c, 3, "POST", "/form", false);
    assert!(whole(&mut t, Side::Client, true, 50, 50, &w).is_empty());
    let mut r = s.headers(3, false, &[(":status", "200")]);
    r.extend(frame(DATA, END_STREAM, 3, b"hello"));
    let out = whole(&mut t, Side::Client, false, 51, 51, &r);
    assert_eq!(out[0].messages, None);
}

#[test]
fn messages_with_bytes_lost_are_not_counted() {
    let mut m = Messages::default();
    m.feed(Some(&message(b"abc")));
    assert_eq!(m.counted(), Some(1));
    m.feed(Some(&message(b"abc")[..4]));
    assert_eq!(m.counted(), None, "a message cut short");
    m.feed(Some(&message(b"abc")[4..]));
    assert_eq!(m.counted(), Some(2));
    m.feed(None);
    assert_eq!(m.counted(), None);
}

#[test]
fn pruning_a_block_keeps_what_is_read_and_every_change_to_the_table() {
    // nginx's way: literals without indexing for what changes per response (here by a raw
    // encoding, as loona's encoder indexes new names), after indexed and indexed-name fields.
    let mut block = vec![0x88]; // :status 200 (static 8)
                                // date (static 33), literal without indexing, value "Sun"; server (54) never indexed.
    block.extend([0x0f, 33 - 15, 3, b'S', b'u', b'n']);
    block.extend([0x1f, 54 - 15, 5, b'n', b'g', b'i', b'n', b'x']);
    // content-type (31) without indexing: read, kept.
    block.extend([0x0f, 31 - 15, 4, b't', b'e', b'x', b't']);
    // x-new: a new name with incremental indexing: changes the table, kept.
    block.extend([0x40, 5, b'x', b'-', b'n', b'e', b'w', 1, b'1']);
    // content-length (28) without indexing: dropped.
    block.extend([0x0f, 28 - 15, 2, b'4', b'2']);
    // x-new again, its name by reference to the dynamic table (62), without indexing: kept.
    block.extend([0x0f, 62 - 15, 1, b'2']);
    // New names without indexing: grpc-status is read, kept; x-other (never indexed) is not.
    let grpc = [&[0x00, 11][..], b"grpc-status", &[1, b'0']].concat();
    block.extend(&grpc);
    block.extend([&[0x10, 7][..], b"x-other", &[1, b'z']].concat());
    let p = pruned(&block, &mut Strings::default()).expect("a whole block");
    let mut kept = vec![0x88];
    kept.extend([0x0f, 31 - 15, 4, b't', b'e', b'x', b't']);
    kept.extend([0x40, 5, b'x', b'-', b'n', b'e', b'w', 1, b'1']);
    kept.extend([0x0f, 62 - 15, 1, b'2']);
    kept.extend(&grpc);
    assert_eq!(p, kept);
    // Decoded, then a block referring to the new entry (index 62): the same either way.
    let mut d = Decoder::new();
    let mut seen = Vec::new();
    assert!(d.decode(&mut Strings::default(), &block, |n, v| seen
        .push((n.to_vec(), v.to_vec()))));
    assert!(d.decode(&mut Strings::default(), &[0xbe], |n, v| seen
        .push((n.to_vec(), v.to_vec()))));
    assert_eq!(
        seen,
        [
            (b":status".to_vec(), b"200".to_vec()),
            (b"content-type".to_vec(), b"text".to_vec()),
            (b"x-new".to_vec(), b"1".to_vec()),
            (b"x-new".to_vec(), b"2".to_vec()),
            (b"grpc-status".to_vec(), b"0".to_vec()),
            (b"x-new".to_vec(), b"1".to_vec()),
        ]
    );
    // A block cut short anywhere is not handed to the decoder, and reads as unknown.
    for cut in [2, 4, 9, block.len() - 1] {
        assert_eq!(
            pruned(&block[..cut], &mut Strings::default()),
            None,
            "cut at {cut}"
        );
    }
    let mut d = Decoder::new();
    assert!(!d.decode(
        &mut Strings::default(),
        &block[..block.len() - 1],
        |_, _| {}
    ));
    assert!(d.0.is_none());
}

/// nginx's response block as it sends it on every response (captured from nginx 1.22 under
/// h2load): `:status` indexed, then `server`, `date`, `content-type`, `content-length` and
/// `last-modified` added to the table anew, Huffman-coded, and `etag` and `accept-ranges`
/// with new names, not indexed.
const NGINX_RESPONSE: &str = "88 76 89 aa 63 55 e5 80 ae 21 2e 1f 61 96 d0 7a be 94 03 aa 5f 29 \
    14 10 04 e2 80 76 e3 4d 5c 0b ca 62 d1 bf 5f 87 49 7c a5 89 d3 4d 1f 5c 03 36 30 30 6c 96 \
    d0 7a be 94 03 aa 5f 29 14 10 04 e2 80 76 e3 4d 5c 03 2a 62 d1 bf 00 83 2a 47 37 8c fe 5c \
    8c 2e 38 c9 19 58 4d bd fc ff 00 89 19 08 5a d2 b5 83 aa 62 a3 84 8f d2 4a 8f";

#[test]
fn huffman_strings_are_decoded_once_and_read_the_same() {
    let block: Vec<u8> = NGINX_RESPONSE
        .split_whitespace()
        .map(|x| u8::from_str_radix(x, 16).expect("hex"))
        .collect();
    // What the library reads of the block as it is, every field.
    let mut lib = httlib_hpack::Decoder::with_dynamic_size(4096);
    let mut all = Vec::new();
    lib.decode(&mut block.clone(), &mut all)
        .expect("nginx's block");
    assert_eq!(all.len(), 8);
    let mut strings = Strings::default();
    let mut d = Decoder::new();
    for round in 0..3 {
        let mut seen = Vec::new();
        assert!(d.decode(&mut strings, &block, |n, v| seen
            .push((n.to_vec(), v.to_vec()))));
        // The same fields but `etag` and `accept-ranges`: not read, not indexed.
        let want: Vec<_> = (all.iter())
            .filter(|(n, _, _)| n != b"etag" && n != b"accept-ranges")
            .map(|(n, v, _)| (n.clone(), v.clone()))
            .collect();
        assert_eq!(seen, want, "round {round}");
        assert_eq!(seen.len(), 6);
        assert_eq!(seen[3], (b"content-type".to_vec(), b"text/html".to_vec()));
        // Its Huffman-coded strings (`content-length`'s "600" is plain) decoded in the first
        // round only: the four values kept and the two names dropped.
        assert_eq!(format!("{strings:?}"), "Strings(6)", "round {round}");
    }
    // The table grew as the library's: the entries of the last block, newest first.
    let mut again = Vec::new();
    assert!(d.decode(&mut strings, &[0xbe, 0xbf], |n, v| again
        .push((n.to_vec(), v.to_vec()))));
    assert_eq!(again[0].0, b"last-modified");
    assert_eq!(again[1], (b"content-length".to_vec(), b"600".to_vec()));
}
