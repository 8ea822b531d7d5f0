//! Python call paths for CPython targets: which processes are CPython and where their
//! interpreter state is (user space, per target), the frames the kernel walked at each
//! sample (PY_STACKS), and their names, files and lines read from the target's code objects.
//! This module owns PY_TARGETS and PY_STACKS.

pub mod code;
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
    found: HashMap<u32, (String, Option<&'static Layout>)>,
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
            Detected::Found(i) => match self.targets.insert(pid, i.layout.target(i.runtime), 0) {
                Ok(()) => (
                    format!("Python frames from CPython {} ({})", i.version, i.module),
                    Some(i.layout),
                ),
                Err(e) => (
                    format!(
                        "no Python frames: CPython {} found but the target table refused \
                             it ({e})",
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
        Some(self.resolve(pid, layout, &stack))
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

    fn resolve(&self, pid: u32, layout: &Layout, stack: &PyStack) -> PyPath {
        let mem = Memory::new(pid);
        let mut path = PyPath::default();
        let mut codes = match self.codes.lock() {
            Ok(codes) => codes,
            Err(poisoned) => poisoned.into_inner(),
        };
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
        path
    }
}
