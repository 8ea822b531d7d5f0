//! Types of the stack-sampling programs (`leakscope investigate` and `/debug/pprof/growth`):
//! growth stacks for any allocator, and outstanding allocations from allocator uprobes.

/// tgid -> [`GrowthTarget`]: the processes whose growth is sampled; written by user space.
pub const GROWTH_TARGETS_MAP: &str = "GROWTH_TARGETS";
/// [`GrowthKey`] -> [`GrowthValue`]: growth aggregated by stack in the kernel.
pub const GROWTH_MAP: &str = "GROWTH";
/// [`PageKey`] -> [`PageSample`]: the last sampled fault that brought the page in. User space
/// checks which of these pages are still resident at the end (`/proc/PID/pagemap`) and were
/// not released since (GROWTH_RELEASES), so memory faulted in and released again does not
/// count as growth, even when a later mapping reuses its addresses.
pub const GROWTH_PAGES_MAP: &str = "GROWTH_PAGES";
/// [`ReleaseKey`] -> [`Release`]: address ranges the targets gave back (munmap, madvise
/// DONTNEED/FREE/REMOVE, brk shrinking), latest per start address.
pub const GROWTH_RELEASES_MAP: &str = "GROWTH_RELEASES";
/// Stack id -> user stack (frame-pointer walk), shared by growth and alloc.
pub const STACKS_MAP: &str = "STACKS";
/// Address -> [`AllocInfo`]: allocations not freed yet. A plain hash, not LRU: the oldest
/// entries are the leaks, so a full table refuses new entries (counted) instead of evicting.
pub const ALLOCS_MAP: &str = "ALLOCS";
/// tid -> [`AllocPending`]: an allocator call between its entry and its return.
pub const ALLOC_PENDING_MAP: &str = "ALLOC_PENDING";
/// Per-CPU counters indexed by [`StackCounter`].
pub const STACK_COUNTERS_MAP: &str = "STACK_COUNTERS";

pub const DEFAULT_MAX_STACKS: u32 = 16_384;
pub const DEFAULT_MAX_GROWTH_KEYS: u32 = 16_384;
pub const DEFAULT_MAX_GROWTH_TARGETS: u32 = 64;
/// Sampled pages remembered: at one fault in 16, 16 GiB of growth.
pub const DEFAULT_MAX_GROWTH_PAGES: u32 = 262_144;
pub const DEFAULT_MAX_GROWTH_RELEASES: u32 = 65_536;
pub const DEFAULT_MAX_ALLOCS: u32 = 1_000_000;
pub const DEFAULT_MAX_PENDING: u32 = 16_384;

#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct GrowthTarget {
    /// The sampling period in force when the process became a target (for its reports).
    pub period: u32,
    pub _pad: u32,
}

/// Per-CPU page-fault sampler ([`GROWTH_SAMPLER_MAP`]). It counts down on the faults of every
/// process, so that a fault that is not sampled costs no hash lookup: only a sampled one asks
/// whether its process is a target. Each fault has the same chance, so each target is
/// sampled at the same rate.
#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct GrowthSampler {
    /// Sample one fault in `period` on average (1 = every fault).
    pub period: u32,
    /// Faults left before the next sample, drawn at random in `1..2 * period` after each one
    /// so that a fault pattern repeating with the period cannot hide a call site.
    pub countdown: u32,
}

/// [`GrowthSampler`], one per CPU.
pub const GROWTH_SAMPLER_MAP: &str = "GROWTH_SAMPLER";

/// Growth sampling's default: one page fault in 64, about 1.5% of a fault-bound process's
/// faults paying for a user stack.
pub const DEFAULT_SAMPLE_PERIOD: u32 = 64;

/// Allocation sampling's default: on average one sampled block per this many bytes allocated.
/// Global of the kernel object: `ALLOC_SAMPLE_BYTES` (0 or 1: every block).
pub const DEFAULT_ALLOC_SAMPLE_BYTES: u64 = 64 << 10;

/// Where growth came from; also [`GrowthKey::source`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum GrowthSource {
    PageFault = 0,
    Mmap = 1,
    Brk = 2,
}

impl GrowthSource {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::PageFault),
            1 => Some(Self::Mmap),
            2 => Some(Self::Brk),
            _ => None,
        }
    }
}

#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct GrowthKey {
    pub tgid: u32,
    /// Id in [`STACKS_MAP`]; negative when the stack could not be taken.
    pub stack_id: i32,
    pub source: u32,
    /// The task the sampled thread was running ([`TASK_THREADS_MAP`]), [`NO_TASK`] if none.
    pub task: u32,
    /// The word at the user stack pointer when the event was raised inside a syscall wrapper:
    /// the return address into the wrapper's caller, which a frame-pointer walk skips because
    /// libc's wrappers keep no frame. 0 for page faults. User space keeps it only if it points
    /// just after a call instruction.
    pub return_hint: u64,
    /// The Python stack: a key of [`PY_STACKS_MAP`], or one of the `PY_*` reasons below it.
    pub py_stack: u64,
}

