//! `leakscope run --auto-growth`: growth sampling that follows the detector. A process whose
//! verdict becomes `leaking` is sampled (page-fault stacks, as `investigate --mode growth`)
//! until it stops leaking or exits, so that by the time someone looks, its growth stacks are
//! already waiting at `/debug/pprof/growth?pid=PID`.
//!
//! At most `max` processes at once: every page fault of a sampled process pays for a map
//! lookup, and one in `period` for a user stack. Processes already sampled keep their place
//! while they leak; free places go to the fastest leakers.

use std::collections::HashSet;

use log::{info, warn};

use crate::model::state::AgentState;

use super::profiler::{Holder, Profiler};

#[derive(Clone, Copy, Debug)]
pub struct AutoGrowth {
    pub period: u32,
    pub max: usize,
}

/// A process the detector calls leaking, with its growth rate.
#[derive(Clone, Debug)]
pub struct Leaker {
    pub pid: u32,
    pub comm: String,
    pub bytes_per_sec: f64,
}

/// Selected processes the detector calls leaking.
pub fn leakers(state: &AgentState) -> Vec<Leaker> {
    state
        .table
        .iter()
        .filter(|p| p.selected == Some(true))
        .filter_map(|p| {
            let a = &p.leak.as_ref()?.assessment;
            (a.verdict == crate::model::detector::Verdict::Leaking).then(|| Leaker {
                pid: p.pid,
                comm: p.comm.clone(),
                bytes_per_sec: a.rate_bytes_per_sec,
            })
        })
        .collect()
}

/// Brings the auto-sampled set in line with `leaking` (what is sampled, whoever holds it, is
/// the profiler's [`Profiler::sampled`]).
pub fn follow(profiler: &mut Profiler, leaking: &[Leaker], cfg: AutoGrowth) {
    let still: HashSet<u32> = leaking.iter().map(|l| l.pid).collect();
    let mut sampled = HashSet::new();
    for (pid, since) in profiler.auto_targets() {
        if still.contains(&pid) {
            sampled.insert(pid);
        } else {
            profiler.release(pid, Holder::Auto);
            info!(
                "growth sampling off for pid {pid}: no longer leaking or gone (sampled {:.0}s)",
                since.elapsed().as_secs_f64()
            );
        }
    }
    let mut candidates: Vec<&Leaker> = leaking
        .iter()
        .filter(|l| !sampled.contains(&l.pid))
        .collect();
    candidates.sort_by(|a, b| b.bytes_per_sec.total_cmp(&a.bytes_per_sec));
    for l in candidates {
        if sampled.len() >= cfg.max {
            break;
        }
        match profiler.hold_auto(l.pid, cfg.period) {
            // Sampled for its full time already: its place goes to the next leaker.
            Ok(false) => {}
            Ok(true) => {
                sampled.insert(l.pid);
                info!(
                    "growth sampling on for pid {} ({}): verdict leaking; stacks at \
                     /debug/pprof/growth?pid={}",
                    l.pid, l.comm, l.pid
                );
            }
            Err(e) => warn!("growth sampling for pid {} ({}) failed: {e}", l.pid, l.comm),
        }
    }
}
