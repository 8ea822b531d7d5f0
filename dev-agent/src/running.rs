//! A started agent: where it serves, its log, and stopping it.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, ExitStatus},
    time::Duration,
};

use crate::stop::{Stopped, stop, terminate};

/// What dropping an [`Agent`] gives it to exit after SIGTERM before it is killed.
const DROP_GRACE: Duration = Duration::from_secs(5);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `leakscope run`, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Agent {
    pub(crate) fn new(child: Child, addr: SocketAddr, log: PathBuf) -> Self {
        Self { child, addr, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where a client on this host reaches the agent.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the agent has logged so far (empty if the log cannot be read).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        crate::launch::tail(&self.log, lines)
    }

    /// The agent's exit status once it has exited; it is reaped then.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// GET over plain HTTP: status and body, whatever the status. Each request has a
    /// connection of its own, closed after it: a kept-alive one would hold one of the
    /// agent's per-address connection slots, which the connection-limit tests count.
    pub fn get(&self, path: &str) -> Result<(u16, String), ureq::Error> {
        let client = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(HTTP_TIMEOUT))
            .build()
            .new_agent();
        let mut resp = client.get(&self.url(path)).call()?;
        let status = resp.status().as_u16();
        Ok((status, resp.body_mut().read_to_string()?))
    }

    /// SIGTERM, then up to `within` for the agent to exit by itself: its status, or `None`
    /// while it still runs.
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        terminate(&mut self.child, within)
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; reaped in every case.
    pub fn stop(&mut self, grace: Duration) -> Stopped {
        stop(&mut self.child, grace)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop(DROP_GRACE);
    }
}
