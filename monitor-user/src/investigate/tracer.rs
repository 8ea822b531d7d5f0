//! The maps both stack-sampling modes (growth and alloc) read: stacks, Python stacks and
//! counters.

use aya::maps::{MapData, PerCpuArray, StackTraceMap};
use monitor_common::stacks::{STACK_COUNTERS_MAP, STACKS_MAP, StackCounter};

use super::python::Python;
use crate::bpf::{BpfError, Kernel, task_map::TaskMap};

/// Maps both modes read.
pub struct Shared {
    stacks: StackTraceMap<MapData>,
    counters: PerCpuArray<MapData, u64>,
    /// CPython targets and their Python stacks.
    pub python: Python,
    /// Names of the tasks samples carry; None when the object has no task maps.
    tasks: Option<TaskMap>,
}

impl Shared {
    pub fn take(kernel: &Kernel) -> Result<Self, BpfError> {
        Ok(Self {
            stacks: kernel.take_map(STACKS_MAP, StackTraceMap::try_from)?,
            counters: kernel.take_map(STACK_COUNTERS_MAP, PerCpuArray::try_from)?,
            python: Python::take(kernel)?,
            tasks: TaskMap::open(kernel)
                .map_err(|e| log::warn!("samples carry no task names: {e}"))
                .ok(),
        })
    }

    /// The name of a sample's task id (see `bpf::task_map`).
    pub fn task_name(&self, id: u32) -> Option<String> {
        self.tasks.as_ref()?.name(id)
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
        self.python.clear_stacks();
    }

    pub fn counter(&self, c: StackCounter) -> u64 {
        self.counters
            .get(&(c as u32), 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}