#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct PageKey {
    pub tgid: u32,
    pub _pad: u32,
    /// Page-aligned user address.
    pub page: u64,
}

#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct GrowthValue {
    /// Sampled events.
    pub events: u64,
    /// Estimated bytes: pages x sample period for faults, lengths for mmap/brk.
    pub bytes: u64,
}

/// Allocator entry points, by the arguments they take.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum AllocKind {
    /// size in arg0: malloc, valloc, pvalloc, mallocx, operator new
    Malloc = 0,
    /// count in arg0, size in arg1: calloc
    Calloc = 1,
    /// old pointer in arg0, size in arg1: realloc, rallocx
    Realloc = 2,
    /// alignment in arg0, size in arg1: aligned_alloc, memalign
    Memalign = 3,
    /// result pointer in arg0, size in arg2: posix_memalign
    PosixMemalign = 4,
}

/// What the return probe needs from the entry.
#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct AllocPending {
    pub size: u64,
    /// posix_memalign: where the pointer is written.
    pub out_ptr: u64,
    pub return_address: u64,
    pub stack_id: i32,
    pub kind: u32,
    /// As [`GrowthKey::py_stack`].
    pub py_stack: u64,
    /// As [`AllocInfo::sample_id`].
    pub sample_id: u64,
}

#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct AllocInfo {
    pub size: u64,
    /// CLOCK_BOOTTIME, ns.
    pub timestamp_ns: u64,
    /// The allocator call's return address, read at its entry: the caller's frame, which a
    /// frame-pointer walk from inside an allocator that keeps no frame pointer misses.
    pub return_address: u64,
    pub stack_id: i32,
    pub tgid: u32,
    /// As [`GrowthKey::py_stack`].
    pub py_stack: u64,
    /// As [`PageSample::sample_id`], for the allocator call's entry.
    pub sample_id: u64,
    /// As [`GrowthKey::task`], when the block was returned.
    pub task: u32,
    pub _pad: u32,
}

/// A sampled page fault: its stack and when (`bpf_ktime_get_ns`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct PageSample {
    pub stack_id: i64,
    pub sampled_ns: u64,
    /// As [`GrowthKey::py_stack`].
    pub py_stack: u64,
    /// The [`UnwindSample::sample_id`] sent for this fault, whose unwound stack user space
    /// charges the page to; 0 when none was sent (frame-pointer mode, or the ring was full).
    pub sample_id: u64,
    /// As [`GrowthKey::task`].
    pub task: u32,
    pub _pad: u32,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct ReleaseKey {
    pub tgid: u32,
    pub _pad: u32,
    /// Page-aligned start of the range.
    pub start: u64,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Release {
    /// End of the range (exclusive).
    pub end: u64,
    /// When (`bpf_ktime_get_ns`, at the syscall's entry).
    pub released_ns: u64,
}

/// Counters of the stack-sampling programs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum StackCounter {
    /// Events sampled into [`GROWTH_MAP`].
    GrowthSampled = 0,
    /// Stacks the stack map could not take (full, or a hash collision).
    StackLost,
    /// Failed inserts into [`GROWTH_MAP`] or [`GROWTH_PAGES_MAP`].
    GrowthKeyLost,
    /// Allocator calls seen at entry.
    AllocCalls,
    /// Allocations recorded in [`ALLOCS_MAP`].
    AllocTracked,
    /// Frees that removed a recorded allocation.
    AllocFreed,
    /// Allocations [`ALLOCS_MAP`] had no room for.
    AllocLost,
    /// Returns without a pending entry (the entry probe was attached mid-call, or its pending
    /// entry did not fit).
    AllocUnpaired,
    /// Free calls seen.
    FreeCalls,
    /// Released ranges [`GROWTH_RELEASES_MAP`] had no room for.
    ReleaseLost,
    /// Python stacks [`PY_STACKS_MAP`] had no room for.
    PyStackLost,
    /// Samples sent to [`UNWIND_SAMPLES_MAP`] for user space to unwind.
    UnwindSent,
    /// Samples [`UNWIND_SAMPLES_MAP`] had no room for (user space drains too slowly): they
    /// keep their frame-pointer stack.
    UnwindLost,
}

