//! Reads through BTF-typed pointers: the task iterator (the same records as [`super::iter`])
//! and the exit program's raw-tracepoint variant (the same numbers as the classic one). Each
//! field is one load instead of a `bpf_probe_read_kernel` call.
//!
//! Why: the walk visits every thread on the host once per interval, and every exit on the
//! host runs the exit program; a helper call costs tens of nanoseconds where a typed load is
//! one instruction (the verifier turns it into a load that cannot fault). With helper reads
//! the walk was over half of the idle agent's CPU.
//!
//! How the verifier accepts it: the iterator's `ctx->task` and `bpf_get_current_task_btf()`
//! are `task_struct` pointers to it, the offsets come from `.rodata` (frozen, so it knows
//! each one as a constant), and a load at a constant offset is checked against the kernel's
//! BTF: it must fall inside one member. Pointer members
//! (`mm`, `real_parent`, `cgroups`, ...) come back typed too. What is not a struct pointer
//! stays a plain number: `comm` (a char array, one element per load) and the per-CPU deltas
//! (`s32 __percpu *`) are still read with the helper.
//!
//! A kernel whose BTF disagrees with a load refuses the program; the agent then loads the
//! helper-reading one ([`super::iter`]'s walk, the classic exit tracepoint) and says so.

use monitor_common::{IterLayout, KernelLayout, RSS_UNKNOWN, RssKind, TASK_RSS_EXACT, TaskRecord};

use super::{
    iter::{
        ITER_LAYOUT, IterTaskCtx, add_cpu_deltas, cpu_offsets_ready, read, rss_bytes, write_record,
    },
    rss::KERNEL_LAYOUT,
    sched::ExitRead,
};

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub extern "C" fn task_iter_typed(ctx: *mut IterTaskCtx) -> i32 {
    // SAFETY: the kernel hands a valid context; `task` is a typed load (a task_struct
    // pointer, NULL on the walk's last call).
    let task = unsafe { (*ctx).task } as *const u8;
    if task.is_null() {
        return 0;
    }
    let layout = KERNEL_LAYOUT.load();
    let iter = ITER_LAYOUT.load();
    if let Some(record) = fill(task, &layout, &iter) {
        write_record(ctx, &record);
    }
    0
}

/// A `T` at `off` of a typed kernel pointer. The verifier checks the load against BTF, and a
/// pointer that went stale under the walk reads as zero instead of faulting.
#[inline(always)]
fn at<T: Copy>(base: *const u8, off: u32) -> T {
    // SAFETY: see above; `off` is a `.rodata` constant the verifier matches to a member.
    unsafe { core::ptr::read_volatile(base.wrapping_add(off as usize).cast::<T>()) }
}

#[inline(always)]
fn fill(task: *const u8, layout: &KernelLayout, iter: &IterLayout) -> Option<TaskRecord> {
    if layout.task_pid == 0 || iter.task_tgid == 0 {
        return None;
    }
    // Every thread on the host comes through here: two loads decide most of them.
    let pid: i32 = at(task, layout.task_pid);
    let tgid: i32 = at(task, iter.task_tgid);
    if pid != tgid {
        return None;
    }
    let mm: *const u8 = at(task, layout.task_mm);
    if mm.is_null() {
        return None;
    }
    let mut record = TaskRecord {
        pid: pid as u32,
        ppid: 0,
        start_ns: 0,
        cgroup_id: 0,
        comm: read(task as u64 + u64::from(layout.task_comm)).unwrap_or([0; 16]),
        rss: [RSS_UNKNOWN; RssKind::COUNT],
        peak_bytes: 0,
        flags: 0,
        _pad: 0,
    };
    if iter.task_real_parent != 0 {
        let parent: *const u8 = at(task, iter.task_real_parent);
        if !parent.is_null() {
            record.ppid = at::<i32>(parent, iter.task_tgid) as u32;
        }
    }
    if iter.task_start_boottime != 0 {
        record.start_ns = at(task, iter.task_start_boottime);
    }
    record.cgroup_id = cgroup_id(task, iter);
    let (rss, peak, exact) = mm_rss(mm, layout, iter, true);
    record.rss = rss;
    record.peak_bytes = peak;
    record.flags = if exact { TASK_RSS_EXACT } else { 0 };
    Some(record)
}

