//! Growth stacks, whatever the allocator: for the processes in GROWTH_TARGETS, user stacks of
//! the page faults that map a new page (sampled) and of the calls that grow the address space
//! (mmap, mremap, brk), summed per stack in GROWTH.
//!
//! The calls are seen by uprobes on each target's own libc wrappers (`mmap`, `mremap`, `brk`,
//! `munmap`, `madvise`; x86-64 SysV arguments as in mem.rs, `madvise(addr, len, advice)`),
//! attached to that process alone: `syscalls:*` tracepoints would send every syscall of every
//! process on the host through the kernel's slow path for as long as anyone is sampled.
//!
//! Page faults come from the raw tracepoint `page_fault_user`, whose arguments are
//! `(unsigned long address, struct pt_regs *regs, unsigned long error_code)`: a raw
//! tracepoint skips the record the classic one builds on every fault of every process.
//! Bit 0 of the x86 error code is set when the page was present (a write to a read-only or
//! copy-on-write page): such faults replace a page or change its rights and add nothing to
//! RSS, so they are skipped.
//! Sources: <https://github.com/torvalds/linux/blob/v6.18/arch/x86/include/asm/trace/exceptions.h>,
//! <https://github.com/torvalds/linux/blob/v6.18/arch/x86/include/asm/trap_pf.h>.
//!
//! A sampled page is remembered with its stack and time (GROWTH_PAGES); the ranges a target
//! gives back (munmap, madvise DONTNEED/FREE/REMOVE, a shrinking brk) are remembered with
//! theirs (GROWTH_RELEASES). A page counts as held only if it is resident at the end and no
//! release covered it after its sample: addresses are reused, and the fault that maps a
//! reused page may not be sampled.
//!
//! These programs are attached only while someone investigates: the page-fault tracepoint
//! costs every process on the host, not only the targets.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_F_NO_PREALLOC,
    helpers::{bpf_get_current_task, bpf_get_prandom_u32},
    macros::{map, raw_tracepoint, uprobe},
    maps::{HashMap, PerCpuArray},
    programs::{ProbeContext, RawTracePointContext, tracing::StackIdContext},
};
use monitor_common::stacks::{
    DEFAULT_MAX_GROWTH_KEYS, DEFAULT_MAX_GROWTH_PAGES, DEFAULT_MAX_GROWTH_RELEASES,
    DEFAULT_MAX_GROWTH_TARGETS, GrowthKey, GrowthSampler, GrowthSource, GrowthTarget, GrowthValue,
    PageKey, PageSample, Release, ReleaseKey, StackCounter, UNWIND_GROWTH,
};

use super::{
    ProbeError, current_tgid,
    mem::pages,
    now_ns,
    python::python_stack,
    rss::{KERNEL_LAYOUT, read_kernel},
    stack::{current_return_hint, user_stack_id},
    task::current_task,
    unwind,
};
use crate::maps::count_stack;

#[map(name = "GROWTH_TARGETS")]
static GROWTH_TARGETS: HashMap<u32, GrowthTarget> =
    HashMap::with_max_entries(DEFAULT_MAX_GROWTH_TARGETS, 0);

#[map(name = "GROWTH")]
static GROWTH: HashMap<GrowthKey, GrowthValue> =
    HashMap::with_max_entries(DEFAULT_MAX_GROWTH_KEYS, BPF_F_NO_PREALLOC);

#[map(name = "GROWTH_SAMPLER")]
static GROWTH_SAMPLER: PerCpuArray<GrowthSampler> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "GROWTH_PAGES")]
static GROWTH_PAGES: HashMap<PageKey, PageSample> =
    HashMap::with_max_entries(DEFAULT_MAX_GROWTH_PAGES, BPF_F_NO_PREALLOC);

#[map(name = "GROWTH_RELEASES")]
static GROWTH_RELEASES: HashMap<ReleaseKey, Release> =
    HashMap::with_max_entries(DEFAULT_MAX_GROWTH_RELEASES, BPF_F_NO_PREALLOC);

