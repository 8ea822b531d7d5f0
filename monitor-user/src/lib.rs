//! leakscope's agent: loads the kernel programs, keeps a table of every process's memory and
//! serves it as Prometheus metrics and JSON.

pub mod agent;
pub mod bpf;
pub mod budget;
pub mod caps;
pub mod cli;
pub mod container;
pub mod detector;
pub mod error;
pub mod features;
pub mod floor;
pub mod host;
pub mod http;
pub mod investigate;
pub mod kube;
pub mod leaks;
pub mod limits;
pub mod metrics;
pub mod oom;
pub mod pools;
pub mod prom;
pub mod select;
pub mod shared;
pub mod shutdown;
pub mod state;
pub mod table;
pub mod tasks;
pub mod threads;
pub mod wire;
