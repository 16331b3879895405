//! Fuzzes the PostgreSQL framer and the statement describer: any bytes, split anywhere, in
//! either direction, with a gap of unsent bytes: never a panic, and a split never changes what
//! is framed. Seed corpus: ../observer/tests/postgres-seeds (see ../README.md).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../observer/src/l7/sql.rs"]
#[allow(dead_code)]
mod sql;
#[path = "../../observer/src/l7/postgres/wire.rs"]
#[allow(dead_code)]
mod wire;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, data)) = data.split_first() else {
        return;
    };
    let frontend = ctl & 1 == 1;
    let from_start = ctl & 2 == 2;
    let (whole, broken) = wire::parse_all(data, frontend, from_start);
    let cut = usize::from(ctl >> 2).min(data.len());
    let mut f = if frontend {
        wire::Framer::frontend(from_start)
    } else {
        wire::Framer::backend()
    };
    let mut split = Vec::new();
    f.feed(&data[..cut], &mut |m| split.push(m));
    f.feed(&data[cut..], &mut |m| split.push(m));
    assert_eq!(split, whole);
    assert_eq!(f.broken(), broken);
    for m in &whole {
        assert!(m.body.len() <= wire::KEEP && m.body.len() <= m.len as usize);
        let _ = wire::sqlstate(&m.body);
        let _ = sql::tag_operation(&m.body);
        let _ = sql::text_operation(&m.body);
        if let Some(t) = sql::collection(&m.body, sql::Dialect::Postgres) {
            assert!(!t.is_empty() && t.len() <= 64);
        }
    }
    let before = split.len();
    f.gap(u64::from(ctl), &mut |m| split.push(m));
    if f.broken().is_some() {
        f.feed(data, &mut |m| split.push(m));
        assert_eq!(split.len(), before);
    }
});
