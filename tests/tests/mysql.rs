//! Privileged accuracy tests of MySQL/MariaDB capture (`--probes mysql`): Debian's MariaDB 10.11
//! server in one simulated pod, `mysqlslap` (libmariadb, C) and a Python client (PyMySQL from
//! Debian, with prepared statements sent through its connection) in another; counts EXACT
//! against ground truth:
//! - the server's own record: the `Com_*` status counters, read from the host over the server's
//!   Unix socket (no client pod's operation) before and after the load;
//! - the Python client's own tally of what it sent.
//!
//! A `Com_*` counter is compared with the operation names it counts (`Com_select`: every
//! `SELECT`, by query or by execution of a prepared one; `Com_stmt_prepare`: `PREPARE`;
//! `Com_change_db`: `INIT_DB`; `Com_admin_commands`: `PING`). Series:
//! `db_client_operation_duration_seconds` of the client pod with `db_system_name="mariadb"`.

use std::{collections::BTreeMap, time::Duration};

use observer_tests::{
    db::{self, CLIENT},
    metrics::{matching, Sample},
    net::Bridge,
    observer::Observer,
    pod::Pod,
    require_root, sh, slowdown, TempDir,
};

const PORT: u16 = 3306;
/// Debian's interpreter, which has PyMySQL (another `python3` on the PATH may not).
const PYTHON: &str = "/usr/bin/python3";

struct Setup {
    dir: TempDir,
    _bridge: Bridge,
    server: Pod,
    client: Pod,
    obs: Observer,
}

/// A data directory, the server in its pod, a user for the clients and a table, then `before`
/// (with the client pod, once the server listens), then the observer.
fn setup(before: impl FnOnce(&TempDir, &mut Pod, &str)) -> Setup {
    require_root();
    let dir = TempDir::new("mysql").unwrap();
    let data = dir.join("data");
    sh(&format!(
        "mariadb-install-db --no-defaults --datadir={data} --user=root --skip-test-db \
         --auth-root-authentication-method=normal >/dev/null 2>&1"
    ))
    .unwrap();
    let bridge = Bridge::new().unwrap();
    let mut server = Pod::new(&bridge).unwrap();
    let mut client = Pod::new(&bridge).unwrap();
    server
        .spawn(
            "mariadbd",
            &[
                "--no-defaults",
                &format!("--datadir={data}"),
                "--user=root",
                &format!("--port={PORT}"),
                "--bind-address=0.0.0.0",
                &format!("--socket={}", dir.join("sock")),
                &format!("--pid-file={}", dir.join("pid")),
                "--skip-log-bin",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=16M",
            ],
        )
        .unwrap();
    server.wait_listening(PORT).unwrap();
    sql(
        &dir,
        "CREATE USER 'obs'@'%' IDENTIFIED BY 'obs'; GRANT ALL ON *.* TO 'obs'@'%'; \
         CREATE DATABASE obs; CREATE TABLE obs.kv (k INT PRIMARY KEY, v VARCHAR(32))",
    );
    let host = server.ip.clone();
    before(&dir, &mut client, &host);
    let obs = Observer::start(&["--probes", "tcp,mysql"]).unwrap();
    Setup {
        dir,
        _bridge: bridge,
        server,
        client,
        obs,
    }
}

/// Runs SQL as root over the server's Unix socket (from the host: not observed).
fn sql(dir: &TempDir, q: &str) -> String {
    sh(&format!(
        "mariadb --no-defaults -S {} -uroot -N -B -e \"{q}\"",
        dir.join("sock")
    ))
    .unwrap()
}

/// The server's `Com_*` counters.
fn com(dir: &TempDir) -> BTreeMap<String, u64> {
    sql(dir, "SHOW GLOBAL STATUS LIKE 'Com\\\\_%'")
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('\t')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// What changed between two readings; the second reading's own `SHOW STATUS` left out.
fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut d = db::delta(after, before);
    if let Some(v) = d.get_mut("Com_show_status") {
        *v -= 1;
    }
    d.retain(|_, v| *v > 0);
    d
}

/// The `Com_*` counter that counts an operation name.
fn com_of(op: &str) -> String {
    let name = match op {
        "BEGIN" | "START TRANSACTION" => "begin",
        "CREATE DATABASE" | "CREATE SCHEMA" => "create_db",
        "DROP DATABASE" | "DROP SCHEMA" => "drop_db",
        "SET" => "set_option",
        "PREPARE" => "stmt_prepare",
        "INIT_DB" | "USE" => "change_db",
        "PING" => "admin_commands",
        other => return format!("Com_{}", other.to_lowercase().replace(' ', "_")),
    };
    format!("Com_{name}")
}

/// Operations per `db_operation_name` of a pod (with extra label filters), of connections
/// followed from their start: the server's greeting named it MariaDB.
fn per_op(s: &[Sample], pod: &Pod, extra: &[(&str, &str)]) -> BTreeMap<String, u64> {
    per_op_of(s, pod, "mariadb", extra)
}

