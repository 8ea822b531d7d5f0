//! Jobs: begin/end markers paired per (process, thread), measured, and aggregated per task
//! name (runs, retained bytes, verdict). Pure state; the listener feeds it.
//!
//! Pairing follows `integrations/PROTOCOL.md`: begins stack per key (pid, tid or none); an end
//! closes the innermost open job of its key with the same task (and job id, when both carry
//! one), abandoning jobs above it; a repeated begin (same task and job id) abandons the earlier
//! one; jobs of processes that exit are abandoned.

use std::collections::{BTreeMap, HashMap, VecDeque};

use monitor_common::{RSS_UNKNOWN, RssKind, ThreadStats};
use serde::Serialize;

use super::{
    protocol::{Marker, MarkerError, Phase},
    verdict::{RunSample, TaskVerdict, VerdictConfig, assess, median},
};
use crate::table::{Source, comm_str};

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
    /// Its process sent more than its share (`MARKERS_PER_SECOND`).
    pub const RATE_LIMITED: &str = "rate_limited";
    /// An `end` that matches no open job (its `begin` was lost or never sent).
    pub const UNMATCHED_END: &str = "unmatched_end";
    /// The agent's bound on open jobs (per process, or processes with open jobs) was reached.
    pub const TOO_MANY_OPEN_JOBS: &str = "too_many_open_jobs";
    pub const ALL: [&str; 5] = [
        NO_CREDENTIALS,
        ANCILLARY_DATA,
        RATE_LIMITED,
        UNMATCHED_END,
        TOO_MANY_OPEN_JOBS,
    ];
}

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
    pub verdict: TaskVerdict,
}

impl TaskStats {
    fn new(name: &str, now_ns: u64) -> Self {
        Self {
            name: name.to_string(),
            runs: 0,
            failed: 0,
            abandoned: 0,
            retained: Histogram::default(),
            window: VecDeque::new(),
            recent: VecDeque::new(),
            last_seen_ns: now_ns,
            verdict: TaskVerdict::default(),
        }
    }

    /// Retained bytes of the runs in the verdict's window, oldest first.
    pub fn window_retained(&self) -> Vec<i64> {
        self.window.iter().map(RunSample::retained).collect()
    }

    pub fn median_retained(&self) -> i64 {
        median(&mut self.window_retained())
    }
}

struct OpenJob {
    task: String,
    job_id: Option<String>,
    tid: Option<u32>,
    begin: Snapshot,
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
}

