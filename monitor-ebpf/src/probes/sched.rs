//! Process lifecycle: `task:task_newtask` (fork, with `--rss-events` only),
//! `sched:sched_process_exec`, `sched:sched_process_exit`. On 6.16+ the exit program runs
//! before `exit_mm` and reads the final RSS and peak from the exiting mm itself
//! (`ITER_LAYOUT.exit_reads_mm`), so a process the task iterator never saw is still measured.
//!
//! Fork is taken from `task_newtask` rather than `sched_process_fork` because only the former
//! carries `clone_flags`, which tells a new process from a new thread.
//!
//! Fork, exec and exit each have a raw tracepoint program, used where the kernel has BTF: no
//! trace record is built for them, which matters to fork-heavy hosts. The new task's pid and comm
//! are then read through `KERNEL_LAYOUT`, and so is the child's new mm, which it owns from
//! birth. Raw arguments (6.18):
//! `task_newtask(struct task_struct *task, u64 clone_flags)`,
//! `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`,
//! `sched_process_exit(struct task_struct *p, bool group_dead)`; `p` is the current task.
//! The classic programs below stand in elsewhere:
//!
//! ```text
//! task_newtask:       field:pid_t pid; offset:8;  field:char comm[16]; offset:12;
//!                     field:u64 clone_flags; offset:32;
//! sched_process_exit: field:char comm[16]; offset:8; field:pid_t pid; offset:24;
//!                     field:bool group_dead; offset:32;
//! ```
//! Source: <https://github.com/torvalds/linux/blob/v6.18/include/trace/events/task.h>,
//! <https://github.com/torvalds/linux/blob/v6.18/include/trace/events/sched.h>

use aya_ebpf::{
    Global,
    helpers::bpf_get_current_comm,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use monitor_common::{
    Counter, EventKind, ExitOffsets, LifecycleEvent, NewTaskOffsets, ProcStats, RSS_UNKNOWN,
    RssKind,
};

use super::iter::{ITER_LAYOUT, mm_rss, parent_tgid, task_fields, tgid_of};
use super::rss::{KERNEL_LAYOUT, adopt_forked_mm, read_kernel, release_mm, retire_seen};
use super::{ProbeError, cgroup_id, current_tgid, field, now_ns};
use crate::maps::{PROCS, count, emit};

const CLONE_VM: u64 = 0x0000_0100;
const CLONE_THREAD: u64 = 0x0001_0000;

#[unsafe(no_mangle)]
static NEWTASK_OFFSETS: Global<NewTaskOffsets> = Global::new(NewTaskOffsets {
    pid: 8,
    comm: 12,
    clone_flags: 32,
    _pad: 0,
});

#[unsafe(no_mangle)]
static EXIT_OFFSETS: Global<ExitOffsets> = Global::new(ExitOffsets {
    pid: 24,
    group_dead: 32,
});

fn event(kind: EventKind, pid: u32, ppid: u32, cgroup_id: u64, comm: [u8; 16]) -> LifecycleEvent {
    LifecycleEvent {
        kind: kind as u32,
        pid,
        ppid,
        exit_code: 0,
        ts_ns: now_ns(),
        cgroup_id,
        comm,
        rss: [monitor_common::RSS_UNKNOWN; monitor_common::RssKind::COUNT],
        peak_bytes: 0,
    }
}

#[raw_tracepoint(tracepoint = "task_newtask")]
pub fn sched_newtask_btf(ctx: RawTracePointContext) -> i32 {
    match try_newtask_btf(&ctx) {
        Ok(()) | Err(ProbeError::ReadField) => 0,
    }
}

fn try_newtask_btf(ctx: &RawTracePointContext) -> Result<(), ProbeError> {
    let flags: u64 = ctx.arg(1);
    if flags & CLONE_THREAD != 0 {
        return Ok(());
    }
    let layout = KERNEL_LAYOUT.load();
    let task: u64 = ctx.arg(0);
    let pid: i32 = read_kernel(task + u64::from(layout.task_pid))?;
    let comm: [u8; 16] = read_kernel(task + u64::from(layout.task_comm))?;
    // A CLONE_VM child (vfork, posix_spawn) runs on its parent's mm until it execs: the
    // parent keeps it.
    let own_mm = if flags & CLONE_VM == 0 {
        read_kernel::<u64>(task + u64::from(layout.task_mm)).unwrap_or(0)
    } else {
        0
    };
    on_new_process(pid as u32, comm, own_mm);
    Ok(())
}

#[tracepoint]
pub fn sched_newtask(ctx: TracePointContext) -> u32 {
    match try_newtask(&ctx) {
        Ok(()) | Err(ProbeError::ReadField) => 0,
    }
}

fn try_newtask(ctx: &TracePointContext) -> Result<(), ProbeError> {
    let off = NEWTASK_OFFSETS.load();
    let flags: u64 = field(ctx, off.clone_flags)?;
    if flags & CLONE_THREAD != 0 {
        return Ok(());
    }
    let pid: i32 = field(ctx, off.pid)?;
    let comm: [u8; 16] = field(ctx, off.comm)?;
    // Without BTF the rss program keys address spaces by a hash the fork record lacks.
    on_new_process(pid as u32, comm, 0);
    Ok(())
}

/// `own_mm`: the child's new address space, 0 when it shares its parent's or is unknown.
#[inline(always)]
fn on_new_process(pid: u32, comm: [u8; 16], own_mm: u64) {
    count(Counter::ForkEvents);
    let ppid = current_tgid();
    let cgroup = cgroup_id();
    let ev = event(EventKind::Fork, pid, ppid, cgroup, comm);
    let mut stats = ProcStats::new(ev.ts_ns, ppid, cgroup);
    if own_mm != 0 {
        adopt_forked_mm(pid, &mut stats, own_mm);
    }
    // Overwrites whatever a previous holder of this pid left: a reused pid starts from zero.
    if PROCS.insert(pid, stats, 0).is_err() {
        count(Counter::ProcInsertFailed);
    } else {
        count(Counter::ProcInserted);
    }
    emit(&ev);
}

/// The raw variant of [`sched_exec`], where the kernel has BTF: every exec on the host runs
/// it, and the classic tracepoint first builds a trace record (the file name copied in) that
/// the program never reads; it reads the current task alone.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_exec_btf(_ctx: RawTracePointContext) -> i32 {
    on_exec();
    0
}

