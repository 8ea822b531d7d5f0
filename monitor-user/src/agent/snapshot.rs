//! The always-on tier's reads: the task iterator's walks into the process table, and the
//! /proc fallback's discovery when the kernel refuses the iterator.

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

use log::warn;
use monitor_common::ProcStats;

use super::{PROC_READS_PER_INTERVAL, record_proc_errors, release_freed_memory};
use crate::{
    bpf::maps::KernelMaps,
    cli::RunArgs,
    host::proc::{self, ProcError},
    model::shared::Shared,
};

/// Where the agent's numbers come from: the task iterator by default, the kernel's
/// per-process map with `--rss-events`, /proc when neither is there.
#[derive(Clone)]
pub(super) struct Source {
    pub maps: Arc<KernelMaps>,
    pub iter: Option<Arc<crate::bpf::iter::TaskIter>>,
    /// Failed walks in a row.
    pub iter_failures: Arc<AtomicU32>,
    pub rss_events: bool,
}

pub(super) fn load_task_iter(
    kernel: &Arc<crate::bpf::Kernel>,
    setup: &crate::bpf::iter::IterSetup,
    btf: &Result<monitor_common::KernelLayout, String>,
    args: &RunArgs,
) -> Result<crate::bpf::iter::TaskIter, crate::bpf::BpfError> {
    let broken = |name: &str| args.break_probe.iter().any(|b| b == name);
    if let Err(why) = &setup.layout {
        return Err(crate::bpf::BpfError::Program {
            name: monitor_common::TASK_ITER_PROGRAM.into(),
            detail: format!("no kernel layout: {why}"),
        });
    }
    // The typed walk decides threads from leaders by pid: without it in BTF, it would list
    // no process at all, where the other walk still can.
    let typed = if broken(crate::bpf::iter::BREAK_ITER_TYPED) {
        Err("fault injection".to_string())
    } else {
        match btf {
            Ok(k) if k.task_pid != 0 && k.task_mm != 0 => Ok(()),
            Ok(_) => Err("kernel BTF lacks task_struct.pid or .mm".to_string()),
            Err(e) => Err(e.clone()),
        }
    };
    let iter = kernel.load_task_iter(broken(crate::bpf::iter::BREAK_ITER), typed)?;
    // aya's BTF parse for the load is large and short-lived.
    release_freed_memory();
    // A first walk now: a kernel that loads the program but refuses the link says so here.
    iter.run()?;
    Ok(iter)
}

/// The iterator's fallbacks that are in force, in words for /healthz and the log.
pub(super) fn iter_notes(setup: &crate::bpf::iter::IterSetup, iter_on: bool) -> Vec<String> {
    let mut notes = Vec::new();
    if iter_on && let Some(why) = &setup.approximate {
        notes.push(format!(
            "fallback: RSS is the kernel's batched count, not the exact per-CPU sum ({why}); \
             each kind may trail by up to {} bytes",
            crate::bpf::iter::count_error_bytes()
        ));
    }
    if let Some(why) = &setup.exit_snapshot {
        notes.push(format!(
            "fallback: exit numbers are the last snapshot, not read at exit ({why})"
        ));
    }
    notes
}

/// One walk of the task iterator into the table. Walks that keep failing turn it off for
/// good, and the /proc fallback takes over at the next interval.
pub(super) fn take_snapshot(source: &Source, shared: &Shared) {
    let Some(iter) = &source.iter else {
        return;
    };
    let exits_before = {
        let state = shared.current();
        if !state.probe_attached(crate::bpf::iter::BREAK_ITER) {
            return;
        }
        state.exits_total
    };
    match iter.run() {
        Ok(mut records) => {
            // Exits that arrived during the walk are applied first, and their records dropped:
            // a stale record must not bring back a process that is gone.
            let mut state = shared.current();
            let gone = state.exited_since(exits_before);
            records.retain(|r| !gone.contains(&r.pid));
            let first: std::collections::HashSet<u32> =
                state.table.sync_snapshot(&records).into_iter().collect();
            drop(state);
            source.maps.register(
                records
                    .iter()
                    .filter(|r| first.contains(&r.pid))
                    .map(|r| (r.pid, ProcStats::new(r.start_ns, r.ppid, r.cgroup_id))),
            );
            // The walk lists processes in pid order (the kernel walks pids upwards); sorted
            // here all the same, so the lookups stay exact if that ever changes.
            let mut pids: Vec<u32> = records.iter().map(|r| r.pid).collect();
            pids.sort_unstable();
            source
                .maps
                .forget_gone(|pid| pids.binary_search(&pid).is_ok());
        }
        Err(e) => {
            let failed = source.iter_failures.fetch_add(1, Ordering::Relaxed) + 1;
            warn!("task iterator walk failed ({failed} in a row): {e}");
            if failed >= ITER_FAILURES_TO_GIVE_UP {
                shared
                    .state()
                    .probe_failed(crate::bpf::iter::BREAK_ITER, e.to_string());
            }
            return;
        }
    }
    source.iter_failures.store(0, Ordering::Relaxed);
}

/// Walks that fail in a row before the /proc fallback takes over for good: one failure can
/// be a passing shortage (memory), three are the kernel saying no.
const ITER_FAILURES_TO_GIVE_UP: u32 = 3;

/// The /proc fallback's discovery: pids the table lacks, a bounded number of reads each
/// interval (the rest wait for the next one).
pub(super) fn adopt_new_from_proc(shared: &Shared) {
    let new: Vec<u32> = {
        let state = shared.state();
        proc::pids()
            .into_iter()
            .filter(|pid| state.table.get(*pid).is_none())
            .collect()
    };
    let mut errors = Vec::new();
    let mut found = Vec::new();
    for pid in new.into_iter().take(PROC_READS_PER_INTERVAL) {
        match proc::read(pid) {
            Ok(s) => found.push(s),
            Err(ProcError::Gone(_) | ProcError::KernelThread(_)) => {}
            Err(e) => errors.push(e),
        }
    }
    let mut state = shared.state();
    record_proc_errors(&mut state, &errors);
    state.table.seed(found);
}
