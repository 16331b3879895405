//! Fuzzes the MySQL packet framer and what is read of packets and statement texts: any bytes,
//! split anywhere, with a gap of unsent bytes: never a panic, and a split never changes what is
//! framed. Seed corpus: ../observer/tests/mysql-seeds (see ../README.md).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../observer/src/l7/sql.rs"]
#[allow(dead_code)]
mod sql;
#[path = "../../observer/src/l7/mysql/wire.rs"]
#[allow(dead_code)]
mod wire;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, data)) = data.split_first() else {
        return;
    };
    let (whole, broken) = wire::parse_all(data);
    let cut = usize::from(ctl).min(data.len());
    let mut f = wire::Framer::default();
    let mut split = Vec::new();
    f.feed(&data[..cut], &mut |p| split.push(p));
    f.feed(&data[cut..], &mut |p| split.push(p));
    assert_eq!(split, whole);
    assert_eq!(f.broken(), broken);
    for p in &whole {
        assert!(p.body.len() <= wire::KEEP && p.body.len() as u64 <= p.len);
        let _ = (
            p.error_code(),
            p.status(),
            p.more_results(),
            p.cursor(),
            p.ends_rows(),
        );
        let _ = wire::lenenc(&p.body);
        let _ = wire::starts_command(&p.body);
        let text = p.body.get(1..).unwrap_or_default();
        let stmts = sql::split_statements(text, 16);
        assert!(stmts.len() <= 16);
        for s in stmts {
            let _ = sql::text_operation(s);
            if let Some(t) = sql::collection(s, sql::Dialect::Mysql) {
                assert!(!t.is_empty() && t.len() <= 64);
            }
        }
    }
    let before = split.len();
    f.gap(u64::from(ctl) + 1, &mut |p| split.push(p));
    if f.broken() {
        f.feed(data, &mut |p| split.push(p));
        assert_eq!(split.len(), before);
    }
});
