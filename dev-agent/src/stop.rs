//! Stopping a child politely first: the agent detaches its programs and removes its task
//! socket on SIGTERM, which a SIGKILL would leave to the kernel (programs) or to nobody
//! (the socket file).

use std::{
    process::{Child, ExitStatus},
    time::{Duration, Instant},
};

const POLL: Duration = Duration::from_millis(20);

/// How [`stop`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// It had exited before it was asked to.
    AlreadyExited(ExitStatus),
    /// It exited after SIGTERM.
    Exited(ExitStatus),
    /// It outlived the grace period and was killed.
    Killed,
}

/// SIGTERM, up to `grace` to exit, then SIGKILL; reaped in every case.
pub fn stop(child: &mut Child, grace: Duration) -> Stopped {
    if let Ok(Some(status)) = child.try_wait() {
        return Stopped::AlreadyExited(status);
    }
    if let Some(status) = terminate(child, grace) {
        return Stopped::Exited(status);
    }
    let _ = child.kill();
    let _ = child.wait();
    Stopped::Killed
}

/// SIGTERM, then up to `within` for `child` to exit: its status, or `None` while it runs.
pub(crate) fn terminate(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    // Once reaped, its pid may belong to another process: never signal it then.
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    // SAFETY: a plain signal to our own child, which is not reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn sigterm_first_then_kill() {
        let mut polite = Command::new("sleep").arg("30").spawn().unwrap();
        let stopped = stop(&mut polite, Duration::from_secs(5));
        assert!(
            matches!(stopped, Stopped::Exited(s) if s.code().is_none()),
            "{stopped:?}"
        );
        assert!(matches!(
            stop(&mut polite, Duration::ZERO),
            Stopped::AlreadyExited(_)
        ));

        // SIGTERM ignored (the disposition survives exec): it stays until it is killed.
        let mut stubborn = Command::new("sh")
            .args(["-c", "trap '' TERM; exec sleep 30"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            stop(&mut stubborn, Duration::from_millis(200)),
            Stopped::Killed
        );
        assert!(stubborn.try_wait().unwrap().is_some(), "reaped");
    }
}
