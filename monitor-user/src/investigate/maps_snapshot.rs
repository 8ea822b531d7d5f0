//! The target's memory mappings, kept from the last time they could be read, so addresses
//! can still be placed in their modules after the process has exited.

use std::{io, path::PathBuf};

use procfs::{
    FromBufRead as _,
    process::{MMPermissions, MMapPath, MemoryMaps},
};

/// The name /proc/PID/maps gives the page where the kernel runs each probed instruction.
pub const UPROBES_AREA: &str = "[uprobes]";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Offset in the file of `start`.
    pub offset: u64,
    pub executable: bool,
    /// The mapped file, or a pseudo-path like `[vdso]`; None for anonymous memory.
    pub path: Option<String>,
    /// The file was deleted (or replaced) after it was mapped.
    pub deleted: bool,
}

impl Mapping {
    /// Where this process's copy of the file can be opened: `map_files` sees through mount
    /// namespaces and survives deletion; /proc/PID/root is the fallback.
    pub fn open_path(&self, pid: u32) -> PathBuf {
        let by_range = PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            self.start, self.end
        ));
        if by_range.exists() {
            return by_range;
        }
        let path = self.path.as_deref().unwrap_or_default();
        PathBuf::from(format!("/proc/{pid}/root{path}"))
    }

    pub fn file_offset(&self, address: u64) -> u64 {
        address - self.start + self.offset
    }
}

/// Why a process's mappings could not be read. Gone and denied are told apart: a process
/// leakscope may not look into has not exited.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapsError {
    #[error("pid {pid} is gone (/proc/{pid}/maps: {detail})")]
    Gone { pid: u32, detail: String },
    #[error(
        "permission denied reading /proc/{pid}/maps ({detail}): leakscope needs root or \
         CAP_SYS_PTRACE to look into another user's process, and a security module may refuse \
         even that"
    )]
    PermissionDenied { pid: u32, detail: String },
    #[error("cannot read /proc/{pid}/maps: {detail}")]
    Unreadable { pid: u32, detail: String },
}

impl MapsError {
    /// Sorts a failed open or read of `/proc/PID/maps`: ENOENT when the pid is free, ESRCH
    /// when the process exits between open and read, EACCES/EPERM when ptrace access is
    /// refused.
    pub fn from_io(pid: u32, e: &io::Error) -> Self {
        let detail = e.to_string();
        if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) {
            Self::Gone { pid, detail }
        } else if e.kind() == io::ErrorKind::PermissionDenied {
            Self::PermissionDenied { pid, detail }
        } else {
            Self::Unreadable { pid, detail }
        }
    }
}

/// Mappings of `pid`, in address order. A process without user memory (a kernel thread, or
/// one past the point of exit where its address space is released) has none.
pub fn read(pid: u32) -> Result<Vec<Mapping>, MapsError> {
    let path = format!("/proc/{pid}/maps");
    // Read whole first, so an I/O error keeps its errno for `from_io` instead of being
    // folded into procfs's parse errors.
    let text = std::fs::read(&path).map_err(|e| MapsError::from_io(pid, &e))?;
    let maps = MemoryMaps::from_buf_read(text.as_slice()).map_err(|e| MapsError::Unreadable {
        pid,
        detail: e.to_string(),
    })?;
    Ok(maps
        .into_iter()
        .map(|m| {
            let (path, deleted) = match m.pathname {
                MMapPath::Path(p) => {
                    let s = p.to_string_lossy().into_owned();
                    match s.strip_suffix(" (deleted)") {
                        Some(stripped) => (Some(stripped.to_owned()), true),
                        None => (Some(s), false),
                    }
                }
                MMapPath::Vdso => (Some("[vdso]".to_owned()), false),
                // The kernel's page of out-of-line instruction slots for uprobes.
                MMapPath::Other(name) if name == UPROBES_AREA => (Some(name), false),
                _ => (None, false),
            };
            Mapping {
                start: m.address.0,
                end: m.address.1,
                offset: m.offset,
                executable: m.perms.contains(MMPermissions::EXECUTE),
                path,
                deleted,
            }
        })
        .collect())
}

/// The mapping holding `address`.
pub fn find(mappings: &[Mapping], address: u64) -> Option<&Mapping> {
    position(mappings, address).map(|i| &mappings[i])
}

/// Index of the mapping holding `address`.
pub fn position(mappings: &[Mapping], address: u64) -> Option<usize> {
    let i = mappings.partition_point(|m| m.end <= address);
    mappings.get(i).filter(|m| m.start <= address).map(|_| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_code_is_found_in_an_executable_file_mapping() {
        let maps = read(std::process::id()).unwrap();
        let here = own_code_is_found_in_an_executable_file_mapping as *const () as usize as u64;
        let m = find(&maps, here).expect("this function is mapped");
        assert!(m.executable);
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(m.path.as_deref(), exe.to_str());
        assert!(m.file_offset(here) < std::fs::metadata(&exe).unwrap().len());
        assert!(find(&maps, 0).is_none());
    }

    #[test]
    fn a_missing_process_is_gone_and_named() {
        let e = read(u32::MAX - 1).unwrap_err();
        assert!(
            matches!(e, MapsError::Gone { pid, .. } if pid == u32::MAX - 1),
            "{e}"
        );
        assert!(e.to_string().contains(&(u32::MAX - 1).to_string()), "{e}");
    }

    #[test]
    fn errno_says_gone_or_denied_and_never_confuses_them() {
        let from = |e: io::Error| MapsError::from_io(7, &e);
        assert!(matches!(
            from(io::ErrorKind::NotFound.into()),
            MapsError::Gone { pid: 7, .. }
        ));
        assert!(matches!(
            from(io::Error::from_raw_os_error(libc::ESRCH)),
            MapsError::Gone { pid: 7, .. }
        ));
        for denied in [
            io::ErrorKind::PermissionDenied.into(),
            io::Error::from_raw_os_error(libc::EACCES),
            io::Error::from_raw_os_error(libc::EPERM),
        ] {
            let e = from(denied);
            assert!(
                matches!(e, MapsError::PermissionDenied { pid: 7, .. }),
                "{e:?}"
            );
            let text = e.to_string();
            assert!(
                text.starts_with("permission denied reading /proc/7/maps (")
                    && !text.contains("gone"),
                "{text}"
            );
        }
        let e = from(io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(e, MapsError::Unreadable { pid: 7, .. }), "{e:?}");
        assert!(e.to_string().contains("Input/output error"), "{e}");
    }
}
