//! Per-thread memory accounting, for the processes the agent asks for (THREAD_WANT): which
//! thread maps, unmaps and faults in the memory its process holds.
//!
//! - Pages touched: the rss program calls [`on_rss_change`] on its fast path, so no other
//!   page-fault hook is needed (the classic `exceptions:page_fault_user` tracepoint alone costs
//!   ~10% on a fault-heavy workload here, the rss raw tracepoint ~3%).
//! - Address space: uprobes on the target's own libc wrappers `mmap`, `munmap`, `mremap` and
//!   `brk`, attached by user space to each target process only (threads/uprobes.rs). The
//!   entry programs note the length change in the thread's entry; one uretprobe on the four
//!   applies it if the call succeeded. A `syscalls:*` tracepoint would do the same for every
//!   syscall of every process on the host (a `dd bs=1` loop ran 14% slower here); a uprobe
//!   scoped to one process puts its breakpoint in that process's memory alone.
//!
//! x86-64 SysV arguments: `mmap(addr, len, ...)`, `munmap(addr, len)`,
//! `mremap(old, old_len, new_len, ...)`, `brk(addr)`. glibc's malloc reaches these through
//! internal aliases at the same addresses (`__mmap`, `__munmap`, `__mremap`, and `__brk`
//! from `sbrk`), so one probe per wrapper sees them all. A failed mmap/mremap returns
//! `MAP_FAILED` (-1), a failed munmap -1. glibc's `brk` returns 0 or -1, not the break: the
//! break is read from `current->mm->brk` (BTF offset) before and after the call instead.
//! Source: <https://github.com/torvalds/linux/blob/v6.18/mm/mmap.c> (`brk`).
//!
//! Gating costs one inlined array load per event for processes nobody asked about: each
//! process's entry in PROCS caches its flag with the THREAD_CONFIG generation it was read at.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use monitor_common::{Counter, PendingKind, ProcStats, ThreadStats};

use super::{
    ProbeError,
    rss::{KERNEL_LAYOUT, read_kernel},
};
use crate::maps::{PROCS, THREAD_CONFIG, THREAD_WANT, THREADS, count};

/// Whether the agent wants per-thread numbers for `tgid`. The hash lookup happens only when
/// the agent has changed the set since this process last looked.
#[inline(always)]
pub fn threads_on(tgid: u32, stats: &mut ProcStats) -> bool {
    let Some(generation) = THREAD_CONFIG.get(0).copied() else {
        return false;
    };
    if stats.threads_gen != generation {
        stats.threads = u32::from(THREAD_WANT.get_ptr(tgid).is_some());
        stats.threads_gen = generation;
    }
    stats.threads != 0
}

/// The current thread's entry, created on first use. A tid that another process used before
/// starts from zero.
#[inline(always)]
fn thread_entry(tgid: u32, tid: u32) -> Option<&'static mut ThreadStats> {
    if let Some(t) = THREADS.get_ptr_mut(tid) {
        // SAFETY: a map value pointer, valid for this program's run; only this thread writes it.
        let t = unsafe { &mut *t };
        if t.tgid != tgid {
            *t = ThreadStats::new(tgid, bpf_get_current_comm().unwrap_or([0; 16]));
        }
        return Some(t);
    }
    let fresh = ThreadStats::new(tgid, bpf_get_current_comm().unwrap_or([0; 16]));
    if THREADS.insert(tid, fresh, 0).is_err() {
        count(Counter::ThreadInsertFailed);
        return None;
    }
    count(Counter::ThreadInserted);
    // SAFETY: as above.
    THREADS.get_ptr_mut(tid).map(|t| unsafe { &mut *t })
}

/// A change of `tgid`'s RSS counter raised by the current thread; `old` and `new` are the
/// member's whole count (bytes) before and after. The kernel folds per-CPU deltas into that
/// count in batches, so most page faults leave it unchanged and return here at once; the
/// thread that crosses a batch gets the batch, which attributes correctly on average.
#[inline(always)]
pub fn on_rss_change(tgid: u32, old: i64, new: i64) {
    if old < 0 || old == new {
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(t) = thread_entry(tgid, tid) else {
        return;
    };
    if new > old {
        t.rss_added += (new - old) as u64;
    } else {
        t.rss_removed += (old - new) as u64;
    }
}

#[derive(Clone, Copy)]
enum Call {
    Mmap,
    Munmap,
    Mremap,
    Brk,
}

#[uprobe]
pub fn mem_mmap_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, Call::Mmap)
}

