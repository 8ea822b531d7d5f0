//! Per-job memory: workers say when a job begins and ends, leakscope measures what it kept.
//!
//! - [`protocol`]: the `LS1` marker format (`integrations/PROTOCOL.md`).
//! - [`socket`]: the Unix datagram socket the agent owns; senders' pids come from the kernel.
//! - [`listener`]: a thread that drains it and reads the sender's memory at each marker.
//! - [`jobs`]: pairing into jobs, per-task runs and retained bytes; [`verdict`]: leak or not,
//!   per run from pages, and [`attribution`]: across runs from the worker's allocator blocks.
//! - [`budget`]: what one uid or cgroup may make the agent do (marker rate, table shares).
//! - [`metrics`], [`api`]: `/metrics` families and `/api/v1/tasks`.

pub mod api;
pub mod attribution;
pub mod jobs;
pub mod listener;
pub mod metrics;
pub mod protocol;
pub mod run;
pub mod socket;
pub mod verdict;

pub use jobs::{OVERFLOW_TASK, Tasks, TasksConfig};