/// Operations per `db_operation_name` of a pod and `db_system_name`.
fn per_op_of(
    s: &[Sample],
    pod: &Pod,
    system: &str,
    extra: &[(&str, &str)],
) -> BTreeMap<String, u64> {
    db::ops(s, CLIENT, pod, system, extra)
}

/// The operations as the server's counters count them.
fn as_com(ops: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for (op, n) in ops {
        *m.entry(com_of(op)).or_default() += n;
    }
    m
}

#[test]
fn mysqlslap_counts_equal_the_servers_com_counters() {
    let s = setup(|_, _, _| {});
    let host = s.server.ip.clone();
    let n: u64 = if slowdown() > 1 { 40 } else { 2000 };
    let before = com(&s.dir);
    let out = s
        .client
        .run(
            "mysqlslap",
            &[
                "--no-defaults",
                "-h",
                &host,
                "-P",
                &PORT.to_string(),
                "-uobs",
                "-pobs",
                "--auto-generate-sql",
                &format!("--number-of-queries={n}"),
                "--concurrency=4",
                "--iterations=1",
            ],
        )
        .unwrap();
    let server = delta(&com(&s.dir), &before);
    assert!(
        server.contains_key("Com_select") && server.contains_key("Com_insert"),
        "mysqlslap: {} server: {server:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let samples = s
        .obs
        .scrape_until(Duration::from_secs(20), |x| {
            as_com(&per_op(x, &s.client, &[])) == server
        })
        .unwrap();
    let ops = per_op(&samples, &s.client, &[]);
    assert_eq!(as_com(&ops), server, "client pod's operations {ops:?}");
    // None failed, nothing was left unparsed.
    let unparsed = db::unparsed(&samples, "mysql");
    assert_eq!(unparsed, 0.0, "unparsed MySQL records");
    // The server pod answered the same.
    let server_side: BTreeMap<String, u64> = {
        let mut m = BTreeMap::new();
        for x in matching(
            &samples,
            "db_server_operation_duration_seconds_count",
            &[("k8s_pod_uid", s.server.uid.as_str())],
        ) {
            *m.entry(x.labels["db_operation_name"].clone()).or_default() += x.value as u64;
        }
        m.retain(|_, v| *v > 0);
        m
    };
    assert_eq!(server_side, ops, "server pod's operations");
    // The edge to the server's pod, a database edge.
    let edge: f64 = matching(
        &samples,
        "traces_service_graph_request_total",
        &[
            ("client", "mysqlslap"),
            ("server", "mariadbd"),
            ("connection_type", "database"),
        ],
    )
    .map(|x| x.value)
    .sum();
    assert_eq!(edge as u64, ops.values().sum::<u64>());
    s.obs.stop().unwrap();
}

/// Connects (before the observer starts), waits for the file given as last argument, then:
/// text statements in a transaction, prepared statements executed many times (COM_STMT_PREPARE
/// and COM_STMT_EXECUTE through PyMySQL's connection), a query on a missing table, a ping and
/// a 60 ms sleep. Prints its own tally: one `op count` line per operation name.
const CLIENT_PY: &str = r#"
import os, struct, sys, time, collections
import pymysql
from pymysql.constants import COMMAND
host, port, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
c = pymysql.connect(host=host, port=port, user="obs", password="obs", database="obs")
while not os.path.exists(go):
    time.sleep(0.05)
tally = collections.Counter()
cur = c.cursor()
def q(op, text, args=None):
    cur.execute(text, args)
    tally[op] += 1
q("BEGIN", "BEGIN")
for i in range(n):
    q("INSERT", "INSERT INTO kv (k, v) VALUES (%s, %s)", (i, "value-%d" % i))
q("UPDATE", "UPDATE kv SET v = 'x' WHERE k < %s", (n // 2,))
q("COMMIT", "COMMIT")
for i in range(n):
    q("SELECT", "SELECT v FROM kv WHERE k = %s", (i,))
def packet():
    return c._read_packet().get_all_data()
def result():
    first = packet()
    if first[0] in (0x00, 0xff):
        return first
    cols = first[0]
    for _ in range(cols):
        packet()
    packet()  # EOF of the definitions (PyMySQL speaks the protocol before DEPRECATE_EOF)
    while True:
        p = packet()
        if (p[0] == 0xfe and len(p) < 9) or p[0] == 0xff:
            return p
def prepare(text):
    c._execute_command(COMMAND.COM_STMT_PREPARE, text)
    ok = packet()
    sid, cols, params = struct.unpack("<IHH", ok[1:9])
    for group in (params, cols):
        for _ in range(group):
            packet()
        if group:
            packet()
    tally["PREPARE"] += 1
    return sid
def execute(op, sid, k):
    body = struct.pack("<IBI", sid, 0, 1) + b"\x00\x01\x08\x00" + struct.pack("<q", k)
    c._execute_command(COMMAND.COM_STMT_EXECUTE, body)
    r = result()
    assert r[0] != 0xff, r
    tally[op] += 1
sel = prepare("SELECT v FROM kv WHERE k = ?")
dele = prepare("DELETE FROM kv WHERE k = ?")
for i in range(n):
    execute("SELECT", sel, i)
for i in range(n):
    execute("DELETE", dele, i)
c._execute_command(COMMAND.COM_STMT_CLOSE, struct.pack("<I", sel))
try:
    cur.execute("SELECT * FROM missing_table")
except pymysql.err.ProgrammingError as e:
    assert e.args[0] == 1146, e
    tally["SELECT"] += 1
c.ping(reconnect=False)
tally["PING"] += 1
q("SELECT", "SELECT SLEEP(0.06)")
c.close()
for op, k in sorted(tally.items()):
    print(op, k)
"#;

#[test]
fn a_python_client_with_prepared_statements_from_before_the_observer() {
    let go = std::cell::RefCell::new(String::new());
    let out = std::cell::RefCell::new(None);
    let n: u64 = if slowdown() > 1 { 10 } else { 200 };
    let s = setup(|dir, client, host| {
        *go.borrow_mut() = dir.join("go");
        let script = dir.write("client.py", CLIENT_PY).unwrap();
        let log = dir.join("client.out");
        // Connected before the observer starts; its output in a file, read when it is done.
        client
            .spawn(
                "sh",
                &[
                    "-c",
                    &format!(
                        "{PYTHON} {script} {host} {PORT} {n} {} > {log} 2>&1; echo $? >> {log}.rc",
                        go.borrow()
                    ),
                ],
            )
            .unwrap();
        *out.borrow_mut() = Some(log);
        std::thread::sleep(Duration::from_millis(500));
    });
    let before = com(&s.dir);
    std::fs::write(&*go.borrow(), "").unwrap();
    let log = out.borrow().clone().unwrap();
    let deadline = std::time::Instant::now() + observer_tests::scaled(Duration::from_secs(60));
    while !std::path::Path::new(&format!("{log}.rc")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the client did not end"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let rc = std::fs::read_to_string(format!("{log}.rc")).unwrap();
    assert_eq!(rc.trim(), "0", "client: {text}");
    let server = delta(&com(&s.dir), &before);
    let tally: BTreeMap<String, u64> = text
        .lines()
        .filter_map(|l| {
            let (op, k) = l.rsplit_once(' ')?;
            Some((op.to_string(), k.parse().ok()?))
        })
        .collect();
    // The client's tally, as the server counted it (executions of prepared statements count
    // in their statement's counter too).
    let mut want_com = as_com(&tally);
    want_com.insert("Com_stmt_execute".into(), 2 * n);
    want_com.insert("Com_stmt_close".into(), 1);
    assert_eq!(
        server, want_com,
        "the server's counters and the client's tally"
    );
    let samples = s
        .obs
        .scrape_until(Duration::from_secs(20), |x| {
            per_op_of(x, &s.client, "mysql", &[]) == tally
        })
        .unwrap();
    // Joined mid-way, the connection's greeting was not seen: the protocol's name, not the
    // server's.
    assert_eq!(
        per_op_of(&samples, &s.client, "mysql", &[]),
        tally,
        "client pod"
    );
    assert_eq!(per_op(&samples, &s.client, &[]), BTreeMap::new());
    // The error, once, with its number and table; executions with their statements' tables.
    assert_eq!(
        per_op_of(
            &samples,
            &s.client,
            "mysql",
            &[("db_response_status_code", "1146")]
        ),
        BTreeMap::from([("SELECT".to_string(), 1)])
    );
    assert_eq!(
        per_op_of(
            &samples,
            &s.client,
            "mysql",
            &[("db_collection_name", "missing_table")]
        ),
        BTreeMap::from([("SELECT".to_string(), 1)])
    );
    assert_eq!(
        per_op_of(
            &samples,
            &s.client,
            "mysql",
            &[("db_collection_name", "kv")]
        ),
        BTreeMap::from([
            ("DELETE".to_string(), n),
            ("INSERT".to_string(), n),
            ("PREPARE".to_string(), 2),
            ("SELECT".to_string(), 2 * n),
            ("UPDATE".to_string(), 1),
        ])
    );
    let bucket = |le: &str| -> u64 {
        matching(
            &samples,
            "db_client_operation_duration_seconds_bucket",
            &[
                ("k8s_pod_uid", s.client.uid.as_str()),
                ("db_operation_name", "SELECT"),
                ("db_collection_name", ""),
                ("db_response_status_code", ""),
                ("le", le),
            ],
        )
        .map(|x| x.value as u64)
        .sum()
    };
    assert_eq!(bucket("+Inf"), 1, "the sleep");
    assert_eq!(bucket("0.05"), 0, "slept 60 ms");
    if slowdown() == 1 {
        assert_eq!(bucket("0.1"), 1, "within 0.1 s");
    }
    s.obs.stop().unwrap();
}
