//! RSS of every process, exactly as the kernel counts it, at every change of its counters.
//!
//! Two programs, one attached:
//! - `rss_stat_btf`, a raw tracepoint on `rss_stat(struct mm_struct *mm, int member)`: no
//!   trace record is built, so it costs a fraction of the classic tracepoint on the page-fault
//!   path. It reads `mm->rss_stat[member].count` with offsets taken from kernel BTF at load
//!   time (`KERNEL_LAYOUT`).
//! - `rss_stat`, the classic `kmem:rss_stat` tracepoint, for kernels without BTF:
//!
//! ```text
//! field:unsigned int mm_id;  offset:8;  size:4; signed:0;
//! field:unsigned int curr;   offset:12; size:4; signed:0;
//! field:int member;          offset:16; size:4; signed:1;
//! field:long size;           offset:24; size:8; signed:1;
//! ```
//! (6.18; offsets are read from tracefs at load time.)
//!
//! Either way the value is the member's whole count, so an ignored event never accumulates
//! error: the next one corrects it. The kernel folds per-CPU deltas into that count in
//! batches (32 pages or more), so most events repeat the count already applied. The BTF
//! program keeps, in an array slot per mm (RSS_SEEN), the counts it last applied and the owner
//! it found for the (mm, current process) pair: a repeated count costs no hash lookup, a new
//! one a single PROCS lookup. Whatever moves an mm between owners clears its slot, except
//! for the two moves every fork/exit makes: fork hands the child its new mm with the counts
//! the copy raised (`adopt_forked_mm`), and exit marks its mm retired, so the teardown's
//! event per page table stops at the slot (`retire_seen`).
//! Source: <https://github.com/torvalds/linux/blob/v6.18/include/trace/events/kmem.h>,
//! <https://github.com/torvalds/linux/blob/v6.18/include/linux/mm.h> (`add_mm_counter`).

use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_task, bpf_probe_read_kernel},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use monitor_common::{Counter, KernelLayout, ProcStats, RSS_UNKNOWN, RssKind, RssStatOffsets};

use super::{
    ProbeError, cgroup_id, current_tgid, field,
    mem::{on_rss_change, threads_on},
};
use crate::maps::{MM_OWNERS, PROCS, RssSeen, count, rss_seen};

#[unsafe(no_mangle)]
static RSS_STAT_OFFSETS: Global<RssStatOffsets> = Global::new(RssStatOffsets {
    mm_id: 8,
    curr: 12,
    member: 16,
    size: 24,
});

#[unsafe(no_mangle)]
pub static KERNEL_LAYOUT: Global<KernelLayout> = Global::new(KernelLayout {
    task_mm: 0,
    mm_rss_stat: 0,
    counter_size: 0,
    counter_count: 0,
    page_shift: 12,
    task_exit_code: 0,
    mm_brk: 0,
    task_pid: 0,
    task_comm: 0,
});

#[raw_tracepoint(tracepoint = "rss_stat")]
pub fn rss_stat_btf(ctx: RawTracePointContext) -> i32 {
    match try_rss_stat_btf(&ctx) {
        Ok(()) | Err(ProbeError::ReadField) => 0,
    }
}

