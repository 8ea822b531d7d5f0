//! Where a target process's memory-call wrappers are: the libc it has mapped, or, for a static
//! binary, the executable itself when it carries the symbols. Per-thread accounting and growth
//! sampling put uprobes there, on that process alone.
//!
//! One object per process gets probes. Another object that defines `mmap` (a sanitizer's
//! interceptor, a preloaded shim) forwards to libc, and probing both would count each call
//! twice.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use object::{Object, ObjectSegment, ObjectSymbol};
use procfs::process::{MMPermissions, MMapPath, Process};

/// The wrappers found, and whether probing can do without each.
pub const WRAPPERS: [(&str, Required); 5] = [
    ("mmap", Required::Yes),
    ("munmap", Required::Yes),
    ("mremap", Required::No),
    ("brk", Required::No),
    ("madvise", Required::No),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Required {
    Yes,
    No,
}

/// Parsed objects kept, keyed by device and inode: a worker pool maps one libc.
const CACHE_ENTRIES: usize = 32;

/// The object to probe in one process, and the file offsets of its wrappers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// The object as the process maps it (for messages).
    pub module: String,
    /// Where the process's copy can be opened from the agent (through /proc, so objects in
    /// other mount namespaces work).
    pub open_path: PathBuf,
    /// (wrapper, file offset), in [`WRAPPERS`] order; wrappers the object lacks are left out.
    pub offsets: Offsets,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SiteError {
    #[error("pid {0} is gone")]
    Gone(u32),
    #[error("cannot read /proc/{pid}/maps: {detail} (root or CAP_SYS_PTRACE is needed)")]
    Permission { pid: u32, detail: String },
    #[error(
        "pid {pid} maps no libc and its executable defines no mmap/munmap (a stripped static \
         binary, or a runtime such as Go's that makes system calls itself): its memory calls \
         cannot be probed"
    )]
    NoWrappers { pid: u32 },
    #[error("cannot read pid {pid}'s {module}: {detail}")]
    Unreadable {
        pid: u32,
        module: String,
        detail: String,
    },
}

