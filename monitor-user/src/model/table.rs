//! The agent's process table: seeded once from `/proc`, then kept current by kernel events
//! and the kernel's per-process map.

use std::collections::HashMap;

use monitor_common::{EventKind, LifecycleEvent, ProcStats, RssKind, TASK_RSS_EXACT, TaskRecord};
use serde::Serialize;

use crate::{host::container::ContainerInfo, host::proc::ProcSnapshot, model::leaks::LeakState};

/// Where a number came from: the kernel's own counters, or a `/proc` read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Kernel,
    Proc,
    Unknown,
}

/// How long a process lives before the agent decides about it with /proc reads (selection,
/// `--threads-for`): short-lived forks never cost one.
pub const SETTLE_NS: u64 = 500_000_000;

/// Whether a process started at `start_ns` has lived [`SETTLE_NS`] by `now_ns`. A start of 0
/// is unknown, and counts as long ago.
pub fn settled(start_ns: u64, now_ns: u64) -> bool {
    start_ns == 0 || now_ns.saturating_sub(start_ns) >= SETTLE_NS
}

#[derive(Clone, Debug)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    /// `CLOCK_BOOTTIME` ns at fork (kernel) or at clock-tick resolution (seed).
    pub start_ns: u64,
    /// Last exec, or start: the detector's warm-up begins here.
    pub exec_ns: u64,
    pub cgroup_id: u64,
    pub cgroup_path: Option<String>,
    /// Path in the v1 memory hierarchy, on hosts that still have one.
    pub memcg_v1_path: Option<String>,
    /// `None` until the selector has looked at this process.
    pub selected: Option<bool>,
    /// A per-worker limit given with `--limit`.
    pub configured_limit: Option<u64>,
    /// Container and pod, derived from `/proc/<pid>/cgroup` when selection reads it.
    pub container: ContainerInfo,
    pub leak: Option<LeakState>,
    /// From the task iterator: whether its RSS is the exact per-CPU sum. `None` when the
    /// numbers come from elsewhere (rss_stat events, /proc).
    pub rss_exact: Option<bool>,
    kernel: Option<ProcStats>,
    seed: Option<ProcSnapshot>,
}

impl Process {
    fn from_snapshot(s: ProcSnapshot) -> Self {
        Self {
            pid: s.pid,
            ppid: s.ppid,
            comm: s.comm.clone(),
            start_ns: s.start_ns,
            exec_ns: s.start_ns,
            cgroup_id: 0,
            cgroup_path: None,
            memcg_v1_path: None,
            selected: None,
            configured_limit: None,
            container: ContainerInfo::default(),
            leak: None,
            rss_exact: None,
            kernel: None,
            seed: Some(s),
        }
    }

    /// A process first seen by the task iterator: everything needed is in the record.
    fn from_record(r: &TaskRecord) -> Self {
        let mut p = Self {
            pid: r.pid,
            ppid: r.ppid,
            comm: comm_str(&r.comm),
            start_ns: r.start_ns,
            exec_ns: r.start_ns,
            cgroup_id: r.cgroup_id,
            cgroup_path: None,
            memcg_v1_path: None,
            selected: None,
            configured_limit: None,
            container: ContainerInfo::default(),
            leak: None,
            rss_exact: None,
            kernel: None,
            seed: None,
        };
        p.take_record(r);
        p
    }

    fn take_record(&mut self, r: &TaskRecord) {
        let mut k = ProcStats::new(r.start_ns, r.ppid, r.cgroup_id);
        k.rss = r.rss;
        // The kernel's high-water mark is taken from its batched counter: an earlier exact
        // snapshot may have seen more.
        k.peak_bytes = r
            .peak_bytes
            .max(self.kernel.map_or(0, |old| old.peak_bytes));
        self.kernel = Some(k);
        if self.start_ns == 0 {
            self.start_ns = r.start_ns;
        }
        self.rss_exact = Some(r.flags & TASK_RSS_EXACT != 0);
        if r.cgroup_id != 0 && r.cgroup_id != self.cgroup_id {
            self.cgroup_id = r.cgroup_id;
            self.cgroup_path = None;
        }
        if r.ppid != 0 {
            // Reparenting (the parent died) changes it; pools follow the live parent.
            self.ppid = r.ppid;
        }
    }

    fn from_fork(ev: &LifecycleEvent) -> Self {
        Self {
            pid: ev.pid,
            ppid: ev.ppid,
            comm: comm_str(&ev.comm),
            start_ns: ev.ts_ns,
            exec_ns: ev.ts_ns,
            cgroup_id: ev.cgroup_id,
            cgroup_path: None,
            memcg_v1_path: None,
            selected: None,
            configured_limit: None,
            container: ContainerInfo::default(),
            leak: None,
            rss_exact: None,
            kernel: None,
            seed: None,
        }
    }

