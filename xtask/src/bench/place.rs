//! Where the benchmark's server and load generator run: pinned on loopback (nginx on CPU 0, the
//! load generator on CPU 1), or pod to pod (each in a simulated pod: a kubepods cgroup and a
//! network namespace on a bridge, both observed, so both ends of every request are captured, as
//! on a node where one pod calls another).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{ensure, Context, Result};

/// The bridge, namespaces and cgroups of the pod-to-pod setting (removed on drop).
pub struct Pods {
    bridge: String,
    netns: [String; 2],
    cgroups: [PathBuf; 2],
}

/// Server address of the pod-to-pod setting (client: .3).
const SERVER_IP: &str = "10.233.0.2";

impl Pods {
    pub fn new() -> Result<Pods> {
        // A new tag for each setting of the run: a deleted namespace's veth goes asynchronously,
        // and the next setting's pods reusing its name found it still there.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10;
        let tag = std::process::id() % 10_000 * 10 + n;
        let bridge = format!("obench{tag}");
        let netns = [format!("obench-srv-{tag}"), format!("obench-cli-{tag}")];
        let root = cgroup2_root()?;
        let slice = root.join("kubepods.slice/kubepods-burstable.slice");
        let cgroups = [0, 1].map(|i| {
            slice
                .join(format!(
                    "kubepods-burstable-pod{tag:08x}_0000_4000_8000_{i:012x}.slice"
                ))
                .join(format!("cri-containerd-{:064}.scope", tag * 10 + i))
        });
        let p = Pods {
            bridge,
            netns,
            cgroups,
        };
        p.set_up().context("setting up the benchmark's pods")?;
        Ok(p)
    }

    fn set_up(&self) -> Result<()> {
        let b = &self.bridge;
        sh(&format!("ip link add {b} type bridge && ip addr add 10.233.0.1/24 dev {b} && ip link set {b} up"))?;
        for (i, ns) in self.netns.iter().enumerate() {
            let veth = format!("{b}v{i}");
            sh(&format!(
                "ip netns add {ns} && ip link add {veth} type veth peer name eth0 netns {ns} && \
                 ip link set {veth} master {b} up && ip -n {ns} addr add 10.233.0.{}/24 dev eth0 && \
                 ip -n {ns} link set eth0 up && ip -n {ns} link set lo up",
                i + 2
            ))?;
            fs::create_dir_all(&self.cgroups[i])?;
        }
        Ok(())
    }

    /// `cmd` in pod `i` (0: server, 1: client): it joins the pod's cgroup, then its namespace.
    pub(super) fn command(&self, i: usize, cmd: &[&str]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec ip netns exec {} \"$@\"",
                self.cgroups[i].display(),
                self.netns[i]
            ))
            .arg("sh")
            .args(cmd);
        c
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for ns in &self.netns {
            let _ = sh(&format!(
                "ip netns pids {ns} | xargs -r kill -9; ip netns del {ns}"
            ));
        }
        let _ = sh(&format!("ip link del {}", self.bridge));
        for cg in &self.cgroups {
            let _ = fs::remove_dir(cg);
            if let Some(pod) = cg.parent() {
                let _ = fs::remove_dir(pod);
            }
        }
        // The shared parent slices too once no pod uses them, as the tests' pods do (fails
        // harmlessly on a node whose kubelet has pods there).
        if let Some(qos) = self.cgroups[0].parent().and_then(Path::parent) {
            let _ = fs::remove_dir(qos);
            if let Some(kubepods) = qos.parent() {
                let _ = fs::remove_dir(kubepods);
            }
        }
    }
}

/// The setting of one benchmark phase.
pub enum Place {
    /// nginx on 127.0.0.1:port pinned to CPU 0, the load generator on CPU 1.
    Pinned { port: u16 },
    /// nginx in one pod, the load generator in another.
    Pods(Pods),
}

impl Place {
    pub fn name(&self) -> &'static str {
        match self {
            Place::Pinned { .. } => "pinned",
            Place::Pods(_) => "pods",
        }
    }

    pub fn url(&self) -> String {
        match self {
            Place::Pinned { port } => format!("http://127.0.0.1:{port}/"),
            Place::Pods(_) => format!("http://{SERVER_IP}:8080/"),
        }
    }

    /// The nginx command line and the config it serves with, in `dir`.
    pub fn nginx(&self, dir: &Path) -> Result<Command> {
        let d = dir.display().to_string();
        let temp = format!(
            "client_body_temp_path {d}/client_body; proxy_temp_path {d}/proxy; \
             fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;"
        );
        let server = match self {
            // A ~600-byte static page, access log on, as many sites serve.
            Place::Pinned { port } => format!(
                "access_log {d}/access.log; default_type text/html; {temp}\n\
                 server {{ listen 127.0.0.1:{port}; root {d}/html; }}"
            ),
            // The setting users measured: `return 200 "ok\n"`, no access log.
            Place::Pods(_) => format!(
                "access_log off; {temp}\n\
                 server {{ listen {SERVER_IP}:8080; location / {{ return 200 \"ok\\n\"; }} }}"
            ),
        };
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\nhttp {{\n{server}\n}}\n"
        );
        let file = dir.join(format!("nginx-{}.conf", self.name()));
        fs::write(&file, conf)?;
        let file = file.display().to_string();
        let err = format!("{d}/error.log");
        let args = ["nginx", "-p", &d, "-c", &file, "-e", &err];
        Ok(match self {
            // nginx and the load generator on their own CPUs: without pinning the two fight
            // over both cores and the run-to-run spread swamps the effect being measured.
            Place::Pinned { .. } => {
                let mut c = Command::new("taskset");
                c.args(["-c", "0"]).args(args);
                c
            }
            Place::Pods(p) => p.command(0, &args),
        })
    }

    /// A load generator (`wrk`, `hey`, ...) with `args`, where this setting runs it.
    pub fn client(&self, args: &[&str]) -> Command {
        match self {
            Place::Pinned { .. } => {
                let mut c = Command::new("taskset");
                c.args(["-c", "1"]).args(args);
                c
            }
            Place::Pods(p) => p.command(1, args),
        }
    }

    /// Whether the server answers (a plain TCP connect, from where the client runs).
    pub fn server_up(&self) -> bool {
        let url = self.url();
        let host = url.trim_start_matches("http://").trim_end_matches('/');
        let probe = format!(
            "exec 3<>/dev/tcp/{}/{}",
            host.split(':').next().unwrap_or(""),
            host.split(':').nth(1).unwrap_or("")
        );
        let mut c = self.client(&["bash", "-c", &probe]);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c.status().is_ok_and(|s| s.success())
    }
}

/// Starts nginx for `place` in `dir` (kept by the caller to stop it).
pub fn spawn_nginx(place: &Place, dir: &Path) -> Result<Child> {
    place
        .nginx(dir)?
        .stdin(Stdio::null())
        .spawn()
        .context("starting nginx (is it installed?)")
}

fn sh(cmd: &str) -> Result<()> {
    let out = Command::new("sh").args(["-c", cmd]).output()?;
    ensure!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The cgroup v2 mount (from /proc/self/mountinfo).
fn cgroup2_root() -> Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .filter_map(|l| l.split_once(" - "))
        .find(|(_, post)| post.starts_with("cgroup2 "))
        .and_then(|(pre, _)| pre.split_whitespace().nth(4))
        .map(PathBuf::from)
        .context("no cgroup2 mount")
}
