//! Locating kernel struct fields in the running kernel's BTF, so that no layout is compiled in.

use std::path::Path;

use btf_rs::{Btf, Type};
use observer_common::{FileOffsets, KernelOffsets, LifecycleOffsets};

use crate::error::ProbeError;

/// The kernel's BTF, parsed once at start.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn open(path: &Path) -> Result<Self, ProbeError> {
        let btf = Btf::from_file(path).map_err(|e| ProbeError::Btf {
            what: format!("reading {}", path.display()),
            reason: e.to_string(),
        })?;
        Ok(Self { btf })
    }

    /// Byte offset of `field` in `struct name`, searching anonymous nested structs and unions
    /// (e.g. `skc_family` inside `struct sock`'s `__sk_common`). Bitfields are refused.
    pub fn member_offset(&self, name: &str, field: &str) -> Result<u32, ProbeError> {
        let not_found = || ProbeError::Btf {
            what: format!("struct {name}.{field}"),
            reason: "not in this kernel's BTF".into(),
        };
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| not_found())?;
        for t in types {
            if let Type::Struct(s) = t {
                if let Some((bits, bitfield)) = self.find_in(&s, field, 0)? {
                    if bitfield || bits % 8 != 0 {
                        return Err(ProbeError::Btf {
                            what: format!("struct {name}.{field}"),
                            reason: "is a bitfield".into(),
                        });
                    }
                    return Ok(bits / 8);
                }
            }
        }
        Err(not_found())
    }

    /// Offset of a path of fields, each in the struct type of the previous one, e.g.
    /// `("sock", &["sk_cgrp_data", "cgroup"])`.
    pub fn path_offset(&self, name: &str, path: &[&str]) -> Result<u32, ProbeError> {
        let mut total = 0;
        let mut current = name.to_string();
        for (i, field) in path.iter().enumerate() {
            total += self.member_offset(&current, field)?;
            if i + 1 < path.len() {
                current = self.member_struct_name(&current, field)?;
            }
        }
        Ok(total)
    }

    /// Whether argument `i` (after the tracepoint's context) of tracepoint `name` is a pointer,
    /// from its `btf_trace_<name>` prototype (`void (*)(void *ctx, args...)`).
    pub fn tracepoint_arg_is_pointer(&self, name: &str, i: usize) -> Result<bool, ProbeError> {
        let what = || format!("tracepoint {name}");
        let err = |reason: &str| ProbeError::Btf {
            what: what(),
            reason: reason.into(),
        };
        let types = self
            .btf
            .resolve_types_by_name(&format!("btf_trace_{name}"))
            .map_err(|_| err("no btf_trace_ prototype in this kernel's BTF"))?;
        let Some(Type::Typedef(t)) = types.into_iter().next() else {
            return Err(err("its btf_trace_ type is no typedef"));
        };
        let mut ty = self
            .btf
            .resolve_chained_type(&t)
            .map_err(|_| err("unresolvable"))?;
        if let Type::Ptr(p) = &ty {
            ty = self
                .btf
                .resolve_chained_type(p)
                .map_err(|_| err("unresolvable"))?;
        }
        let Type::FuncProto(f) = ty else {
            return Err(err("its btf_trace_ type is no function"));
        };
        let param = f
            .parameters
            .get(i + 1)
            .ok_or_else(|| err("has fewer arguments"))?;
        let mut ty = self
            .btf
            .resolve_chained_type(param)
            .map_err(|_| err("unresolvable"))?;
        // Through typedefs and qualifiers to the type itself.
        loop {
            ty = match ty {
                Type::Typedef(t) => self.btf.resolve_chained_type(&t),
                Type::Const(t) => self.btf.resolve_chained_type(&t),
                Type::Volatile(t) => self.btf.resolve_chained_type(&t),
                other => return Ok(matches!(other, Type::Ptr(_))),
            }
            .map_err(|_| err("unresolvable"))?;
        }
    }

    /// Whether enum `name` has a member `member` (e.g. whether this kernel knows a BPF helper:
    /// `bpf_func_id` / `BPF_FUNC_task_pt_regs`).
    pub fn enum_has(&self, name: &str, member: &str) -> bool {
        let Ok(types) = self.btf.resolve_types_by_name(name) else {
            return false;
        };
        types.iter().any(|t| match t {
            Type::Enum(e) => e
                .members
                .iter()
                .any(|m| self.btf.resolve_name(m).is_ok_and(|n| n == member)),
            _ => false,
        })
    }

    /// How many parameters kernel function `name` takes.
    pub fn func_param_count(&self, name: &str) -> Result<usize, ProbeError> {
        let err = |reason: &str| ProbeError::Btf {
            what: format!("function {name}"),
            reason: reason.into(),
        };
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| err("not in this kernel's BTF"))?;
        for t in types {
            if let Type::Func(f) = t {
                if let Ok(Type::FuncProto(p)) = self.btf.resolve_chained_type(&f) {
                    return Ok(p.parameters.len());
                }
            }
        }
        Err(err("no function of that name in this kernel's BTF"))
    }

    /// Size in bytes of `struct name`.
    pub fn struct_size(&self, name: &str) -> Result<u32, ProbeError> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| ProbeError::Btf {
                what: format!("struct {name}"),
                reason: "not in this kernel's BTF".into(),
            })?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) => Some(s.size() as u32),
                _ => None,
            })
            .ok_or_else(|| ProbeError::Btf {
                what: format!("struct {name}"),
                reason: "not a struct".into(),
            })
    }

    fn find_in(
        &self,
        s: &btf_rs::Struct,
        field: &str,
        base_bits: u32,
    ) -> Result<Option<(u32, bool)>, ProbeError> {
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            if name == field {
                let bitfield = m.bitfield_size().is_some_and(|b| b != 0);
                return Ok(Some((base_bits + m.bit_offset(), bitfield)));
            }
            if name.is_empty() {
                // Anonymous struct or union: search inside it.
                if let Ok(Type::Struct(inner) | Type::Union(inner)) = self.resolve_member(m) {
                    if let Some(off) = self.find_in(&inner, field, base_bits + m.bit_offset())? {
                        return Ok(Some(off));
                    }
                }
            }
        }
        Ok(None)
    }

    /// The type of a member with typedefs and qualifiers stripped.
    fn resolve_member(&self, m: &btf_rs::Member) -> Result<Type, btf_rs::Error> {
        let mut t = self.btf.resolve_chained_type(m)?;
        loop {
            t = match t {
                Type::Typedef(ref x) => self.btf.resolve_chained_type(x)?,
                Type::Volatile(ref x) => self.btf.resolve_chained_type(x)?,
                Type::Const(ref x) => self.btf.resolve_chained_type(x)?,
                other => return Ok(other),
            };
        }
    }

    /// Name of the struct type of `struct name`'s member `field` (which must be a struct).
    fn member_struct_name(&self, name: &str, field: &str) -> Result<String, ProbeError> {
        let err = |reason: &str| ProbeError::Btf {
            what: format!("struct {name}.{field}"),
            reason: reason.into(),
        };
        for t in self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| err("not found"))?
        {
            if let Type::Struct(s) = t {
                if let Some(m) = self.find_member(&s, field) {
                    return match self.resolve_member(&m) {
                        Ok(Type::Struct(inner)) => self
                            .btf
                            .resolve_name(&inner)
                            .map_err(|_| err("anonymous type")),
                        _ => Err(err("is not a struct")),
                    };
                }
            }
        }
        Err(err("not found"))
    }

    fn find_member(&self, s: &btf_rs::Struct, field: &str) -> Option<btf_rs::Member> {
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            if name == field {
                return Some(m.clone());
            }
            if name.is_empty() {
                if let Ok(Type::Struct(inner) | Type::Union(inner)) = self.resolve_member(m) {
                    if let Some(found) = self.find_member(&inner, field) {
                        return Some(found);
                    }
                }
            }
        }
        None
    }
}