impl StackCounter {
    pub const COUNT: u32 = 13;
    pub const ALL: [StackCounter; Self::COUNT as usize] = [
        Self::GrowthSampled,
        Self::StackLost,
        Self::GrowthKeyLost,
        Self::AllocCalls,
        Self::AllocTracked,
        Self::AllocFreed,
        Self::AllocLost,
        Self::AllocUnpaired,
        Self::FreeCalls,
        Self::ReleaseLost,
        Self::PyStackLost,
        Self::UnwindSent,
        Self::UnwindLost,
    ];
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for GrowthTarget {}
    unsafe impl aya::Pod for GrowthSampler {}
    unsafe impl aya::Pod for GrowthKey {}
    unsafe impl aya::Pod for GrowthValue {}
    unsafe impl aya::Pod for PageKey {}
    unsafe impl aya::Pod for PageSample {}
    unsafe impl aya::Pod for ReleaseKey {}
    unsafe impl aya::Pod for Release {}
    unsafe impl aya::Pod for AllocPending {}
    unsafe impl aya::Pod for AllocInfo {}
    unsafe impl aya::Pod for PyTarget {}
    unsafe impl aya::Pod for PyFrame {}
    unsafe impl aya::Pod for PyStack {}
    unsafe impl aya::Pod for UnwindSample {}
    unsafe impl aya::Pod for TaskName {}
}

/// Ring buffer of [`UnwindSample`]s: the registers and the top of the user stack of each
/// sampled event, for user space to unwind with the modules' DWARF call-frame information
/// (`--unwind dwarf`). Frame pointers alone miss every caller of a function built without
/// them (Debian's libc `memset`, most CPython builds).
pub const UNWIND_SAMPLES_MAP: &str = "UNWIND_SAMPLES";
// The kernel object's global `UNWIND_COPY_BYTES` (`globals::UNWIND_COPY_BYTES`): bytes of
// user stack copied per sample, 0 for no record at all (`--unwind fp`); at most
// UNWIND_STACK_BYTES.

/// The stack slice one record holds. perf's `--call-graph dwarf` copies 8 KiB by default;
/// CPython's evaluation loop keeps frames of several hundred bytes and C extensions nest
/// it, so twice that reaches the worker's own code in the cases measured here. Whatever lies
/// beyond is joined from the frame-pointer walk where it is valid, or marked truncated.
pub const UNWIND_STACK_BYTES: usize = 16 * 1024;
/// The slice is copied in pieces of this size, so a slice that runs past the end of the
/// stack mapping keeps what lies before it.
pub const UNWIND_CHUNK_BYTES: usize = 4096;
/// Ring size: 256 records of 16 KiB, drained continuously (a few ms of work each);
/// a record that finds it full is counted in [`StackCounter::UnwindLost`].
pub const UNWIND_RING_BYTES: u32 = 4 * 1024 * 1024;

/// [`UnwindSample::kind`]
pub const UNWIND_GROWTH: u32 = 0;
pub const UNWIND_ALLOC: u32 = 1;

/// One sampled event for user-space unwinding ([`UNWIND_SAMPLES_MAP`]).
#[derive(Copy, Clone)]
#[repr(C)]
pub struct UnwindSample {
    /// Never 0; the id [`PageSample`] and [`AllocInfo`] refer to.
    pub sample_id: u64,
    pub ktime_ns: u64,
    pub tid: u32,
    /// [`UNWIND_GROWTH`] or [`UNWIND_ALLOC`].
    pub kind: u32,
    /// The key the kernel aggregates this event under (frame-pointer stack id included, for
    /// the frames beyond the copied slice); for allocations `source` is unused.
    pub key: GrowthKey,
    /// Growth: estimated bytes the event stands for; alloc: the requested size.
    pub bytes: u64,
    /// User registers at the event: x86_64 rip, rsp, rbp (lr 0); aarch64 pc, sp, x29, x30.
    pub ip: u64,
    pub sp: u64,
    pub fp: u64,
    pub lr: u64,
    /// Bytes of `stack` that hold the user stack from `sp` upward.
    pub stack_len: u32,
    pub _pad: u32,
    pub stack: [u8; UNWIND_STACK_BYTES],
}

/// Host tid -> task id: the task each thread is running, from the workers' task markers;
/// written by the agent at each begin and end marker, read by the samplers. LRU: a thread
/// that died inside a task leaves an entry the next ones push out.
pub const TASK_THREADS_MAP: &str = "TASK_THREADS";
/// Task id -> [`TaskName`], written by the agent when it first sees a task name; user space
/// names the samples' task ids with it. Not read by the programs.
pub const TASK_NAMES_MAP: &str = "TASK_NAMES";
pub const DEFAULT_MAX_TASK_THREADS: u32 = 16_384;
pub const DEFAULT_MAX_TASK_NAMES: u32 = 1_024;
/// No task running (or no markers).
pub const NO_TASK: u32 = 0;
/// The protocol's longest task name.
pub const TASK_NAME_BYTES: usize = 128;

