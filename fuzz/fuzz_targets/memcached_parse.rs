//! Fuzzes the Memcached text framer, both directions: any bytes, split anywhere, with a gap of
//! unsent bytes: never a panic, and a split never changes what is framed. Seed corpus:
//! ../observer/tests/memcached-seeds (see ../README.md).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../observer/src/l7/memcached/text.rs"]
#[allow(dead_code)]
mod text;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, data)) = data.split_first() else {
        return;
    };
    // The low bit picks the direction; the rest is where the bytes are split.
    let requests = ctl & 1 == 1;
    let (whole, broken) = text::parse_all(data, requests);
    let cut = usize::from(ctl >> 1).min(data.len());
    let mut f = if requests {
        text::Framer::requests()
    } else {
        text::Framer::replies()
    };
    let mut split = Vec::new();
    f.feed(&data[..cut], &mut |x| split.push(x));
    f.feed(&data[cut..], &mut |x| split.push(x));
    assert_eq!(split, whole);
    assert_eq!(f.broken(), broken);
    for x in &whole {
        if let text::Frame::Command(c) = x {
            assert!(!c.name.is_empty());
        }
    }
    let _ = text::starts_command(data);
    let before = split.len();
    f.gap(u64::from(ctl) + 1, &mut |x| split.push(x));
    if f.broken().is_some() {
        f.feed(data, &mut |x| split.push(x));
        assert_eq!(split.len(), before);
    }
});