/// `madvise` advice that drops pages: MADV_DONTNEED, MADV_FREE, MADV_REMOVE,
/// MADV_DONTNEED_LOCKED (include/uapi/asm-generic/mman-common.h).
const MADV_DROPS: [u64; 4] = [4, 8, 9, 24];

const PF_PRESENT: u64 = 1;
/// Indexes of `address` and `error_code` in the raw tracepoint's arguments.
const ARG_ADDRESS: usize = 0;
const ARG_ERROR_CODE: usize = 2;

#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn growth_fault(ctx: RawTracePointContext) -> i32 {
    try_fault(&ctx);
    0
}

#[inline(always)]
fn try_fault(ctx: &RawTracePointContext) {
    // SAFETY: raw tracepoint arguments are an array of u64, and page_fault_user has three.
    let error_code = unsafe { *(ctx.as_ptr() as *const u64).add(ARG_ERROR_CODE) };
    if error_code & PF_PRESENT != 0 {
        return;
    }
    let Some(sampler) = GROWTH_SAMPLER.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; the program does not migrate while it runs.
    let sampler = unsafe { &mut *sampler };
    if sampler.countdown > 1 {
        sampler.countdown -= 1;
        return;
    }
    // The gap's mean is `period`, so each sample stands for `period` faults.
    let period = sampler.period.max(1);
    sampler.countdown = 1 + unsafe { bpf_get_prandom_u32() } % (period * 2 - 1);
    let tgid = current_tgid();
    if unsafe { GROWTH_TARGETS.get(tgid) }.is_none() {
        return;
    }
    let shift = KERNEL_LAYOUT.load().page_shift;
    let bytes = u64::from(period) << shift;
    let (sampled, sample_id) = record(ctx, tgid, GrowthSource::PageFault, 0, bytes);
    // SAFETY: as above.
    let address = unsafe { *(ctx.as_ptr() as *const u64).add(ARG_ADDRESS) };
    let key = PageKey {
        tgid,
        _pad: 0,
        page: address >> shift << shift,
    };
    let sample = PageSample {
        stack_id: i64::from(sampled.stack_id),
        sampled_ns: now_ns(),
        py_stack: sampled.py_stack,
        sample_id,
        task: sampled.task,
        _pad: 0,
    };
    if GROWTH_PAGES.insert(&key, &sample, 0).is_err() {
        count_stack(StackCounter::GrowthKeyLost);
    }
}

#[uprobe]
pub fn growth_munmap(ctx: ProbeContext) -> u32 {
    let tgid = current_tgid();
    if is_target(tgid) {
        released(tgid, ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0));
    }
    0
}

#[uprobe]
pub fn growth_madvise(ctx: ProbeContext) -> u32 {
    let tgid = current_tgid();
    if !is_target(tgid) {
        return 0;
    }
    let advice = ctx.arg::<u64>(2).unwrap_or(0) & 0xffff_ffff;
    if MADV_DROPS.contains(&advice) {
        released(tgid, ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0));
    }
    0
}

/// The uprobes are attached to the targets alone; the map says whether this one is still
/// sampled (a target removed keeps its probes until user space detaches them).
#[inline(always)]
fn is_target(tgid: u32) -> bool {
    unsafe { GROWTH_TARGETS.get(tgid) }.is_some()
}

/// Remembers that `tgid` gave `[start, start + len)` back (counted at entry, like growth: a
/// failed call is rare and only makes a held page look released).
#[inline(always)]
fn released(tgid: u32, start: u64, len: u64) {
    if len == 0 {
        return;
    }
    let shift = KERNEL_LAYOUT.load().page_shift;
    let key = ReleaseKey {
        tgid,
        _pad: 0,
        start: start >> shift << shift,
    };
    let value = Release {
        end: start.saturating_add(len),
        released_ns: now_ns(),
    };
    if GROWTH_RELEASES.insert(&key, &value, 0).is_err() {
        count_stack(StackCounter::ReleaseLost);
    }
}

