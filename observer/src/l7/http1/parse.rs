//! HTTP/1.x heads from the bounded prefix (up to ~1 KiB) the kernel captures of each message:
//! method, templated route, status and framing. Nothing else from headers or bodies is kept
//! (no Host, cookies, tokens or credentials).
//!
//! Parsing uses `httparse` with a fixed array of [`MAX_HEADERS`] headers: it never panics and
//! allocates only the route label (at most [`MAX_ROUTE_LEN`] bytes), whatever bytes arrive.
//! This file is self-contained (std + httparse) so `fuzz/` can include it with `#[path]`.
//!
//! Route rules ([`route_template`]), chosen to bound the `http_route` label's cardinality:
//! - query (`?…`) and fragment (`#…`) are dropped; absolute-form `http://host/p` keeps `/p`;
//!   empty path → `/`; `*` (OPTIONS *) → `*`; authority-form (CONNECT `host:port`) →
//!   `{authority}`; any other target not starting with `/` → `{invalid}`.
//! - repeated slashes collapse and a trailing slash is dropped (`//a//b/` → `/a/b`); dot segments
//!   and percent-escapes are kept as they are.
//! - path parameters (`;…` in a segment, where Java servers put `jsessionid`) are dropped.
//! - a segment becomes `{id}` when it is: numeric-ish (digits plus `-._:+,`, so numbers, dates
//!   like `2024-05-01`, times and versions like `1.2.3`); a UUID; hex of 8+ chars with a digit,
//!   or of 16+ hex letters without one; a token of 16+ chars of `[A-Za-z0-9_-]` mixing letters
//!   and digits with 4+ character-class changes (lower/upper/digit; keeps slugs like
//!   `oauth2-callback-v2`); a base64url-ish run of 20+ chars with a third or more of its letters
//!   upper case and frequent class changes (random text, not camelCase); a word (the parts
//!   between `-`, `_` and camelCase boundaries) of 12+ characters that reads as random, by its
//!   entropy (16+ distinct characters over 20+) or by what no word has (fewer than a fifth
//!   vowels, or 5 consonants in a row): long random all-lower-case session tokens with no digit;
//!   or longer than [`MAX_SEGMENT_LEN`] bytes. Otherwise each `.`-separated part that is an id
//!   becomes `{id}` (`123.json` → `{id}.json`, `app.9f1c2e3a4b.js` → `app.{id}.js`).
//! - at most [`MAX_SEGMENTS`] segments and [`MAX_ROUTE_LEN`] bytes: what does not fit is cut at a
//!   segment boundary and replaced by a final `/...` (the result is never longer than the cap).
//!
//! The heuristics miss some ids; `l7::cap::TargetCap` is the backstop that bounds distinct routes.

use std::borrow::Cow;

/// Headers parsed per message; a head with more is [`Parsed::Invalid`] (the request or status
/// line is still available from [`parse_request_line`] / [`parse_status_line`]).
pub const MAX_HEADERS: usize = 64;
/// Maximum length of a route label in bytes.
pub const MAX_ROUTE_LEN: usize = 128;
/// Maximum number of path segments in a route label.
pub const MAX_SEGMENTS: usize = 8;
/// Segments longer than this become `{id}`.
pub const MAX_SEGMENT_LEN: usize = 64;
/// Label of a templated id segment.
pub const ID: &str = "{id}";
/// Appended when segments were cut.
pub const TRUNCATED: &str = "/...";
/// Label of a CONNECT target (`host:port`).
pub const AUTHORITY: &str = "{authority}";
/// Label of any other target that is no path.
pub const INVALID: &str = "{invalid}";

/// Result of parsing a message head from a (possibly truncated) buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    /// The head is complete; the body (or the next pipelined message) starts at `head_len`.
    Complete { head: T, head_len: usize },
    /// Valid so far but the head does not end within the buffer.
    Partial,
    /// Not HTTP/1.x, malformed, more than [`MAX_HEADERS`] headers, or ambiguous framing.
    Invalid,
}

/// Request method; anything but the nine standard ones is `_OTHER` (OpenTelemetry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    Other,
}

const METHODS: [(&str, Method); 9] = [
    ("GET", Method::Get),
    ("HEAD", Method::Head),
    ("POST", Method::Post),
    ("PUT", Method::Put),
    ("DELETE", Method::Delete),
    ("CONNECT", Method::Connect),
    ("OPTIONS", Method::Options),
    ("TRACE", Method::Trace),
    ("PATCH", Method::Patch),
];

impl Method {
    /// Method of a token (case-sensitive, as RFC 9110 says).
    pub fn from_token(token: &[u8]) -> Method {
        let known = METHODS.iter().find(|(name, _)| name.as_bytes() == token);
        known.map_or(Method::Other, |&(_, m)| m)
    }

    /// The `http.request.method` label.
    pub fn as_str(self) -> &'static str {
        let known = METHODS.iter().find(|&&(_, m)| m == self);
        known.map_or("_OTHER", |&(name, _)| name)
    }
}

/// What message framing needs from the headers, and nothing more.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Framing {
    /// `Content-Length`; `None` when absent or when any `Transfer-Encoding` is present
    /// (RFC 9112 §6.3). Differing or non-numeric values make the head [`Parsed::Invalid`].
    pub content_length: Option<u64>,
    /// The final transfer coding is `chunked`.
    pub chunked: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// `Connection: close` (the header only; HTTP/1.0's default is the caller's to apply).
    pub close: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    /// Templated by [`route_template`].
    pub route: String,
    /// 0 or 1 (HTTP/1.0, HTTP/1.1).
    pub minor_version: u8,
    pub framing: Framing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub minor_version: u8,
    pub framing: Framing,
}

