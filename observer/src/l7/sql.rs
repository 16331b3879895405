//! What a SQL statement is, for every SQL protocol (PostgreSQL, MySQL/MariaDB): the operation
//! name (a bounded set of SQL keywords and keyword pairs, from the text or PostgreSQL's command
//! tag) and the main table where a plain parse finds one. Never the statement's literals.

use std::{collections::HashMap, hash::BuildHasher, hash::Hasher, sync::Arc};

/// What a statement is: its operation (from its text) and main table (`""`: none found).
#[derive(Debug, Clone)]
pub struct Stmt {
    pub op: &'static str,
    pub table: Arc<str>,
}

/// Table names shared as label values before further ones are not kept (`""`).
const MAX_TABLES: usize = 16384;
/// Statement shapes remembered with what they are; beyond, statements are read every time.
const MAX_SHAPES: usize = 4096;

/// A protocol's reading of statement texts: each shape (the text without its literals, see
/// [`shape`]) is read once and remembered, table names are shared, both sets bounded. A busy
/// client sends the same few statements with other values all day (pgbench's `SELECT ... WHERE
/// aid = 4711`): a hash over the text instead of tokenising it every time.
#[derive(Debug)]
pub struct Statements {
    dialect: Dialect,
    shapes: HashMap<u64, Stmt, foldhash::fast::RandomState>,
    tables: HashMap<String, Arc<str>, foldhash::fast::RandomState>,
    none: Arc<str>,
}

impl Statements {
    pub fn new(dialect: Dialect) -> Self {
        Statements {
            dialect,
            shapes: HashMap::default(),
            tables: HashMap::default(),
            none: Arc::from(""),
        }
    }

    /// What the statement `text` is.
    pub fn stmt(&mut self, text: &[u8]) -> Stmt {
        let shape = shape(text);
        if let Some(s) = shape.and_then(|h| self.shapes.get(&h)) {
            return s.clone();
        }
        let table = match collection(text, self.dialect) {
            Some(t) => match self.tables.get(&t) {
                Some(a) => a.clone(),
                None if self.tables.len() < MAX_TABLES => {
                    let a: Arc<str> = Arc::from(t.as_str());
                    self.tables.insert(t, a.clone());
                    a
                }
                None => self.none.clone(),
            },
            None => self.none.clone(),
        };
        let s = Stmt {
            op: text_operation(text),
            table,
        };
        if let Some(h) = shape {
            if self.shapes.len() < MAX_SHAPES {
                self.shapes.insert(h, s.clone());
            }
        }
        s
    }

    /// A statement whose text is unknown.
    pub fn other(&self) -> Stmt {
        Stmt {
            op: "_OTHER",
            table: self.none.clone(),
        }
    }
}

/// A statement's shape: a hash of its text with its number and string literals left out, so
/// that statements differing only in their values share one reading. Only literals that cannot
/// change what [`text_operation`] and [`collection`] find are left out: a number standing
/// alone (not part of a name such as `t1`, `$1` or `s.2`), and a quoted string without
/// whitespace, `,();` or a backslash (it stays inside one token, which can never be a name, as
/// it holds a quote). `None`: a text too long to be worth it.
pub fn shape(text: &[u8]) -> Option<u64> {
    if text.len() > 4096 {
        return None;
    }
    let name_byte =
        |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$' | b'.' | b'"' | b'`');
    let mut h = foldhash::fast::FixedState::with_seed(0x5ca1_ab1e).build_hasher();
    let (mut i, mut run) = (0, 0);
    while i < text.len() {
        let c = text[i];
        let literal_end = if c.is_ascii_digit() && (i == 0 || !name_byte(text[i - 1])) {
            let mut j = i;
            while j < text.len() && text[j].is_ascii_digit() {
                j += 1;
            }
            let follows = text.get(j).copied().unwrap_or(b' ');
            (!(follows.is_ascii_alphabetic() || follows == b'_')).then_some(j)
        } else if c == b'\'' {
            let end = text[i + 1..]
                .iter()
                .position(|&b| b == b'\'')
                .map(|p| i + 1 + p);
            end.filter(|&e| {
                !text[i + 1..e].iter().any(|&b| {
                    b.is_ascii_whitespace() || matches!(b, b',' | b'(' | b')' | b';' | b'\\')
                })
            })
            .map(|e| e + 1)
        } else {
            None
        };
        match literal_end {
            Some(end) => {
                h.write(&text[run..i]);
                // Where a literal was: `0` cannot stand in for it (a literal never ends in 0).
                h.write_u8(0);
                i = end;
                run = end;
            }
            None => i += 1,
        }
    }
    h.write(&text[run..]);
    h.write_usize(text.len() - run);
    Some(h.finish())
}

