//! The command line: `observer` (or `observer run`) runs the daemon with the flags of
//! [`Args`]; `observer top`, `observer topology` and `observer tail` are clients of a running
//! observer's gRPC API, printing aligned tables for people or JSON for scripts.
//!
//! Exit codes: 0 done, 2 a bad invocation (clap's, or one the server calls INVALID_ARGUMENT),
//! 1 anything else (server unreachable, NOT_FOUND), always with one line on stderr.

use std::{
    io::Write,
    net::SocketAddr,
    process::ExitCode,
    time::{Duration, SystemTime},
};

use clap::{Parser, Subcommand, ValueEnum};
use observer::{
    config::Args,
    export::grpc::pb::{self, observer_client::ObserverClient},
};
use serde_json::{json, Value};
use tonic::transport::{Channel, Endpoint};

/// eBPF node observer: per-cgroup syscall, TCP and HTTP figures with pod identity, served to
/// Prometheus and over gRPC. Without a subcommand it runs the observer (needs root, or
/// CAP_BPF, CAP_PERFMON, CAP_SYS_RESOURCE and CAP_SYS_ADMIN for mounting tracefs).
#[derive(Debug, Parser)]
#[command(name = "observer", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub daemon: Args,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the observer (the same as no subcommand).
    Run(Args),
    /// Workloads with their requests per second, error rate, mean and p99 latency, APDEX,
    /// active clients, outbound calls and the time they spent waiting on databases and caches,
    /// from a running observer.
    Top(TopArgs),
    /// Who calls whom: the L7 edges between workloads and addresses, with requests per
    /// second, error rate and p99 latency, from a running observer.
    Topology(TopArgs),
    /// Requests as they complete, one line each, from a running observer (Ctrl-C stops).
    Tail(TailArgs),
    /// Lifecycle events (OOM kills, exits, restarts, Kubernetes Warning events, scaling) with
    /// the workload's request figures of the minute before, one line each (Ctrl-C stops).
    Events(EventsArgs),
}

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub conn: Conn,

    /// First the lifecycle events the observer still holds (the last 1024).
    #[arg(long, env = "OBSERVER_REPLAY")]
    pub replay: bool,

    /// Also the observer's own events (probe states, lost records).
    #[arg(long, env = "OBSERVER_ALL")]
    pub all: bool,

    /// Stop after this many events.
    #[arg(long, env = "OBSERVER_COUNT")]
    pub count: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts (one object; `tail` prints one per line).
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Conn {
    /// The observer's gRPC API, as a URL or host:port [default: http://<--grpc-addr>, i.e.
    /// $OBSERVER_GRPC_ADDR or 127.0.0.1:50051].
    #[arg(long, env = "OBSERVER_SERVER")]
    pub server: Option<String>,

    /// Output format.
    #[arg(
        long,
        short,
        env = "OBSERVER_OUTPUT",
        value_enum,
        default_value = "table"
    )]
    pub output: Output,
}

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub conn: Conn,

    /// Window of the rates and latencies, in seconds (5 to 900).
    #[arg(
        long,
        env = "OBSERVER_WINDOW",
        default_value_t = 60,
        value_parser = clap::value_parser!(u32).range(5..=900)
    )]
    pub window: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SideArg {
    Server,
    Client,
}

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub conn: Conn,

    /// Only requests of this pod (UID).
    #[arg(long, env = "OBSERVER_POD_UID")]
    pub pod_uid: Option<String>,

    /// Only requests of workloads with this service name.
    #[arg(long, env = "OBSERVER_SERVICE")]
    pub service: Option<String>,

    /// Only this route (server side: the templated route, e.g. /users/{id}).
    #[arg(long, env = "OBSERVER_ROUTE")]
    pub route: Option<String>,

    /// Only this HTTP status (100 to 599).
    #[arg(
        long,
        env = "OBSERVER_STATUS",
        value_parser = clap::value_parser!(u32).range(100..=599)
    )]
    pub status: Option<u32>,

    /// Only requests that took at least this long (milliseconds).
    #[arg(
        long,
        env = "OBSERVER_MIN_LATENCY_MS",
        default_value_t = 0.0,
        value_parser = parse_min_latency
    )]
    pub min_latency_ms: f64,

    /// Only requests the workload answered (server) or made (client).
    #[arg(long, env = "OBSERVER_SIDE", value_enum)]
    pub side: Option<SideArg>,

    /// Only requests of this L7 protocol (its probe name, e.g. http).
    #[arg(long, env = "OBSERVER_PROTOCOL")]
    pub protocol: Option<String>,

    /// Stop after this many requests.
    #[arg(long, env = "OBSERVER_COUNT")]
    pub count: Option<u64>,
}

