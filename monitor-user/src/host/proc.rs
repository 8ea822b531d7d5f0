//! Reading `/proc`: processes the kernel programs have not reported yet (the seed at start-up
//! and targeted look-ups), whether a process or thread is still there, and the agent's own
//! capabilities and mounts. Never reads `environ`; command lines are only matched, never kept.

use monitor_common::RssKind;
use procfs::{
    ProcError as RawError,
    process::{MountInfo, Process},
};

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

/// `/proc/<pid>`; a pid no process can have is gone.
fn process(pid: u32) -> Result<Process, ProcError> {
    let raw = i32::try_from(pid).map_err(|_| ProcError::Gone(pid))?;
    Process::new(raw).map_err(|e| ProcError::from_raw(pid, e))
}

pub fn read(pid: u32) -> Result<ProcSnapshot, ProcError> {
    let err = |e| ProcError::from_raw(pid, e);
    let p = process(pid)?;
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

/// Resident bytes from `/proc/<pid>/statm`, one small read: since 6.16 the kernel sums the
/// per-CPU counters exactly for it ("mm: fix the inaccurate memory statistics issue for
/// users"), where the counters the probes see lag by up to 64 pages per CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Statm {
    pub resident: u64,
    /// File-backed and shared memory (`RssFile` + `RssShmem`) within `resident`.
    pub shared: u64,
}

pub fn statm(pid: u32) -> Result<Statm, ProcError> {
    let m = process(pid)?
        .statm()
        .map_err(|e| ProcError::from_raw(pid, e))?;
    if m.size == 0 {
        return Err(ProcError::KernelThread(pid));
    }
    let page = procfs::page_size();
    Ok(Statm {
        resident: m.resident.saturating_mul(page),
        shared: m.shared.min(m.resident).saturating_mul(page),
    })
}

/// `/proc/<pid>/statm` files kept open, one per process that sends task markers: each marker
/// then costs one `pread` instead of opening the process's directory and file again. An open
/// file stays bound to the process it was opened for (a reused pid does not read through it),
/// and reads fail once that process is gone.
pub struct StatmFiles {
    files: std::collections::HashMap<u32, std::fs::File>,
}

/// Open statm files at most: marker senders are a host's worker processes.
const MAX_STATM_FILES: usize = 256;

impl Default for StatmFiles {
    fn default() -> Self {
        Self::new()
    }
}

impl StatmFiles {
    pub fn new() -> Self {
        Self {
            files: std::collections::HashMap::new(),
        }
    }

    /// The process's memory now, as [`statm`] reads it.
    pub fn read(&mut self, pid: u32) -> Result<Statm, ProcError> {
        use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
        if !self.files.contains_key(&pid) {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(format!("/proc/{pid}/statm"))
                .map_err(|e| io_error(pid, &e))?;
            if self.files.len() >= MAX_STATM_FILES {
                // A cache: what it forgets is opened again.
                self.files.clear();
            }
            self.files.insert(pid, file);
        }
        let mut buf = [0u8; 256];
        let read = self.files[&pid].read_at(&mut buf, 0);
        let parsed = read
            .map_err(|e| io_error(pid, &e))
            .and_then(|n| parse_statm(pid, &buf[..n]));
        if parsed.is_err() {
            self.files.remove(&pid);
        }
        parsed
    }
}

fn io_error(pid: u32, e: &std::io::Error) -> ProcError {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ESRCH) => ProcError::Gone(pid),
        Some(libc::EACCES | libc::EPERM) => ProcError::Denied { pid },
        _ => ProcError::Other {
            pid,
            detail: format!("statm: {e}"),
        },
    }
}