/// How a dialect writes and folds names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `"Quoted"` names kept, unquoted ones folded to lower case.
    Postgres,
    /// `` `Quoted` `` names; names kept as written (table names are case-sensitive on Linux).
    Mysql,
}

/// Operation names: PostgreSQL's command tags without their counts, and the keywords that start
/// statements in PostgreSQL and MySQL. Anything else is `_OTHER`.
const OPERATIONS: &[&str] = &[
    "ABORT",
    "ALTER DATABASE",
    "ALTER INDEX",
    "ALTER ROLE",
    "ALTER SEQUENCE",
    "ALTER SYSTEM",
    "ALTER TABLE",
    "ALTER VIEW",
    "ANALYZE",
    "BEGIN",
    "CALL",
    "CHECKPOINT",
    "CLOSE CURSOR",
    "CLUSTER",
    "COMMENT",
    "COMMIT",
    "COPY",
    "CREATE DATABASE",
    "CREATE EXTENSION",
    "CREATE FUNCTION",
    "CREATE INDEX",
    "CREATE MATERIALIZED VIEW",
    "CREATE ROLE",
    "CREATE SCHEMA",
    "CREATE SEQUENCE",
    "CREATE TABLE",
    "CREATE TABLE AS",
    "CREATE VIEW",
    "DEALLOCATE",
    "DEALLOCATE ALL",
    "DECLARE CURSOR",
    "DELETE",
    "DESCRIBE",
    "DISCARD ALL",
    "DO",
    "DROP DATABASE",
    "DROP EXTENSION",
    "DROP FUNCTION",
    "DROP INDEX",
    "DROP ROLE",
    "DROP SCHEMA",
    "DROP SEQUENCE",
    "DROP TABLE",
    "DROP VIEW",
    "END",
    "EXECUTE",
    "EXPLAIN",
    "FETCH",
    "FLUSH",
    "GRANT",
    "INSERT",
    "KILL",
    "LISTEN",
    "LOAD DATA",
    "LOCK TABLE",
    "MERGE",
    "MOVE",
    "NOTIFY",
    "OPTIMIZE TABLE",
    "PREPARE",
    "REFRESH MATERIALIZED VIEW",
    "REINDEX",
    "RELEASE",
    "RENAME TABLE",
    "REPLACE",
    "RESET",
    "REVOKE",
    "ROLLBACK",
    "SAVEPOINT",
    "SELECT",
    "SELECT INTO",
    "SET",
    "SET CONSTRAINTS",
    "SHOW",
    "START TRANSACTION",
    "TABLE",
    "TRUNCATE TABLE",
    "UNLISTEN",
    "UPDATE",
    "USE",
    "VACUUM",
    "VALUES",
    "WITH",
    "XA",
];

fn known(name: &str) -> Option<&'static str> {
    OPERATIONS.binary_search(&name).ok().map(|i| OPERATIONS[i])
}

/// The operation of a `CommandComplete` tag (`INSERT 0 1` → `INSERT`, `CREATE TABLE`).
pub fn tag_operation(tag: &[u8]) -> &'static str {
    let tag = tag.strip_suffix(b"\0").unwrap_or(tag);
    let Ok(text) = std::str::from_utf8(tag) else {
        return "_OTHER";
    };
    let words: Vec<&str> = text
        .split(' ')
        .take_while(|w| !w.is_empty() && !w.bytes().all(|c| c.is_ascii_digit()))
        .collect();
    known(&words.join(" ")).unwrap_or("_OTHER")
}

/// Words of a statement's beginning, upper case, comments and whitespace skipped.
fn words(sql: &[u8], max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < sql.len() && out.len() < max {
        let c = sql[i];
        if c.is_ascii_whitespace() || c == b'(' {
            i += 1;
        } else if sql[i..].starts_with(b"--") {
            while i < sql.len() && sql[i] != b'\n' {
                i += 1;
            }
        } else if sql[i..].starts_with(b"/*") {
            match sql[i + 2..].windows(2).position(|w| w == b"*/") {
                Some(p) => i += p + 4,
                None => break,
            }
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < sql.len() && (sql[i].is_ascii_alphanumeric() || sql[i] == b'_') {
                i += 1;
            }
            out.push(String::from_utf8_lossy(&sql[start..i]).to_ascii_uppercase());
        } else {
            break;
        }
    }
    out
}

/// The operation a statement's text starts with (`SELECT`, `CREATE TABLE`), for a statement
/// whose tag never came (it failed).
pub fn text_operation(sql: &[u8]) -> &'static str {
    let w = words(sql, 3);
    let Some(first) = w.first() else {
        return "_OTHER";
    };
    if let Some(second) = w.get(1) {
        let pair = format!("{first} {second}");
        if let Some(op) = known(&pair) {
            return op;
        }
        // `CREATE UNIQUE INDEX`, `CREATE TEMP TABLE`, `START TRANSACTION`.
        if let Some(third) = w.get(2) {
            if let Some(op) = known(&format!("{first} {third}")) {
                return op;
            }
        }
    }
    known(first).unwrap_or("_OTHER")
}

