//! Reading `/proc` for processes the kernel programs have not reported yet: the seed at
//! start-up and targeted look-ups. Never reads `environ`; command lines are only matched,
//! never kept.

use monitor_common::RssKind;
use procfs::{ProcError as RawError, process::Process};

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The process exited between being listed and being read: not an error worth a log line.
    #[error("process {0} is gone")]
    Gone(u32),
    #[error("cannot read /proc/{pid}: permission denied (the agent needs CAP_SYS_PTRACE)")]
    Denied { pid: u32 },
    #[error("cannot read /proc/{pid}: {detail}")]
    Other { pid: u32, detail: String },
    #[error("process {0} is a kernel thread: it has no memory of its own")]
    KernelThread(u32),
}

impl ProcError {
    fn from_raw(pid: u32, e: RawError) -> Self {
        match e {
            RawError::NotFound(_) => Self::Gone(pid),
            RawError::PermissionDenied(_) => Self::Denied { pid },
            RawError::Io(ref io, _) if io.raw_os_error() == Some(libc::ESRCH) => Self::Gone(pid),
            other => Self::Other {
                pid,
                detail: other.to_string(),
            },
        }
    }
}

/// What `/proc/<pid>` says of one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcSnapshot {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    /// `CLOCK_BOOTTIME` nanoseconds, at clock-tick resolution.
    pub start_ns: u64,
    /// Bytes by [`RssKind`].
    pub rss: [u64; RssKind::COUNT],
    pub peak_bytes: u64,
}

pub fn read(pid: u32) -> Result<ProcSnapshot, ProcError> {
    let err = |e| ProcError::from_raw(pid, e);
    let p = Process::new(pid as i32).map_err(err)?;
    let stat = p.stat().map_err(err)?;
    let status = p.status().map_err(err)?;
    let Some(resident) = status.vmrss else {
        return Err(ProcError::KernelThread(pid));
    };
    let kb = |v: Option<u64>| v.unwrap_or(0).saturating_mul(1024);
    let mut rss = [0; RssKind::COUNT];
    rss[RssKind::Anon as usize] = kb(status.rssanon);
    rss[RssKind::File as usize] = kb(status.rssfile);
    rss[RssKind::Shmem as usize] = kb(status.rssshmem);
    rss[RssKind::Swap as usize] = kb(status.vmswap);
    let ns_per_tick = 1_000_000_000 / procfs::ticks_per_second().max(1);
    Ok(ProcSnapshot {
        pid,
        ppid: status.ppid.max(0) as u32,
        comm: status.name,
        start_ns: stat.starttime.saturating_mul(ns_per_tick),
        rss,
        peak_bytes: kb(status.vmhwm).max(kb(Some(resident))),
    })
}

/// Every user-space process now running; processes that vanish mid-read are skipped,
/// other failures are returned beside the snapshots so the caller can count them.
pub fn read_all() -> Result<(Vec<ProcSnapshot>, Vec<ProcError>), ProcError> {
    let iter = procfs::process::all_processes().map_err(|e| ProcError::Other {
        pid: 0,
        detail: format!("cannot list /proc: {e}"),
    })?;
    let mut found = Vec::new();
    let mut failed = Vec::new();
    for entry in iter {
        let Ok(p) = entry else { continue };
        match read(p.pid() as u32) {
            Ok(s) => found.push(s),
            Err(ProcError::Gone(_) | ProcError::KernelThread(_)) => {}
            Err(e) => failed.push(e),
        }
    }
    Ok((found, failed))
}

/// The command line joined by spaces, for matching only: callers must not keep or export it.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let joined: Vec<u8> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .collect::<Vec<_>>()
        .join(&b' ');
    Some(String::from_utf8_lossy(&joined).into_owned())
}

/// A live process as `--match`-style matchers see it: its command line is read only when a
/// matcher asks for it, and its cgroup path too unless the caller already knows it.
pub struct ProcCandidate {
    pub pid: u32,
    pub comm: String,
    pub cgroup: Option<String>,
}

impl crate::select::Candidate for ProcCandidate {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn comm(&self) -> &str {
        &self.comm
    }
    fn cmdline(&self) -> Option<String> {
        cmdline(self.pid)
    }
    fn cgroup_path(&self) -> Option<String> {
        self.cgroup.clone().or_else(|| cgroup_paths(self.pid).0)
    }
}

/// The cgroup paths of a process: v2 (`0::/path`) and, on v1/hybrid hosts, the memory one.
pub fn cgroup_paths(pid: u32) -> (Option<String>, Option<String>) {
    match std::fs::read_to_string(format!("/proc/{pid}/cgroup")) {
        Ok(text) => (parse_cgroup_v2(&text), parse_memcg_v1(&text)),
        Err(_) => (None, None),
    }
}

/// [`cgroup_paths`] and the container those paths name, from a single read of the file.
pub fn cgroup_paths_and_container(
    pid: u32,
) -> (
    Option<String>,
    Option<String>,
    crate::container::ContainerInfo,
) {
    match std::fs::read_to_string(format!("/proc/{pid}/cgroup")) {
        Ok(text) => (
            parse_cgroup_v2(&text),
            parse_memcg_v1(&text),
            // The whole file, not just the v2 line: on v1/hybrid hosts the container is named
            // by the memory (or pids) hierarchy while the unified line names a systemd unit.
            crate::container::from_proc_cgroup(&text),
        ),
        Err(_) => (None, None, crate::container::ContainerInfo::default()),
    }
}

pub fn parse_cgroup_v2(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// `4:memory:/path` (controllers may be listed together, e.g. `4:memory,foo:/path`).
pub fn parse_memcg_v1(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then(|| path.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_itself() {
        let me = read(std::process::id()).unwrap();
        assert_eq!(me.pid, std::process::id());
        assert!(me.rss[RssKind::Anon as usize] > 0);
        assert!(me.peak_bytes >= me.rss[RssKind::Anon as usize]);
        assert!(me.start_ns > 0);
    }

    #[test]
    fn a_missing_pid_is_gone_not_an_error() {
        // pid_max is at most 2^22, so this pid cannot exist.
        assert!(matches!(read(5_000_000), Err(ProcError::Gone(5_000_000))));
    }

    #[test]
    fn kernel_threads_are_not_processes() {
        assert!(matches!(
            read(2),
            Err(ProcError::KernelThread(2)) | Err(ProcError::Gone(2))
        ));
    }

    #[test]
    fn cgroup_v2_line_is_found_on_hybrid_hosts() {
        let text =
            "12:memory:/user.slice\n1:name=systemd:/init.scope\n0::/system.slice/x.service\n";
        assert_eq!(
            parse_cgroup_v2(text).as_deref(),
            Some("/system.slice/x.service")
        );
        assert_eq!(parse_cgroup_v2("4:pids:/\n"), None);
        assert_eq!(parse_memcg_v1(text).as_deref(), Some("/user.slice"));
        assert_eq!(parse_memcg_v1("0::/a\n"), None);
    }
}
