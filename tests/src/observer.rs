//! The observer under test, as a separate process scraped over HTTP like Prometheus does.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::metrics::{self, Sample};

/// Path of the observer binary: $OBSERVER_BIN, else target/release/observer of this workspace
/// (what `cargo xtask test` builds), else target/debug/observer.
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("OBSERVER_BIN") {
        return PathBuf::from(p);
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let release = target.join("release/observer");
    if release.exists() {
        return release;
    }
    target.join("debug/observer")
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Whether the binary has the gRPC API (`--grpc-addr`): a binary built before it still runs
/// with this harness.
fn has_grpc() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        Command::new(binary())
            .arg("--help")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--grpc-addr"))
    })
}

pub struct Observer {
    child: Child,
    pub addr: String,
    /// The gRPC API's address (`host:port`).
    pub grpc_addr: String,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Observer {
    /// Starts the observer with extra flags and waits until it serves. Its metrics endpoint
    /// and (unless `extra` names one) its gRPC API listen on free loopback ports, so that
    /// observers of tests running side by side never share a port.
    pub fn start(extra: &[&str]) -> anyhow::Result<Observer> {
        Observer::start_wrapped(&[], extra)
    }

    /// Like [`Observer::start`], under a wrapper command that gets the observer's path and
    /// flags as its last arguments (e.g. `capsh --drop=... -- -c 'exec "$0" "$@"'`); the
    /// wrapper must exec it, so that [`Observer::pid`] is the observer's.
    pub fn start_wrapped(wrapper: &[&str], extra: &[&str]) -> anyhow::Result<Observer> {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let grpc_addr = match extra.iter().position(|a| *a == "--grpc-addr") {
            Some(i) => extra.get(i + 1).map(|a| a.to_string()).unwrap_or_default(),
            None => format!("127.0.0.1:{}", free_port()),
        };
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        cmd.arg("--metrics-addr").arg(&addr);
        if !extra.contains(&"--grpc-addr") && has_grpc() {
            cmd.arg("--grpc-addr").arg(&grpc_addr);
        }
        let mut child = cmd
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("stderr");
        let err_buf = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let s = String::from_utf8_lossy(&buf[..n]);
                eprint!("[observer] {s}");
                err_buf.lock().unwrap().push_str(&s);
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("serving") {
                    let _ = tx.send(());
                }
            }
        });
        let mut obs = Observer {
            child,
            addr,
            grpc_addr,
            stderr,
        };
        match rx.recv_timeout(crate::scaled(Duration::from_secs(60))) {
            Ok(()) => Ok(obs),
            Err(_) => {
                let status = obs.child.try_wait()?;
                anyhow::bail!(
                    "observer did not start ({status:?}): {}",
                    obs.stderr.lock().unwrap()
                )
            }
        }
    }

    /// GET a path of the admin endpoint; returns (status, content-type, body).
    pub fn get(&self, path: &str, accept: Option<&str>) -> anyhow::Result<(u16, String, String)> {
        http_get(&self.addr, path, accept)
    }

    /// Scrapes /metrics (Prometheus text format).
    pub fn scrape(&self) -> anyhow::Result<Vec<Sample>> {
        let (status, _, body) = self.get("/metrics", None)?;
        anyhow::ensure!(status == 200, "scrape failed: {status}");
        Ok(metrics::parse(&body))
    }

    /// Scrapes until `cond` holds (the kernel side is read at scrape time, but processes and
    /// sockets finish asynchronously), returning the last scrape.
    pub fn scrape_until(
        &self,
        timeout: Duration,
        cond: impl Fn(&[Sample]) -> bool,
    ) -> anyhow::Result<Vec<Sample>> {
        let deadline = Instant::now() + crate::scaled(timeout);
        loop {
            let s = self.scrape()?;
            if cond(&s) || Instant::now() > deadline {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it with SIGTERM and returns its exit status.
    pub fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + crate::scaled(Duration::from_secs(10));
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                anyhow::bail!("observer did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Minimal HTTP/1.1 GET (Connection: close).
pub fn http_get(
    addr: &str,
    path: &str,
    accept: Option<&str>,
) -> anyhow::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(crate::scaled(Duration::from_secs(30))))?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let ct = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, ct, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}