fn parse_min_latency(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?}: expected milliseconds, 0 or more")),
    }
}

/// A failed client call: the message and the exit code.
struct Failure(String, u8);

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        let code = if s.code() == tonic::Code::InvalidArgument {
            2
        } else {
            1
        };
        Failure(format!("{:?}: {}", s.code(), s.message()), code)
    }
}

/// Runs a client subcommand against the observer at `--server` (else at `grpc_addr`).
pub fn client(cmd: Command, grpc_addr: SocketAddr) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("observer: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cmd {
            Command::Top(a) => top(&a, grpc_addr).await,
            Command::Topology(a) => topology(&a, grpc_addr).await,
            Command::Tail(a) => tail(&a, grpc_addr).await,
            Command::Events(a) => events(&a, grpc_addr).await,
            Command::Run(_) => unreachable!("the daemon is not a client"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg, code)) => {
            eprintln!("observer: {msg}");
            ExitCode::from(code)
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

async fn connect(conn: &Conn, grpc_addr: SocketAddr) -> Result<ObserverClient<Channel>, Failure> {
    let url = match &conn.server {
        Some(s) if s.contains("://") => s.clone(),
        Some(s) => format!("http://{s}"),
        None => format!("http://{grpc_addr}"),
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| Failure(format!("--server {url:?} is not a URL: {e}"), 2))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| {
        Failure(
            format!(
                "cannot reach the observer's gRPC API at {url}: {}",
                error_chain(&e)
            ),
            1,
        )
    })?;
    Ok(ObserverClient::new(channel))
}

fn out(text: &str) -> Result<(), Failure> {
    let mut o = std::io::stdout().lock();
    // A closed pipe (`| head`) ends the output quietly.
    let _ = o.write_all(text.as_bytes()).and_then(|()| o.flush());
    Ok(())
}

fn json_out(v: &Value) -> Result<(), Failure> {
    out(&format!(
        "{}\n",
        serde_json::to_string_pretty(v).unwrap_or_default()
    ))
}

/// Aligned columns: the first `left` columns left-aligned, the rest right-aligned.
fn table(header: &[&str], rows: &[Vec<String>], left: usize) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let pad = " ".repeat(w - c.chars().count());
            if i < left {
                s.push_str(c);
                if i + 1 < cells.len() {
                    s.push_str(&pad);
                }
            } else {
                s.push_str(&pad);
                s.push_str(c);
            }
        }
        s.push('\n');
        s
    };
    let mut t = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        t.push_str(&line(r.clone()));
    }
    t
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

fn ms(secs: f64) -> f64 {
    (secs * 1e3 * 1000.0).round() / 1000.0
}

fn latency_cell(l: Option<&pb::LatencySummary>, f: impl Fn(&pb::LatencySummary) -> f64) -> String {
    match l.filter(|l| l.count > 0) {
        Some(l) => format!("{:.2}", f(l) * 1e3),
        None => "-".into(),
    }
}

