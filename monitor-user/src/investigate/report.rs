//! What an investigation found: stacks ranked by the memory they hold or added, ready to be
//! printed as a table, written as pprof and drawn as a flame graph.

use std::time::Duration;

use serde::Serialize;

/// One frame of a user stack, symbolized as far as the binary allows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Frame {
    /// Function name (demangled), or None when the module has no symbol for the address.
    pub function: Option<String>,
    /// Path of the module (executable or shared object) as the process maps it.
    pub module: String,
    /// Offset of the address in the module's file: what `addr2line -e module` takes.
    pub offset: u64,
    /// Virtual address in the process.
    pub address: u64,
    /// Source file and line, when the module has DWARF.
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The frame was inlined into the next (outer) one.
    pub inlined: bool,
    /// Python frames: the first line of the function (`co_firstlineno`).
    pub start_line: Option<u32>,
    /// A Python function (from the interpreter's frames), not machine code.
    pub python: bool,
}

/// Where the bytes of a stack came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A page fault that mapped a new page (resident growth, sampled).
    PageFault,
    /// Address space added by mmap or mremap.
    Mmap,
    /// Heap grown with brk.
    Brk,
    /// Allocations still outstanding (not freed) from an allocator entry point.
    Alloc,
}

/// The name of the frame that ends a truncated stack.
pub const TRUNCATED_FRAME: &str = "[truncated]";

/// A stack and the memory attributed to it.
#[derive(Clone, Debug, Serialize)]
pub struct StackRecord {
    /// Leaf (innermost) frame first.
    pub frames: Vec<Frame>,
    /// The unwind stopped before the outermost frame (the last frame is then `[truncated]`).
    pub truncated: bool,
    pub source: Source,
    /// Bytes: estimated resident growth (faults, scaled by the sampling period), mapped bytes,
    /// or outstanding allocated bytes.
    pub bytes: u64,
    /// Events behind `bytes`: sampled faults, calls, or outstanding allocations.
    pub count: u64,
    /// Alloc mode: age of the oldest outstanding allocation.
    pub oldest_age: Option<Duration>,
    /// The task its thread was running when sampled, from the workers' task markers (None
    /// without markers, or between tasks).
    pub task: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Growth,
    Alloc,
}

/// One mode's findings for one process.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub pid: u32,
    pub comm: String,
    pub mode: Mode,
    /// How long the process was traced.
    pub duration: Duration,
    /// Growth mode: one fault in this many was sampled.
    pub sample_period: Option<u32>,
    /// Alloc mode: only allocations at least this old count.
    pub min_age: Option<Duration>,
    /// Ranked: most bytes first.
    pub stacks: Vec<StackRecord>,
    /// What the reader should know about completeness (lost samples, evictions, probes off).
    pub notes: Vec<String>,
}

impl Source {
    /// The name used in labels, folded stacks and the table (matches the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::PageFault => "page_fault",
            Source::Mmap => "mmap",
            Source::Brk => "brk",
            Source::Alloc => "alloc",
        }
    }
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Growth => "growth",
            Mode::Alloc => "alloc",
        }
    }
}

/// Stands in for the headline of a record that, against its contract, has no frames: the
/// output paths then print `[unknown]` instead of panicking.
static NO_FRAME: Frame = Frame {
    function: None,
    module: String::new(),
    offset: 0,
    address: 0,
    file: None,
    line: None,
    inlined: false,
    start_line: None,
    python: false,
};

/// The last component of a path: modules and source files are long absolute paths, and the
/// basename is what identifies them to a reader.
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl Frame {
    /// The function name, or `module+0xoffset` for a stripped module: the offset is what
    /// `addr2line -e module` takes, so the reader can still resolve it with the right binary.
    pub fn display_name(&self) -> String {
        match &self.function {
            Some(function) => function.clone(),
            None if self.module.is_empty() => format!("[unknown]+{:#x}", self.offset),
            None => format!("{}+{:#x}", basename(&self.module), self.offset),
        }
    }

    /// `file:line` (file as basename) when the module has line information.
    pub fn location(&self) -> Option<String> {
        let file = basename(self.file.as_deref()?);
        Some(match self.line {
            Some(line) => format!("{file}:{line}"),
            None => file.to_string(),
        })
    }

    /// A Python function outside the interpreter's standard library and frozen modules.
    pub fn is_user_python(&self) -> bool {
        let file = self.file.as_deref().unwrap_or_default();
        self.python && !file.starts_with('<') && !is_standard_library(file)
    }

    /// Part of the allocator or the C runtime: never where a leak is, only how it happened.
    pub fn is_allocator(&self) -> bool {
        is_runtime_module(basename(&self.module))
            || self.function.as_deref().is_some_and(is_allocator_function)
    }
}

