//! Who keeps growth sampling on, and for how long. The page-fault program taxes every fault
//! on the host while any process is sampled, so every holder is accounted for, none may keep
//! it past a deadline, and a pid whose process is gone (or reused) is released whoever holds
//! it.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::bpf::Kernel;

use super::{
    collect::{self, GrowthRecords, Target},
    growth::{Growth, GrowthError},
    tracer::Shared as Stacks,
    unwind::{UnwindMode, Unwinding},
};

/// Profiles taken on request at once, all pids together: each keeps the host-wide page-fault
/// program attached, and a client can ask for many.
pub const MAX_REQUEST_HOLDS: usize = 8;

/// A request hold lives as long as its request, at most its longest profile; this much more
/// is grace for building the report. Past it the hold is dropped even if nothing released it.
const REQUEST_GRACE: Duration = Duration::from_secs(60);

/// Growth sampling in the agent: its maps and links, and who holds it on.
pub struct Profiler {
    growth: Growth,
    stacks: Stacks,
    /// `--profile-unwind dwarf`: the samples' stacks unwound in user space.
    unwinding: Option<Unwinding>,
    holds: Holds,
}

/// On whose behalf a pid is sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// A request, by the id [`Profiler::hold_request`] gave it.
    Request(u64),
    Auto,
}

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("{MAX_REQUEST_HOLDS} growth profiles are already being taken: try again when one ends")]
    Busy,
    #[error(transparent)]
    Growth(#[from] GrowthError),
}

impl Profiler {
    pub fn new(
        kernel: Arc<Kernel>,
        max_request: Duration,
        max_auto: Duration,
        unwind: UnwindMode,
    ) -> Result<Self, String> {
        let unwinding = match unwind {
            UnwindMode::Dwarf => Some(Unwinding::start(&kernel).map_err(|e| e.to_string())?),
            UnwindMode::Fp => None,
        };
        Ok(Self {
            unwinding,
            stacks: Stacks::take(&kernel).map_err(|e| e.to_string())?,
            growth: Growth::new(kernel).map_err(|e| e.to_string())?,
            holds: Holds::new(max_request + REQUEST_GRACE, max_auto),
        })
    }

    /// Samples `pid` for a request; the returned holder must be released, by the request's
    /// guard (`http::profile`'s `RequestHold`) or, failing that, by [`Profiler::expire`].
    pub fn hold_request(&mut self, pid: u32, period: u32) -> Result<Holder, HoldError> {
        if self.holds.requests() >= MAX_REQUEST_HOLDS {
            return Err(HoldError::Busy);
        }
        let holder = self.holds.next_request();
        self.hold(pid, period, holder)?;
        Ok(holder)
    }

    /// Samples `pid` on the agent's own behalf; false when its auto sampling already ran its
    /// full time in this process's life.
    pub fn hold_auto(&mut self, pid: u32, period: u32) -> Result<bool, HoldError> {
        let start = start_time(pid);
        if self.holds.auto_done(pid, start) {
            return Ok(false);
        }
        self.hold(pid, period, Holder::Auto)?;
        Ok(true)
    }

    fn hold(&mut self, pid: u32, period: u32, holder: Holder) -> Result<(), HoldError> {
        if !self.growth.is_target(pid) {
            // Python first, so that every sample of a CPython process has its Python path.
            match super::maps_snapshot::read(pid) {
                Ok(mappings) => {
                    self.stacks.python.add(pid, &mappings);
                }
                Err(e) => log::debug!("pid {pid}: no Python frames ({e})"),
            }
            if let Err(e) = self.growth.add(pid, period) {
                self.stacks.python.remove(pid);
                return Err(e.into());
            }
        }
        self.holds.add(pid, holder, start_time(pid), Instant::now());
        Ok(())
    }

    /// `holder` is done with `pid`; sampling stops, and its stacks go, with the last holder.
    /// Releasing twice is harmless.
    pub fn release(&mut self, pid: u32, holder: Holder) {
        if self.holds.remove(pid, holder) {
            self.forget(pid);
        }
    }

    fn forget(&mut self, pid: u32) {
        self.growth.remove(pid);
        self.stacks.python.remove(pid);
        let mut unwound = self.unwinding.as_ref().map(Unwinding::store);
        if let Some(u) = unwound.as_mut() {
            u.remove(pid);
        }
        if self.growth.targets().is_empty() {
            self.stacks.clear_stacks();
            if let Some(u) = unwound.as_mut() {
                u.clear();
            }
        }
    }

