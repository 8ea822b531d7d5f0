//! `oom:mark_victim`: the OOM killer chose a victim (no kprobes needed).
//!
//! ```text
//! field:int pid;                   offset:8;
//! field:__data_loc char[] comm;    offset:12;
//! field:unsigned long total_vm;    offset:16;  (kB)
//! field:unsigned long anon_rss;    offset:24;  (kB)
//! field:unsigned long file_rss;    offset:32;  (kB)
//! field:unsigned long shmem_rss;   offset:40;  (kB)
//! ```
//! Source: <https://github.com/torvalds/linux/blob/v6.18/include/trace/events/oom.h>

use aya_ebpf::{Global, macros::tracepoint, programs::TracePointContext};
use aya_log_ebpf::warn;
use monitor_common::{Counter, EventKind, LifecycleEvent, MarkVictimOffsets, RssKind};

use super::{ProbeError, field, now_ns};
use crate::maps::{PROCS, count, emit};

#[unsafe(no_mangle)]
static MARK_VICTIM_OFFSETS: Global<MarkVictimOffsets> = Global::new(MarkVictimOffsets {
    pid: 8,
    total_vm: 16,
    anon_rss: 24,
    file_rss: 32,
    shmem_rss: 40,
    _pad: 0,
});

#[tracepoint]
pub fn oom_mark_victim(ctx: TracePointContext) -> u32 {
    match try_mark_victim(&ctx) {
        Ok(()) | Err(ProbeError::ReadField) => 0,
    }
}

fn try_mark_victim(ctx: &TracePointContext) -> Result<(), ProbeError> {
    count(Counter::OomEvents);
    let off = MARK_VICTIM_OFFSETS.load();
    let pid: i32 = field(ctx, off.pid)?;
    let kb = |v: u64| (v as i64).saturating_mul(1024);
    let mut rss = [monitor_common::RSS_UNKNOWN; RssKind::COUNT];
    rss[RssKind::Anon as usize] = kb(field(ctx, off.anon_rss)?);
    rss[RssKind::File as usize] = kb(field(ctx, off.file_rss)?);
    rss[RssKind::Shmem as usize] = kb(field(ctx, off.shmem_rss)?);
    let total_vm: u64 = field(ctx, off.total_vm)?;
    // OOM kills are rare and always worth a line in the agent's log.
    warn!(ctx, "oom killer chose pid {}", pid);
    // The victim's comm and cgroup come from its entry: the current task is the allocator
    // that ran out of memory, not necessarily the victim.
    let (ppid, cgroup_id) = match PROCS.get_ptr(pid as u32) {
        Some(stats) => unsafe { ((*stats).ppid, (*stats).cgroup_id) },
        None => (0, 0),
    };
    emit(&LifecycleEvent {
        kind: EventKind::OomKill as u32,
        pid: pid as u32,
        ppid,
        exit_code: 0,
        ts_ns: now_ns(),
        cgroup_id,
        comm: [0; 16],
        rss,
        peak_bytes: total_vm.saturating_mul(1024),
    });
    Ok(())
}