#[tracepoint]
pub fn sched_exec(_ctx: TracePointContext) -> u32 {
    on_exec();
    0
}

/// The current task has just exec'd.
#[inline(always)]
fn on_exec() {
    count(Counter::ExecEvents);
    let tgid = current_tgid();
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let cgroup = cgroup_id();
    let ppid = match PROCS.get_ptr_mut(tgid) {
        Some(stats) => {
            let stats = unsafe { &mut *stats };
            stats.cgroup_id = cgroup;
            stats.ppid
        }
        // Not tracked in the kernel (no fork probe by default): the parent from the task.
        None => parent_tgid(
            unsafe { aya_ebpf::helpers::bpf_get_current_task() },
            &ITER_LAYOUT.load(),
        ),
    };
    emit(&event(EventKind::Exec, tgid, ppid, cgroup, comm));
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_exit_btf(ctx: RawTracePointContext) -> i32 {
    let group_dead: u64 = ctx.arg(1);
    if group_dead & 0xff != 0 {
        on_group_exit(super::typed::exit_read());
    }
    0
}

#[tracepoint]
pub fn sched_exit(ctx: TracePointContext) -> u32 {
    match try_exit(&ctx) {
        Ok(()) | Err(ProbeError::ReadField) => 0,
    }
}

fn try_exit(ctx: &TracePointContext) -> Result<(), ProbeError> {
    let off = EXIT_OFFSETS.load();
    let pid: i32 = field(ctx, off.pid)?;
    let group_dead = if off.group_dead == u32::MAX {
        // Older kernels: the leader's exit is the best sign the group is gone.
        pid as u32 == current_tgid()
    } else {
        field::<u8>(ctx, off.group_dead)? != 0
    };
    if group_dead {
        on_group_exit(exit_read());
    }
    Ok(())
}

/// What the exiting process's own structures say: its exit code and, where the hook runs
/// before `exit_mm`, its live parent and final memory (0 and [`RSS_UNKNOWN`] where unread).
pub struct ExitRead {
    pub exit_code: u32,
    pub ppid: u32,
    pub rss: [i64; RssKind::COUNT],
    pub peak_bytes: u64,
}

impl ExitRead {
    pub const NOTHING: Self = Self {
        exit_code: 0,
        ppid: 0,
        rss: [RSS_UNKNOWN; RssKind::COUNT],
        peak_bytes: 0,
    };
}

/// [`ExitRead`] through `bpf_probe_read_kernel`, for the classic tracepoint.
#[inline(always)]
fn exit_read() -> ExitRead {
    let layout = KERNEL_LAYOUT.load();
    let iter = ITER_LAYOUT.load();
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() };
    let mut read = ExitRead::NOTHING;
    // exit_code, mm and real_parent in one read where task_struct allows.
    let Some(t) = task_fields(task, &layout, &iter) else {
        return read;
    };
    // do_exit() stores the code before this tracepoint fires.
    read.exit_code = t.exit_code as u32;
    if iter.exit_reads_mm != 0 {
        // 6.16+: this fires before exit_mm, so the mm still holds the final numbers. This is
        // what the agent knows of a process that lived less than one interval.
        read.ppid = tgid_of(t.real_parent, &iter);
        if t.mm != 0 {
            // The batched counter: exact to within a batch per CPU, at a cost that does not
            // grow with the host's CPUs (every exit on the host pays it).
            let (rss, peak, _) = mm_rss(t.mm, &layout, &iter, false);
            read.rss = rss;
            read.peak_bytes = peak;
        }
    }
    read
}

/// The last thread of the current process is exiting.
#[inline(always)]
fn on_group_exit(read: ExitRead) {
    count(Counter::ExitEvents);
    let tgid = current_tgid();
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let mut ev = event(EventKind::Exit, tgid, read.ppid, cgroup_id(), comm);
    ev.exit_code = read.exit_code;
    ev.rss = read.rss;
    ev.peak_bytes = read.peak_bytes;
    let iter = ITER_LAYOUT.load();
    if iter.exit_skips_procs != 0 {
        // The defaults: PROCS holds nothing the mm did not give, and its entries are the
        // agent's to remove.
        emit(&ev);
        return;
    }
    if let Some(stats) = PROCS.get_ptr(tgid) {
        let stats = unsafe { &*stats };
        if ev.ppid == 0 {
            // The live parent (read above) wins: the entry's is as of fork.
            ev.ppid = stats.ppid;
        }
        if ev.rss[monitor_common::RssKind::Anon as usize] < 0 {
            ev.rss = stats.rss;
        }
        ev.peak_bytes = ev.peak_bytes.max(stats.peak_bytes);
        if !release_mm(tgid, stats.mm, stats.ppid) && stats.mm != 0 {
            retire_seen(stats.mm, tgid);
        }
        if PROCS.remove(tgid).is_ok() {
            count(Counter::ProcRemoved);
        }
    }
    emit(&ev);
}
