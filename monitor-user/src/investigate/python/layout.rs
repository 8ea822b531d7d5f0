//! Byte offsets of the CPython structures on the way from `_PyRuntime` to a frame's code
//! object and line, per interpreter version: tables for 3.11 and 3.12, and for 3.13 on the
//! interpreter's own `_Py_DebugOffsets` (see `debug_offsets`). Sources of the tables: CPython's
//! Include/internal/pycore_runtime.h, pycore_interp.h, pycore_gil.h, pycore_frame.h,
//! Include/cpython/pystate.h, code.h and unicodeobject.h of 3.11 and 3.12 (x86-64 and aarch64
//! share them: LP64, natural alignment). The tests below check each table against the DWARF
//! of a real libpython of that version.
//!
//! The thread state holding the GIL: 3.11 keeps it in `_PyRuntime.gilstate.tstate_current`;
//! 3.12 in the main interpreter's GIL, `_PyRuntime.interpreters.main->ceval.gil->last_holder`.
//! An entry frame (the first one a `_PyEval_EvalFrameDefault` call ran) is flagged
//! `is_entry` in 3.11; in 3.12 it is the frame just inside a C-stack shim frame.

use monitor_common::stacks::{PY_MAX_HOPS, PY_NO_OWNER, PyTarget};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Offset in `_PyRuntime` of the first pointer towards the thread state holding the GIL,
    /// then the offsets to add to each pointer read after it.
    pub runtime_tstate_root: u64,
    pub tstate_hops: Hops,
    /// `PyThreadState.cframe` (`_PyCFrame *`), or from 3.13 on `.current_frame`.
    pub tstate_cframe: u32,
    pub tstate_native_thread_id: u32,
    /// `_PyCFrame.current_frame`; None from 3.13 on, which has no `_PyCFrame`.
    pub cframe_current_frame: Option<u32>,
    /// `_PyInterpreterFrame.f_code` (3.13: `f_executable`), `.previous`, `.prev_instr`
    /// (3.13: `instr_ptr`, the same instruction), `.is_entry` (None when the version has no
    /// such field), `.owner`.
    pub frame_code: u32,
    pub frame_previous: u32,
    pub frame_prev_instr: u32,
    pub frame_is_entry: Option<u32>,
    pub frame_owner: u32,
    /// `owner` value of the C-stack shim frames, for versions that have them.
    pub owner_cstack: Option<u8>,
    /// `PyCodeObject` fields.
    pub code_filename: u64,
    pub code_qualname: u64,
    pub code_linetable: u64,
    pub code_firstlineno: u64,
    /// `co_code_adaptive`: `_PyCode_CODE(code)`, where `prev_instr` points into.
    pub code_adaptive: u64,
    /// `PyASCIIObject.length`, `.state`, and the sizes of the compact headers, after which
    /// the characters of a compact string start.
    pub unicode_length: u64,
    pub unicode_state: u64,
    pub ascii_header: u64,
    pub compact_header: u64,
    /// `PyVarObject.ob_size` and `PyBytesObject.ob_sval`.
    pub var_size: u64,
    pub bytes_data: u64,
}

/// At most [`PY_MAX_HOPS`] offsets, owned: a layout read from the process is not static.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hops {
    offsets: [u32; PY_MAX_HOPS],
    len: usize,
}

impl Hops {
    /// Panics (at compile time for the tables) beyond [`PY_MAX_HOPS`].
    pub const fn new(hops: &[u32]) -> Self {
        assert!(hops.len() <= PY_MAX_HOPS);
        let mut offsets = [0; PY_MAX_HOPS];
        let mut i = 0;
        while i < hops.len() {
            offsets[i] = hops[i];
            i += 1;
        }
        Self {
            offsets,
            len: hops.len(),
        }
    }

    pub fn as_slice(&self) -> &[u32] {
        &self.offsets[..self.len]
    }
}

pub const CPYTHON_3_11: Layout = Layout {
    runtime_tstate_root: 576,
    tstate_hops: Hops::new(&[]),
    tstate_cframe: 56,
    tstate_native_thread_id: 160,
    cframe_current_frame: Some(8),
    frame_code: 32,
    frame_previous: 48,
    frame_prev_instr: 56,
    frame_is_entry: Some(68),
    frame_owner: 69,
    owner_cstack: None,
    code_filename: 112,
    code_qualname: 128,
    code_linetable: 136,
    code_firstlineno: 72,
    code_adaptive: 184,
    unicode_length: 16,
    unicode_state: 32,
    ascii_header: 48,
    compact_header: 72,
    var_size: 16,
    bytes_data: 32,
};

