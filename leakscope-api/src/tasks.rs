//! `/api/v1/tasks`: every task name (from task markers) with its runs, retained bytes, verdict
//! and recent jobs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{float::nan_if_null, processes::Source};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TasksResponse {
    /// Where workers send markers; absent when the socket is off or could not be bound.
    pub socket: Option<TaskSocket>,
    pub markers: MarkerCounters,
    pub open_jobs: u64,
    /// Suspected leaks first, then by retained bytes per run.
    pub tasks: Vec<Task>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSocket {
    pub path: String,
    /// Receive queue, in datagrams.
    pub queue_len: u32,
    /// Octal, as given with `--task-socket-mode`.
    pub mode: String,
}

/// Marker traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerCounters {
    /// Markers accepted (parsed, with credentials, paired or opened).
    pub received: u64,
    /// Markers dropped, by reason; every reason present from the start.
    pub dropped: BTreeMap<String, u64>,
    /// Times the socket's queue was found full: senders may have dropped markers meanwhile.
    pub queue_full: u64,
    /// Jobs that never ended (their end was lost, or their process exited).
    pub abandoned: u64,
    /// Markers whose `tid=` did not belong to the sender: attributed to the process.
    pub tid_unverified: u64,
    /// New task names sent to `(overflow)` because their sender's `uid` or `cgroup` already
    /// held its share of names.
    pub names_refused: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub task: String,
    pub runs: u64,
    pub failed_runs: u64,
    pub abandoned_jobs: u64,
    pub leak_suspected: bool,
    /// What one run keeps: the allocator evidence's bytes a run when it names this type,
    /// else the median retained bytes of recent runs.
    pub retained_bytes_per_run: i64,
    pub retained_bytes: Retained,
    pub verdict: TaskVerdict,
    /// Most recent last.
    pub recent_jobs: Vec<Job>,
}

/// Retained bytes of the runs in the verdict's window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Retained {
    pub runs: u64,
    pub median: i64,
    #[serde(deserialize_with = "nan_if_null")]
    pub mean: f64,
    pub p90: i64,
    pub min: i64,
    pub max: i64,
    pub last: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskVerdict {
    pub leak_suspected: bool,
    /// Runs the verdict looked at (the most recent ones).
    pub runs_considered: u64,
    /// Of those, runs that retained at least the noise threshold.
    pub retaining_runs: u64,
    /// Median of the runs' retained bytes.
    pub median_retained_bytes: i64,
    /// Positive retentions summed.
    pub retained_total_bytes: i64,
    /// Rise of the floor across the span of the runs, summed over processes.
    pub floor_rise_bytes: i64,
    /// Why, in words.
    pub evidence: String,
    /// From the worker's allocator (`blocks=` on `end` markers), across runs; absent when the
    /// worker does not send it.
    #[serde(default)]
    pub allocator: Option<AllocatorEvidence>,
}

/// What the worker's allocator says a task type keeps, fitted across its recent runs (and the
/// runs that overlapped them) in every process that ran it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllocatorEvidence {
    pub leak_suspected: bool,
    pub runs: u64,
    /// Live allocator blocks kept per run, with a 95% interval.
    pub blocks_per_run: f64,
    pub blocks_low: f64,
    pub blocks_high: f64,
    /// The floor's rise apportioned by blocks kept, per run, with the blocks' interval.
    pub bytes_per_run: f64,
    pub bytes_low: f64,
    pub bytes_high: f64,
    /// Share of the floor's rise in the processes that ran this type explained by it, 0 to 1.
    pub share: f64,
    pub floor_rise_bytes: i64,
    pub evidence: String,
}

/// One completed job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub job_id: Option<String>,
    pub pid: u32,
    /// The marker's thread, in the agent's pid namespace, when it could be verified.
    pub tid: Option<u32>,
    #[serde(deserialize_with = "nan_if_null")]
    pub duration_seconds: f64,
    /// Resident bytes (file + anon + shmem) at the begin and end markers.
    pub rss_begin_bytes: u64,
    pub rss_end_bytes: u64,
    /// Held bytes (anon + shmem + swap) at the end minus at the begin.
    pub retained_bytes: i64,
    pub failed: bool,
    /// `kernel` (exact, at the marker) or `proc`.
    pub source: Source,
    /// Threads that grew or shrank the process during the job, largest growth first.
    pub threads: Vec<JobThread>,
    #[serde(deserialize_with = "nan_if_null")]
    pub begin_time_seconds: f64,
}

/// One thread's growth during a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobThread {
    pub tid: u32,
    pub comm: String,
    /// RSS this thread's own actions added during the job (faulted in minus released).
    pub rss_growth_bytes: i64,
    /// Address space it mapped minus unmapped during the job.
    pub mapped_growth_bytes: i64,
}
