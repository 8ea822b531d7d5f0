//! Jobs: begin/end markers paired per (process, thread), measured, and aggregated per task
//! name (runs, retained bytes, verdict). Pure state; the listener feeds it.
//!
//! Pairing follows `integrations/PROTOCOL.md`: begins stack per key (pid, tid or none); an end
//! closes the innermost open job of its key with the same task (and job id, when both carry
//! one), abandoning jobs above it; a repeated begin (same task and job id) abandons the earlier
//! one; jobs of processes that exit are abandoned.
//!
//! Task names, open jobs and processes with open jobs are tables every sender shares: each
//! uid (and cgroup) holds at most a fair share of each ([`crate::model::budget`]), so that one user
//! cannot push another's tasks into `(overflow)` or keep the agent from opening their jobs.

use std::collections::{BTreeMap, HashMap, VecDeque};

use monitor_common::{RSS_UNKNOWN, RssKind, ThreadStats};
use serde::Serialize;

use super::{
    attribution::{AttributionConfig, BlockRun, TaskAttribution},
    protocol::{Marker, MarkerError, Phase},
    verdict::{RunSample, TaskVerdict, VerdictConfig, assess, combine, median},
};
use crate::{
    model::budget::{Over, Principal, Shares},
    model::table::{Source, comm_str},
};

/// Runs beyond `--max-tasks` names are summed here. Parentheses are outside the protocol's
/// task alphabet, so no worker can send a task of this name.
pub const OVERFLOW_TASK: &str = "(overflow)";

/// Upper bounds of `leakscope_task_retained_bytes` buckets: from "nothing kept" through the
/// kernel's batching noise (64-256 KiB) to a gibibyte a run.
pub const RETAINED_BUCKETS: [f64; 9] = [
    0.0,
    65_536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
];

/// Reasons the agent itself drops a marker, beside the parser's.
pub mod reason {
    /// The datagram came without `SCM_CREDENTIALS` (cannot happen with `SO_PASSCRED` set
    /// before bind, but a marker without a kernel-given pid is never used).
    pub const NO_CREDENTIALS: &str = "no_credentials";
    /// The datagram carried file descriptors or other ancillary data no client sends.
    pub const ANCILLARY_DATA: &str = "ancillary_data";
    /// The sender's uid spent its marker budget (`--marker-rate`), whatever its processes.
    pub const UID_RATE_LIMITED: &str = "uid_rate_limited";
    /// The sender's cgroup spent its marker budget (e.g. a container sending as many uids).
    pub const CGROUP_RATE_LIMITED: &str = "cgroup_rate_limited";
    /// An `end` that matches no open job (its `begin` was lost or never sent).
    pub const UNMATCHED_END: &str = "unmatched_end";
    /// The agent's bound on open jobs (per process, or processes with open jobs) was reached.
    pub const TOO_MANY_OPEN_JOBS: &str = "too_many_open_jobs";
    /// The sender's uid holds its share of open jobs (or of processes with open jobs).
    pub const UID_OPEN_JOBS_SHARE: &str = "uid_open_jobs_share";
    /// The sender's cgroup holds its share of open jobs (or of processes with open jobs).
    pub const CGROUP_OPEN_JOBS_SHARE: &str = "cgroup_open_jobs_share";
    pub const ALL: [&str; 8] = [
        NO_CREDENTIALS,
        ANCILLARY_DATA,
        UID_RATE_LIMITED,
        CGROUP_RATE_LIMITED,
        UNMATCHED_END,
        TOO_MANY_OPEN_JOBS,
        UID_OPEN_JOBS_SHARE,
        CGROUP_OPEN_JOBS_SHARE,
    ];

    pub fn open_jobs_share(over: super::Over) -> &'static str {
        match over {
            super::Over::Uid => UID_OPEN_JOBS_SHARE,
            super::Over::Cgroup => CGROUP_OPEN_JOBS_SHARE,
        }
    }
}

/// The least of each table one uid may hold, whatever the table's size: a quarter of a small
/// table would not serve one ordinary deployment (see [`crate::model::budget::fair_share`]).
const NAME_SHARE_FLOOR: usize = 16;
const OPEN_JOB_SHARE_FLOOR: usize = 64;
const OPEN_PROCESS_SHARE_FLOOR: usize = 16;
const BLOCK_RUNS_FLOOR: usize = 256;

/// Every label `leakscope_markers_dropped_total{reason}` can take, parser's first.
pub fn all_drop_reasons() -> impl Iterator<Item = &'static str> {
    MarkerError::ALL
        .iter()
        .map(MarkerError::reason)
        .chain(reason::ALL)
}

#[derive(Clone, Debug)]
pub struct TasksConfig {
    /// Task names with series of their own.
    pub max_tasks: usize,
    /// Recent runs per task the verdict looks at.
    pub window_runs: usize,
    /// Recent jobs per task shown in /api/v1/tasks.
    pub recent_jobs: usize,
    pub verdict: VerdictConfig,
    /// The verdict from allocator blocks (`blocks=` on `end`), across runs and processes.
    pub attribution: AttributionConfig,
    /// Nesting depth per (process, thread).
    pub max_depth: usize,
    /// Distinct threads with open jobs per process.
    pub max_keys_per_process: usize,
    /// Processes with open jobs.
    pub max_processes: usize,
    /// Open jobs in all, whatever their processes (each holds two samples).
    pub max_open_jobs: usize,
    /// A name idle this long may give its place to a new one when the cap is reached.
    pub idle_evict_ns: u64,
    /// Per-thread deltas kept per job.
    pub threads_per_job: usize,
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self {
            max_tasks: 200,
            window_runs: 64,
            recent_jobs: 20,
            verdict: VerdictConfig::default(),
            attribution: AttributionConfig::default(),
            max_depth: 16,
            max_keys_per_process: 64,
            max_processes: 4096,
            max_open_jobs: 8192,
            idle_evict_ns: 3600 * 1_000_000_000,
            threads_per_job: 5,
        }
    }
}

/// A process's memory at one marker.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// `CLOCK_BOOTTIME` ns when the agent read it.
    pub at_ns: u64,
    /// Bytes by [`RssKind`]; [`RSS_UNKNOWN`] where neither the kernel nor /proc said.
    pub rss: [i64; RssKind::COUNT],
    pub source: Source,
    /// The kernel's per-thread counters of the process's threads (empty without per-thread
    /// accounting).
    pub threads: Vec<(u32, ThreadStats)>,
    /// The process's pool: its parent when same-named (a prefork child, an RQ work horse),
    /// else the process itself. Runs of one pool explain each other's memory.
    pub pool: u32,
}

