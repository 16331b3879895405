//! A simulated pod: a cgroup v2 directory at a kubepods path (systemd driver, burstable QoS,
//! containerd container scope) and a network namespace with a veth on a test bridge.
//! Processes join the cgroup first and then enter the namespace (`ip netns exec` remounts
//! /sys, which hides the cgroup tree).

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{net::Bridge, random_hex, sh, sh_quiet};

/// The cgroup v2 mount of this host (from /proc/self/mountinfo).
pub fn cgroup2_root() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    for line in info.lines() {
        if let Some((pre, post)) = line.split_once(" - ") {
            if post.starts_with("cgroup2 ") {
                if let Some(mp) = pre.split_whitespace().nth(4) {
                    return PathBuf::from(mp);
                }
            }
        }
    }
    panic!("no cgroup2 mount");
}

pub struct Pod {
    /// Pod UID as Kubernetes writes it (with dashes).
    pub uid: String,
    pub container_id: String,
    /// Pod-level cgroup directory.
    pub pod_dir: PathBuf,
    /// Container cgroup directory (where processes go).
    pub cgroup: PathBuf,
    pub netns: String,
    pub ip: String,
    host_veth: String,
    children: Vec<Child>,
}

fn uuid() -> String {
    let h = random_hex(32);
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

impl Pod {
    /// Makes a pod with its own IP on `bridge`.
    pub fn new(bridge: &Bridge) -> anyhow::Result<Pod> {
        let uid = uuid();
        let container_id = format!("{}{}", random_hex(32), random_hex(32));
        let root = cgroup2_root();
        let slice = root.join("kubepods.slice/kubepods-burstable.slice");
        let pod_dir = slice.join(format!(
            "kubepods-burstable-pod{}.slice",
            uid.replace('-', "_")
        ));
        let cgroup = pod_dir.join(format!("cri-containerd-{container_id}.scope"));
        fs::create_dir_all(&cgroup)?;
        let tag = random_hex(8);
        let netns = format!("obs-{tag}");
        let host_veth = format!("ov{tag}");
        let ip = bridge.next_ip();
        let mut pod = Pod {
            uid,
            container_id,
            pod_dir,
            cgroup,
            netns: netns.clone(),
            ip: ip.clone(),
            host_veth: host_veth.clone(),
            children: Vec::new(),
        };
        // On failure, `pod` is dropped and cleans up what exists.
        sh(&format!(
            "ip netns add {netns} && ip link add {host_veth} type veth peer name ovp{tag} && \
             ip link set ovp{tag} netns {netns} && ip link set {host_veth} master {br} up && \
             ip netns exec {netns} sh -c 'ip link set lo up && ip link set ovp{tag} name eth0 && \
             ip addr add {ip}/24 dev eth0 && ip link set eth0 up && ip route add default via {gw}'",
            br = bridge.name,
            gw = bridge.gateway(),
        ))?;
        pod.wait_link_up()?;
        Ok(pod)
    }

    fn wait_link_up(&mut self) -> anyhow::Result<()> {
        // The bridge port needs a moment to forward (no STP, but the link must be up).
        let deadline = Instant::now() + crate::scaled(Duration::from_secs(5));
        while Instant::now() < deadline {
            let s =
                sh(&format!("cat /sys/class/net/{}/operstate", self.host_veth)).unwrap_or_default();
            if s.trim() == "up" {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("veth {} did not come up", self.host_veth)
    }

    /// Gives the pod's eth0 an IPv6 address as well, derived from its IPv4 one
    /// (10.231.N.H → fd00:231:N::H, the octets as 16-bit groups; same bridge, no duplicate
    /// address detection), and returns it in canonical text form (RFC 5952, as `Ipv6Addr`
    /// displays it).
    pub fn add_ipv6(&self) -> anyhow::Result<String> {
        let octets: Vec<u16> = self
            .ip
            .split('.')
            .map(|o| o.parse())
            .collect::<Result<_, _>>()?;
        anyhow::ensure!(octets.len() == 4, "not an IPv4 address: {}", self.ip);
        let addr = std::net::Ipv6Addr::new(0xfd00, 0x231, octets[2], 0, 0, 0, 0, octets[3]);
        sh(&format!(
            "ip netns exec {} ip -6 addr add {addr}/64 dev eth0 nodad",
            self.netns
        ))?;
        Ok(addr.to_string())
    }

    /// The cgroup id of the container (inode of its directory).
    pub fn cgroup_id(&self) -> u64 {
        fs::metadata(&self.cgroup).expect("cgroup dir").ino()
    }

    /// A command that runs `program` inside the pod (its cgroup and network namespace), for a
    /// caller that wants its own handling of the child.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec ip netns exec {} \"$@\"",
                self.cgroup.display(),
                self.netns
            ))
            .arg("pod-exec")
            .arg(program)
            .args(args);
        c
    }

    /// Starts a long-running process inside the pod; killed when the pod is dropped.
    pub fn spawn(&mut self, program: &str, args: &[&str]) -> anyhow::Result<u32> {
        let child = self
            .command(program, args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Runs a process inside the pod to completion and returns its output (fails on non-zero exit).
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let out = self.command(program, args).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            anyhow::bail!(
                "{program} {args:?} in pod failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// Runs a process inside the pod to completion, whatever its exit status.
    pub fn output(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self.command(program, args).stdin(Stdio::null()).output()?)
    }

    /// Runs a Python script inside the pod; returns its stdout.
    pub fn python(&self, script: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut a = vec!["-c", script];
        a.extend_from_slice(args);
        let out = self.run("python3", &a)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a Python script inside the pod in the background.
    pub fn spawn_python(&mut self, script: &str, args: &[&str]) -> anyhow::Result<u32> {
        let mut a = vec!["-c", script];
        a.extend_from_slice(args);
        self.spawn("python3", &a)
    }

    /// Waits until something listens on `port` inside the pod.
    pub fn wait_listening(&self, port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + crate::scaled(Duration::from_secs(10));
        while Instant::now() < deadline {
            let out = sh(&format!(
                "ip netns exec {} ss -Hltn sport = :{port}",
                self.netns
            ))
            .unwrap_or_default();
            if !out.trim().is_empty() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("nothing listens on port {port} in pod {}", self.uid)
    }

    fn kill_all(&mut self) {
        for dir in [&self.cgroup, &self.pod_dir] {
            kill_cgroup(dir);
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Kills every process of a cgroup and waits until it is empty.
fn kill_cgroup(dir: &Path) {
    let kill = dir.join("cgroup.kill");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if procs.trim().is_empty() || Instant::now() > deadline {
            return;
        }
        if kill.exists() {
            let _ = fs::write(&kill, "1");
        } else {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) on a pid read from our own test cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.kill_all();
        for _ in 0..50 {
            let _ = fs::remove_dir(&self.cgroup);
            let _ = fs::remove_dir(&self.pod_dir);
            if !self.pod_dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The shared parent slices go too once no pod uses them (fails harmlessly otherwise).
        if let Some(qos) = self.pod_dir.parent() {
            let _ = fs::remove_dir(qos);
            if let Some(kubepods) = qos.parent() {
                let _ = fs::remove_dir(kubepods);
            }
        }
        sh_quiet(&format!("ip link del {}", self.host_veth));
        sh_quiet(&format!("ip netns del {}", self.netns));
    }
}
