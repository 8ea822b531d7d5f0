//! Is a process CPython, which version, and where is its `_PyRuntime`: the symbols come from
//! the ELF of the executable or of `libpython3.X.so` (their dynamic symbol tables export the C
//! API even when stripped), the addresses from the process's mappings, and the version from
//! `Py_Version` read in the process's own memory. The layout is a table for 3.11 and 3.12,
//! and from 3.13 on what the interpreter's `_Py_DebugOffsets` say.

use std::collections::HashSet;

use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

use super::{
    debug_offsets,
    layout::{self, Layout},
    memory::Memory,
};
use crate::investigate::maps_snapshot::Mapping;

/// A CPython interpreter found in a process.
#[derive(Clone, Debug)]
pub struct Interpreter {
    /// `major.minor.micro`.
    pub version: String,
    /// The module that defines `_PyRuntime` (the executable or libpython).
    pub module: String,
    /// `_PyRuntime`'s address in the process.
    pub runtime: u64,
    pub layout: Layout,
}

#[derive(Debug)]
pub enum Detected {
    /// No module of the process defines `_PyRuntime`.
    NotPython,
    /// CPython without a layout (before 3.11, which has no `Py_Version`; a version after
    /// 3.13; debug offsets that do not hold).
    Unsupported(String),
    Found(Interpreter),
}

/// Largest module read to look for CPython's symbols: a bound on what a process can make
/// the agent read by mapping a huge file under a Python-like name.
const MAX_MODULE_BYTES: u64 = 512 << 20;

/// Looks for CPython in `pid`'s modules: the executable (whatever its name: uWSGI or
/// another embedder may link libpython statically) and any `python*`/`libpython*` object.
pub fn detect(pid: u32, mappings: &[Mapping]) -> Detected {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let mut seen = HashSet::new();
    for m in mappings {
        let Some(path) = m.path.as_deref() else {
            continue;
        };
        if !m.executable || path.starts_with('[') || !seen.insert(path) {
            continue;
        }
        let name = crate::investigate::report::basename(path);
        let is_exe = exe.as_deref().is_some_and(|e| e.as_os_str() == path);
        if !(is_exe || name.starts_with("python") || name.starts_with("libpython")) {
            continue;
        }
        let file = m.open_path(pid);
        if std::fs::metadata(&file).map_or(true, |meta| meta.len() > MAX_MODULE_BYTES) {
            continue;
        }
        let Ok(data) = std::fs::read(&file) else {
            continue;
        };
        let Ok(elf) = object::File::parse(&*data) else {
            continue;
        };
        let Some(runtime) = symbol(&elf, "_PyRuntime") else {
            continue;
        };
        let Some(runtime) = address_of(&elf, runtime, path, mappings) else {
            continue;
        };
        return found(pid, &elf, path, runtime, mappings);
    }
    Detected::NotPython
}

fn found(pid: u32, elf: &object::File<'_>, path: &str, runtime: u64, maps: &[Mapping]) -> Detected {
    // Py_Version (3.11+) is `PY_VERSION_HEX`: 0xMMmmuuRS.
    let Some(version) = symbol(elf, "Py_Version").and_then(|v| address_of(elf, v, path, maps))
    else {
        return Detected::Unsupported(format!(
            "{path} is a CPython older than 3.11 (no Py_Version): Python frames are supported \
             for CPython {}",
            layout::SUPPORTED
        ));
    };
    let mem = Memory::new(pid);
    let hex = match mem.read_u32(version) {
        Ok(hex) => hex,
        Err(e) => {
            return Detected::Unsupported(format!(
                "the CPython version of {path} could not be read from the process: {e}"
            ));
        }
    };
    let (major, minor, micro) = ((hex >> 24) as u8, (hex >> 16) as u8, (hex >> 8) as u8);
    let version = format!("{major}.{minor}.{micro}");
    let layout = match layout::for_version(major, minor) {
        Some(table) => Ok(table),
        None if (major, minor) >= (3, 13) => debug_offsets::read(&mem, runtime, major, minor),
        None => Err("no frame layout table".to_owned()),
    };
    match layout {
        Ok(layout) => Detected::Found(Interpreter {
            version,
            module: path.to_owned(),
            runtime,
            layout,
        }),
        Err(why) => Detected::Unsupported(format!(
            "CPython {version} ({path}): {why}; Python frames are supported for CPython {}",
            layout::SUPPORTED
        )),
    }
}

/// A data symbol's virtual address in the ELF.
fn symbol(elf: &object::File<'_>, name: &str) -> Option<u64> {
    elf.dynamic_symbols()
        .chain(elf.symbols())
        .find(|s| s.name() == Ok(name) && s.address() != 0)
        .map(|s| s.address())
}

/// Where the process maps an ELF virtual address: the load bias is what separates the
/// first loadable segment's address from where the file's first mapping starts (0 for a
/// non-PIE executable). Holds for `.bss` too, which no file offset backs.
fn address_of(elf: &object::File<'_>, vaddr: u64, path: &str, maps: &[Mapping]) -> Option<u64> {
    let first = elf.segments().min_by_key(|s| s.address())?;
    let first_mapping = maps
        .iter()
        .filter(|m| m.path.as_deref() == Some(path))
        .min_by_key(|m| m.offset)?;
    let segment_base = first.address().checked_sub(first.file_range().0)?;
    let mapped_base = first_mapping.start.checked_sub(first_mapping.offset)?;
    Some(vaddr.wrapping_sub(segment_base).wrapping_add(mapped_base))
}