/// (wrapper, file offset) of an object's wrappers.
type Offsets = Vec<(&'static str, u64)>;

/// Offsets by (device, inode), so the processes of a pool share one parse; None for an
/// object that lacks a required wrapper.
#[derive(Default)]
pub struct Resolver {
    cache: HashMap<(u64, u64), Option<Offsets>>,
}

impl Resolver {
    /// Where to probe `pid`: its libc if it maps one, else the first executable object that
    /// defines the required wrappers (a static binary).
    pub fn site(&mut self, pid: u32) -> Result<Site, SiteError> {
        let objects = executable_objects(pid)?;
        let (libc, others): (Vec<_>, Vec<_>) = objects.into_iter().partition(|(m, _)| is_libc(m));
        let mut unreadable = None;
        for (module, open_path) in libc.into_iter().chain(others) {
            match self.offsets(&open_path) {
                Ok(Some(offsets)) => {
                    return Ok(Site {
                        module,
                        open_path,
                        offsets,
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    unreadable.get_or_insert(SiteError::Unreadable {
                        pid,
                        module,
                        detail: e.to_string(),
                    });
                }
            }
        }
        if !crate::host::proc::exists(pid) {
            return Err(SiteError::Gone(pid));
        }
        Err(unreadable.unwrap_or(SiteError::NoWrappers { pid }))
    }

    fn offsets(&mut self, path: &Path) -> std::io::Result<Option<Offsets>> {
        let meta = std::fs::metadata(path)?;
        let key = (meta.dev(), meta.ino());
        if let Some(hit) = self.cache.get(&key) {
            return Ok(hit.clone());
        }
        // Read on demand: only the headers and symbol tables are, never the whole file (a
        // target chooses what it maps, and the agent's memory is bounded).
        let cache = object::ReadCache::new(std::fs::File::open(path)?);
        let found = wrapper_offsets(&cache);
        if self.cache.len() >= CACHE_ENTRIES {
            self.cache.clear();
        }
        self.cache.insert(key, found.clone());
        Ok(found)
    }
}

/// Whether a mapped path is a C library: glibc's `libc.so.6` (or an old `libc-2.x.so`), or
/// musl's dynamic loader, which is its libc.
fn is_libc(module: &str) -> bool {
    let name = module.rsplit('/').next().unwrap_or(module);
    name.starts_with("libc.so") || name.starts_with("libc-") || name.starts_with("ld-musl-")
}

/// The file-backed executable mappings of `pid`, one per object, in address order.
fn executable_objects(pid: u32) -> Result<Vec<(String, PathBuf)>, SiteError> {
    let sort = |e: procfs::ProcError| match e {
        _ if !crate::host::proc::exists(pid) => SiteError::Gone(pid),
        procfs::ProcError::NotFound(_) => SiteError::Gone(pid),
        procfs::ProcError::PermissionDenied(_) => SiteError::Permission {
            pid,
            detail: e.to_string(),
        },
        e => SiteError::Unreadable {
            pid,
            module: "maps".into(),
            detail: e.to_string(),
        },
    };
    let maps = Process::new(pid as i32)
        .and_then(|p| p.maps())
        .map_err(sort)?;
    let mut seen = Vec::<String>::new();
    let mut out = Vec::new();
    for m in maps {
        if !m.perms.contains(MMPermissions::EXECUTE) {
            continue;
        }
        let MMapPath::Path(path) = &m.pathname else {
            continue;
        };
        let module = path.to_string_lossy().into_owned();
        if seen.contains(&module) {
            continue;
        }
        seen.push(module.clone());
        // map_files sees through mount namespaces and survives the file's replacement.
        let by_range = PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            m.address.0, m.address.1
        ));
        let open_path = if by_range.exists() {
            by_range
        } else {
            PathBuf::from(format!("/proc/{pid}/root{module}"))
        };
        out.push((module, open_path));
    }
    Ok(out)
}

/// File offsets of the wrappers an ELF object defines, or None when it lacks a required one.
pub fn wrapper_offsets<'d, R: object::ReadRef<'d>>(data: R) -> Option<Offsets> {
    let file = object::File::parse(data).ok()?;
    let mut by_name: HashMap<&str, u64> = HashMap::new();
    for sym in file.dynamic_symbols().chain(file.symbols()) {
        if sym.is_undefined() || sym.kind() != object::SymbolKind::Text || sym.address() == 0 {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        // Versioned names (`mmap@@GLIBC_2.2.5`) come from some symbol tables.
        let name = name.split('@').next().unwrap_or(name);
        if WRAPPERS.iter().any(|(w, _)| *w == name) {
            by_name.entry(name).or_insert(sym.address());
        }
    }
    let mut offsets = Vec::new();
    for (wrapper, required) in WRAPPERS {
        match by_name.get(wrapper).and_then(|a| file_offset(&file, *a)) {
            Some(offset) => offsets.push((wrapper, offset)),
            None if required == Required::Yes => return None,
            None => {}
        }
    }
    Some(offsets)
}

/// File offset of a virtual address, as uprobes take it.
fn file_offset<'d, R: object::ReadRef<'d>>(
    file: &object::File<'d, R>,
    address: u64,
) -> Option<u64> {
    file.segments().find_map(|seg| {
        let (start, size) = (seg.address(), seg.size());
        (address >= start && address < start + size).then(|| seg.file_range().0 + address - start)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_probed_in_its_libc_at_every_wrapper() {
        let site = Resolver::default()
            .site(std::process::id())
            .expect("the test binary maps glibc");
        assert!(is_libc(&site.module), "{}", site.module);
        let names: Vec<_> = site.offsets.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["mmap", "munmap", "mremap", "brk", "madvise"]);
        // Distinct functions at distinct places.
        let mut offs: Vec<_> = site.offsets.iter().map(|(_, o)| *o).collect();
        offs.sort_unstable();
        offs.dedup();
        assert_eq!(offs.len(), 5);
    }

    #[test]
    fn an_object_without_mmap_has_no_sites() {
        // The test binary calls mmap through libc but defines none itself.
        let me = std::fs::read("/proc/self/exe").unwrap();
        assert_eq!(wrapper_offsets(me.as_slice()), None);
    }

    #[test]
    fn a_pid_that_does_not_exist_is_gone() {
        // Above the largest pid_max the kernel accepts (4M).
        let pid = 1 << 23;
        assert_eq!(Resolver::default().site(pid), Err(SiteError::Gone(pid)));
    }

    #[test]
    fn libc_names() {
        assert!(is_libc("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(is_libc("/lib/ld-musl-x86_64.so.1"));
        assert!(!is_libc("/usr/lib/x86_64-linux-gnu/libcrypto.so.3"));
        assert!(!is_libc("/usr/lib/libcap.so.2"));
    }
}
