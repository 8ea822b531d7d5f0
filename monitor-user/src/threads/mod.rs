//! Per-thread attribution: which thread of a process maps, unmaps and faults in its memory.
//!
//! The kernel counts (probes/mem.rs) only for processes the agent asks for, so the page-fault
//! path of every other process pays one inlined load, and its memory calls nothing: the
//! address-space probes are uprobes on each target's own libc, attached to that process alone
//! ([`uprobes`]). The agent asks for:
//! - processes matching `--threads-for`;
//! - processes that send task markers *from a uid given with `--threads-for-uid`* (and the
//!   pool parent that forked them, so that its next children are asked for at their fork).
//!   Markers from any other uid never turn anything on.
//!
//! Each uid (and cgroup) holds at most a fair share of the `--max-thread-processes` slots.
//!
//! Every interval (and as soon as a process becomes a target) it attaches the probes of new
//! targets and detaches those of targets gone. It reads the kernel's per-thread map, keeps
//! the top threads of each process for `/api/v1/processes` and `/metrics`, and prunes entries
//! of processes that are gone.

pub mod uprobes;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    os::fd::AsFd as _,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, MapData},
    sys::SyscallError,
};
use leakscope_api::metrics as names;
use monitor_common::{Counter, THREAD_CONFIG_MAP, THREAD_WANT_MAP, THREADS_MAP, ThreadStats};
use serde::Serialize;
pub use uprobes::{PROBE_NAME, TargetProbes, prepare};

use crate::{
    bpf::{BpfError, Kernel},
    model::budget::{Over, Principal, Shares},
    model::select::Selector,
    model::shared::Shared,
    model::state::{AgentState, boot_ns},
    model::table::comm_str,
};

/// Threads read from `/proc/<pid>/task` for one snapshot, at most: a process with thousands of
/// threads must not stall the marker listener.
const MAX_TASKS_READ: usize = 512;

/// Processes decided against `--threads-for` per interval (each costs /proc reads).
const DECISIONS_PER_INTERVAL: usize = 256;

/// The fewest per-thread slots one uid or cgroup may hold, however small
/// `--max-thread-processes` is: a pool parent and a few children.
const SHARE_FLOOR: usize = 8;

// ---- kernel maps -------------------------------------------------------------------------

/// The per-thread maps. Readers (the marker listener, the interval loop) use a handle of their
/// own on THREADS, so a marker never waits for pruning, which holds the writer's.
pub struct ThreadMaps {
    reader: BpfHashMap<MapData, u32, ThreadStats>,
    writer: Mutex<BpfHashMap<MapData, u32, ThreadStats>>,
    want: Mutex<Want>,
}

struct Want {
    map: BpfHashMap<MapData, u32, u32>,
    config: Array<MapData, u32>,
    generation: u32,
}

