//! Syscall and errno names for labels (never numbers).

/// Name of syscall `nr` of this architecture (`syscall_<nr>` for numbers the table lacks).
pub fn syscall_name(nr: u32) -> String {
    match syscalls::Sysno::new(nr as usize) {
        Some(s) => s.name().to_string(),
        None => format!("syscall_{nr}"),
    }
}

/// Name of errno `e`, including the kernel-internal restart codes a syscall exit can carry
/// before signal handling turns them into EINTR or a restart.
pub fn errno_name(e: u32) -> String {
    match e {
        512 => "ERESTARTSYS".into(),
        513 => "ERESTARTNOINTR".into(),
        514 => "ERESTARTNOHAND".into(),
        515 => "ENOIOCTLCMD".into(),
        516 => "ERESTART_RESTARTBLOCK".into(),
        517 => "EPROBE_DEFER".into(),
        518 => "EOPENSTALE".into(),
        _ => match syscalls::Errno::new(e as i32).name() {
            Some(n) => n.to_string(),
            None => format!("E{e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(syscall_name(0), "read");
            assert_eq!(syscall_name(257), "openat");
            assert_eq!(syscall_name(39), "getpid");
        }
        assert_eq!(syscall_name(100_000), "syscall_100000");
        assert_eq!(errno_name(2), "ENOENT");
        assert_eq!(errno_name(111), "ECONNREFUSED");
        assert_eq!(errno_name(512), "ERESTARTSYS");
        assert_eq!(errno_name(4000), "E4000");
    }
}
