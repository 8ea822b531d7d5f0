//! User stacks for the stack-sampling programs (growth and alloc).
//!
//! The kernel walks user stacks by frame pointers. A function that keeps no frame pointer
//! and has not called anything yet (libc's syscall wrappers, an allocator's entry) is
//! invisible to that walk: the first frame the walk finds is its caller's caller. While such
//! a function runs, the word at the stack pointer is still the return address into its
//! caller, so the programs read it alongside the stack id and user space splices it in.

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, pt_regs},
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    programs::tracing::StackIdContext,
};
use monitor_common::stacks::StackCounter;

use crate::maps::{STACKS, count_stack};

/// Id of the current user stack in STACKS, or -1 (counted) when the map could not take it.
#[inline(always)]
pub fn user_stack_id<C: StackIdContext>(ctx: &C) -> i32 {
    match ctx.get_stackid(&STACKS, u64::from(BPF_F_USER_STACK)) {
        Ok(id) => id as i32,
        Err(_) => {
            count_stack(StackCounter::StackLost);
            -1
        }
    }
}

/// The user stack pointer in a register set.
#[inline(always)]
pub fn stack_pointer(regs: &pt_regs) -> u64 {
    #[cfg(bpf_target_arch = "x86_64")]
    {
        regs.rsp
    }
    #[cfg(bpf_target_arch = "aarch64")]
    {
        regs.sp
    }
    #[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
    {
        let _ = regs;
        0
    }
}

/// The word at the user stack pointer (0 when unreadable).
#[inline(always)]
pub fn word_at_stack_pointer(sp: u64) -> u64 {
    if sp == 0 {
        return 0;
    }
    unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0)
}

/// The word at the user stack pointer of the current task, for programs that run on a
/// tracepoint and so have no user registers of their own (syscall entries).
#[inline(always)]
pub fn current_return_hint() -> u64 {
    // SAFETY: helpers with a BTF task pointer; bpf_task_pt_regs returns its user registers.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    match unsafe { bpf_probe_read_kernel(regs) } {
        Ok(regs) => word_at_stack_pointer(stack_pointer(&regs)),
        Err(_) => 0,
    }
}
