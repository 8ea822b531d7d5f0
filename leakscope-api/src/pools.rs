//! `/api/v1/pools`: prefork pools (children of one parent with one name), their recycles and
//! verdicts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    float::nan_if_null,
    processes::{LimitSource, Verdict},
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolsResponse {
    pub pools: Vec<Pool>,
    /// Recycles not recorded because `--max-pools` pools exist already, or because the
    /// parent's uid owns its share of them.
    pub overflow_recycles: u64,
    /// Live pools not made for the same reasons.
    pub overflow_pools: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    /// `<parent pid>/<comm>`, the `pool` label of the pool metrics.
    pub pool: String,
    pub parent_pid: u32,
    pub comm: String,
    pub recycles: u64,
    /// Every reason, present from the pool's first recycle.
    pub recycles_by_reason: BTreeMap<RecycleReason, u64>,
    /// Recycles for `memory` or `oom`.
    pub recycles_for_memory: u64,
    pub leak_suspected: bool,
    /// Why the pool is suspected, in words.
    pub evidence: Option<String>,
    /// The last exits, oldest first.
    pub exits: Vec<PoolExit>,
    /// Live children now (a parent with two or more same-named children that outlived shell
    /// commands is a pool before any of them is recycled).
    pub children: u64,
    /// Resident bytes of all live children.
    pub children_bytes: u64,
    /// The largest live children, largest first (at most 32; `children` counts them all).
    pub members: Vec<PoolMember>,
    /// The parent on its own: its leak survives every recycle of its children.
    pub parent: Option<PoolMember>,
    /// Children and parent together.
    pub total_bytes: u64,
    /// Robust growth rate of `total_bytes` over the detector's window, bytes per second.
    #[serde(deserialize_with = "nan_if_null")]
    pub growth_bytes_per_second: f64,
    /// The limit the children share (their cgroup's), or the configured per-worker one.
    pub memory_limit_bytes: Option<u64>,
    pub memory_limit_source: Option<LimitSource>,
    /// When `total_bytes` reaches the limit at the pool's rate; absent while it is stable.
    pub time_to_limit_seconds: Option<f64>,
    /// Set when recycling has become a loop: children start near the size they are
    /// recycled at.
    pub thrash: Option<String>,
}

/// One process of a pool now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolMember {
    pub pid: u32,
    pub resident_bytes: u64,
    /// Absent until the detector has assessed the process.
    pub verdict: Option<Verdict>,
    #[serde(deserialize_with = "nan_if_null")]
    pub growth_bytes_per_second: f64,
}

/// Why a child of a pool exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolExit {
    pub pid: u32,
    #[serde(deserialize_with = "nan_if_null")]
    pub lifetime_secs: f64,
    pub resident_bytes: u64,
    pub peak_bytes: u64,
    /// Resident bytes at the agent's first sample of the child.
    pub first_sample_bytes: Option<u64>,
    pub reason: RecycleReason,
    /// When it exited, Unix seconds (unknown from agents before it was served).
    #[serde(default = "crate::float::nan", deserialize_with = "nan_if_null")]
    pub unix_time: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycle_reasons_are_object_keys_both_ways() {
        let pool = Pool {
            pool: "10/celery".into(),
            parent_pid: 10,
            comm: "celery".into(),
            recycles: 2,
            recycles_by_reason: [(RecycleReason::Memory, 2), (RecycleReason::Clean, 0)].into(),
            recycles_for_memory: 2,
            leak_suspected: true,
            evidence: Some("2 of the last 2 children were recycled for memory".into()),
            exits: vec![PoolExit {
                pid: 11,
                lifetime_secs: 60.0,
                resident_bytes: 1,
                peak_bytes: 2,
                first_sample_bytes: None,
                reason: RecycleReason::Memory,
                unix_time: 1.7e9,
            }],
            children: 4,
            children_bytes: 4 << 20,
            members: vec![PoolMember {
                pid: 12,
                resident_bytes: 1 << 20,
                verdict: Some(Verdict::Stable),
                growth_bytes_per_second: 0.0,
            }],
            parent: None,
            total_bytes: 4 << 20,
            growth_bytes_per_second: 0.0,
            memory_limit_bytes: None,
            memory_limit_source: None,
            time_to_limit_seconds: None,
            thrash: None,
        };
        let v = serde_json::to_value(PoolsResponse {
            pools: vec![pool.clone()],
            overflow_recycles: 0,
            overflow_pools: 0,
        })
        .unwrap();
        assert_eq!(
            v["pools"][0]["recycles_by_reason"],
            serde_json::json!({"memory": 2, "clean": 0})
        );
        assert_eq!(v["pools"][0]["exits"][0]["reason"], "memory");
        let back: PoolsResponse = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(back.pools, [pool]);

        // An older agent's exit, without its time, still reads.
        let mut old = v;
        old["pools"][0]["exits"][0]
            .as_object_mut()
            .unwrap()
            .remove("unix_time");
        let back: PoolsResponse = serde_json::from_value(old).unwrap();
        assert!(back.pools[0].exits[0].unix_time.is_nan());
    }
}
