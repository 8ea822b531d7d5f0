//! `/api/v1/oom`: the kernel's recent OOM kills (`oom:mark_victim`).

use serde::{Deserialize, Serialize};

use crate::float::nan_if_null;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OomResponse {
    /// The last kills, newest last.
    pub oom_kills: Vec<OomKill>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OomKill {
    pub pid: u32,
    pub victim: OomVictim,
    pub anon_bytes: u64,
    pub file_bytes: u64,
    pub shmem_bytes: u64,
    #[serde(deserialize_with = "nan_if_null")]
    pub unix_time: f64,
}

/// The labels of `leakscope_oom_kills_total` for this kill.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomVictim {
    pub comm: String,
    /// Empty when the victim worked in no pool.
    pub pool: String,
    /// The memory cgroup whose limit was hit (v1's on hybrid hosts); empty when unknown.
    pub cgroup: String,
}
