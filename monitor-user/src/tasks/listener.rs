//! The marker listener: a thread of its own that drains the task socket as markers arrive,
//! reads the sender's memory at that moment, and hands both to the job tracker.
//!
//! A thread rather than a task on the shared runtime: the process's memory is read when the
//! marker is received, so the time between a worker's `begin` and that read is the listener's
//! wake-up latency; it must not wait behind a scrape or a /proc scan. It runs at normal
//! priority: anyone may send markers, and a raised priority would let any local user take CPU
//! from the rest of the host through it.
//!
//! Every datagram is charged to its sender's uid (from the kernel) before anything else is
//! read, then to its cgroup when the process table knows it ([`crate::model::budget`]).

use std::{
    collections::{HashMap, HashSet},
    io,
    sync::Arc,
    time::Duration,
};

use monitor_common::{ProcStats, RSS_UNKNOWN, RssKind, ThreadStats};

use super::{
    jobs::{Snapshot, reason},
    protocol::{self, MAX_DATAGRAM, MarkerError, Phase},
    socket::{Datagram, TaskSocket},
};
use crate::{
    bpf::{maps::KernelMaps, task_map::TaskMap},
    host,
    model::budget::{Principal, Rate, RateLimiter},
    model::shared::Shared,
    model::state::boot_ns,
    model::table::Source,
    threads::{self, ThreadMaps},
};

/// What the listener reads from the kernel when a marker arrives.
pub trait KernelView: Send + Sync {
    /// The process's entry in the kernel's per-process map, read now.
    fn proc_stats(&self, pid: u32) -> Option<ProcStats>;
    /// Per-thread counters of the process's live threads.
    fn threads(&self, pid: u32) -> Vec<(u32, ThreadStats)>;
    /// Applies per-thread accounting changes; returns the pids the kernel refused.
    fn want(&self, changes: &[(u32, bool)]) -> Vec<u32>;
    /// The process's exact resident memory (`/proc/<pid>/statm`), read now.
    fn statm(&self, pid: u32) -> Option<host::proc::Statm>;
    /// Thread `tid` of a process of `uid` runs `task` from now on (None: no task), for the
    /// stack samplers.
    fn running(&self, _tid: u32, _task: Option<&str>, _uid: u32) {}
}

/// The real kernel maps.
pub struct Kernel {
    pub procs: Arc<KernelMaps>,
    pub threads: Option<Arc<ThreadMaps>>,
    /// The samplers' view of which task each thread runs.
    pub tasks: Option<std::sync::Mutex<TaskMap>>,
    /// Whether the kernel keeps per-process counters (`--rss-events`). Otherwise PROCS
    /// entries hold no RSS, and a marker does not pay a map lookup for them.
    pub per_change: bool,
    /// Marker senders' statm files, kept open (only the listener reads them).
    pub statm: std::sync::Mutex<host::proc::StatmFiles>,
}

impl KernelView for Kernel {
    fn proc_stats(&self, pid: u32) -> Option<ProcStats> {
        if !self.per_change {
            return None;
        }
        self.procs.proc_stats(pid)
    }

    fn threads(&self, pid: u32) -> Vec<(u32, ThreadStats)> {
        self.threads
            .as_ref()
            .map(|t| t.of_process(pid))
            .unwrap_or_default()
    }

    fn want(&self, changes: &[(u32, bool)]) -> Vec<u32> {
        self.threads
            .as_ref()
            .map(|t| t.apply(changes))
            .unwrap_or_default()
    }

    fn statm(&self, pid: u32) -> Option<host::proc::Statm> {
        self.statm
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .read(pid)
            .ok()
    }

    fn running(&self, tid: u32, task: Option<&str>, uid: u32) {
        let Some(tasks) = &self.tasks else {
            return;
        };
        let mut tasks = tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match task {
            Some(task) => tasks.begin(tid, task, uid),
            None => tasks.end(tid),
        }
    }
}

/// Markers per second one uid may send, and the burst it may send at once (`--marker-rate`;
/// a cgroup twice that): a host's worth of workers of one user (64 processes running 75 jobs
/// a second each, two markers a job). It bounds the work one user can make the listener do
/// beyond receiving: each accepted marker costs a kernel map read and a few /proc lookups.
pub const DEFAULT_MARKER_RATE: u32 = 10_000;

