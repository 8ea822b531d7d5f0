//! The core model: the process table, the leak detector and its verdicts, pools, OOM kills,
//! selection and limits, and the state the loops and handlers share. Pure where it can be:
//! it reads nothing of the host or the kernel itself (host/ and bpf/ do, below it).

pub mod budget;
pub mod detector;
pub mod features;
pub mod leaks;
pub mod limits;
pub mod oom;
pub mod pools;
pub mod select;
pub mod shared;
pub mod state;
pub mod table;
