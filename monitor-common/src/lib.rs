//! Types shared by the kernel programs (`monitor-ebpf`) and the agent (`monitor-user`).
//!
//! Every type here is `#[repr(C)]`, made of fixed-width fields with explicit padding, so the
//! byte layout the kernel writes is the one user space reads.
#![no_std]

pub mod stacks;

/// Per-process state, keyed by tgid. Written by the rss/sched programs, read by the agent.
pub const PROCS_MAP: &str = "PROCS";
/// Which process owns an address space, keyed by [`ProcStats::mm`].
pub const MM_OWNERS_MAP: &str = "MM_OWNERS";
/// Lifecycle events (fork, exec, exit, OOM kill) for the agent.
pub const EVENTS_MAP: &str = "EVENTS";
/// One-slot per-CPU array whose slots locate each CPU's per-CPU area (see
/// [`IterLayout::array_pptrs`]); never written.
pub const CPU_BASE_MAP: &str = "CPU_BASE";
/// Per-CPU counters indexed by [`Counter`].
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Per-thread memory accounting ([`ThreadStats`]), keyed by tid; LRU.
pub const THREADS_MAP: &str = "THREADS";
/// Processes (tgids) the agent wants per-thread accounting for; written by the agent only.
pub const THREAD_WANT_MAP: &str = "THREAD_WANT";
/// One-slot array: the generation of [`THREAD_WANT_MAP`], bumped by the agent on every change
/// so each process re-reads its flag once instead of looking it up on every page fault.
pub const THREAD_CONFIG_MAP: &str = "THREAD_CONFIG";

/// Names of the object's globals (`Global<T>` statics in monitor-ebpf, which must carry these
/// exact names), set by the user side at load time.
pub mod globals {
    pub const RSS_STAT_OFFSETS: &str = "RSS_STAT_OFFSETS";
    pub const KERNEL_LAYOUT: &str = "KERNEL_LAYOUT";
    pub const NEWTASK_OFFSETS: &str = "NEWTASK_OFFSETS";
    pub const EXIT_OFFSETS: &str = "EXIT_OFFSETS";
    pub const MARK_VICTIM_OFFSETS: &str = "MARK_VICTIM_OFFSETS";
    pub const ALLOC_SAMPLE_BYTES: &str = "ALLOC_SAMPLE_BYTES";
    pub const UNWIND_COPY_BYTES: &str = "UNWIND_COPY_BYTES";
    pub const ITER_LAYOUT: &str = "ITER_LAYOUT";
}

/// The task iterator's program (section `iter/task`), reading with `bpf_probe_read_kernel`:
/// the fallback where the typed one is refused.
pub const TASK_ITER_PROGRAM: &str = "task_iter";

/// The task iterator reading through BTF-typed pointers (section `iter/task`): the one loaded
/// first, as it costs a fraction of the other per task.
pub const TASK_ITER_TYPED_PROGRAM: &str = "task_iter_typed";

/// Default capacity of [`THREADS_MAP`].
pub const DEFAULT_MAX_THREADS: u32 = 16_384;
/// Default capacity of [`THREAD_WANT_MAP`].
pub const DEFAULT_MAX_THREAD_PROCS: u32 = 1_024;

/// Default capacity of the per-process maps; the agent may override it at load time.
pub const DEFAULT_MAX_PROCS: u32 = 32_768;
/// Ring buffer size for lifecycle events; fork/exec/exit are rare next to page faults.
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;

/// Value of an RSS member the kernel has not reported yet for the current mm.
pub const RSS_UNKNOWN: i64 = -1;

/// The kernel's `MM_*` counters, in the order `kmem:rss_stat` numbers them
/// (`enum { MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS, MM_SHMEMPAGES }`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum RssKind {
    File = 0,
    Anon = 1,
    Swap = 2,
    Shmem = 3,
}

impl RssKind {
    pub const COUNT: usize = 4;
    pub const ALL: [RssKind; Self::COUNT] = [Self::File, Self::Anon, Self::Swap, Self::Shmem];

    pub const fn label(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Anon => "anon",
            Self::Swap => "swap",
            Self::Shmem => "shmem",
        }
    }
}