impl Default for MarkerCounters {
    fn default() -> Self {
        Self {
            received: 0,
            dropped: all_drop_reasons().map(|r| (r, 0)).collect(),
            queue_full: 0,
            abandoned: 0,
            tid_unverified: 0,
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

/// All per-job state; lives in [`crate::state::AgentState`].
#[derive(Default)]
pub struct Tasks {
    pub config: TasksConfig,
    by_name: HashMap<String, TaskStats>,
    overflow: Option<TaskStats>,
    open: HashMap<u32, HashMap<Option<u32>, Vec<OpenJob>>>,
    /// Jobs in `open`, kept as they come and go.
    open_total: usize,
    pub counters: MarkerCounters,
    pub socket: Option<SocketStatus>,
}

impl Tasks {
    pub fn new(config: TasksConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
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

    pub fn open_jobs(&self) -> usize {
        self.open_total
    }

    /// The stats of `name`: a place of its own while there is room (an idle name may give
    /// up its place), else the overflow.
    fn stats(&mut self, name: &str, now_ns: u64) -> &mut TaskStats {
        if !self.by_name.contains_key(name) && self.by_name.len() >= self.config.max_tasks {
            let idle = self
                .by_name
                .values()
                .filter(|t| now_ns.saturating_sub(t.last_seen_ns) >= self.config.idle_evict_ns)
                .min_by_key(|t| t.last_seen_ns)
                .map(|t| t.name.clone());
            match idle {
                Some(old) => {
                    log::info!("task {old:?} idle: its place goes to {name:?}");
                    self.by_name.remove(&old);
                }
                None => {
                    let o = self
                        .overflow
                        .get_or_insert_with(|| TaskStats::new(OVERFLOW_TASK, now_ns));
                    o.last_seen_ns = now_ns;
                    return o;
                }
            }
        }
        let s = self
            .by_name
            .entry(name.to_string())
            .or_insert_with(|| TaskStats::new(name, now_ns));
        s.last_seen_ns = now_ns;
        s
    }

    fn abandon(&mut self, job: OpenJob, now_ns: u64) {
        self.counters.abandoned += 1;
        self.stats(&job.task, now_ns).abandoned += 1;
    }

    /// Applies one parsed marker from `pid` (kernel-given), with its thread verified by the
    /// caller (`None`: the whole process). `snap` was read when the marker arrived.
    pub fn on_marker(&mut self, pid: u32, m: &Marker<'_>, tid: Option<u32>, snap: Snapshot) {
        match m.phase {
            Phase::Begin => self.on_begin(pid, m, tid, snap),
            Phase::End => self.on_end(pid, m, tid, snap),
        }
    }

    fn on_begin(&mut self, pid: u32, m: &Marker<'_>, tid: Option<u32>, snap: Snapshot) {
        let now = snap.at_ns;
        if self.open_total >= self.config.max_open_jobs
            || (!self.open.contains_key(&pid) && self.open.len() >= self.config.max_processes)
        {
            self.drop_marker(reason::TOO_MANY_OPEN_JOBS);
            return;
        }
        let keys = self.open.entry(pid).or_default();
        if !keys.contains_key(&tid) && keys.len() >= self.config.max_keys_per_process {
            self.drop_marker(reason::TOO_MANY_OPEN_JOBS);
            return;
        }
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
        self.open_total = self.open_total + 1 - abandoned.len();
        stack.push(OpenJob {
            task: m.task.to_string(),
            job_id: m.job_id.map(str::to_string),
            tid,
            begin: snap,
        });
        self.counters.received += 1;
        for job in abandoned {
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
        self.open_total -= above.len();
        let job = above.remove(0);
        if stack.is_empty()
            && let Some(keys) = self.open.get_mut(&pid)
        {
            keys.remove(&tid);
            if keys.is_empty() {
                self.open.remove(&pid);
            }
        }
        self.counters.received += 1;
        for j in above {
            self.abandon(j, now);
        }
        self.complete(pid, job, m.failed, snap);
    }

    fn complete(&mut self, pid: u32, job: OpenJob, failed: bool, end: Snapshot) {
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
        let s = self.stats(&job.task, end.at_ns);
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
        let runs: Vec<RunSample> = s.window.iter().copied().collect();
        let before = s.verdict.leak_suspected;
        s.verdict = assess(&runs, &verdict_cfg);
        if s.verdict.leak_suspected != before {
            log::warn!(
                "task {}: leak {} ({})",
                s.name,
                if s.verdict.leak_suspected {
                    "suspected"
                } else {
                    "no longer suspected"
                },
                s.verdict.evidence
            );
        }
    }

    /// Abandons the open jobs of processes that are gone.
    pub fn prune(&mut self, alive: impl Fn(u32) -> bool, now_ns: u64) {
        let gone: Vec<u32> = self.open.keys().filter(|p| !alive(**p)).copied().collect();
        for pid in gone {
            if let Some(keys) = self.open.remove(&pid) {
                let jobs: Vec<OpenJob> = keys.into_values().flatten().collect();
                self.open_total -= jobs.len();
                for job in jobs {
                    self.abandon(job, now_ns);
                }
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
        }
    }

    fn feed(t: &mut Tasks, pid: u32, text: &str, tid: Option<u32>, s: Snapshot) {
        let m = parse(text.as_bytes()).unwrap();
        t.on_marker(pid, &m, tid, s);
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
    fn jobs_of_exited_processes_are_abandoned() {
        let mut t = Tasks::default();
        feed(&mut t, 1, "LS1 begin a", None, snap(0, 0));
        feed(&mut t, 2, "LS1 begin b", Some(2), snap(0, 0));
        t.prune(|pid| pid == 2, 10);
        assert_eq!(t.open_jobs(), 1);
        assert_eq!(t.get("a").unwrap().abandoned, 1);
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