fn window_line(w: Option<&pb::Window>) -> String {
    match w {
        Some(w) if (w.covered_seconds + 0.5) < w.requested_seconds as f64 => format!(
            "rates over the last {:.0} s (the observer is younger than the {} s window)\n",
            w.covered_seconds, w.requested_seconds
        ),
        Some(w) => format!("rates over the last {} s\n", w.requested_seconds),
        None => String::new(),
    }
}

fn workload_json(w: Option<&pb::Workload>) -> Value {
    let w = w.cloned().unwrap_or_default();
    json!({
        "namespace": w.namespace,
        "pod_name": w.pod_name,
        "pod_uid": w.pod_uid,
        "container_name": w.container_name,
        "service_name": w.service_name,
    })
}

fn figures_json(f: Option<&pb::RequestFigures>) -> Value {
    let f = f.cloned().unwrap_or_default();
    let l = f.latency.unwrap_or_default();
    json!({
        "requests": f.requests,
        "errors": f.errors,
        "requests_per_second": f.requests_per_second,
        "error_rate": f.error_rate,
        "mean_ms": ms(l.mean_seconds),
        "p50_ms": ms(l.p50_seconds),
        "p95_ms": ms(l.p95_seconds),
        "p99_ms": ms(l.p99_seconds),
    })
}

async fn top(a: &TopArgs, grpc_addr: SocketAddr) -> Result<(), Failure> {
    let mut c = connect(&a.conn, grpc_addr).await?;
    let r = c
        .list_workloads(pb::ListWorkloadsRequest {
            window_seconds: Some(a.window),
        })
        .await?
        .into_inner();
    let mut rows: Vec<&pb::WorkloadSummary> = r.workloads.iter().collect();
    let win = |w: &pb::WorkloadSummary| w.window.unwrap_or_default();
    rows.sort_by(|x, y| {
        win(y)
            .requests_per_second
            .total_cmp(&win(x).requests_per_second)
            .then(
                y.total
                    .unwrap_or_default()
                    .requests
                    .cmp(&x.total.unwrap_or_default().requests),
            )
    });
    if a.conn.output == Output::Json {
        let ws: Vec<Value> = rows
            .iter()
            .map(|w| {
                let apdex = w.apdex.unwrap_or_default();
                let wa = w.window_apdex.unwrap_or_default();
                json!({
                    "workload": workload_json(w.workload.as_ref()),
                    "total": figures_json(w.total.as_ref()),
                    "window": figures_json(w.window.as_ref()),
                    "apdex": apdex.score,
                    "apdex_threshold_seconds": apdex.threshold_seconds,
                    "window_apdex": wa.score,
                    "active_clients": w.active_clients,
                    "client_total": figures_json(w.client_total.as_ref()),
                    "client_window": figures_json(w.client_window.as_ref()),
                    "db_client_total": figures_json(w.db_client_total.as_ref()),
                    "db_client_window": figures_json(w.db_client_window.as_ref()),
                    "db_ms_per_second": db_ms_per_second(w.db_client_window.as_ref()),
                })
            })
            .collect();
        let w = r.window.unwrap_or_default();
        return json_out(&json!({
            "window_seconds": w.requested_seconds,
            "covered_seconds": w.covered_seconds,
            "workloads": ws,
        }));
    }
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|w| {
            let id = w.workload.clone().unwrap_or_default();
            let f = win(w);
            let total = w.total.unwrap_or_default();
            let served = f.requests > 0;
            let wa = w.window_apdex.unwrap_or_default();
            vec![
                or_dash(&id.namespace),
                or_dash(&id.service_name),
                or_dash(if id.pod_name.is_empty() {
                    &id.pod_uid
                } else {
                    &id.pod_name
                }),
                format!("{:.1}", f.requests_per_second),
                if served {
                    format!("{:.1}", f.error_rate * 100.0)
                } else {
                    "-".into()
                },
                latency_cell(f.latency.as_ref(), |l| l.mean_seconds),
                latency_cell(f.latency.as_ref(), |l| l.p99_seconds),
                if served {
                    format!("{:.2}", wa.score)
                } else {
                    "-".into()
                },
                w.active_clients.to_string(),
                total.requests.to_string(),
                format!(
                    "{:.1}",
                    w.client_window.unwrap_or_default().requests_per_second
                ),
                db_cell(w.db_client_window.as_ref()),
            ]
        })
        .collect();
    let header = [
        "NAMESPACE",
        "SERVICE",
        "POD",
        "TPS",
        "ERROR%",
        "MEAN(ms)",
        "P99(ms)",
        "APDEX",
        "CLIENTS",
        "REQUESTS",
        "OUT-TPS",
        "DB(ms/s)",
    ];
    out(&format!(
        "{}{}",
        window_line(r.window.as_ref()),
        table(&header, &body, 3)
    ))
}

