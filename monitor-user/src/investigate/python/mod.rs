//! Python call paths for CPython targets: which processes are CPython and where their
//! interpreter state is (user space, per target), the frames the kernel walked at each
//! sample (PY_STACKS), and their names, files and lines read from the target's code objects.
//! This module owns PY_TARGETS and PY_STACKS.

pub mod code;
pub mod debug_offsets;
pub mod detect;
pub mod layout;
pub mod memory;
pub mod merge;

use std::{collections::HashMap, sync::Mutex};

use aya::maps::{HashMap as BpfHashMap, MapData};
use monitor_common::stacks::{
    PY_BROKEN, PY_EMPTY, PY_FIRST_KEY, PY_LOST, PY_NO_GIL, PY_STACKS_MAP, PY_TARGETS_MAP,
    PY_TRUNCATED, PY_UNREADABLE, PyStack, PyTarget,
};

use self::{code::Code, detect::Detected, layout::Layout, memory::Memory};
use super::{maps_snapshot::Mapping, report::Frame};
use crate::bpf::{BpfError, Kernel};

/// Code objects remembered (over all targets): beyond this the cache starts over. With the
/// bounds of `code`, at most about 80 MiB; a few MiB in practice.
const MAX_CACHED_CODES: usize = 2048;

pub struct Python {
    targets: BpfHashMap<MapData, u32, PyTarget>,
    stacks: BpfHashMap<MapData, u64, PyStack>,
    /// Per pid: what detection found (for the report's note), and the layout in use.
    found: HashMap<u32, (String, Option<Layout>)>,
    /// (pid, code object address) -> its name, file and lines; None when unreadable.
    codes: Mutex<HashMap<(u32, u64), Option<Code>>>,
}

/// A sample's Python call path, resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PyPath {
    /// Leaf first.
    pub frames: Vec<Frame>,
    /// Per frame: the first frame its `_PyEval_EvalFrameDefault` call ran (see merge).
    pub entries: Vec<bool>,
    /// Why there are no frames, or why they are incomplete.
    pub note: Option<&'static str>,
}

impl Python {
    pub fn take(kernel: &Kernel) -> Result<Self, BpfError> {
        Ok(Self {
            targets: kernel.take_map(PY_TARGETS_MAP, BpfHashMap::try_from)?,
            stacks: kernel.take_map(PY_STACKS_MAP, BpfHashMap::try_from)?,
            found: HashMap::new(),
            codes: Mutex::new(HashMap::new()),
        })
    }

    /// Looks for CPython in `pid` and, when its version has a layout table, has the samplers
    /// record its Python frames. Returns what was found, for the report.
    pub fn add(&mut self, pid: u32, mappings: &[Mapping]) -> String {
        let (note, layout) = match detect::detect(pid, mappings) {
            Detected::NotPython => ("not a CPython process: native stacks only".to_owned(), None),
            Detected::Unsupported(why) => (format!("no Python frames: {why}"), None),
            Detected::Found(i) => match pid_namespace(pid).and_then(|ns| {
                self.targets
                    .insert(pid, i.layout.target(i.runtime, ns), 0)
                    .map_err(|e| std::io::Error::other(e.to_string()))
            }) {
                Ok(()) => (
                    format!("Python frames from CPython {} ({})", i.version, i.module),
                    Some(i.layout),
                ),
                Err(e) => (
                    format!(
                        "no Python frames: CPython {} found but could not be set up for \
                         sampling ({e})",
                        i.version
                    ),
                    None,
                ),
            },
        };
        log::info!("pid {pid}: {note}");
        self.found.insert(pid, (note.clone(), layout));
        note
    }

    /// Records that `pid`'s Python frames are not wanted, for the report.
    pub fn skip(&mut self, pid: u32, why: &str) {
        self.found.insert(pid, (why.to_owned(), None));
    }

    pub fn remove(&mut self, pid: u32) {
        let _ = self.targets.remove(&pid);
        self.found.remove(&pid);
        if let Ok(mut codes) = self.codes.lock() {
            codes.retain(|(p, _), _| *p != pid);
        }
    }

