//! Which allocator a process uses, and where its entry points are.
//!
//! Every executable object mapped into the process that defines `malloc` is an allocator:
//! glibc always, plus jemalloc or tcmalloc when they are linked or preloaded, or the program
//! itself when it carries its own. Each gets probes on the entry points it defines; objects
//! that only call an allocator (libstdc++'s `operator new` calls `malloc`) get none, so no
//! call is counted twice. Aliases (glibc's `memalign`/`aligned_alloc`, tcmalloc's
//! `malloc`/`tc_malloc`) share an address and get one probe.

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
};

use monitor_common::stacks::AllocKind;
use object::{Object, ObjectSegment, ObjectSymbol};

use super::{maps_snapshot::Mapping, probe_point};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Returns a new block: an entry probe and a return probe.
    Allocate(AllocKind),
    /// Takes a block in its first argument.
    Free,
}

/// Entry points, by name. The first name at an address names its probe.
const ENTRY_POINTS: &[(&str, Role)] = &[
    ("malloc", Role::Allocate(AllocKind::Malloc)),
    ("calloc", Role::Allocate(AllocKind::Calloc)),
    ("realloc", Role::Allocate(AllocKind::Realloc)),
    ("posix_memalign", Role::Allocate(AllocKind::PosixMemalign)),
    ("aligned_alloc", Role::Allocate(AllocKind::Memalign)),
    ("memalign", Role::Allocate(AllocKind::Memalign)),
    ("valloc", Role::Allocate(AllocKind::Malloc)),
    ("pvalloc", Role::Allocate(AllocKind::Malloc)),
    ("free", Role::Free),
    // jemalloc's non-standard API
    ("mallocx", Role::Allocate(AllocKind::Malloc)),
    ("rallocx", Role::Allocate(AllocKind::Realloc)),
    ("dallocx", Role::Free),
    ("sdallocx", Role::Free),
    // tcmalloc's (gperftools) own names
    ("tc_malloc", Role::Allocate(AllocKind::Malloc)),
    ("tc_calloc", Role::Allocate(AllocKind::Calloc)),
    ("tc_realloc", Role::Allocate(AllocKind::Realloc)),
    ("tc_memalign", Role::Allocate(AllocKind::Memalign)),
    (
        "tc_posix_memalign",
        Role::Allocate(AllocKind::PosixMemalign),
    ),
    ("tc_new", Role::Allocate(AllocKind::Malloc)),
    ("tc_newarray", Role::Allocate(AllocKind::Malloc)),
    ("tc_free", Role::Free),
    ("tc_free_sized", Role::Free),
    ("tc_delete", Role::Free),
    ("tc_deletearray", Role::Free),
    ("tc_delete_sized", Role::Free),
    ("tc_deletearray_sized", Role::Free),
    // C++ operators, where the allocator defines them itself (tcmalloc, jemalloc)
    ("_Znwm", Role::Allocate(AllocKind::Malloc)),
    ("_Znam", Role::Allocate(AllocKind::Malloc)),
    ("_ZdlPv", Role::Free),
    ("_ZdaPv", Role::Free),
    ("_ZdlPvm", Role::Free),
    ("_ZdaPvm", Role::Free),
    // The `python` family: CPython's object and memory APIs, in the executable or in
    // libpython. pymalloc serves small blocks from its own arenas, which never reach malloc;
    // large ones it passes on to malloc, and the block is then recorded once, at the address
    // both return. PyMem_Raw* are plain malloc and are left to it.
    ("PyObject_Malloc", Role::Allocate(AllocKind::Malloc)),
    ("PyObject_Calloc", Role::Allocate(AllocKind::Calloc)),
    ("PyObject_Realloc", Role::Allocate(AllocKind::Realloc)),
    ("PyObject_Free", Role::Free),
    ("PyMem_Malloc", Role::Allocate(AllocKind::Malloc)),
    ("PyMem_Calloc", Role::Allocate(AllocKind::Calloc)),
    ("PyMem_Realloc", Role::Allocate(AllocKind::Realloc)),
    ("PyMem_Free", Role::Free),
];

/// Symbols that mark an object as an allocator.
const MARKERS: &[&str] = &["malloc", "je_malloc", "tc_malloc", "PyObject_Malloc"];

/// One probe to attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSite {
    pub symbol: String,
    pub role: Role,
    /// Offset in the file, as uprobes take it.
    pub file_offset: u64,
    /// Bytes after `file_offset` the entry probe skips (see probe_point.rs); free-like only.
    pub entry_skip: u64,
}

/// An allocator object of the process and its probes.
#[derive(Clone, Debug)]
pub struct Allocator {
    /// Path as the process maps it.
    pub module: String,
    /// Where this process's view of the file can be opened (through /proc/PID/root, so
    /// objects inside containers work).
    pub open_path: PathBuf,
    pub sites: Vec<ProbeSite>,
}

#[derive(Debug, thiserror::Error)]
pub enum AllocatorError {
    #[error("no allocator found in pid {pid}'s mappings (no mapped object defines malloc)")]
    NoneFound { pid: u32 },
}

