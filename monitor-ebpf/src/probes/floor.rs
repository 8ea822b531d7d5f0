//! Empty programs on the always-on tier's hot tracepoints, attached only by
//! `cargo xtask bench overhead`: what the kernel charges to run any program on these hooks.
//! No program there can cost less, so the benchmark reports the agent against this floor as
//! well as against no tracing at all.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

#[raw_tracepoint(tracepoint = "rss_stat")]
pub fn floor_rss_stat(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "task_newtask")]
pub fn floor_newtask(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn floor_exit(_ctx: RawTracePointContext) -> i32 {
    0
}