/// Kernel-side view of one process (thread group).
#[derive(Copy, Clone, Debug)]
#[repr(C)]
pub struct ProcStats {
    /// Bytes per [`RssKind`], exactly as the kernel last reported them for the current mm;
    /// [`RSS_UNKNOWN`] until the first report.
    pub rss: [i64; RssKind::COUNT],
    /// Highest resident total (file + anon + shmem) seen for the current mm.
    pub peak_bytes: u64,
    /// `CLOCK_BOOTTIME` nanoseconds at fork, 0 when the process predates the agent.
    pub start_ns: u64,
    /// cgroup v2 id of the process, as of its fork, exec or first RSS change.
    pub cgroup_id: u64,
    /// The address space the numbers above belong to (changes at exec): the `mm_struct`
    /// address on the BTF path, the `mm_id` hash of `kmem:rss_stat` on the tracefs path.
    /// Never leaves the agent.
    pub mm: u64,
    pub ppid: u32,
    /// 1 when the agent wants per-thread accounting for this process (as of `threads_gen`).
    pub threads: u32,
    /// The [`THREAD_CONFIG_MAP`] generation `threads` was read at.
    pub threads_gen: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ProcStats>() == 80);

impl ProcStats {
    pub const fn new(start_ns: u64, ppid: u32, cgroup_id: u64) -> Self {
        Self {
            rss: [RSS_UNKNOWN; RssKind::COUNT],
            peak_bytes: 0,
            start_ns,
            cgroup_id,
            mm: 0,
            ppid,
            threads: 0,
            threads_gen: 0,
            _pad: 0,
        }
    }

    /// Resident bytes (file + anon + shmem; swap is not resident), unknown members as 0.
    pub fn resident_bytes(&self) -> u64 {
        let part = |k: RssKind| self.rss[k as usize].max(0) as u64;
        part(RssKind::File) + part(RssKind::Anon) + part(RssKind::Shmem)
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum EventKind {
    Fork = 1,
    Exec = 2,
    Exit = 3,
    OomKill = 4,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Fork),
            2 => Some(Self::Exec),
            3 => Some(Self::Exit),
            4 => Some(Self::OomKill),
            _ => None,
        }
    }
}

/// A lifecycle event sent through [`EVENTS_MAP`].
#[derive(Copy, Clone, Debug)]
#[repr(C)]
pub struct LifecycleEvent {
    /// An [`EventKind`].
    pub kind: u32,
    pub pid: u32,
    pub ppid: u32,
    /// Exit: the kernel's `task->exit_code` (status << 8, or the killing signal); else 0.
    pub exit_code: u32,
    /// `CLOCK_BOOTTIME` nanoseconds when the event happened.
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
    /// Exit: the process's last [`ProcStats::rss`]; OOM kill: anon, file, shmem bytes at the kill.
    pub rss: [i64; RssKind::COUNT],
    /// Exit: peak resident bytes; OOM kill: total_vm bytes.
    pub peak_bytes: u64,
}
const _: () = assert!(core::mem::size_of::<LifecycleEvent>() == 88);

/// Indexes into [`COUNTERS_MAP`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Counter {
    /// `kmem:rss_stat` events handled.
    RssEvents = 0,
    /// rss_stat events for an mm no tracked process owns (e.g. pages copied during fork).
    RssUnowned,
    /// rss_stat events for an mm its owner has replaced (the old mm of an exec).
    RssStaleMm,
    /// Failed inserts into [`PROCS_MAP`].
    ProcInsertFailed,
    /// Failed inserts into [`MM_OWNERS_MAP`].
    MmInsertFailed,
    /// Entries inserted into [`PROCS_MAP`] by the kernel.
    ProcInserted,
    /// Entries removed from [`PROCS_MAP`] at exit.
    ProcRemoved,
    /// Lifecycle events the ring buffer had no room for.
    EventsDropped,
    ForkEvents,
    ExecEvents,
    ExitEvents,
    OomEvents,
    /// Failed reads of tracepoint fields.
    ReadFailed,
    /// mmap/munmap/mremap/brk calls accounted to a thread.
    MemSyscalls,
    /// Entries inserted into [`THREADS_MAP`] by the kernel.
    ThreadInserted,
    /// Failed inserts into [`THREADS_MAP`].
    ThreadInsertFailed,
}

