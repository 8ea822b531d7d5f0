//! leakscope's agent: loads the kernel programs, keeps a table of every process's memory and
//! serves it as Prometheus metrics and JSON.

pub mod agent;
pub mod bpf;
pub mod cli;
pub mod client;
pub mod error;
pub mod floor;
pub mod host;
pub mod http;
pub mod investigate;
pub mod metrics;
pub mod model;
pub mod prom;
pub mod report;
pub mod shutdown;
pub mod tasks;
pub mod threads;
pub mod top;
pub mod wire;