#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// Per uid and per cgroup.
    pub rate: Rate,
}

impl ListenerConfig {
    /// `per_sec` markers a second, in bursts of as many.
    pub fn with_rate(per_sec: u32) -> Self {
        Self {
            rate: Rate {
                per_sec: f64::from(per_sec),
                burst: f64::from(per_sec),
            },
        }
    }
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self::with_rate(DEFAULT_MARKER_RATE)
    }
}

/// Per-process caches the listener keeps for itself, each bounded by [`MAX_TRACKED`].
const MAX_TRACKED: usize = 4096;

/// Threads kept in a job's samples: the marker's own, then the busiest. Bounds what an open
/// job costs however many threads its process has.
const THREADS_PER_SAMPLE: usize = 32;

/// Keeps the marker's thread and the busiest others, in a stable order so that a job's begin
/// and end samples keep the same threads.
fn keep_threads(threads: &mut Vec<(u32, ThreadStats)>, tid: Option<u32>) {
    if threads.len() <= THREADS_PER_SAMPLE {
        return;
    }
    threads.sort_by_key(|(t, s)| {
        (
            Some(*t) != tid,
            std::cmp::Reverse(s.rss_added + s.mapped),
            *t,
        )
    });
    threads.truncate(THREADS_PER_SAMPLE);
}

pub struct Listener {
    socket: TaskSocket,
    shared: Arc<Shared>,
    kernel: Arc<dyn KernelView>,
    limiter: RateLimiter,
    /// Whether each sender runs in a pid namespace below the agent's.
    nested: HashMap<u32, bool>,
    /// Senders of opted-in uids already asked per-thread accounting for.
    asked: HashSet<u32>,
}

impl Listener {
    pub fn new(
        socket: TaskSocket,
        shared: Arc<Shared>,
        kernel: Arc<dyn KernelView>,
        config: ListenerConfig,
    ) -> Self {
        Self {
            socket,
            shared,
            kernel,
            limiter: RateLimiter::new(config.rate),
            nested: HashMap::new(),
            asked: HashSet::new(),
        }
    }