    pub fn rss(&self, kind: RssKind) -> (u64, Source) {
        if let Some(v) = self
            .kernel
            .map(|k| k.rss[kind as usize])
            .filter(|v| *v >= 0)
        {
            return (v as u64, Source::Kernel);
        }
        match &self.seed {
            Some(s) => (s.rss[kind as usize], Source::Proc),
            None => (0, Source::Unknown),
        }
    }

    /// Resident bytes: file + anon + shmem (swap is not resident).
    pub fn resident_bytes(&self) -> u64 {
        [RssKind::File, RssKind::Anon, RssKind::Shmem]
            .into_iter()
            .map(|k| self.rss(k).0)
            .sum()
    }

    pub fn peak_bytes(&self) -> u64 {
        let kernel = self.kernel.map_or(0, |k| k.peak_bytes);
        let seed = self.seed.as_ref().map_or(0, |s| s.peak_bytes);
        kernel.max(seed).max(self.resident_bytes())
    }

    /// True when some member is known neither from the kernel nor from `/proc`.
    pub fn needs_seed(&self) -> bool {
        self.seed.is_none()
            && RssKind::ALL
                .into_iter()
                .any(|k| self.rss(k).1 == Source::Unknown)
    }

    pub fn set_seed(&mut self, s: ProcSnapshot) {
        if self.comm.is_empty() {
            self.comm.clone_from(&s.comm);
        }
        if self.start_ns == 0 {
            self.start_ns = s.start_ns;
        }
        self.seed = Some(s);
    }
}

/// A process that has left the table, with what it held at the end.
#[derive(Clone, Debug)]
pub struct Exited {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub lifetime_ns: u64,
    pub resident_bytes: u64,
    pub peak_bytes: u64,
    /// The kernel's `exit_code`: status << 8, or the killing signal in the low 7 bits.
    pub exit_code: u32,
}

#[derive(Debug, Default)]
pub struct ProcessTable {
    /// Every interval looks each process up a few times: a fast hasher, see Cargo.toml.
    procs: foldhash::HashMap<u32, Process>,
}

impl ProcessTable {
    pub fn seed(&mut self, snapshots: impl IntoIterator<Item = ProcSnapshot>) {
        for s in snapshots {
            self.procs
                .entry(s.pid)
                .or_insert_with(|| Process::from_snapshot(s));
        }
    }

    /// Applies one lifecycle event; returns the process that left, for exits.
    pub fn apply(&mut self, ev: &LifecycleEvent) -> Option<Exited> {
        match EventKind::from_u32(ev.kind)? {
            EventKind::Fork => {
                // Replaces any earlier holder of the pid: numbers never carry across reuse.
                self.procs.insert(ev.pid, Process::from_fork(ev));
                None
            }
            EventKind::Exec => {
                let p = self.procs.entry(ev.pid).or_insert_with(|| {
                    // Its fork was not seen (no fork probe by default): the start is unknown
                    // until the next snapshot gives it.
                    let mut p = Process::from_fork(ev);
                    p.start_ns = 0;
                    p
                });
                p.comm = comm_str(&ev.comm);
                p.exec_ns = ev.ts_ns;
                p.cgroup_id = ev.cgroup_id;
                p.cgroup_path = None;
                p.selected = None;
                // The /proc numbers described the old address space.
                p.seed = None;
                None
            }
            EventKind::Exit => {
                let rss = |k: RssKind| ev.rss[k as usize].max(0) as u64;
                let at_exit = rss(RssKind::File) + rss(RssKind::Anon) + rss(RssKind::Shmem);
                let Some(p) = self.procs.remove(&ev.pid) else {
                    // Born and gone between two snapshots: the exit program's numbers are
                    // all there is. Its lifetime is unknown (0), so no pool counts it.
                    return Some(Exited {
                        pid: ev.pid,
                        ppid: ev.ppid,
                        comm: comm_str(&ev.comm),
                        cgroup_id: ev.cgroup_id,
                        lifetime_ns: 0,
                        resident_bytes: at_exit,
                        peak_bytes: ev.peak_bytes.max(at_exit),
                        exit_code: ev.exit_code,
                    });
                };
                Some(Exited {
                    pid: p.pid,
                    ppid: if p.ppid == 0 { ev.ppid } else { p.ppid },
                    comm: p.comm.clone(),
                    cgroup_id: p.cgroup_id,
                    // A start of 0 is unknown (seen at exec, gone before any snapshot).
                    lifetime_ns: if p.start_ns == 0 {
                        0
                    } else {
                        ev.ts_ns.saturating_sub(p.start_ns)
                    },
                    resident_bytes: if at_exit > 0 {
                        at_exit
                    } else {
                        p.resident_bytes()
                    },
                    peak_bytes: p.peak_bytes().max(ev.peak_bytes),
                    exit_code: ev.exit_code,
                })
            }
            EventKind::OomKill => None,
        }
    }

