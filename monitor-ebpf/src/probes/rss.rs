//! `kmem:rss_stat`: the kernel's own RSS counters, as absolute values, at every change.
//!
//! ```text
//! field:unsigned int mm_id;  offset:8;  size:4; signed:0;
//! field:unsigned int curr;   offset:12; size:4; signed:0;
//! field:int member;          offset:16; size:4; signed:1;
//! field:long size;           offset:24; size:8; signed:1;
//! ```
//! (6.18; offsets are read from tracefs at load time.) `size` is the member's whole count in
//! bytes, so a lost or ignored event never accumulates error: the next one corrects it.
//! Source: <https://github.com/torvalds/linux/blob/v6.18/include/trace/events/kmem.h>

use aya_ebpf::{Global, macros::tracepoint, programs::TracePointContext};
use monitor_common::{Counter, ProcStats, RssKind, RssStatOffsets};

use super::{ProbeError, cgroup_id, current_tgid, field, now_ns};
use crate::maps::{MM_OWNERS, PROCS, count};

#[unsafe(no_mangle)]
static RSS_STAT_OFFSETS: Global<RssStatOffsets> = Global::new(RssStatOffsets {
    mm_id: 8,
    curr: 12,
    member: 16,
    size: 24,
});

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
        on_own_mm(current_tgid(), mm_id, member as usize, size);
    } else {
        on_foreign_mm(mm_id, member as usize, size);
    }
    Ok(())
}

/// The event was raised by a task of the mm: the current tgid owns it.
#[inline(always)]
fn on_own_mm(tgid: u32, mm_id: u32, member: usize, size: i64) {
    let owner = MM_OWNERS.get_ptr(mm_id);
    if owner.is_none_or(|o| unsafe { *o } != tgid)
        && MM_OWNERS.insert(mm_id, tgid, 0).is_err()
    {
        count(Counter::MmInsertFailed);
    }
    let stats = match PROCS.get_ptr_mut(tgid) {
        Some(s) => s,
        None => {
            // A process that predates the agent (or was evicted): start its entry here.
            let fresh = ProcStats::new(0, 0, cgroup_id());
            if PROCS.insert(tgid, fresh, 0).is_err() {
                count(Counter::ProcInsertFailed);
                return;
            }
            count(Counter::ProcInserted);
            match PROCS.get_ptr_mut(tgid) {
                Some(s) => s,
                None => return,
            }
        }
    };
    let stats = unsafe { &mut *stats };
    if stats.mm_id != mm_id {
        // A new address space (exec): numbers of the old one no longer apply.
        stats.mm_id = mm_id;
        stats.rss = [monitor_common::RSS_UNKNOWN; RssKind::COUNT];
        stats.peak_bytes = 0;
        stats.cgroup_id = cgroup_id();
    }
    apply(stats, member, size);
}

/// Reclaim, exit teardown, or another task touching the mm: find its owner.
#[inline(always)]
fn on_foreign_mm(mm_id: u32, member: usize, size: i64) {
    let Some(tgid) = MM_OWNERS.get_ptr(mm_id).map(|o| unsafe { *o }) else {
        count(Counter::RssUnowned);
        return;
    };
    let Some(stats) = PROCS.get_ptr_mut(tgid) else {
        count(Counter::RssUnowned);
        return;
    };
    let stats = unsafe { &mut *stats };
    if stats.mm_id != mm_id {
        count(Counter::RssStaleMm);
        return;
    }
    apply(stats, member, size);
}

#[inline(always)]
fn apply(stats: &mut ProcStats, member: usize, size: i64) {
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
    stats.updated_ns = now_ns();
}