    /// Forgets every recorded Python stack: keys are only meaningful to the samples holding
    /// them.
    pub fn clear_stacks(&mut self) {
        let keys: Vec<u64> = self.stacks.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.stacks.remove(&k);
        }
    }

    /// What detection said about `pid`.
    pub fn note(&self, pid: u32) -> Option<&str> {
        self.found.get(&pid).map(|(note, _)| note.as_str())
    }

    /// The Python path behind a sample's `py_stack` key; None for a process without Python
    /// frames.
    pub fn path(&self, pid: u32, key: u64) -> Option<PyPath> {
        let layout = self.found.get(&pid)?.1?;
        let note = match key {
            PY_NO_GIL => Some("no Python frames: the thread did not hold the GIL"),
            PY_UNREADABLE => Some("no Python frames: the thread state could not be read"),
            PY_LOST => Some("no Python frames: the Python stack table was full"),
            PY_EMPTY => Some("no Python frames: the thread ran no Python code"),
            k if k < PY_FIRST_KEY => return None,
            _ => None,
        };
        if note.is_some() {
            return Some(PyPath {
                note,
                ..PyPath::default()
            });
        }
        let Ok(stack) = self.stacks.get(&key, 0) else {
            return Some(PyPath {
                note: Some("no Python frames: the stack was evicted"),
                ..PyPath::default()
            });
        };
        let mut codes = match self.codes.lock() {
            Ok(codes) => codes,
            Err(poisoned) => poisoned.into_inner(),
        };
        Some(resolve(pid, &layout, &stack, &mut codes))
    }

    /// Reads the code objects behind `keys` now, while the process lives: a process that
    /// exits before the report keeps the names already read.
    pub fn warm(&self, pid: u32, keys: impl IntoIterator<Item = u64>) {
        let mut seen = std::collections::HashSet::new();
        for key in keys {
            if key >= PY_FIRST_KEY && seen.insert(key) {
                let _ = self.path(pid, key);
            }
        }
    }
}

/// `pid`'s pid namespace as `bpf_get_ns_current_pid_tgid` takes it: the nsfs device in the
/// kernel's encoding (major << 20 | minor) and the inode.
fn pid_namespace(pid: u32) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(format!("/proc/{pid}/ns/pid"))?;
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    Ok(((u64::from(major) << 20) | u64::from(minor), meta.ino()))
}

/// Names the frames of a recorded stack, leaf first, reading code objects (cached) from
/// `pid`'s memory. A code object that cannot be read ends the path, marked truncated.
fn resolve(
    pid: u32,
    layout: &Layout,
    stack: &PyStack,
    codes: &mut HashMap<(u32, u64), Option<Code>>,
) -> PyPath {
    let mem = Memory::new(pid);
    let mut path = PyPath::default();
    if codes.len() >= MAX_CACHED_CODES {
        codes.clear();
    }
    let len = (stack.len as usize).min(stack.frames.len());
    for (i, f) in stack.frames[..len].iter().enumerate() {
        if stack.shims >> i & 1 == 1 {
            continue;
        }
        let code = codes
            .entry((pid, f.code))
            .or_insert_with(|| Code::read(&mem, layout, f.code).ok());
        let Some(code) = code else {
            // Freed or moved since the sample, or the process is gone.
            path.note = Some("Python stack truncated: a code object could not be read");
            break;
        };
        path.frames.push(merge::python_frame(
            code,
            code.line_at(layout, f.code, f.instr),
        ));
        // Without `is_entry`, an entry frame is the one just inside a shim frame.
        let entry = match layout.frame_is_entry {
            Some(_) => stack.entries >> i & 1 == 1,
            None => i + 1 < len && stack.shims >> (i + 1) & 1 == 1,
        };
        path.entries.push(entry);
    }
    if path.note.is_none() {
        if stack.flags & PY_BROKEN != 0 {
            path.note = Some("Python stack truncated: the frames changed while read");
        } else if stack.flags & PY_TRUNCATED != 0 {
            path.note = Some("Python stack truncated: deeper than the frames recorded");
        }
    }
    // The row says so itself, in every output, past its outermost Python frame.
    if path.note.is_some() && !path.frames.is_empty() {
        path.frames.push(merge::truncated_frame());
        path.entries.push(false);
    }
    path
}

#[cfg(test)]
mod tests {
    use monitor_common::stacks::{PY_MAX_FRAMES, PyFrame};

    use super::*;
    use crate::investigate::python::layout::CPYTHON_3_11;

    /// Bytes laid out as CPython 3.11 lays out its objects, in this process's memory, which
    /// `process_vm_readv` reads like any other process's.
    struct Fake {
        words: Vec<u64>,
    }

    impl Fake {
        fn new(bytes: usize) -> Self {
            Self {
                words: vec![0; bytes / 8],
            }
        }
        fn base(&self) -> u64 {
            self.words.as_ptr() as u64
        }
        fn put(&mut self, at: u64, bytes: &[u8]) {
            let raw: &mut [u8] = as_bytes(&mut self.words);
            raw[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        }
    }

