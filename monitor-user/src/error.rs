//! The rule every error type of this crate follows: its message is complete. A cause is
//! written into the message and never also handed out as `source()` (no `#[source]`, no
//! `#[from]`, no field named `source`), so `{e}` in a log line, a /healthz note or an HTTP
//! answer tells the whole story, and main's `{e:#}`, which appends every `source()`, names
//! each cause once. Pure wrappers are `#[error(transparent)]`.

use std::{error::Error, fmt};

/// `e` followed by the causes it keeps in `source()`, each once. Library errors differ:
/// some put their cause in their message, some only in `source()`, some in both.
pub fn chain<'a>(e: &'a (dyn Error + 'static)) -> Chain<'a> {
    Chain(e)
}

pub struct Chain<'a>(&'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.0.to_string();
        let mut next = self.0.source();
        while let Some(cause) = next {
            let s = cause.to_string();
            if !s.is_empty() && !text.contains(&s) {
                text.push_str(": ");
                text.push_str(&s);
            }
            next = cause.source();
        }
        f.write_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct OnlySource(#[source] io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Both(#[source] io::Error);

    /// Every error of the crate that carries a cause, as main prints it (`{e:#}` through
    /// anyhow) and as a log line does (`{e}`): the cause exactly once in both.
    #[test]
    fn the_crates_errors_name_their_cause_once() {
        use std::path::PathBuf;

        use crate::{
            bpf::{BpfError, tracefs::TracefsError},
            host::kube::KubeError,
            http::{HttpError, web::WebConfigError},
            investigate::{
                flame::FlameError, growth::GrowthError, maps_snapshot::MapsError,
                out_dir::OutDirError, pprof::DecodeError, target::TargetError,
            },
            tasks::socket::SocketError,
        };

        let io = || io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
        let io_text = io().to_string();
        let map = || {
            aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_lookup_elem",
                io_error: io(),
            })
        };
        let path = PathBuf::from("/x");
        let errors: Vec<Box<dyn Error + Send + Sync>> = vec![
            Box::new(HttpError::Bind {
                addr: "192.0.2.1:9633".parse().unwrap(),
                cause: io(),
            }),
            Box::new(TracefsError::Read {
                path: path.clone(),
                cause: io(),
            }),
            Box::new(SocketError::Dir {
                path: path.clone(),
                cause: io(),
            }),
            Box::new(SocketError::Sys {
                path: path.clone(),
                call: "bind",
                cause: io(),
            }),
            Box::new(WebConfigError::Read {
                path: path.clone(),
                cause: io(),
            }),
            Box::new(KubeError::Token {
                path: path.clone(),
                cause: io(),
            }),
            Box::new(KubeError::Connect {
                addr: "10.0.0.1:443".into(),
                cause: io(),
            }),
            Box::new(BpfError::Map {
                name: "PROCS",
                cause: map(),
            }),
            Box::new(GrowthError::from(map())),
            Box::new(FlameError::from(io())),
            Box::new(DecodeError::from(io())),
            Box::new(MapsError::from_io(7, &io())),
            Box::new(TargetError::PermissionDenied {
                pid: 7,
                comm: "x".into(),
                maps: MapsError::from_io(7, &io::Error::from_raw_os_error(libc::EACCES)),
            }),
            Box::new(OutDirError::Io {
                dir: "/x".into(),
                what: "opening it".into(),
                cause: io(),
            }),
        ];
        for e in errors {
            let logged = e.to_string();
            let printed = format!("{:#}", anyhow::Error::from_boxed(e));
            let cause = if printed.contains("Permission denied") {
                "Permission denied (os error 13)".to_owned()
            } else {
                io_text.clone()
            };
            assert_eq!(printed.matches(&cause).count(), 1, "{printed}");
            assert_eq!(logged.matches(&cause).count(), 1, "{logged}");
        }
    }

    #[test]
    fn every_cause_appears_once() {
        let gone = || io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(
            chain(&OnlySource(gone())).to_string(),
            "outer: No such file or directory (os error 2)"
        );
        assert_eq!(
            chain(&Both(gone())).to_string(),
            "outer: No such file or directory (os error 2)"
        );
        assert_eq!(
            chain(&gone()).to_string(),
            "No such file or directory (os error 2)"
        );
    }
}