    /// Drops holds past their deadline and every hold on a process that is gone or whose pid
    /// now names another process. Returns what it did, for the log.
    pub fn expire(&mut self) -> Vec<String> {
        let (unheld, said) = self.holds.expire(Instant::now(), start_time);
        for pid in unheld {
            self.forget(pid);
        }
        said
    }

    /// What sampling recorded for the target, and since when: a pid the agent already
    /// samples on its own keeps its period, and the profile covers all of it.
    pub fn records(&self, target: &Target<'_>, requested: Instant) -> (GrowthRecords, Instant) {
        let period = self
            .growth
            .period(target.pid)
            .unwrap_or(monitor_common::stacks::DEFAULT_SAMPLE_PERIOD);
        let started = self
            .auto_since(target.pid)
            .map_or(requested, |since| since.min(requested));
        let unwound = self.unwinding.as_ref().map(Unwinding::store);
        (
            collect::read_growth(
                target,
                &self.growth,
                &self.stacks,
                unwound.as_deref(),
                period,
            ),
            started,
        )
    }

    /// Every pid sampled now, whoever holds it.
    pub fn sampled(&self) -> HashSet<u32> {
        self.holds.pids()
    }

    /// Pids the agent samples on its own, with when that began.
    pub fn auto_targets(&self) -> Vec<(u32, Instant)> {
        self.holds.auto_targets()
    }

    pub fn auto_since(&self, pid: u32) -> Option<Instant> {
        self.holds.auto_since(pid)
    }
}

/// The bookkeeping of holders, apart from the kernel object so it can be tested alone.
struct Holds {
    by_pid: HashMap<u32, PidHolds>,
    next_request: u64,
    request_limit: Duration,
    auto_limit: Duration,
    /// Processes whose auto sampling ran its full time, by start time: not picked again while
    /// the same process lives.
    auto_done: HashMap<u32, Option<u64>>,
}

struct PidHolds {
    /// Requests in flight: id and when each began.
    requests: Vec<(u64, Instant)>,
    /// Set while the agent samples the pid on its own (--auto-growth), since then.
    auto_since: Option<Instant>,
    /// The process's start time when sampling began: the same pid with another start time is
    /// another process, which nobody asked to sample.
    start: Option<u64>,
}

impl Holds {
    fn new(request_limit: Duration, auto_limit: Duration) -> Self {
        Self {
            by_pid: HashMap::new(),
            next_request: 0,
            request_limit,
            auto_limit,
            auto_done: HashMap::new(),
        }
    }

    fn next_request(&mut self) -> Holder {
        self.next_request += 1;
        Holder::Request(self.next_request)
    }

    fn requests(&self) -> usize {
        self.by_pid.values().map(|h| h.requests.len()).sum()
    }

    fn auto_done(&mut self, pid: u32, start: Option<u64>) -> bool {
        match self.auto_done.get(&pid) {
            Some(done) if *done == start => true,
            Some(_) => {
                self.auto_done.remove(&pid);
                false
            }
            None => false,
        }
    }

    fn add(&mut self, pid: u32, holder: Holder, start: Option<u64>, now: Instant) {
        let h = self.by_pid.entry(pid).or_insert_with(|| PidHolds {
            requests: Vec::new(),
            auto_since: None,
            start,
        });
        match holder {
            Holder::Request(id) => h.requests.push((id, now)),
            Holder::Auto => {
                h.auto_since.get_or_insert(now);
            }
        }
    }

    /// True when `pid` has no holder left.
    fn remove(&mut self, pid: u32, holder: Holder) -> bool {
        let Some(h) = self.by_pid.get_mut(&pid) else {
            return false;
        };
        match holder {
            Holder::Request(id) => h.requests.retain(|(r, _)| *r != id),
            Holder::Auto => h.auto_since = None,
        }
        let unheld = h.requests.is_empty() && h.auto_since.is_none();
        if unheld {
            self.by_pid.remove(&pid);
        }
        unheld
    }

