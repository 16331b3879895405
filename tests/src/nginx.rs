//! nginx as the HTTP, HTTP/2 and TLS tests run it: the common part of its configuration, its
//! start in a pod, and the wrk script that counts responses per status.

use std::collections::BTreeMap;

use crate::{pod::Pod, TempDir};

/// A configuration of `workers` workers with its files in `dir` (pid, error log, temporary
/// paths), an access log of format `log_format` (the test's ground truth) and `server`, the
/// `http` block's own settings and `server { ... }` blocks.
pub fn conf(dir: &TempDir, workers: u32, log_format: &str, server: &str) -> String {
    let d = dir.path().display().to_string();
    let head = format!(
        r#"daemon off;
master_process on;
worker_processes {workers};
user www-data;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
  log_format truth '{log_format}';
  access_log {d}/access.log truth;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
"#
    );
    format!("{head}{server}\n}}\n")
}

/// Starts nginx in `pod` with `conf` (written to `dir`, which is its prefix and holds its
/// error log); returns once it listens on `port`.
pub fn start(pod: &mut Pod, dir: &TempDir, conf: &str, port: u16) -> anyhow::Result<()> {
    let path = dir.write("nginx.conf", conf)?;
    let prefix = dir.join("");
    let errors = dir.join("error.log");
    pod.spawn("nginx", &["-p", &prefix, "-c", &path, "-e", &errors])?;
    pod.wait_listening(port)
}

/// wrk script: each thread cycles over `paths` on its one connection, counts the responses
/// per status in `response()` and stops itself after N (the script's argument); `done()`
/// prints `status <code> <count>` per status summed over the threads, and `requests <total>`.
pub fn wrk_mix(paths: &[&str]) -> String {
    let paths: Vec<String> = paths.iter().map(|p| format!("{p:?}")).collect();
    format!(
        r#"local paths = {{{}}}
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args)
  limit = tonumber(args[1])
  counts = {{}}
  n = 0
end
local i = 0
function request()
  i = i + 1
  return wrk.format("GET", paths[(i - 1) % #paths + 1])
end
function response(status, headers, body)
  local k = tostring(status)
  counts[k] = (counts[k] or 0) + 1
  n = n + 1
  if n >= limit then wrk.thread:stop() end
end
{WRK_DONE}"#,
        paths.join(", ")
    )
}

/// wrk's `done()` of the scripts here: prints `status <code> <count>` per status, summed over
/// the threads (each kept its `counts` and is in `threads`), and `requests <total>`.
pub const WRK_DONE: &str = r#"function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do total[k] = (total[k] or 0) + v end
  end
  for k, v in pairs(total) do io.write(string.format("status %s %d\n", k, v)) end
  io.write(string.format("requests %d\n", summary.requests))
end
"#;

/// The `status <code> <n>` lines of [`wrk_mix`]'s `done()`: status → count.
pub fn wrk_statuses(out: &str) -> BTreeMap<String, u64> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some("status")).then_some(())?;
            Some((f.next()?.to_string(), f.next()?.parse().ok()?))
        })
        .collect()
}