/// `task->cgroups->dfl_cgrp->kn->id`, 0 when unknown.
#[inline(always)]
fn cgroup_id(task: *const u8, iter: &IterLayout) -> u64 {
    if iter.task_cgroups == 0 || iter.kernfs_node_id == 0 {
        return 0;
    }
    let css: *const u8 = at(task, iter.task_cgroups);
    if css.is_null() {
        return 0;
    }
    let cgroup: *const u8 = at(css, iter.css_set_dfl_cgrp);
    if cgroup.is_null() {
        return 0;
    }
    let kn: *const u8 = at(cgroup, iter.cgroup_kn);
    if kn.is_null() {
        return 0;
    }
    at(kn, iter.kernfs_node_id)
}

/// As [`super::iter::mm_rss`]: `count` and `counters` of each kind by typed loads, and with
/// `sum_cpus` the deltas (not typed) with one helper read per CPU.
#[inline(always)]
fn mm_rss(
    mm: *const u8,
    layout: &KernelLayout,
    iter: &IterLayout,
    sum_cpus: bool,
) -> ([i64; RssKind::COUNT], u64, bool) {
    let mut pages = [0i64; RssKind::COUNT];
    let mut percpu = [0u64; RssKind::COUNT];
    let stride = layout.counter_size;
    // Unrolled by hand: each offset must be a constant the verifier can check.
    let counter = |kind: u32| layout.mm_rss_stat + kind * stride;
    pages[0] = at(mm, counter(0) + layout.counter_count);
    pages[1] = at(mm, counter(1) + layout.counter_count);
    pages[2] = at(mm, counter(2) + layout.counter_count);
    pages[3] = at(mm, counter(3) + layout.counter_count);
    let mut exact = sum_cpus && iter.counter_counters != 0 && cpu_offsets_ready(iter);
    if exact {
        percpu[0] = at(mm, counter(0) + iter.counter_counters);
        percpu[1] = at(mm, counter(1) + iter.counter_counters);
        percpu[2] = at(mm, counter(2) + iter.counter_counters);
        percpu[3] = at(mm, counter(3) + iter.counter_counters);
        exact = add_cpu_deltas(&mut pages, &percpu, iter);
    }
    let (rss, resident) = rss_bytes(&pages, layout);
    let mut peak = resident;
    if iter.mm_hiwater_rss != 0 {
        let hiwater: u64 = at(mm, iter.mm_hiwater_rss);
        peak = peak.max(hiwater << layout.page_shift);
    }
    (rss, peak, exact)
}

/// [`ExitRead`] for the exiting current task, through `bpf_get_current_task_btf()`.
#[inline(always)]
pub fn exit_read() -> ExitRead {
    let layout = KERNEL_LAYOUT.load();
    let iter = ITER_LAYOUT.load();
    // SAFETY: no arguments; the result is a task_struct pointer the verifier tracks.
    let task = unsafe { aya_ebpf::helpers::generated::bpf_get_current_task_btf() } as *const u8;
    let mut read = ExitRead::NOTHING;
    if task.is_null() {
        return read;
    }
    if layout.task_exit_code != 0 {
        // do_exit() stores the code before this tracepoint fires.
        read.exit_code = at::<i32>(task, layout.task_exit_code) as u32;
    }
    if iter.exit_reads_mm == 0 {
        return read;
    }
    // 6.16+: this fires before exit_mm, so the mm still holds the final numbers.
    if iter.task_real_parent != 0 && iter.task_tgid != 0 {
        let parent: *const u8 = at(task, iter.task_real_parent);
        if !parent.is_null() {
            read.ppid = at::<i32>(parent, iter.task_tgid) as u32;
        }
    }
    let mm: *const u8 = at(task, layout.task_mm);
    if !mm.is_null() {
        // The batched counter, as the classic program: every exit on the host pays this.
        let (rss, peak, _) = mm_rss(mm, &layout, &iter, false);
        read.rss = rss;
        read.peak_bytes = peak;
    }
    read
}