/// The allocators of process `pid`, from its mappings.
pub fn discover(pid: u32, mappings: &[Mapping]) -> Result<Vec<Allocator>, AllocatorError> {
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    for m in mappings.iter().filter(|m| m.executable) {
        let Some(module) = &m.path else { continue };
        if !seen.insert(module.clone()) {
            continue;
        }
        let open_path = m.open_path(pid);
        let Ok(data) = std::fs::read(&open_path) else {
            log::debug!("cannot read {}: skipped", open_path.display());
            continue;
        };
        if let Some(sites) = probe_sites(&data, module) {
            found.push(Allocator {
                module: module.clone(),
                open_path,
                sites,
            });
        }
    }
    if found.is_empty() {
        return Err(AllocatorError::NoneFound { pid });
    }
    Ok(found)
}

/// The probe sites of an ELF object that defines an allocator, or None.
pub fn probe_sites(data: &[u8], module: &str) -> Option<Vec<ProbeSite>> {
    let file = object::File::parse(data).ok()?;
    let mut by_name: BTreeMap<String, u64> = BTreeMap::new();
    for sym in file.dynamic_symbols().chain(file.symbols()) {
        if sym.is_undefined() || sym.kind() != object::SymbolKind::Text || sym.address() == 0 {
            continue;
        }
        if let Ok(name) = sym.name() {
            // Versioned names (`malloc@@GLIBC_2.2.5`) come from some symbol tables.
            let name = name.split('@').next().unwrap_or(name);
            by_name.entry(name.to_owned()).or_insert(sym.address());
        }
    }
    if !MARKERS.iter().any(|m| by_name.contains_key(*m)) {
        return None;
    }
    let jemalloc_prefixed = !by_name.contains_key("malloc") && by_name.contains_key("je_malloc");
    let mut addresses = HashSet::new();
    let mut sites = Vec::new();
    for (name, role) in ENTRY_POINTS {
        let symbol = if jemalloc_prefixed {
            format!("je_{name}")
        } else {
            (*name).to_owned()
        };
        let Some(&address) = by_name.get(&symbol) else {
            continue;
        };
        if !addresses.insert(address) {
            continue;
        }
        let Some((file_offset, code)) = file_offset(&file, address) else {
            log::debug!("{module}: {symbol} at {address:#x} is in no loaded segment");
            continue;
        };
        let entry_skip = match role {
            Role::Free => probe_point::free_probe_offset(code),
            Role::Allocate(_) => 0,
        };
        sites.push(ProbeSite {
            symbol,
            role: *role,
            file_offset,
            entry_skip,
        });
    }
    Some(sites)
}

/// File offset of a virtual address, and the bytes from there to the end of its segment
/// (at most 32: enough to decode the first instructions).
fn file_offset<'d>(file: &object::File<'d>, address: u64) -> Option<(u64, &'d [u8])> {
    file.segments().find_map(|seg| {
        let (start, size) = (seg.address(), seg.size());
        if address < start || address >= start + size {
            return None;
        }
        let (offset, _) = seg.file_range();
        let data = seg.data().ok()?;
        let rel = usize::try_from(address - start).ok()?;
        let code = data.get(rel..(rel + 32).min(data.len()))?;
        Some((offset + address - start, code))
    })
}

/// Basename of a module path, for messages.
pub fn short_name(module: &str) -> &str {
    Path::new(module)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(module)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libc() -> Option<(String, Vec<u8>)> {
        [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/usr/lib64/libc.so.6",
            "/lib64/libc.so.6",
        ]
        .iter()
        .find_map(|p| Some((p.to_string(), std::fs::read(p).ok()?)))
    }

    #[test]
    fn glibc_is_an_allocator_with_one_probe_per_address() {
        let Some((path, data)) = libc() else {
            panic!("no libc.so.6 found on this host");
        };
        let sites = probe_sites(&data, &path).expect("libc defines malloc");
        let names: Vec<_> = sites.iter().map(|s| s.symbol.as_str()).collect();
        for want in ["malloc", "calloc", "realloc", "free", "posix_memalign"] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        // glibc's memalign is an alias of aligned_alloc: one probe.
        assert!(!(names.contains(&"aligned_alloc") && names.contains(&"memalign")));
        let offsets: HashSet<_> = sites.iter().map(|s| s.file_offset).collect();
        assert_eq!(offsets.len(), sites.len());
        let free = sites.iter().find(|s| s.symbol == "free").unwrap();
        assert_eq!(free.role, Role::Free);
        let malloc = sites.iter().find(|s| s.symbol == "malloc").unwrap();
        assert_eq!(malloc.entry_skip, 0);
    }

    #[test]
    fn cpython_is_an_allocator_of_the_python_family() {
        let path = "/usr/bin/python3.11";
        let Ok(data) = std::fs::read(path) else {
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true"),
                "CI=true: {path} (package python3.11) is missing"
            );
            eprintln!("skipped: no {path}");
            return;
        };
        // Stripped and statically linked with libpython: its dynamic symbols still name the
        // C API.
        let sites = probe_sites(&data, path).expect("python3.11 defines PyObject_Malloc");
        let names: Vec<_> = sites.iter().map(|s| s.symbol.as_str()).collect();
        for want in [
            "PyObject_Malloc",
            "PyObject_Realloc",
            "PyObject_Free",
            "PyMem_Malloc",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        assert!(!names.contains(&"malloc"), "{names:?}");
    }

    #[test]
    fn an_object_without_malloc_is_not_an_allocator() {
        let me = std::fs::read("/proc/self/exe").unwrap();
        assert!(probe_sites(&me, "self").is_none());
        assert!(probe_sites(b"not an elf", "junk").is_none());
    }
}
