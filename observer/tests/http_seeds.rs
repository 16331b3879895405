//! Replays the seed corpus in `tests/http-seeds/` (shared with the cargo-fuzz target in
//! `fuzz/`) through every HTTP entry point on stable Rust: the whole file and its prefixes never
//! panic; `valid-req-*` and `valid-resp-*` files parse Complete as a request or response (and
//! every prefix shorter than the head is Partial, every longer one gives the same result); no
//! other file parses Complete at all (they are the nasty cases).

use std::path::Path;

use observer::pipeline::http::{
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

/// Every seed, whole and cut at every prefix length the kernel could send, as a request start,
/// a response start and then a close on one connection, through the exchange tracker: never a
/// panic, and every exchange it reports has a status or an error type.
#[test]
fn seeds_through_the_exchange_tracker_never_panic() {
    use observer::pipeline::exchange::Tracker;
    use observer_common::{
        HttpConn, HttpEvent, HTTP_DIR_RECV, HTTP_DIR_SEND, HTTP_EV_CLOSE, HTTP_EV_START,
        HTTP_PREFIX,
    };
    let event = |kind, dir, ts, data: &[u8]| {
        let mut prefix = [0u8; HTTP_PREFIX];
        let n = data.len().min(HTTP_PREFIX);
        prefix[..n].copy_from_slice(&data[..n]);
        HttpEvent {
            sk: 1,
            cgroup_id: 1,
            ts_ns: ts,
            conn: HttpConn { family: 10, lport: 80, rport: 1, ..Default::default() },
            len: data.len() as u32,
            tgid: 1,
            kind,
            dir,
            prefix_len: n as u16,
            _pad0: 0,
            prefix,
        }
    };
    let mut tracker = Tracker::new(1_000_000);
    let mut out = Vec::new();
    let mut ts = 0;
    for (_, data) in seeds() {
        for end in prefix_ends(data.len().min(HTTP_PREFIX)) {
            let d = &data[..end];
            for (kind, dir) in [
                (HTTP_EV_START, HTTP_DIR_RECV),
                (HTTP_EV_START, HTTP_DIR_SEND),
                (HTTP_EV_START, HTTP_DIR_RECV),
                (HTTP_EV_CLOSE, 0),
            ] {
                ts += 1000;
                tracker.on_event(&event(kind, dir, ts, d), &mut out);
            }
        }
        tracker.poll(ts + 10_000_000, |_| None, &mut out);
    }
    assert!(out.iter().all(|e| e.status.is_some() != e.error_type.is_some()));
    assert_eq!(tracker.conns(), 0);
}