    /// The pids left with no holder, and what happened, for the log.
    fn expire(
        &mut self,
        now: Instant,
        start_of: impl Fn(u32) -> Option<u64>,
    ) -> (Vec<u32>, Vec<String>) {
        let mut unheld = Vec::new();
        let mut said = Vec::new();
        for (&pid, h) in &mut self.by_pid {
            let start = start_of(pid);
            if start.is_none() || start != h.start {
                said.push(format!(
                    "growth sampling off for pid {pid}: the process is gone{}",
                    if start.is_some() {
                        " (its pid now names another process)"
                    } else {
                        ""
                    }
                ));
                unheld.push(pid);
                continue;
            }
            let before = h.requests.len();
            h.requests
                .retain(|(_, at)| now.saturating_duration_since(*at) < self.request_limit);
            if h.requests.len() < before {
                said.push(format!(
                    "growth sampling: {} request(s) for pid {pid} held past {}s, released",
                    before - h.requests.len(),
                    self.request_limit.as_secs()
                ));
            }
            if let Some(since) = h.auto_since
                && now.saturating_duration_since(since) >= self.auto_limit
            {
                h.auto_since = None;
                self.auto_done.insert(pid, h.start);
                said.push(format!(
                    "growth sampling off for pid {pid}: sampled on its own for {}s \
                     (--auto-growth-max-duration); profile it on request with ?seconds=",
                    self.auto_limit.as_secs()
                ));
            }
            if h.requests.is_empty() && h.auto_since.is_none() {
                unheld.push(pid);
            }
        }
        for pid in &unheld {
            self.by_pid.remove(pid);
        }
        // Bounded by the processes alive: entries of exited ones go.
        self.auto_done.retain(|pid, start| start_of(*pid) == *start);
        (unheld, said)
    }

    fn pids(&self) -> HashSet<u32> {
        self.by_pid.keys().copied().collect()
    }

    fn auto_targets(&self) -> Vec<(u32, Instant)> {
        self.by_pid
            .iter()
            .filter_map(|(pid, h)| h.auto_since.map(|since| (*pid, since)))
            .collect()
    }

    fn auto_since(&self, pid: u32) -> Option<Instant> {
        self.by_pid.get(&pid).and_then(|h| h.auto_since)
    }
}

/// The process's start time in clock ticks after boot; None when it is gone.
fn start_time(pid: u32) -> Option<u64> {
    let stat = procfs::process::Process::new(pid as i32)
        .ok()?
        .stat()
        .ok()?;
    // A zombie has exited: its memory is gone and nothing is left to sample.
    (stat.state != 'Z' && stat.state != 'X').then_some(stat.starttime)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn holds() -> Holds {
        Holds::new(5 * MIN, 30 * MIN)
    }

    #[test]
    fn the_last_holder_to_leave_unholds_the_pid() {
        let mut h = holds();
        let now = Instant::now();
        let (a, b) = (h.next_request(), h.next_request());
        h.add(7, a, Some(1), now);
        h.add(7, b, Some(1), now);
        h.add(7, Holder::Auto, Some(1), now);
        assert_eq!(h.requests(), 2);
        assert!(!h.remove(7, a));
        assert!(
            !h.remove(7, a),
            "a second release of one request is harmless"
        );
        assert!(!h.remove(7, Holder::Auto));
        assert!(h.remove(7, b));
        assert!(h.pids().is_empty());
    }

    #[test]
    fn a_request_never_released_expires_after_its_limit() {
        let mut h = holds();
        let t0 = Instant::now();
        let r = h.next_request();
        h.add(7, r, Some(1), t0);
        let (unheld, _) = h.expire(t0 + 4 * MIN, |_| Some(1));
        assert!(unheld.is_empty());
        let (unheld, said) = h.expire(t0 + 5 * MIN, |_| Some(1));
        assert_eq!(unheld, vec![7]);
        assert!(said[0].contains("held past 300s"), "{said:?}");
        assert_eq!(h.requests(), 0);
    }

    #[test]
    fn a_gone_or_reused_pid_is_released_whoever_holds_it() {
        let mut h = holds();
        let t0 = Instant::now();
        let r = h.next_request();
        h.add(7, r, Some(100), t0);
        h.add(8, Holder::Auto, Some(200), t0);
        let (mut unheld, said) = h.expire(t0, |pid| (pid == 7).then_some(101));
        unheld.sort();
        assert_eq!(unheld, vec![7, 8]);
        assert!(said.iter().any(|s| s.contains("now names another process")));
        assert!(h.pids().is_empty());
    }

    #[test]
    fn auto_sampling_stops_after_its_limit_and_is_not_resumed_for_that_process() {
        let mut h = holds();
        let t0 = Instant::now();
        h.add(7, Holder::Auto, Some(100), t0);
        let (unheld, said) = h.expire(t0 + 30 * MIN, |_| Some(100));
        assert_eq!(unheld, vec![7]);
        assert!(said[0].contains("--auto-growth-max-duration"), "{said:?}");
        assert!(
            h.auto_done(7, Some(100)),
            "the same process is not picked again"
        );
        assert!(
            !h.auto_done(7, Some(101)),
            "a new process behind the pid may be"
        );
    }
}
