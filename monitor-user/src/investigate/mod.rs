//! `leakscope investigate`: which code path a process's memory grows from.

pub mod alloc;
pub mod allocators;
pub mod auto;
pub mod collect;
pub mod command;
pub mod flame;
pub mod fold;
pub mod growth;
pub mod maps_snapshot;
pub mod out_dir;
pub mod pprof;
pub mod probe_point;
pub mod profiler;
pub mod python;
pub mod report;
pub mod symbolize;
pub mod table;
pub mod target;
pub mod tracer;
pub mod unwind;