/// The main table of a plain statement: `SELECT ... FROM t`, `INSERT INTO t`, `UPDATE t`,
/// `DELETE FROM t`, `COPY t`, `TRUNCATE t`, MySQL's `REPLACE INTO t` and `INSERT t`;
/// schema-qualified names kept whole, named as the dialect folds them. `None` where no plain
/// parse finds one.
pub fn collection(sql: &[u8], dialect: Dialect) -> Option<String> {
    let op = text_operation(sql);
    let text = String::from_utf8_lossy(sql);
    let tokens = tokens(&text);
    let name = |t: &str| identifier(t, dialect);
    let after = |kw: &str| -> Option<String> {
        let i = tokens.iter().position(|t| t.eq_ignore_ascii_case(kw))?;
        name(tokens.get(i + 1)?)
    };
    // The table right after the keyword, or after an optional word (`INTO`, `TABLE`).
    let next = |optional: &str| -> Option<String> {
        let t = tokens.get(1)?;
        if t.eq_ignore_ascii_case(optional) {
            name(tokens.get(2)?)
        } else {
            name(t)
        }
    };
    match op {
        "SELECT" | "DELETE" => after("FROM"),
        "INSERT" | "REPLACE" => next("INTO"),
        "UPDATE" | "COPY" => name(tokens.get(1)?),
        "TRUNCATE TABLE" => next("TABLE"),
        _ => None,
    }
}

