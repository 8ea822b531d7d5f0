//! What to start, and waiting until it serves.

use std::{
    ffi::{OsStr, OsString},
    fs::File,
    io,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::running::Agent;

/// Loading and attaching the programs takes a few seconds; more than this is a failure.
const READY_WITHIN: Duration = Duration::from_secs(30);
const READY_POLL: Duration = Duration::from_millis(50);
/// Lines of the agent's log quoted in a [`StartError`]: a start-up log fits.
const LOG_LINES: usize = 40;

/// A loopback port nobody listens on now (the agent binds it a moment later).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `leakscope run` with `--listen` and the caller's arguments.
#[derive(Clone, Debug)]
pub struct Launch {
    bin: PathBuf,
    args: Vec<OsString>,
    listen: Option<SocketAddr>,
    log: Option<PathBuf>,
    ready_within: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no free loopback port: {0}")]
    Port(io::Error),
    #[error("cannot create the agent log {}: {source}", path.display())]
    Log { path: PathBuf, source: io::Error },
    #[error("cannot start {command}: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("cannot wait for the agent: {0}")]
    Wait(io::Error),
    #[error("the agent exited at start ({status}); {}:\n{log}", path.display())]
    Exited {
        status: ExitStatus,
        path: PathBuf,
        log: String,
    },
    #[error("the agent did not serve on {addr} within {within:?}; {}:\n{log}", path.display())]
    NotServing {
        addr: SocketAddr,
        within: Duration,
        path: PathBuf,
        log: String,
    },
}

impl Launch {
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        Self {
            bin: bin.into(),
            args: Vec::new(),
            listen: None,
            log: None,
            ready_within: READY_WITHIN,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I>(mut self, args: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// `--listen` [default: a free loopback port]. An unspecified address (`0.0.0.0`) is
    /// served everywhere and reached, by [`Agent::get`], on loopback.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Where the agent's stderr goes [default: `leakscope-agent-PORT.log` in the temp dir].
    pub fn log(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    /// Starts the agent and returns once `/healthz` answers (any status: the agent serves).
    pub fn start(self) -> Result<Agent, StartError> {
        let listen = match self.listen {
            Some(addr) => addr,
            None => SocketAddr::from(([127, 0, 0, 1], free_port().map_err(StartError::Port)?)),
        };
        let addr = reachable(listen);
        let log = self.log.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("leakscope-agent-{}.log", listen.port()))
        });
        let log_file = File::create(&log).map_err(|source| StartError::Log {
            path: log.clone(),
            source,
        })?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("run")
            .arg("--listen")
            .arg(listen.to_string())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = cmd.spawn().map_err(|source| StartError::Spawn {
            command: format!("{cmd:?}"),
            source,
        })?;
        let mut agent = Agent::new(child, addr, log);
        let deadline = Instant::now() + self.ready_within;
        loop {
            if let Some(status) = agent.try_wait().map_err(StartError::Wait)? {
                return Err(StartError::Exited {
                    status,
                    log: agent.log_tail(LOG_LINES),
                    path: agent.log_path().to_path_buf(),
                });
            }
            if agent.get("/healthz").is_ok() {
                return Ok(agent);
            }
            if Instant::now() >= deadline {
                return Err(StartError::NotServing {
                    addr,
                    within: self.ready_within,
                    log: agent.log_tail(LOG_LINES),
                    path: agent.log_path().to_path_buf(),
                });
            }
            std::thread::sleep(READY_POLL);
        }
    }
}

/// The address a client on this host uses to reach an agent listening on `listen`.
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    }
}

/// The last `lines` lines of a file, empty when it cannot be read.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_is_reached_on_loopback() {
        let any: SocketAddr = "0.0.0.0:9633".parse().unwrap();
        assert_eq!(reachable(any), "127.0.0.1:9633".parse().unwrap());
        let any6: SocketAddr = "[::]:9633".parse().unwrap();
        assert_eq!(reachable(any6), "[::1]:9633".parse().unwrap());
        let given: SocketAddr = "127.0.0.2:80".parse().unwrap();
        assert_eq!(reachable(given), given);
    }

    #[test]
    fn an_agent_that_exits_at_start_fails_with_its_log() {
        // `false` stands in for an agent refusing its arguments: it exits before serving.
        let log = std::env::temp_dir().join(format!("dev-agent-test-{}.log", std::process::id()));
        let err = Launch::new("false")
            .log(&log)
            .start()
            .expect_err("no agent");
        let _ = std::fs::remove_file(&log);
        assert!(
            matches!(&err, StartError::Exited { status, .. } if !status.success()),
            "{err}"
        );
        assert!(err.to_string().contains("exited at start"), "{err}");
    }

    #[test]
    fn an_agent_that_never_serves_fails_with_its_log() {
        // A stand-in that logs a line and then waits without ever listening.
        let script = std::env::temp_dir().join(format!("dev-agent-mute-{}", std::process::id()));
        // Written by a child process: a write fd held here would leak into whatever another
        // test thread forks at that moment, and exec of the script would fail with ETXTBSY.
        let written = Command::new("sh")
            .arg("-c")
            .arg(r#"printf '#!/bin/sh\necho loading probes >&2\nexec sleep 30\n' > "$1" && chmod 755 "$1""#)
            .arg("sh")
            .arg(&script)
            .status()
            .unwrap();
        assert!(written.success());
        let log = script.with_extension("log");
        let mut launch = Launch::new(&script).log(&log);
        launch.ready_within = Duration::from_millis(300);
        let err = launch.start().expect_err("no agent");
        let _ = std::fs::remove_file(&script);
        let _ = std::fs::remove_file(&log);
        match err {
            StartError::NotServing { log, .. } => assert_eq!(log, "loading probes"),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let path = std::env::temp_dir().join(format!("dev-agent-tail-{}", std::process::id()));
        std::fs::write(&path, "a\nb\nc\n").unwrap();
        assert_eq!(tail(&path, 2), "b\nc");
        assert_eq!(tail(&path, 10), "a\nb\nc");
        let _ = std::fs::remove_file(&path);
        assert_eq!(tail(&path, 2), "");
    }
}
