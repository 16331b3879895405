//! Fuzzes the HTTP/1.x head parsers and the route templating of the observer.
//! Seed corpus: ../observer/tests/http-seeds (see ../README.md).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../observer/src/l7/cap.rs"]
#[allow(dead_code)]
mod cap;
#[path = "../../observer/src/l7/http1/parse.rs"]
#[allow(dead_code)]
mod http;

fuzz_target!(|data: &[u8]| {
    if let http::Parsed::Complete { head, head_len } = http::parse_request(data) {
        assert!(head_len <= data.len() && head.route.len() <= http::MAX_ROUTE_LEN);
        let line = http::parse_request_line(data);
        assert_eq!(line, Some((head.method, head.route, head.minor_version)));
    }
    if let http::Parsed::Complete { head, head_len } = http::parse_response(data) {
        assert!(head_len <= data.len());
        assert_eq!(
            http::parse_status_line(data),
            Some((head.status, head.minor_version))
        );
    }
    let _ = http::parse_request_line(data);
    let _ = http::parse_status_line(data);
    let _ = http::looks_like_request(data);
    let _ = http::looks_like_response(data);
    if let Ok(target) = std::str::from_utf8(data) {
        let route = http::route_template(target);
        assert!(route.len() <= http::MAX_ROUTE_LEN && !route.contains(['?', '#']));
        if route.starts_with('/') {
            assert_eq!(http::route_template(&route), route);
        }
        let mut cap = cap::TargetCap::new(2);
        cap.admit("svc", &std::sync::Arc::from(route));
    }
});
