//! Host access: what the agent reads of the machine it runs on, below every feature.
//!
//! - [`proc`]: `/proc`, through procfs: process snapshots, liveness of processes and threads,
//!   their pid-namespace ids and uids, and the agent's own capabilities and mounts. A read
//!   the agent may not make is told apart from a process that has gone.
//! - [`caps`]: which capabilities the agent holds, and what it cannot do without each.
//! - [`container`]: container, runtime and pod from a process's cgroup path.
//! - [`docker`]: container names, images and Compose names from the Docker daemon's socket.
//! - [`memory`]: the host's memory (`/proc/meminfo`) and name.
//! - [`kube`]: pod names from the Kubernetes API, when the agent runs in a cluster.
//! - [`peer`]: who is on the other end of a loopback connection (the kernel's socket table).
//! - [`wrappers`]: where a process's libc memory-call wrappers are, for uprobes on that
//!   process alone.

pub mod caps;
pub mod container;
pub mod docker;
pub mod kube;
pub mod memory;
pub mod peer;
pub mod proc;
pub mod wrappers;
