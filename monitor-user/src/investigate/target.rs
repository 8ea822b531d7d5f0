//! Whether a pid can be investigated at all, decided before anything is loaded, for
//! `leakscope investigate` and the agent's /debug/pprof/growth alike.

use std::io;

use procfs::{FromRead as _, process::Stat};

use super::maps_snapshot::{self, Mapping, MapsError};

/// `PF_KTHREAD` (include/linux/sched.h): the task is a kernel thread, with no user memory.
const PF_KTHREAD: u32 = 0x0020_0000;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("no process with pid {pid}")]
    NoSuchProcess { pid: u32 },
    #[error("pid {pid} ({comm}) has exited")]
    Exited { pid: u32, comm: String },
    #[error("pid {pid} ({comm}) is a kernel thread: it has no user memory to investigate")]
    KernelThread { pid: u32, comm: String },
    #[error("pid {pid} ({comm}): {maps}")]
    PermissionDenied {
        pid: u32,
        comm: String,
        maps: MapsError,
    },
    #[error("pid {pid}: {detail}")]
    Unreadable { pid: u32, detail: String },
}

impl TargetError {
    /// The answer of /debug/pprof/growth to a pid that cannot be profiled.
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            Self::NoSuchProcess { .. } => StatusCode::NOT_FOUND,
            Self::Exited { .. } => StatusCode::GONE,
            Self::KernelThread { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PermissionDenied { .. } => StatusCode::FORBIDDEN,
            Self::Unreadable { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The comm of `pid` when it is a live user process whose memory map leakscope may read.
pub fn check(pid: u32) -> Result<String, TargetError> {
    judge(
        pid,
        std::fs::read_to_string(format!("/proc/{pid}/stat")),
        || maps_snapshot::read(pid),
    )
}

/// [`check`] on what /proc answered, so each answer can be tried without a process that
/// gives it.
fn judge(
    pid: u32,
    stat: io::Result<String>,
    maps: impl FnOnce() -> Result<Vec<Mapping>, MapsError>,
) -> Result<String, TargetError> {
    let stat = stat.map_err(|e| match MapsError::from_io(pid, &e) {
        MapsError::Gone { .. } => TargetError::NoSuchProcess { pid },
        _ => TargetError::Unreadable {
            pid,
            detail: format!("cannot read /proc/{pid}/stat: {e}"),
        },
    })?;
    let Ok(Stat {
        comm, state, flags, ..
    }) = Stat::from_read(stat.as_bytes())
    else {
        return Err(TargetError::Unreadable {
            pid,
            detail: format!("/proc/{pid}/stat is not in the expected format"),
        });
    };
    // Not "ppid 2" or "pid 2": inside a pid namespace those are ordinary processes.
    if flags & PF_KTHREAD != 0 {
        return Err(TargetError::KernelThread { pid, comm });
    }
    if matches!(state, 'Z' | 'X') {
        return Err(TargetError::Exited { pid, comm });
    }
    match maps() {
        // An exiting process releases its address space before it becomes a zombie.
        Ok(m) if m.is_empty() => Err(TargetError::Exited { pid, comm }),
        Ok(_) => Ok(comm),
        Err(MapsError::Gone { .. }) => Err(TargetError::Exited { pid, comm }),
        Err(maps @ MapsError::PermissionDenied { .. }) => {
            Err(TargetError::PermissionDenied { pid, comm, maps })
        }
        Err(e @ MapsError::Unreadable { .. }) => Err(TargetError::Unreadable {
            pid,
            detail: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole `/proc/42/stat` line, as a 6.x kernel writes it.
    fn stat(comm: &str, state: char, flags: u32) -> io::Result<String> {
        Ok(format!(
            "42 ({comm}) {state} 1 42 42 0 -1 {flags} 120 0 0 0 3 1 0 0 20 0 1 0 1000 4096 100 \
             18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
        ))
    }

    fn mapped() -> Result<Vec<Mapping>, MapsError> {
        Ok(vec![Mapping {
            start: 0x1000,
            end: 0x2000,
            offset: 0,
            executable: true,
            path: Some("/usr/bin/python3".into()),
            deleted: false,
        }])
    }

    fn maps_err(e: io::Error) -> impl FnOnce() -> Result<Vec<Mapping>, MapsError> {
        move || Err(MapsError::from_io(42, &e))
    }

    #[test]
    fn a_live_user_process_gives_its_comm_even_an_odd_one() {
        let comm = judge(42, stat("we (i) rd)", 'S', 0x40_0100), mapped);
        assert_eq!(comm.as_deref(), Ok("we (i) rd)"));
        assert_eq!(check(std::process::id()).map(|c| c.is_empty()), Ok(false));
    }

    #[test]
    fn a_missing_pid_is_no_such_process() {
        for e in [
            io::ErrorKind::NotFound.into(),
            io::Error::from_raw_os_error(libc::ESRCH),
        ] {
            let got = judge(42, Err(e), mapped).unwrap_err();
            assert_eq!(got, TargetError::NoSuchProcess { pid: 42 });
            assert_eq!(got.to_string(), "no process with pid 42");
        }
        assert_eq!(
            check(u32::MAX - 1),
            Err(TargetError::NoSuchProcess { pid: u32::MAX - 1 })
        );
    }

    #[test]
    fn a_kernel_thread_is_refused_by_its_flags() {
        let e = judge(42, stat("kworker/0:1", 'I', 0x0420_8060), || Ok(vec![])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pid 42 (kworker/0:1) is a kernel thread: it has no user memory to investigate"
        );
    }

    #[test]
    fn permission_denied_on_maps_is_not_an_exit() {
        for denied in [
            io::ErrorKind::PermissionDenied.into(),
            io::Error::from_raw_os_error(libc::EPERM),
        ] {
            let e = judge(42, stat("celery", 'S', 0x40_0100), maps_err(denied)).unwrap_err();
            assert!(matches!(e, TargetError::PermissionDenied { .. }), "{e:?}");
            let text = e.to_string();
            assert!(
                text.starts_with("pid 42 (celery): permission denied reading /proc/42/maps (")
                    && !text.contains("exited")
                    && !text.contains("gone"),
                "{text}"
            );
        }
    }

    #[test]
    fn an_exit_on_the_way_is_an_exit() {
        let exited = TargetError::Exited {
            pid: 42,
            comm: "celery".into(),
        };
        let gone = io::Error::from_raw_os_error(libc::ESRCH);
        assert_eq!(
            judge(42, stat("celery", 'S', 0), maps_err(gone)),
            Err(exited.clone())
        );
        assert_eq!(
            judge(42, stat("celery", 'Z', 0), mapped),
            Err(exited.clone())
        );
        assert_eq!(
            judge(42, stat("celery", 'R', 0), || Ok(vec![])),
            Err(exited)
        );
    }

    #[test]
    fn other_failures_keep_their_cause() {
        let eio = || io::Error::from_raw_os_error(libc::EIO);
        let e = judge(42, Err(eio()), mapped).unwrap_err().to_string();
        assert!(
            e.contains("/proc/42/stat") && e.contains("Input/output error"),
            "{e}"
        );
        let e = judge(42, stat("x", 'S', 0), maps_err(eio()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/proc/42/maps") && e.contains("Input/output error"),
            "{e}"
        );
        let e = judge(42, Ok("42 (x".into()), mapped)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected format"), "{e}");
    }
}
