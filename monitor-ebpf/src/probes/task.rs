//! The task a thread is running, as the workers' task markers told the agent: the samplers
//! put it in their records. The agent owns both maps' contents; programs only read.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{HashMap, LruHashMap},
};
use monitor_common::stacks::{DEFAULT_MAX_TASK_NAMES, DEFAULT_MAX_TASK_THREADS, NO_TASK, TaskName};

#[map(name = "TASK_THREADS")]
static TASK_THREADS: LruHashMap<u32, u32> =
    LruHashMap::with_max_entries(DEFAULT_MAX_TASK_THREADS, 0);

/// Read by user space only; declared here so that the object carries it.
#[map(name = "TASK_NAMES")]
static TASK_NAMES: HashMap<u32, TaskName> = HashMap::with_max_entries(DEFAULT_MAX_TASK_NAMES, 0);

/// The current thread's task id, [`NO_TASK`] without one.
#[inline(always)]
pub fn current_task() -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    unsafe { TASK_THREADS.get(&tid) }
        .copied()
        .unwrap_or(NO_TASK)
}
