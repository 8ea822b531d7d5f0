//! A pool as it is now, between recycles: its children and its parent, what they hold
//! together, where that total is heading, and whether recycling has turned into a loop.
//!
//! The exits alone cannot tell a leaking parent from leaking children: a parent's leak
//! survives every recycle, and a child forked from a bloated parent starts near its limit and
//! is recycled again after a few tasks.

use crate::model::{
    detector::{Assessment, DetectorConfig, RssHistory, Verdict},
    limits::Limit,
    pools::{ExitRecord, RecycleReason},
    table::Process,
};

const MIB: f64 = (1 << 20) as f64;
/// Children listed per pool, largest first (the count and the total cover all of them).
pub const MEMBERS_SHOWN: usize = 32;
/// Recycles for memory that make a loop, among the exits kept...
const THRASH_RECYCLES: usize = 3;
/// ... each by a child that started at this share of the size it was recycled at or more.
const THRASH_START_SHARE: f64 = 0.75;

/// One process of a pool now.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub pid: u32,
    pub resident_bytes: u64,
    /// `None` until the detector has assessed the process.
    pub verdict: Option<Verdict>,
    pub rate_bytes_per_sec: f64,
}

impl Member {
    pub fn of(p: &Process) -> Self {
        let assessment = p.leak.as_ref().map(|l| &l.assessment);
        Self {
            pid: p.pid,
            resident_bytes: p.resident_bytes(),
            verdict: assessment.map(|a| a.verdict),
            rate_bytes_per_sec: assessment.map_or(0.0, |a| a.rate_bytes_per_sec),
        }
    }

    fn leaking(&self) -> bool {
        self.verdict == Some(Verdict::Leaking)
    }
}

/// The live part of a pool, refreshed at every assessment.
#[derive(Clone, Debug)]
pub struct Live {
    /// Largest first, at most [`MEMBERS_SHOWN`].
    pub members: Vec<Member>,
    pub children: usize,
    pub children_bytes: u64,
    /// `None` once the parent is gone from the table (the pool is about to go with it).
    pub parent: Option<Member>,
    /// Children and parent together, as one series: recycling makes each child's own trend
    /// short, the pool's total keeps the whole story.
    total: RssHistory,
    pub total_assessment: Assessment,
    /// The limit the children share (their cgroup's), or the parent's.
    pub limit: Option<Limit>,
    pub time_to_limit_secs: Option<f64>,
}

impl Live {
    pub fn new(cfg: &DetectorConfig, now_ns: u64) -> Self {
        let total = RssHistory::new(cfg, secs(now_ns));
        let total_assessment = total.assess(cfg);
        Self {
            members: Vec::new(),
            children: 0,
            children_bytes: 0,
            parent: None,
            total,
            total_assessment,
            limit: None,
            time_to_limit_secs: None,
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.children_bytes + self.parent.as_ref().map_or(0, |p| p.resident_bytes)
    }

    /// Takes the pool's processes as they are at `now_ns`.
    pub fn observe(
        &mut self,
        cfg: &DetectorConfig,
        now_ns: u64,
        parent: Option<&Process>,
        children: &[&Process],
        limit: Option<Limit>,
    ) {
        let mut members: Vec<Member> = children.iter().map(|p| Member::of(p)).collect();
        members.sort_by_key(|m| std::cmp::Reverse(m.resident_bytes));
        self.children = members.len();
        self.children_bytes = members.iter().map(|m| m.resident_bytes).sum();
        members.truncate(MEMBERS_SHOWN);
        self.members = members;
        self.parent = parent.map(Member::of);
        self.total.observe(secs(now_ns), self.total_bytes());
        self.total_assessment = self.total.assess(cfg);
        self.limit = limit;
        self.time_to_limit_secs = match self.total_assessment.verdict {
            Verdict::Stable => None,
            Verdict::Growing | Verdict::Leaking => {
                limit.and_then(|l| l.seconds_left(self.total_assessment.rate_bytes_per_sec))
            }
        };
    }

    /// What the live processes say against the pool, in words.
    pub fn judge(&self) -> Option<String> {
        if let Some(parent) = self.parent.as_ref().filter(|p| p.leaking()) {
            return Some(format!(
                "the parent (pid {}) itself leaks at {:.1} MiB/h: recycling its children \
                 does not free that memory",
                parent.pid,
                parent.rate_bytes_per_sec * 3600.0 / MIB
            ));
        }
        let leaking = self.members.iter().filter(|m| m.leaking()).count();
        if leaking >= 2 {
            return Some(format!(
                "{leaking} of its {} children are leaking now",
                self.children
            ));
        }
        None
    }
}

/// Children that start near the size they are recycled at, recycled for memory again and
/// again: what the parent hands every new child is the problem, not the tasks.
pub fn thrash<'a>(exits: impl IntoIterator<Item = &'a ExitRecord>) -> Option<String> {
    let looping: Vec<&ExitRecord> = exits
        .into_iter()
        .filter(|e| matches!(e.reason, RecycleReason::Memory | RecycleReason::Oom))
        .filter(|e| {
            let end = e.peak_bytes.max(e.resident_bytes) as f64;
            e.first_sample_bytes
                .is_some_and(|start| end > 0.0 && start as f64 >= THRASH_START_SHARE * end)
        })
        .collect();
    if looping.len() < THRASH_RECYCLES {
        return None;
    }
    let mut lifetimes: Vec<f64> = looping.iter().map(|e| e.lifetime_secs).collect();
    lifetimes.sort_by(f64::total_cmp);
    let median = lifetimes[lifetimes.len() / 2];
    Some(format!(
        "recycle loop: {} children recycled for memory had started at {:.0}% or more of \
         their final size (median life {median:.0} s); each new child inherits the memory, \
         so recycling cannot help — look at the parent and at what loads at start",
        looping.len(),
        THRASH_START_SHARE * 100.0
    ))
}

fn secs(boot_ns: u64) -> f64 {
    boot_ns as f64 / 1e9
}