impl ThreadMaps {
    pub fn take(kernel: &Kernel) -> Result<Self, BpfError> {
        let wrap = |name: &'static str| move |cause| BpfError::Map { name, cause };
        let threads = kernel.take_map(THREADS_MAP, Ok)?;
        let dup = |data: &MapData| {
            data.fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|io_error| {
                    aya::maps::MapError::SyscallError(SyscallError {
                        call: "dup",
                        io_error,
                    })
                })
                .and_then(MapData::from_fd)
                .map_err(wrap(THREADS_MAP))
        };
        let second = match &threads {
            Map::LruHashMap(data) => Map::LruHashMap(dup(data)?),
            Map::HashMap(data) => Map::HashMap(dup(data)?),
            _ => return Err(BpfError::MissingMap(THREADS_MAP)),
        };
        let reader = BpfHashMap::try_from(second).map_err(wrap(THREADS_MAP))?;
        let writer = BpfHashMap::try_from(threads).map_err(wrap(THREADS_MAP))?;
        let map = kernel.take_map(THREAD_WANT_MAP, BpfHashMap::try_from)?;
        let config = kernel.take_map(THREAD_CONFIG_MAP, Array::try_from)?;
        Ok(Self {
            reader,
            writer: Mutex::new(writer),
            want: Mutex::new(Want {
                map,
                config,
                generation: 0,
            }),
        })
    }

    /// Applies (pid, wanted) changes and bumps the generation once, so each affected process
    /// re-reads its flag at its next event. Returns the pids the kernel refused (map full).
    pub fn apply(&self, changes: &[(u32, bool)]) -> Vec<u32> {
        if changes.is_empty() {
            return Vec::new();
        }
        let mut want = self.want.lock().unwrap_or_else(PoisonError::into_inner);
        let mut refused = Vec::new();
        for &(pid, on) in changes {
            let result = if on {
                want.map.insert(pid, 1, 0)
            } else {
                match want.map.remove(&pid) {
                    Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                    r => r,
                }
            };
            if let Err(e) = result {
                log::debug!("THREAD_WANT update for pid {pid} failed: {e}");
                if on {
                    refused.push(pid);
                }
            }
        }
        want.generation = want.generation.wrapping_add(1).max(1);
        let generation = want.generation;
        if let Err(e) = want.config.set(0, generation, 0) {
            log::warn!("cannot publish the per-thread generation: {e}");
        }
        refused
    }

    /// The kernel's numbers for the threads of `pid` now alive (at most [`MAX_TASKS_READ`]);
    /// entries of other processes (reused tids not yet reset) are left out.
    pub fn of_process(&self, pid: u32) -> Vec<(u32, ThreadStats)> {
        live_tids(pid)
            .into_iter()
            .filter_map(|tid| self.reader.get(&tid, 0).ok().map(|t| (tid, t)))
            .filter(|(_, t)| t.tgid == pid)
            .collect()
    }

    /// Every entry of the map.
    pub fn all(&self) -> Vec<(u32, ThreadStats)> {
        self.reader.iter().filter_map(Result::ok).collect()
    }

    /// Removes entries; returns how many went.
    pub fn remove(&self, tids: &[u32]) -> u64 {
        if tids.is_empty() {
            return 0;
        }
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        tids.iter().filter(|tid| writer.remove(tid).is_ok()).count() as u64
    }
}

/// Thread ids of `pid` (at most [`MAX_TASKS_READ`]), in the agent's pid namespace.
pub fn live_tids(pid: u32) -> Vec<u32> {
    crate::host::proc::tids(pid, MAX_TASKS_READ)
}

// ---- agent state -------------------------------------------------------------------------

/// Why a process has per-thread accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WantReason {
    /// It sent task markers.
    Markers,
    /// It forked a process that sent markers, with its own name: a worker pool's parent.
    PoolParent,
    /// Forked by a pool parent.
    PoolChild,
    /// `--threads-for` matched it.
    Matcher,
}

/// One thread's numbers, as shown and exported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ThreadView {
    pub tid: u32,
    pub comm: String,
    /// Faulted in minus released: the RSS this thread's own actions added to its process.
    pub rss_growth_bytes: i64,
    pub rss_added_bytes: u64,
    pub rss_removed_bytes: u64,
    /// Mapped minus unmapped address space (mmap, munmap, mremap, brk).
    pub mapped_growth_bytes: i64,
    pub mapped_bytes: u64,
    pub unmapped_bytes: u64,
    /// False once the thread has exited (its process lives on, and may hold what it took).
    pub alive: bool,
}

impl ThreadView {
    pub fn new(tid: u32, t: &ThreadStats, alive: bool) -> Self {
        Self {
            tid,
            comm: comm_str(&t.comm),
            rss_growth_bytes: t.rss_growth(),
            rss_added_bytes: t.rss_added,
            rss_removed_bytes: t.rss_removed,
            mapped_growth_bytes: t.mapped_growth(),
            mapped_bytes: t.mapped,
            unmapped_bytes: t.unmapped,
            alive,
        }
    }
}

/// Sorts threads by the growth they caused, largest first, and keeps `n`.
pub fn top(mut threads: Vec<ThreadView>, n: usize) -> Vec<ThreadView> {
    threads.sort_by(|a, b| {
        b.rss_growth_bytes
            .cmp(&a.rss_growth_bytes)
            .then(b.mapped_growth_bytes.cmp(&a.mapped_growth_bytes))
            .then(a.tid.cmp(&b.tid))
    });
    threads.truncate(n);
    threads
}

