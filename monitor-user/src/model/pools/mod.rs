//! Worker pools: children of one parent with one name (a prefork pool). Recycling (max tasks,
//! max memory, crashes) hides a leak from any per-process view; the pool's record of what its
//! children held when they went does not.
//!
//! Any local user can make a pool (a parent whose same-named children live a few seconds and
//! exit), so the table is shared: the processes of one uid may own at most a quarter of it,
//! that uid read from `/proc/<parent>/status` when a pool would be made.

mod live;

use std::collections::{HashMap, HashSet, VecDeque};

use serde::Serialize;

pub use self::live::{Live, MEMBERS_SHOWN, Member};
use crate::model::{
    detector::DetectorConfig,
    limits::Limit,
    table::{Exited, Process, ProcessTable},
};

const MIB: u64 = 1 << 20;
/// Exits remembered per pool.
const EXITS_KEPT: usize = 16;
/// Children living less than this are commands a shell ran, not workers.
const MIN_WORKER_LIFETIME_NS: u64 = 2_000_000_000;
/// Growth per child, from its first sample to its exit, that counts as holding on to memory.
const CHILD_GROWTH_BYTES: u64 = 16 * MIB;
/// Pools one uid may own: a quarter of `--max-pools`, at least this many (a host's own
/// services as root, or one user's few worker pools, fit in any configuration).
const SHARE_FLOOR: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecycleReason {
    /// Reached (90% of) its configured per-worker limit.
    Memory,
    /// Killed by the OOM killer.
    Oom,
    /// Killed by a signal other than a polite stop.
    Crash,
    /// A clean exit: max tasks reached, scaled down, or a memory limit the agent was not told.
    Clean,
}

impl RecycleReason {
    pub const ALL: [Self; 4] = [Self::Memory, Self::Oom, Self::Crash, Self::Clean];