    /// Takes the kernel's current per-process numbers. Entries for pids the table does not
    /// know (their fork predates the agent, or its event was lost) are returned to be seeded.
    pub fn sync_kernel(&mut self, kernel: &HashMap<u32, ProcStats>) -> Vec<u32> {
        for (pid, p) in &mut self.procs {
            p.kernel = kernel
                .get(pid)
                // A kernel entry from a later fork than ours belongs to a newer process.
                .filter(|k| k.start_ns == 0 || k.start_ns == p.start_ns)
                .copied();
            if let Some(k) = p.kernel
                && k.cgroup_id != 0
                && k.cgroup_id != p.cgroup_id
            {
                p.cgroup_id = k.cgroup_id;
                p.cgroup_path = None;
            }
        }
        kernel
            .keys()
            .filter(|pid| !self.procs.contains_key(pid))
            .copied()
            .collect()
    }

    /// Takes the task iterator's snapshot: every live process with an address space. A pid
    /// the table lacks, or holds for an earlier process (its start differs), is added from
    /// its record without a /proc read. Returns the processes this snapshot is the first
    /// kernel reading of.
    pub fn sync_snapshot(&mut self, records: &[TaskRecord]) -> Vec<u32> {
        let mut first = Vec::new();
        for r in records {
            match self.procs.get_mut(&r.pid) {
                Some(p) if same_start(p.start_ns, r.start_ns) => {
                    if p.kernel.is_none() {
                        first.push(r.pid);
                    }
                    p.take_record(r);
                }
                _ => {
                    self.procs.insert(r.pid, Process::from_record(r));
                    first.push(r.pid);
                }
            }
        }
        first
    }

    pub fn adopt(&mut self, snapshot: ProcSnapshot, kernel: Option<ProcStats>) {
        let mut p = Process::from_snapshot(snapshot);
        p.kernel = kernel;
        self.procs.insert(p.pid, p);
    }

    pub fn remove(&mut self, pid: u32) -> Option<Process> {
        self.procs.remove(&pid)
    }

    /// The parent of `pid` when it is a worker pool's parent: a prefork master and its workers
    /// share one name. Init (and pid 1 of a container) is nobody's pool.
    pub fn pool_parent(&self, pid: u32) -> Option<u32> {
        let p = self.get(pid)?;
        let parent = self.get(p.ppid)?;
        (p.ppid > 1 && parent.comm == p.comm).then_some(p.ppid)
    }

    pub fn get(&self, pid: u32) -> Option<&Process> {
        self.procs.get(&pid)
    }