/// `size resident shared text lib data dt`, in pages.
fn parse_statm(pid: u32, text: &[u8]) -> Result<Statm, ProcError> {
    let mut fields = std::str::from_utf8(text)
        .unwrap_or("")
        .split_ascii_whitespace()
        .map(str::parse::<u64>);
    let mut next = || match fields.next() {
        Some(Ok(v)) => Ok(v),
        // An exited process's file reads as empty.
        None if text.is_empty() => Err(ProcError::Gone(pid)),
        _ => Err(ProcError::Other {
            pid,
            detail: format!("unexpected statm {:?}", String::from_utf8_lossy(text)),
        }),
    };
    let (size, resident, shared) = (next()?, next()?, next()?);
    if size == 0 {
        return Err(ProcError::KernelThread(pid));
    }
    let page = procfs::page_size();
    Ok(Statm {
        resident: resident.saturating_mul(page),
        shared: shared.min(resident).saturating_mul(page),
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

/// Every pid in /proc now, without reading any process (threads are not listed).
pub fn pids() -> Vec<u32> {
    procfs::process::all_processes()
        .map(|all| all.filter_map(Result::ok).map(|p| p.pid() as u32).collect())
        .unwrap_or_default()
}

/// Whether `/proc/<pid>` is there: a zombie still is. Only a pid the kernel does not know is
/// gone; a read refused for another reason keeps the process.
/// One `statx`, no descriptor opened: the interval and every task marker ask this.
pub fn exists(pid: u32) -> bool {
    if i32::try_from(pid).is_err() {
        return false;
    }
    match stat_proc_path(format_args!("/proc/{pid}")) {
        Ok(()) => true,
        Err(e) => !matches!(e, rustix::io::Errno::NOENT | rustix::io::Errno::SRCH),
    }
}

/// Whether `tid` is a thread of `pid`: `/proc/<pid>/task/<tid>` resolves only for threads of
/// that thread group. One `statx`, no descriptor opened: every task marker that names its
/// thread pays this.
pub fn thread_exists(pid: u32, tid: u32) -> bool {
    if i32::try_from(pid).is_err() || i32::try_from(tid).is_err() {
        return false;
    }
    stat_proc_path(format_args!("/proc/{pid}/task/{tid}")).is_ok()
}

/// `stat` of a /proc path built on the stack (no allocation), without following a final
/// symlink: the numeric entries asked about are never links, and a link is not one of them.
fn stat_proc_path(path: std::fmt::Arguments<'_>) -> Result<(), rustix::io::Errno> {
    use std::io::Write as _;
    // "/proc/4294967295/task/4294967295" and its NUL fit with room to spare.
    let mut buf = [0u8; 48];
    let room = buf.len();
    let mut w = &mut buf[..];
    if w.write_fmt(path).is_err() || w.is_empty() {
        return Err(rustix::io::Errno::NAMETOOLONG);
    }
    let len = room - w.len();
    let path =
        std::ffi::CStr::from_bytes_with_nul(&buf[..=len]).map_err(|_| rustix::io::Errno::INVAL)?;
    rustix::fs::statat(rustix::fs::CWD, path, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).map(|_| ())
}

/// Up to `max` thread ids of `pid`, in the agent's pid namespace; none once it has gone.
pub fn tids(pid: u32, max: usize) -> Vec<u32> {
    let Some(tasks) = process(pid).ok().and_then(|p| p.tasks().ok()) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .map(|t| t.tid as u32)
        .take(max)
        .collect()
}

/// `pid`'s id in each pid namespace it is in, outermost (the agent's) first (`NSpid:`); empty
/// when it cannot be read.
pub fn ns_pids(pid: u32) -> Vec<u32> {
    process(pid)
        .ok()
        .and_then(|p| p.status().ok())
        .map(|s| ns_ids(s.nspid))
        .unwrap_or_default()
}

/// [`ns_pids`] of one thread of `pid`.
pub fn thread_ns_pids(pid: u32, tid: u32) -> Vec<u32> {
    let Ok(raw_tid) = i32::try_from(tid) else {
        return Vec::new();
    };
    process(pid)
        .ok()
        .and_then(|p| p.task_from_tid(raw_tid).ok()?.status().ok())
        .map(|s| ns_ids(s.nspid))
        .unwrap_or_default()
}

fn ns_ids(nspid: Option<Vec<i32>>) -> Vec<u32> {
    nspid
        .unwrap_or_default()
        .into_iter()
        .filter_map(|id| u32::try_from(id).ok())
        .collect()
}

/// Whether `pid` still runs: false once it has gone or is a zombie (exited, whether or not
/// its parent has reaped it). A stat the agent may not read is not taken for an exit.
pub fn running(pid: u32) -> bool {
    match process(pid).and_then(|p| p.stat().map_err(|e| ProcError::from_raw(pid, e))) {
        Ok(stat) => !matches!(stat.state, 'Z' | 'X'),
        Err(e) => !matches!(e, ProcError::Gone(_)),
    }
}

/// The real uid of a process (the first `Uid:` of its status), which is what the kernel gives
/// a task-marker receiver in `SCM_CREDENTIALS`; `None` once it has gone.
pub fn real_uid(pid: u32) -> Option<u32> {
    process(pid).ok()?.status().ok().map(|s| s.ruid)
}

/// The agent's effective capability set (`CapEff:`), one bit per capability number.
pub fn own_effective_caps() -> Result<u64, ProcError> {
    let pid = std::process::id();
    Process::myself()
        .and_then(|p| p.status())
        .map(|s| s.capeff)
        .map_err(|e| ProcError::from_raw(pid, e))
}

/// The mounts the agent sees (`/proc/self/mountinfo`).
pub fn own_mounts() -> Result<Vec<MountInfo>, ProcError> {
    let pid = std::process::id();
    Process::myself()
        .and_then(|p| p.mountinfo())
        .map(|m| m.0)
        .map_err(|e| ProcError::from_raw(pid, e))
}

/// The command line joined by spaces, for matching only: callers must not keep or export it.
/// Read as bytes rather than with procfs, whose `cmdline()` fails on any argument that is not
/// UTF-8, where matching wants the rest of the line.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let joined: Vec<u8> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .collect::<Vec<_>>()
        .join(&b' ');
    Some(String::from_utf8_lossy(&joined).into_owned())
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
    crate::host::container::ContainerInfo,
) {
    match std::fs::read_to_string(format!("/proc/{pid}/cgroup")) {
        Ok(text) => (
            parse_cgroup_v2(&text),
            parse_memcg_v1(&text),
            // The whole file, not just the v2 line: on v1/hybrid hosts the container is named
            // by the memory (or pids) hierarchy while the unified line names a systemd unit.
            crate::host::container::from_proc_cgroup(&text),
        ),
        Err(_) => (None, None, crate::host::container::ContainerInfo::default()),
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
    fn statm_sees_anon_memory_this_process_touches() {
        let me = std::process::id();
        let before = statm(me).expect("own statm");
        assert!(before.shared <= before.resident);
        let len = 32 << 20;
        let mut block = vec![0u8; len];
        for page in block.chunks_mut(4096) {
            page[0] = 1;
        }
        let after = statm(me).expect("own statm");
        let anon = |m: Statm| m.resident - m.shared;
        assert!(
            anon(after) >= anon(before) + len as u64 - (1 << 20),
            "{before:?} -> {after:?}"
        );
        drop(std::hint::black_box(block));
    }

    #[test]
    fn an_open_statm_file_follows_its_process_and_not_its_pid() {
        // A sleeping child's memory holds still: both ways of reading it agree exactly.
        let mut files = StatmFiles::new();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let opened = files.read(pid).expect("the child's statm");
        assert!(opened.resident > 0 && opened.shared <= opened.resident);
        // Read again through the file kept open.
        assert_eq!(files.read(pid).unwrap(), statm(pid).unwrap());
        assert!(files.files.contains_key(&pid));
        child.kill().unwrap();
        child.wait().unwrap();
        // Reaped: its file no longer reads, and is let go.
        assert!(
            matches!(
                files.read(pid),
                Err(ProcError::Gone(_) | ProcError::KernelThread(_))
            ),
            "a reaped process still reads"
        );
        assert!(!files.files.contains_key(&pid));
        assert!(matches!(files.read(u32::MAX - 1), Err(ProcError::Gone(_))));
        assert!(matches!(
            parse_statm(1, b"12 x"),
            Err(ProcError::Other { .. })
        ));
    }

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
    fn a_process_is_there_until_its_pid_is_free() {
        assert!(exists(std::process::id()));
        assert!(!exists(5_000_000));
        assert!(!exists(u32::MAX), "beyond any pid");
    }

    /// This thread's id.
    fn gettid() -> u32 {
        // SAFETY: no preconditions.
        unsafe { libc::gettid() as u32 }
    }

    #[test]
    fn threads_are_found_only_in_their_own_group() {
        let me = std::process::id();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            tx.send(gettid()).unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        assert!(tids(me, usize::MAX).contains(&tid));
        assert!(tids(me, usize::MAX).contains(&me), "the main thread");
        assert_eq!(tids(me, 1).len(), 1, "capped");
        assert!(tids(5_000_000, usize::MAX).is_empty());
        assert!(thread_exists(me, tid));
        assert!(!thread_exists(1, tid), "a thread of another group");
        assert!(!thread_exists(me, 5_000_000));
        assert_eq!(thread_ns_pids(me, tid).first(), Some(&tid));
        assert!(thread_ns_pids(me, 5_000_000).is_empty());
        done_tx.send(()).unwrap();
        worker.join().unwrap();
    }

    #[test]
    fn ns_pids_start_with_the_agents_namespace() {
        let me = ns_pids(std::process::id());
        assert_eq!(me.first().copied(), Some(std::process::id()));
        assert!(ns_pids(5_000_000).is_empty());
    }

    #[test]
    fn a_zombie_has_stopped_running() {
        assert!(running(std::process::id()));
        assert!(!running(5_000_000));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped: it stays a zombie, still in /proc, until `wait` below.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while running(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "pid {pid} never exited"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(exists(pid), "a zombie is still there");
        child.wait().unwrap();
    }

    #[test]
    fn a_process_uid_is_read_from_proc() {
        // SAFETY: no preconditions.
        let uid = unsafe { libc::getuid() };
        assert_eq!(real_uid(std::process::id()), Some(uid));
        assert_eq!(real_uid(u32::MAX), None);
    }

    #[test]
    fn the_agent_sees_its_root_mount() {
        let mounts = own_mounts().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.mount_point == std::path::Path::new("/")),
            "{mounts:?}"
        );
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