/// Milliseconds per second a workload spent waiting on databases and caches over the window:
/// its operations per second times their mean latency.
fn db_ms_per_second(f: Option<&pb::RequestFigures>) -> f64 {
    let f = f.copied().unwrap_or_default();
    f.requests_per_second * f.latency.unwrap_or_default().mean_seconds * 1000.0
}

/// `top`'s DB column: "-" for a workload that made no database call in the window.
fn db_cell(f: Option<&pb::RequestFigures>) -> String {
    if f.is_some_and(|f| f.requests > 0) {
        format!("{:.1}", db_ms_per_second(f))
    } else {
        "-".into()
    }
}

fn node_label(n: Option<&pb::Node>, id: &str) -> String {
    let Some(n) = n else { return id.to_string() };
    match &n.workload {
        Some(w) => {
            let mut s = String::new();
            if !w.namespace.is_empty() {
                s.push_str(&w.namespace);
                s.push('/');
            }
            s.push_str(&or_dash(&w.service_name));
            let pod = if w.pod_name.is_empty() {
                &w.pod_uid
            } else {
                &w.pod_name
            };
            if !pod.is_empty() {
                s.push_str(&format!(
                    " (pod {})",
                    pod.get(..8)
                        .filter(|_| w.pod_name.is_empty())
                        .unwrap_or(pod)
                ));
            }
            s
        }
        None => n.address.clone(),
    }
}

fn node_json(n: Option<&pb::Node>, id: &str) -> Value {
    match n {
        Some(n) => json!({
            "id": n.id,
            "name": n.name,
            "namespace": n.namespace,
            "workload": n.workload.as_ref().map(|w| workload_json(Some(w))),
            "address": n.address,
        }),
        None => json!({ "id": id }),
    }
}

