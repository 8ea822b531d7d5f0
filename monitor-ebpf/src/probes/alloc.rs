//! Allocation tracing: uprobes on an allocator's entry points and a uretprobe on those that
//! return a pointer, attached by user space to one process at a time and for a bounded time.
//!
//! Sampled allocations the process has not freed are in ALLOCS with their size, time and
//! stack; user space ranks the stacks by the bytes they hold that are older than a minimum
//! age. realloc counts as a free of the old block at entry and an allocation at return.
//!
//! Sampling, as heap profilers do it: a block of `size` bytes is taken with probability
//! `size / ALLOC_SAMPLE_BYTES` (always when larger), so each sampled block stands for
//! `max(size, ALLOC_SAMPLE_BYTES)` bytes and the estimate per stack is unbiased. An unsampled
//! call costs its probes' traps and a few instructions: no stack walk, no map update; its
//! return finds no pending entry. 0 or 1 traces every block.

use aya_ebpf::{
    Global,
    bindings::BPF_F_NO_PREALLOC,
    helpers::{bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_probe_read_user},
    macros::{map, uprobe, uretprobe},
    maps::HashMap,
    programs::{ProbeContext, RetProbeContext},
};
use monitor_common::stacks::{
    AllocInfo, AllocKind, AllocPending, DEFAULT_MAX_ALLOCS, DEFAULT_MAX_PENDING, StackCounter,
};

use super::{
    now_ns,
    python::python_stack,
    stack::{stack_pointer, user_stack_id, word_at_stack_pointer},
    task::current_task,
};
use crate::maps::count_stack;

#[map(name = "ALLOCS")]
static ALLOCS: HashMap<u64, AllocInfo> =
    HashMap::with_max_entries(DEFAULT_MAX_ALLOCS, BPF_F_NO_PREALLOC);

#[map(name = "ALLOC_PENDING")]
static ALLOC_PENDING: HashMap<u32, AllocPending> =
    HashMap::with_max_entries(DEFAULT_MAX_PENDING, 0);

#[unsafe(no_mangle)]
static ALLOC_SAMPLE_BYTES: Global<u64> = Global::new(0);

#[uprobe]
pub fn alloc_malloc(ctx: ProbeContext) -> u32 {
    enter(&ctx, AllocKind::Malloc);
    0
}

#[uprobe]
pub fn alloc_calloc(ctx: ProbeContext) -> u32 {
    enter(&ctx, AllocKind::Calloc);
    0
}

#[uprobe]
pub fn alloc_realloc(ctx: ProbeContext) -> u32 {
    enter(&ctx, AllocKind::Realloc);
    0
}

#[uprobe]
pub fn alloc_memalign(ctx: ProbeContext) -> u32 {
    enter(&ctx, AllocKind::Memalign);
    0
}

#[uprobe]
pub fn alloc_posix_memalign(ctx: ProbeContext) -> u32 {
    enter(&ctx, AllocKind::PosixMemalign);
    0
}

#[uprobe]
pub fn alloc_free(ctx: ProbeContext) -> u32 {
    count_stack(StackCounter::FreeCalls);
    release(ctx.arg::<u64>(0).unwrap_or(0));
    0
}

#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(pending) = (unsafe { ALLOC_PENDING.get(tid) }).copied() else {
        // Sampled away, unless every block is traced.
        if ALLOC_SAMPLE_BYTES.load() <= 1 {
            count_stack(StackCounter::AllocUnpaired);
        }
        return 0;
    };
    let _ = ALLOC_PENDING.remove(tid);
    let address = if pending.kind == AllocKind::PosixMemalign as u32 {
        if ctx.ret::<i32>() != 0 {
            return 0;
        }
        unsafe { bpf_probe_read_user(pending.out_ptr as *const u64) }.unwrap_or(0)
    } else {
        ctx.ret::<u64>()
    };
    if address == 0 {
        return 0;
    }
    let info = AllocInfo {
        size: pending.size,
        timestamp_ns: now_ns(),
        return_address: pending.return_address,
        stack_id: pending.stack_id,
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        py_stack: pending.py_stack,
        task: current_task(),
        _pad: 0,
    };
    match ALLOCS.insert(address, info, 0) {
        Ok(()) => count_stack(StackCounter::AllocTracked),
        Err(_) => count_stack(StackCounter::AllocLost),
    }
    0
}

#[inline(always)]
fn enter(ctx: &ProbeContext, kind: AllocKind) {
    count_stack(StackCounter::AllocCalls);
    let arg = |n| ctx.arg::<u64>(n).unwrap_or(0);
    let (size, out_ptr) = match kind {
        AllocKind::Malloc => (arg(0), 0),
        // An overflowing product makes calloc fail, and a failed call is not recorded.
        AllocKind::Calloc => (arg(0).wrapping_mul(arg(1)), 0),
        AllocKind::Realloc => {
            release(arg(0));
            (arg(1), 0)
        }
        AllocKind::Memalign => (arg(1), 0),
        AllocKind::PosixMemalign => (arg(2), arg(0)),
    };
    if !sampled(size) {
        return;
    }
    // The probe sits on the entry point's first instruction, so the stack pointer still
    // points at the return address (see stack.rs).
    // SAFETY: the context's register set, valid for this program's run.
    let sp = stack_pointer(unsafe { &*ctx.regs });
    let pending = AllocPending {
        size,
        out_ptr,
        return_address: word_at_stack_pointer(sp),
        stack_id: user_stack_id(ctx),
        kind: kind as u32,
        py_stack: python_stack((bpf_get_current_pid_tgid() >> 32) as u32),
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    if ALLOC_PENDING.insert(tid, pending, 0).is_err() {
        count_stack(StackCounter::AllocLost);
    }
}

#[inline(always)]
fn sampled(size: u64) -> bool {
    let every = ALLOC_SAMPLE_BYTES.load();
    if every <= 1 || size >= every {
        return true;
    }
    u64::from(unsafe { bpf_get_prandom_u32() }) % every < size
}

#[inline(always)]
fn release(address: u64) {
    if address != 0 && ALLOCS.remove(address).is_ok() {
        count_stack(StackCounter::AllocFreed);
    }
}
