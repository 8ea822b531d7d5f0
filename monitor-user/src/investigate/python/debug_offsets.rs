//! The layout of CPython 3.13 from the interpreter itself: `_PyRuntime` starts with
//! `_Py_DebugOffsets` (Include/internal/pycore_runtime.h), the cookie `xdebugpy`, the version
//! and the offsets an out-of-process reader needs, filled in by the build that runs. Its
//! own order of fields is only stable within a minor version, so each minor version read
//! has a list of field names below; a version without one is unsupported.
//!
//! Everything read is checked before it reaches the kernel walk: the cookie, the version
//! against `Py_Version`, every structure's size within bounds and every offset used inside
//! its structure.

use super::{
    layout::{Hops, Layout},
    memory::Memory,
};

const COOKIE: &[u8; 8] = b"xdebugpy";

/// `_Py_DebugOffsets` of 3.13, one 8-byte word each, in order (the cookie is the first).
const FIELDS_3_13: &[&str] = &[
    "cookie",
    "version",
    "free_threaded",
    "runtime_state.size",
    "runtime_state.finalizing",
    "runtime_state.interpreters_head",
    "interpreter_state.size",
    "interpreter_state.id",
    "interpreter_state.next",
    "interpreter_state.threads_head",
    "interpreter_state.gc",
    "interpreter_state.imports_modules",
    "interpreter_state.sysdict",
    "interpreter_state.builtins",
    "interpreter_state.ceval_gil",
    "interpreter_state.gil_runtime_state",
    "interpreter_state.gil_runtime_state_enabled",
    "interpreter_state.gil_runtime_state_locked",
    "interpreter_state.gil_runtime_state_holder",
    "thread_state.size",
    "thread_state.prev",
    "thread_state.next",
    "thread_state.interp",
    "thread_state.current_frame",
    "thread_state.thread_id",
    "thread_state.native_thread_id",
    "thread_state.datastack_chunk",
    "thread_state.status",
    "interpreter_frame.size",
    "interpreter_frame.previous",
    "interpreter_frame.executable",
    "interpreter_frame.instr_ptr",
    "interpreter_frame.localsplus",
    "interpreter_frame.owner",
    "code_object.size",
    "code_object.filename",
    "code_object.name",
    "code_object.qualname",
    "code_object.linetable",
    "code_object.firstlineno",
    "code_object.argcount",
    "code_object.localsplusnames",
    "code_object.localspluskinds",
    "code_object.co_code_adaptive",
    "pyobject.size",
    "pyobject.ob_type",
    "type_object.size",
    "type_object.tp_name",
    "type_object.tp_repr",
    "type_object.tp_flags",
    "tuple_object.size",
    "tuple_object.ob_item",
    "tuple_object.ob_size",
    "list_object.size",
    "list_object.ob_item",
    "list_object.ob_size",
    "dict_object.size",
    "dict_object.ma_keys",
    "dict_object.ma_values",
    "float_object.size",
    "float_object.ob_fval",
    "long_object.size",
    "long_object.lv_tag",
    "long_object.ob_digit",
    "bytes_object.size",
    "bytes_object.ob_size",
    "bytes_object.ob_sval",
    "unicode_object.size",
    "unicode_object.state",
    "unicode_object.length",
    "unicode_object.asciiobject_size",
    "gc.size",
    "gc.collecting",
];

/// `FRAME_OWNED_BY_CSTACK` of 3.13 (Include/internal/pycore_frame.h): an enum value, which
/// the debug offsets do not carry.
const OWNER_CSTACK_3_13: u8 = 3;

/// Largest structure believed: `_PyRuntimeState` is the biggest, a few hundred KiB.
const MAX_STRUCT_BYTES: u64 = 4 << 20;

/// The bytes to read at `_PyRuntime`.
pub fn len() -> usize {
    FIELDS_3_13.len() * 8
}

/// Reads `_Py_DebugOffsets` at `runtime` in the process and the layout it describes, for the
/// interpreter whose `Py_Version` says `major.minor`.
pub fn read(mem: &Memory, runtime: u64, major: u8, minor: u8) -> Result<Layout, String> {
    let bytes = mem
        .read(runtime, len())
        .map_err(|e| format!("its _Py_DebugOffsets could not be read: {e}"))?;
    parse(&bytes, major, minor)
}