impl Counter {
    pub const COUNT: u32 = 16;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Self::RssEvents,
        Self::RssUnowned,
        Self::RssStaleMm,
        Self::ProcInsertFailed,
        Self::MmInsertFailed,
        Self::ProcInserted,
        Self::ProcRemoved,
        Self::EventsDropped,
        Self::ForkEvents,
        Self::ExecEvents,
        Self::ExitEvents,
        Self::OomEvents,
        Self::ReadFailed,
        Self::MemSyscalls,
        Self::ThreadInserted,
        Self::ThreadInsertFailed,
    ];
}

/// Kernel struct layout for the BTF path of the rss program (raw tracepoint `rss_stat`), read
/// from `/sys/kernel/btf/vmlinux` at load time.
#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct KernelLayout {
    /// `offsetof(struct task_struct, mm)`
    pub task_mm: u32,
    /// `offsetof(struct mm_struct, rss_stat)`: an array of `struct percpu_counter`
    pub mm_rss_stat: u32,
    /// `sizeof(struct percpu_counter)`
    pub counter_size: u32,
    /// `offsetof(struct percpu_counter, count)`
    pub counter_count: u32,
    /// log2 of the page size, to turn page counts into bytes
    pub page_shift: u32,
    /// `offsetof(struct task_struct, exit_code)`; 0 when unknown.
    pub task_exit_code: u32,
    /// `offsetof(struct mm_struct, brk)`; 0 when unknown (brk is then not accounted).
    pub mm_brk: u32,
    /// `offsetof(struct task_struct, pid)` and `comm`: the raw `task_newtask` program reads the
    /// new task through them. 0 when unknown (the classic tracepoint is used instead).
    pub task_pid: u32,
    pub task_comm: u32,
}

impl KernelLayout {
    /// Whether the raw `task_newtask` program can read what it needs.
    pub fn knows_new_tasks(&self) -> bool {
        self.task_pid != 0 && self.task_comm != 0
    }
}

/// What one thread did to its process's memory, since the agent asked for its process.
/// Written only by the thread itself (events it raised), so plain increments are exact.
#[derive(Copy, Clone, Debug)]
#[repr(C)]
pub struct ThreadStats {
    /// The thread's process; a tid reused by another process resets the entry.
    pub tgid: u32,
    /// A [`PendingKind`]: what `pending` holds while a syscall is in flight.
    pub pending_kind: u32,
    /// Bytes the thread's own changes added to its process's RSS counters (page faults).
    pub rss_added: u64,
    /// Bytes the thread's own changes removed from them (munmap, madvise, exit of a mapping).
    pub rss_removed: u64,
    /// Bytes of address space the thread mapped: mmap, growing mremap, growing brk.
    pub mapped: u64,
    /// Bytes of address space the thread unmapped: munmap, shrinking mremap, shrinking brk.
    pub unmapped: u64,
    /// The in-flight call's length change (or the break before a brk), applied at its exit
    /// only if it succeeded.
    pub pending: i64,
    /// The thread's comm when it was first seen or last made a memory syscall.
    pub comm: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<ThreadStats>() == 64);

impl ThreadStats {
    pub const fn new(tgid: u32, comm: [u8; 16]) -> Self {
        Self {
            tgid,
            pending_kind: PendingKind::None as u32,
            rss_added: 0,
            rss_removed: 0,
            mapped: 0,
            unmapped: 0,
            pending: 0,
            comm,
        }
    }

    /// Net RSS the thread added (what it faulted in minus what it released).
    pub fn rss_growth(&self) -> i64 {
        self.rss_added as i64 - self.rss_removed as i64
    }

    /// Net address space the thread mapped.
    pub fn mapped_growth(&self) -> i64 {
        self.mapped as i64 - self.unmapped as i64
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum PendingKind {
    None = 0,
    /// `pending` is a signed length change (mmap +len, munmap -len, mremap new-old).
    Delta = 1,
    /// `pending` is the break before a brk call; the call returns the new break.
    Brk = 2,
}

/// Byte offsets of the tracepoint fields the programs read, taken from tracefs `format` files
/// at load time. One object then runs on kernels whose layouts differ.
#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct RssStatOffsets {
    pub mm_id: u32,
    pub curr: u32,
    pub member: u32,
    pub size: u32,
}

#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct NewTaskOffsets {
    pub pid: u32,
    pub comm: u32,
    pub clone_flags: u32,
    pub _pad: u32,
}

