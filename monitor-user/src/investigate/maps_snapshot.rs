//! The target's memory mappings, kept from the last time they could be read, so addresses
//! can still be placed in their modules after the process has exited.

use std::path::PathBuf;

use procfs::process::{MMPermissions, MMapPath, Process};

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

#[derive(Debug, thiserror::Error)]
#[error("cannot read /proc/{pid}/maps: {source}")]
pub struct MapsError {
    pid: u32,
    source: procfs::ProcError,
}

/// Mappings of `pid`, in address order.
pub fn read(pid: u32) -> Result<Vec<Mapping>, MapsError> {
    let err = |source| MapsError { pid, source };
    let maps = Process::new(pid as i32)
        .and_then(|p| p.maps())
        .map_err(err)?;
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
    fn a_missing_process_is_an_error_naming_it() {
        let e = read(u32::MAX - 1).unwrap_err().to_string();
        assert!(e.contains(&(u32::MAX - 1).to_string()), "{e}");
    }
}
