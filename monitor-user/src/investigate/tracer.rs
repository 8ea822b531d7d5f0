//! The kernel object as the stack-sampling modes use it: globals they need, map sizes, and
//! the maps both modes share (stacks, counters).

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, StackTraceMap},
};
use monitor_common::stacks::{ALLOCS_MAP, STACK_COUNTERS_MAP, STACKS_MAP, StackCounter};

use crate::error::chain;

/// Capacities of the maps the stack modes use.
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    pub stacks: u32,
    pub allocations: u32,
    /// One sampled allocation per this many bytes on average (0: every one).
    pub alloc_sample_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    #[error("map {0} is missing from the BPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {}", chain(.cause))]
    Map {
        name: &'static str,
        cause: aya::maps::MapError,
    },
    #[error("the kernel refused the BPF object: {}", chain(.0))]
    Object(aya::EbpfError),
}

/// Sizes the maps of the growth and alloc programs. Their globals (KERNEL_LAYOUT from BTF,
/// SYSCALL_OFFSETS from tracefs) are the agent's programs' too: the caller sets them.
pub fn configure<'a>(loader: &mut EbpfLoader<'a>, capacity: &'a Capacity) {
    loader
        .map_max_entries(STACKS_MAP, capacity.stacks)
        .map_max_entries(ALLOCS_MAP, capacity.allocations)
        .override_global("ALLOC_SAMPLE_BYTES", &capacity.alloc_sample_bytes, true);
}

/// Loads the whole object for `leakscope investigate`, with the agent's own maps made small:
/// only the stack programs will run.
pub fn load_for_investigation(
    object: &[u8],
    tracefs: Option<&Path>,
    capacity: Capacity,
) -> Result<Ebpf, TracerError> {
    let layout = crate::btf::kernel_layout(Path::new(crate::btf::VMLINUX)).ok();
    let syscalls = tracefs.and_then(|t| crate::threads::read_layout(Ok(t)).ok());
    let mut loader = EbpfLoader::new();
    // LRU maps need a few entries per CPU; nothing writes these here.
    for name in [
        monitor_common::PROCS_MAP,
        monitor_common::MM_OWNERS_MAP,
        monitor_common::THREADS_MAP,
        monitor_common::THREAD_WANT_MAP,
    ] {
        loader.map_max_entries(name, 1024);
    }
    if let Some(layout) = &layout {
        loader.override_global("KERNEL_LAYOUT", layout, true);
    }
    if let Some(off) = &syscalls {
        loader.override_global("SYSCALL_OFFSETS", off, true);
    }
    configure(&mut loader, &capacity);
    loader.load(object).map_err(TracerError::Object)
}

/// Maps both modes read.
pub struct Shared {
    stacks: StackTraceMap<MapData>,
    counters: PerCpuArray<MapData, u64>,
}

impl Shared {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, TracerError> {
        let stacks = take(ebpf, STACKS_MAP, StackTraceMap::try_from)?;
        let counters = take(ebpf, STACK_COUNTERS_MAP, PerCpuArray::try_from)?;
        Ok(Self { stacks, counters })
    }

    /// Instruction pointers of a stack, leaf first.
    pub fn stack(&self, id: i32) -> Option<Vec<u64>> {
        let id = u32::try_from(id).ok()?;
        let trace = self.stacks.get(&id, 0).ok()?;
        Some(trace.frames().iter().map(|f| f.ip).collect())
    }

    /// Forgets every stack: ids are only meaningful to the entries that hold them.
    pub fn clear_stacks(&mut self) {
        let ids: Vec<u32> = self.stacks.stack_ids().filter_map(Result::ok).collect();
        for id in ids {
            let _ = self.stacks.remove(&id);
        }
    }

    pub fn counter(&self, c: StackCounter) -> u64 {
        self.counters
            .get(&(c as u32), 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}

pub fn take<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    convert: impl FnOnce(aya::maps::Map) -> Result<T, aya::maps::MapError>,
) -> Result<T, TracerError> {
    let map = ebpf.take_map(name).ok_or(TracerError::MissingMap(name))?;
    convert(map).map_err(|cause| TracerError::Map { name, cause })
}