async fn topology(a: &TopArgs, grpc_addr: SocketAddr) -> Result<(), Failure> {
    let mut c = connect(&a.conn, grpc_addr).await?;
    let r = c
        .get_topology(pb::GetTopologyRequest {
            window_seconds: Some(a.window),
        })
        .await?
        .into_inner();
    let nodes: std::collections::HashMap<&str, &pb::Node> =
        r.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    let node = |id: &str| nodes.get(id).copied();
    let p99 = |e: &pb::Edge| {
        let pick = |l: &Option<pb::LatencySummary>| (*l).filter(|l| l.count > 0);
        pick(&e.window_client_latency).or_else(|| pick(&e.window_server_latency))
    };
    if a.conn.output == Output::Json {
        let edges: Vec<Value> = r
            .edges
            .iter()
            .map(|e| {
                let lat = |l: &Option<pb::LatencySummary>| {
                    let l = (*l).unwrap_or_default();
                    json!({ "count": l.count, "mean_ms": ms(l.mean_seconds), "p50_ms": ms(l.p50_seconds),
                            "p95_ms": ms(l.p95_seconds), "p99_ms": ms(l.p99_seconds) })
                };
                json!({
                    "client": node_json(node(&e.client), &e.client),
                    "server": node_json(node(&e.server), &e.server),
                    "connection_type": e.connection_type,
                    "total": figures_json(e.total.as_ref()),
                    "window": figures_json(e.window.as_ref()),
                    "client_latency": lat(&e.client_latency),
                    "server_latency": lat(&e.server_latency),
                    "window_client_latency": lat(&e.window_client_latency),
                    "window_server_latency": lat(&e.window_server_latency),
                    "tcp": e.tcp.map(|t| json!({
                        "connections": t.connections,
                        "connect_failures": t.connect_failures,
                        "bytes_client_to_server": t.bytes_client_to_server,
                        "bytes_server_to_client": t.bytes_server_to_client,
                        "retransmits": t.retransmits,
                    })),
                })
            })
            .collect();
        let w = r.window.unwrap_or_default();
        return json_out(&json!({
            "window_seconds": w.requested_seconds,
            "covered_seconds": w.covered_seconds,
            "edges": edges,
        }));
    }
    let mut edges: Vec<&pb::Edge> = r.edges.iter().collect();
    edges.sort_by(|x, y| {
        let rate = |e: &pb::Edge| e.window.unwrap_or_default().requests_per_second;
        rate(y).total_cmp(&rate(x))
    });
    let body: Vec<Vec<String>> = edges
        .iter()
        .map(|e| {
            let w = e.window.unwrap_or_default();
            vec![
                node_label(node(&e.client), &e.client),
                "→".into(),
                node_label(node(&e.server), &e.server),
                format!("{:.1}", w.requests_per_second),
                if w.requests > 0 {
                    format!("{:.1}", w.error_rate * 100.0)
                } else {
                    "-".into()
                },
                latency_cell(p99(e).as_ref(), |l| l.p99_seconds),
                e.total.unwrap_or_default().requests.to_string(),
            ]
        })
        .collect();
    let header = [
        "CLIENT", "", "SERVER", "TPS", "ERROR%", "P99(ms)", "REQUESTS",
    ];
    out(&format!(
        "{}{}",
        window_line(r.window.as_ref()),
        table(&header, &body, 3)
    ))
}

