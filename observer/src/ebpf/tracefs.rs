//! tracefs: mounted if needed, and tracepoint record layouts read from the format files.

use std::{
    collections::HashMap,
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use crate::error::ProbeError;

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// Returns the tracefs directory, mounting tracefs at /sys/kernel/tracing when no tracefs is
/// mounted. Classic tracepoints are attached through it.
pub fn ensure_mounted() -> Result<PathBuf, ProbeError> {
    for dir in [TRACEFS, DEBUGFS_TRACING] {
        if Path::new(dir).join("events").is_dir() {
            return Ok(PathBuf::from(dir));
        }
    }
    let target = CString::new(TRACEFS).expect("no NUL");
    let fstype = CString::new("tracefs").expect("no NUL");
    // SAFETY: plain mount(2) with valid C strings and no data.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(ProbeError::Tracefs(format!(
            "tracefs is not mounted and mounting it at {TRACEFS} failed: {}",
            std::io::Error::last_os_error()
        )));
    }
    tracing::info!(path = TRACEFS, "mounted tracefs");
    Ok(PathBuf::from(TRACEFS))
}

/// Byte offsets of the named fields of a tracepoint record, from its `format` file.
pub fn field_offsets(
    tracefs: &Path,
    category: &str,
    name: &str,
    fields: &[&str],
) -> Result<HashMap<String, u32>, ProbeError> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let text = fs::read_to_string(&path).map_err(|e| {
        ProbeError::Tracefs(format!(
            "tracepoint {category}:{name}: {}: {e}",
            path.display()
        ))
    })?;
    let all = parse_format(&text);
    let mut out = HashMap::new();
    for f in fields {
        let off = all.get(*f).ok_or_else(|| {
            ProbeError::Tracefs(format!("tracepoint {category}:{name} has no field {f}"))
        })?;
        out.insert((*f).to_string(), *off);
    }
    Ok(out)
}

/// Parses the `field:` lines of a tracepoint format file into name -> offset.
pub fn parse_format(text: &str) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut decl = None;
        let mut offset = None;
        for part in rest.split(';') {
            let part = part.trim();
            if let Some(o) = part.strip_prefix("offset:") {
                offset = o.trim().parse::<u32>().ok();
            } else if decl.is_none() && !part.is_empty() && !part.contains(':') {
                decl = Some(part);
            }
        }
        let (Some(decl), Some(offset)) = (decl, offset) else {
            continue;
        };
        // The name is the last identifier of the declaration, before any array suffix.
        let decl = decl.split('[').next().unwrap_or(decl);
        if let Some(name) = decl.split_whitespace().last() {
            out.insert(name.trim_start_matches('*').to_string(), offset);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const INET_SOCK_SET_STATE: &str = "name: inet_sock_set_state
ID: 1459
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:const void * skaddr;	offset:8;	size:8;	signed:0;
	field:int oldstate;	offset:16;	size:4;	signed:1;
	field:int newstate;	offset:20;	size:4;	signed:1;
	field:__u16 sport;	offset:24;	size:2;	signed:0;
	field:__u16 dport;	offset:26;	size:2;	signed:0;
	field:__u16 family;	offset:28;	size:2;	signed:0;
	field:__u16 protocol;	offset:30;	size:2;	signed:0;
	field:__u8 saddr[4];	offset:32;	size:4;	signed:0;
	field:__u8 daddr[4];	offset:36;	size:4;	signed:0;
	field:__u8 saddr_v6[16];	offset:40;	size:16;	signed:0;
	field:__u8 daddr_v6[16];	offset:56;	size:16;	signed:0;

print fmt: \"family=%s protocol=%s\"
";

    #[test]
    fn parses_real_format_file() {
        let f = parse_format(INET_SOCK_SET_STATE);
        assert_eq!(f["skaddr"], 8);
        assert_eq!(f["oldstate"], 16);
        assert_eq!(f["newstate"], 20);
        assert_eq!(f["protocol"], 30);
        assert_eq!(f["saddr"], 32);
        assert_eq!(f["daddr_v6"], 56);
        assert_eq!(f["common_pid"], 4);
    }

    #[test]
    fn ignores_junk() {
        assert!(parse_format("").is_empty());
        assert!(parse_format("field:;offset:x;\nfield:int a\n\u{0}\u{ffff}").is_empty());
    }
}
