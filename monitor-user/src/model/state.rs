//! Everything the agent knows, behind one lock, and the views that /metrics and the API share.

use monitor_common::{Counter, EventKind, LifecycleEvent, RssKind};
use serde::Serialize;

use crate::{
    bpf::probes::ProbeStatus,
    model::detector::DetectorConfig,
    model::leaks::{self, LeakState},
    model::limits::{CgroupRoots, ConfiguredLimit, Limit, LimitCache, LimitSource, nearest},
    model::oom::{OomKills, OomRecord, Victim},
    model::pools::{Pools, RecycleReason},
    model::select::{Selector, cap_largest},
    model::table::{Process, ProcessTable, comm_str},
};

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct ProcReadErrors {
    pub denied: u64,
    pub other: u64,
}

pub struct AgentState {
    pub table: ProcessTable,
    pub probes: Vec<ProbeStatus>,
    pub counters: [u64; Counter::COUNT as usize],
    pub kernel_entries: u64,
    pub proc_errors: ProcReadErrors,
    pub selector: Selector,
    pub max_processes: usize,
    /// Reasons for degradation that are not a probe (missing capabilities, tracefs).
    pub notes: Vec<String>,
    /// `CLOCK_BOOTTIME` minus `CLOCK_REALTIME`, to turn kernel timestamps into wall time.
    pub boot_to_unix_ns: i128,
    pub detector: DetectorConfig,
    pub limits: Vec<ConfiguredLimit>,
    pub cgroups: CgroupRoots,
    pub pools: Pools,
    pub ooms: OomKills,
    /// Pod names by UID, filled from the Kubernetes API when the agent runs in a cluster.
    pub pods: crate::host::kube::Pods,
    /// Docker container names by id, filled from the Docker daemon's socket when there is one.
    pub containers: crate::host::docker::Containers,
    /// The features' state (tasks, threads), by type.
    pub features: crate::model::features::Features,
    /// Processes whose growth stacks the agent samples on its own (--auto-growth).
    pub growth_sampled: std::collections::HashSet<u32>,
    /// The last processes to exit, newest last, at most [`RECENT_EXITS`]: a process that
    /// lived less than one interval is seen here, with its peak and exit code.
    pub exits: std::collections::VecDeque<crate::model::table::Exited>,
    /// Exits applied since start: tells a snapshot which of its records are already stale.
    pub exits_total: u64,
    /// Total of dropped lifecycle events, and when that total last grew.
    last_drop: Option<(u64, u64)>,
}

/// How many exits [`AgentState::exits`] keeps.
pub const RECENT_EXITS: usize = 256;

/// A drop makes the agent degraded for this long, not forever.
const DROP_MEMORY_NS: u64 = 600 * 1_000_000_000;

/// What the agent is told at start-up beyond selection.
pub struct Settings {
    pub selector: Selector,
    pub max_processes: usize,
    pub detector: DetectorConfig,
    pub limits: Vec<ConfiguredLimit>,
    pub max_pools: usize,
}

impl Default for Settings {
    /// The CLI's defaults: every process, 500 series, 64 pools, no configured limits.
    fn default() -> Self {
        Self {
            selector: Selector::default(),
            max_processes: 500,
            detector: DetectorConfig::default(),
            limits: Vec::new(),
            max_pools: 64,
        }
    }
}

/// The overflow series: every selected process beyond the cap, summed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overflow {
    pub processes: usize,
    pub rss: [u64; RssKind::COUNT],
}

pub struct Export<'a> {
    pub own: Vec<&'a Process>,
    pub overflow: Overflow,
}

#[derive(Debug, Serialize)]
pub struct Health {
    pub degraded: bool,
    pub reasons: Vec<String>,
}

impl AgentState {
    pub fn new(settings: Settings) -> Self {
        Self {
            table: ProcessTable::default(),
            probes: Vec::new(),
            counters: [0; Counter::COUNT as usize],
            kernel_entries: 0,
            proc_errors: ProcReadErrors::default(),
            selector: settings.selector,
            max_processes: settings.max_processes,
            notes: Vec::new(),
            boot_to_unix_ns: boot_to_unix_ns(),
            detector: settings.detector,
            limits: settings.limits,
            cgroups: CgroupRoots::discover(),
            pools: Pools::new(settings.max_pools),
            ooms: OomKills::default(),
            pods: crate::host::kube::Pods::default(),
            containers: crate::host::docker::Containers::default(),
            // Each feature puts its configured state here at start-up; defaults until then.
            features: Default::default(),
            growth_sampled: Default::default(),
            exits: Default::default(),
            exits_total: 0,
            last_drop: None,
        }
    }

    /// Takes the kernel's counters, noting when events were last dropped.
    pub fn set_counters(&mut self, counters: [u64; Counter::COUNT as usize], now_ns: u64) {
        let dropped = counters[Counter::EventsDropped as usize];
        if dropped > self.counter(Counter::EventsDropped) {
            self.last_drop = Some((dropped, now_ns));
        }
        self.counters = counters;
    }

