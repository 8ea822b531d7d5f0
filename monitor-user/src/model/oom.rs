//! OOM kills, from the kernel's `oom:mark_victim`, counted per process name, pool and cgroup.

use std::collections::HashMap;

use serde::Serialize;

/// Distinct (comm, pool, cgroup) label sets kept; more are summed into one overflow set.
pub const MAX_LABEL_SETS: usize = 256;
pub const OVERFLOW: &str = "overflow";

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Victim {
    pub comm: String,
    pub pool: String,
    pub cgroup: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct OomRecord {
    pub pid: u32,
    pub victim: Victim,
    pub anon_bytes: u64,
    pub file_bytes: u64,
    pub shmem_bytes: u64,
    pub unix_time: f64,
}

#[derive(Debug, Default)]
pub struct OomKills {
    counts: HashMap<Victim, u64>,
    /// The last kills, newest last, for the API.
    pub recent: Vec<OomRecord>,
    /// Victims whose exit has not been seen yet, so the exit is classified as an OOM kill.
    pending: HashMap<u32, u64>,
}

const RECENT_KEPT: usize = 64;

impl OomKills {
    pub fn record(&mut self, record: OomRecord, ts_ns: u64) {
        let key =
            if self.counts.len() >= MAX_LABEL_SETS && !self.counts.contains_key(&record.victim) {
                Victim {
                    comm: OVERFLOW.into(),
                    pool: OVERFLOW.into(),
                    cgroup: OVERFLOW.into(),
                }
            } else {
                record.victim.clone()
            };
        *self.counts.entry(key).or_default() += 1;
        if self.pending.len() < 4096 {
            self.pending.insert(record.pid, ts_ns);
        }
        if self.recent.len() == RECENT_KEPT {
            self.recent.remove(0);
        }
        self.recent.push(record);
    }

    /// True (once) when `pid` was chosen by the OOM killer.
    pub fn take_victim(&mut self, pid: u32) -> bool {
        self.pending.remove(&pid).is_some()
    }

    pub fn counts(&self) -> impl Iterator<Item = (&Victim, u64)> {
        self.counts.iter().map(|(v, c)| (v, *c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pid: u32, comm: &str) -> OomRecord {
        OomRecord {
            pid,
            victim: Victim {
                comm: comm.into(),
                pool: String::new(),
                cgroup: "/a".into(),
            },
            anon_bytes: 1,
            file_bytes: 0,
            shmem_bytes: 0,
            unix_time: 0.0,
        }
    }

    #[test]
    fn counts_per_victim_and_marks_the_exit() {
        let mut o = OomKills::default();
        o.record(rec(5, "celery"), 1);
        o.record(rec(6, "celery"), 2);
        assert_eq!(o.counts().map(|(_, c)| c).sum::<u64>(), 2);
        assert_eq!(o.counts().count(), 1);
        assert!(o.take_victim(5));
        assert!(!o.take_victim(5), "only once");
    }

    #[test]
    fn label_sets_are_capped_with_an_overflow() {
        let mut o = OomKills::default();
        for i in 0..(MAX_LABEL_SETS as u32 + 10) {
            o.record(rec(i, &format!("c{i}")), 0);
        }
        assert_eq!(o.counts().count(), MAX_LABEL_SETS + 1);
        let overflow = o.counts().find(|(v, _)| v.comm == OVERFLOW).unwrap().1;
        assert_eq!(overflow, 10);
        assert_eq!(o.recent.len(), RECENT_KEPT);
    }
}