/// The layout described by the debug offsets `bytes` (the start of `_PyRuntime`).
pub fn parse(bytes: &[u8], major: u8, minor: u8) -> Result<Layout, String> {
    if (major, minor) != (3, 13) {
        return Err(format!(
            "its _Py_DebugOffsets are read for CPython 3.13 only, not {major}.{minor}"
        ));
    }
    let d = Offsets::new(bytes)?;
    if bytes.get(..8) != Some(&COOKIE[..]) {
        return Err("_PyRuntime does not start with the _Py_DebugOffsets cookie".to_owned());
    }
    let version = d.get("version")?;
    if (version >> 24, version >> 16 & 0xff) != (u64::from(major), u64::from(minor)) {
        return Err(format!(
            "_Py_DebugOffsets say version {version:#x}, Py_Version {major}.{minor}"
        ));
    }
    if d.get("free_threaded")? != 0 {
        return Err("a free-threaded build (no GIL to find the running thread by)".to_owned());
    }
    // The GIL's holder is reached through `ceval.gil`, a pointer to a `_gil_runtime_state`,
    // which for an interpreter with its own GIL is its `_gil` field.
    let gil = d.field("interpreter_state", "gil_runtime_state")?;
    let holder = d.field("interpreter_state", "gil_runtime_state_holder")?;
    let holder_in_gil = holder
        .checked_sub(gil)
        .ok_or("the GIL holder's offset is before the GIL's")?;
    let ascii_header = d.get("unicode_object.asciiobject_size")?;
    if !(16..=1024).contains(&ascii_header) {
        return Err(format!("a str header of {ascii_header} bytes"));
    }
    let narrow = |v: u64| u32::try_from(v).map_err(|_| format!("offset {v} out of range"));
    Ok(Layout {
        runtime_tstate_root: d.field("runtime_state", "interpreters_head")?,
        tstate_hops: Hops::new(&[
            narrow(d.field("interpreter_state", "ceval_gil")?)?,
            narrow(holder_in_gil)?,
        ]),
        tstate_cframe: narrow(d.field("thread_state", "current_frame")?)?,
        tstate_native_thread_id: narrow(d.field("thread_state", "native_thread_id")?)?,
        cframe_current_frame: None,
        frame_code: narrow(d.field("interpreter_frame", "executable")?)?,
        frame_previous: narrow(d.field("interpreter_frame", "previous")?)?,
        frame_prev_instr: narrow(d.field("interpreter_frame", "instr_ptr")?)?,
        frame_is_entry: None,
        frame_owner: narrow(d.byte_field("interpreter_frame", "owner")?)?,
        owner_cstack: Some(OWNER_CSTACK_3_13),
        code_filename: d.field("code_object", "filename")?,
        code_qualname: d.field("code_object", "qualname")?,
        code_linetable: d.field("code_object", "linetable")?,
        code_firstlineno: d.word_field("code_object", "firstlineno", 4)?,
        code_adaptive: d.word_field("code_object", "co_code_adaptive", 0)?,
        unicode_length: d.field("unicode_object", "length")?,
        unicode_state: d.word_field("unicode_object", "state", 4)?,
        ascii_header,
        // `PyCompactUnicodeObject`: the ASCII header, then `utf8_length` and `utf8`.
        compact_header: ascii_header + 16,
        var_size: d.field("bytes_object", "ob_size")?,
        bytes_data: d.word_field("bytes_object", "ob_sval", 0)?,
    })
}

/// The words of a debug offsets structure, by field name.
struct Offsets<'a> {
    bytes: &'a [u8],
}

impl<'a> Offsets<'a> {
    fn new(bytes: &'a [u8]) -> Result<Self, String> {
        if bytes.len() < len() {
            return Err(format!(
                "_Py_DebugOffsets cut short ({} of {} bytes)",
                bytes.len(),
                len()
            ));
        }
        Ok(Self { bytes })
    }

    fn get(&self, name: &str) -> Result<u64, String> {
        let i = FIELDS_3_13
            .iter()
            .position(|f| *f == name)
            .ok_or_else(|| format!("no field {name} in _Py_DebugOffsets"))?;
        let word = self.bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes");
        Ok(u64::from_ne_bytes(word))
    }

    /// The offset of a pointer (or `Py_ssize_t`) field of `structure`, checked to lie inside it.
    fn field(&self, structure: &str, name: &str) -> Result<u64, String> {
        self.word_field(structure, name, 8)
    }

    fn byte_field(&self, structure: &str, name: &str) -> Result<u64, String> {
        self.word_field(structure, name, 1)
    }

