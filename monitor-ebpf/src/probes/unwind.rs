//! Samples for user-space unwinding (`--unwind dwarf`): the user registers and the top of the
//! user stack of a sampled event, sent through UNWIND_SAMPLES. Only sampled events pay for
//! it (a fault in `period`, a sampled allocation), and a full ring costs a counted drop:
//! the event keeps its frame-pointer stack.
//!
//! The slice is copied from the stack pointer upward in fixed chunks at constant offsets, so
//! the verifier sees each destination in bounds. A chunk that fails (it reaches past the end
//! of the stack mapping) is retried up to its page's end, and copying stops there: the record
//! says how many bytes are valid.

use aya_ebpf::{
    Global,
    bindings::pt_regs,
    helpers::{
        bpf_get_smp_processor_id, bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_probe_read_user, bpf_task_pt_regs},
    },
    macros::map,
    maps::RingBuf,
};
use monitor_common::stacks::{
    GrowthKey, StackCounter, UNWIND_CHUNK_BYTES, UNWIND_RING_BYTES, UNWIND_STACK_BYTES,
    UnwindSample,
};

use super::now_ns;
use crate::maps::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, count_stack};

const WAKEUP_BYTES: u64 = UNWIND_RING_BYTES as u64 / 4;

#[map(name = "UNWIND_SAMPLES")]
static UNWIND_SAMPLES: RingBuf = RingBuf::with_byte_size(UNWIND_RING_BYTES, 0);

/// Bytes of stack to copy per sample; 0 sends nothing (`--unwind fp`).
#[unsafe(no_mangle)]
static UNWIND_COPY_BYTES: Global<u32> = Global::new(0);

/// The user registers an unwinder starts from.
#[derive(Clone, Copy, Default)]
struct UserRegs {
    ip: u64,
    sp: u64,
    fp: u64,
    lr: u64,
}

/// The current task's user registers (saved at its entry into the kernel: the fault, the
/// syscall, the uprobe's trap).
#[inline(always)]
fn user_regs() -> Option<UserRegs> {
    // SAFETY: helpers with a BTF task pointer; bpf_task_pt_regs returns its user registers,
    // read field by field through bpf_probe_read_kernel.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    if regs.is_null() {
        return None;
    }
    #[cfg(bpf_target_arch = "x86_64")]
    {
        let read = |field: *const u64| unsafe { bpf_probe_read_kernel(field) }.ok();
        // SAFETY: field addresses inside the register set, not dereferenced here.
        let (ip, sp, fp) = unsafe {
            (
                core::ptr::addr_of!((*regs).rip),
                core::ptr::addr_of!((*regs).rsp),
                core::ptr::addr_of!((*regs).rbp),
            )
        };
        Some(UserRegs {
            ip: read(ip)?,
            sp: read(sp)?,
            fp: read(fp)?,
            lr: 0,
        })
    }
    #[cfg(not(bpf_target_arch = "x86_64"))]
    {
        // aya's bindings leave pt_regs opaque elsewhere: no record, the stack id stands.
        let _ = bpf_probe_read_kernel::<u64>;
        None
    }
}

/// Sends a sample of the current user stack with `key` and `bytes`; returns its id, or 0
/// when none was sent (fp mode, no registers, ring full).
#[inline(always)]
pub fn send(kind: u32, key: &GrowthKey, bytes: u64) -> u64 {
    let copy = UNWIND_COPY_BYTES.load() as usize;
    if copy == 0 {
        return 0;
    }
    let Some(regs) = user_regs() else {
        return 0;
    };
    let Some(mut entry) = UNWIND_SAMPLES.reserve::<UnwindSample>(0) else {
        count_stack(StackCounter::UnwindLost);
        return 0;
    };
    // The id is this CPU and the time. A per-CPU counter would need an atomic add (a fault
    // handler can be preempted by another task's fault on the same CPU, and a plain increment
    // then hands both the same id, charging one page to the other's stack), which this target
    // lacks; two runs on one CPU never read the same nanosecond. 12 bits of CPU and 52 of
    // time (52 days) keep ids apart within any trace.
    let ktime = now_ns();
    let cpu = u64::from(unsafe { bpf_get_smp_processor_id() });
    let sample_id = (((cpu + 1) & 0xfff) << 52) | (ktime & ((1 << 52) - 1));
    let rec = entry.as_mut_ptr();
    let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
    // SAFETY: `rec` is the reserved record, written field by field before it is submitted.
    unsafe {
        (*rec).sample_id = sample_id;
        (*rec).ktime_ns = ktime;
        (*rec).tid = tid;
        (*rec).kind = kind;
        (*rec).key = *key;
        (*rec).bytes = bytes;
        (*rec).ip = regs.ip;
        (*rec).sp = regs.sp;
        (*rec).fp = regs.fp;
        (*rec).lr = regs.lr;
        (*rec)._pad = 0;
        (*rec).stack_len = copy_stack(&mut (*rec).stack, regs.sp, copy) as u32;
    }
    // Waking the drainer per sample would cost a wakeup per sampled fault; it drains on a
    // short timer anyway, and is woken early once a quarter of the ring is pending.
    let flags = if UNWIND_SAMPLES.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags);
    count_stack(StackCounter::UnwindSent);
    sample_id
}

/// Copies up to `copy` bytes of user stack from `sp` into `dst`; returns the bytes copied.
#[inline(always)]
fn copy_stack(dst: &mut [u8; UNWIND_STACK_BYTES], sp: u64, copy: usize) -> usize {
    let mut len = 0;
    for i in 0..UNWIND_STACK_BYTES / UNWIND_CHUNK_BYTES {
        let off = i * UNWIND_CHUNK_BYTES;
        if off >= copy {
            break;
        }
        let from = sp + off as u64;
        // SAFETY: off < UNWIND_STACK_BYTES (the loop's bound).
        let to = unsafe { dst.as_mut_ptr().add(off) }.cast();
        // SAFETY: `to` has UNWIND_CHUNK_BYTES of room (off is at most the last chunk).
        let r = unsafe { bpf_probe_read_user(to, UNWIND_CHUNK_BYTES as u32, from as *const _) };
        if r == 0 {
            len += UNWIND_CHUNK_BYTES;
            continue;
        }
        // The chunk crosses into unmapped memory: keep what lies before its page's end.
        let rest = UNWIND_CHUNK_BYTES - (from as usize & (UNWIND_CHUNK_BYTES - 1));
        if rest > 0 && rest < UNWIND_CHUNK_BYTES {
            // SAFETY: as above, and rest < UNWIND_CHUNK_BYTES.
            let r = unsafe { bpf_probe_read_user(to, rest as u32, from as *const _) };
            if r == 0 {
                len += rest;
            }
        }
        break;
    }
    len
}