/// `.../lib/python3.X/module.py`, outside site-packages and dist-packages.
fn is_standard_library(file: &str) -> bool {
    let Some((_, rest)) = file.split_once("/lib/python3") else {
        return false;
    };
    !rest.contains("/site-packages/") && !rest.contains("/dist-packages/")
}

/// Shared objects that implement allocation; frames in them say nothing about who leaks.
const RUNTIME_MODULE_PREFIXES: &[&str] = &[
    "libc.so",
    "libc-",
    "ld-linux",
    "ld-musl",
    "libjemalloc",
    "libtcmalloc",
    "libmimalloc",
    "libstdc++",
    "libgcc_s",
];

fn is_runtime_module(module_basename: &str) -> bool {
    RUNTIME_MODULE_PREFIXES
        .iter()
        .any(|prefix| module_basename.starts_with(prefix))
}

/// The C allocation API. Also matched behind the `__libc_` and `tc_` prefixes, so a
/// statically linked allocator is skipped like a shared one.
const ALLOCATOR_FUNCTIONS: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "reallocarray",
    "free",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "valloc",
    "pvalloc",
    // jemalloc's non-standard API.
    "mallocx",
    "rallocx",
    "xallocx",
    // glibc internals that show up when libc is linked statically.
    "_int_malloc",
    "_int_realloc",
    "_int_memalign",
    "sysmalloc",
    "tcache_init",
    // Rust's global-allocator shims between `alloc::alloc` and the system allocator.
    "__rust_alloc",
    "__rust_alloc_zeroed",
    "__rust_realloc",
    "__rdl_alloc",
    "__rdl_alloc_zeroed",
    "__rdl_realloc",
];

fn is_allocator_function(name: &str) -> bool {
    // Symbol versions (`malloc@@GLIBC_2.2.5`) and PLT stubs (`malloc@plt`) are the same entry.
    let name = name.split('@').next().unwrap_or(name);
    let name = name.strip_prefix("__GI_").unwrap_or(name);
    if ALLOCATOR_FUNCTIONS.contains(&name) {
        return true;
    }
    if let Some(rest) = name.strip_prefix("__libc_") {
        return ALLOCATOR_FUNCTIONS.contains(&rest);
    }
    if let Some(rest) = name.strip_prefix("tc_") {
        // tcmalloc also exports its C++ operators as tc_new, tc_newarray, tc_new_nothrow, ...
        return rest.starts_with("new") || ALLOCATOR_FUNCTIONS.contains(&rest);
    }
    // Every jemalloc symbol carries its namespace prefix: `je_` in prefixed builds, `_rjem_`
    // in the Rust jemallocator crates.
    if name.starts_with("je_") || name.starts_with("_rjem_") {
        return true;
    }
    // C++ operator new in all its overloads, demangled or not (_Znwm, _Znam,
    // _ZnwmRKSt9nothrow_t, _ZnwmSt11align_val_t, ...).
    name.starts_with("operator new") || name.starts_with("_Znw") || name.starts_with("_Zna")
}

impl StackRecord {
    /// Index in `frames` of the frame an engineer should look at first: the innermost frame
    /// outside the allocator and C runtime. Falls back to the leaf when every frame is part of
    /// them; None only for a record with no frames.
    pub fn headline_index(&self) -> Option<usize> {
        if self.frames.is_empty() {
            return None;
        }
        // In a Python process the user's code is the innermost Python frame outside the
        // standard library: below it are the interpreter's internals and the library's.
        if let Some(i) = self.frames.iter().position(Frame::is_user_python) {
            return Some(i);
        }
        Some(
            self.frames
                .iter()
                .position(|frame| !frame.is_allocator())
                .unwrap_or(0),
        )
    }

    /// The frame an engineer should look at first (see [`Self::headline_index`]). A record
    /// always has at least one frame; if one does not, this returns an `[unknown]` frame
    /// rather than panicking.
    pub fn headline(&self) -> &Frame {
        match self.headline_index() {
            Some(index) => &self.frames[index],
            None => &NO_FRAME,
        }
    }
}