    /// Applies one kernel lifecycle event to the table, the pools and the OOM record.
    pub fn apply_event(&mut self, ev: &LifecycleEvent) {
        if ev.kind == EventKind::OomKill as u32 {
            self.on_oom(ev);
            return;
        }
        let before = self.table.get(ev.pid).map(|p| {
            (
                p.leak.as_ref().map(|l| l.first_sample_bytes),
                p.configured_limit,
            )
        });
        let Some(exited) = self.table.apply(ev) else {
            return;
        };
        self.pools.parent_exited(exited.pid);
        if self.exits.len() >= RECENT_EXITS {
            self.exits.pop_front();
        }
        self.exits.push_back(exited.clone());
        self.exits_total += 1;
        let (first_sample, limit) = before.unwrap_or_default();
        let reason = RecycleReason::classify(
            exited.exit_code,
            self.ooms.take_victim(exited.pid),
            exited.peak_bytes,
            limit,
        );
        let parent_alive = self.table.get(exited.ppid).is_some();
        let siblings = if parent_alive {
            self.table
                .iter()
                .filter(|p| p.ppid == exited.ppid && p.comm == exited.comm)
                .count()
        } else {
            0
        };
        let unix_time = self.unix_seconds(ev.ts_ns);
        self.pools.on_exit(
            &exited,
            parent_alive,
            siblings,
            first_sample,
            reason,
            unix_time,
        );
    }

    fn on_oom(&mut self, ev: &LifecycleEvent) {
        let proc = self.table.get(ev.pid);
        let comm = proc.map_or_else(|| comm_str(&ev.comm), |p| p.comm.clone());
        let pool = proc
            .and_then(|p| self.pools.name_of(p.ppid, &p.comm))
            .unwrap_or_default()
            .to_string();
        // The memory cgroup is the one whose limit was hit: on hybrid hosts that is v1's.
        let cgroup = proc
            .and_then(|p| p.memcg_v1_path.clone().or_else(|| p.cgroup_path.clone()))
            .unwrap_or_default();
        log::warn!(
            "OOM killer chose pid {} ({comm}) in cgroup {cgroup:?}",
            ev.pid
        );
        let kind = |k: RssKind| ev.rss[k as usize].max(0) as u64;
        let record = OomRecord {
            pid: ev.pid,
            victim: Victim { comm, pool, cgroup },
            anon_bytes: kind(RssKind::Anon),
            file_bytes: kind(RssKind::File),
            shmem_bytes: kind(RssKind::Shmem),
            unix_time: self.unix_seconds(ev.ts_ns),
        };
        self.ooms.record(record, ev.ts_ns);
    }

    /// Samples every selected process into its history and re-assesses it.
    pub fn assess(&mut self, now_ns: u64) {
        let mut cache = LimitCache::default();
        let cfg = &self.detector;
        for p in self.table.iter_mut().filter(|p| p.selected == Some(true)) {
            let resident = p.resident_bytes();
            let (exec_ns, pid) = (p.exec_ns, p.pid);
            let leak = p
                .leak
                .get_or_insert_with(|| LeakState::new(cfg, exec_ns, resident));
            if let Some(before) = leak.observe(cfg, exec_ns, now_ns, resident) {
                leaks::log_change(pid, &p.comm, before, &leak.assessment);
            }
            let cgroup = cache.get(
                &self.cgroups,
                p.cgroup_path.as_deref(),
                p.memcg_v1_path.as_deref(),
            );
            let configured = p.configured_limit.map(|limit_bytes| Limit {
                limit_bytes,
                used_bytes: resident,
                source: LimitSource::Configured,
            });
            leak.set_limit(nearest(cgroup, configured));
        }
        // A per-worker limit applies to each child, not to the pool: only the cgroup they
        // share bounds the pool's total.
        let cgroups = &self.cgroups;
        self.pools.observe_live(&self.table, cfg, now_ns, |p| {
            cache.get(
                cgroups,
                p.cgroup_path.as_deref(),
                p.memcg_v1_path.as_deref(),
            )
        });
    }

    /// Pids of the exits applied since `exits_total` was `before` (as many as are kept).
    pub fn exited_since(&self, before: u64) -> std::collections::HashSet<u32> {
        let n = self.exits_total.saturating_sub(before) as usize;
        self.exits.iter().rev().take(n).map(|e| e.pid).collect()
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.counters[c as usize]
    }

    /// LRU evictions from the kernel's process map: what went in and neither left nor stayed.
    pub fn kernel_evictions(&self) -> u64 {
        self.counter(Counter::ProcInserted)
            .saturating_sub(self.counter(Counter::ProcRemoved))
            .saturating_sub(self.kernel_entries)
    }

