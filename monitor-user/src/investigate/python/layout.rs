//! Byte offsets of the CPython structures on the way from `_PyRuntime` to a frame's code
//! object and line, per interpreter version. Sources: CPython 3.11's
//! Include/internal/pycore_runtime.h, pycore_frame.h, Include/cpython/pystate.h, code.h and
//! unicodeobject.h (x86-64 and aarch64 share them: LP64, natural alignment). The test below
//! checks the 3.11 table against the DWARF of a real libpython3.11.

use monitor_common::stacks::{PY_NO_OWNER, PyTarget};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `_PyRuntime.gilstate.tstate_current`: the thread state holding the GIL.
    pub runtime_tstate_current: u64,
    /// `PyThreadState.cframe` (`_PyCFrame *`).
    pub tstate_cframe: u32,
    pub tstate_native_thread_id: u32,
    /// `_PyCFrame.current_frame`.
    pub cframe_current_frame: u32,
    /// `_PyInterpreterFrame.f_code`, `.previous`, `.prev_instr`, `.is_entry`, `.owner`.
    pub frame_code: u32,
    pub frame_previous: u32,
    pub frame_prev_instr: u32,
    pub frame_is_entry: u32,
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

pub const CPYTHON_3_11: Layout = Layout {
    runtime_tstate_current: 576,
    tstate_cframe: 56,
    tstate_native_thread_id: 160,
    cframe_current_frame: 8,
    frame_code: 32,
    frame_previous: 48,
    frame_prev_instr: 56,
    frame_is_entry: 68,
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

/// The layout of CPython `major.minor`, None for a version without a verified table.
pub fn for_version(major: u8, minor: u8) -> Option<&'static Layout> {
    match (major, minor) {
        (3, 11) => Some(&CPYTHON_3_11),
        _ => None,
    }
}

/// The interpreter versions with a table, for messages.
pub const SUPPORTED: &str = "3.11";

impl Layout {
    /// What the kernel walk needs for a process whose `_PyRuntime` is at `runtime`.
    pub fn target(&self, runtime: u64) -> PyTarget {
        PyTarget {
            tstate_current: runtime + self.runtime_tstate_current,
            tstate_cframe: self.tstate_cframe,
            tstate_native_thread_id: self.tstate_native_thread_id,
            cframe_current_frame: self.cframe_current_frame,
            frame_code: self.frame_code,
            frame_previous: self.frame_previous,
            frame_prev_instr: self.frame_prev_instr,
            frame_is_entry: self.frame_is_entry,
            frame_owner: self.frame_owner,
            owner_cstack: self.owner_cstack.map_or(PY_NO_OWNER, u32::from),
            _pad: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// The shared build with DWARF (pyenv's), found by glob as CI installs it.
    fn libpython_3_11() -> Option<std::path::PathBuf> {
        let versions = std::fs::read_dir("/root/.pyenv/versions").ok()?;
        let mut found: Vec<_> = versions
            .filter_map(Result::ok)
            .filter(|v| v.file_name().to_string_lossy().starts_with("3.11."))
            .map(|v| v.path().join("lib/libpython3.11.so.1.0"))
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

    #[test]
    fn the_3_11_table_matches_the_dwarf_of_libpython() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        let Some(lib) = libpython_3_11() else {
            assert!(
                !ci,
                "CI=true: no /root/.pyenv/versions/3.11.*/lib/libpython3.11.so.1.0 to check \
                 the CPython 3.11 offsets against"
            );
            eprintln!("skipped: no pyenv CPython 3.11 with a shared libpython");
            return;
        };
        if Command::new("gdb").arg("--version").output().is_err() {
            assert!(!ci, "CI=true: gdb is missing (xtask setup installs it)");
            eprintln!("skipped: no gdb");
            return;
        }
        let l = CPYTHON_3_11;
        let fields: [(&str, &str, u64); 17] = [
            (
                "_PyRuntimeState",
                "gilstate.tstate_current",
                l.runtime_tstate_current,
            ),
            ("PyThreadState", "cframe", l.tstate_cframe.into()),
            (
                "PyThreadState",
                "native_thread_id",
                l.tstate_native_thread_id.into(),
            ),
            ("_PyCFrame", "current_frame", l.cframe_current_frame.into()),
            ("_PyInterpreterFrame", "f_code", l.frame_code.into()),
            ("_PyInterpreterFrame", "previous", l.frame_previous.into()),
            (
                "_PyInterpreterFrame",
                "prev_instr",
                l.frame_prev_instr.into(),
            ),
            ("_PyInterpreterFrame", "is_entry", l.frame_is_entry.into()),
            ("_PyInterpreterFrame", "owner", l.frame_owner.into()),
            ("PyCodeObject", "co_filename", l.code_filename),
            ("PyCodeObject", "co_qualname", l.code_qualname),
            ("PyCodeObject", "co_linetable", l.code_linetable),
            ("PyCodeObject", "co_firstlineno", l.code_firstlineno),
            ("PyCodeObject", "co_code_adaptive", l.code_adaptive),
            ("PyASCIIObject", "length", l.unicode_length),
            ("PyASCIIObject", "state", l.unicode_state),
            ("PyBytesObject", "ob_sval", l.bytes_data),
        ];
        let mut exprs: Vec<String> = fields
            .iter()
            .map(|(ty, field, _)| format!("(long)&(({ty} *)0)->{field}"))
            .collect();
        exprs.extend(["sizeof(PyASCIIObject)", "sizeof(PyCompactUnicodeObject)"].map(String::from));
        exprs.push("(long)&((PyVarObject *)0)->ob_size".to_owned());
        let mut want: Vec<u64> = fields.iter().map(|(_, _, v)| *v).collect();
        want.extend([l.ascii_header, l.compact_header, l.var_size]);
        let found = dwarf_values(&lib, &exprs);
        for ((expr, want), got) in exprs.iter().zip(want).zip(found) {
            assert_eq!(want, got, "{expr} in {}", lib.display());
        }
    }
}