fn try_rss_stat_btf(ctx: &RawTracePointContext) -> Result<(), ProbeError> {
    count(Counter::RssEvents);
    let layout = KERNEL_LAYOUT.load();
    let mm: u64 = ctx.arg(0);
    let member: u64 = ctx.arg(1);
    let member = member as u32;
    if member as usize >= RssKind::COUNT {
        return Ok(());
    }
    let counter = mm
        + u64::from(layout.mm_rss_stat)
        + u64::from(member) * u64::from(layout.counter_size)
        + u64::from(layout.counter_count);
    let pages: i64 = read_kernel(counter)?;
    let Some(seen) = rss_seen(mm) else {
        return Ok(());
    };
    // A repeated count needs nothing, whoever raised it: an owner still to be found for this
    // mm (a process whose first own event this is) is found at its next change.
    if seen.mm == mm && seen_pages(seen, member) == pages {
        return Ok(());
    }
    let tgid = current_tgid();
    // percpu_counter_read_positive(): the same number the classic tracepoint reports.
    let size = pages.max(0) << layout.page_shift;
    if seen.mm == mm && seen.observer == tgid {
        if seen.owner == RETIRED {
            // Teardown of an address space whose owner has exited.
            count(Counter::RssUnowned);
            return Ok(());
        }
        if seen.owner == NO_OWNER {
            // Still nobody's, unless the observer now runs on it (its exec has finished).
            let task = unsafe { bpf_get_current_task() };
            let current_mm: u64 = read_kernel(task + u64::from(layout.task_mm))?;
            if current_mm != mm {
                count(Counter::RssUnowned);
                set_seen_pages(seen, member, pages);
                return Ok(());
            }
        } else if let Some(stats) = PROCS.get_ptr_mut(seen.owner) {
            let stats = unsafe { &mut *stats };
            if stats.mm == mm {
                if seen.owner == tgid && threads_on(tgid, stats) {
                    on_rss_change(tgid, member_value(stats, member), size);
                }
                apply(stats, member, size);
                set_seen_pages(seen, member, pages);
                return Ok(());
            }
        }
        // The owner's entry is gone or moved on: resolve again.
    }
    match resolve(tgid, mm, member, size, &layout)? {
        Resolved::Owner { tgid: owner, fresh } => remember(seen, mm, tgid, owner, fresh),
        Resolved::Unowned => remember(seen, mm, tgid, NO_OWNER, false),
        Resolved::Failed => return Ok(()),
    }
    set_seen_pages(seen, member, pages);
    Ok(())
}

/// Where an rss value went: to the entry of the process that owns the mm (`fresh` when that
/// entry's other members were reset on the way: a new or adopted address space), nowhere
/// because no tracked process owns it, or nowhere because the entry could not be made.
#[derive(Clone, Copy)]
enum Resolved {
    Owner { tgid: u32, fresh: bool },
    Unowned,
    Failed,
}

const NO_OWNER: u32 = 0;
/// The owner exited and the mm is being torn down by it: nothing left to account.
const RETIRED: u32 = u32::MAX;

/// The full path: find the mm's owner through PROCS and MM_OWNERS, and apply the value there.
#[inline(always)]
fn resolve(
    tgid: u32,
    mm: u64,
    member: u32,
    size: i64,
    layout: &KernelLayout,
) -> Result<Resolved, ProbeError> {
    // The current process's entry already describes this mm (a page fault of its own). Only
    // otherwise is `current->mm` read to tell an exec from a foreign access.
    if let Some(stats) = PROCS.get_ptr_mut(tgid) {
        let stats = unsafe { &mut *stats };
        if stats.mm == mm {
            if threads_on(tgid, stats) {
                on_rss_change(tgid, member_value(stats, member), size);
            }
            apply(stats, member, size);
            return Ok(Resolved::Owner { tgid, fresh: false });
        }
    }
    let task = unsafe { bpf_get_current_task() };
    let current_mm: u64 = read_kernel(task + u64::from(layout.task_mm))?;
    Ok(if current_mm == mm {
        on_own_mm(tgid, mm, member, size)
    } else {
        on_foreign_mm(mm, member, size)
    })
}

#[inline(always)]
fn seen_pages(seen: &RssSeen, member: u32) -> i64 {
    match member {
        0 => seen.pages[0],
        1 => seen.pages[1],
        2 => seen.pages[2],
        3 => seen.pages[3],
        _ => i64::MIN,
    }
}

#[inline(always)]
fn set_seen_pages(seen: &mut RssSeen, member: u32, pages: i64) {
    match member {
        0 => seen.pages[0] = pages,
        1 => seen.pages[1] = pages,
        2 => seen.pages[2] = pages,
        3 => seen.pages[3] = pages,
        _ => {}
    }
}