#[derive(Clone, Debug)]
pub struct ThreadsConfig {
    /// `--threads-for`; empty selects nothing (unlike `--match`).
    pub matchers: Selector,
    pub has_matchers: bool,
    /// `--threads-for-uid`: marker senders of these uids get per-thread accounting.
    pub marker_uids: Vec<u32>,
    pub max_processes: usize,
    pub top_n: usize,
}

impl Default for ThreadsConfig {
    fn default() -> Self {
        Self {
            matchers: Selector::default(),
            has_matchers: false,
            marker_uids: Vec::new(),
            max_processes: monitor_common::DEFAULT_MAX_THREAD_PROCS as usize,
            top_n: 5,
        }
    }
}

/// What the agent knows of per-thread accounting; kept under the agent's lock beside the core
/// model (`AgentState::features`).
#[derive(Debug)]
pub struct Threads {
    pub config: ThreadsConfig,
    /// Processes with per-thread accounting, and why.
    pub wanted: HashMap<u32, WantReason>,
    /// Whose share each wanted process counts against (unknown: none).
    owners: HashMap<u32, Principal>,
    shares: Shares,
    /// Requests refused because their uid or cgroup held its share, by `uid`/`cgroup`.
    share_refused: BTreeMap<&'static str, u64>,
    /// Processes already looked at for `--threads-for` and pool inheritance.
    decided: HashSet<u32>,
    /// Top threads of each wanted process, as of the last interval.
    pub top: HashMap<u32, Vec<ThreadView>>,
    /// Entries in the kernel's THREADS map at the last interval.
    pub entries: u64,
    /// Entries the agent removed (their process is gone).
    pub removed: u64,
    /// Processes refused because `--max-thread-processes` (or the kernel map) was full.
    pub refused: u64,
    /// Whether the kernel side is there at all (maps present).
    pub available: bool,
    /// Targets whose mapped bytes are not counted (no libc to probe, or the kernel refused
    /// the uprobes), and why.
    pub mapped_off: HashMap<u32, String>,
    /// Targets with their address-space uprobes attached, as of the last change.
    pub probed: usize,
    /// Woken when a process becomes a target, so its probes are attached at once rather than
    /// at the next interval (its first job's mappings would be missed).
    pub wake: Arc<tokio::sync::Notify>,
}

impl Default for Threads {
    fn default() -> Self {
        Self::new(ThreadsConfig::default())
    }
}

static NO_THREADS: std::sync::LazyLock<Threads> = std::sync::LazyLock::new(Threads::default);

impl Threads {
    /// The agent's per-thread state (empty until the feature is configured).
    pub fn of(state: &AgentState) -> &Threads {
        state.features.get::<Threads>().unwrap_or(&NO_THREADS)
    }

    pub fn of_mut(state: &mut AgentState) -> &mut Threads {
        state.features.get_mut::<Threads>()
    }
}