pub const CPYTHON_3_12: Layout = Layout {
    runtime_tstate_root: 48,
    tstate_hops: Hops::new(&[384, 8]),
    tstate_cframe: 56,
    tstate_native_thread_id: 144,
    cframe_current_frame: Some(0),
    frame_code: 0,
    frame_previous: 8,
    frame_prev_instr: 56,
    frame_is_entry: None,
    frame_owner: 70,
    owner_cstack: Some(3),
    code_filename: 112,
    code_qualname: 128,
    code_linetable: 136,
    code_firstlineno: 68,
    code_adaptive: 192,
    unicode_length: 16,
    unicode_state: 32,
    ascii_header: 40,
    compact_header: 56,
    var_size: 16,
    bytes_data: 32,
};

/// The table of CPython `major.minor`, None for a version without one.
pub fn for_version(major: u8, minor: u8) -> Option<Layout> {
    match (major, minor) {
        (3, 11) => Some(CPYTHON_3_11),
        (3, 12) => Some(CPYTHON_3_12),
        _ => None,
    }
}

/// The interpreter versions supported (by table or by their debug offsets), for messages.
pub const SUPPORTED: &str = "3.11, 3.12 and 3.13";

impl Layout {
    /// What the kernel walk needs for a process whose `_PyRuntime` is at `runtime` and whose
    /// pid namespace is `(dev, ino)`.
    pub fn target(&self, runtime: u64, pidns: (u64, u64)) -> PyTarget {
        PyTarget {
            pidns_dev: pidns.0,
            pidns_ino: pidns.1,
            tstate_root: runtime + self.runtime_tstate_root,
            tstate_hops: self.tstate_hops.offsets,
            tstate_hops_len: self.tstate_hops.len as u32,
            tstate_cframe: self.tstate_cframe,
            tstate_native_thread_id: self.tstate_native_thread_id,
            cframe_current_frame: self.cframe_current_frame.unwrap_or(0),
            cframe_indirect: u32::from(self.cframe_current_frame.is_some()),
            frame_code: self.frame_code,
            frame_previous: self.frame_previous,
            frame_prev_instr: self.frame_prev_instr,
            // Without the field, any readable byte of the frame, masked off.
            frame_is_entry: self.frame_is_entry.unwrap_or(self.frame_owner),
            entry_mask: u32::from(self.frame_is_entry.is_some()),
            frame_owner: self.frame_owner,
            owner_cstack: self.owner_cstack.map_or(PY_NO_OWNER, u32::from),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::{path::PathBuf, process::Command};

    use super::*;

    fn ci() -> bool {
        std::env::var("CI").is_ok_and(|v| v == "true")
    }

    /// A shared build with DWARF of CPython `minor` (pyenv's), found by glob.
    pub fn libpython(minor: u8) -> Option<PathBuf> {
        let versions = std::fs::read_dir("/root/.pyenv/versions").ok()?;
        let mut found: Vec<_> = versions
            .filter_map(Result::ok)
            .filter(|v| {
                v.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("3.{minor}."))
            })
            .map(|v| v.path().join(format!("lib/libpython3.{minor}.so.1.0")))
            .filter(|p| p.exists())
            .collect();
        found.sort();
        found.pop()
    }

    /// Asks gdb to evaluate each expression against the library's DWARF types.
    fn dwarf_values(lib: &std::path::Path, exprs: &[String]) -> Vec<u64> {
        let mut cmd = Command::new("gdb");
        cmd.args(["-batch", "-nx"]);
        for e in exprs {
            cmd.arg("-ex").arg(format!("print/d {e}"));
        }
        let out = cmd.arg(lib).output().expect("gdb runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let values: Vec<u64> = text
            .lines()
            .filter_map(|l| l.split_once(" = ").and_then(|(_, v)| v.trim().parse().ok()))
            .collect();
        assert_eq!(
            values.len(),
            exprs.len(),
            "gdb answered {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        values
    }

    pub fn offset(ty: &str, field: &str) -> String {
        format!("(long)&(({ty} *)0)->{field}")
    }

    /// Expressions and the table's value for each, common to every version.
    fn common(l: &Layout) -> Vec<(String, u64)> {
        let mut cases = vec![
            (offset("PyThreadState", "cframe"), l.tstate_cframe.into()),
            (
                offset("PyThreadState", "native_thread_id"),
                l.tstate_native_thread_id.into(),
            ),
            (
                offset("_PyCFrame", "current_frame"),
                l.cframe_current_frame.unwrap().into(),
            ),
            (offset("_PyInterpreterFrame", "f_code"), l.frame_code.into()),
            (
                offset("_PyInterpreterFrame", "previous"),
                l.frame_previous.into(),
            ),
            (
                offset("_PyInterpreterFrame", "prev_instr"),
                l.frame_prev_instr.into(),
            ),
            (offset("_PyInterpreterFrame", "owner"), l.frame_owner.into()),
        ];
        cases.extend(code_and_strings(l));
        cases
    }

    /// The code object, string and bytes fields every version reads the same way, whether
    /// the layout comes from a table or from the interpreter's debug offsets.
    pub fn code_and_strings(l: &Layout) -> Vec<(String, u64)> {
        vec![
            (offset("PyCodeObject", "co_filename"), l.code_filename),
            (offset("PyCodeObject", "co_qualname"), l.code_qualname),
            (offset("PyCodeObject", "co_linetable"), l.code_linetable),
            (offset("PyCodeObject", "co_firstlineno"), l.code_firstlineno),
            (offset("PyCodeObject", "co_code_adaptive"), l.code_adaptive),
            (offset("PyASCIIObject", "length"), l.unicode_length),
            (offset("PyASCIIObject", "state"), l.unicode_state),
            (offset("PyBytesObject", "ob_sval"), l.bytes_data),
            (offset("PyVarObject", "ob_size"), l.var_size),
            ("sizeof(PyASCIIObject)".to_owned(), l.ascii_header),
            (
                "sizeof(PyCompactUnicodeObject)".to_owned(),
                l.compact_header,
            ),
        ]
    }

    /// Checks `cases` against the DWARF of pyenv's libpython3.`minor`; required under CI
    /// for 3.11 only (the version CI's machines carry).
    fn check(minor: u8, cases: Vec<(String, u64)>) {
        let required = ci() && minor == 11;
        let Some(lib) = libpython(minor) else {
            assert!(
                !required,
                "CI=true: no /root/.pyenv/versions/3.{minor}.*/lib/libpython3.{minor}.so.1.0 \
                 to check the CPython 3.{minor} offsets against"
            );
            eprintln!("skipped: no pyenv CPython 3.{minor} with a shared libpython");
            return;
        };
        check_against_dwarf(&lib, cases);
    }

    /// Checks `cases` against the DWARF of `lib`.
    pub fn check_against_dwarf(lib: &std::path::Path, cases: Vec<(String, u64)>) {
        if Command::new("gdb").arg("--version").output().is_err() {
            assert!(!ci(), "CI=true: gdb is missing (xtask setup installs it)");
            eprintln!("skipped: no gdb");
            return;
        }
        let exprs: Vec<String> = cases.iter().map(|(e, _)| e.clone()).collect();
        let found = dwarf_values(lib, &exprs);
        for ((expr, want), got) in cases.iter().zip(found) {
            assert_eq!(*want, got, "{expr} in {}", lib.display());
        }
    }

    #[test]
    fn the_3_11_table_matches_the_dwarf_of_libpython() {
        let l = CPYTHON_3_11;
        assert!(l.tstate_hops.as_slice().is_empty());
        let mut cases = common(&l);
        cases.push((
            offset("_PyRuntimeState", "gilstate.tstate_current"),
            l.runtime_tstate_root,
        ));
        cases.push((
            offset("_PyInterpreterFrame", "is_entry"),
            l.frame_is_entry.unwrap().into(),
        ));
        check(11, cases);
        assert_eq!(l.owner_cstack, None);
    }

    #[test]
    fn the_3_12_table_matches_the_dwarf_of_libpython() {
        let l = CPYTHON_3_12;
        let mut cases = common(&l);
        cases.push((
            offset("_PyRuntimeState", "interpreters.main"),
            l.runtime_tstate_root,
        ));
        cases.push((
            offset("PyInterpreterState", "ceval.gil"),
            l.tstate_hops.as_slice()[0].into(),
        ));
        cases.push((
            offset("struct _gil_runtime_state", "last_holder"),
            l.tstate_hops.as_slice()[1].into(),
        ));
        cases.push((
            "(long)FRAME_OWNED_BY_CSTACK".to_owned(),
            l.owner_cstack.unwrap().into(),
        ));
        check(12, cases);
        assert_eq!(l.frame_is_entry, None);
    }
}
