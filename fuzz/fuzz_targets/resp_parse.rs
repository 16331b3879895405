//! Fuzzes the RESP (Redis) stream parser: any bytes, split anywhere, in either direction, with
//! a gap of unsent bytes: never a panic, and a split never changes what is parsed.
//! Seed corpus: ../observer/tests/redis-seeds (see ../README.md).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../observer/src/l7/redis/resp.rs"]
#[allow(dead_code)]
mod resp;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, data)) = data.split_first() else {
        return;
    };
    let requests = ctl & 1 == 1;
    let (whole, broken) = resp::parse_all(data, requests);
    let cut = usize::from(ctl >> 1).min(data.len());
    let mut s = if requests {
        resp::Stream::requests()
    } else {
        resp::Stream::replies()
    };
    let mut split = Vec::new();
    s.feed(&data[..cut], &mut |m| split.push(m));
    s.feed(&data[cut..], &mut |m| split.push(m));
    assert_eq!(split, whole);
    assert_eq!(s.broken(), broken);
    // Bytes the kernel did not send, then more: never a panic, never a message after a loss
    // of framing.
    let before = split.len();
    s.gap(u64::from(ctl), &mut |m| split.push(m));
    let lost = s.broken().is_some();
    s.feed(data, &mut |m| split.push(m));
    if lost {
        assert_eq!(split.len(), before);
    }
});