impl Threads {
    pub fn new(config: ThreadsConfig) -> Self {
        Self {
            shares: Shares::new(config.max_processes, SHARE_FLOOR),
            config,
            wanted: HashMap::new(),
            owners: HashMap::new(),
            share_refused: Over::ALL.iter().map(|o| (o.label(), 0)).collect(),
            decided: HashSet::new(),
            top: HashMap::new(),
            entries: 0,
            removed: 0,
            refused: 0,
            available: false,
            mapped_off: HashMap::new(),
            probed: 0,
            wake: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Whether markers from `uid` may turn per-thread accounting on (`--threads-for-uid`).
    pub fn opted_in(&self, uid: u32) -> bool {
        self.config.marker_uids.contains(&uid)
    }

    /// Asks for per-thread accounting of `pid`, charged to `owner` when known; returns the
    /// change to make in the kernel, if any. Refused (and counted) beyond the cap or the
    /// owner's share.
    pub fn request(
        &mut self,
        pid: u32,
        reason: WantReason,
        owner: Option<Principal>,
    ) -> Option<(u32, bool)> {
        if !self.available || self.wanted.contains_key(&pid) {
            return None;
        }
        if self.wanted.len() >= self.config.max_processes {
            self.refused += 1;
            return None;
        }
        if let Some(o) = owner {
            if let Err(over) = self.shares.take(o) {
                *self.share_refused.entry(over.label()).or_insert(0) += 1;
                return None;
            }
            self.owners.insert(pid, o);
        }
        self.wanted.insert(pid, reason);
        self.wake.notify_one();
        Some((pid, true))
    }

    /// `pid` no longer has per-thread accounting: its owner's share comes back.
    fn forget(&mut self, pid: u32) {
        self.wanted.remove(&pid);
        self.top.remove(&pid);
        self.mapped_off.remove(&pid);
        if let Some(o) = self.owners.remove(&pid) {
            self.shares.give_back(o);
        }
    }

    /// The kernel refused these: forget them.
    pub fn refused_by_kernel(&mut self, pids: &[u32]) {
        for pid in pids {
            self.forget(*pid);
            self.refused += 1;
        }
    }

    /// Requests refused because the uid or cgroup behind them held its share.
    pub fn share_refused(&self, over: Over) -> u64 {
        self.share_refused.get(over.label()).copied().unwrap_or(0)
    }

    /// LRU evictions from the kernel's THREADS map: what went in and neither left nor stayed.
    pub fn evictions(&self, state_counters: &AgentState) -> u64 {
        state_counters
            .counter(Counter::ThreadInserted)
            .saturating_sub(self.removed)
            .saturating_sub(self.entries)
    }

    pub fn top_of(&self, pid: u32) -> Option<&[ThreadView]> {
        self.top.get(&pid).map(Vec::as_slice)
    }
}

/// Asks for `pid` (a marker sender, `who`) when its uid is opted in (`--threads-for-uid`)
/// and, when its parent is a pool of the same name, for the parent too. Returns the kernel
/// changes to apply: none for a uid that is not opted in, whatever it sends.
pub fn request_for_sender(state: &mut AgentState, pid: u32, who: Principal) -> Vec<(u32, bool)> {
    let mut changes = Vec::new();
    let threads = state.features.get_mut::<Threads>();
    if !threads.opted_in(who.uid) || threads.wanted.contains_key(&pid) || !threads.available {
        return changes;
    }
    changes.extend(threads.request(pid, WantReason::Markers, Some(who)));
    if let Some(ppid) = state.table.pool_parent(pid) {
        changes.extend(Threads::of_mut(state).request(ppid, WantReason::PoolParent, Some(who)));
    }
    changes
}

// ---- metrics -----------------------------------------------------------------------------

/// The top threads (`--top-threads`) of each process that has series of its own: at most
/// that many series per exported process.
pub fn families(
    state: &AgentState,
    own: &[&crate::model::table::Process],
) -> Vec<prometheus::proto::MetricFamily> {
    use prometheus::proto::MetricType;

    use crate::prom::{counter, family, gauge};
    let (mut rss, mut mapped) = (Vec::new(), Vec::new());
    for p in own {
        let Some(top) = Threads::of(state).top_of(p.pid) else {
            continue;
        };
        let pid = p.pid.to_string();
        for t in top {
            let tid = t.tid.to_string();
            let l = [
                ("pid", pid.as_str()),
                ("tid", tid.as_str()),
                ("comm", t.comm.as_str()),
            ];
            rss.push(gauge(&l, t.rss_growth_bytes as f64));
            mapped.push(gauge(&l, t.mapped_growth_bytes as f64));
        }
    }
    vec![
        family(
            names::THREAD_RSS_GROWTH_BYTES,
            "RSS a thread's own page faults added to its process, minus what it released, \
             since per-thread accounting began (top threads of exported processes).",
            MetricType::GAUGE,
            rss,
        ),
        family(
            names::THREAD_MAPPED_GROWTH_BYTES,
            "Address space a thread mapped minus unmapped (mmap, munmap, mremap, brk) since \
             per-thread accounting began (top threads of exported processes).",
            MetricType::GAUGE,
            mapped,
        ),
        family(
            names::THREADS_PROCESSES,
            "Processes with per-thread accounting (they match --threads-for, or send task \
             markers from a --threads-for-uid uid).",
            MetricType::GAUGE,
            vec![gauge(&[], Threads::of(state).wanted.len() as f64)],
        ),
        family(
            names::THREAD_TRACKING_REFUSED_TOTAL,
            "Processes refused per-thread accounting because --max-thread-processes was reached \
             (or the kernel's map was full); refusals for a uid's or cgroup's share are in \
             leakscope_share_refused_total{table=\"thread_processes\"}.",
            MetricType::COUNTER,
            vec![counter(&[], Threads::of(state).refused as f64)],
        ),
    ]
}

// ---- the interval loop -------------------------------------------------------------------

pub async fn run(
    maps: Arc<ThreadMaps>,
    probes: Option<TargetProbes>,
    shared: Arc<Shared>,
    every: Duration,
) {
    let probes = probes.map(|p| Arc::new(Mutex::new(p)));
    let wake = Threads::of(&shared.state()).wake.clone();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = wake.notified() => {}
        }
        let maps = maps.clone();
        let shared = shared.clone();
        let probes = probes.clone();
        // Map iteration, /proc reads and ELF parsing block: keep them off the runtime's
        // worker threads.
        let synced = shared.clone();
        let done = tokio::task::spawn_blocking(move || {
            sync_once(&maps, &synced);
            if let Some(probes) = &probes {
                follow_targets(
                    &mut probes.lock().unwrap_or_else(PoisonError::into_inner),
                    &synced,
                );
            }
        });
        if let Err(e) = done.await {
            log::warn!("per-thread sync failed: {e}");
        }
    }
}