    /// The offset of a `width`-byte field of `structure` (0: a variable-length tail, which
    /// may start at the structure's end), checked to lie inside it.
    fn word_field(&self, structure: &str, name: &str, width: u64) -> Result<u64, String> {
        let size = self.get(&format!("{structure}.size"))?;
        if size == 0 || size > MAX_STRUCT_BYTES {
            return Err(format!("{structure} said to be {size} bytes"));
        }
        let offset = self.get(&format!("{structure}.{name}"))?;
        match offset.checked_add(width) {
            Some(end) if end <= size => Ok(offset),
            _ => Err(format!(
                "{structure}.{name} at {offset} is outside its {size} bytes"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

    use super::*;
    use crate::investigate::python::layout::tests::{
        check_against_dwarf, code_and_strings, offset,
    };

    /// `_PyRuntime`'s first bytes as a 3.13 libpython file holds them: the structure is
    /// initialised data, the same bytes the process starts with.
    fn debug_offsets_in_file(data: &[u8]) -> Vec<u8> {
        let elf = object::File::parse(data).expect("an ELF");
        let runtime = elf
            .dynamic_symbols()
            .find(|s| s.name() == Ok("_PyRuntime"))
            .expect("_PyRuntime");
        let section = elf
            .section_by_index(runtime.section_index().unwrap())
            .unwrap();
        let at = (runtime.address() - section.address()) as usize;
        section.data().unwrap()[at..at + len()].to_vec()
    }

    fn pyenv_3_13() -> Option<std::path::PathBuf> {
        crate::investigate::python::layout::tests::libpython(13)
    }

    #[test]
    fn the_layout_read_from_3_13_debug_offsets_matches_its_dwarf() {
        let Some(lib) = pyenv_3_13() else {
            eprintln!("skipped: no pyenv CPython 3.13 with a shared libpython");
            return;
        };
        let bytes = debug_offsets_in_file(&std::fs::read(&lib).unwrap());
        let l = parse(&bytes, 3, 13).expect("a valid 3.13 layout");
        let hops = l.tstate_hops.as_slice();
        let mut cases = vec![
            (
                offset("_PyRuntimeState", "interpreters.head"),
                l.runtime_tstate_root,
            ),
            (offset("PyInterpreterState", "ceval.gil"), hops[0].into()),
            (
                offset("struct _gil_runtime_state", "last_holder"),
                hops[1].into(),
            ),
            (
                offset("PyThreadState", "current_frame"),
                l.tstate_cframe.into(),
            ),
            (
                offset("PyThreadState", "native_thread_id"),
                l.tstate_native_thread_id.into(),
            ),
            (
                offset("_PyInterpreterFrame", "f_executable"),
                l.frame_code.into(),
            ),
            (
                offset("_PyInterpreterFrame", "previous"),
                l.frame_previous.into(),
            ),
            (
                offset("_PyInterpreterFrame", "instr_ptr"),
                l.frame_prev_instr.into(),
            ),
            (offset("_PyInterpreterFrame", "owner"), l.frame_owner.into()),
            (
                "(long)FRAME_OWNED_BY_CSTACK".to_owned(),
                l.owner_cstack.unwrap().into(),
            ),
        ];
        cases.extend(code_and_strings(&l));
        check_against_dwarf(&lib, cases);
    }

    #[test]
    fn debug_offsets_that_do_not_hold_are_refused() {
        let Some(lib) = pyenv_3_13() else {
            eprintln!("skipped: no pyenv CPython 3.13 with a shared libpython");
            return;
        };
        let good = debug_offsets_in_file(&std::fs::read(&lib).unwrap());
        let word = |name: &str| FIELDS_3_13.iter().position(|f| *f == name).unwrap() * 8;
        let with = |name: &str, value: u64| {
            let mut b = good.clone();
            b[word(name)..word(name) + 8].copy_from_slice(&value.to_ne_bytes());
            b
        };
        assert!(parse(&good, 3, 13).is_ok());
        let mut no_cookie = good.clone();
        no_cookie[0] = b'y';
        let refused = [
            (no_cookie, "cookie"),
            (good[..100].to_vec(), "cut short"),
            (with("version", 0x030c_01f0), "version"),
            (with("free_threaded", 1), "free-threaded"),
            (with("thread_state.size", 0), "bytes"),
            (with("thread_state.size", u64::MAX), "bytes"),
            (with("interpreter_frame.owner", 1 << 40), "outside"),
            (with("code_object.qualname", u64::MAX - 4), "outside"),
        ];
        for (bytes, why) in refused {
            let err = parse(&bytes, 3, 13).unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
        }
        let later = parse(&good, 3, 14).unwrap_err();
        assert!(later.contains("3.13 only"), "{later}");
    }
}