fn time_text(unix_nanos: i64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(unix_nanos.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn side_name(side: i32) -> &'static str {
    match pb::Side::try_from(side) {
        Ok(pb::Side::Server) => "server",
        Ok(pb::Side::Client) => "client",
        _ => "unknown",
    }
}

fn request_line(r: &pb::Request, output: Output) -> String {
    let w = r.workload.clone().unwrap_or_default();
    let peer = if r.peer_port > 0 {
        format!("{}:{}", r.peer_address, r.peer_port)
    } else {
        r.peer_address.clone()
    };
    if output == Output::Json {
        return json!({
            "time": time_text(r.time_unix_nano),
            "time_unix_nano": r.time_unix_nano,
            "side": side_name(r.side),
            "workload": workload_json(Some(&w)),
            "protocol": r.protocol,
            "method": r.method,
            "route": r.route,
            "status": r.status,
            "status_code": r.status_code,
            "error_type": r.error_type,
            "duration_ms": r.duration_seconds * 1e3,
            "peer_address": r.peer_address,
            "peer_port": r.peer_port,
        })
        .to_string();
    }
    let status = if !r.status_code.is_empty() {
        r.status_code.clone()
    } else {
        or_dash(&r.error_type)
    };
    let pod = if w.pod_uid.is_empty() {
        String::new()
    } else {
        format!(" pod={}", w.pod_uid)
    };
    let arrow = if r.side == pb::Side::Client as i32 {
        "→"
    } else {
        "←"
    };
    format!(
        "{} {:<6} {}{pod} {} {} {} {} {:.3}ms {arrow} {peer}",
        time_text(r.time_unix_nano),
        side_name(r.side),
        or_dash(&w.service_name),
        r.protocol,
        r.method,
        r.route,
        status,
        r.duration_seconds * 1e3,
    )
}

async fn tail(a: &TailArgs, grpc_addr: SocketAddr) -> Result<(), Failure> {
    let mut c = connect(&a.conn, grpc_addr).await?;
    let req = pb::StreamRequestsRequest {
        pod_uid: a.pod_uid.clone().unwrap_or_default(),
        service_name: a.service.clone().unwrap_or_default(),
        route: a.route.clone().unwrap_or_default(),
        status: a.status.unwrap_or(0),
        min_latency_ms: a.min_latency_ms,
        side: match a.side {
            None => pb::Side::Unspecified,
            Some(SideArg::Server) => pb::Side::Server,
            Some(SideArg::Client) => pb::Side::Client,
        } as i32,
        protocol: a.protocol.clone().unwrap_or_default(),
    };
    let mut stream = c.stream_requests(req).await?.into_inner();
    let mut seen = 0u64;
    while a.count.is_none_or(|n| seen < n) {
        let Some(msg) = stream.message().await? else {
            return Err(Failure(
                "the observer ended the stream (it stopped)".into(),
                1,
            ));
        };
        let line = match msg.event {
            Some(pb::request_event::Event::Request(r)) => {
                seen += 1;
                request_line(&r, a.conn.output)
            }
            Some(pb::request_event::Event::Missed(m)) => match a.conn.output {
                Output::Json => json!({ "missed": m.count }).to_string(),
                Output::Table => format!("… {} requests missed (this reader fell behind)", m.count),
            },
            None => continue,
        };
        let mut o = std::io::stdout().lock();
        if writeln!(o, "{line}").and_then(|()| o.flush()).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Kinds that are the observer's own, not a workload's.
const OWN_EVENTS: [&str; 3] = ["probe_status", "records_lost", "events_missed"];

async fn events(a: &EventsArgs, grpc_addr: SocketAddr) -> Result<(), Failure> {
    let mut c = connect(&a.conn, grpc_addr).await?;
    let req = pb::StreamEventsRequest { replay: a.replay };
    let mut stream = c.stream_events(req).await?.into_inner();
    let mut seen = 0u64;
    while a.count.is_none_or(|n| seen < n) {
        let Some(e) = stream.message().await? else {
            return Err(Failure(
                "the observer ended the stream (it stopped)".into(),
                1,
            ));
        };
        if !a.all && OWN_EVENTS.contains(&e.kind.as_str()) {
            continue;
        }
        seen += 1;
        let line = event_line(&e, a.conn.output);
        let mut o = std::io::stdout().lock();
        if writeln!(o, "{line}").and_then(|()| o.flush()).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

fn event_line(e: &pb::Event, output: Output) -> String {
    let time = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + Duration::from_nanos(e.time_unix_nano.max(0) as u64),
    );
    match output {
        Output::Json => {
            let fields: serde_json::Map<String, Value> = e
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            json!({
                "time": time.to_string(),
                "kind": e.kind,
                "workload": workload_json(e.workload.as_ref()),
                "fields": fields,
                "message": e.message,
                "figures_before": e.figures_before.as_ref().map(|f| figures_json(Some(f))),
                "figures_window_seconds": e.figures_window.as_ref().map(|w| w.covered_seconds),
            })
            .to_string()
        }
        Output::Table => {
            let before = match &e.figures_before {
                Some(f) => {
                    let l = f.latency.unwrap_or_default();
                    format!(
                        "  [before: {:.2} req/s, {:.1}% errors, p99 {}]",
                        f.requests_per_second,
                        f.error_rate * 100.0,
                        if l.count > 0 {
                            format!("{:.2} ms", l.p99_seconds * 1e3)
                        } else {
                            "-".into()
                        }
                    )
                }
                None => String::new(),
            };
            format!("{time}  {:<17}  {}{before}", e.kind, e.message)
        }
    }
}
