//! Privileged accuracy tests of PostgreSQL capture (`--probes postgresql`): Debian's PostgreSQL
//! 15 server in one simulated pod, `pgbench` and `psql` (libpq, C) and a Python client speaking
//! the protocol on a raw socket in another; counts EXACT against ground truth:
//! - the server's own record: `pg_stat_statements` calls per statement, reset before the load
//!   and read after it (from the host, so the reading is no client pod's operation);
//! - pgbench's own count of the transactions it processed.
//!
//! pgbench also runs over TLS (`sslmode=require` against a server that lets only TLS in): the
//! TLS probe's plaintext, counted the same, exact.
//!
//! A statement's operation is compared by its first keyword (`END` is PostgreSQL's `COMMIT`
//! tag). Series: `db_client_operation_duration_seconds` of the client pod with
//! `db_system_name="postgresql"`.

use std::{collections::BTreeMap, time::Duration};

use observer_tests::{
    db::{self, CLIENT},
    metrics::{matching, Sample},
    net::Bridge,
    observer::Observer,
    pod::Pod,
    require_root, sh, slowdown, TempDir,
};

const PORT: u16 = 5432;
const BIN: &str = "/usr/lib/postgresql/15/bin";

struct Setup {
    _dir: TempDir,
    _bridge: Bridge,
    server: Pod,
    client: Pod,
    obs: Observer,
}

/// initdb (trust for every host), the server in its pod with pg_stat_statements, the database
/// initialised by pgbench from the host, then the observer.
fn setup() -> Setup {
    setup_with(false, |_, _, _| {})
}