impl Snapshot {
    fn kind(&self, k: RssKind) -> i64 {
        self.rss[k as usize]
    }

    /// Resident bytes (file + anon + shmem), unknown kinds as 0.
    pub fn resident(&self) -> u64 {
        [RssKind::File, RssKind::Anon, RssKind::Shmem]
            .into_iter()
            .map(|k| self.kind(k).max(0) as u64)
            .sum()
    }
}

/// Memory the process holds that a job can leave behind: anon + shmem + swap (swapped-out
/// anon is still held). File pages are left out: the kernel drops and re-reads them at will.
/// A kind unknown at either end is left out of both, so that its first report is not
/// mistaken for growth.
pub fn held_pair(begin: &Snapshot, end: &Snapshot) -> (i64, i64) {
    let mut pair = (0, 0);
    for k in [RssKind::Anon, RssKind::Shmem, RssKind::Swap] {
        let (b, e) = (begin.kind(k), end.kind(k));
        if b != RSS_UNKNOWN && e != RSS_UNKNOWN {
            pair.0 += b;
            pair.1 += e;
        }
    }
    pair
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ThreadDelta {
    pub tid: u32,
    pub comm: String,
    /// RSS this thread's own actions added during the job (faulted in minus released).
    pub rss_growth_bytes: i64,
    /// Address space it mapped minus unmapped during the job.
    pub mapped_growth_bytes: i64,
}

/// Per-thread growth between two snapshots: threads that did something, largest first.
pub fn thread_deltas(begin: &Snapshot, end: &Snapshot, keep: usize) -> Vec<ThreadDelta> {
    let mut out: Vec<ThreadDelta> = end
        .threads
        .iter()
        .map(|(tid, e)| {
            // A thread without a begin entry started (or was first counted) inside the job.
            let b = begin.threads.iter().find(|(t, _)| t == tid).map(|(_, b)| b);
            ThreadDelta {
                tid: *tid,
                comm: comm_str(&e.comm),
                rss_growth_bytes: e.rss_growth() - b.map_or(0, ThreadStats::rss_growth),
                mapped_growth_bytes: e.mapped_growth() - b.map_or(0, ThreadStats::mapped_growth),
            }
        })
        .filter(|d| d.rss_growth_bytes != 0 || d.mapped_growth_bytes != 0)
        .collect();
    out.sort_by(|a, b| {
        b.rss_growth_bytes
            .cmp(&a.rss_growth_bytes)
            .then(a.tid.cmp(&b.tid))
    });
    out.truncate(keep);
    out
}

/// One completed job.
#[derive(Clone, Debug, Serialize)]
pub struct JobRecord {
    pub job_id: Option<String>,
    pub pid: u32,
    /// The marker's thread, in the agent's pid namespace, when it could be verified.
    pub tid: Option<u32>,
    #[serde(skip)]
    pub begin_ns: u64,
    pub duration_seconds: f64,
    /// Resident bytes (file + anon + shmem) at the begin and end markers.
    pub rss_begin_bytes: u64,
    pub rss_end_bytes: u64,
    /// Held bytes (anon + shmem + swap) at the end minus at the begin.
    pub retained_bytes: i64,
    pub failed: bool,
    /// Where the numbers came from: `kernel` (exact, at the marker) or `proc`.
    pub source: Source,
    pub threads: Vec<ThreadDelta>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Histogram {
    /// Cumulative counts per [`RETAINED_BUCKETS`] bound.
    pub buckets: [u64; RETAINED_BUCKETS.len()],
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    /// Runs that gave back more than they took count as 0: a histogram's sum must not fall.
    pub fn observe(&mut self, retained: i64) {
        let v = retained.max(0) as f64;
        for (i, bound) in RETAINED_BUCKETS.iter().enumerate() {
            if v <= *bound {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum += v;
    }
}

/// Everything known of one task name.
#[derive(Clone, Debug)]
pub struct TaskStats {
    pub name: String,
    /// Completed runs (an end matched its begin).
    pub runs: u64,
    pub failed: u64,
    pub abandoned: u64,
    pub retained: Histogram,
    /// The verdict's window: the most recent runs, oldest first.
    window: VecDeque<RunSample>,
    pub recent: VecDeque<JobRecord>,
    pub last_seen_ns: u64,
    /// The verdict: today's per-run rule, overruled by the allocator's evidence when there is
    /// enough of it.
    pub verdict: TaskVerdict,
    /// The per-run rule alone (from pages at the markers).
    per_run: TaskVerdict,
    /// From allocator blocks across runs, when the worker sends them.
    allocator: Option<TaskAttribution>,
    /// Whose share of task names this name counts against: the first to run it.
    owner: Option<Principal>,
}

impl TaskStats {
    fn new(name: &str, now_ns: u64, owner: Option<Principal>) -> Self {
        Self {
            owner,
            name: name.to_string(),
            runs: 0,
            failed: 0,
            abandoned: 0,
            retained: Histogram::default(),
            window: VecDeque::new(),
            recent: VecDeque::new(),
            last_seen_ns: now_ns,
            verdict: TaskVerdict::default(),
            per_run: TaskVerdict::default(),
            allocator: None,
        }
    }

    /// Retained bytes of the runs in the verdict's window, oldest first.
    pub fn window_retained(&self) -> Vec<i64> {
        self.window.iter().map(RunSample::retained).collect()
    }

    pub fn median_retained(&self) -> i64 {
        median(&mut self.window_retained())
    }

    /// What one run keeps: the allocator's figure when it decided the verdict, else (no
    /// blocks, too few runs, or a large-buffer leak only pages show) the median of the runs'
    /// page deltas.
    pub fn retained_per_run(&self) -> i64 {
        match &self.allocator {
            Some(a) if a.enough_runs && (a.suspected || !self.verdict.leak_suspected) => {
                a.bytes_per_run as i64
            }
            _ => self.median_retained(),
        }
    }

    /// Combines the per-run rule with the allocator's evidence; logs a change.
    fn decide(&mut self) {
        let before = self.verdict.leak_suspected;
        self.verdict = combine(&self.per_run, self.allocator.as_ref());
        if self.verdict.leak_suspected != before {
            log::warn!(
                "task {}: leak {} ({})",
                self.name,
                if self.verdict.leak_suspected {
                    "suspected"
                } else {
                    "no longer suspected"
                },
                self.verdict.evidence
            );
        }
    }
}

struct OpenJob {
    task: String,
    job_id: Option<String>,
    tid: Option<u32>,
    begin: Snapshot,
    owner: Principal,
}

/// Marker traffic, for `/metrics` and `/api/v1/tasks`.
#[derive(Clone, Debug, Serialize)]
pub struct MarkerCounters {
    /// Markers accepted (parsed, with credentials, paired or opened).
    pub received: u64,
    /// Markers dropped, by reason; every reason present from the start.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Times the socket's queue was found full: senders may have dropped markers meanwhile.
    pub queue_full: u64,
    /// Jobs that never ended (their end was lost, or their process exited).
    pub abandoned: u64,
    /// Markers whose `tid=` did not belong to the sender: attributed to the process.
    pub tid_unverified: u64,
    /// New task names sent to `(overflow)` because their sender's uid or cgroup already held
    /// its share of names, by `uid`/`cgroup`.
    pub names_refused: BTreeMap<&'static str, u64>,
}

impl Default for MarkerCounters {
    fn default() -> Self {
        Self {
            received: 0,
            dropped: all_drop_reasons().map(|r| (r, 0)).collect(),
            queue_full: 0,
            abandoned: 0,
            tid_unverified: 0,
            names_refused: Over::ALL.iter().map(|o| (o.label(), 0)).collect(),
        }
    }
}

/// Where the marker socket is, once it is bound.
#[derive(Clone, Debug, Serialize)]
pub struct SocketStatus {
    pub path: String,
    /// Receive queue, in datagrams.
    pub queue_len: u32,
    pub mode: String,
}

/// All per-job state; lives in [`crate::model::state::AgentState`].
pub struct Tasks {
    pub config: TasksConfig,
    by_name: HashMap<String, TaskStats>,
    overflow: Option<TaskStats>,
    open: HashMap<u32, HashMap<Option<u32>, Vec<OpenJob>>>,
    /// Who holds each process's place in `open`: the sender of its first open job.
    open_owner: HashMap<u32, Principal>,
    /// Jobs in `open`, kept as they come and go.
    open_total: usize,
    names_share: Shares,
    jobs_share: Shares,
    processes_share: Shares,
    pub counters: MarkerCounters,
    pub socket: Option<SocketStatus>,
    /// Recent runs whose end carried `blocks=`, oldest first, per sender uid: at most
    /// `attribution.max_runs` in all, and a quarter of that (at least [`BLOCK_RUNS_FLOOR`]) per
    /// uid, so that one user's marker flood cannot push another's evidence out.
    block_runs: HashMap<u32, VecDeque<BlockRun>>,
    block_runs_total: usize,
    /// Whether runs with blocks came in since the attribution was last fitted.
    attribution_stale: bool,
    /// Processes with open jobs that were gone at the last prune.
    gone_once: std::collections::HashSet<u32>,
}

impl Default for Tasks {
    fn default() -> Self {
        Self::new(TasksConfig::default())
    }
}

/// Kept under the agent's lock beside the core model (`AgentState::features`).
static NO_TASKS: std::sync::LazyLock<Tasks> = std::sync::LazyLock::new(Tasks::default);

impl Tasks {
    /// The agent's per-task state (empty until the feature is configured).
    pub fn of(state: &crate::model::state::AgentState) -> &Tasks {
        state.features.get::<Tasks>().unwrap_or(&NO_TASKS)
    }

    pub fn of_mut(state: &mut crate::model::state::AgentState) -> &mut Tasks {
        state.features.get_mut::<Tasks>()
    }
}

impl Tasks {
    pub fn new(config: TasksConfig) -> Self {
        Self {
            names_share: Shares::new(config.max_tasks, NAME_SHARE_FLOOR),
            jobs_share: Shares::new(config.max_open_jobs, OPEN_JOB_SHARE_FLOOR),
            processes_share: Shares::new(config.max_processes, OPEN_PROCESS_SHARE_FLOOR),
            config,
            by_name: HashMap::new(),
            overflow: None,
            open: HashMap::new(),
            open_owner: HashMap::new(),
            open_total: 0,
            counters: MarkerCounters::default(),
            socket: None,
            block_runs: HashMap::new(),
            block_runs_total: 0,
            attribution_stale: false,
            gone_once: std::collections::HashSet::new(),
        }
    }

    /// The most task names, open jobs and processes with open jobs one uid or cgroup may hold.
    pub fn shares(&self) -> (usize, usize, usize) {
        (
            self.names_share.share(),
            self.jobs_share.share(),
            self.processes_share.share(),
        )
    }

    pub fn drop_marker(&mut self, reason: &'static str) {
        *self.counters.dropped.entry(reason).or_insert(0) += 1;
    }

    /// Every task name, the overflow last.
    pub fn iter(&self) -> impl Iterator<Item = &TaskStats> {
        self.by_name.values().chain(self.overflow.as_ref())
    }

    pub fn get(&self, name: &str) -> Option<&TaskStats> {
        if name == OVERFLOW_TASK {
            return self.overflow.as_ref();
        }
        self.by_name.get(name)
    }

    /// Processes with open jobs.
    pub fn open_pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.open.keys().copied()
    }

    /// Whether `pid` has open jobs under thread `tid` (verified when they began).
    pub fn has_open(&self, pid: u32, tid: u32) -> bool {
        self.open
            .get(&pid)
            .is_some_and(|keys| keys.contains_key(&Some(tid)))
    }

    pub fn open_jobs(&self) -> usize {
        self.open_total
    }

    /// The stats of `name`: a place of its own while there is room and `owner` (who runs it)
    /// holds less than its share of names (an idle name may give up its place), else the
    /// overflow.
    fn stats(&mut self, name: &str, now_ns: u64, owner: Principal) -> &mut TaskStats {
        if !self.by_name.contains_key(name) && !self.make_room(name, now_ns, owner) {
            let o = self
                .overflow
                .get_or_insert_with(|| TaskStats::new(OVERFLOW_TASK, now_ns, None));
            o.last_seen_ns = now_ns;
            return o;
        }
        let s = self.by_name.entry(name.to_string()).or_insert_with(|| {
            // make_room took the share.
            TaskStats::new(name, now_ns, Some(owner))
        });
        s.last_seen_ns = now_ns;
        s
    }

    /// Whether a new name of `owner`'s may have a place of its own; takes its share if so. A
    /// name idle for `idle_evict_ns` gives its place up: any one when the table is full, one
    /// of `owner`'s own when `owner` is at its share.
    fn make_room(&mut self, name: &str, now_ns: u64, owner: Principal) -> bool {
        let at_share = self.names_share.check(owner).is_err();
        if at_share || self.by_name.len() >= self.config.max_tasks {
            let idle = self
                .by_name
                .values()
                .filter(|t| now_ns.saturating_sub(t.last_seen_ns) >= self.config.idle_evict_ns)
                .filter(|t| !at_share || t.owner == Some(owner))
                .min_by_key(|t| t.last_seen_ns)
                .map(|t| t.name.clone());
            if let Some(old) = idle {
                log::info!("task {old:?} idle: its place goes to {name:?}");
                if let Some(gone) = self.by_name.remove(&old)
                    && let Some(o) = gone.owner
                {
                    self.names_share.give_back(o);
                }
            }
        }
        if let Err(over) = self.names_share.check(owner) {
            *self.counters.names_refused.entry(over.label()).or_insert(0) += 1;
            return false;
        }
        self.by_name.len() < self.config.max_tasks && self.names_share.take(owner).is_ok()
    }

    /// A job leaves the open table: its owner's share of open jobs comes back.
    fn close(&mut self, job: &OpenJob) {
        self.open_total -= 1;
        self.jobs_share.give_back(job.owner);
    }

    /// A process has no open job left: its place in the table comes back to its owner.
    fn forget_process(&mut self, pid: u32) {
        self.open.remove(&pid);
        if let Some(owner) = self.open_owner.remove(&pid) {
            self.processes_share.give_back(owner);
        }
    }

    fn abandon(&mut self, job: OpenJob, now_ns: u64) {
        self.counters.abandoned += 1;
        self.stats(&job.task, now_ns, job.owner).abandoned += 1;
    }

    /// Applies one parsed marker from `pid` (kernel-given) sent by `who`, with its thread
    /// verified by the caller (`None`: the whole process). `snap` was read when the marker
    /// arrived.
    pub fn on_marker(
        &mut self,
        pid: u32,
        who: Principal,
        m: &Marker<'_>,
        tid: Option<u32>,
        snap: Snapshot,
    ) {
        match m.phase {
            Phase::Begin => self.on_begin(pid, who, m, tid, snap),
            Phase::End => self.on_end(pid, m, tid, snap),
        }
    }

    fn on_begin(
        &mut self,
        pid: u32,
        who: Principal,
        m: &Marker<'_>,
        tid: Option<u32>,
        snap: Snapshot,
    ) {
        let now = snap.at_ns;
        let new_process = !self.open.contains_key(&pid);
        if self.open_total >= self.config.max_open_jobs
            || (new_process && self.open.len() >= self.config.max_processes)
        {
            self.drop_marker(reason::TOO_MANY_OPEN_JOBS);
            return;
        }
        if let Some(keys) = self.open.get(&pid)
            && !keys.contains_key(&tid)
            && keys.len() >= self.config.max_keys_per_process
        {
            self.drop_marker(reason::TOO_MANY_OPEN_JOBS);
            return;
        }
        let share = self.jobs_share.check(who).and_then(|()| {
            if new_process {
                self.processes_share.take(who)
            } else {
                Ok(())
            }
        });
        if let Err(over) = share {
            self.drop_marker(reason::open_jobs_share(over));
            return;
        }
        if new_process {
            self.open_owner.insert(pid, who);
        }
        // Checked above; taken before any job is abandoned, so the share never runs over.
        let _ = self.jobs_share.take(who);
        self.open_total += 1;
        let keys = self.open.entry(pid).or_default();
        let stack = keys.entry(tid).or_default();
        let mut abandoned = Vec::new();
        // The same job (same task and job id) begun again: its end was lost. It and whatever
        // it opened are over. Without job ids a repeat may be recursion, so it nests.
        if let Some(i) = stack
            .iter()
            .position(|j| j.job_id.is_some() && j.job_id.as_deref() == m.job_id && j.task == m.task)
        {
            abandoned.extend(stack.drain(i..));
        }
        // Too deep: the oldest open job is the likeliest to have lost its end.
        if stack.len() >= self.config.max_depth {
            abandoned.push(stack.remove(0));
        }
        stack.push(OpenJob {
            task: m.task.to_string(),
            job_id: m.job_id.map(str::to_string),
            tid,
            begin: snap,
            owner: who,
        });
        self.counters.received += 1;
        for job in abandoned {
            self.close(&job);
            self.abandon(job, now);
        }
    }

    fn on_end(&mut self, pid: u32, m: &Marker<'_>, tid: Option<u32>, snap: Snapshot) {
        let now = snap.at_ns;
        let Some(stack) = self.open.get_mut(&pid).and_then(|k| k.get_mut(&tid)) else {
            self.drop_marker(reason::UNMATCHED_END);
            return;
        };
        let matches = |j: &OpenJob| {
            j.task == m.task
                && match (j.job_id.as_deref(), m.job_id) {
                    (Some(a), Some(b)) => a == b,
                    _ => true,
                }
        };
        let Some(i) = stack.iter().rposition(matches) else {
            self.drop_marker(reason::UNMATCHED_END);
            return;
        };
        let mut above: Vec<OpenJob> = stack.drain(i..).collect();
        let job = above.remove(0);
        if stack.is_empty()
            && let Some(keys) = self.open.get_mut(&pid)
        {
            keys.remove(&tid);
            if keys.is_empty() {
                self.forget_process(pid);
            }
        }
        self.counters.received += 1;
        self.close(&job);
        for j in above {
            self.close(&j);
            self.abandon(j, now);
        }
        self.complete(pid, job, m, snap);
    }

    fn complete(&mut self, pid: u32, job: OpenJob, m: &Marker<'_>, end: Snapshot) {
        let failed = m.failed;
        let (begin_held, end_held) = held_pair(&job.begin, &end);
        let source = match (job.begin.source, end.source) {
            (Source::Kernel, Source::Kernel) => Source::Kernel,
            (Source::Unknown, _) | (_, Source::Unknown) => Source::Unknown,
            _ => Source::Proc,
        };
        let record = JobRecord {
            job_id: job.job_id,
            pid,
            tid: job.tid,
            begin_ns: job.begin.at_ns,
            duration_seconds: end.at_ns.saturating_sub(job.begin.at_ns) as f64 / 1e9,
            rss_begin_bytes: job.begin.resident(),
            rss_end_bytes: end.resident(),
            retained_bytes: end_held - begin_held,
            failed,
            source,
            threads: thread_deltas(&job.begin, &end, self.config.threads_per_job),
        };
        let (window_runs, recent_jobs) = (self.config.window_runs, self.config.recent_jobs);
        let verdict_cfg = self.config.verdict.clone();
        let s = self.stats(&job.task, end.at_ns, job.owner);
        s.runs += 1;
        s.failed += u64::from(failed);
        s.retained.observe(record.retained_bytes);
        s.window.push_back(RunSample {
            pid,
            begin_held,
            end_held,
        });
        while s.window.len() > window_runs {
            s.window.pop_front();
        }
        s.recent.push_back(record);
        while s.recent.len() > recent_jobs {
            s.recent.pop_front();
        }
        s.per_run = assess(s.window.make_contiguous(), &verdict_cfg);
        // The allocator fit spans every task's recent runs: it is redone each interval,
        // outside the agent's lock (see `listener::prune`); meanwhile this run's pages count.
        s.decide();
        if let Some(blocks) = m.blocks {
            let run = BlockRun {
                pid,
                pool: end.pool,
                task: s.name.clone(),
                begin_ns: job.begin.at_ns,
                end_ns: end.at_ns,
                blocks,
                begin_held,
                end_held,
            };
            self.keep_block_run(job.owner.uid, run);
            self.attribution_stale = true;
        }
    }

    /// Keeps a run with block evidence within the uid's share and the total.
    fn keep_block_run(&mut self, uid: u32, run: BlockRun) {
        let max = self.config.attribution.max_runs;
        let share = (max / 4).max(BLOCK_RUNS_FLOOR).min(max);
        let mine = self.block_runs.entry(uid).or_default();
        mine.push_back(run);
        self.block_runs_total += 1;
        if mine.len() > share {
            mine.pop_front();
            self.block_runs_total -= 1;
        }
        while self.block_runs_total > max {
            // The uid holding the most gives up its oldest.
            let Some(most) = self
                .block_runs
                .iter()
                .max_by_key(|(_, runs)| runs.len())
                .map(|(uid, _)| *uid)
            else {
                break;
            };
            let runs = self.block_runs.get_mut(&most).expect("found above");
            runs.pop_front();
            self.block_runs_total -= 1;
            if runs.is_empty() {
                self.block_runs.remove(&most);
            }
        }
    }

    /// The recent runs with block evidence, when runs came in since the last fit, and how to
    /// fit them: to be fitted without holding the agent's lock.
    pub fn attribution_input(&mut self) -> Option<(Vec<BlockRun>, AttributionConfig)> {
        if !std::mem::take(&mut self.attribution_stale) {
            return None;
        }
        let runs = self.block_runs.values().flatten().cloned().collect();
        Some((runs, self.config.attribution.clone()))
    }

    /// Takes a fit of [`Self::attribution_input`]; every task's verdict is decided again.
    pub fn apply_attribution(&mut self, mut fitted: HashMap<String, TaskAttribution>) {
        for s in self.by_name.values_mut().chain(self.overflow.as_mut()) {
            s.allocator = fitted.remove(&s.name);
            s.decide();
        }
    }

    /// Fits and applies at once (under the caller's lock).
    #[cfg(test)]
    pub fn attribute(&mut self) {
        if let Some((runs, cfg)) = self.attribution_input() {
            self.apply_attribution(super::attribution::attribute(&runs, &cfg));
        }
    }

    /// Abandons the open jobs of processes found gone twice in a row: a process that sends
    /// its last `end` and exits at once (an RQ work horse) is gone before the listener has
    /// read that `end` from the socket's queue; one interval later it has.
    pub fn prune_gone(&mut self, alive: impl Fn(u32) -> bool, now_ns: u64) {
        let gone: Vec<u32> = self.open.keys().filter(|p| !alive(**p)).copied().collect();
        let (twice, once): (Vec<u32>, Vec<u32>) =
            gone.into_iter().partition(|p| self.gone_once.contains(p));
        self.gone_once = once.into_iter().collect();
        if !twice.is_empty() {
            self.prune(|p| !twice.contains(&p), now_ns);
        }
    }

    /// Abandons the open jobs of processes that are gone.
    pub fn prune(&mut self, alive: impl Fn(u32) -> bool, now_ns: u64) {
        let gone: Vec<u32> = self.open.keys().filter(|p| !alive(**p)).copied().collect();
        for pid in gone {
            let Some(keys) = self.open.remove(&pid) else {
                continue;
            };
            self.forget_process(pid);
            for job in keys.into_values().flatten() {
                self.close(&job);
                self.abandon(job, now_ns);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::protocol::parse;

    const MIB: i64 = 1 << 20;

    fn snap(at_ns: u64, anon: i64) -> Snapshot {
        Snapshot {
            at_ns,
            rss: [10 * MIB, anon, 0, 0],
            source: Source::Kernel,
            threads: Vec::new(),
            pool: 0,
        }
    }

    const USER: Principal = Principal {
        uid: 1000,
        cgroup: None,
    };

    fn feed(t: &mut Tasks, pid: u32, text: &str, tid: Option<u32>, s: Snapshot) {
        feed_as(t, USER, pid, text, tid, s);
    }

    fn feed_as(t: &mut Tasks, who: Principal, pid: u32, text: &str, tid: Option<u32>, s: Snapshot) {
        let m = parse(text.as_bytes()).unwrap();
        t.on_marker(pid, who, &m, tid, s);
    }

    fn dropped(t: &Tasks, reason: &str) -> u64 {
        t.counters.dropped[reason]
    }

    #[test]
    fn a_job_records_what_it_retained() {
        let mut t = Tasks::default();
        feed(
            &mut t,
            7,
            "LS1 begin app.leak job=1",
            Some(7),
            snap(1_000, 50 * MIB),
        );
        assert_eq!(t.open_jobs(), 1);
        feed(
            &mut t,
            7,
            "LS1 end app.leak job=1 status=error",
            Some(7),
            snap(2_000_001_000, 54 * MIB),
        );
        assert_eq!(t.open_jobs(), 0);
        let s = t.get("app.leak").unwrap();
        assert_eq!((s.runs, s.failed), (1, 1));
        let job = &s.recent[0];
        assert_eq!(job.retained_bytes, 4 * MIB);
        assert_eq!(job.rss_begin_bytes, 60 * MIB as u64);
        assert_eq!(job.rss_end_bytes, 64 * MIB as u64);
        assert!((job.duration_seconds - 2.0).abs() < 1e-9);
        assert_eq!(job.job_id.as_deref(), Some("1"));
        assert_eq!(s.retained.count, 1);
        assert_eq!(s.retained.buckets[3], 0, "above 1 MiB");
        assert_eq!(s.retained.buckets[4], 1, "at most 4 MiB");
        assert_eq!(s.retained.buckets[8], 1, "cumulative");
        assert_eq!(t.counters.received, 2);
    }

    #[test]
    fn unknown_kinds_are_left_out_of_retention() {
        let mut begin = snap(0, 10 * MIB);
        begin.rss[RssKind::Swap as usize] = RSS_UNKNOWN;
        let mut end = snap(1, 12 * MIB);
        end.rss[RssKind::Swap as usize] = 300 * MIB;
        assert_eq!(held_pair(&begin, &end), (10 * MIB, 12 * MIB));
    }

    #[test]
    fn nested_jobs_pair_innermost_first_and_abandon_the_unended() {
        let mut t = Tasks::default();
        feed(&mut t, 1, "LS1 begin outer", None, snap(0, 0));
        feed(&mut t, 1, "LS1 begin inner", None, snap(1, 0));
        feed(&mut t, 1, "LS1 begin lost", None, snap(2, 0));
        // Ends `inner`: `lost` above it is abandoned.
        feed(&mut t, 1, "LS1 end inner", None, snap(3, MIB));
        assert_eq!(t.get("inner").unwrap().runs, 1);
        assert_eq!(t.get("lost").unwrap().abandoned, 1);
        feed(&mut t, 1, "LS1 end outer", None, snap(4, MIB));
        assert_eq!(t.get("outer").unwrap().runs, 1);
        assert_eq!(t.open_jobs(), 0);
        assert_eq!(t.counters.abandoned, 1);
    }

    #[test]
    fn ends_match_job_ids_and_keys() {
        let mut t = Tasks::default();
        feed(&mut t, 1, "LS1 begin a job=x", Some(11), snap(0, 0));
        // Another thread's end, or another job id: no match.
        feed(&mut t, 1, "LS1 end a job=x", Some(12), snap(1, 0));
        feed(&mut t, 1, "LS1 end a job=y", Some(11), snap(1, 0));
        feed(&mut t, 2, "LS1 end a job=x", Some(11), snap(1, 0));
        assert_eq!(dropped(&t, reason::UNMATCHED_END), 3);
        // An end without a job id closes it.
        feed(&mut t, 1, "LS1 end a", Some(11), snap(2, 0));
        assert_eq!(t.get("a").unwrap().runs, 1);
    }

    #[test]
    fn a_repeated_begin_abandons_the_earlier_job() {
        let mut t = Tasks::default();
        feed(&mut t, 1, "LS1 begin a job=1", None, snap(0, 0));
        feed(&mut t, 1, "LS1 begin a job=1", None, snap(1, 5 * MIB));
        feed(&mut t, 1, "LS1 end a job=1", None, snap(2, 6 * MIB));
        let s = t.get("a").unwrap();
        assert_eq!((s.runs, s.abandoned), (1, 1));
        assert_eq!(
            s.recent[0].retained_bytes, MIB,
            "measured from the second begin"
        );
    }

    #[test]
    fn open_jobs_are_bounded() {
        let mut t = Tasks::new(TasksConfig {
            max_depth: 3,
            max_keys_per_process: 2,
            max_processes: 2,
            ..TasksConfig::default()
        });
        for i in 0..5 {
            feed(&mut t, 1, &format!("LS1 begin t{i}"), None, snap(i, 0));
        }
        assert_eq!(t.open_jobs(), 3, "depth capped");
        assert_eq!(t.counters.abandoned, 2, "the oldest went");
        assert_eq!(t.get("t0").unwrap().abandoned, 1);
        feed(&mut t, 1, "LS1 begin a", Some(5), snap(0, 0));
        feed(&mut t, 1, "LS1 begin a", Some(6), snap(0, 0));
        assert_eq!(dropped(&t, reason::TOO_MANY_OPEN_JOBS), 1, "keys capped");
        feed(&mut t, 2, "LS1 begin a", None, snap(0, 0));
        feed(&mut t, 3, "LS1 begin a", None, snap(0, 0));
        assert_eq!(
            dropped(&t, reason::TOO_MANY_OPEN_JOBS),
            2,
            "processes capped"
        );
        assert_eq!(t.open_jobs(), 5);
        t.config.max_open_jobs = 5;
        feed(&mut t, 2, "LS1 begin b", None, snap(0, 0));
        assert_eq!(dropped(&t, reason::TOO_MANY_OPEN_JOBS), 3, "total capped");
        // Ends and exits give the room back.
        feed(&mut t, 2, "LS1 end a", None, snap(0, 0));
        t.prune(|pid| pid != 1, 0);
        assert_eq!(t.open_jobs(), 0);
    }

    #[test]
    fn names_beyond_the_cap_go_to_the_overflow_unless_one_is_idle() {
        let mut t = Tasks::new(TasksConfig {
            max_tasks: 2,
            idle_evict_ns: 1_000,
            ..TasksConfig::default()
        });
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            feed(
                &mut t,
                1,
                &format!("LS1 begin {name}"),
                None,
                snap(i as u64, 0),
            );
            feed(
                &mut t,
                1,
                &format!("LS1 end {name}"),
                None,
                snap(i as u64, 0),
            );
        }
        assert!(t.get("c").is_none());
        assert_eq!(t.get(OVERFLOW_TASK).unwrap().runs, 1);
        assert_eq!(t.iter().count(), 3);
        // Much later, `a` and `b` are idle: `d` takes the oldest one's place.
        feed(&mut t, 1, "LS1 begin d", None, snap(10_000, 0));
        feed(&mut t, 1, "LS1 end d", None, snap(10_000, 0));
        assert!(t.get("d").is_some());
        assert!(t.get("a").is_none());
        assert!(t.get("b").is_some());
    }

    #[test]
    fn one_uid_gets_a_share_of_task_names_and_root_keeps_its_own() {
        let mut t = Tasks::new(TasksConfig {
            max_tasks: 40,
            ..TasksConfig::default()
        });
        let share = t.shares().0;
        assert_eq!(share, 16, "a quarter of 40 is under the floor");
        let squatter = Principal {
            uid: 65534,
            cgroup: Some(7),
        };
        // Many processes of one uid, each with its own names.
        for i in 0..60u32 {
            let pid = 100 + i % 8;
            feed_as(
                &mut t,
                squatter,
                pid,
                &format!("LS1 begin sq.{i}"),
                None,
                snap(0, 0),
            );
            feed_as(
                &mut t,
                squatter,
                pid,
                &format!("LS1 end sq.{i}"),
                None,
                snap(1, 0),
            );
        }
        let own = (0..60)
            .filter(|i| t.get(&format!("sq.{i}")).is_some())
            .count();
        assert_eq!(own, share);
        assert_eq!(t.get(OVERFLOW_TASK).unwrap().runs, 60 - share as u64);
        assert_eq!(t.counters.names_refused["uid"], 60 - share as u64);
        // More uids of the same cgroup (a container with its own user namespace) are held to
        // the cgroup's share, twice a uid's.
        for uid in 100_000..100_020 {
            let sibling = Principal {
                uid,
                cgroup: Some(7),
            };
            feed_as(
                &mut t,
                sibling,
                200,
                &format!("LS1 begin o.{uid}"),
                None,
                snap(2, 0),
            );
            feed_as(
                &mut t,
                sibling,
                200,
                &format!("LS1 end o.{uid}"),
                None,
                snap(3, 0),
            );
        }
        assert_eq!(t.counters.names_refused["cgroup"], 20 - share as u64);
        // Root's task has a series of its own.
        let root = Principal::uid(0);
        feed_as(
            &mut t,
            root,
            1,
            "LS1 begin app.send_email",
            None,
            snap(2, 0),
        );
        feed_as(&mut t, root, 1, "LS1 end app.send_email", None, snap(3, 0));
        assert_eq!(t.get("app.send_email").unwrap().runs, 1);
        // A name already there is shared, whoever owns it: runs are never refused.
        feed_as(
            &mut t,
            squatter,
            100,
            "LS1 begin app.send_email",
            None,
            snap(4, 0),
        );
        feed_as(
            &mut t,
            squatter,
            100,
            "LS1 end app.send_email",
            None,
            snap(5, 0),
        );
        assert_eq!(t.get("app.send_email").unwrap().runs, 2);
    }

    #[test]
    fn an_idle_name_gives_its_share_back() {
        let mut t = Tasks::new(TasksConfig {
            max_tasks: 16,
            idle_evict_ns: 1_000,
            ..TasksConfig::default()
        });
        let share = t.shares().0;
        assert_eq!(share, 16);
        for i in 0..share {
            feed(&mut t, 1, &format!("LS1 begin n{i}"), None, snap(0, 0));
            feed(&mut t, 1, &format!("LS1 end n{i}"), None, snap(0, 0));
        }
        feed(&mut t, 1, "LS1 begin late", None, snap(10, 0));
        feed(&mut t, 1, "LS1 end late", None, snap(10, 0));
        assert!(t.get("late").is_none(), "at its share");
        // Much later, the idle names give their places and the share back.
        feed(&mut t, 1, "LS1 begin later", None, snap(10_000, 0));
        feed(&mut t, 1, "LS1 end later", None, snap(10_000, 0));
        assert!(t.get("later").is_some());
        assert_eq!(
            t.names_share.held(crate::model::budget::Owner::Uid(1000)),
            share
        );
    }

    #[test]
    fn one_uid_gets_a_share_of_open_jobs_and_processes() {
        let mut t = Tasks::new(TasksConfig {
            max_open_jobs: 400,
            max_processes: 64,
            ..TasksConfig::default()
        });
        let (_, jobs, processes) = t.shares();
        assert_eq!((jobs, processes), (100, 16));
        let squatter = Principal::uid(65534);
        // Jobs on many threads of many processes: each process is under its own bounds.
        for i in 0..400u32 {
            let (pid, tid) = (1000 + i % 8, i / 8);
            feed_as(&mut t, squatter, pid, "LS1 begin j", Some(tid), snap(0, 0));
        }
        assert_eq!(t.open_jobs(), jobs);
        assert_eq!(dropped(&t, reason::UID_OPEN_JOBS_SHARE), 300);
        // Processes with open jobs: another uid's 16 fit its share, the next are refused.
        for pid in 2000..2020 {
            feed_as(
                &mut t,
                Principal::uid(7),
                pid,
                "LS1 begin p",
                None,
                snap(0, 0),
            );
        }
        assert_eq!(dropped(&t, reason::UID_OPEN_JOBS_SHARE), 304);
        // Root still opens (and closes) its jobs.
        let root = Principal::uid(0);
        feed_as(&mut t, root, 1, "LS1 begin r", None, snap(0, 0));
        feed_as(&mut t, root, 1, "LS1 end r", None, snap(1, MIB));
        assert_eq!(t.get("r").unwrap().runs, 1);
        // Jobs that end or whose processes exit give the share back.
        t.prune(|pid| !(1000..1008).contains(&pid), 5);
        assert_eq!(t.open_jobs(), processes);
        for pid in 3000..3004 {
            feed_as(&mut t, squatter, pid, "LS1 begin again", None, snap(0, 0));
        }
        assert_eq!(dropped(&t, reason::UID_OPEN_JOBS_SHARE), 304);
        assert_eq!(
            t.jobs_share.held(crate::model::budget::Owner::Uid(65534)),
            4
        );
    }

    #[test]
    fn jobs_of_exited_processes_are_abandoned() {
        let mut t = Tasks::default();
        feed(&mut t, 1, "LS1 begin a", None, snap(0, 0));
        feed(&mut t, 2, "LS1 begin b", Some(2), snap(0, 0));
        t.prune(|pid| pid == 2, 10);
        assert_eq!(t.open_jobs(), 1);
        assert_eq!(t.get("a").unwrap().abandoned, 1);
    }

    #[test]
    fn an_end_read_after_its_process_exited_still_completes_the_job() {
        let mut t = Tasks::default();
        feed(&mut t, 5, "LS1 begin horse", None, snap(0, 0));
        feed(&mut t, 6, "LS1 begin lost", None, snap(0, 0));
        // Both exited; 5's end is still in the socket's queue at the first prune.
        t.prune_gone(|_| false, 10);
        assert_eq!(t.open_jobs(), 2);
        feed(&mut t, 5, "LS1 end horse", None, snap(11, MIB));
        t.prune_gone(|_| false, 20);
        assert_eq!(t.open_jobs(), 0);
        assert_eq!(t.get("horse").unwrap().runs, 1);
        assert_eq!(t.get("lost").unwrap().abandoned, 1);
        assert_eq!(dropped(&t, reason::UNMATCHED_END), 0);
    }

    #[test]
    fn the_verdict_follows_the_runs() {
        let mut t = Tasks::default();
        let mut anon = 100 * MIB;
        for i in 0..12 {
            let at = i * 10;
            feed(&mut t, 1, "LS1 begin leaky", None, snap(at, anon));
            anon += 4 * MIB;
            feed(&mut t, 1, "LS1 end leaky", None, snap(at + 1, anon));
            feed(&mut t, 1, "LS1 begin clean", None, snap(at + 2, anon));
            feed(&mut t, 1, "LS1 end clean", None, snap(at + 3, anon));
        }
        let leaky = t.get("leaky").unwrap();
        assert!(leaky.verdict.leak_suspected, "{:?}", leaky.verdict);
        assert_eq!(leaky.median_retained(), 4 * MIB);
        assert!(!t.get("clean").unwrap().verdict.leak_suspected);
    }

    #[test]
    fn allocator_blocks_name_the_type_that_keeps_objects_where_pages_blame_another() {
        // The pages move as the issue saw on Celery: the leaking type's objects fill room the
        // clean type freed, so its runs look flat, and each clean run grows the heap 1 MiB.
        let mut t = Tasks::default();
        let mut anon = 100 * MIB;
        let ms = 1_000_000;
        for i in 0..40u64 {
            let at = i * 10 * ms;
            feed(&mut t, 1, "LS1 begin leaky", None, snap(at, anon));
            let end = format!("LS1 end leaky blocks={}", 3500 + i % 7);
            feed(&mut t, 1, &end, None, snap(at + ms, anon));
            feed(&mut t, 1, "LS1 begin clean", None, snap(at + 2 * ms, anon));
            anon += MIB;
            let end = format!("LS1 end clean blocks={}", 20 + i % 5);
            feed(&mut t, 1, &end, None, snap(at + 3 * ms, anon));
        }
        // The last runs may wait for the next refit; the agent's interval makes it.
        t.attribute();
        let leaky = t.get("leaky").unwrap();
        let clean = t.get("clean").unwrap();
        assert!(clean.per_run.leak_suspected, "{:?}", clean.per_run);
        assert!(!leaky.per_run.leak_suspected, "{:?}", leaky.per_run);
        assert!(leaky.verdict.leak_suspected, "{:?}", leaky.verdict);
        assert!(!clean.verdict.leak_suspected, "{:?}", clean.verdict);
        assert!(
            clean.verdict.evidence.contains("another type of its pools"),
            "{}",
            clean.verdict.evidence
        );
        // The floor rose 40 MiB over 40 leaky runs: 1 MiB a run is what pages say it keeps.
        assert_eq!(leaky.retained_per_run(), MIB);
        assert_eq!(clean.retained_per_run(), 0);
    }

    #[test]
    fn one_uid_cannot_push_anothers_block_evidence_out() {
        let mut t = Tasks::default();
        let max = t.config.attribution.max_runs;
        let victim = Principal::uid(1000);
        let flood = Principal::uid(666);
        for i in 0..40u64 {
            feed_as(&mut t, victim, 1, "LS1 begin mine", None, snap(i, 0));
            feed_as(
                &mut t,
                victim,
                1,
                "LS1 end mine blocks=4000",
                None,
                snap(i, 0),
            );
        }
        for i in 0..(max as u64 * 2) {
            feed_as(&mut t, flood, 2, "LS1 begin noise", None, snap(i, 0));
            feed_as(&mut t, flood, 2, "LS1 end noise blocks=1", None, snap(i, 0));
        }
        assert_eq!(t.block_runs[&1000].len(), 40);
        assert_eq!(t.block_runs[&666].len(), max / 4);
        assert_eq!(t.block_runs_total, 40 + max / 4);
        t.attribute();
        assert!(
            t.get("mine")
                .unwrap()
                .verdict
                .allocator
                .as_ref()
                .unwrap()
                .enough_runs
        );
    }

    #[test]
    fn a_large_buffer_leak_without_blocks_to_show_stays_named_by_pages() {
        // 4 MiB buffers, one block each: the allocator's count cannot tell, the pages can.
        let mut t = Tasks::default();
        let mut anon = 100 * MIB;
        let ms = 1_000_000;
        for i in 0..40u64 {
            let at = i * 10 * ms;
            feed(&mut t, 1, "LS1 begin big", None, snap(at, anon));
            anon += 4 * MIB;
            feed(
                &mut t,
                1,
                "LS1 end big blocks=25",
                None,
                snap(at + ms, anon),
            );
            feed(&mut t, 1, "LS1 begin clean", None, snap(at + 2 * ms, anon));
            feed(
                &mut t,
                1,
                "LS1 end clean blocks=24",
                None,
                snap(at + 3 * ms, anon),
            );
        }
        t.attribute();
        let big = t.get("big").unwrap();
        assert!(big.verdict.leak_suspected, "{:?}", big.verdict);
        assert!(
            big.verdict.evidence.starts_with("pages:"),
            "{}",
            big.verdict.evidence
        );
        assert!(!t.get("clean").unwrap().verdict.leak_suspected);
    }

    #[test]
    fn thread_deltas_show_who_grew() {
        let comm = *b"worker\0\0\0\0\0\0\0\0\0\0";
        let mut a = ThreadStats::new(1, comm);
        a.rss_added = MIB as u64;
        let idle = a;
        let mut begin = snap(0, 0);
        begin.threads = vec![(1, a), (3, idle)];
        let mut end = snap(1, 0);
        let mut a2 = a;
        a2.rss_added = 5 * MIB as u64;
        a2.mapped = 8 * MIB as u64;
        let mut b = ThreadStats::new(1, comm);
        b.rss_added = MIB as u64;
        end.threads = vec![(1, a2), (2, b), (3, idle)];
        let d = thread_deltas(&begin, &end, 5);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(d[0].tid, 1);
        assert_eq!(d[0].rss_growth_bytes, 4 * MIB);
        assert_eq!(d[0].mapped_growth_bytes, 8 * MIB);
        assert_eq!(d[1].tid, 2);
    }

    #[test]
    fn every_drop_reason_is_registered_at_zero() {
        let t = Tasks::default();
        assert_eq!(
            t.counters.dropped.len(),
            MarkerError::ALL.len() + reason::ALL.len()
        );
        assert!(t.counters.dropped.values().all(|v| *v == 0));
    }
}