/// Whitespace-separated tokens; `,`, `(`, `)` and `;` are tokens of their own.
fn tokens(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        let punct = matches!(c, ',' | '(' | ')' | ';');
        if c.is_whitespace() || punct {
            if let Some(s) = start.take() {
                out.push(&text[s..i]);
            }
            if punct {
                out.push(&text[i..i + 1]);
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        out.push(&text[s..]);
    }
    out
}

/// A table name as written: `t`, `s.t`, `"T"` (`` `T` `` in MySQL); at most 64 characters.
fn identifier(t: &str, dialect: Dialect) -> Option<String> {
    let quote = match dialect {
        Dialect::Postgres => '"',
        Dialect::Mysql => '`',
    };
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == quote;
    if t.is_empty()
        || t.len() > 64
        || !t.chars().all(ok)
        || t.starts_with(|c: char| c.is_ascii_digit())
        || known(&t.to_ascii_uppercase()).is_some()
        || t.eq_ignore_ascii_case("ONLY")
        || t.eq_ignore_ascii_case("LATERAL")
    {
        return None;
    }
    let name: String = t
        .split('.')
        .map(
            |part| match part.strip_prefix(quote).and_then(|p| p.strip_suffix(quote)) {
                Some(quoted) => quoted.to_string(),
                None if dialect == Dialect::Postgres => part.to_ascii_lowercase(),
                None => part.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join(".");
    (!name.is_empty() && !name.contains(quote)).then_some(name)
}

/// The statements of a query's text (several in one MySQL `COM_QUERY`): split at `;` outside
/// quotes and comments, those with nothing but blanks and comments, at most `max`.
pub fn split_statements(text: &[u8], max: usize) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let (mut start, mut i, mut quote, mut content) = (0, 0, None, false);
    let skip_to = |i: usize, end: &[u8]| -> usize {
        match text[i..].windows(end.len()).position(|w| w == end) {
            Some(p) => i + p + end.len() - 1,
            None => text.len(),
        }
    };
    while i < text.len() {
        let c = text[i];
        match quote {
            Some(_) if c == b'\\' => i += 1,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if text[i..].starts_with(b"-- ") || c == b'#' => i = skip_to(i, b"\n"),
            None if text[i..].starts_with(b"/*") => i = skip_to(i + 2, b"*/"),
            None if c == b';' => {
                if content {
                    out.push(&text[start..i]);
                }
                (start, content) = (i + 1, false);
            }
            None => {
                if matches!(c, b'\'' | b'"' | b'`') {
                    quote = Some(c);
                }
                content |= !c.is_ascii_whitespace();
            }
        }
        i += 1;
    }
    if content {
        out.push(&text[start.min(text.len())..]);
    }
    out.truncate(max);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_from_tags_and_texts() {
        assert!(OPERATIONS.windows(2).all(|w| w[0] < w[1]), "sorted, unique");
        assert_eq!(tag_operation(b"INSERT 0 1\0"), "INSERT");
        assert_eq!(tag_operation(b"SELECT 5"), "SELECT");
        assert_eq!(tag_operation(b"CREATE TABLE"), "CREATE TABLE");
        assert_eq!(tag_operation(b"BEGIN"), "BEGIN");
        assert_eq!(tag_operation(b"WHATEVER 3"), "_OTHER");
        assert_eq!(text_operation(b"  select * from t"), "SELECT");
        assert_eq!(text_operation(b"/* c */ -- x\nUPDATE t SET a=1"), "UPDATE");
        assert_eq!(
            text_operation(b"create unique index i on t(a)"),
            "CREATE INDEX"
        );
        assert_eq!(text_operation(b"START TRANSACTION"), "START TRANSACTION");
        assert_eq!(text_operation(b"'literal'"), "_OTHER");
        assert_eq!(text_operation(b""), "_OTHER");
    }

    #[test]
    fn main_tables_of_plain_statements() {
        let c = |s: &str| collection(s.as_bytes(), Dialect::Postgres);
        assert_eq!(
            c("SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
            Some("pgbench_accounts".into())
        );
        assert_eq!(
            c("insert into Public.History (a) values (1)"),
            Some("public.history".into())
        );
        assert_eq!(
            c("UPDATE pgbench_tellers SET tbalance = 1"),
            Some("pgbench_tellers".into())
        );
        assert_eq!(c("DELETE FROM \"Mixed\" WHERE x"), Some("Mixed".into()));
        assert_eq!(c("TRUNCATE TABLE t1"), Some("t1".into()));
        assert_eq!(c("SELECT 1"), None);
        assert_eq!(c("BEGIN"), None);
        assert_eq!(c("SELECT * FROM (SELECT 1) x"), None);
        let m = |s: &str| collection(s.as_bytes(), Dialect::Mysql);
        assert_eq!(m("SELECT * FROM `Orders` o"), Some("Orders".into()));
        assert_eq!(m("insert Items (a) values (?)"), Some("Items".into()));
        assert_eq!(m("REPLACE INTO shop.t1 VALUES (1)"), Some("shop.t1".into()));
        assert_eq!(m("SELECT * FROM \"x\""), None);
    }

    #[test]
    fn statements_differing_in_literals_share_a_shape_and_nothing_else_does() {
        let sh = |t: &str| shape(t.as_bytes()).unwrap();
        let same = [
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;",
                "SELECT abalance FROM pgbench_accounts WHERE aid = 12;",
            ),
            (
                "UPDATE t SET a = 'x' WHERE b = 1.5",
                "UPDATE t SET a = 'yz' WHERE b = 2.5",
            ),
            (
                "INSERT INTO t VALUES (1, 'a', -3)",
                "INSERT INTO t VALUES (22, 'bcd', -4)",
            ),
        ];
        for (a, b) in same {
            assert_eq!(sh(a), sh(b), "{a} / {b}");
        }
        // Names with digits, parameters, strings a name could hide behind, and where the
        // literal is: all read apart.
        let apart = [
            ("SELECT * FROM t1", "SELECT * FROM t2"),
            ("SELECT * FROM s.1", "SELECT * FROM s.2"),
            ("SELECT $1", "SELECT $2"),
            ("SELECT 'a FROM b' FROM c", "SELECT 'q' FROM c"),
            ("SELECT 1 FROM a", "SELECT FROM a"),
            ("SELECT 12t", "SELECT 34t"),
            ("SELECT 'a\\' FROM t", "SELECT 'b\\' FROM t"),
        ];
        for (a, b) in apart {
            assert_ne!(sh(a), sh(b), "{a} / {b}");
        }
        // What a shape stands for is what each text of it reads as.
        let mut st = Statements::new(Dialect::Postgres);
        for (a, b) in same {
            let (x, y) = (st.stmt(a.as_bytes()), st.stmt(b.as_bytes()));
            let mut fresh = Statements::new(Dialect::Postgres);
            let z = fresh.stmt(b.as_bytes());
            assert_eq!((x.op, &*x.table), (y.op, &*y.table));
            assert_eq!((y.op, &*y.table), (z.op, &*z.table));
        }
        assert_eq!(
            &*st.stmt(b"SELECT abalance FROM pgbench_accounts WHERE aid = 9")
                .table,
            "pgbench_accounts"
        );
    }

    #[test]
    fn statements_of_a_text() {
        assert_eq!(
            split_statements(b"SELECT ';' -- ;\n; /* ; */ ; # x;\n", 16),
            [&b"SELECT ';' -- ;\n"[..]]
        );
        assert_eq!(
            split_statements(b"BEGIN; UPDATE t SET a = 'x\\';y'; COMMIT;", 16),
            [&b"BEGIN"[..], b" UPDATE t SET a = 'x\\';y'", b" COMMIT"]
        );
        assert_eq!(split_statements(b"a;b;c", 2).len(), 2);
    }
}