#[uprobe]
pub fn mem_munmap_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, Call::Munmap)
}

#[uprobe]
pub fn mem_mremap_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, Call::Mremap)
}

#[uprobe]
pub fn mem_brk_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, Call::Brk)
}

#[inline(always)]
fn enter(ctx: &ProbeContext, call: Call) -> u32 {
    match try_enter(ctx, call) {
        Ok(()) | Err(ProbeError::ReadField) => 0,
    }
}

/// Lengths the kernel rounds up to whole pages.
#[inline(always)]
pub fn pages(len: u64, page_shift: u32) -> i64 {
    let page = 1u64 << page_shift;
    // A length this large fails the call anyway; keep the arithmetic from wrapping.
    (len.min(1 << 56).saturating_add(page - 1) & !(page - 1)) as i64
}

/// The current process's program break, or None where the layout is unknown.
#[inline(always)]
fn current_brk() -> Result<Option<u64>, ProbeError> {
    let layout = KERNEL_LAYOUT.load();
    if layout.mm_brk == 0 || layout.task_mm == 0 {
        return Ok(None);
    }
    let task = unsafe { bpf_get_current_task() };
    let mm: u64 = read_kernel(task + u64::from(layout.task_mm))?;
    if mm == 0 {
        return Ok(None);
    }
    Ok(Some(read_kernel(mm + u64::from(layout.mm_brk))?))
}

fn try_enter(ctx: &ProbeContext, call: Call) -> Result<(), ProbeError> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(stats) = PROCS.get_ptr_mut(tgid) else {
        return Ok(());
    };
    // SAFETY: a map value pointer, valid for this program's run.
    if !threads_on(tgid, unsafe { &mut *stats }) {
        return Ok(());
    }
    let shift = KERNEL_LAYOUT.load().page_shift;
    let arg = |n: usize| ctx.arg::<u64>(n).ok_or(ProbeError::ReadField);
    let (kind, pending) = match call {
        Call::Mmap => (PendingKind::Delta, pages(arg(1)?, shift)),
        Call::Munmap => (PendingKind::Delta, -pages(arg(1)?, shift)),
        Call::Mremap => {
            let old = pages(arg(1)?, shift);
            let new = pages(arg(2)?, shift);
            (PendingKind::Delta, new - old)
        }
        Call::Brk => match current_brk()? {
            Some(brk) => (PendingKind::Brk, brk as i64),
            None => return Ok(()),
        },
    };
    let Some(t) = thread_entry(tgid, pid_tgid as u32) else {
        return Ok(());
    };
    t.pending_kind = kind as u32;
    t.pending = pending;
    // Threads name themselves after they start; a memory call is a cheap moment to catch up.
    if let Ok(comm) = bpf_get_current_comm() {
        t.comm = comm;
    }
    Ok(())
}

/// Attached to the return of all four wrappers: a thread runs one of them at a time, so
/// whatever its entry holds belongs to the call that is returning.
#[uretprobe]
pub fn mem_call_return(ctx: RetProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(t) = THREADS.get_ptr_mut(tid) else {
        return 0;
    };
    // SAFETY: a map value pointer, valid for this program's run; only this thread writes it.
    let t = unsafe { &mut *t };
    let kind = t.pending_kind;
    if kind == PendingKind::None as u32 {
        return 0;
    }
    let pending = t.pending;
    t.pending_kind = PendingKind::None as u32;
    t.pending = 0;
    let delta = if kind == PendingKind::Brk as u32 {
        // Whatever the wrapper returns, the break moved by this much (0 when it failed).
        match current_brk() {
            Ok(Some(now)) => now as i64 - pending,
            _ => return 0,
        }
    } else if ctx.ret::<i64>() == -1 {
        // MAP_FAILED or -1: nothing was mapped or unmapped.
        return 0;
    } else {
        pending
    };
    count(Counter::MemSyscalls);
    if delta > 0 {
        t.mapped += delta as u64;
    } else {
        t.unmapped += delta.unsigned_abs();
    }
    0
}