/// Caches what the full path found for (mm, observer); counts of other members are dropped
/// when anything about the pair changed.
#[inline(always)]
fn remember(seen: &mut RssSeen, mm: u64, observer: u32, owner: u32, fresh: bool) {
    if fresh || seen.mm != mm || seen.observer != observer || seen.owner != owner {
        seen.mm = mm;
        seen.observer = observer;
        seen.owner = owner;
        seen.pages = [i64::MIN; RssKind::COUNT];
    }
}

/// The mm changes hands or goes away: its next events must reach an entry again.
#[inline(always)]
fn forget_seen(mm: u64) {
    if let Some(seen) = rss_seen(mm) {
        if seen.mm == mm {
            seen.mm = 0;
        }
    }
}

#[inline(always)]
pub fn read_kernel<T>(addr: u64) -> Result<T, ProbeError> {
    unsafe { bpf_probe_read_kernel(addr as *const T) }.map_err(|_| {
        count(Counter::ReadFailed);
        ProbeError::ReadField
    })
}

#[tracepoint]
pub fn rss_stat(ctx: TracePointContext) -> u32 {
    match try_rss_stat(&ctx) {
        Ok(()) | Err(ProbeError::ReadField) => 0,
    }
}

fn try_rss_stat(ctx: &TracePointContext) -> Result<(), ProbeError> {
    count(Counter::RssEvents);
    let off = RSS_STAT_OFFSETS.load();
    let mm_id: u32 = field(ctx, off.mm_id)?;
    let curr: u32 = field(ctx, off.curr)?;
    let member: i32 = field(ctx, off.member)?;
    let size: i64 = field(ctx, off.size)?;
    if member < 0 || member as usize >= RssKind::COUNT {
        return Ok(());
    }
    if curr != 0 {
        on_own_mm(current_tgid(), u64::from(mm_id), member as u32, size);
    } else {
        on_foreign_mm(u64::from(mm_id), member as u32, size);
    }
    Ok(())
}

/// The event was raised by a task of the mm: the current tgid owns it. The common case (the
/// entry already describes this mm) costs one map lookup.
#[inline(always)]
fn on_own_mm(tgid: u32, mm: u64, member: u32, size: i64) -> Resolved {
    let stats = match PROCS.get_ptr_mut(tgid) {
        Some(s) => s,
        None => {
            // A process that predates the agent (or was evicted): start its entry here.
            if PROCS
                .insert(tgid, ProcStats::new(0, 0, cgroup_id()), 0)
                .is_err()
            {
                count(Counter::ProcInsertFailed);
                return Resolved::Failed;
            }
            count(Counter::ProcInserted);
            match PROCS.get_ptr_mut(tgid) {
                Some(s) => s,
                None => return Resolved::Failed,
            }
        }
    };
    let stats = unsafe { &mut *stats };
    let fresh = stats.mm != mm;
    if fresh {
        adopt_mm(tgid, stats, mm);
    } else if threads_on(tgid, stats) {
        // The classic tracepoint's path (the BTF one does this on its fast path).
        on_rss_change(tgid, member_value(stats, member), size);
    }
    apply(stats, member, size);
    Resolved::Owner { tgid, fresh }
}

/// The member's last known count, with constant indexes as in `apply`.
#[inline(always)]
fn member_value(stats: &ProcStats, member: u32) -> i64 {
    match member {
        0 => stats.rss[0],
        1 => stats.rss[1],
        2 => stats.rss[2],
        3 => stats.rss[3],
        _ => RSS_UNKNOWN,
    }
}