    /// Serves until the socket fails for good.
    pub fn run(mut self) {
        let mut failures = 0u32;
        loop {
            match self.drain(true) {
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    log::warn!("task socket receive failed: {e}");
                    if failures >= 100 {
                        let note = format!("task marker listener stopped: {e}");
                        self.shared.state().notes.push(note);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Handles every datagram waiting (after waiting for the first one when `block`);
    /// returns how many there were.
    pub fn drain(&mut self, block: bool) -> io::Result<usize> {
        // One more than the largest valid marker, so an oversized one is seen as such.
        let mut buf = [0u8; MAX_DATAGRAM + 1];
        let mut n = 0;
        loop {
            match self.socket.recv(&mut buf, !(block && n == 0)) {
                Ok(d) => {
                    self.handle(&buf, d);
                    n += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if n == 0 => return Err(e),
                Err(_) => break,
            }
        }
        // A queue's worth in one go: the queue was (near) full and senders, who never
        // wait, may have dropped markers. The agent cannot see those drops; it counts this.
        if n >= self.socket.queue_len as usize {
            crate::tasks::Tasks::of_mut(&mut self.shared.state())
                .counters
                .queue_full += 1;
        }
        Ok(n)
    }

    fn drop_marker(&self, why: &'static str) {
        crate::tasks::Tasks::of_mut(&mut self.shared.state()).drop_marker(why);
    }

    fn handle(&mut self, buf: &[u8], d: Datagram) {
        if d.ancillary {
            return self.drop_marker(reason::ANCILLARY_DATA);
        }
        // Pid 0: a sender outside the agent's pid namespace, whose memory cannot be read.
        let Some(creds) = d.creds.filter(|c| c.pid != 0) else {
            return self.drop_marker(reason::NO_CREDENTIALS);
        };
        let now = boot_ns();
        // The uid first: a flood costs the agent this and nothing more.
        if !self.limiter.take_uid(creds.uid, now) {
            return self.drop_marker(reason::UID_RATE_LIMITED);
        }
        if d.truncated {
            return self.drop_marker(MarkerError::TooLong.reason());
        }
        let marker = match protocol::parse(&buf[..d.len]) {
            Ok(m) => m,
            Err(e) => return self.drop_marker(e.reason()),
        };
        let pid = creds.pid;
        // One lock for the whole marker: the reads below are a pread and a stat, shorter
        // than taking the lock again.
        let mut state = self.shared.state();
        let (cgroup, pool) = match state.table.get(pid) {
            Some(p) => (
                Some(p.cgroup_id).filter(|id| *id != 0),
                state
                    .table
                    .get(p.ppid)
                    .is_some_and(|parent| parent.comm == p.comm)
                    .then_some(p.ppid),
            ),
            None => (None, None),
        };
        if let Some(id) = cgroup
            && !self.limiter.take_cgroup(id, now)
        {
            return crate::tasks::Tasks::of_mut(&mut state)
                .drop_marker(reason::CGROUP_RATE_LIMITED);
        }
        let who = Principal {
            uid: creds.uid,
            cgroup,
        };
        // Read memory first: the job has just begun or ended.
        let mut snap = self.snapshot(pid, now);
        let tid = marker
            .tid
            .and_then(|t| verify_tid(&mut self.nested, pid, t));
        keep_threads(&mut snap.threads, tid);
        let tasks = crate::tasks::Tasks::of_mut(&mut state);
        // A process that sends its last `end` and exits at once (an RQ work horse) is gone by
        // the time that `end` is read: its thread cannot be checked any more, but it was when
        // the job began, under the same kernel-given pid.
        let tid = tid.or_else(|| {
            let t = marker.tid?;
            (marker.phase == Phase::End && tasks.has_open(pid, t) && !alive(pid)).then_some(t)
        });
        if let Some(parent) = pool {
            snap.pool = parent;
        }
        if marker.tid.is_some() && tid.is_none() {
            tasks.counters.tid_unverified += 1;
        }
        tasks.on_marker(pid, who, &marker, tid, snap);
        // The marker's thread, else the process's main thread (a prefork worker's only one).
        let running = match marker.phase {
            protocol::Phase::Begin => Some(marker.task),
            protocol::Phase::End => None,
        };
        self.kernel.running(tid.unwrap_or(pid), running, who.uid);
        // Only the operator turns per-thread accounting on (each target costs uprobes and
        // slots): for the processes of the uids given with --threads-for-uid.
        if threads::Threads::of(&state).opted_in(who.uid) && !self.asked.contains(&pid) {
            let changes = threads::request_for_sender(&mut state, pid, who);
            drop(state);
            self.asked.insert(pid);
            let refused = self.kernel.want(&changes);
            if !refused.is_empty() {
                threads::Threads::of_mut(&mut self.shared.state()).refused_by_kernel(&refused);
            }
            bound(&mut self.asked, |pid| alive(*pid));
        }
    }

    /// The process's memory now, exact: one read of `/proc/<pid>/statm` (an exact per-CPU sum
    /// since 6.16) for resident anon and file+shmem; the kernel's counters only split file
    /// from shmem and give swap. Without statm, the kernel's numbers, else /proc's status.
    fn snapshot(&self, pid: u32, now: u64) -> Snapshot {
        let kernel = self
            .kernel
            .proc_stats(pid)
            .filter(|s| s.rss[RssKind::Anon as usize] != RSS_UNKNOWN);
        let (rss, source) = match (self.kernel.statm(pid), kernel) {
            (Some(m), kernel) => (exact_rss(m, kernel.map(|s| s.rss)), Source::Proc),
            (None, Some(s)) => (s.rss, Source::Kernel),
            (None, None) => match host::proc::read(pid) {
                Ok(p) => (p.rss.map(|v| v as i64), Source::Proc),
                Err(_) => ([RSS_UNKNOWN; RssKind::COUNT], Source::Unknown),
            },
        };
        let threads = if self.asked.contains(&pid) {
            self.kernel.threads(pid)
        } else {
            Vec::new()
        };
        Snapshot {
            at_ns: now,
            rss,
            source,
            threads,
            pool: pid,
        }
    }
}

/// The marker's `tid=` in the agent's pid namespace, if it is a thread of `pid`; the tid is
/// the sender's claim, in the sender's namespace. `nested` caches whether each sender runs in
/// a pid namespace below the agent's.
fn verify_tid(nested: &mut HashMap<u32, bool>, pid: u32, tid: u32) -> Option<u32> {
    bound_map(nested, |pid| alive(*pid));
    let in_child_ns = *nested
        .entry(pid)
        .or_insert_with(|| host::proc::ns_pids(pid).len() > 1);
    if !in_child_ns {
        return host::proc::thread_exists(pid, tid).then_some(tid);
    }
    threads::live_tids(pid).into_iter().find(|t| {
        host::proc::thread_ns_pids(pid, *t)
            .last()
            .is_some_and(|inner| *inner == tid)
    })
}

/// RSS by kind from statm's exact totals; `counters` (the kernel's, batched) only say how
/// much of the shared part is shmem, and what is swapped out.
fn exact_rss(
    m: host::proc::Statm,
    counters: Option<[i64; RssKind::COUNT]>,
) -> [i64; RssKind::COUNT] {
    let known = |v: i64| (v != RSS_UNKNOWN).then_some(v.max(0) as u64);
    let shmem = counters
        .and_then(|c| known(c[RssKind::Shmem as usize]))
        .unwrap_or(0)
        .min(m.shared);
    let swap = counters
        .and_then(|c| known(c[RssKind::Swap as usize]))
        .map_or(RSS_UNKNOWN, |v| v as i64);
    let mut rss = [0; RssKind::COUNT];
    rss[RssKind::Anon as usize] = (m.resident - m.shared) as i64;
    rss[RssKind::File as usize] = (m.shared - shmem) as i64;
    rss[RssKind::Shmem as usize] = shmem as i64;
    rss[RssKind::Swap as usize] = swap;
    rss
}

fn alive(pid: u32) -> bool {
    host::proc::exists(pid)
}

/// Keeps a per-process cache within [`MAX_TRACKED`]: entries of processes that are gone go
/// first; only if every one is alive is the cache started afresh (it is a cache: what it
/// forgets is read again).
fn bound(set: &mut HashSet<u32>, alive: impl Fn(&u32) -> bool) {
    if set.len() > MAX_TRACKED {
        set.retain(|pid| alive(pid));
        if set.len() > MAX_TRACKED {
            set.clear();
        }
    }
}

fn bound_map<V>(map: &mut HashMap<u32, V>, alive: impl Fn(&u32) -> bool) {
    if map.len() >= MAX_TRACKED {
        map.retain(|pid, _| alive(pid));
        if map.len() >= MAX_TRACKED {
            map.clear();
        }
    }
}

/// Abandons open jobs of processes that are gone and refits the allocator attribution;
/// called every interval, off the async runtime (the fit is CPU work).
pub fn prune(shared: &Shared) {
    let pids: Vec<u32> = {
        let state = shared.state();
        crate::tasks::Tasks::of(&state)
            .open_pids()
            .filter(|pid| !alive(*pid))
            .collect()
    };
    let input = {
        let mut state = shared.state();
        let tasks = crate::tasks::Tasks::of_mut(&mut state);
        tasks.prune_gone(|pid| !pids.contains(&pid), boot_ns());
        tasks.attribution_input()
    };
    // Runs with allocator blocks that came in since the last fit: fitted without the lock
    // (tens of ms with hundreds of task types), then applied.
    if let Some((runs, cfg)) = input {
        let fitted = super::attribution::attribute(&runs, &cfg);
        crate::tasks::Tasks::of_mut(&mut shared.state()).apply_attribution(fitted);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        os::{fd::AsRawFd as _, unix::net::UnixDatagram},
        path::PathBuf,
        sync::Mutex,
    };

    use super::*;
    use crate::{
        model::state::{AgentState, Settings},
        tasks::socket::SocketOptions,
    };

    const MIB: i64 = 1 << 20;

    /// A kernel whose process grows 4 MiB between consecutive reads.
    #[derive(Default)]
    struct FakeKernel {
        reads: Mutex<i64>,
        wanted: Mutex<Vec<(u32, bool)>>,
    }

    impl KernelView for FakeKernel {
        fn proc_stats(&self, _pid: u32) -> Option<ProcStats> {
            let mut reads = self.reads.lock().unwrap();
            let mut s = ProcStats::new(0, 1, 0);
            s.rss = [MIB, 100 * MIB + *reads * 4 * MIB, 0, 0];
            *reads += 1;
            Some(s)
        }
        fn threads(&self, _pid: u32) -> Vec<(u32, ThreadStats)> {
            Vec::new()
        }
        fn want(&self, changes: &[(u32, bool)]) -> Vec<u32> {
            self.wanted.lock().unwrap().extend_from_slice(changes);
            Vec::new()
        }
        /// As on a kernel without /proc access: the counters stand.
        fn statm(&self, _pid: u32) -> Option<host::proc::Statm> {
            None
        }
    }

    #[test]
    fn statm_gives_exact_anon_and_the_counters_only_split_shared_memory() {
        let m = host::proc::Statm {
            resident: 300 * MIB as u64,
            shared: 100 * MIB as u64,
        };
        let kinds = |file, anon, shmem, swap| {
            let mut r = [0; RssKind::COUNT];
            r[RssKind::File as usize] = file;
            r[RssKind::Anon as usize] = anon;
            r[RssKind::Shmem as usize] = shmem;
            r[RssKind::Swap as usize] = swap;
            r
        };
        // Batched counters lag: their anon (190 MiB) is ignored, their shmem and swap kept.
        let counters = kinds(95 * MIB, 190 * MIB, 10 * MIB, 3 * MIB);
        assert_eq!(
            exact_rss(m, Some(counters)),
            kinds(90 * MIB, 200 * MIB, 10 * MIB, 3 * MIB)
        );
        // Without counters: shared counts as file, swap is unknown.
        assert_eq!(
            exact_rss(m, None),
            kinds(100 * MIB, 200 * MIB, 0, RSS_UNKNOWN)
        );
        // Counters that overshoot statm's shared part are capped by it.
        let over = kinds(0, 0, 500 * MIB, RSS_UNKNOWN);
        assert_eq!(
            exact_rss(m, Some(over)),
            kinds(0, 200 * MIB, 100 * MIB, RSS_UNKNOWN)
        );
    }

    struct Setup {
        dir: PathBuf,
        path: PathBuf,
        shared: Arc<Shared>,
        kernel: Arc<FakeKernel>,
        listener: Listener,
        client: UnixDatagram,
    }

    impl Drop for Setup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn setup(name: &str, config: ListenerConfig) -> Setup {
        setup_opted(name, config, &[])
    }

    /// With per-thread accounting for markers from these uids.
    fn setup_opted(name: &str, config: ListenerConfig, uids: &[u32]) -> Setup {
        let dir = std::env::temp_dir().join(format!("leakscope-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("tasks.sock");
        let socket = TaskSocket::bind(&SocketOptions::new(&path)).unwrap();
        let mut state = AgentState::new(Settings::default());
        let mut t = threads::Threads::new(threads::ThreadsConfig {
            marker_uids: uids.to_vec(),
            ..threads::ThreadsConfig::default()
        });
        t.available = true;
        state.features.insert(t);
        let shared = Arc::new(Shared::new(state, None));
        let kernel = Arc::new(FakeKernel::default());
        let listener = Listener::new(socket, shared.clone(), kernel.clone(), config);
        Setup {
            dir,
            path,
            shared,
            kernel,
            listener,
            client: UnixDatagram::unbound().unwrap(),
        }
    }

    impl Setup {
        fn send(&self, bytes: &[u8]) {
            self.client.send_to(bytes, &self.path).unwrap();
        }
        fn drain(&mut self) -> usize {
            self.listener.drain(false).unwrap()
        }
        fn dropped(&self, reason: &str) -> u64 {
            crate::tasks::Tasks::of_mut(&mut self.shared.state())
                .counters
                .dropped[reason]
        }
    }

    fn gettid() -> u32 {
        // SAFETY: no preconditions.
        unsafe { libc::gettid() as u32 }
    }

    fn euid() -> u32 {
        // SAFETY: no preconditions.
        unsafe { libc::geteuid() }
    }

    #[test]
    fn a_job_is_measured_with_the_kernel_given_pid() {
        let mut s = setup_opted("listen-job", ListenerConfig::default(), &[euid()]);
        let tid = gettid();
        s.send(format!("LS1 begin app.leak job=j1 tid={tid}").as_bytes());
        s.send(format!("LS1 end app.leak job=j1 tid={tid} status=ok\n").as_bytes());
        assert_eq!(s.drain(), 2);
        let state = s.shared.state();
        let t = crate::tasks::Tasks::of(&state)
            .get("app.leak")
            .expect("task recorded");
        assert_eq!(t.runs, 1);
        let job = &t.recent[0];
        assert_eq!(job.pid, std::process::id(), "pid from SCM_CREDENTIALS");
        assert_eq!(job.tid, Some(tid), "our own thread is verified");
        assert_eq!(job.retained_bytes, 4 * MIB);
        assert_eq!(job.source, Source::Kernel);
        assert_eq!(crate::tasks::Tasks::of(&state).counters.received, 2);
        // Its uid is opted in: the sender was asked for per-thread accounting once.
        assert_eq!(
            *s.kernel.wanted.lock().unwrap(),
            [(std::process::id(), true)]
        );
        assert_eq!(
            threads::Threads::of(&state).wanted.get(&std::process::id()),
            Some(&threads::WantReason::Markers)
        );
    }

    #[test]
    fn markers_from_a_uid_not_opted_in_turn_nothing_on() {
        let mut s = setup_opted("listen-noopt", ListenerConfig::default(), &[euid() + 1]);
        s.send(b"LS1 begin app.t job=1");
        s.send(b"LS1 end app.t job=1");
        assert_eq!(s.drain(), 2);
        let state = s.shared.state();
        assert_eq!(
            crate::tasks::Tasks::of(&state).get("app.t").unwrap().runs,
            1,
            "measured all the same"
        );
        assert!(s.kernel.wanted.lock().unwrap().is_empty());
        assert!(threads::Threads::of(&state).wanted.is_empty());
    }

    #[test]
    fn malformed_oversized_and_hostile_markers_are_counted_and_dropped() {
        let mut s = setup("listen-bad", ListenerConfig::default());
        s.send(b"");
        s.send(b"hello");
        s.send(b"LS2 begin t");
        s.send(b"LS1 begin t job=");
        s.send(b"LS1 begin bad\xffname");
        s.send(b"LS1 begin t status=ok");
        s.send(b"LS1 end never.begun");
        s.send(&[b'A'; MAX_DATAGRAM + 88]);
        // A valid marker padded to exactly the limit with a long job id stays valid...
        s.send(format!("LS1 begin t job={}", "j".repeat(64)).as_bytes());
        assert_eq!(s.drain(), 9);
        for reason in [
            "empty",
            "bad_magic",
            "unsupported_version",
            "job_id_invalid",
            "not_utf8",
            "status_on_begin",
            "unmatched_end",
            "too_long",
        ] {
            assert_eq!(s.dropped(reason), 1, "{reason}");
        }
        let state = s.shared.state();
        assert_eq!(crate::tasks::Tasks::of(&state).counters.received, 1);
        assert_eq!(crate::tasks::Tasks::of(&state).open_jobs(), 1);
    }

    #[test]
    fn a_tid_that_is_not_the_senders_is_not_trusted() {
        let mut s = setup("listen-tid", ListenerConfig::default());
        // pid 1's thread is not ours: the job is attributed to the process.
        s.send(b"LS1 begin t job=1 tid=1");
        assert_eq!(s.drain(), 1);
        let state = s.shared.state();
        assert_eq!(crate::tasks::Tasks::of(&state).counters.tid_unverified, 1);
        drop(state);
        // ...so its end, keyed by the process, pairs with it whatever tid it claims.
        s.send(b"LS1 end t job=1 tid=1");
        s.drain();
        let state = s.shared.state();
        let job = &crate::tasks::Tasks::of(&state).get("t").unwrap().recent[0];
        assert_eq!(job.tid, None);
    }

    #[test]
    fn descriptors_sent_with_a_marker_are_closed_and_the_marker_dropped() {
        let mut s = setup("listen-fds", ListenerConfig::default());
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = file.as_raw_fd();
        let before = std::fs::read_dir("/proc/self/fd").unwrap().count();
        // sendmsg with SCM_RIGHTS, by hand.
        let payload = b"LS1 begin t";
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr() as *mut _,
            iov_len: payload.len(),
        };
        let mut control = [0u64; 4];
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let raw = s.path.as_os_str().as_encoded_bytes();
        for (d, c) in addr.sun_path.iter_mut().zip(raw) {
            *d = *c as libc::c_char;
        }
        // SAFETY: test-only FFI with buffers that outlive the call.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_name = (&mut addr as *mut libc::sockaddr_un).cast();
            msg.msg_namelen = size_of::<libc::sockaddr_un>() as u32;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(size_of::<libc::c_int>() as u32) as usize;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as usize;
            libc::CMSG_DATA(c).cast::<libc::c_int>().write_unaligned(fd);
            assert!(libc::sendmsg(s.client.as_raw_fd(), &msg, 0) >= 0);
        }
        assert_eq!(s.drain(), 1);
        assert_eq!(s.dropped(reason::ANCILLARY_DATA), 1);
        let after = std::fs::read_dir("/proc/self/fd").unwrap().count();
        assert_eq!(before, after, "the passed descriptor was closed");
        assert_eq!(crate::tasks::Tasks::of(&s.shared.state()).open_jobs(), 0);
    }

    #[test]
    fn a_flood_is_rate_limited_and_a_full_queue_is_noticed() {
        let mut s = setup(
            "listen-flood",
            ListenerConfig {
                rate: Rate {
                    per_sec: 0.001,
                    burst: 3.0,
                },
            },
        );
        let qlen = s.listener.socket.queue_len as usize;
        // Senders never block: past the queue's length they get EAGAIN and drop.
        s.client.set_nonblocking(true).unwrap();
        let mut sent = 0;
        for i in 0..qlen + 20 {
            match s
                .client
                .send_to(format!("LS1 begin t{i}").as_bytes(), &s.path)
            {
                Ok(_) => sent += 1,
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            }
        }
        assert!(
            sent >= qlen && sent < qlen + 20,
            "sent {sent}, queue {qlen}"
        );
        assert_eq!(s.drain(), sent);
        let state = s.shared.state();
        assert_eq!(
            crate::tasks::Tasks::of(&state).counters.received,
            3,
            "the burst"
        );
        assert_eq!(
            crate::tasks::Tasks::of(&state).counters.dropped[reason::UID_RATE_LIMITED],
            sent as u64 - 3
        );
        assert_eq!(crate::tasks::Tasks::of(&state).counters.queue_full, 1);
    }

    #[test]
    fn samples_keep_the_markers_thread_and_the_busiest() {
        let mut threads: Vec<(u32, ThreadStats)> = (1..=40)
            .map(|tid| {
                let mut t = ThreadStats::new(7, [0; 16]);
                t.rss_added = u64::from(tid) * 4096;
                (tid, t)
            })
            .collect();
        keep_threads(&mut threads, Some(3));
        let tids: Vec<u32> = threads.iter().map(|(t, _)| *t).collect();
        assert_eq!(tids.len(), THREADS_PER_SAMPLE);
        assert_eq!(tids[0], 3, "the marker's thread first");
        assert_eq!(tids[1], 40, "then the busiest");
        assert!(!tids.contains(&4));
    }

    #[test]
    fn caches_stay_bounded_and_keep_live_processes() {
        let mut set: HashSet<u32> = (0..MAX_TRACKED as u32 + 1).collect();
        bound(&mut set, |pid| *pid < 10);
        assert_eq!(set.len(), 10, "the gone went, the live stayed");
        let mut set: HashSet<u32> = (0..MAX_TRACKED as u32 + 1).collect();
        bound(&mut set, |_| true);
        assert!(set.is_empty(), "all alive: started afresh");
        let mut map: HashMap<u32, bool> = (0..MAX_TRACKED as u32).map(|p| (p, true)).collect();
        bound_map(&mut map, |pid| *pid % 2 == 0);
        assert_eq!(map.len(), MAX_TRACKED / 2);
    }
}
