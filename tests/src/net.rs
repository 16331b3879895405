//! A test bridge in the host namespace that the simulated pods' veths plug into.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::{random_hex, sh, sh_quiet};

static SUBNET: AtomicU32 = AtomicU32::new(0);

/// A Linux bridge with its own /24 (10.231.N.0/24, N unique per bridge in this process).
pub struct Bridge {
    pub name: String,
    /// First three octets, e.g. "10.231.7".
    pub prefix: String,
    next_host: AtomicU32,
}

impl Bridge {
    pub fn new() -> anyhow::Result<Self> {
        let n = (std::process::id() + SUBNET.fetch_add(1, Ordering::SeqCst)) % 200 + 20;
        let name = format!("obr{}", random_hex(8));
        let prefix = format!("10.231.{n}");
        let b = Bridge {
            name: name.clone(),
            prefix: prefix.clone(),
            next_host: AtomicU32::new(2),
        };
        sh(&format!("ip link add {name} type bridge && ip addr add {prefix}.1/24 dev {name} && ip link set {name} up"))?;
        Ok(b)
    }

    /// The bridge's own address (the pods' default gateway).
    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// The next free host address on this bridge.
    pub fn next_ip(&self) -> String {
        format!(
            "{}.{}",
            self.prefix,
            self.next_host.fetch_add(1, Ordering::SeqCst)
        )
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        sh_quiet(&format!("ip link del {}", self.name));
    }
}