/// Attaches the address-space probes of new targets and detaches those of targets gone.
pub fn follow_targets(probes: &mut TargetProbes, shared: &Shared) {
    let wanted: HashSet<u32> = Threads::of(&shared.state())
        .wanted
        .keys()
        .copied()
        .collect();
    let changes = probes.follow(&wanted);
    for (pid, module) in &changes.attached {
        log::info!("per-thread uprobes attached to pid {pid}: {module}");
    }
    for pid in &changes.detached {
        log::info!("per-thread uprobes detached from pid {pid}");
    }
    for (pid, why) in &changes.off {
        log::warn!("per-thread mapped bytes are off for pid {pid}: {why}");
    }
    let mut state = shared.state();
    let threads = Threads::of_mut(&mut state);
    threads.probed = probes.attached();
    for (pid, why) in changes.off {
        // Only for processes still wanted: the map stays bounded by the wanted set.
        if threads.wanted.contains_key(&pid) {
            threads.mapped_off.insert(pid, why);
        }
    }
}

/// One interval: decide who is wanted, apply it, read the kernel's numbers, prune.
pub fn sync_once(maps: &ThreadMaps, shared: &Shared) {
    let now = boot_ns();
    // 1. Processes gone, pool children, and candidates for --threads-for.
    let (mut changes, candidates, matchers) = {
        let mut guard = shared.state();
        let state = &mut *guard;
        let mut changes = Vec::new();
        let table = &state.table;
        let threads = state.features.get_mut::<Threads>();
        // Not in the table is not gone: a child forked a moment ago may send its first marker
        // before its fork event is applied, and a pid forgotten here is never asked for again.
        let gone: Vec<u32> = threads
            .wanted
            .keys()
            .filter(|pid| table.get(**pid).is_none() && !crate::host::proc::exists(**pid))
            .copied()
            .collect();
        for pid in gone {
            threads.forget(pid);
            changes.push((pid, false));
        }
        threads.decided.retain(|pid| table.get(*pid).is_some());
        // A sender whose parent the table did not know at its first marker: ask now.
        let parents: Vec<(u32, Option<Principal>)> = threads
            .wanted
            .iter()
            .filter(|(_, r)| **r == WantReason::Markers)
            .filter_map(|(pid, _)| {
                let ppid = table.pool_parent(*pid)?;
                Some((ppid, threads.owners.get(pid).copied()))
            })
            .collect();
        for (ppid, owner) in parents {
            changes.extend(threads.request(ppid, WantReason::PoolParent, owner));
        }
        let mut candidates = Vec::new();
        let undecided: Vec<(u32, u32, String, u64)> = table
            .iter()
            .filter(|p| !threads.decided.contains(&p.pid))
            .map(|p| (p.pid, p.ppid, p.comm.clone(), p.start_ns))
            .collect();
        for (pid, ppid, comm, start_ns) in undecided {
            if threads.wanted.get(&ppid) == Some(&WantReason::PoolParent) {
                threads.decided.insert(pid);
                // The pool's children count against the share of whoever opted the pool in.
                let owner = threads.owners.get(&ppid).copied();
                changes.extend(threads.request(pid, WantReason::PoolChild, owner));
            } else if !threads.config.has_matchers {
                threads.decided.insert(pid);
            } else if crate::model::table::settled(start_ns, now)
                && candidates.len() < DECISIONS_PER_INTERVAL
            {
                // Decided once it has lived a little, as selection does: short-lived forks
                // never cost a /proc read.
                candidates.push(crate::model::select::ProcCandidate {
                    pid,
                    comm,
                    cgroup: None,
                });
            }
        }
        (changes, candidates, threads.config.matchers.clone())
    };
    // A matcher names processes, not owners (any user can call a process `celery`): each
    // chosen process counts against its uid's share too.
    let chosen: Vec<(u32, Option<u32>)> = candidates
        .iter()
        .filter(|c| matchers.selects(*c))
        .map(|c| (c.pid, crate::host::proc::real_uid(c.pid)))
        .collect();
    {
        let mut state = shared.state();
        for c in &candidates {
            Threads::of_mut(&mut state).decided.insert(c.pid);
        }
        for (pid, uid) in chosen {
            let Some(uid) = uid else {
                // Gone already.
                continue;
            };
            let cgroup = state
                .table
                .get(pid)
                .map(|p| p.cgroup_id)
                .filter(|id| *id != 0);
            let owner = Principal { uid, cgroup };
            changes.extend(Threads::of_mut(&mut state).request(
                pid,
                WantReason::Matcher,
                Some(owner),
            ));
        }
    }
    // 2. Tell the kernel.
    let refused = maps.apply(&changes);
    // 3. Read the kernel's numbers and prune entries of processes nobody wants any more.
    let entries = maps.all();
    let (tops, stale, count) = {
        let mut state = shared.state();
        Threads::of_mut(&mut state).refused_by_kernel(&refused);
        let wanted = &Threads::of(&state).wanted;
        let mut by_pid: HashMap<u32, Vec<(u32, ThreadStats)>> = HashMap::new();
        let mut stale = Vec::new();
        for (tid, t) in &entries {
            if wanted.contains_key(&t.tgid) {
                by_pid.entry(t.tgid).or_default().push((*tid, *t));
            } else {
                stale.push(*tid);
            }
        }
        (by_pid, stale, entries.len() as u64)
    };
    let removed = maps.remove(&stale);
    let top_n = Threads::of(&shared.state()).config.top_n;
    let views: HashMap<u32, Vec<ThreadView>> = tops
        .into_iter()
        .map(|(pid, threads)| {
            let all = threads
                .iter()
                .map(|(tid, t)| ThreadView::new(*tid, t, true))
                .collect();
            let mut best = top(all, top_n);
            // Only the shown threads are checked for liveness: a bounded number of stats.
            for v in &mut best {
                v.alive = crate::host::proc::thread_exists(pid, v.tid);
            }
            (pid, best)
        })
        .collect();
    let mut state = shared.state();
    let threads = Threads::of_mut(&mut state);
    threads.top = views;
    threads.entries = count.saturating_sub(removed);
    threads.removed += removed;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(tgid: u32, added: u64, removed: u64, mapped: u64) -> ThreadStats {
        let mut t = ThreadStats::new(tgid, *b"worker\0\0\0\0\0\0\0\0\0\0");
        t.rss_added = added;
        t.rss_removed = removed;
        t.mapped = mapped;
        t
    }

    #[test]
    fn top_ranks_by_rss_growth_then_mapping() {
        let views = vec![
            ThreadView::new(1, &stats(9, 10, 0, 0), true),
            ThreadView::new(2, &stats(9, 50, 10, 0), true),
            ThreadView::new(3, &stats(9, 40, 0, 100), true),
            ThreadView::new(4, &stats(9, 40, 0, 0), true),
        ];
        let best = top(views, 3);
        let tids: Vec<u32> = best.iter().map(|v| v.tid).collect();
        // Equal growth: more mapping first, then the lower tid.
        assert_eq!(tids, [3, 2, 4]);
        assert_eq!(best[0].rss_growth_bytes, 40);
        assert_eq!(best[0].comm, "worker");
    }

    #[test]
    fn requests_are_capped_and_counted() {
        let mut t = Threads::new(ThreadsConfig {
            max_processes: 2,
            ..ThreadsConfig::default()
        });
        assert_eq!(
            t.request(1, WantReason::Markers, None),
            None,
            "unavailable: no-op"
        );
        t.available = true;
        assert_eq!(t.request(1, WantReason::Markers, None), Some((1, true)));
        assert_eq!(
            t.request(1, WantReason::Markers, None),
            None,
            "already wanted"
        );
        assert_eq!(t.request(2, WantReason::Matcher, None), Some((2, true)));
        assert_eq!(t.request(3, WantReason::Matcher, None), None);
        assert_eq!(t.refused, 1);
        t.refused_by_kernel(&[2]);
        assert!(!t.wanted.contains_key(&2));
        assert_eq!(t.refused, 2);
    }

    #[test]
    fn one_uid_gets_a_share_of_per_thread_slots() {
        let mut t = Threads::new(ThreadsConfig {
            max_processes: 256,
            ..ThreadsConfig::default()
        });
        t.available = true;
        let squatter = Principal {
            uid: 65534,
            cgroup: Some(3),
        };
        let granted = (1000..1300)
            .filter(|pid| {
                t.request(*pid, WantReason::Matcher, Some(squatter))
                    .is_some()
            })
            .count();
        assert_eq!(granted, 64, "a quarter of 256");
        assert_eq!(t.share_refused(Over::Uid), 300 - 64);
        assert_eq!(t.refused, 0, "the table itself is far from full");
        // Other uids of the same container are held to the cgroup's share, twice a uid's.
        let granted = (0..100u32)
            .filter(|i| {
                let sibling = Principal {
                    uid: 100_000 + i,
                    cgroup: Some(3),
                };
                t.request(2000 + i, WantReason::Matcher, Some(sibling))
                    .is_some()
            })
            .count();
        assert_eq!(granted, 64);
        assert_eq!(t.share_refused(Over::Cgroup), 36);
        // Root's worker still gets its slot; a process that goes gives its slot back.
        assert!(
            t.request(1, WantReason::Markers, Some(Principal::uid(0)))
                .is_some()
        );
        t.forget(1000);
        assert!(
            t.request(1400, WantReason::Matcher, Some(squatter))
                .is_some()
        );
    }

    #[test]
    fn markers_turn_per_thread_accounting_on_only_for_opted_in_uids() {
        let mut state = AgentState::new(crate::model::state::Settings::default());
        state.features.insert(Threads::new(ThreadsConfig {
            marker_uids: vec![1000],
            ..ThreadsConfig::default()
        }));
        Threads::of_mut(&mut state).available = true;
        assert!(request_for_sender(&mut state, 42, Principal::uid(65534)).is_empty());
        assert!(
            Threads::of(&state).wanted.is_empty(),
            "not opted in: nothing turned on"
        );
        assert_eq!(
            request_for_sender(&mut state, 43, Principal::uid(1000)),
            [(43, true)]
        );
        assert_eq!(
            Threads::of(&state).wanted.get(&43),
            Some(&WantReason::Markers)
        );
    }
}
