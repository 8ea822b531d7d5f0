//! Host access: what the agent reads of the machine it runs on, below every feature.
//!
//! - [`proc`]: `/proc`, through procfs: process snapshots, liveness of processes and threads,
//!   their pid-namespace ids and uids, and the agent's own capabilities and mounts. A read
//!   the agent may not make is told apart from a process that has gone.

//! - [`peer`]: who is on the other end of a loopback connection (the kernel's socket table).

pub mod peer;
pub mod proc;
