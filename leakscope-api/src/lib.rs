//! The agent's HTTP API and metric names, defined once.
//!
//! The agent serialises its `/api/v1/*` responses through these types, and xtask and the
//! integration tests read them back with the same types, so a renamed field or metric fails to
//! build (or a test) instead of a client. The crate depends on serde alone: its clients must
//! not have to build the agent, which embeds its BPF object.
//!
//! Every type derives `Serialize` and `Deserialize` and skips nothing when serialised: an
//! absent value is `null`, as the agent has always served it.

pub mod exits;
mod float;
pub mod history;
pub mod host;
pub mod metrics;
pub mod oom;
pub mod pools;
pub mod processes;
pub mod tasks;

pub use exits::{ExitedProcess, ExitsResponse};
pub use history::{HistoryFloor, HistoryPoint, HistoryResponse};
pub use host::{HostMemory, HostResponse};
pub use oom::{OomKill, OomResponse, OomVictim};
pub use pools::{Pool, PoolExit, PoolMember, PoolsResponse, RecycleReason};
pub use processes::{
    Assessment, LimitSource, Overflow, PodName, Process, ProcessesResponse, QosClass, RssBytes,
    RssSources, Runtime, Series, Source, ThreadGrowth, Verdict,
};
pub use tasks::{
    AllocatorEvidence, Job, JobThread, MarkerCounters, Retained, Task, TaskSocket, TaskVerdict,
    TasksResponse,
};

/// Where each response type is served.
pub mod paths {
    /// [`crate::ProcessesResponse`]; `?pid=N` asks for one selected process.
    pub const PROCESSES: &str = "/api/v1/processes";
    /// [`crate::HistoryResponse`] of one selected process (the route, as axum writes it).
    pub const PROCESS_HISTORY: &str = "/api/v1/processes/{pid}/history";
    /// [`crate::PoolsResponse`].
    pub const POOLS: &str = "/api/v1/pools";
    /// [`crate::OomResponse`].
    pub const OOM: &str = "/api/v1/oom";
    /// [`crate::ExitsResponse`].
    pub const EXITS: &str = "/api/v1/exits";
    /// [`crate::TasksResponse`]; `?task=NAME` asks for one task name.
    pub const TASKS: &str = "/api/v1/tasks";
    /// [`crate::HostResponse`].
    pub const HOST: &str = "/api/v1/host";

    /// [`PROCESS_HISTORY`] of `pid`.
    pub fn process_history(pid: u32) -> String {
        format!("{PROCESSES}/{pid}/history")
    }
}