/// Offsets the TCP probe needs. Any missing field turns the TCP probe off with this error.
pub fn tcp_offsets(btf: &KernelBtf) -> Result<KernelOffsets, ProbeError> {
    Ok(KernelOffsets {
        sock_cgroup: btf.path_offset("sock", &["sk_cgrp_data", "cgroup"])?,
        cgroup_kn: btf.member_offset("cgroup", "kn")?,
        kernfs_node_id: btf.member_offset("kernfs_node", "id")?,
        sock_family: btf.path_offset("sock", &["__sk_common", "skc_family"])?,
        sock_protocol: btf.member_offset("sock", "sk_protocol")?,
        sock_err: btf.member_offset("sock", "sk_err")?,
        tcp_srtt_us: btf.member_offset("tcp_sock", "srtt_us")?,
        sock_state: btf.path_offset("sock", &["__sk_common", "skc_state"])?,
        sock_daddr: btf.path_offset("sock", &["__sk_common", "skc_daddr"])?,
        sock_rcv_saddr: btf.path_offset("sock", &["__sk_common", "skc_rcv_saddr"])?,
        sock_dport: btf.path_offset("sock", &["__sk_common", "skc_dport"])?,
        sock_num: btf.path_offset("sock", &["__sk_common", "skc_num"])?,
        sock_v6_daddr: btf.path_offset("sock", &["__sk_common", "skc_v6_daddr"])?,
        sock_v6_rcv_saddr: btf.path_offset("sock", &["__sk_common", "skc_v6_rcv_saddr"])?,
    })
}

