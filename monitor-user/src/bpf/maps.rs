//! Handles to the maps the agent reads every interval, and to its lifecycle ring buffer.

use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray, RingBuf};
use monitor_common::{COUNTERS_MAP, Counter, EVENTS_MAP, PROCS_MAP, ProcStats};

use super::{BpfError, Kernel};

pub struct KernelMaps {
    procs: BpfHashMap<MapData, u32, ProcStats>,
    /// A second handle on PROCS, to write through (the agent registers processes the iterator
    /// found) without making readers (the marker listener) wait behind a whole-map read.
    procs_writer: std::sync::Mutex<BpfHashMap<MapData, u32, ProcStats>>,
    counters: PerCpuArray<MapData, u64>,
    /// Pids given an entry by [`KernelMaps::register`]: the agent removes them once they are
    /// gone, since the exit program leaves PROCS alone by default.
    registered: std::sync::Mutex<std::collections::HashSet<u32>>,
}

impl KernelMaps {
    pub fn take(kernel: &Kernel) -> Result<Self, BpfError> {
        let (procs, writer) = kernel.take_map(PROCS_MAP, |map| {
            let id = match &map {
                Map::LruHashMap(data) | Map::HashMap(data) => data.info()?.id(),
                _ => {
                    return Err(MapError::InvalidName {
                        name: PROCS_MAP.into(),
                    });
                }
            };
            let writer = Map::LruHashMap(MapData::from_id(id)?);
            Ok((BpfHashMap::try_from(map)?, BpfHashMap::try_from(writer)?))
        })?;
        Ok(Self {
            procs,
            procs_writer: std::sync::Mutex::new(writer),
            counters: kernel.take_map(COUNTERS_MAP, PerCpuArray::try_from)?,
            registered: Default::default(),
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

    /// Gives processes new to the table an entry, as the fork probe would have: per-thread
    /// accounting keys on it. An entry a previous holder of the pid left is replaced; a full
    /// map evicts its coldest entry (LRU).
    pub fn register(&self, processes: impl IntoIterator<Item = (u32, ProcStats)>) {
        let mut procs = self
            .procs_writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut registered = self
            .registered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (pid, stats) in processes {
            if procs.insert(pid, stats, 0).is_ok() {
                registered.insert(pid);
            }
        }
    }

    /// Removes the entries [`KernelMaps::register`] made for processes `alive` no longer
    /// lists (one walk's pids): the exit program leaves them by default, so that no exit on
    /// the host pays for a hash lookup.
    pub fn forget_gone(&self, alive: impl Fn(u32) -> bool) {
        let mut registered = self
            .registered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let gone: Vec<u32> = registered.iter().copied().filter(|p| !alive(*p)).collect();
        if gone.is_empty() {
            return;
        }
        let mut procs = self
            .procs_writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for pid in gone {
            registered.remove(&pid);
            // Already evicted (LRU) is as good as removed.
            let _ = procs.remove(&pid);
        }
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
