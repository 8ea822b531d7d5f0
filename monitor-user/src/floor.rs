//! `leakscope bench-floor` (hidden): attaches empty programs to the tracepoints the agent
//! runs on every page fault, fork and exit, and holds them until SIGINT or SIGTERM. The
//! overhead benchmark runs its workloads under it to tell the kernel's cost of running any
//! program on those hooks from the cost of the agent's own programs.

use anyhow::Context as _;

/// (program, raw tracepoint): the same hooks the agent's raw-tracepoint programs use.
const FLOOR: [(&str, &str); 3] = [
    ("floor_rss_stat", "rss_stat"),
    ("floor_newtask", "task_newtask"),
    ("floor_exit", "sched_process_exit"),
];

pub async fn run() -> anyhow::Result<()> {
    crate::bpf::object::raise_memlock();
    let kernel = crate::bpf::object::load_floor().context("loading the eBPF object")?;
    let _links = FLOOR
        .iter()
        .map(|(program, tracepoint)| kernel.attach_raw_tracepoint(program, tracepoint))
        .collect::<Result<Vec<_>, _>>()?;
    let mut signals =
        crate::shutdown::Signals::install().context("installing the signal handlers")?;
    // The benchmark waits for this line before it measures, and may stop us right after.
    println!("floor programs attached");
    signals.recv().await;
    Ok(())
}
