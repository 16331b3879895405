//! Fuzzes HTTP/2's framer and the HPACK decoding of what it frames: any bytes after a client's
//! preface, split at any point and with a gap: never a panic; the frames of the whole bytes are
//! the frames of any split of them (DATA content pieces joined); every header block decodes or
//! fails cleanly through the tracker's own HPACK (`hpack.rs`: the structural walk before the
//! decoder, its table bounded), from the start and as a direction joined mid-way. Seed corpus: ../observer/tests/http2-seeds
//! (see ../README.md).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../observer/src/l7/http2/frame.rs"]
#[allow(dead_code)]
mod frame;

#[path = "../../observer/src/l7/http2/hpack.rs"]
#[allow(dead_code)]
mod hpack;

/// The frames of `pieces`, a DATA frame's content pieces joined (a split cuts them anywhere).
fn frames(pieces: &[&[u8]]) -> Vec<String> {
    let mut f = frame::Framer::client();
    let mut v = Vec::new();
    let mut body: Vec<u8> = Vec::new();
    for p in pieces {
        f.feed(p, &mut |x| match x {
            frame::Frame::Body { bytes, .. } => body.extend_from_slice(bytes.unwrap_or(b"?")),
            x => {
                if !body.is_empty() {
                    v.push(format!("{:?}", std::mem::take(&mut body)));
                }
                v.push(format!("{x:?}"));
            }
        });
    }
    if !body.is_empty() {
        v.push(format!("{body:?}"));
    }
    v
}

/// The header blocks of `all`, in order.
fn blocks_again(all: &[u8]) -> Vec<Vec<u8>> {
    let mut f = frame::Framer::client();
    let mut blocks = Vec::new();
    f.feed(all, &mut |x| match x {
        frame::Frame::Headers { block: Some(b), .. } | frame::Frame::Promise { block: Some(b) } => {
            blocks.push(b.to_vec())
        }
        _ => {}
    });
    blocks
}

fuzz_target!(|data: &[u8]| {
    let mut all = frame::PREFACE.to_vec();
    all.extend_from_slice(data);
    let whole = frames(&[&all]);
    let cut = data.first().map_or(0, |&b| usize::from(b)) % (all.len() + 1);
    assert_eq!(frames(&[&all[..cut], &all[cut..]]), whole);
    // A gap somewhere: no panic, whatever it hides.
    let mut f = frame::Framer::client();
    f.feed(&all[..cut], &mut |_| {});
    f.gap(data.len() as u64 % 97, &mut |_| {});
    f.feed(&all[cut..], &mut |_| {});
    // Every block through one decoder, in order, as a direction's are.
    let mut strings = hpack::Strings::default();
    let mut dec = hpack::Decoder::new();
    let mut f = frame::Framer::client();
    let mut blocks = Vec::new();
    f.feed(&all, &mut |x| match x {
        frame::Frame::Headers { block: Some(b), .. } | frame::Frame::Promise { block: Some(b) } => {
            blocks.push(b.to_vec())
        }
        _ => {}
    });
    for b in blocks {
        if !dec.decode(&mut strings, &b, |_, _| {}) {
            break;
        }
    }
    // A joined direction's decoder, the same way.
    let mut dec = hpack::Decoder::joined();
    for b in blocks_again(&all) {
        if !dec.decode(&mut strings, &b, |_, _| {}) {
            break;
        }
    }
});
