//! One module per hook family; programs are named `<family>_<event>`.

pub mod alloc;
pub mod floor;
pub mod growth;
pub mod iter;
pub mod mem;
pub mod oom;
pub mod python;
pub mod rss;
pub mod sched;
pub mod stack;
pub mod task;
pub mod typed;
pub mod unwind;

/// Why a program gave up on an event; every variant is counted before returning.
#[derive(Clone, Copy)]
pub enum ProbeError {
    ReadField,
}

/// Reads a field at an offset that user space found in the tracepoint's tracefs `format`.
#[inline(always)]
pub fn field<T>(ctx: &aya_ebpf::programs::TracePointContext, offset: u32) -> Result<T, ProbeError> {
    unsafe { ctx.read_at::<T>(offset as usize) }.map_err(|_| {
        crate::maps::count(monitor_common::Counter::ReadFailed);
        ProbeError::ReadField
    })
}

#[inline(always)]
pub fn now_ns() -> u64 {
    unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_boot_ns() }
}

#[inline(always)]
pub fn cgroup_id() -> u64 {
    unsafe { aya_ebpf::helpers::generated::bpf_get_current_cgroup_id() }
}

#[inline(always)]
pub fn current_tgid() -> u32 {
    (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32
}