#[uprobe]
pub fn growth_mmap(ctx: ProbeContext) -> u32 {
    let tgid = current_tgid();
    if is_target(tgid) {
        let len: u64 = ctx.arg(1).unwrap_or(0);
        grew(&ctx, tgid, GrowthSource::Mmap, pages(len, page_shift()));
    }
    0
}

#[uprobe]
pub fn growth_mremap(ctx: ProbeContext) -> u32 {
    let tgid = current_tgid();
    if is_target(tgid) {
        let old = pages(ctx.arg(1).unwrap_or(0), page_shift());
        let new = pages(ctx.arg(2).unwrap_or(0), page_shift());
        grew(&ctx, tgid, GrowthSource::Mmap, new - old);
    }
    0
}

#[uprobe]
pub fn growth_brk(ctx: ProbeContext) -> u32 {
    let tgid = current_tgid();
    if is_target(tgid) {
        let _ = try_brk(&ctx, tgid);
    }
    0
}

#[inline(always)]
fn page_shift() -> u32 {
    KERNEL_LAYOUT.load().page_shift
}

/// `brk(requested)`: growth is the distance from the current break, a lower break a release.
fn try_brk(ctx: &ProbeContext, tgid: u32) -> Result<(), ProbeError> {
    let requested: u64 = ctx.arg(0).unwrap_or(0);
    let layout = KERNEL_LAYOUT.load();
    if layout.mm_brk == 0 || layout.task_mm == 0 || requested == 0 {
        return Ok(());
    }
    let task = unsafe { bpf_get_current_task() };
    let mm: u64 = read_kernel(task + u64::from(layout.task_mm))?;
    if mm == 0 {
        return Ok(());
    }
    let current: u64 = read_kernel(mm + u64::from(layout.mm_brk))?;
    if requested < current {
        released(tgid, requested, current - requested);
    }
    grew(
        ctx,
        tgid,
        GrowthSource::Brk,
        requested as i64 - current as i64,
    );
    Ok(())
}

/// Counted at the call: a failed call is rare enough not to pay for a return probe.
#[inline(always)]
fn grew(ctx: &ProbeContext, tgid: u32, source: GrowthSource, added: i64) {
    if added > 0 {
        record(ctx, tgid, source, current_return_hint(), added as u64);
    }
}

/// Adds to the stack's entry and, with `--unwind dwarf`, sends the sample for unwinding;
/// returns the key and the sample's id (0 when none was sent).
#[inline(always)]
fn record<C: StackIdContext>(
    ctx: &C,
    tgid: u32,
    source: GrowthSource,
    hint: u64,
    bytes: u64,
) -> (GrowthKey, u64) {
    let key = sample_key(ctx, tgid, source as u32, hint);
    count_stack(StackCounter::GrowthSampled);
    let sample_id = unwind::send(UNWIND_GROWTH, &key, bytes);
    if let Some(v) = GROWTH.get_ptr_mut(&key) {
        // SAFETY: a map value pointer; concurrent updates of one stack from two CPUs can lose
        // an increment, which a sampled estimate tolerates.
        let v = unsafe { &mut *v };
        v.events += 1;
        v.bytes += bytes;
        return (key, sample_id);
    }
    let fresh = GrowthValue { events: 1, bytes };
    if GROWTH.insert(&key, &fresh, 0).is_err() {
        count_stack(StackCounter::GrowthKeyLost);
    }
    (key, sample_id)
}

/// The key of a sampled event, built here only: what growth aggregates under and what every
/// record for unwinding carries whole (alloc samples too, with `source` unused), so a field
/// added to it reaches user space on both paths.
#[inline(always)]
pub fn sample_key<C: StackIdContext>(ctx: &C, tgid: u32, source: u32, hint: u64) -> GrowthKey {
    GrowthKey {
        tgid,
        stack_id: user_stack_id(ctx),
        source,
        task: current_task(),
        return_hint: hint,
        py_stack: python_stack(tgid),
    }
}