    fn as_bytes(words: &mut [u64]) -> &mut [u8] {
        // SAFETY: u64s reinterpreted as their bytes; the length covers the same memory.
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) }
    }

    /// A compact ASCII str object.
    fn ascii(text: &str) -> Fake {
        let l = CPYTHON_3_11;
        let mut f = Fake::new(l.ascii_header as usize + text.len() + 8);
        f.put(l.unicode_length, &(text.len() as u64).to_ne_bytes());
        // kind 1 (bits 2-4), compact (bit 5), ascii (bit 6).
        f.put(
            l.unicode_state,
            &(1u32 << 2 | 1 << 5 | 1 << 6).to_ne_bytes(),
        );
        f.put(l.ascii_header, text.as_bytes());
        f
    }

    /// A compact non-ASCII str of 2-byte characters.
    fn ucs2(text: &str) -> Fake {
        let l = CPYTHON_3_11;
        let units: Vec<u16> = text.encode_utf16().collect();
        let mut f = Fake::new(l.compact_header as usize + units.len() * 2 + 8);
        f.put(l.unicode_length, &(units.len() as u64).to_ne_bytes());
        f.put(l.unicode_state, &(2u32 << 2 | 1 << 5).to_ne_bytes());
        let raw: Vec<u8> = units.iter().flat_map(|u| u.to_ne_bytes()).collect();
        f.put(l.compact_header, &raw);
        f
    }

    fn bytes_object(data: &[u8]) -> Fake {
        let l = CPYTHON_3_11;
        let mut f = Fake::new(l.bytes_data as usize + data.len() + 8);
        f.put(l.var_size, &(data.len() as u64).to_ne_bytes());
        f.put(l.bytes_data, data);
        f
    }

    #[test]
    fn frames_are_named_from_code_objects_and_an_unreadable_one_truncates_the_path() {
        let l = CPYTHON_3_11;
        let qualname = ascii("Worker.keep_document");
        let filename = ucs2("/srv/jobs/société.py");
        // First line 40; code unit 0 on line 40, units 1-2 on line 41 (one-line form, +1).
        let linetable = bytes_object(&[0x80, 0x00, 0x80 | 11 << 3 | 1, 4, 9]);
        let mut code = Fake::new(l.code_adaptive as usize + 64);
        code.put(l.code_qualname, &qualname.base().to_ne_bytes());
        code.put(l.code_filename, &filename.base().to_ne_bytes());
        code.put(l.code_linetable, &linetable.base().to_ne_bytes());
        code.put(l.code_firstlineno, &40u32.to_ne_bytes());
        let code_at = code.base();
        let mut stack = PyStack {
            len: 2,
            flags: 0,
            entries: 0b10,
            shims: 0,
            frames: [PyFrame::default(); PY_MAX_FRAMES],
        };
        // `prev_instr` at code unit 2 (two bytes each).
        stack.frames[0] = PyFrame {
            code: code_at,
            instr: code_at + l.code_adaptive + 4,
        };
        // A code object freed since the sample: its address is no longer mapped.
        stack.frames[1] = PyFrame { code: 8, instr: 0 };
        let mut codes = HashMap::new();
        let path = resolve(std::process::id(), &l, &stack, &mut codes);
        assert_eq!(path.frames.len(), 2, "{path:?}");
        assert_eq!(path.frames[1].display_name(), "[python stack truncated]");
        let f = &path.frames[0];
        assert_eq!(f.function.as_deref(), Some("Worker.keep_document"));
        assert_eq!(f.file.as_deref(), Some("/srv/jobs/société.py"));
        assert_eq!((f.start_line, f.line), (Some(40), Some(41)));
        assert!(f.python);
        assert_eq!(
            path.note,
            Some("Python stack truncated: a code object could not be read")
        );
        // Cached: the second resolution reads nothing again and says the same.
        assert_eq!(resolve(std::process::id(), &l, &stack, &mut codes), path);
        drop((qualname, filename, linetable, code));
    }

    #[test]
    fn frames_changed_under_the_walk_are_marked_truncated() {
        let stack = PyStack {
            len: 0,
            flags: PY_BROKEN,
            entries: 0,
            shims: 0,
            frames: [PyFrame::default(); PY_MAX_FRAMES],
        };
        let path = resolve(
            std::process::id(),
            &CPYTHON_3_11,
            &stack,
            &mut HashMap::new(),
        );
        assert_eq!(
            path.note,
            Some("Python stack truncated: the frames changed while read")
        );
    }
}
