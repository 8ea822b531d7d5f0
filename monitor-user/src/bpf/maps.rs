//! Handles to the maps the agent reads every interval, and to its lifecycle ring buffer.

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use monitor_common::{COUNTERS_MAP, Counter, EVENTS_MAP, PROCS_MAP, ProcStats};

use super::{BpfError, Kernel};

pub struct KernelMaps {
    procs: BpfHashMap<MapData, u32, ProcStats>,
    counters: PerCpuArray<MapData, u64>,
}

impl KernelMaps {
    pub fn take(kernel: &Kernel) -> Result<Self, BpfError> {
        Ok(Self {
            procs: kernel.take_map(PROCS_MAP, BpfHashMap::try_from)?,
            counters: kernel.take_map(COUNTERS_MAP, PerCpuArray::try_from)?,
        })
    }

    /// Every process entry; entries that vanish while iterating are skipped.
    pub fn procs(&self) -> std::collections::HashMap<u32, ProcStats> {
        self.procs.iter().filter_map(Result::ok).collect()
    }

    /// One process's entry, read now (the task listener reads it when a marker arrives).
    pub fn proc_stats(&self, pid: u32) -> Option<ProcStats> {
        self.procs.get(&pid, 0).ok()
    }

    pub fn counters(&self) -> [u64; Counter::COUNT as usize] {
        let mut out = [0; Counter::COUNT as usize];
        for c in Counter::ALL {
            if let Ok(per_cpu) = self.counters.get(&(c as u32), 0) {
                out[c as usize] = per_cpu.iter().sum();
            }
        }
        out
    }
}

/// The ring buffer the lifecycle events (fork, exec, exit, OOM) arrive through.
pub fn events(kernel: &Kernel) -> Result<RingBuf<MapData>, BpfError> {
    kernel.take_map(EVENTS_MAP, RingBuf::try_from)
}