impl Report {
    /// Most bytes first, then most events, then by headline name so equal stacks print in the
    /// same order on every run.
    pub fn rank(&mut self) {
        self.stacks.sort_by_cached_key(|stack| {
            (
                std::cmp::Reverse(stack.bytes),
                std::cmp::Reverse(stack.count),
                stack.headline().display_name(),
            )
        });
    }

    /// Bytes over every stack, not only the ones a table shows.
    pub fn total_bytes(&self) -> u64 {
        self.stacks
            .iter()
            .fold(0u64, |total, stack| total.saturating_add(stack.bytes))
    }
}

/// Two significant units at most (`42s`, `5m12s`, `3h04m`): an age, not a timestamp.
pub fn human_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs == 0 {
        return format!("{}ms", duration.as_millis());
    }
    let (days, hours, minutes, seconds) =
        (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    if days > 0 {
        format!("{days}d{hours:02}h")
    } else if hours > 0 {
        format!("{hours}h{minutes:02}m")
    } else if minutes > 0 {
        format!("{minutes}m{seconds:02}s")
    } else {
        format!("{seconds}s")
    }
}

/// Frames and reports for the tests of the output formats.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub fn frame(function: &str, module: &str, address: u64) -> Frame {
        Frame {
            function: Some(function.to_string()),
            module: module.to_string(),
            offset: address & 0xf_ffff,
            address,
            file: None,
            line: None,
            inlined: false,
            start_line: None,
            python: false,
        }
    }

    pub fn frame_at(function: &str, module: &str, address: u64, file: &str, line: u32) -> Frame {
        Frame {
            file: Some(file.to_string()),
            line: Some(line),
            ..frame(function, module, address)
        }
    }

    pub fn stripped(module: &str, address: u64, offset: u64) -> Frame {
        Frame {
            function: None,
            module: module.to_string(),
            offset,
            address,
            file: None,
            line: None,
            inlined: false,
            start_line: None,
            python: false,
        }
    }

    /// A Python function's frame, as the interpreter's frames resolve to.
    pub fn python(function: &str, file: &str, start_line: u32, line: u32) -> Frame {
        Frame {
            function: Some(function.to_string()),
            module: "[python]".to_string(),
            offset: 0,
            address: 0,
            file: Some(file.to_string()),
            line: Some(line),
            inlined: false,
            start_line: Some(start_line),
            python: true,
        }
    }

    pub fn libc(function: &str, address: u64) -> Frame {
        frame(function, "/usr/lib/x86_64-linux-gnu/libc.so.6", address)
    }

    pub fn record(frames: Vec<Frame>, source: Source, bytes: u64, count: u64) -> StackRecord {
        StackRecord {
            frames,
            truncated: false,
            source,
            bytes,
            count,
            oldest_age: None,
            task: None,
        }
    }

    pub fn report(mode: Mode, stacks: Vec<StackRecord>) -> Report {
        Report {
            pid: 4242,
            comm: "leak_paths".to_string(),
            mode,
            duration: Duration::from_secs(30),
            sample_period: (mode == Mode::Growth).then_some(16),
            min_age: (mode == Mode::Alloc).then_some(Duration::from_secs(10)),
            stacks,
            notes: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    const EXE: &str = "/opt/app/bin/server";

    #[test]
    fn display_name_of_stripped_frame_is_module_and_offset() {
        let frame = stripped("/opt/app/leak_paths.stripped", 0x5555_5555_5189, 0x1189);
        assert_eq!(frame.display_name(), "leak_paths.stripped+0x1189");
        assert_eq!(frame.location(), None);
    }

    #[test]
    fn display_name_prefers_function() {
        let frame = frame("cache_insert", EXE, 0x5555_5555_6000);
        assert_eq!(frame.display_name(), "cache_insert");
    }

    #[test]
    fn location_is_file_basename_and_line() {
        let frame = frame_at(
            "cache_insert",
            EXE,
            0x5555_5555_6000,
            "/src/app/cache.c",
            42,
        );
        assert_eq!(frame.location().as_deref(), Some("cache.c:42"));
    }

    #[test]
    fn headline_skips_libc_and_allocator_frames() {
        let stack = record(
            vec![
                libc("_int_malloc", 0x7fff_0000_1000),
                libc("malloc", 0x7fff_0000_2000),
                frame("_Znwm", "/usr/lib/libstdc++.so.6.0.33", 0x7fff_1000_0000),
                frame("tc_newarray", EXE, 0x5555_5555_5000),
                frame("operator new[](unsigned long)", EXE, 0x5555_5555_5100),
                frame("je_malloc_default", EXE, 0x5555_5555_5200),
                frame("__GI___libc_calloc", EXE, 0x5555_5555_5300),
                frame("posix_memalign@plt", EXE, 0x5555_5555_5400),
                frame("cache_insert", EXE, 0x5555_5555_6000),
                frame("main", EXE, 0x5555_5555_7000),
            ],
            Source::Alloc,
            1,
            1,
        );
        assert_eq!(stack.headline_index(), Some(8));
        assert_eq!(stack.headline().display_name(), "cache_insert");
    }

    #[test]
    fn headline_of_a_python_stack_is_the_innermost_user_python_frame() {
        let lib = "/usr/lib/python3.11/json/decoder.py";
        let stack = record(
            vec![
                libc("malloc", 0x7fff_0000_2000),
                frame("_PyObject_Malloc", "/usr/bin/python3.11", 0x5555_0000_1000),
                python("JSONDecoder.raw_decode", lib, 343, 353),
                python(
                    "<frozen importlib._bootstrap>",
                    "<frozen importlib._bootstrap>",
                    1,
                    2,
                ),
                python("keep_document", "/app/jobs.py", 15, 16),
                python("<module>", "/app/jobs.py", 1, 30),
            ],
            Source::PageFault,
            1,
            1,
        );
        assert_eq!(stack.headline().display_name(), "keep_document");
        assert_eq!(stack.headline().location().as_deref(), Some("jobs.py:16"));
        // Site-packages are the user's dependencies, not the standard library.
        let celery = "/venv/lib/python3.11/site-packages/celery/app/task.py";
        let stack = record(
            vec![python("Task.__call__", celery, 400, 411)],
            Source::Alloc,
            1,
            1,
        );
        assert_eq!(stack.headline().display_name(), "Task.__call__");
    }

    #[test]
    fn headline_does_not_skip_lookalike_user_functions() {
        let stack = record(
            vec![
                frame("tc_parse", EXE, 0x5555_5555_5000),
                frame("main", EXE, 0x5555_5555_7000),
            ],
            Source::Alloc,
            1,
            1,
        );
        assert_eq!(stack.headline().display_name(), "tc_parse");
    }

    #[test]
    fn headline_falls_back_to_leaf_when_all_frames_are_runtime() {
        let stack = record(
            vec![
                libc("malloc", 0x7fff_0000_2000),
                libc("__libc_start_main", 0x7fff_0000_3000),
            ],
            Source::Alloc,
            1,
            1,
        );
        assert_eq!(stack.headline_index(), Some(0));
        assert_eq!(stack.headline().display_name(), "malloc");
    }

    #[test]
    fn headline_of_empty_stack_is_placeholder() {
        let stack = record(Vec::new(), Source::Mmap, 1, 1);
        assert_eq!(stack.headline_index(), None);
        assert_eq!(stack.headline().display_name(), "[unknown]+0x0");
    }

    #[test]
    fn durations_keep_two_units() {
        assert_eq!(human_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(human_duration(Duration::from_secs(42)), "42s");
        assert_eq!(human_duration(Duration::from_secs(312)), "5m12s");
        assert_eq!(
            human_duration(Duration::from_secs(3 * 3600 + 4 * 60 + 5)),
            "3h04m"
        );
        assert_eq!(
            human_duration(Duration::from_secs(2 * 86_400 + 3600)),
            "2d01h"
        );
    }

    #[test]
    fn rank_orders_by_bytes_then_count_then_name() {
        let mut report = report(
            Mode::Growth,
            vec![
                record(vec![frame("small", EXE, 0x1)], Source::PageFault, 10, 9),
                record(vec![frame("zeta", EXE, 0x2)], Source::PageFault, 100, 1),
                record(vec![frame("alpha", EXE, 0x3)], Source::PageFault, 100, 1),
                record(vec![frame("busy", EXE, 0x4)], Source::PageFault, 100, 5),
            ],
        );
        report.rank();
        let order: Vec<String> = report
            .stacks
            .iter()
            .map(|stack| stack.headline().display_name())
            .collect();
        assert_eq!(order, ["busy", "alpha", "zeta", "small"]);
        assert_eq!(report.total_bytes(), 310);
    }
}