#[derive(Copy, Clone, Debug)]
#[repr(C)]
pub struct TaskName {
    pub len: u32,
    pub name: [u8; TASK_NAME_BYTES],
}

/// pid -> [`PyTarget`]: CPython processes whose samples also record the Python call path;
/// written by user space, which found the interpreter and its version.
pub const PY_TARGETS_MAP: &str = "PY_TARGETS";
/// Python stack key -> [`PyStack`]: the interpreter frames of sampled events, leaf first.
pub const PY_STACKS_MAP: &str = "PY_STACKS";
pub const DEFAULT_MAX_PY_STACKS: u32 = 8_192;
/// Interpreter frames recorded per sample; deeper stacks keep their innermost frames and are
/// marked [`PY_TRUNCATED`].
pub const PY_MAX_FRAMES: usize = 64;

/// `py_stack` reasons, below any real key (which is a hash forced above them).
/// Not a Python target.
pub const PY_NONE: u64 = 0;
/// The sampled thread does not hold the GIL (or the interpreter has no current thread).
pub const PY_NO_GIL: u64 = 1;
/// The thread state or its frames could not be read.
pub const PY_UNREADABLE: u64 = 2;
/// [`PY_STACKS_MAP`] was full.
pub const PY_LOST: u64 = 3;
/// The thread holds the GIL but runs no Python code (start-up, shutdown, a C thread).
pub const PY_EMPTY: u64 = 4;
/// Keys at or above this are [`PY_STACKS_MAP`] keys.
pub const PY_FIRST_KEY: u64 = 16;

/// [`PyStack::flags`]: the chain went on past [`PY_MAX_FRAMES`].
pub const PY_TRUNCATED: u32 = 1;
/// [`PyStack::flags`]: a read failed mid-chain (frames changed under the walk).
pub const PY_BROKEN: u32 = 2;

/// Where a CPython process keeps the thread state holding the GIL and the layout of the
/// structures on the way to its frames (byte offsets for one interpreter version, see user
/// space's table).
#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct PyTarget {
    /// The target's pid namespace (nsfs device, kernel encoding, and inode): CPython records
    /// thread ids as the process sees them, which inside a container are not the host's.
    pub pidns_dev: u64,
    pub pidns_ino: u64,
    /// Address, in the target, of the first pointer on the way to the thread state
    /// (3.11: `_PyRuntime.gilstate.tstate_current`, the thread state itself; 3.12:
    /// `_PyRuntime.interpreters.main`).
    pub tstate_root: u64,
    /// Offsets added to each further pointer read (3.12: `ceval.gil`, then
    /// `last_holder`); the first `tstate_hops_len` are used.
    pub tstate_hops: [u32; PY_MAX_HOPS],
    pub tstate_hops_len: u32,
    /// The thread state's pointer towards the current frame: to a `_PyCFrame` (3.11, 3.12)
    /// whose `current_frame` is at `cframe_current_frame`, or (`cframe_indirect` 0, 3.13+)
    /// `current_frame` itself.
    pub tstate_cframe: u32,
    pub tstate_native_thread_id: u32,
    pub cframe_current_frame: u32,
    pub cframe_indirect: u32,
    pub frame_code: u32,
    pub frame_previous: u32,
    pub frame_prev_instr: u32,
    /// The byte that says a frame is an entry frame (3.11's `is_entry`), kept through
    /// `entry_mask` (0 for versions without it, whose entry frames follow a shim).
    pub frame_is_entry: u32,
    pub entry_mask: u32,
    pub frame_owner: u32,
    /// `owner` of the C-stack shim frames to skip (3.12+); [`PY_NO_OWNER`] (no byte equals
    /// it) when none.
    pub owner_cstack: u32,
}

pub const PY_MAX_HOPS: usize = 2;

const _: () = assert!(core::mem::size_of::<PyTarget>() == 80);

pub const PY_NO_OWNER: u32 = u32::MAX;

/// One interpreter frame: its code object and the `prev_instr` pointer into the code.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PyFrame {
    pub code: u64,
    pub instr: u64,
}

#[derive(Copy, Clone, Debug)]
#[repr(C)]
pub struct PyStack {
    pub len: u32,
    pub flags: u32,
    /// Bit i set: frame i is an entry frame, the first one a `_PyEval_EvalFrameDefault` call
    /// ran (the outermost of its call's frames).
    pub entries: u64,
    /// Bit i set: frame i is a C-stack shim (`owner` is [`PyTarget::owner_cstack`]), which
    /// user space skips.
    pub shims: u64,
    pub frames: [PyFrame; PY_MAX_FRAMES],
}
