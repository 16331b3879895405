//! Fuzzes the DNS header and question parser: any bytes, any prefix of them: never a panic, a
//! parsed name within DNS's limits, and a message that parses keeps parsing the same with
//! bytes added after it. Seed corpus: ../observer/tests/dns-seeds (see ../README.md).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../observer/src/l7/dns/wire.rs"]
#[allow(dead_code)]
mod wire;

fuzz_target!(|data: &[u8]| {
    for cut in [data.len(), data.len() / 2, wire::HEADER.min(data.len())] {
        let _ = wire::parse(&data[..cut]);
    }
    if let Ok(m) = wire::parse(data) {
        if let Some(q) = &m.question {
            // At most 255 bytes on the wire: never a longer text.
            assert!(q.name.len() <= 255, "{}", q.name);
            let _ = wire::qtype_name(q.qtype);
        }
        let _ = wire::rcode_name(m.rcode);
        let mut longer = data.to_vec();
        longer.extend_from_slice(&[0xc0, 0x0c, 0, 1]);
        assert_eq!(wire::parse(&longer), Ok(m));
    }
});
