//! `/api/v1/host`: the machine the agent watches, so a report or a terminal view can say how
//! much memory the host has left without a shell on it.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostResponse {
    /// The host's name (`uname -n`, in the agent's UTS namespace).
    pub hostname: String,
    pub memory: HostMemory,
}

/// `/proc/meminfo` of the host, in bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostMemory {
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// The kernel's estimate of what new work can use without swapping; absent on kernels
    /// before 3.14.
    pub available_bytes: Option<u64>,
    /// Page cache (`Cached`) plus `Buffers`.
    pub cached_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_free_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_memory_reads_back_with_an_absent_estimate_as_null() {
        let h = HostResponse {
            hostname: "node-1".into(),
            memory: HostMemory {
                total_bytes: 8 << 30,
                free_bytes: 1 << 30,
                available_bytes: None,
                cached_bytes: 2 << 30,
                swap_total_bytes: 0,
                swap_free_bytes: 0,
            },
        };
        let v = serde_json::to_value(&h).unwrap();
        assert!(v["memory"]["available_bytes"].is_null(), "{v}");
        assert_eq!(serde_json::from_value::<HostResponse>(v).unwrap(), h);
    }
}
