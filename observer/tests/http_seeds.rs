//! Replays the seed corpus in `tests/http-seeds/` (shared with the cargo-fuzz target in
//! `fuzz/`) through every HTTP entry point on stable Rust: the whole file and its prefixes never
//! panic; `valid-req-*` and `valid-resp-*` files parse Complete as a request or response (and
//! every prefix shorter than the head is Partial, every longer one gives the same result); no
//! other file parses Complete at all (they are the nasty cases).

use std::path::Path;

use observer::l7::http1::parse::{
    looks_like_request, looks_like_response, parse_request, parse_request_line, parse_response,
    parse_status_line, route_template, Parsed, MAX_ROUTE_LEN,
};

/// Every prefix up to this length is replayed; longer files are sampled with a stride, so the
/// 64 KiB seed costs thousands of parses, not millions.
const EVERY_PREFIX_UP_TO: usize = 4096;

fn seeds() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/http-seeds");
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("seed file"))
        })
        .collect();
    seeds.sort();
    seeds
}

fn prefix_ends(len: usize) -> impl Iterator<Item = usize> {
    let stride = (len / 64).max(1);
    (0..=len.min(EVERY_PREFIX_UP_TO))
        .chain((EVERY_PREFIX_UP_TO..len).step_by(stride))
        .chain([len])
}

/// Runs every entry point and checks what must hold for any input.
fn run_all(input: &[u8]) {
    if let Parsed::Complete { head, head_len } = parse_request(input) {
        assert!(head_len <= input.len() && head.route.len() <= MAX_ROUTE_LEN);
    }
    if let Parsed::Complete { head_len, .. } = parse_response(input) {
        assert!(head_len <= input.len());
    }
    if let Some((_, route, _)) = parse_request_line(input) {
        assert!(route.len() <= MAX_ROUTE_LEN);
    }
    parse_status_line(input);
    looks_like_request(input);
    looks_like_response(input);
    assert!(route_template(&String::from_utf8_lossy(input)).len() <= MAX_ROUTE_LEN);
}

/// A prefix shorter than the head is Partial; once the head is in, the result is the whole
/// file's.
fn assert_split_points<T: PartialEq + std::fmt::Debug>(
    name: &str,
    data: &[u8],
    parse: fn(&[u8]) -> Parsed<T>,
) {
    let full = parse(data);
    let Parsed::Complete { head_len, .. } = full else {
        panic!("{name}: {full:?}")
    };
    for end in prefix_ends(data.len()) {
        let want = if end < head_len {
            &Parsed::Partial
        } else {
            &full
        };
        assert_eq!(&parse(&data[..end]), want, "{name} cut at {end}");
    }
}

#[test]
fn seeds_never_panic_and_valid_ones_parse() {
    let seeds = seeds();
    assert!(seeds.len() >= 30, "only {} seeds", seeds.len());
    let mut replayed = 0;
    for (name, data) in &seeds {
        for end in prefix_ends(data.len()) {
            run_all(&data[..end]);
            replayed += 1;
        }
        if name.starts_with("valid-req-") {
            assert_split_points(name, data, parse_request);
        } else if name.starts_with("valid-resp-") {
            assert_split_points(name, data, parse_response);
        }
        let request = matches!(parse_request(data), Parsed::Complete { .. });
        let response = matches!(parse_response(data), Parsed::Complete { .. });
        if name.starts_with("valid-req-") {
            assert!(request, "{name}: {:?}", parse_request(data));
            assert!(looks_like_request(data), "{name}");
            assert!(parse_request_line(data).is_some(), "{name}");
        } else if name.starts_with("valid-resp-") {
            assert!(response, "{name}: {:?}", parse_response(data));
            assert!(looks_like_response(data), "{name}");
            assert!(parse_status_line(data).is_some(), "{name}");
        } else {
            assert!(
                !name.starts_with("valid-"),
                "{name}: valid-req- or valid-resp-?"
            );
            assert!(!request && !response, "{name} parses Complete");
        }
    }
    assert!(replayed > 10_000, "{replayed}");
}

/// Every seed, whole and cut at every prefix length the kernel could send, as the request and
/// the response of an exchange record, as a request on its own, as a response without request
/// and then in a close, on one connection, through the HTTP/1 tracker: never a panic, and every
/// request it reports has a status or an error type.
#[test]
fn seeds_through_the_tracker_never_panic() {
    use observer::l7::{
        event::{Event, Kind, Part},
        http1::tracker::Tracker,
        ConnTable, Side,
    };
    use observer_common::{L7Conn, L7Dir, L7_HTTP1, L7_REQ_MAX};
    struct Gone;
    impl ConnTable for Gone {
        fn get(&self, _sk: u64) -> Option<L7Conn> {
            None
        }
        fn scan(&self, _f: &mut dyn FnMut(u64, &L7Conn)) {}
    }
    let part = |ts, d: &'static [u8]| Part {
        ts_ns: ts,
        len: d.len() as u32,
        bytes: d,
    };
    let event = |kind, side, ts, req: Option<Part<'static>>, resp: Option<Part<'static>>| Event {
        sk: 1,
        cgroup_id: 1,
        kind,
        proto: L7_HTTP1,
        side,
        ts_ns: ts,
        request: req,
        response: resp,
        prev: L7Dir::default(),
        peer: "::1".parse().unwrap(),
        peer_port: 1,
        tgid: 1,
        answered: false,
        data: None,
    };
    let mut tracker = Tracker::new(1_000_000);
    let mut out = Vec::new();
    let mut ts = 0;
    for (_, data) in seeds() {
        let data: &'static [u8] = Vec::leak(data);
        for end in prefix_ends(data.len().min(L7_REQ_MAX)) {
            let d = &data[..end];
            for side in [Side::Server, Side::Client] {
                ts += 1000;
                let kinds = [
                    event(
                        Kind::Exchange,
                        side,
                        ts,
                        Some(part(ts - 10, d)),
                        Some(part(ts, d)),
                    ),
                    event(Kind::Request, side, ts + 1, Some(part(ts + 1, d)), None),
                    event(Kind::Exchange, side, ts + 2, None, Some(part(ts + 2, d))),
                    event(Kind::Close, side, ts + 3, Some(part(ts + 3, d)), None),
                ];
                for e in &kinds {
                    tracker.on_event(e, &mut out);
                }
            }
        }
        tracker.poll(ts + 10_000_000, &Gone, &mut out);
        tracker.poll(ts + 1_000_000_000, &Gone, &mut out);
    }
    assert!(!out.is_empty());
    assert!(out
        .iter()
        .all(|e| e.status.is_some() != e.error_type.is_some()));
    assert_eq!(tracker.conns(), 0);
}