/// Parses a request head from the start of `buf` (leading empty lines are skipped).
pub fn parse_request(buf: &[u8]) -> Parsed<RequestHead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let r = req.parse(buf);
    finish(r, req.headers, |framing| {
        Some(RequestHead {
            method: Method::from_token(req.method?.as_bytes()),
            route: route_template(req.path?),
            minor_version: req.version?,
            framing,
        })
    })
}

/// Parses a response head from the start of `buf`. A `100 Continue` head is complete on its
/// own: the final response starts at `head_len`.
pub fn parse_response(buf: &[u8]) -> Parsed<ResponseHead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let r = resp.parse(buf);
    finish(r, resp.headers, |framing| {
        Some(ResponseHead {
            status: resp.code?,
            minor_version: resp.version?,
            framing,
        })
    })
}

fn finish<T>(
    r: httparse::Result<usize>,
    headers: &[httparse::Header<'_>],
    head: impl FnOnce(Framing) -> Option<T>,
) -> Parsed<T> {
    match r {
        Ok(httparse::Status::Complete(head_len)) => match framing(headers).and_then(head) {
            Some(head) => Parsed::Complete { head, head_len },
            None => Parsed::Invalid,
        },
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Invalid,
    }
}

/// Errors that can only come from the header section, after the start line.
fn after_start_line(r: &httparse::Result<usize>) -> bool {
    matches!(
        r,
        Ok(_)
            | Err(httparse::Error::TooManyHeaders
                | httparse::Error::HeaderName
                | httparse::Error::HeaderValue)
    )
}

/// Method, templated route and minor version once the request line is parsed up to its version,
/// whatever follows (truncated or malformed headers). For heads the prefix cut short.
pub fn parse_request_line(buf: &[u8]) -> Option<(Method, String, u8)> {
    request_line(buf).map(|(m, target, v)| (m, route_template(target), v))
}

/// Method, raw target and minor version once the request line is parsed up to its version,
/// whatever follows: the request line alone, for callers that template (and cache) the target
/// themselves.
pub fn request_line(buf: &[u8]) -> Option<(Method, &str, u8)> {
    let mut req = httparse::Request::new(&mut []);
    let r = req.parse(buf);
    let (method, path, version) = (req.method?, req.path?, req.version?);
    after_start_line(&r).then(|| (Method::from_token(method.as_bytes()), path, version))
}

/// A request line's method (1 to 20 upper-case letters) and what follows its space.
fn method_token(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let sp = buf.iter().take(21).position(|&b| b == b' ')?;
    let method = &buf[..sp];
    if method.is_empty() || !method.iter().all(u8::is_ascii_uppercase) {
        return None;
    }
    Some((method, &buf[sp + 1..]))
}

/// A request line cut by the end of `buf` before its version (a target longer than the
/// kernel's snippet): the method and the target, its path ended with [`TRUNCATED`] where the
/// cut fell inside it (the query or fragment started: the path is whole). Minor version 1.
pub fn cut_request_line(buf: &[u8]) -> Option<(Method, Cow<'_, str>, u8)> {
    let (method, rest) = method_token(buf)?;
    let (target, whole) = match rest.iter().position(|&b| b == b' ') {
        // The version cut: the target is whole.
        Some(i) => (&rest[..i], true),
        None => (rest, false),
    };
    if target.is_empty() || !target.iter().all(|b| (0x21..0x7f).contains(b)) {
        return None;
    }
    let target = std::str::from_utf8(target).ok()?;
    let method = Method::from_token(method);
    if whole || target.contains(['?', '#']) || !target.starts_with('/') {
        return Some((method, Cow::Borrowed(target), 1));
    }
    let kept = &target[..target.rfind('/').unwrap_or(0)];
    Some((method, Cow::Owned(format!("{kept}{TRUNCATED}")), 1))
}

/// The tracker's common case, without httparse: method, raw target and minor version of a
/// request line of visible ASCII. `None` for anything unusual (the caller then asks httparse,
/// which knows every rule).
pub fn quick_request_line(buf: &[u8]) -> Option<(Method, &str, u8)> {
    let (method, rest) = method_token(buf)?;
    let sp2 = rest.iter().position(|&b| b == b' ')?;
    let target = &rest[..sp2];
    if target.is_empty() || !target.iter().all(|b| (0x21..0x7f).contains(b)) {
        return None;
    }
    let v = &rest[sp2 + 1..];
    if v.len() < 10 || &v[..7] != b"HTTP/1." || !v[7].is_ascii_digit() {
        return None;
    }
    let eol = &v[8..];
    if !(eol.starts_with(b"\r\n") || eol.starts_with(b"\n")) {
        return None;
    }
    let target = std::str::from_utf8(target).ok()?;
    Some((Method::from_token(method), target, v[7] - b'0'))
}

/// The tracker's common case, without httparse: status, head length and framing of a complete
/// response head whose header names are plain tokens. `None` for anything unusual (the caller
/// then asks httparse).
pub fn quick_response(buf: &[u8]) -> Option<(u16, usize, Framing)> {
    if buf.len() < 12 || &buf[..7] != b"HTTP/1." || !buf[7].is_ascii_digit() || buf[8] != b' ' {
        return None;
    }
    let code = &buf[9..12];
    if !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let status = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let mut at = memchr_nl(buf, 12)? + 1;
    let mut f = Framing::default();
    let mut transfer_encoding = false;
    loop {
        let end = memchr_nl(buf, at)?;
        let line = buf[at..end].strip_suffix(b"\r").unwrap_or(&buf[at..end]);
        at = end + 1;
        if line.is_empty() {
            break;
        }
        let colon = memchr::memchr(b':', line)?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-') {
            return None;
        }
        // Only three names matter: compared by length first.
        if !matches!(name.len(), 10 | 14 | 17) {
            continue;
        }
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_u64(value)?;
            if f.content_length.is_some_and(|c| c != n) {
                return None;
            }
            f.content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            f.chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            f.close |= value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    if transfer_encoding {
        f.content_length = None;
    }
    Some((status, at, f))
}

fn memchr_nl(buf: &[u8], from: usize) -> Option<usize> {
    memchr::memchr(b'\n', buf.get(from..)?).map(|i| i + from)
}

/// Status and minor version once the status line is parsed up to its code, whatever follows.
pub fn parse_status_line(buf: &[u8]) -> Option<(u16, u8)> {
    let mut resp = httparse::Response::new(&mut []);
    let r = resp.parse(buf);
    let (code, version) = (resp.code?, resp.version?);
    after_start_line(&r).then_some((code, version))
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Framing from the headers; `None` when `Content-Length` is malformed or contradictory.
fn framing(headers: &[httparse::Header<'_>]) -> Option<Framing> {
    let mut f = Framing::default();
    let mut transfer_encoding = false;
    let comma = |b: &u8| *b == b',';
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            for part in h.value.split(comma) {
                let n = parse_u64(part.trim_ascii())?;
                if f.content_length.is_some_and(|c| c != n) {
                    return None;
                }
                f.content_length = Some(n);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            let last = h.value.rsplit(comma).next().unwrap_or_default();
            f.chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case("expect") {
            f.expect_continue |= h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case("connection") {
            f.close |= h
                .value
                .split(comma)
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    if transfer_encoding {
        f.content_length = None;
    }
    Some(f)
}

/// Skips the empty lines a client may send between pipelined messages.
fn skip_newlines(p: &[u8]) -> &[u8] {
    let start = p
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(p.len());
    &p[start..]
}

/// Does `prefix` start like an HTTP/1.x request? An upper-case method token (at most 20 bytes,
/// `-` and `_` allowed), a space, a target starting with `/`, `*`, `[` or an alphanumeric; if the
/// prefix holds the whole first line, that line must end with ` HTTP/1.<digit>`. Cheap: scans at
/// most to the first LF.
pub fn looks_like_request(prefix: &[u8]) -> bool {
    let p = skip_newlines(prefix);
    let Some(sp) = p.iter().take(21).position(|&b| b == b' ') else {
        return false;
    };
    let method_ok = sp > 0
        && p[..sp]
            .iter()
            .all(|&b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
    let target_ok = p
        .get(sp + 1)
        .is_some_and(|&b| b == b'/' || b == b'*' || b == b'[' || b.is_ascii_alphanumeric());
    if !method_ok || !target_ok {
        return false;
    }
    let Some(lf) = p.iter().position(|&b| b == b'\n') else {
        return true; // the line is longer than the prefix
    };
    let line = p[..lf].strip_suffix(b"\r").unwrap_or(&p[..lf]);
    line.len() >= 9
        && line[line.len() - 9..line.len() - 1] == *b" HTTP/1."
        && line[line.len() - 1].is_ascii_digit()
}

/// Does `prefix` start like an HTTP/1.x response: `HTTP/1.<digit> <3 digits>` (needs 12 bytes)?
pub fn looks_like_response(prefix: &[u8]) -> bool {
    let p = skip_newlines(prefix);
    p.len() >= 12
        && p.starts_with(b"HTTP/1.")
        && p[7].is_ascii_digit()
        && p[8] == b' '
        && p[9..12].iter().all(u8::is_ascii_digit)
}

/// The `http_route` label of a request target; see the module documentation for the rules.
pub fn route_template(target: &str) -> String {
    if target == "*" {
        return "*".into();
    }
    let path = strip_absolute_form(target).unwrap_or(target);
    let path = path.split(['?', '#']).next().unwrap_or_default();
    if path.is_empty() {
        return "/".into();
    }
    if !path.starts_with('/') {
        return if is_authority(path) {
            AUTHORITY
        } else {
            INVALID
        }
        .into();
    }
    let mut out = String::with_capacity(MAX_ROUTE_LEN);
    let mut segments = path
        .split('/')
        .filter(|s| !s.is_empty() && !s.starts_with(';'))
        .peekable();
    let mut n = 0;
    while let Some(seg) = segments.next() {
        let seg = template_segment(seg);
        let room = if segments.peek().is_some() {
            MAX_ROUTE_LEN - TRUNCATED.len()
        } else {
            MAX_ROUTE_LEN
        };
        if n == MAX_SEGMENTS || out.len() + 1 + seg.len() > room {
            out.push_str(TRUNCATED);
            break;
        }
        out.push('/');
        out.push_str(&seg);
        n += 1;
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The part of an absolute-form target (`scheme://authority/path?q`) after the authority.
fn strip_absolute_form(target: &str) -> Option<&str> {
    let (scheme, rest) = target.split_once("://")?;
    let mut s = scheme.bytes();
    let scheme_ok = s.next().is_some_and(|b| b.is_ascii_alphabetic())
        && s.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    scheme_ok.then(|| &rest[rest.find(['/', '?', '#']).unwrap_or(rest.len())..])
}

fn is_authority(s: &str) -> bool {
    s.contains(':')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b))
}

fn template_segment(seg: &str) -> Cow<'_, str> {
    // Path parameters (`;jsessionid=…`) are credentials as often as not: never kept.
    let seg = seg.split(';').next().unwrap_or_default();
    if seg.len() > MAX_SEGMENT_LEN || is_id(seg) {
        return Cow::Borrowed(ID);
    }
    if !seg.contains('.') || !seg.split('.').any(is_id) {
        return Cow::Borrowed(seg);
    }
    let parts: Vec<&str> = seg
        .split('.')
        .map(|p| if is_id(p) { ID } else { p })
        .collect();
    match parts.join(".") {
        s if s.len() > MAX_SEGMENT_LEN => Cow::Borrowed(ID),
        s => Cow::Owned(s),
    }
}

/// Is this path segment an identifier (see the module documentation)?
pub fn is_id(seg: &str) -> bool {
    let b = seg.as_bytes();
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    let numeric = digits > 0
        && b.iter()
            .all(|c| c.is_ascii_digit() || b"-._:+,".contains(c));
    let uuid = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    let distinct = |b: &[u8]| {
        b.iter()
            .fold(0u32, |m, c| m | 1 << (c.to_ascii_lowercase() & 31))
            .count_ones()
    };
    let hex = b.iter().all(u8::is_ascii_hexdigit)
        && ((b.len() >= 8 && digits > 0) || (b.len() >= 16 && distinct(b) >= 4));
    numeric || uuid || hex || is_token(b, digits) || words(b).any(random_word)
}

/// The words of a segment: the parts between `-`, `_` and camelCase boundaries (a lower-case
/// letter or digit followed by an upper-case one).
fn words(b: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < b.len() {
            let at = i;
            i += 1;
            let sep = b[at] == b'-' || b[at] == b'_';
            let camel = at > start
                && b[at].is_ascii_uppercase()
                && (b[at - 1].is_ascii_lowercase() || b[at - 1].is_ascii_digit());
            if sep || camel {
                let w = &b[start..at];
                start = if sep { at + 1 } else { at };
                if !w.is_empty() {
                    return Some(w);
                }
            }
        }
        if start < b.len() {
            let w = &b[start..];
            start = b.len();
            return Some(w);
        }
        None
    })
}

/// A word of 12+ characters that no language has: high entropy (16+ distinct characters over
/// 20+), or, with 8+ distinct characters, fewer than a fifth vowels or 5 consonants in a row
/// (letters compared case-blind).
fn random_word(w: &[u8]) -> bool {
    if w.len() < 12 || !w.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let mut seen = [false; 36];
    let (mut vowels, mut run, mut longest) = (0, 0, 0);
    for &c in w {
        let c = c.to_ascii_lowercase();
        let slot = if c.is_ascii_digit() {
            (c - b'0') as usize + 26
        } else {
            (c - b'a') as usize
        };
        seen[slot] = true;
        if b"aeiouy".contains(&c) || c.is_ascii_digit() {
            vowels += usize::from(!c.is_ascii_digit());
            run = 0;
        } else {
            run += 1;
            longest = longest.max(run);
        }
    }
    let distinct = seen.iter().filter(|&&s| s).count();
    // A run of few letters (`aaaa…`) is no token either.
    (w.len() >= 20 && distinct >= 16) || (distinct >= 8 && (vowels * 5 < w.len() || longest >= 5))
}

/// Random-looking `[A-Za-z0-9_-]` tokens (see the module documentation).
fn is_token(b: &[u8], digits: usize) -> bool {
    if b.len() < 16
        || !b
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
    {
        return false;
    }
    let class = |c: u8| match c {
        b'a'..=b'z' => 1,
        b'A'..=b'Z' => 2,
        b'0'..=b'9' => 3,
        _ => 0,
    };
    let changes = b
        .windows(2)
        .filter(|w| class(w[0]) != 0 && class(w[1]) != 0 && class(w[0]) != class(w[1]))
        .count();
    let upper = b.iter().filter(|c| c.is_ascii_uppercase()).count();
    let lower = b.iter().filter(|c| c.is_ascii_lowercase()).count();
    let mixed = digits > 0 && upper + lower > 0 && changes >= 4;
    let base64ish =
        b.len() >= 20 && lower > 0 && upper * 3 >= upper + lower && changes * 3 >= b.len();
    mixed || base64ish
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_FRAMING: Framing = Framing {
        content_length: None,
        chunked: false,
        expect_continue: false,
        close: false,
    };
    const fn cl(n: u64) -> Framing {
        Framing {
            content_length: Some(n),
            ..NO_FRAMING
        }
    }
    const CHUNKED: Framing = Framing {
        chunked: true,
        ..NO_FRAMING
    };
    const CLOSE: Framing = Framing {
        close: true,
        ..NO_FRAMING
    };

    /// Real-world requests (from curl, Chrome, proxies, WebDAV) with what they parse to.
    #[rustfmt::skip]
    const REQUESTS: &[(&[u8], Method, &str, u8, Framing)] = &[
        (b"GET /api/users/123?expand=orders HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
            Method::Get, "/api/users/{id}", 1, NO_FRAMING),
        (b"GET /static/app.9f1c2e3a4b.js HTTP/1.1\r\nHost: localhost:8080\r\nConnection: keep-alive\r\nsec-ch-ua: \"Chromium\";v=\"124\"\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\nAccept: */*\r\nSec-Fetch-Site: same-origin\r\nReferer: http://localhost:8080/\r\nAccept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-US,en;q=0.9\r\nCookie: session=eyJhbGciOiJIUzI1NiJ9.e30.sig\r\n\r\n",
            Method::Get, "/static/app.{id}.js", 1, NO_FRAMING),
        (b"POST /v1/orders HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer s3cr3t\r\nContent-Type: application/json\r\nContent-Length: 22\r\n\r\n{\"item\":\"book\",\"n\":2}\n",
            Method::Post, "/v1/orders", 1, cl(22)),
        (b"PUT /upload/9f1c2e3a4b HTTP/1.1\r\nHost: x\r\nUser-Agent: curl/8.5.0\r\nContent-Length: 1048576\r\nExpect: 100-continue\r\n\r\n",
            Method::Put, "/upload/{id}", 1, Framing { expect_continue: true, ..cl(1048576) }),
        (b"POST /ingest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            Method::Post, "/ingest", 1, CHUNKED),
        (b"POST /smuggle HTTP/1.1\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n",
            Method::Post, "/smuggle", 1, CHUNKED),
        (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", Method::Post, "/x", 1, NO_FRAMING),
        (b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n", Method::Head, "/healthz", 1, NO_FRAMING),
        (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", Method::Options, "*", 1, NO_FRAMING),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", Method::Connect, "{authority}", 1, NO_FRAMING),
        (b"GET http://example.com/a//b/?c=d HTTP/1.1\r\nHost: example.com\r\nProxy-Connection: Keep-Alive\r\n\r\n",
            Method::Get, "/a/b", 1, NO_FRAMING),
        (b"GET /index.html HTTP/1.0\r\nConnection: close\r\n\r\n", Method::Get, "/index.html", 0, CLOSE),
        (b"DELETE /users/123e4567-e89b-12d3-a456-426614174000 HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n",
            Method::Delete, "/users/{id}", 1, CLOSE),
        (b"PATCH /items/42 HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", Method::Patch, "/items/{id}", 1, cl(5)),
        (b"TRACE / HTTP/1.1\r\n\r\n", Method::Trace, "/", 1, NO_FRAMING),
        (b"PROPFIND /dav/ HTTP/1.1\r\nDepth: 1\r\n\r\n", Method::Other, "/dav", 1, NO_FRAMING),
        (b"get /lower HTTP/1.1\r\n\r\n", Method::Other, "/lower", 1, NO_FRAMING),
        (b"\r\nGET /after-crlf HTTP/1.1\nHost: bare-lf\n\n", Method::Get, "/after-crlf", 1, NO_FRAMING),
    ];

    /// Real-world responses (nginx, python http.server, Tomcat without reason phrase).
    #[rustfmt::skip]
    const RESPONSES: &[(&[u8], u16, u8, Framing)] = &[
        (b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-Type: text/html\r\nContent-Length: 615\r\nLast-Modified: Tue, 11 Apr 2023 01:45:34 GMT\r\nConnection: keep-alive\r\nETag: \"6434bbbe-267\"\r\nAccept-Ranges: bytes\r\n\r\n<!DOCTYPE html>",
            200, 1, cl(615)),
        (b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6 Python/3.12.3\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-type: text/html; charset=utf-8\r\nContent-Length: 1234\r\n\r\n",
            200, 0, cl(1234)),
        (b"HTTP/1.0 404 File not found\r\nServer: BaseHTTP/0.6 Python/3.12.3\r\nConnection: close\r\nContent-Type: text/html;charset=utf-8\r\nContent-Length: 335\r\n\r\n",
            404, 0, Framing { close: true, ..cl(335) }),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 100, 1, NO_FRAMING),
        (b"HTTP/1.1 204 No Content\r\nServer: nginx\r\n\r\n", 204, 1, NO_FRAMING),
        (b"HTTP/1.1 304 Not Modified\r\nETag: \"abc\"\r\nCache-Control: max-age=0\r\n\r\n", 304, 1, NO_FRAMING),
        (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n1a\r\n", 200, 1, CHUNKED),
        (b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", 200, 1, cl(0)),
        (b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://example.com/\r\nConnection: close\r\n\r\n", 301, 1, CLOSE),
    ];

    /// Where the head ends: after the first empty line.
    fn head_end(msg: &[u8]) -> usize {
        let start = msg
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(0);
        (start..msg.len())
            .find_map(|i| {
                [&b"\r\n\r\n"[..], b"\n\n", b"\n\r\n"]
                    .iter()
                    .find(|end| msg[i..].starts_with(end))
                    .map(|end| i + end.len())
            })
            .unwrap()
    }

    #[test]
    fn real_world_requests() {
        for &(msg, method, route, minor_version, framing) in REQUESTS {
            let head = RequestHead {
                method,
                route: route.into(),
                minor_version,
                framing,
            };
            let want = Parsed::Complete {
                head,
                head_len: head_end(msg),
            };
            assert_eq!(parse_request(msg), want, "{}", String::from_utf8_lossy(msg));
            let line = parse_request_line(msg);
            assert_eq!(line, Some((method, route.to_string(), minor_version)));
            assert_eq!(
                looks_like_request(msg),
                method != Method::Other || msg[0] == b'P'
            );
            assert!(!looks_like_response(msg));
            assert_eq!(parse_response(msg), Parsed::Invalid);
        }
    }

    #[test]
    fn real_world_responses() {
        for &(msg, status, minor_version, framing) in RESPONSES {
            let head = ResponseHead {
                status,
                minor_version,
                framing,
            };
            let want = Parsed::Complete {
                head,
                head_len: head_end(msg),
            };
            assert_eq!(
                parse_response(msg),
                want,
                "{}",
                String::from_utf8_lossy(msg)
            );
            assert_eq!(parse_status_line(msg), Some((status, minor_version)));
            assert!(looks_like_response(msg) && !looks_like_request(msg));
            assert_eq!(parse_request(msg), Parsed::Invalid);
        }
        // After 100 Continue, the final response follows.
        let msg = RESPONSES[3].0;
        let Parsed::Complete { head_len, .. } = parse_response(msg) else {
            panic!()
        };
        let Parsed::Complete { head, .. } = parse_response(&msg[head_len..]) else {
            panic!()
        };
        assert_eq!((head.status, head.framing), (201, cl(0)));
    }

    #[test]
    fn pipelined_requests_parse_one_after_the_other() {
        let msg = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b/7 HTTP/1.1\r\n\r\n\r\nHEAD /c HTTP/1.1\r\n\r\n";
        let mut at = 0;
        let mut seen = vec![];
        while at < msg.len() {
            let Parsed::Complete { head, head_len } = parse_request(&msg[at..]) else {
                panic!("{at}")
            };
            at += head_len + head.framing.content_length.unwrap_or(0) as usize;
            seen.push((head.method, head.route));
        }
        let want = [
            (Method::Post, "/a"),
            (Method::Get, "/b/{id}"),
            (Method::Head, "/c"),
        ];
        assert_eq!(seen, want.map(|(m, r)| (m, r.to_string())));
    }

    #[test]
    fn junk_is_invalid() {
        let tls = [
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0xab, 0xcd,
        ];
        let junk: &[&[u8]] = &[
            &tls,
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"*1\r\n$4\r\nPING\r\n",
            b"\0\0\0\0\0\0\0\0\0\0\0\0",
            b"\xff\xfe\xfd GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / HTTP/1.1 \r\n\r\n",
        ];
        for &j in junk {
            assert_eq!(parse_request(j), Parsed::Invalid, "{j:?}");
            assert_eq!(parse_response(j), Parsed::Invalid, "{j:?}");
            assert_eq!(
                (parse_request_line(j), parse_status_line(j)),
                (None, None),
                "{j:?}"
            );
            assert!(!looks_like_request(j) && !looks_like_response(j), "{j:?}");
        }
        for r in [
            "HTTP/1.1 20x OK\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.2x 200\r\n",
        ] {
            assert_eq!(parse_response(r.as_bytes()), Parsed::Invalid, "{r}");
            assert_eq!(parse_status_line(r.as_bytes()), None, "{r}");
        }
        for not_request in [
            "SET key value\r\n",
            "GET",
            "GET ",
            "GET  /x",
            "get / HTTP/1.1\r\n",
            "HTTP/1.1 20",
        ] {
            assert!(!looks_like_request(not_request.as_bytes()), "{not_request}");
            assert!(
                !looks_like_response(not_request.as_bytes()),
                "{not_request}"
            );
        }
    }

    #[test]
    fn bad_framing_or_headers_invalidate_the_head_but_not_the_line() {
        let mut many = b"GET /many HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let bad: &[&[u8]] = &[
            &many,
            b"GET /many HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
            b"GET /many HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET /many HTTP/1.1\r\nContent-Length:\r\n\r\n",
            b"GET /many HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET /many HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"GET /many HTTP/1.1\r\nBad Header: 1\r\n\r\n",
            b"GET /many HTTP/1.1\r\nX: a\0b\r\n\r\n",
        ];
        for &b in bad {
            assert_eq!(
                parse_request(b),
                Parsed::Invalid,
                "{}",
                String::from_utf8_lossy(b)
            );
            let line = parse_request_line(b);
            assert_eq!(line, Some((Method::Get, "/many".into(), 1)));
        }
    }

    #[test]
    fn truncated_heads_are_partial_and_the_start_line_still_usable() {
        let mut long = b"GET /users/42/cart HTTP/1.1\r\nHost: shop\r\nCookie: ".to_vec();
        long.resize(1024, b'a');
        assert_eq!(parse_request(&long), Parsed::Partial);
        assert_eq!(
            parse_request_line(&long),
            Some((Method::Get, "/users/{id}/cart".into(), 1))
        );
        assert!(looks_like_request(&long));
        for (p, line) in [
            ("GET /a/b HT", None),
            ("GET /a/b HTTP/1.1", Some("/a/b")),
            ("GET /a/b HTTP/1.1\r\nX-", Some("/a/b")),
        ] {
            assert_eq!(parse_request(p.as_bytes()), Parsed::Partial, "{p}");
            let want = line.map(|r| (Method::Get, r.to_string(), 1));
            assert_eq!(parse_request_line(p.as_bytes()), want, "{p}");
        }
        for (p, line) in [
            ("HTTP/1.1 404 Not Fo", Some((404, 1))),
            ("HTTP/1.0 50", None),
            ("HTTP/1.1 200 OK\r\nSet-Cookie: id=", Some((200, 1))),
        ] {
            assert_eq!(parse_response(p.as_bytes()), Parsed::Partial, "{p}");
            assert_eq!(parse_status_line(p.as_bytes()), line, "{p}");
        }
        let mut url = b"GET /".to_vec();
        url.resize(1024, b'x');
        assert!(looks_like_request(&url));
        assert_eq!(
            (parse_request(&url), parse_request_line(&url)),
            (Parsed::Partial, None)
        );
    }

    #[test]
    fn header_of_64_kib() {
        let big = "v".repeat(64 * 1024);
        let req = format!("GET /big HTTP/1.1\r\nX-Big: {big}\r\nContent-Length: 2\r\n\r\nok");
        let Parsed::Complete { head, head_len } = parse_request(req.as_bytes()) else {
            panic!()
        };
        assert_eq!(
            (head.route.as_str(), head.framing, head_len),
            ("/big", cl(2), req.len() - 2)
        );
        assert_eq!(parse_request(&req.as_bytes()[..1024]), Parsed::Partial);
        let resp = format!("HTTP/1.1 200 OK\r\nSet-Cookie: {big}\r\n\r\n");
        assert!(matches!(
            parse_response(resp.as_bytes()),
            Parsed::Complete { .. }
        ));
        assert_eq!(parse_response(&resp.as_bytes()[..1024]), Parsed::Partial);
        // A token that never ends is Partial whatever its length: the caller's prefix bounds it.
        assert_eq!(parse_request(big.as_bytes()), Parsed::Partial);
    }

    /// Feeds every prefix of each message to `parse`: Partial before the head ends, then the
    /// same Complete result. Returns the number of prefixes checked.
    fn check_splits<T: PartialEq + std::fmt::Debug>(
        msgs: impl Iterator<Item = &'static [u8]>,
        parse: fn(&[u8]) -> Parsed<T>,
    ) -> usize {
        let mut checked = 0;
        for msg in msgs {
            let full = parse(msg);
            let Parsed::Complete { head_len, .. } = full else {
                panic!("{msg:?} is not complete")
            };
            for i in 0..=msg.len() {
                let want = if i < head_len {
                    &Parsed::Partial
                } else {
                    &full
                };
                assert_eq!(&parse(&msg[..i]), want, "{i} {:?}", &msg[..i]);
                checked += 1;
            }
        }
        checked
    }

    /// Every split point: Partial before the head ends, then the same Complete result.
    #[test]
    fn every_split_point() {
        let checked = check_splits(REQUESTS.iter().map(|r| r.0), parse_request)
            + check_splits(RESPONSES.iter().map(|r| r.0), parse_response);
        assert!(checked > 2000, "{checked}");
    }

    /// Deterministic xorshift generator (no extra crates).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Checks every entry point on `input` and the invariants that hold whatever it is.
    fn check_everything(input: &[u8]) {
        if let Parsed::Complete { head, head_len } = parse_request(input) {
            assert!(head_len <= input.len() && head.route.len() <= MAX_ROUTE_LEN);
            let line = parse_request_line(input);
            assert_eq!(line, Some((head.method, head.route, head.minor_version)));
        }
        if let Parsed::Complete { head, head_len } = parse_response(input) {
            assert!(head_len <= input.len());
            assert_eq!(
                parse_status_line(input),
                Some((head.status, head.minor_version))
            );
        }
        if let Some((_, route, _)) = parse_request_line(input) {
            assert!(route.len() <= MAX_ROUTE_LEN);
        }
        looks_like_request(input);
        looks_like_response(input);
        let route = route_template(&String::from_utf8_lossy(input));
        assert!(
            route.len() <= MAX_ROUTE_LEN && !route.contains(['?', '#']),
            "{route}"
        );
        if route.starts_with('/') {
            assert_eq!(route_template(&route), route, "not idempotent");
            assert!(route.split('/').count() <= MAX_SEGMENTS + 2, "{route}");
        }
    }

    #[test]
    fn random_junk_never_panics() {
        #[rustfmt::skip]
        const PIECES: &[&[u8]] = &[
            b"GET ", b"POST ", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.1 200 OK", b" ", b"\r\n", b"\n",
            b"\r", b":", b"/", b"//", b"?", b"#", b"Content-Length: ", b"Transfer-Encoding: ",
            b"chunked", b"Connection: close", b"0", b"123", b"99999999999999999999", b"%2F",
            b"http://", b"*", b"\0", b"\xff", b"\x16\x03\x01", b"9f1c2e3a4b5d", b"a1B2c3D4e5F6g7H8",
            b"..", b"\t",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for i in 0..6000 {
            let mut input = Vec::new();
            if i % 3 == 0 {
                (0..rng.below(300)).for_each(|_| input.push(rng.next() as u8));
            } else {
                for _ in 0..rng.below(60) {
                    input.extend_from_slice(PIECES[rng.below(PIECES.len())]);
                }
            }
            check_everything(&input);
        }
    }

    #[test]
    fn route_templates() {
        #[rustfmt::skip]
        let table = [
            ("", "/"),
            ("/", "/"),
            ("*", "*"),
            ("?q=1", "/"),
            ("/users/123/orders/9f1c2e3a4b", "/users/{id}/orders/{id}"),
            ("/users/123/orders/9f1c2e3a4b/", "/users/{id}/orders/{id}"),
            ("//users///123//", "/users/{id}"),
            ("/search?q=secret&token=abc#frag", "/search"),
            ("/page#section", "/page"),
            ("http://example.com", "/"),
            ("https://user:pw@example.com:8443/a/1?x", "/a/{id}"),
            ("HTTP://EXAMPLE.COM?x", "/"),
            ("/redirect?to=http://evil/x", "/redirect"),
            ("example.com:443", "{authority}"),
            ("[::1]:8080", "{authority}"),
            ("index.html", "{invalid}"),
            ("/items/123e4567-E89B-12d3-a456-426614174000", "/items/{id}"),
            ("/commits/da39a3ee5e6b4b0d3255bfef95601890afd80709", "/commits/{id}"),
            ("/blobs/deadbeef", "/blobs/deadbeef"),
            ("/blobs/deadbee1", "/blobs/{id}"),
            ("/reports/2024-05-01", "/reports/{id}"),
            ("/at/12:30:00", "/at/{id}"),
            ("/pkg/serde/1.0.203", "/pkg/serde/{id}"),
            ("/api/v2/users", "/api/v2/users"),
            ("/files/123.json", "/files/{id}.json"),
            ("/static/app.9f1c2e3a4b.js", "/static/app.{id}.js"),
            ("/static/index.html", "/static/index.html"),
            ("/s/aZ3kQ9xL2mN8pR4t", "/s/{id}"),
            ("/t/k2j4h5g6f7d8s9a0", "/t/{id}"),
            ("/t/dGhpcyBpcyBhIHRlc3RfYWJj", "/t/{id}"),
            ("/t/AbCdEfGhIjKlMnOpQrStUv", "/t/{id}"),
            ("/auth/oauth2-callback-v2", "/auth/oauth2-callback-v2"),
            ("/blog/my-first-post-about-rust-2024", "/blog/my-first-post-about-rust-2024"),
            ("/rpc/getUserProfileByIdAndName", "/rpc/getUserProfileByIdAndName"),
            ("/rpc/XMLHttpRequestForAPI", "/rpc/XMLHttpRequestForAPI"),
            ("/wiki/caf%C3%A9", "/wiki/caf%C3%A9"),
            ("/wiki/日本", "/wiki/日本"),
            ("/a/./b/../c", "/a/./b/../c"),
            (&format!("/x/{}", "y".repeat(65)), "/x/{id}"),
            ("/1/2/3/4/5/6/7/8", "/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{id}"),
            ("/a/b/c/d/e/f/g/h/i/j", "/a/b/c/d/e/f/g/h/..."),
            // Session ids and random tokens without digits (issue: secrets in routes).
            ("/shop/cart;jsessionid=0A1B2C3D4E5F60718293A4B5C6D7E8F9", "/shop/cart"),
            ("/shop/cart;jsessionid=kqzvhxmwptrbnjfd/checkout", "/shop/cart/checkout"),
            ("/a;v=1/b;x=y", "/a/b"),
            ("/;jsessionid=abc", "/"),
            ("/s/kqzvhxmwptrbnjfdlsw", "/s/{id}"),
            ("/s/deadbeefcafebabedeadbeefcafebabe", "/s/{id}"),
            ("/s/fcbdaebfcadbecfa", "/s/{id}"),
            ("/s/qwhrtlmpxvbnsdkfgzcw", "/s/{id}"),
            ("/s/abcdefghijklmnopqrstuv", "/s/{id}"),
            ("/docs/internationalization", "/docs/internationalization"),
            ("/docs/characteristically", "/docs/characteristically"),
            ("/api/getCustomerOrderHistory", "/api/getCustomerOrderHistory"),
        ];
        for (path, want) in table {
            assert_eq!(route_template(path), want, "{path}");
        }
        // Long routes are cut at a segment boundary and stay within the cap.
        let seg = "abcdefghij".repeat(3);
        let long = route_template(&format!("/{seg}/{seg}/{seg}/{seg}/{seg}"));
        assert_eq!(long, format!("/{seg}/{seg}/{seg}/{seg}/..."));
        assert_eq!(long.len(), MAX_ROUTE_LEN);
        let fits = format!("/{}/{}", "a".repeat(63), "b".repeat(63));
        assert_eq!(route_template(&fits), fits);
        assert_eq!(fits.len(), MAX_ROUTE_LEN);
    }

    #[test]
    fn methods() {
        for m in [
            "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
        ] {
            assert_eq!(Method::from_token(m.as_bytes()).as_str(), m);
        }
        for m in ["get", "PROPFIND", "QUERY", "", "GET "] {
            assert_eq!(Method::from_token(m.as_bytes()).as_str(), "_OTHER");
        }
    }

    #[test]
    fn hundred_thousand_distinct_paths_stay_within_the_cap() {
        use crate::l7::cap::{TargetCap, OVERFLOW};
        use std::sync::Arc;
        const MAX: usize = 200;
        let mut cap = TargetCap::new(MAX);
        let mut labels = std::collections::HashSet::new();
        let mut rng = Rng(42);
        for i in 0..100_000u64 {
            // Word-like segments the id rules keep: only the cap bounds them.
            let word: String = (0..8)
                .map(|_| (b'a' + rng.below(26) as u8) as char)
                .collect();
            let path = format!("/shop/{word}/item/{i}?ref={}", rng.next());
            let route = cap.admit("svc", &Arc::from(route_template(&path)));
            labels.insert(route.to_string());
        }
        assert_eq!(labels.len(), MAX + 1);
        assert!(labels.contains(OVERFLOW));
        assert_eq!(cap.values("svc"), MAX);
        assert_eq!(cap.overflowed("svc"), 100_000 - MAX as u64);
        // Id-like segments collapse into one route without touching the cap.
        let mut cap = TargetCap::new(MAX);
        for i in 0..100_000u64 {
            let path = format!("/users/{i}/orders/{:016x}", rng.next() | 1);
            let route = cap.admit("svc", &Arc::from(route_template(&path)));
            assert_eq!(&*route, "/users/{id}/orders/{id}");
        }
        assert_eq!((cap.values("svc"), cap.overflowed("svc")), (1, 0));
    }

    /// The quick paths agree with httparse wherever they answer, on the real-world heads, their
    /// every prefix and random junk.
    #[test]
    fn quick_paths_agree_with_httparse() {
        let mut answered = 0;
        let mut check = |b: &[u8]| {
            if let Some((m, target, v)) = quick_request_line(b) {
                let (hm, ht, hv) =
                    request_line(b).expect("httparse reads what the quick path read");
                assert_eq!(
                    (m, target, v),
                    (hm, ht, hv),
                    "{:?}",
                    String::from_utf8_lossy(b)
                );
                answered += 1;
            }
            if let Some((status, head_len, framing)) = quick_response(b) {
                match parse_response(b) {
                    Parsed::Complete { head, head_len: h } => {
                        assert_eq!((status, head_len, framing), (head.status, h, head.framing));
                    }
                    other => panic!(
                        "{:?}: quick {status}, httparse {other:?}",
                        String::from_utf8_lossy(b)
                    ),
                }
                answered += 1;
            }
        };
        for (raw, ..) in REQUESTS {
            for end in 0..=raw.len() {
                check(&raw[..end]);
            }
        }
        for (raw, ..) in RESPONSES {
            for end in 0..=raw.len() {
                check(&raw[..end]);
            }
        }
        let mut rng = Rng(7);
        for _ in 0..20_000 {
            let n = rng.below(64);
            const ALPHABET: &[u8] = b"GET /HTP1.\r\n: 0aZ";
            let b: Vec<u8> = (0..n)
                .map(|_| ALPHABET[rng.below(ALPHABET.len())])
                .collect();
            check(&b);
        }
        assert!(answered > 100, "{answered}");
    }
}