/// As [`setup`], with TLS when `tls` (`ssl=on` with a certificate made by `openssl req`, and
/// only TLS connections let in: `hostssl` in `pg_hba.conf`; the observer runs the `tls` probe
/// too); `before` runs once the database is ready and before the observer starts.
fn setup_with(tls: bool, before: impl FnOnce(&TempDir, &mut Pod, &str)) -> Setup {
    require_root();
    let dir = TempDir::new("postgres").unwrap();
    let data = dir.join("data");
    sh(&format!(
        "mkdir -p {data} && chown -R postgres:postgres {}",
        dir.path().display()
    ))
    .unwrap();
    sh(&format!(
        "setpriv --reuid postgres --regid postgres --init-groups {BIN}/initdb -D {data} --auth=trust -U postgres >/dev/null"
    ))
    .unwrap();
    let host_rule = if tls { "hostssl" } else { "host" };
    sh(&format!(
        "echo '{host_rule} all all 0.0.0.0/0 trust' >> {data}/pg_hba.conf"
    ))
    .unwrap();
    if tls {
        sh(&format!(
            "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=postgres \
             -keyout {data}/server.key -out {data}/server.crt 2>/dev/null && \
             chown postgres:postgres {data}/server.key {data}/server.crt && \
             chmod 600 {data}/server.key"
        ))
        .unwrap();
    }
    let bridge = Bridge::new().unwrap();
    let mut server = Pod::new(&bridge).unwrap();
    let mut client = Pod::new(&bridge).unwrap();
    let port = PORT.to_string();
    server
        .spawn(
            "setpriv",
            &[
                "--reuid",
                "postgres",
                "--regid",
                "postgres",
                "--init-groups",
                &format!("{BIN}/postgres"),
                "-D",
                &data,
                "-p",
                &port,
                "-c",
                "listen_addresses=*",
                "-c",
                &format!("unix_socket_directories={data}"),
                "-c",
                if tls { "ssl=on" } else { "ssl=off" },
                "-c",
                "shared_preload_libraries=pg_stat_statements",
                "-c",
                "pg_stat_statements.track_utility=on",
            ],
        )
        .unwrap();
    server.wait_listening(PORT).unwrap();
    let host = server.ip.clone();
    psql(&host, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
    sh(&format!(
        "pgbench -h {host} -p {PORT} -U postgres -i -s 1 -q postgres 2>&1"
    ))
    .unwrap();
    before(&dir, &mut client, &host);
    let probes = if tls {
        "tcp,postgresql,tls"
    } else {
        "tcp,postgresql"
    };
    let obs = Observer::start(&["--probes", probes]).unwrap();
    Setup {
        _dir: dir,
        _bridge: bridge,
        server,
        client,
        obs,
    }
}

/// Runs SQL from the host; its output, unaligned, tuples only.
fn psql(host: &str, sql: &str) -> String {
    sh(&format!(
        "psql -h {host} -p {PORT} -U postgres -d postgres -AtX -c \"{sql}\""
    ))
    .unwrap()
}

/// pg_stat_statements calls per operation (the statement's first keyword, `END` as `COMMIT`),
/// the statements about pg_stat_statements itself left out.
fn statements(host: &str) -> BTreeMap<String, u64> {
    let out = psql(
        host,
        "SELECT calls, query FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'",
    );
    let mut m = BTreeMap::new();
    for line in out.lines() {
        let Some((calls, query)) = line.split_once('|') else {
            continue;
        };
        let first = query
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_uppercase();
        let op = if first == "END" {
            "COMMIT".to_string()
        } else {
            first
        };
        *m.entry(op).or_default() += calls.parse::<u64>().unwrap();
    }
    m
}

/// Operations per `db_operation_name` of the client pod (with extra label filters).
fn per_op(s: &[Sample], pod: &Pod, extra: &[(&str, &str)]) -> BTreeMap<String, u64> {
    db::ops(s, CLIENT, pod, "postgresql", extra)
}

/// pgbench's TPC-B-like script in the given query mode: the client pod's operations equal
/// pg_stat_statements', and its transactions pgbench's. Over TLS when `tls`, with
/// `sslmode=require` (the server lets nothing else in).
fn pgbench_mode(mode: &str, tls: bool) {
    let s = setup_with(tls, |_, _, _| {});
    let host = s.server.ip.clone();
    let n: u64 = if slowdown() > 1 { 20 } else { 500 };
    psql(&host, "SELECT pg_stat_statements_reset()");
    let sslmode = format!("PGSSLMODE={}", if tls { "require" } else { "disable" });
    let out = s
        .client
        .run(
            "env",
            &[
                &sslmode,
                "pgbench",
                "-h",
                &host,
                "-p",
                &PORT.to_string(),
                "-U",
                "postgres",
                "-n",
                "-c",
                "2",
                "-t",
                &n.to_string(),
                "-M",
                mode,
                "postgres",
            ],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let done = format!(
        "number of transactions actually processed: {}/{}",
        2 * n,
        2 * n
    );
    assert!(text.contains(&done), "pgbench: {text}");
    let mut server = statements(&host);
    assert_eq!(server.get("UPDATE"), Some(&(3 * 2 * n)), "{server:?}");
    // pg_stat_statements counts a utility statement (BEGIN, END) once per preparation in the
    // extended modes, not per execution: for those the truth is pgbench's own transaction count.
    server.insert("BEGIN".into(), 2 * n);
    server.insert("COMMIT".into(), 2 * n);
    let samples = s
        .obs
        .scrape_until(Duration::from_secs(20), |x| {
            per_op(x, &s.client, &[]) == server
        })
        .unwrap();
    assert_eq!(
        per_op(&samples, &s.client, &[]),
        server,
        "client pod, mode {mode}, tls {tls}"
    );
    // The main tables, from the statements' texts.
    let accounts = per_op(
        &samples,
        &s.client,
        &[("db_collection_name", "pgbench_accounts")],
    );
    assert_eq!(
        accounts,
        BTreeMap::from([("SELECT".to_string(), 2 * n), ("UPDATE".to_string(), 2 * n)])
    );
    // The edge to the server's pod, a database edge.
    let edge: f64 = matching(
        &samples,
        "traces_service_graph_request_total",
        &[
            ("client", "pgbench"),
            ("server", "postgres"),
            ("connection_type", "database"),
        ],
    )
    .map(|x| x.value)
    .sum();
    assert_eq!(edge as u64, server.values().sum::<u64>());
    // Nothing unparsed but, over TLS, the connections' sockets with reason `encrypted` (a
    // cleartext `SSLRequest` answered `S`: the socket's bytes are followed no further, the TLS
    // probe's plaintext is): the ciphertext was never taken for messages.
    let unparsed: Vec<_> = matching(
        &samples,
        "observer_l7_messages_unparsed_total",
        &[("protocol", "postgresql")],
    )
    .filter(|x| x.value > 0.0 && (!tls || x.labels["reason"] != "encrypted"))
    .collect();
    assert!(unparsed.is_empty(), "unparsed, tls {tls}: {unparsed:?}");
    s.obs.stop().unwrap();
}

#[test]
fn pgbench_simple_counts_equal_pg_stat_statements() {
    pgbench_mode("simple", false);
}

#[test]
fn pgbench_prepared_counts_equal_pg_stat_statements() {
    pgbench_mode("prepared", false);
}

#[test]
fn pgbench_extended_counts_equal_pg_stat_statements() {
    pgbench_mode("extended", false);
}

/// PostgreSQL over TLS (issue 15): the plaintext from the TLS probe goes through the same
/// PostgreSQL framer, exact; the ciphertext (and the cleartext `SSLRequest` before it) is
/// never counted.
#[test]
fn pgbench_over_tls_counts_equal_pg_stat_statements() {
    pgbench_mode("extended", true);
}

#[test]
fn an_error_is_counted_once_with_its_sqlstate() {
    let s = setup();
    let host = s.server.ip.clone();
    let out = s
        .client
        .output(
            "psql",
            &[
                "-h",
                &host,
                "-p",
                &PORT.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-AtX",
                "-c",
                "SELECT * FROM missing_table",
            ],
        )
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing_table"),
        "psql: {out:?}"
    );
    let want = BTreeMap::from([("SELECT".to_string(), 1)]);
    let samples = s
        .obs
        .scrape_until(Duration::from_secs(20), |x| {
            per_op(x, &s.client, &[("db_response_status_code", "42P01")]) == want
        })
        .unwrap();
    assert_eq!(
        per_op(&samples, &s.client, &[("db_response_status_code", "42P01")]),
        want
    );
    assert_eq!(
        per_op(
            &samples,
            &s.client,
            &[("db_collection_name", "missing_table")]
        ),
        want
    );
    s.obs.stop().unwrap();
}

/// psycopg2 (libpq; autocommit, so no implicit `BEGIN`): connects at once, waits for the file
/// given as third argument, then on that connection creates a temporary table and runs a 60 ms
/// `pg_sleep`, reading each result.
const EARLY_PY: &str = r#"
import os, sys, time
import psycopg2
c = psycopg2.connect(host=sys.argv[1], port=int(sys.argv[2]), user="postgres", dbname="postgres")
c.autocommit = True
while not os.path.exists(sys.argv[3]):
    time.sleep(0.05)
cur = c.cursor()
cur.execute("CREATE TEMP TABLE early (id int)")
cur.execute("SELECT pg_sleep(%s)", (0.06,))
cur.fetchall()
c.close()
"#;

/// Debian's interpreter, which has psycopg2 (another `python3` on the PATH may not).
const PYTHON: &str = "/usr/bin/python3";

#[test]
fn a_connection_from_before_the_observer_counts_and_a_slow_statement_lands_in_its_bucket() {
    let go = std::cell::RefCell::new(String::new());
    let s = setup_with(false, |dir, client, host| {
        let script = dir.write("early.py", EARLY_PY).unwrap();
        *go.borrow_mut() = dir.join("go");
        client
            .spawn(PYTHON, &[&script, host, &PORT.to_string(), &go.borrow()])
            .unwrap();
        // Connected (startup and authentication done) before the observer starts.
        std::thread::sleep(Duration::from_millis(if slowdown() > 1 {
            3000
        } else {
            500
        }));
    });
    std::fs::write(&*go.borrow(), "").unwrap();
    let want = BTreeMap::from([("CREATE TABLE".to_string(), 1), ("SELECT".to_string(), 1)]);
    let samples = s
        .obs
        .scrape_until(Duration::from_secs(20), |x| {
            per_op(x, &s.client, &[]) == want
        })
        .unwrap();
    assert_eq!(per_op(&samples, &s.client, &[]), want, "client pod");
    let bucket = |le: &str| db::client_bucket(&samples, &s.client, "SELECT", le);
    assert_eq!(bucket("0.05"), 0, "slept 60 ms");
    // Under emulation a guest's clock runs unevenly: the upper bound is the host kernel's.
    if slowdown() == 1 {
        assert_eq!(bucket("0.1"), 1, "within 0.1 s");
    }
    s.obs.stop().unwrap();
}