/// `tgid` runs on a new address space (exec, or a vfork child borrowing its parent's):
/// numbers of the old one no longer apply, and the new one is owned from now on.
#[inline(never)]
fn adopt_mm(tgid: u32, stats: &mut ProcStats, mm: u64) {
    let _ = release_mm(tgid, stats.mm, stats.ppid);
    stats.mm = mm;
    stats.rss = [RSS_UNKNOWN; RssKind::COUNT];
    stats.peak_bytes = 0;
    stats.cgroup_id = cgroup_id();
    if MM_OWNERS.insert(mm, tgid, 0).is_err() {
        count(Counter::MmInsertFailed);
    }
}

/// Gives up ownership of `mm`: back to the parent when the parent runs on it (a vfork child
/// that execs or exits), else forgotten. True when the mm went back to the parent.
#[inline(always)]
pub fn release_mm(tgid: u32, mm: u64, ppid: u32) -> bool {
    if mm == 0 {
        return false;
    }
    forget_seen(mm);
    if !MM_OWNERS.get_ptr(mm).is_some_and(|o| unsafe { *o } == tgid) {
        return false;
    }
    let parent_runs_on_it = PROCS
        .get_ptr(ppid)
        .is_some_and(|p| unsafe { (*p).mm } == mm);
    if parent_runs_on_it {
        let _ = MM_OWNERS.insert(mm, ppid, 0);
    } else {
        let _ = MM_OWNERS.remove(mm);
    }
    parent_runs_on_it
}

/// `tgid` exits and takes `mm` with it: the teardown it is about to run raises an event per
/// page table, which its slot now turns away at the first check.
#[inline(always)]
pub fn retire_seen(mm: u64, tgid: u32) {
    if let Some(seen) = rss_seen(mm) {
        seen.mm = mm;
        seen.observer = tgid;
        seen.owner = RETIRED;
    }
}

/// A forked child's own address space. The kernel filled it before the fork tracepoint,
/// raising rss_stat for an mm nobody owned yet, and the slot kept the counts: the child
/// starts with them instead of waiting for each kind's next change.
#[inline(always)]
pub fn adopt_forked_mm(pid: u32, stats: &mut ProcStats, mm: u64) {
    stats.mm = mm;
    let shift = KERNEL_LAYOUT.load().page_shift;
    if let Some(seen) = rss_seen(mm) {
        if seen.mm == mm {
            for kind in 0..RssKind::COUNT {
                let pages = seen.pages[kind];
                if pages != i64::MIN {
                    stats.rss[kind] = pages.max(0) << shift;
                }
            }
        } else {
            seen.mm = mm;
            seen.pages = [i64::MIN; RssKind::COUNT];
        }
        // The child's own events now take the cached path.
        seen.observer = pid;
        seen.owner = pid;
    }
    stats.peak_bytes = stats.resident_bytes();
    if MM_OWNERS.insert(mm, pid, 0).is_err() {
        count(Counter::MmInsertFailed);
    }
}

/// Reclaim, exit teardown, or another task touching the mm: find its owner.
#[inline(always)]
fn on_foreign_mm(mm: u64, member: u32, size: i64) -> Resolved {
    let Some(tgid) = MM_OWNERS.get_ptr(mm).map(|o| unsafe { *o }) else {
        count(Counter::RssUnowned);
        return Resolved::Unowned;
    };
    let Some(stats) = PROCS.get_ptr_mut(tgid) else {
        count(Counter::RssUnowned);
        return Resolved::Unowned;
    };
    let stats = unsafe { &mut *stats };
    if stats.mm != mm {
        count(Counter::RssStaleMm);
        return Resolved::Unowned;
    }
    apply(stats, member, size);
    Resolved::Owner { tgid, fresh: false }
}

#[inline(always)]
fn apply(stats: &mut ProcStats, member: u32, size: i64) {
    // Constant indexes: the verifier rejects a store at a variable offset into the map value.
    match member {
        0 => stats.rss[0] = size,
        1 => stats.rss[1] = size,
        2 => stats.rss[2] = size,
        3 => stats.rss[3] = size,
        _ => return,
    }
    let resident = stats.resident_bytes();
    if resident > stats.peak_bytes {
        stats.peak_bytes = resident;
    }
}