    pub fn probe_attached(&self, name: &str) -> bool {
        self.probes.iter().any(|p| p.name == name && p.attached)
    }

    /// Selected processes, the largest `max_processes` with series of their own.
    pub fn export(&self) -> Export<'_> {
        let selected: Vec<&Process> = self
            .table
            .iter()
            .filter(|p| p.selected == Some(true))
            .collect();
        let (own, rest) = cap_largest(selected, self.max_processes, |p| p.resident_bytes());
        let mut overflow = Overflow {
            processes: rest.len(),
            ..Overflow::default()
        };
        for p in rest {
            for k in RssKind::ALL {
                overflow.rss[k as usize] += p.rss(k).0;
            }
        }
        Export { own, overflow }
    }

    pub fn health(&self) -> Health {
        self.health_at(boot_ns())
    }

    /// Health as of `now_ns` on the boot clock (tests pass their own clock: a machine that
    /// booted a minute ago has no "ten minutes ago").
    pub fn health_at(&self, now_ns: u64) -> Health {
        let mut reasons: Vec<String> = self
            .probes
            .iter()
            .filter(|p| !p.attached)
            .map(|p| {
                format!(
                    "probe {} ({}) is off: {}; {}",
                    p.name,
                    p.tracepoint,
                    p.error.as_deref().unwrap_or("unknown reason"),
                    p.fallback
                )
            })
            .collect();
        reasons.extend(self.notes.iter().cloned());
        if let Some((total, at)) = self.last_drop
            && now_ns.saturating_sub(at) < DROP_MEMORY_NS
        {
            reasons.push(format!(
                "lifecycle events were dropped (ring buffer full) in the last 10 minutes; \
                 {total} since start"
            ));
        }
        Health {
            degraded: !reasons.is_empty(),
            reasons,
        }
    }

    pub fn unix_seconds(&self, boot_ns: u64) -> f64 {
        (boot_ns as i128 - self.boot_to_unix_ns) as f64 / 1e9
    }

    /// A probe the kernel refused after start-up: off, with the reason, from now on.
    pub fn probe_failed(&mut self, name: &str, why: String) {
        if let Some(p) = self.probes.iter_mut().find(|p| p.name == name) {
            log::warn!("probe {name} is off: {why}");
            p.attached = false;
            p.error = Some(why);
        }
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

pub fn boot_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME) as u64
}

fn boot_to_unix_ns() -> i128 {
    clock_ns(libc::CLOCK_BOOTTIME) - clock_ns(libc::CLOCK_REALTIME)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> AgentState {
        AgentState::new(Settings::default())
    }

    #[test]
    fn dropped_events_degrade_for_a_while_not_forever() {
        let mut s = state();
        assert!(!s.health().degraded);
        let mut c = [0; Counter::COUNT as usize];
        c[Counter::EventsDropped as usize] = 3;
        // Any clock value works: nothing here depends on how long ago the machine booted.
        let t0 = 5_000_000_000;
        s.set_counters(c, t0);
        let h = s.health_at(t0);
        assert!(
            h.degraded && h.reasons[0].contains("3 since start"),
            "{h:?}"
        );
        // The same total, long after: healthy again.
        let later = t0 + DROP_MEMORY_NS + 1;
        s.set_counters(c, later);
        assert!(!s.health_at(later).degraded);
        // A new drop degrades again.
        c[Counter::EventsDropped as usize] = 4;
        s.set_counters(c, later);
        assert!(s.health_at(later).degraded);
    }

    #[test]
    fn exits_since_a_point_name_the_pids_a_snapshot_must_drop() {
        let mut s = state();
        let exit = |pid| LifecycleEvent {
            kind: EventKind::Exit as u32,
            pid,
            ppid: 1,
            exit_code: 0,
            ts_ns: 10,
            cgroup_id: 0,
            comm: [0; 16],
            rss: [0; RssKind::COUNT],
            peak_bytes: 0,
        };
        s.apply_event(&exit(5));
        let before = s.exits_total;
        s.apply_event(&exit(6));
        s.apply_event(&exit(7));
        let gone = s.exited_since(before);
        assert_eq!(gone, [6, 7].into_iter().collect());
        assert!(s.exited_since(s.exits_total).is_empty());
        for pid in 0..(RECENT_EXITS as u32 + 10) {
            s.apply_event(&exit(100 + pid));
        }
        assert_eq!(s.exits.len(), RECENT_EXITS, "bounded");
        assert_eq!(s.exited_since(0).len(), RECENT_EXITS);
    }

    #[test]
    fn evictions_are_what_went_in_and_neither_left_nor_stayed() {
        let mut s = state();
        let mut c = [0; Counter::COUNT as usize];
        c[Counter::ProcInserted as usize] = 100;
        c[Counter::ProcRemoved as usize] = 60;
        s.set_counters(c, 0);
        s.kernel_entries = 30;
        assert_eq!(s.kernel_evictions(), 10);
    }
}