#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct ExitOffsets {
    pub pid: u32,
    /// `u32::MAX` when the kernel's `sched_process_exit` has no `group_dead` field.
    pub group_dead: u32,
}

#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct MarkVictimOffsets {
    pub pid: u32,
    pub total_vm: u32,
    pub anon_rss: u32,
    pub file_rss: u32,
    pub shmem_rss: u32,
    pub _pad: u32,
}

/// What the task iterator and the exit program read beyond [`KernelLayout`], from BTF at load
/// time. A zero offset means unknown: the field it leads to is left at 0.
#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct IterLayout {
    /// `offsetof(struct task_struct, tgid)`
    pub task_tgid: u32,
    /// `offsetof(struct task_struct, real_parent)`
    pub task_real_parent: u32,
    /// `offsetof(struct task_struct, start_boottime)`: `CLOCK_BOOTTIME` ns at fork.
    pub task_start_boottime: u32,
    /// `offsetof(struct task_struct, cgroups)`, `offsetof(struct css_set, dfl_cgrp)`,
    /// `offsetof(struct cgroup, kn)`, `offsetof(struct kernfs_node, id)`: the cgroup v2 id.
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// `offsetof(struct mm_struct, hiwater_rss)`: the peak, as /proc's VmHWM takes it.
    pub mm_hiwater_rss: u32,
    /// `offsetof(struct percpu_counter, counters)`: the per-CPU deltas not yet in `count`.
    pub counter_counters: u32,
    /// Possible CPUs whose deltas are summed (at most [`MAX_ITER_CPUS`]); 0 when
    /// `per_cpu_offset` is unknown: `count` alone is read.
    pub nr_cpus: u32,
    /// Address of the kernel's `__per_cpu_offset` array (from /proc/kallsyms).
    pub per_cpu_offset: u64,
    /// 1 when `sched_process_exit` fires before `exit_mm` (it carries `group_dead`, 6.16+):
    /// the exit program then reads the final RSS from the exiting task's mm.
    pub exit_reads_mm: u32,
    /// `offsetof(struct bpf_array, pptrs)`: where a per-CPU array keeps its values' per-CPU
    /// address. With it, each CPU's base is found without `__per_cpu_offset` (kernels built
    /// without CONFIG_KALLSYMS_ALL do not list it): a per-CPU array's slot on CPU n, less
    /// that address, is the CPU's offset. 0 when unknown.
    pub array_pptrs: u32,
    /// 1 when the exit program leaves PROCS alone (the defaults: nothing there adds to what
    /// it reads from the mm, and every exit on the host would pay a hash lookup). The agent
    /// then removes the entries it registered itself, once per walk.
    pub exit_skips_procs: u32,
    pub _pad: u32,
}

/// Bound of the iterator's per-CPU loop.
pub const MAX_ITER_CPUS: u32 = 256;

/// One thread-group leader with an address space, as the task iterator writes it.
#[derive(Copy, Clone, Debug)]
#[repr(C)]
pub struct TaskRecord {
    pub pid: u32,
    pub ppid: u32,
    /// `CLOCK_BOOTTIME` ns at fork.
    pub start_ns: u64,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
    /// Bytes per [`RssKind`]; [`RSS_UNKNOWN`] where the read failed.
    pub rss: [i64; RssKind::COUNT],
    /// `max(hiwater_rss, file + anon + shmem)` in bytes.
    pub peak_bytes: u64,
    /// [`TASK_RSS_EXACT`] when every per-CPU delta was summed in.
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<TaskRecord>() == 88);

/// [`TaskRecord::flags`]: the RSS is the exact per-CPU sum, not the batched `count`.
pub const TASK_RSS_EXACT: u32 = 1;

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for IterLayout {}
    unsafe impl aya::Pod for TaskRecord {}
    use super::*;
    unsafe impl aya::Pod for ProcStats {}
    unsafe impl aya::Pod for LifecycleEvent {}
    unsafe impl aya::Pod for RssStatOffsets {}
    unsafe impl aya::Pod for KernelLayout {}
    unsafe impl aya::Pod for NewTaskOffsets {}
    unsafe impl aya::Pod for ExitOffsets {}
    unsafe impl aya::Pod for MarkVictimOffsets {}
    unsafe impl aya::Pod for ThreadStats {}
}