    pub fn get_mut(&mut self, pid: u32) -> Option<&mut Process> {
        self.procs.get_mut(&pid)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Process> {
        self.procs.values()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Process> {
        self.procs.values_mut()
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }
}

/// Start times from /proc have clock-tick resolution and fork events are stamped just after
/// the kernel's own start time: within 50 ms is the same process. 0 is unknown.
pub fn same_start(a: u64, b: u64) -> bool {
    a == 0 || b == 0 || a.abs_diff(b) < 50_000_000
}

pub fn comm_str(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use monitor_common::RSS_UNKNOWN;

    use super::*;

    const MIB: u64 = 1 << 20;

    fn comm(s: &str) -> [u8; 16] {
        let mut c = [0; 16];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    fn ev(kind: EventKind, pid: u32, ts_ns: u64) -> LifecycleEvent {
        LifecycleEvent {
            kind: kind as u32,
            pid,
            ppid: 1,
            exit_code: 0,
            ts_ns,
            cgroup_id: 9,
            comm: comm("worker"),
            rss: [RSS_UNKNOWN; 4],
            peak_bytes: 0,
        }
    }

    fn stats(start_ns: u64, anon: i64) -> ProcStats {
        let mut s = ProcStats::new(start_ns, 1, 9);
        s.rss = [MIB as i64, anon, 0, 0];
        s.peak_bytes = MIB + anon as u64;
        s
    }

    fn snapshot(pid: u32, anon: u64) -> ProcSnapshot {
        ProcSnapshot {
            pid,
            ppid: 1,
            comm: "old".into(),
            start_ns: 5,
            rss: [0, anon, 0, 0],
            peak_bytes: anon,
        }
    }

    #[test]
    fn a_process_settles_after_half_a_second() {
        assert!(!settled(1_000, 1_000 + SETTLE_NS - 1));
        assert!(settled(1_000, 1_000 + SETTLE_NS));
        assert!(settled(0, 1), "an unknown start is long ago");
        assert!(!settled(5_000, 1_000), "a start after now is not settled");
    }

    #[test]
    fn a_pool_parent_has_its_child_name_and_is_not_init() {
        let mut t = ProcessTable::default();
        let proc = |pid, ppid, comm: &str| ProcSnapshot {
            ppid,
            comm: comm.into(),
            ..snapshot(pid, 0)
        };
        t.seed([
            proc(1, 0, "celery"),
            proc(10, 1, "celery"),
            proc(11, 10, "celery"),
            proc(12, 10, "bash"),
            proc(13, 99, "celery"),
        ]);
        assert_eq!(t.pool_parent(11), Some(10));
        assert_eq!(t.pool_parent(12), None, "another name");
        assert_eq!(t.pool_parent(10), None, "init is nobody's pool");
        assert_eq!(t.pool_parent(13), None, "a parent the table does not know");
        assert_eq!(t.pool_parent(14), None);
    }

    #[test]
    fn kernel_numbers_win_over_the_seed() {
        let mut t = ProcessTable::default();
        t.seed([snapshot(10, 3 * MIB)]);
        assert_eq!(
            t.get(10).unwrap().rss(RssKind::Anon),
            (3 * MIB, Source::Proc)
        );
        t.sync_kernel(&HashMap::from([(10, stats(0, 7 * MIB as i64))]));
        let p = t.get(10).unwrap();
        assert_eq!(p.rss(RssKind::Anon), (7 * MIB, Source::Kernel));
        assert_eq!(p.resident_bytes(), 8 * MIB);
    }

    #[test]
    fn reused_pid_starts_from_zero() {
        let mut t = ProcessTable::default();
        t.apply(&ev(EventKind::Fork, 20, 100));
        t.sync_kernel(&HashMap::from([(20, stats(100, 500 * MIB as i64))]));
        assert!(t.apply(&ev(EventKind::Exit, 20, 200)).is_some());
        t.apply(&ev(EventKind::Fork, 20, 300));
        // The kernel map still holds the old incarnation until it is overwritten.
        t.sync_kernel(&HashMap::from([(20, stats(100, 500 * MIB as i64))]));
        let p = t.get(20).unwrap();
        assert_eq!(p.rss(RssKind::Anon).1, Source::Unknown);
        assert_eq!(p.peak_bytes(), 0);
        assert!(p.needs_seed());
    }

    #[test]
    fn exec_forgets_the_old_address_space() {
        let mut t = ProcessTable::default();
        t.seed([snapshot(30, 9 * MIB)]);
        let mut exec = ev(EventKind::Exec, 30, 50);
        exec.comm = comm("python3");
        t.apply(&exec);
        let p = t.get(30).unwrap();
        assert_eq!(p.comm, "python3");
        assert_eq!(p.exec_ns, 50);
        assert!(p.needs_seed());
    }

    #[test]
    fn exit_reports_what_was_held() {
        let mut t = ProcessTable::default();
        t.apply(&ev(EventKind::Fork, 40, 1_000));
        t.sync_kernel(&HashMap::from([(40, stats(1_000, 4 * MIB as i64))]));
        let mut exit = ev(EventKind::Exit, 40, 3_000);
        exit.rss = [MIB as i64, 4 * MIB as i64, 0, 0];
        exit.peak_bytes = 6 * MIB;
        let gone = t.apply(&exit).unwrap();
        assert_eq!(gone.resident_bytes, 5 * MIB);
        assert_eq!(gone.peak_bytes, 6 * MIB);
        assert_eq!(gone.lifetime_ns, 2_000);
        assert!(t.is_empty());
        let again = t.apply(&exit).unwrap();
        assert_eq!(
            (again.lifetime_ns, t.len()),
            (0, 0),
            "an exit the table does not know is told from its event alone"
        );
    }

    #[test]
    fn unknown_kernel_entries_are_returned_for_adoption() {
        let mut t = ProcessTable::default();
        t.seed([snapshot(1, MIB)]);
        let mut missing = t.sync_kernel(&HashMap::from([(1, stats(0, 1)), (2, stats(0, 1))]));
        missing.sort();
        assert_eq!(missing, [2]);
    }

    fn record(pid: u32, start_ns: u64, anon: i64, peak: u64, exact: bool) -> TaskRecord {
        TaskRecord {
            pid,
            ppid: 7,
            start_ns,
            cgroup_id: 12,
            comm: comm("celery"),
            rss: [MIB as i64, anon, 0, 0],
            peak_bytes: peak,
            flags: if exact { TASK_RSS_EXACT } else { 0 },
            _pad: 0,
        }
    }

    #[test]
    fn snapshots_add_new_processes_and_update_known_ones() {
        let mut t = ProcessTable::default();
        // Seeded from /proc: start at clock-tick resolution, a few ms off the kernel's.
        t.seed([ProcSnapshot {
            start_ns: 1_000_000_000,
            ..snapshot(10, 3 * MIB)
        }]);
        let first = t.sync_snapshot(&[
            record(10, 1_004_000_000, 5 * MIB as i64, 6 * MIB, true),
            record(11, 2_000_000_000, 2 * MIB as i64, 3 * MIB, false),
        ]);
        assert_eq!(first, [10, 11], "first kernel reading of both");
        let p = t.get(10).unwrap();
        assert_eq!(p.rss(RssKind::Anon), (5 * MIB, Source::Kernel));
        assert_eq!(p.comm, "old", "a known process keeps its name");
        assert_eq!((p.ppid, p.cgroup_id, p.rss_exact), (7, 12, Some(true)));
        let q = t.get(11).unwrap();
        assert_eq!((q.comm.as_str(), q.start_ns), ("celery", 2_000_000_000));
        assert_eq!(q.rss_exact, Some(false));
        assert!(
            !q.needs_seed(),
            "no /proc read for a process the iterator found"
        );
        // Shrinking keeps the highest peak any snapshot saw.
        let again = t.sync_snapshot(&[record(10, 1_004_000_000, MIB as i64, 2 * MIB, true)]);
        assert!(again.is_empty());
        let p = t.get(10).unwrap();
        assert_eq!(p.rss(RssKind::Anon).0, MIB);
        assert_eq!(p.peak_bytes(), 6 * MIB);
    }

    #[test]
    fn a_snapshot_of_a_reused_pid_replaces_the_old_process() {
        let mut t = ProcessTable::default();
        t.sync_snapshot(&[record(20, 1_000_000_000, 500 * MIB as i64, 500 * MIB, true)]);
        t.get_mut(20).unwrap().selected = Some(true);
        let first = t.sync_snapshot(&[record(20, 9_000_000_000, MIB as i64, MIB, true)]);
        assert_eq!(first, [20]);
        let p = t.get(20).unwrap();
        assert_eq!((p.start_ns, p.selected), (9_000_000_000, None));
        assert_eq!(p.peak_bytes(), 2 * MIB, "nothing carried across the reuse");
    }

    #[test]
    fn a_process_seen_only_at_exec_takes_its_start_from_the_next_snapshot() {
        let mut t = ProcessTable::default();
        t.apply(&ev(EventKind::Exec, 30, 5_000_000_000));
        assert_eq!(t.get(30).unwrap().start_ns, 0, "unknown until a snapshot");
        t.sync_snapshot(&[record(30, 4_900_000_000, MIB as i64, MIB, true)]);
        let p = t.get(30).unwrap();
        assert_eq!((p.start_ns, p.exec_ns), (4_900_000_000, 5_000_000_000));
    }

    #[test]
    fn an_exit_between_two_snapshots_is_reported_from_the_event() {
        let mut t = ProcessTable::default();
        let mut exit = ev(EventKind::Exit, 50, 7_000);
        exit.ppid = 3;
        exit.exit_code = 3 << 8;
        exit.rss = [MIB as i64, 64 * MIB as i64, 0, 0];
        exit.peak_bytes = 80 * MIB;
        let gone = t.apply(&exit).expect("reported though never in the table");
        assert_eq!((gone.pid, gone.ppid, gone.comm.as_str()), (50, 3, "worker"));
        assert_eq!((gone.resident_bytes, gone.peak_bytes), (65 * MIB, 80 * MIB));
        assert_eq!((gone.exit_code, gone.lifetime_ns), (3 << 8, 0));
    }

    #[test]
    fn comm_stops_at_nul() {
        assert_eq!(comm_str(&comm("celery")), "celery");
        assert_eq!(comm_str(&[b'x'; 16]), "x".repeat(16));
    }
}
