//! The Python call path of a sampled event in a CPython process: the interpreter frames of
//! the thread that holds the GIL, walked from `_PyRuntime` with the layout user space found
//! for the process's interpreter version (PY_TARGETS), stored in PY_STACKS under a hash of
//! the frames. The samplers (growth and alloc) put the returned key in their own records.
//!
//! Only (code object, instruction pointer) pairs are recorded here: names, files and lines
//! are read from the code objects by user space, once per code object.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST, bpf_pidns_info},
    helpers::{bpf_probe_read_user, generated::bpf_get_ns_current_pid_tgid},
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use monitor_common::stacks::{
    DEFAULT_MAX_GROWTH_TARGETS, DEFAULT_MAX_PY_STACKS, PY_BROKEN, PY_EMPTY, PY_FIRST_KEY, PY_LOST,
    PY_MAX_FRAMES, PY_MAX_HOPS, PY_NO_GIL, PY_NONE, PY_TRUNCATED, PY_UNREADABLE, PyStack, PyTarget,
    StackCounter,
};

use crate::maps::count_stack;

#[map(name = "PY_TARGETS")]
static PY_TARGETS: HashMap<u32, PyTarget> =
    HashMap::with_max_entries(DEFAULT_MAX_GROWTH_TARGETS, 0);

#[map(name = "PY_STACKS")]
static PY_STACKS: HashMap<u64, PyStack> =
    HashMap::with_max_entries(DEFAULT_MAX_PY_STACKS, BPF_F_NO_PREALLOC);

/// Where a stack is assembled: a PyStack is too big for the BPF stack.
#[map(name = "PY_SCRATCH")]
static PY_SCRATCH: PerCpuArray<PyStack> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn read<T>(address: u64) -> Option<T> {
    if address == 0 {
        return None;
    }
    unsafe { bpf_probe_read_user(address as *const T) }.ok()
}

/// The current thread's Python stack key, or the reason there is none (`PY_*`).
#[inline(always)]
pub fn python_stack(tgid: u32) -> u64 {
    let Some(target) = (unsafe { PY_TARGETS.get(tgid) }) else {
        return PY_NONE;
    };
    walk(target)
}

#[inline(never)]
fn walk(t: &PyTarget) -> u64 {
    let Some(mut tstate) = read::<u64>(t.tstate_root) else {
        return PY_UNREADABLE;
    };
    for i in 0..PY_MAX_HOPS {
        if i as u32 >= t.tstate_hops_len {
            break;
        }
        if tstate == 0 {
            return PY_NO_GIL;
        }
        match read::<u64>(tstate + u64::from(t.tstate_hops[i])) {
            Some(next) => tstate = next,
            None => return PY_UNREADABLE,
        }
    }
    if tstate == 0 {
        return PY_NO_GIL;
    }
    // The thread id as the process sees it, in its own pid namespace.
    let mut ns = bpf_pidns_info { pid: 0, tgid: 0 };
    // SAFETY: the helper writes `size` bytes into `ns`, a local of that size.
    let found = unsafe {
        bpf_get_ns_current_pid_tgid(
            t.pidns_dev,
            t.pidns_ino,
            &mut ns,
            core::mem::size_of::<bpf_pidns_info>() as u32,
        )
    };
    if found != 0 {
        return PY_UNREADABLE;
    }
    let tid = ns.pid;
    match read::<u64>(tstate + u64::from(t.tstate_native_thread_id)) {
        Some(native) if native == u64::from(tid) => {}
        Some(_) => return PY_NO_GIL,
        None => return PY_UNREADABLE,
    }
    let Some(cframe) = read::<u64>(tstate + u64::from(t.tstate_cframe)) else {
        return PY_UNREADABLE;
    };
    // 3.13 dropped `_PyCFrame`: the thread state points at the frame itself.
    let mut frame = cframe;
    if t.cframe_indirect != 0 {
        let Some(current) = read::<u64>(cframe + u64::from(t.cframe_current_frame)) else {
            return PY_UNREADABLE;
        };
        frame = current;
    }
    let Some(stack) = PY_SCRATCH.get_ptr_mut(0) else {
        return PY_UNREADABLE;
    };
    // SAFETY: this CPU's slot; the program does not migrate while it runs.
    let stack = unsafe { &mut *stack };
    stack.len = 0;
    stack.flags = 0;
    stack.entries = 0;
    stack.shims = 0;
    // FNV-1a over the recorded words.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut n: usize = 0;
    let cstack = u64::from(t.owner_cstack);
    // The body has no branch that joins again, only exits: the verifier then follows one
    // path per iteration instead of every combination of them.
    for _ in 0..PY_MAX_FRAMES {
        if frame == 0 {
            break;
        }
        let (Some(code), Some(instr), Some(owner), Some(entry), Some(previous)) = (
            read::<u64>(frame + u64::from(t.frame_code)),
            read::<u64>(frame + u64::from(t.frame_prev_instr)),
            read::<u8>(frame + u64::from(t.frame_owner)),
            read::<u8>(frame + u64::from(t.frame_is_entry)),
            read::<u64>(frame + u64::from(t.frame_previous)),
        ) else {
            stack.flags |= PY_BROKEN;
            break;
        };
        let slot = n & (PY_MAX_FRAMES - 1);
        stack.frames[slot].code = code;
        stack.frames[slot].instr = instr;
        // 1 when owner == cstack, without a branch: (x - 1) >> 63 is 1 only for x == 0.
        let shim = (u64::from(owner) ^ cstack).wrapping_sub(1) >> 63;
        stack.shims |= shim << slot;
        stack.entries |= u64::from(u32::from(entry) & t.entry_mask & 1) << slot;
        hash = (hash ^ code).wrapping_mul(0x0100_0000_01b3);
        hash = (hash ^ instr).wrapping_mul(0x0100_0000_01b3);
        n += 1;
        frame = previous;
    }
    if frame != 0 && stack.flags == 0 {
        stack.flags |= PY_TRUNCATED;
    }
    if n == 0 {
        return PY_EMPTY;
    }
    stack.len = n as u32;
    hash = (hash ^ u64::from(stack.flags)).wrapping_mul(0x0100_0000_01b3);
    let key = if hash < PY_FIRST_KEY {
        hash + PY_FIRST_KEY
    } else {
        hash
    };
    // Present already: the same frames were sampled before (the common case).
    if unsafe { PY_STACKS.get(&key) }.is_some() {
        return key;
    }
    if PY_STACKS
        .insert(&key, stack, u64::from(BPF_NOEXIST))
        .is_err()
        && unsafe { PY_STACKS.get(&key) }.is_none()
    {
        count_stack(StackCounter::PyStackLost);
        return PY_LOST;
    }
    key
}