/// Task layout the lifecycle probe needs, and whether `mark_victim` passes the victim's task or
/// its pid.
pub fn lifecycle_offsets(btf: &KernelBtf) -> Result<LifecycleOffsets, ProbeError> {
    Ok(LifecycleOffsets {
        task_signal: btf.member_offset("task_struct", "signal")?,
        signal_live: btf.member_offset("signal_struct", "live")?,
        task_exit_code: btf.member_offset("task_struct", "exit_code")?,
        task_real_parent: btf.member_offset("task_struct", "real_parent")?,
        task_tgid: btf.member_offset("task_struct", "tgid")?,
        task_cgroups: btf.member_offset("task_struct", "cgroups")?,
        css_set_dfl_cgrp: btf.member_offset("css_set", "dfl_cgrp")?,
        task_thread_pid: btf.member_offset("task_struct", "thread_pid")?,
        pid_level: btf.member_offset("pid", "level")?,
        pid_numbers: btf.member_offset("pid", "numbers")?,
        upid_size: btf.struct_size("upid")?,
        upid_nr: btf.member_offset("upid", "nr")?,
        cgroup_kn: btf.member_offset("cgroup", "kn")?,
        kernfs_node_id: btf.member_offset("kernfs_node", "id")?,
        mark_victim_task: u32::from(btf.tracepoint_arg_is_pointer("mark_victim", 0)?),
        _pad: 0,
    })
}

/// Layout from a task's file descriptor to its socket, for the TLS probe's Go programs.
pub fn file_offsets(btf: &KernelBtf) -> Result<FileOffsets, ProbeError> {
    Ok(FileOffsets {
        task_files: btf.member_offset("task_struct", "files")?,
        files_fdt: btf.member_offset("files_struct", "fdt")?,
        fdtable_max_fds: btf.member_offset("fdtable", "max_fds")?,
        fdtable_fd: btf.member_offset("fdtable", "fd")?,
        file_private_data: btf.member_offset("file", "private_data")?,
        socket_file: btf.member_offset("socket", "file")?,
        socket_sk: btf.member_offset("socket", "sk")?,
        valid: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs against this machine's kernel BTF when it exists (it does on every supported host).
    #[test]
    fn locates_sock_fields_in_vmlinux() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("no vmlinux BTF on this host; skipped");
            return;
        }
        let btf = KernelBtf::open(path).unwrap();
        let o = tcp_offsets(&btf).unwrap();
        // skc_family sits in struct sock_common at the start of struct sock, right after the
        // addresses, ports and hash: a small offset below 64 on every kernel since 4.x.
        assert!(o.sock_family > 0 && o.sock_family < 64, "{o:?}");
        assert!(o.sock_cgroup > o.sock_family);
        assert!(o.tcp_srtt_us > o.sock_err);
        assert!(btf.member_offset("sock", "no_such_field").is_err());
        assert!(btf.member_offset("no_such_struct", "x").is_err());
        let l = lifecycle_offsets(&btf).unwrap();
        // struct upid is { int nr; struct pid_namespace *ns; } on every 64-bit kernel.
        assert_eq!((l.upid_size, l.upid_nr), (16, 0), "{l:?}");
        assert!(l.task_signal > 0 && l.task_real_parent > 0, "{l:?}");
    }
}