    pub fn label(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Oom => "oom",
            Self::Crash => "crash",
            Self::Clean => "clean",
        }
    }

    /// Classifies an exit from what the kernel and the configuration say.
    pub fn classify(exit_code: u32, oom_killed: bool, peak: u64, limit: Option<u64>) -> Self {
        let signal = exit_code & 0x7f;
        if oom_killed {
            Self::Oom
        } else if limit.is_some_and(|l| peak.saturating_mul(10) >= l.saturating_mul(9)) {
            Self::Memory
        } else if signal != 0
            && ![libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT]
                .contains(&(signal as i32))
        {
            Self::Crash
        } else {
            Self::Clean
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ExitRecord {
    pub pid: u32,
    pub lifetime_secs: f64,
    pub resident_bytes: u64,
    pub peak_bytes: u64,
    /// Resident bytes at the agent's first sample of the child.
    pub first_sample_bytes: Option<u64>,
    pub reason: RecycleReason,
    /// When it exited, Unix seconds.
    pub unix_time: f64,
}

impl ExitRecord {
    fn growth(&self) -> Option<u64> {
        self.first_sample_bytes
            .map(|b| self.peak_bytes.max(self.resident_bytes).saturating_sub(b))
    }
}

#[derive(Clone, Debug)]
pub struct Pool {
    pub pool: String,
    pub parent_pid: u32,
    pub comm: String,
    pub recycles: u64,
    pub recycles_by_reason: HashMap<RecycleReason, u64>,
    pub recycles_for_memory: u64,
    pub leak_suspected: bool,
    /// Why the pool is suspected, in words.
    pub evidence: Option<String>,
    /// Set when recycling has become a loop (see [`live::thrash`]).
    pub thrash: Option<String>,
    pub exits: VecDeque<ExitRecord>,
    /// The children and parent now; `None` until the first assessment that sees the pool.
    pub live: Option<Live>,
}

impl Pool {
    fn new(parent_pid: u32, comm: &str) -> Self {
        Self {
            pool: format!("{parent_pid}/{comm}"),
            parent_pid,
            comm: comm.to_string(),
            recycles: 0,
            recycles_by_reason: RecycleReason::ALL.iter().map(|r| (*r, 0)).collect(),
            recycles_for_memory: 0,
            leak_suspected: false,
            evidence: None,
            thrash: None,
            exits: VecDeque::new(),
            live: None,
        }
    }

    /// Live children now (0 before the pool was first seen alive).
    pub fn children(&self) -> usize {
        self.live.as_ref().map_or(0, |l| l.children)
    }

    fn record(&mut self, exit: ExitRecord) {
        self.recycles += 1;
        *self.recycles_by_reason.entry(exit.reason).or_default() += 1;
        if matches!(exit.reason, RecycleReason::Memory | RecycleReason::Oom) {
            self.recycles_for_memory += 1;
        }
        if self.exits.len() == EXITS_KEPT {
            self.exits.pop_front();
        }
        self.exits.push_back(exit);
        self.rejudge();
    }

    /// Re-reads the evidence, and logs the verdict when it changes (it changes only on an
    /// exit or on a member's verdict, which holds before it changes, so this does not flap).
    fn rejudge(&mut self) {
        self.thrash = live::thrash(&self.exits);
        let evidence = self
            .judge_exits()
            .or_else(|| self.live.as_ref().and_then(Live::judge));
        let suspected = evidence.is_some();
        if suspected != self.leak_suspected {
            match &evidence {
                Some(why) => log::warn!("pool {} is suspected of leaking: {why}", self.pool),
                None => log::info!("pool {} is no longer suspected", self.pool),
            }
        }
        self.leak_suspected = suspected;
        self.evidence = match (evidence, &self.thrash) {
            (Some(why), Some(thrash)) => Some(format!("{why}; {thrash}")),
            (why, _) => why,
        };
    }

    /// A pool leaks when its children keep being recycled for memory, or keep growing a lot
    /// between their start and their recycling.
    fn judge_exits(&self) -> Option<String> {
        let for_memory = self
            .exits
            .iter()
            .filter(|e| matches!(e.reason, RecycleReason::Memory | RecycleReason::Oom))
            .count();
        if for_memory >= 2 {
            return Some(format!(
                "{for_memory} of the last {} children were recycled for memory",
                self.exits.len()
            ));
        }
        let recent: Vec<u64> = self
            .exits
            .iter()
            .rev()
            .take(3)
            .filter_map(ExitRecord::growth)
            .collect();
        if recent.len() == 3 && recent.iter().all(|g| *g >= CHILD_GROWTH_BYTES) {
            let least = recent.iter().min().copied().unwrap_or(0);
            return Some(format!(
                "each of the last 3 children grew by at least {} MiB before it was recycled",
                least / MIB
            ));
        }
        None
    }
}

/// Pools by (parent pid, child name), bounded, with a share per uid.
#[derive(Debug)]
pub struct Pools {
    /// Each pool with the uid of its parent (`None`: unknown, charged to nobody).
    pools: HashMap<(u32, String), (Pool, Option<u32>)>,
    max_pools: usize,
    share: usize,
    by_uid: HashMap<u32, usize>,
    uid_of: fn(u32) -> Option<u32>,
    /// Recycles not recorded because `max_pools` pools exist already, or because the parent's
    /// uid owns its share of them.
    pub overflow_recycles: u64,
    /// Of those, the ones refused for the uid's share.
    pub share_refused: u64,
    /// Live pools not made for the same reasons, each counted once.
    pub overflow_pools: u64,
    /// Those pools, bounded by the processes that make them.
    refused: HashSet<(u32, String)>,
}

impl Pools {
    pub fn new(max_pools: usize) -> Self {
        Self::with_uids(max_pools, crate::host::proc::real_uid)
    }

    /// With another way to learn a parent's uid (tests).
    pub fn with_uids(max_pools: usize, uid_of: fn(u32) -> Option<u32>) -> Self {
        Self {
            pools: HashMap::new(),
            max_pools,
            share: (max_pools / 4).max(SHARE_FLOOR).min(max_pools),
            by_uid: HashMap::new(),
            uid_of,
            overflow_recycles: 0,
            share_refused: 0,
            overflow_pools: 0,
            refused: HashSet::new(),
        }
    }

    /// The most pools one uid may own.
    pub fn share(&self) -> usize {
        self.share
    }

    /// Records a child's exit when it belongs to a pool: its parent lives on and either still
    /// runs siblings of the same name or is already known as a pool.
    pub fn on_exit(
        &mut self,
        exited: &Exited,
        parent_alive: bool,
        live_siblings: usize,
        first_sample_bytes: Option<u64>,
        reason: RecycleReason,
        unix_time: f64,
    ) -> Option<&Pool> {
        if !parent_alive || exited.ppid <= 1 || exited.lifetime_ns < MIN_WORKER_LIFETIME_NS {
            return None;
        }
        let key = (exited.ppid, exited.comm.clone());
        if !self.pools.contains_key(&key) {
            if live_siblings == 0 {
                return None;
            }
            if !self.admit(&key) {
                self.overflow_recycles += 1;
                return None;
            }
        }
        let (pool, _) = self.pools.get_mut(&key)?;
        pool.record(ExitRecord {
            pid: exited.pid,
            lifetime_secs: exited.lifetime_ns as f64 / 1e9,
            resident_bytes: exited.resident_bytes,
            peak_bytes: exited.peak_bytes,
            first_sample_bytes,
            reason,
            unix_time,
        });
        Some(pool)
    }

    /// Makes the pool `key` if the table and its parent's uid have room for it.
    fn admit(&mut self, key: &(u32, String)) -> bool {
        if self.pools.len() >= self.max_pools {
            return false;
        }
        // Read only here, when a pool would be made: one small read per new pool.
        let uid = (self.uid_of)(key.0);
        if let Some(uid) = uid {
            let owned = self.by_uid.entry(uid).or_insert(0);
            if *owned >= self.share {
                self.share_refused += 1;
                return false;
            }
            *owned += 1;
        }
        self.pools
            .insert(key.clone(), (Pool::new(key.0, &key.1), uid));
        true
    }

    /// Takes every pool's live processes at an assessment: a parent running several
    /// same-named children that have outlived shell commands is a pool from then on, before
    /// any child is recycled. `limit_of` gives the limit a process runs into.
    pub fn observe_live(
        &mut self,
        table: &ProcessTable,
        cfg: &DetectorConfig,
        now_ns: u64,
        mut limit_of: impl FnMut(&Process) -> Option<Limit>,
    ) {
        // Keyed by borrowed names: every process is grouped at every assessment, and only
        // a group that may become a pool needs a key of its own.
        let mut groups: foldhash::HashMap<(u32, &str), Vec<&Process>> =
            foldhash::HashMap::default();
        for p in table.iter() {
            if p.ppid > 1 && now_ns.saturating_sub(p.start_ns) >= MIN_WORKER_LIFETIME_NS {
                groups.entry((p.ppid, p.comm.as_str())).or_default().push(p);
            }
        }
        // A refused group is not asked again while it lives: each ask reads its parent's uid.
        self.refused
            .retain(|(ppid, comm)| groups.contains_key(&(*ppid, comm.as_str())));
        for (&(ppid, comm), children) in &groups {
            if children.len() < 2 || table.get(ppid).is_none() {
                continue;
            }
            let key = (ppid, comm.to_string());
            if !self.pools.contains_key(&key) && !self.refused.contains(&key) && !self.admit(&key) {
                self.overflow_pools += 1;
                self.refused.insert(key);
            }
        }
        for ((ppid, comm), (pool, _)) in &mut self.pools {
            let children = groups
                .get(&(*ppid, comm.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let parent = table.get(*ppid);
            // The children's cgroup is the one they share; a pool between recycles with no
            // child left runs into its parent's.
            let limit = children.first().copied().or(parent).and_then(&mut limit_of);
            pool.live
                .get_or_insert_with(|| Live::new(cfg, now_ns))
                .observe(cfg, now_ns, parent, children, limit);
            pool.rejudge();
        }
    }

    /// A parent that exits takes its pools with it, and gives its uid's share back.
    pub fn parent_exited(&mut self, pid: u32) {
        let by_uid = &mut self.by_uid;
        self.pools.retain(|(parent, _), (_, uid)| {
            if *parent != pid {
                return true;
            }
            if let Some(uid) = uid
                && let Some(n) = by_uid.get_mut(uid)
            {
                *n -= 1;
                if *n == 0 {
                    by_uid.remove(uid);
                }
            }
            false
        });
    }

    pub fn name_of(&self, parent_pid: u32, comm: &str) -> Option<&str> {
        self.pools
            .get(&(parent_pid, comm.to_string()))
            .map(|(p, _)| p.pool.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Pool> {
        self.pools.values().map(|(p, _)| p)
    }

    pub fn len(&self) -> usize {
        self.pools.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(pid: u32, ppid: u32, peak_mib: u64, lifetime_s: u64) -> Exited {
        Exited {
            pid,
            ppid,
            comm: "celery".into(),
            cgroup_id: 0,
            lifetime_ns: lifetime_s * 1_000_000_000,
            resident_bytes: peak_mib * MIB,
            peak_bytes: peak_mib * MIB,
            exit_code: 0,
        }
    }

    #[test]
    fn children_that_grow_before_recycling_flag_the_pool() {
        let mut pools = Pools::new(10);
        for (i, peak) in [150, 160, 170].into_iter().enumerate() {
            let p = pools
                .on_exit(
                    &exit(100 + i as u32, 10, peak, 60),
                    true,
                    1,
                    Some(40 * MIB),
                    RecycleReason::Clean,
                    0.0,
                )
                .unwrap();
            assert_eq!(p.leak_suspected, i == 2, "after {} exits", i + 1);
        }
        let p = pools.iter().next().unwrap();
        assert_eq!(p.pool, "10/celery");
        assert_eq!(p.recycles, 3);
        assert!(
            p.evidence
                .as_deref()
                .unwrap()
                .contains("grew by at least 110 MiB")
        );
    }

    #[test]
    fn steady_children_do_not_flag_the_pool() {
        let mut pools = Pools::new(10);
        for i in 0..5 {
            pools.on_exit(
                &exit(100 + i, 10, 42, 60),
                true,
                1,
                Some(40 * MIB),
                RecycleReason::Clean,
                0.0,
            );
        }
        let p = pools.iter().next().unwrap();
        assert_eq!(p.recycles, 5);
        assert!(!p.leak_suspected);
    }

    #[test]
    fn memory_recycles_flag_the_pool() {
        let mut pools = Pools::new(10);
        pools.on_exit(
            &exit(1, 10, 900, 60),
            true,
            1,
            None,
            RecycleReason::Memory,
            0.0,
        );
        assert!(!pools.iter().next().unwrap().leak_suspected);
        pools.on_exit(
            &exit(2, 10, 900, 60),
            true,
            1,
            None,
            RecycleReason::Memory,
            0.0,
        );
        let p = pools.iter().next().unwrap();
        assert!(p.leak_suspected);
        assert_eq!(p.recycles_for_memory, 2);
        assert_eq!(p.recycles_by_reason[&RecycleReason::Memory], 2);
    }

    #[test]
    fn shell_commands_and_orphans_are_not_pools() {
        let mut pools = Pools::new(10);
        assert!(
            pools
                .on_exit(&exit(1, 10, 1, 0), true, 3, None, RecycleReason::Clean, 0.0)
                .is_none(),
            "short-lived"
        );
        assert!(
            pools
                .on_exit(
                    &exit(2, 10, 1, 60),
                    false,
                    3,
                    None,
                    RecycleReason::Clean,
                    0.0
                )
                .is_none(),
            "parent gone"
        );
        assert!(
            pools
                .on_exit(&exit(3, 1, 1, 60), true, 3, None, RecycleReason::Clean, 0.0)
                .is_none(),
            "init's child"
        );
        assert!(
            pools
                .on_exit(
                    &exit(4, 10, 1, 60),
                    true,
                    0,
                    None,
                    RecycleReason::Clean,
                    0.0
                )
                .is_none(),
            "no siblings"
        );
        assert!(pools.is_empty());
    }

    #[test]
    fn pools_are_bounded_and_die_with_their_parent() {
        let mut pools = Pools::new(1);
        pools.on_exit(
            &exit(1, 10, 1, 60),
            true,
            1,
            None,
            RecycleReason::Clean,
            0.0,
        );
        assert!(
            pools
                .on_exit(
                    &exit(2, 11, 1, 60),
                    true,
                    1,
                    None,
                    RecycleReason::Clean,
                    0.0
                )
                .is_none()
        );
        assert_eq!(pools.overflow_recycles, 1);
        pools.parent_exited(10);
        assert!(pools.is_empty());
    }

    #[test]
    fn one_uid_owns_at_most_a_share_of_the_pools() {
        // Parents 100..199 belong to uid 65534, the rest to root.
        let mut pools = Pools::with_uids(64, |ppid| {
            Some(if (100..200).contains(&ppid) { 65534 } else { 0 })
        });
        assert_eq!(pools.share(), 16);
        for ppid in 100..150 {
            pools.on_exit(
                &exit(ppid * 10, ppid, 1, 60),
                true,
                1,
                None,
                RecycleReason::Clean,
                0.0,
            );
        }
        assert_eq!(pools.len(), 16);
        assert_eq!(pools.share_refused, 34);
        assert_eq!(pools.overflow_recycles, 34);
        // Root's Celery pool is still tracked.
        let p = pools.on_exit(
            &exit(5001, 10, 1, 60),
            true,
            1,
            None,
            RecycleReason::Clean,
            0.0,
        );
        assert_eq!(p.map(|p| p.pool.as_str()), Some("10/celery"));
        // A parent that exits gives its place back to its uid.
        pools.parent_exited(100);
        assert!(
            pools
                .on_exit(
                    &exit(1990, 199, 1, 60),
                    true,
                    1,
                    None,
                    RecycleReason::Clean,
                    0.0
                )
                .is_some()
        );
        assert_eq!(pools.share_refused, 34);
    }

    mod live {
        use super::*;
        use crate::{
            host::proc::ProcSnapshot,
            model::{
                detector::{Assessment, Verdict},
                leaks::LeakState,
                limits::LimitSource,
            },
        };

        const SEC: u64 = 1_000_000_000;

        fn snap(pid: u32, ppid: u32, mib: u64, start_ns: u64) -> ProcSnapshot {
            ProcSnapshot {
                pid,
                ppid,
                comm: "celery".into(),
                start_ns,
                rss: [0, mib * MIB, 0, 0],
                peak_bytes: mib * MIB,
            }
        }

        fn table(procs: &[(u32, u32, u64)]) -> ProcessTable {
            let mut t = ProcessTable::default();
            t.seed(
                procs
                    .iter()
                    .map(|&(pid, ppid, mib)| snap(pid, ppid, mib, SEC)),
            );
            t
        }

        fn grow(t: &mut ProcessTable, pid: u32, mib: u64) {
            let p = t.get_mut(pid).unwrap();
            let ppid = p.ppid;
            p.set_seed(snap(pid, ppid, mib, SEC));
        }

        fn root(_: u32) -> Option<u32> {
            Some(0)
        }

        #[test]
        fn a_parent_with_two_long_lived_children_is_a_pool_before_any_recycle() {
            let t = table(&[(10, 1, 50), (11, 10, 100), (12, 10, 120), (13, 10, 1)]);
            let mut pools = Pools::with_uids(8, root);
            pools.observe_live(&t, &DetectorConfig::default(), 60 * SEC, |_| None);
            let p = pools.iter().next().expect("a live pool");
            assert_eq!((p.pool.as_str(), p.recycles), ("10/celery", 0));
            let live = p.live.as_ref().unwrap();
            assert_eq!(live.children, 3);
            assert_eq!(live.children_bytes, 221 * MIB);
            assert_eq!(live.members[0].pid, 12, "largest first");
            assert_eq!(live.parent.as_ref().unwrap().resident_bytes, 50 * MIB);
            assert_eq!(live.total_bytes(), 271 * MIB);
            assert!(!p.leak_suspected);
        }

        #[test]
        fn one_child_or_children_younger_than_a_worker_make_no_pool() {
            let mut pools = Pools::with_uids(8, root);
            let single = table(&[(10, 1, 50), (11, 10, 100)]);
            pools.observe_live(&single, &DetectorConfig::default(), 60 * SEC, |_| None);
            assert!(pools.is_empty());
            // A shell running two commands for a second.
            let young = table(&[(20, 1, 5), (21, 20, 1), (22, 20, 1)]);
            pools.observe_live(&young, &DetectorConfig::default(), 2 * SEC, |_| None);
            assert!(pools.is_empty());
            // Orphans, reparented to init, are nobody's pool.
            let orphans = table(&[(31, 1, 1), (32, 1, 1)]);
            pools.observe_live(&orphans, &DetectorConfig::default(), 60 * SEC, |_| None);
            assert!(pools.is_empty());
        }

        #[test]
        fn a_leaking_parent_is_named_as_the_leaking_member() {
            let cfg = DetectorConfig::default();
            let mut t = table(&[(10, 1, 300), (11, 10, 100), (12, 10, 100)]);
            let mut leak = LeakState::new(&cfg, SEC, 300 * MIB);
            leak.assessment = Assessment {
                verdict: Verdict::Leaking,
                confidence: 0.9,
                rate_bytes_per_sec: 10.0 * MIB as f64 / 3600.0,
                window_secs: 600.0,
                floor_rise_bytes: 20.0 * MIB as f64,
                consistency: 1.0,
                samples: 600,
            };
            t.get_mut(10).unwrap().leak = Some(leak);
            let mut pools = Pools::with_uids(8, root);
            pools.observe_live(&t, &cfg, 60 * SEC, |_| None);
            let p = pools.iter().next().unwrap();
            assert!(p.leak_suspected);
            let why = p.evidence.as_deref().unwrap();
            assert!(
                why.contains("parent (pid 10) itself leaks at 10.0 MiB/h"),
                "{why}"
            );
        }

        #[test]
        fn the_pool_total_heads_for_the_limit_its_children_share() {
            let cfg = DetectorConfig::default();
            let mut t = table(&[(10, 1, 50), (11, 10, 100), (12, 10, 100)]);
            let mut pools = Pools::with_uids(8, root);
            let limit = |p: &Process| {
                Some(Limit {
                    limit_bytes: 2048 * MIB,
                    used_bytes: p.resident_bytes(),
                    source: LimitSource::Cgroup,
                })
            };
            // Each child in turn is set to 100 MiB + the step: each grows 2 MiB per 20 s, so
            // the pool grows 12 MiB/min, for 15 minutes.
            let mut last = None;
            for step in 0..90u64 {
                grow(&mut t, 11 + (step % 2) as u32, 100 + step);
                pools.observe_live(&t, &cfg, (120 + step * 10) * SEC, limit);
                last = pools.iter().next().and_then(|p| p.live.clone());
            }
            let live = last.unwrap();
            assert_ne!(live.total_assessment.verdict, Verdict::Stable);
            let rate_mib_min = live.total_assessment.rate_bytes_per_sec * 60.0 / MIB as f64;
            assert!((rate_mib_min - 12.0).abs() < 1.5, "{rate_mib_min} MiB/min");
            let left = live.time_to_limit_secs.expect("a time to limit");
            assert!(left > 0.0 && left.is_finite(), "{left}");
            assert_eq!(live.limit.unwrap().source, LimitSource::Cgroup);
        }

        #[test]
        fn children_that_start_near_their_recycle_size_are_a_recycle_loop() {
            let mut pools = Pools::with_uids(8, root);
            for i in 0..3 {
                pools.on_exit(
                    &exit(100 + i, 10, 500, 20),
                    true,
                    1,
                    Some(450 * MIB),
                    RecycleReason::Memory,
                    0.0,
                );
            }
            let p = pools.iter().next().unwrap();
            let thrash = p.thrash.as_deref().expect("a recycle loop");
            assert!(
                thrash.contains("3 children recycled for memory"),
                "{thrash}"
            );
            assert!(p.evidence.as_deref().unwrap().contains("recycle loop"));
            // Children that grew from small before their recycle are a leak, not a loop.
            let mut growing = Pools::with_uids(8, root);
            for i in 0..3 {
                growing.on_exit(
                    &exit(200 + i, 20, 500, 600),
                    true,
                    1,
                    Some(60 * MIB),
                    RecycleReason::Memory,
                    0.0,
                );
            }
            let p = growing.iter().next().unwrap();
            assert!(p.leak_suspected && p.thrash.is_none());
        }

        #[test]
        fn live_pools_share_the_bound_and_a_refused_one_is_counted_once() {
            let t = table(&[
                (10, 1, 1),
                (11, 10, 1),
                (12, 10, 1),
                (20, 1, 1),
                (21, 20, 1),
                (22, 20, 1),
            ]);
            let mut pools = Pools::with_uids(1, root);
            for _ in 0..5 {
                pools.observe_live(&t, &DetectorConfig::default(), 60 * SEC, |_| None);
            }
            assert_eq!((pools.len(), pools.overflow_pools), (1, 1));
        }
    }

    #[test]
    fn reasons_from_exit_codes() {
        use RecycleReason::*;
        assert_eq!(RecycleReason::classify(0, true, 0, None), Oom);
        assert_eq!(RecycleReason::classify(0, false, 95, Some(100)), Memory);
        assert_eq!(
            RecycleReason::classify(libc::SIGSEGV as u32, false, 1, Some(100)),
            Crash
        );
        assert_eq!(
            RecycleReason::classify(libc::SIGTERM as u32, false, 1, None),
            Clean
        );
        assert_eq!(
            RecycleReason::classify(1 << 8, false, 1, None),
            Clean,
            "exit(1)"
        );
    }
}
